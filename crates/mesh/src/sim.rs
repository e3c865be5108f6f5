//! A deterministic simulator of a mesh of [`Node`]s.
//!
//! Nodes sit on a graph of connections. Time advances in ticks of
//! `tick_ms`; a message sent during tick `t` is delivered at `t + 1` or, while
//! faults are on, after a random extra delay (which reorders messages), and
//! may be lost or duplicated. Faults also include partitions (a random set of
//! nodes is cut off; both ends of every cut connection get
//! [`Node::peer_disconnected`], and [`Node::peer_connected`] on heal), node
//! restarts (a node is replaced by [`Node::new`] with its
//! [`Node::persisted`] state, its peers see the connection drop and come
//! back) and random local writes. Every random choice comes from one seeded
//! [`Rng`], so a seed replays exactly.
//!
//! [`Sim::run_until_quiet`] turns faults off and runs until only digests
//! flow; [`Sim::check`] then verifies the invariants of `docs/mesh.md`.

use std::collections::{BTreeMap, BTreeSet};

use crate::{MeshConfig, Message, Node, NodeId, Output, Persisted, Status};

/// SplitMix64: a small, fast, seedable PRNG (not cryptographic).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// A random NodeId.
    pub fn node_id(&mut self) -> NodeId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        b[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        NodeId(b)
    }
}

/// Parameters of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Edges added to the random spanning tree (used by [`Sim::new`]).
    pub extra_edges: usize,
    /// Probability a message is lost (while faults are on).
    pub loss: f64,
    /// Probability a message is delivered twice (while faults are on).
    pub duplicate: f64,
    /// Largest extra delay in ticks (while faults are on); reorders messages.
    pub max_delay_ticks: u64,
    /// Per-tick probability that a partition starts (when none is active).
    pub partition_chance: f64,
    /// Longest partition, in ticks.
    pub max_partition_ticks: u64,
    /// Per-tick probability that a node restarts.
    pub restart_chance: f64,
    /// Per-tick probability of a random local write.
    pub write_chance: f64,
    /// Ticks with faults on, for [`Sim::run`].
    pub fault_ticks: u64,
    /// Milliseconds per tick.
    pub tick_ms: u64,
    /// Configuration of every node.
    pub mesh: MeshConfig,
    /// [`Sim::run_until_quiet`] fails after this many ticks.
    pub quiet_limit_ticks: u64,
    /// Count serialized (serde_json) bytes of every message sent.
    pub count_bytes: bool,
}

impl SimConfig {
    /// All faults on: 10% loss, 5% duplication, delays up to 3 ticks,
    /// partitions, restarts and writes; `down_after` 3 s, `gc_after` 15 s,
    /// tick = anti-entropy period = 100 ms.
    pub fn faulty(nodes: usize) -> SimConfig {
        SimConfig {
            nodes,
            extra_edges: nodes / 2,
            loss: 0.10,
            duplicate: 0.05,
            max_delay_ticks: 3,
            partition_chance: 0.03,
            max_partition_ticks: 60,
            restart_chance: 0.03,
            write_chance: 0.3,
            fault_ticks: 150,
            tick_ms: 100,
            mesh: MeshConfig {
                down_after_ms: 3_000,
                gc_after_ms: 15_000,
                ae_period_ms: 100,
                // Small, so snapshots travel cut into many deltas in every run.
                delta_bytes: 2000,
            },
            quiet_limit_ticks: 3_000,
            count_bytes: false,
        }
    }

    /// No faults at all.
    pub fn calm(nodes: usize) -> SimConfig {
        SimConfig {
            loss: 0.0,
            duplicate: 0.0,
            max_delay_ticks: 0,
            partition_chance: 0.0,
            restart_chance: 0.0,
            write_chance: 0.0,
            fault_ticks: 0,
            ..SimConfig::faulty(nodes)
        }
    }
}

