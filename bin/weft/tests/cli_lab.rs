//! The command line against a running lab: every listing command whose output is cut
//! short (`| head -1`, or an output already closed) ends quietly, as coreutils do, with no
//! panic; `weft status --json` prints the agent's answer as it is.

mod common;
use common::*;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

/// The listing commands, with and without --json.
fn listings(socket: &str, lab: &str) -> Vec<Vec<String>> {
    let mut v = Vec::new();
    for cmd in [
        &["status"][..],
        &["peers"],
        &["ipam"],
        &["get", "endpoints"],
        &["get", "networkpolicies"],
        &["get", "namespaces"],
        &["flows"],
    ] {
        let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        args.extend(["--socket".into(), socket.into()]);
        v.push(args.clone());
        args.push("--json".into());
        v.push(args);
    }
    v.push(vec![
        "lab".into(),
        "status".into(),
        "--name".into(),
        lab.into(),
    ]);
    v.push(vec![
        "lab".into(),
        "status".into(),
        "--name".into(),
        lab.into(),
        "--json".into(),
    ]);
    v.push(vec!["--help".into()]);
    v.push(vec!["lab".into(), "--help".into()]);
    v
}

#[test]
fn listing_commands_piped_into_head_end_quietly() {
    if !root_or_skip("listing_commands_piped_into_head_end_quietly") {
        return;
    }
    let lab = Lab::up("pipes", 2, "mesh");
    let socket = format!("/run/weft-lab/{}/h1/weft.sock", lab.name);
    // A container, so that status has routes to list.
    weft_ok(&["lab", "run", "--name", &lab.name, "h2", "c1"]);
    for args in listings(&socket, &lab.name) {
        let shown = args.join(" ");
        // As a user types it.
        let line = format!("{WEFT} {shown} | head -1; echo \"exit=${{PIPESTATUS[0]}}\"");
        let out = Command::new("bash").args(["-c", &line]).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            stderr.is_empty(),
            "weft {shown} | head -1 printed: {stderr}"
        );
        let first = stdout.lines().next().unwrap_or_default();
        assert!(!first.is_empty(), "weft {shown} | head -1: no line");
        let exit = stdout.lines().last().unwrap_or_default();
        assert!(
            exit == "exit=0" || exit == "exit=141",
            "weft {shown} | head -1: {exit}"
        );
        // Deterministically: an output whose reader is gone before the first write.
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let out = Command::new(WEFT)
            .args(&args)
            .stdout(Stdio::from(w))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked"),
            "weft {shown} > closed pipe: {stderr}"
        );
        assert!(stderr.is_empty(), "weft {shown} > closed pipe: {stderr}");
        // Ended by SIGPIPE as coreutils are (clap's --help swallows the error and exits 0).
        assert!(
            out.status.signal() == Some(libc_sigpipe()) || out.status.success(),
            "weft {shown} > closed pipe ended with {:?}",
            out.status
        );
    }
}

fn libc_sigpipe() -> i32 {
    nix::sys::signal::Signal::SIGPIPE as i32
}

