//! Network policy in the lab (docs/policy.md): the truth table of pods a, b, c in
//! namespaces x, y, z on three hosts against the reference engine, over IPv4 and IPv6, for
//! every rule shape, the upstream e2e cases that make sense without Services, generated
//! policies, deletions and relabelling.

mod common;

use std::time::Duration;

use common::truth::{self, Pod};
use common::*;

/// A policy case: its name (upstream e2e names where they exist) and its YAML, where
/// `{v4:NS/POD}` and `{v6:NS/POD}` stand for that pod's addresses.
struct Case {
    name: &'static str,
    yaml: &'static str,
}

const fn case(name: &'static str, yaml: &'static str) -> Case {
    Case { name, yaml }
}

/// The named cases. Each is applied alone (after the previous one is deleted).
const CASES: &[Case] = &[
    case("should support a 'default-deny-ingress' policy", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
"),
    case("should support a 'default-deny-all' policy", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"),
    case("should support allow-all policy", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]
"),
    case("should enforce policy to allow traffic from pods within server namespace based on PodSelector", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
"),
    case("should enforce policy to allow ingress traffic for a target", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: allow-to-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny-rest, namespace: x}
spec:
  podSelector: {}
"),
    case("should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: allow-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
"),
    case("should enforce policy based on NamespaceSelector with MatchExpressions using default ns label", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: not-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}
"),
    case("should enforce policy based on PodSelector or NamespaceSelector", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: or, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
"),
    case("should enforce policy based on PodSelector and NamespaceSelector", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: and, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
"),
    case("should enforce policy based on Multiple PodSelectors and NamespaceSelectors", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: multi, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: NotIn, values: [x]}]
      podSelector:
        matchExpressions: [{key: pod, operator: In, values: [b, c]}]
"),
    case("should enforce policy based on Ports", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: port-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    ports:
    - {port: 81, protocol: TCP}
"),
    case("should enforce multiple, stacked policies with overlapping podSelectors", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: port-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 80}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: port-81-from-y, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 81}]
"),
    case("should allow ingress access on one named port", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: named-in, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: serve-81-tcp}]
"),
    case("should allow egress access on one named port", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: named-out, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: serve-80-udp, protocol: UDP}]
"),
    case("should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: egress-to-yb, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
"),
    case("should enforce ingress policy allowing any port traffic to a server on a specific protocol", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: any-udp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{protocol: UDP}]
"),
    case("should enforce multiple ingress policies with ingress allow-all policy taking precedence", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: only-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 81}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: allow-all-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{}]
"),
    case("should enforce multiple egress policies with egress allow-all policy taking precedence", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: only-80-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 80}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: allow-all-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{}]
"),
    case("should allow egress access to server in CIDR block", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: cidr-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: '{v4:y/b}/32'}
    - ipBlock: {cidr: '{v6:y/b}/128'}
"),
    case("should enforce except clause while egress access to server in CIDR block", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: cidr-except, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: ['{v4:y/b}/32']}
    - ipBlock: {cidr: '::/0', except: ['{v6:z/c}/128']}
"),
    case("should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: overlap, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: ['{v4:y/b}/32']}
    - ipBlock: {cidr: '{v4:y/b}/32'}
"),
    case("should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: in-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: []
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: out-to-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {pod: b}}}]
"),
    case("should not allow access by TCP when a policy specifies only UDP", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: udp-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 81, protocol: UDP}]
"),
    case("should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: sctp-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 80, protocol: SCTP}]
"),
    case("should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: allow-from-xa, namespace: y}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: x}}
      podSelector: {matchLabels: {pod: a}}
"),
    case("should work with Ingress, Egress specified together", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: both, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]
    ports: [{port: 80, protocol: UDP}, {port: 81, protocol: TCP}]
"),
    case("end port ranges allow every port from port to endPort", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: range, namespace: y}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 79, endPort: 80, protocol: TCP}, {port: 81, endPort: 81, protocol: SCTP}]
"),
    case("an empty pod selector in a peer with a namespace selector means every pod there", "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: all-of-z, namespace: y}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: Exists}]}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: z}}
      podSelector: {}
"),
];

/// `{v4:NS/POD}` and `{v6:NS/POD}` replaced by addresses.
fn fill(yaml: &str, pods: &[Pod]) -> String {
    let mut s = yaml.to_string();
    for p in pods {
        s = s.replace(&format!("{{v4:{}}}", p.key()), &p.v4.to_string());
        s = s.replace(&format!("{{v6:{}}}", p.key()), &p.v6.to_string());
    }
    s
}

const LIMIT: Duration = Duration::from_secs(15);

