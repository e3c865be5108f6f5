//! Seeded, reproducible generation of NetworkPolicies over the truth-table world
//! (namespaces x, y, z; pods a, b, c; ports 80 and 81 over TCP and UDP, named
//! `serve-PORT-PROTO`): the same seed always gives the same YAML. Used by the unit tests
//! (the compiler against the engine) and by the lab's truth-table test (the kernel
//! against the engine).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::k8s::{Protocol, NAME_LABEL};
use crate::model::{Endpoint, World};
use crate::selector::Labels;

/// A small deterministic PRNG (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p` percent.
    pub fn chance(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The namespaces of the truth-table world.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];

fn selector(rng: &mut Rng, key: &str, values: &[&str]) -> String {
    match rng.below(5) {
        0 => "{}".into(),
        1 | 2 => format!("{{matchLabels: {{{key}: {}}}}}", rng.pick(values)),
        3 => {
            let a = rng.pick(values);
            let b = rng.pick(values);
            format!("{{matchExpressions: [{{key: {key}, operator: In, values: [{a}, {b}]}}]}}")
        }
        _ => format!(
            "{{matchExpressions: [{{key: {key}, operator: NotIn, values: [{}]}}]}}",
            rng.pick(values)
        ),
    }
}

fn peer(rng: &mut Rng, pod_addrs: &[IpAddr]) -> String {
    match rng.below(6) {
        0 => format!("    - podSelector: {}\n", selector(rng, "pod", &PODS)),
        1 => format!(
            "    - namespaceSelector: {}\n",
            selector(rng, "ns", &NAMESPACES)
        ),
        2 | 3 => format!(
            "    - namespaceSelector: {}\n      podSelector: {}\n",
            selector(rng, "ns", &NAMESPACES),
            selector(rng, "pod", &PODS)
        ),
        _ if pod_addrs.is_empty() => "    - namespaceSelector: {}\n".into(),
        4 => {
            // One pod's address, or everything but it.
            let a = *rng.pick(pod_addrs);
            let host = if a.is_ipv4() { 32 } else { 128 };
            if rng.chance(50) {
                format!("    - ipBlock: {{cidr: {a}/{host}}}\n")
            } else {
                let all = if a.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                format!("    - ipBlock: {{cidr: {all}, except: [{a}/{host}]}}\n")
            }
        }
        _ => {
            // A block around a pod, with a hole at another pod when it is inside.
            let a = *rng.pick(pod_addrs);
            let b = *rng.pick(pod_addrs);
            let (len, host) = if a.is_ipv4() { (16, 32) } else { (64, 128) };
            let net = ipnet::IpNet::new(a, len).map(|n| n.trunc());
            match net {
                Ok(n) if n.contains(&b) && a != b && rng.chance(70) => {
                    format!("    - ipBlock: {{cidr: {n}, except: [{b}/{host}]}}\n")
                }
                Ok(n) => format!("    - ipBlock: {{cidr: {n}}}\n"),
                Err(_) => "    - podSelector: {}\n".into(),
            }
        }
    }
}

fn ports(rng: &mut Rng) -> String {
    let mut s = String::from("    ports:\n");
    for _ in 0..1 + rng.below(2) {
        let proto = *rng.pick(&["TCP", "TCP", "UDP", "SCTP"]);
        match rng.below(6) {
            0 => {
                let _ = writeln!(s, "    - protocol: {proto}");
            }
            1 => {
                let _ = writeln!(
                    s,
                    "    - protocol: {proto}\n      port: 80\n      endPort: 81"
                );
            }
            2 => {
                let p = rng.pick(&[80, 81]);
                let lower = proto.to_lowercase();
                let _ = writeln!(s, "    - protocol: {proto}\n      port: serve-{p}-{lower}");
            }
            _ => {
                let p = rng.pick(&[80, 81]);
                let _ = writeln!(s, "    - protocol: {proto}\n      port: {p}");
            }
        }
    }
    s
}

