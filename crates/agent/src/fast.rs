//! The fast path in the agent: loads weft's BPF program once (`weft_fastpath`), tells it
//! the pools, and keeps it attached to exactly weft's own devices: the host-side veth of
//! every weft container (alias `weft:NET:CONTAINER:IF`, set by the plugin) and `weft.vx`;
//! and, with a TCX link only, at ingress of the underlay while pods' traffic crosses it in
//! clear ([`underlay_wanted`]). Containers come and go between ticks, so the links are
//! compared with the kernel's on every tick. An agent that stops detaches everything; one
//! that crashes leaves the container veths' filters (the next agent replaces them), while
//! its TCX links go with its process. Design: docs/dataplane.md, "Fast path".

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weft_fastpath::{Counters, Device, FastPath, RouteTarget};
use weft_netlink::{Link, Netlink};

use crate::dataplane::{VXLAN_ALIAS, VXLAN_DEV};
use crate::Agent;

/// An event of target `weft::fastpath`.
fn log(msg: impl std::fmt::Display) {
    tracing::info!(target: "weft::fastpath", "{msg}");
}

/// The fast path's state in the owner task.
#[derive(Default)]
pub(crate) struct Fast {
    path: Option<FastPath>,
    /// Why the program is not loaded (then it is not tried again), or the last failure
    /// to attach it somewhere.
    error: Option<String>,
    /// The last reading of the translated connections into the program failed: it is
    /// tried again on the next tick rather than at the next refresh.
    refresh_failed: bool,
    /// With the fast path off: earlier agents' filters were removed.
    cleaned: bool,
    /// Attached devices not yet enabled (a container veth waits for the conntrack seed).
    unenabled: BTreeSet<Device>,
    /// Addresses of pods a network policy isolates (their packets take the stack).
    isolated: BTreeSet<std::net::IpAddr>,
    /// Promotions were withdrawn outside a policy cut: the next policy tick makes those
    /// the policy still allows again.
    pub(crate) repromote: bool,
    /// When the conntrack entries of promoted connections in use were last kept alive.
    promoted_refreshed: Option<Instant>,
    /// Container veths the last tick saw, and when a tick first saw each (see
    /// [`ATTACH_AFTER`]).
    seen: BTreeMap<Device, Instant>,
    /// Container veths that carry a queueing discipline of someone else's: left to the
    /// stack, where it applies.
    shaped: Vec<String>,
    /// The ifindexes of the underlay and `weft.vx` at the last tick.
    uplinks: (Option<u32>, Option<u32>),
}

/// The established TCP timeout of the host's conntrack.
const TCP_ESTABLISHED_TIMEOUT: &str =
    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established";

/// The devices, by index, that carry a queueing discipline of someone else's, among
/// `qdiscs` (device index, kind, as the kernel lists them): anything but a veth's
/// `noqueue` and the `clsact` the fast path's filters hang on. The reference `bandwidth`
/// plugin (Kubernetes' `kubernetes.io/ingress-bandwidth` and `egress-bandwidth`) puts a
/// `tbf` at the root of a container's host veth and an `ingress` qdisc that sends its
/// packets through an `ifb` device. The fast path delivers into a container past its host
/// veth's root qdisc (`bpf_redirect_peer`) and an `ingress` qdisc excludes `clsact`: such
/// a veth is left to the stack, where the shaping applies. Design: docs/dataplane.md,
/// "Fast path", other qdiscs.
fn shaped_devices(qdiscs: &[(u32, String)]) -> BTreeSet<u32> {
    qdiscs
        .iter()
        .filter(|(_, kind)| kind != "noqueue" && kind != "clsact")
        .map(|(index, _)| *index)
        .collect()
}

/// The attached container veths (`attached`) whose `clsact` qdisc is gone from `qdiscs`:
/// someone removed it (`tc qdisc del dev X clsact`, a tool's cleanup), and the program's
/// filters with it.
fn lost_filters<'a>(
    attached: impl Iterator<Item = &'a Device>,
    qdiscs: &[(u32, String)],
) -> BTreeSet<Device> {
    let with: BTreeSet<u32> = qdiscs
        .iter()
        .filter(|(_, kind)| kind == "clsact")
        .map(|(index, _)| *index)
        .collect();
    attached
        .filter(|d| d.pod && !with.contains(&d.ifindex))
        .cloned()
        .collect()
}

