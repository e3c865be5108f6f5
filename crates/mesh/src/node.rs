//! The per-node state machine.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::message::GONE_BIT;
use crate::{routes, Message, NodeId, Record, Store};

/// Key of the record in which each node publishes the NodeIds it is connected to.
pub const LINKS_KEY: &str = "links";

/// Records per update message when many are written at once.
pub const BATCH: usize = 256;

/// Cuts a delta into messages of about `budget` bytes of records each, between owners:
/// an owner's range always travels whole in one message (one owner alone may be more than
/// the budget), so every message is itself a delta a receiver can take, and a receiver
/// holds each owner complete up to its version at all times. Cutting within an owner's
/// range broke that (a receiver between two parts would hold the owner at the first
/// part's last version without the keys rewritten later), and the IPAM simulation found
/// an address handed out twice.
pub fn deltas(base: &BTreeMap<NodeId, u64>, records: Vec<Record>, budget: usize) -> Vec<Message> {
    let mut by_owner: BTreeMap<NodeId, Vec<Record>> = BTreeMap::new();
    for r in records {
        by_owner.entry(r.owner).or_default().push(r);
    }
    let mut out = Vec::new();
    let mut cur_base = BTreeMap::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for (owner, rs) in by_owner {
        let n: usize = rs
            .iter()
            .map(|r| r.key.len() + r.value.as_ref().map_or(0, Vec::len) + 32)
            .sum();
        if !cur.is_empty() && size + n > budget {
            out.push(Message::Delta {
                base: std::mem::take(&mut cur_base),
                records: std::mem::take(&mut cur),
            });
            size = 0;
        }
        if let Some(b) = base.get(&owner) {
            cur_base.insert(owner, *b);
        }
        size += n;
        cur.extend(rs);
    }
    if !cur.is_empty() {
        out.push(Message::Delta {
            base: cur_base,
            records: cur,
        });
    }
    out
}

/// Encodes a set of NodeIds as the value of a `links` record: their 16 bytes
/// each, concatenated in order.
pub fn encode_links<'a>(ids: impl IntoIterator<Item = &'a NodeId>) -> Vec<u8> {
    ids.into_iter().flat_map(|id| id.0).collect()
}

/// Decodes the value of a `links` record; `None` if its length is not a multiple of 16.
pub fn decode_links(bytes: &[u8]) -> Option<BTreeSet<NodeId>> {
    if !bytes.len().is_multiple_of(16) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(16)
            .map(|c| NodeId(c.try_into().expect("16 bytes")))
            .collect(),
    )
}

/// Timing parameters of a node, all in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshConfig {
    /// A node unreachable for this long is declared gone (default 5 min).
    pub down_after_ms: u64,
    /// Owner tombstones are collected after this long (default 24 h).
    pub gc_after_ms: u64,
    /// Anti-entropy period: digests are sent at most this often (default 1 s).
    pub ae_period_ms: u64,
    /// The size a delta message is cut at (estimated bytes of its records; default
    /// 1 MiB): a node's whole state may be far beyond what one frame of the wire may
    /// carry (16 MiB), so a snapshot travels as several deltas, each a complete range.
    pub delta_bytes: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            down_after_ms: 5 * 60 * 1000,
            gc_after_ms: 24 * 60 * 60 * 1000,
            ae_period_ms: 1000,
            delta_bytes: 1 << 20,
        }
    }
}

/// What a node keeps across a restart: its own records and version counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The last version the node used for its own writes.
    pub counter: u64,
    /// The node's own records (tombstones of keys included).
    pub records: Vec<Record>,
}

/// Liveness of a node as seen from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Reachable in the graph of links (or this node itself).
    Up,
    /// Known but not reachable, since the given time (ms).
    Down {
        /// When it was first seen unreachable.
        since: u64,
    },
    /// Down for longer than `down_after`: its records were dropped.
    Gone,
    /// Never heard of (or its tombstone was collected).
    Unknown,
}

/// An effect the caller must perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `msg` to the connected peer `to`.
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: Message,
    },
    /// [`Node::next_hops`] changed; the caller should reprogram its routes.
    RoutesChanged,
}

