//! The cluster IPAM through the agent: two agents started together (`--ipam-init 2`) on a
//! small pool agree on a start, hand out distinct addresses from their own blocks, move a
//! block to the node that runs out, keep their allocations across a crash, and a stopped
//! node is removed with `weft rmpeer` and comes back empty. Then the CNI plugin without a
//! `range` takes its addresses from the agent. Agents here run on port 7000 in labs of their
//! own, started and ended by this test (by pid).

mod common;
use common::*;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod ipam_support;
use ipam_support::*;

const POOL: &str = "10.99.0.0/24";

/// An agent on the small pool, cut into /28 blocks.
fn start_agent(lab: &Lab, host: &str, name: &str, peer: Option<&str>, init: u32) -> Agent {
    start_agent_with(lab, host, name, peer, init, POOL)
}

fn start_agent_with(
    lab: &Lab,
    host: &str,
    name: &str,
    peer: Option<&str>,
    init: u32,
    pool: &str,
) -> Agent {
    let peers: Vec<&str> = peer.into_iter().collect();
    start_agent_full(
        lab,
        host,
        name,
        &peers,
        init,
        pool,
        &["--ipam-block-v4", "28"],
    )
}

#[test]
fn two_agents_share_a_pool_and_keep_it_across_a_restart() {
    if !root_or_skip("ipam_two_agents") {
        return;
    }
    let lab = Lab::up_args("ipa", 2, "mesh", &["--no-agents"]);
    let n1 = start_agent(&lab, "h1", "n1", Some("172.30.0.2:7000"), 2);
    let mut n2 = start_agent(&lab, "h2", "n2", Some("172.30.0.1:7000"), 2);
    wait_for("both agents ready", &[&n1, &n2], || {
        ready(&n1) && ready(&n2)
    });

    // 40 containers on each node: 80 distinct addresses of the pool, each in a block of
    // the node that handed it out.
    let mut all = BTreeSet::new();
    let mut on = [Vec::new(), Vec::new()];
    for i in 0..40 {
        for (k, a) in [&n1, &n2].into_iter().enumerate() {
            let ip = allocate(a, &format!("n{}-c{i}", k + 1));
            assert!(all.insert(ip), "{ip} handed out twice");
            on[k].push(ip);
        }
    }
    assert_eq!(all.len(), 80);
    let pool = Cidr::parse(POOL);
    for ip in &all {
        assert!(pool.contains(ip), "{ip} outside {POOL}");
        let last = octet(ip);
        assert!(
            last != 0 && last != 255,
            "{ip} is the pool's network or broadcast address"
        );
    }
    // Asking again for a container that has an address gives the same one.
    assert_eq!(allocate(&n1, "n1-c0"), on[0][0]);

    // Both nodes see both, with their blocks and counts.
    wait_for("n1 sees n2's 40 addresses", &[&n1, &n2], || {
        report(&n1).is_some_and(|r| node(&r, "n2").is_some_and(|n| n["used"] == 40))
    });
    let r1 = report(&n1).unwrap();
    assert_eq!(r1["pools"], json!([POOL]));
    assert_eq!(r1["block_v4"], 28);
    assert_eq!(r1["usable"], 254);
    assert_eq!(r1["nodes"].as_array().unwrap().len(), 2, "{r1}");
    for (k, name) in ["n1", "n2"].into_iter().enumerate() {
        let n = node(&r1, name).unwrap_or_else(|| panic!("{name} missing: {r1}"));
        assert_eq!(n["status"], "up", "{n}");
        assert_eq!(n["used"], 40, "{n}");
        assert_eq!(n["removed"], false);
        let blocks = cidrs(n);
        assert!(blocks.len() >= 3, "40 addresses need 3 /28s: {n}");
        assert!(blocks.iter().all(|b| b.size() == 16));
        for ip in &on[k] {
            assert!(
                blocks.iter().any(|b| b.contains(ip)),
                "{ip} of {name} is outside its blocks {blocks:?}"
            );
        }
    }
    assert_eq!(node(&r1, "n1").unwrap()["local"], true);
    assert_eq!(
        node(&r1, "n1").unwrap()["heir_name"],
        "n2",
        "the genesis ring"
    );
    let text = weft_ok(&["ipam", "--socket", &n1.socket]);
    assert!(text.contains("cluster IPAM ready"), "{text}");
    assert!(text.contains("n1*") && text.contains("n2"), "{text}");
    assert!(text.contains(&format!("pools {POOL}")), "{text}");

    // Release, then allocate again.
    let (code, v) = api(&n1, "POST", "/ipam/release", Some(owner("n1-c5")));
    assert_eq!(
        (code, v["address"].as_str()),
        (200, Some(&*on[0][5].to_string()))
    );
    assert_eq!(lookup(&n1, "n1-c5"), None);
    let (_, v) = api(&n1, "POST", "/ipam/release", Some(owner("n1-c5")));
    assert_eq!(v["address"], Value::Null, "a second release frees nothing");
    let again = allocate(&n1, "n1-c5");
    assert!(!on[1].contains(&again) && !on[0][..5].contains(&again));
    on[0][5] = again;

    // n1 runs out of its own share: a block moves from n2 while the allocation waits.
    let share_n1: usize = 127; // 8 /28 blocks, the pool's network address excluded
    let mut extra = Vec::new();
    for i in 40..(share_n1 + 10) {
        extra.push(allocate(&n1, &format!("n1-c{i}")));
    }
    let mut mine: BTreeSet<IpAddr> = on[0].iter().copied().collect();
    for ip in &extra {
        assert!(mine.insert(*ip) && !on[1].contains(ip), "{ip} twice");
    }
    wait_for(
        "n1 shows more than its share of blocks",
        &[&n1, &n2],
        || report(&n1).is_some_and(|r| node(&r, "n1").is_some_and(|n| cidrs(n).len() > 8)),
    );

    // GC keeps exactly the valid attachments.
    let valid: Vec<Value> = (0..share_n1 + 10)
        .filter(|i| *i != 7)
        .map(|i| owner(&format!("n1-c{i}")))
        .collect();
    let (code, v) = api(&n1, "POST", "/ipam/gc", Some(json!({ "valid": valid })));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["released"], json!([on[0][7].to_string()]));
    assert_eq!(lookup(&n1, "n1-c7"), None);

    // A crash of n2 keeps its allocations; it allocates again once its heir confirms it.
    let lookups: Vec<IpAddr> = (0..40)
        .map(|i| lookup(&n2, &format!("n2-c{i}")).unwrap())
        .collect();
    assert_eq!(lookups, on[1]);
    drop(n2);
    n2 = start_agent(&lab, "h2", "n2", Some("172.30.0.1:7000"), 2);
    wait_for("n2 answers again", &[&n1, &n2], || report(&n2).is_some());
    for (i, ip) in on[1].iter().enumerate() {
        assert_eq!(lookup(&n2, &format!("n2-c{i}")), Some(*ip));
    }
    wait_for("n2 ready again", &[&n1, &n2], || ready(&n2));
    let fresh = allocate(&n2, "n2-after-restart");
    assert!(!on[1].contains(&fresh) && !mine.contains(&fresh), "{fresh}");

    // rmpeer refuses a node that is up, removes it once stopped; back, it starts empty.
    let out = weft(&["rmpeer", "--socket", &n1.socket, "n2"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is up"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(n2);
    wait_for("n1 sees n2 down", &[&n1], || {
        report(&n1).is_some_and(|r| node(&r, "n2").is_some_and(|n| n["status"] != "up"))
    });
    let out = weft_ok(&["rmpeer", "--socket", &n1.socket, "n2"]);
    assert!(out.contains("removal of"), "{out}");
    wait_for("n1 took n2's space", &[&n1], || {
        report(&n1).is_some_and(|r| node(&r, "n2").is_some_and(|n| n["removed"] == true))
    });
    let r = report(&n1).unwrap();
    assert_eq!(
        node(&r, "n1").unwrap()["heir_name"],
        Value::Null,
        "n1's heir chain came back to n1: {r}"
    );
    let n2 = start_agent(&lab, "h2", "n2", Some("172.30.0.1:7000"), 2);
    wait_for("removed n2 back and ready", &[&n1, &n2], || ready(&n2));
    assert_eq!(lookup(&n2, "n2-c0"), None, "a removed node keeps nothing");
    let back = allocate(&n2, "n2-back");
    wait_for("n1 sees n2's new block", &[&n1, &n2], || {
        report(&n1).is_some_and(|r| {
            node(&r, "n2").is_some_and(|n| cidrs(n).iter().any(|b| b.contains(&back)))
        })
    });
    assert!(!mine.contains(&back), "{back} is n1's");
    // n1's heir was n2, removed: the chain came back to n1, which names a new heir, the
    // node back and allocating.
    wait_for("n1 names a new heir", &[&n1, &n2], || {
        report(&n1).is_some_and(|r| node(&r, "n1").is_some_and(|n| n["heir_name"] == "n2"))
    });
    drop(n2);
    drop(n1);
}

fn octet(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(_) => panic!("{ip} is not IPv4"),
    }
}