/// How long a new container veth is left to the stack before the program is attached to
/// it: the plugins chained after weft's run once its ADD has returned, and the `bandwidth`
/// plugin's `ingress` qdisc cannot be added where a `clsact` already is.
const ATTACH_AFTER: Duration = Duration::from_secs(1);

/// How many devices a tick attaches at most. Each attach is a few netlink requests under
/// the kernel's RTNL lock (about 0.5 ms a container veth here), which the container
/// runtimes' own link changes wait for, and the agent answers nothing meanwhile: a burst
/// of 200 new containers took 40-180 ms ticks. A veth not yet attached takes the stack.
const ATTACH_PER_TICK: usize = 32;

/// The devices of `want` not attached yet (`have`) that this tick attaches: `weft.vx`
/// first, at most [`ATTACH_PER_TICK`]; the rest wait for the next ticks, on the stack.
fn to_attach<'a>(want: &'a BTreeSet<Device>, have: &BTreeSet<Device>) -> Vec<&'a Device> {
    let mut todo: Vec<&Device> = want.iter().filter(|d| !have.contains(d)).collect();
    todo.sort_by_key(|d| d.pod);
    todo.truncate(ATTACH_PER_TICK);
    todo
}

/// Which of weft's devices `own` the program is to be attached to at `now`: `weft.vx`
/// always; a container veth once it has been seen for [`ATTACH_AFTER`] (`seen`: since
/// when), and while it carries no qdisc of someone else's (`shaped`, by index). Also the
/// names of the container veths left to the stack for such a qdisc.
fn wanted(
    own: &BTreeSet<Device>,
    seen: &BTreeMap<Device, Instant>,
    shaped: &BTreeSet<u32>,
    now: Instant,
) -> (BTreeSet<Device>, Vec<String>) {
    let old = |d: &Device| {
        seen.get(d)
            .is_some_and(|t| now.saturating_duration_since(*t) >= ATTACH_AFTER)
    };
    let want = own
        .iter()
        .filter(|d| !d.pod || (old(d) && !shaped.contains(&d.ifindex)))
        .cloned()
        .collect();
    let left = own
        .iter()
        .filter(|d| d.pod && shaped.contains(&d.ifindex))
        .map(|d| d.name.clone())
        .collect();
    (want, left)
}

/// The underlay (ifindex, name) the uplink program is to be attached to (docs/dataplane.md,
/// "Fast path", the underlay): while weft routes pods' traffic over it in clear (one of
/// `routes`, the program's, goes out of it: route mode, `auto` and `cross-subnet` towards
/// peers on the segment), so that the other hosts' packets to this host's containers
/// arrive on it, and only while no classic tc filters of someone else's may hang on its
/// ingress (an `ingress` or `clsact` qdisc in `qdiscs`): the program delivers what it
/// takes into the containers past them.
fn underlay_wanted(
    underlay: Option<(u32, &str)>,
    routes: &BTreeMap<ipnet::IpNet, Option<RouteTarget>>,
    qdiscs: &[(u32, String)],
) -> Option<(u32, String)> {
    let (index, name) = underlay?;
    let used = routes.values().flatten().any(|t| t.ifindex == index);
    let filtered = qdiscs
        .iter()
        .any(|(i, kind)| *i == index && (kind == "ingress" || kind == "clsact"));
    (used && !filtered).then(|| (index, name.to_string()))
}

/// Removes the filters an earlier agent left on container veths (it crashed, or ran with
/// the fast path on when this one cannot or must not).
fn remove_all_leftovers() {
    if let Ok(links) = Netlink::open().and_then(|mut n| n.links()) {
        for d in links.iter().filter_map(own_device).filter(|d| d.pod) {
            weft_fastpath::remove_leftovers(&d.name);
        }
    }
}

