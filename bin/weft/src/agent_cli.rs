//! `weft agent` and the commands that talk to a running agent (`status`, `peers`,
//! `connect`, `forget`, `ipam`, `rmpeer`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use weft_agent::{api, RawConfig};

/// Options of `weft agent`.
#[derive(Args)]
pub struct AgentArgs {
    /// A JSON config file (keys: name, listen, advertise, peers, dataDir, secretFile, socket,
    /// maxPeers, tickMs, downAfterSecs, ipamPools, ipamBlockV4, ipamBlockV6, ipamInit,
    /// ipamGraceMs, ipamReclaimAfterMs, ipamRequestTimeoutMs, mode, nat, fastPath, vxlanPort,
    /// vxlanId, encrypt, tunnelPort, tunnelOffload, tunnelRotateSecs, metricsAddr, logFormat,
    /// logFilter);
    /// flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's name.
    #[arg(long)]
    name: Option<String>,
    /// Address for peer connections [default: 0.0.0.0:6783].
    #[arg(long)]
    listen: Option<String>,
    /// Address other nodes dial (needed when --listen is 0.0.0.0).
    #[arg(long)]
    advertise: Option<String>,
    /// A peer to connect to (IP, IP:PORT or HOST:PORT); repeat for more. One is enough: the
    /// others are learned from the mesh.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Identity and state directory [default: /var/lib/weft].
    #[arg(long)]
    data_dir: Option<String>,
    /// File holding the cluster secret (every node of a cluster has the same).
    #[arg(long)]
    secret_file: Option<String>,
    /// Local API socket [default: /run/weft/weft.sock].
    #[arg(long)]
    socket: Option<String>,
    /// Dial at most this many peers [default: 100].
    #[arg(long)]
    max_peers: Option<usize>,
    /// Anti-entropy tick, milliseconds, 50 to 1000 [default: 1000].
    #[arg(long)]
    tick_ms: Option<u64>,
    /// A node unreachable this long is declared gone [default: 300].
    #[arg(long)]
    down_after_secs: Option<u64>,
    /// Cluster address pools, CIDRs separated by commas or given repeatedly; every node of
    /// a cluster needs the same [default: 10.32.0.0/12].
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    ipam_pools: Vec<String>,
    /// Prefix length of the IPv4 blocks pools are cut into, 16 to 32 [default: 26].
    #[arg(long, value_name = "LEN")]
    ipam_block_v4: Option<u64>,
    /// Prefix length of the IPv6 blocks pools are cut into, 112 to 128 [default: 122].
    #[arg(long, value_name = "LEN")]
    ipam_block_v6: Option<u64>,
    /// Number of nodes that start the cluster together; must be more than half of them
    /// [default: 1]. With --peer given, a node first connects to learn an existing cluster.
    #[arg(long, value_name = "N")]
    ipam_init: Option<u64>,
    /// An empty active block goes back to reserve after this long, ms [default: 60000].
    #[arg(long, value_name = "MS")]
    ipam_grace_ms: Option<u64>,
    /// A node down this long is removed and its space reclaimed by its heir, ms; 0 = only
    /// by `weft rmpeer` [default: 1800000].
    #[arg(long, value_name = "MS")]
    ipam_reclaim_after_ms: Option<u64>,
    /// An unanswered request for space goes to another node after this long, ms
    /// [default: 2000].
    #[arg(long, value_name = "MS")]
    ipam_request_timeout_ms: Option<u64>,
    /// How containers on other hosts are reached: `auto` (direct routes to hosts on this
    /// host's segment, VXLAN to the others), `route`, `vxlan`, or `off` (program nothing)
    /// [default: auto].
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// Masquerade container traffic to addresses outside the pools: on or off [default: on].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    nat: Option<bool>,
    /// Forward container-to-container IPv4 traffic with weft's BPF program on the
    /// containers' veths and weft.vx, past the host's IP stack and netfilter: on or off
    /// [default: on]. Where the kernel refuses the program, `weft status` says why and
    /// the kernel's stack carries the traffic.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    fast_path: Option<bool>,
    /// UDP port of weft's VXLAN; the same on every node [default: 6784].
    #[arg(long, value_name = "PORT")]
    vxlan_port: Option<u64>,
    /// VXLAN network identifier; the same on every node [default: 6783].
    #[arg(long, value_name = "VNI")]
    vxlan_id: Option<u64>,
    /// Encrypt container traffic between hosts in weft's userspace tunnel (TUN and UDP,
    /// AES-256-GCM, keys from the nodes' mesh identities, rotated every 2 minutes):
    /// `off`, `on` (every peer) or `cross-subnet` (peers across a router; peers on this
    /// host's segment keep plain routes). With it on, nothing to another host's containers
    /// leaves in clear: without a key, packets are dropped and counted. Peers behind NAT
    /// are reached through the tunnel even with `off` [default: off].
    #[arg(long, value_name = "off|on|cross-subnet")]
    encrypt: Option<String>,
    /// UDP port of the encrypted tunnel; the same on every node [default: 6785].
    #[arg(long, value_name = "PORT")]
    tunnel_port: Option<u64>,
    /// The tunnel's offloads (TCP superpackets from the TUN device, UDP GSO and GRO):
    /// on or off [default: on]. Where the kernel refuses them the tunnel goes without,
    /// and `weft status` says which are in use.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    tunnel_offload: Option<bool>,
    /// How often a node gives each peer a new key to send with, seconds, 1 to 120
    /// [default: 120]. Shorter only to test rotation.
    #[arg(long, value_name = "SECS")]
    tunnel_rotate_secs: Option<u64>,
    /// Where Prometheus scrapes `GET /metrics` (OpenMetrics text), IP:PORT, or `off`
    /// [default: 127.0.0.1:6782]. The API socket serves `/metrics` too.
    #[arg(long, value_name = "IP:PORT|off")]
    metrics_addr: Option<String>,
    /// Log lines as text, or one JSON object per event [default: text].
    #[arg(long, value_name = "text|json")]
    log_format: Option<String>,
    /// Which events to log, as `RUST_LOG` takes it, e.g. `info` or
    /// `warn,weft::mesh=debug` (targets weft::agent, weft::mesh, weft::ipam,
    /// weft::dataplane, weft::fastpath) [default: $WEFT_LOG, else $RUST_LOG, else info].
    #[arg(long, value_name = "FILTER")]
    log_filter: Option<String>,
    /// Answer DNS for the cluster's names (docs/dns.md): on or off [default: on].
    /// Containers get the server in their CNI result's `dns`.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    dns: Option<bool>,
    /// The address the name service answers on, UDP and TCP port 53; weft makes it local
    /// with a `local` route of its own through lo [default: 169.254.1.1, the containers'
    /// gateway].
    #[arg(long, value_name = "IP")]
    dns_addr: Option<String>,
    /// The cluster domain: containers are NAME.DOMAIN and NAME.NAMESPACE.DOMAIN
    /// [default: weft.local].
    #[arg(long, value_name = "DOMAIN")]
    dns_domain: Option<String>,
    /// TTL of the name service's answers, and of its negative answers, in seconds
    /// [default: 5].
    #[arg(long, value_name = "SECONDS")]
    dns_ttl: Option<u64>,
    /// Where the servers for names outside the domain are read (`nameserver` lines,
    /// re-read when the file changes) [default: /etc/resolv.conf].
    #[arg(long, value_name = "FILE")]
    dns_resolv_conf: Option<String>,
    /// Serve Docker's network and IPAM plugin on this socket (docs/docker.md); the file's
    /// name is the driver's: `/run/docker/plugins/weft.sock` gives
    /// `docker network create -d weft --ipam-driver weft NAME` [default: off].
    #[arg(long, value_name = "SOCKET|off")]
    docker_plugin: Option<String>,
    /// dockerd's API socket, where the names and network aliases of Docker containers
    /// are read after they joined [default: /var/run/docker.sock].
    #[arg(long, value_name = "SOCKET")]
    docker_host: Option<String>,
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, found {other:?}")),
    }
}

