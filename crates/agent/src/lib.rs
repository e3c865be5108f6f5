//! The per-host weft agent: peer connections (Noise `XXpsk3` over TCP, `weft-wire`), the
//! mesh state machine (`weft-mesh`), persistence of identity and own records, discovery with
//! jittered backoff, and the local HTTP + JSON API on a unix socket.
//!
//! One task owns all state (the mesh [`Node`], the cluster IPAM engine, the connection
//! table, the dial table) and is fed events: connections established or lost, messages, API
//! requests and ticks. Each connection is a task of its own that does the handshake, then
//! moves frames between the socket and that owner task. Design: docs/mesh.md, docs/ipam.md.

pub mod api;
mod cluster_ipam;
pub mod config;
mod conn;
mod dataplane;
mod dns;
mod dns_server;
mod dns_udp;
mod docker;
mod docker_link;
mod docker_names;
mod fast;
mod flows;
pub mod logging;
mod metrics;
mod nftables;
mod policy;
mod policy_api;
mod store;
mod tunnel;
mod turn;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use weft_ipam::Families;
use weft_mesh::{MeshConfig, Message, Node, NodeId, Output, Status};
use weft_wire::{ClusterKey, Identity};

pub use config::{AgentConfig, ConfigError, RawConfig};
pub use dataplane::{DataplaneReport, RouteReport};
pub use fast::FastReport;
pub use flows::{FlowReport, FlowsAnswer};
pub use nftables::NftablesReport;
pub use policy::PolicyReport;
pub use policy_api::EndpointReport;
pub use tunnel::{OffloadReport, TunnelPeerReport, TunnelReport};

/// Keys of the records every node publishes.
pub const NAME_KEY: &str = "name";
/// The advertised peer address record.
pub const ADDR_KEY: &str = "addr";

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AgentError(pub String);

/// Events for the owner task.
pub(crate) enum Event {
    /// A handshake finished; `decide` answers whether to keep the connection.
    Connected {
        conn: u64,
        peer: NodeId,
        addr: SocketAddr,
        outbound: bool,
        dialled: Option<SocketAddr>,
        tx: mpsc::UnboundedSender<Message>,
        decide: oneshot::Sender<bool>,
    },
    /// A message from a peer.
    Message {
        conn: u64,
        peer: NodeId,
        msg: Message,
    },
    /// A connection ended.
    Disconnected {
        conn: u64,
        peer: NodeId,
        why: String,
    },
    /// A dial failed before a connection existed.
    DialFailed { addr: SocketAddr, why: String },
    /// Packets weft's policy rules logged (NFLOG).
    PolicyLog(Vec<weft_netlink::netfilter::LoggedPacket>),
    /// dockerd told a Docker endpoint's container name and aliases.
    DockerNamed {
        endpoint: String,
        name: String,
        aliases: Vec<String>,
    },
    /// A local API request.
    Api {
        method: String,
        path: String,
        body: String,
        reply: oneshot::Sender<(u16, String)>,
    },
}

struct Conn {
    id: u64,
    tx: mpsc::UnboundedSender<Message>,
    addr: SocketAddr,
    outbound: bool,
    since: Instant,
}

#[derive(Default)]
struct Dial {
    /// Given by the operator (initial peer or `weft connect`), not only discovered.
    manual: bool,
    in_progress: bool,
    next_try: Option<Instant>,
    backoff: Duration,
    last_error: Option<String>,
}

