//! `weft-bench docker`: weft's Docker network (docs/docker.md) beside Docker's own overlay
//! network of a swarm, on the same lab in one run.
//!
//! Lab `NAME` (default `bdk`): two hosts on one segment (mesh topology), weft's agents
//! with their defaults (route mode there), a dockerd per host. On that dockerd pair:
//!
//! - weft: `docker network create -d weft --ipam-driver weft wnet` on each host;
//! - Docker: a swarm (h1 manager, h2 worker, over the underlay) and an attachable overlay
//!   network `onet` (VXLAN, `--subnet 10.200.1.0/24`, the swarm's pool 10.200.0.0/16, clear of
//!   weft's 10.32.0.0/12).
//!
//! Lab `NAMEv` (unless `--no-vxlan`): the same with weft's agents in `--mode vxlan`, so
//! weft's own VXLAN stands beside Docker's (both encapsulate, both MTU 1450).
//!
//! On every network a server container on h1 and a client container on h2 (`weft-busybox
//! sleep`); the tools are the machine's, run in a container's network namespace with
//! `nsenter --net=/proc/PID/ns/net`. Measured, the networks alternating in every round:
//! iperf3 TCP throughput (one stream, the receiver's count) and weft-bench's TCP
//! request/response (`rr-server` / `rr-client`, as `weft-bench dataplane` runs them); then,
//! per network and alternating, `docker run -d` of a new container on h1 until the client
//! container on h2 gets an answer from it: a TCP SYN to a closed port, answered by a RST
//! from the new container's kernel (so the path works both ways), tried every 20 ms at most.
//!
//! The lab's dockerds run with `--live-restore`, which swarm refuses ("incompatible with
//! swarm mode"): on `NAME` the hosts' dockerds are started without it
//! ([`weft_lab::docker::ensure_dockerd_swarm`]). The weft network runs on the same
//! dockerds as the overlay.
//!
//! Both labs are taken down by a guard, also on error or Ctrl-C.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::dataplane::{
    catch_signals, check_interrupted, exec, exec_command, first_words, iperf_client, iperf_gbits,
    median, paired_ratio, rr_between, Server, IPERF_PORT,
};

/// Options of `weft-bench docker`.
pub struct Opts {
    /// The weft binary (absolute).
    pub weft: PathBuf,
    /// The lab's name; weft's VXLAN lab is NAMEv.
    pub lab: String,
    /// Rounds of throughput and request/response (the median is reported).
    pub rounds: usize,
    /// iperf3 seconds per measurement.
    pub secs: u64,
    /// TCP request/response seconds per measurement.
    pub rr_secs: f64,
    /// The CPU both request/response ends are pinned to (None: the scheduler decides).
    pub rr_cpu: Option<usize>,
    /// `docker run` until reachable: containers per network.
    pub runs: usize,
    /// Also weft in VXLAN mode (lab NAMEv).
    pub vxlan: bool,
    /// The command line, as reported.
    pub command: String,
}

const WEFT_NET: &str = "wnet";
const OVERLAY_NET: &str = "onet";
const OVERLAY_SUBNET: &str = "10.200.1.0/24";
const SWARM_POOL: &str = "10.200.0.0/16";
const IMAGE: &str = weft_lab::docker::DOCKER_IMAGE;
/// A port nothing listens on in the probed containers: a SYN gets a RST.
const PROBE_PORT: u16 = 9;
/// How long one probe waits for its answer.
const PROBE_WAIT: Duration = Duration::from_millis(20);
/// How long a new container may take to become reachable.
const REACH_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Labs.

/// A lab taken down when dropped (or by [`LabGuard::down`], which reports failure).
pub(crate) struct LabGuard {
    name: String,
    down: bool,
}

impl LabGuard {
    /// Clears what an earlier run left under `name` and brings up a 2-host mesh lab whose
    /// agents get `agent_args`. The guard exists before `up` runs.
    pub(crate) fn up(
        weft: &Path,
        name: &str,
        agent_args: &[&str],
    ) -> (LabGuard, Result<(), String>) {
        let g = LabGuard {
            name: name.to_string(),
            down: false,
        };
        let opts = weft_lab::UpOptions {
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
            ..weft_lab::UpOptions::default()
        };
        let res = weft_lab::down(name)
            .and_then(|()| weft_lab::up_with(name, 2, weft_lab::Topology::Mesh, weft, opts))
            .map(|_| ())
            .map_err(|e| format!("lab {name}: {}", e.0));
        (g, res)
    }

