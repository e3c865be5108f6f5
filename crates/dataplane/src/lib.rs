//! The plan of a host's kernel data plane (docs/dataplane.md): which route, VXLAN
//! neighbour and forwarding entry it should have towards every other node's blocks, and
//! the MTU its containers get. Pure: the agent gathers the inputs from the mesh and the
//! cluster IPAM, and applies the difference between this plan and what the kernel has.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_mesh::NodeId;

pub mod stateful;

/// VXLAN over an IPv4 underlay costs 50 bytes (outer IPv4 20, UDP 8, VXLAN 8, inner
/// Ethernet 14); over IPv6, 70.
pub fn vxlan_overhead(underlay: IpAddr) -> u32 {
    match underlay {
        IpAddr::V4(_) => 50,
        IpAddr::V6(_) => 70,
    }
}

/// weft's encrypted tunnel costs 60 bytes over an IPv4 underlay (outer IPv4 20, UDP 8,
/// the tunnel's header 16 and tag 16: docs/encryption.md); over IPv6, 80.
pub fn tunnel_overhead(underlay: IpAddr) -> u32 {
    match underlay {
        IpAddr::V4(_) => 60,
        IpAddr::V6(_) => 80,
    }
}

/// Which peers are reached through the encrypted tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Encrypt {
    /// None (but a peer behind NAT still is: the kernel paths cannot reach it).
    #[default]
    Off,
    /// Every peer.
    On,
    /// Peers off this host's segment (across a router).
    CrossSubnet,
}

impl Encrypt {
    /// `off`, `on` or `cross-subnet`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encrypt::Off => "off",
            Encrypt::On => "on",
            Encrypt::CrossSubnet => "cross-subnet",
        }
    }
}

/// How packets reach peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Direct routes to peers on the same segment, VXLAN to the others.
    #[default]
    Auto,
    /// Direct routes only (peers off the segment are reported, and reached by VXLAN).
    Route,
    /// VXLAN to every peer.
    Vxlan,
}

/// This host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// Its node id.
    pub id: NodeId,
    /// Its underlay address and segment (the CIDR of its underlay interface).
    pub underlay: IpNet,
    /// The underlay interface.
    pub underlay_if: String,
    /// The underlay interface's MTU.
    pub underlay_mtu: u32,
    /// The pools have IPv6 addresses: over an IPv4 underlay their routes need VXLAN (an
    /// IPv6 route cannot have an IPv4 gateway), so every peer is also a VXLAN peer and
    /// containers get the VXLAN MTU.
    pub ipv6_pools: bool,
    /// The configured mode.
    pub mode: Mode,
    /// Which peers the encrypted tunnel carries.
    pub encrypt: Encrypt,
    /// The cluster's pools: with encryption, whatever of them has no more specific route
    /// goes into the tunnel device, which drops it (never out in clear by a default route).
    pub pools: Vec<IpNet>,
}

/// What is known of another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its node id.
    pub id: NodeId,
    /// Its underlay address, if published.
    pub underlay: Option<IpAddr>,
    /// The mesh's next hop towards it (itself when directly connected); `None` when
    /// unreachable.
    pub next_hop: Option<NodeId>,
    /// Prefixes routed to it: its active blocks and the addresses it borrows.
    pub prefixes: Vec<IpNet>,
    /// The kernel paths cannot reach it or it cannot reach this host (a NAT between
    /// them): only the tunnel, whose endpoints are learned from authenticated packets.
    pub nat: bool,
}

/// Where a route sends packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Via {
    /// Straight to a host on the segment, through the underlay interface.
    Direct(IpAddr),
    /// Into the VXLAN device, towards the VTEP of a host.
    Vxlan(Ipv6Addr),
    /// Into the encrypted tunnel's device, towards a node (this node itself: the pools'
    /// catch-all, dropped by the tunnel).
    Tunnel(NodeId),
}

/// One route of the plan (protocol weft, main table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Gateway.
    pub via: Via,
    /// Path MTU.
    pub mtu: u32,
}

