//! One node's IPAM state machine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use weft_alloc::Owner;
use weft_mesh::NodeId;

use crate::space::Space;
use crate::view::{AckRec, BlockRec, Lend, ReqRec, TookRec, UseRec, View};

/// Settings of the IPAM engine (times in ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfig {
    /// Pools and block sizes.
    pub space: Space,
    /// Nodes that start the cluster together (more than half of them).
    pub init: usize,
    /// An empty active block goes back to reserve after this long.
    pub grace_ms: u64,
    /// A node down this long is reclaimed by its heir; 0 = never automatically.
    pub reclaim_after_ms: u64,
    /// An unanswered request is sent elsewhere after this long.
    pub request_timeout_ms: u64,
}

/// Why an allocation did not happen now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// Not allocating yet (no genesis, waiting for the heir, conflict): why.
    NotReady(String),
    /// Space was asked for from another node; try again after a step.
    Pending,
    /// No free address anywhere this node can see.
    Exhausted,
}

impl std::fmt::Display for AllocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllocError::NotReady(why) => write!(f, "cluster IPAM is not ready: {why}"),
            AllocError::Pending => write!(f, "waiting for another node to give space"),
            AllocError::Exhausted => write!(f, "every address of the pools is in use"),
        }
    }
}

/// What one of this node's addresses is used for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Use {
    /// A container here.
    Mine(Owner),
    /// Lent to another node.
    Lent {
        /// Borrower.
        to: NodeId,
        /// Borrower's incarnation.
        to_inc: u64,
        /// The lend.
        lend: Lend,
    },
}

/// What the engine keeps across restarts (the agent writes it before it
/// answers an allocation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persist {
    /// The node this state belongs to (absent in files of older versions).
    #[serde(default)]
    pub node: Option<NodeId>,
    /// Incarnation: bumped at every start with state.
    pub inc: u64,
    /// Holds or held space (must be confirmed by its heir after a restart).
    pub member: bool,
    /// The view.
    pub view: View,
    /// Own heir designation.
    pub heir: Option<(NodeId, u64)>,
    /// Own block records.
    pub blocks: BTreeMap<u64, BlockRec>,
    /// Addresses of own blocks in use.
    pub allocs: BTreeMap<IpAddr, Use>,
    /// Borrowed addresses, and the container using each.
    pub borrowed: BTreeMap<IpAddr, Option<Owner>>,
    /// Borrowed addresses: where the lend was seen (writer, lend seq).
    pub lent_by: BTreeMap<IpAddr, (NodeId, u64)>,
    /// Borrowed addresses given back, with the lend (writer, seq) not to take again.
    pub returned: BTreeMap<IpAddr, (NodeId, u64)>,
    /// Lender → highest `served` processed.
    pub seen_lends: BTreeMap<NodeId, u64>,
    /// Own takes.
    pub took: BTreeMap<NodeId, TookRec>,
    /// Own acks.
    pub acks: BTreeMap<NodeId, AckRec>,
    /// Own removal requests.
    pub rms: BTreeMap<NodeId, u64>,
    /// Own outstanding request and when it was made.
    pub req: Option<(ReqRec, u64)>,
    /// Highest request seq used.
    pub req_seq: u64,
    /// Borrower → highest request seq answered.
    pub served: BTreeMap<NodeId, u64>,
    /// Own bootstrap proposal.
    pub boot: Option<Vec<NodeId>>,
    /// Last address handed out (round robin).
    pub cursor: Option<IpAddr>,
    /// Active block → empty since.
    pub empty_since: BTreeMap<u64, u64>,
    /// Blocks taken from a removed node and not used yet → when taken (see
    /// [`QUARANTINE_MS`]).
    #[serde(default)]
    pub quarantine: BTreeMap<u64, u64>,
}

/// A block taken from a removed node is neither activated nor given for this long
/// after the take, and until every node not removed is up: a give the removed node
/// wrote and its taker never read surfaces first (the receiver's claim wins over the
/// take, see `BlockRec::took`).
pub const QUARANTINE_MS: u64 = 10_000;