    fn down(mut self) -> Result<(), String> {
        self.down = true;
        eprintln!("bench: taking lab {} down", self.name);
        weft_lab::down(&self.name)
            .map_err(|e| format!("weft lab down --name {}: {}", self.name, e.0))
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        eprintln!("bench: taking lab {} down", self.name);
        if let Err(e) = weft_lab::down(&self.name) {
            eprintln!("bench: weft lab down --name {}: {}", self.name, e.0);
        }
    }
}

/// A lab host's underlay address and network namespace.
pub(crate) fn host_plan(lab: &str, host: &str) -> Result<(IpAddr, String), String> {
    let state = weft_lab::load(lab).map_err(|e| e.0)?;
    let hp = state
        .plan
        .host(host)
        .ok_or_else(|| format!("lab {lab} has no host {host}"))?;
    Ok((hp.agent_addr(), hp.netns.clone()))
}

// ---------------------------------------------------------------------------------------
// Docker.

/// Runs the docker CLI against a lab host's dockerd; its trimmed stdout.
fn docker(lab: &str, host: &str, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut cmd = weft_lab::docker::docker_command(lab, host);
    cmd.args(args);
    let shown = format!("docker {} (on {lab}/{host})", args.join(" "));
    let out = exec_command(cmd, &shown, None, limit, false)?;
    if out.ok {
        Ok(out.stdout.trim().to_string())
    } else {
        Err(format!(
            "`{shown}` failed: {}",
            first_words(&out.stderr, &out.stdout)
        ))
    }
}

const SHORT: Duration = Duration::from_secs(30);
const LONG: Duration = Duration::from_secs(120);

/// The host's dockerd, ready for swarm: without `--live-restore`, which swarm refuses.
fn dockerd_for_swarm(lab: &str, host: &str) -> Result<(), String> {
    weft_lab::docker::ensure_dockerd_swarm(lab, host).map_err(|e| e.0)
}

/// A swarm of h1 (manager) and h2 (worker) over the underlay, with the attachable overlay
/// network.
fn swarm(lab: &str) -> Result<(), String> {
    let (a1, _) = host_plan(lab, "h1")?;
    let (a2, _) = host_plan(lab, "h2")?;
    let (a1, a2) = (a1.to_string(), a2.to_string());
    docker(
        lab,
        "h1",
        &[
            "swarm",
            "init",
            "--advertise-addr",
            &a1,
            "--listen-addr",
            &format!("{a1}:2377"),
            "--default-addr-pool",
            SWARM_POOL,
        ],
        LONG,
    )?;
    let token = docker(lab, "h1", &["swarm", "join-token", "-q", "worker"], SHORT)?;
    docker(
        lab,
        "h2",
        &[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &a2,
            "--listen-addr",
            &format!("{a2}:2377"),
            &format!("{a1}:2377"),
        ],
        LONG,
    )?;
    let start = Instant::now();
    loop {
        let st = docker(lab, "h1", &["node", "ls", "--format", "{{.Status}}"], SHORT)?;
        let ready = st.lines().filter(|l| l.trim() == "Ready").count();
        if ready == 2 {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the swarm's nodes are not both Ready after 60 s: {st:?}"
            ));
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    docker(
        lab,
        "h1",
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "--subnet",
            OVERLAY_SUBNET,
            OVERLAY_NET,
        ],
        LONG,
    )?;
    Ok(())
}

/// weft's network on both hosts of `lab`.
fn weft_network(lab: &str) -> Result<(), String> {
    for host in ["h1", "h2"] {
        docker(
            lab,
            host,
            &[
                "network",
                "create",
                "-d",
                "weft",
                "--ipam-driver",
                "weft",
                WEFT_NET,
            ],
            LONG,
        )?;
    }
    Ok(())
}

/// A running container: its process (for its network namespace) and its address on the
/// network.
#[derive(Clone, Copy)]
struct Ctr {
    pid: u32,
    ip: IpAddr,
}

