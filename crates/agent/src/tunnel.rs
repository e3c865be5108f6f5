//! The encrypted tunnel in the agent (docs/encryption.md): makes the `weft.tun` device
//! (alias `weft:tunnel`, persistent, so routes into it outlive the agent and drop instead
//! of leaking), starts `weft_tun`'s pump on it and the tunnel's UDP port, tells it which
//! prefixes and endpoints belong to which next hop (from the data plane's plan), carries
//! its key messages on the mesh connections, sends keepalives, and notices peers behind
//! NAT (their connections come from another address than they advertise). The protocol is
//! `weft_tunnel`'s; the packets are `weft_tun`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weft_dataplane::{tunnel_overhead, Local, Plan, Via};
use weft_mesh::{Message, NodeId};
use weft_netlink::Netlink;
use weft_tun::{Pump, Shared, Tun};
use weft_tunnel::{Control, Tunnel};

use crate::Agent;

/// The tunnel device's name.
pub const TUNNEL_DEV: &str = "weft.tun";
/// Its alias: weft's mark of ownership.
pub const TUNNEL_ALIAS: &str = "weft:tunnel";
/// The record listing the peers this node sees behind NAT.
pub(crate) const NAT_KEY: &str = "tunnel.nat";
/// Keepalives keep NAT mappings open (common UDP timeouts are 30 s or more).
const KEEPALIVE: Duration = Duration::from_secs(20);

fn log(msg: impl std::fmt::Display) {
    tracing::info!(target: "weft::tunnel", "{msg}");
}

/// The tunnel's state in the owner task.
#[derive(Default)]
pub(crate) struct TunnelState {
    running: Option<Running>,
    /// Peers whose mesh connection comes from another address than they advertise.
    natted: BTreeSet<NodeId>,
    last_keepalive: Option<Instant>,
}

struct Running {
    shared: Arc<Shared<NodeId>>,
    pump: Pump<NodeId>,
    udp: UdpSocket,
    index: u32,
    offload: bool,
    mtu: u32,
}

/// The tunnel in `weft status` (under `dataplane`).
#[derive(Debug, Serialize, Deserialize)]
pub struct TunnelReport {
    /// off, on or cross-subnet.
    pub encrypt: String,
    /// The device and its MTU, once made.
    pub device: Option<String>,
    /// The UDP port.
    pub port: u16,
    /// Offloads in use: TCP superpackets from the device, UDP GSO on send, GRO on receive.
    pub offload: OffloadReport,
    /// Peers behind NAT as seen from here.
    pub nat: Vec<String>,
    /// One entry per tunnel peer (a next hop).
    pub peers: Vec<TunnelPeerReport>,
    /// Packets read from the device with no peer for their destination.
    pub no_route: u64,
    /// Packets for a peer whose endpoint is not known yet.
    pub no_endpoint: u64,
    /// Opened packets whose source is not their sender's.
    pub spoofed: u64,
    /// Datagrams refused (bad tag, replay, unknown key, malformed; by peer above when
    /// the key names one).
    pub refused: u64,
}

/// The offloads in use.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OffloadReport {
    /// TSO superpackets from and to the device (`IFF_VNET_HDR`).
    pub tso: bool,
    /// UDP GSO on send.
    pub gso: bool,
    /// UDP GRO on receive.
    pub gro: bool,
}

/// One tunnel peer.
#[derive(Debug, Serialize, Deserialize)]
pub struct TunnelPeerReport {
    /// Its node id.
    pub id: String,
    /// Its name.
    pub name: Option<String>,
    /// Where its datagrams go (learned from its packets once it sent any).
    pub endpoint: Option<String>,
    /// Everything to and from it is encrypted (always true: the tunnel has no clear mode).
    pub encrypted: bool,
    /// Age of the key this node sends with, ms.
    pub send_key_age_ms: Option<u64>,
    /// Packets and plaintext bytes sealed for it.
    pub sent: u64,
    /// Plaintext bytes sealed.
    pub sent_bytes: u64,
    /// Packets and bytes opened from it.
    pub received: u64,
    /// Plaintext bytes opened.
    pub received_bytes: u64,
    /// Drops by reason: no_key, no_peer, malformed, unknown_key, replay, bad_tag,
    /// counter_limit.
    pub drops: BTreeMap<String, u64>,
}

