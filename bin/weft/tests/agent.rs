//! The agent on its own: refusing a peer without the cluster secret, surviving garbage on
//! its peer port, and config errors that name the field. Agents here run on port 7000 in a
//! lab of their own, started and ended by this test (by pid).

mod common;
use common::*;

use std::time::{Duration, Instant};

fn start_agent(lab: &Lab, host: &str, name: &str, port: u16, peer: &str, secret: &str) -> Agent {
    spawn_agent(lab, host, name, port, secret, &["--peer", peer])
}

fn status(a: &Agent) -> Option<serde_json::Value> {
    let out = weft(&["status", "--socket", &a.socket, "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn peer_state(a: &Agent, name: &str) -> Option<(String, bool)> {
    let s = status(a)?;
    s["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| {
            (
                p["status"].as_str().unwrap_or_default().to_string(),
                p["connected"].as_bool().unwrap_or(false),
            )
        })
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("gave up waiting for: {what}");
}

#[test]
fn wrong_secret_is_refused_and_garbage_is_dropped() {
    if !root_or_skip("agent_refusals") {
        return;
    }
    let lab = Lab::up_args("agw", 2, "mesh", &["--no-agents"]);
    let dir = format!("/run/weft-lab/{}", lab.name);
    let good = format!("{dir}/t-good.secret");
    let bad = format!("{dir}/t-bad.secret");
    std::fs::write(&good, "the cluster secret\n").unwrap();
    std::fs::write(&bad, "not the cluster secret\n").unwrap();
    let h1 = start_agent(&lab, "h1", "n1", 7000, "172.30.0.2:7000", &good);
    let h2 = start_agent(&lab, "h2", "n2", 7000, "172.30.0.1:7000", &good);
    wait_for("n1 and n2 connected", || {
        peer_state(&h1, "n2") == Some(("up".into(), true))
            && peer_state(&h2, "n1") == Some(("up".into(), true))
    });

    // A node with the wrong secret dials n1: refused, and nothing it says is used.
    let rogue = start_agent(&lab, "h2", "rogue", 7001, "172.30.0.1:7000", &bad);
    wait_for("n1 logs the refusal", || {
        std::fs::read_to_string(&h1.log)
            .unwrap_or_default()
            .contains("refused connection")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(peer_state(&h1, "rogue"), None, "n1 learned of the rogue");
    assert_eq!(peer_state(&rogue, "n1"), None, "the rogue learned of n1");
    let rs = status(&rogue).expect("rogue serves its API");
    assert!(rs["peers"].as_array().unwrap().is_empty(), "{rs}");

    // Garbage on n1's peer port: random bytes, a frame of nonsense, an oversized length.
    for payload in [
        "head -c 4000 /dev/urandom",
        "printf '\\000\\005hello'",
        "printf '\\377\\377xx'",
        "printf 'GET / HTTP/1.1\\r\\n\\r\\n'",
    ] {
        let (_, _) = sh(
            "ip",
            &[
                "netns",
                "exec",
                &lab.host_ns("h2"),
                "sh",
                "-c",
                &format!("{payload} | busybox nc -w 1 172.30.0.1 7000"),
            ],
        );
    }
    // n1 still serves, and its real peer stays connected and up.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(peer_state(&h1, "n2"), Some(("up".into(), true)));
    assert_eq!(peer_state(&h2, "n1"), Some(("up".into(), true)));
    drop(rogue);
    drop(h2);
    drop(h1);
}

#[test]
fn agent_config_errors_name_the_field() {
    let cases: &[(&[&str], &str)] = &[
        (&["agent", "--secret-file", "/nonexistent"], "`name`"),
        (
            &[
                "agent",
                "--name",
                "bad name",
                "--secret-file",
                "/x",
                "--listen",
                "127.0.0.1:1",
            ],
            "`name`",
        ),
        (
            &[
                "agent",
                "--name",
                "a",
                "--secret-file",
                "/x",
                "--listen",
                "1.2.3.4:port",
            ],
            "`listen`",
        ),
        (
            &["agent", "--name", "a", "--secret-file", "/x"],
            "`advertise`",
        ),
        (
            &[
                "agent",
                "--name",
                "a",
                "--listen",
                "127.0.0.1:7",
                "--peer",
                "nope:nope",
            ],
            "`peer`",
        ),
        (
            &["agent", "--name", "a", "--listen", "127.0.0.1:7"],
            "`secret-file`",
        ),
        (
            &[
                "agent",
                "--name",
                "a",
                "--listen",
                "127.0.0.1:7",
                "--secret-file",
                "/nonexistent/s",
            ],
            "cluster secret",
        ),
        (
            &["status", "--socket", "/nonexistent/weft.sock"],
            "cannot reach the weft agent",
        ),
        (
            &[
                "connect",
                "--socket",
                "/nonexistent/weft.sock",
                "not an addr",
            ],
            "not an address",
        ),
    ];
    for (args, want) in cases {
        let out = weft(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "weft {args:?} should fail");
        assert!(err.contains(want), "weft {args:?}: {err:?} lacks {want:?}");
    }
}

#[test]
fn connect_at_run_time_and_a_duplicate_name_is_reported() {
    if !root_or_skip("agent_connect_and_conflict") {
        return;
    }
    let lab = Lab::up_args("agc", 3, "mesh", &["--no-agents"]);
    let secret = format!("/run/weft-lab/{}/t.secret", lab.name);
    std::fs::write(&secret, "s").unwrap();
    let a = start_agent(&lab, "h1", "alpha", 7000, "172.30.0.2:7000", &secret);
    let b = start_agent(&lab, "h2", "beta", 7000, "172.30.0.1:7000", &secret);
    wait_for("alpha sees beta", || {
        peer_state(&a, "beta") == Some(("up".into(), true))
    });
    // A node started with a peer that does not exist joins once told where to go.
    let c = start_agent(&lab, "h3", "alpha", 7000, "172.30.0.99:7000", &secret);
    wait_for("the newcomer's API", || status(&c).is_some());
    let out = weft(&["connect", "--socket", &c.socket, "172.30.0.2:7000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the newcomer sees beta", || {
        peer_state(&c, "beta").is_some_and(|(s, _)| s == "up")
    });
    // It claims the name "alpha" too: every node reports the conflict, nothing is merged.
    wait_for("beta reports the name conflict", || {
        status(&b).is_some_and(|s| {
            s["conflicts"].as_array().is_some_and(|c| {
                c.iter().any(|x| {
                    x["name"] == "alpha" && x["ids"].as_array().map(|i| i.len()) == Some(2)
                })
            })
        })
    });
    let s = status(&b).unwrap();
    let alphas = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "alpha")
        .count();
    assert_eq!(alphas, 2, "two distinct nodes named alpha: {s}");
    let out = weft(&[
        "forget",
        "--socket",
        &c.socket,
        "172.30.0.99:7000",
        "--json",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["was_known"], true, "{v}");
    drop(c);
    drop(b);
    drop(a);
}
