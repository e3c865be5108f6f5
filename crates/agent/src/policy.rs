//! Network policy on this host (docs/policy.md). The world comes from the mesh's records
//! (endpoints of every host, objects any host wrote) through `weft_policy::records::Index`,
//! seeded at start from a cache of the last run (`policy.json`) so that a restart enforces
//! at once what it enforced before. `weft_policy` compiles it for this host's endpoints;
//! this module applies the difference to the kernel (`nft`, the fast path's isolated map),
//! cuts tracked connections the policy no longer allows, and keeps objects alive whose
//! writer is down (the lowest live node writes them again).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use weft_alloc::Owner;
use weft_mesh::{NodeId, Status};
use weft_policy::compile::{self, Compiled};
use weft_policy::identity::Identity;
use weft_policy::records::{self, EndpointValue, Index, ObjectValue, Objects};
use weft_policy::{Flow, World};

use crate::flows::Flows;
use crate::{log, Agent};

/// The policy's state in the owner task.
#[derive(Default)]
pub(crate) struct PolicyState {
    /// The table as applied since this agent started (None: the next apply replaces it
    /// whole).
    applied: Option<Compiled>,
    /// The groups of endpoint kinds under the current policies (a CNI ADD's isolation
    /// looks its kind up instead of matching every policy again).
    kinds: compile::Groups,
    /// The kernel has weft's policy table (as this agent made it).
    table: bool,
    /// Whether that table is hooked in (not dormant), as this agent last set it; None
    /// after a script that may have made it anew or removed it.
    awake: Option<bool>,
    /// Dispatch elements of endpoints isolated by their ADD, added after the answer
    /// ([`compile::Quick`]); `applied` counts them in already.
    dispatch: Vec<compile::ElementOp>,
    index: Index,
    /// The mesh digest the index was last brought up to.
    indexed: Option<u64>,
    pub(crate) world: World,
    pub(crate) objects: Objects,
    /// The world changed since it was last compiled and applied.
    stale: bool,
    /// When to apply next (coalescing bursts of changes).
    pub(crate) due: Option<Instant>,
    /// How long the last apply took (the next waits at least as long).
    last_apply: Duration,
    /// When the last apply ended.
    last_apply_end: Option<Instant>,
    /// The cache of the last run is still in use (until the mesh has had time to bring
    /// every owner's records).
    cache_live: bool,
    /// The mesh digest and the nodes up when objects were last adopted or released.
    adopt_seen: Option<(u64, BTreeSet<NodeId>)>,
    cache_saved: Option<Instant>,
    cache_dirty: bool,
    /// The last failure to apply, if the kernel refused.
    pub(crate) error: Option<String>,
    /// Tracked connections cut because the policy no longer allows them.
    pub(crate) cut: u64,
    /// Why the connections the policy no longer allows could not be cut (tried again on
    /// every tick until it works).
    cut_error: Option<String>,
    pub(crate) flows: Flows,
    /// Drops (ingress, egress) the kernel counted in tables since replaced or removed:
    /// the counters live in the table, and `weft status` counts them all.
    drops_before: (u64, u64),
}

/// How long changes are gathered before they are applied, at least: a burst of mesh
/// updates (a thousand policies arrive in many messages) is applied once. After a slow
/// apply (a big table through `nft`) the wait is as long as that apply took less the
/// time since it ended, so under a stream of changes the agent spends at most about half
/// its time applying and the updates meanwhile gather, while a change after a quiet time
/// is applied at once.
const COALESCE: Duration = Duration::from_millis(50);

/// The longest wait, however slow the last apply was.
const COALESCE_MAX: Duration = Duration::from_millis(1000);

/// The wait after this host's endpoints come and go: their isolation is in place already
/// (the ADD's quick step; a DEL's address is no one's), only their place in other rules'
/// peer sets follows, and a burst of ADDs shares one compile instead of each ADD waiting
/// behind the last one's.
const ENDPOINT_COALESCE: Duration = Duration::from_millis(250);

/// How long after the first peer connection the cache of the last run stays in use (the
/// mesh brings every owner's records within one anti-entropy round).
const CACHE_AFTER_LINK_MS: u64 = 3_000;

