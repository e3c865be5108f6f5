//! The kernel data plane on real namespaces (issue 5, docs/dataplane.md): containers on every
//! host of a `mesh`, `subnets` and `partial` lab reach each other by ping and TCP, with
//! full-size packets and bulk transfers on every path; nothing between containers is
//! translated, traffic to the outside is; the relay shows in traceroute; paths follow the
//! mesh when a link is cut and healed; routes of a host that leaves go, and come back when
//! it returns; a long TCP connection survives agent restarts. Containers' packets take the
//! BPF fast path (its counters, and a netfilter FORWARD probe that sees none of them),
//! and without it the stack carries the same traffic.
//!
//! Every container runs busybox httpd over a directory with a small page, a 2 MiB file and
//! a CGI script that answers the address the request came from (`REMOTE_ADDR`).

mod common;
use common::*;

use std::time::{Duration, Instant};

const BIG: usize = 2 * 1024 * 1024;

struct Pod {
    host: String,
    name: String,
    ip: String,
}

/// The directory every httpd serves (inside the lab's directory, so `lab down` removes it).
fn www(lab: &Lab) -> String {
    let dir = format!("/run/weft-lab/{}/www", lab.name);
    std::fs::create_dir_all(format!("{dir}/cgi-bin")).unwrap();
    std::fs::write(format!("{dir}/index.html"), "weft-ok\n").unwrap();
    std::fs::write(format!("{dir}/big"), vec![b'x'; BIG]).unwrap();
    let cgi = format!("{dir}/cgi-bin/ip");
    std::fs::write(
        &cgi,
        // httpd listens dual-stack: "[::ffff:10.32.0.1]" becomes "10.32.0.1".
        "#!/bin/sh\na=${REMOTE_ADDR#[}; a=${a%]}; a=${a#::ffff:}\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$a\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `weft lab run HOST NAME -- CMD`: the container's address.
fn run(lab: &Lab, host: &str, name: &str, cmd: &[&str]) -> String {
    let mut args = vec!["lab", "run", "--name", &lab.name, host, name, "--"];
    args.extend_from_slice(cmd);
    let out = weft_ok(&args);
    out.split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// Two containers per host, each serving `www` on port 8000.
fn pods(lab: &Lab, hosts: usize, www: &str) -> Vec<Pod> {
    let mut v = Vec::new();
    for h in 1..=hosts {
        for c in ["c1", "c2"] {
            let host = format!("h{h}");
            let ip = run(
                lab,
                &host,
                c,
                &["busybox", "httpd", "-f", "-p", "8000", "-h", www],
            );
            assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{host}/{c}: {ip}");
            v.push(Pod {
                host,
                name: c.into(),
                ip,
            });
        }
    }
    v
}

/// The shell script run in one container against all the others: prints one `FAIL` line
/// per failed check, nothing else.
fn script(src: &Pod, pods: &[Pod]) -> String {
    let mut s = String::from("MTU=$(cat /sys/class/net/eth0/mtu)\n");
    for d in pods
        .iter()
        .filter(|d| !(d.host == src.host && d.name == src.name))
    {
        let ip = &d.ip;
        let to = format!("{}/{}", d.host, d.name);
        s.push_str(&format!(
            "ping -c1 -W2 -q {ip} >/dev/null 2>&1 || echo 'FAIL ping {to}'\n\
             ping -c1 -W2 -q -M do -s $((MTU-28)) {ip} >/dev/null 2>&1 || echo \"FAIL full-size ($MTU) ping {to}\"\n\
             r=$(curl -s -m 3 http://{ip}:8000/cgi-bin/ip 2>&1); [ \"$r\" = '{src_ip}' ] || echo \"FAIL tcp {to}: seen as '$r', not {src_ip}\"\n\
             n=$(curl -s -m 5 http://{ip}:8000/big 2>/dev/null | wc -c); [ \"$n\" = {BIG} ] || echo \"FAIL transfer {to}: $n bytes\"\n",
            src_ip = src.ip,
        ));
    }
    s
}

/// Runs every container's checks; the failures, empty when all passed.
fn failures(lab: &Lab, pods: &[Pod]) -> Vec<String> {
    let mut out = Vec::new();
    for p in pods {
        let target = format!("{}/{}", p.host, p.name);
        let (ok, text) = lab.exec(&target, &["sh", "-c", &script(p, pods)]);
        if !ok {
            out.push(format!("{target}: the checks did not run: {text}"));
        }
        out.extend(
            text.lines()
                .filter(|l| l.starts_with("FAIL"))
                .map(|l| format!("{target}: {l}")),
        );
    }
    out
}

/// Every container reaches every other: retried until the data plane has converged
/// (bounded), then asserted.
fn all_reach_all(lab: &Lab, pods: &[Pod]) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let f = failures(lab, pods);
        if f.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let (_, st) = lab.exec("h1", &["ip", "route"]);
            panic!(
                "{} failed checks:\n{}\nh1 routes:\n{st}",
                f.len(),
                f.join("\n")
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Each container fetches the outside's CGI: it must see the container's host's underlay
/// address (masquerade). The outside has no route to the pools, so only NAT can answer.
fn nat_to_outside(lab: &Lab, pods: &[Pod], www: &str, outside: &str) {
    let (ok, text) = lab.exec("out", &["busybox", "httpd", "-p", "8000", "-h", www]);
    assert!(ok, "httpd in out: {text}");
    let (_, routes) = lab.exec("out", &["ip", "route"]);
    assert!(
        !routes.contains("10.32."),
        "the outside must not route the pools: {routes}"
    );
    for p in pods {
        let underlay = host_underlay(lab, &p.host);
        let target = format!("{}/{}", p.host, p.name);
        let url = format!("http://{outside}:8000/cgi-bin/ip");
        let seen = wait_for(Duration::from_secs(10), || {
            let (ok, t) = lab.exec(&target, &["curl", "-s", "-m", "3", &url]);
            (ok && t.trim() == underlay).then_some(t)
        });
        assert!(
            seen.is_some(),
            "{target} ({}) did not reach the outside as {underlay}",
            p.ip
        );
    }
}

/// With `--nat off` no host has a weft nftables table (weft turns on no connection
/// tracking) and a container's request never comes back from the outside, which has no
/// route to the pools.
fn no_nat(lab: &Lab, pods: &[Pod], www: &str, outside: &str) {
    let (ok, text) = lab.exec("out", &["busybox", "httpd", "-p", "8000", "-h", www]);
    assert!(ok, "httpd in out: {text}");
    let url = format!("http://{outside}:8000/cgi-bin/ip");
    // The same request from a host succeeds, so a failure below is the missing NAT.
    let (ok, text) = lab.exec("h1", &["curl", "-s", "-m", "3", &url]);
    assert!(ok, "h1 must reach the outside itself: {text}");
    // One container per host (a refused answer takes the whole timeout).
    let mut seen = std::collections::BTreeSet::new();
    for p in pods.iter().filter(|p| seen.insert(p.host.clone())) {
        let (_, tables) = lab.exec(&p.host, &["nft", "list", "tables"]);
        assert!(
            !tables.contains("weft"),
            "{}: no weft table without NAT: {tables}",
            p.host
        );
        let target = format!("{}/{}", p.host, p.name);
        let (ok, text) = lab.exec(&target, &["curl", "-s", "-m", "2", &url]);
        assert!(!ok, "{target} reached the outside without NAT: {text}");
    }
}

fn host_underlay(lab: &Lab, host: &str) -> String {
    let (_, t) = lab.exec(host, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    t.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_string()
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The weft routes of a host (`proto 119` with a gateway), one per line, sorted.
fn weft_routes(lab: &Lab, host: &str) -> Vec<String> {
    let (_, t) = lab.exec(host, &["ip", "route", "show", "proto", "119"]);
    let mut v: Vec<String> = t
        .lines()
        .filter(|l| l.contains(" via "))
        .map(|l| l.trim().to_string())
        .collect();
    v.sort();
    v
}

fn status(lab: &Lab, host: &str) -> serde_json::Value {
    let sock = format!("/run/weft-lab/{}/{host}/weft.sock", lab.name);
    let (ok, t) = lab.exec(host, &[WEFT, "status", "--json", "--socket", &sock]);
    assert!(ok, "weft status on {host}: {t}");
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("status json: {e}: {t}"))
}

/// The data plane routes of `host`'s status: (destination, mode, via host name).
fn dp_routes(lab: &Lab, host: &str) -> Vec<(String, String, String)> {
    let s = status(lab, host);
    s["dataplane"]["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or_default().to_string(),
                r["mode"].as_str().unwrap_or_default().to_string(),
                r["via_name"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

/// The block of `ip` in `host`'s data plane routes, with its mode and next hop.
fn route_to(lab: &Lab, host: &str, ip: &str) -> Option<(String, String)> {
    let ip: std::net::IpAddr = ip.parse().ok()?;
    dp_routes(lab, host)
        .into_iter()
        .find_map(|(dst, mode, via)| {
            let net: ipnet::IpNet = dst.parse().ok()?;
            net.contains(&ip).then_some((mode, via))
        })
}

/// How many of 3 pings from `src` to `dst` the netfilter FORWARD hook of `src`'s host saw:
/// a counting chain of the test's own, in the lab host's namespace, made and removed here.
/// The fast path forwards a container's packets itself (0); the kernel's stack passes
/// every one through FORWARD (3).
fn forward_hook_sees(lab: &Lab, src: &Pod, dst: &Pod) -> u64 {
    let host = src.host.as_str();
    let rule = format!(
        "nft add table ip weftprobe && \
         nft add chain ip weftprobe probe '{{ type filter hook forward priority 0; }}' && \
         nft add rule ip weftprobe probe ip saddr {} ip daddr {} icmp type echo-request counter",
        src.ip, dst.ip
    );
    let (ok, t) = lab.exec(host, &["sh", "-c", &rule]);
    assert!(ok, "{host}: the probe table: {t}");
    let target = format!("{}/{}", src.host, src.name);
    let (ok, t) = lab.exec(
        &target,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", &dst.ip],
    );
    let (_, list) = lab.exec(host, &["nft", "list", "chain", "ip", "weftprobe", "probe"]);
    let (gone, g) = lab.exec(host, &["nft", "delete", "table", "ip", "weftprobe"]);
    assert!(gone, "{host}: removing the probe table: {g}");
    assert!(ok, "{target} -> {}: {t}", dst.ip);
    list.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {list}"))
}

/// The fast path runs on every host, is attached to weft.vx and each container's veth,
/// and carried this test's traffic: packets of `kinds` (`egress`: forwarded out of a
/// host; `peer`: delivered into a container) were counted on every host.
fn fast_path_carried(lab: &Lab, hosts: usize, kinds: &[&str]) {
    for h in 1..=hosts {
        let host = format!("h{h}");
        let s = status(lab, &host);
        let f = &s["dataplane"]["fast_path"];
        assert_eq!(f["state"], "on", "{host}: {f}");
        let devices = f["devices"].as_array().map(|d| d.len()).unwrap_or(0);
        assert!(devices >= 3, "{host}: weft.vx and two container veths: {f}");
        for k in kinds {
            assert!(
                f["counters"][k].as_u64().unwrap_or(0) > 0,
                "{host}: no {k} packets: {f}"
            );
        }
    }
}

fn agent(lab: &Lab, host: &str, action: &str) {
    weft_ok(&["lab", "agent", "--name", &lab.name, host, action]);
}

#[test]
fn mesh_pods_reach_each_other_directly_follow_cuts_and_survive_restarts() {
    if !root_or_skip("dataplane mesh") {
        return;
    }
    let lab = Lab::up("dpm", 3, "mesh");
    let www = www(&lab);
    let pods = pods(&lab, 3, &www);
    all_reach_all(&lab, &pods);
    // One segment, mode auto: direct routes only, the full underlay MTU.
    let s = status(&lab, "h1");
    assert_eq!(s["dataplane"]["pod_mtu"], 1500, "{s}");
    let routes = dp_routes(&lab, "h1");
    assert!(!routes.is_empty());
    assert!(routes.iter().all(|(_, m, _)| m == "route"), "{routes:?}");
    nat_to_outside(&lab, &pods, &www, "172.30.0.250");
    // Route mode: containers' packets leave by the fast path; packets between the two
    // containers of a host go straight into the other one.
    fast_path_carried(&lab, 3, &["egress", "peer"]);
    assert_eq!(
        forward_hook_sees(&lab, &pods[0], &pods[2]),
        0,
        "h1/c1 -> h2/c1 went through FORWARD"
    );
    assert_eq!(
        forward_hook_sees(&lab, &pods[0], &pods[1]),
        0,
        "h1/c1 -> h1/c2 went through FORWARD"
    );

    // A long-lived TCP connection h1/cli -> h2/srv: the client's nc reads from a FIFO this
    // test writes to, the server's nc writes what it receives to its log. A line sent
    // after both agents restarted arrives only if the same connection still works (nc
    // does not reconnect). Nothing here depends on timers (the lab machines' clocks are
    // not to be trusted with rates).
    let dir = format!("/run/weft-lab/{}", lab.name);
    // Both ends read from FIFOs this test holds open (read and write: opening never
    // blocks, and no end of file comes early): busybox nc ends the connection when its
    // input ends.
    let fifo = |name: &str| {
        let path = format!("{dir}/{name}");
        let (ok, t) = sh("mkfifo", &[&path]);
        assert!(ok, "mkfifo: {t}");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (path, f)
    };
    let (hold, _hold) = fifo("hold");
    let (feed_path, mut feed) = fifo("feed");
    let srv = run(
        &lab,
        "h2",
        "srv",
        &["sh", "-c", &format!("exec busybox nc -l -p 7001 < {hold}")],
    );
    let listening = wait_for(Duration::from_secs(10), || {
        let (_, t) = lab.exec("h2/srv", &["ss", "-ltn"]);
        t.contains(":7001").then_some(())
    });
    assert!(listening.is_some(), "nc did not listen in h2/srv");
    run(
        &lab,
        "h1",
        "cli",
        &[
            "sh",
            "-c",
            &format!("exec busybox nc {srv} 7001 < {feed_path}"),
        ],
    );
    let log = format!("{dir}/h2/srv.log");
    let received = |word: &str| {
        wait_for(Duration::from_secs(15), || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains(word))
                .map(|_| ())
        })
        .is_some()
    };
    use std::io::Write;
    feed.write_all(b"before-restart\n").unwrap();
    assert!(
        received("before-restart"),
        "the long connection did not start"
    );
    let before = weft_routes(&lab, "h1");
    for h in ["h1", "h2"] {
        agent(&lab, h, "restart");
    }
    // Right after the restart (the agents relearn the cluster), the kernel kept every route.
    assert_eq!(
        weft_routes(&lab, "h1"),
        before,
        "a restart changed h1's routes"
    );
    feed.write_all(b"after-restart\n").unwrap();
    assert!(
        received("after-restart"),
        "the connection broke across the agent restarts: {:?}",
        std::fs::read_to_string(&log)
    );
    let (_, conns) = lab.exec("h2/srv", &["ss", "-tn", "state", "established"]);
    assert_eq!(
        conns.lines().filter(|l| l.contains(":7001")).count(),
        1,
        "one connection, the first one: {conns}"
    );

    // Cut h1-h3: h1 reaches h3's containers through h2, then directly again after heal.
    let h3 = pods.iter().find(|p| p.host == "h3").unwrap();
    let direct = || route_to(&lab, "h1", &h3.ip) == Some(("route".into(), "h3".into()));
    assert!(
        wait_for(Duration::from_secs(20), || direct().then_some(())).is_some(),
        "{:?}",
        dp_routes(&lab, "h1")
    );
    weft_ok(&["lab", "cut", "--name", &lab.name, "h1", "h3"]);
    let relayed = wait_for(Duration::from_secs(20), || {
        (route_to(&lab, "h1", &h3.ip) == Some(("route".into(), "h2".into()))).then_some(())
    });
    assert!(relayed.is_some(), "{:?}", dp_routes(&lab, "h1"));
    all_reach_all(&lab, &pods);
    weft_ok(&["lab", "heal", "--name", &lab.name, "h1", "h3"]);
    assert!(
        wait_for(Duration::from_secs(20), || direct().then_some(())).is_some(),
        "{:?}",
        dp_routes(&lab, "h1")
    );

    // A host that leaves is withdrawn within seconds; when it returns it is routed again.
    agent(&lab, "h3", "stop");
    let gone = wait_for(Duration::from_secs(20), || {
        route_to(&lab, "h1", &h3.ip).is_none().then_some(())
    });
    assert!(gone.is_some(), "{:?}", dp_routes(&lab, "h1"));
    assert!(
        !weft_routes(&lab, "h1")
            .iter()
            .any(|r| r.contains("172.30.0.3")),
        "{:?}",
        weft_routes(&lab, "h1")
    );
    let t = Instant::now();
    agent(&lab, "h3", "start");
    all_reach_all(&lab, &pods);
    eprintln!(
        "h3 reachable again {:?} after its agent started",
        t.elapsed()
    );
}

#[test]
fn subnets_mix_direct_routes_and_vxlan_per_peer() {
    if !root_or_skip("dataplane subnets") {
        return;
    }
    let lab = Lab::up("dps", 4, "subnets");
    let www = www(&lab);
    let pods = pods(&lab, 4, &www);
    all_reach_all(&lab, &pods);
    // h1 and h2 share a segment, h3 and h4 are behind the router.
    for (ip_host, want) in [("h2", "route"), ("h3", "vxlan"), ("h4", "vxlan")] {
        let p = pods.iter().find(|p| p.host == ip_host).unwrap();
        assert_eq!(
            route_to(&lab, "h1", &p.ip),
            Some((want.to_string(), ip_host.to_string())),
            "{:?}",
            dp_routes(&lab, "h1")
        );
    }
    let s = status(&lab, "h1");
    assert_eq!(
        s["dataplane"]["pod_mtu"], 1450,
        "a VXLAN path sets the MTU: {s}"
    );
    let (_, link) = lab.exec("h1/c1", &["cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(link.trim(), "1450");
    // The VXLAN device is weft's, with static entries only.
    let (_, d) = lab.exec("h1", &["ip", "-d", "link", "show", "weft.vx"]);
    assert!(
        d.contains("alias weft:vxlan") && d.contains("nolearning"),
        "{d}"
    );
    nat_to_outside(&lab, &pods, &www, "172.30.1.250");
    // Towards h3 and h4 through weft.vx, and decapsulated packets go straight into the
    // containers there.
    fast_path_carried(&lab, 4, &["egress", "peer"]);
    let h3 = pods.iter().find(|p| p.host == "h3").unwrap();
    assert_eq!(
        forward_hook_sees(&lab, &pods[0], h3),
        0,
        "h1/c1 -> h3/c1 went through FORWARD"
    );
}

#[test]
fn partial_relays_through_the_middle_host_in_vxlan_mode_too() {
    if !root_or_skip("dataplane partial") {
        return;
    }
    // The VXLAN round also runs without NAT: pods still reach each other, not the outside.
    for (lab_name, mode, nat) in [("dpp", "auto", "on"), ("dppx", "vxlan", "off")] {
        let lab = Lab::up_args(lab_name, 4, "partial", &["--mode", mode, "--nat", nat]);
        let www = www(&lab);
        let pods = pods(&lab, 4, &www);
        all_reach_all(&lab, &pods);
        let h4 = pods.iter().find(|p| p.host == "h4").unwrap();
        let want_mode = if mode == "vxlan" { "vxlan" } else { "route" };
        assert_eq!(
            route_to(&lab, "h1", &h4.ip),
            Some((want_mode.to_string(), "h3".to_string())),
            "{mode}: {:?}",
            dp_routes(&lab, "h1")
        );
        let (ok, trace) = lab.exec(
            "h1/c1",
            &["busybox", "traceroute", "-n", "-w", "1", "-q", "1", &h4.ip],
        );
        assert!(ok, "{trace}");
        let hops: Vec<&str> = trace
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert!(
            hops.contains(&"172.30.0.3") && hops.last() == Some(&h4.ip.as_str()),
            "{mode}: traceroute from h1/c1 to h4/c1 must pass the relay h3: {trace}"
        );
        fast_path_carried(&lab, 4, &["egress", "peer"]);
        if mode == "vxlan" {
            let s = status(&lab, "h1");
            assert_eq!(s["dataplane"]["pod_mtu"], 1450, "{s}");
            // The relay's packets come in and go out on weft.vx: the program leaves
            // them to the stack, which forwards them (and counts down their TTL).
            let s = status(&lab, "h3");
            let pass = s["dataplane"]["fast_path"]["counters"]["pass"].as_u64();
            assert!(
                pass.unwrap_or(0) > 0,
                "h3 relayed no packet by the stack: {s}"
            );
        }
        if nat == "on" {
            nat_to_outside(&lab, &pods, &www, "172.30.0.250");
        } else {
            no_nat(&lab, &pods, &www, "172.30.0.250");
        }
    }
}

#[test]
fn without_the_fast_path_the_stack_forwards_the_same_traffic() {
    if !root_or_skip("dataplane fast path off") {
        return;
    }
    let lab = Lab::up_args("dpo", 2, "mesh", &["--fast-path", "off"]);
    let www = www(&lab);
    let pods = pods(&lab, 2, &www);
    all_reach_all(&lab, &pods);
    for h in ["h1", "h2"] {
        let s = status(&lab, h);
        let f = &s["dataplane"]["fast_path"];
        assert_eq!(f["state"], "off", "{h}: {f}");
        assert_eq!(
            f["devices"].as_array().map(|d| d.len()),
            Some(0),
            "{h}: {f}"
        );
    }
    // The same probe that sees nothing with the fast path sees every packet without it.
    assert_eq!(forward_hook_sees(&lab, &pods[0], &pods[2]), 3);
    assert_eq!(forward_hook_sees(&lab, &pods[0], &pods[1]), 3);
    nat_to_outside(&lab, &pods, &www, "172.30.0.250");
}
