//! weft's fast path, the thin loader of `bpf/fastpath.c` (built by `build.rs` with clang).
//!
//! The program runs at tc ingress of weft's own devices: the host-side veth of every weft
//! container, and `weft.vx`; a third entry point (`weft_uplink`) at ingress of the underlay
//! delivers other hosts' packets into this host's containers ([`FastPath::set_underlay`]).
//! A packet from a pool address to a pool address is forwarded along weft's route (a map
//! the agent keeps) or a FIB lookup straight to its egress device, or into the destination
//! container's namespace, so it skips the host namespace's IP stack and its netfilter
//! hooks; anything else goes on to the stack unchanged. Replies to connections that someone else
//! translated (Services, hostPorts) take the stack too: the program remembers their client
//! sockets in its `translated` map (at ingress, every socket that sent outside the pools;
//! at egress of container veths, a second program, the sources of packets weft's
//! netfilter rule marked as translated). The agent owns one [`FastPath`]: the programs are
//! loaded once, attached (`weft.vx` with a TCX link, a file descriptor of this process;
//! container veths with classic tc filters, whose teardown does not slow a CNI DEL, see
//! [`FastPath::attach`]), and told the pools and the devices through maps. Design:
//! docs/dataplane.md, "Fast path" and "Connections that others translate".

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError};
use aya::programs::tc::{
    qdisc_add_clsact, qdisc_detach_program, NlOptions, SchedClassifierLinkId, TcAttachOptions,
    TcAttachType,
};
use aya::programs::{LinkOrder, SchedClassifier};
use aya::Ebpf;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The compiled program (an ELF object for the kernel's BPF target).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.o"));
const INGRESS: &str = "weft_fast";
const EGRESS: &str = "weft_egress";
const UPLINK: &str = "weft_uplink";
/// The counters' slots in the program (`COUNTER_SLOTS` in bpf/fastpath.c).
const COUNTER_SLOTS: usize = 256;

/// The priority and handle of weft's tc filters on container veths (119 = 0x77, weft's
/// number, as its route protocol).
const FILTER_PRIO: u16 = 0x77;
const FILTER_HANDLE: u32 = 0x77;

/// Values of the `devs` maps: what a device is to the program.
const DEV_POD: u8 = 1;
const DEV_UPLINK: u8 = 2;

/// Devices with an ifindex below this are listed in the array `devs_low`, the others in
/// the hash `devs` (`DEVS_LOW` in fastpath.c).
const DEVS_LOW: u32 = 2048;

/// At most this many pools of each family (`MAX_POOLS` in fastpath.c).
pub const MAX_POOLS: usize = 16;

/// An IPv4 pool as the program matches it: address and mask in network order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Pool4 {
    addr: [u8; 4],
    mask: [u8; 4],
}

/// An IPv6 pool as the program matches it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Pool6 {
    addr: [u8; 16],
    mask: [u8; 16],
}

/// The one element of the program's `config` map (`struct config` in fastpath.c): the
/// pools of each family, and whether the `isolated` maps are to be looked up.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Config {
    n4: u32,
    n6: u32,
    isolating: u32,
    pad: u32,
    p4: [Pool4; MAX_POOLS],
    p6: [Pool6; MAX_POOLS],
}

// SAFETY: Config is `repr(C)`: four u32 (16 bytes) followed by arrays of byte arrays, so
// it has no padding (656 bytes, alignment 4) and every bit pattern is a valid value; it
// can be copied to and from the kernel as raw bytes.
unsafe impl aya::Pod for Config {}

impl Config {
    /// `self` with exactly `pools` (at most [`MAX_POOLS`] of each family).
    fn with_pools(mut self, pools: &[IpNet]) -> Result<Config, String> {
        let (mut n4, mut n6) = (0usize, 0usize);
        self.p4 = Default::default();
        self.p6 = Default::default();
        for p in pools {
            let full = |n: usize| {
                (n >= MAX_POOLS).then(|| {
                    err(
                        "pools",
                        format!("more than {MAX_POOLS} pools of one family ({p})"),
                    )
                })
            };
            match p {
                IpNet::V4(n) => {
                    if let Some(e) = full(n4) {
                        return Err(e);
                    }
                    self.p4[n4] = Pool4 {
                        addr: n.network().octets(),
                        mask: n.netmask().octets(),
                    };
                    n4 += 1;
                }
                IpNet::V6(n) => {
                    if let Some(e) = full(n6) {
                        return Err(e);
                    }
                    self.p6[n6] = Pool6 {
                        addr: n.network().octets(),
                        mask: n.netmask().octets(),
                    };
                    n6 += 1;
                }
            }
        }
        self.n4 = n4 as u32;
        self.n6 = n6 as u32;
        Ok(self)
    }
}