/// The routes the program follows for containers' packets ([`FastPath::set_routes`]):
/// weft's routes through the underlay (`underlay`, its ifindex) and `weft.vx` (`vx`, when
/// it exists), each prefix with its target; `None`: the kernel's FIB decides. A longest-
/// prefix match would otherwise send a packet along one of them where the kernel has a
/// more specific route: so every prefix inside a followed one that the kernel may route
/// otherwise gets `None`: weft's routes into the encrypted tunnel (its device is not one
/// the program sends out of) and those another owner routes (`conflicts`), the other
/// owners' routes (`foreign`, the last listing), and this host's containers' addresses
/// (`local`: an address borrowed from another host's block lies inside that block's
/// route, and the plugin's route to it may be younger than the listing).
fn route_targets(
    installed: Option<crate::dataplane::Installed<'_>>,
    local: &[std::net::IpAddr],
    underlay: Option<u32>,
    vx: Option<u32>,
) -> BTreeMap<ipnet::IpNet, Option<RouteTarget>> {
    use weft_dataplane::Via;
    let Some(inst) = installed else {
        return BTreeMap::new();
    };
    let mut out: BTreeMap<ipnet::IpNet, Option<RouteTarget>> = inst
        .routes
        .iter()
        .map(|r| {
            let target = match r.via {
                _ if inst.conflicts.contains(&r.dst) => None,
                Via::Direct(ip) => underlay.map(|i| (i, ip)),
                Via::Vxlan(v6) => vx.map(|i| (i, std::net::IpAddr::V6(v6))),
                Via::Tunnel(_) => None,
            };
            let target = target.map(|(ifindex, gateway)| RouteTarget {
                ifindex,
                gateway,
                mtu: r.mtu,
            });
            (r.dst, target)
        })
        .collect();
    let followed: Vec<ipnet::IpNet> = out
        .iter()
        .filter(|(_, t)| t.is_some())
        .map(|(n, _)| *n)
        .collect();
    for net in inst
        .foreign
        .iter()
        .copied()
        .chain(local.iter().map(|&a| ipnet::IpNet::from(a)))
    {
        out.entry(net).or_insert(None);
    }
    // A prefix for the FIB matters only inside a followed one (a miss goes to the FIB).
    out.retain(|n, t| {
        t.is_some()
            || followed
                .iter()
                .any(|f| f.prefix_len() < n.prefix_len() && f.contains(n))
    });
    out
}

/// Tells the program the client sockets of every translated connection among `conns`
/// (conntrack's table). Without the table weft cannot seed, and says so rather than
/// forward translated replies untranslated.
fn remember_translated(
    f: &mut FastPath,
    conns: Result<std::sync::Arc<Vec<weft_dataplane::stateful::Conn>>, String>,
    pools: &[ipnet::IpNet],
) -> Result<(), String> {
    let conns = conns.map_err(|e| format!("fast path: {e}: container veths stay on the stack"))?;
    f.remember(&weft_dataplane::stateful::translated_clients(&conns, pools))
}

/// Whether a tracked connection may be promoted to the fast path (docs/policy.md,
/// "Established connections"): TCP in state established, assured (conntrack saw its
/// handshake both ways), nobody translates it, not picked up mid-stream (whose packets are
/// judged one by one).
pub(crate) fn promotable(
    &(proto, _, _): &weft_dataplane::stateful::Conn,
    m: &weft_netlink::netfilter::CtMeta,
) -> bool {
    use weft_netlink::netfilter::{CT_ASSURED, CT_DST_NAT, CT_SRC_NAT, CT_TCP_ESTABLISHED};
    proto == 6
        && m.tcp_state == CT_TCP_ESTABLISHED
        && m.status & CT_ASSURED != 0
        && m.status & (CT_SRC_NAT | CT_DST_NAT) == 0
        && m.mark & weft_policy::compile::PICKUP_MARK == 0
}

/// How long a promoted connection may go without a packet and still have its conntrack
/// entry kept alive by the agent, and how often the agent does so.
const PROMOTED_REFRESH: Duration = Duration::from_secs(30);

/// `GET /status` part: the fast path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FastReport {
    /// `on` (loaded), `off` (by config) or `unavailable` (the kernel refused it; see error).
    pub state: String,
    /// weft's devices the program is attached to (container veths, `weft.vx`).
    pub devices: Vec<String>,
    /// The underlay interface, when the program is attached at its ingress (a TCX link)
    /// to deliver the other hosts' packets into this host's containers.
    #[serde(default)]
    pub underlay: Option<String>,
    /// Packets it handled since the agent started.
    pub counters: Counters,
    /// Container veths that carry another's queueing discipline (bandwidth limits): not
    /// attached, their traffic takes the stack, where the qdisc applies.
    #[serde(default)]
    pub shaped: Vec<String>,
    /// weft's routes the program follows for containers' packets without a FIB lookup
    /// (`PREFIX via GATEWAY`).
    #[serde(default)]
    pub routes: Vec<String>,
    /// Why it is unavailable, or the last device it could not be attached to.
    pub error: Option<String>,
}

