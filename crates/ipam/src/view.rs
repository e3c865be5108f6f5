//! Records and the materialized view: what this node knows of every block,
//! heir, take and lend, never shrunk when the mesh drops a gone node's records.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use weft_mesh::{NodeId, Store};

use crate::space::Space;

/// Key prefix of every IPAM record.
pub const PREFIX: &str = "ipam/";

/// The record prefix of the engine of an IPv6-only space (dual stack runs one engine per
/// family: the IPv4 pools' records under [`PREFIX`], the IPv6 pools' under this one).
pub const PREFIX6: &str = "ipam6/";

/// `ipam/cfg`: what a node would bootstrap with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CfgRec {
    /// Pools and block sizes.
    pub space: Space,
    /// Nodes that start the cluster.
    pub init: usize,
}

/// `ipam/genesis`: the agreed start: members in id order share the blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// Pools and block sizes.
    pub space: Space,
    /// Members, sorted.
    pub members: Vec<NodeId>,
}

impl Genesis {
    /// The genesis holder of block `k`.
    pub fn holder(&self, k: u64) -> NodeId {
        self.members[self.space.share_of(k, self.members.len())]
    }

    /// The share of `id`, if it is a member.
    pub fn share(&self, id: &NodeId) -> Option<(u64, u64)> {
        let i = self.members.iter().position(|m| m == id)?;
        Some(self.space.share(i, self.members.len()))
    }

    /// The ring successor of `id` (its heir), if it is a member.
    pub fn ring_next(&self, id: &NodeId) -> Option<NodeId> {
        let i = self.members.iter().position(|m| m == id)?;
        Some(self.members[(i + 1) % self.members.len()])
    }
}

/// `ipam/b/K`: the writer holds block K at `gen` (`to == None`), or gave it at
/// `gen` to `to` (which holds it at `gen + 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRec {
    /// Generation.
    pub gen: u64,
    /// The writer's incarnation when it started holding the block.
    pub inc: u64,
    /// Allocating from it and routing it.
    pub active: bool,
    /// Given to (node, its incarnation).
    pub to: Option<(NodeId, u64)>,
    /// Held by a take (reclaim), not received through a give: such a claim loses to a
    /// give chain at the same generation (the removed node may have given the block
    /// away in a record the taker never read).
    #[serde(default)]
    pub took: bool,
}

/// `ipam/took/X`: the writer took X's share at X's incarnation `inc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TookRec {
    /// X's incarnation taken (every block X held at this or an older one).
    pub inc: u64,
    /// The taker's own incarnation.
    pub by_inc: u64,
}

/// `ipam/ack/X`: X's heir answers X's `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRec {
    /// The incarnation answered.
    pub inc: u64,
    /// X was taken before this incarnation: it must drop its share.
    pub removed: bool,
}

/// `ipam/req`: the writer asks `to` for a block or for addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReqRec {
    /// Asked node.
    pub to: NodeId,
    /// Increases with every request of the writer.
    pub seq: u64,
    /// A whole block wanted.
    pub block: bool,
    /// Else this many addresses.
    pub addrs: u32,
    /// The writer's incarnation.
    pub inc: u64,
}

/// One lent address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Lend {
    /// The address.
    pub addr: IpAddr,
    /// The node that lent it first (its heir may list it later).
    pub lender: NodeId,
    /// The borrower's request that caused it.
    pub seq: u64,
}

/// `ipam/lent/B`: every address the writer lends to B now, and B's last
/// request it answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LentRec {
    /// Highest request seq of B answered (with or without space).
    pub served: u64,
    /// Lent addresses.
    pub lends: Vec<Lend>,
}

/// `ipam/borrowed`: what the writer borrowed and still holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorrowedRec {
    /// Lender → highest `served` of its `lent` record processed.
    pub seen: BTreeMap<NodeId, u64>,
    /// Borrowed addresses not given back.
    pub in_use: Vec<IpAddr>,
}

/// `ipam/use`: a summary for others' choices and for `weft ipam`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UseRec {
    /// Active blocks.
    pub active: u64,
    /// Reserve blocks.
    pub reserve: u64,
    /// Addresses allocated to own containers (own blocks and borrowed).
    pub used: u64,
    /// Free addresses in active blocks.
    pub free: u64,
    /// Addresses lent to others.
    pub lent: u64,
    /// Addresses borrowed.
    pub borrowed: u64,
    /// Allocating (confirmed by its heir).
    pub ready: bool,
}

