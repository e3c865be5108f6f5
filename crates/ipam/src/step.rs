//! The periodic step: merge what peers wrote, act on it, and say what to write.

use std::collections::{BTreeMap, BTreeSet};

use weft_mesh::{NodeId, Store};

use crate::engine::{Ipam, Liveness, Use, QUARANTINE_MS};
use crate::view::{
    AckRec, BlockRec, BorrowedRec, CfgRec, Genesis, Lend, LentRec, ReqRec, TookRec, UseRec,
};

/// A write of one of this node's records: key, and `None` to delete it.
pub type Write = (String, Option<Vec<u8>>);

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializable")
}

fn dec<T: serde::de::DeserializeOwned>(store: &Store, owner: &NodeId, key: &str) -> Option<T> {
    let v = store.get(owner, key)??;
    serde_json::from_slice(v).ok()
}

impl Ipam {
    /// One step at time `now`: merge the store, bootstrap, confirm, answer
    /// hellos and requests, reclaim, give back, borrow. Returns the writes
    /// of own records the caller must make (through the mesh node).
    pub fn step(&mut self, store: &Store, live: &dyn Liveness, now: u64) -> Vec<Write> {
        if self.st.view.merge_store(store, self.prefix()) {
            self.dirty = true;
        }
        self.track_liveness(store, live, now);
        self.last_use = store
            .owners()
            .filter(|o| **o != self.id && live.is_up(o))
            .filter(|o| {
                !self
                    .st
                    .view
                    .taken_at(o, self.st.view.hello.get(o).copied().unwrap_or(0))
            })
            .filter_map(|o| {
                dec::<UseRec>(store, o, &format!("{}use", self.prefix())).map(|u| (*o, u))
            })
            .filter(|(_, u)| u.ready)
            .collect();
        if self.st.view.genesis.is_none() {
            self.bootstrap(store, live);
        }
        if self.st.view.genesis.is_some() && self.st.view.conflict.is_none() {
            if !self.confirmed {
                self.try_confirm(store);
            }
            // Hellos are answered even before this node is confirmed, or a
            // cycle of heirs restarting together would wait on each other.
            self.answer_hellos(store);
            if self.confirmed {
                self.adopt_genesis_role();
                self.renew_heir();
                self.reclaim(store, live, now);
                self.relay_gives();
                self.accept_blocks(now);
                self.end_quarantine(store, live, now);
                self.absorb_borrowed();
                self.serve_requests(store);
                self.settle_lends(store);
                self.settle_borrowed(store);
                self.give_back(now);
                self.ask(live, now);
            }
        }
        self.writes(store)
    }

    fn track_liveness(&mut self, store: &Store, live: &dyn Liveness, now: u64) {
        let mut known: BTreeSet<NodeId> = self.st.view.nodes();
        known.extend(store.owners().copied());
        known.remove(&self.id);
        for n in known {
            if live.is_up(&n) {
                self.down_since.remove(&n);
            } else {
                self.down_since.entry(n).or_insert(now);
            }
        }
    }

    fn bootstrap(&mut self, store: &Store, live: &dyn Liveness) {
        let me = CfgRec {
            space: self.cfg.space.clone(),
            init: self.cfg.init,
        };
        let mut same: Vec<NodeId> = store
            .owners()
            .filter(|o| **o == self.id || live.is_up(o))
            .filter(|o| {
                **o == self.id
                    || dec::<CfgRec>(store, o, &format!("{}cfg", self.prefix())).as_ref()
                        == Some(&me)
            })
            .copied()
            .collect();
        if !same.contains(&self.id) {
            same.push(self.id);
        }
        same.sort_unstable();
        if self.st.boot.is_none() && same.len() >= self.cfg.init {
            let proposal: Vec<NodeId> = same.into_iter().take(self.cfg.init).collect();
            if proposal.contains(&self.id) {
                self.st.boot = Some(proposal);
                self.dirty = true;
            }
        }
        let Some(p) = self.st.boot.clone() else {
            return;
        };
        let unanimous = p.iter().all(|m| {
            *m == self.id
                || dec::<Vec<NodeId>>(store, m, &format!("{}boot", self.prefix())).as_ref()
                    == Some(&p)
        });
        if unanimous {
            self.st.view.adopt(Genesis {
                space: self.cfg.space.clone(),
                members: p,
            });
            self.dirty = true;
        }
    }

