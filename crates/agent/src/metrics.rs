//! Prometheus metrics (OpenMetrics text, `prometheus-client`): `GET /metrics` on the
//! metrics address (default `127.0.0.1:6782`, `--metrics-addr`) and on the API socket.
//!
//! Two kinds of series. Counters and histograms of things that happen (bytes, messages and
//! records exchanged with peers, CNI commands and their latency as the plugin reports
//! them, errors by kind, IPAM reclaims) live in [`Metrics`], shared by every task and
//! bumped where the thing happens. Gauges of the state (peers and their status, records,
//! IPAM blocks and addresses, routes, fast path counters) are read from the owner task's
//! state at each scrape into a registry made for that scrape, so a series of a peer that
//! is gone disappears with it. A scrape is one [`crate::Event::Api`] `GET /metrics`.
//!
//! Names follow Prometheus conventions: the `weft_` prefix, the unit in the name
//! (`_seconds`, `_bytes`), `_total` for counters.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weft_mesh::{Message, Status};

use crate::api::{answer, ask_agent, error_json, read_body, CONNECTION_LIMIT};
use crate::{Agent, AgentError, Event};

/// The metrics path, on the metrics address and on the API socket.
pub const PATH: &str = "/metrics";
/// The path on the API socket where the plugin reports a CNI command.
pub const CNI_REPORT: &str = "/cni/report";
/// The content type of the metrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The CNI commands whose reports are taken (anything else is refused, so a caller cannot
/// make up series).
const CNI_COMMANDS: [&str; 5] = ["ADD", "DEL", "CHECK", "GC", "STATUS"];

/// Label pairs of one series.
type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn cni_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// What happened since the agent started: shared by the owner task, the connection tasks
/// and the API server.
pub(crate) struct Metrics {
    sent_bytes: Counter,
    received_bytes: Counter,
    messages: Family<Labels, Counter>,
    records: Family<Labels, Counter>,
    cni: Family<Labels, Counter>,
    cni_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    errors: Family<Labels, Counter>,
    reclaims: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            sent_bytes: Counter::default(),
            received_bytes: Counter::default(),
            messages: Family::default(),
            records: Family::default(),
            cni: Family::default(),
            cni_seconds: Family::new_with_constructor(cni_histogram as fn() -> Histogram),
            errors: Family::default(),
            reclaims: Counter::default(),
        };
        // Series that exist from the start, at 0, so that rates and alerts need no
        // special case for "never happened".
        for kind in ErrorKind::ALL {
            m.errors
                .get_or_create(&labels(&[("kind", kind.as_str())]))
                .inc_by(0);
        }
        for dir in ["sent", "received"] {
            m.records
                .get_or_create(&labels(&[("direction", dir)]))
                .inc_by(0);
        }
        m
    }
}

/// The kinds of errors counted in `weft_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// A peer connection refused at its handshake (wrong secret, garbage, a scan).
    PeerRefused,
    /// A dial that failed before a connection existed.
    Dial,
    /// The kernel refused the data plane's change (routes, VXLAN, nftables).
    DataplaneApply,
    /// The fast path could not be loaded or attached.
    FastPath,
    /// State that could not be saved to the data directory.
    Save,
}

impl ErrorKind {
    const ALL: [ErrorKind; 5] = [
        ErrorKind::PeerRefused,
        ErrorKind::Dial,
        ErrorKind::DataplaneApply,
        ErrorKind::FastPath,
        ErrorKind::Save,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::PeerRefused => "peer_refused",
            ErrorKind::Dial => "dial",
            ErrorKind::DataplaneApply => "dataplane_apply",
            ErrorKind::FastPath => "fast_path",
            ErrorKind::Save => "save",
        }
    }
}

/// `POST /cni/report`: one CNI command as the plugin timed it.
#[derive(Deserialize)]
struct CniReport {
    command: String,
    seconds: f64,
    /// The CNI error code, 0 for success.
    #[serde(default)]
    code: u32,
}

/// How many records a message carries.
fn records_in(msg: &Message) -> u64 {
    match msg {
        Message::Update(r) => r.len() as u64,
        Message::Delta { records, .. } => records.len() as u64,
        Message::Digest(_) | Message::Vector(_) | Message::Tunnel(_) => 0,
    }
}

impl Metrics {
    /// Counts an error of `kind`.
    pub(crate) fn error(&self, kind: ErrorKind) {
        self.errors
            .get_or_create(&labels(&[("kind", kind.as_str())]))
            .inc();
    }