impl Ctr {
    fn netns_arg(&self) -> String {
        format!("--net=/proc/{}/ns/net", self.pid)
    }
}

/// `docker inspect`'s template for a container's pid and its address on `network`.
fn inspect_format(network: &str) -> String {
    format!("{{{{.State.Pid}}}} {{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}")
}

fn inspect(lab: &str, host: &str, name: &str, network: &str) -> Result<Ctr, String> {
    let fmt = inspect_format(network);
    let out = docker(lab, host, &["inspect", "-f", &fmt, name], SHORT)?;
    let mut it = out.split_whitespace();
    let pid = it
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p > 0);
    let ip = it.next().and_then(|a| a.parse::<IpAddr>().ok());
    match (pid, ip) {
        (Some(pid), Some(ip)) => Ok(Ctr { pid, ip }),
        _ => Err(format!(
            "{lab}/{host}: container {name} on {network}: inspect said {out:?}"
        )),
    }
}

/// [`inspect`] through dockerd's API socket, without the docker CLI's start (tens of ms),
/// for the timed runs.
fn api_inspect(lab: &str, host: &str, name: &str, network: &str) -> Result<Ctr, String> {
    let sock = weft_lab::docker::api_socket(lab, host);
    let what = || format!("GET /containers/{name}/json on {}", sock.display());
    let mut s = UnixStream::connect(&sock).map_err(|e| format!("{}: {e}", what()))?;
    s.set_read_timeout(Some(SHORT)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(SHORT))
        .map_err(|e| e.to_string())?;
    // HTTP/1.0: dockerd closes the connection after its answer.
    s.write_all(format!("GET /containers/{name}/json HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())
        .map_err(|e| format!("{}: {e}", what()))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", what()))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{}: no HTTP answer", what()))?;
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(format!("{}: {}", what(), first_words(body, head)));
    }
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("{}: {e}", what()))?;
    let pid = v["State"]["Pid"].as_u64().filter(|p| *p > 0);
    let ip = v["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .and_then(|a| a.parse::<IpAddr>().ok());
    match (pid, ip) {
        (Some(pid), Some(ip)) => Ok(Ctr {
            pid: pid as u32,
            ip,
        }),
        _ => Err(format!("{}: no pid or no address on {network}", what())),
    }
}

fn run_container(lab: &str, host: &str, network: &str, name: &str) -> Result<Ctr, String> {
    docker(
        lab,
        host,
        &[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            IMAGE,
            "sleep",
            "3600",
        ],
        LONG,
    )?;
    inspect(lab, host, name, network)
}

/// The MTU of the container's interface that holds `c.ip`.
fn mtu(c: &Ctr) -> Option<u64> {
    let ns = c.netns_arg();
    let out = exec(
        Path::new("nsenter"),
        &[&ns, "--", "ip", "-j", "addr", "show"],
        None,
        SHORT,
        false,
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    let ip = c.ip.to_string();
    v.as_array()?.iter().find(|l| {
        l["addr_info"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["local"].as_str() == Some(&ip)))
    })?["mtu"]
        .as_u64()
}

// ---------------------------------------------------------------------------------------
// Reachability.

/// Whether the kernel at `ip` answers a SYN to [`PROBE_PORT`] within [`PROBE_WAIT`] (a RST
/// for the closed port, or an accepted connection).
fn answers(ip: IpAddr) -> bool {
    match TcpStream::connect_timeout(&SocketAddr::new(ip, PROBE_PORT), PROBE_WAIT) {
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
    }
}

/// From the network namespace of process `pid`, probes `ip` until it answers: the instant
/// of the first answer, or None after `limit`.
fn probe_until(pid: u32, ip: IpAddr, limit: Duration) -> Result<Option<Instant>, String> {
    std::thread::spawn(move || -> Result<Option<Instant>, String> {
        let ns = File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| format!("open the namespace of process {pid}: {e}"))?;
        // setns moves this thread only.
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("enter the namespace of process {pid}: {e}"))?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if answers(ip) {
                return Ok(Some(Instant::now()));
            }
            check_interrupted()?;
            // An immediate failure (no route, no neighbour) is not retried in a spin.
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(None)
    })
    .join()
    .map_err(|_| "probe thread panicked".to_string())?
}