    /// A genesis member starts holding its share with the ring successor as heir.
    fn adopt_genesis_role(&mut self) {
        if self.st.heir.is_some() {
            return;
        }
        let g = self.st.view.genesis.as_ref().expect("genesis");
        if let Some(next) = g.ring_next(&self.id) {
            if g.members.len() > 1 {
                self.st.heir = Some((next, 0));
            }
            self.st.member = true;
            self.dirty = true;
        }
    }

    /// A member whose heir chain ends nowhere (alone at the start, or its heir
    /// was removed and the chain came back to it) names the lowest live node
    /// that allocates as its new heir, so its space can be reclaimed again.
    /// Views that still hold the old designation resolve no heir, so at most
    /// the new one acts.
    fn renew_heir(&mut self) {
        if !self.st.member {
            return;
        }
        // From the own designation (the view learns it only from the store).
        if let Some((h, inc)) = self.st.heir {
            if self.st.view.follow(h, inc).0 != self.id {
                return;
            }
        }
        let Some(h) = self.last_use.keys().next().copied() else {
            return;
        };
        let inc = self.st.view.hello.get(&h).copied().unwrap_or(0);
        self.st.heir = Some((h, inc));
        let val = enc(&(h, inc));
        let id = self.id;
        self.st.view.merge(&id, "heir", &val, u64::MAX);
        self.dirty = true;
    }

    fn try_confirm(&mut self, store: &Store) {
        let v = &self.st.view;
        let prev = self.st.inc - 1;
        if v.taken_at(&self.id, prev.max(1)) || (prev == 0 && v.taken_at(&self.id, 0)) {
            self.wipe();
            return;
        }
        let Some(heir) = v.effective_heir(&self.id) else {
            self.confirmed = true;
            return;
        };
        let key = format!("{}ack/{}", self.prefix(), self.id);
        if let Some(ack) = dec::<AckRec>(store, &heir, &key) {
            if ack.inc == self.st.inc {
                if ack.removed {
                    self.wipe();
                } else {
                    self.confirmed = true;
                }
            }
        }
    }

    /// Removed while away: drop the old share and start empty.
    fn wipe(&mut self) {
        let st = &mut self.st;
        // Gives stay published: a receiver may not have read them yet.
        st.blocks.retain(|_, b| b.to.is_some());
        st.allocs.clear();
        st.borrowed.clear();
        st.returned.clear();
        st.lent_by.clear();
        st.seen_lends.clear();
        st.req = None;
        st.heir = None;
        st.member = false;
        st.cursor = None;
        st.empty_since.clear();
        self.confirmed = true;
        self.dirty = true;
    }

    fn answer_hellos(&mut self, store: &Store) {
        let nodes: Vec<(NodeId, u64)> = self.st.view.hello.iter().map(|(n, i)| (*n, *i)).collect();
        for (y, inc) in nodes {
            if y == self.id || self.st.view.effective_heir(&y) != Some(self.id) {
                continue;
            }
            // Unconfirmed, only for a node that named this one directly and
            // only while no take of this node is known.
            if !self.confirmed
                && (self.st.view.heirs.get(&y).map(|h| h.0) != Some(self.id)
                    || self.st.view.taken_at(&self.id, 0))
            {
                continue;
            }
            if self.st.acks.get(&y).is_some_and(|a| a.inc >= inc) {
                continue;
            }
            // Only answer the hello of a node that is around to read it.
            if store.version(&y).is_none() {
                continue;
            }
            let removed = inc > 1 && self.st.view.taken_at(&y, inc - 1);
            self.st.acks.insert(y, AckRec { inc, removed });
            self.dirty = true;
        }
    }

    fn reclaim(&mut self, store: &Store, live: &dyn Liveness, now: u64) {
        let candidates: Vec<NodeId> = self.st.view.heirs.keys().copied().collect();
        for x in candidates {
            if x == self.id || live.is_up(&x) {
                continue;
            }
            if self.st.view.effective_heir(&x) != Some(self.id) {
                continue;
            }
            let inc = self.st.view.hello.get(&x).copied().unwrap_or(0);
            if self.st.view.taken_at(&x, inc) {
                continue;
            }
            if self.st.acks.get(&x).is_some_and(|a| a.inc > inc) {
                continue;
            }
            let asked = store.owners().any(|o| {
                dec::<u64>(store, o, &format!("{}rm/{x}", self.prefix())).is_some_and(|r| r >= inc)
            }) || self.st.rms.get(&x).is_some_and(|r| *r >= inc);
            let timed_out = self.cfg.reclaim_after_ms > 0
                && self
                    .down_since
                    .get(&x)
                    .is_some_and(|s| now.saturating_sub(*s) >= self.cfg.reclaim_after_ms);
            if !(asked || timed_out) {
                continue;
            }
            self.take(x, inc);
        }
    }