/// A link weft created: a container's host-side veth, or the VXLAN device.
fn own_device(l: &Link) -> Option<Device> {
    let alias = l.alias.as_deref()?;
    let pod = l.kind.as_deref() == Some("veth")
        && alias
            .strip_prefix("weft:")
            .is_some_and(|rest| rest.split(':').count() == 3);
    let vx = l.name == VXLAN_DEV && alias == VXLAN_ALIAS;
    (pod || vx).then(|| Device {
        ifindex: l.index,
        name: l.name.clone(),
        pod,
    })
}

impl Agent {
    /// Called on every tick; works only when the data plane and the fast path are on.
    pub(crate) fn fast_tick(&mut self) {
        if self.cfg.dataplane.mode.is_none() || !self.cfg.dataplane.fast_path {
            if !self.fast.cleaned {
                remove_all_leftovers();
                self.fast.cleaned = true;
            }
            return;
        }
        if self.fast.path.is_none() {
            if self.fast.error.is_some() {
                return;
            }
            let pools = self.cfg.ipam.space.pools.clone();
            let isolated = self.fast.isolated.clone();
            let loaded = FastPath::load()
                .and_then(|mut f| f.set_pools(&pools).map(|()| f))
                .and_then(|mut f| f.set_isolated(&isolated).map(|()| f));
            match loaded {
                Ok(f) => {
                    log("fast path: loaded");
                    // A crashed agent's filters may still honour its promotions: gone
                    // before anything is attached (the stack carries the traffic until
                    // then). What the policy allows is promoted again at the next tick.
                    remove_all_leftovers();
                    self.fast.path = Some(f);
                    self.fast.repromote = true;
                }
                Err(e) => {
                    remove_all_leftovers();
                    log(format!("{e}; container traffic takes the kernel's stack"));
                    self.fast.error = Some(e);
                    return;
                }
            }
        }
        let listed = Netlink::open().and_then(|mut n| Ok((n.links()?, n.qdiscs()?)));
        let (links, qdiscs) = match listed {
            Ok(l) => l,
            Err(e) => {
                return self
                    .set_fast_error(Some(format!("fast path: listing links and qdiscs: {e}")))
            }
        };
        let own: BTreeSet<Device> = links.iter().filter_map(own_device).collect();
        let now = Instant::now();
        self.fast.seen = own
            .iter()
            .filter(|d| d.pod)
            .map(|d| (d.clone(), self.fast.seen.get(d).copied().unwrap_or(now)))
            .collect();
        // A container veth with another's qdisc is not attached, or is detached: its
        // traffic takes the stack, where the qdisc applies.
        let (want, shaped) = wanted(&own, &self.fast.seen, &shaped_devices(&qdiscs), now);
        self.fast.shaped = shaped;
        let index = |name: Option<&str>| {
            name.and_then(|name| links.iter().find(|l| l.name == name))
                .map(|l| l.index)
        };
        let underlay = index(self.dp.underlay_if());
        let uplinks: Vec<u32> = underlay.into_iter().collect();
        self.fast.uplinks = (underlay, index(Some(VXLAN_DEV)));
        let routes = self.fast_route_targets();
        let underlay_dev = underlay_wanted(underlay.zip(self.dp.underlay_if()), &routes, &qdiscs);
        // The program's LRU map gets the translated connections' client sockets again on
        // the ticks the nftables set does (so idle connections keep theirs), from the same
        // listing of conntrack: one schedule, one listing (see `nftables_tick`).
        let refresh_due = self.nftables_refresh_due() || self.fast.refresh_failed;
        let pools = self.cfg.ipam.space.pools.clone();
        let f = self.fast.path.as_mut().expect("loaded above");
        // A veth whose filters someone removed is detached here and attached again below.
        let lost = lost_filters(f.devices(), &qdiscs);
        for d in &lost {
            log(format!(
                "fast path: the clsact qdisc of {} was removed by someone else; attaching again",
                d.name
            ));
        }
        f.retain(|d| want.contains(d) && !lost.contains(d));
        let mut failed = f.set_uplinks(&uplinks).err();
        if let Err(e) = f.set_routes(&routes) {
            failed = Some(e);
        }
        // Only enabled container veths are delivered into from the underlay: the same
        // seeding and policy as for their neighbours' packets hold.
        let before = f.underlay().map(String::from);
        match f.set_underlay(underlay_dev.as_ref().map(|(i, n)| (*i, n.as_str()))) {
            Ok(()) if f.underlay().map(String::from) != before => log(match f.underlay() {
                Some(n) => format!("fast path: attached to the underlay {n} at ingress (TCX)"),
                None => "fast path: detached from the underlay".to_string(),
            }),
            Ok(()) => {}
            Err(e) => failed = Some(e),
        }
        let have: BTreeSet<Device> = f.devices().cloned().collect();
        for d in to_attach(&want, &have) {
            // Attached first: from now on the program learns the container's outbound
            // sockets itself, but forwards nothing from or to it yet.
            match f.attach(d.clone()) {
                Ok(()) => {
                    self.fast.unenabled.insert(d.clone());
                }
                Err(e) => failed = Some(e),
            }
        }
        self.fast.unenabled.retain(|d| want.contains(d));
        let new_pod = self.fast.unenabled.iter().any(|d| d.pod);
        let mut seeded = true;
        if refresh_due || new_pod {
            // Then the translated connections it opened before (conntrack knows them:
            // read after the attach, so a new veth's seed is a new listing), then it is
            // enabled (docs/dataplane.md, "Connections that others translate"); a failed
            // read leaves it unlisted until a read succeeds.
            let age = if new_pod {
                Duration::ZERO
            } else {
                crate::nftables::SHARED_LISTING
            };
            let conns = self.conntrack_listing(age);
            let f = self.fast.path.as_mut().expect("loaded above");
            let res = remember_translated(f, conns, &pools);
            self.fast.refresh_failed = res.is_err();
            if let Err(e) = res {
                seeded = false;
                failed = Some(e);
            }
        }
        let waiting: Vec<Device> = self.fast.unenabled.iter().cloned().collect();
        // Nothing is forwarded past the stack before the policy's isolated pods are known.
        let policy_known = self.pol.applied_any();
        let f = self.fast.path.as_mut().expect("loaded above");
        for d in waiting {
            if d.pod && (!seeded || !policy_known) {
                continue;
            }
            match f.enable(&d) {
                Ok(()) => {
                    self.fast.unenabled.remove(&d);
                }
                Err(e) => failed = Some(e),
            }
        }
        self.set_fast_error(failed);
        let promoted_due =
            (self.fast.promoted_refreshed).is_none_or(|t| t.elapsed() >= PROMOTED_REFRESH);
        if promoted_due {
            self.fast.promoted_refreshed = Some(Instant::now());
            self.fast_refresh_promoted();
        }
    }