struct Agent {
    cfg: AgentConfig,
    ident: Arc<Identity>,
    key: Arc<ClusterKey>,
    id: NodeId,
    node: Node,
    conns: HashMap<NodeId, Conn>,
    dials: BTreeMap<SocketAddr, Dial>,
    forgotten: BTreeSet<SocketAddr>,
    events: mpsc::UnboundedSender<Event>,
    next_conn: u64,
    start: Instant,
    rng: u64,
    warned_conflicts: BTreeSet<String>,
    /// The cluster IPAM engines, one per address family of the pools.
    ipam: Families,
    /// Added to [`Agent::now`] for the IPAM clock (monotonic across restarts).
    ipam_base: u64,
    /// The IPAM steps once it can have heard of the cluster (see `cluster_ipam`).
    ipam_started: bool,
    /// When the first peer connection was seen (agent clock).
    first_link_at: Option<u64>,
    /// The IPAM state changed and is not on disk yet.
    ipam_unsaved: bool,
    /// Allocations waiting for space or readiness.
    pending: Vec<cluster_ipam::Pending>,
    /// Node names seen, kept after the mesh drops a gone node's records.
    names: BTreeMap<NodeId, String>,
    /// The last IPAM state logged.
    ipam_state_logged: Option<String>,
    /// The kernel data plane.
    dp: dataplane::Dataplane,
    tunnel: tunnel::TunnelState,
    fast: fast::Fast,
    /// weft's nftables tables kept in step, and the set of translated connections' client
    /// sockets refreshed.
    nft: nftables::NftState,
    /// Network policy.
    pol: policy::PolicyState,
    /// The name service.
    dns: dns::DnsState,
    /// Docker's plugin.
    docker: docker::DockerState,
    /// What of the own cluster objects is on disk (`objects.json`).
    objects_saved: Option<(usize, u64)>,
    /// Counters and histograms for `/metrics`.
    metrics: Arc<metrics::Metrics>,
    /// What the events of the current turn left due, and their answers.
    turn: turn::Turn,
}

/// Runs the agent until SIGTERM or SIGINT, logging as its config says.
pub fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    logging::init(&cfg.log);
    // The owner task (`main_loop`) runs on this thread; connections run on two workers, so
    // they go on reading and sending keepalives while the owner waits for `nft`.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| AgentError(format!("start the runtime: {e}")))?;
    rt.block_on(main_loop(cfg))
}

/// An informational event of target `weft::agent` (events with facts of their own use
/// `tracing` directly, with fields).
fn log(msg: impl std::fmt::Display) {
    tracing::info!(target: "weft::agent", "{msg}");
}