fn drop_name(d: weft_tunnel::Drop) -> &'static str {
    use weft_tunnel::Drop::*;
    match d {
        NoKey => "no_key",
        NoPeer => "no_peer",
        Malformed => "malformed",
        UnknownKey => "unknown_key",
        Replay => "replay",
        BadTag => "bad_tag",
        CounterLimit => "counter_limit",
    }
}

impl Agent {
    /// The tunnel device's index when the plan needs it (made, or found from an earlier
    /// run, on first need); removes weft's device when it does not.
    pub(crate) fn tunnel_device(
        &mut self,
        nlh: &mut Netlink,
        local: &Local,
        want: &Plan,
    ) -> Result<Option<u32>, String> {
        let e = |e: weft_netlink::Error| e.to_string();
        let existing = nlh.link_by_name(TUNNEL_DEV).map_err(e)?;
        let ours = existing
            .as_ref()
            .is_some_and(|l| l.alias.as_deref() == Some(TUNNEL_ALIAS));
        if !want.tunnel_device {
            if let Some(r) = self.tunnel.running.take() {
                r.pump.stop();
                log(format!("tunnel: {TUNNEL_DEV} no longer needed"));
            }
            // Someone else's device of that name is left alone.
            if let Some(l) = existing.filter(|_| ours) {
                crate::dataplane::already_gone(nlh.delete_link(l.index))?;
            }
            return Ok(None);
        }
        if existing.is_some() && !ours && self.tunnel.running.is_none() {
            return Err(format!(
                "{TUNNEL_DEV} exists but is not weft's (no alias {TUNNEL_ALIAS:?}); remove it or \
                 rename it"
            ));
        }
        let mtu = local
            .underlay_mtu
            .saturating_sub(tunnel_overhead(local.underlay.addr()));
        if let Some(r) = &mut self.tunnel.running {
            match &existing {
                Some(l) if l.index == r.index => {
                    if l.mtu != mtu {
                        nlh.set_mtu(l.index, mtu).map_err(e)?;
                        r.mtu = mtu;
                    }
                    if !l.up {
                        nlh.set_up(l.index).map_err(e)?;
                    }
                    return Ok(Some(r.index));
                }
                _ => {
                    // Deleted under us: made again below.
                    let r = self.tunnel.running.take().expect("present");
                    r.pump.stop();
                }
            }
        }
        let offload = self.dp.cfg.tunnel_offload;
        let tun = match Tun::create_with(TUNNEL_DEV, offload) {
            Ok(t) => t,
            Err(err) if offload => {
                tracing::warn!(target: "weft::tunnel", error = %err,
                    "tunnel: the kernel refused the TUN offloads ({err}); going without");
                Tun::create_with(TUNNEL_DEV, false)
                    .map_err(|e| format!("create {TUNNEL_DEV}: {e}"))?
            }
            Err(err) => return Err(format!("create {TUNNEL_DEV}: {err}")),
        };
        tun.set_persist(true)
            .map_err(|e| format!("make {TUNNEL_DEV} persistent: {e}"))?;
        let link = nlh
            .link_by_name(TUNNEL_DEV)
            .map_err(e)?
            .ok_or_else(|| format!("{TUNNEL_DEV} vanished"))?;
        nlh.set_alias(link.index, TUNNEL_ALIAS).map_err(e)?;
        nlh.set_mtu(link.index, mtu).map_err(e)?;
        // Forwarding both ways; no link-local address, so the kernel sends no router
        // solicitations or MLD reports into the tunnel (they would be dropped, counted).
        for (key, value) in [
            ("ipv4/conf/{}/forwarding", "1"),
            ("ipv6/conf/{}/forwarding", "1"),
            ("ipv6/conf/{}/addr_gen_mode", "1"),
        ] {
            let path = format!("/proc/sys/net/{}", key.replace("{}", TUNNEL_DEV));
            std::fs::write(&path, value).map_err(|e| format!("write {path}: {e}"))?;
        }
        nlh.set_up(link.index).map_err(e)?;
        let port = self.dp.cfg.tunnel_port;
        let bind: SocketAddr = match self.cfg.advertise.ip() {
            IpAddr::V4(_) => (IpAddr::from([0u8; 4]), port).into(),
            IpAddr::V6(_) => (IpAddr::from([0u16; 8]), port).into(),
        };
        let udp =
            UdpSocket::bind(bind).map_err(|e| format!("tunnel: bind UDP port {bind}: {e}"))?;
        let cfg = weft_tunnel::Config {
            rotate_after_ms: self.dp.cfg.tunnel_rotate_secs * 1000,
            ..weft_tunnel::Config::default()
        };
        let shared = Shared::new(Tunnel::new(cfg));
        let offload = tun.offload();
        let pump = Pump::start(
            tun,
            udp.try_clone().map_err(|e| e.to_string())?,
            shared.clone(),
        )
        .map_err(|e| format!("tunnel: start: {e}"))?;
        log(format!(
            "tunnel: {TUNNEL_DEV} mtu {mtu}, UDP port {port}, offloads {}",
            if offload { "on" } else { "off" }
        ));
        self.tunnel.running = Some(Running {
            shared,
            pump,
            udp,
            index: link.index,
            offload,
            mtu,
        });
        Ok(Some(link.index))
    }

