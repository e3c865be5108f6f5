//! weft's fast path, the thin loader of `bpf/fastpath.c` (built by `build.rs` with clang).
//!
//! The program runs at tc ingress of weft's own devices: the host-side veth of every weft
//! container, and `weft.vx`. A packet from a pool address to a pool address is forwarded
//! by a FIB lookup straight to its egress device, or into the destination container's
//! namespace, so it skips the host namespace's IP stack and its netfilter hooks; anything
//! else goes on to the stack unchanged. The agent owns one [`FastPath`]: the program is
//! loaded once, attached with TCX links that are file descriptors of this process (so an
//! agent that exits leaves nothing attached and traffic falls back to the stack), and
//! told the pools and the container veths through two maps. Design: docs/dataplane.md,
//! "Fast path".

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::tc::{SchedClassifierLinkId, TcAttachType};
use aya::programs::SchedClassifier;
use aya::Ebpf;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The compiled program (an ELF object for the kernel's BPF target).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.o"));
const PROGRAM: &str = "weft_fast";

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
}

/// A device the program is attached to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Device {
    pub ifindex: u32,
    pub name: String,
    /// A container's host-side veth (else `weft.vx`).
    pub pod: bool,
}

/// The loaded program, its maps and its links.
pub struct FastPath {
    bpf: Ebpf,
    pools: LpmTrie<MapData, u32, u8>,
    pods: HashMap<MapData, u32, u8>,
    counters: PerCpuArray<MapData, u64>,
    links: BTreeMap<Device, SchedClassifierLinkId>,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("fast path: {what}: {e}")
}

impl FastPath {
    /// Loads the program into the kernel (needs CAP_BPF and CAP_NET_ADMIN; kernel 6.6 or
    /// newer for TCX links).
    pub fn load() -> Result<FastPath, String> {
        let mut bpf = Ebpf::load(OBJECT).map_err(|e| err("loading the program", e))?;
        let mut take = |name: &str| {
            bpf.take_map(name)
                .ok_or_else(|| err("the object lacks a map", name))
        };
        let pools = LpmTrie::try_from(take("pools")?).map_err(|e| err("pools", e))?;
        let pods = HashMap::try_from(take("pods")?).map_err(|e| err("pods", e))?;
        let counters = PerCpuArray::try_from(take("counters")?).map_err(|e| err("counters", e))?;
        let prog: &mut SchedClassifier = bpf
            .program_mut(PROGRAM)
            .ok_or_else(|| err("the object lacks its program", PROGRAM))?
            .try_into()
            .map_err(|e| err("program type", e))?;
        prog.load().map_err(|e| err("the verifier refused it", e))?;
        Ok(FastPath {
            bpf,
            pools,
            pods,
            counters,
            links: BTreeMap::new(),
        })
    }

    fn prog(&mut self) -> &mut SchedClassifier {
        self.bpf
            .program_mut(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load")
    }

    /// Makes the pool map hold exactly `pools`.
    pub fn set_pools(&mut self, pools: &[Ipv4Net]) -> Result<(), String> {
        // The key's address is in network order, as the program reads it from the packet.
        let key = |n: &Ipv4Net| {
            Key::new(
                u32::from(n.prefix_len()),
                u32::from_ne_bytes(n.network().octets()),
            )
        };
        let want: BTreeSet<(u32, u32)> = pools
            .iter()
            .map(|n| {
                let k = key(n);
                (k.prefix_len(), k.data())
            })
            .collect();
        let have: Vec<Key<u32>> = self.pools.keys().filter_map(|k| k.ok()).collect();
        for k in have {
            if !want.contains(&(k.prefix_len(), k.data())) {
                self.pools
                    .remove(&k)
                    .map_err(|e| err("removing a pool", e))?;
            }
        }
        for n in pools {
            self.pools
                .insert(&key(n), 1, 0)
                .map_err(|e| err("adding a pool", e))?;
        }
        Ok(())
    }

    /// Attaches the program at ingress of `dev` (by name, resolved in this process's
    /// namespace), unless it is attached already.
    pub fn attach(&mut self, dev: Device) -> Result<(), String> {
        if self.links.contains_key(&dev) {
            return Ok(());
        }
        if dev.pod {
            self.pods
                .insert(dev.ifindex, 1, 0)
                .map_err(|e| err("adding a container veth", e))?;
        }
        let name = dev.name.clone();
        match self.prog().attach(&name, TcAttachType::Ingress) {
            Ok(id) => {
                self.links.insert(dev, id);
                Ok(())
            }
            Err(e) => {
                if dev.pod {
                    let _ = self.pods.remove(&dev.ifindex);
                }
                Err(err(&format!("attaching to {name}"), e))
            }
        }
    }

    /// Detaches from every device for which `keep` is false (devices that are gone: the
    /// kernel has detached those already, this releases their links).
    pub fn retain(&mut self, keep: impl Fn(&Device) -> bool) {
        let gone: Vec<Device> = self.links.keys().filter(|d| !keep(d)).cloned().collect();
        for d in gone {
            if let Some(id) = self.links.remove(&d) {
                let _ = self.prog().detach(id);
            }
            if d.pod && !self.links.keys().any(|o| o.pod && o.ifindex == d.ifindex) {
                let _ = self.pods.remove(&d.ifindex);
            }
        }
    }

    /// The devices the program is attached to.
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.links.keys()
    }

    /// The packet counters, summed over CPUs.
    pub fn counters(&self) -> Counters {
        let sum = |i: u32| {
            self.counters
                .get(&i, 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        Counters {
            egress: sum(0),
            peer: sum(1),
            neigh: sum(2),
            pass: sum(3),
        }
    }
}