/// Packets the program handled, summed over CPUs since it was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Forwarded to an egress device (the underlay, `weft.vx`).
    pub egress: u64,
    /// Delivered straight into a container of this host.
    pub peer: u64,
    /// Handed to the kernel's neighbour resolution first (no neighbour entry yet).
    pub neigh: u64,
    /// Between pool addresses but left to the stack (no route, a relay, ...).
    pub pass: u64,
    /// Between pool addresses but left to the stack because conntrack must see them:
    /// replies to a translated connection's client socket, ICMP errors, fragments.
    #[serde(default)]
    pub stateful: u64,
    /// Between pool addresses but left to the stack because a network policy isolates
    /// its source or destination (the policy's nftables rules judge it there).
    #[serde(default)]
    pub policy: u64,
    /// Packets from or to isolated pods that were forwarded anyway: TCP segments of
    /// established connections the agent promoted (docs/policy.md, "Established
    /// connections").
    #[serde(default)]
    pub established: u64,
}

/// A device the program is attached to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Device {
    pub ifindex: u32,
    pub name: String,
    /// A container's host-side veth (else `weft.vx`).
    pub pod: bool,
}

/// A socket as the program keys it (`struct sock_key` in fastpath.c): the address in
/// network order (IPv4 in the first four bytes), the port in network order, the protocol.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SockKey {
    addr: [u8; 16],
    port: [u8; 2],
    proto: u8,
    family: u8,
}

// SAFETY: SockKey is `repr(C)`, made of byte arrays and bytes only (20 bytes, alignment 1,
// no padding), so every bit pattern is a valid value and it can be copied to the kernel
// as raw bytes.
unsafe impl aya::Pod for SockKey {}

impl SockKey {
    fn new(addr: IpAddr, proto: u8, port: u16) -> SockKey {
        let mut a = [0u8; 16];
        let family = match addr {
            IpAddr::V4(v4) => {
                a[..4].copy_from_slice(&v4.octets());
                4
            }
            IpAddr::V6(v6) => {
                a.copy_from_slice(&v6.octets());
                6
            }
        };
        SockKey {
            addr: a,
            port: port.to_be_bytes(),
            proto,
            family,
        }
    }
}

/// One direction of a TCP connection as the program keys it (`struct flow_key` in
/// fastpath.c): addresses in network order (IPv4 in the first four bytes), ports in
/// network order, the family.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    family: u8,
    pad: [u8; 3],
}

// SAFETY: FlowKey is `repr(C)`, made of byte arrays and bytes only (40 bytes, alignment 1,
// no padding: `pad` is an explicit field, always zero), so every bit pattern is a valid
// value and it can be copied to the kernel as raw bytes.
unsafe impl aya::Pod for FlowKey {}

impl FlowKey {
    /// `None` for addresses of two families.
    fn new(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Option<FlowKey> {
        let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
        let family = match (src, dst) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                s[..4].copy_from_slice(&a.octets());
                d[..4].copy_from_slice(&b.octets());
                4
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                s.copy_from_slice(&a.octets());
                d.copy_from_slice(&b.octets());
                6
            }
            _ => return None,
        };
        Some(FlowKey {
            src: s,
            dst: d,
            sport: sport.to_be_bytes(),
            dport: dport.to_be_bytes(),
            family,
            pad: [0; 3],
        })
    }

    /// The keys of both directions of the connection whose original tuple is
    /// `src:sport -> dst:dport`; `None` for addresses of two families.
    fn both(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Option<[FlowKey; 2]> {
        Some([
            FlowKey::new(src, dst, sport, dport)?,
            FlowKey::new(dst, src, dport, sport)?,
        ])
    }

    /// Source, destination and ports.
    fn ends(&self) -> (IpAddr, IpAddr, u16, u16) {
        let addr = |b: &[u8; 16]| -> IpAddr {
            if self.family == 4 {
                IpAddr::from([b[0], b[1], b[2], b[3]])
            } else {
                IpAddr::from(*b)
            }
        };
        (
            addr(&self.src),
            addr(&self.dst),
            u16::from_be_bytes(self.sport),
            u16::from_be_bytes(self.dport),
        )
    }
}

