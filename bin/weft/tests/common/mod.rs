//! Shared helpers of the lab tests: root checks, a lab that tears itself down, running weft
//! and the plugin, and snapshots of the root network namespace.
#![allow(dead_code)]

pub mod capture;
pub mod dp;
pub mod truth;

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// True when the test may run. Without root it fails under CI (`CI` set) and is skipped,
/// loudly, on a developer's machine.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root (it creates network namespaces) and CI is set");
    }
    eprintln!("SKIPPED {test}: needs root (it creates network namespaces)");
    false
}

/// Runs `weft ARGS`, returns its output.
pub fn weft(args: &[&str]) -> Output {
    Command::new(WEFT)
        .args(args)
        .env_remove("CNI_COMMAND")
        .output()
        .expect("run weft")
}

/// Runs `weft ARGS` and insists it succeeded; returns stdout.
pub fn weft_ok(args: &[&str]) -> String {
    let out = weft(args);
    assert!(
        out.status.success(),
        "weft {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, returns (success, stdout+stderr).
pub fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().expect("run command");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs a command, returns its stdout only (stderr can carry transient warnings, e.g. about
/// a peer namespace another test just deleted).
pub fn stdout_of(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("run command");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A lab that is torn down when dropped, also when the test panics.
pub struct Lab {
    pub name: String,
}

impl Lab {
    pub fn up(name: &str, hosts: usize, topology: &str) -> Lab {
        Lab::up_args(name, hosts, topology, &[])
    }

    /// As [`Lab::up`], with more `weft lab up` arguments (e.g. `--mode vxlan`).
    pub fn up_args(name: &str, hosts: usize, topology: &str, extra: &[&str]) -> Lab {
        // A crashed earlier run of the same test may have left it: `up` clears that.
        let _ = weft(&["lab", "down", "--name", name]);
        let hosts = hosts.to_string();
        let mut args = vec![
            "lab",
            "up",
            "--name",
            name,
            "--hosts",
            &hosts,
            "--topology",
            topology,
        ];
        args.extend_from_slice(extra);
        weft_ok(&args);
        Lab { name: name.into() }
    }

    pub fn host_ns(&self, host: &str) -> String {
        format!("weft-{}-{host}", self.name)
    }

    pub fn exec(&self, target: &str, cmd: &[&str]) -> (bool, String) {
        self.lab_cmd("exec", target, cmd)
    }

    /// `weft lab SUB --name LAB TARGET -- ARGS`: (success, stdout+stderr).
    pub fn lab_cmd(&self, sub: &str, target: &str, rest: &[&str]) -> (bool, String) {
        let mut args = vec!["lab", sub, "--name", &self.name, target, "--"];
        args.extend_from_slice(rest);
        let out = weft(&args);
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    pub fn data_dir(&self, host: &str) -> String {
        format!("/run/weft-lab/{}/{host}/data", self.name)
    }

    /// Creates a bare namespace for a plugin test (removed with the lab).
    pub fn netns(&self, tag: &str) -> String {
        let name = format!("weft-{}-x{tag}", self.name);
        let (ok, text) = sh("ip", &["netns", "add", &name]);
        assert!(ok, "ip netns add {name}: {text}");
        format!("/run/netns/{name}")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = weft(&["lab", "down", "--name", &self.name]);
        if !out.status.success() && !std::thread::panicking() {
            panic!("lab down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// One plugin invocation: env (CNI_PATH is added) and stdin.
pub struct Plugin<'a> {
    pub host_ns: &'a str,
    pub env: Vec<(&'a str, String)>,
    pub stdin: String,
}

/// Runs the weft plugin inside `host_ns` with exactly `env` (nothing inherited).
/// Returns (exit code, stdout parsed as JSON if it is JSON, raw stdout).
pub fn plugin(p: Plugin) -> (i32, Value, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", p.host_ns, WEFT])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &p.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(p.stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, stdout)
}

/// The standard env of an attachment.
pub fn cni_env<'a>(
    command: &str,
    container: &str,
    netns: &str,
    ifname: &str,
) -> Vec<(&'a str, String)> {
    vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", container.to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", ifname.to_string()),
        ("CNI_PATH", "/usr/lib/cni".to_string()),
    ]
}

/// A weft network config for a lab host.
pub fn weft_conf(version: &str, range: &str, data_dir: &str) -> String {
    serde_json::json!({
        "cniVersion": version,
        "name": "weft",
        "type": "weft",
        "range": range,
        "dataDir": data_dir,
    })
    .to_string()
}

/// What the root network namespace looks like: namespaces, links, routes, nftables.
pub fn root_snapshot() -> String {
    let mut s = String::new();
    for (cmd, args) in [
        ("ip", vec!["netns", "list"]),
        ("ip", vec!["-d", "link", "show"]),
        ("ip", vec!["addr", "show"]),
        ("ip", vec!["route", "show", "table", "all"]),
        ("ip", vec!["-6", "route", "show", "table", "all"]),
        ("ip", vec!["rule", "show"]),
        ("nft", vec!["list", "ruleset"]),
    ] {
        let out = stdout_of(cmd, &args);
        // Address lifetimes and route expiry count down on their own: not state.
        let out: String = out
            .lines()
            .filter(|l| !l.contains("_lft") && !l.contains("expires"))
            .map(|l| format!("{l}\n"))
            .collect();
        s.push_str(&format!("### {cmd} {}\n{out}\n", args.join(" ")));
    }
    s
}

/// Links on a lab host that carry weft's mark.
pub fn weft_links(host_ns: &str) -> Vec<String> {
    stdout_of("ip", &["-n", host_ns, "-o", "link", "show"])
        .lines()
        // Container links; the agent's data plane device (alias weft:vxlan) stays.
        .filter(|l| l.contains("alias weft:") && !l.contains("alias weft:vxlan"))
        .map(String::from)
        .collect()
}

/// A `weft agent` started by a test in a lab host; ended (SIGKILL, by its pid) when dropped.
pub struct Agent {
    pub child: Child,
    pub socket: String,
    pub log: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `weft agent --name NAME` in lab host `host` (underlay 172.30.0.N) listening on
/// `port`, with its files under `/run/weft-lab/LAB/t-HOST-NAME`, a 200 ms tick and the
/// given extra arguments. Its log is appended across restarts, so a failure shows the
/// whole story.
pub fn spawn_agent(
    lab: &Lab,
    host: &str,
    name: &str,
    port: u16,
    secret: &str,
    args: &[&str],
) -> Agent {
    // Two agents on one host fight over its devices, tables, DNS and metrics addresses:
    // a test's own agents need a lab made with `--no-agents`.
    let out = weft(&["lab", "status", "--name", &lab.name, "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "weft lab status --name {} --json: {e}: {}",
            lab.name,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let lab_agent = status[0]["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("no agents list in the lab's status: {status}"))
        .iter()
        .any(|a| a["host"] == host && a["running"] == true);
    assert!(
        !lab_agent,
        "lab {} runs its own agent on {host}: make the lab with --no-agents",
        lab.name
    );
    let dir = format!("/run/weft-lab/{}/t-{host}-{name}", lab.name);
    std::fs::create_dir_all(&dir).unwrap();
    let ip = format!("172.30.0.{}", host.trim_start_matches('h'));
    let socket = format!("{dir}/weft.sock");
    let log = format!("{dir}/agent.log");
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.host_ns(host),
            WEFT,
            "agent",
            "--name",
            name,
        ])
        .args(["--listen", &format!("{ip}:{port}")])
        .args([
            "--data-dir",
            &format!("{dir}/data"),
            "--secret-file",
            secret,
        ])
        .args(["--socket", &socket, "--tick-ms", "200"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .unwrap();
    Agent { child, socket, log }
}