/// The IPAM engine of one node.
#[derive(Debug, Clone)]
pub struct Ipam {
    pub(crate) id: NodeId,
    pub(crate) cfg: IpamConfig,
    pub(crate) st: Persist,
    pub(crate) confirmed: bool,
    pub(crate) waiting: BTreeSet<Owner>,
    pub(crate) down_since: BTreeMap<NodeId, u64>,
    pub(crate) last_use: BTreeMap<NodeId, UseRec>,
    pub(crate) dirty: bool,
    pub(crate) prefix: &'static str,
}

/// Liveness of other nodes as the mesh sees them.
pub trait Liveness {
    /// True if `id` is reachable now.
    fn is_up(&self, id: &NodeId) -> bool;
}

impl<F: Fn(&NodeId) -> bool> Liveness for F {
    fn is_up(&self, id: &NodeId) -> bool {
        self(id)
    }
}

impl Ipam {
    /// An engine; `persisted` is what [`Ipam::persist`] returned before a
    /// restart. A restarted member allocates nothing until its heir confirms it.
    pub fn new(id: NodeId, cfg: IpamConfig, persisted: Option<Persist>) -> Ipam {
        let (st, confirmed) = match persisted {
            Some(mut st) => {
                st.inc += 1;
                st.node = Some(id);
                let confirmed = !st.member;
                (st, confirmed)
            }
            None => (
                Persist {
                    node: Some(id),
                    inc: 1,
                    ..Persist::default()
                },
                true,
            ),
        };
        Ipam {
            id,
            cfg,
            st,
            confirmed,
            waiting: BTreeSet::new(),
            down_since: BTreeMap::new(),
            last_use: BTreeMap::new(),
            dirty: true,
            prefix: crate::view::PREFIX,
        }
    }