#[test]
fn the_plugin_takes_cluster_addresses_from_the_agent() {
    if !root_or_skip("ipam_plugin_agent") {
        return;
    }
    let lab = Lab::up_args("ipp", 1, "mesh", &["--no-agents"]);
    let data = format!("/run/weft-lab/{}/t-plugin", lab.name);
    let host = lab.host_ns("h1");
    let netns = lab.netns("c1");
    let missing = format!("/run/weft-lab/{}/nothing.sock", lab.name);

    // No agent: ADD fails with "try again later", naming the socket and `weft agent`.
    let (code, v, raw) = plugin(Plugin {
        host_ns: &host,
        env: cni_env("ADD", "c1", &netns, "eth0"),
        stdin: cni_conf(&missing, &data),
    });
    assert_eq!(code, 1, "{raw}");
    assert_eq!(v["code"], 11, "{v}");
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains(&missing) && msg.contains("weft agent"),
        "{msg}"
    );
    assert!(weft_links(&host).is_empty(), "a failed ADD left a link");
    let (_, v, _) = plugin(Plugin {
        host_ns: &host,
        env: vec![("CNI_COMMAND", "STATUS".into())],
        stdin: cni_conf(&missing, &data),
    });
    assert_eq!(v["code"], 50, "STATUS without an agent: {v}");

    // An agent that is not ready (init 2, alone): STATUS fails, ADD waits, then is told to
    // try again later, leaving nothing behind.
    let waiter = start_agent(&lab, "h1", "waiter", None, 2);
    wait_for("the waiting agent answers", &[&waiter], || {
        report(&waiter).is_some()
    });
    let conf = cni_conf(&waiter.socket, &data);
    let (_, v, _) = plugin(Plugin {
        host_ns: &host,
        env: vec![("CNI_COMMAND", "STATUS".into())],
        stdin: conf.clone(),
    });
    assert_eq!(v["code"], 50, "STATUS of an agent that is not ready: {v}");
    assert!(v["msg"].as_str().unwrap().contains("not ready"), "{v}");
    let t = Instant::now();
    let (_, v, raw) = plugin(Plugin {
        host_ns: &host,
        env: cni_env("ADD", "c1", &netns, "eth0"),
        stdin: conf,
    });
    assert_eq!(v["code"], 11, "{raw}");
    assert!(v["msg"].as_str().unwrap().contains("not ready"), "{v}");
    assert!(
        t.elapsed() >= Duration::from_secs(9),
        "answered before the wait"
    );
    assert!(weft_links(&host).is_empty(), "a failed ADD left a link");
    drop(waiter);

    // A full pool: ADD gets code 100 (ADDRESS_EXHAUSTED) at once, STATUS fails.
    let tiny = start_agent_with(&lab, "h1", "tiny", None, 1, "10.98.0.0/28");
    wait_for("the tiny agent ready", &[&tiny], || ready(&tiny));
    for i in 0..14 {
        allocate(&tiny, &format!("fill{i}"));
    }
    let (code, v) = api(&tiny, "POST", "/ipam/allocate", Some(owner("one-too-many")));
    assert_eq!(code, 507, "{v}");
    let conf = cni_conf(&tiny.socket, &data);
    let (_, v, raw) = plugin(Plugin {
        host_ns: &host,
        env: cni_env("ADD", "c1", &netns, "eth0"),
        stdin: conf.clone(),
    });
    assert_eq!(v["code"], 100, "{raw}");
    assert!(weft_links(&host).is_empty(), "a failed ADD left a link");
    let (_, v, _) = plugin(Plugin {
        host_ns: &host,
        env: vec![("CNI_COMMAND", "STATUS".into())],
        stdin: conf,
    });
    assert_eq!(v["code"], 50, "STATUS of a full pool: {v}");
    drop(tiny);

    // A lone first node (init 1, no peer) allocates at once.
    let a = start_agent(&lab, "h1", "solo", None, 1);
    wait_for("the agent ready", &[&a], || ready(&a));
    let conf = cni_conf(&a.socket, &data);
    let (_, v, raw) = plugin(Plugin {
        host_ns: &host,
        env: vec![("CNI_COMMAND", "STATUS".into())],
        stdin: conf.clone(),
    });
    assert!(raw.trim().is_empty(), "STATUS: {v}");
    let (code, v, raw) = plugin(Plugin {
        host_ns: &host,
        env: cni_env("ADD", "c1", &netns, "eth0"),
        stdin: conf.clone(),
    });
    assert_eq!(code, 0, "{raw}\n{}", log_tail(&a));
    let addr = v["ips"][0]["address"].as_str().unwrap().to_string();
    let ip: IpAddr = addr.split('/').next().unwrap().parse().unwrap();
    assert!(addr.ends_with("/32"), "{addr}");
    assert!(Cidr::parse(POOL).contains(&ip));
    assert_eq!(v["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(lookup(&a, "c1"), Some(ip));
    let (ok, text) = sh(
        "ip",
        &[
            "netns",
            "exec",
            &format!("weft-{}-xc1", lab.name),
            "ip",
            "-o",
            "addr",
            "show",
            "eth0",
        ],
    );
    assert!(ok && text.contains(&addr), "{text}");
    let (code, _, raw) = plugin(Plugin {
        host_ns: &host,
        env: cni_env("CHECK", "c1", &netns, "eth0"),
        stdin: json!({
            "cniVersion": "1.1.0", "name": "weft", "type": "weft",
            "agentSocket": a.socket, "dataDir": data, "prevResult": v,
        })
        .to_string(),
    });
    assert_eq!(code, 0, "CHECK: {raw}");

    // GC frees exactly what is not valid: a second attachment goes, the first stays.
    let netns2 = lab.netns("c2");
    let (code, _, raw) = plugin(Plugin {
        host_ns: &host,
        env: cni_env("ADD", "c2", &netns2, "eth0"),
        stdin: conf.clone(),
    });
    assert_eq!(code, 0, "{raw}");
    assert!(lookup(&a, "c2").is_some());
    let (code, _, raw) = plugin(Plugin {
        host_ns: &host,
        env: vec![("CNI_COMMAND", "GC".into())],
        stdin: json!({
            "cniVersion": "1.1.0", "name": "weft", "type": "weft",
            "agentSocket": a.socket, "dataDir": data,
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
        })
        .to_string(),
    });
    assert_eq!(code, 0, "GC: {raw}");
    assert_eq!(lookup(&a, "c2"), None);
    assert_eq!(lookup(&a, "c1"), Some(ip));
    assert_eq!(weft_links(&host).len(), 1, "GC removes c2's link only");

    // DEL releases; a second DEL is fine.
    for _ in 0..2 {
        let (code, _, raw) = plugin(Plugin {
            host_ns: &host,
            env: cni_env("DEL", "c1", &netns, "eth0"),
            stdin: conf.clone(),
        });
        assert_eq!(code, 0, "DEL: {raw}");
    }
    assert_eq!(lookup(&a, "c1"), None);
    assert!(weft_links(&host).is_empty());
    drop(a);
}