#[test]
fn status_json_is_the_agent_s_answer_unchanged() {
    if !root_or_skip("status_json_is_the_agent_s_answer_unchanged") {
        return;
    }
    let lab = Lab::up("sjson", 2, "mesh");
    let socket = format!("/run/weft-lab/{}/h1/weft.sock", lab.name);
    let out = weft_ok(&["status", "--socket", &socket, "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // The shape weft status --json has had (and network policy's and the name
    // service's parts).
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "conflicts",
            "dataplane",
            "dns",
            "docker",
            "node",
            "peers",
            "policy"
        ],
        "{v}"
    );
    // Lab agents serve Docker's plugin in the host's plugin directory.
    assert!(
        v["docker"]["plugin"]
            .as_str()
            .is_some_and(|p| p.ends_with("/docker/plugins/weft.sock")),
        "{v}"
    );
    assert_eq!(v["docker"]["endpoints"], 0, "{v}");
    assert_eq!(v["dns"]["addr"], "169.254.1.1", "{v}");
    assert!(v["dns"]["error"].is_null(), "{v}");
    for k in ["id", "name", "addr"] {
        assert!(v["node"][k].is_string(), "{v}");
    }
    for k in [
        "mode",
        "nat",
        "underlay",
        "pod_mtu",
        "routes",
        "skipped",
        "conflicts",
        "error",
        "fast_path",
    ] {
        assert!(
            v["dataplane"].get(k).is_some(),
            "dataplane.{k} missing: {v}"
        );
    }
    // Exactly the body of GET /status, one line. The lab is still settling (its agents
    // connect, routes arrive) and each request sees the state of its moment: compare a
    // request of each kind made back to back, until a pair is taken with nothing moving
    // in between. A CLI that changed the answer would never match.
    let normalised = |mut x: serde_json::Value| {
        // Packet counters move between any two requests.
        x["dataplane"]["fast_path"]["counters"] = serde_json::Value::Null;
        x
    };
    let mut last = (serde_json::Value::Null, serde_json::Value::Null);
    common::dp::wait_for(std::time::Duration::from_secs(10), || {
        let cli = weft_ok(&["status", "--socket", &socket, "--json"]);
        assert_eq!(cli.lines().count(), 1, "{cli}");
        let (code, raw) = weft_agent::api::call(
            std::path::Path::new(&socket),
            "GET",
            "/status",
            None,
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(code, 200);
        let cli: serde_json::Value = serde_json::from_str(cli.trim()).unwrap();
        let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
        last = (normalised(cli), normalised(raw));
        (last.0 == last.1).then_some(())
    });
    assert_eq!(last.0, last.1);
}

#[test]
fn the_api_bounds_requests_and_serves_metrics_and_logs_are_json_events() {
    if !root_or_skip("the_api_bounds_requests_and_serves_metrics_and_logs_are_json_events") {
        return;
    }
    let lab = Lab::up_args("apib", 2, "mesh", &["--no-agents"]);
    let dir = format!("/run/weft-lab/{}", lab.name);
    let (good, bad) = (
        format!("{dir}/t-good.secret"),
        format!("{dir}/t-bad.secret"),
    );
    std::fs::write(&good, "the cluster secret\n").unwrap();
    std::fs::write(&bad, "another secret\n").unwrap();
    let a = spawn_agent(
        &lab,
        "h1",
        "n1",
        7000,
        &good,
        &[
            "--log-format",
            "json",
            "--log-filter",
            "info,weft::mesh=debug",
        ],
    );
    let socket = std::path::Path::new(&a.socket);
    let call = |method: &str, path: &str, body: Option<&str>| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            match weft_agent::api::call(
                socket,
                method,
                path,
                body,
                std::time::Duration::from_secs(10),
            ) {
                Ok(r) => return r,
                Err(e) if std::time::Instant::now() > deadline => panic!("{method} {path}: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    };
    let (code, _) = call("GET", "/status", None);
    assert_eq!(code, 200);
    // A body over 1 MiB: 413, with a JSON error; the agent goes on.
    let big = "x".repeat(weft_agent::api::MAX_REQUEST + 1);
    let (code, body) = call("POST", "/connect", Some(&big));
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("request too large"), "{body}");
    let (code, body) = call("GET", "/nope", None);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no such endpoint: GET /nope"), "{body}");
    let (code, body) = call("POST", "/connect", Some("{}"));
    assert_eq!(code, 400, "{body}");
    // The plugin's reports: only known commands, sane numbers.
    let (code, _) = call(
        "POST",
        "/cni/report",
        Some(r#"{"command":"ADD","seconds":0.004}"#),
    );
    assert_eq!(code, 200);
    let (code, body) = call(
        "POST",
        "/cni/report",
        Some(r#"{"command":"RM","seconds":1}"#),
    );
    assert_eq!(code, 400, "{body}");
    let (code, _) = call(
        "POST",
        "/cni/report",
        Some(r#"{"command":"DEL","seconds":-1}"#),
    );
    assert_eq!(code, 400);
    // The same metrics on the socket as on the metrics address (loopback of h1).
    let (code, text) = call("GET", "/metrics", None);
    assert_eq!(code, 200);
    assert!(
        text.contains("weft_cni_operations_total{command=\"ADD\",result=\"ok\",code=\"0\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("weft_cni_operation_duration_seconds_count{command=\"ADD\"} 1"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let (ok, scraped) = lab.exec(
        "h1",
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            "http://127.0.0.1:6782/metrics",
        ],
    );
    assert!(ok && scraped.contains("weft_build_info{"), "{scraped}");
    let (_, other) = lab.exec(
        "h1",
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:6782/status",
        ],
    );
    assert_eq!(other.trim(), "404");

    // A peer with the wrong secret: one structured event, with its facts as fields.
    let _rogue = spawn_agent(
        &lab,
        "h2",
        "rogue",
        7000,
        &bad,
        &["--peer", "172.30.0.1:7000"],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refused = loop {
        let log = std::fs::read_to_string(&a.log).unwrap_or_default();
        let events: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if let Some(e) = events
            .into_iter()
            .find(|e| e["target"] == "weft::mesh" && e["reason"].is_string())
        {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal event in {log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(refused["level"], "WARN", "{refused}");
    assert!(
        refused["peer_addr"]
            .as_str()
            .unwrap()
            .starts_with("172.30.0.2:"),
        "{refused}"
    );
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("refused connection"),
        "{refused}"
    );
    let (_, text) = call("GET", "/metrics", None);
    assert!(
        !text.contains("weft_errors_total{kind=\"peer_refused\"} 0"),
        "{text}"
    );
}