/// Without any peer connection, the cache stays in use this long.
const CACHE_MAX_MS: u64 = 60_000;

/// How often the cache file is written at most.
const CACHE_SAVE_EVERY: Duration = Duration::from_secs(2);

/// The file of the cache.
const CACHE_FILE: &str = "policy.json";

#[derive(Deserialize)]
struct CacheFile {
    records: Vec<CachedRecord>,
}

/// [`CacheFile`] as written: the records' values as the JSON text they are, not parsed
/// into trees and written out again (with a thousand policies that took 11-24 ms of the
/// agent's loop every 2 s while endpoints changed).
#[derive(Serialize)]
struct CacheFileOut<'a> {
    records: Vec<CachedRecordOut<'a>>,
}

#[derive(Serialize)]
struct CachedRecordOut<'a> {
    owner: &'a str,
    name: &'a str,
    key: &'a str,
    value: &'a serde_json::value::RawValue,
}

#[derive(Deserialize)]
struct CachedRecord {
    owner: String,
    name: String,
    key: String,
    value: Box<serde_json::value::RawValue>,
}

/// Wall-clock milliseconds (for stamps and flows).
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Adds and deletes set and map elements straight over netlink (no `nft` process, no
/// reading of the whole ruleset), or with `nft` when netlink refuses.
fn add_elements(adds: &[compile::ElementOp]) -> Result<(), String> {
    use weft_netlink::netfilter::{
        nft_add_elements, SetElement, NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6,
    };
    let elems: Vec<SetElement> = adds
        .iter()
        .map(|a| SetElement {
            family: match a.family {
                compile::TableFamily::Inet => NFPROTO_INET,
                compile::TableFamily::Ip => NFPROTO_IPV4,
                compile::TableFamily::Ip6 => NFPROTO_IPV6,
            },
            table: a.table,
            set: &a.set,
            key: a.key,
            pair: a.pair,
            jump: a.jump.as_deref(),
            delete: a.delete,
        })
        .collect();
    match nft_add_elements(&elems) {
        Ok(()) => Ok(()),
        Err(e) => {
            log(format!("policy: {e}; trying nft"));
            crate::dataplane::run_nft(&compile::elements_script(adds))
        }
    }
}

/// `/policy` part of `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyReport {
    /// `on` (some policy exists), `none` (no policy: nothing is isolated) or `error`.
    pub state: String,
    /// Policies in the cluster.
    pub policies: usize,
    /// Endpoints of this host.
    pub endpoints: usize,
    /// Endpoints of this host that some policy isolates.
    pub isolated: usize,
    /// Packets dropped by policy on this host, into its pods (ingress).
    pub dropped_ingress: u64,
    /// Packets dropped by policy on this host, out of its pods (egress).
    pub dropped_egress: u64,
    /// Tracked connections cut because a change no longer allowed them.
    pub connections_cut: u64,
    /// Why the policy could not be applied, if it could not.
    pub error: Option<String>,
}

