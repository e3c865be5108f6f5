//! The reference engine: Kubernetes NetworkPolicy semantics, evaluated directly on the
//! world (docs/policy.md, "Semantics"). The lab's truth tables are checked against it,
//! the agent asks it why a packet was dropped and which tracked connections a change
//! forbids, and the compiler's output is tested against it.

use std::net::IpAddr;

use serde::Serialize;

use crate::k8s::{NetworkPolicy, Peer, PortValue, Protocol, Rule};
use crate::model::{Endpoint, World};

/// A direction of a pod's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Into the pod.
    Ingress,
    /// Out of the pod.
    Egress,
}

impl Dir {
    /// `in` or `out`.
    pub fn short(self) -> &'static str {
        match self {
            Dir::Ingress => "in",
            Dir::Egress => "out",
        }
    }

    /// `ingress` or `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }
}

/// A packet (or connection) to judge: addresses, IP protocol number, destination port
/// (0 where the protocol has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    /// Destination port.
    pub port: u16,
}

/// The decision of one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Side {
    /// The address is no pod: nothing to enforce on this side.
    NotAPod,
    /// Between a pod and an address of its own node: never filtered (the kubelet's probes,
    /// the node's DNS; Kubernetes lets a node reach its pods whatever the policy).
    OwnNode,
    /// The pod is not isolated in this direction.
    NotIsolated,
    /// Allowed by this rule of this policy.
    Allowed {
        /// `namespace/name`.
        policy: String,
        /// Index of the rule in its direction's list.
        rule: usize,
    },
    /// Isolated by these policies, none of which allows it.
    Denied {
        /// The policies that isolate the pod in this direction.
        isolated_by: Vec<String>,
    },
}

impl Side {
    /// Whether this side lets the packet pass.
    pub fn passes(&self) -> bool {
        !matches!(self, Side::Denied { .. })
    }
}

/// The decision for a flow: egress of its source AND ingress of its destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Allowed.
    pub allowed: bool,
    /// The source's egress.
    pub egress: Side,
    /// The destination's ingress.
    pub ingress: Side,
}

impl Verdict {
    /// A sentence for people.
    pub fn explain(&self, world: &World, flow: &Flow) -> String {
        let who = |a: IpAddr| match world.endpoint_at(a) {
            Some(e) => format!("{} ({a})", e.key()),
            None => a.to_string(),
        };
        let what = describe_port(flow);
        let side = |s: &Side, d: Dir, pod: IpAddr, peer: IpAddr| match s {
            Side::NotAPod => format!("{} is not a pod", who(pod)),
            Side::OwnNode => format!("{} is {}'s own node", who(peer), who(pod)),
            Side::NotIsolated => format!("{} of {} is not isolated", d.as_str(), who(pod)),
            Side::Allowed { policy, rule } => format!(
                "{} of {} allowed by {policy} ({} rule {rule})",
                d.as_str(),
                who(pod),
                d.as_str()
            ),
            Side::Denied { isolated_by } => format!(
                "{} of {} is isolated by {} and none of them allows {} {}",
                d.as_str(),
                who(pod),
                isolated_by.join(", "),
                who(peer),
                what
            ),
        };
        let e = side(&self.egress, Dir::Egress, flow.src, flow.dst);
        let i = side(&self.ingress, Dir::Ingress, flow.dst, flow.src);
        let head = if self.allowed { "allowed" } else { "denied" };
        match (&self.egress, &self.ingress) {
            (Side::Denied { .. }, Side::Denied { .. }) => format!("{head}: {e}; {i}"),
            (Side::Denied { .. }, _) => format!("{head}: {e}"),
            (_, Side::Denied { .. }) => format!("{head}: {i}"),
            _ => format!("{head}: {e}; {i}"),
        }
    }
}

/// `TCP 80`, `UDP 53`, `ICMP`, `protocol 47`.
pub fn describe_port(flow: &Flow) -> String {
    match Protocol::from_number(flow.proto) {
        Some(p) => format!("{p} {}", flow.port),
        None => match flow.proto {
            1 => "ICMP".into(),
            58 => "ICMPv6".into(),
            n => format!("protocol {n}"),
        },
    }
}

/// The policies that select `ep` for `dir`, in key order.
pub fn isolating<'w>(world: &'w World, ep: &Endpoint, dir: Dir) -> Vec<&'w NetworkPolicy> {
    world
        .policies
        .values()
        .filter(|p| selects(p, ep, dir))
        .collect()
}

/// Whether `p` selects `ep` for `dir`.
pub fn selects(p: &NetworkPolicy, ep: &Endpoint, dir: Dir) -> bool {
    let types = match dir {
        Dir::Ingress => p.ingress_isolates,
        Dir::Egress => p.egress_isolates,
    };
    types && p.namespace == ep.namespace && p.pod_selector.matches(&ep.labels)
}

