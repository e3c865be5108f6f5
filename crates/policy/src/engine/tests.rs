use super::*;
use crate::k8s::{parse_objects, Object};
use crate::model::NamedPort;
use std::collections::BTreeMap;

/// Namespaces x, y (label ns=NAME; x also team=t), pods a, b in each: 10.0.N.M.
pub(crate) fn world(policies: &str) -> World {
    let mut ns = BTreeMap::new();
    for (n, extra) in [("x", Some(("team", "t"))), ("y", None)] {
        let mut l = crate::selector::Labels::new();
        l.insert("ns".into(), n.into());
        l.insert(crate::k8s::NAME_LABEL.into(), n.into());
        if let Some((k, v)) = extra {
            l.insert(k.into(), v.into());
        }
        ns.insert(n.to_string(), l);
    }
    let mut eps = Vec::new();
    for (i, n) in ["x", "y"].iter().enumerate() {
        for (j, p) in ["a", "b"].iter().enumerate() {
            eps.push(Endpoint {
                uid: format!("{n}{p}/eth0"),
                namespace: n.to_string(),
                name: p.to_string(),
                labels: [("pod".to_string(), p.to_string())].into(),
                // b serves its named port on 81, a on 80.
                ports: vec![NamedPort {
                    name: "serve".into(),
                    port: 80 + j as u16,
                    protocol: crate::k8s::Protocol::Tcp,
                }],
                addrs: vec![
                    format!("10.0.{}.{}", i + 1, j + 1).parse().unwrap(),
                    format!("fd00::{}:{}", i + 1, j + 1).parse().unwrap(),
                ],
                node: "n".into(),
            });
        }
    }
    let pols = if policies.is_empty() {
        vec![]
    } else {
        parse_objects(policies, "x")
            .unwrap()
            .into_iter()
            .map(|o| match o {
                Object::NetworkPolicy(p) => p,
                _ => panic!(),
            })
            .collect()
    };
    World::new(ns, eps, pols)
}

fn ip(w: &World, who: &str) -> IpAddr {
    let (n, p) = who.split_once('/').unwrap();
    w.endpoints[&format!("{n}{p}/eth0")].addrs[0]
}

