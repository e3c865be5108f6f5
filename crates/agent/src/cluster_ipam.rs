//! The cluster IPAM in the agent: the owner task holds a `weft_ipam::Ipam` next to the mesh
//! `Node`, steps it on every tick (and after IPAM requests), persists its state to
//! `ipam.json` before publishing its records and before answering an allocation or a
//! release, and serves the `/ipam` endpoints. Allocations that must wait for space or for
//! readiness are kept in a list and retried after every step, so the owner task never
//! blocks.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Instant;

use serde::Deserialize;
use tokio::sync::oneshot;
use weft_alloc::Owner;
use weft_ipam::view::UseRec;
use weft_ipam::{AllocError, Persist};
use weft_mesh::{NodeId, Status};

use weft_policy::identity::Identity;

use crate::api::{error_json, ALLOCATE_WAIT};
use crate::{log, Agent, IpamNodeReport, IpamReport, NodeReport};

/// An allocation waiting for space or readiness.
pub(crate) struct Pending {
    owner: Owner,
    identity: Identity,
    /// `Some(v6)`: Docker's IPAM asks one family and answers in its own form; no
    /// endpoint is registered (that happens at `CreateEndpoint`).
    family: Option<bool>,
    deadline: Instant,
    reason: String,
    reply: oneshot::Sender<(u16, String)>,
}

/// What an allocation attempt came to.
enum Attempt {
    /// Answer now.
    Answer(u16, String),
    /// Try again after the next step; why it waits.
    Wait(String),
}

#[derive(Deserialize)]
struct OwnerBody {
    container_id: String,
    ifname: String,
}

#[derive(Deserialize)]
struct GcBody {
    valid: Vec<OwnerBody>,
}

#[derive(Deserialize)]
struct RmpeerBody {
    peer: String,
}

fn owner_of(b: OwnerBody) -> Result<Owner, (u16, String)> {
    if b.container_id.is_empty() || b.ifname.is_empty() {
        return Err((400, error_json("container_id and ifname must not be empty")));
    }
    Ok(Owner::new(b.container_id, b.ifname))
}

/// The attachment's identity sent with an allocation (`"endpoint"`), or the default one
/// (namespace `default`, the container id as its name) for clients that send none.
fn parse_identity(body: &str, owner: &Owner) -> Result<Identity, (u16, String)> {
    #[derive(Deserialize)]
    struct WithEndpoint {
        #[serde(default)]
        endpoint: Option<Identity>,
    }
    let b: WithEndpoint = serde_json::from_str(body).map_err(|e| {
        (
            400,
            error_json(&format!("\"endpoint\" is not understood: {e}")),
        )
    })?;
    let id = b.endpoint.unwrap_or_else(|| Identity {
        namespace: weft_policy::identity::DEFAULT_NAMESPACE.into(),
        name: owner.container_id.clone(),
        labels: Default::default(),
        ports: Vec::new(),
        aliases: Vec::new(),
    });
    // The same checks as the plugin's, for clients that are not weft's plugin.
    let args: Vec<(String, String)> = vec![
        ("K8S_POD_NAMESPACE".into(), id.namespace.clone()),
        ("K8S_POD_NAME".into(), id.name.clone()),
    ];
    let conf = serde_json::json!({
        "cni": {"labels": id.labels.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect::<Vec<_>>()},
        "weft": {"ports": id.ports},
    });
    let mut checked = weft_policy::identity::from_cni(&args, Some(&conf), &owner.container_id)
        .map_err(|e| (400, error_json(&format!("endpoint: {e}"))))?;
    // Aliases are only names: those that are not DNS names get no name in the zone.
    checked.aliases = id.aliases;
    Ok(checked)
}

fn parse_owner(body: &str) -> Result<Owner, (u16, String)> {
    let b: OwnerBody = serde_json::from_str(body).map_err(|e| {
        (
            400,
            error_json(&format!(
                "expected {{\"container_id\": \"...\", \"ifname\": \"...\"}}: {e}"
            )),
        )
    })?;
    owner_of(b)
}