/// The best known claim on a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Generation.
    pub gen: u64,
    /// Holder at that generation.
    pub holder: NodeId,
    /// Holder's incarnation when it got it.
    pub inc: u64,
    /// Active (as last written by the holder).
    pub active: bool,
    /// Written by the holder itself (wins over a give at the same generation).
    pub own: bool,
    /// Record version, orders writes of one writer.
    pub version: u64,
    /// For a give: the node that wrote it (the giver, or a taker relaying it).
    #[serde(default)]
    pub from: Option<NodeId>,
    /// Held by a take (see [`BlockRec::took`]).
    #[serde(default)]
    pub take: bool,
}

impl Claim {
    fn rank(&self) -> (u64, bool, bool, NodeId, u64) {
        (self.gen, !self.take, self.own, self.holder, self.version)
    }
}

/// A take as known here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Took {
    /// Incarnation taken.
    pub inc: u64,
    /// Taker.
    pub by: NodeId,
    /// Taker's incarnation.
    pub by_inc: u64,
}

/// The materialized view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Adopted genesis.
    pub genesis: Option<Genesis>,
    /// A second, different genesis seen (split brain by misconfiguration).
    pub conflict: Option<String>,
    /// Best claim per block (blocks absent here are held by their genesis holder).
    pub claims: BTreeMap<u64, Claim>,
    /// Heir designations (latest record): node → (heir, heir's incarnation).
    pub heirs: BTreeMap<NodeId, (NodeId, u64)>,
    /// Takes of each node, by the incarnation taken.
    pub took: BTreeMap<NodeId, BTreeMap<u64, Took>>,
    /// Latest `hello` incarnation of each node.
    pub hello: BTreeMap<NodeId, u64>,
    /// Latest `lent` records: (writer, borrower) → record.
    pub lends: BTreeMap<NodeId, BTreeMap<NodeId, LentRec>>,
    /// Store version merged per owner.
    seen: BTreeMap<NodeId, u64>,
}

fn parse<T: serde::de::DeserializeOwned>(v: &[u8]) -> Option<T> {
    serde_json::from_slice(v).ok()
}

impl View {
    /// Merges every record newer than what was merged. Returns true if anything changed.
    pub fn merge_store(&mut self, store: &Store, prefix: &str) -> bool {
        let mut changed = false;
        let owners: Vec<NodeId> = store.owners().copied().collect();
        for owner in owners {
            let Some(v) = store.version(&owner) else {
                continue;
            };
            if self.seen.get(&owner).is_some_and(|s| *s >= v) {
                continue;
            }
            // Only this engine's records, read in place (a host that wrote a thousand
            // policies holds a thousand records of its own that IPAM has no use for).
            let seen = self.seen.get(&owner).copied();
            for r in store.records_with_prefix(&owner, prefix) {
                if seen.is_some_and(|s| r.version <= s) {
                    continue;
                }
                if let Some(val) = r.value {
                    changed |= self.merge(&owner, &r.key[prefix.len()..], val, r.version);
                }
            }
            self.seen.insert(owner, v);
        }
        changed
    }

    /// Merges one record (key without the prefix).
    pub fn merge(&mut self, owner: &NodeId, key: &str, val: &[u8], version: u64) -> bool {
        if let Some(k) = key.strip_prefix("b/") {
            let (Ok(k), Some(rec)) = (k.parse::<u64>(), parse::<BlockRec>(val)) else {
                return false;
            };
            return self.merge_block(owner, k, rec, version);
        }
        if let Some(x) = key.strip_prefix("took/") {
            let (Ok(x), Some(t)) = (x.parse::<NodeId>(), parse::<TookRec>(val)) else {
                return false;
            };
            let new = Took {
                inc: t.inc,
                by: *owner,
                by_inc: t.by_inc,
            };
            let slot = self.took.entry(x).or_default();
            let changed = slot.get(&new.inc) != Some(&new);
            slot.entry(new.inc).or_insert(new);
            return changed;
        }
        if let Some(b) = key.strip_prefix("lent/") {
            let (Ok(b), Some(rec)) = (b.parse::<NodeId>(), parse::<LentRec>(val)) else {
                return false;
            };
            let slot = self.lends.entry(*owner).or_default();
            let changed = slot.get(&b) != Some(&rec);
            slot.insert(b, rec);
            return changed;
        }
        match key {
            "heir" => {
                let Some(h) = parse::<(NodeId, u64)>(val) else {
                    return false;
                };
                self.heirs.insert(*owner, h) != Some(h)
            }
            "hello" => {
                let Some(i) = parse::<u64>(val) else {
                    return false;
                };
                let cur = self.hello.entry(*owner).or_default();
                let changed = i > *cur;
                *cur = (*cur).max(i);
                changed
            }
            "genesis" => {
                let Some(g) = parse::<Genesis>(val) else {
                    return false;
                };
                self.adopt(g)
            }
            _ => false,
        }
    }

