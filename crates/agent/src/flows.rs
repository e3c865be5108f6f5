//! Every policy drop explained (docs/policy.md, "Drops"): the packets weft's policy rules
//! log to NFLOG group 7 are read on a thread of their own, and the owner task turns each
//! into a flow with its endpoints and the reason the reference engine gives, kept in a
//! ring that `weft flows` reads. The kernel's own counters count every drop.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use weft_netlink::netfilter::{LoggedPacket, NfLog};
use weft_policy::compile::{ChainInfo, LOG_GROUP, LOG_PREFIX, TABLE};
use weft_policy::engine::describe_port;
use weft_policy::{Flow, Side};

use crate::policy::wall_ms;
use crate::{log, Agent, Event};

/// Flows kept for `weft flows`.
const RING: usize = 4096;

/// Bytes of each logged packet copied to userspace (headers only).
const COPY: u32 = 128;

/// Logged packets read but not yet turned into flows, at most: past it the reader drops
/// (and counts) them, so a flood of logged packets neither grows the agent's memory nor
/// holds up its other events (a CNI ADD) behind them.
const BACKLOG: usize = 1024;

/// One logged flow: a dropped packet, or the first packet of an allowed connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowReport {
    /// Its number; `weft flows --follow` asks for those after the last it saw.
    pub seq: u64,
    /// When (Unix ms).
    pub time_ms: u64,
    /// `dropped` or `allowed`.
    pub verdict: String,
    /// `ingress` (into a pod of this host) or `egress` (out of one).
    pub direction: String,
    /// Source address.
    pub src: String,
    /// Destination address.
    pub dst: String,
    /// The source endpoint, `namespace/name`, if it is a pod.
    pub src_name: Option<String>,
    /// The destination endpoint, if it is a pod.
    pub dst_name: Option<String>,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, ...
    pub protocol: String,
    /// Source port, for protocols with ports.
    pub sport: Option<u16>,
    /// Destination port.
    pub dport: Option<u16>,
    /// The allowing policy (`namespace/name`), for allowed flows.
    pub policy: Option<String>,
    /// Why, in words: for a drop, which policies isolate the pod and that none allows it.
    pub reason: String,
}

/// `GET /flows` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowsAnswer {
    /// Flows after the asked sequence number, oldest first.
    pub flows: Vec<FlowReport>,
    /// The number to ask after next time.
    pub last: u64,
    /// Logged packets the agent dropped since it started, as it was behind.
    #[serde(default)]
    pub lost: u64,
    /// Why flows are not being logged, if they are not.
    pub error: Option<String>,
}

/// The ring of recent flows.
#[derive(Default)]
pub(crate) struct Flows {
    ring: VecDeque<FlowReport>,
    last: u64,
    pub(crate) error: Option<String>,
    /// Packets read and not yet processed (the reader adds, the owner task takes).
    backlog: Arc<AtomicUsize>,
    /// Packets dropped by the reader with the backlog full.
    lost: Arc<AtomicU64>,
}

impl Flows {
    fn push(&mut self, mut f: FlowReport) {
        self.last += 1;
        f.seq = self.last;
        if self.ring.len() == RING {
            self.ring.pop_front();
        }
        self.ring.push_back(f);
    }

    /// Flows logged since the agent started.
    pub(crate) fn logged(&self) -> u64 {
        self.last
    }

    /// Flows numbered above `after`.
    pub(crate) fn after(&self, after: u64) -> FlowsAnswer {
        FlowsAnswer {
            flows: self
                .ring
                .iter()
                .filter(|f| f.seq > after)
                .cloned()
                .collect(),
            last: self.last,
            lost: self.lost.load(Ordering::Relaxed),
            error: self.error.clone(),
        }
    }
}

/// Starts the reader thread of NFLOG group 7; its packets arrive as events.
fn start(
    events: mpsc::UnboundedSender<Event>,
    backlog: Arc<AtomicUsize>,
    lost: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut nflog = NfLog::bind(LOG_GROUP, COPY).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("weft-nflog".into())
        .spawn(move || loop {
            match nflog.recv() {
                Ok(p) if p.is_empty() => {}
                Ok(p) if backlog.load(Ordering::Relaxed) >= BACKLOG => {
                    lost.fetch_add(p.len() as u64, Ordering::Relaxed);
                }
                Ok(p) => {
                    backlog.fetch_add(p.len(), Ordering::Relaxed);
                    if events.send(Event::PolicyLog(p)).is_err() {
                        return;
                    }
                }
                // ENOBUFS: the kernel dropped log messages under a burst; go on.
                Err(e) if e.errno() == Some(libc::ENOBUFS) => {}
                Err(e) => {
                    log(format!("policy: flow log stopped: {e}"));
                    return;
                }
            }
        })
        .map_err(|e| format!("start the flow log thread: {e}"))?;
    Ok(())
}

