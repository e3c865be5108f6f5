//! `weft apply|delete|get|label|flows|policy`: network policy from the command line
//! (docs/policy.md). Files are parsed and validated here first, so that a mistake names
//! its file and field before anything is sent; the agent checks them again.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use weft_agent::{EndpointReport, FlowReport, FlowsAnswer, PolicyReport};
use weft_policy::Object;

use crate::agent_cli::{call, SocketArg};

type Res = Result<ExitCode, String>;

/// Bytes of objects sent per request at most (the API takes at most 1 MiB at once): a
/// thousand policies go in one request, are written to the mesh at once and applied once.
const CHUNK_BYTES: usize = 768 * 1024;

#[derive(Args)]
pub struct FileArgs {
    /// A YAML (several documents) or JSON (one object, or a List) file of NetworkPolicy
    /// and Namespace objects; `-` reads standard input. May be given several times.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The namespace of objects that name none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    /// NetworkPolicy objects (also: networkpolicy, netpol).
    #[value(alias = "networkpolicy", alias = "netpol")]
    Networkpolicies,
    /// Namespaces, with their labels (also: namespace, ns).
    #[value(alias = "namespace", alias = "ns")]
    Namespaces,
    /// Every pod attachment of the cluster, with its labels, ports and isolation (also:
    /// endpoint, ep).
    #[value(alias = "endpoint", alias = "ep")]
    Endpoints,
}

#[derive(Args)]
pub struct GetArgs {
    /// What to list.
    kind: Kind,
    /// Only this namespace (default: all of them).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(Args)]
pub struct LabelArgs {
    /// The endpoint's name (pod or container name).
    endpoint: String,
    /// KEY=VALUE sets a label, KEY- removes it.
    #[arg(required = true)]
    changes: Vec<String>,
    /// Its namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The node it runs on, when pods of that name run on several (podman's names are
    /// unique only per host).
    #[arg(long)]
    node: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(Args)]
pub struct FlowsArgs {
    /// Keep printing flows as they are logged (until interrupted).
    #[arg(long)]
    follow: bool,
    /// Only dropped flows.
    #[arg(long)]
    dropped: bool,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Would a connection be allowed, and why: the reference engine's verdict with the
    /// policies that decide it.
    Check {
        /// Source: an address, or NAMESPACE/NAME of an endpoint.
        #[arg(long)]
        from: String,
        /// Destination: an address, or NAMESPACE/NAME of an endpoint.
        #[arg(long)]
        to: String,
        /// TCP, UDP, SCTP or ICMP.
        #[arg(long, default_value = "TCP")]
        protocol: String,
        /// Destination port.
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[command(flatten)]
        socket: SocketArg,
    },
}

fn read_objects(a: &FileArgs) -> Result<Vec<Object>, String> {
    let mut all = Vec::new();
    for f in &a.files {
        let (name, text) = if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("read standard input: {e}"))?;
            ("standard input".to_string(), s)
        } else {
            let s = std::fs::read_to_string(f).map_err(|e| format!("read {}: {e}", f.display()))?;
            (f.display().to_string(), s)
        };
        let (objs, warnings) = weft_policy::parse_objects_warn(&text, &a.namespace)
            .map_err(|e| format!("{name}: {e}"))?;
        for w in warnings {
            eprintln!("Warning: {name}: {w}");
        }
        all.extend(objs);
    }
    Ok(all)
}

