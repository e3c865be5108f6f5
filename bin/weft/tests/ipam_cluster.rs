//! The cluster IPAM on a 3-host lab, as issue 4 asks: 300 containers started at once
//! across the hosts (through the CNI plugin) get 300 distinct addresses; a partition with
//! containers started on both sides and then healed leaves no address held twice; a
//! killed host removed with `weft rmpeer` from two hosts at once has its blocks taken by
//! exactly one node, comes back empty and does not get them back; the pool then fills to
//! its last address under uneven demand. A second test runs 10,000 CNI ADD/DEL cycles and
//! checks nothing stays allocated and no block stays active past the grace time.
//! Agents run on port 7000 in labs of their own, started and ended by these tests (by pid).

mod common;
use common::*;
mod ipam_support;
use ipam_support::*;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

const PEERS: [&str; 3] = ["172.30.0.1:7000", "172.30.0.2:7000", "172.30.0.3:7000"];

/// Three agents n1..n3 on h1..h3, each peering with the other two, started together.
fn three_agents(lab: &Lab, pool: &str, extra: &[&str]) -> Vec<Agent> {
    let agents: Vec<Agent> = (1..=3).map(|i| agent(lab, i, pool, extra)).collect();
    let refs: Vec<&Agent> = agents.iter().collect();
    wait_for("three agents ready", &refs, || agents.iter().all(ready));
    agents
}

fn agent(lab: &Lab, i: usize, pool: &str, extra: &[&str]) -> Agent {
    let peers: Vec<&str> = (1..=3).filter(|j| *j != i).map(|j| PEERS[j - 1]).collect();
    start_agent_full(
        lab,
        &format!("h{i}"),
        &format!("n{i}"),
        &peers,
        3,
        pool,
        extra,
    )
}