/// What the program keeps of a promoted direction (`struct flow_value` in fastpath.c):
/// its epoch, and the coarse monotonic second of its last packet.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowValue {
    epoch: u32,
    seen: u32,
}

// SAFETY: FlowValue is `repr(C)` of two u32 (8 bytes, no padding), so every bit pattern
// is a valid value and it can be copied to and from the kernel as raw bytes.
unsafe impl aya::Pod for FlowValue {}

/// The coarse monotonic clock in whole seconds, as the program reads it
/// (`bpf_ktime_get_coarse_ns`, CLOCK_MONOTONIC at tick resolution).
pub fn coarse_seconds() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and
    // CLOCK_MONOTONIC_COARSE is a clock every Linux kernel since 2.6.32 has.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u32
}

/// Where weft's route to another host's prefix sends packets: the device (the underlay
/// or `weft.vx`), the gateway (whose MAC the kernel's neighbour table gives) and the
/// route's MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteTarget {
    /// The device's ifindex.
    pub ifindex: u32,
    /// The gateway.
    pub gateway: IpAddr,
    /// The path MTU.
    pub mtu: u32,
}

/// A value of the `routes4` and `routes6` maps (`struct route` in fastpath.c).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct RouteValue {
    ifindex: u32,
    mtu: u32,
    family: u32,
    nh: [u8; 16],
}

// SAFETY: RouteValue is `repr(C)`: three u32 (12 bytes) followed by a byte array, so it
// has no padding (28 bytes, alignment 4) and every bit pattern is a valid value.
unsafe impl aya::Pod for RouteValue {}

impl From<RouteTarget> for RouteValue {
    fn from(t: RouteTarget) -> RouteValue {
        let mut nh = [0u8; 16];
        let family = match t.gateway {
            IpAddr::V4(a) => {
                nh[..4].copy_from_slice(&a.octets());
                2 // AF_INET
            }
            IpAddr::V6(a) => {
                nh = a.octets();
                10 // AF_INET6
            }
        };
        RouteValue {
            ifindex: t.ifindex,
            mtu: t.mtu,
            family,
            nh,
        }
    }
}

/// The loaded programs, their maps and their links.
pub struct FastPath {
    bpf: Ebpf,
    config_map: Array<MapData, Config>,
    /// What `config_map` holds.
    config: Config,
    devs_low: Array<MapData, u8>,
    devs: HashMap<MapData, u32, u8>,
    translated: HashMap<MapData, SockKey, u8>,
    isolated: HashMap<MapData, u32, u8>,
    isolated6: HashMap<MapData, [u8; 16], u8>,
    /// What the two `isolated` maps hold.
    isolated_now: BTreeSet<IpAddr>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    epoch_map: Array<MapData, u32>,
    /// The epoch promotions are made in now (never 0, which the program never honours).
    epoch: u32,
    /// One slot of counters per CPU ([`COUNTER_SLOTS`]).
    counters: Array<MapData, [u64; 8]>,
    routes4: LpmTrie<MapData, [u8; 4], RouteValue>,
    routes6: LpmTrie<MapData, [u8; 16], RouteValue>,
    /// What the two `routes` maps hold.
    routes_now: BTreeMap<IpNet, Option<RouteTarget>>,
    links: BTreeMap<Device, Vec<SchedClassifierLinkId>>,
    uplinks: BTreeSet<u32>,
    /// The underlay (ifindex, name) the uplink program is attached to, and its TCX link.
    underlay: Option<((u32, String), SchedClassifierLinkId)>,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("fast path: {what}: {e}")
}