    fn take(&mut self, x: NodeId, inc: u64) {
        let rec = TookRec {
            inc,
            by_inc: self.st.inc,
        };
        self.st.took.insert(x, rec);
        let id = self.id;
        let val = enc(&rec);
        self.st
            .view
            .merge(&id, &format!("took/{x}"), &val, u64::MAX);
        // Keep what x had lent to others; its own containers are gone with it.
        let lends: Vec<(NodeId, Lend)> = self
            .st
            .view
            .lends
            .get(&x)
            .map(|m| {
                m.iter()
                    .flat_map(|(b, r)| r.lends.iter().map(move |l| (*b, *l)))
                    .collect()
            })
            .unwrap_or_default();
        for (b, l) in lends {
            if b != self.id && self.holds_addr(l.addr) && !self.st.view.taken_at(&b, 0) {
                let to_inc = self.st.view.hello.get(&b).copied().unwrap_or(0);
                self.st.allocs.insert(
                    l.addr,
                    Use::Lent {
                        to: b,
                        to_inc,
                        lend: l,
                    },
                );
            }
        }
        self.st.member = true;
        self.dirty = true;
    }

    /// Gives written by a node this one took, not yet confirmed by their
    /// receiver, are written again here: the giver's record vanishes with it
    /// (the mesh drops a gone node's records, a removed node that returns
    /// starts empty), and a receiver that had not read it would never learn
    /// the block is its own.
    fn relay_gives(&mut self) {
        let v = &self.st.view;
        let relays: Vec<(u64, BlockRec)> = v
            .claims
            .iter()
            .filter(|(_, c)| !c.own && c.holder != self.id)
            .filter(|(_, c)| {
                c.from.is_some_and(|f| {
                    f != self.id && v.taken_at(&f, 0) && v.follow(f, 0).0 == self.id
                })
            })
            .map(|(k, c)| {
                let rec = BlockRec {
                    gen: c.gen - 1,
                    inc: c.inc,
                    active: false,
                    to: Some((c.holder, c.inc)),
                    took: false,
                };
                (*k, rec)
            })
            .collect();
        for (k, rec) in relays {
            if self.st.blocks.get(&k) != Some(&rec) {
                self.set_block(k, rec);
            }
        }
    }

    /// Taken blocks leave quarantine once [`QUARANTINE_MS`] passed and every
    /// node not removed is up (its records, a give the taker missed among them,
    /// have had the time to arrive); a block whose take lost to a give chain
    /// leaves it at once.
    fn end_quarantine(&mut self, store: &Store, live: &dyn Liveness, now: u64) {
        let v = &self.st.view;
        let all_up = v.nodes().iter().chain(store.owners()).all(|n| {
            *n == self.id || live.is_up(n) || v.taken_at(n, v.hello.get(n).copied().unwrap_or(0))
        });
        let id = self.id;
        let before = self.st.quarantine.len();
        self.st.quarantine.retain(|k, at| {
            v.holder(*k) == Some(id) && !(all_up && now.saturating_sub(*at) >= QUARANTINE_MS)
        });
        if self.st.quarantine.len() != before {
            self.dirty = true;
        }
    }

    /// A borrowed address in a block this node now holds (given or taken
    /// from its lender) becomes an address of its own block.
    fn absorb_borrowed(&mut self) {
        let mine: Vec<std::net::IpAddr> = self
            .st
            .borrowed
            .keys()
            .copied()
            .filter(|a| self.holds_addr(*a))
            .collect();
        for a in mine {
            let owner = self.st.borrowed.remove(&a).flatten();
            self.st.lent_by.remove(&a);
            match owner {
                Some(o) => {
                    self.st.allocs.insert(a, Use::Mine(o));
                }
                None => {
                    if matches!(self.st.allocs.get(&a), Some(Use::Lent { to, .. }) if *to == self.id)
                    {
                        self.st.allocs.remove(&a);
                    }
                }
            }
            self.dirty = true;
        }
    }