    /// The routes the program is to follow now (see [`route_targets`]).
    fn fast_route_targets(&self) -> BTreeMap<ipnet::IpNet, Option<RouteTarget>> {
        let local: Vec<std::net::IpAddr> = self.ipam.list().into_iter().map(|(a, _)| a).collect();
        let (underlay, vx) = self.fast.uplinks;
        route_targets(self.dp.installed(), &local, underlay, vx)
    }

    /// Gives the program the routes it follows at once (not at the next tick): called for
    /// a new container's addresses before its ADD is answered, so that a borrowed one is
    /// the FIB's before the container's first packet.
    pub(crate) fn fast_routes_sync(&mut self) {
        let routes = self.fast_route_targets();
        if let Some(f) = self.fast.path.as_mut() {
            if let Err(e) = f.set_routes(&routes) {
                self.set_fast_error(Some(e));
            }
        }
    }

    /// Makes the fast path leave packets from or to `addrs` to the stack (now, if it is
    /// loaded, and from its load on).
    pub(crate) fn fast_isolate(
        &mut self,
        addrs: &BTreeSet<std::net::IpAddr>,
    ) -> Result<(), String> {
        if !self.fast.isolated.is_subset(addrs) {
            // An address leaving (perhaps to come back with another pod) must not keep its
            // connections' promotions.
            self.fast_forget_promoted()?;
            self.fast.repromote = true;
        }
        self.fast.isolated = addrs.clone();
        match self.fast.path.as_mut() {
            Some(f) => f.set_isolated(addrs),
            None => Ok(()),
        }
    }

    /// Whether the program is loaded (it forwards what the agent promotes).
    pub(crate) fn fast_loaded(&self) -> bool {
        self.fast.path.is_some()
    }