impl FastPath {
    /// Loads the programs into the kernel (needs CAP_BPF and CAP_NET_ADMIN; kernel 6.6 or
    /// newer for TCX links).
    pub fn load() -> Result<FastPath, String> {
        let mut bpf = Ebpf::load(OBJECT).map_err(|e| err("loading the program", e))?;
        let mut take = |name: &str| {
            bpf.take_map(name)
                .ok_or_else(|| err("the object lacks a map", name))
        };
        let config_map = Array::try_from(take("config")?).map_err(|e| err("config", e))?;
        let devs_low = Array::try_from(take("devs_low")?).map_err(|e| err("devs_low", e))?;
        let devs = HashMap::try_from(take("devs")?).map_err(|e| err("devs", e))?;
        let translated =
            HashMap::try_from(take("translated")?).map_err(|e| err("translated", e))?;
        let isolated = HashMap::try_from(take("isolated")?).map_err(|e| err("isolated", e))?;
        let isolated6 = HashMap::try_from(take("isolated6")?).map_err(|e| err("isolated6", e))?;
        let flows = HashMap::try_from(take("flows")?).map_err(|e| err("flows", e))?;
        let mut epoch_map = Array::try_from(take("epoch")?).map_err(|e| err("epoch", e))?;
        epoch_map
            .set(0, 1, 0)
            .map_err(|e| err("setting the epoch", e))?;
        let counters = Array::try_from(take("counters")?).map_err(|e| err("counters", e))?;
        let routes4 = LpmTrie::try_from(take("routes4")?).map_err(|e| err("routes4", e))?;
        let routes6 = LpmTrie::try_from(take("routes6")?).map_err(|e| err("routes6", e))?;
        for name in [INGRESS, EGRESS, UPLINK] {
            let prog: &mut SchedClassifier = bpf
                .program_mut(name)
                .ok_or_else(|| err("the object lacks its program", name))?
                .try_into()
                .map_err(|e| err("program type", e))?;
            prog.load()
                .map_err(|e| err(&format!("the verifier refused {name}"), e))?;
        }
        Ok(FastPath {
            bpf,
            config_map,
            config: Config::default(),
            devs_low,
            devs,
            translated,
            isolated,
            isolated6,
            isolated_now: BTreeSet::new(),
            flows,
            epoch_map,
            epoch: 1,
            counters,
            routes4,
            routes6,
            routes_now: BTreeMap::new(),
            links: BTreeMap::new(),
            uplinks: BTreeSet::new(),
            underlay: None,
        })
    }

    fn prog(&mut self, name: &str) -> &mut SchedClassifier {
        self.bpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load")
    }

    /// Makes the program's pools exactly `pools` (at most [`MAX_POOLS`] of each family).
    pub fn set_pools(&mut self, pools: &[IpNet]) -> Result<(), String> {
        let want = self.config.with_pools(pools)?;
        self.write_config(want)
    }

    /// Writes the `config` element, if it changes. The program may read it while it is
    /// written, so it is written only when it changes (pools change at a restart, the
    /// `isolating` flag with the first and last isolated pod).
    fn write_config(&mut self, want: Config) -> Result<(), String> {
        if want != self.config {
            self.config_map
                .set(0, want, 0)
                .map_err(|e| err("writing the config", e))?;
            self.config = want;
        }
        Ok(())
    }

    /// Lists (`Some(kind)`) or unlists a device in the `devs` maps.
    fn set_dev(&mut self, ifindex: u32, kind: Option<u8>) -> Result<(), String> {
        if ifindex < DEVS_LOW {
            self.devs_low
                .set(ifindex, kind.unwrap_or(0), 0)
                .map_err(|e| e.to_string())
        } else if let Some(k) = kind {
            self.devs.insert(ifindex, k, 0).map_err(|e| e.to_string())
        } else {
            let _ = self.devs.remove(&ifindex);
            Ok(())
        }
    }

    /// Makes `routes` the routes the program follows for packets from this host's
    /// containers (weft's routes to other hosts' prefixes), each prefix with its target or
    /// `None`: a destination whose longest match is such a prefix, or that matches none,
    /// is looked up in the kernel's FIB. A route that changes is overwritten in place. A
    /// prefix whose write fails is removed (the FIB decides there), the others are still
    /// written, and the first error is returned.
    pub fn set_routes(
        &mut self,
        routes: &BTreeMap<IpNet, Option<RouteTarget>>,
    ) -> Result<(), String> {
        let routes: BTreeMap<IpNet, Option<RouteTarget>> =
            routes.iter().map(|(n, t)| (n.trunc(), *t)).collect();
        let mut first = None;
        for (&net, t) in &routes {
            if self.routes_now.get(&net) == Some(t) {
                continue;
            }
            let v = t.map(RouteValue::from).unwrap_or_default();
            match self.write_route(net, Some(v)) {
                Ok(()) => {
                    self.routes_now.insert(net, *t);
                }
                Err(e) => {
                    first.get_or_insert(err(&format!("the route to {net}"), e));
                    let _ = self.write_route(net, None);
                    self.routes_now.remove(&net);
                }
            }
        }
        let gone: Vec<IpNet> = self
            .routes_now
            .keys()
            .filter(|n| !routes.contains_key(n))
            .copied()
            .collect();
        for net in gone {
            if let Err(e) = self.write_route(net, None) {
                first.get_or_insert(err(&format!("removing the route to {net}"), e));
            }
            self.routes_now.remove(&net);
        }
        first.map_or(Ok(()), Err)
    }