    fn block_empty(&self, k: u64) -> bool {
        self.cfg
            .space
            .addrs(k)
            .iter()
            .all(|a| !self.st.allocs.contains_key(a))
    }

    fn holds_addr(&self, a: std::net::IpAddr) -> bool {
        self.cfg
            .space
            .block_of(a)
            .is_some_and(|k| self.st.view.holder(k) == Some(self.id))
    }

    /// Blocks given to (or taken by) this node get an own record.
    fn accept_blocks(&mut self, now: u64) {
        let incoming: Vec<u64> = self
            .st
            .view
            .claims
            .iter()
            .filter(|(_, c)| !(c.holder == self.id && c.own))
            .filter(|(k, _)| self.st.view.holder(**k) == Some(self.id))
            .map(|(k, _)| *k)
            .collect();
        for k in incoming {
            let given_to_me = self.st.view.claims[&k].holder == self.id;
            let rec = BlockRec {
                gen: self.gen_for(k),
                inc: self.st.inc,
                active: (given_to_me && !self.waiting.is_empty()) || !self.block_empty(k),
                to: None,
                took: !given_to_me,
            };
            if !given_to_me {
                self.st.quarantine.insert(k, now);
            }
            self.set_block(k, rec);
        }
    }

    fn serve_requests(&mut self, store: &Store) {
        let owners: Vec<NodeId> = store.owners().copied().filter(|o| *o != self.id).collect();
        for b in owners {
            let Some(req) = dec::<ReqRec>(store, &b, &format!("{}req", self.prefix())) else {
                continue;
            };
            if req.to != self.id || self.st.served.get(&b).is_some_and(|s| *s >= req.seq) {
                continue;
            }
            if self.st.view.taken_at(&b, req.inc) {
                continue;
            }
            if req.block {
                let reserve = self.held_blocks().into_iter().find(|(k, a)| {
                    !a && self.block_empty(*k) && !self.st.quarantine.contains_key(k)
                });
                if let Some((k, _)) = reserve {
                    let rec = BlockRec {
                        gen: self.gen_for(k),
                        inc: self.st.inc,
                        active: false,
                        to: Some((b, req.inc)),
                        took: false,
                    };
                    self.set_block(k, rec);
                }
            } else {
                let mut left = req.addrs;
                let free: Vec<std::net::IpAddr> = self
                    .active_blocks()
                    .into_iter()
                    .flat_map(|k| self.cfg.space.addrs(k))
                    .filter(|a| !self.st.allocs.contains_key(a))
                    .collect();
                for a in free {
                    if left == 0 {
                        break;
                    }
                    left -= 1;
                    let lend = Lend {
                        addr: a,
                        lender: self.id,
                        seq: req.seq,
                    };
                    self.st.allocs.insert(
                        a,
                        Use::Lent {
                            to: b,
                            to_inc: req.inc,
                            lend,
                        },
                    );
                }
            }
            self.st.served.insert(b, req.seq);
            self.dirty = true;
        }
    }

    /// Frees lent addresses the borrower gave back, or whose borrower was
    /// removed; adopts as lent any address of a held block that a live
    /// borrower says it holds (a lend inherited from a removed lender whose
    /// `lent` record never arrived here).
    fn settle_lends(&mut self, store: &Store) {
        let owners: Vec<NodeId> = store.owners().copied().filter(|o| *o != self.id).collect();
        for b in owners {
            let Some(br) = dec::<BorrowedRec>(store, &b, &format!("{}borrowed", self.prefix()))
            else {
                continue;
            };
            let inc = self.st.view.hello.get(&b).copied().unwrap_or(0);
            if self.st.view.taken_at(&b, inc) {
                continue;
            }
            for a in br.in_use {
                if self.holds_addr(a) && !self.st.allocs.contains_key(&a) {
                    let lend = Lend {
                        addr: a,
                        lender: self.id,
                        seq: 0,
                    };
                    self.st.allocs.insert(
                        a,
                        Use::Lent {
                            to: b,
                            to_inc: inc,
                            lend,
                        },
                    );
                    self.dirty = true;
                }
            }
        }
        let mut free = Vec::new();
        for (a, u) in &self.st.allocs {
            let Use::Lent { to, to_inc, lend } = u else {
                continue;
            };
            if self.st.view.taken_at(to, *to_inc) {
                free.push(*a);
                continue;
            }
            if let Some(br) = dec::<BorrowedRec>(store, to, &format!("{}borrowed", self.prefix())) {
                let seen = br.seen.get(&lend.lender).copied().unwrap_or(0);
                if seen >= lend.seq && !br.in_use.contains(a) {
                    free.push(*a);
                }
            }
        }
        for a in free {
            self.st.allocs.remove(&a);
            self.dirty = true;
        }
    }