    /// Withdraws every established connection's promotion (docs/policy.md, "Established
    /// connections"): before the connections a policy change no longer allows are cut,
    /// and whenever the isolated pods change (an address may have a new owner).
    pub(crate) fn fast_forget_promoted(&mut self) -> Result<(), String> {
        match self.fast.path.as_mut() {
            Some(f) => f.forget_promoted(),
            None => Ok(()),
        }
    }

    /// Promotes an established TCP connection of an isolated pod (original tuple) to the
    /// fast path: conntrack's entry first made to accept what it will not see, then both
    /// directions entered in the program's map. False when there is no fast path or no
    /// such entry (any more).
    pub(crate) fn fast_promote(
        &mut self,
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
        sport: u16,
        dport: u16,
    ) -> Result<bool, String> {
        let Some(f) = self.fast.path.as_mut() else {
            return Ok(false);
        };
        if !weft_netlink::netfilter::conntrack_tcp_liberal(src, dst, sport, dport)
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        f.promote(src, dst, sport, dport)?;
        Ok(true)
    }

    /// Keeps the conntrack entries of promoted connections in use alive (conntrack may see
    /// none of their packets: both ends on this host, or VXLAN mode), and withdraws the
    /// promotions whose entry is gone (their packets are conntrack's again).
    fn fast_refresh_promoted(&mut self) {
        let Some(f) = self.fast.path.as_mut() else {
            return;
        };
        let secs = std::fs::read_to_string(TCP_ESTABLISHED_TIMEOUT)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .unwrap_or(432_000);
        let window = 2 * PROMOTED_REFRESH.as_secs() as u32;
        for (src, dst, sport, dport) in f.promoted_in_use(window) {
            match weft_netlink::netfilter::conntrack_tcp_timeout(src, dst, sport, dport, secs) {
                Ok(true) => {}
                Ok(false) => f.withdraw(src, dst, sport, dport),
                Err(e) => {
                    log(format!("fast path: {e}"));
                    break;
                }
            }
        }
    }

    fn set_fast_error(&mut self, e: Option<String>) {
        if e != self.fast.error {
            if let Some(e) = &e {
                self.metrics.error(crate::metrics::ErrorKind::FastPath);
                tracing::warn!(target: "weft::fastpath", error = %e, "{e}");
            }
            self.fast.error = e;
        }
    }