/// Whether `host`'s raw chains (both families' `raw_pods`) look up isolated pods.
fn raw_looks_up_isolated(lab: &Lab, host: &str) -> bool {
    ["ip", "ip6"].iter().all(|fam| {
        let (ok, chain) = lab.exec(host, &["nft", "list", "chain", fam, "weft", "raw_pods"]);
        assert!(ok, "{host}: no raw_pods chain in {fam} weft: {chain}");
        chain.contains("saddr @isolated accept") && chain.contains("daddr @isolated accept")
    })
}

fn check(
    pods: &[Pod],
    servers: &truth::Servers,
    world: &weft_policy::World,
    what: &str,
    both: bool,
) -> Duration {
    let families: &[bool] = if both { &[false, true] } else { &[false] };
    match truth::converge(pods, servers, world, families, LIMIT) {
        Ok(t) => t,
        Err(diffs) => panic!(
            "{what}: after {} s the lab still differs from the reference engine in {} probes:\n{}",
            LIMIT.as_secs(),
            diffs.len(),
            diffs.join("\n")
        ),
    }
}

#[test]
fn the_truth_table_of_every_case_matches_the_reference_engine() {
    if !root_or_skip("the_truth_table_of_every_case_matches_the_reference_engine") {
        return;
    }
    let lab = Lab::up_args(
        "pol1",
        3,
        "mesh",
        &["--ipam-pools", "10.32.0.0/12,fd32::/48"],
    );
    let pods = truth::start_pods(&lab);
    let servers = truth::serve(&pods);
    truth::apply(&lab, "h1", &truth::namespaces_yaml(), false);
    // No policy: everything reaches everything, both families, all protocols; the raw
    // chains have no isolated pods to look up.
    check(&pods, &servers, &truth::world(&pods, ""), "no policy", true);
    assert!(!raw_looks_up_isolated(&lab, "h1"));
    let mut slowest = Duration::ZERO;
    for (k, c) in CASES.iter().enumerate() {
        let yaml = fill(c.yaml, &pods);
        // Applied on a different host each time; the isolated pods live on all of them.
        let host = format!("h{}", k % 3 + 1);
        truth::apply(&lab, &host, &yaml, false);
        // Written before the policy's table, so before `weft apply` returns.
        assert!(
            raw_looks_up_isolated(&lab, &host),
            "{}: {host}'s raw chains do not track isolated pods",
            c.name
        );
        let w = truth::world(&pods, &yaml);
        // IPv6 on every other case (each family's table takes one probing round).
        let t = check(&pods, &servers, &w, c.name, k % 2 == 0);
        slowest = slowest.max(t);
        if k == 0 {
            // Someone flushes every host's ruleset (`systemctl restart nftables` does):
            // the pods are open until the agents' check (every 30 s) finds their tables
            // gone and writes them again; then the policy holds as before. The policy
            // is deleted and applied again meanwhile: its writes then declare weft's
            // tables with their `isolated` sets only, which must not pass for weft's
            // own.
            for h in ["h1", "h2", "h3"] {
                let (ok, out) = lab.exec(h, &["nft", "flush", "ruleset"]);
                assert!(ok, "{h}: nft flush ruleset: {out}");
            }
            truth::apply(&lab, &host, &yaml, true);
            truth::apply(&lab, &host, &yaml, false);
            if let Err(diffs) =
                truth::converge(&pods, &servers, &w, &[false, true], Duration::from_secs(50))
            {
                panic!(
                    "{}: 50 s after every host's ruleset was flushed the lab still differs from the reference engine in {} probes:\n{}",
                    c.name,
                    diffs.len(),
                    diffs.join("\n")
                );
            }
            for h in ["h1", "h2", "h3"] {
                let back = common::dp::wait_for(Duration::from_secs(35), || {
                    ["ip", "ip6"]
                        .iter()
                        .all(|fam| {
                            let (ok, chain) =
                                lab.exec(h, &["nft", "list", "chain", fam, "weft", "raw_pods"]);
                            ok && chain.contains("saddr @isolated accept")
                        })
                        .then_some(())
                });
                assert!(back.is_some(), "{h}: weft's raw chains are not back");
            }
        }
        truth::apply(&lab, &host, &yaml, true);
    }
    // "should stop enforcing policies after they are deleted"
    check(
        &pods,
        &servers,
        &truth::world(&pods, ""),
        "after every case was deleted",
        false,
    );
    // With the last policy gone, every host's raw chains drop the lookups again.
    for h in ["h1", "h2", "h3"] {
        let gone = common::dp::wait_for(Duration::from_secs(10), || {
            (!raw_looks_up_isolated(&lab, h)).then_some(())
        });
        assert!(
            gone.is_some(),
            "{h}'s raw chains still look up isolated pods"
        );
    }
    eprintln!(
        "policy truth table: {} cases matched the engine; the slowest took {} ms to match",
        CASES.len(),
        slowest.as_millis()
    );
}

