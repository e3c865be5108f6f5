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
    for cmd in ["status", "peers", "ipam"] {
        v.push(vec![cmd.to_string(), "--socket".into(), socket.into()]);
        v.push(vec![
            cmd.to_string(),
            "--socket".into(),
            socket.into(),
            "--json".into(),
        ]);
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
    // The shape weft status --json has always had.
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["conflicts", "dataplane", "node", "peers"], "{v}");
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
    // Exactly the body of GET /status, one line.
    let (code, raw) = weft_agent::api::call(
        std::path::Path::new(&socket),
        "GET",
        "/status",
        None,
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(code, 200);
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let mut a = v.clone();
    let mut b = raw;
    // Peer connection ages and counters move between the two requests.
    for x in [&mut a, &mut b] {
        x["dataplane"]["fast_path"]["counters"] = serde_json::Value::Null;
    }
    assert_eq!(a, b);
    assert_eq!(out.lines().count(), 1);
}