impl Agent {
    /// Loads the cache of the last run into the index.
    pub(crate) fn policy_load_cache(&mut self) {
        let path = self.cfg.data_dir.join(CACHE_FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let Ok(c) = serde_json::from_slice::<CacheFile>(&bytes) else {
            log(format!("policy: {} is damaged; ignored", path.display()));
            return;
        };
        type Part = (String, Vec<(String, Vec<u8>)>);
        let mut by_owner: std::collections::BTreeMap<String, Part> = Default::default();
        for r in c.records {
            by_owner
                .entry(r.owner)
                .or_insert_with(|| (r.name, Vec::new()))
                .1
                .push((r.key, r.value.get().as_bytes().to_vec()));
        }
        for (owner, (name, recs)) in &by_owner {
            self.pol.index.set_owner(
                owner,
                name,
                0,
                true,
                recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
            );
        }
        self.pol.cache_live = true;
        self.pol.stale = true;
        let (w, o) = self.pol.index.build();
        self.pol.world = w;
        self.pol.objects = o;
    }

    fn policy_save_cache(&mut self, force: bool) {
        if !self.pol.cache_dirty
            || (!force
                && self
                    .pol
                    .cache_saved
                    .is_some_and(|t| t.elapsed() < CACHE_SAVE_EVERY))
        {
            return;
        }
        let all = self.pol.index.records();
        let records = all
            .iter()
            .filter_map(|(owner, name, key, value)| {
                Some(CachedRecordOut {
                    owner,
                    name,
                    key,
                    // Checked (a value that is not JSON is left out), not parsed into a tree.
                    value: serde_json::from_slice(value).ok()?,
                })
            })
            .collect();
        let bytes = serde_json::to_vec(&CacheFileOut { records }).unwrap_or_default();
        let path = self.cfg.data_dir.join(CACHE_FILE);
        let tmp = path.with_extension("tmp");
        let res = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = res {
            log(format!("policy: write {}: {e}", path.display()));
        }
        self.pol.cache_saved = Some(Instant::now());
        self.pol.cache_dirty = false;
    }

    /// Brings the index up to the mesh: the parts of owners whose version changed.
    pub(crate) fn policy_index(&mut self) {
        let now = self.now();
        if self.pol.cache_live {
            let expired = match self.first_link_at {
                Some(t) => now.saturating_sub(t) >= CACHE_AFTER_LINK_MS,
                None => self.cfg.peers.is_empty() || now >= CACHE_MAX_MS,
            };
            if expired {
                self.pol.cache_live = false;
                if self.pol.index.drop_cached() {
                    self.pol.indexed = None;
                }
            }
        }
        let digest = self.node.digest();
        if self.pol.indexed == Some(digest) {
            return;
        }
        self.pol.indexed = Some(digest);
        let store = self.node.store();
        let mut changed = false;
        let mut live = BTreeSet::new();
        for owner in store.owners() {
            if self.node.status(owner) == Status::Gone {
                continue;
            }
            let id = owner.to_string();
            live.insert(id.clone());
            let version = store.version(owner).unwrap_or(0);
            if self.pol.index.version(&id) == Some(version) {
                continue;
            }
            let name = self.name_of(owner).unwrap_or_default();
            let recs: Vec<(&str, &[u8])> = store
                .live_with_prefix(owner, records::EP_PREFIX)
                .chain(store.live_with_prefix(owner, records::OBJ_PREFIX))
                .collect();
            self.pol.index.set_owner(&id, &name, version, false, recs);
            changed = true;
        }
        let gone: Vec<String> = self
            .pol
            .index
            .owners()
            .filter(|(o, cached)| !cached && !live.contains(*o))
            .map(|(o, _)| o.to_string())
            .collect();
        for o in gone {
            self.pol.index.remove_owner(&o);
            changed = true;
        }
        if changed {
            let (w, o) = self.pol.index.build();
            if w != self.pol.world || o != self.pol.objects {
                self.pol.world = w;
                self.pol.objects = o;
                self.pol.stale = true;
                self.pol.cache_dirty = true;
            }
        }
    }

    /// This host's endpoints: the uids of its own `ep/` records.
    pub(crate) fn policy_local_uids(&self) -> BTreeSet<String> {
        self.policy_local()
    }

    fn policy_local(&self) -> BTreeSet<String> {
        self.node
            .store()
            .live_with_prefix(&self.id, records::EP_PREFIX)
            .map(|(k, _)| k[records::EP_PREFIX.len()..].to_string())
            .collect()
    }

    /// Whether a policy exists (weft's policy table is needed).
    pub(crate) fn policy_active(&self) -> bool {
        !self.pol.world.policies.is_empty()
    }

    /// On every tick, and when `due`: follows the mesh, adopts orphaned objects, applies
    /// what changed, saves the cache.
    pub(crate) fn policy_tick(&mut self) {
        self.dns_refresh();
        self.policy_index();
        self.policy_adopt();
        let due = self.pol.due.is_none_or(|t| Instant::now() >= t);
        if due {
            self.pol.due = None;
        }
        if (self.pol.stale && due) || self.pol.applied.is_none() || self.pol.error.is_some() {
            if let Err(e) = self.policy_apply() {
                if self.pol.error.as_deref() != Some(e.as_str()) {
                    log(format!("policy: {e}"));
                }
                self.pol.error = Some(e);
            }
        }
        // (The cut promotes what the policy allows again; not while an apply is pending:
        // the world may be ahead of the rules, an endpoint removed before its isolation.)
        let settled = !self.pol.stale && self.pol.due.is_none();
        if self.pol.cut_error.is_some() || (self.fast.repromote && settled) {
            let local = self.policy_local();
            self.policy_cut(&local);
        }
        self.policy_save_cache(false);
    }

    /// When the policy's table was written and is gone (someone flushed the ruleset), the
    /// next tick writes it whole again; returns 1 when it is gone. Until then the pods it
    /// isolates are not isolated: the caller looks every 30 s. With `weft_rewritten`
    /// (weft's own tables were gone, and with them the policy's elements of their
    /// `isolated` sets) it is written whole again anyway.
    pub(crate) fn policy_table_check(&mut self, weft_rewritten: bool) -> Result<u64, String> {
        use weft_netlink::netfilter::{nft_table_exists, NFPROTO_INET};
        if !self.pol.table || self.pol.applied.is_none() {
            return Ok(0);
        }
        let there =
            nft_table_exists(NFPROTO_INET, compile::TABLE_NAME).map_err(|e| e.to_string())?;
        if there {
            if weft_rewritten {
                log("policy: weft's tables were written again; writing the policy's again");
                self.pol.applied = None;
            }
            return Ok(0);
        }
        log(format!(
            "policy: table {} is gone (the ruleset was flushed?); writing it again",
            compile::TABLE
        ));
        self.pol.applied = None;
        Ok(1)
    }

    /// Asks for an apply soon: the records that arrive meanwhile (a burst of a mesh
    /// update) are indexed and applied together, once.
    pub(crate) fn policy_soon(&mut self) {
        self.policy_after(COALESCE);
    }

    fn policy_after(&mut self, least: Duration) {
        if self.pol.due.is_none() {
            // As long as the last apply took, less the time since it ended: changes
            // arriving during a stream of slow applies gather, a lone change after a
            // quiet time waits only `least`.
            let since = self
                .pol
                .last_apply_end
                .map_or(Duration::MAX, |t| t.elapsed());
            let wait = self
                .pol
                .last_apply
                .saturating_sub(since)
                .clamp(least, COALESCE_MAX);
            self.pol.due = Some(Instant::now() + wait);
        }
    }

    /// Compiles the world for this host and applies the difference to the kernel.
    pub(crate) fn policy_apply(&mut self) -> Result<(), String> {
        self.policy_dispatch();
        let t0 = Instant::now();
        self.policy_index();
        let local = self.policy_local();
        let new = compile::compile(&self.pol.world, |e| local.contains(&e.uid));
        let t_compile = t0.elapsed();
        let active = self.policy_active();
        let keep_weft = self.cfg.dataplane.mode.is_some() && self.cfg.dataplane.nat;
        // Endpoints coming and going change elements only: over netlink, without `nft`
        // reading the whole ruleset first.
        let ops = match (&self.pol.applied, self.pol.table, active) {
            (Some(old), true, true) => compile::diff_elements(old, &new),
            _ => None,
        };
        let script = if ops.is_some() {
            String::new()
        } else if active {
            match (&self.pol.applied, self.pol.table) {
                (Some(old), true) => compile::diff_script(old, &new),
                _ => compile::full_script(&new),
            }
        } else if self.pol.table || self.pol.applied.is_none() {
            compile::remove_script(keep_weft)
        } else {
            String::new()
        };
        let before: BTreeSet<IpAddr> = self
            .pol
            .applied
            .as_ref()
            .map(|c| c.isolated.clone())
            .unwrap_or_default();
        // The fast path lets isolated pods' packets through to the stack before the rules
        // exist, and forwards them again only after they are gone.
        let union: BTreeSet<IpAddr> = before.union(&new.isolated).copied().collect();
        self.fast_isolate(&union)?;
        if active {
            // The raw chains exempt isolated pods from `notrack` before any is isolated.
            self.dp_nat_sync()?;
        }
        if !new.isolated.is_empty() && self.pol.table && self.pol.applied.is_some() {
            // A table changed in place is hooked in before anything is isolated in it;
            // one that cannot be is written whole at the next try.
            if let Err(e) = self.policy_hook(true) {
                self.pol.applied = None;
                return Err(e);
            }
        }
        let t1 = Instant::now();
        if let Some(ops) = &ops {
            if let Err(e) = add_elements(ops) {
                // The kernel's table is not what `applied` says: write it whole.
                log(format!("policy: {e}; writing the whole table"));
                self.pol.awake = None;
                self.policy_keep_drops();
                crate::dataplane::run_nft(&compile::full_script(&new))?;
            }
        } else if !script.is_empty() {
            self.pol.awake = None;
            if script.contains(&format!("delete table {}", compile::TABLE)) {
                self.policy_keep_drops();
            }
            crate::dataplane::run_nft(&script)?;
        }
        if active {
            // A table made anew is hooked in; one with nothing isolated is hooked out only
            // after the change that emptied it.
            if let Err(e) = self.policy_hook(!new.isolated.is_empty()) {
                if !new.isolated.is_empty() {
                    // Not enforced: the next try writes the table whole.
                    self.pol.applied = None;
                    return Err(e);
                }
                log(format!("policy: {e}"));
            }
        }
        let t_nft = t1.elapsed();
        if t0.elapsed() > Duration::from_millis(200) {
            log(format!(
                "policy: applied {} policies: index and compile {} ms, nft {} ms ({} lines)",
                self.pol.world.policies.len(),
                t_compile.as_millis(),
                t_nft.as_millis(),
                script.lines().count()
            ));
        }
        self.fast_isolate(&new.isolated)?;
        if !active {
            // Nothing is isolated any more: the raw chains drop their lookups.
            self.dp_nat_sync()?;
        }
        self.pol.last_apply = t0.elapsed();
        self.pol.last_apply_end = Some(Instant::now());
        let changed = self.pol.applied.as_ref() != Some(&new);
        self.pol.table = active;
        self.pol.applied = Some(new);
        self.pol.stale = false;
        if self.pol.error.take().is_some() {
            log("policy: applied again");
        }
        if changed && active {
            self.policy_cut(&local);
        }
        Ok(())
    }

    /// Deletes the tracked connections of this host's isolated pods that the policy no
    /// longer allows; their next packets are judged again (docs/policy.md,
    /// "Connections").
    /// The established connections it still allows are promoted to the fast path again
    /// (docs/policy.md, "Established connections").
    fn policy_cut(&mut self, local: &BTreeSet<String>) {
        // Every promotion is withdrawn first: a connection cut below must not go on past
        // the stack, whatever happens to the listing.
        if let Err(e) = self.fast_forget_promoted() {
            let e = format!("cannot withdraw established connections from the fast path: {e}");
            if self.pol.cut_error.as_deref() != Some(e.as_str()) {
                log(format!("policy: {e}"));
            }
            self.pol.cut_error = Some(e);
            return;
        }
        self.fast.repromote = false;
        let none_isolated = (self.pol.applied.as_ref()).is_none_or(|a| a.isolated.is_empty());
        if none_isolated {
            // Nothing of this host is isolated: nothing to cut.
            self.pol.cut_error = None;
            return;
        }
        let dns = self.cfg.dns.as_ref().map(|d| d.addr);
        // A pod's connections with this host itself never cross `forward`: never cut.
        let read = crate::dataplane::conntrack_table_status()
            .and_then(|t| Ok((t, crate::dataplane::host_addrs(dns)?)));
        let (table, host) = match read {
            Ok(t) => t,
            Err(e) => {
                // Connections the policy no longer allows may still run: said loudly (in
                // the log and as the policy's error), and tried again on every tick.
                let e = format!("cannot cut connections the policy no longer allows: {e}");
                if self.pol.cut_error.as_deref() != Some(e.as_str()) {
                    log(format!("policy: {e}"));
                }
                self.pol.cut_error = Some(e);
                return;
            }
        };
        if self.pol.cut_error.take().is_some() {
            log("policy: connections can be cut again");
        }
        let Some(applied) = &self.pol.applied else {
            return;
        };
        let iso = &applied.isolated;
        // What the `promote` chain would log (docs/policy.md, "Established connections").
        let promotable: BTreeSet<(IpAddr, IpAddr, u16, u16)> = table
            .iter()
            .filter(|(c, meta)| crate::fast::promotable(c, meta))
            .map(|&((_, orig, _), _)| orig)
            .collect();
        let table: Vec<_> = table.into_iter().map(|(c, _)| c).collect();
        let conns = weft_dataplane::stateful::tracked(&table, |a| iso.contains(&a));
        let mut cut = 0;
        let mut promote = Vec::new();
        for c in conns {
            // Judged as `forward` sees it: after DNAT (a hostPort's backend), before SNAT.
            let flow = Flow {
                src: c.src,
                dst: c.to,
                proto: c.proto,
                port: c.to_port,
            };
            let v = weft_policy::local_verdict(
                &self.pol.world,
                &flow,
                |e| local.contains(&e.uid),
                |a| host.contains(&a),
            );
            if v.allowed {
                let orig = (c.src, c.dst, c.sport, c.dport);
                if promotable.contains(&orig) {
                    promote.push(orig);
                }
                continue;
            }
            match weft_netlink::netfilter::conntrack_delete(c.src, c.dst, c.proto, c.sport, c.dport)
            {
                Ok(true) => cut += 1,
                Ok(false) => {}
                Err(e) => log(format!("policy: {e}")),
            }
        }
        if cut > 0 {
            log(format!(
                "policy: cut {cut} tracked connection(s) the policy no longer allows"
            ));
            self.pol.cut += cut;
        }
        for (src, dst, sport, dport) in promote {
            if let Err(e) = self.fast_promote(src, dst, sport, dport) {
                // Only slower: the connection stays on the stack.
                log(format!("policy: {e}"));
                break;
            }
        }
    }

    /// Registers a new attachment of this host (its ADD) and isolates it before the
    /// answer, when a policy says so. An error leaves it unregistered.
    pub(crate) fn endpoint_add(
        &mut self,
        owner: &Owner,
        id: &Identity,
        addrs: &[IpAddr],
    ) -> Result<(), String> {
        let uid = format!("{}/{}", owner.container_id, owner.ifname);
        let key = records::endpoint_key(&uid);
        let value = EndpointValue {
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            labels: id.labels.clone(),
            ports: id.ports.clone(),
            addrs: addrs.to_vec(),
            aliases: id.aliases.clone(),
        }
        .encode();
        if self.node.store().get(&self.id, &key) != Some(Some(value.as_slice())) {
            let now = self.now();
            let outs = self.node.set_local(&key, Some(value), now);
            self.perform(outs);
            self.save();
        }
        // The world gets the endpoint at once; the index catches up with this host's
        // records after the answer (rebuilding it here would cost every ADD a parse of
        // every object this host wrote).
        let endpoint = weft_policy::Endpoint {
            uid: uid.clone(),
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            labels: self
                .pol
                .objects
                .labels_of(&uid)
                .unwrap_or_else(|| id.labels.clone()),
            ports: id.ports.clone(),
            addrs: addrs.to_vec(),
            node: self.cfg.name.clone(),
        };
        self.pol.world.add_endpoint(endpoint.clone());
        let quick = match (&mut self.pol.applied, self.pol.table) {
            (Some(applied), true) => {
                compile::isolate_one(applied, &mut self.pol.kinds, &self.pol.world, &endpoint)
            }
            _ => None,
        };
        let res = match quick {
            Some(q) if q.is_empty() => Ok(()),
            Some(q) => {
                let iso = self
                    .pol
                    .applied
                    .as_ref()
                    .map(|a| a.isolated.clone())
                    .unwrap_or_default();
                // Isolated (dropped) before the answer; let in by its group's rules just
                // after it, when the turn's answers are out (`policy_dispatch`).
                self.fast_isolate(&iso)
                    .and_then(|()| self.policy_hook(true))
                    .and_then(|()| add_elements(&q.isolate))
                    .map(|()| self.pol.dispatch.extend(q.dispatch))
                    .inspect_err(|_| {
                        // Not applied: the next apply starts from a whole table. What
                        // earlier ADDs of this turn left in `dispatch` still goes in.
                        self.pol.applied = None;
                    })
            }
            None => self.policy_apply(),
        };
        match res {
            Ok(()) => {
                // Its name is answered at once on this host.
                self.dns_refresh();
                // Its place in other rules' sets follows soon.
                self.policy_after(ENDPOINT_COALESCE);
                Ok(())
            }
            Err(e) => {
                self.endpoint_remove(owner);
                Err(format!("cannot apply the network policy for it: {e}"))
            }
        }
    }

    /// Hooks weft's policy table in (`awake`) or out (dormant). It is dormant while no pod
    /// of this host is isolated: its base chains would only accept then, and every packet
    /// the host forwards would still walk them (docs/policy.md, "Applying").
    fn policy_hook(&mut self, awake: bool) -> Result<(), String> {
        if self.pol.awake == Some(awake) {
            return Ok(());
        }
        weft_netlink::netfilter::nft_table_dormant(
            weft_netlink::netfilter::NFPROTO_INET,
            compile::TABLE_NAME,
            !awake,
        )
        .map_err(|e| e.to_string())?;
        self.pol.awake = Some(awake);
        Ok(())
    }

    /// Adds the dispatch elements that ADDs left for after their answers (the agent's loop
    /// calls this after every turn's answers). Until then those pods are isolated and
    /// nothing is let in; should the kernel refuse, the next apply writes the whole table.
    pub(crate) fn policy_dispatch(&mut self) {
        if self.pol.dispatch.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.pol.dispatch);
        if let Err(e) = add_elements(&ops) {
            log(format!(
                "policy: dispatch of new endpoints: {e}; writing the whole table"
            ));
            self.pol.applied = None;
            self.policy_after(Duration::ZERO);
        }
    }