    /// Tells the running tunnel the plan's peers, their prefixes and endpoints.
    pub(crate) fn tunnel_sync(&mut self, want: &Plan) {
        let Some(r) = &self.tunnel.running else {
            return;
        };
        let routes: Vec<_> = want
            .routes
            .iter()
            .filter_map(|rt| match rt.via {
                Via::Tunnel(h) if h != self.id => Some((rt.dst, h)),
                _ => None,
            })
            .collect();
        *r.shared.routes.write().expect("routes lock") = routes;
        {
            let mut t = r.shared.tunnel.lock().expect("tunnel lock");
            let have: Vec<NodeId> = t.peers().map(|(p, _)| *p).collect();
            for p in have.iter().filter(|p| !want.tunnel.contains(p)) {
                t.remove_peer(p);
            }
            for p in &want.tunnel {
                t.add_peer(*p);
            }
        }
        let mut eps = r.shared.endpoints.write().expect("endpoints lock");
        eps.retain(|p, _| want.tunnel.contains(p));
        for p in &want.tunnel {
            // A peer behind NAT is reached where its packets come from; the others where
            // they advertise, until their packets say otherwise.
            if eps.contains_key(p) || self.tunnel.natted.contains(p) {
                continue;
            }
            if let Some(ip) = self.underlay_of(p) {
                eps.insert(*p, SocketAddr::new(ip, self.dp.cfg.tunnel_port));
            }
        }
    }

    /// A node's underlay address: the IP of the address it advertises.
    pub(crate) fn underlay_of(&self, id: &NodeId) -> Option<IpAddr> {
        self.addr_of(id)
            .and_then(|s| s.parse::<SocketAddr>().ok())
            .map(|a| a.ip())
    }

    /// Whether `p` is behind NAT from here, or sees this node behind NAT.
    pub(crate) fn tunnel_nat(&self, p: &NodeId) -> bool {
        self.tunnel.natted.contains(p)
            || self
                .node
                .store()
                .get(p, NAT_KEY)
                .flatten()
                .and_then(|v| serde_json::from_slice::<Vec<String>>(v).ok())
                .is_some_and(|ids| ids.contains(&self.id.to_string()))
    }

    /// On every tick: keys offered and asked for, keepalives, NAT seen on connections.
    pub(crate) fn tunnel_tick(&mut self) {
        self.tunnel_watch_nat();
        let Some(r) = &self.tunnel.running else {
            return;
        };
        let msgs = r.shared.tick();
        let due = self
            .tunnel
            .last_keepalive
            .is_none_or(|t| t.elapsed() >= KEEPALIVE);
        if due {
            r.pump.keepalive(&r.udp);
            self.tunnel.last_keepalive = Some(Instant::now());
        }
        self.tunnel_send(msgs);
    }

    fn tunnel_send(&self, msgs: Vec<(NodeId, Control)>) {
        for (p, c) in msgs {
            if let Some(conn) = self.conns.get(&p) {
                let _ = conn.tx.send(Message::Tunnel(c.encode()));
            }
        }
    }

    /// A tunnel message from a connected peer.
    pub(crate) fn tunnel_message(&mut self, peer: NodeId, bytes: &[u8]) {
        let Some(r) = &self.tunnel.running else {
            // No tunnel here (yet): the peer asks again when it needs a key.
            return;
        };
        let Some(c) = Control::decode(bytes) else {
            tracing::warn!(target: "weft::tunnel", peer = %peer, "tunnel: undecodable message from {peer}");
            return;
        };
        let offer = matches!(c, Control::Offer { .. });
        let answers = r.shared.control(&peer, c);
        if offer {
            // A key to send with: say so at once, so a peer that cannot reach this node
            // (NAT) learns where it is.
            r.pump.keepalive(&r.udp);
        }
        self.tunnel_send(answers);
    }