/// Source, destination, IP protocol and (source, destination) ports of a packet.
type Headers = (IpAddr, IpAddr, u8, Option<(u16, u16)>);

/// Addresses, protocol and ports from a packet's headers.
fn headers(p: &[u8]) -> Option<Headers> {
    let (src, dst, proto, l4) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let s: [u8; 4] = p[12..16].try_into().ok()?;
            let d: [u8; 4] = p[16..20].try_into().ok()?;
            (
                IpAddr::V4(Ipv4Addr::from(s)),
                IpAddr::V4(Ipv4Addr::from(d)),
                p[9],
                p.get(ihl..),
            )
        }
        6 if p.len() >= 40 => {
            let s: [u8; 16] = p[8..24].try_into().ok()?;
            let d: [u8; 16] = p[24..40].try_into().ok()?;
            let (proto, l4) = past_extensions(p[6], p.get(40..));
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                proto,
                l4,
            )
        }
        _ => return None,
    };
    let ports = match (proto, l4) {
        (6 | 17 | 132, Some(l)) if l.len() >= 4 => Some((
            u16::from_be_bytes([l[0], l[1]]),
            u16::from_be_bytes([l[2], l[3]]),
        )),
        _ => None,
    };
    Some((src, dst, proto, ports))
}

/// The upper-layer protocol of an IPv6 packet and its header, past the extension headers
/// (hop-by-hop, routing, fragment, destination options, AH), as the kernel's `meta l4proto`
/// and `th dport` see it; no header when it is a fragment after the first, or cut off.
fn past_extensions(mut next: u8, mut rest: Option<&[u8]>) -> (u8, Option<&[u8]>) {
    for _ in 0..8 {
        if !matches!(next, 0 | 43 | 44 | 51 | 60) {
            return (next, rest);
        }
        let Some(h) = rest.filter(|h| h.len() >= 8) else {
            return (next, None);
        };
        let len = match next {
            0 | 43 | 60 => (usize::from(h[1]) + 1) * 8,
            51 => (usize::from(h[1]) + 2) * 4,
            44 => {
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return (h[0], None);
                }
                8
            }
            _ => return (next, rest),
        };
        next = h[0];
        rest = h.get(len..);
    }
    (next, None)
}

/// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6`, or the number of another protocol.
fn protocol_name(proto: u8) -> String {
    match describe_port(&Flow {
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        proto,
        port: 0,
    }) {
        d if d.starts_with("protocol ") => proto.to_string(),
        d => d.split(' ').next().unwrap_or_default().to_string(),
    }
}