/// Where the agent's API is.
#[derive(Args)]
pub struct SocketArg {
    /// The agent's API socket [default: $WEFT_SOCKET or /run/weft/weft.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// How long to wait for the agent's answer, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = timeout_secs)]
    timeout: f64,
}

fn timeout_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t > 0.0 && t <= 86_400.0 => Ok(t),
        _ => Err(format!(
            "expected seconds, more than 0 and at most 86400, found {s:?}"
        )),
    }
}

impl SocketArg {
    fn path(&self) -> PathBuf {
        self.socket
            .clone()
            .or_else(|| std::env::var_os("WEFT_SOCKET").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(weft_agent::config::DEFAULT_SOCKET))
    }
}

pub fn agent(a: AgentArgs) -> Result<ExitCode, String> {
    let cfg = config_of(a)?;
    weft_agent::run(cfg).map_err(|e| e.0)?;
    Ok(ExitCode::SUCCESS)
}

/// Checks `weft agent` flags as the agent would at its start, without starting one: `weft
/// lab up` asks this before it makes anything, so a bad flag leaves nothing to undo.
pub fn check_flags(flags: &[String]) -> Result<(), String> {
    #[derive(clap::Parser)]
    #[command(name = "weft agent")]
    struct Check {
        #[command(flatten)]
        a: AgentArgs,
    }
    // What the lab gives each agent itself (a name, an address to listen on) stands in;
    // only `flags` are the caller's.
    let argv = [
        "weft agent",
        "--name",
        "check",
        "--listen",
        "127.0.0.1:6783",
        "--secret-file",
        "/run/weft/secret",
    ]
    .into_iter()
    .map(String::from)
    .chain(flags.iter().cloned());
    let c = <Check as clap::Parser>::try_parse_from(argv).map_err(|e| e.to_string())?;
    config_of(c.a).map(|_| ())
}