async fn main_loop(cfg: AgentConfig) -> Result<(), AgentError> {
    let secret = std::fs::read(&cfg.secret_file).map_err(|e| {
        AgentError(format!(
            "read the cluster secret {}: {e}",
            cfg.secret_file.display()
        ))
    })?;
    let key = ClusterKey::from_secret(&secret).map_err(|e| AgentError(e.to_string()))?;
    let ident = store::load_or_create_identity(&cfg.data_dir)?;
    let id = NodeId(ident.node_id());
    let persisted = store::load_persisted(&cfg.data_dir)?;
    let mut ipam_persisted = BTreeMap::new();
    for prefix in [weft_ipam::view::PREFIX, weft_ipam::view::PREFIX6] {
        let Some(p) = store::load_ipam(&cfg.data_dir, prefix)? else {
            continue;
        };
        if let Some(other) = p.node.filter(|other| *other != id) {
            return Err(AgentError(format!(
                "{} holds the address allocations of node {other}, but this agent's identity                  is node {id}: restore that node's identity, or move the file away and remove                  node {other} from the cluster (`weft rmpeer {other}` on another node)",
                cfg.data_dir.join(store::ipam_file(prefix)).display()
            )));
        }
        ipam_persisted.insert(prefix, p);
    }
    let ipam_base = ipam_persisted
        .values()
        .map(cluster_ipam::clock_base)
        .max()
        .unwrap_or(0);
    let ipam = Families::new(id, cfg.ipam.clone(), |prefix| ipam_persisted.remove(prefix));
    let mesh_cfg = MeshConfig {
        down_after_ms: cfg.down_after_secs * 1000,
        ae_period_ms: cfg.tick_ms,
        ..MeshConfig::default()
    };
    let node = Node::new(id, mesh_cfg, persisted);

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| AgentError(format!("listen on {}: {e}", cfg.listen)))?;
    let api_listener = api::bind(&cfg.socket)?;
    let metrics_listener = match cfg.metrics_addr {
        None => None,
        Some(addr) => match metrics::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) if !cfg.metrics_given => {
                tracing::warn!(
                    target: "weft::agent",
                    addr = %addr,
                    error = %e,
                    "{e}: no metrics on this address (another agent in this network \
                     namespace?); --metrics-addr chooses another, GET /metrics on the API \
                     socket still works"
                );
                None
            }
            Err(e) => return Err(e),
        },
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut agent = Agent {
        ident: Arc::new(ident),
        key: Arc::new(key),
        id,
        node,
        conns: HashMap::new(),
        dials: BTreeMap::new(),
        forgotten: BTreeSet::new(),
        events: tx.clone(),
        next_conn: 1,
        start: Instant::now(),
        rng: seed(),
        warned_conflicts: BTreeSet::new(),
        ipam,
        ipam_base,
        ipam_started: false,
        first_link_at: None,
        ipam_unsaved: false,
        pending: Vec::new(),
        names: BTreeMap::new(),
        ipam_state_logged: None,
        dp: dataplane::Dataplane::new(cfg.dataplane.clone()),
        tunnel: tunnel::TunnelState::default(),
        fast: fast::Fast::default(),
        nft: nftables::NftState::default(),
        pol: policy::PolicyState::default(),
        dns: dns::DnsState::default(),
        docker: docker::DockerState::default(),
        objects_saved: None,
        metrics: Arc::new(metrics::Metrics::default()),
        turn: turn::Turn::default(),
        cfg,
    };
    let metrics_at = metrics_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| format!("http://{a}{}", metrics::PATH))
        .unwrap_or_else(|| "the API socket only".into());
    tracing::info!(
        target: "weft::agent",
        id = %id,
        "node {} ({id}) listening on {}, advertising {}, API on {}, metrics on {metrics_at}",
        agent.cfg.name,
        agent.cfg.listen,
        agent.cfg.advertise,
        agent.cfg.socket.display()
    );
    let now = agent.now();
    let mut out = agent
        .node
        .set_local(NAME_KEY, Some(agent.cfg.name.clone().into_bytes()), now);
    out.extend(agent.node.set_local(
        ADDR_KEY,
        Some(agent.cfg.advertise.to_string().into_bytes()),
        now,
    ));
    agent.perform(out);
    agent.save_now();
    agent.policy_load_cache();
    agent.flows_start();
    agent.dns_start();
    let docker_listener = agent.docker_start()?;
    for p in agent.cfg.peers.clone() {
        agent.dials.entry(p).or_default().manual = true;
    }

    tokio::spawn(accept_loop(
        listener,
        tx.clone(),
        agent.ident.clone(),
        agent.key.clone(),
        agent.metrics.clone(),
    ));
    tokio::spawn(api::serve(
        api_listener,
        tx.clone(),
        agent.metrics.clone(),
        false,
    ));
    if let Some(l) = docker_listener {
        tokio::spawn(api::serve(l, tx.clone(), agent.metrics.clone(), true));
    }
    if let Some(l) = metrics_listener {
        tokio::spawn(metrics::serve(l, tx.clone()));
    }

    // What the start left due (the first zone).
    agent.end_turn();
    let mut tick = tokio::time::interval(Duration::from_millis(agent.cfg.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AgentError(format!("signal handler: {e}")))?;
    loop {
        let policy_due = agent.pol.due;
        tokio::select! {
            _ = tick.tick() => agent.on_tick(),
            Some(ev) = rx.recv() => agent.on_events(ev, &mut rx),
            _ = sleep_until(policy_due) => agent.policy_tick(),
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        agent.end_turn();
        // After the events' answers: what an ADD left for later (it leaves nothing due).
        agent.policy_dispatch();
    }
    agent.save();
    agent.end_turn();
    agent.save_ipam_if_needed();
    agent.policy_shutdown();
    let _ = std::fs::remove_file(&agent.cfg.socket);
    agent.docker_stop();
    log("stopped");
    Ok(())
}

/// Sleeps until `at`, or for ever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t ^ (u64::from(std::process::id()) << 32) | 1
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    events: mpsc::UnboundedSender<Event>,
    ident: Arc<Identity>,
    key: Arc<ClusterKey>,
    metrics: Arc<metrics::Metrics>,
) {
    let mut next = 1u64 << 48;
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                next += 1;
                tokio::spawn(conn::run(
                    stream,
                    addr,
                    false,
                    None,
                    next,
                    events.clone(),
                    conn::Keys {
                        ident: ident.clone(),
                        key: key.clone(),
                    },
                    metrics.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(target: "weft::mesh", error = %e, "accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Agent {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        // xorshift64*: jitter only, no security.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let frac = (r % 1000) as f64 / 1000.0; // 0..1
        d.mul_f64(0.75 + 0.5 * frac)
    }

    /// Writes the own records now ([`Agent::save`] leaves it for the end of the turn).
    fn save_now(&mut self) {
        let refs: Vec<weft_mesh::RecordRef> = self.node.store().records_ref(&self.id).collect();
        let res = store::save_persisted(
            &self.cfg.data_dir,
            self.node.counter(),
            &refs,
            &mut self.objects_saved,
        );
        if let Err(e) = res {
            self.metrics.error(metrics::ErrorKind::Save);
            tracing::error!(target: "weft::agent", error = %e, "{e}");
        }
    }

    fn perform(&mut self, outs: Vec<Output>) {
        for o in outs {
            match o {
                Output::Send { to, msg } => {
                    if let Some(c) = self.conns.get(&to) {
                        let _ = c.tx.send(msg);
                    }
                }
                Output::RoutesChanged => {}
            }
        }
    }

    fn on_tick(&mut self) {
        let now = self.now();
        let outs = self.node.tick(now);
        self.perform(outs);
        self.check_conflicts();
        self.discover();
        self.dial_due();
        self.remember_names();
        self.ipam_tick();
        self.dp_tick();
        self.tunnel_tick();
        self.policy_tick();
        self.fast_tick();
        self.nftables_tick();
        self.docker_tick();
    }

    /// Adds the advertised addresses of known, not gone, unconnected nodes to the dial table.
    fn discover(&mut self) {
        let owners: Vec<NodeId> = self.node.store().owners().copied().collect();
        for owner in owners {
            if owner == self.id || self.conns.contains_key(&owner) {
                continue;
            }
            if matches!(self.node.status(&owner), Status::Gone | Status::Unknown) {
                continue;
            }
            let Some(Some(addr)) = self.node.store().get(&owner, ADDR_KEY) else {
                continue;
            };
            let Some(addr) = std::str::from_utf8(addr)
                .ok()
                .and_then(|s| s.parse::<SocketAddr>().ok())
            else {
                continue;
            };
            if !self.forgotten.contains(&addr) {
                self.dials.entry(addr).or_default();
            }
        }
    }

    fn addr_connected(&self, addr: &SocketAddr) -> bool {
        self.conns.values().any(|c| c.addr == *addr)
            || self.conns.keys().any(|id| {
                self.node.store().get(id, ADDR_KEY).flatten() == Some(addr.to_string().as_bytes())
            })
    }

    fn dial_due(&mut self) {
        let now = Instant::now();
        let targets: Vec<SocketAddr> = self.dials.keys().copied().collect();
        for addr in targets {
            if addr == self.cfg.advertise || self.forgotten.contains(&addr) {
                continue;
            }
            if self.addr_connected(&addr) {
                continue;
            }
            let in_flight = self.dials.values().filter(|d| d.in_progress).count();
            if self.conns.len() + in_flight >= self.cfg.max_peers {
                break;
            }
            let d = self.dials.get(&addr).expect("present");
            if d.in_progress || d.next_try.is_some_and(|t| t > now) {
                continue;
            }
            self.dials.get_mut(&addr).expect("present").in_progress = true;
            self.next_conn += 1;
            let conn_id = self.next_conn;
            let events = self.events.clone();
            let keys = conn::Keys {
                ident: self.ident.clone(),
                key: self.key.clone(),
            };
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                let connect = tokio::time::timeout(
                    Duration::from_secs(3),
                    tokio::net::TcpStream::connect(addr),
                )
                .await;
                match connect {
                    Ok(Ok(stream)) => {
                        conn::run(
                            stream,
                            addr,
                            true,
                            Some(addr),
                            conn_id,
                            events,
                            keys,
                            metrics,
                        )
                        .await
                    }
                    Ok(Err(e)) => {
                        let _ = events.send(Event::DialFailed {
                            addr,
                            why: e.to_string(),
                        });
                    }
                    Err(_) => {
                        let _ = events.send(Event::DialFailed {
                            addr,
                            why: "connect timed out".into(),
                        });
                    }
                }
            });
        }
    }

    fn dial_failed(&mut self, addr: SocketAddr, why: String) {
        let backoff = {
            let d = self.dials.entry(addr).or_default();
            d.in_progress = false;
            d.backoff = if d.backoff.is_zero() {
                Duration::from_millis(500)
            } else {
                (d.backoff * 2).min(Duration::from_secs(30))
            };
            d.last_error = Some(why);
            d.backoff
        };
        let wait = self.jitter(backoff);
        if let Some(d) = self.dials.get_mut(&addr) {
            d.next_try = Some(Instant::now() + wait);
        }
    }

    fn check_conflicts(&mut self) {
        for (name, ids) in self.conflicts() {
            if self.warned_conflicts.insert(name.clone()) {
                let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                tracing::warn!(
                    target: "weft::mesh",
                    name = %name,
                    ids = %ids.join(","),
                    "name conflict: {name:?} is claimed by several nodes: {}",
                    ids.join(", ")
                );
            }
        }
    }

    /// Names claimed by more than one live node.
    fn conflicts(&self) -> BTreeMap<String, Vec<NodeId>> {
        let mut by_name: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
        for owner in self.node.store().owners() {
            if matches!(self.node.status(owner), Status::Gone | Status::Unknown) {
                continue;
            }
            if let Some(Some(n)) = self.node.store().get(owner, NAME_KEY) {
                by_name
                    .entry(String::from_utf8_lossy(n).into_owned())
                    .or_default()
                    .push(*owner);
            }
        }
        by_name.retain(|_, ids| ids.len() > 1);
        by_name
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Connected {
                conn,
                peer,
                addr,
                outbound,
                dialled,
                tx,
                decide,
            } => {
                if let Some(d) = dialled.and_then(|a| self.dials.get_mut(&a)) {
                    d.in_progress = false;
                    d.backoff = Duration::ZERO;
                    d.next_try = None;
                    d.last_error = None;
                }
                if peer == self.id {
                    let _ = decide.send(false);
                    if let Some(a) = dialled {
                        // Our own address: never dial it again.
                        self.forgotten.insert(a);
                    }
                    return;
                }
                if let Some(old) = self.conns.get(&peer) {
                    // Keep one connection per pair, the same one on both ends: the one dialled
                    // by the lower node id; between two of the same kind, the newer.
                    let preferred_outbound = self.id < peer;
                    let keep_new =
                        outbound == preferred_outbound || old.outbound != preferred_outbound;
                    if !keep_new {
                        let _ = decide.send(false);
                        return;
                    }
                }
                let _ = decide.send(true);
                let replaced = self.conns.insert(
                    peer,
                    Conn {
                        id: conn,
                        tx,
                        addr,
                        outbound,
                        since: Instant::now(),
                    },
                );
                if replaced.is_none() {
                    let how = if outbound { "dialled" } else { "accepted" };
                    tracing::info!(
                        target: "weft::mesh",
                        peer = %peer,
                        peer_name = self.name_of(&peer).unwrap_or_default(),
                        peer_addr = %addr,
                        direction = how,
                        "connected to {peer} at {addr} ({how})"
                    );
                    let now = self.now();
                    self.first_link_at.get_or_insert(now);
                    let outs = self.node.peer_connected(peer, now);
                    self.perform(outs);
                    self.save();
                }
                self.tunnel_connected(peer);
            }
            Event::Message {
                conn,
                peer,
                msg: Message::Tunnel(bytes),
            } => {
                if self.conns.get(&peer).is_some_and(|c| c.id == conn) {
                    self.tunnel_message(peer, &bytes);
                }
            }
            Event::Message { conn, peer, msg } => {
                if self.conns.get(&peer).is_some_and(|c| c.id == conn) {
                    let now = self.now();
                    let before = self.node.digest();
                    let outs = self.node.on_message(peer, msg, now);
                    self.perform(outs);
                    // Policy changes are applied as they arrive, coalesced; so are new
                    // blocks of other hosts (routed before their names resolve here), and
                    // waiting allocations go on in the same step of the IPAM, at the end
                    // of this turn, once the space they wait for has arrived.
                    if self.node.digest() != before {
                        self.policy_soon();
                        self.routes_refresh();
                    }
                }
            }
            Event::Disconnected { conn, peer, why } => {
                if self.conns.get(&peer).is_some_and(|c| c.id == conn) {
                    let c = self.conns.remove(&peer).expect("present");
                    tracing::info!(
                        target: "weft::mesh",
                        peer = %peer,
                        peer_name = self.name_of(&peer).unwrap_or_default(),
                        peer_addr = %c.addr,
                        reason = %why,
                        "lost {peer} at {}: {why}",
                        c.addr
                    );
                    let now = self.now();
                    let outs = self.node.peer_disconnected(peer, now);
                    self.perform(outs);
                    self.save();
                    // Try again soon, with backoff, if it was dialled from here.
                    if c.outbound {
                        self.dial_failed(c.addr, why);
                    }
                }
            }
            Event::DialFailed { addr, why } => {
                self.metrics.error(metrics::ErrorKind::Dial);
                tracing::debug!(target: "weft::mesh", peer_addr = %addr, reason = %why, "dial {addr} failed: {why}");
                self.dial_failed(addr, why)
            }
            Event::PolicyLog(packets) => self.flows_logged(packets),
            Event::DockerNamed {
                endpoint,
                name,
                aliases,
            } => self.docker_named(&endpoint, name, aliases),
            Event::Api {
                method,
                path,
                body,
                reply,
            } => {
                let route = api::split_query(&path).0;
                if method == "POST" && route == "/ipam/allocate" {
                    self.api_allocate(&body, reply);
                } else if method == "POST" && weft_docker::is_plugin_path(route) {
                    let route = route.to_string();
                    self.docker_call(&route, &body, reply);
                } else {
                    let answer = self.api(&method, &path, &body);
                    self.answer(reply, answer);
                }
            }
        }
    }

    fn name_of(&self, id: &NodeId) -> Option<String> {
        self.node
            .store()
            .get(id, NAME_KEY)
            .flatten()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn addr_of(&self, id: &NodeId) -> Option<String> {
        self.node
            .store()
            .get(id, ADDR_KEY)
            .flatten()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn api(&mut self, method: &str, target: &str, body: &str) -> (u16, String) {
        let json = |v: &dyn erased::Ser| (200, v.to_json());
        let (path, query) = api::split_query(target);
        if let Some(answer) = self.api_ipam(method, path, &query, body) {
            return answer;
        }
        if let Some(answer) = self.api_policy(method, path, &query, body) {
            return answer;
        }
        if let Some(answer) = self.api_metrics(method, path) {
            return answer;
        }
        match (method, path) {
            ("GET", "/dns") => self.dns_list(),
            ("POST", "/dns/add") => self.dns_change(body, false),
            ("POST", "/dns/remove") => self.dns_change(body, true),
            ("GET", "/status") => json(&self.status()),
            ("GET", "/peers") => json(&self.peer_list()),
            ("POST", "/connect") | ("POST", "/forget") => {
                let addr = serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v["addr"].as_str().map(String::from))
                    .and_then(|s| config::parse_addr(&s));
                let Some(addr) = addr else {
                    return (
                        400,
                        api::error_json("expected {\"addr\": \"IP[:PORT]\"} with a valid address"),
                    );
                };
                if path == "/connect" {
                    self.forgotten.remove(&addr);
                    let d = self.dials.entry(addr).or_default();
                    d.manual = true;
                    d.next_try = None;
                    d.backoff = Duration::ZERO;
                    self.dial_due();
                    (
                        200,
                        serde_json::json!({"connecting": addr.to_string()}).to_string(),
                    )
                } else {
                    let known = self.dials.remove(&addr).is_some();
                    self.forgotten.insert(addr);
                    (
                        200,
                        serde_json::json!({"forgotten": addr.to_string(), "was_known": known})
                            .to_string(),
                    )
                }
            }
            _ => (
                404,
                api::error_json(&format!("no such endpoint: {method} {path}")),
            ),
        }
    }

    fn status(&self) -> StatusReport {
        let hops = self.node.next_hops();
        let dists = self.node.distances();
        let mut peers = Vec::new();
        for owner in self.node.store().owners() {
            if *owner == self.id {
                continue;
            }
            let status = cluster_ipam::status_str(self.node.status(owner));
            peers.push(PeerReport {
                id: owner.to_string(),
                name: self.name_of(owner),
                addr: self.addr_of(owner),
                status: status.to_string(),
                connected: self.conns.contains_key(owner),
                next_hop: hops.get(owner).map(|h| h.to_string()),
                next_hop_name: hops.get(owner).and_then(|h| self.name_of(h)),
                distance: dists.get(owner).copied(),
            });
        }
        peers.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        StatusReport {
            node: NodeReport {
                id: self.id.to_string(),
                name: self.cfg.name.clone(),
                addr: self.cfg.advertise.to_string(),
            },
            peers,
            conflicts: self
                .conflicts()
                .into_iter()
                .map(|(name, ids)| ConflictReport {
                    name,
                    ids: ids.iter().map(|i| i.to_string()).collect(),
                })
                .collect(),
            dataplane: Some(self.dp_report()),
            policy: Some(self.policy_report()),
            dns: self.cfg.dns.as_ref().map(|c| DnsReport {
                addr: c.addr.to_string(),
                domain: c.domain.clone(),
                names: self
                    .dns
                    .zone
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .len(),
                error: self
                    .dns
                    .error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            }),
            docker: self.docker_report(),
        }
    }

    fn peer_list(&self) -> Vec<ConnReport> {
        let mut v: Vec<ConnReport> = self
            .conns
            .iter()
            .map(|(id, c)| ConnReport {
                id: id.to_string(),
                name: self.name_of(id),
                addr: c.addr.to_string(),
                direction: if c.outbound { "dialled" } else { "accepted" }.to_string(),
                seconds: c.since.elapsed().as_secs(),
            })
            .collect();
        for (addr, d) in &self.dials {
            if !self.addr_connected(addr) && (d.manual || d.last_error.is_some()) {
                v.push(ConnReport {
                    id: String::new(),
                    name: None,
                    addr: addr.to_string(),
                    direction: if d.in_progress {
                        "connecting"
                    } else {
                        "retrying"
                    }
                    .to_string(),
                    seconds: 0,
                });
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
        v
    }
}

mod erased {
    /// Object-safe JSON serialization for API answers.
    pub trait Ser {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).expect("json")
        }
    }
}