    /// Writes (`Some`) or deletes the `routes` map entry of `net`.
    fn write_route(&mut self, net: IpNet, v: Option<RouteValue>) -> Result<(), MapError> {
        match (net, v) {
            (IpNet::V4(n), Some(v)) => {
                self.routes4
                    .insert(&Key::new(n.prefix_len().into(), n.network().octets()), v, 0)
            }
            (IpNet::V6(n), Some(v)) => {
                self.routes6
                    .insert(&Key::new(n.prefix_len().into(), n.network().octets()), v, 0)
            }
            (IpNet::V4(n), None) => self
                .routes4
                .remove(&Key::new(n.prefix_len().into(), n.network().octets())),
            (IpNet::V6(n), None) => self
                .routes6
                .remove(&Key::new(n.prefix_len().into(), n.network().octets())),
        }
    }

    /// The routes the program follows ([`FastPath::set_routes`]).
    pub fn routes(&self) -> impl Iterator<Item = (&IpNet, &Option<RouteTarget>)> {
        self.routes_now.iter()
    }

    /// Makes `ifindexes` the devices (besides `weft.vx`) the program may send packets out
    /// of: the underlay interface. Naming it here attaches nothing to it (that is
    /// [`FastPath::set_underlay`]).
    pub fn set_uplinks(&mut self, ifindexes: &[u32]) -> Result<(), String> {
        let want: BTreeSet<u32> = ifindexes.iter().copied().collect();
        for &gone in self.uplinks.clone().difference(&want) {
            let _ = self.set_dev(gone, None);
        }
        for &i in &want {
            self.set_dev(i, Some(DEV_UPLINK))
                .map_err(|e| err("adding the underlay", e))?;
        }
        self.uplinks = want;
        Ok(())
    }

    /// Attaches the program at ingress of `dev` (by name, resolved in this process's
    /// namespace), and at egress of a container veth, unless it is attached already.
    /// Until [`FastPath::enable`], the program only learns from the device's packets:
    /// it forwards none from or to it.
    ///
    /// `weft.vx` gets a TCX link (this process's file descriptor). A container veth gets
    /// classic tc filters (a `clsact` qdisc, priority and handle 0x77): the kernel tears
    /// those down asynchronously when the veth is deleted, whereas deleting a device with
    /// TCX links waits for an RCU grace period per direction (about 15 ms each here),
    /// which a CNI DEL would pay. They outlive an agent that crashed; the next agent
    /// replaces them ([`remove_leftovers`]): the agent removes them from every veth when
    /// it loads the program, and a veth on which an attach still fails (a filter of the
    /// same priority and handle is there) has them removed before a second try. Removing
    /// first on every attach would cost two filter dumps per container, under the lock
    /// the container runtimes' own link changes wait for.
    pub fn attach(&mut self, dev: Device) -> Result<(), String> {
        if self.links.contains_key(&dev) {
            return Ok(());
        }
        let ids = match self.attach_once(&dev) {
            Err(_) if dev.pod => {
                remove_leftovers(&dev.name);
                self.attach_once(&dev)?
            }
            res => res?,
        };
        self.links.insert(dev, ids);
        Ok(())
    }