/// The agent's config: its `--config` file, overridden by its flags, validated.
fn config_of(a: AgentArgs) -> Result<weft_agent::AgentConfig, String> {
    let file = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| format!("read {}: {e}", p.display()))?;
            RawConfig::from_json(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => RawConfig::default(),
    };
    let flags = RawConfig {
        name: a.name,
        listen: a.listen,
        advertise: a.advertise,
        peers: a.peers,
        data_dir: a.data_dir,
        secret_file: a.secret_file,
        socket: a.socket,
        max_peers: a.max_peers,
        tick_ms: a.tick_ms,
        down_after_secs: a.down_after_secs,
        ipam_pools: (!a.ipam_pools.is_empty()).then_some(a.ipam_pools),
        ipam_block_v4: a.ipam_block_v4,
        ipam_block_v6: a.ipam_block_v6,
        ipam_init: a.ipam_init,
        ipam_grace_ms: a.ipam_grace_ms,
        ipam_reclaim_after_ms: a.ipam_reclaim_after_ms,
        ipam_request_timeout_ms: a.ipam_request_timeout_ms,
        mode: a.mode,
        nat: a.nat,
        fast_path: a.fast_path,
        vxlan_port: a.vxlan_port,
        vxlan_id: a.vxlan_id,
        encrypt: a.encrypt,
        tunnel_port: a.tunnel_port,
        tunnel_offload: a.tunnel_offload,
        tunnel_rotate_secs: a.tunnel_rotate_secs,
        metrics_addr: a.metrics_addr,
        log_format: a.log_format,
        log_filter: a.log_filter,
        dns: a.dns,
        dns_addr: a.dns_addr,
        dns_domain: a.dns_domain,
        dns_ttl: a.dns_ttl,
        dns_resolv_conf: a.dns_resolv_conf,
        docker_plugin: a.docker_plugin,
        docker_host: a.docker_host,
    };
    file.overlay(flags).validate().map_err(|e| e.to_string())
}

