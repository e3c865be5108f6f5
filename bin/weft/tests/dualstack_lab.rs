//! Dual stack on real namespaces: with an IPv4 and an IPv6 pool every container gets an
//! address of each family, and every container reaches every other over both (ping,
//! full-size ping with DF, TCP seen with the container's own address, a 2 MiB transfer)
//! on `mesh`, `subnets` and `partial` labs; IPv6 blocks are routed through VXLAN where the
//! underlay is IPv4, and the container MTU leaves room for it; a long-lived TCP connection
//! over IPv6 survives agent restarts. On IPv6 and dual underlays: agents peer over IPv6,
//! IPv4 blocks are routed through IPv6 next hops, VXLAN runs over IPv6, containers reach
//! the outside over both families through NAT, and `traceroute -6` shows the relay.

mod common;
use common::dp::*;
use common::*;

const POOLS: &[&str] = &["--ipam-pools", "10.32.0.0/12,fd32::/48"];

fn lab(name: &str, hosts: usize, topology: &str, extra: &[&str]) -> Lab {
    let mut args = POOLS.to_vec();
    args.extend_from_slice(extra);
    Lab::up_args(name, hosts, topology, &args)
}

fn every_pod_has_both_families(pods: &[Pod]) {
    let pool6: ipnet::Ipv6Net = "fd32::/48".parse().unwrap();
    for p in pods {
        let ip6: std::net::Ipv6Addr = p
            .ip6
            .as_deref()
            .unwrap_or_else(|| panic!("{}/{} has no IPv6 address", p.host, p.name))
            .parse()
            .unwrap();
        assert!(pool6.contains(&ip6), "{}/{}: {ip6}", p.host, p.name);
    }
}

#[test]
fn mesh_pods_reach_each_other_over_both_families_and_ipv6_survives_restarts() {
    if !root_or_skip("dual stack mesh") {
        return;
    }
    let lab = lab("dsm", 3, "mesh", &[]);
    let www = www(&lab);
    let pods = pods(&lab, 3, &www);
    every_pod_has_both_families(&pods);
    all_reach_all(&lab, &pods);
    // The IPv4 underlay routes IPv4 blocks directly and IPv6 blocks through VXLAN, so
    // containers get VXLAN's MTU.
    let s = status(&lab, "h1");
    assert_eq!(s["dataplane"]["pod_mtu"], 1450, "{s}");
    let routes = dp_routes(&lab, "h1");
    assert!(
        routes
            .iter()
            .any(|(d, m, _)| d.starts_with("fd32:") && m == "vxlan"),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|(d, m, _)| d.starts_with("10.") && m == "route"),
        "{routes:?}"
    );
    // Inside a container: one address of each family, a default route of each family
    // through its link-local gateway, answered by a permanent neighbour entry.
    let (_, r6) = lab.exec("h1/c1", &["ip", "-6", "route", "show", "default"]);
    assert!(r6.contains("via fe80::1 dev eth0"), "{r6}");
    let (_, n6) = lab.exec("h1/c1", &["ip", "-6", "neigh", "show", "fe80::1"]);
    assert!(n6.contains("PERMANENT"), "{n6}");

    // A long-lived TCP connection over IPv6 from h1 to h2 carries data after both agents
    // restarted.
    long_connection_survives(&lab, true, || {
        for h in ["h1", "h2"] {
            agent(&lab, h, "restart");
        }
    });
}

#[test]
fn subnets_and_partial_carry_both_families_across_routers_and_relays() {
    if !root_or_skip("dual stack subnets and partial") {
        return;
    }
    {
        let lab = lab("dss", 4, "subnets", &[]);
        let www = www(&lab);
        let pods = pods(&lab, 4, &www);
        every_pod_has_both_families(&pods);
        all_reach_all(&lab, &pods);
    }
    let lab = lab("dsp", 4, "partial", &["--mode", "vxlan"]);
    let www = www(&lab);
    let pods = pods(&lab, 4, &www);
    all_reach_all(&lab, &pods);
    // h1 reaches h4's IPv6 block through h3.
    let h4 = pods.iter().find(|p| p.host == "h4").unwrap();
    assert_eq!(
        route_to(&lab, "h1", h4.ip6.as_deref().unwrap()),
        Some(("vxlan".into(), "h3".into())),
        "{:?}",
        dp_routes(&lab, "h1")
    );
}

