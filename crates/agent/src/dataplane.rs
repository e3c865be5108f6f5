//! The data plane in the agent: gathers the plan's inputs from the mesh and the cluster
//! IPAM, computes the plan (`weft_dataplane`, pure) and applies the difference to the
//! kernel of this host through netlink, plus the NAT table through `nft`. Only objects
//! weft marks as its own are read into the difference: routes of protocol 119 that have a
//! gateway (the plugin's own per-container routes have none), the `weft.vx` device (alias
//! `weft:vxlan`) with its neighbour and forwarding entries, and the `weft` nftables tables.
//! Design: docs/dataplane.md.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_dataplane::{mac_of, plan, vxlan_overhead, Local, Mode, Peer, Plan, Skip, Via};
use weft_ipam::view::BorrowedRec;
use weft_mesh::NodeId;
use weft_netlink::{self as nl, Netlink, Scope, MAIN_TABLE, WEFT_ROUTE_PROTOCOL};

use crate::config::DataplaneConfig;
use crate::Agent;

/// An event of target `weft::dataplane`.
fn log(msg: impl std::fmt::Display) {
    tracing::info!(target: "weft::dataplane", "{msg}");
}

/// The VXLAN device's name.
pub const VXLAN_DEV: &str = "weft.vx";
/// The VXLAN device's alias: weft's mark of ownership.
pub const VXLAN_ALIAS: &str = "weft:vxlan";
/// Even with no change seen, the kernel is compared with the plan this often (an
/// administrator may have removed a weft route by hand).
const RESYNC: Duration = Duration::from_secs(30);
/// After start, nothing is deleted until the agent has been connected this long (or, with
/// no peer configured, has run this long) and its IPAM is ready: a restarted agent first
/// relearns the cluster, so the routes of the running containers stay as they are meanwhile.
const SETTLE: Duration = Duration::from_secs(3);
/// The longest wait for [`SETTLE`]'s conditions.
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// A node that becomes unreachable keeps its routes this long: an agent that restarts
/// (its connections drop, then come back within a second or two) disturbs no traffic,
/// while a host that is gone is withdrawn within seconds.
const HOLD: Duration = Duration::from_secs(5);

/// See [`Dataplane::installed`].
pub(crate) struct Installed<'a> {
    pub(crate) routes: &'a BTreeSet<weft_dataplane::Route>,
    pub(crate) conflicts: &'a BTreeSet<IpNet>,
    pub(crate) foreign: &'a BTreeSet<IpNet>,
}

/// The data plane's state in the owner task.
pub(crate) struct Dataplane {
    pub(crate) cfg: DataplaneConfig,
    started: Instant,
    /// The local side, once the underlay interface was found.
    local: Option<Local>,
    /// The plan last applied completely.
    applied: Option<Plan>,
    last_sync: Option<Instant>,
    /// The NAT ruleset last applied (`None`: not yet).
    nat_applied: Option<String>,
    /// The last error, for `weft status`.
    error: Option<String>,
    /// Routes not installed because a route of another owner has the destination.
    conflicts: BTreeSet<IpNet>,
    /// The prefixes of the main table's routes of other owners (the plugin's routes to
    /// containers, an administrator's), as the last apply listed them.
    foreign: BTreeSet<IpNet>,
    settled: bool,
    /// When the first peer connection was seen.
    linked_at: Option<Instant>,
    /// The last next hop of every node and when it was last seen (for [`HOLD`]).
    last_hop: BTreeMap<NodeId, (NodeId, Instant)>,
}

impl Dataplane {
    pub(crate) fn new(cfg: DataplaneConfig) -> Dataplane {
        Dataplane {
            cfg,
            started: Instant::now(),
            local: None,
            applied: None,
            last_sync: None,
            nat_applied: None,
            error: None,
            conflicts: BTreeSet::new(),
            foreign: BTreeSet::new(),
            settled: false,
            linked_at: None,
            last_hop: BTreeMap::new(),
        }
    }