    pub(crate) fn fast_report(&self) -> FastReport {
        let state = match (&self.fast.path, self.cfg.dataplane.fast_path) {
            (Some(_), _) => "on",
            (None, false) => "off",
            (None, true) if self.fast.error.is_some() => "unavailable",
            (None, true) => "starting",
        };
        FastReport {
            state: state.into(),
            devices: self
                .fast
                .path
                .iter()
                .flat_map(|f| f.devices().map(|d| d.name.clone()))
                .collect(),
            underlay: self
                .fast
                .path
                .as_ref()
                .and_then(|f| f.underlay().map(String::from)),
            counters: self
                .fast
                .path
                .as_ref()
                .map(|f| f.counters())
                .unwrap_or_default(),
            shaped: self.fast.shaped.clone(),
            routes: self
                .fast
                .path
                .iter()
                .flat_map(|f| {
                    f.routes().map(|(n, t)| match t {
                        Some(t) => format!("{n} via {}", t.gateway),
                        None => format!("{n} (the kernel's FIB)"),
                    })
                })
                .collect(),
            error: self.fast.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: &str, alias: Option<&str>) -> Link {
        Link {
            index: 7,
            name: name.into(),
            mtu: 1500,
            mac: None,
            up: true,
            kind: Some(kind.into()),
            link: None,
            alias: alias.map(Into::into),
        }
    }

    #[test]
    fn only_weft_container_veths_and_weft_vx_are_its_own() {
        let pod = own_device(&link("weft1a2b", "veth", Some("weft:net:abc:eth0"))).unwrap();
        assert!(pod.pod);
        let vx = own_device(&link(VXLAN_DEV, "vxlan", Some(VXLAN_ALIAS))).unwrap();
        assert!(!vx.pod);
        // Someone else's veth, a weft name without weft's alias, another alias shape,
        // a VXLAN device called weft.vx that weft did not mark.
        assert!(own_device(&link("veth0", "veth", None)).is_none());
        assert!(own_device(&link("weft1a2b", "veth", Some("cni:abc"))).is_none());
        assert!(own_device(&link("weft1a2b", "veth", Some("weft:abc"))).is_none());
        assert!(own_device(&link("weft1a2b", "bridge", Some("weft:n:c:eth0"))).is_none());
        assert!(own_device(&link(VXLAN_DEV, "vxlan", Some("mine"))).is_none());
    }

    #[test]
    fn the_program_follows_weft_s_routes_and_leaves_what_lies_inside_them_to_the_fib() {
        use weft_dataplane::{Route, Via};
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let gw4: std::net::IpAddr = "172.30.0.2".parse().unwrap();
        let vtep: std::net::Ipv6Addr = "fe80::2".parse().unwrap();
        let route = |dst: &str, via: Via, mtu: u32| Route {
            dst: net(dst),
            via,
            mtu,
        };
        let routes = BTreeSet::from([
            route("10.32.1.0/26", Via::Direct(gw4), 1500),
            route("fd32::40:0/122", Via::Vxlan(vtep), 1430),
            // Into the tunnel: a whole block, and a borrowed address inside a direct one.
            route(
                "10.32.2.0/26",
                Via::Tunnel(weft_mesh::NodeId([3; 16])),
                1420,
            ),
            route(
                "10.32.1.9/32",
                Via::Tunnel(weft_mesh::NodeId([3; 16])),
                1420,
            ),
            // Routed by someone else (weft installed nothing): not followed.
            route("10.32.4.0/26", Via::Direct(gw4), 1500),
        ]);
        let conflicts = BTreeSet::from([net("10.32.4.0/26")]);
        // The plugin's route to a container here, an administrator's inside a block,
        // and the underlay's own subnet.
        let foreign = BTreeSet::from([
            net("10.32.0.3/32"),
            net("10.32.1.40/30"),
            net("172.30.0.0/24"),
        ]);
        // This host's containers: one in its own block, one borrowed from 10.32.1.0/26
        // whose route the plugin may not have made yet.
        let local: Vec<std::net::IpAddr> =
            vec!["10.32.0.3".parse().unwrap(), "10.32.1.7".parse().unwrap()];
        let inst = || {
            Some(crate::dataplane::Installed {
                routes: &routes,
                conflicts: &conflicts,
                foreign: &foreign,
            })
        };
        let got = route_targets(inst(), &local, Some(2), Some(9));
        let target = |ifindex, gateway, mtu| {
            Some(RouteTarget {
                ifindex,
                gateway,
                mtu,
            })
        };
        assert_eq!(
            got,
            BTreeMap::from([
                (net("10.32.1.0/26"), target(2, gw4, 1500)),
                (net("fd32::40:0/122"), target(9, vtep.into(), 1430)),
                // Inside 10.32.1.0/26: the FIB decides.
                (net("10.32.1.9/32"), None),
                (net("10.32.1.40/30"), None),
                (net("10.32.1.7/32"), None),
            ])
        );
        // Without weft.vx (route mode) its routes are the FIB's, without the underlay
        // every direct one (and then nothing is inside a followed prefix).
        let v4 = route_targets(inst(), &local, Some(2), None);
        assert_eq!(v4.len(), 4, "{v4:?}");
        let vx = route_targets(inst(), &local, None, Some(9));
        assert_eq!(vx.keys().collect::<Vec<_>>(), [&net("fd32::40:0/122")]);
        // A failed apply: nothing is followed, the FIB decides everything.
        assert!(route_targets(None, &local, Some(2), Some(9)).is_empty());
    }

    fn dev(i: u32, pod: bool) -> Device {
        Device {
            ifindex: i,
            name: format!("d{i}"),
            pod,
        }
    }

    #[test]
    fn a_new_veth_waits_and_a_shaped_one_is_left_to_the_stack() {
        let (vx, new, old, limited) = (dev(2, false), dev(5, true), dev(6, true), dev(7, true));
        let own = BTreeSet::from([vx.clone(), new.clone(), old.clone(), limited.clone()]);
        let t0 = Instant::now();
        let now = t0 + ATTACH_AFTER;
        // `new` first seen just now, the others for ATTACH_AFTER; `limited` has a tbf.
        let seen = BTreeMap::from([(new.clone(), now), (old.clone(), t0), (limited.clone(), t0)]);
        let (want, left) = wanted(&own, &seen, &BTreeSet::from([7]), now);
        assert_eq!(want, BTreeSet::from([vx.clone(), old.clone()]));
        assert_eq!(left, ["d7"]);
        // A moment later `new` is attached too; weft.vx never waits, nor is it shaped.
        let (want, _) = wanted(&own, &seen, &BTreeSet::from([2, 7]), now + ATTACH_AFTER);
        assert_eq!(want, BTreeSet::from([vx, new, old]));
        // Not seen at all (the tick that first lists it): not yet.
        let (want, _) = wanted(&own, &BTreeMap::new(), &BTreeSet::new(), now);
        assert!(want.iter().all(|d| !d.pod), "{want:?}");
    }

    #[test]
    fn a_tick_attaches_weft_vx_first_and_a_bounded_number_of_veths() {
        let veths = (10..10 + ATTACH_PER_TICK as u32 + 5).map(|i| dev(i, true));
        let want: BTreeSet<Device> = veths.chain([dev(3, false)]).collect();
        let have = BTreeSet::from([dev(10, true)]);
        let first = to_attach(&want, &have);
        assert_eq!(first.len(), ATTACH_PER_TICK);
        assert_eq!(first[0], &dev(3, false), "weft.vx first: {first:?}");
        assert!(!first.contains(&&dev(10, true)), "attached already");
        // The next tick takes the rest.
        let have: BTreeSet<Device> = first.into_iter().cloned().chain([dev(10, true)]).collect();
        let second = to_attach(&want, &have);
        assert_eq!(second.len(), 5);
        assert!(second.iter().all(|d| d.pod && !have.contains(d)));
        assert!(to_attach(&want, &want).is_empty());
    }

    #[test]
    fn the_underlay_is_attached_while_pods_traffic_crosses_it_in_clear_and_unfiltered() {
        let target = |ifindex| {
            Some(RouteTarget {
                ifindex,
                gateway: "172.30.0.2".parse().unwrap(),
                mtu: 1500,
            })
        };
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let direct = BTreeMap::from([
            (net("10.32.1.0/26"), target(2)),
            (net("10.32.1.5/32"), None),
        ]);
        let vxlan = BTreeMap::from([
            (net("10.32.1.0/26"), target(9)),
            (net("10.32.2.0/26"), None),
        ]);
        let noqueue = [(2, "noqueue".to_string()), (9, "clsact".to_string())];
        let eth0 = Some((2, "eth0"));
        assert_eq!(
            underlay_wanted(eth0, &direct, &noqueue),
            Some((2, "eth0".to_string()))
        );
        // Only weft.vx (or the tunnel: no target) carries pods' traffic: nothing arrives.
        assert_eq!(underlay_wanted(eth0, &vxlan, &noqueue), None);
        assert_eq!(underlay_wanted(eth0, &BTreeMap::new(), &noqueue), None);
        // Someone's classic filters at the underlay's ingress would be passed by.
        for kind in ["ingress", "clsact"] {
            let q = [(2, kind.to_string())];
            assert_eq!(underlay_wanted(eth0, &direct, &q), None, "{kind}");
        }
        // A root qdisc (egress) is not in the way.
        let q = [(2, "fq_codel".to_string())];
        assert!(underlay_wanted(eth0, &direct, &q).is_some());
        assert_eq!(underlay_wanted(None, &direct, &noqueue), None);
    }

    #[test]
    fn an_attached_veth_without_its_clsact_lost_its_filters() {
        let attached = [dev(2, false), dev(5, true), dev(6, true)];
        let q = [
            (5, "noqueue".to_string()),
            (5, "clsact".to_string()),
            (6, "noqueue".to_string()),
        ];
        // weft.vx's TCX link needs no qdisc.
        assert_eq!(
            lost_filters(attached.iter(), &q),
            BTreeSet::from([dev(6, true)])
        );
    }

    #[test]
    fn a_veth_with_another_qdisc_is_shaped() {
        let q = |i: u32, kind: &str| (i, kind.to_string());
        let list = [
            // weft's own: a veth's default and the fast path's clsact.
            q(3, "noqueue"),
            q(3, "clsact"),
            // bandwidth's ingress limit (a tbf at the root) and its egress limit (an
            // ingress qdisc); another's shaping of any kind.
            q(4, "noqueue"),
            q(5, "tbf"),
            q(5, "ingress"),
            q(6, "tbf"),
            q(6, "clsact"),
            q(7, "htb"),
            q(8, "ingress"),
        ];
        assert_eq!(
            shaped_devices(&list),
            BTreeSet::from([5, 6, 7, 8]),
            "only veths with a qdisc of someone else's"
        );
    }
}