    /// Takes in what others lend here; forgets a given-back address once
    /// the writer that lent it no longer lists it (a record that vanished
    /// with a gone writer proves nothing).
    fn settle_borrowed(&mut self, store: &Store) {
        let key = format!("{}lent/{}", self.prefix(), self.id);
        let mut listed: BTreeMap<std::net::IpAddr, u64> = BTreeMap::new();
        let mut present = BTreeSet::new();
        let owners: Vec<NodeId> = store.owners().copied().collect();
        for w in owners {
            let taken = self
                .st
                .view
                .taken_at(&w, self.st.view.hello.get(&w).copied().unwrap_or(0));
            let Some(rec) = dec::<LentRec>(store, &w, &key) else {
                if store.version(&w).is_some() {
                    present.insert(w);
                }
                continue;
            };
            present.insert(w);
            for l in &rec.lends {
                let seq = listed.entry(l.addr).or_default();
                *seq = (*seq).max(l.seq);
                let again = self
                    .st
                    .returned
                    .get(&l.addr)
                    .is_some_and(|(_, s)| *s >= l.seq);
                // Only from the node that holds the address's block now (not
                // a stale record of a removed node, never a block held here).
                let holder = self
                    .cfg
                    .space
                    .block_of(l.addr)
                    .and_then(|k| self.st.view.holder(k));
                if !taken && !again && holder == Some(w) && !self.st.borrowed.contains_key(&l.addr)
                {
                    self.st.borrowed.insert(l.addr, None);
                    self.st.lent_by.insert(l.addr, (w, l.seq));
                    self.dirty = true;
                }
            }
            let seen = self.st.seen_lends.entry(w).or_default();
            if rec.served > *seen {
                *seen = rec.served;
                self.dirty = true;
            }
        }
        let before = self.st.returned.len();
        self.st
            .returned
            .retain(|a, (w, _)| listed.contains_key(a) || !present.contains(w));
        if self.st.returned.len() != before {
            self.dirty = true;
        }
        if !self.st.borrowed.is_empty() {
            self.st.member = true;
        }
    }

    fn give_back(&mut self, now: u64) {
        for k in self.active_blocks() {
            if !self.block_empty(k) {
                self.st.empty_since.remove(&k);
                continue;
            }
            let since = *self.st.empty_since.entry(k).or_insert(now);
            if now.saturating_sub(since) >= self.cfg.grace_ms {
                let mut rec = self.st.blocks[&k];
                rec.active = false;
                self.set_block(k, rec);
                self.st.empty_since.remove(&k);
            }
        }
        let active: BTreeSet<u64> = self.active_blocks().into_iter().collect();
        self.st.empty_since.retain(|k, _| active.contains(k));
    }

    /// Asks another node for a block, or for addresses, while containers wait.
    fn ask(&mut self, live: &dyn Liveness, now: u64) {
        // Waiting containers that got space meanwhile are served by their retry.
        if self.waiting.is_empty() {
            return;
        }
        if let Some((r, at)) = self.st.req {
            let answered = self.st.seen_lends.get(&r.to).is_some_and(|s| *s >= r.seq)
                || self
                    .st
                    .view
                    .claims
                    .values()
                    .any(|c| c.holder == self.id && !c.own);
            let timed_out = now.saturating_sub(at) >= self.cfg.request_timeout_ms;
            let gone = !live.is_up(&r.to);
            if !(answered || timed_out || gone) {
                return;
            }
        }
        let uses = &self.last_use;
        let exclude = self.st.req.map(|(r, _)| r.to);
        let pick = |f: &dyn Fn(&UseRec) -> u64| {
            uses.iter()
                .filter(|(n, u)| f(u) > 0 && Some(**n) != exclude)
                .max_by_key(|(n, u)| (f(u), std::cmp::Reverse(**n)))
                .map(|(n, _)| *n)
                .or_else(|| {
                    uses.iter()
                        .filter(|(_, u)| f(u) > 0)
                        .max_by_key(|(n, u)| (f(u), std::cmp::Reverse(**n)))
                        .map(|(n, _)| *n)
                })
        };
        let (to, block) = if let Some(n) = pick(&|u| u.reserve) {
            (n, true)
        } else if let Some(n) = pick(&|u| u.free) {
            (n, false)
        } else {
            self.st.req = None;
            return;
        };
        if self.st.heir.is_none() {
            let inc = self.st.view.hello.get(&to).copied().unwrap_or(0);
            self.st.heir = Some((to, inc));
        }
        self.st.req_seq += 1;
        let req = ReqRec {
            to,
            seq: self.st.req_seq,
            block,
            addrs: self.waiting.len() as u32,
            inc: self.st.inc,
        };
        self.st.req = Some((req, now));
        self.dirty = true;
    }