/// `GET /status`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// This node.
    pub node: NodeReport,
    /// Every other node known, connected or not.
    pub peers: Vec<PeerReport>,
    /// Names claimed by several live nodes.
    pub conflicts: Vec<ConflictReport>,
    /// The kernel data plane.
    #[serde(default)]
    pub dataplane: Option<DataplaneReport>,
    /// Network policy on this host.
    #[serde(default)]
    pub policy: Option<PolicyReport>,
    /// The name service on this host (None: off).
    #[serde(default)]
    pub dns: Option<DnsReport>,
    /// Docker's plugin on this host (None: off).
    #[serde(default)]
    pub docker: Option<DockerReport>,
}

/// Docker's plugin in a status report.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct DockerReport {
    /// The plugin socket (its file name is the driver's name).
    pub plugin: String,
    /// dockerd's API socket, where names are read.
    pub host: String,
    /// Docker endpoints on this host.
    pub endpoints: usize,
    /// Of them, named from dockerd.
    pub named: usize,
    /// Host ports published (`-p`).
    pub ports: Vec<String>,
}

/// The name service in a status report.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct DnsReport {
    /// Where it answers (port 53).
    pub addr: String,
    /// The cluster domain.
    pub domain: String,
    /// How many names it answers.
    pub names: usize,
    /// Why it does not answer, if it does not.
    pub error: Option<String>,
}