// ---------------------------------------------------------------------------------------
// The networks measured.

struct Net {
    label: &'static str,
    lab: String,
    network: &'static str,
    server: Ctr,
    client: Ctr,
    mtu: Option<u64>,
    gbits: Vec<f64>,
    rr_us: Vec<f64>,
    /// `docker run -d` alone, ms.
    run_ms: Vec<f64>,
    /// From the start of `docker run` until reachable from h2, ms.
    reach_ms: Vec<f64>,
}

impl Net {
    /// Server container on h1, client on h2; waits until the client reaches the server.
    fn new(label: &'static str, lab: &str, network: &'static str) -> Result<Net, String> {
        let server = run_container(lab, "h1", network, &format!("{network}-server"))?;
        let client = run_container(lab, "h2", network, &format!("{network}-client"))?;
        if probe_until(client.pid, server.ip, REACH_LIMIT)?.is_none() {
            return Err(format!(
                "{label}: the client on h2 does not reach the server {} on h1 within {} s",
                server.ip,
                REACH_LIMIT.as_secs()
            ));
        }
        Ok(Net {
            label,
            lab: lab.to_string(),
            network,
            mtu: mtu(&client),
            server,
            client,
            gbits: vec![],
            rr_us: vec![],
            run_ms: vec![],
            reach_ms: vec![],
        })
    }
}

impl Net {
    /// h1 and h2 themselves (the lab's ceiling): their namespaces reached through their
    /// dockerds' processes, the underlay addresses.
    fn hosts(lab: &str) -> Result<Net, String> {
        let end = |host: &str| -> Result<Ctr, String> {
            let (ip, _) = host_plan(lab, host)?;
            let pid_file = weft_lab::docker::docker_dir(lab, host).join("docker.pid");
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .ok_or_else(|| format!("no dockerd pid in {}", pid_file.display()))?;
            Ok(Ctr { pid, ip })
        };
        let client = end("h2")?;
        Ok(Net {
            label: "host to host",
            lab: lab.to_string(),
            network: "host",
            mtu: mtu(&client),
            server: end("h1")?,
            client,
            gbits: vec![],
            rr_us: vec![],
            run_ms: vec![],
            reach_ms: vec![],
        })
    }
}

fn iperf(n: &Net, secs: u64) -> Result<f64, String> {
    let addr = n.server.ip.to_string();
    let port = IPERF_PORT.to_string();
    let sns = n.server.netns_arg();
    let server = Server::start_prog(
        "nsenter",
        &[&sns, "--", "iperf3", "-s", "-1", "-B", &addr, "-p", &port],
        format!("iperf3 -s in {}'s server container", n.label),
        n.server.ip,
        IPERF_PORT,
    )?;
    let cns = n.client.netns_arg();
    let out = iperf_client("nsenter", &[&cns, "--"], &addr, secs)?;
    server.finish();
    iperf_gbits(&out)
}

fn rr(n: &Net, secs: f64, cpu: Option<usize>, me: &Path) -> Result<f64, String> {
    let (sns, cns) = (n.server.netns_arg(), n.client.netns_arg());
    rr_between(
        "nsenter",
        &[&sns, "--"],
        &[&cns, "--"],
        n.server.ip,
        secs,
        cpu,
        me,
    )
}

/// One `docker run -d` on h1 until the client container on h2 gets an answer from the new
/// container: (`docker run` alone, until reachable), ms. The container is removed after.
fn reach_once(n: &Net, name: &str) -> Result<(f64, f64), String> {
    let t0 = Instant::now();
    docker(
        &n.lab,
        "h1",
        &[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            n.network,
            IMAGE,
            "sleep",
            "600",
        ],
        LONG,
    )?;
    let ran = t0.elapsed();
    let res = api_inspect(&n.lab, "h1", name, n.network)
        .and_then(|c| probe_until(n.client.pid, c.ip, REACH_LIMIT).map(|t| (c, t)));
    let rm = docker(&n.lab, "h1", &["rm", "-f", name], LONG);
    let (c, t) = res?;
    rm?;
    let t = t.ok_or_else(|| {
        format!(
            "{}: {name} ({}) not reachable from h2 within {} s",
            n.label,
            c.ip,
            REACH_LIMIT.as_secs()
        )
    })?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok((ms(ran), ms(t.duration_since(t0))))
}