    /// One try of [`FastPath::attach`]: all of the device's links, or none.
    fn attach_once(&mut self, dev: &Device) -> Result<Vec<SchedClassifierLinkId>, String> {
        let name = dev.name.clone();
        let mut ids: Vec<SchedClassifierLinkId> = Vec::new();
        let res = if dev.pod {
            match qdisc_add_clsact(&name) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    Err(err(&format!("adding the clsact qdisc to {name}"), e))
                }
                _ => Ok(()),
            }
            .and_then(|()| {
                for (prog, hook) in [
                    (INGRESS, TcAttachType::Ingress),
                    (EGRESS, TcAttachType::Egress),
                ] {
                    let opts = TcAttachOptions::Netlink(NlOptions {
                        priority: FILTER_PRIO,
                        handle: FILTER_HANDLE,
                    });
                    let id = self
                        .prog(prog)
                        .attach_with_options(&name, hook, opts)
                        .map_err(|e| err(&format!("attaching to {name}"), e))?;
                    ids.push(id);
                }
                Ok(())
            })
        } else {
            self.prog(INGRESS)
                .attach(&name, TcAttachType::Ingress)
                .map(|id| ids.push(id))
                .map_err(|e| err(&format!("attaching to {name}"), e))
        };
        if let Err(e) = res {
            let mut ids = ids.into_iter();
            if let Some(i) = ids.next() {
                let _ = self.prog(INGRESS).detach(i);
            }
            for e in ids {
                let _ = self.prog(EGRESS).detach(e);
            }
            return Err(e);
        }
        Ok(ids)
    }

    /// Attaches the uplink program at ingress of the underlay `dev` (ifindex, name), or
    /// detaches it (`None`): it delivers packets from other hosts' containers into this
    /// host's (enabled) containers past the stack, and passes everything else on to what
    /// runs after it. The underlay is not weft's, so the program gets only a TCX link, this
    /// process's file descriptor, placed after every program already there: nothing of the
    /// device's own configuration changes (no qdisc), and the link goes with this process,
    /// also when it crashes. Never attached through a classic tc filter, which would need a
    /// `clsact` qdisc on the device: a kernel without TCX (older than 6.6) gets an error.
    pub fn set_underlay(&mut self, dev: Option<(u32, &str)>) -> Result<(), String> {
        let now = self.underlay.as_ref().map(|((i, n), _)| (*i, n.as_str()));
        if now == dev {
            return Ok(());
        }
        if let Some((_, id)) = self.underlay.take() {
            let _ = self.prog(UPLINK).detach(id);
        }
        if let Some((ifindex, name)) = dev {
            let opts = TcAttachOptions::TcxOrder(LinkOrder::last());
            let id = self
                .prog(UPLINK)
                .attach_with_options(name, TcAttachType::Ingress, opts)
                .map_err(|e| err(&format!("attaching to the underlay {name} (TCX)"), e))?;
            self.underlay = Some(((ifindex, name.to_string()), id));
        }
        Ok(())
    }

    /// The underlay the uplink program is attached to ([`FastPath::set_underlay`]).
    pub fn underlay(&self) -> Option<&str> {
        self.underlay.as_ref().map(|((_, n), _)| n.as_str())
    }

    /// Lets the program forward packets from and to an attached device: a container veth
    /// (into which it delivers) or `weft.vx` (out of which it sends).
    pub fn enable(&mut self, dev: &Device) -> Result<(), String> {
        let v = if dev.pod { DEV_POD } else { DEV_UPLINK };
        self.set_dev(dev.ifindex, Some(v))
            .map_err(|e| err(&format!("enabling {}", dev.name), e))
    }

    /// Adds client sockets of translated connections (address, IP protocol, port), whose
    /// replies take the stack.
    pub fn remember(&mut self, sockets: &[(IpAddr, u8, u16)]) -> Result<(), String> {
        for &(a, proto, port) in sockets {
            self.translated
                .insert(SockKey::new(a, proto, port), 1, 0)
                .map_err(|e| err("remembering a translated socket", e))?;
        }
        Ok(())
    }

    /// Makes the program leave exactly the packets from or to `addrs` (pods a network
    /// policy isolates) to the stack.
    pub fn set_isolated(&mut self, addrs: &BTreeSet<IpAddr>) -> Result<(), String> {
        // The program looks the maps up only while `isolating` is set: it is set before
        // the first address goes in, and cleared after the last one is gone.
        if !addrs.is_empty() {
            self.write_config(Config {
                isolating: 1,
                ..self.config
            })?;
        }
        for a in addrs.difference(&self.isolated_now.clone()) {
            match a {
                // The program reads addresses in network order: the key is their bytes.
                IpAddr::V4(v4) => self.isolated.insert(u32::from_ne_bytes(v4.octets()), 1, 0),
                IpAddr::V6(v6) => self.isolated6.insert(v6.octets(), 1, 0),
            }
            .map_err(|e| err(&format!("isolating {a}"), e))?;
            self.isolated_now.insert(*a);
        }
        for a in self
            .isolated_now
            .difference(addrs)
            .copied()
            .collect::<Vec<_>>()
        {
            let _ = match a {
                IpAddr::V4(v4) => self.isolated.remove(&u32::from_ne_bytes(v4.octets())),
                IpAddr::V6(v6) => self.isolated6.remove(&v6.octets()),
            };
            self.isolated_now.remove(&a);
        }
        if self.isolated_now.is_empty() {
            self.write_config(Config {
                isolating: 0,
                ..self.config
            })?;
        }
        Ok(())
    }

    /// Lets the program forward the TCP segments of both directions of an established
    /// connection (its original tuple: source, destination, ports) from or to isolated
    /// pods, in the current epoch. The caller has made conntrack's entry accept segments
    /// it does not see first (docs/policy.md, "Established connections").
    pub fn promote(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
    ) -> Result<(), String> {
        let Some(keys) = FlowKey::both(src, dst, sport, dport) else {
            return Ok(());
        };
        let v = FlowValue {
            epoch: self.epoch,
            seen: coarse_seconds(),
        };
        for k in keys {
            self.flows
                .insert(k, v, 0)
                .map_err(|e| err("promoting a connection", e))?;
        }
        Ok(())
    }

    /// The promoted connections of the current epoch that had a packet here in the last
    /// `within` seconds, each once (by the ends of whichever direction was seen first).
    pub fn promoted_in_use(&self, within: u32) -> Vec<(IpAddr, IpAddr, u16, u16)> {
        let since = coarse_seconds().saturating_sub(within);
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (k, v) in self.flows.iter().filter_map(|e| e.ok()) {
            if v.epoch != self.epoch || v.seen < since {
                continue;
            }
            let (s, d, sp, dp) = k.ends();
            if seen.insert((s, sp, d, dp)) && !seen.contains(&(d, dp, s, sp)) {
                out.push((s, d, sp, dp));
            }
        }
        out
    }

    /// Withdraws the promotion of one connection (both directions; its ends as either
    /// direction has them).
    pub fn withdraw(&mut self, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) {
        for k in FlowKey::both(src, dst, sport, dport).into_iter().flatten() {
            let _ = self.flows.remove(&k);
        }
    }

    /// Withdraws every promotion at once: the program honours only the new epoch, whose
    /// promotions the caller makes again (those the policy still allows). Fails only if
    /// the kernel refuses the write; then the caller must not trust the old promotions.
    pub fn forget_promoted(&mut self) -> Result<(), String> {
        let next = self.epoch.wrapping_add(1).max(1);
        self.epoch_map
            .set(0, next, 0)
            .map_err(|e| err("moving the epoch on", e))?;
        self.epoch = next;
        Ok(())
    }

    /// Detaches from every device for which `keep` is false (devices that are gone: the
    /// kernel has detached those already, this releases their links).
    pub fn retain(&mut self, keep: impl Fn(&Device) -> bool) {
        let gone: Vec<Device> = self.links.keys().filter(|d| !keep(d)).cloned().collect();
        for d in gone {
            if let Some(ids) = self.links.remove(&d) {
                let mut ids = ids.into_iter();
                if let Some(i) = ids.next() {
                    let _ = self.prog(INGRESS).detach(i);
                }
                for e in ids {
                    let _ = self.prog(EGRESS).detach(e);
                }
            }
            let reused = self.links.keys().any(|o| o.ifindex == d.ifindex)
                || self.uplinks.contains(&d.ifindex);
            if !reused {
                let _ = self.set_dev(d.ifindex, None);
            }
        }
    }

    /// The devices the program is attached to.
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.links.keys()
    }

    /// The packet counters, summed over CPUs.
    pub fn counters(&self) -> Counters {
        // The slots of the CPUs there can be (CPUs past the last slot share slots).
        let slots = aya::util::nr_cpus().map_or(COUNTER_SLOTS, |n| n.min(COUNTER_SLOTS));
        let mut sum = [0u64; 8];
        for i in 0..slots as u32 {
            if let Ok(slot) = self.counters.get(&i, 0) {
                for (s, v) in sum.iter_mut().zip(slot) {
                    *s += v;
                }
            }
        }
        Counters {
            egress: sum[0],
            peer: sum[1],
            neigh: sum[2],
            pass: sum[3],
            stateful: sum[4],
            policy: sum[5],
            established: sum[6],
        }
    }
}