/// A VXLAN peer: permanent neighbour (VTEP → MAC) and static FDB entry (MAC → underlay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VxlanPeer {
    /// The peer's VTEP address (link-local, from its node id).
    pub vtep: Ipv6Addr,
    /// The peer's VXLAN MAC (from its node id).
    pub mac: [u8; 6],
    /// The peer's underlay address (outer destination).
    pub underlay: IpAddr,
}

/// Why a node gets no route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Skip {
    /// The mesh has no path to it.
    Unreachable,
    /// The next hop's underlay address is not known.
    NoAddress,
}

/// The desired state of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Routes to other nodes' prefixes.
    pub routes: BTreeSet<Route>,
    /// VXLAN peers (only the next hops that are reached by VXLAN).
    pub vxlan: BTreeSet<VxlanPeer>,
    /// The VXLAN device is needed.
    pub vxlan_device: bool,
    /// MTU for containers: the smallest of the paths this host uses.
    pub pod_mtu: u32,
    /// Nodes left without routes, and why.
    pub skipped: BTreeMap<NodeId, Skip>,
    /// Next hops that `mode = route` could not reach directly (off the segment): they
    /// are reached by VXLAN and reported.
    pub forced_vxlan: BTreeSet<NodeId>,
    /// Next hops reached through the encrypted tunnel (they need keys and endpoints).
    pub tunnel: BTreeSet<NodeId>,
    /// The tunnel device is needed.
    pub tunnel_device: bool,
}

/// The VTEP address of a node: `fe80::` and the first 8 bytes of its id.
pub fn vtep_of(id: &NodeId) -> Ipv6Addr {
    let mut b = [0u8; 16];
    b[0] = 0xfe;
    b[1] = 0x80;
    b[8..].copy_from_slice(&id.0[..8]);
    Ipv6Addr::from(b)
}

/// The VXLAN MAC of a node: locally administered, unicast, from its id.
pub fn mac_of(id: &NodeId) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&id.0[..6]);
    m[0] = (m[0] & 0xfc) | 0x02;
    m
}

/// The plan of `local` towards `peers`.
pub fn plan(local: &Local, peers: &[Peer]) -> Plan {
    let by_id: BTreeMap<NodeId, &Peer> = peers.iter().map(|p| (p.id, p)).collect();
    let vx_mtu = local
        .underlay_mtu
        .saturating_sub(vxlan_overhead(local.underlay.addr()));
    let tun_mtu = local
        .underlay_mtu
        .saturating_sub(tunnel_overhead(local.underlay.addr()));
    let mut out = Plan {
        pod_mtu: local.underlay_mtu,
        ..Plan::default()
    };
    // Every reachable peer counts for the MTU and the VXLAN entries, also before it holds
    // a block: containers started now get an MTU that stays right when it does.
    for p in peers {
        if p.id == local.id {
            continue;
        }
        let Some(hop) = p.next_hop else {
            if !p.prefixes.is_empty() {
                out.skipped.insert(p.id, Skip::Unreachable);
            }
            continue;
        };
        let hop_peer = by_id.get(&hop);
        let nat = hop_peer.is_some_and(|h| h.nat);
        let Some(hop_addr) = hop_peer.and_then(|h| h.underlay) else {
            if !p.prefixes.is_empty() {
                out.skipped.insert(p.id, Skip::NoAddress);
            }
            continue;
        };
        let on_segment = local.underlay.contains(&hop_addr);
        let encrypted = nat
            || match local.encrypt {
                Encrypt::Off => false,
                Encrypt::On => true,
                Encrypt::CrossSubnet => !on_segment,
            };
        if encrypted {
            out.tunnel.insert(hop);
            out.pod_mtu = out.pod_mtu.min(tun_mtu);
            for dst in &p.prefixes {
                out.routes.insert(Route {
                    dst: dst.trunc(),
                    via: Via::Tunnel(hop),
                    mtu: tun_mtu,
                });
            }
            continue;
        }
        let direct = match local.mode {
            Mode::Auto => on_segment,
            Mode::Route => {
                if !on_segment {
                    out.forced_vxlan.insert(hop);
                }
                on_segment
            }
            Mode::Vxlan => false,
        };
        // IPv6 through an IPv4 next hop: only by VXLAN.
        let v6_over_v4 = local.ipv6_pools && hop_addr.is_ipv4();
        let vxlan = (Via::Vxlan(vtep_of(&hop)), vx_mtu);
        if !direct || v6_over_v4 {
            out.vxlan.insert(VxlanPeer {
                vtep: vtep_of(&hop),
                mac: mac_of(&hop),
                underlay: hop_addr,
            });
            out.pod_mtu = out.pod_mtu.min(vx_mtu);
        }
        let (via, mtu) = if direct {
            (Via::Direct(hop_addr), local.underlay_mtu)
        } else {
            vxlan
        };
        out.pod_mtu = out.pod_mtu.min(mtu);
        for dst in &p.prefixes {
            let (via, mtu) = if dst.addr().is_ipv6() && hop_addr.is_ipv4() {
                vxlan
            } else {
                (via, mtu)
            };
            out.routes.insert(Route {
                dst: dst.trunc(),
                via,
                mtu,
            });
        }
    }
    out.vxlan_device = !out.vxlan.is_empty() || local.mode == Mode::Vxlan;
    if local.mode == Mode::Vxlan || (local.ipv6_pools && local.underlay.addr().is_ipv4()) {
        out.pod_mtu = out.pod_mtu.min(vx_mtu);
    }
    if local.encrypt != Encrypt::Off {
        // Fail closed: pod addresses without a more specific route go into the tunnel,
        // which drops them, rather than out by a default route in clear.
        for pool in &local.pools {
            out.routes.insert(Route {
                dst: pool.trunc(),
                via: Via::Tunnel(local.id),
                mtu: tun_mtu,
            });
        }
    }
    if local.encrypt == Encrypt::On {
        out.pod_mtu = out.pod_mtu.min(tun_mtu);
    }
    out.tunnel_device = !out.tunnel.is_empty() || local.encrypt != Encrypt::Off;
    out
}