/// `weft apply -f` (or `delete` with `delete`).
pub fn apply(a: FileArgs, delete: bool) -> Res {
    let objs = read_objects(&a)?;
    let path = if delete {
        "/policy/delete"
    } else {
        "/policy/apply"
    };
    let mut results = Vec::new();
    let items: Vec<Value> = objs
        .iter()
        .map(|o| match o {
            Object::NetworkPolicy(p) => p.to_k8s(),
            Object::Namespace(n) => n.to_k8s(),
        })
        .collect();
    let mut chunks: Vec<Vec<Value>> = vec![vec![]];
    let mut size = 0;
    for item in items {
        let n = item.to_string().len() + 1;
        if size + n > CHUNK_BYTES && chunks.last().is_some_and(|c| !c.is_empty()) {
            chunks.push(vec![]);
            size = 0;
        }
        size += n;
        chunks.last_mut().expect("one at least").push(item);
    }
    for items in chunks.into_iter().filter(|c| !c.is_empty()) {
        let body = json!({"objects": items, "namespace": a.namespace}).to_string();
        let text = call(&a.socket, "POST", path, Some(body))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
        results.extend(v["results"].as_array().cloned().unwrap_or_default());
    }
    if a.socket.json {
        println!("{}", json!({ "results": results }));
    } else {
        for r in &results {
            println!(
                "{} {}",
                r["object"].as_str().unwrap_or("?"),
                r["action"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn labels_text(l: &serde_json::Map<String, Value>) -> String {
    if l.is_empty() {
        return "<none>".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `weft get KIND`.
pub fn get(a: GetArgs) -> Res {
    let kind = match a.kind {
        Kind::Networkpolicies => "networkpolicies",
        Kind::Namespaces => "namespaces",
        Kind::Endpoints => "endpoints",
    };
    let mut path = format!("/policy/get?kind={kind}");
    if let Some(ns) = &a.namespace {
        path.push_str(&format!("&namespace={ns}"));
    }
    let text = call(&a.socket, "GET", &path, None)?;
    if a.socket.json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
    let empty = Vec::new();
    match a.kind {
        Kind::Networkpolicies => {
            println!(
                "{:<14} {:<24} {:<30} policy-types",
                "namespace", "name", "pod-selector"
            );
            for p in v["items"].as_array().unwrap_or(&empty) {
                let sel: weft_policy::Selector =
                    serde_json::from_value(p["spec"]["podSelector"].clone()).unwrap_or_default();
                let types: Vec<&str> = p["spec"]["policyTypes"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<14} {:<24} {:<30} {}",
                    p["metadata"]["namespace"].as_str().unwrap_or("?"),
                    p["metadata"]["name"].as_str().unwrap_or("?"),
                    sel.show(),
                    types.join(",")
                );
            }
        }
        Kind::Namespaces => {
            println!("{:<20} labels", "name");
            for n in v["items"].as_array().unwrap_or(&empty) {
                println!(
                    "{:<20} {}",
                    n["metadata"]["name"].as_str().unwrap_or("?"),
                    labels_text(
                        n["metadata"]["labels"]
                            .as_object()
                            .unwrap_or(&Default::default())
                    )
                );
            }
        }
        Kind::Endpoints => {
            let eps: Vec<EndpointReport> = serde_json::from_value(v["endpoints"].clone())
                .map_err(|e| format!("bad answer: {e}"))?;
            println!(
                "{:<12} {:<16} {:<8} {:<28} {:<24} {:<16} isolation",
                "namespace", "name", "node", "addresses", "labels", "ports"
            );
            for e in eps {
                println!("{}", endpoint_row(&e));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of `weft get endpoints`: namespace, name, node, addresses, labels, named
/// ports, and the policies isolating it per direction.
fn endpoint_row(e: &EndpointReport) -> String {
    let list = |v: Vec<String>, sep: &str| {
        if v.is_empty() {
            "<none>".to_string()
        } else {
            v.join(sep)
        }
    };
    let mut iso = Vec::new();
    if !e.ingress_isolated_by.is_empty() {
        iso.push(format!("ingress by {}", e.ingress_isolated_by.join(" ")));
    }
    if !e.egress_isolated_by.is_empty() {
        iso.push(format!("egress by {}", e.egress_isolated_by.join(" ")));
    }
    format!(
        "{:<12} {:<16} {:<8} {:<28} {:<24} {:<16} {}",
        e.namespace,
        e.name,
        e.node,
        e.addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        list(
            e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            ","
        ),
        list(e.ports.clone(), ","),
        if iso.is_empty() {
            "none".into()
        } else {
            iso.join("; ")
        }
    )
}

/// `weft label`.
pub fn label(a: LabelArgs) -> Res {
    let mut set = serde_json::Map::new();
    let mut remove = Vec::new();
    for c in &a.changes {
        if let Some((k, v)) = c.split_once('=') {
            set.insert(k.to_string(), json!(v));
        } else if let Some(k) = c.strip_suffix('-') {
            remove.push(k.to_string());
        } else {
            return Err(format!(
                "{c:?}: expected KEY=VALUE to set a label or KEY- to remove one"
            ));
        }
    }
    let body = json!({"namespace": a.namespace, "name": a.endpoint, "node": a.node, "set": set, "remove": remove});
    let text = call(&a.socket, "POST", "/policy/label", Some(body.to_string()))?;
    if a.socket.json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
    for e in v["endpoints"].as_array().cloned().unwrap_or_default() {
        println!(
            "{}/{} ({}) labelled: {}",
            a.namespace,
            a.endpoint,
            e["uid"].as_str().unwrap_or("?"),
            labels_text(e["labels"].as_object().unwrap_or(&Default::default()))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_flow(f: &FlowReport) {
    let who = |addr: &str, name: &Option<String>, port: Option<u16>| {
        let p = port.map(|p| format!(":{p}")).unwrap_or_default();
        match name {
            Some(n) => format!("{n}({addr}{p})"),
            None => format!("{addr}{p}"),
        }
    };
    let secs = f.time_ms / 1000;
    println!(
        "{:02}:{:02}:{:02}.{:03} {:<7} {:<7} {} -> {} {} {}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        f.time_ms % 1000,
        f.verdict,
        f.direction,
        who(&f.src, &f.src_name, f.sport),
        who(&f.dst, &f.dst_name, f.dport),
        f.protocol,
        f.reason
    );
}

/// `weft flows`.
pub fn flows(a: FlowsArgs) -> Res {
    let mut after = 0u64;
    let mut lost = 0u64;
    let mut header = !a.socket.json;
    loop {
        let text = call(&a.socket, "GET", &format!("/flows?after={after}"), None)?;
        let mut ans: FlowsAnswer =
            serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
        if let Some(e) = &ans.error {
            eprintln!("weft: flows are not logged on this host: {e}");
        }
        if ans.last < after {
            // The agent restarted (its numbers start again): all it has is new.
            eprintln!("weft: the agent restarted; flows from its start on follow");
            let text = call(&a.socket, "GET", "/flows?after=0", None)?;
            ans = serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
            lost = 0;
        }
        if let Some(first) = ans.flows.first() {
            if after > 0 && first.seq > after + 1 {
                eprintln!(
                    "weft: {} flows came and went from the agent's ring between two reads",
                    first.seq - after - 1
                );
            }
        }
        if ans.lost > lost {
            eprintln!(
                "weft: the agent was behind and did not log {} packets",
                ans.lost - lost
            );
            lost = ans.lost;
        }
        let shown: Vec<&FlowReport> = ans
            .flows
            .iter()
            .filter(|f| !a.dropped || f.verdict == "dropped")
            .collect();
        if header {
            println!("time (UTC)   verdict direction source -> destination protocol reason");
            header = false;
        }
        if a.socket.json && !a.follow {
            println!("{}", serde_json::to_string(&shown).unwrap_or_default());
        } else {
            for f in shown {
                if a.socket.json {
                    println!("{}", serde_json::to_string(f).unwrap_or_default());
                } else {
                    print_flow(f);
                }
            }
        }
        after = ans.last;
        if !a.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `weft policy ...`.
pub fn policy(cmd: PolicyCmd) -> Res {
    match cmd {
        PolicyCmd::Check {
            from,
            to,
            protocol,
            port,
            socket,
        } => {
            let q = |s: &str| s.replace('/', "%2F");
            let text = call(
                &socket,
                "GET",
                &format!(
                    "/policy/check?from={}&to={}&protocol={protocol}&port={port}",
                    q(&from),
                    q(&to)
                ),
                None,
            )?;
            if socket.json {
                println!("{text}");
            } else {
                let v: Value =
                    serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
                println!("{}", v["explanation"].as_str().unwrap_or("?"));
            }
            let allowed = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["allowed"].as_bool())
                .unwrap_or(false);
            Ok(if allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// The policy part of `weft status`.
pub fn print_status(p: &PolicyReport) {
    println!();
    match p.state.as_str() {
        "none" => println!(
            "network policy: none ({} endpoints here, none isolated)",
            p.endpoints
        ),
        _ => println!(
            "network policy: {} policies; {} of {} endpoints here isolated; dropped here: ingress {}, egress {}; connections cut {}",
            p.policies, p.isolated, p.endpoints, p.dropped_ingress, p.dropped_egress, p.connections_cut
        ),
    }
    if let Some(e) = &p.error {
        println!("network policy ERROR: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ports: &[&str], ingress: &[&str]) -> EndpointReport {
        serde_json::from_value(json!({
            "namespace": "shop", "name": "web", "uid": "c/eth0", "node": "h2",
            "labels": {"app": "web", "tier": "front"},
            "ports": ports, "addrs": ["10.32.0.1", "fd32::1"],
            "ingress_isolated_by": ingress, "egress_isolated_by": []
        }))
        .unwrap()
    }

    #[test]
    fn an_endpoint_row_shows_its_named_ports_and_isolation() {
        let row = endpoint_row(&ep(&["http=80/TCP", "dns=53/UDP"], &["shop/deny-all"]));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "shop",
                "web",
                "h2",
                "10.32.0.1,fd32::1",
                "app=web,tier=front",
                "http=80/TCP,dns=53/UDP",
                "ingress",
                "by",
                "shop/deny-all"
            ],
            "{row}"
        );
        let row = endpoint_row(&ep(&[], &[]));
        assert!(row.ends_with("<none>           none"), "{row}");
    }
}
