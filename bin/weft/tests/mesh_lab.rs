//! The mesh in the lab: `weft lab up` starts `weft agent` on every host, each given only the
//! host before it as a peer, and the agents find each other, route around a topology's
//! blocked pairs and around `weft lab cut`, notice an agent that dies and take it back with
//! its identity when it restarts.
//!
//! Every check polls `weft status --json` on the agents' sockets until it holds or a
//! generous deadline passes (never asserting how long anything took); on failure the last
//! status of every host and the end of each agent's log are printed. Each test has its own
//! lab, so they run in parallel.

mod common;
use common::*;

use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a condition may take. Generous: a redial after a cut backs off up to 30 s
/// (plus jitter), and tests of other files share the machine's two cores.
const DEADLINE: Duration = Duration::from_secs(75);
const POLL: Duration = Duration::from_millis(200);

fn socket(lab: &Lab, host: &str) -> String {
    format!("/run/weft-lab/{}/{host}/weft.sock", lab.name)
}

fn hosts(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("h{i}")).collect()
}

/// `weft status --json` of a host's agent, or None while it does not answer.
fn status(lab: &Lab, host: &str) -> Option<Value> {
    let out = weft(&["status", "--socket", &socket(lab, host), "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The entry for node `name` in a status's `peers`.
fn peer<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    s["peers"].as_array()?.iter().find(|p| p["name"] == name)
}

fn id_of(s: &Value) -> String {
    s["node"]["id"].as_str().unwrap_or_default().to_string()
}

/// What the lab knows, for a failure message: each host's status and the end of its log.
fn diagnostics(lab: &Lab, n: usize) -> String {
    let mut out = String::new();
    for h in hosts(n) {
        let s = status(lab, &h)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "(no answer)".into());
        let log = std::fs::read_to_string(format!("/run/weft-lab/{}/{h}/agent.log", lab.name))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n      ");
        out.push_str(&format!("  {h} status: {s}\n    log:\n      {tail}\n"));
    }
    let (_, lab_status) = sh(WEFT, &["lab", "status", "--name", &lab.name]);
    out.push_str(&lab_status);
    out
}

/// Polls `check` until it returns Some, or panics after [`DEADLINE`] with `what` and the
/// lab's diagnostics.
fn eventually<T>(lab: &Lab, n: usize, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "gave up after {} s waiting for: {what}\n{}",
                DEADLINE.as_secs(),
                diagnostics(lab, n)
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until every host's agent lists every other host as "up" and no one else, and all
/// agree on each node's id; returns the ids by host (index 0 = h1).
fn all_up(lab: &Lab, n: usize) -> Vec<String> {
    eventually(lab, n, "every agent lists every other host as up", || {
        let statuses: Vec<Value> = hosts(n)
            .iter()
            .map(|h| status(lab, h))
            .collect::<Option<_>>()?;
        let ids: Vec<String> = statuses.iter().map(id_of).collect();
        for (i, s) in statuses.iter().enumerate() {
            let me = format!("h{}", i + 1);
            if s["node"]["name"] != me.as_str() || s["peers"].as_array()?.len() != n - 1 {
                return None;
            }
            for (j, other) in hosts(n).iter().enumerate() {
                if j == i {
                    continue;
                }
                let p = peer(s, other)?;
                if p["status"] != "up" || p["id"] != ids[j].as_str() {
                    return None;
                }
            }
        }
        Some(ids)
    })
}

/// The next hop `from` uses towards `to`, once `to` is up there.
fn next_hop(lab: &Lab, from: &str, to: &str) -> Option<String> {
    let s = status(lab, from)?;
    let p = peer(&s, to)?;
    if p["status"] != "up" {
        return None;
    }
    p["next_hop"].as_str().map(String::from)
}

/// The status `from` gives `to` ("up", "down", ...), None while it does not answer.
fn peer_status(lab: &Lab, from: &str, to: &str) -> Option<String> {
    let s = status(lab, from)?;
    Some(
        peer(&s, to)
            .and_then(|p| p["status"].as_str())
            .unwrap_or("unknown")
            .to_string(),
    )
}

/// `weft lab status --json`: whether the lab believes the host's agent runs.
fn lab_agent_running(lab: &Lab, host: &str) -> bool {
    let v: Value =
        serde_json::from_str(&weft_ok(&["lab", "status", "--name", &lab.name, "--json"])).unwrap();
    let agents = v[0]["agents"].as_array().expect("agents in lab status");
    let a = agents
        .iter()
        .find(|a| a["host"] == host)
        .expect("host's agent");
    assert_eq!(
        a["socket"].as_str(),
        Some(socket(lab, host).as_str()),
        "{a}"
    );
    a["running"].as_bool().expect("running")
}

fn reaches(lab: &Lab, from: &str, to: &str) -> bool {
    lab.exec(from, &["ping", "-c", "1", "-W", "1", to]).0
}

#[test]
fn five_hosts_in_a_mesh_all_see_each_other_up() {
    if !root_or_skip("five_hosts_in_a_mesh_all_see_each_other_up") {
        return;
    }
    let lab = Lab::up("mmesh", 5, "mesh");
    let ids = all_up(&lab, 5);
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 5, "node ids are not distinct: {ids:?}");
    assert!(
        ids.iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())),
        "{ids:?}"
    );
    for h in hosts(5) {
        assert!(
            lab_agent_running(&lab, &h),
            "lab status says {h}'s agent is not running"
        );
    }
    // `weft` run on a lab host finds that host's agent without --socket.
    for (i, h) in hosts(5).iter().enumerate() {
        let (ok, out) = lab.exec(h, &["weft", "status", "--json"]);
        assert!(ok, "weft status on {h}: {out}");
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(
            id_of(&v),
            ids[i],
            "weft status on {h} answered for another node"
        );
    }
    // The secret every agent shares is the lab's, readable by root only.
    let meta = std::fs::metadata("/run/weft-lab/mmesh/secret").expect("secret");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
}