// ---------------------------------------------------------------------------------------
// The run.

pub fn docker_bench(o: &Opts) -> Result<(), String> {
    if o.lab.is_empty()
        || o.lab.len() > 11
        || !o
            .lab
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "--lab {:?}: use 1 to 11 characters of a-z and 0-9 (weft's VXLAN lab appends v)",
            o.lab
        ));
    }
    if o.rounds == 0 || o.runs == 0 {
        return Err("--rounds and --runs must be at least 1".into());
    }
    for tool in ["iperf3", "nsenter", "unshare", "setsid", "ip", "dockerd"] {
        if exec(
            Path::new("sh"),
            &["-c", &format!("command -v {tool}")],
            None,
            Duration::from_secs(5),
            false,
        )
        .map(|o| o.ok)
            != Ok(true)
        {
            return Err(format!(
                "{tool} is missing (apt-get install iperf3 util-linux iproute2 docker.io)"
            ));
        }
    }
    let me = std::env::current_exe().map_err(|e| format!("cannot find weft-bench itself: {e}"))?;
    catch_signals();
    let t_start = Instant::now();

    // Guards first: every lab goes down whatever happens below.
    let mut labs: Vec<LabGuard> = Vec::new();
    let lab = o.lab.clone();
    let lab_v = format!("{}v", o.lab);
    eprintln!("docker: lab {lab} (weft route mode, and the swarm)");
    let (g, up) = LabGuard::up(&o.weft, &lab, &[]);
    labs.push(g);
    up?;
    if o.vxlan {
        check_interrupted()?;
        eprintln!("docker: lab {lab_v} (weft VXLAN mode)");
        let (g, up) = LabGuard::up(&o.weft, &lab_v, &["--mode", "vxlan"]);
        labs.push(g);
        up?;
    }
    let res = setup_and_measure(o, &lab, &lab_v, &me, t_start);
    // Down in reverse order, reporting the first failure after trying all.
    let mut down = Ok(());
    while let Some(g) = labs.pop() {
        let r = g.down();
        if down.is_ok() {
            down = r;
        }
    }
    eprintln!("docker: total {:.0} s", t_start.elapsed().as_secs_f64());
    res.and(down)
}