fn rules(rng: &mut Rng, key: &str, peer_key: &str, pod_addrs: &[IpAddr]) -> String {
    match rng.below(6) {
        0 => String::new(),
        1 => format!("  {key}: []\n"),
        n => {
            let mut s = format!("  {key}:\n");
            for _ in 0..(n - 1).min(2) {
                s.push_str("  - ");
                let mut body = String::new();
                if rng.chance(75) {
                    body.push_str(&format!("  {peer_key}:\n"));
                    for _ in 0..1 + rng.below(2) {
                        body.push_str(&peer(rng, pod_addrs));
                    }
                }
                if rng.chance(60) {
                    body.push_str(&ports(rng));
                }
                if body.is_empty() {
                    s.push_str("{}\n");
                } else {
                    // The first line continues "  - ".
                    s.push_str(body.trim_start());
                }
            }
            s
        }
    }
}

/// `count` random policies (YAML documents) named `gen-SEED-I`, over the truth-table
/// world whose pod addresses are `pod_addrs` (used for ipBlocks).
pub fn policies(seed: u64, count: usize, pod_addrs: &[IpAddr]) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::new();
    for i in 0..count {
        let ns = rng.pick(&NAMESPACES);
        let _ = write!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: gen-{seed}-{i}\n  namespace: {ns}\nspec:\n  podSelector: {}\n",
            selector(&mut rng, "pod", &PODS)
        );
        out.push_str(&rules(&mut rng, "ingress", "from", pod_addrs));
        out.push_str(&rules(&mut rng, "egress", "to", pod_addrs));
        match rng.below(4) {
            0 => {}
            1 => out.push_str("  policyTypes: [Ingress]\n"),
            2 => out.push_str("  policyTypes: [Egress]\n"),
            _ => out.push_str("  policyTypes: [Ingress, Egress]\n"),
        }
    }
    out
}

/// The named ports every truth-table pod serves: `serve-80-tcp`, `serve-80-udp`,
/// `serve-81-tcp`, `serve-81-udp` (and SCTP likewise).
pub fn named_ports() -> Vec<crate::model::NamedPort> {
    let mut v = Vec::new();
    for port in [80u16, 81] {
        for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            v.push(crate::model::NamedPort {
                name: format!("serve-{port}-{}", proto.nft()),
                port,
                protocol: proto,
            });
        }
    }
    v
}

/// The labels of a truth-table pod: `pod=NAME`.
pub fn pod_labels(pod: &str) -> Labels {
    [("pod".to_string(), pod.to_string())].into()
}

/// The labels of a truth-table namespace: `ns=NAME` and its name label.
pub fn namespace_labels(ns: &str) -> Labels {
    [
        ("ns".to_string(), ns.to_string()),
        (NAME_LABEL.to_string(), ns.to_string()),
    ]
    .into()
}

/// The truth-table world: every namespace with its labels, pod NS/POD at `addrs(ns, pod)`,
/// and `policies`.
pub fn truth_world(
    addrs: impl Fn(&str, &str) -> Vec<IpAddr>,
    policies: Vec<crate::k8s::NetworkPolicy>,
) -> World {
    let namespaces = NAMESPACES
        .iter()
        .map(|n| (n.to_string(), namespace_labels(n)))
        .collect();
    let mut eps = Vec::new();
    for ns in NAMESPACES {
        for pod in PODS {
            eps.push(Endpoint {
                uid: format!("{ns}-{pod}/eth0"),
                namespace: ns.into(),
                name: pod.into(),
                labels: pod_labels(pod),
                ports: named_ports(),
                addrs: addrs(ns, pod),
                node: String::new(),
            });
        }
    }
    World::new(namespaces, eps, policies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::parse_objects;

    #[test]
    fn generated_policies_are_valid_and_reproducible() {
        let addrs: Vec<IpAddr> = vec![
            "10.32.0.2".parse().unwrap(),
            "10.32.0.70".parse().unwrap(),
            "fd32::2".parse().unwrap(),
        ];
        for seed in 0..300 {
            let a = policies(seed, 3, &addrs);
            assert_eq!(a, policies(seed, 3, &addrs));
            let objs = parse_objects(&a, "x").unwrap_or_else(|e| panic!("seed {seed}: {e}\n{a}"));
            assert_eq!(objs.len(), 3);
        }
    }
}