/// Counters of a simulation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages sent (before loss).
    pub messages: u64,
    /// Serialized bytes sent, when [`SimConfig::count_bytes`] is on.
    pub bytes: u64,
    /// Messages lost.
    pub lost: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Node restarts.
    pub restarts: u64,
    /// Local writes.
    pub writes: u64,
    /// `RoutesChanged` outputs.
    pub routes_changed: u64,
}

#[derive(Debug)]
struct Flight {
    from: usize,
    to: usize,
    msg: Message,
}

/// A simulated mesh. Nodes are addressed by index `0..n`.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    seed: u64,
    rng: Rng,
    now: u64,
    tick: u64,
    faults: bool,
    ids: Vec<NodeId>,
    index: BTreeMap<NodeId, usize>,
    nodes: Vec<Option<Node>>,
    crashed: Vec<Option<(Persisted, u64)>>,
    adj: Vec<BTreeSet<usize>>,
    cut: BTreeSet<(usize, usize)>,
    heal_at: Option<u64>,
    inflight: BTreeMap<(u64, u64), Flight>,
    seq: u64,
    non_digest_sent: u64,
    /// Counters.
    pub stats: Stats,
}

/// A random connected graph: a random spanning tree plus `extra` random edges.
pub fn random_graph(n: usize, extra: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut edges = BTreeSet::new();
    for i in 1..n {
        let j = rng.below(i as u64) as usize;
        edges.insert((j, i));
    }
    for _ in 0..extra {
        if n < 2 {
            break;
        }
        let a = rng.below(n as u64) as usize;
        let b = rng.below(n as u64) as usize;
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    }
    edges.into_iter().collect()
}

/// A random connected graph of bounded degree (about 4 on average): a ring in
/// random order plus one random chord per node.
pub fn random_bounded_graph(n: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let mut edges = BTreeSet::new();
    for i in 0..n {
        let (a, b) = (order[i], order[(i + 1) % n]);
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    }
    for a in 0..n {
        let b = rng.below(n as u64) as usize;
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    }
    edges.into_iter().collect()
}

impl Sim {
    /// A simulation on a random connected graph of `cfg.nodes` nodes.
    pub fn new(cfg: SimConfig, seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let edges = random_graph(cfg.nodes, cfg.extra_edges, &mut rng);
        Sim::with_edges(cfg, seed, &edges)
    }

    /// A simulation on the given edges (pairs of node indices); every edge is
    /// connected at time 0.
    pub fn with_edges(cfg: SimConfig, seed: u64, edges: &[(usize, usize)]) -> Sim {
        let mut sim = Sim::unconnected(cfg, seed, edges);
        for &(a, b) in edges {
            sim.connect(a, b);
        }
        sim
    }