/// Whether `peer` of a rule in `policy_ns` matches `addr` (held by `ep`, if a pod).
pub fn peer_matches(
    world: &World,
    policy_ns: &str,
    peer: &Peer,
    addr: IpAddr,
    ep: Option<&Endpoint>,
) -> bool {
    if let Some(b) = &peer.ip_block {
        return b.cidr.contains(&addr) && !b.except.iter().any(|e| e.contains(&addr));
    }
    let Some(ep) = ep else { return false };
    let ns_ok = match &peer.namespace_selector {
        None => ep.namespace == policy_ns,
        Some(sel) => sel.matches(&world.namespace_labels(&ep.namespace)),
    };
    ns_ok
        && peer
            .pod_selector
            .as_ref()
            .is_none_or(|sel| sel.matches(&ep.labels))
}

/// Whether a rule's ports allow `proto`/`port` to the destination `dst` (named ports are
/// looked up there).
pub fn ports_match(rule: &Rule, proto: u8, port: u16, dst: Option<&Endpoint>) -> bool {
    if rule.ports.is_empty() {
        return true;
    }
    rule.ports.iter().any(|p| {
        if p.protocol.number() != proto {
            return false;
        }
        match &p.port {
            None => true,
            Some(PortValue::Number(n)) => (*n..=p.end_port.unwrap_or(*n)).contains(&port),
            Some(PortValue::Name(name)) => {
                dst.and_then(|d| d.named_port(name, p.protocol)) == Some(port)
            }
        }
    })
}

/// One direction's decision for the pod `ep` talking to `peer_addr`.
fn side(world: &World, ep: Option<&Endpoint>, dir: Dir, flow: &Flow) -> Side {
    let Some(ep) = ep else { return Side::NotAPod };
    let policies = isolating(world, ep, dir);
    if policies.is_empty() {
        return Side::NotIsolated;
    }
    let (peer_addr, dst) = match dir {
        Dir::Ingress => (flow.src, Some(ep)),
        Dir::Egress => (flow.dst, world.endpoint_at(flow.dst)),
    };
    let peer_ep = world.endpoint_at(peer_addr);
    for p in &policies {
        let rules = match dir {
            Dir::Ingress => &p.ingress,
            Dir::Egress => &p.egress,
        };
        for (i, r) in rules.iter().enumerate() {
            let peer_ok = r.peers.is_empty()
                || r.peers
                    .iter()
                    .any(|x| peer_matches(world, &p.namespace, x, peer_addr, peer_ep));
            if peer_ok && ports_match(r, flow.proto, flow.port, dst) {
                return Side::Allowed {
                    policy: p.key(),
                    rule: i,
                };
            }
        }
    }
    Side::Denied {
        isolated_by: policies.iter().map(|p| p.key()).collect(),
    }
}

/// The verdict for `flow` in `world`. A pod talking to itself is always allowed.
pub fn verdict(world: &World, flow: &Flow) -> Verdict {
    verdict_on(world, flow, |_, _| false)
}

/// As [`verdict`], knowing which addresses are an endpoint's own node's (`own_node(pod,
/// address)`): traffic between them is always allowed, as the node's own traffic with
/// its pods never crosses the `forward` hook the policy is enforced at.
pub fn verdict_on(
    world: &World,
    flow: &Flow,
    own_node: impl Fn(&Endpoint, IpAddr) -> bool,
) -> Verdict {
    if flow.src == flow.dst {
        return Verdict {
            allowed: true,
            egress: Side::NotIsolated,
            ingress: Side::NotIsolated,
        };
    }
    let (src, dst) = (world.endpoint_at(flow.src), world.endpoint_at(flow.dst));
    if src.is_some_and(|e| own_node(e, flow.dst)) {
        return Verdict {
            allowed: true,
            egress: Side::OwnNode,
            ingress: Side::NotAPod,
        };
    }
    if dst.is_some_and(|e| own_node(e, flow.src)) {
        return Verdict {
            allowed: true,
            egress: Side::NotAPod,
            ingress: Side::OwnNode,
        };
    }
    let egress = side(world, src, Dir::Egress, flow);
    let ingress = side(world, dst, Dir::Ingress, flow);
    Verdict {
        allowed: egress.passes() && ingress.passes(),
        egress,
        ingress,
    }
}

/// The verdict of the sides this host enforces: egress of a local source, ingress of a
/// local destination (`local` says which endpoints are this host's, `host` which addresses
/// are this host's own). The other side is enforced by its own host.
pub fn local_verdict(
    world: &World,
    flow: &Flow,
    local: impl Fn(&Endpoint) -> bool,
    host: impl Fn(IpAddr) -> bool,
) -> Verdict {
    let mut v = verdict_on(world, flow, |e, a| local(e) && host(a));
    if !world.endpoint_at(flow.src).is_some_and(&local) {
        v.egress = Side::NotAPod;
    }
    if !world.endpoint_at(flow.dst).is_some_and(&local) {
        v.ingress = Side::NotAPod;
    }
    v.allowed = v.egress.passes() && v.ingress.passes();
    v
}

#[cfg(test)]
mod tests;