/// This node in a status report.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct NodeReport {
    /// Node id.
    pub id: String,
    /// Node name.
    pub name: String,
    /// Advertised address.
    pub addr: String,
}

/// Another node in a status report.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PeerReport {
    /// Node id.
    pub id: String,
    /// Its name, if known.
    pub name: Option<String>,
    /// Its advertised address, if known.
    pub addr: Option<String>,
    /// up, down, gone or unknown.
    pub status: String,
    /// Directly connected to this node.
    pub connected: bool,
    /// The next hop towards it, if reachable.
    pub next_hop: Option<String>,
    /// The next hop's name.
    pub next_hop_name: Option<String>,
    /// Hops to it.
    pub distance: Option<u32>,
}

/// A name claimed twice.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ConflictReport {
    /// The name.
    pub name: String,
    /// The node ids claiming it.
    pub ids: Vec<String>,
}

/// `GET /peers`: one direct connection or dial target.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ConnReport {
    /// Peer node id (empty while not connected).
    pub id: String,
    /// Peer name.
    pub name: Option<String>,
    /// Address.
    pub addr: String,
    /// dialled, accepted, connecting or retrying.
    pub direction: String,
    /// Seconds connected.
    pub seconds: u64,
}

/// `GET /ipam`: the cluster IPAM as this node sees it.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct IpamReport {
    /// This node.
    pub node: NodeReport,
    /// The pools (CIDRs).
    pub pools: Vec<String>,
    /// IPv4 block prefix length.
    pub block_v4: u8,
    /// IPv6 block prefix length.
    pub block_v6: u8,
    /// Nodes that start the cluster together.
    pub init: usize,
    /// This node allocates.
    pub ready: bool,
    /// Why it does not, if it does not.
    pub not_ready: Option<String>,
    /// Two geneses seen: the cluster's IPAM is misconfigured and allocates nothing.
    pub conflict: Option<String>,
    /// Every node the IPAM knows, this one first.
    pub nodes: Vec<IpamNodeReport>,
    /// Addresses of the pools that may be handed out.
    pub usable: u64,
    /// Addresses in use by containers, as the nodes report.
    pub used: u64,
}