/// The mesh state machine of one node. Sans-IO: the caller reports
/// connections, delivers messages, calls [`Node::tick`] periodically, and
/// performs the returned [`Output`]s.
///
/// Routes (and therefore reachability and liveness) are recomputed in
/// [`Node::tick`], at most once per tick, and only when a `links` record
/// changed since the last computation (coalesced): between ticks
/// [`Node::next_hops`] reflects the graph as of the last tick.
///
/// Invariant kept by the protocol: for every live owner, the store holds the
/// owner's latest record of every key up to the store's version for it
/// (*complete up to its vector*), so equal vectors mean equal stores.
#[derive(Debug, Clone)]
pub struct Node {
    id: NodeId,
    config: MeshConfig,
    store: Store,
    counter: u64,
    peers: BTreeSet<NodeId>,
    routes: routes::Routes,
    routes_dirty: bool,
    down_since: BTreeMap<NodeId, u64>,
    last_ae: Option<u64>,
}

impl Node {
    /// A node with identity `id`; `persisted` is what [`Node::persisted`]
    /// returned before a restart (its own records and counter), `None` on
    /// first start. A restarted node starts with no connections, so it
    /// republishes an empty `links` record.
    pub fn new(id: NodeId, config: MeshConfig, persisted: Option<Persisted>) -> Node {
        let mut node = Node {
            id,
            config,
            store: Store::new(),
            counter: 0,
            peers: BTreeSet::new(),
            routes: routes::Routes::default(),
            routes_dirty: true,
            down_since: BTreeMap::new(),
            last_ae: None,
        };
        if let Some(p) = persisted {
            node.counter = p.counter;
            for r in p.records.into_iter().filter(|r| r.owner == id) {
                node.counter = node.counter.max(r.version);
                node.store.merge(r);
            }
            let links_empty = matches!(node.store.get(&id, LINKS_KEY), None | Some(Some(&[])));
            if !links_empty {
                node.set_local(LINKS_KEY, Some(Vec::new()), 0);
            }
        }
        node.recompute_routes();
        node
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configuration.
    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    /// The replicated store as held here.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The connected peers.
    pub fn peers(&self) -> &BTreeSet<NodeId> {
        &self.peers
    }

    /// The version counter of this node's own writes (with [`Store::records_ref`] of its
    /// own id, what [`Node::persisted`] copies).
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// What to persist: own records and version counter.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            counter: self.counter,
            records: self.store.records_of(&self.id),
        }
    }

    /// Destination → next hop, as of the last route computation.
    pub fn next_hops(&self) -> &BTreeMap<NodeId, NodeId> {
        &self.routes.next_hops
    }

    /// Destination → hop count, as of the last route computation.
    pub fn distances(&self) -> &BTreeMap<NodeId, u32> {
        &self.routes.distance
    }

    /// The nodes reachable from here (self excluded).
    pub fn reachable(&self) -> BTreeSet<NodeId> {
        self.routes.next_hops.keys().copied().collect()
    }

    /// Liveness of `node` as seen from here.
    pub fn status(&self, node: &NodeId) -> Status {
        if *node == self.id || self.routes.next_hops.contains_key(node) {
            Status::Up
        } else if self.store.tombstone(node).is_some() {
            Status::Gone
        } else if let Some(&since) = self.down_since.get(node) {
            Status::Down { since }
        } else {
            Status::Unknown
        }
    }

    /// The digest this node sends (hash of its version vector).
    pub fn digest(&self) -> u64 {
        self.store.digest()
    }

    /// The vector this node advertises: live owners at their version, gone
    /// owners at their tombstone version with [`GONE_BIT`].
    pub fn advertised_vector(&self) -> BTreeMap<NodeId, u64> {
        let mut v = self.store.vector();
        for (o, t) in self.store.tombstones() {
            v.insert(*o, t.version | GONE_BIT);
        }
        v
    }

    /// Writes an own record with the next version and pushes it to every peer.
    pub fn set_local(&mut self, key: &str, value: Option<Vec<u8>>, now: u64) -> Vec<Output> {
        let _ = now;
        self.counter += 1;
        let rec = Record {
            owner: self.id,
            key: key.to_string(),
            version: self.counter,
            value,
        };
        self.store.merge(rec.clone());
        if key == LINKS_KEY {
            self.routes_dirty = true;
        }
        self.peers
            .iter()
            .map(|p| Output::Send {
                to: *p,
                msg: Message::Update(vec![rec.clone()]),
            })
            .collect()
    }

    /// Writes several own records, each with the next version, and pushes them to every
    /// peer together: one update message per peer (of at most [`BATCH`] records each)
    /// instead of one per record, which a peer forwards as one too. A thousand objects
    /// written at once cost the mesh a few messages, not a thousand per link.
    pub fn set_local_many(
        &mut self,
        writes: Vec<(String, Option<Vec<u8>>)>,
        now: u64,
    ) -> Vec<Output> {
        let _ = now;
        let mut recs = Vec::with_capacity(writes.len());
        for (key, value) in writes {
            self.counter += 1;
            let rec = Record {
                owner: self.id,
                key,
                version: self.counter,
                value,
            };
            self.store.merge(rec.clone());
            if rec.key == LINKS_KEY {
                self.routes_dirty = true;
            }
            recs.push(rec);
        }
        let mut out = Vec::new();
        for chunk in recs.chunks(BATCH) {
            for p in &self.peers {
                out.push(Output::Send {
                    to: *p,
                    msg: Message::Update(chunk.to_vec()),
                });
            }
        }
        out
    }

    fn publish_links(&mut self, now: u64) -> Vec<Output> {
        let links = encode_links(&self.peers);
        self.set_local(LINKS_KEY, Some(links), now)
    }

    /// A connection to `peer` is established: publishes the new `links` and
    /// starts anti-entropy with it.
    pub fn peer_connected(&mut self, peer: NodeId, now: u64) -> Vec<Output> {
        if peer == self.id || !self.peers.insert(peer) {
            return Vec::new();
        }
        let mut out = self.publish_links(now);
        out.push(Output::Send {
            to: peer,
            msg: Message::Digest(self.digest()),
        });
        out
    }

    /// The connection to `peer` is gone: publishes the new `links`.
    pub fn peer_disconnected(&mut self, peer: NodeId, now: u64) -> Vec<Output> {
        if !self.peers.remove(&peer) {
            return Vec::new();
        }
        self.publish_links(now)
    }

    /// Handles one message from the connected peer `from`.
    pub fn on_message(&mut self, from: NodeId, msg: Message, now: u64) -> Vec<Output> {
        match msg {
            Message::Digest(h) => {
                if h == self.digest() {
                    Vec::new()
                } else {
                    vec![Output::Send {
                        to: from,
                        msg: Message::Vector(self.advertised_vector()),
                    }]
                }
            }
            Message::Vector(v) => self.on_vector(from, v, now),
            Message::Update(records) => self.on_update(from, records),
            Message::Delta { base, records } => self.on_delta(from, base, records),
            // The agent's tunnel takes these before the mesh sees them.
            Message::Tunnel(_) => Vec::new(),
        }
    }

    fn on_vector(&mut self, from: NodeId, theirs: BTreeMap<NodeId, u64>, now: u64) -> Vec<Output> {
        let mut base = BTreeMap::new();
        let mut records = Vec::new();
        let mut adopt = Vec::new();
        for (owner, mine) in self.store.vector() {
            let from_version = match theirs.get(&owner) {
                None => Some(0),
                Some(&e) if e & GONE_BIT == 0 => (e < mine).then_some(e),
                Some(&e) => {
                    let t = e & !GONE_BIT;
                    if owner == self.id || self.routes.next_hops.contains_key(&owner) {
                        // Up here: a vouched full snapshot lifts their tombstone.
                        Some(GONE_BIT)
                    } else {
                        // Down here too (as of a route computation that is
                        // current) and they hold it gone: agree.
                        if !self.routes_dirty && self.down_since.contains_key(&owner) {
                            adopt.push((owner, t));
                        }
                        None
                    }
                }
            };
            if let Some(b) = from_version {
                base.insert(owner, b);
                records.extend(self.store.records_after(&owner, b & !GONE_BIT));
            }
        }
        for (owner, t) in adopt {
            self.store.mark_gone(owner, t, now);
            self.down_since.remove(&owner);
            self.routes_dirty = true;
        }
        // Raise our own tombstones to theirs.
        for (owner, &e) in &theirs {
            if e & GONE_BIT != 0 {
                if let Some(t) = self.store.tombstone(owner) {
                    if t.version < e & !GONE_BIT {
                        self.store.mark_gone(*owner, e & !GONE_BIT, now);
                    }
                }
            }
        }
        let mut out: Vec<Output> = deltas(&base, records, self.config.delta_bytes)
            .into_iter()
            .map(|msg| Output::Send { to: from, msg })
            .collect();
        let lacking = theirs.iter().any(|(owner, &e)| {
            if e & GONE_BIT != 0 {
                return false;
            }
            let have = self
                .store
                .version(owner)
                .or_else(|| self.store.tombstone(owner).map(|t| t.version))
                .unwrap_or(0);
            e > have
        });
        if lacking {
            out.push(Output::Send {
                to: from,
                msg: Message::Vector(self.advertised_vector()),
            });
        }
        out
    }

    fn on_update(&mut self, from: NodeId, mut records: Vec<Record>) -> Vec<Output> {
        records.sort_by_key(|r| (r.owner, r.version));
        let mut accepted = Vec::new();
        for r in records {
            if self.store.tombstone(&r.owner).is_some() {
                continue;
            }
            let have = self.store.version(&r.owner).unwrap_or(0);
            if r.version == have + 1 && self.store.merge(r.clone()) {
                accepted.push(r);
            }
        }
        self.after_merge(&accepted);
        self.forward(from, &accepted, Message::Update)
    }

    fn on_delta(
        &mut self,
        from: NodeId,
        base: BTreeMap<NodeId, u64>,
        records: Vec<Record>,
    ) -> Vec<Output> {
        let mut by_owner: BTreeMap<NodeId, Vec<Record>> = BTreeMap::new();
        for r in records {
            by_owner.entry(r.owner).or_default().push(r);
        }
        let mut accepted = Vec::new();
        let mut fwd_base = BTreeMap::new();
        for (owner, rs) in by_owner {
            let raw = base.get(&owner).copied().unwrap_or(0);
            let vouched = raw == GONE_BIT;
            let b = raw & !GONE_BIT;
            let before = accepted.len();
            if let Some(t) = self.store.tombstone(&owner) {
                let max = rs.iter().map(|r| r.version).max().unwrap_or(0);
                if b != 0 || max < t.version || (max == t.version && !vouched) {
                    continue;
                }
                // A full snapshot above the tombstone (the owner wrote again), or
                // at it from a peer where the owner is up: the owner is back.
                self.store.lift(&owner);
                self.down_since.remove(&owner);
                self.routes_dirty = true;
                for r in rs {
                    if self.store.merge(r.clone()) {
                        accepted.push(r);
                    }
                }
                fwd_base.insert(owner, 0);
            } else {
                let have = self.store.version(&owner).unwrap_or(0);
                if b > have {
                    continue; // a gap: anti-entropy will bring a range we can take
                }
                for r in rs {
                    if r.version > have && self.store.merge(r.clone()) {
                        accepted.push(r);
                    }
                }
                fwd_base.insert(owner, have);
            }
            if accepted.len() == before {
                fwd_base.remove(&owner);
            }
        }
        self.after_merge(&accepted);
        let msgs = deltas(&fwd_base, accepted, self.config.delta_bytes);
        self.peers
            .iter()
            .filter(|p| **p != from)
            .flat_map(|p| {
                msgs.iter().map(|m| Output::Send {
                    to: *p,
                    msg: m.clone(),
                })
            })
            .collect()
    }

    fn after_merge(&mut self, accepted: &[Record]) {
        for r in accepted {
            if r.key == LINKS_KEY {
                self.routes_dirty = true;
            }
            if r.owner == self.id {
                self.counter = self.counter.max(r.version);
            }
        }
    }

    fn forward(
        &self,
        from: NodeId,
        accepted: &[Record],
        make: impl Fn(Vec<Record>) -> Message,
    ) -> Vec<Output> {
        if accepted.is_empty() {
            return Vec::new();
        }
        self.peers
            .iter()
            .filter(|p| **p != from)
            .map(|p| Output::Send {
                to: *p,
                msg: make(accepted.to_vec()),
            })
            .collect()
    }

    /// True if a `links` change is waiting for the next tick's route computation.
    pub fn routes_dirty(&self) -> bool {
        self.routes_dirty
    }

    fn recompute_routes(&mut self) -> bool {
        self.routes_dirty = false;
        let mut links = BTreeMap::new();
        for owner in self.store.owners() {
            if let Some(Some(v)) = self.store.get(owner, LINKS_KEY) {
                if let Some(set) = decode_links(v) {
                    links.insert(*owner, set);
                }
            }
        }
        let routes = routes::compute(self.id, &links);
        let changed = routes.next_hops != self.routes.next_hops;
        self.routes = routes;
        changed
    }

    /// Periodic work: recomputes routes if `links` changed (at most once per
    /// call), updates liveness (down, gone), collects old owner tombstones,
    /// and every `ae_period_ms` sends a digest to each peer.
    pub fn tick(&mut self, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if self.routes_dirty && self.recompute_routes() {
            out.push(Output::RoutesChanged);
        }
        // Liveness: live owners that are not reachable are down since the first tick seeing it.
        let live: BTreeSet<NodeId> = self.store.owners().copied().collect();
        self.down_since.retain(|o, _| live.contains(o));
        for o in &live {
            if *o == self.id || self.routes.next_hops.contains_key(o) {
                self.down_since.remove(o);
            } else {
                self.down_since.entry(*o).or_insert(now);
            }
        }
        let gone: Vec<NodeId> = self
            .down_since
            .iter()
            .filter(|(_, &since)| now.saturating_sub(since) >= self.config.down_after_ms)
            .map(|(o, _)| *o)
            .collect();
        for o in gone {
            self.store.mark_gone(o, 0, now);
            self.down_since.remove(&o);
            self.routes_dirty = true;
        }
        self.store.gc(now, self.config.gc_after_ms);
        if self
            .last_ae
            .is_none_or(|l| now.saturating_sub(l) >= self.config.ae_period_ms)
        {
            self.last_ae = Some(now);
            let d = self.digest();
            out.extend(self.peers.iter().map(|p| Output::Send {
                to: *p,
                msg: Message::Digest(d),
            }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> NodeId {
        NodeId([i; 16])
    }

    fn cfg() -> MeshConfig {
        MeshConfig {
            down_after_ms: 1_000,
            gc_after_ms: 5_000,
            ae_period_ms: 100,
            delta_bytes: 1 << 20,
        }
    }

    fn links(owner: u8, version: u64, peers: &[u8]) -> Record {
        let set: BTreeSet<NodeId> = peers.iter().map(|p| id(*p)).collect();
        Record {
            owner: id(owner),
            key: LINKS_KEY.into(),
            version,
            value: Some(encode_links(&set)),
        }
    }

    fn snapshot(records: Vec<Record>) -> Message {
        Message::Delta {
            base: BTreeMap::new(),
            records,
        }
    }

    fn sends(out: &[Output]) -> Vec<(NodeId, &'static str)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { to, msg } => Some((*to, msg.kind())),
                _ => None,
            })
            .collect()
    }

    /// Node `me` in a graph given as (node, its links); it is connected to its own links.
    fn node_in(me: u8, graph: &[(u8, &[u8])]) -> Node {
        let mut n = Node::new(id(me), cfg(), None);
        for (o, peers) in graph {
            if *o == me {
                for p in *peers {
                    n.peer_connected(id(*p), 0);
                }
            }
        }
        let recs = graph
            .iter()
            .filter(|(o, _)| *o != me)
            .map(|(o, p)| links(*o, 1, p))
            .collect();
        let first = graph
            .iter()
            .find(|(o, _)| *o == me)
            .map(|(_, p)| p[0])
            .unwrap();
        n.on_message(id(first), snapshot(recs), 0);
        n.tick(0);
        n
    }

    #[test]
    fn links_encoding_round_trips() {
        let set: BTreeSet<NodeId> = [id(3), id(1)].into_iter().collect();
        assert_eq!(decode_links(&encode_links(&set)), Some(set));
        assert_eq!(decode_links(&[1, 2, 3]), None);
    }

    #[test]
    fn routes_on_a_line_through_node_state() {
        let g: &[(u8, &[u8])] = &[(1, &[2]), (2, &[1, 3]), (3, &[2, 4]), (4, &[3])];
        let n = node_in(1, g);
        assert_eq!(n.next_hops().len(), 3);
        assert!(n.next_hops().values().all(|h| *h == id(2)));
        let n = node_in(3, g);
        assert_eq!(n.next_hops()[&id(1)], id(2));
        assert_eq!(n.next_hops()[&id(4)], id(4));
        assert_eq!(n.status(&id(1)), Status::Up);
    }

    #[test]
    fn routes_on_a_ring_with_ties() {
        let g: &[(u8, &[u8])] = &[(1, &[2, 4]), (2, &[1, 3]), (3, &[2, 4]), (4, &[3, 1])];
        let n = node_in(1, g);
        assert_eq!(n.next_hops()[&id(3)], id(2), "tie: lowest first hop");
        assert_eq!(n.next_hops()[&id(4)], id(4));
        let n = node_in(3, g);
        assert_eq!(n.next_hops()[&id(1)], id(2));
    }

    #[test]
    fn routes_on_the_lab_partial_shape() {
        // Host N connects only to N-1.
        let g: &[(u8, &[u8])] = &[
            (1, &[2]),
            (2, &[1, 3]),
            (3, &[2, 4]),
            (4, &[3, 5]),
            (5, &[4]),
        ];
        for me in 1..=5u8 {
            let n = node_in(me, g);
            for d in 1..=5u8 {
                if d != me {
                    let hop = if d > me { me + 1 } else { me - 1 };
                    assert_eq!(n.next_hops()[&id(d)], id(hop), "{me} -> {d}");
                }
            }
        }
    }

    #[test]
    fn routes_are_recomputed_on_tick_only() {
        let g: &[(u8, &[u8])] = &[(1, &[2]), (2, &[1])];
        let mut n = node_in(1, g);
        assert_eq!(n.next_hops().len(), 1);
        n.on_message(
            id(2),
            Message::Update(vec![links(2, 2, &[1, 3]), links(3, 1, &[2])]),
            10,
        );
        assert!(n.routes_dirty());
        assert!(!n.next_hops().contains_key(&id(3)), "not before the tick");
        let out = n.tick(10);
        assert!(out.contains(&Output::RoutesChanged));
        assert_eq!(n.next_hops()[&id(3)], id(2));
    }

    #[test]
    fn own_writes_take_the_next_version_and_survive_restart() {
        let mut n = Node::new(id(1), cfg(), None);
        n.peer_connected(id(2), 0);
        let out = n.set_local("addr", Some(b"x".to_vec()), 0);
        assert_eq!(sends(&out), vec![(id(2), "update")]);
        assert_eq!(n.store().version(&id(1)), Some(2)); // links@1, addr@2
        let p = n.persisted();
        assert_eq!(p.counter, 2);
        let json = serde_json::to_string(&p).unwrap();
        let back: Persisted = serde_json::from_str(&json).unwrap();
        let mut r = Node::new(id(1), cfg(), Some(back));
        // Restarted without connections: links republished empty, above what others hold.
        assert_eq!(r.store().get(&id(1), LINKS_KEY), Some(Some(&[][..])));
        assert_eq!(r.store().get(&id(1), "addr"), Some(Some(&b"x"[..])));
        r.set_local("addr", None, 1);
        assert_eq!(r.store().record(&id(1), "addr").unwrap().version, 4);
    }

    #[test]
    fn many_writes_travel_as_few_updates_and_arrive_whole() {
        let mut a = Node::new(id(1), cfg(), None);
        let mut b = Node::new(id(2), cfg(), None);
        b.peer_connected(id(1), 0);
        b.peer_connected(id(3), 0);
        b.peer_connected(id(4), 0);
        // b takes a's earlier records (its links) as they are pushed to it.
        let deliver = |b: &mut Node, out: Vec<Output>| {
            let mut forwarded = Vec::new();
            for o in out {
                if let Output::Send { to, msg } = o {
                    if to == id(2) && matches!(msg, Message::Update(_)) {
                        forwarded.extend(sends(&b.on_message(id(1), msg, 0)));
                    }
                }
            }
            forwarded
        };
        let out = a.peer_connected(id(2), 0);
        deliver(&mut b, out);
        let out = a.peer_connected(id(3), 0);
        deliver(&mut b, out);
        let writes: Vec<(String, Option<Vec<u8>>)> = (0..BATCH + 10)
            .map(|i| (format!("k/{i}"), Some(vec![i as u8])))
            .collect();
        let before = a.store().version(&id(1)).unwrap_or(0);
        let out = a.set_local_many(writes, 0);
        // Two messages per peer (BATCH records and 10), not one per record.
        assert_eq!(out.len(), 4);
        assert_eq!(a.store().version(&id(1)), Some(before + BATCH as u64 + 10));
        // b takes every record, and forwards each batch once, as one message, to each
        // of its other peers.
        let forwarded = deliver(&mut b, out);
        assert_eq!(
            forwarded,
            vec![
                (id(3), "update"),
                (id(4), "update"),
                (id(3), "update"),
                (id(4), "update")
            ]
        );
        assert_eq!(b.store().version(&id(1)), a.store().version(&id(1)));
        assert_eq!(
            b.store().get(&id(1), &format!("k/{}", BATCH + 9)),
            Some(Some(&[(BATCH + 9) as u8][..]))
        );
    }

    #[test]
    fn updates_are_taken_in_order_and_forwarded_except_back() {
        let mut n = Node::new(id(1), cfg(), None);
        n.peer_connected(id(2), 0);
        n.peer_connected(id(3), 0);
        let r = |v: u64| Record {
            owner: id(9),
            key: format!("k{v}"),
            version: v,
            value: Some(vec![v as u8]),
        };
        // A gap (version 2 before 1) is dropped, left to anti-entropy.
        assert!(n
            .on_message(id(2), Message::Update(vec![r(2)]), 0)
            .is_empty());
        assert_eq!(n.store().version(&id(9)), None);
        let out = n.on_message(id(2), Message::Update(vec![r(1)]), 0);
        assert_eq!(sends(&out), vec![(id(3), "update")]);
        // Duplicates are not forwarded again.
        assert!(n
            .on_message(id(3), Message::Update(vec![r(1)]), 0)
            .is_empty());
        // A delta from a base we hold is taken whole.
        let out = n.on_message(
            id(3),
            Message::Delta {
                base: [(id(9), 1)].into_iter().collect(),
                records: vec![r(3), r(2)],
            },
            0,
        );
        assert_eq!(sends(&out), vec![(id(2), "delta")]);
        assert_eq!(n.store().version(&id(9)), Some(3));
        // A delta from a base above ours is a gap.
        let out = n.on_message(
            id(3),
            Message::Delta {
                base: [(id(9), 5)].into_iter().collect(),
                records: vec![r(7)],
            },
            0,
        );
        assert!(out.is_empty());
        assert_eq!(n.store().version(&id(9)), Some(3));
    }

    #[test]
    fn digest_vector_delta_repairs() {
        let mut a = Node::new(id(1), cfg(), None);
        let mut b = Node::new(id(2), cfg(), None);
        a.peer_connected(id(2), 0);
        b.peer_connected(id(1), 0);
        a.set_local("x", Some(vec![1]), 0);
        a.set_local("x", Some(vec![2]), 0); // supersedes version 2
        a.set_local("y", None, 0);
        // Nothing delivered so far (all lost). Anti-entropy:
        let d = a.tick(100);
        let Output::Send { msg, .. } = &d[0] else {
            panic!()
        };
        let v = b.on_message(id(1), msg.clone(), 100);
        assert_eq!(sends(&v), vec![(id(1), "vector")]);
        let Output::Send { msg, .. } = &v[0] else {
            panic!()
        };
        let delta = a.on_message(id(2), msg.clone(), 100);
        assert_eq!(sends(&delta)[0], (id(2), "delta"));
        for o in delta {
            if let Output::Send { msg, .. } = o {
                let back = b.on_message(id(1), msg, 100);
                for o in back {
                    if let Output::Send { msg, .. } = o {
                        a.on_message(id(2), msg, 100);
                    }
                }
            }
        }
        assert_eq!(a.digest(), b.digest());
        assert!(a.store().live_eq(b.store()));
    }

    #[test]
    fn down_then_gone_then_collected_and_no_resurrection() {
        let g: &[(u8, &[u8])] = &[(1, &[2]), (2, &[1, 3]), (3, &[2])];
        let mut n = node_in(1, g);
        assert_eq!(n.status(&id(3)), Status::Up);
        let old3 = n.store().records_of(&id(3));
        // 2 drops its connection to 3.
        n.on_message(id(2), Message::Update(vec![links(2, 2, &[1])]), 100);
        n.tick(100);
        assert_eq!(n.status(&id(3)), Status::Down { since: 100 });
        assert_eq!(n.status(&id(2)), Status::Up);
        n.tick(1_099);
        assert_eq!(n.status(&id(3)), Status::Down { since: 100 });
        n.tick(1_100);
        assert_eq!(n.status(&id(3)), Status::Gone);
        assert!(n.store().records_of(&id(3)).is_empty());
        assert!(!n.store().vector().contains_key(&id(3)));
        // A peer that still has 3's old records cannot bring them back.
        n.on_message(id(2), snapshot(old3.clone()), 1_200);
        n.on_message(id(2), Message::Update(old3.clone()), 1_200);
        assert_eq!(n.status(&id(3)), Status::Gone);
        assert!(n.store().records_of(&id(3)).is_empty());
        // A peer's vector with 3's old version: nothing to send, nothing lacking.
        let mut theirs = n.store().vector();
        theirs.insert(id(3), 1);
        let out = n.on_message(id(2), Message::Vector(theirs), 1_200);
        assert!(out.is_empty(), "{out:?}");
        // Collected after gc_after.
        n.tick(6_100);
        assert_eq!(n.status(&id(3)), Status::Unknown);
    }

    #[test]
    fn a_gone_owner_that_writes_again_comes_back() {
        let g: &[(u8, &[u8])] = &[(1, &[2]), (2, &[1, 3]), (3, &[2])];
        let mut n = node_in(1, g);
        n.on_message(id(2), Message::Update(vec![links(2, 2, &[1])]), 0);
        n.tick(0);
        n.tick(1_000);
        assert_eq!(n.status(&id(3)), Status::Gone);
        // 3 reconnects: a partial update is refused (records below it were dropped) ...
        n.on_message(id(2), Message::Update(vec![links(2, 3, &[1, 3])]), 1_100);
        assert!(n
            .on_message(id(2), Message::Update(vec![links(3, 2, &[2])]), 1_100)
            .is_empty());
        assert_eq!(n.status(&id(3)), Status::Gone);
        // ... anti-entropy asks with the gone flag and gets a full snapshot.
        let v = n.advertised_vector();
        assert_eq!(v[&id(3)], 1 | GONE_BIT);
        n.on_message(id(2), snapshot(vec![links(3, 2, &[2])]), 1_100);
        n.tick(1_200);
        assert_eq!(n.status(&id(3)), Status::Up);
        assert_eq!(n.next_hops()[&id(3)], id(2));
    }

    #[test]
    fn vouched_snapshot_lifts_a_tombstone_at_the_same_version() {
        let g: &[(u8, &[u8])] = &[(1, &[2]), (2, &[1, 3]), (3, &[2])];
        // Node 2 sees 3 up; node 1 holds 3 gone at version 1.
        let mut two = node_in(2, g);
        let out = two.on_message(
            id(1),
            Message::Vector([(id(3), 1 | GONE_BIT)].into_iter().collect()),
            0,
        );
        let delta = out
            .into_iter()
            .find_map(|o| match o {
                Output::Send {
                    msg: m @ Message::Delta { .. },
                    ..
                } => Some(m),
                _ => None,
            })
            .expect("a vouched snapshot");
        let Message::Delta { base, .. } = &delta else {
            unreachable!()
        };
        assert_eq!(base[&id(3)], GONE_BIT);
        let mut one = node_in(1, g);
        one.on_message(id(2), Message::Update(vec![links(2, 2, &[1])]), 0);
        one.tick(0);
        one.tick(1_000);
        assert_eq!(one.status(&id(3)), Status::Gone);
        one.on_message(id(2), Message::Update(vec![links(2, 3, &[1, 3])]), 1_000);
        one.on_message(id(2), delta, 1_000);
        one.tick(1_100);
        assert_eq!(one.status(&id(3)), Status::Up);
    }

    #[test]
    fn a_state_beyond_one_message_travels_as_deltas_of_whole_owners() {
        let small = MeshConfig {
            delta_bytes: 25_000,
            ..cfg()
        };
        let mut a = Node::new(id(1), small, None);
        a.peer_connected(id(2), 0);
        // Its own 30 records of 1 KB, rewritten in part (gaps in the versions), and twelve
        // other owners' 10 records of 1 KB each, merged from elsewhere.
        let own: Vec<(String, Option<Vec<u8>>)> = (0..30)
            .map(|i| (format!("k/{i:03}"), Some(vec![i as u8; 1000])))
            .collect();
        a.set_local_many(own, 0);
        a.set_local_many(
            (0..10).map(|i| (format!("k/{:03}", i * 3), None)).collect(),
            0,
        );
        for o in 3..15u8 {
            let recs: Vec<Record> = (1..=10)
                .map(|v| Record {
                    owner: id(o),
                    key: format!("t/{v}"),
                    version: v,
                    value: Some(vec![o; 1000]),
                })
                .collect();
            a.on_message(id(2), Message::Update(recs), 0);
        }

        let mut b = Node::new(id(2), small, None);
        b.peer_connected(id(1), 0);
        let out = a.on_message(id(2), Message::Vector(BTreeMap::new()), 0);
        let msgs: Vec<Message> = out
            .into_iter()
            .filter_map(|o| match o {
                Output::Send { to, msg } if to == id(2) => Some(msg),
                _ => None,
            })
            .collect();
        assert!(msgs.len() >= 6, "cut into {} messages", msgs.len());
        let mut seen = BTreeSet::new();
        for m in &msgs {
            let Message::Delta { records, .. } = m else {
                panic!("not a delta: {}", m.kind());
            };
            let owners: BTreeSet<NodeId> = records.iter().map(|r| r.owner).collect();
            for o in &owners {
                assert!(seen.insert(*o), "owner {o} cut over two messages");
            }
            let bytes: usize = records
                .iter()
                .map(|r| r.key.len() + r.value.as_ref().map_or(0, Vec::len) + 32)
                .sum();
            assert!(
                bytes <= 25_000 || owners.len() == 1,
                "a delta of {bytes} bytes over {} owners",
                owners.len()
            );
        }
        for m in msgs {
            b.on_message(id(1), m, 0);
        }
        for o in [1u8, 3, 9, 14] {
            assert_eq!(b.store().version(&id(o)), a.store().version(&id(o)));
            assert_eq!(
                b.store().records_after(&id(o), 0),
                a.store().records_after(&id(o), 0),
                "owner {o}"
            );
        }
        // Nothing more to send (a only asks for b's own links, which it lacks).
        let out = a.on_message(id(2), Message::Vector(b.store().vector()), 0);
        assert!(
            sends(&out).iter().all(|(_, kind)| *kind == "vector"),
            "{:?}",
            sends(&out)
        );
    }
}
