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
use common::dp::*;
use common::*;

use std::time::{Duration, Instant};

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
    fast_path_carried(&lab, &pods, &["egress", "peer"]);
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
    // The receiving host delivers them from its underlay's ingress into the container,
    // past its own stack as well.
    assert_eq!(
        receiver_forward_hook_sees(&lab, &pods[0], &pods[2], false),
        0,
        "h1/c1 -> h2/c1 went through h2's FORWARD"
    );
    for h in ["h1", "h2", "h3"] {
        underlay_attached(&lab, h);
    }

    // A long-lived TCP connection between two hosts survives both agents' restarts, and
    // right after the restart (the agents relearn the cluster) the kernel kept every route.
    long_connection_survives(&lab, false, || {
        let before = weft_routes(&lab, "h1");
        for h in ["h1", "h2"] {
            agent(&lab, h, "restart");
        }
        assert_eq!(
            weft_routes(&lab, "h1"),
            before,
            "a restart changed h1's routes"
        );
    });

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
    // The fast path follows weft's routes itself (no FIB lookup): h3's block now through
    // h2's underlay address.
    let fast = fast_routes_follow(&lab, "h1");
    assert!(
        fast.iter()
            .filter(|r| r.ends_with("via 172.30.0.2"))
            .count()
            >= 2,
        "{fast:?}"
    );
    // `weft status` names both ends: the relay as the next hop, h3 as the block's owner.
    assert_eq!(
        route_owner(&lab, "h1", &h3.ip).as_deref(),
        Some("h3"),
        "{}",
        status(&lab, "h1")["dataplane"]["routes"]
    );
    all_reach_all(&lab, &pods);
    weft_ok(&["lab", "heal", "--name", &lab.name, "h1", "h3"]);
    assert!(
        wait_for(Duration::from_secs(20), || direct().then_some(())).is_some(),
        "{:?}",
        dp_routes(&lab, "h1")
    );
    fast_routes_follow(&lab, "h1");

    // A host that leaves is withdrawn within seconds; when it returns it is routed again.
    agent(&lab, "h3", "stop");
    let gone = wait_for(Duration::from_secs(20), || {
        route_to(&lab, "h1", &h3.ip).is_none().then_some(())
    });
    assert!(gone.is_some(), "{:?}", dp_routes(&lab, "h1"));
    fast_routes_follow(&lab, "h1");
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
    fast_path_carried(&lab, &pods, &["egress", "peer"]);
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
        fast_path_carried(&lab, &pods, &["egress", "peer"]);
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
    assert_eq!(
        receiver_forward_hook_sees(&lab, &pods[0], &pods[2], false),
        3
    );
    nat_to_outside(&lab, &pods, &www, "172.30.0.250");
}

/// The packets a qdisc of `kind` on `host`'s device `dev` has seen (`tc -s qdisc`).
fn qdisc_packets(lab: &Lab, host: &str, dev: &str, kind: &str) -> u64 {
    let (ok, t) = lab.exec(host, &["tc", "-s", "qdisc", "show", "dev", dev]);
    assert!(ok, "{host}: tc qdisc show dev {dev}: {t}");
    let mut lines = t
        .lines()
        .skip_while(|l| !l.starts_with(&format!("qdisc {kind} ")));
    lines.next();
    lines
        .next()
        .and_then(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "pkt")?;
            w.get(i - 1)?.parse().ok()
        })
        .unwrap_or_else(|| panic!("{host}: no {kind} qdisc on {dev}: {t}"))
}

/// `from` pings `to` (3 pings): every one passes FORWARD on h1, and the qdisc of `kind` on
/// h1's device `dev` counts them.
fn through_qdisc(lab: &Lab, from: &Pod, to: &Pod, dev: &str, kind: &str) {
    let before = qdisc_packets(lab, "h1", dev, kind);
    assert_eq!(forward_hook_sees(lab, from, to), 3);
    let after = qdisc_packets(lab, "h1", dev, kind);
    assert!(after >= before + 3, "{kind} on {dev}: {before} -> {after}");
}

