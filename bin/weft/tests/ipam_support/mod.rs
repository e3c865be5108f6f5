//! Helpers of the cluster IPAM lab tests: agents with cluster IPAM on lab hosts, their
//! API and `weft ipam --json` report. Agents are ended by their pid when dropped.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// Starts `weft agent` on lab host `host` (underlay 172.30.0.N, port 7000) with cluster
/// IPAM on `pool`, `init` starting nodes, the given peers and any
/// extra flags. Its log is appended across restarts, so a failure shows the whole story.
pub fn start_agent_full(
    lab: &Lab,
    host: &str,
    name: &str,
    peers: &[&str],
    init: u32,
    pool: &str,
    extra: &[&str],
) -> Agent {
    let secret = format!("/run/weft-lab/{}/t.secret", lab.name);
    if !Path::new(&secret).exists() {
        std::fs::write(&secret, "the ipam test secret\n").unwrap();
    }
    let init = init.to_string();
    let mut args = vec!["--ipam-pools", pool, "--ipam-init", &init];
    for p in peers {
        args.extend(["--peer", p]);
    }
    args.extend(extra);
    spawn_agent(lab, host, name, 7000, &secret, &args)
}

/// One API request; (status, JSON body).
pub fn api(a: &Agent, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (code, text) = weft_agent::api::call(
        Path::new(&a.socket),
        method,
        path,
        body.as_deref(),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", log_tail(a)));
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub fn owner(c: &str) -> Value {
    json!({"container_id": c, "ifname": "eth0"})
}

/// Allocates for container `c` and insists it worked.
pub fn allocate(a: &Agent, c: &str) -> IpAddr {
    let (code, v) = api(a, "POST", "/ipam/allocate", Some(owner(c)));
    assert_eq!(code, 200, "allocate {c}: {v}\n{}", log_tail(a));
    v["address"].as_str().unwrap().parse().unwrap()
}

pub fn lookup(a: &Agent, c: &str) -> Option<IpAddr> {
    let (code, v) = api(
        a,
        "GET",
        &format!("/ipam/lookup?container_id={c}&ifname=eth0"),
        None,
    );
    assert_eq!(code, 200, "{v}");
    v["address"].as_str().map(|s| s.parse().unwrap())
}

/// `weft ipam --json` of an agent, or None while it does not answer.
pub fn report(a: &Agent) -> Option<Value> {
    let out = weft(&["ipam", "--socket", &a.socket, "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

pub fn node<'a>(r: &'a Value, name: &str) -> Option<&'a Value> {
    r["nodes"].as_array()?.iter().find(|n| n["name"] == name)
}

pub fn ready(a: &Agent) -> bool {
    report(a).is_some_and(|r| r["ready"] == true)
}

pub fn log_tail(a: &Agent) -> String {
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    format!(
        "log of {}:\n  {}",
        a.socket,
        lines[lines.len().saturating_sub(15)..].join("\n  ")
    )
}

pub fn wait_for(what: &str, agents: &[&Agent], f: impl FnMut() -> bool) {
    wait_secs(30, what, agents, f)
}

/// Waits up to `secs` for `f`; on a timeout, panics with the agents' logs and reports.
pub fn wait_secs(secs: u64, what: &str, agents: &[&Agent], mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs: Vec<String> = agents.iter().map(|a| log_tail(a)).collect();
    let reports: Vec<String> = agents
        .iter()
        .map(|a| report(a).map(|r| r.to_string()).unwrap_or_default())
        .collect();
    panic!(
        "gave up waiting for: {what}\n{}\n{}",
        logs.join("\n"),
        reports.join("\n")
    );
}

/// An IPv4 CIDR as (network, prefix length).
#[derive(Debug, Clone, Copy)]
pub struct Cidr(pub u32, pub u32);

impl Cidr {
    pub fn parse(s: &str) -> Cidr {
        let (a, l) = s.split_once('/').unwrap();
        let a: std::net::Ipv4Addr = a.parse().unwrap();
        Cidr(u32::from(a), l.parse().unwrap())
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        let IpAddr::V4(ip) = ip else { return false };
        let mask = u32::MAX.checked_shl(32 - self.1).unwrap_or(0);
        u32::from(*ip) & mask == self.0
    }

    pub fn size(&self) -> u32 {
        1 << (32 - self.1)
    }
}

pub fn cidrs(n: &Value) -> Vec<Cidr> {
    n["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| Cidr::parse(b.as_str().unwrap()))
        .collect()
}

/// A weft network config without `range`: addresses come from the agent at `socket`.
pub fn cni_conf(socket: &str, data: &str) -> String {
    json!({
        "cniVersion": "1.1.0",
        "name": "weft",
        "type": "weft",
        "agentSocket": socket,
        "dataDir": data,
    })
    .to_string()
}