    /// The prefix of this engine's mesh records: `ipam/`, or `ipam6/` for the IPv6 engine
    /// beside an IPv4 one (see [`crate::view::PREFIX6`]).
    pub fn prefix(&self) -> &'static str {
        self.prefix
    }

    /// The same engine writing and reading its records under `prefix`.
    pub fn with_prefix(mut self, prefix: &'static str) -> Ipam {
        self.prefix = prefix;
        self
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The settings.
    pub fn config(&self) -> &IpamConfig {
        &self.cfg
    }

    /// The state to persist.
    pub fn persist(&self) -> &Persist {
        &self.st
    }

    /// The view.
    pub fn view(&self) -> &View {
        &self.st.view
    }

    /// True once allocations may be made (genesis known, confirmed by the heir, no conflict).
    pub fn ready(&self) -> Result<(), AllocError> {
        if let Some(c) = &self.st.view.conflict {
            return Err(AllocError::NotReady(c.clone()));
        }
        let Some(g) = &self.st.view.genesis else {
            return Err(AllocError::NotReady(format!(
                "waiting for {} node(s) with the same pools to agree on a start (init = {})",
                self.cfg.init, self.cfg.init
            )));
        };
        if g.space != self.cfg.space {
            return Err(AllocError::NotReady(
                "this node's pools or block sizes differ from the cluster's".into(),
            ));
        }
        if !self.confirmed {
            let who = self
                .st
                .view
                .effective_heir(&self.id)
                .map(|h| h.to_string())
                .unwrap_or_else(|| "?".into());
            return Err(AllocError::NotReady(format!(
                "restarted; waiting for heir {who} to confirm this node was not removed"
            )));
        }
        Ok(())
    }

    /// Allocating (see [`Ipam::ready`]).
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// Blocks this node holds, with their active flag, in index order.
    pub fn held_blocks(&self) -> Vec<(u64, bool)> {
        let v = &self.st.view;
        let Some(g) = &v.genesis else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        // Genesis shares that end up here (own, or of nodes taken by us).
        for (i, m) in g.members.iter().enumerate() {
            if v.follow(*m, 0).0 != self.id {
                continue;
            }
            let (lo, hi) = g.space.share(i, g.members.len());
            for k in lo..hi {
                if !v.claims.contains_key(&k) {
                    seen.insert(k);
                    out.push((k, false));
                }
            }
        }
        for (k, c) in &v.claims {
            if !seen.contains(k) && v.follow(c.holder, c.inc).0 == self.id {
                let active = c.holder == self.id && c.active;
                out.push((*k, active));
            }
        }
        out.sort_unstable();
        out
    }

    /// How many blocks this node holds, and how many of them are active: the counts of
    /// [`Ipam::held_blocks`] without listing every unclaimed block of its genesis shares
    /// (a node's share of a /12 in /26 blocks is 16,384 blocks, and the counts are
    /// published with every change of its use).
    pub fn held_counts(&self) -> (u64, u64) {
        let v = &self.st.view;
        let Some(g) = &v.genesis else {
            return (0, 0);
        };
        let mut held = 0u64;
        for (i, m) in g.members.iter().enumerate() {
            if v.follow(*m, 0).0 != self.id {
                continue;
            }
            let (lo, hi) = g.space.share(i, g.members.len());
            held += (hi - lo) - v.claims.range(lo..hi).count() as u64;
        }
        let mut active = 0u64;
        for c in v.claims.values() {
            if v.follow(c.holder, c.inc).0 == self.id {
                held += 1;
                if c.holder == self.id && c.active {
                    active += 1;
                }
            }
        }
        (held, active)
    }

    /// Blocks taken from a removed node and still in quarantine (held, but
    /// neither used nor given yet).
    pub fn quarantined(&self) -> Vec<u64> {
        self.st.quarantine.keys().copied().collect()
    }

    fn holds(&self, k: u64) -> bool {
        self.st.view.holder(k) == Some(self.id)
    }

    /// Generation this node writes for block `k` it holds.
    pub(crate) fn gen_for(&self, k: u64) -> u64 {
        let c = self.st.view.claim(k).expect("genesis");
        if c.holder == self.id {
            c.gen
        } else {
            c.gen + 1
        }
    }

    /// The take flag of a record this node writes for block `k` it holds: kept
    /// while the block stays at the generation it was taken at.
    pub(crate) fn took_flag(&self, k: u64) -> bool {
        self.st
            .view
            .claims
            .get(&k)
            .is_some_and(|c| c.holder == self.id && c.own && c.take)
    }

    pub(crate) fn set_block(&mut self, k: u64, rec: BlockRec) {
        self.st.blocks.insert(k, rec);
        // Own records enter the view at once: never act on a block given away.
        let version = self.st.view.claims.get(&k).map_or(0, |c| c.version) + 1;
        let id = self.id;
        self.st.view.merge_block(&id, k, rec, version);
        self.dirty = true;
    }

    pub(crate) fn active_blocks(&self) -> Vec<u64> {
        self.st
            .blocks
            .iter()
            .filter(|(k, b)| {
                b.to.is_none() && b.active && self.holds(**k) && !self.st.quarantine.contains_key(k)
            })
            .map(|(k, _)| *k)
            .collect()
    }

    fn free_in(&self, k: u64) -> impl Iterator<Item = IpAddr> + '_ {
        self.cfg
            .space
            .addrs(k)
            .into_iter()
            .filter(|a| !self.st.allocs.contains_key(a))
    }

    fn first_free(&self) -> Option<IpAddr> {
        let mut first = None;
        for k in self.active_blocks() {
            for a in self.free_in(k) {
                if self.st.cursor.is_none_or(|c| a > c) {
                    return Some(a);
                }
                first = first.or(Some(a));
            }
        }
        first
    }

    fn activate_reserve(&mut self) -> bool {
        let Some((k, _)) = self
            .held_blocks()
            .into_iter()
            .find(|(k, a)| !a && !self.st.quarantine.contains_key(k))
        else {
            // (a reserve block with lent addresses in it is activated by accept_blocks)
            return false;
        };
        let rec = BlockRec {
            gen: self.gen_for(k),
            inc: self.st.inc,
            active: true,
            to: None,
            took: self.took_flag(k),
        };
        self.set_block(k, rec);
        true
    }

    /// The address of `owner`, if it has one here.
    pub fn lookup(&self, owner: &Owner) -> Option<IpAddr> {
        let mine = |u: &Use| matches!(u, Use::Mine(o) if o == owner);
        self.st
            .allocs
            .iter()
            .find(|(_, u)| mine(u))
            .map(|(a, _)| *a)
            .or_else(|| {
                self.st
                    .borrowed
                    .iter()
                    .find(|(_, o)| o.as_ref() == Some(owner))
                    .map(|(a, _)| *a)
            })
    }

    /// Every address used by a container here, with its owner.
    pub fn list(&self) -> Vec<(IpAddr, Owner)> {
        let mut out: Vec<(IpAddr, Owner)> = self
            .st
            .allocs
            .iter()
            .filter_map(|(a, u)| match u {
                Use::Mine(o) => Some((*a, o.clone())),
                Use::Lent { .. } => None,
            })
            .collect();
        out.extend(
            self.st
                .borrowed
                .iter()
                .filter_map(|(a, o)| o.clone().map(|o| (*a, o))),
        );
        out.sort();
        out
    }

    /// Allocates an address for `owner` (the same one again if it has one).
    pub fn allocate(&mut self, owner: &Owner) -> Result<IpAddr, AllocError> {
        if let Some(a) = self.lookup(owner) {
            return Ok(a);
        }
        self.ready()?;
        let mut tries = 0;
        loop {
            if let Some(a) = self.first_free() {
                self.st.allocs.insert(a, Use::Mine(owner.clone()));
                self.st.cursor = Some(a);
                self.waiting.remove(owner);
                self.dirty = true;
                return Ok(a);
            }
            if let Some((a, slot)) = self.st.borrowed.iter_mut().find(|(_, o)| o.is_none()) {
                *slot = Some(owner.clone());
                let a = *a;
                self.waiting.remove(owner);
                self.dirty = true;
                return Ok(a);
            }
            tries += 1;
            if tries > 1 || !self.activate_reserve() {
                break;
            }
        }
        self.waiting.insert(owner.clone());
        if self.st.req.is_none() && self.candidates_exhausted() {
            self.waiting.remove(owner);
            return Err(AllocError::Exhausted);
        }
        Err(AllocError::Pending)
    }

    fn candidates_exhausted(&self) -> bool {
        !self.last_use.values().any(|u| u.reserve > 0 || u.free > 0)
    }

    /// Frees the address of `owner`; returns it.
    pub fn release(&mut self, owner: &Owner) -> Option<IpAddr> {
        self.waiting.remove(owner);
        let own = self
            .st
            .allocs
            .iter()
            .find(|(_, u)| matches!(u, Use::Mine(o) if o == owner))
            .map(|(a, _)| *a);
        if let Some(a) = own {
            self.st.allocs.remove(&a);
            self.dirty = true;
            return Some(a);
        }
        let borrowed = self
            .st
            .borrowed
            .iter()
            .find(|(_, o)| o.as_ref() == Some(owner))
            .map(|(a, _)| *a);
        if let Some(a) = borrowed {
            self.st.borrowed.remove(&a);
            if let Some(from) = self.st.lent_by.remove(&a) {
                self.st.returned.insert(a, from);
            }
            self.dirty = true;
        }
        borrowed
    }

    /// Frees every container address whose owner is not in `valid`; returns them.
    pub fn gc(&mut self, valid: &BTreeSet<Owner>) -> Vec<IpAddr> {
        let stale: Vec<Owner> = self
            .list()
            .into_iter()
            .map(|(_, o)| o)
            .filter(|o| !valid.contains(o))
            .collect();
        stale.iter().filter_map(|o| self.release(o)).collect()
    }

    /// Asks for the removal of `x` (`weft rmpeer`). Refused for this node,
    /// for a node the mesh sees up, and for a node never heard of.
    pub fn rmpeer(&mut self, x: NodeId, live: &dyn Liveness) -> Result<String, String> {
        if x == self.id {
            return Err("a node cannot remove itself; run rmpeer on another node".into());
        }
        if live.is_up(&x) {
            return Err(format!("{x} is up; stop it before removing it"));
        }
        let v = &self.st.view;
        if !v.nodes().contains(&x) {
            return Err(format!("{x} is not known to the cluster's IPAM"));
        }
        let inc = v.hello.get(&x).copied().unwrap_or(0);
        if v.taken_at(&x, inc.max(1)) {
            return Ok(format!("{x} is already removed"));
        }
        self.st.rms.insert(x, inc);
        self.dirty = true;
        let heir = v
            .effective_heir(&x)
            .map(|h| h.to_string())
            .unwrap_or_else(|| "none".into());
        Ok(format!(
            "removal of {x} requested; its heir {heir} takes its space"
        ))
    }

    /// True if the state changed since the last call (the caller persists then).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }
}