    /// Forgets an attachment of this host (its DEL or GC): its record, and the labels
    /// set for it with `weft label`.
    pub(crate) fn endpoint_remove(&mut self, owner: &Owner) {
        let uid = format!("{}/{}", owner.container_id, owner.ifname);
        let key = records::endpoint_key(&uid);
        let now = self.now();
        // Its address may have a new owner before its isolation is lifted: its
        // connections' promotions go now (the next policy tick makes the others again).
        if let Err(e) = self.fast_forget_promoted() {
            log(format!("policy: {e}"));
        }
        self.fast.repromote = true;
        let mut outs = Vec::new();
        if matches!(self.node.store().get(&self.id, &key), Some(Some(_))) {
            outs.extend(self.node.set_local(&key, None, now));
        }
        let lk = records::labels_key(&uid);
        if self
            .pol
            .objects
            .winners
            .get(&lk)
            .is_some_and(|(v, _)| v.object.is_some())
        {
            let stamp = self
                .pol
                .objects
                .next_stamp(&lk, wall_ms(), &self.id.to_string());
            let v = ObjectValue {
                stamp,
                object: None,
            };
            outs.extend(self.node.set_local(&lk, Some(v.encode()), now));
        }
        if !outs.is_empty() {
            self.perform(outs);
            self.save();
            self.dns_refresh();
            self.policy_after(ENDPOINT_COALESCE);
        }
    }