/// One node in an IPAM report. The counts come from the node's own summary (`ipam/use`)
/// and are absent when it is not known here.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct IpamNodeReport {
    /// Node id.
    pub id: String,
    /// Its name, if known.
    pub name: Option<String>,
    /// This node.
    pub local: bool,
    /// Mesh status: up, down, gone or unknown.
    pub status: String,
    /// Its active blocks (CIDRs): routed to it, it allocates from them.
    pub blocks: Vec<String>,
    /// Every block it holds as this node's view resolves it, active and reserve (CIDRs).
    #[serde(default)]
    pub held: Vec<String>,
    /// Reserve blocks it holds.
    pub reserve: Option<u64>,
    /// Addresses its containers use.
    pub used: Option<u64>,
    /// Free addresses in its active blocks.
    pub free: Option<u64>,
    /// Addresses it lends to other nodes.
    pub lent: Option<u64>,
    /// Addresses it borrows from other nodes.
    pub borrowed: Option<u64>,
    /// It allocates (confirmed by its heir).
    pub ready: Option<bool>,
    /// It was removed (`weft rmpeer` or automatic reclaim); its heir took its space.
    pub removed: bool,
    /// Its effective heir, which takes its space if it is removed.
    pub heir: Option<String>,
    /// The heir's name.
    pub heir_name: Option<String>,
}