#[test]
fn partial_routes_through_the_host_in_between() {
    if !root_or_skip("partial_routes_through_the_host_in_between") {
        return;
    }
    let lab = Lab::up("mpart", 4, "partial");
    // The underlay itself: h4 reaches only h3.
    assert!(reaches(&lab, "h4", "172.30.0.3"));
    assert!(!reaches(&lab, "h4", "172.30.0.1"));
    let ids = all_up(&lab, 4);
    let h3 = ids[2].clone();
    eventually(
        &lab,
        4,
        "h4 routes to h1 and h2 through h3, and h1 to h4",
        || {
            (next_hop(&lab, "h4", "h1")? == h3
                && next_hop(&lab, "h4", "h2")? == h3
                && next_hop(&lab, "h1", "h4")? == h3)
                .then_some(())
        },
    );
    // h3 reaches h4 directly.
    assert_eq!(next_hop(&lab, "h3", "h4").as_deref(), Some(ids[3].as_str()));
}

#[test]
fn a_killed_agent_goes_down_and_comes_back_with_its_identity() {
    if !root_or_skip("a_killed_agent_goes_down_and_comes_back_with_its_identity") {
        return;
    }
    let lab = Lab::up("mkill", 3, "mesh");
    let ids = all_up(&lab, 3);
    let h2 = ids[1].clone();

    weft_ok(&["lab", "agent", "--name", "mkill", "h2", "kill"]);
    assert!(!lab_agent_running(&lab, "h2"));
    eventually(&lab, 3, "h1 and h3 see h2's agent as not up", || {
        (peer_status(&lab, "h1", "h2")? != "up" && peer_status(&lab, "h3", "h2")? != "up")
            .then_some(())
    });
    // Starting a running agent is refused; starting a stopped one works.
    weft_ok(&["lab", "agent", "--name", "mkill", "h2", "start"]);
    assert!(lab_agent_running(&lab, "h2"));
    let out = weft(&["lab", "agent", "--name", "mkill", "h2", "start"]);
    assert!(!out.status.success(), "a second start was not refused");

    let again = all_up(&lab, 3);
    assert_eq!(again[1], h2, "h2 came back with another node id");
    assert_eq!(again, ids);

    // restart = SIGTERM (the agent exits on it), then start: same identity again.
    weft_ok(&["lab", "agent", "--name", "mkill", "h2", "restart"]);
    assert_eq!(all_up(&lab, 3), ids);
}

#[test]
fn a_cut_is_routed_around_and_heal_restores_direct_hops() {
    if !root_or_skip("a_cut_is_routed_around_and_heal_restores_direct_hops") {
        return;
    }
    let lab = Lab::up("mcut", 3, "mesh");
    let ids = all_up(&lab, 3);
    let (h1, h2, h3) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    eventually(&lab, 3, "h1 and h2 route to each other directly", || {
        (next_hop(&lab, "h1", "h2")? == h2 && next_hop(&lab, "h2", "h1")? == h1).then_some(())
    });

    weft_ok(&["lab", "cut", "--name", "mcut", "h1", "h2"]);
    assert!(!reaches(&lab, "h1", "172.30.0.2"), "the cut does not cut");
    assert!(reaches(&lab, "h1", "172.30.0.3"));
    assert!(reaches(&lab, "h2", "172.30.0.3"));
    eventually(
        &lab,
        3,
        "h1 and h2 still up on each other, through h3",
        || (next_hop(&lab, "h1", "h2")? == h3 && next_hop(&lab, "h2", "h1")? == h3).then_some(()),
    );
    let v: Value =
        serde_json::from_str(&weft_ok(&["lab", "status", "--name", "mcut", "--json"])).unwrap();
    assert_eq!(v[0]["cuts"], serde_json::json!([["h1", "h2"]]));

    weft_ok(&["lab", "heal", "--name", "mcut"]);
    assert!(reaches(&lab, "h1", "172.30.0.2"), "heal does not heal");
    eventually(
        &lab,
        3,
        "h1 and h2 route to each other directly again",
        || (next_hop(&lab, "h1", "h2")? == h2 && next_hop(&lab, "h2", "h1")? == h1).then_some(()),
    );
    let v: Value =
        serde_json::from_str(&weft_ok(&["lab", "status", "--name", "mcut", "--json"])).unwrap();
    assert_eq!(v[0]["cuts"], serde_json::json!([]));
}