/// What to change to go from `have` to `want`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<T> {
    /// Missing: add.
    pub add: Vec<T>,
    /// Not wanted: delete.
    pub del: Vec<T>,
}

impl<T> Diff<T> {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.del.is_empty()
    }
}

/// The difference between two sets of owned objects.
pub fn diff<T: Ord + Clone>(have: &BTreeSet<T>, want: &BTreeSet<T>) -> Diff<T> {
    Diff {
        add: want.difference(have).cloned().collect(),
        del: have.difference(want).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn local(mode: Mode, underlay: &str) -> Local {
        Local {
            id: id(1),
            underlay: net(underlay),
            underlay_if: "eth0".into(),
            underlay_mtu: 1500,
            mode,
            ipv6_pools: false,
            encrypt: Encrypt::Off,
            pools: vec![net("10.32.0.0/12")],
        }
    }

    fn peer(n: u8, addr: &str, hop: Option<u8>, blocks: &[&str]) -> Peer {
        Peer {
            id: id(n),
            underlay: Some(addr.parse().unwrap()),
            next_hop: hop.map(id),
            prefixes: blocks.iter().map(|b| net(b)).collect(),
            nat: false,
        }
    }

    fn encrypted(mode: Encrypt, underlay: &str) -> Local {
        Local {
            encrypt: mode,
            ..local(Mode::Auto, underlay)
        }
    }

    #[test]
    fn encryption_on_sends_every_peer_through_the_tunnel_and_the_rest_of_the_pools_too() {
        let l = encrypted(Encrypt::On, "172.30.0.1/24");
        let peers = [
            peer(2, "172.30.0.2", Some(2), &["10.32.1.0/26"]),
            peer(3, "172.30.1.3", Some(3), &["10.32.2.0/26"]),
            // Reached through 2 (a relay): the tunnel's peer is the next hop.
            peer(4, "172.30.2.4", Some(2), &["10.32.3.0/26"]),
        ];
        let p = plan(&l, &peers);
        let via: BTreeMap<String, Via> = p
            .routes
            .iter()
            .map(|r| (r.dst.to_string(), r.via))
            .collect();
        assert_eq!(via["10.32.1.0/26"], Via::Tunnel(id(2)));
        assert_eq!(via["10.32.2.0/26"], Via::Tunnel(id(3)));
        assert_eq!(via["10.32.3.0/26"], Via::Tunnel(id(2)));
        assert_eq!(
            via["10.32.0.0/12"],
            Via::Tunnel(id(1)),
            "the catch-all drops"
        );
        assert!(p.routes.iter().all(|r| r.mtu == 1440));
        assert_eq!(p.tunnel, BTreeSet::from([id(2), id(3)]));
        assert!(p.tunnel_device && !p.vxlan_device && p.vxlan.is_empty());
        assert_eq!(p.pod_mtu, 1440);
        // Alone, the MTU is already the tunnel's; over IPv6 the tunnel costs 80 bytes.
        assert_eq!(plan(&l, &[]).pod_mtu, 1440);
        let mut l6 = encrypted(Encrypt::On, "fd30::1/64");
        l6.ipv6_pools = true;
        let p6 = plan(&l6, &[peer(2, "fd30::2", Some(2), &["fd32::/122"])]);
        assert_eq!(p6.pod_mtu, 1420);
        // IPv6 pods over an IPv4 underlay need no VXLAN: the tunnel carries both.
        let mut dual = encrypted(Encrypt::On, "172.30.0.1/24");
        dual.ipv6_pools = true;
        let pd = plan(
            &dual,
            &[peer(
                2,
                "172.30.0.2",
                Some(2),
                &["10.32.1.0/26", "fd32::/122"],
            )],
        );
        assert!(pd.vxlan.is_empty());
        assert!(pd.routes.iter().all(|r| matches!(r.via, Via::Tunnel(_))));
        assert_eq!(pd.pod_mtu, 1440);
    }

    #[test]
    fn cross_subnet_encrypts_only_across_the_router_and_a_peer_behind_nat_always() {
        let l = encrypted(Encrypt::CrossSubnet, "172.30.0.1/24");
        let mut behind = peer(4, "192.168.9.2", Some(4), &["10.32.3.0/26"]);
        behind.nat = true;
        let peers = [
            peer(2, "172.30.0.2", Some(2), &["10.32.1.0/26"]),
            peer(3, "172.30.1.3", Some(3), &["10.32.2.0/26"]),
            behind.clone(),
        ];
        let p = plan(&l, &peers);
        let via: BTreeMap<String, Via> = p
            .routes
            .iter()
            .map(|r| (r.dst.to_string(), r.via))
            .collect();
        assert_eq!(
            via["10.32.1.0/26"],
            Via::Direct("172.30.0.2".parse().unwrap())
        );
        assert_eq!(via["10.32.2.0/26"], Via::Tunnel(id(3)));
        assert_eq!(via["10.32.3.0/26"], Via::Tunnel(id(4)));
        assert_eq!(p.pod_mtu, 1440);
        // Without encryption, only the peer behind NAT takes the tunnel; no catch-all.
        let off = plan(&local(Mode::Auto, "172.30.0.1/24"), &peers);
        assert_eq!(off.tunnel, BTreeSet::from([id(4)]));
        assert!(off.tunnel_device);
        assert!(!off.routes.iter().any(|r| r.dst == net("10.32.0.0/12")));
        assert!(matches!(
            off.routes
                .iter()
                .find(|r| r.dst == net("10.32.2.0/26"))
                .unwrap()
                .via,
            Via::Vxlan(_)
        ));
        // No NAT, no encryption: no tunnel at all.
        let plain = plan(&local(Mode::Auto, "172.30.0.1/24"), &peers[..2]);
        assert!(!plain.tunnel_device && plain.tunnel.is_empty());
    }

    #[test]
    fn ipv6_blocks_over_an_ipv4_underlay_go_through_vxlan_and_set_the_mtu() {
        let mut l = local(Mode::Route, "172.30.0.1/24");
        l.ipv6_pools = true;
        let peers = [peer(
            2,
            "172.30.0.2",
            Some(2),
            &["10.32.1.0/26", "fd32::40/122"],
        )];
        let p = plan(&l, &peers);
        let v4 = p.routes.iter().find(|r| r.dst.addr().is_ipv4()).unwrap();
        let v6 = p.routes.iter().find(|r| r.dst.addr().is_ipv6()).unwrap();
        assert_eq!(v4.via, Via::Direct("172.30.0.2".parse().unwrap()));
        assert_eq!((v4.mtu, v6.mtu), (1500, 1450));
        assert_eq!(v6.via, Via::Vxlan(vtep_of(&id(2))));
        assert_eq!(p.vxlan.len(), 1, "the peer is a VXLAN peer for IPv6");
        assert_eq!(p.pod_mtu, 1450, "one MTU per interface: the smaller");
        // Before the peer holds any block, its MTU counts already; so on a lone node.
        let early = plan(&l, &[peer(2, "172.30.0.2", Some(2), &[])]);
        assert_eq!(early.pod_mtu, 1450);
        assert_eq!(plan(&l, &[]).pod_mtu, 1450);
        // Over an IPv6 underlay both families route directly.
        let mut l6 = local(Mode::Route, "fd30::1/64");
        l6.ipv6_pools = true;
        let p6 = plan(
            &l6,
            &[peer(
                2,
                "fd30::2",
                Some(2),
                &["10.32.1.0/26", "fd32::40/122"],
            )],
        );
        assert!(p6
            .routes
            .iter()
            .all(|r| r.via == Via::Direct("fd30::2".parse().unwrap())));
        assert_eq!(p6.pod_mtu, 1500);
    }

    #[test]
    fn auto_routes_the_segment_directly_and_the_rest_through_vxlan() {
        let l = local(Mode::Auto, "172.30.0.1/24");
        let peers = [
            peer(2, "172.30.0.2", Some(2), &["10.32.1.0/26", "10.32.1.64/26"]),
            peer(3, "172.30.1.3", Some(3), &["10.32.2.0/26", "10.32.9.7/32"]),
        ];
        let p = plan(&l, &peers);
        assert_eq!(p.routes.len(), 4);
        for r in &p.routes {
            if r.dst.to_string().starts_with("10.32.1.") {
                assert_eq!(r.via, Via::Direct("172.30.0.2".parse().unwrap()));
                assert_eq!(r.mtu, 1500);
            } else {
                assert_eq!(r.via, Via::Vxlan(vtep_of(&id(3))));
                assert_eq!(r.mtu, 1450);
            }
        }
        assert_eq!(p.vxlan.len(), 1);
        let v = p.vxlan.iter().next().unwrap();
        assert_eq!(v.underlay, "172.30.1.3".parse::<IpAddr>().unwrap());
        assert_eq!(v.mac, mac_of(&id(3)));
        assert!(p.vxlan_device);
        assert_eq!(p.pod_mtu, 1450, "the smallest path decides");
    }

    #[test]
    fn one_segment_in_auto_needs_no_vxlan_and_keeps_the_full_mtu() {
        let l = local(Mode::Auto, "172.30.0.1/24");
        let p = plan(&l, &[peer(2, "172.30.0.2", Some(2), &["10.32.1.0/26"])]);
        assert!(!p.vxlan_device);
        assert!(p.vxlan.is_empty());
        assert_eq!(p.pod_mtu, 1500);
    }

    #[test]
    fn a_peer_without_blocks_already_sets_the_mtu_and_vxlan_entry() {
        let l = local(Mode::Auto, "172.30.1.1/24");
        let p = plan(&l, &[peer(3, "172.30.2.3", Some(3), &[])]);
        assert!(p.routes.is_empty());
        assert!(p.skipped.is_empty());
        assert_eq!(p.vxlan.len(), 1);
        assert_eq!(p.pod_mtu, 1450);
        let p = plan(&l, &[peer(3, "172.30.2.3", None, &[])]);
        assert!(
            p.skipped.is_empty(),
            "an unreachable node without blocks is no news"
        );
        assert_eq!(p.pod_mtu, 1500);
    }

    #[test]
    fn forced_modes() {
        let peers = [
            peer(2, "172.30.0.2", Some(2), &["10.32.1.0/26"]),
            peer(3, "172.30.1.3", Some(3), &["10.32.2.0/26"]),
        ];
        let v = plan(&local(Mode::Vxlan, "172.30.0.1/24"), &peers);
        assert!(v.routes.iter().all(|r| matches!(r.via, Via::Vxlan(_))));
        assert_eq!(v.vxlan.len(), 2);
        let r = plan(&local(Mode::Route, "172.30.0.1/24"), &peers);
        assert_eq!(r.forced_vxlan, [id(3)].into_iter().collect());
        assert_eq!(
            r.routes
                .iter()
                .filter(|r| matches!(r.via, Via::Direct(_)))
                .count(),
            1
        );
    }

    #[test]
    fn a_relayed_peer_is_routed_through_its_next_hop_and_follows_it() {
        // Partial: h1 reaches h3 only through h2.
        let l = local(Mode::Auto, "172.30.0.1/24");
        let mut peers = vec![
            peer(2, "172.30.0.2", Some(2), &["10.32.1.0/26"]),
            peer(3, "172.30.0.3", Some(2), &["10.32.2.0/26"]),
        ];
        let p = plan(&l, &peers);
        let to3 = p
            .routes
            .iter()
            .find(|r| r.dst == net("10.32.2.0/26"))
            .unwrap();
        assert_eq!(to3.via, Via::Direct("172.30.0.2".parse().unwrap()));
        // The cut heals: h3 directly.
        peers[1].next_hop = Some(id(3));
        let q = plan(&l, &peers);
        let to3 = q
            .routes
            .iter()
            .find(|r| r.dst == net("10.32.2.0/26"))
            .unwrap();
        assert_eq!(to3.via, Via::Direct("172.30.0.3".parse().unwrap()));
        let d = diff(&p.routes, &q.routes);
        assert_eq!(
            (d.add.len(), d.del.len()),
            (1, 1),
            "only that route changes"
        );
    }

    #[test]
    fn unreachable_or_unaddressed_nodes_get_no_route() {
        let l = local(Mode::Auto, "172.30.0.1/24");
        let mut nameless = peer(4, "172.30.0.4", Some(4), &["10.32.4.0/26"]);
        nameless.underlay = None;
        let p = plan(
            &l,
            &[
                peer(3, "172.30.0.3", None, &["10.32.2.0/26"]),
                nameless,
                peer(5, "172.30.0.5", Some(5), &[]),
            ],
        );
        assert!(p.routes.is_empty());
        assert_eq!(p.skipped.get(&id(3)), Some(&Skip::Unreachable));
        assert_eq!(p.skipped.get(&id(4)), Some(&Skip::NoAddress));
        assert!(
            !p.skipped.contains_key(&id(5)),
            "no blocks, nothing to route"
        );
    }

    #[test]
    fn own_blocks_are_never_routed_away() {
        let l = local(Mode::Auto, "172.30.0.1/24");
        let p = plan(&l, &[peer(1, "172.30.0.1", Some(1), &["10.32.0.0/26"])]);
        assert!(p.routes.is_empty());
    }

    #[test]
    fn an_ipv6_underlay_costs_more() {
        let mut l = local(Mode::Vxlan, "fd30::1/64");
        l.underlay_mtu = 9000;
        let p = plan(&l, &[peer(2, "fd30::2", Some(2), &["10.32.1.0/26"])]);
        assert_eq!(p.pod_mtu, 8930);
    }

    #[test]
    fn vtep_and_mac_are_stable_link_local_and_unicast() {
        let v = vtep_of(&id(0xab));
        assert_eq!(v.segments()[0], 0xfe80);
        assert_eq!(vtep_of(&id(0xab)), v);
        let m = mac_of(&id(0xff));
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
    }

    #[test]
    fn applying_a_plan_twice_changes_nothing() {
        let l = local(Mode::Auto, "172.30.0.1/24");
        let p = plan(&l, &[peer(2, "172.30.1.2", Some(2), &["10.32.1.0/26"])]);
        let d = diff(&BTreeSet::new(), &p.routes);
        assert_eq!(d.add.len(), 1);
        assert!(diff(&p.routes, &p.routes).is_empty());
    }
}
