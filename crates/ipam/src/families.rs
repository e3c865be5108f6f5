//! Dual stack: one [`Ipam`] engine per address family of the pools, side by side. Each
//! family's engine is the single-family engine the simulations check, with its own mesh
//! records (`ipam/` for the first family, `ipam6/` for IPv6 beside IPv4, see
//! [`crate::view::PREFIX6`]), its own
//! blocks, borrowing and reclaim, and its own persisted state. A container interface gets
//! one address of every family: [`Families::allocate`] succeeds only when every engine
//! answered, and a family whose pools are full fails the whole allocation (what it took
//! meanwhile is given back).

use std::collections::BTreeSet;
use std::net::IpAddr;

use weft_alloc::Owner;
use weft_mesh::{NodeId, Store};

use crate::{AllocError, Ipam, IpamConfig, Liveness, Persist, Write};

/// The engines of one node, IPv4 first.
#[derive(Debug, Clone)]
pub struct Families {
    engines: Vec<Ipam>,
}

impl Families {
    /// An engine for each family that has pools in `cfg`; `persisted` gives the saved
    /// state of a family's engine by its record prefix.
    pub fn new(
        id: NodeId,
        cfg: IpamConfig,
        mut persisted: impl FnMut(&'static str) -> Option<Persist>,
    ) -> Families {
        // The first family keeps `ipam/` (and its state file), so a single-family cluster,
        // IPv4 or IPv6, reads what it wrote before dual stack; a second family's engine
        // uses `ipam6/`.
        let engines = [false, true]
            .into_iter()
            .filter_map(|v6| cfg.space.family(v6))
            .enumerate()
            .map(|(i, space)| {
                let prefix = if i == 0 {
                    crate::view::PREFIX
                } else {
                    crate::view::PREFIX6
                };
                let c = IpamConfig {
                    space,
                    ..cfg.clone()
                };
                Ipam::new(id, c, persisted(prefix)).with_prefix(prefix)
            })
            .collect();
        Families { engines }
    }

    /// Every family's engine, IPv4 first.
    pub fn engines(&self) -> &[Ipam] {
        &self.engines
    }

    /// The first engine (IPv4 when there are IPv4 pools): the one whose view says whether
    /// the cluster has started.
    pub fn primary(&self) -> &Ipam {
        &self.engines[0]
    }

    /// Ready when every family's engine is.
    pub fn ready(&self) -> Result<(), AllocError> {
        self.engines.iter().try_for_each(|e| e.ready())
    }

    /// One address of every family for `owner` (the same ones again if it has them).
    pub fn allocate(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, AllocError> {
        let complete = self.is_complete(owner);
        let mut out = Vec::new();
        let mut wait = None;
        for e in self.engines.iter_mut() {
            match e.allocate(owner) {
                Ok(a) => out.push(a),
                Err(AllocError::Exhausted) => {
                    // No interface keeps half its addresses: give back what it has unless
                    // it had all of them before (then this cannot happen).
                    if !complete {
                        self.release(owner);
                    }
                    return Err(AllocError::Exhausted);
                }
                // The others go on (each asks for space at once); answered after a step.
                Err(other) => wait = wait.or(Some(other)),
            }
        }
        match wait {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// One address of the IPv6 (`v6`) or IPv4 family only, for `owner` (the same one again
    /// if it has it): for clients that ask per family, as Docker's IPAM protocol does.
    /// [`AllocError::Exhausted`] when the cluster has no pool of that family.
    pub fn allocate_family(&mut self, owner: &Owner, v6: bool) -> Result<IpAddr, AllocError> {
        let e = self
            .engines
            .iter_mut()
            .find(|e| e.config().space.family(v6).is_some())
            .ok_or(AllocError::Exhausted)?;
        e.allocate(owner)
    }

    /// True when `owner` holds an address of every family.
    pub fn is_complete(&self, owner: &Owner) -> bool {
        self.engines.iter().all(|e| e.lookup(owner).is_some())
    }

    /// Frees every address of `owner`; returns them.
    pub fn release(&mut self, owner: &Owner) -> Vec<IpAddr> {
        self.engines
            .iter_mut()
            .filter_map(|e| e.release(owner))
            .collect()
    }

    /// The addresses of `owner`, IPv4 first.
    pub fn lookup(&self, owner: &Owner) -> Vec<IpAddr> {
        self.engines
            .iter()
            .filter_map(|e| e.lookup(owner))
            .collect()
    }

    /// Every address used by a container here, with its owner.
    pub fn list(&self) -> Vec<(IpAddr, Owner)> {
        let mut v: Vec<(IpAddr, Owner)> = self.engines.iter().flat_map(|e| e.list()).collect();
        v.sort();
        v
    }

    /// Frees every address whose owner is not in `valid`; returns them.
    pub fn gc(&mut self, valid: &BTreeSet<Owner>) -> Vec<IpAddr> {
        self.engines.iter_mut().flat_map(|e| e.gc(valid)).collect()
    }

    /// One step of every engine; their writes together.
    pub fn step(&mut self, store: &Store, live: &dyn Liveness, now: u64) -> Vec<Write> {
        self.engines
            .iter_mut()
            .flat_map(|e| e.step(store, live, now))
            .collect()
    }

    /// Asks every engine for the removal of `x`.
    pub fn rmpeer(&mut self, x: NodeId, live: &dyn Liveness) -> Result<String, String> {
        let mut msgs = Vec::new();
        for e in self.engines.iter_mut() {
            msgs.push(e.rmpeer(x, live)?);
        }
        msgs.dedup();
        Ok(msgs.join("; "))
    }

    /// True if any engine's state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        self.engines
            .iter_mut()
            .fold(false, |acc, e| e.take_dirty() | acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Space;

    fn cfg(pools: &[&str]) -> IpamConfig {
        IpamConfig {
            space: Space::new(pools.iter().map(|p| p.parse().unwrap()).collect(), 30, 126).unwrap(),
            init: 1,
            grace_ms: 1000,
            reclaim_after_ms: 0,
            request_timeout_ms: 1000,
        }
    }

    /// A lone init node after its first step, and the keys it wrote.
    fn started(pools: &[&str]) -> (Families, Vec<String>) {
        let mut f = Families::new(NodeId([7; 16]), cfg(pools), |_| None);
        let live = |_: &NodeId| false;
        let keys = f
            .step(&Store::new(), &live, 0)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        f.ready().expect("a lone init node starts");
        (f, keys)
    }

    #[test]
    fn one_engine_per_family_with_its_own_records() {
        let (f, keys) = started(&["10.32.0.0/28", "fd32::/124"]);
        assert_eq!(f.engines().len(), 2);
        assert_eq!(f.engines()[0].prefix(), "ipam/");
        assert_eq!(f.engines()[1].prefix(), "ipam6/");
        assert!(keys.iter().any(|k| k == "ipam/genesis"), "{keys:?}");
        assert!(keys.iter().any(|k| k == "ipam6/genesis"), "{keys:?}");
        assert!(
            keys.iter()
                .all(|k| k.starts_with("ipam/") || k.starts_with("ipam6/")),
            "{keys:?}"
        );
        let (v4only, _) = started(&["10.32.0.0/28"]);
        assert_eq!(v4only.engines().len(), 1);
        // IPv6 alone keeps the records (and state file) it had before dual stack.
        let (v6only, _) = started(&["fd32::/124"]);
        assert_eq!(v6only.engines()[0].prefix(), "ipam/");
    }

    #[test]
    fn one_family_alone_for_clients_that_ask_per_family() {
        let (mut f, _) = started(&["10.32.0.0/28", "fd32::/124"]);
        let (o4, o6) = (
            Owner::new("docker:1", "eth0"),
            Owner::new("docker:2", "eth0"),
        );
        let a4 = f.allocate_family(&o4, false).unwrap();
        let a6 = f.allocate_family(&o6, true).unwrap();
        assert!(a4.is_ipv4() && a6.is_ipv6());
        assert_eq!(f.lookup(&o4), vec![a4], "only the family asked");
        assert_eq!(f.allocate_family(&o4, false).unwrap(), a4, "the same again");
        assert_eq!(f.release(&o6), vec![a6]);
        let (mut v4only, _) = started(&["10.32.0.0/28"]);
        assert_eq!(
            v4only.allocate_family(&o6, true),
            Err(AllocError::Exhausted),
            "no IPv6 pool"
        );
    }

    #[test]
    fn an_interface_gets_one_address_of_each_family_and_loses_both() {
        let (mut f, _) = started(&["10.32.0.0/28", "fd32::/124"]);
        let o = Owner::new("c1", "eth0");
        let a = f.allocate(&o).unwrap();
        assert_eq!(a.len(), 2);
        assert!(a[0].is_ipv4() && a[1].is_ipv6(), "{a:?}");
        assert_eq!(f.allocate(&o).unwrap(), a, "the same again");
        assert_eq!(f.lookup(&o), a);
        assert_eq!(f.list().len(), 2);
        assert_eq!(f.release(&o), a);
        assert!(f.lookup(&o).is_empty());
    }

    #[test]
    fn a_full_family_fails_the_allocation_and_gives_back_the_other() {
        // A /30 block of a /30 pool: two usable IPv4 addresses; IPv6 has plenty.
        let (mut f, _) = started(&["10.32.0.0/30", "fd32::/120"]);
        let owners: Vec<Owner> = (0..3)
            .map(|i| Owner::new(format!("c{i}"), "eth0"))
            .collect();
        assert!(f.allocate(&owners[0]).is_ok());
        assert!(f.allocate(&owners[1]).is_ok());
        assert_eq!(f.allocate(&owners[2]), Err(AllocError::Exhausted));
        assert!(
            f.lookup(&owners[2]).is_empty(),
            "no IPv6 address is left behind for the refused interface"
        );
        // Also when the other family's address came from an earlier call.
        let late = Owner::new("late", "eth0");
        f.engines[1].allocate(&late).unwrap();
        assert!(!f.is_complete(&late));
        assert_eq!(f.allocate(&late), Err(AllocError::Exhausted));
        assert!(f.lookup(&late).is_empty());
    }
}