    /// Writes cluster objects (or their deletions, `object` None) as this node's records,
    /// each stamped above every stamp seen for it; saved and indexed once.
    pub(crate) fn policy_write(&mut self, writes: Vec<(String, Option<serde_json::Value>)>) {
        if writes.is_empty() {
            return;
        }
        let now = self.now();
        let me = self.id.to_string();
        let mut recs = Vec::with_capacity(writes.len());
        for (key, object) in writes {
            let stamp = self.pol.objects.next_stamp(&key, wall_ms(), &me);
            let v = ObjectValue { stamp, object };
            recs.push((key, Some(v.encode())));
        }
        // One mesh update per peer for the lot, not one per object.
        let outs = self.node.set_local_many(recs, now);
        self.perform(outs);
        self.save();
        self.policy_index();
    }

    /// Objects whose winning record belongs to a node that is not up are written again by
    /// the lowest live node, with the same stamp: they outlive their writer. Copies made
    /// so are dropped again once the writer (or a lower node) is up with the object.
    /// Nothing is decided while the cache of the last run is in use: until the peers are
    /// heard from, every other node looks down.
    fn policy_adopt(&mut self) {
        if self.pol.cache_live {
            return;
        }
        let digest = self.node.digest();
        let reachable = self.node.reachable();
        if self
            .pol
            .adopt_seen
            .as_ref()
            .is_some_and(|(d, r)| *d == digest && *r == reachable)
        {
            return;
        }
        self.pol.adopt_seen = Some((digest, reachable.clone()));
        let me = self.id;
        let lowest = !reachable.iter().any(|n| *n < me);
        let mut up: BTreeSet<String> = reachable.iter().map(NodeId::to_string).collect();
        up.insert(me.to_string());
        let (adopt, release) =
            self.pol
                .index
                .adoption(&me.to_string(), &up, lowest, &self.pol.objects.winners);
        let mut recs: Vec<(String, Option<Vec<u8>>)> = adopt
            .into_iter()
            .map(|(key, v)| (key, Some(v.encode())))
            .collect();
        if !release.is_empty() {
            log(format!(
                "policy: {} object(s) held by their writer again; dropping this node's copies",
                release.len()
            ));
        }
        recs.extend(release.into_iter().map(|key| (key, None)));
        if !recs.is_empty() {
            let now = self.now();
            let outs = self.node.set_local_many(recs, now);
            self.perform(outs);
            self.save();
        }
    }