fn query_owner(query: &[(String, String)]) -> Result<Owner, (u16, String)> {
    let get = |k: &str| {
        query
            .iter()
            .find(|(q, _)| q == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    owner_of(OwnerBody {
        container_id: get("container_id"),
        ifname: get("ifname"),
    })
}

/// `{"address": FIRST or null, "addresses": [ALL]}`.
fn address_json(a: &[IpAddr]) -> String {
    serde_json::json!({
        "address": a.first().map(|a| a.to_string()),
        "addresses": a.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    })
    .to_string()
}

/// The time base of the IPAM clock after a restart: the latest time the saved state
/// mentions, so that the engine's clock never goes back across restarts (it keeps request
/// and grace start times in its state).
pub(crate) fn clock_base(p: &Persist) -> u64 {
    let req = p.req.map(|(_, at)| at).unwrap_or(0);
    let empty = p.empty_since.values().copied().max().unwrap_or(0);
    req.max(empty)
}

pub(crate) fn status_str(s: Status) -> &'static str {
    match s {
        Status::Up => "up",
        Status::Down { .. } => "down",
        Status::Gone => "gone",
        Status::Unknown => "unknown",
    }
}

impl Agent {
    /// The IPAM clock: monotonic, also across restarts (see [`clock_base`]).
    pub(crate) fn ipam_now(&self) -> u64 {
        self.ipam_base + self.now()
    }

    /// Why the IPAM cannot allocate now, or `None` when it can.
    pub(crate) fn ipam_not_ready(&self) -> Option<String> {
        if !self.ipam_started {
            return Some(format!(
                "waiting to connect to a peer ({}) to learn the cluster's IPAM before joining it",
                self.cfg
                    .peers
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        match self.ipam.ready() {
            Ok(()) => None,
            Err(AllocError::NotReady(why)) => Some(why),
            Err(e) => Some(e.to_string()),
        }
    }

    /// Opens the start gate once the IPAM may step: it already knows a genesis (a
    /// restart), no peer is configured (the first node of a cluster), or it is connected and
    /// has had time to receive its peers' records. A node that joins an existing cluster
    /// must see the cluster's genesis before its first step, or it would start a cluster of
    /// its own.
    fn ipam_gate(&mut self) -> bool {
        let known = self
            .ipam
            .engines()
            .iter()
            .all(|e| e.view().genesis.is_some());
        if known || self.cfg.peers.is_empty() {
            return true;
        }
        if self.conns.is_empty() {
            return false;
        }
        let now = self.now();
        let since = *self.first_link_at.get_or_insert(now);
        now.saturating_sub(since) >= 2 * self.cfg.tick_ms
            && self
                .conns
                .keys()
                .all(|p| self.node.store().version(p).is_some())
    }

    /// The tick's IPAM work.
    pub(crate) fn ipam_tick(&mut self) {
        if !self.ipam_started && self.ipam_gate() {
            self.ipam_started = true;
            log(format!(
                "cluster IPAM starts: pools {}, init {}",
                self.pools_text(),
                self.cfg.ipam.init
            ));
        }
        self.ipam_step();
    }

    fn pools_text(&self) -> String {
        self.cfg
            .ipam
            .space
            .pools
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Saves the IPAM state now.
    pub(crate) fn save_ipam(&mut self) -> Result<(), String> {
        self.ipam.take_dirty();
        for e in self.ipam.engines() {
            if let Err(err) = crate::store::save_ipam(&self.cfg.data_dir, e.prefix(), e.persist()) {
                self.ipam_unsaved = true;
                return Err(err.0);
            }
        }
        self.ipam_unsaved = false;
        Ok(())
    }

    /// One step of the engine: merge, act, persist, publish; then retry waiting
    /// allocations (and step once more if that allocated something, to publish it).
    pub(crate) fn ipam_step(&mut self) {
        for round in 0..2 {
            if self.ipam_started {
                let now = self.ipam_now();
                let writes = {
                    let node = &self.node;
                    let live = |id: &NodeId| node.status(id) == Status::Up;
                    self.ipam.step(node.store(), &live, now)
                };
                if self.ipam.take_dirty() {
                    self.ipam_unsaved = true;
                }
                // The state is on disk before any record that follows from it is published:
                // a give must never be forgotten by a restart.
                if self.ipam_unsaved {
                    if let Err(e) = self.save_ipam() {
                        self.metrics.error(crate::metrics::ErrorKind::Save);
                        tracing::error!(
                            target: "weft::ipam",
                            error = %e,
                            "cluster IPAM: {e}; its records wait for a save"
                        );
                        self.retry_pending();
                        return;
                    }
                }
                if !writes.is_empty() {
                    self.log_reclaims(&writes);
                    let t = self.now();
                    let mut outs = Vec::new();
                    for (key, value) in writes {
                        outs.extend(self.node.set_local(&key, value, t));
                    }
                    self.perform(outs);
                    self.save();
                }
                self.log_ipam_state();
            }
            if !self.retry_pending() || round == 1 {
                break;
            }
        }
    }

    /// One event per reclaim decision among the engine's writes (a new `took/X` record:
    /// this node, X's heir, takes the space of X, which is down).
    fn log_reclaims(&self, writes: &[(String, Option<Vec<u8>>)]) {
        for (key, value) in writes {
            let Some(x) = key.split_once("took/").map(|(_, x)| x) else {
                continue;
            };
            if value.is_none() || self.node.store().get(&self.id, key).is_some() {
                continue;
            }
            let name = x
                .parse::<NodeId>()
                .ok()
                .and_then(|id| self.names.get(&id).cloned())
                .unwrap_or_default();
            self.metrics.reclaimed();
            tracing::warn!(
                target: "weft::ipam",
                node = %x,
                node_name = %name,
                record = %key,
                "reclaim: node {x} ({name}) is removed or down too long; this node, its heir, \
                 takes its address space"
            );
        }
    }

    fn log_ipam_state(&mut self) {
        let now = match self.ipam_not_ready() {
            None => "ready".to_string(),
            Some(why) => format!("not ready: {why}"),
        };
        if self.ipam_state_logged.as_deref() != Some(now.as_str()) {
            tracing::info!(target: "weft::ipam", state = %now, "cluster IPAM {now}");
            self.ipam_state_logged = Some(now);
        }
    }

    /// Tries one allocation; persists before an address is answered, and registers the
    /// endpoint (isolating it if a policy says so) before it is answered too.
    fn try_allocate(
        &mut self,
        owner: &Owner,
        identity: &Identity,
        family: Option<bool>,
    ) -> Attempt {
        if let Some(v6) = family {
            return self.try_allocate_family(owner, v6);
        }
        if !self.ipam_started {
            return Attempt::Wait(format!(
                "cluster IPAM is not ready: {}",
                self.ipam_not_ready().unwrap_or_default()
            ));
        }
        let had = self.ipam.is_complete(owner);
        let held = self.ipam.lookup(owner);
        match self.ipam.allocate(owner) {
            Ok(a) => {
                if let Err(e) = self.save_ipam() {
                    if !had {
                        self.ipam.release(owner);
                    }
                    return Attempt::Answer(
                        500,
                        error_json(&format!("cannot save the allocation: {e}")),
                    );
                }
                if let Err(e) = self.endpoint_add(owner, identity, &a) {
                    if !had {
                        self.ipam.release(owner);
                        let _ = self.save_ipam();
                    }
                    return Attempt::Answer(500, error_json(&e));
                }
                // A borrowed address lies in another host's block, which the fast path
                // routes to that host: the FIB's before the container sends anything.
                self.fast_routes_sync();
                let mtu = self.dp.pod_mtu();
                // `address`: the first (IPv4 when there are IPv4 pools), for clients
                // that know one address; `addresses`: one of every family; `dns`: the
                // name service for the CNI result; `held`: what the owner held before, so
                // that a plugin undoing its ADD knows what it may release without asking
                // first.
                let mut answer = serde_json::json!({
                    "address": a[0].to_string(),
                    "addresses": a.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
                    "mtu": mtu,
                    "held": held.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
                });
                if let Some(dns) = self.dns_result(&identity.namespace) {
                    answer["dns"] = dns;
                }
                Attempt::Answer(200, answer.to_string())
            }
            Err(AllocError::Exhausted) => Attempt::Answer(
                507,
                error_json(&format!(
                    "no free address: every address of the cluster's pools ({}) is in use",
                    self.pools_text()
                )),
            ),
            Err(e) => Attempt::Wait(e.to_string()),
        }
    }

    /// Retries the waiting allocations; answers those that succeed, fail for good or pass
    /// their deadline. Returns true if an address was handed out.
    fn retry_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let now = Instant::now();
        let mut allocated = false;
        let waiting = std::mem::take(&mut self.pending);
        for mut p in waiting {
            match self.try_allocate(&p.owner, &p.identity, p.family) {
                Attempt::Answer(code, body) => {
                    allocated |= code == 200;
                    self.answer(p.reply, (code, body));
                }
                Attempt::Wait(why) if now < p.deadline && !p.reply.is_closed() => {
                    p.reason = why;
                    self.pending.push(p);
                }
                Attempt::Wait(why) => {
                    p.reason = why;
                    self.give_up(p);
                }
            }
        }
        allocated
    }

    fn give_up(&mut self, p: Pending) {
        let msg = format!(
            "no address for container {} interface {} within {} s: {}",
            p.owner.container_id,
            p.owner.ifname,
            ALLOCATE_WAIT.as_secs(),
            p.reason
        );
        let answer = match p.family {
            Some(_) => (200, weft_docker::Iface::Ipam.error(&format!("weft: {msg}"))),
            None => (503, error_json(&msg)),
        };
        self.answer(p.reply, answer);
        // The engine stops asking space for it unless another request waits for it too.
        if !self.pending.iter().any(|o| o.owner == p.owner) && !self.ipam.is_complete(&p.owner) {
            self.ipam.release(&p.owner);
        }
    }

    /// `POST /ipam/allocate`: answers now, or keeps the request waiting.
    pub(crate) fn api_allocate(&mut self, body: &str, reply: oneshot::Sender<(u16, String)>) {
        let parsed = parse_owner(body).and_then(|o| parse_identity(body, &o).map(|i| (o, i)));
        let (owner, identity) = match parsed {
            Ok(x) => x,
            Err(answer) => {
                self.answer(reply, answer);
                return;
            }
        };
        self.allocate_or_wait(owner, identity, None, reply);
    }

    /// Allocates for `owner` now or keeps the request waiting; `family` as in [`Pending`].
    pub(crate) fn allocate_or_wait(
        &mut self,
        owner: Owner,
        identity: Identity,
        family: Option<bool>,
        reply: oneshot::Sender<(u16, String)>,
    ) {
        match self.try_allocate(&owner, &identity, family) {
            Attempt::Answer(code, body) => {
                self.answer(reply, (code, body));
            }
            Attempt::Wait(reason) => self.pending.push(Pending {
                owner,
                identity,
                family,
                deadline: Instant::now() + ALLOCATE_WAIT,
                reason,
                reply,
            }),
        }
        // Publish the allocation, or ask for space at once.
        self.ipam_step();
    }

    /// One address of one family for Docker's IPAM, persisted before it is answered.
    fn try_allocate_family(&mut self, owner: &Owner, v6: bool) -> Attempt {
        let refuse = |msg: String| Attempt::Answer(200, weft_docker::Iface::Ipam.error(&msg));
        if !self.ipam_started {
            return Attempt::Wait(format!(
                "cluster IPAM is not ready: {}",
                self.ipam_not_ready().unwrap_or_default()
            ));
        }
        match self.ipam.allocate_family(owner, v6) {
            Ok(a) => {
                if let Err(e) = self.save_ipam() {
                    self.ipam.release(owner);
                    return refuse(format!("weft: cannot save the allocation: {e}"));
                }
                self.fast_routes_sync();
                Attempt::Answer(200, weft_docker::pools::address_answer(a))
            }
            Err(AllocError::Exhausted) => refuse(format!(
                "weft: no free {} address in the cluster's pools ({})",
                if v6 { "IPv6" } else { "IPv4" },
                self.pools_text()
            )),
            Err(e) => Attempt::Wait(e.to_string()),
        }
    }

    /// The other `/ipam` endpoints; `None` if `route` is not one of them.
    pub(crate) fn api_ipam(
        &mut self,
        method: &str,
        route: &str,
        query: &[(String, String)],
        body: &str,
    ) -> Option<(u16, String)> {
        let answer = match (method, route) {
            ("GET", "/ipam") => (
                200,
                serde_json::to_string(&self.ipam_report()).expect("json"),
            ),
            ("POST", "/ipam/release") => self.api_release(body),
            ("POST", "/ipam/gc") => self.api_gc(body),
            ("GET", "/ipam/lookup") | ("POST", "/ipam/lookup") => {
                let owner = if method == "GET" {
                    query_owner(query)
                } else {
                    parse_owner(body)
                };
                match owner {
                    Ok(o) => (200, address_json(&self.ipam.lookup(&o))),
                    Err(e) => e,
                }
            }
            ("GET", "/ipam/list") => {
                let list: Vec<serde_json::Value> = self
                    .ipam
                    .list()
                    .into_iter()
                    .map(|(a, o)| {
                        serde_json::json!({
                            "address": a.to_string(),
                            "container_id": o.container_id,
                            "ifname": o.ifname,
                        })
                    })
                    .collect();
                (200, serde_json::json!({ "allocations": list }).to_string())
            }
            ("POST", "/ipam/rmpeer") => self.api_rmpeer(body),
            _ => return None,
        };
        Some(answer)
    }

    fn api_release(&mut self, body: &str) -> (u16, String) {
        let owner = match parse_owner(body) {
            Ok(o) => o,
            Err(e) => return e,
        };
        self.endpoint_remove(&owner);
        let freed = self.ipam.release(&owner);
        if let Err(e) = self.save_ipam() {
            return (500, error_json(&format!("cannot save the release: {e}")));
        }
        self.ipam_step();
        (200, address_json(&freed))
    }

    fn api_gc(&mut self, body: &str) -> (u16, String) {
        let b: GcBody = match serde_json::from_str(body) {
            Ok(b) => b,
            Err(e) => {
                return (
                    400,
                    error_json(&format!(
                        "expected {{\"valid\": [{{\"container_id\": \"...\", \"ifname\": \"...\"}}, ...]}}: {e}"
                    )),
                )
            }
        };
        let mut valid: BTreeSet<Owner> = b
            .valid
            .into_iter()
            .map(|o| Owner::new(o.container_id, o.ifname))
            .collect();
        // A CNI GC knows CNI attachments only: Docker's addresses and endpoints stay.
        let docker = |c: &str| c.starts_with(weft_docker::endpoint::OWNER_PREFIX);
        valid.extend(
            self.ipam
                .list()
                .into_iter()
                .map(|(_, o)| o)
                .filter(|o| docker(&o.container_id)),
        );
        for uid in self.policy_local_uids() {
            if let Some((c, i)) = uid.rsplit_once('/') {
                let o = Owner::new(c.to_string(), i.to_string());
                if !valid.contains(&o) && !docker(c) {
                    self.endpoint_remove(&o);
                }
            }
        }
        let released = self.ipam.gc(&valid);
        if let Err(e) = self.save_ipam() {
            return (500, error_json(&format!("cannot save the release: {e}")));
        }
        self.ipam_step();
        let released: Vec<String> = released.iter().map(|a| a.to_string()).collect();
        (200, serde_json::json!({ "released": released }).to_string())
    }

    fn api_rmpeer(&mut self, body: &str) -> (u16, String) {
        let Ok(b) = serde_json::from_str::<RmpeerBody>(body) else {
            return (
                400,
                error_json("expected {\"peer\": \"NODE NAME or 32-hex node id\"}"),
            );
        };
        let id = match self.resolve_node(&b.peer) {
            Ok(id) => id,
            Err(e) => return e,
        };
        let result = {
            let node = &self.node;
            let live = |n: &NodeId| node.status(n) == Status::Up;
            self.ipam.rmpeer(id, &live)
        };
        match result {
            Ok(msg) => {
                tracing::warn!(
                    target: "weft::ipam",
                    node = %id,
                    asked_as = %b.peer,
                    "rmpeer {}: {msg}",
                    b.peer
                );
                self.ipam_step();
                (200, serde_json::json!({ "message": msg }).to_string())
            }
            Err(e) => (409, error_json(&e)),
        }
    }

    /// A node by name (as its `name` record says, remembered after it is gone) or 32-hex id.
    fn resolve_node(&self, peer: &str) -> Result<NodeId, (u16, String)> {
        if let Ok(id) = peer.parse::<NodeId>() {
            return Ok(id);
        }
        let ids: Vec<NodeId> = self
            .names
            .iter()
            .filter(|(_, n)| n.as_str() == peer)
            .map(|(id, _)| *id)
            .collect();
        match ids.as_slice() {
            [id] => Ok(*id),
            [] => Err((
                404,
                error_json(&format!(
                    "no node named {peer:?} is known here; give its 32-hex id (`weft ipam` lists them)"
                )),
            )),
            _ => Err((
                409,
                error_json(&format!(
                    "several nodes are named {peer:?} ({}); give the id of the one to remove",
                    ids.iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            )),
        }
    }

    /// Remembers every node's name, also after the mesh drops a gone node's records.
    pub(crate) fn remember_names(&mut self) {
        let store = self.node.store();
        for owner in store.owners() {
            if let Some(Some(n)) = store.get(owner, crate::NAME_KEY) {
                let n = String::from_utf8_lossy(n);
                if self.names.get(owner).map(String::as_str) != Some(&*n) {
                    self.names.insert(*owner, n.into_owned());
                }
            }
        }
    }

    fn use_of(&self, e: &weft_ipam::Ipam, id: &NodeId) -> Option<UseRec> {
        if *id == self.id {
            return e.view().genesis.is_some().then(|| e.usage());
        }
        let v = self
            .node
            .store()
            .get(id, &format!("{}use", e.prefix()))
            .flatten()?;
        serde_json::from_slice(v).ok()
    }

    /// `GET /ipam`: every family's engine, node by node.
    pub(crate) fn ipam_report(&self) -> IpamReport {
        let mut nodes: Vec<IpamNodeReport> = Vec::new();
        let mut used_total = 0u64;
        let mut usable = 0u64;
        let mut conflict = None;
        for e in self.ipam.engines() {
            let (ns, used) = self.ipam_nodes(e);
            used_total += used;
            usable = usable
                .saturating_add(u64::try_from(e.config().space.usable_total()).unwrap_or(u64::MAX));
            conflict = conflict.or_else(|| e.view().conflict.clone());
            for n in ns {
                match nodes.iter_mut().find(|m| m.id == n.id) {
                    Some(m) => merge_node(m, n),
                    None => nodes.push(n),
                }
            }
        }
        nodes.sort_by(|a, b| (!a.local, &a.name, &a.id).cmp(&(!b.local, &b.name, &b.id)));
        let not_ready = self.ipam_not_ready();
        let space = &self.cfg.ipam.space;
        IpamReport {
            node: NodeReport {
                id: self.id.to_string(),
                name: self.cfg.name.clone(),
                addr: self.cfg.advertise.to_string(),
            },
            pools: space.pools.iter().map(|p| p.to_string()).collect(),
            block_v4: space.block_v4,
            block_v6: space.block_v6,
            init: self.cfg.ipam.init,
            ready: not_ready.is_none(),
            not_ready,
            conflict,
            nodes,
            usable,
            used: used_total,
        }
    }

    /// One family's engine's view of every node, and the addresses used in it.
    fn ipam_nodes(&self, e: &weft_ipam::Ipam) -> (Vec<IpamNodeReport>, u64) {
        let view = e.view();
        let space = &e.config().space;
        let store = self.node.store();
        let mut ids = view.nodes();
        ids.insert(self.id);
        let use_key = format!("{}use", e.prefix());
        ids.extend(
            store
                .owners()
                .filter(|o| matches!(store.get(o, &use_key), Some(Some(_)))),
        );
        let cidr = |k: u64| space.block_net(k).map(|n| n.to_string());
        let mut held: std::collections::BTreeMap<NodeId, Vec<String>> = Default::default();
        if view.genesis.is_some() {
            for k in 0..space.total_blocks() {
                if let (Some(h), Some(c)) = (view.holder(k), cidr(k)) {
                    held.entry(h).or_default().push(c);
                }
            }
        }
        let mut nodes = Vec::new();
        let mut used_total = 0u64;
        for id in ids {
            let blocks: Vec<String> = if id == self.id {
                e.held_blocks()
                    .into_iter()
                    .filter(|(_, active)| *active)
                    .filter_map(|(k, _)| cidr(k))
                    .collect()
            } else {
                view.claims
                    .iter()
                    .filter(|(k, c)| c.holder == id && c.active && view.holder(**k) == Some(id))
                    .filter_map(|(k, _)| cidr(*k))
                    .collect()
            };
            let u = self.use_of(e, &id);
            used_total += u.as_ref().map_or(0, |u| u.used);
            let hello = view.hello.get(&id).copied().unwrap_or(0);
            let heir = view.effective_heir(&id);
            nodes.push(IpamNodeReport {
                id: id.to_string(),
                name: self.names.get(&id).cloned(),
                local: id == self.id,
                status: status_str(self.node.status(&id)).to_string(),
                blocks,
                held: held.remove(&id).unwrap_or_default(),
                reserve: u.as_ref().map(|u| u.reserve),
                used: u.as_ref().map(|u| u.used),
                free: u.as_ref().map(|u| u.free),
                lent: u.as_ref().map(|u| u.lent),
                borrowed: u.as_ref().map(|u| u.borrowed),
                ready: u.as_ref().map(|u| u.ready),
                removed: view.taken_at(&id, hello),
                heir: heir.map(|h| h.to_string()),
                heir_name: heir.and_then(|h| self.names.get(&h).cloned()),
            });
        }
        (nodes, used_total)
    }

    /// Saves the IPAM state if it changed and was not saved (at shutdown).
    pub(crate) fn save_ipam_if_needed(&mut self) {
        if self.ipam.take_dirty() {
            self.ipam_unsaved = true;
        }
        if self.ipam_unsaved {
            if let Err(e) = self.save_ipam() {
                self.metrics.error(crate::metrics::ErrorKind::Save);
                tracing::error!(target: "weft::ipam", error = %e, "cluster IPAM: {e}");
            }
        }
    }
}

/// A node's report of another family's engine added to its report of the first.
fn merge_node(m: &mut IpamNodeReport, n: IpamNodeReport) {
    let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    m.blocks.extend(n.blocks);
    m.held.extend(n.held);
    m.reserve = add(m.reserve, n.reserve);
    m.used = add(m.used, n.used);
    m.free = add(m.free, n.free);
    m.lent = add(m.lent, n.lent);
    m.borrowed = add(m.borrowed, n.borrowed);
    m.ready = match (m.ready, n.ready) {
        (Some(a), Some(b)) => Some(a && b),
        (a, b) => a.or(b),
    };
    m.removed |= n.removed;
    m.heir = m.heir.take().or(n.heir);
    m.heir_name = m.heir_name.take().or(n.heir_name);
}