    fn unconnected(cfg: SimConfig, seed: u64, edges: &[(usize, usize)]) -> Sim {
        let mut rng = Rng::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d).wrapping_add(1));
        let n = cfg.nodes;
        let mut ids = Vec::with_capacity(n);
        let mut index = BTreeMap::new();
        while ids.len() < n {
            let id = rng.node_id();
            if index.insert(id, ids.len()).is_none() {
                ids.push(id);
            }
        }
        let nodes = ids
            .iter()
            .map(|id| Some(Node::new(*id, cfg.mesh, None)))
            .collect();
        let mut adj = vec![BTreeSet::new(); n];
        for &(a, b) in edges {
            assert!(a < n && b < n && a != b, "bad edge ({a}, {b})");
            adj[a].insert(b);
            adj[b].insert(a);
        }
        Sim {
            cfg,
            seed,
            rng,
            now: 0,
            tick: 0,
            faults: true,
            ids,
            index,
            nodes,
            crashed: vec![None; n],
            adj,
            cut: BTreeSet::new(),
            heal_at: None,
            inflight: BTreeMap::new(),
            seq: 0,
            non_digest_sent: 0,
            stats: Stats::default(),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Current time (ms).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Current tick.
    pub fn tick_count(&self) -> u64 {
        self.tick
    }

    /// NodeId of node `i`.
    pub fn id(&self, i: usize) -> NodeId {
        self.ids[i]
    }

    /// Index of a NodeId.
    pub fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Node `i`, `None` while it is crashed.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes[i].as_ref()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True for a simulation of no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Turns faults (loss, duplication, delay, partitions, restarts, writes) on or off.
    pub fn set_faults(&mut self, on: bool) {
        self.faults = on;
    }

    fn key(a: usize, b: usize) -> (usize, usize) {
        (a.min(b), a.max(b))
    }

    /// True if nodes `a` and `b` are connected now.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.adj[a].contains(&b)
            && !self.cut.contains(&Self::key(a, b))
            && self.nodes[a].is_some()
            && self.nodes[b].is_some()
    }

    fn connect(&mut self, a: usize, b: usize) {
        let now = self.now;
        let (ia, ib) = (self.ids[a], self.ids[b]);
        let out = self.nodes[a].as_mut().expect("up").peer_connected(ib, now);
        self.handle(a, out);
        let out = self.nodes[b].as_mut().expect("up").peer_connected(ia, now);
        self.handle(b, out);
    }

    /// Called while still connected: both ends see the drop, in-flight messages are lost.
    fn disconnect(&mut self, a: usize, b: usize) {
        let now = self.now;
        self.inflight
            .retain(|_, f| !((f.from == a && f.to == b) || (f.from == b && f.to == a)));
        let (ia, ib) = (self.ids[a], self.ids[b]);
        if let Some(n) = self.nodes[a].as_mut() {
            let out = n.peer_disconnected(ib, now);
            self.handle(a, out);
        }
        if let Some(n) = self.nodes[b].as_mut() {
            let out = n.peer_disconnected(ia, now);
            self.handle(b, out);
        }
    }

    fn handle(&mut self, from: usize, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::RoutesChanged => self.stats.routes_changed += 1,
                Output::Send { to, msg } => {
                    let Some(&to) = self.index.get(&to) else {
                        continue;
                    };
                    if !self.connected(from, to) {
                        continue;
                    }
                    self.send(from, to, msg);
                }
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Message) {
        self.stats.messages += 1;
        if !matches!(msg, Message::Digest(_)) {
            self.non_digest_sent += 1;
        }
        if self.cfg.count_bytes {
            self.stats.bytes += serde_json::to_vec(&msg).expect("serializable").len() as u64;
        }
        let mut copies = 1;
        if self.faults {
            if self.rng.chance(self.cfg.loss) {
                self.stats.lost += 1;
                return;
            }
            if self.rng.chance(self.cfg.duplicate) {
                self.stats.duplicated += 1;
                copies = 2;
            }
        }
        for _ in 0..copies {
            let delay = if self.faults && self.cfg.max_delay_ticks > 0 {
                1 + self.rng.below(self.cfg.max_delay_ticks + 1)
            } else {
                1
            };
            self.seq += 1;
            let flight = Flight {
                from,
                to,
                msg: msg.clone(),
            };
            self.inflight.insert((self.tick + delay, self.seq), flight);
        }
    }

    /// Delivers every message due by the current tick; returns how many.
    pub fn deliver_due(&mut self) -> usize {
        let mut count = 0;
        while let Some(entry) = self.inflight.first_entry() {
            if entry.key().0 > self.tick {
                break;
            }
            let f = entry.remove();
            if !self.connected(f.from, f.to) {
                continue;
            }
            count += 1;
            let from_id = self.ids[f.from];
            let now = self.now;
            let out = self.nodes[f.to]
                .as_mut()
                .expect("connected")
                .on_message(from_id, f.msg, now);
            self.handle(f.to, out);
        }
        count
    }

    /// Delivers messages (advancing the tick counter, without calling
    /// [`Node::tick`]) until none is in flight; returns the deliveries.
    pub fn deliver_all(&mut self) -> usize {
        let mut total = 0;
        while !self.inflight.is_empty() {
            self.tick += 1;
            total += self.deliver_due();
        }
        total
    }

    /// One tick: deliver due messages, inject faults (if on), revive
    /// restarted nodes, then [`Node::tick`] every running node.
    pub fn step(&mut self) {
        self.tick += 1;
        self.now += self.cfg.tick_ms;
        self.deliver_due();
        if self.faults {
            self.inject_faults();
        }
        for i in 0..self.nodes.len() {
            if let Some((_, at)) = &self.crashed[i] {
                if *at <= self.tick || (!self.faults && *at != u64::MAX) {
                    self.revive(i);
                }
            }
        }
        let now = self.now;
        for i in 0..self.nodes.len() {
            if let Some(n) = self.nodes[i].as_mut() {
                let out = n.tick(now);
                self.handle(i, out);
            }
        }
    }

    fn inject_faults(&mut self) {
        let n = self.nodes.len();
        // Partitions.
        if let Some(at) = self.heal_at {
            if self.tick >= at {
                self.heal();
            }
        } else if n >= 2 && self.rng.chance(self.cfg.partition_chance) {
            let size = 1 + self.rng.below((n / 2).max(1) as u64) as usize;
            let mut side = BTreeSet::new();
            while side.len() < size {
                side.insert(self.rng.below(n as u64) as usize);
            }
            self.partition(&side);
            let dur = 1 + self.rng.below(self.cfg.max_partition_ticks.max(1));
            self.heal_at = Some(self.tick + dur);
        }
        // Restarts.
        if n > 0 && self.rng.chance(self.cfg.restart_chance) {
            let i = self.rng.below(n as u64) as usize;
            if self.nodes[i].is_some() {
                let down = 1 + self.rng.below(10);
                self.crash(i, self.tick + down);
            }
        }
        // Writes.
        if n > 0 && self.rng.chance(self.cfg.write_chance) {
            let i = self.rng.below(n as u64) as usize;
            let key = ["a", "b", "c", "d"][self.rng.below(4) as usize];
            let value = if self.rng.chance(0.15) {
                None
            } else {
                Some(self.rng.next_u64().to_le_bytes()[..1 + self.rng.below(8) as usize].to_vec())
            };
            self.write(i, key, value);
        }
    }

    /// Cuts every connection between `side` and the other nodes.
    pub fn partition(&mut self, side: &BTreeSet<usize>) {
        self.stats.partitions += 1;
        for &a in side {
            for b in self.adj[a].clone() {
                if !side.contains(&b) {
                    let k = Self::key(a, b);
                    if self.connected(a, b) {
                        self.disconnect(a, b);
                    }
                    self.cut.insert(k);
                }
            }
        }
    }

    /// Restores every cut connection.
    pub fn heal(&mut self) {
        self.heal_at = None;
        for (a, b) in std::mem::take(&mut self.cut) {
            if self.connected(a, b) {
                self.connect(a, b);
            }
        }
    }

    /// Crashes node `i` (its peers see the connections drop); it comes back
    /// with its persisted state at tick `revive_at`, or when faults stop.
    /// `u64::MAX` keeps it down until [`Sim::revive`].
    pub fn crash(&mut self, i: usize, revive_at: u64) {
        let Some(node) = self.nodes[i].as_ref() else {
            return;
        };
        self.stats.restarts += 1;
        let persisted = node.persisted();
        for j in self.adj[i].clone() {
            if self.connected(i, j) {
                self.disconnect(i, j);
            }
        }
        self.inflight.retain(|_, f| f.from != i && f.to != i);
        self.nodes[i] = None;
        self.crashed[i] = Some((persisted, revive_at));
    }

    /// Brings crashed node `i` back now with its persisted state.
    pub fn revive(&mut self, i: usize) {
        let Some((persisted, _)) = self.crashed[i].take() else {
            return;
        };
        self.nodes[i] = Some(Node::new(self.ids[i], self.cfg.mesh, Some(persisted)));
        for j in self.adj[i].clone() {
            if self.connected(i, j) {
                self.connect(i, j);
            }
        }
    }

    /// A local write at node `i` (ignored while it is crashed).
    pub fn write(&mut self, i: usize, key: &str, value: Option<Vec<u8>>) {
        let now = self.now;
        if let Some(n) = self.nodes[i].as_mut() {
            self.stats.writes += 1;
            let out = n.set_local(key, value, now);
            self.handle(i, out);
        }
    }

    /// Runs `ticks` steps.
    pub fn run_ticks(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.step();
        }
    }

    /// Turns faults off (crashed nodes come back; an active partition stays
    /// unless healed by the caller) and steps until two consecutive ticks
    /// send nothing but digests, with nothing else in flight and no route
    /// computation pending. Returns the ticks it took.
    pub fn run_until_quiet(&mut self) -> Result<u64, String> {
        self.faults = false;
        let start = self.tick;
        let mut quiet = 0;
        while quiet < 2 {
            if self.tick - start > self.cfg.quiet_limit_ticks {
                return Err(format!(
                    "seed {}: not quiet after {} ticks ({} in flight)",
                    self.seed,
                    self.cfg.quiet_limit_ticks,
                    self.inflight.len()
                ));
            }
            let before = self.non_digest_sent;
            self.step();
            let calm = self.non_digest_sent == before
                && self
                    .inflight
                    .values()
                    .all(|f| matches!(f.msg, Message::Digest(_)))
                && self.nodes.iter().flatten().all(|n| !n.routes_dirty());
            quiet = if calm { quiet + 1 } else { 0 };
        }
        Ok(self.tick - start)
    }

    /// The connected components of the current connection graph (running nodes only).
    pub fn components(&self) -> Vec<Vec<usize>> {
        let n = self.nodes.len();
        let mut comp = vec![usize::MAX; n];
        let mut out = Vec::new();
        for s in 0..n {
            if comp[s] != usize::MAX || self.nodes[s].is_none() {
                continue;
            }
            let c = out.len();
            let mut members = vec![s];
            comp[s] = c;
            let mut k = 0;
            while k < members.len() {
                let a = members[k];
                k += 1;
                for &b in &self.adj[a] {
                    if comp[b] == usize::MAX && self.connected(a, b) {
                        comp[b] = c;
                        members.push(b);
                    }
                }
            }
            members.sort_unstable();
            out.push(members);
        }
        out
    }

    /// Checks the invariants: within each connected component all stores
    /// hold the same live records (equal vectors and digests); following next
    /// hops from any node reaches every other node of its component over real
    /// connections within component-size hops; every node of the component is
    /// `Up` and every node outside it is not.
    pub fn check(&self) -> Result<(), String> {
        let seed = self.seed;
        let comps = self.components();
        let mut comp_of = vec![usize::MAX; self.nodes.len()];
        for (c, members) in comps.iter().enumerate() {
            for &m in members {
                comp_of[m] = c;
            }
        }
        for members in &comps {
            let r = self.nodes[members[0]].as_ref().expect("running");
            for &m in members {
                let n = self.nodes[m].as_ref().expect("running");
                if n.store().vector() != r.store().vector() || n.digest() != r.digest() {
                    let (a, b) = (r.store().vector(), n.store().vector());
                    let diff: Vec<_> = a
                        .keys()
                        .chain(b.keys())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .filter(|k| a.get(k) != b.get(k))
                        .map(|k| (self.index_of(k), a.get(k), b.get(k)))
                        .collect();
                    return Err(format!(
                        "seed {seed}: nodes {} and {m} of one component differ in vectors: {diff:?}",
                        members[0]
                    ));
                }
                if !n.store().live_eq(r.store()) {
                    return Err(format!(
                        "seed {seed}: nodes {} and {m} have equal vectors but different records",
                        members[0]
                    ));
                }
            }
        }
        for (a, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            for b in 0..self.nodes.len() {
                if b == a {
                    continue;
                }
                let same = comp_of[b] == comp_of[a];
                let st = node.status(&self.ids[b]);
                if same != (st == Status::Up) {
                    return Err(format!(
                        "seed {seed}: node {a} sees node {b} as {st:?} (same component: {same})"
                    ));
                }
                if !same {
                    continue;
                }
                let size = comps[comp_of[a]].len();
                let mut cur = a;
                let mut hops = 0;
                while cur != b {
                    let n = self.nodes[cur].as_ref().expect("running");
                    let Some(next) = n.next_hops().get(&self.ids[b]) else {
                        return Err(format!(
                            "seed {seed}: node {cur} has no route to {b} (from {a})"
                        ));
                    };
                    let next = self.index[next];
                    if !self.connected(cur, next) {
                        return Err(format!(
                            "seed {seed}: node {cur} routes to {b} via non-neighbour {next}"
                        ));
                    }
                    cur = next;
                    hops += 1;
                    if hops > size {
                        return Err(format!("seed {seed}: routing loop from {a} to {b}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs a full scenario: `fault_ticks` with faults, then (a coin flip
    /// decides whether the last partition heals) until quiet, then
    /// [`Sim::check`].
    pub fn run(&mut self) -> Result<(), String> {
        self.faults = true;
        self.run_ticks(self.cfg.fault_ticks);
        if self.heal_at.is_some() && self.rng.chance(0.5) {
            self.heal();
        }
        self.run_until_quiet()?;
        self.check()
    }
}

/// Runs the full fault scenario of [`Sim::run`] for `seed` on a random graph.
pub fn run_seed(cfg: &SimConfig, seed: u64) -> Result<Stats, String> {
    let mut sim = Sim::new(cfg.clone(), seed);
    sim.run()?;
    Ok(sim.stats)
}

/// Serialized (serde_json) bytes sent per node for one state change, on a
/// random graph of `n` nodes of degree about 4 with no faults.
///
/// The graph is connected and brought to quiet first (every node knows the
/// writer's records); then one node writes one record, and every message is
/// delivered until none is in flight. Periodic digests are not counted: they
/// cost the same whether or not anything changed. Returns bytes / `n`.
pub fn bytes_per_change(n: usize, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let edges = random_bounded_graph(n, &mut rng);
    let cfg = SimConfig::calm(n);
    // Connect without traffic, then hand every node the writer's records out
    // of band (what a quiet mesh holds): building the full converged state of
    // a large mesh costs the simulator O(n²) and does not change the push.
    let mut sim = Sim::unconnected(cfg, seed, &edges);
    sim.faults = false;
    for &(a, b) in &edges {
        let (ia, ib) = (sim.ids[a], sim.ids[b]);
        let _ = sim.nodes[a].as_mut().expect("up").peer_connected(ib, 0);
        let _ = sim.nodes[b].as_mut().expect("up").peer_connected(ia, 0);
    }
    let writer = rng.below(n as u64) as usize;
    let wid = sim.ids[writer];
    let snapshot = sim.nodes[writer]
        .as_ref()
        .expect("up")
        .store()
        .records_of(&wid);
    for i in 0..n {
        if i != writer {
            let msg = Message::Delta {
                base: BTreeMap::new(),
                records: snapshot.clone(),
            };
            let _ = sim.nodes[i].as_mut().expect("up").on_message(wid, msg, 0);
        }
    }
    sim.cfg.count_bytes = true;
    sim.stats = Stats::default();
    sim.write(writer, "addr", Some(b"10.1.2.3:6783".to_vec()));
    sim.deliver_all();
    // Everyone took it.
    for i in 0..n {
        let st = sim.nodes[i].as_ref().expect("up").store();
        assert!(
            st.get(&wid, "addr").is_some(),
            "node {i} missed the change (seed {seed})"
        );
    }
    sim.stats.bytes as f64 / n as f64
}

/// The seed to replay from the environment (`WEFT_SIM_SEED=N`), if set.
pub fn seed_from_env() -> Option<u64> {
    std::env::var("WEFT_SIM_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}