#[test]
fn generated_policies_relabelling_and_deletion_match_the_reference_engine() {
    if !root_or_skip("generated_policies_relabelling_and_deletion_match_the_reference_engine") {
        return;
    }
    let lab = Lab::up_args(
        "pol2",
        3,
        "mesh",
        &["--ipam-pools", "10.32.0.0/12,fd32::/48"],
    );
    let pods = truth::start_pods(&lab);
    let servers = truth::serve(&pods);
    truth::apply(&lab, "h2", &truth::namespaces_yaml(), false);
    let addrs: Vec<std::net::IpAddr> = pods.iter().flat_map(|p| [p.v4, p.v6]).collect();
    // Generated policies, seeded: WEFT_POLICY_SEED replays one.
    let seeds: Vec<u64> = match std::env::var("WEFT_POLICY_SEED") {
        Ok(s) => vec![s.parse().expect("WEFT_POLICY_SEED is a number")],
        Err(_) => (1..=12).collect(),
    };
    for seed in seeds {
        let yaml = weft_policy::gen::policies(seed, 1 + (seed % 3) as usize, &addrs);
        truth::apply(&lab, "h3", &yaml, false);
        let w = truth::world(&pods, &yaml);
        check(
            &pods,
            &servers,
            &w,
            &format!("generated seed {seed} (WEFT_POLICY_SEED={seed} replays it):\n{yaml}"),
            seed % 3 == 0,
        );
        truth::apply(&lab, "h3", &yaml, true);
    }

    // Relabelling a pod: policies follow its new labels (upstream: "should allow ingress
    // access from updated pod", "should deny ingress access to updated pod").
    let allow_b = "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]
";
    truth::apply(&lab, "h1", allow_b, false);
    let mut w = truth::world(&pods, allow_b);
    check(&pods, &servers, &w, "allow-b before relabelling", false);
    let (ok, out) = lab.exec("h2", &["weft", "label", "-n", "y", "c", "pod=b"]);
    assert!(ok, "weft label: {out}");
    w.endpoints
        .get_mut("y-c/eth0")
        .unwrap()
        .labels
        .insert("pod".into(), "b".into());
    check(&pods, &servers, &w, "y/c relabelled pod=b is let in", false);
    let (ok, out) = lab.exec(
        "h3",
        &["weft", "label", "-n", "x", "a", "pod-", "role=server"],
    );
    assert!(ok, "weft label: {out}");
    let xa = w.endpoints.get_mut("x-a/eth0").unwrap();
    xa.labels.remove("pod");
    xa.labels.insert("role".into(), "server".into());
    check(
        &pods,
        &servers,
        &w,
        "x/a without pod=a is no longer isolated",
        false,
    );
    let (ok, out) = lab.exec("h1", &["weft", "label", "-n", "x", "a", "pod=a", "role-"]);
    assert!(ok, "weft label: {out}");
    let xa = w.endpoints.get_mut("x-a/eth0").unwrap();
    xa.labels.insert("pod".into(), "a".into());
    xa.labels.remove("role");

    // Relabelling a namespace (upstream: "should allow ingress access from updated
    // namespace").
    let from_red = "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: from-red, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: red}}}]
";
    truth::apply(&lab, "h1", from_red, false);
    let both = format!("{allow_b}---\n{from_red}");
    let mut w = truth::world(&pods, &both);
    w.endpoints
        .get_mut("y-c/eth0")
        .unwrap()
        .labels
        .insert("pod".into(), "b".into());
    check(&pods, &servers, &w, "no namespace is red yet", false);
    truth::apply(
        &lab,
        "h3",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: z\n  labels: {ns: z, team: red}\n",
        false,
    );
    w.namespaces
        .get_mut("z")
        .unwrap()
        .insert("team".into(), "red".into());
    check(
        &pods,
        &servers,
        &w,
        "namespace z relabelled team=red is let in",
        true,
    );

    // Deleting them: back to everything open.
    truth::apply(&lab, "h2", &both, true);
    let mut w = truth::world(&pods, "");
    w.endpoints
        .get_mut("y-c/eth0")
        .unwrap()
        .labels
        .insert("pod".into(), "b".into());
    check(
        &pods,
        &servers,
        &w,
        "should stop enforcing policies after they are deleted",
        true,
    );
}