    /// Before the table (and its drop counters) is replaced or removed: what they counted.
    fn policy_keep_drops(&mut self) {
        if let Some((i, e)) = crate::flows::drop_counters() {
            self.pol.drops_before.0 += i;
            self.pol.drops_before.1 += e;
        }
    }

    pub(crate) fn policy_report(&self) -> PolicyReport {
        let local = self.policy_local();
        let (din, dout) = crate::flows::drop_counters().unwrap_or((0, 0));
        let (din, dout) = (
            din + self.pol.drops_before.0,
            dout + self.pol.drops_before.1,
        );
        PolicyReport {
            state: if self.pol.error.is_some() || self.pol.cut_error.is_some() {
                "error"
            } else if self.policy_active() {
                "on"
            } else {
                "none"
            }
            .into(),
            policies: self.pol.world.policies.len(),
            endpoints: local.len(),
            isolated: self
                .pol
                .world
                .endpoints
                .values()
                .filter(|e| local.contains(&e.uid))
                .filter(|e| {
                    e.addrs.iter().any(|a| {
                        self.pol
                            .applied
                            .as_ref()
                            .is_some_and(|c| c.isolated.contains(a))
                    })
                })
                .count(),
            dropped_ingress: din,
            dropped_egress: dout,
            connections_cut: self.pol.cut,
            error: self
                .pol
                .error
                .clone()
                .or_else(|| self.pol.cut_error.clone()),
        }
    }

