//! `weft agent` and the commands that talk to a running agent (`status`, `peers`,
//! `connect`, `forget`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use weft_agent::{api, RawConfig};

/// Options of `weft agent`.
#[derive(Args)]
pub struct AgentArgs {
    /// A JSON config file (keys: name, listen, advertise, peers, dataDir, secretFile, socket,
    /// maxPeers, tickMs, downAfterSecs); flags override it.
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
}

/// Where the agent's API is.
#[derive(Args)]
pub struct SocketArg {
    /// The agent's API socket [default: $WEFT_SOCKET or /run/weft/weft.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
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
    };
    let cfg = file.overlay(flags).validate().map_err(|e| e.to_string())?;
    weft_agent::run(cfg).map_err(|e| e.0)?;
    Ok(ExitCode::SUCCESS)
}

fn call(s: &SocketArg, method: &str, path: &str, body: Option<String>) -> Result<String, String> {
    let (code, text) = api::request(&s.path(), method, path, body.as_deref())?;
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
    Ok(ExitCode::SUCCESS)
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