/// `GET /ipam/list` of an agent: address → container id.
fn list(a: &Agent) -> BTreeMap<IpAddr, String> {
    let (code, v) = api(a, "GET", "/ipam/list", None);
    assert_eq!(code, 200, "{v}");
    v["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().parse().unwrap(),
                e["container_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every allocation of every agent given; panics on an address held twice.
fn union(agents: &[&Agent]) -> BTreeMap<IpAddr, String> {
    let mut all: BTreeMap<IpAddr, String> = BTreeMap::new();
    for a in agents {
        for (ip, c) in list(a) {
            if let Some(other) = all.insert(ip, c.clone()) {
                panic!(
                    "{ip} is held twice: by {other} and by {c} (on {})",
                    a.socket
                );
            }
        }
    }
    all
}

/// Block (CIDR) → holder name, as one agent's view resolves every block.
fn holders(a: &Agent) -> Option<BTreeMap<String, String>> {
    let r = report(a)?;
    let mut out = BTreeMap::new();
    for n in r["nodes"].as_array()? {
        let name = n["name"].as_str().unwrap_or("?").to_string();
        for b in n["held"].as_array()? {
            out.insert(b.as_str()?.to_string(), name.clone());
        }
    }
    Some(out)
}

fn status_of(a: &Agent, name: &str) -> Option<String> {
    let r = report(a)?;
    node(&r, name).map(|n| n["status"].as_str().unwrap_or("").to_string())
}

/// Allocates through the API without insisting: (status, address).
fn try_allocate(a: &Agent, c: &str) -> (u16, Option<IpAddr>) {
    let (code, v) = api(a, "POST", "/ipam/allocate", Some(owner(c)));
    (code, v["address"].as_str().map(|s| s.parse().unwrap()))
}

#[test]
fn three_hosts_share_a_pool_through_concurrency_partition_and_removal() {
    if !root_or_skip("ipam_three_hosts") {
        return;
    }
    const POOL: &str = "10.96.0.0/22"; // 16 blocks of /26, 1022 usable addresses
    let lab = Lab::up_args("icl", 3, "mesh", &["--no-agents"]);
    let agents = three_agents(&lab, POOL, &["--ipam-block-v4", "26"]);
    let all: Vec<&Agent> = agents.iter().collect();
    let pool = Cidr::parse(POOL);

    // 300 containers at once, 100 per host, each attached by the CNI plugin of its host,
    // which takes the address from that host's agent.
    let started = Instant::now();
    let results: Vec<(usize, String, i32, Value, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..300)
            .map(|k| {
                let lab = &lab;
                let agents = &agents;
                s.spawn(move || {
                    let h = k % 3;
                    let c = format!("c{k}");
                    let netns = lab.netns(&c);
                    let data = format!("/run/weft-lab/{}/t-cni-h{}", lab.name, h + 1);
                    let (code, v, raw) = plugin(Plugin {
                        host_ns: &lab.host_ns(&format!("h{}", h + 1)),
                        env: cni_env("ADD", &c, &netns, "eth0"),
                        stdin: cni_conf(&agents[h].socket, &data),
                    });
                    (h, c, code, v, raw)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("300 concurrent ADDs took {:?}", started.elapsed());
    let mut addrs: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut by_host: [Vec<IpAddr>; 3] = Default::default();
    for (h, c, code, v, raw) in &results {
        assert_eq!(
            *code,
            0,
            "ADD {c} on h{}: {raw}\n{}",
            h + 1,
            log_tail(&agents[*h])
        );
        let ip: IpAddr = v["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(pool.contains(&ip), "{ip} outside {POOL}");
        if let Some(other) = addrs.insert(ip, c.clone()) {
            panic!("{ip} given to both {other} and {c}");
        }
        by_host[*h].push(ip);
    }
    assert_eq!(addrs.len(), 300, "300 distinct addresses");
    // Each address is in an active block of the host that handed it out, and inside the
    // container.
    for (h, a) in agents.iter().enumerate() {
        let r = report(a).unwrap();
        let blocks = cidrs(node(&r, &format!("n{}", h + 1)).unwrap());
        for ip in &by_host[h] {
            assert!(
                blocks.iter().any(|b| b.contains(ip)),
                "{ip} of h{} is outside its blocks {blocks:?}",
                h + 1
            );
        }
        assert_eq!(list(a).len(), 100);
    }
    for (ip, c) in addrs.iter().take(5) {
        let text = stdout_of(
            "ip",
            &[
                "-n",
                &format!("weft-{}-x{c}", lab.name),
                "-o",
                "addr",
                "show",
                "eth0",
            ],
        );
        assert!(text.contains(&format!("{ip}/32")), "{c}: {text}");
    }

    // Partition: h1 alone, h2 and h3 together. Containers start on both sides.
    weft_ok(&["lab", "cut", "--name", &lab.name, "h1", "h2"]);
    weft_ok(&["lab", "cut", "--name", &lab.name, "h1", "h3"]);
    wait_for("both sides see the partition", &all, || {
        status_of(&agents[0], "n2").is_some_and(|s| s != "up")
            && status_of(&agents[0], "n3").is_some_and(|s| s != "up")
            && status_of(&agents[1], "n1").is_some_and(|s| s != "up")
    });
    let cut: Vec<(usize, String, u16, Option<IpAddr>)> = std::thread::scope(|s| {
        let handles: Vec<_> = [(0usize, 60usize), (1, 40), (2, 40)]
            .into_iter()
            .map(|(h, n)| {
                let a = &agents[h];
                s.spawn(move || {
                    (0..n)
                        .map(|i| {
                            let c = format!("cut-h{}-{i}", h + 1);
                            let (code, ip) = try_allocate(a, &c);
                            (h, c, code, ip)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for (h, c, code, ip) in &cut {
        assert_eq!(
            *code,
            200,
            "{c}: each side allocates from what it holds\n{}",
            log_tail(&agents[*h])
        );
        let ip = ip.unwrap();
        assert!(pool.contains(&ip));
        if let Some(other) = addrs.insert(ip, c.clone()) {
            panic!("{ip} given to both {other} and {c} across the partition");
        }
    }
    weft_ok(&["lab", "heal", "--name", &lab.name]);
    wait_for(
        "every view agrees on every block after the heal",
        &all,
        || {
            let h: Vec<_> = agents.iter().map(holders).collect();
            h[0].is_some()
                && h.iter().all(|x| *x == h[0])
                && agents.iter().all(|a| {
                    ["n1", "n2", "n3"]
                        .iter()
                        .all(|n| status_of(a, n).as_deref() == Some("up"))
                })
        },
    );
    let held = union(&all);
    assert_eq!(
        held.len(),
        440,
        "300 containers and 140 started during the cut"
    );
    assert_eq!(
        held.keys().copied().collect::<BTreeSet<_>>(),
        addrs.keys().copied().collect()
    );

    // Kill h3 (its agent, and its containers with it), then remove it from h1 and h2 at
    // the same moment.
    let mut agents = agents;
    let n3_blocks: BTreeSet<String> = holders(&agents[0])
        .unwrap()
        .into_iter()
        .filter(|(_, n)| n == "n3")
        .map(|(b, _)| b)
        .collect();
    assert!(!n3_blocks.is_empty(), "n3 holds its share");
    let n3_had = list(&agents[2]);
    drop(agents.pop());
    for c in n3_had.values().filter(|c| c.starts_with('c')) {
        sh("ip", &["netns", "del", &format!("weft-{}-x{c}", lab.name)]);
    }
    let live: Vec<&Agent> = agents.iter().collect();
    wait_for("h1 and h2 see n3 down", &live, || {
        agents
            .iter()
            .all(|a| status_of(a, "n3").is_some_and(|s| s != "up"))
    });
    let outs: Vec<(bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = agents
            .iter()
            .map(|a| {
                s.spawn(move || {
                    let out = weft(&["rmpeer", "--socket", &a.socket, "n3"]);
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    (out.status.success(), text)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (ok, text) in &outs {
        assert!(ok, "rmpeer n3: {text}");
    }
    wait_for(
        "both views: n3 removed, its blocks with one node",
        &live,
        || {
            let h: Vec<_> = agents.iter().map(holders).collect();
            let removed = agents.iter().all(|a| {
                report(a).is_some_and(|r| node(&r, "n3").is_some_and(|n| n["removed"] == true))
            });
            removed
                && h.iter().all(|x| x.is_some() && *x == h[0])
                && h[0].as_ref().is_some_and(|m| {
                    n3_blocks
                        .iter()
                        .all(|b| m.get(b).is_some_and(|n| n != "n3"))
                })
        },
    );
    let after = holders(&agents[0]).unwrap();
    let new_owners: BTreeSet<&String> = n3_blocks.iter().map(|b| &after[b]).collect();
    assert_eq!(
        new_owners.len(),
        1,
        "exactly one heir took n3's blocks: {new_owners:?}"
    );
    let heir = new_owners.into_iter().next().unwrap().clone();
    for a in &agents {
        let r = report(a).unwrap();
        assert_eq!(node(&r, "n3").unwrap()["heir_name"], heir.as_str(), "{r}");
    }

    // n3 returns: removed, it starts empty and none of its old blocks come back to it.
    agents.push(agent(&lab, 3, POOL, &["--ipam-block-v4", "26"]));
    let all: Vec<&Agent> = agents.iter().collect();
    wait_for("n3 back and ready", &all, || ready(&agents[2]));
    assert!(
        list(&agents[2]).is_empty(),
        "a removed node keeps no allocation"
    );
    for c in n3_had.values() {
        assert_eq!(lookup(&agents[2], c), None);
    }
    wait_for("views agree with n3 back", &all, || {
        let h: Vec<_> = agents.iter().map(holders).collect();
        h[0].is_some() && h.iter().all(|x| *x == h[0])
    });
    let back = holders(&agents[2]).unwrap();
    for b in &n3_blocks {
        assert_eq!(back[b], heir, "{b} went back to n3");
    }

    // Fill the pool with uneven demand (n1 five times, n2 twice, n3 once per round, a few
    // at once each) until every agent says it is full: every usable address is then in
    // use, n3's old blocks among them.
    let weights = [5usize, 2, 1];
    let mut full = [false; 3];
    let mut round = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while !full.iter().all(|f| *f) {
        assert!(Instant::now() < deadline, "the pool did not fill in time");
        round += 1;
        let got: Vec<(usize, u16)> = std::thread::scope(|s| {
            let mut handles = Vec::new();
            for (h, w) in weights.iter().enumerate() {
                if full[h] {
                    continue;
                }
                for i in 0..*w {
                    let a = &agents[h];
                    handles.push(s.spawn(move || {
                        (
                            h,
                            try_allocate(a, &format!("fill-h{}-{round}-{i}", h + 1)).0,
                        )
                    }));
                }
            }
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (h, code) in got {
            match code {
                200 => {}
                507 => full[h] = true,
                503 => {} // waited 10 s for space from another node: ask again
                other => panic!("allocation on n{} answered {other}", h + 1),
            }
        }
    }
    let held = union(&all);
    let r = report(&agents[0]).unwrap();
    let usable = r["usable"].as_u64().unwrap();
    assert_eq!(usable, 1022);
    assert_eq!(
        held.len() as u64,
        usable,
        "the pool is full to its last address"
    );
    let reused = held
        .keys()
        .filter(|ip| n3_blocks.iter().any(|b| Cidr::parse(b).contains(ip)))
        .count();
    assert!(reused > 0, "n3's old blocks are in use again");
    let borrowed: u64 = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["borrowed"].as_u64().unwrap_or(0))
        .sum();
    eprintln!("pool full after {round} rounds; {reused} addresses of n3's old blocks reused; {borrowed} borrowed");
    drop(agents);
}

#[test]
fn ten_thousand_add_del_cycles_leave_nothing_behind() {
    if !root_or_skip("ipam_add_del_cycles") {
        return;
    }
    const POOL: &str = "10.95.0.0/24";
    let lab = Lab::up_args("icy", 3, "mesh", &["--no-agents"]);
    let agents = three_agents(
        &lab,
        POOL,
        &["--ipam-block-v4", "28", "--ipam-grace-ms", "3000"],
    );
    let all: Vec<&Agent> = agents.iter().collect();

    // 10,000 cycles of the CNI plugin, as a runtime runs them: 3 workers per host, each
    // with a namespace of its own, ADD a new container there and DEL it again.
    let cycles_per_worker = 10_000 / 9 + 1;
    let started = Instant::now();
    let done: usize = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (h, a) in agents.iter().enumerate() {
            for t in 0..3 {
                let lab = &lab;
                handles.push(s.spawn(move || {
                    let host = lab.host_ns(&format!("h{}", h + 1));
                    let netns = lab.netns(&format!("w{h}{t}"));
                    let data = format!("/run/weft-lab/{}/t-cni-h{}", lab.name, h + 1);
                    let conf = cni_conf(&a.socket, &data);
                    for i in 0..cycles_per_worker {
                        let c = format!("cy-h{h}-t{t}-{i}");
                        for cmd in ["ADD", "DEL"] {
                            let (code, _, raw) = plugin(Plugin {
                                host_ns: &host,
                                env: cni_env(cmd, &c, &netns, "eth0"),
                                stdin: conf.clone(),
                            });
                            assert_eq!(code, 0, "{cmd} {c}: {raw}\n{}", log_tail(a));
                        }
                    }
                    cycles_per_worker
                }));
            }
        }
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(done >= 10_000, "{done} cycles");
    eprintln!("{done} CNI ADD/DEL cycles took {:?}", started.elapsed());
    for (h, a) in agents.iter().enumerate() {
        assert!(list(a).is_empty(), "allocations left on {}", a.socket);
        let links = weft_links(&lab.host_ns(&format!("h{}", h + 1)));
        assert!(links.is_empty(), "links left on h{}: {links:?}", h + 1);
    }
    // Within the grace time (and a few ticks), every block is back in reserve.
    wait_for("no block active past the grace time", &all, || {
        agents.iter().all(|a| {
            report(a).is_some_and(|r| {
                r["nodes"].as_array().unwrap().iter().all(|n| {
                    n["blocks"].as_array().is_some_and(|b| b.is_empty())
                        && n["used"].as_u64() == Some(0)
                        && n["lent"].as_u64() == Some(0)
                        && n["borrowed"].as_u64() == Some(0)
                })
            })
        })
    });
    drop(agents);
}