    /// What the fast path follows weft's routes by: the plan last applied completely
    /// (its routes to other hosts' prefixes), the prefixes of those another owner routes
    /// (weft installed no route there), and the prefixes of the main table's routes of
    /// other owners as last listed. `None` while the last apply failed: the kernel may
    /// then hold part of a newer plan, and only its FIB knows which.
    pub(crate) fn installed(&self) -> Option<Installed<'_>> {
        let plan = self.applied.as_ref().filter(|_| self.error.is_none())?;
        Some(Installed {
            routes: &plan.routes,
            conflicts: &self.conflicts,
            foreign: &self.foreign,
        })
    }

    /// The MTU containers get now, once known.
    pub(crate) fn pod_mtu(&self) -> Option<u32> {
        self.applied.as_ref().map(|p| p.pod_mtu)
    }

    /// Records the outcome of an apply: an error is logged (once until it changes) and
    /// counted (every time).
    fn set_error(&mut self, e: Option<String>, metrics: &crate::metrics::Metrics) {
        if e.is_some() {
            metrics.error(crate::metrics::ErrorKind::DataplaneApply);
        }
        if e != self.error {
            if let Some(e) = &e {
                tracing::error!(target: "weft::dataplane", error = %e, "data plane: {e}");
            } else if self.error.is_some() {
                tracing::info!(target: "weft::dataplane", "data plane: in sync again");
            }
            self.error = e;
        }
    }
}

/// `GET /status` part: what the data plane does.
#[derive(Debug, Serialize, Deserialize)]
pub struct DataplaneReport {
    /// auto, route, vxlan or off.
    pub mode: String,
    /// Outbound NAT on.
    pub nat: bool,
    /// The underlay interface, address and MTU, once found.
    pub underlay: Option<String>,
    /// The MTU containers get.
    pub pod_mtu: Option<u32>,
    /// One line per route: destination, how and through whom.
    pub routes: Vec<RouteReport>,
    /// Nodes with blocks but no route, and why.
    pub skipped: Vec<String>,
    /// Destinations left alone because another owner's route has them.
    pub conflicts: Vec<String>,
    /// The last error, if the kernel does not match the plan.
    pub error: Option<String>,
    /// The BPF fast path for pod-to-pod traffic.
    pub fast_path: crate::FastReport,
    /// The encrypted tunnel.
    #[serde(default)]
    pub tunnel: Option<crate::tunnel::TunnelReport>,
    /// weft's nftables tables and the refresh of the set of translated connections' client
    /// sockets (absent without those tables: no NAT, no policy).
    #[serde(default)]
    pub nftables: Option<crate::nftables::NftablesReport>,
}

/// One route of the data plane.
#[derive(Debug, Serialize, Deserialize)]
pub struct RouteReport {
    /// Destination prefix.
    pub dst: String,
    /// `route`, `vxlan` or `tunnel`.
    pub mode: String,
    /// The next hop's underlay address.
    pub via: String,
    /// The next hop's name, when known.
    pub via_name: Option<String>,
    /// The name of the node whose block (or borrowed address) the destination is, when
    /// known: the next hop's own, or another's that the next hop relays to.
    #[serde(default)]
    pub owner: Option<String>,
    /// Path MTU.
    pub mtu: u32,
}

fn mode_str(m: Option<Mode>) -> &'static str {
    match m {
        Some(Mode::Auto) => "auto",
        Some(Mode::Route) => "route",
        Some(Mode::Vxlan) => "vxlan",
        None => "off",
    }
}

/// The kernel form of a plan route.
fn kernel_route(
    r: &weft_dataplane::Route,
    underlay_if: u32,
    vx_if: u32,
    tun_if: Option<u32>,
) -> Result<nl::Route, String> {
    let (gateway, oif, onlink) = match r.via {
        Via::Direct(ip) => (Some(ip), underlay_if, false),
        Via::Vxlan(v6) => (Some(IpAddr::V6(v6)), vx_if, true),
        Via::Tunnel(_) => (
            None,
            tun_if.ok_or("a route into the tunnel, but no tunnel device")?,
            false,
        ),
    };
    Ok(nl::Route {
        dst: r.dst,
        gateway,
        oif: Some(oif),
        scope: if gateway.is_some() {
            Scope::Universe
        } else {
            Scope::Link
        },
        protocol: WEFT_ROUTE_PROTOCOL,
        table: MAIN_TABLE,
        mtu: Some(r.mtu),
        onlink,
    })
}

/// What identifies a weft route and what must match for it to be left alone.
type RouteKey = (IpNet, Option<IpAddr>, Option<u32>, Option<u32>);