/// Containers with bandwidth limits (the reference `bandwidth` plugin chained after weft's,
/// as Kubernetes' `kubernetes.io/ingress-bandwidth` and `egress-bandwidth` annotations
/// have it) keep their traffic on the stack, through the qdiscs that enforce the limits,
/// with the fast path on: before, it delivered into a container past the `tbf` on its host
/// veth (10 Gbit/s through a 100 Mbit/s limit), and reported an error for a veth whose
/// `ingress` qdisc excluded its own. The other containers keep the fast path, also after
/// someone removes its qdisc from under it.
#[test]
fn bandwidth_limits_hold_with_the_fast_path_on() {
    if !root_or_skip("dataplane bandwidth") {
        return;
    }
    let lab = Lab::up("dpbw", 1, "mesh");
    let dir = format!("/run/weft-lab/{}", lab.name);
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/h1/net.d/weft.conflist")).unwrap(),
    )
    .unwrap();
    let start = |name: &str, limits: Option<serde_json::Value>| -> (Pod, String) {
        let mut args = vec!["lab", "run", "--name", &lab.name, "--json"];
        let path = format!("{dir}/{name}.conflist");
        if let Some(limits) = limits {
            let mut c = base.clone();
            // The version Debian's reference plugins speak.
            c["cniVersion"] = "1.0.0".into();
            let mut bw = serde_json::json!({"type": "bandwidth"});
            for (k, v) in limits.as_object().unwrap() {
                bw[k] = v.clone();
            }
            c["plugins"].as_array_mut().unwrap().push(bw);
            std::fs::write(&path, c.to_string()).unwrap();
            args.extend(["--conflist", &path]);
        }
        args.extend(["h1", name]);
        let out = weft_ok(&args);
        let c: serde_json::Value = serde_json::from_str(&out).unwrap();
        let veth = c["result"]["interfaces"][0]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let ip = c["ip"].as_str().unwrap().to_string();
        let pod = Pod {
            host: "h1".into(),
            name: name.into(),
            ip,
            ip6: None,
        };
        (pod, veth)
    };
    let (plain, plain_veth) = start("plain", None);
    let (other, other_veth) = start("other", None);
    // Into the container: a tbf at the root of its host veth.
    let (limited, limited_veth) = start(
        "limited",
        Some(serde_json::json!({"ingressRate": 100_000_000, "ingressBurst": 1_000_000})),
    );
    // Both ways: out of the container through an ingress qdisc and an ifb device too.
    let (both, both_veth) = start(
        "both",
        Some(serde_json::json!({
            "ingressRate": 100_000_000, "ingressBurst": 1_000_000,
            "egressRate": 100_000_000, "egressBurst": 1_000_000,
        })),
    );
    // The agent attaches to the plain containers' veths and leaves the others alone.
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let settled = wait_for(Duration::from_secs(20), || {
        let f = status(&lab, "h1")["dataplane"]["fast_path"].clone();
        let (devices, shaped) = (names(&f["devices"]), names(&f["shaped"]));
        (devices.contains(&plain_veth)
            && devices.contains(&other_veth)
            && shaped.contains(&limited_veth)
            && shaped.contains(&both_veth))
        .then_some(f)
    });
    let f = settled.unwrap_or_else(|| {
        panic!(
            "h1's fast path did not settle: {}",
            status(&lab, "h1")["dataplane"]["fast_path"]
        )
    });
    let devices = names(&f["devices"]);
    assert!(
        !devices.contains(&limited_veth) && !devices.contains(&both_veth),
        "attached to a limited container's veth: {f}"
    );
    assert!(f["error"].is_null(), "{f}");
    let (ok, text) = lab.exec(
        "h1",
        &[WEFT, "status", "--socket", &format!("{dir}/h1/weft.sock")],
    );
    assert!(
        ok && text.contains("not used for 2 container veth(s) with a qdisc weft did not add"),
        "{text}"
    );

    // Into `limited`: every echo request passes FORWARD and its tbf.
    through_qdisc(&lab, &plain, &limited, &limited_veth, "tbf");
    // Out of `both`: through its ingress qdisc, then FORWARD.
    through_qdisc(&lab, &both, &plain, &both_veth, "ingress");
    // Between the plain containers the fast path goes on delivering.
    assert_eq!(forward_hook_sees(&lab, &plain, &other), 0);

    // Someone removes a plain container's clsact qdisc, and the fast path's filters with
    // it: the agent attaches them again, and that container's packets skip FORWARD again.
    let (ok, t) = lab.exec("h1", &["tc", "qdisc", "del", "dev", &other_veth, "clsact"]);
    assert!(ok, "{t}");
    let back = wait_for(Duration::from_secs(15), || {
        (forward_hook_sees(&lab, &other, &plain) == 0).then_some(())
    });
    let (_, q) = lab.exec("h1", &["tc", "qdisc", "show", "dev", &other_veth]);
    assert!(
        back.is_some() && q.contains("clsact"),
        "{other_veth}'s filters were not attached again: {q} {}",
        status(&lab, "h1")["dataplane"]["fast_path"]
    );

    // A limit added later (by hand, say) takes its container off the fast path.
    let (ok, t) = lab.exec(
        "h1",
        &[
            "tc",
            "qdisc",
            "add",
            "dev",
            &other_veth,
            "root",
            "tbf",
            "rate",
            "100mbit",
            "burst",
            "125000",
            "latency",
            "25ms",
        ],
    );
    assert!(ok, "{t}");
    let moved = wait_for(Duration::from_secs(10), || {
        let f = status(&lab, "h1")["dataplane"]["fast_path"].clone();
        (names(&f["shaped"]).contains(&other_veth) && !names(&f["devices"]).contains(&other_veth))
            .then_some(())
    });
    assert!(
        moved.is_some(),
        "{other_veth} with a tbf stayed on the fast path: {}",
        status(&lab, "h1")["dataplane"]["fast_path"]
    );
    through_qdisc(&lab, &plain, &other, &other_veth, "tbf");
}
