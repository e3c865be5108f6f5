//! `weft dns add|remove|list`: names outside containers, and what the name service
//! answers (docs/dns.md).

use std::net::IpAddr;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::agent_cli::{call, SocketArg};

type Res = Result<ExitCode, String>;

#[derive(Subcommand)]
pub enum DnsCmd {
    /// Give NAME (relative to the cluster domain, or ending in it) these addresses on
    /// every host; the name stays while this host's agent is up, and is gone with it.
    Add {
        /// The name, e.g. `db` or `db.weft.local`.
        name: String,
        /// Its addresses (IPv4 and IPv6).
        #[arg(required = true)]
        addrs: Vec<IpAddr>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Take addresses from a name added on this host, or the whole name when none are
    /// given.
    Remove {
        /// The name.
        name: String,
        /// The addresses to take out [default: all].
        addrs: Vec<IpAddr>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Every name the name service answers on this host: containers' names and aliases
    /// (NAME.DOMAIN and NAME.NAMESPACE.DOMAIN) and added names, with their addresses and
    /// the host that holds them.
    List {
        #[command(flatten)]
        socket: SocketArg,
    },
}

pub fn dns(c: DnsCmd) -> Res {
    match c {
        DnsCmd::Add {
            name,
            addrs,
            socket,
        } => change(&socket, "/dns/add", &name, &addrs),
        DnsCmd::Remove {
            name,
            addrs,
            socket,
        } => change(&socket, "/dns/remove", &name, &addrs),
        DnsCmd::List { socket } => list(&socket),
    }
}

fn change(socket: &SocketArg, path: &str, name: &str, addrs: &[IpAddr]) -> Res {
    let text = call(
        socket,
        "POST",
        path,
        Some(json!({"name": name, "addrs": addrs}).to_string()),
    )?;
    if socket.json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
    let addrs: Vec<&str> = v["addrs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let name = v["name"].as_str().unwrap_or(name);
    if addrs.is_empty() {
        println!("{name}: removed");
    } else {
        println!("{name}: {}", addrs.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

fn list(socket: &SocketArg) -> Res {
    let text = call(socket, "GET", "/dns", None)?;
    if socket.json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
    if let Some(e) = v["error"].as_str() {
        eprintln!("weft: the name service is not answering on this host: {e}");
    }
    println!("NAME ADDRESSES NODE KIND");
    for n in v["names"].as_array().cloned().unwrap_or_default() {
        let addrs: Vec<&str> = n["addrs"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{} {} {} {}",
            n["name"].as_str().unwrap_or("?"),
            addrs.join(","),
            n["node"].as_str().unwrap_or("?"),
            n["kind"].as_str().unwrap_or("?"),
        );
    }
    Ok(ExitCode::SUCCESS)
}