/// Removes weft's tc filters from container veth `ifname` that an earlier agent left (one
/// that crashed, or ran with the fast path on when this one runs with it off). Nothing to
/// remove is no error.
pub fn remove_leftovers(ifname: &str) {
    for (prog, hook) in [
        (INGRESS, TcAttachType::Ingress),
        (EGRESS, TcAttachType::Egress),
    ] {
        let _ = qdisc_detach_program(ifname, hook, prog);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_programs_layout_and_holds_the_pools() {
        assert_eq!(std::mem::size_of::<Config>(), 16 + 16 * 8 + 16 * 32);
        let pools: Vec<IpNet> = ["10.32.0.0/12", "fd32::/48", "192.168.7.0/24"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let c = Config {
            isolating: 1,
            ..Config::default()
        }
        .with_pools(&pools)
        .unwrap();
        assert_eq!((c.n4, c.n6, c.isolating), (2, 1, 1));
        assert_eq!(c.p4[0].addr, [10, 32, 0, 0]);
        assert_eq!(c.p4[0].mask, [255, 240, 0, 0]);
        assert_eq!(c.p4[1].addr, [192, 168, 7, 0]);
        assert_eq!(c.p6[0].addr[..6], [0xfd, 0x32, 0, 0, 0, 0]);
        assert_eq!(c.p6[0].mask[..7], [255, 255, 255, 255, 255, 255, 0]);
        // Host bits of a pool are not part of its address.
        let c = c.with_pools(&["10.32.1.5/16".parse().unwrap()]).unwrap();
        assert_eq!((c.n4, c.n6), (1, 0));
        assert_eq!(c.p4[0].addr, [10, 32, 0, 0]);
        assert_eq!(c.p4[1], Pool4::default());
        assert_eq!(c.p6[0], Pool6::default());
        // One pool too many of a family is refused, not cut short.
        let many: Vec<IpNet> = (0..=MAX_POOLS)
            .map(|i| format!("10.{i}.0.0/16").parse().unwrap())
            .collect();
        let e = Config::default().with_pools(&many).unwrap_err();
        assert!(e.contains("more than 16 pools"), "{e}");
        assert!(Config::default().with_pools(&many[..MAX_POOLS]).is_ok());
    }

    #[test]
    fn socket_keys_have_the_programs_layout() {
        assert_eq!(std::mem::size_of::<SockKey>(), 20);
        let k = SockKey::new("10.32.0.2".parse().unwrap(), 6, 80);
        assert_eq!(&k.addr[..4], &[10, 32, 0, 2]);
        assert!(k.addr[4..].iter().all(|b| *b == 0));
        assert_eq!(k.port, [0, 80]);
        assert_eq!((k.proto, k.family), (6, 4));
        let k6 = SockKey::new("fd32::1".parse().unwrap(), 17, 0x1234);
        assert_eq!(k6.addr[0], 0xfd);
        assert_eq!(k6.port, [0x12, 0x34]);
        assert_eq!(k6.family, 6);
    }

    #[test]
    fn flow_keys_have_the_programs_layout_and_read_back() {
        // struct flow_key: src[16] at 0, dst[16] at 16, sport at 32, dport at 34, family
        // at 36, three bytes of padding; struct flow_value: two u32.
        assert_eq!(std::mem::size_of::<FlowKey>(), 40);
        assert_eq!(std::mem::size_of::<FlowValue>(), 8);
        let (a, b) = ("10.32.0.2".parse().unwrap(), "10.40.0.7".parse().unwrap());
        let k = FlowKey::new(a, b, 40000, 80).unwrap();
        // SAFETY: FlowKey is repr(C) plain bytes (see its Pod impl): viewing it as its 40
        // bytes reads initialised memory of exactly its size.
        let raw: &[u8; 40] = unsafe { &*(&k as *const FlowKey as *const [u8; 40]) };
        assert_eq!(&raw[..4], &[10, 32, 0, 2]);
        assert_eq!(&raw[16..20], &[10, 40, 0, 7]);
        assert_eq!(&raw[32..37], &[0x9c, 0x40, 0, 80, 4]);
        assert!(raw[37..].iter().all(|b| *b == 0));
        assert_eq!(k.ends(), (a, b, 40000, 80));
        let (a6, b6) = ("fd32::2".parse().unwrap(), "fd32:0:0:1::7".parse().unwrap());
        let k6 = FlowKey::new(a6, b6, 1, 2).unwrap();
        assert_eq!((k6.family, k6.ends()), (6, (a6, b6, 1, 2)));
        // Two families make no key.
        assert!(FlowKey::new(a, b6, 1, 2).is_none());
    }
}