    /// Counts one reclaim of a down node's space by this node.
    pub(crate) fn reclaimed(&self) {
        self.reclaims.inc();
    }

    /// Counts bytes written to peers.
    pub(crate) fn sent_bytes(&self, n: usize) {
        self.sent_bytes.inc_by(n as u64);
    }

    /// Counts bytes read from peers.
    pub(crate) fn received_bytes(&self, n: usize) {
        self.received_bytes.inc_by(n as u64);
    }

    /// Counts a message (and the records in it) sent or received.
    pub(crate) fn message(&self, sent: bool, msg: &Message) {
        let dir = if sent { "sent" } else { "received" };
        self.messages
            .get_or_create(&labels(&[("direction", dir), ("kind", msg.kind())]))
            .inc();
        self.records
            .get_or_create(&labels(&[("direction", dir)]))
            .inc_by(records_in(msg));
    }

    /// `POST /cni/report`: records one CNI command; answers at once.
    pub(crate) fn cni_report(&self, body: &str) -> (u16, String) {
        let r: CniReport = match serde_json::from_str(body) {
            Ok(r) => r,
            Err(e) => {
                return (
                    400,
                    error_json(&format!(
                        "expected {{\"command\": \"ADD\", \"seconds\": 0.01, \"code\": 0}}: {e}"
                    )),
                )
            }
        };
        if !CNI_COMMANDS.contains(&r.command.as_str()) {
            return (
                400,
                error_json(&format!(
                    "command: expected one of {}, found {:?}",
                    CNI_COMMANDS.join(", "),
                    r.command
                )),
            );
        }
        if !r.seconds.is_finite() || r.seconds < 0.0 || r.seconds > 3600.0 {
            return (
                400,
                error_json("seconds: expected a duration from 0 to 3600"),
            );
        }
        if r.code > 999 {
            return (400, error_json("code: expected a CNI error code, 0 to 999"));
        }
        let result = if r.code == 0 { "ok" } else { "error" };
        let code = r.code.to_string();
        self.cni
            .get_or_create(&labels(&[
                ("command", &r.command),
                ("result", result),
                ("code", &code),
            ]))
            .inc();
        self.cni_seconds
            .get_or_create(&labels(&[("command", &r.command)]))
            .observe(r.seconds);
        (200, "{}".to_string())
    }

    /// Registers the counters and histograms in `reg`.
    fn register(&self, reg: &mut Registry) {
        reg.register_with_unit(
            "mesh_sent",
            "Bytes written to peer connections (handshakes and encrypted frames)",
            Unit::Bytes,
            self.sent_bytes.clone(),
        );
        reg.register_with_unit(
            "mesh_received",
            "Bytes read from peer connections",
            Unit::Bytes,
            self.received_bytes.clone(),
        );
        reg.register(
            "mesh_messages",
            "Mesh messages sent to and received from peers, by kind",
            self.messages.clone(),
        );
        reg.register(
            "mesh_records",
            "Replicated records carried in messages sent to and received from peers",
            self.records.clone(),
        );
        reg.register(
            "cni_operations",
            "CNI commands run by the plugin on this host, by result and CNI error code \
             (0 for success), as the plugin reports them",
            self.cni.clone(),
        );
        reg.register_with_unit(
            "cni_operation_duration",
            "How long the plugin's CNI commands took, from its start to its answer",
            Unit::Seconds,
            self.cni_seconds.clone(),
        );
        reg.register(
            "errors",
            "Errors by kind: peer connections refused at the handshake, failed dials, \
             refused data plane changes, fast path failures, failed saves",
            self.errors.clone(),
        );
        reg.register(
            "ipam_reclaims",
            "Down nodes whose address space this node took as their heir",
            self.reclaims.clone(),
        );
    }
}

fn gauge(reg: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    reg.register(name, help, g);
}