pub(crate) fn call(
    s: &SocketArg,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<String, String> {
    let timeout = std::time::Duration::from_secs_f64(s.timeout);
    let (code, text) = api::request_within(&s.path(), method, path, body.as_deref(), timeout)?;
    if code != 200 {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or(text);
        return Err(format!("the agent refused: {msg}"));
    }
    Ok(text)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

pub fn status(s: SocketArg) -> Result<ExitCode, String> {
    let text = call(&s, "GET", "/status", None)?;
    if s.json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let r: weft_agent::StatusReport =
        serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
    println!("node {} ({}) at {}", r.node.name, r.node.id, r.node.addr);
    println!(
        "{:<12} {:<9} {:<8} {:<10} {:<12} {:<5} addr",
        "peer", "id", "status", "connected", "next hop", "hops"
    );
    for p in &r.peers {
        println!(
            "{:<12} {:<9} {:<8} {:<10} {:<12} {:<5} {}",
            p.name.as_deref().unwrap_or("?"),
            short(&p.id),
            p.status,
            if p.connected { "yes" } else { "no" },
            p.next_hop_name
                .clone()
                .or_else(|| p.next_hop.as_deref().map(|h| short(h).to_string()))
                .unwrap_or_else(|| "-".into()),
            p.distance
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
            p.addr.as_deref().unwrap_or("?"),
        );
    }
    for c in &r.conflicts {
        println!(
            "CONFLICT: name {:?} is claimed by {}",
            c.name,
            c.ids.join(", ")
        );
    }
    if let Some(d) = &r.dataplane {
        print_dataplane(d);
    }
    if let Some(p) = &r.policy {
        crate::policy_cli::print_status(p);
    }
    if let Some(d) = &r.dns {
        println!();
        match &d.error {
            None => println!(
                "dns: answering {} names of {} on {}:53",
                d.names, d.domain, d.addr
            ),
            Some(e) => println!("dns: NOT ANSWERING: {e}"),
        }
    }
    if let Some(d) = &r.docker {
        println!();
        println!(
            "docker: plugin on {} ({} endpoints, {} named from {}){}",
            d.plugin,
            d.endpoints,
            d.named,
            d.host,
            if d.ports.is_empty() {
                String::new()
            } else {
                format!("; published {}", d.ports.join(", "))
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_tunnel(t: &weft_agent::TunnelReport) {
    let Some(dev) = &t.device else {
        println!("encryption: {} (no tunnel device)", t.encrypt);
        return;
    };
    let on = |b: bool| if b { "on" } else { "off" };
    println!(
        "encryption: {}; tunnel {dev}, UDP port {}, offloads: TSO {}, GSO {}, GRO {}; dropped: no route {}, no endpoint {}, spoofed source {}, refused datagrams {}",
        t.encrypt,
        t.port,
        on(t.offload.tso),
        on(t.offload.gso),
        on(t.offload.gro),
        t.no_route,
        t.no_endpoint,
        t.spoofed,
        t.refused
    );
    if !t.nat.is_empty() {
        println!("behind NAT: {}", t.nat.join(", "));
    }
    for p in &t.peers {
        let drops: Vec<String> = p.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "  tunnel to {} at {}: encrypted, key age {}, sent {} packets ({} bytes), received {} ({} bytes){}",
            p.name.as_deref().unwrap_or(&p.id),
            p.endpoint.as_deref().unwrap_or("(not known yet)"),
            p.send_key_age_ms
                .map(|a| format!("{:.1} s", a as f64 / 1000.0))
                .unwrap_or_else(|| "- (no key yet)".into()),
            p.sent,
            p.sent_bytes,
            p.received,
            p.received_bytes,
            if drops.is_empty() {
                String::new()
            } else {
                format!("; dropped: {}", drops.join(", "))
            }
        );
    }
}

fn print_dataplane(d: &weft_agent::DataplaneReport) {
    println!();
    if d.mode == "off" {
        println!("data plane: off (--mode off): the agent programs no routes");
        return;
    }
    println!(
        "data plane: mode {}, underlay {}, container MTU {}, NAT {}",
        d.mode,
        d.underlay.as_deref().unwrap_or("not found yet"),
        d.pod_mtu
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into()),
        if d.nat { "on" } else { "off" }
    );
    if let Some(e) = &d.error {
        println!("ERROR: {e}");
    }
    let f = &d.fast_path;
    match f.state.as_str() {
        "on" => println!(
            "fast path: on, {} devices{}, {} routes of weft's followed without a FIB lookup; packets forwarded {}, into containers {}, via neighbour resolution {}, left to the stack {}, left to conntrack (translated connections) {}, left to network policy {}, of isolated pods' established connections forwarded {}",
            f.devices.len(),
            f.underlay
                .as_ref()
                .map(|u| format!(" and the underlay {u} (delivering into containers)"))
                .unwrap_or_default(),
            f.routes.iter().filter(|r| r.contains(" via ")).count(),
            f.counters.egress,
            f.counters.peer,
            f.counters.neigh,
            f.counters.pass,
            f.counters.stateful,
            f.counters.policy,
            f.counters.established
        ),
        state => println!("fast path: {state}"),
    }
    if !f.shaped.is_empty() {
        println!(
            "fast path: not used for {} container veth(s) with a qdisc weft did not add (bandwidth limits, say): their traffic takes the kernel's stack, where the qdisc applies: {}",
            f.shaped.len(),
            f.shaped.join(", ")
        );
    }
    if let Some(e) = &f.error {
        println!("fast path ERROR: {e}");
    }
    if let Some(t) = &d.nftables {
        let known = t
            .translated_sockets
            .map_or("not refreshed yet".to_string(), |n| {
                format!("{n} client sockets")
            });
        let restored = match t.restored {
            0 => String::new(),
            n => format!("; tables found gone (a flushed ruleset) and written again: {n}"),
        };
        println!(
            "nftables: translated connections (Services, hostPorts) {known}, refreshed from conntrack every {} s{restored}",
            t.every_secs
        );
        if let Some(e) = &t.error {
            println!("nftables ERROR: {e}");
        }
    }
    if let Some(t) = &d.tunnel {
        print_tunnel(t);
    }
    // `via host`: the next hop's name; `owner`: whose block the destination is (another
    // node's when the next hop relays).
    println!(
        "{:<20} {:<6} {:<16} {:<12} {:<12} mtu",
        "destination", "mode", "via", "via host", "owner"
    );
    for r in &d.routes {
        let unknown = if r.via == "drop" { "-" } else { "?" };
        println!(
            "{:<20} {:<6} {:<16} {:<12} {:<12} {}",
            r.dst,
            r.mode,
            r.via,
            r.via_name.as_deref().unwrap_or(unknown),
            r.owner.as_deref().unwrap_or(unknown),
            r.mtu
        );
    }
    for s in &d.skipped {
        println!("no route: {s}");
    }
    for c in &d.conflicts {
        println!("left alone (another owner routes it): {c}");
    }
}

pub fn peers(s: SocketArg) -> Result<ExitCode, String> {
    let text = call(&s, "GET", "/peers", None)?;
    if s.json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: Vec<weft_agent::ConnReport> =
        serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
    println!(
        "{:<12} {:<9} {:<22} {:<11} seconds",
        "peer", "id", "addr", "state"
    );
    for c in v {
        println!(
            "{:<12} {:<9} {:<22} {:<11} {}",
            c.name.as_deref().unwrap_or("?"),
            short(&c.id),
            c.addr,
            c.direction,
            c.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn connect_or_forget(s: SocketArg, addr: &str, connect: bool) -> Result<ExitCode, String> {
    if weft_agent::config::parse_addr(addr).is_none() {
        return Err(format!(
            "{addr:?} is not an address: use IP, IP:PORT or HOST:PORT"
        ));
    }
    let path = if connect { "/connect" } else { "/forget" };
    let text = call(
        &s,
        "POST",
        path,
        Some(serde_json::json!({ "addr": addr }).to_string()),
    )?;
    if s.json {
        println!("{text}");
    } else if connect {
        println!("connecting to {addr}");
    } else {
        println!("forgot {addr}");
    }
    Ok(ExitCode::SUCCESS)
}

fn count(v: Option<u64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

pub fn ipam(s: SocketArg) -> Result<ExitCode, String> {
    let text = call(&s, "GET", "/ipam", None)?;
    if s.json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let r: weft_agent::IpamReport =
        serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
    match &r.not_ready {
        None => println!("node {} ({}): cluster IPAM ready", r.node.name, r.node.id),
        Some(why) => println!(
            "node {} ({}): cluster IPAM NOT READY: {why}",
            r.node.name, r.node.id
        ),
    }
    if let Some(c) = &r.conflict {
        println!("CONFLICT: {c}");
    }
    println!(
        "{:<12} {:<9} {:<7} {:>6} {:>7} {:>6} {:>6} {:>5} {:>8} {:<7} {:<12} active blocks",
        "node",
        "id",
        "status",
        "active",
        "reserve",
        "used",
        "free",
        "lent",
        "borrowed",
        "removed",
        "heir"
    );
    for n in &r.nodes {
        let name = match (&n.name, n.local) {
            (Some(name), true) => format!("{name}*"),
            (Some(name), false) => name.clone(),
            (None, true) => "(this)*".into(),
            (None, false) => "?".into(),
        };
        let heir = n
            .heir_name
            .clone()
            .or_else(|| n.heir.as_deref().map(|h| short(h).to_string()))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<12} {:<9} {:<7} {:>6} {:>7} {:>6} {:>6} {:>5} {:>8} {:<7} {:<12} {}",
            name,
            short(&n.id),
            n.status,
            n.blocks.len(),
            count(n.reserve),
            count(n.used),
            count(n.free),
            count(n.lent),
            count(n.borrowed),
            if n.removed { "yes" } else { "no" },
            heir,
            if n.blocks.is_empty() {
                "-".to_string()
            } else {
                n.blocks.join(" ")
            },
        );
    }
    println!(
        "pools {} (blocks /{} IPv4, /{} IPv6; init {})",
        r.pools.join(", "),
        r.block_v4,
        r.block_v6,
        r.init
    );
    println!(
        "total: {} usable, {} used, {} free",
        r.usable,
        r.used,
        r.usable.saturating_sub(r.used)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn rmpeer(s: SocketArg, peer: &str) -> Result<ExitCode, String> {
    let text = call(
        &s,
        "POST",
        "/ipam/rmpeer",
        Some(serde_json::json!({ "peer": peer }).to_string()),
    )?;
    if s.json {
        println!("{text}");
    } else {
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
        println!("{}", v["message"].as_str().unwrap_or(&text));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn agent_flags_are_checked_as_the_agent_checks_them() {
        assert_eq!(
            check_flags(&flags(&[
                "--ipam-pools",
                "10.32.0.0/12,fd32::/48",
                "--nat",
                "off"
            ])),
            Ok(())
        );
        let e = check_flags(&flags(&["--ipam-pools", "10.0.0.0/33"])).unwrap_err();
        assert!(e.contains("ipam-pools") && e.contains("10.0.0.0/33"), "{e}");
        let e = check_flags(&flags(&["--tunnel-rotate-secs", "500"])).unwrap_err();
        assert!(e.contains("tunnel-rotate-secs"), "{e}");
        let e = check_flags(&flags(&["--metrics-addr", "nowhere"])).unwrap_err();
        assert!(e.contains("metrics"), "{e}");
    }
}