fn setup_and_measure(
    o: &Opts,
    lab: &str,
    lab_v: &str,
    me: &Path,
    t_start: Instant,
) -> Result<(), String> {
    for host in ["h1", "h2"] {
        check_interrupted()?;
        eprintln!("docker: dockerd on {lab}/{host} (without --live-restore, for swarm)");
        dockerd_for_swarm(lab, host)?;
    }
    let version = docker(
        lab,
        "h1",
        &["version", "--format", "{{.Server.Version}}"],
        SHORT,
    )?;
    eprintln!("docker: swarm and overlay network on {lab}");
    swarm(lab)?;
    weft_network(lab)?;
    if o.vxlan {
        for host in ["h1", "h2"] {
            check_interrupted()?;
            eprintln!("docker: dockerd on {lab_v}/{host}");
            weft_lab::docker::ensure_dockerd(lab_v, host).map_err(|e| e.0)?;
        }
        weft_network(lab_v)?;
    }
    check_interrupted()?;
    let mut nets = vec![
        Net::new("weft route mode", lab, WEFT_NET)?,
        Net::new("Docker overlay", lab, OVERLAY_NET)?,
    ];
    if o.vxlan {
        nets.push(Net::new("weft VXLAN mode", lab_v, WEFT_NET)?);
    }
    let mut hosts = Net::hosts(lab)?;
    eprintln!("docker: set up in {:.0} s", t_start.elapsed().as_secs_f64());

    let n = nets.len();
    for round in 0..o.rounds {
        // Rotate who goes first, so no network always follows the same one.
        for k in 0..n {
            check_interrupted()?;
            let net = &mut nets[(k + round) % n];
            let g = iperf(net, o.secs).map_err(|e| format!("{}: {e}", net.label))?;
            net.gbits.push(g);
        }
        for k in 0..n {
            check_interrupted()?;
            let net = &mut nets[(k + round) % n];
            let r = rr(net, o.rr_secs, o.rr_cpu, me).map_err(|e| format!("{}: {e}", net.label))?;
            net.rr_us.push(r);
        }
        // The lab's own ceiling, each round after the networks.
        check_interrupted()?;
        let g = iperf(&hosts, o.secs).map_err(|e| format!("host to host: {e}"))?;
        hosts.gbits.push(g);
        let r = rr(&hosts, o.rr_secs, o.rr_cpu, me).map_err(|e| format!("host to host: {e}"))?;
        hosts.rr_us.push(r);
        let line: Vec<String> = nets
            .iter()
            .chain(std::iter::once(&hosts))
            .map(|x| {
                format!(
                    "{} {:.2} Gbit/s RR {:.1} µs",
                    x.label,
                    x.gbits.last().copied().unwrap_or_default(),
                    x.rr_us.last().copied().unwrap_or_default()
                )
            })
            .collect();
        eprintln!(
            "docker: round {} of {}: {}",
            round + 1,
            o.rounds,
            line.join("; ")
        );
    }
    for i in 0..o.runs {
        for k in 0..n {
            check_interrupted()?;
            let net = &mut nets[(k + i) % n];
            let name = format!("reach{i}");
            let (ran, reached) =
                reach_once(net, &name).map_err(|e| format!("{}: {e}", net.label))?;
            eprintln!(
                "docker: {} run {}: docker run {ran:.0} ms, reachable from h2 after {reached:.0} ms",
                net.label,
                i + 1
            );
            net.run_ms.push(ran);
            net.reach_ms.push(reached);
        }
    }
    report(o, &version, &mut nets, &mut hosts);
    Ok(())
}