fn key(r: &nl::Route) -> RouteKey {
    (r.dst, r.gateway, r.oif, r.mtu)
}

/// How many connections the host namespace tracks (absent while nothing in the namespace
/// uses conntrack).
const CONNTRACK_COUNT: &str = "/proc/sys/net/netfilter/nf_conntrack_count";

/// How many connections the host namespace tracks now: 0 also while nothing in it uses
/// conntrack; None when the count cannot be read.
pub(crate) fn conntrack_count() -> Option<u64> {
    match std::fs::read_to_string(CONNTRACK_COUNT) {
        Ok(c) => c.trim().parse().ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(_) => None,
    }
}

/// Every address of this host's own namespace (what its traffic with a pod is sent from
/// or to), with `extra` (weft's DNS address, a local route rather than an address).
pub(crate) fn host_addrs(extra: Option<IpAddr>) -> Result<BTreeSet<IpAddr>, String> {
    let addrs = Netlink::open()
        .and_then(|mut n| n.addresses(0))
        .map_err(|e| format!("list this host's addresses: {e}"))?;
    Ok(addrs
        .into_iter()
        .map(|(_, a)| a.addr())
        .chain(extra)
        .collect())
}

/// The host namespace's tracked connections, listed over ctnetlink. A listing that fails
/// while conntrack tracks nothing (not loaded) is an empty table; otherwise the error.
pub(crate) fn conntrack_table() -> Result<Vec<weft_dataplane::stateful::Conn>, String> {
    Ok(conntrack_table_status()?
        .into_iter()
        .map(|(c, _)| c)
        .collect())
}

/// As [`conntrack_table`], each connection with its status, mark and TCP state.
pub(crate) fn conntrack_table_status() -> Result<
    Vec<(
        weft_dataplane::stateful::Conn,
        weft_netlink::netfilter::CtMeta,
    )>,
    String,
> {
    // Nothing tracked (the count read now, so a connection tracked before this call is
    // counted): no walk of the kernel's conntrack hash, which every namespace shares
    // (about 12 ms a listing here, however few entries are this namespace's).
    if conntrack_count() == Some(0) {
        return Ok(Vec::new());
    }
    weft_netlink::netfilter::conntrack_list_status(0).or_else(|e| {
        let tracked = conntrack_count().unwrap_or(0);
        if tracked == 0 {
            Ok(Vec::new())
        } else {
            Err(format!("{tracked} tracked connections, but {e}"))
        }
    })
}