    /// The summary others read.
    pub fn usage(&self) -> UseRec {
        let (held, active) = self.held_counts();
        let mut free = 0u64;
        for k in self.active_blocks() {
            free += self
                .cfg
                .space
                .addrs(k)
                .iter()
                .filter(|a| !self.st.allocs.contains_key(a))
                .count() as u64;
        }
        let used = self
            .st
            .allocs
            .values()
            .filter(|u| matches!(u, Use::Mine(_)))
            .count() as u64
            + self.st.borrowed.values().filter(|o| o.is_some()).count() as u64;
        let lent = self
            .st
            .allocs
            .values()
            .filter(|u| matches!(u, Use::Lent { .. }))
            .count() as u64;
        UseRec {
            active,
            reserve: held - active,
            used,
            free,
            lent,
            borrowed: self.st.borrowed.len() as u64,
            ready: self.ready().is_ok(),
        }
    }

    /// The records this node should hold now, against what it holds: the writes.
    fn writes(&mut self, store: &Store) -> Vec<Write> {
        let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let p = self.prefix();
        want.insert(
            format!("{p}cfg"),
            enc(&CfgRec {
                space: self.cfg.space.clone(),
                init: self.cfg.init,
            }),
        );
        want.insert(format!("{p}hello"), enc(&self.st.inc));
        if let Some(b) = &self.st.boot {
            want.insert(format!("{p}boot"), enc(b));
        }
        if let Some(g) = &self.st.view.genesis {
            want.insert(format!("{p}genesis"), enc(g));
        }
        if let Some(h) = &self.st.heir {
            want.insert(format!("{p}heir"), enc(h));
        }
        for (k, b) in &self.st.blocks {
            want.insert(format!("{p}b/{k}"), enc(b));
        }
        for (x, t) in &self.st.took {
            want.insert(format!("{p}took/{x}"), enc(t));
        }
        for (x, a) in &self.st.acks {
            want.insert(format!("{p}ack/{x}"), enc(a));
        }
        for (x, i) in &self.st.rms {
            want.insert(format!("{p}rm/{x}"), enc(i));
        }
        if let Some((r, _)) = &self.st.req {
            want.insert(format!("{p}req"), enc(r));
        }
        let mut lent: BTreeMap<NodeId, LentRec> = BTreeMap::new();
        for (b, s) in &self.st.served {
            lent.entry(*b).or_default().served = *s;
        }
        for u in self.st.allocs.values() {
            if let Use::Lent { to, lend, .. } = u {
                lent.entry(*to).or_default().lends.push(*lend);
            }
        }
        for (b, r) in &lent {
            want.insert(format!("{p}lent/{b}"), enc(r));
        }
        if !self.st.borrowed.is_empty() || !self.st.seen_lends.is_empty() {
            want.insert(
                format!("{p}borrowed"),
                enc(&BorrowedRec {
                    seen: self.st.seen_lends.clone(),
                    in_use: self.st.borrowed.keys().copied().collect(),
                }),
            );
        }
        if self.st.view.genesis.is_some() {
            want.insert(format!("{p}use"), enc(&self.usage()));
        }
        let mut out = Vec::new();
        for r in store.records_of(&self.id) {
            if r.key.starts_with(p) && r.value.is_some() && !want.contains_key(&r.key) {
                out.push((r.key, None));
            }
        }
        for (k, v) in want {
            if store.get(&self.id, &k) != Some(Some(v.as_slice())) {
                out.push((k, Some(v)));
            }
        }
        out
    }
}