fn ok(w: &World, from: &str, to: &str, proto: u8, port: u16) -> bool {
    let src = if from.contains('/') {
        ip(w, from)
    } else {
        from.parse().unwrap()
    };
    let dst = if to.contains('/') {
        ip(w, to)
    } else {
        to.parse().unwrap()
    };
    verdict(
        w,
        &Flow {
            src,
            dst,
            proto,
            port,
        },
    )
    .allowed
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

fn pol(spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\nspec:\n{spec}")
}

#[test]
fn without_policies_everything_is_allowed() {
    let w = world("");
    assert!(ok(&w, "x/a", "y/b", TCP, 80));
    assert!(ok(&w, "x/a", "8.8.8.8", UDP, 53));
}

#[test]
fn deny_all_ingress_isolates_only_selected_pods_and_only_ingress() {
    let w = world(&pol("  podSelector: {matchLabels: {pod: a}}\n"));
    assert!(!ok(&w, "y/a", "x/a", TCP, 80));
    assert!(!ok(&w, "x/b", "x/a", UDP, 81));
    assert!(!ok(&w, "192.168.1.1", "x/a", TCP, 80));
    // Egress of x/a is not isolated; x/b and pods of y are not selected.
    assert!(ok(&w, "x/a", "y/a", TCP, 80));
    assert!(ok(&w, "y/a", "x/b", TCP, 80));
    assert!(ok(&w, "x/b", "y/a", TCP, 80));
    // A pod never blocks itself.
    assert!(ok(&w, "x/a", "x/a", TCP, 80));
}

#[test]
fn allow_all_ingress_is_a_rule_with_nothing_in_it() {
    let w = world(&pol("  podSelector: {}\n  ingress:\n  - {}\n"));
    assert!(ok(&w, "y/a", "x/a", SCTP, 9));
    assert!(ok(&w, "10.9.9.9", "x/b", 1, 0));
}

#[test]
fn pod_selector_alone_means_the_policys_own_namespace() {
    let w = world(&pol(
        "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n",
    ));
    assert!(ok(&w, "x/b", "x/a", TCP, 80));
    assert!(!ok(&w, "y/b", "x/a", TCP, 80));
}

#[test]
fn namespace_and_pod_selector_in_one_peer_is_and_in_two_peers_is_or() {
    let and = world(&pol("  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: b}}\n"));
    assert!(ok(&and, "y/b", "x/a", TCP, 80));
    assert!(!ok(&and, "y/a", "x/a", TCP, 80));
    assert!(!ok(&and, "x/b", "x/a", TCP, 80));
    let or = world(&pol("  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    - podSelector: {matchLabels: {pod: b}}\n"));
    assert!(ok(&or, "y/a", "x/a", TCP, 80));
    assert!(ok(&or, "x/b", "x/a", TCP, 80));
    assert!(!ok(&or, "x/a", "x/b", TCP, 80));
}

#[test]
fn an_empty_namespace_selector_means_every_namespace() {
    let w = world(&pol(
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {}\n",
    ));
    assert!(ok(&w, "y/a", "x/b", TCP, 80));
    // Pod selectors never match addresses that are no pod.
    assert!(!ok(&w, "10.9.9.9", "x/b", TCP, 80));
}

#[test]
fn ip_blocks_match_pods_too_and_except_narrows_only_its_own_peer() {
    let w = world(&pol("  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}\n"));
    assert!(ok(&w, "10.0.7.7", "x/a", TCP, 80));
    assert!(ok(&w, "x/b", "x/a", TCP, 80)); // 10.0.1.2: a pod inside the block
    assert!(!ok(&w, "y/a", "x/a", TCP, 80)); // 10.0.2.1: in the except
    let both = world(&pol("  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}\n    - namespaceSelector: {matchLabels: {ns: y}}\n"));
    assert!(ok(&both, "y/a", "x/a", TCP, 80));
    // IPv6 addresses are outside an IPv4 block.
    let v6 = Flow {
        src: both.endpoints["ya/eth0"].addrs[1],
        dst: both.endpoints["xa/eth0"].addrs[1],
        proto: TCP,
        port: 80,
    };
    assert!(
        verdict(&both, &v6).allowed,
        "y/a is allowed by its namespace"
    );
    let w6 = world(&pol(
        "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n",
    ));
    assert!(!verdict(&w6, &v6).allowed);
}

#[test]
fn ports_protocols_ranges_and_named_ports() {
    let w = world(&pol("  podSelector: {}\n  ingress:\n  - ports:\n    - port: 80\n      protocol: UDP\n    - port: 1000\n      endPort: 1010\n    - protocol: SCTP\n"));
    assert!(ok(&w, "y/a", "x/a", UDP, 80));
    assert!(!ok(&w, "y/a", "x/a", TCP, 80));
    assert!(ok(&w, "y/a", "x/a", TCP, 1010));
    assert!(!ok(&w, "y/a", "x/a", TCP, 1011));
    assert!(ok(&w, "y/a", "x/a", SCTP, 5));
    assert!(
        !ok(&w, "y/a", "x/a", 1, 0),
        "ICMP is no port of a rule with ports"
    );
    // The named port resolves at the destination: 80 on a, 81 on b.
    let named = world(&pol(
        "  podSelector: {}\n  ingress:\n  - ports:\n    - port: serve\n",
    ));
    assert!(ok(&named, "y/a", "x/a", TCP, 80));
    assert!(!ok(&named, "y/a", "x/a", TCP, 81));
    assert!(ok(&named, "y/a", "x/b", TCP, 81));
    assert!(!ok(&named, "y/a", "x/b", TCP, 80));
    assert!(!ok(&named, "y/a", "x/a", UDP, 80), "the name is a TCP port");
}

#[test]
fn egress_named_ports_resolve_at_the_peer_and_never_match_outside_addresses() {
    let w = world(&pol("  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports:\n    - port: serve\n"));
    assert!(ok(&w, "x/a", "y/b", TCP, 81));
    assert!(!ok(&w, "x/a", "y/b", TCP, 80));
    assert!(!ok(&w, "x/a", "10.9.9.9", TCP, 80));
    assert!(ok(&w, "x/b", "10.9.9.9", TCP, 80), "x/b is not selected");
}

#[test]
fn the_verdict_is_egress_of_the_source_and_ingress_of_the_destination() {
    let text = format!(
        "{}\n---\n{}",
        pol("  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - podSelector: {matchLabels: {pod: b}}\n"),
        pol("  podSelector: {matchLabels: {pod: b}}\n  ingress: []\n").replace("name: p", "name: q"),
    );
    let w = world(&text);
    let v = verdict(
        &w,
        &Flow {
            src: ip(&w, "x/a"),
            dst: ip(&w, "x/b"),
            proto: TCP,
            port: 80,
        },
    );
    assert!(!v.allowed);
    assert_eq!(
        v.egress,
        Side::Allowed {
            policy: "x/p".into(),
            rule: 0
        }
    );
    assert_eq!(
        v.ingress,
        Side::Denied {
            isolated_by: vec!["x/q".into()]
        }
    );
    let text = v.explain(
        &w,
        &Flow {
            src: ip(&w, "x/a"),
            dst: ip(&w, "x/b"),
            proto: TCP,
            port: 80,
        },
    );
    assert!(
        text.contains("ingress of x/b (10.0.1.2) is isolated by x/q and none of them allows x/a (10.0.1.1) TCP 80"),
        "{text}"
    );
    // Only the local side counts on a host.
    let lv = local_verdict(
        &w,
        &Flow {
            src: ip(&w, "x/a"),
            dst: ip(&w, "x/b"),
            proto: TCP,
            port: 80,
        },
        |e| e.name == "a",
        |_| false,
    );
    assert!(lv.allowed);
}

#[test]
fn a_pod_and_its_own_node_are_never_kept_apart() {
    // x isolated both ways, nothing allowed.
    let w = world(&pol(
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
    ));
    let node: IpAddr = "192.168.0.1".parse().unwrap();
    let dns: IpAddr = "169.254.1.1".parse().unwrap();
    let host = |a: IpAddr| a == node || a == dns;
    let judge = |src: IpAddr, dst: IpAddr, local: &dyn Fn(&Endpoint) -> bool| {
        let f = Flow {
            src,
            dst,
            proto: UDP,
            port: 53,
        };
        local_verdict(&w, &f, local, host)
    };
    let a = ip(&w, "x/a");
    let here = |e: &Endpoint| e.name == "a";
    // The pod's own node, either way: allowed, and said so.
    let v = judge(a, dns, &here);
    assert!(v.allowed);
    assert_eq!(v.egress, Side::OwnNode);
    assert!(v
        .explain(
            &w,
            &Flow {
                src: a,
                dst: dns,
                proto: UDP,
                port: 53
            }
        )
        .contains("169.254.1.1 is x/a (10.0.1.1)'s own node"),);
    let v = judge(node, a, &here);
    assert!(v.allowed);
    assert_eq!(v.ingress, Side::OwnNode);
    // The same addresses are another host's for a pod elsewhere: judged as any address.
    let elsewhere = |_: &Endpoint| false;
    let f = Flow {
        src: a,
        dst: node,
        proto: UDP,
        port: 53,
    };
    assert!(
        local_verdict(&w, &f, elsewhere, host).allowed,
        "not this host's side"
    );
    assert!(!verdict(&w, &f).allowed);
    assert!(!judge(a, "192.168.0.2".parse().unwrap(), &here).allowed);
}

#[test]
fn namespace_labels_default_to_the_name_label() {
    let mut w = world(&pol("  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}\n"));
    w.add_endpoint(Endpoint {
        uid: "za/eth0".into(),
        namespace: "z".into(),
        name: "a".into(),
        labels: Default::default(),
        ports: vec![],
        addrs: vec!["10.0.3.1".parse().unwrap()],
        node: String::new(),
    });
    assert!(ok(&w, "10.0.3.1", "x/a", TCP, 80));
    assert!(!ok(&w, "y/a", "x/a", TCP, 80));
}