    /// At shutdown: the cache is written whatever its age.
    pub(crate) fn policy_shutdown(&mut self) {
        self.pol.cache_dirty = true;
        self.policy_save_cache(true);
    }
}

impl PolicyState {
    /// The policy was applied since this agent started (its isolated pods are known).
    pub(crate) fn applied_any(&self) -> bool {
        self.applied.is_some()
    }

    /// What a chain of the applied table stands for.
    pub(crate) fn applied_info(&self, chain: &str) -> Option<compile::ChainInfo> {
        self.applied.as_ref()?.info.get(chain).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_written_with_values_as_they_are_and_read_back() {
        let value = br#"{"object":{"kind":"NetworkPolicy","b":[1,2]},"stamp":"7"}"#;
        let out = CacheFileOut {
            records: vec![CachedRecordOut {
                owner: "n1",
                name: "h1",
                key: "pol/np/b/x",
                value: serde_json::from_slice(value).unwrap(),
            }],
        };
        let bytes = serde_json::to_vec(&out).unwrap();
        let back: CacheFile = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.records.len(), 1);
        assert_eq!(back.records[0].key, "pol/np/b/x");
        // The very bytes the mesh held, not a re-serialised tree.
        assert_eq!(back.records[0].value.get().as_bytes(), value);
        // A value that is not JSON is refused, not written.
        assert!(serde_json::from_slice::<&serde_json::value::RawValue>(b"{\"a\":").is_err());
    }
}