fn report(o: &Opts, version: &str, nets: &mut [Net], hosts: &mut Net) {
    // Throughput per round in round order, for the paired ratios (medians sort in place).
    let rounds: Vec<Vec<f64>> = nets.iter().map(|n| n.gbits.clone()).collect();
    let sums: Vec<Sum> = nets
        .iter_mut()
        .map(|n| {
            let mut after: Vec<f64> = n
                .reach_ms
                .iter()
                .zip(&n.run_ms)
                .map(|(r, d)| r - d)
                .collect();
            Sum {
                gbits: median(&mut n.gbits),
                rr: median(&mut n.rr_us),
                reach_max: n.reach_ms.iter().copied().reduce(f64::max),
                reach: median(&mut n.reach_ms),
                run: median(&mut n.run_ms),
                after: median(&mut after),
                mtu: n.mtu.map(|m| m as f64),
            }
        })
        .collect();
    let vxlan = nets.len() > 2;
    println!(
        "### Docker: weft's network beside Docker's swarm overlay network (2-host lab, dockerd {version})\n"
    );
    println!("Command: `weft-bench {}`\n", o.command);
    let pinned = match o.rr_cpu {
        Some(c) => format!(", both ends pinned to CPU {c}"),
        None => String::new(),
    };
    println!(
        "A server container on h1 and a client container on h2 on each network; throughput: \
         iperf3, one TCP stream for {} s (the receiver's count); request/response: 1-byte \
         ping-pong on one TCP connection for {} s{pinned}; medians of {} round{}, the networks \
         alternating which goes first; the throughput ratio is the median of the rounds' \
         ratios. Reachable: {} `docker run -d` on h1 per network, alternating, each timed from \
         the start of `docker run` until the client container on h2 gets an answer from the \
         new container (a TCP SYN to a closed port answered by its kernel's RST, tried every \
         20 ms at most).\n",
        o.secs,
        o.rr_secs,
        o.rounds,
        if o.rounds == 1 { "" } else { "s" },
        o.runs
    );
    let mut head =
        "| metric | weft route mode | Docker overlay (swarm) | weft route / overlay |".to_string();
    let mut rule = "|---|---|---|---|".to_string();
    if vxlan {
        head.push_str(" weft VXLAN mode | weft VXLAN / overlay |");
        rule.push_str("---|---|");
    }
    println!("{head}\n{rule}");
    type Get = fn(&Sum) -> Option<f64>;
    let rows: [(&str, Get, usize, Ratio); 7] = [
        ("TCP throughput, Gbit/s", |s| s.gbits, 2, Ratio::Paired),
        (
            "TCP request/response, µs per transaction",
            |s| s.rr,
            1,
            Ratio::Medians,
        ),
        (
            "`docker run -d` until reachable from h2, median ms",
            |s| s.reach,
            0,
            Ratio::Medians,
        ),
        (
            "`docker run -d` until reachable from h2, worst ms",
            |s| s.reach_max,
            0,
            Ratio::Medians,
        ),
        (
            "`docker run -d` alone, median ms",
            |s| s.run,
            0,
            Ratio::Medians,
        ),
        (
            "reachable after `docker run` returned, median ms",
            |s| s.after,
            0,
            Ratio::None,
        ),
        ("container interface MTU", |s| s.mtu, 0, Ratio::None),
    ];
    let cell =
        |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "—".into());
    // Columns: weft route (0) and weft VXLAN (2), each against the overlay (1).
    let (ov, cols) = (1, if vxlan { vec![0, 2] } else { vec![0] });
    for (label, get, digits, ratio) in rows {
        let mut line = format!("| {label} |");
        for (k, &i) in cols.iter().enumerate() {
            let r = match ratio {
                Ratio::Paired => paired_ratio(&rounds[i], &rounds[ov]),
                Ratio::Medians => match (get(&sums[i]), get(&sums[ov])) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
                Ratio::None => None,
            };
            if k == 0 {
                line.push_str(&format!(
                    " {} | {} |",
                    cell(get(&sums[i]), digits),
                    cell(get(&sums[ov]), digits)
                ));
            } else {
                line.push_str(&format!(" {} |", cell(get(&sums[i]), digits)));
            }
            line.push_str(&format!(" {} |", cell(r, 2)));
        }
        println!("{line}");
    }
    println!();
    let thr = paired_ratio(&rounds[0], &rounds[ov]);
    let lat = match (sums[0].rr, sums[ov].rr) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    println!(
        "Targets: weft route / overlay throughput ≥ 1.3 (here {}); request/response latency \
         lower than the overlay's (here {} of it).\n",
        cell(thr, 2),
        cell(lat, 2)
    );
    let (hg, hr) = (median(&mut hosts.gbits), median(&mut hosts.rr_us));
    let of = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    println!(
        "The lab's ceiling, measured in the same rounds: host to host (h1 and h2's own \
         namespaces over the underlay, MTU {}) {} Gbit/s and {} µs per transaction; weft \
         route mode reaches {} of it in throughput, the overlay {}.\n",
        cell(hosts.mtu.map(|m| m as f64), 0),
        cell(hg, 2),
        cell(hr, 1),
        cell(of(sums[0].gbits, hg), 2),
        cell(of(sums[ov].gbits, hg), 2)
    );
}

/// One network's medians.
struct Sum {
    gbits: Option<f64>,
    rr: Option<f64>,
    reach: Option<f64>,
    reach_max: Option<f64>,
    run: Option<f64>,
    after: Option<f64>,
    mtu: Option<f64>,
}

/// How a row compares weft with the overlay.
#[derive(Clone, Copy)]
enum Ratio {
    /// The median of the rounds' ratios (throughput).
    Paired,
    /// The ratio of the medians.
    Medians,
    /// Not compared.
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_template_names_the_network() {
        assert_eq!(
            inspect_format("wnet"),
            r#"{{.State.Pid}} {{(index .NetworkSettings.Networks "wnet").IPAddress}}"#
        );
    }

    #[test]
    fn a_closed_port_answers() {
        // Nothing listens on this port any more: the kernel answers the SYN with a RST.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        let r =
            TcpStream::connect_timeout(&SocketAddr::new([127, 0, 0, 1].into(), port), PROBE_WAIT);
        assert_eq!(
            r.err().map(|e| e.kind()),
            Some(ErrorKind::ConnectionRefused)
        );
        assert!(answers([127, 0, 0, 1].into()));
    }
}