fn gauges(reg: &mut Registry, name: &str, help: &str, values: &[(Labels, i64)]) {
    let f: Family<Labels, Gauge> = Family::default();
    for (l, v) in values {
        f.get_or_create(l).set(*v);
    }
    reg.register(name, help, f);
}

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Agent {
    /// `GET /metrics` (from the metrics address or the API socket); `None` for other
    /// routes.
    pub(crate) fn api_metrics(&self, method: &str, path: &str) -> Option<(u16, String)> {
        if (method, path) != ("GET", PATH) {
            return None;
        }
        let mut reg = Registry::with_prefix("weft");
        self.metrics.register(&mut reg);
        self.mesh_gauges(&mut reg);
        self.ipam_gauges(&mut reg);
        self.dataplane_gauges(&mut reg);
        self.policy_gauges(&mut reg);
        let mut text = String::new();
        Some(match encode(&mut text, &reg) {
            Ok(()) => (200, text),
            Err(e) => (500, error_json(&format!("encode the metrics: {e}"))),
        })
    }

    fn mesh_gauges(&self, reg: &mut Registry) {
        let info = labels(&[
            ("version", env!("CARGO_PKG_VERSION")),
            ("node", &self.cfg.name),
            ("id", &self.id.to_string()),
        ]);
        gauges(
            reg,
            "build_info",
            "This agent: weft's version, the node's name and id (always 1)",
            &[(info, 1)],
        );
        gauge(
            reg,
            "uptime_seconds",
            "Seconds since this agent started",
            count(self.start.elapsed().as_secs()),
        );
        let mut by_status = [("up", 0), ("down", 0), ("gone", 0), ("unknown", 0)];
        let mut up = Vec::new();
        let mut connected = Vec::new();
        for owner in self.node.store().owners() {
            if *owner == self.id {
                continue;
            }
            let status = self.node.status(owner);
            let s = crate::cluster_ipam::status_str(status);
            if let Some(slot) = by_status.iter_mut().find(|(k, _)| *k == s) {
                slot.1 += 1;
            }
            let name = self.name_of(owner).unwrap_or_else(|| owner.to_string());
            let l = labels(&[("peer", &name)]);
            up.push((l.clone(), i64::from(status == Status::Up)));
            connected.push((l, i64::from(self.conns.contains_key(owner))));
        }
        let by_status: Vec<(Labels, i64)> = by_status
            .iter()
            .map(|(s, n)| (labels(&[("status", s)]), *n))
            .collect();
        gauges(
            reg,
            "mesh_peers",
            "Other nodes this node knows, by mesh status (up, down, gone, unknown)",
            &by_status,
        );
        gauges(
            reg,
            "mesh_peer_up",
            "1 if the peer is up (reachable over the mesh, directly or through others)",
            &up,
        );
        gauges(
            reg,
            "mesh_peer_connected",
            "1 if this node has a direct connection to the peer",
            &connected,
        );
        let dialled = self.conns.values().filter(|c| c.outbound).count();
        gauges(
            reg,
            "mesh_connections",
            "Direct peer connections, by who dialled",
            &[
                (labels(&[("direction", "dialled")]), count(dialled as u64)),
                (
                    labels(&[("direction", "accepted")]),
                    count((self.conns.len() - dialled) as u64),
                ),
            ],
        );
        gauge(
            reg,
            "mesh_store_records",
            "Replicated records held, of every node",
            count(self.node.store().len() as u64),
        );
    }

    fn ipam_gauges(&self, reg: &mut Registry) {
        let r = self.ipam_report();
        gauge(
            reg,
            "ipam_ready",
            "1 if this node hands out addresses",
            i64::from(r.ready),
        );
        let pools: Vec<(Labels, i64)> = self
            .ipam
            .engines()
            .iter()
            .map(|e| {
                let space = &e.config().space;
                let names: Vec<String> = space.pools.iter().map(|p| p.to_string()).collect();
                (
                    labels(&[("pool", &names.join(","))]),
                    count(u64::try_from(space.usable_total()).unwrap_or(u64::MAX)),
                )
            })
            .collect();
        gauges(
            reg,
            "ipam_pool_addresses",
            "Addresses of the cluster's pools that may be handed out, per address family",
            &pools,
        );
        gauges(
            reg,
            "ipam_cluster_addresses",
            "Addresses of all pools: usable, and used by containers as the nodes report",
            &[
                (labels(&[("state", "usable")]), count(r.usable)),
                (labels(&[("state", "used")]), count(r.used)),
            ],
        );
        let me = r.nodes.iter().find(|n| n.local);
        let v = |f: fn(&crate::IpamNodeReport) -> Option<u64>| count(me.and_then(f).unwrap_or(0));
        let active = me.map_or(0, |n| n.blocks.len() as u64);
        gauges(
            reg,
            "ipam_blocks",
            "Blocks this node holds: active (routed here, allocating) and reserve",
            &[
                (labels(&[("state", "active")]), count(active)),
                (labels(&[("state", "reserve")]), v(|n| n.reserve)),
            ],
        );
        gauges(
            reg,
            "ipam_addresses",
            "This node's addresses: used by its containers, free in its active blocks, \
             lent to other nodes, borrowed from other nodes",
            &[
                (labels(&[("state", "used")]), v(|n| n.used)),
                (labels(&[("state", "free")]), v(|n| n.free)),
                (labels(&[("state", "lent")]), v(|n| n.lent)),
                (labels(&[("state", "borrowed")]), v(|n| n.borrowed)),
            ],
        );
        gauge(
            reg,
            "ipam_pending_allocations",
            "Allocations waiting for space or readiness",
            count(self.pending.len() as u64),
        );
    }

    fn dataplane_gauges(&self, reg: &mut Registry) {
        let d = self.dp_report();
        let mut by_mode = vec![("route", 0i64), ("vxlan", 0)];
        for r in &d.routes {
            match by_mode.iter_mut().find(|(m, _)| *m == r.mode) {
                Some(slot) => slot.1 += 1,
                None => by_mode.push((leak_mode(&r.mode), 1)),
            }
        }
        let by_mode: Vec<(Labels, i64)> = by_mode
            .iter()
            .map(|(m, n)| (labels(&[("mode", m)]), *n))
            .collect();
        gauges(
            reg,
            "dataplane_routes",
            "Routes to other hosts' blocks that this node programmed, by how they go \
             (route: directly over the underlay; vxlan: through weft.vx)",
            &by_mode,
        );
        gauge(
            reg,
            "dataplane_unrouted_nodes",
            "Nodes with blocks but no route (unreachable, or their next hop has no address)",
            count(d.skipped.len() as u64),
        );
        gauge(
            reg,
            "dataplane_in_sync",
            "1 if the kernel matches the data plane's plan (0: see weft status)",
            i64::from(d.error.is_none()),
        );
        gauge(
            reg,
            "dataplane_container_mtu_bytes",
            "The MTU containers get (0 until known)",
            i64::from(d.pod_mtu.unwrap_or(0)),
        );
        let f = &d.fast_path;
        gauge(
            reg,
            "fastpath_enabled",
            "1 if the BPF fast path is loaded",
            i64::from(f.state == "on"),
        );
        gauge(
            reg,
            "fastpath_devices",
            "Devices the fast path is attached to",
            count(f.devices.len() as u64),
        );
        let c = &f.counters;
        let actions = [
            ("forwarded", c.egress),
            ("into_container", c.peer),
            ("neighbour_resolution", c.neigh),
            ("to_stack", c.pass),
            ("to_conntrack", c.stateful),
            ("to_policy", c.policy),
            ("established_isolated", c.established),
        ];
        let packets: Family<Labels, Counter> = Family::default();
        for (action, n) in actions {
            packets
                .get_or_create(&labels(&[("action", action)]))
                .inc_by(n);
        }
        reg.register(
            "fastpath_packets",
            "Packets the fast path handled since it was loaded: forwarded to an egress \
             device, delivered into a container, handed to neighbour resolution, left to \
             the stack, left to conntrack (translated connections), left to the stack for \
             network policy (isolated pods), forwarded although of an isolated pod (its \
             established connections the agent promoted)",
            packets,
        );
    }

    fn policy_gauges(&self, reg: &mut Registry) {
        let p = self.policy_report();
        gauge(
            reg,
            "policy_policies",
            "NetworkPolicy objects in the cluster",
            count(p.policies as u64),
        );
        gauge(
            reg,
            "policy_endpoints",
            "Pod attachments of this host",
            count(p.endpoints as u64),
        );
        gauge(
            reg,
            "policy_isolated_endpoints",
            "Pod attachments of this host that some policy isolates",
            count(p.isolated as u64),
        );
        gauge(
            reg,
            "policy_applied",
            "1 if the kernel has the policy as compiled (0: see weft status)",
            i64::from(p.error.is_none()),
        );
        let drops: Family<Labels, Counter> = Family::default();
        for (dir, n) in [("ingress", p.dropped_ingress), ("egress", p.dropped_egress)] {
            drops
                .get_or_create(&labels(&[("direction", dir)]))
                .inc_by(n);
        }
        reg.register(
            "policy_dropped_packets",
            "Packets network policy dropped on this host, by direction (the kernel's counters)",
            drops,
        );
        let cut: Counter = Counter::default();
        cut.inc_by(p.connections_cut);
        reg.register(
            "policy_connections_cut",
            "Tracked connections deleted because a change no longer allows them",
            cut,
        );
        let flows: Counter = Counter::default();
        flows.inc_by(self.pol.flows.logged());
        reg.register(
            "policy_flows_logged",
            "Flows (drops and allowed new connections) read from the policy's log",
            flows,
        );
    }
}