#[test]
fn an_ipv6_underlay_carries_both_families_and_nats_ipv6_to_the_outside() {
    if !root_or_skip("dual stack on an IPv6 underlay") {
        return;
    }
    let lab = lab("ds6", 4, "subnets", &["--underlay", "ipv6"]);
    let www = www(&lab);
    let pods = pods(&lab, 4, &www);
    every_pod_has_both_families(&pods);
    all_reach_all(&lab, &pods);
    // The agents peer over IPv6; on h1's segment both families route directly through
    // h2's IPv6 address, across the router through VXLAN over IPv6 (70 bytes of headers).
    let s = status(&lab, "h1");
    assert_eq!(s["node"]["addr"], "[fd30:1::1]:6783", "{s}");
    assert_eq!(s["dataplane"]["pod_mtu"], 1430, "{s}");
    let h2 = pods.iter().find(|p| p.host == "h2").unwrap();
    for ip in [h2.ip.as_str(), h2.ip6.as_deref().unwrap()] {
        assert_eq!(
            route_to(&lab, "h1", ip),
            Some(("route".into(), "h2".into())),
            "{ip}: {:?}",
            dp_routes(&lab, "h1")
        );
    }
    let (_, r) = lab.exec("h1", &["ip", "-4", "route", "show", "proto", "119"]);
    assert!(
        r.contains("via inet6 fd30:1::2"),
        "IPv4 through an IPv6 next hop: {r}"
    );
    let h3 = pods.iter().find(|p| p.host == "h3").unwrap();
    assert_eq!(
        route_to(&lab, "h1", &h3.ip).map(|r| r.0),
        Some("vxlan".into())
    );
    nat_to_outside(&lab, &pods, &www, "fd30:1::fa");
    // IPv6 between containers takes the fast path too: none of h1/c1's pings to h2/c1
    // (out of the host) or to h1/c2 (into a container) passes the FORWARD hook.
    let h1c1 = pods
        .iter()
        .find(|p| p.host == "h1" && p.name == "c1")
        .unwrap();
    let h1c2 = pods
        .iter()
        .find(|p| p.host == "h1" && p.name == "c2")
        .unwrap();
    let h2c1 = pods
        .iter()
        .find(|p| p.host == "h2" && p.name == "c1")
        .unwrap();
    fast_path_attached(&lab, "h1");
    fast_path_attached(&lab, "h2");
    // The FORWARD hooks on the way: h1's (out of the host, into a container) and h2's,
    // whose underlay's ingress delivers into h2/c1 past it.
    let probes = [
        (
            "h1/c1 -> h2/c1 (IPv6)",
            forward_hook_sees6(&lab, h1c1, h2c1),
        ),
        (
            "h1/c1 -> h1/c2 (IPv6)",
            forward_hook_sees6(&lab, h1c1, h1c2),
        ),
        ("h1/c1 -> h2/c1 (IPv4)", forward_hook_sees(&lab, h1c1, h2c1)),
        (
            "h1/c1 -> h2/c1 (IPv6) at h2",
            receiver_forward_hook_sees(&lab, h1c1, h2c1, true),
        ),
        (
            "h1/c1 -> h2/c1 (IPv4) at h2",
            receiver_forward_hook_sees(&lab, h1c1, h2c1, false),
        ),
    ];
    for (what, seen) in probes {
        assert_eq!(seen, 0, "{what}");
    }
    underlay_attached(&lab, "h2");
}

#[test]
fn a_dual_underlay_nats_both_families_and_traceroute6_shows_the_relay() {
    if !root_or_skip("dual stack on a dual underlay") {
        return;
    }
    let lab = lab(
        "dsd",
        4,
        "partial",
        &["--underlay", "dual", "--mode", "vxlan"],
    );
    let www = www(&lab);
    let pods = pods(&lab, 4, &www);
    all_reach_all(&lab, &pods);
    nat_to_outside(&lab, &pods, &www, "172.30.0.250");
    nat_to_outside(&lab, &pods, &www, "fd30::fa");
    // h1's container reaches h4's over IPv6 through h3, which answers as itself.
    let h4 = pods.iter().find(|p| p.host == "h4").unwrap();
    let (ok, t) = lab.exec(
        "h1/c1",
        &[
            "traceroute",
            "-6",
            "-n",
            "-w",
            "2",
            "-q",
            "1",
            h4.ip6.as_deref().unwrap(),
        ],
    );
    assert!(ok, "{t}");
    assert!(
        t.contains("fd30::3"),
        "the relay h3 is not in the path: {t}"
    );
}