    /// Adopts a genesis; a second, different one is recorded as a conflict.
    pub fn adopt(&mut self, g: Genesis) -> bool {
        match &self.genesis {
            None => {
                self.genesis = Some(g);
                true
            }
            Some(cur) if *cur == g => false,
            Some(cur) => {
                if self.conflict.is_none() {
                    self.conflict = Some(format!(
                        "two geneses: {} members vs {} members (was `init` more than half of the starting nodes on every node?)",
                        cur.members.len(),
                        g.members.len()
                    ));
                    return true;
                }
                false
            }
        }
    }

    /// Merges a block record written by `owner`.
    pub fn merge_block(&mut self, owner: &NodeId, k: u64, rec: BlockRec, version: u64) -> bool {
        let claim = match rec.to {
            None => Claim {
                gen: rec.gen,
                holder: *owner,
                inc: rec.inc,
                active: rec.active,
                own: true,
                version,
                from: None,
                take: rec.took,
            },
            Some((to, to_inc)) => Claim {
                gen: rec.gen + 1,
                holder: to,
                inc: to_inc,
                active: false,
                own: false,
                version,
                from: Some(*owner),
                take: false,
            },
        };
        let better = self.claims.get(&k).is_none_or(|c| claim.rank() > c.rank());
        if better {
            self.claims.insert(k, claim);
        }
        better
    }

    /// The best claim on block `k` (the genesis one when no record is known).
    pub fn claim(&self, k: u64) -> Option<Claim> {
        if let Some(c) = self.claims.get(&k) {
            return Some(*c);
        }
        let g = self.genesis.as_ref()?;
        Some(Claim {
            gen: 0,
            holder: g.holder(k),
            inc: 0,
            active: false,
            own: true,
            version: 0,
            from: None,
            take: false,
        })
    }

    /// Follows takes from (node, inc) to the node that rightfully holds what it held.
    pub fn follow(&self, mut node: NodeId, mut inc: u64) -> (NodeId, u64) {
        for _ in 0..=self.took.len() {
            let next = self
                .took
                .get(&node)
                .and_then(|m| m.range(inc..).next())
                .map(|(_, t)| *t);
            match next {
                Some(t) if t.by != node => {
                    node = t.by;
                    inc = t.by_inc;
                }
                _ => break,
            }
        }
        (node, inc)
    }

    /// The node that rightfully holds block `k` now, as far as known here.
    pub fn holder(&self, k: u64) -> Option<NodeId> {
        let c = self.claim(k)?;
        Some(self.follow(c.holder, c.inc).0)
    }

    /// True if `x` was taken at incarnation `inc` or later.
    pub fn taken_at(&self, x: &NodeId, inc: u64) -> bool {
        self.took
            .get(x)
            .is_some_and(|m| m.range(inc..).next().is_some())
    }

    /// The latest incarnation of `x` that was taken.
    pub fn last_taken(&self, x: &NodeId) -> Option<u64> {
        self.took.get(x).and_then(|m| m.keys().next_back().copied())
    }

    /// The effective heir of `x`: its designated heir, or whoever took that
    /// heir, and so on. `None` when `x` has no heir or the chain comes back to `x`.
    pub fn effective_heir(&self, x: &NodeId) -> Option<NodeId> {
        let (h, inc) = *self.heirs.get(x)?;
        let (h, _) = self.follow(h, inc);
        (h != *x).then_some(h)
    }

    /// Every node this view has heard of.
    pub fn nodes(&self) -> std::collections::BTreeSet<NodeId> {
        let mut s: std::collections::BTreeSet<NodeId> = self.heirs.keys().copied().collect();
        s.extend(self.hello.keys().copied());
        s.extend(self.took.keys().copied());
        if let Some(g) = &self.genesis {
            s.extend(g.members.iter().copied());
        }
        s.extend(self.claims.values().map(|c| c.holder));
        s
    }
}