pub(crate) fn run_nft(script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("run nft: {e} (is nftables installed?)"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| format!("write to nft: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Finds the interface that holds `ip`: its index, name, MTU and prefix.
fn find_underlay(nlh: &mut Netlink, ip: IpAddr) -> Result<(u32, String, u32, IpNet), String> {
    let addrs = nlh.addresses(0).map_err(|e| e.to_string())?;
    let (index, net) = addrs
        .into_iter()
        .find(|(_, n)| n.addr() == ip)
        .ok_or_else(|| {
            format!("no interface has the advertised address {ip}: the underlay is unknown")
        })?;
    let link = nlh
        .link_by_index(index)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("link #{index} vanished"))?;
    Ok((index, link.name, link.mtu, net))
}

impl Dataplane {
    /// The underlay interface's name, once found.
    pub(crate) fn underlay_if(&self) -> Option<&str> {
        self.local.as_ref().map(|l| l.underlay_if.as_str())
    }
}

impl Agent {
    /// The plan's peers: every other node the mesh knows, with its underlay address, the
    /// next hop towards it, its active blocks and the addresses it borrows.
    fn dp_peers(&mut self) -> Vec<Peer> {
        let now = Instant::now();
        let mut peers = self.dp_peers_now();
        for p in &mut peers {
            match p.next_hop {
                Some(h) => {
                    self.dp.last_hop.insert(p.id, (h, now));
                }
                None => {
                    if let Some((h, at)) = self.dp.last_hop.get(&p.id) {
                        if now.duration_since(*at) < HOLD {
                            p.next_hop = Some(*h);
                        }
                    }
                }
            }
        }
        self.dp
            .last_hop
            .retain(|_, (_, at)| now.duration_since(*at) < HOLD);
        peers
    }

    /// The plan's peers as the mesh and the IPAM see them now.
    fn dp_peers_now(&self) -> Vec<Peer> {
        let store = self.node.store();
        let hops = self.node.next_hops();
        let mut prefixes: BTreeMap<NodeId, Vec<IpNet>> = BTreeMap::new();
        let mut borrowed_keys = Vec::new();
        for e in self.ipam.engines() {
            let view = e.view();
            let space = &e.config().space;
            if view.genesis.is_some() {
                for (k, c) in &view.claims {
                    if c.active && view.holder(*k) == Some(c.holder) {
                        if let Some(net) = space.block_net(*k) {
                            prefixes.entry(c.holder).or_default().push(net);
                        }
                    }
                }
            }
            borrowed_keys.push(format!("{}borrowed", e.prefix()));
        }
        let mut peers = Vec::new();
        for owner in store.owners() {
            if *owner == self.id {
                continue;
            }
            let mut p = prefixes.remove(owner).unwrap_or_default();
            for key in &borrowed_keys {
                if let Some(Some(v)) = store.get(owner, key) {
                    if let Ok(b) = serde_json::from_slice::<BorrowedRec>(v) {
                        p.extend(b.in_use.into_iter().map(IpNet::from));
                    }
                }
            }
            peers.push(Peer {
                id: *owner,
                underlay: self.underlay_of(owner),
                next_hop: hops.get(owner).copied(),
                prefixes: p,
                nat: self.tunnel_nat(owner),
            });
        }
        peers
    }

    /// Called on every tick: computes the plan and applies it when it changed, when the
    /// last apply failed, and every [`RESYNC`].
    pub(crate) fn dp_tick(&mut self) {
        if self.dp.cfg.mode.is_none() {
            return;
        }
        if !self.dp.settled {
            if !self.conns.is_empty() && self.dp.linked_at.is_none() {
                self.dp.linked_at = Some(Instant::now());
            }
            let since = match self.dp.linked_at {
                Some(at) => at.elapsed(),
                None if self.cfg.peers.is_empty() => self.dp.started.elapsed(),
                None => Duration::ZERO,
            };
            // The IPAM being ready means it has the cluster's view again. A node that
            // never reaches a peer settles after SETTLE_MAX all the same.
            if (since >= SETTLE && self.ipam_not_ready().is_none())
                || self.dp.started.elapsed() >= SETTLE_MAX
            {
                self.dp.settled = true;
                self.dp.last_sync = None;
            }
        }
        let open = || Netlink::open().map_err(|e| e.to_string());
        if self.dp.local.is_none() {
            match open().and_then(|mut nlh| find_underlay(&mut nlh, self.cfg.advertise.ip())) {
                Ok((_, name, mtu, net)) => {
                    log(format!(
                        "data plane: mode {}, underlay {name} {net} mtu {mtu}, NAT {}",
                        mode_str(self.dp.cfg.mode),
                        if self.dp.cfg.nat { "on" } else { "off" }
                    ));
                    self.dp.local = Some(Local {
                        id: self.id,
                        underlay: net,
                        underlay_if: name,
                        underlay_mtu: mtu,
                        mode: self.dp.cfg.mode.unwrap_or_default(),
                        ipv6_pools: self.cfg.ipam.space.pools.iter().any(|p| p.addr().is_ipv6()),
                        encrypt: self.dp.cfg.encrypt,
                        pools: self.cfg.ipam.space.pools.clone(),
                    });
                }
                Err(e) => return self.dp.set_error(Some(e), &self.metrics),
            }
        }
        let local = self.dp.local.clone().expect("set above");
        let want = plan(&local, &self.dp_peers());
        let due = self.dp.last_sync.is_none_or(|t| t.elapsed() >= RESYNC);
        if !due && self.dp.applied.as_ref() == Some(&want) && self.dp.error.is_none() {
            return;
        }
        // A socket only for the ticks that have work (most have none).
        let res = open().and_then(|mut nlh| self.dp_apply(&mut nlh, &local, &want));
        self.dp.last_sync = Some(Instant::now());
        match res {
            Ok(()) => {
                self.dp.applied = Some(want);
                self.dp.set_error(None, &self.metrics);
            }
            Err(e) => self.dp.set_error(Some(e), &self.metrics),
        }
    }

    /// Makes the kernel match `want` (only weft's objects). Before the agent has settled,
    /// only adds and changes, never deletes.
    fn dp_apply(&mut self, nlh: &mut Netlink, local: &Local, want: &Plan) -> Result<(), String> {
        let e = |e: nl::Error| e.to_string();
        let settled = self.dp.settled;
        let underlay = nlh
            .link_by_name(&local.underlay_if)
            .map_err(e)?
            .ok_or_else(|| format!("the underlay interface {} vanished", local.underlay_if))?;
        if underlay.mtu != local.underlay_mtu {
            // Recomputed on the next tick with the new MTU.
            self.dp.local = None;
            return Err(format!(
                "the MTU of {} changed to {}",
                local.underlay_if, underlay.mtu
            ));
        }
        let vx = self.dp_vxlan_device(nlh, local)?;
        let tun = self.tunnel_device(nlh, local, want)?;
        self.tunnel_sync(want);

        // VXLAN neighbours and forwarding entries first, so new routes resolve at once.
        let want_neigh: BTreeSet<(IpAddr, [u8; 6])> = want
            .vxlan
            .iter()
            .map(|p| (IpAddr::V6(p.vtep), p.mac))
            .collect();
        let want_fdb: BTreeSet<([u8; 6], IpAddr)> =
            want.vxlan.iter().map(|p| (p.mac, p.underlay)).collect();
        let have_neigh: BTreeSet<(IpAddr, [u8; 6])> = nlh
            .permanent_neighbours(vx)
            .map_err(e)?
            .into_iter()
            .filter_map(|(ip, mac)| mac.map(|m| (ip, m)))
            .collect();
        let have_fdb: BTreeSet<([u8; 6], IpAddr)> = nlh.fdb(vx).map_err(e)?.into_iter().collect();
        for (ip, mac) in want_neigh.difference(&have_neigh) {
            nlh.set_permanent_neighbour(vx, *ip, *mac).map_err(e)?;
        }
        for (mac, dst) in want_fdb.difference(&have_fdb) {
            nlh.add_fdb(vx, *mac, *dst).map_err(e)?;
        }

        // Routes: weft's are protocol 119 with a gateway, or into the tunnel device (the
        // plugin's own routes to containers have neither).
        let mut have: BTreeMap<IpNet, nl::Route> = BTreeMap::new();
        let mut foreign: BTreeSet<IpNet> = BTreeSet::new();
        for v6 in [false, true] {
            for r in nlh.routes(v6, MAIN_TABLE).map_err(e)? {
                let into_tunnel = tun.is_some() && r.oif == tun;
                if r.protocol == WEFT_ROUTE_PROTOCOL && (r.gateway.is_some() || into_tunnel) {
                    have.insert(r.dst, r);
                } else {
                    foreign.insert(r.dst);
                }
            }
        }
        let wanted: BTreeMap<IpNet, nl::Route> = want
            .routes
            .iter()
            .map(|r| Ok((r.dst, kernel_route(r, underlay.index, vx, tun)?)))
            .collect::<Result<_, String>>()?;
        let mut conflicts = BTreeSet::new();
        if settled {
            for (dst, r) in &have {
                if !wanted.contains_key(dst) {
                    already_gone(nlh.delete_route(r))?;
                }
            }
        }
        for (dst, r) in &wanted {
            if have.get(dst).map(key) == Some(key(r)) {
                continue;
            }
            if !have.contains_key(dst) && foreign.contains(dst) {
                // Someone else's route to the same prefix: never fought.
                conflicts.insert(*dst);
                continue;
            }
            nlh.add_route(r, true).map_err(e)?;
        }
        self.dp.foreign = foreign;
        if conflicts != self.dp.conflicts {
            for c in conflicts.difference(&self.dp.conflicts) {
                log(format!(
                    "data plane: {c} is routed by another owner; weft leaves it alone"
                ));
            }
            self.dp.conflicts = conflicts;
        }
        if settled {
            for (ip, _) in have_neigh.difference(&want_neigh) {
                already_gone(nlh.delete_neighbour(vx, *ip))?;
            }
            for (mac, dst) in have_fdb.difference(&want_fdb) {
                already_gone(nlh.delete_fdb(vx, *mac, *dst))?;
            }
        }

        self.dp_nat_sync()
    }

    /// Makes weft's own nftables tables (NAT, the `notrack` exemptions, the isolated pods'
    /// tracking) what the pools, NAT and whether a policy is in force say; runs `nft` only
    /// when that changed. Also called by the policy code before a policy isolates a pod.
    pub(crate) fn dp_nat_sync(&mut self) -> Result<(), String> {
        if self.dp.cfg.mode.is_none() {
            return Ok(());
        }
        let script = weft_dataplane::stateful::nft_script(
            &self.cfg.ipam.space.pools,
            self.dp.cfg.nat,
            self.policy_active(),
            self.dp.cfg.vxlan_port,
        );
        if self.dp.nat_applied.as_deref() != Some(script.as_str()) {
            run_nft(&script)?;
            self.dp.nat_applied = Some(script);
        }
        Ok(())
    }

    /// Writes weft's tables again when one that was written is gone (someone flushed the
    /// ruleset: `systemctl restart nftables` does, and `nft flush ruleset`); returns how
    /// many were. The `translated` set is gone with its table: the caller refreshes it.
    pub(crate) fn dp_tables_restore(&mut self) -> Result<u64, String> {
        use weft_netlink::netfilter::{nft_chain_exists, NFPROTO_IPV4, NFPROTO_IPV6};
        if self.dp.cfg.mode.is_none() || !(self.dp.cfg.nat || self.policy_active()) {
            return Ok(0);
        }
        if self.dp.nat_applied.is_none() {
            // Not written yet, or the last write failed: written now (an error is the
            // caller's to report).
            self.dp_nat_sync()?;
            return Ok(0);
        }
        let mut gone = Vec::new();
        for (v6, fam, proto) in [(false, "ip", NFPROTO_IPV4), (true, "ip6", NFPROTO_IPV6)] {
            let has_pools = self
                .cfg
                .ipam
                .space
                .pools
                .iter()
                .any(|p| p.addr().is_ipv6() == v6);
            // A chain only weft's own script makes (the policy's scripts declare the
            // table and its `isolated` set too, so the table alone proves nothing).
            let table = weft_dataplane::stateful::NFT_TABLE;
            if has_pools
                && !nft_chain_exists(proto, table, "raw_pods").map_err(|e| e.to_string())?
            {
                gone.push(format!("{fam} {table}"));
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        tracing::warn!(
            target: "weft::dataplane",
            "nftables: table {} is gone or emptied (the ruleset was flushed?); writing it again",
            gone.join(" and ")
        );
        self.dp.nat_applied = None;
        self.dp_nat_sync()?;
        Ok(gone.len() as u64)
    }

    /// Whether weft's tables in the kernel are those the current pools, NAT and policy say.
    pub(crate) fn dp_tables_current(&self) -> bool {
        self.dp.cfg.mode.is_some()
            && self.dp.nat_applied.as_deref()
                == Some(
                    weft_dataplane::stateful::nft_script(
                        &self.cfg.ipam.space.pools,
                        self.dp.cfg.nat,
                        self.policy_active(),
                        self.dp.cfg.vxlan_port,
                    )
                    .as_str(),
                )
    }

    /// Makes sure `weft.vx` exists with the right parameters and is up; returns its index.
    /// A `weft.vx` without weft's alias is someone else's: weft stops rather than touch it.
    fn dp_vxlan_device(&mut self, nlh: &mut Netlink, local: &Local) -> Result<u32, String> {
        let e = |e: nl::Error| e.to_string();
        let want = nl::Vxlan {
            vni: self.dp.cfg.vxlan_id,
            port: self.dp.cfg.vxlan_port,
            local: local.underlay.addr(),
            link: None,
            mtu: local
                .underlay_mtu
                .saturating_sub(vxlan_overhead(local.underlay.addr())),
            learning: false,
        };
        let mac = mac_of(&self.id);
        if let Some(link) = nlh.link_by_name(VXLAN_DEV).map_err(e)? {
            if link.alias.as_deref() != Some(VXLAN_ALIAS) {
                return Err(format!(
                    "{VXLAN_DEV} exists but is not weft's (no alias {VXLAN_ALIAS:?}); remove it or \
                     rename it"
                ));
            }
            let have = nlh.vxlan_params(link.index).map_err(e)?;
            let same = have.as_ref().is_some_and(|h| {
                h.vni == want.vni
                    && h.port == want.port
                    && h.local == want.local
                    && !h.learning
                    && h.mtu == want.mtu
            }) && link.mac == Some(mac);
            if same {
                if !link.up {
                    nlh.set_up(link.index).map_err(e)?;
                }
                return Ok(link.index);
            }
            log(format!(
                "data plane: {VXLAN_DEV} has other parameters ({have:?}); making it again"
            ));
            nlh.delete_link(link.index).map_err(e)?;
        }
        let index = nlh
            .create_vxlan(VXLAN_DEV, &want, mac, VXLAN_ALIAS)
            .map_err(e)?;
        nlh.set_up(index).map_err(e)?;
        Ok(index)
    }

    /// `weft status`'s data plane part.
    pub(crate) fn dp_report(&self) -> DataplaneReport {
        let mut routes = Vec::new();
        let mut skipped = Vec::new();
        if let Some(p) = &self.dp.applied {
            let vtep_owner: BTreeMap<Ipv6Addr, NodeId> = self
                .node
                .store()
                .owners()
                .map(|o| (weft_dataplane::vtep_of(o), *o))
                .collect();
            let peers = self.dp_peers_now();
            let addr_owner: BTreeMap<IpAddr, NodeId> = peers
                .iter()
                .filter_map(|p| p.underlay.map(|u| (u, p.id)))
                .collect();
            let holder: BTreeMap<IpNet, NodeId> = peers
                .iter()
                .flat_map(|p| p.prefixes.iter().map(move |n| (*n, p.id)))
                .collect();
            for r in &p.routes {
                let (mode, via, owner) = match r.via {
                    Via::Direct(ip) => ("route", ip, addr_owner.get(&ip).copied()),
                    Via::Vxlan(v6) => {
                        let o = vtep_owner.get(&v6).copied();
                        let u = p
                            .vxlan
                            .iter()
                            .find(|x| x.vtep == v6)
                            .map(|x| x.underlay)
                            .unwrap_or(IpAddr::V6(v6));
                        ("vxlan", u, o)
                    }
                    Via::Tunnel(h) if h == self.id => {
                        // The pools' catch-all: dropped in the tunnel, never sent in clear.
                        routes.push(RouteReport {
                            dst: r.dst.to_string(),
                            mode: "tunnel".into(),
                            via: "drop".into(),
                            via_name: None,
                            owner: None,
                            mtu: r.mtu,
                        });
                        continue;
                    }
                    Via::Tunnel(h) => {
                        let u = self
                            .tunnel_endpoint(&h)
                            .map(|a| a.ip())
                            .or_else(|| addr_owner.iter().find(|(_, o)| **o == h).map(|(a, _)| *a))
                            .unwrap_or(IpAddr::from([0u8; 4]));
                        ("tunnel", u, Some(h))
                    }
                };
                routes.push(RouteReport {
                    dst: r.dst.to_string(),
                    mode: mode.into(),
                    via: via.to_string(),
                    via_name: owner.and_then(|o| self.name_of(&o)),
                    owner: holder.get(&r.dst).and_then(|o| self.name_of(o)),
                    mtu: r.mtu,
                });
            }
            for (id, why) in &p.skipped {
                let name = self.name_of(id).unwrap_or_else(|| id.to_string());
                skipped.push(match why {
                    Skip::Unreachable => format!("{name}: unreachable"),
                    Skip::NoAddress => format!("{name}: next hop has no known address"),
                });
            }
        }
        DataplaneReport {
            mode: mode_str(self.dp.cfg.mode).into(),
            nat: self.dp.cfg.nat,
            underlay: self
                .dp
                .local
                .as_ref()
                .map(|l| format!("{} {} mtu {}", l.underlay_if, l.underlay, l.underlay_mtu)),
            pod_mtu: self.dp.pod_mtu(),
            routes,
            skipped,
            conflicts: self.dp.conflicts.iter().map(|c| c.to_string()).collect(),
            error: self.dp.error.clone(),
            fast_path: self.fast_report(),
            tunnel: Some(self.tunnel_report()),
            nftables: self.nftables_report(),
        }
    }
}

/// A delete that found nothing to delete did what it was for.
pub(crate) fn already_gone(res: nl::Result<()>) -> Result<(), String> {
    match res {
        Err(e) if !e.is_not_found() => Err(e.to_string()),
        _ => Ok(()),
    }
}