/// A route mode other than the two known ones (kept as a label as it is).
fn leak_mode(m: &str) -> &'static str {
    match m {
        "route" => "route",
        "vxlan" => "vxlan",
        _ => "other",
    }
}

/// Binds the metrics address.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError(format!("metrics address {addr}: {e}")))
}

/// Serves `GET /metrics` on `listener` until the agent stops.
pub(crate) async fn serve(listener: TcpListener, events: mpsc::UnboundedSender<Event>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let events = events.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| scrape(req, events.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(crate::api::MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
        });
    }
}

async fn scrape(
    req: Request<Incoming>,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    if let Err(refusal) = read_body(req.into_body(), 4096).await {
        return Ok(refusal);
    }
    if (method.as_str(), path.as_str()) != ("GET", PATH) {
        return Ok(answer(
            404,
            "text/plain; charset=utf-8",
            format!("weft serves only GET {PATH} here\n"),
        ));
    }
    let (code, body) = ask_agent(&events, method, path, String::new()).await;
    let kind = if code == 200 {
        CONTENT_TYPE
    } else {
        "application/json"
    };
    Ok(answer(code, kind, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut reg = Registry::with_prefix("weft");
        m.register(&mut reg);
        let mut t = String::new();
        encode(&mut t, &reg).unwrap();
        t
    }

    #[test]
    fn cni_reports_become_counts_and_latencies_and_bad_ones_are_refused() {
        let m = Metrics::default();
        assert_eq!(m.cni_report(r#"{"command":"ADD","seconds":0.003}"#).0, 200);
        assert_eq!(
            m.cni_report(r#"{"command":"ADD","seconds":0.2,"code":11}"#)
                .0,
            200
        );
        assert_eq!(m.cni_report(r#"{"command":"DEL","seconds":0.05}"#).0, 200);
        for bad in [
            r#"{"command":"add","seconds":1}"#,
            r#"{"command":"ADD","seconds":-1}"#,
            r#"{"command":"ADD","seconds":1e9}"#,
            r#"{"command":"ADD","seconds":1,"code":1000}"#,
            r#"{"seconds":1}"#,
            "not json",
        ] {
            let (code, body) = m.cni_report(bad);
            assert_eq!(code, 400, "{bad}: {body}");
            assert!(body.contains("error"), "{body}");
        }
        let t = text(&m);
        for line in [
            "weft_cni_operations_total{command=\"ADD\",result=\"ok\",code=\"0\"} 1",
            "weft_cni_operations_total{command=\"ADD\",result=\"error\",code=\"11\"} 1",
            "weft_cni_operations_total{command=\"DEL\",result=\"ok\",code=\"0\"} 1",
            "weft_cni_operation_duration_seconds_count{command=\"ADD\"} 2",
            "weft_cni_operation_duration_seconds_bucket{le=\"0.004\",command=\"ADD\"} 1",
            "# TYPE weft_cni_operation_duration_seconds histogram",
            "# UNIT weft_cni_operation_duration_seconds seconds",
        ] {
            assert!(t.contains(line), "no {line:?} in\n{t}");
        }
    }

    #[test]
    fn counters_follow_prometheus_names_and_start_at_zero() {
        let m = Metrics::default();
        let t = text(&m);
        for kind in ErrorKind::ALL {
            let line = format!("weft_errors_total{{kind=\"{}\"}} 0", kind.as_str());
            assert!(t.contains(&line), "no {line:?} in\n{t}");
        }
        m.error(ErrorKind::PeerRefused);
        m.sent_bytes(100);
        m.received_bytes(7);
        m.message(true, &Message::Update(vec![]));
        m.message(false, &Message::Digest(1));
        let t = text(&m);
        for line in [
            "weft_errors_total{kind=\"peer_refused\"} 1",
            "weft_mesh_sent_bytes_total 100",
            "weft_mesh_received_bytes_total 7",
            "weft_mesh_messages_total{direction=\"sent\",kind=\"update\"} 1",
            "weft_mesh_messages_total{direction=\"received\",kind=\"digest\"} 1",
            "weft_ipam_reclaims_total 0",
        ] {
            assert!(t.contains(line), "no {line:?} in\n{t}");
        }
        // Every series is weft_ and every counter ends in _total.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("weft_"), "{l}");
        }
        assert!(t.trim_end().ends_with("# EOF"));
    }
}