/// The policy table's drop counters (ingress, egress), from the kernel.
pub(crate) fn drop_counters() -> Option<(u64, u64)> {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "counters", "table"])
        .args(TABLE.split(' '))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut r = (0, 0);
    for item in v["nftables"].as_array()? {
        let c = &item["counter"];
        match c["name"].as_str() {
            Some("drop_in") => r.0 = c["packets"].as_u64().unwrap_or(0),
            Some("drop_out") => r.1 = c["packets"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    Some(r)
}

impl Agent {
    /// Starts reading the policy's log; a failure is reported in `weft flows`.
    pub(crate) fn flows_start(&mut self) {
        let f = &self.pol.flows;
        if let Err(e) = start(self.events.clone(), f.backlog.clone(), f.lost.clone()) {
            log(format!("policy: no flow log: {e}"));
            self.pol.flows.error = Some(e);
        }
    }

    /// Logged packets, turned into flows with their reason.
    pub(crate) fn flows_logged(&mut self, packets: Vec<LoggedPacket>) {
        self.pol
            .flows
            .backlog
            .fetch_sub(packets.len(), Ordering::Relaxed);
        let local: std::collections::BTreeSet<String> = self
            .node
            .store()
            .live_with_prefix(&self.id, weft_policy::records::EP_PREFIX)
            .map(|(k, _)| k[weft_policy::records::EP_PREFIX.len()..].to_string())
            .collect();
        for p in packets {
            let mut words = p.prefix.split_whitespace();
            if words.next() != Some(LOG_PREFIX) {
                continue;
            }
            let Some(kind) = words.next() else { continue };
            let Some((src, dst, proto, ports)) = headers(&p.payload) else {
                continue;
            };
            if kind == "E" {
                if let (6, Some((sport, dport))) = (proto, ports) {
                    self.flows_promote(&local, src, dst, sport, dport);
                }
                continue;
            }
            let flow = Flow {
                src,
                dst,
                proto,
                port: ports.map(|p| p.1).unwrap_or(0),
            };
            let world = &self.pol.world;
            // (A logged packet crossed `forward`: it is not between a pod and this host.)
            let v = weft_policy::local_verdict(world, &flow, |e| local.contains(&e.uid), |_| false);
            let rows: Vec<(&str, &str, Option<String>, String)> = if kind == "A" {
                allowed_rows(&v, world, &flow)
            } else {
                let (Some(dir), Some(chain)) = (words.next(), words.next()) else {
                    continue;
                };
                let mut reason = v.explain(world, &flow);
                if chain.starts_with("held_") {
                    // Isolated by its ADD, its dispatch element not added yet.
                    reason = format!(
                        "held: isolated before its allow rules were in place; now {reason}"
                    );
                } else if v.allowed {
                    // The world changed since the packet was dropped, or this was a TCP
                    // packet of a connection opened before its pod was isolated.
                    reason = format!(
                        "denied by the rules in force then ({}); now {reason}",
                        match &self.pol.applied_info(chain) {
                            Some(ChainInfo::Group { policies, .. }) =>
                                format!("isolated by {}", policies.join(", ")),
                            _ => "isolated".into(),
                        }
                    );
                }
                let dir = if dir == "in" { "ingress" } else { "egress" };
                vec![("dropped", dir, None, reason)]
            };
            let name = |a: IpAddr| world.endpoint_at(a).map(|e| e.key());
            for (verdict, direction, policy, reason) in rows {
                let f = FlowReport {
                    seq: 0,
                    time_ms: wall_ms(),
                    verdict: verdict.into(),
                    direction: direction.into(),
                    src: src.to_string(),
                    dst: dst.to_string(),
                    src_name: name(src),
                    dst_name: name(dst),
                    protocol: protocol_name(proto),
                    sport: ports.map(|p| p.0),
                    dport: ports.map(|p| p.1),
                    policy,
                    reason,
                };
                self.pol.flows.push(f);
            }
        }
    }
}

impl Agent {
    /// An established TCP connection of an isolated pod, logged by the `promote` chain
    /// (its packet in the original direction, nobody translates it): promoted to the fast
    /// path if the policy in force still allows it, as a cut would judge it.
    fn flows_promote(
        &mut self,
        local: &std::collections::BTreeSet<String>,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
    ) {
        if !self.fast_loaded() {
            return;
        }
        let flow = Flow {
            src,
            dst,
            proto: 6,
            port: dport,
        };
        let world = &self.pol.world;
        if !weft_policy::local_verdict(world, &flow, |e| local.contains(&e.uid), |_| false).allowed
        {
            return;
        }
        // The entry the rule logged, still as it was then: the log may have waited while
        // the connection ended and another opened on the same ports.
        match weft_netlink::netfilter::conntrack_get_tcp(src, dst, sport, dport) {
            Ok(Some((c, meta)))
                if c.1 == (src, dst, sport, dport)
                    && meta.mark & weft_policy::compile::PROMOTE_MARK != 0
                    && crate::fast::promotable(&c, &meta) => {}
            Ok(_) => return,
            Err(e) => return log(format!("policy: {e}")),
        }
        if let Err(e) = self.fast_promote(src, dst, sport, dport) {
            // Only slower: the connection stays on the stack.
            log(format!("policy: {e}"));
        }
    }
}

/// The rows of an allowed connection's first packet (logged once, after both directions
/// passed): one per side this host enforces that a policy allowed, with the rule the
/// engine names (any allowing rule is the reason: they are a union).
fn allowed_rows(
    v: &weft_policy::Verdict,
    world: &weft_policy::World,
    flow: &Flow,
) -> Vec<(&'static str, &'static str, Option<String>, String)> {
    let mut rows = Vec::new();
    for (side, dir) in [(&v.egress, "egress"), (&v.ingress, "ingress")] {
        match side {
            Side::Allowed { policy, rule } => rows.push((
                "allowed",
                dir,
                Some(policy.clone()),
                format!("allowed by {policy} ({dir} rule {rule})"),
            )),
            Side::Denied { .. } => rows.push((
                "allowed",
                dir,
                None,
                format!(
                    "allowed by the rules in force then; now {}",
                    v.explain(world, flow)
                ),
            )),
            _ => {}
        }
    }
    if rows.is_empty() {
        // Neither side is isolated any more: the world changed since.
        let dir = if world.endpoint_at(flow.dst).is_some() {
            "ingress"
        } else {
            "egress"
        };
        rows.push((
            "allowed",
            dir,
            None,
            format!("allowed; now {}", v.explain(world, flow)),
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_ipv4_and_ipv6_packets() {
        let mut v4 = vec![0u8; 24];
        v4[0] = 0x45;
        v4[9] = 6;
        v4[12..16].copy_from_slice(&[10, 32, 0, 2]);
        v4[16..20].copy_from_slice(&[10, 32, 1, 3]);
        v4[20..24].copy_from_slice(&[0x9c, 0x40, 0, 80]);
        let (s, d, p, ports) = headers(&v4).unwrap();
        assert_eq!(
            (s.to_string(), d.to_string(), p),
            ("10.32.0.2".into(), "10.32.1.3".into(), 6)
        );
        assert_eq!(ports, Some((40000, 80)));
        let mut v6 = vec![0u8; 44];
        v6[0] = 0x60;
        v6[6] = 17;
        v6[23] = 2;
        v6[39] = 3;
        v6[40..44].copy_from_slice(&[0, 53, 0, 53]);
        let (s, d, p, ports) = headers(&v6).unwrap();
        assert_eq!(
            (s.to_string(), d.to_string(), p),
            ("::2".into(), "::3".into(), 17)
        );
        assert_eq!(ports, Some((53, 53)));
        // Short or garbled packets are skipped.
        assert!(headers(&v4[..10]).is_none());
        assert!(headers(&[0x15; 30]).is_none());
        // ICMP has no ports.
        v4[9] = 1;
        assert_eq!(headers(&v4).unwrap().3, None);
    }

    #[test]
    fn ipv6_extension_headers_are_skipped_to_the_ports() {
        // Hop-by-hop (8 bytes), destination options (16), then TCP 40000 -> 80.
        let mut v6 = vec![0u8; 40 + 8 + 16 + 4];
        v6[0] = 0x60;
        v6[6] = 0;
        v6[40] = 60;
        v6[48] = 6;
        v6[49] = 1;
        v6[64..68].copy_from_slice(&[0x9c, 0x40, 0, 80]);
        let (_, _, p, ports) = headers(&v6).unwrap();
        assert_eq!((p, ports), (6, Some((40000, 80))));
        // A first fragment has its ports; a later one has none.
        let mut frag = vec![0u8; 40 + 8 + 4];
        frag[0] = 0x60;
        frag[6] = 44;
        frag[40] = 17;
        frag[48..52].copy_from_slice(&[0, 53, 0, 53]);
        assert_eq!(
            headers(&frag).unwrap().2..=headers(&frag).unwrap().2,
            17..=17
        );
        assert_eq!(headers(&frag).unwrap().3, Some((53, 53)));
        frag[43] = 0x08; // offset 1 (8 bytes)
        assert_eq!(headers(&frag).unwrap().3, None);
        assert_eq!(headers(&frag).unwrap().2, 17);
        // Cut off inside an extension header: the protocol so far, no ports.
        assert_eq!(headers(&v6[..50]).unwrap().3, None);
    }

    #[test]
    fn protocols_are_named_or_numbered() {
        assert_eq!(protocol_name(6), "TCP");
        assert_eq!(protocol_name(132), "SCTP");
        assert_eq!(protocol_name(1), "ICMP");
        assert_eq!(protocol_name(58), "ICMPv6");
        assert_eq!(protocol_name(47), "47");
    }
}