    /// A mesh connection to `peer` (re)appeared: it gets a fresh key.
    pub(crate) fn tunnel_connected(&mut self, peer: NodeId) {
        if let Some(r) = &self.tunnel.running {
            r.shared.tunnel.lock().expect("tunnel lock").reoffer(&peer);
        }
    }

    /// Peers whose connections come from elsewhere than they advertise are behind NAT;
    /// the list is published so that they know it too.
    fn tunnel_watch_nat(&mut self) {
        let mut natted = BTreeSet::new();
        for (id, c) in &self.conns {
            if c.outbound {
                continue;
            }
            if let Some(ip) = self.underlay_of(id) {
                if ip.to_canonical() != c.addr.ip().to_canonical() {
                    natted.insert(*id);
                }
            }
        }
        // A peer behind NAT stays so while it is disconnected.
        natted.extend(
            self.tunnel
                .natted
                .iter()
                .filter(|p| !self.conns.contains_key(p)),
        );
        if natted == self.tunnel.natted {
            return;
        }
        for p in natted.difference(&self.tunnel.natted) {
            log(format!(
                "tunnel: {} connects from another address than it advertises: behind NAT, \
                 reached through the tunnel",
                self.name_of(p).unwrap_or_else(|| p.to_string())
            ));
        }
        let ids: Vec<String> = natted.iter().map(|p| p.to_string()).collect();
        let value = serde_json::to_vec(&ids).expect("json");
        self.tunnel.natted = natted;
        let now = self.now();
        let have = self
            .node
            .store()
            .get(&self.id, NAT_KEY)
            .flatten()
            .map(<[u8]>::to_vec);
        if have.as_deref() != Some(value.as_slice()) {
            let outs = self.node.set_local(NAT_KEY, Some(value), now);
            self.perform(outs);
            self.save();
        }
    }

    /// The endpoint of a tunnel peer, for route reports.
    pub(crate) fn tunnel_endpoint(&self, p: &NodeId) -> Option<SocketAddr> {
        let r = self.tunnel.running.as_ref()?;
        let eps = r.shared.endpoints.read().expect("endpoints lock");
        eps.get(p).copied()
    }

    /// `weft status`'s tunnel part.
    pub(crate) fn tunnel_report(&self) -> TunnelReport {
        let mut rep = TunnelReport {
            encrypt: self.dp.cfg.encrypt.as_str().into(),
            device: None,
            port: self.dp.cfg.tunnel_port,
            offload: OffloadReport::default(),
            nat: self
                .tunnel
                .natted
                .iter()
                .map(|p| self.name_of(p).unwrap_or_else(|| p.to_string()))
                .collect(),
            peers: Vec::new(),
            no_route: 0,
            no_endpoint: 0,
            spoofed: 0,
            refused: 0,
        };
        let Some(r) = &self.tunnel.running else {
            return rep;
        };
        let s = &r.shared;
        rep.device = Some(format!("{TUNNEL_DEV} mtu {}", r.mtu));
        rep.offload = OffloadReport {
            tso: r.offload && s.tso.load(Ordering::Relaxed),
            gso: s.gso.load(Ordering::Relaxed),
            gro: s.gro.load(Ordering::Relaxed),
        };
        rep.no_route = s.counters.no_route.load(Ordering::Relaxed);
        rep.no_endpoint = s.counters.no_endpoint.load(Ordering::Relaxed);
        rep.spoofed = s.counters.spoofed.load(Ordering::Relaxed);
        rep.refused = s.counters.refused.load(Ordering::Relaxed);
        let now = s.now();
        let eps = s.endpoints.read().expect("endpoints lock").clone();
        let t = s.tunnel.lock().expect("tunnel lock");
        for (p, peer) in t.peers() {
            let c = peer.counters();
            rep.peers.push(TunnelPeerReport {
                id: p.to_string(),
                name: self.name_of(p),
                endpoint: eps.get(p).map(|a| a.to_string()),
                encrypted: true,
                send_key_age_ms: peer.send_key_age(now),
                sent: c.sent,
                sent_bytes: c.sent_bytes,
                received: c.received,
                received_bytes: c.received_bytes,
                drops: c
                    .drops
                    .iter()
                    .map(|(d, n)| (drop_name(*d).to_string(), *n))
                    .collect(),
            });
        }
        rep
    }
}
