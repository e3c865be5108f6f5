//! `weft-bench dataplane`: pod-to-pod paths between two lab hosts, weft's data plane beside
//! the same paths made by hand, in one run.
//!
//! Paths (client on the h1 side, server on the h2 side):
//!
//! - host to host: the two lab hosts' own namespaces, over the underlay;
//! - hand routes: a pod namespace per host (veth, /32 address, default route through a
//!   link-local gateway with permanent neighbour entries) and on each host a plain route to
//!   the other host's pod via its underlay address;
//! - hand VXLAN: the same kind of pods (MTU 1450), the host-to-host hop through a VXLAN
//!   device made by hand on each host with a static flood entry towards the other;
//! - weft route mode and weft VXLAN mode: a lab whose agents run with `--mode route`
//!   (resp. `vxlan`), one container per host attached by weft's CNI plugin; each once
//!   with the defaults, outbound NAT and the fast path (the rows the targets are about),
//!   once with `--nat off`, which shows what the NAT table's connection-tracking hooks
//!   cost, and once with `--fast-path off`, which shows what the BPF fast path gains.
//!
//! IPv6 rows beside them, measured in the same rounds: host to host, hand routes and hand
//! VXLAN with IPv6 pods (a /128 address, a default route through `fe80::1`), and weft's
//! route and VXLAN modes with its defaults and dual-stack pools (route mode also with
//! `--nat off` and with `--fast-path off`, as for IPv4), between the containers' IPv6
//! addresses. Their labs have an IPv6-only underlay (`--underlay ipv6`): there weft
//! routes IPv6 blocks directly on the segment (on an IPv4 underlay IPv6 blocks always take
//! VXLAN, so a route-mode row would measure VXLAN), and VXLAN runs over IPv6 (MTU 1430).
//!
//! The anchors live in labs made without agents (`weft lab up --no-agents`, one per
//! underlay family); each weft row gets a lab of its own. All labs are up together and the
//! measurements are interleaved in rounds. Each weft row is measured as a pair with its
//! anchor: its transfer right after or right before the anchor's (the order alternates by
//! round and row), its pings at the same time as the anchor's (5 ms apart, so each pair of pings
//! meets the machine in the same state). The ratios and differences of the pairs are
//! reported, so the machine's drift, larger here than the targets, hits both sides of each
//! comparison alike. Every lab is torn down by a guard (`weft lab down`), also on error or
//! Ctrl-C. A weft mode that cannot be set up is reported as such; the other rows are still
//! measured.
//!
//! Measurements: `iperf3` TCP throughput, `ping -i 0.01` median round trip, and a TCP
//! request/response test of this binary (`rr-server` / `rr-client`: 1-byte ping-pong on one
//! connection with TCP_NODELAY).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Options of `weft-bench dataplane`.
pub struct Opts {
    /// The weft binary (absolute).
    pub weft: PathBuf,
    /// Base lab name: the anchors' lab; the weft labs append `r` and `v`.
    pub lab: String,
    /// Rounds (the median is reported).
    pub rounds: usize,
    /// iperf3 seconds per measurement.
    pub secs: u64,
    /// Pings per measurement.
    pub pings: usize,
    /// TCP request/response seconds per measurement.
    pub rr_secs: f64,
    /// The CPU both request/response ends are pinned to (None: the scheduler decides).
    pub rr_cpu: Option<usize>,
    /// How long a weft lab may take until its containers reach each other.
    pub ready_secs: u64,
}

pub(crate) const IPERF_PORT: u16 = 5201;
pub(crate) const RR_PORT: u16 = 5202;

// ---------------------------------------------------------------------------------------
// Interruption: Ctrl-C or SIGTERM sets a flag; running commands are ended and the guards
// take the labs down.

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub(crate) fn catch_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &act) };
    }
}

pub(crate) fn check_interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Commands, always bounded in time.

pub(crate) struct Output {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `prog args` with `input` on stdin, killing it (by its pid) after `limit` or when
/// interrupted (unless `always` says to finish even then, as teardown does).
pub(crate) fn exec(
    prog: &Path,
    args: &[&str],
    input: Option<&str>,
    limit: Duration,
    always: bool,
) -> Result<Output, String> {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    let shown = format!("{} {}", prog.display(), args.join(" "));
    exec_command(cmd, &shown, input, limit, always)
}

/// [`exec`] for a command prepared by the caller (environment and all); `shown` names it in
/// errors.
pub(crate) fn exec_command(
    mut cmd: Command,
    shown: &str,
    input: Option<&str>,
    limit: Duration,
    always: bool,
) -> Result<Output, String> {
    let shown = || shown.to_string();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", shown()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("write to {}: {e}", shown()))?;
    }
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("wait for {}: {e}", shown())),
        }
        let late = start.elapsed() > limit;
        if late || (!always && INTERRUPTED.load(Ordering::SeqCst)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(if late {
                format!("`{}` took longer than {} s", shown(), limit.as_secs())
            } else {
                "interrupted".into()
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        ok: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

/// Runs a command that must succeed; returns its stdout.
pub(crate) fn run(prog: &str, args: &[&str], limit: Duration) -> Result<String, String> {
    run_input(prog, args, None, limit)
}

fn run_input(
    prog: &str,
    args: &[&str],
    input: Option<&str>,
    limit: Duration,
) -> Result<String, String> {
    let o = exec(Path::new(prog), args, input, limit, false)?;
    if o.ok {
        Ok(o.stdout)
    } else {
        Err(format!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            first_words(&o.stderr, &o.stdout)
        ))
    }
}

/// The gist of a failed command's output, on one line.
pub(crate) fn first_words(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let one: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut s = one.join("; ");
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    if s.is_empty() {
        "(no output)".into()
    } else {
        s
    }
}

/// `ip -n NS -batch -`: every line runs inside `ns`, never in the root namespace.
fn ip_batch(ns: &str, lines: &[String]) -> Result<(), String> {
    let mut text = lines.join("\n");
    text.push('\n');
    run_input(
        "ip",
        &["-n", ns, "-batch", "-"],
        Some(&text),
        Duration::from_secs(20),
    )
    .map(|_| ())
    .map_err(|e| format!("in {ns}: {e}"))
}

fn in_ns(ns: &str, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    run("ip", &all, limit)
}

// ---------------------------------------------------------------------------------------
// Labs, each held by a guard that takes it down.

struct Lab {
    weft: PathBuf,
    name: String,
}

impl Lab {
    /// Clears whatever an earlier run left under `name`, then brings the lab up with the
    /// given extra `weft lab up` arguments. The guard exists before `up` runs, so a
    /// half-made lab is taken down too.
    fn up(weft: &Path, name: &str, extra: &[&str]) -> (Lab, Result<(), String>) {
        let lab = Lab {
            weft: weft.to_path_buf(),
            name: name.to_string(),
        };
        let res = lab.down().and_then(|()| {
            let mut args = vec![
                "lab",
                "up",
                "--name",
                name,
                "--hosts",
                "2",
                "--topology",
                "mesh",
            ];
            args.extend_from_slice(extra);
            lab.weft(&args, Duration::from_secs(120)).map(|_| ())
        });
        (lab, res)
    }

    fn weft(&self, args: &[&str], limit: Duration) -> Result<String, String> {
        let o = exec(&self.weft, args, None, limit, false)?;
        if o.ok {
            Ok(o.stdout)
        } else {
            Err(format!(
                "`weft {}` failed: {}",
                args.join(" "),
                first_words(&o.stderr, &o.stdout)
            ))
        }
    }

    fn down(&self) -> Result<(), String> {
        let o = exec(
            &self.weft,
            &["lab", "down", "--name", &self.name],
            None,
            Duration::from_secs(120),
            true,
        )?;
        if o.ok {
            Ok(())
        } else {
            Err(format!(
                "`weft lab down --name {}` failed: {}",
                self.name,
                first_words(&o.stderr, &o.stdout)
            ))
        }
    }

    fn ns(&self, suffix: &str) -> String {
        format!("weft-{}-{suffix}", self.name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        eprintln!("dataplane: taking lab {} down", self.name);
        if let Err(e) = self.down() {
            eprintln!("dataplane: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Paths.

/// The address family a path carries (each has its own table in the report).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

struct PathRun {
    label: &'static str,
    family: Family,
    client_ns: String,
    server_ns: String,
    server: IpAddr,
    /// Why it is not (or no longer) measured.
    failed: Option<String>,
    /// A weft row may fail without failing the run; an anchor may not.
    weft: bool,
    mtu: Option<u64>,
    gbits: Vec<f64>,
    ping_us: Vec<f64>,
    rr_us: Vec<f64>,
    /// A weft row's throughput over its anchor's, one ratio per back-to-back pair.
    ratios: Vec<f64>,
    /// A weft row's ping minus its anchor's, µs: per round, the median of the differences
    /// of pings sent at the same time (see [`ping_pair`]).
    ping_diff_us: Vec<f64>,
}

impl PathRun {
    fn new(
        label: &'static str,
        client_ns: String,
        server_ns: String,
        server: IpAddr,
        weft: bool,
    ) -> Self {
        PathRun {
            label,
            family: Family::of(server),
            mtu: iface_mtu(&client_ns),
            client_ns,
            server_ns,
            server,
            failed: None,
            weft,
            gbits: vec![],
            ping_us: vec![],
            rr_us: vec![],
            ratios: vec![],
            ping_diff_us: vec![],
        }
    }

    fn failed(label: &'static str, family: Family, err: String) -> Self {
        PathRun {
            label,
            family,
            client_ns: String::new(),
            server_ns: String::new(),
            server: match family {
                Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
                Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
            },
            failed: Some(err),
            weft: true,
            mtu: None,
            gbits: vec![],
            ping_us: vec![],
            rr_us: vec![],
            ratios: vec![],
            ping_diff_us: vec![],
        }
    }
}

/// The MTU of `eth0` in `ns`.
fn iface_mtu(ns: &str) -> Option<u64> {
    let out = run(
        "ip",
        &["-n", ns, "-j", "link", "show", "dev", "eth0"],
        Duration::from_secs(10),
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v[0]["mtu"].as_u64()
}

/// Pings `to` from `ns` once a second until it answers or `limit` passes.
fn wait_reachable(ns: &str, to: IpAddr, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    let to = to.to_string();
    let mut last = String::new();
    while start.elapsed() < limit {
        check_interrupted()?;
        match in_ns(
            ns,
            &["ping", "-c", "1", "-W", "1", &to],
            Duration::from_secs(5),
        ) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "no ping from {ns} to {to} within {} s (last: {last})",
        limit.as_secs()
    ))
}

/// The anchors' lab: host to host, hand routes, hand VXLAN.
fn hand_paths(lab: &Lab) -> Result<Vec<PathRun>, String> {
    let underlay = |i: u8| Ipv4Addr::new(172, 30, 0, i);
    for (i, j) in [(1u8, 2u8), (2, 1)] {
        let host = lab.ns(&format!("h{i}"));
        let pod = lab.ns(&format!("h{i}-hand"));
        let podvx = lab.ns(&format!("h{i}-handvx"));
        for ns in [&pod, &podvx] {
            run("ip", &["netns", "add", ns], Duration::from_secs(10))?;
        }
        let (ui, uj) = (underlay(i), underlay(j));
        ip_batch(
            &host,
            &[
                // Hand routes: pod 10.99.i.2 behind veth hand0.
                format!(
                    "link add hand0 address ee:ee:ee:ee:ee:ee type veth peer name eth0 \
                     address 02:99:00:00:0{i}:02 netns {pod}"
                ),
                "link set hand0 up".into(),
                format!("route add 10.99.{i}.2/32 dev hand0 scope link"),
                format!("neigh add 10.99.{i}.2 lladdr 02:99:00:00:0{i}:02 dev hand0 nud permanent"),
                format!("route add 10.99.{j}.2/32 via {uj}"),
                // Hand VXLAN: pod 10.99.i.3 behind veth handvx0, the other pod via hvx.
                format!("link add hvx type vxlan id 99 dstport 4799 local {ui} nolearning"),
                "link set hvx mtu 1450 up".into(),
                format!("addr add 10.98.0.{i}/24 dev hvx"),
                format!(
                    "link add handvx0 address ee:ee:ee:ee:ee:ee mtu 1450 type veth peer name eth0 \
                     address 02:99:00:00:0{i}:03 mtu 1450 netns {podvx}"
                ),
                "link set handvx0 up".into(),
                format!("route add 10.99.{i}.3/32 dev handvx0 scope link"),
                format!(
                    "neigh add 10.99.{i}.3 lladdr 02:99:00:00:0{i}:03 dev handvx0 nud permanent"
                ),
                format!("route add 10.99.{j}.3/32 via 10.98.0.{j} dev hvx"),
            ],
        )?;
        in_ns(
            &host,
            &[
                "bridge",
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dst",
                &uj.to_string(),
                "dev",
                "hvx",
            ],
            Duration::from_secs(10),
        )?;
        for (ns, k) in [(&pod, 2), (&podvx, 3)] {
            ip_batch(
                ns,
                &[
                    "link set lo up".into(),
                    format!("addr add 10.99.{i}.{k}/32 dev eth0"),
                    "link set eth0 up".into(),
                    "route add 169.254.1.1/32 dev eth0 scope link".into(),
                    "neigh add 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent".into(),
                    "route add default via 169.254.1.1 dev eth0".into(),
                ],
            )?;
        }
    }
    let paths = vec![
        PathRun::new(
            "host to host",
            lab.ns("h1"),
            lab.ns("h2"),
            underlay(2).into(),
            false,
        ),
        PathRun::new(
            "hand routes",
            lab.ns("h1-hand"),
            lab.ns("h2-hand"),
            Ipv4Addr::new(10, 99, 2, 2).into(),
            false,
        ),
        PathRun::new(
            "hand VXLAN",
            lab.ns("h1-handvx"),
            lab.ns("h2-handvx"),
            Ipv4Addr::new(10, 99, 2, 3).into(),
            false,
        ),
    ];
    for p in &paths {
        wait_reachable(&p.client_ns, p.server, Duration::from_secs(10))
            .map_err(|e| format!("{}: {e}", p.label))?;
    }
    Ok(paths)
}

/// The IPv6 anchors, on a lab whose underlay is IPv6 only (fd30::N/64): host to host, hand
/// routes and hand VXLAN, each as its IPv4 counterpart but with IPv6 pods: a /128 address,
/// a default route through `fe80::1` (a permanent neighbour at the host veth's MAC, as
/// weft's containers have), a /128 route to the pod on its host, and on each host a
/// /128 route to the other pod via the other host's IPv6 underlay address (hand routes) or
/// through a VXLAN device over the IPv6 underlay (hand VXLAN, MTU 1430 = 1500 − 70).
fn hand_paths6(lab: &Lab) -> Result<Vec<PathRun>, String> {
    let underlay = |i: u8| Ipv6Addr::new(0xfd30, 0, 0, 0, 0, 0, 0, u16::from(i));
    let pod = |i: u8, k: u16| Ipv6Addr::new(0xfd99, u16::from(i), 0, 0, 0, 0, 0, k);
    for (i, j) in [(1u8, 2u8), (2, 1)] {
        let host = lab.ns(&format!("h{i}"));
        let pod_ns = lab.ns(&format!("h{i}-hand"));
        let podvx_ns = lab.ns(&format!("h{i}-handvx"));
        for ns in [&pod_ns, &podvx_ns] {
            run("ip", &["netns", "add", ns], Duration::from_secs(10))?;
        }
        let (ui, uj) = (underlay(i), underlay(j));
        ip_batch(
            &host,
            &[
                // Hand routes: pod fd99:i::2 behind veth hand0.
                format!(
                    "link add hand0 address ee:ee:ee:ee:ee:ee type veth peer name eth0 \
                     address 02:99:00:00:0{i}:02 netns {pod_ns}"
                ),
                "link set hand0 up".into(),
                format!("route add {}/128 dev hand0", pod(i, 2)),
                format!(
                    "neigh add {} lladdr 02:99:00:00:0{i}:02 dev hand0 nud permanent",
                    pod(i, 2)
                ),
                format!("route add {}/128 via {uj} dev eth0", pod(j, 2)),
                // Hand VXLAN over IPv6: pod fd99:i::3 behind veth handvx0, the other pod
                // via hvx.
                format!("link add hvx type vxlan id 99 dstport 4799 local {ui} nolearning"),
                "link set hvx mtu 1430 up".into(),
                format!("addr add fd98::{i}/64 dev hvx nodad"),
                format!(
                    "link add handvx0 address ee:ee:ee:ee:ee:ee mtu 1430 type veth peer name eth0 \
                     address 02:99:00:00:0{i}:03 mtu 1430 netns {podvx_ns}"
                ),
                "link set handvx0 up".into(),
                format!("route add {}/128 dev handvx0", pod(i, 3)),
                format!(
                    "neigh add {} lladdr 02:99:00:00:0{i}:03 dev handvx0 nud permanent",
                    pod(i, 3)
                ),
                format!("route add {}/128 via fd98::{j} dev hvx", pod(j, 3)),
            ],
        )?;
        in_ns(
            &host,
            &[
                "bridge",
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dst",
                &uj.to_string(),
                "dev",
                "hvx",
            ],
            Duration::from_secs(10),
        )?;
        for (ns, k) in [(&pod_ns, 2), (&podvx_ns, 3)] {
            ip_batch(
                ns,
                &[
                    "link set lo up".into(),
                    // The pods are not lab namespaces: skip duplicate address detection
                    // (a second of a tentative address) explicitly.
                    format!("addr add {}/128 dev eth0 nodad", pod(i, k)),
                    "link set eth0 up".into(),
                    "neigh add fe80::1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent".into(),
                    "route add default via fe80::1 dev eth0".into(),
                ],
            )?;
        }
    }
    let paths = vec![
        PathRun::new(
            "host to host",
            lab.ns("h1"),
            lab.ns("h2"),
            underlay(2).into(),
            false,
        ),
        PathRun::new(
            "hand routes",
            lab.ns("h1-hand"),
            lab.ns("h2-hand"),
            pod(2, 2).into(),
            false,
        ),
        PathRun::new(
            "hand VXLAN",
            lab.ns("h1-handvx"),
            lab.ns("h2-handvx"),
            pod(2, 3).into(),
            false,
        ),
    ];
    for p in &paths {
        wait_reachable(&p.client_ns, p.server, Duration::from_secs(10))
            .map_err(|e| format!("{} (IPv6): {e}", p.label))?;
    }
    Ok(paths)
}

/// A weft lab in `mode` with container c1 on h1 and h2, once h1/c1 reaches h2/c1's address
/// of `family`. A container whose ADD fails (say the agents' IPAM is not ready yet) is tried
/// again until `ready` has passed; so is the ping.
fn weft_path(
    lab: &Lab,
    mode: &str,
    family: Family,
    ready: Duration,
) -> Result<(String, String, IpAddr), String> {
    let start = Instant::now();
    for host in ["h1", "h2"] {
        let args = ["lab", "run", "--name", &lab.name, host, "c1"];
        loop {
            match lab.weft(&args, Duration::from_secs(60)) {
                Ok(_) => break,
                Err(e) if start.elapsed() > ready => return Err(format!("{mode} mode: {e}")),
                Err(_) => {
                    check_interrupted()?;
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
    let client = lab.ns("h1-c1");
    let server = lab.ns("h2-c1");
    let ip = container_ip(lab, "h2", "c1", family)
        .or_else(|| ns_ip(&server, family))
        .ok_or_else(|| format!("no {} address found for h2/c1 ({server})", family.name()))?;
    let left = ready
        .saturating_sub(start.elapsed())
        .max(Duration::from_secs(5));
    wait_reachable(&client, ip, left).map_err(|e| format!("{mode} mode: {e}"))?;
    Ok((client, server, ip))
}

/// A container's address of `family` from `weft lab status --json` (its `ips`, every
/// address of the CNI result).
fn container_ip(lab: &Lab, host: &str, name: &str, family: Family) -> Option<IpAddr> {
    let out = lab
        .weft(
            &["lab", "status", "--name", &lab.name, "--json"],
            Duration::from_secs(20),
        )
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let labs = v.as_array()?;
    labs.iter()
        .flat_map(|l| l["containers"].as_array().cloned().unwrap_or_default())
        .find(|c| c["host"] == host && c["name"] == name)
        .and_then(|c| {
            c["ips"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|a| a.as_str())
                .filter_map(|s| s.split('/').next().and_then(|a| a.parse::<IpAddr>().ok()))
                .find(|a| Family::of(*a) == family)
        })
}

/// The first global address of `family` in `ns`.
fn ns_ip(ns: &str, family: Family) -> Option<IpAddr> {
    let fam = match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    };
    let out = run(
        "ip",
        &["-n", ns, "-j", fam, "addr", "show", "scope", "global"],
        Duration::from_secs(10),
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.as_array()?
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .find_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
}

// ---------------------------------------------------------------------------------------
// Servers: started by pid in a namespace, known to listen before the client starts, and
// killed by that pid if still there when dropped.

pub(crate) struct Server {
    child: Child,
    what: String,
}

impl Server {
    /// Runs `cmd` in `ns` (`ip netns exec` execs it, so the child's pid is the server's)
    /// and waits until it listens on `addr:port`.
    fn start(ns: &str, cmd: &[&str], addr: IpAddr, port: u16) -> Result<Server, String> {
        let mut args = vec!["netns", "exec", ns];
        args.extend_from_slice(cmd);
        let what = format!("{} in {ns}", cmd.join(" "));
        Server::start_prog("ip", &args, what, addr, port)
    }

    /// Runs `prog args`, which must exec the server itself (so the child's pid is the
    /// server's: `ip netns exec`, `nsenter`), and waits until it listens on `addr:port` in
    /// its namespace; `what` names it in errors.
    pub(crate) fn start_prog(
        prog: &str,
        args: &[&str],
        what: String,
        addr: IpAddr,
        port: u16,
    ) -> Result<Server, String> {
        let child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {what}: {e}"))?;
        let mut s = Server { child, what };
        let start = Instant::now();
        loop {
            check_interrupted()?;
            if listens(s.child.id(), addr, port) {
                return Ok(s);
            }
            if let Ok(Some(_)) = s.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = s.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!(
                    "{} ended before listening: {}",
                    s.what,
                    first_words(&err, "")
                ));
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("{} did not listen within 10 s", s.what));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits briefly for the server to end by itself (both are one-shot), else kills it.
    pub(crate) fn finish(mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether process `pid` sees a TCP socket listening on `addr:port` in its namespace
/// (`/proc/PID/net/tcp` and `tcp6` are the tables of the process's network namespace).
fn listens(pid: u32, addr: IpAddr, port: u16) -> bool {
    let (file, words) = match addr {
        IpAddr::V4(a) => ("tcp", a.octets().to_vec()),
        IpAddr::V6(a) => ("tcp6", a.octets().to_vec()),
    };
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
        return false;
    };
    let local = format!("{}:{port:04X}", proc_net_addr(&words));
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == local && f[3] == "0A"
    })
}

/// An address as `/proc/net/tcp{,6}` prints it: each 32-bit word of the address (network
/// order in memory) printed as a native integer in hex.
fn proc_net_addr(octets: &[u8]) -> String {
    octets
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Measurements.

#[derive(Clone, Copy)]
enum Kind {
    Throughput,
    Ping,
    Rr,
}

fn measure(p: &mut PathRun, kind: Kind, o: &Opts, me: &Path) -> Result<(), String> {
    match kind {
        Kind::Throughput => {
            let v = iperf(p, o.secs)?;
            p.gbits.push(v);
        }
        Kind::Ping => {
            let t = ping_times(p, o.pings, o.rr_cpu)?;
            p.ping_us.extend(median_time(&t));
        }
        Kind::Rr => {
            let v = rr(p, o.rr_secs, o.rr_cpu, me)?;
            p.rr_us.push(v);
        }
    }
    Ok(())
}

/// The anchor a weft row is compared with, in the row's own family.
fn anchor_label(label: &str) -> Option<&'static str> {
    if label.starts_with("weft route") {
        Some("hand routes")
    } else if label.starts_with("weft VXLAN") {
        Some("hand VXLAN")
    } else {
        None
    }
}

/// Where `paths[i]`'s anchor is, if it has one.
fn anchor_index(paths: &[PathRun], i: usize) -> Option<usize> {
    let want = anchor_label(paths[i].label)?;
    paths
        .iter()
        .position(|p| p.label == want && p.family == paths[i].family)
}

fn fail(p: &mut PathRun, e: String) {
    eprintln!("dataplane: {} ({}): {e}", p.label, p.family.name());
    p.failed = Some(e);
}

/// Weft row `w` and its anchor `a` as a pair: throughput back to back (the anchor's first
/// when `anchor_first`), the pings at the same time ([`ping_pair`]); request/response
/// (which the rounds measure path by path) back to back as well. A failure marks the path
/// it happened on.
fn measure_pair(
    paths: &mut [PathRun],
    w: usize,
    a: usize,
    kind: Kind,
    o: &Opts,
    me: &Path,
    anchor_first: bool,
) -> Result<(), String> {
    let order = if anchor_first { [a, w] } else { [w, a] };
    match kind {
        Kind::Throughput | Kind::Rr => {
            for j in order {
                if let Err(e) = measure(&mut paths[j], kind, o, me) {
                    check_interrupted()?;
                    fail(&mut paths[j], e);
                    return Ok(());
                }
            }
            if let (Kind::Throughput, Some(&x), Some(&y)) =
                (kind, paths[w].gbits.last(), paths[a].gbits.last())
            {
                if y > 0.0 {
                    paths[w].ratios.push(x / y);
                }
            }
        }
        Kind::Ping => {
            let (r0, r1) = ping_pair(&paths[order[0]], &paths[order[1]], o.pings, o.rr_cpu);
            check_interrupted()?;
            let mut times = Vec::new();
            for (j, r) in [(order[0], r0), (order[1], r1)] {
                match r {
                    Ok(t) => {
                        paths[j].ping_us.extend(median_time(&t));
                        times.push(t);
                    }
                    Err(e) => fail(&mut paths[j], e),
                }
            }
            if let [t0, t1] = &times[..] {
                let (tw, ta) = if order[0] == w { (t0, t1) } else { (t1, t0) };
                paths[w].ping_diff_us.extend(paired_difference(tw, ta));
            }
        }
    }
    Ok(())
}

/// TCP throughput from client to server, Gbit/s (the receiver's count).
fn iperf(p: &PathRun, secs: u64) -> Result<f64, String> {
    iperf_netns(&p.server_ns, &p.client_ns, p.server, secs)
}

/// One iperf3 TCP stream for `secs` s from namespace `client_ns` to `server` in
/// `server_ns`: Gbit/s, the receiver's count.
pub(crate) fn iperf_netns(
    server_ns: &str,
    client_ns: &str,
    server: IpAddr,
    secs: u64,
) -> Result<f64, String> {
    let addr = server.to_string();
    let port = IPERF_PORT.to_string();
    let srv = Server::start(
        server_ns,
        &["iperf3", "-s", "-1", "-B", &addr, "-p", &port],
        server,
        IPERF_PORT,
    )?;
    let out = iperf_client("ip", &["netns", "exec", client_ns], &addr, secs)?;
    srv.finish();
    iperf_gbits(&out)
}

/// Runs the iperf3 client towards `addr` for `secs` s through `runner prefix...` (the
/// command that puts it in the client's namespace).
pub(crate) fn iperf_client(
    runner: &str,
    prefix: &[&str],
    addr: &str,
    secs: u64,
) -> Result<Output, String> {
    let (port, t) = (IPERF_PORT.to_string(), secs.to_string());
    let mut args: Vec<&str> = prefix.to_vec();
    args.extend_from_slice(&[
        "iperf3",
        "-c",
        addr,
        "-p",
        &port,
        "-t",
        &t,
        "-J",
        "--connect-timeout",
        "3000",
    ]);
    exec(
        Path::new(runner),
        &args,
        None,
        Duration::from_secs(secs + 20),
        false,
    )
}

/// The receiver's throughput, Gbit/s, from `iperf3 -c ... -J`'s output.
pub(crate) fn iperf_gbits(out: &Output) -> Result<f64, String> {
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .map_err(|_| format!("iperf3: {}", first_words(&out.stderr, &out.stdout)))?;
    if let Some(e) = v["error"].as_str() {
        return Err(format!("iperf3: {e}"));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| "iperf3: no end.sum_received.bits_per_second in its report".into())
}

/// The round trips of `n` pings 10 ms apart from the client to the server, µs by
/// sequence number; the pinging process pinned to `cpu` if given (then the echo, its reply
/// and the wake-up all run on that CPU: a packet stays on the CPU that sent it through
/// veths and bridges).
fn ping_times(p: &PathRun, n: usize, cpu: Option<usize>) -> Result<BTreeMap<u32, f64>, String> {
    let count = n.to_string();
    // A deadline well past the pings' own time bounds a path that drops them.
    let deadline = (n / 100 + 10).to_string();
    let addr = p.server.to_string();
    let cpu_s = cpu.map(|c| c.to_string());
    let mut args = vec!["netns", "exec", &p.client_ns];
    if let Some(c) = &cpu_s {
        args.extend_from_slice(&["taskset", "-c", c]);
    }
    args.extend_from_slice(&[
        "ping", "-c", &count, "-i", "0.01", "-n", "-w", &deadline, &addr,
    ]);
    let out = exec(
        Path::new("ip"),
        &args,
        None,
        Duration::from_secs(n as u64 / 50 + 30),
        false,
    )?;
    let times = parse_ping_times(&out.stdout);
    if times.is_empty() {
        return Err(format!("ping: {}", first_words(&out.stderr, &out.stdout)));
    }
    Ok(times)
}

/// The median round trip of `times`, µs. The median, not ping's average: in these VMs a
/// few round trips of the hundreds take milliseconds (a vCPU descheduled by the
/// hypervisor), and the average followed them more than the path.
fn median_time(times: &BTreeMap<u32, f64>) -> Option<f64> {
    median(&mut times.values().copied().collect::<Vec<_>>())
}

/// The median of `a`'s round trip minus `b`'s over the sequence numbers both answered.
fn paired_difference(a: &BTreeMap<u32, f64>, b: &BTreeMap<u32, f64>) -> Option<f64> {
    let mut d: Vec<f64> = a
        .iter()
        .filter_map(|(seq, x)| b.get(seq).map(|y| x - y))
        .collect();
    median(&mut d)
}

/// A weft row and its anchor pinged at the same time, from the same CPU, `first`'s pings
/// 5 ms ahead of the other's, so the two alternate ping by ping and each pair of pings
/// with the same sequence number meets the machine in the same state. Pinged one after
/// the other, a path's median moved by tens of µs from one run to the next (cold caches,
/// the hypervisor), more than the 15 µs the target allows; the paired difference stayed
/// within a few µs (docs/benchmarks.md).
fn ping_pair(first: &PathRun, second: &PathRun, n: usize, cpu: Option<usize>) -> PingPair {
    std::thread::scope(|s| {
        let a = s.spawn(|| ping_times(first, n, cpu));
        std::thread::sleep(Duration::from_millis(5));
        let b = ping_times(second, n, cpu);
        let a = a
            .join()
            .unwrap_or_else(|_| Err("the ping thread panicked".into()));
        (a, b)
    })
}

type PingPair = (
    Result<BTreeMap<u32, f64>, String>,
    Result<BTreeMap<u32, f64>, String>,
);

/// Each reply's `time=X ms` by its `icmp_seq`, in µs.
fn parse_ping_times(out: &str) -> BTreeMap<u32, f64> {
    out.lines()
        .filter_map(|l| {
            let seq = l.split_once("icmp_seq=")?.1.split_whitespace().next()?;
            let ms: f64 = l
                .split_once("time=")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((seq.parse().ok()?, ms * 1000.0))
        })
        .collect()
}

/// TCP request/response: mean µs per 1-byte transaction.
fn rr(p: &PathRun, secs: f64, cpu: Option<usize>, me: &Path) -> Result<f64, String> {
    rr_between(
        "ip",
        &["netns", "exec", &p.server_ns],
        &["netns", "exec", &p.client_ns],
        p.server,
        secs,
        cpu,
        me,
    )
}

/// TCP request/response between weft-bench's own ends (`me rr-server` at `server`, `me
/// rr-client`), each run as `runner PREFIX...` (the command that puts it in its
/// namespace), pinned to `cpu` if given: the mean µs per transaction.
pub(crate) fn rr_between(
    runner: &str,
    server_prefix: &[&str],
    client_prefix: &[&str],
    server: IpAddr,
    secs: f64,
    cpu: Option<usize>,
    me: &Path,
) -> Result<f64, String> {
    let listen = SocketAddr::new(server, RR_PORT).to_string();
    let me_s = me.to_string_lossy().to_string();
    let cpu_s = cpu.map(|c| c.to_string());
    let pin: Vec<&str> = match &cpu_s {
        Some(c) => vec!["--cpu", c],
        None => vec![],
    };
    let mut server_cmd = server_prefix.to_vec();
    server_cmd.extend_from_slice(&[me_s.as_str(), "rr-server", "--listen", &listen]);
    server_cmd.extend_from_slice(&pin);
    let what = format!("rr-server ({} {})", runner, server_prefix.join(" "));
    let server = Server::start_prog(runner, &server_cmd, what, server, RR_PORT)?;
    let s = format!("{secs}");
    let mut client_cmd = client_prefix.to_vec();
    client_cmd.extend_from_slice(&[&me_s, "rr-client", "--connect", &listen, "--secs", &s]);
    client_cmd.extend_from_slice(&pin);
    let out = exec(
        Path::new(runner),
        &client_cmd,
        None,
        Duration::from_secs_f64(secs + 20.0),
        false,
    )?;
    server.finish();
    rr_mean_us(&out)
}

/// The mean µs per transaction from `weft-bench rr-client`'s output.
pub(crate) fn rr_mean_us(out: &Output) -> Result<f64, String> {
    if !out.ok {
        return Err(format!(
            "rr-client: {}",
            first_words(&out.stderr, &out.stdout)
        ));
    }
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .map_err(|_| format!("rr-client: {}", first_words(&out.stderr, &out.stdout)))?;
    v["mean_us"]
        .as_f64()
        .ok_or_else(|| "rr-client: no mean_us in its report".into())
}

// ---------------------------------------------------------------------------------------
// The run.

pub fn dataplane(o: &Opts) -> Result<(), String> {
    if o.lab.is_empty()
        || o.lab.len() > 10
        || !o
            .lab
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "--lab {:?}: use 1 to 10 characters of a-z and 0-9 (the other labs append 6, r, rn, rs, \
             v, vn, vs, 6r, 6rn, 6rs, 6v)",
            o.lab
        ));
    }
    if o.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    for tool in ["iperf3", "ping", "ip", "bridge"] {
        if run(
            "sh",
            &["-c", &format!("command -v {tool}")],
            Duration::from_secs(5),
        )
        .is_err()
        {
            return Err(format!(
                "{tool} is missing (apt-get install iperf3 iputils-ping iproute2)"
            ));
        }
    }
    let me = std::env::current_exe().map_err(|e| format!("cannot find weft-bench itself: {e}"))?;
    catch_signals();

    // Guards live until the end of this function: every lab is taken down whatever
    // happens below (panics abort in release builds, so nothing here
    // unwraps).
    let mut labs: Vec<Lab> = Vec::new();
    let t0 = Instant::now();

    eprintln!("dataplane: anchors lab {}", o.lab);
    let (hand, up) = Lab::up(&o.weft, &o.lab, &["--no-agents"]);
    labs.push(hand);
    up?;
    let mut paths = hand_paths(&labs[0])?;

    // The IPv6 anchors on a lab of their own whose underlay is IPv6 only, like the IPv6 weft
    // labs below: there weft routes IPv6 blocks directly on the segment (on an IPv4
    // underlay they always take VXLAN) and its VXLAN runs over IPv6.
    check_interrupted()?;
    let lab6 = format!("{}6", o.lab);
    eprintln!("dataplane: IPv6 anchors lab {lab6}");
    let (hand6, up) = Lab::up(&o.weft, &lab6, &["--no-agents", "--underlay", "ipv6"]);
    labs.push(hand6);
    up?;
    paths.extend(hand_paths6(&labs[1])?);

    // weft as it runs by default, with outbound NAT and the fast path (the targets); without
    // NAT (the price of the NAT table's connection-tracking hooks, not of weft's paths);
    // and without the fast path (what the BPF program gains over the kernel's stack). The
    // IPv6 rows: the defaults on an IPv6 underlay with dual-stack pools, measured between
    // the containers' IPv6 addresses.
    let v6 = [
        "--underlay",
        "ipv6",
        "--ipam-pools",
        "10.32.0.0/12,fd32::/48",
    ];
    // (Traffic through network policies is `weft-bench policy`'s: bench/src/policy_traffic.rs.)
    for (mode, nat, fast, suffix, label, family) in [
        ("route", "on", "on", "r", "weft route mode", Family::V4),
        (
            "route",
            "off",
            "on",
            "rn",
            "weft route mode, NAT off",
            Family::V4,
        ),
        (
            "route",
            "on",
            "off",
            "rs",
            "weft route mode, no fast path",
            Family::V4,
        ),
        ("vxlan", "on", "on", "v", "weft VXLAN mode", Family::V4),
        (
            "vxlan",
            "off",
            "on",
            "vn",
            "weft VXLAN mode, NAT off",
            Family::V4,
        ),
        (
            "vxlan",
            "on",
            "off",
            "vs",
            "weft VXLAN mode, no fast path",
            Family::V4,
        ),
        ("route", "on", "on", "6r", "weft route mode", Family::V6),
        (
            "route",
            "off",
            "on",
            "6rn",
            "weft route mode, NAT off",
            Family::V6,
        ),
        (
            "route",
            "on",
            "off",
            "6rs",
            "weft route mode, no fast path",
            Family::V6,
        ),
        ("vxlan", "on", "on", "6v", "weft VXLAN mode", Family::V6),
    ] {
        check_interrupted()?;
        let name = format!("{}{suffix}", o.lab);
        let mut args = vec!["--mode", mode, "--nat", nat, "--fast-path", fast];
        if family == Family::V6 {
            args.extend_from_slice(&v6);
        }
        eprintln!("dataplane: weft lab {name} ({})", args.join(" "));
        let (lab, up) = Lab::up(&o.weft, &name, &args);
        let ready = Duration::from_secs(o.ready_secs);
        let res = up.and_then(|()| weft_path(&lab, mode, family, ready));
        labs.push(lab);
        let row = match res {
            Ok((c, s, ip)) => PathRun::new(label, c, s, ip, true),
            Err(e) => {
                eprintln!("dataplane: {label} ({}) not measured: {e}", family.name());
                PathRun::failed(label, family, e)
            }
        };
        paths.push(row);
    }
    // Table order: IPv4 first, each weft row next to its anchor.
    let order = [
        "host to host",
        "hand routes",
        "weft route mode",
        "weft route mode, NAT off",
        "weft route mode, no fast path",
        "hand VXLAN",
        "weft VXLAN mode",
        "weft VXLAN mode, NAT off",
        "weft VXLAN mode, no fast path",
    ];
    paths.sort_by_key(|p| {
        (
            p.family == Family::V6,
            order.iter().position(|l| *l == p.label),
        )
    });
    eprintln!("dataplane: set up in {:.0} s", t0.elapsed().as_secs_f64());

    for round in 0..o.rounds {
        for kind in [Kind::Throughput, Kind::Ping, Kind::Rr] {
            // Rotate who goes first, so no path always follows the same one.
            let n = paths.len();
            for k in 0..n {
                check_interrupted()?;
                let i = (k + round) % n;
                if paths[i].failed.is_some() {
                    continue;
                }
                // Throughput and ping: each weft row with its anchor, which is measured
                // in those pairs only (the order within a pair alternates).
                // Request/response, steady on its own, takes every path alone.
                // (An anchor whose weft rows all failed is measured alone; so is a weft
                // row whose anchor failed, which fails the run anyway.)
                let paired = !matches!(kind, Kind::Rr);
                let anchor = anchor_index(&paths, i);
                if paired
                    && (0..n)
                        .any(|j| paths[j].failed.is_none() && anchor_index(&paths, j) == Some(i))
                {
                    continue;
                }
                match anchor.filter(|&a| paired && paths[a].failed.is_none()) {
                    // Which one goes first alternates by round and by row.
                    Some(a) => measure_pair(&mut paths, i, a, kind, o, &me, (round + i) % 2 == 0)?,
                    None => {
                        if let Err(e) = measure(&mut paths[i], kind, o, &me) {
                            check_interrupted()?;
                            fail(&mut paths[i], e);
                        }
                    }
                }
            }
        }
        eprintln!(
            "dataplane: round {} of {} done ({:.0} s)",
            round + 1,
            o.rounds,
            t0.elapsed().as_secs_f64()
        );
        for p in paths.iter().filter(|p| p.failed.is_none()) {
            let last = |v: &[f64], d: usize| {
                v.last()
                    .map(|x| format!("{x:.d$}"))
                    .unwrap_or_else(|| "—".into())
            };
            eprintln!(
                "dataplane:   {} ({}): {} Gbit/s, ping {} µs, RR {} µs",
                p.label,
                p.family.name(),
                last(&p.gbits, 2),
                last(&p.ping_us, 0),
                last(&p.rr_us, 1)
            );
        }
    }

    report(o, &mut paths);
    let broken: Vec<String> = paths
        .iter()
        .filter(|p| !p.weft)
        .filter_map(|p| {
            p.failed
                .as_ref()
                .map(|e| format!("{} ({}): {e}", p.label, p.family.name()))
        })
        .collect();
    // `labs` is dropped here: every lab goes down.
    drop(labs);
    if broken.is_empty() {
        Ok(())
    } else {
        Err(format!("anchor paths failed: {}", broken.join("; ")))
    }
}

pub(crate) fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

struct Row {
    gbits: Option<f64>,
    ping: Option<f64>,
    rr: Option<f64>,
    /// Weft rows: the median of the back-to-back pairs' throughput ratios and their count.
    ratio: Option<(f64, usize)>,
    /// Weft rows: the median of the rounds' paired ping differences, µs.
    ping_diff: Option<f64>,
}

/// The median over rounds of `a[i] / b[i]`: two paths measured in the same round share
/// that round's drift (the rounds are interleaved for this), so the paired ratio is the
/// steadier estimate. Only rounds both paths measured count (a failed path's values are
/// the rounds before its failure).
pub(crate) fn paired_ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    let mut r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, y)| **y > 0.0)
        .map(|(x, y)| x / y)
        .collect();
    median(&mut r)
}

fn report(o: &Opts, paths: &mut [PathRun]) {
    let rounds = format!(
        "median of {} round{}; iperf3 TCP {} s (each weft path right after or right before its anchor, \
         the order alternating), ping {} × 10 ms (each round's median round trip; each weft \
         path pinged at the same time as its anchor, 5 ms apart), TCP RR 1-byte ping-pong on one \
         connection for {} s{}",
        o.rounds,
        if o.rounds == 1 { "" } else { "s" },
        o.secs,
        o.pings,
        o.rr_secs,
        match o.rr_cpu {
            Some(c) => format!(
                " (the pinging process and both request/response ends pinned to CPU {c}: \
                 cross-CPU wake-ups, slow and erratic in a VM, would drown the paths' own cost)"
            ),
            None => String::new(),
        }
    );
    println!(
        "IPv4: pod-to-pod paths between two lab hosts (2-host mesh labs, one IPv4 L2 underlay, \
         172.30.0.N/24), client on h1, server on h2; {rounds}\n"
    );
    report_family(o, paths, Family::V4);
    println!(
        "IPv6, measured in the same rounds, interleaved with the IPv4 paths: pod-to-pod paths \
         between two lab hosts of 2-host mesh labs whose underlay is IPv6 only (fd30::N/64); \
         weft's agents with dual-stack pools (10.32.0.0/12,fd32::/48), measured between the \
         containers' IPv6 addresses; hand-made pods with a /128 address each; same \
         measurements\n"
    );
    report_family(o, paths, Family::V6);
}

/// The table of `family`'s paths and the ratios of each weft row to its anchor.
fn report_family(o: &Opts, paths: &mut [PathRun], family: Family) {
    let paths: Vec<&mut PathRun> = paths.iter_mut().filter(|p| p.family == family).collect();
    println!("| path | throughput Gbit/s | ping median µs | TCP RR µs/txn |");
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    let mut mtus = Vec::new();
    let mut failures = Vec::new();
    for p in paths {
        let r = Row {
            gbits: median(&mut p.gbits),
            ping: median(&mut p.ping_us),
            rr: median(&mut p.rr_us),
            ratio: median(&mut p.ratios).map(|r| (r, p.ratios.len())),
            ping_diff: median(&mut p.ping_diff_us),
        };
        let cell = |v: Option<f64>, digits: usize| {
            v.map(|x| format!("{x:.digits$}"))
                .unwrap_or_else(|| "—".into())
        };
        let label = if p.failed.is_some() {
            format!("{} (failed, see below)", p.label)
        } else {
            p.label.to_string()
        };
        println!(
            "| {label} | {} | {} | {} |",
            cell(r.gbits, 2),
            cell(r.ping, 0),
            cell(r.rr, 1)
        );
        rows.push((p.label, r));
        if let Some(m) = p.mtu {
            mtus.push(format!("{} {m}", p.label));
        }
        if let Some(e) = &p.failed {
            // Request/response is measured once per round on every path (throughput and
            // ping of an anchor once per weft row compared with it).
            let done = p.rr_us.len();
            let what = if done == 0 {
                "not measured".to_string()
            } else {
                format!(
                    "failed after {done} of {} rounds (medians of those)",
                    o.rounds
                )
            };
            failures.push(format!("{} {what}: {}", p.label, e.replace('|', "/")));
        }
    }
    println!();
    if !mtus.is_empty() {
        println!("Client interface MTU: {}.\n", mtus.join(", "));
    }
    for f in failures {
        println!("{f}\n");
    }
    let get = |l: &str| rows.iter().find(|(x, _)| *x == l).map(|(_, r)| r);
    let tag = match family {
        Family::V4 => "",
        Family::V6 => " (IPv6)",
    };
    for (weft, hand, short) in [
        ("weft route mode", "hand routes", "weft route"),
        ("weft VXLAN mode", "hand VXLAN", "weft VXLAN"),
        (
            "weft route mode, NAT off",
            "hand routes",
            "weft route (NAT off)",
        ),
        (
            "weft VXLAN mode, NAT off",
            "hand VXLAN",
            "weft VXLAN (NAT off)",
        ),
        (
            "weft route mode, no fast path",
            "hand routes",
            "weft route (no fast path)",
        ),
        (
            "weft VXLAN mode, no fast path",
            "hand VXLAN",
            "weft VXLAN (no fast path)",
        ),
    ] {
        let (Some(w), Some(h)) = (get(weft), get(hand)) else {
            continue;
        };
        match (w.ratio, w.gbits, h.gbits) {
            (Some((r, n)), Some(a), Some(b)) if b > 0.0 => println!(
                "- {short} / {hand}{tag}, throughput: {r:.2} (median of {n} back-to-back pairs' \
                 ratios; ratio of the medians {:.2}) (target ≥ 0.95)",
                a / b
            ),
            _ => println!("- {short} / {hand}{tag}, throughput: not measured (target ≥ 0.95)"),
        }
        match (w.ping_diff, w.ping, h.ping, w.rr, h.rr) {
            (Some(d), Some(wp), Some(hp), Some(wr), Some(hr)) => println!(
                "- {short} − {hand}{tag}, latency: ping {d:+.0} µs (median of the rounds' \
                 differences of pings sent at the same time; difference of the medians \
                 {:+.0}), TCP RR {:+.1} µs per transaction (target ≤ 15 µs)",
                wp - hp,
                wr - hr
            ),
            _ => println!("- {short} − {hand}{tag}, latency: not measured (target ≤ 15 µs)"),
        }
    }
    println!();
}

// ---------------------------------------------------------------------------------------
// The request/response test's two ends (hidden subcommands, run inside namespaces).

/// Pins this process to `cpu`.
fn pin(cpu: Option<usize>) -> Result<(), String> {
    let Some(cpu) = cpu else { return Ok(()) };
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("pin to CPU {cpu}: {e}"))
}

/// The first CPU this process may run on.
pub fn first_cpu() -> Option<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    (0..nix::sched::CpuSet::count()).find(|&c| set.is_set(c).unwrap_or(false))
}

/// Accepts one connection and echoes every byte until the peer closes it.
pub fn rr_server(listen: SocketAddr, cpu: Option<usize>) -> Result<(), String> {
    pin(cpu)?;
    let l = TcpListener::bind(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    rr_serve(&l)
}

fn rr_serve(l: &TcpListener) -> Result<(), String> {
    let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    s.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let mut buf = [0u8; 1];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => s.write_all(&buf).map_err(|e| format!("write: {e}"))?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// One-byte ping-pong on one connection for `secs`; prints transactions/s and mean µs per
/// transaction as JSON.
pub fn rr_client(connect: SocketAddr, secs: f64, cpu: Option<usize>) -> Result<(), String> {
    pin(cpu)?;
    let (n, elapsed) = rr_run(connect, Duration::from_secs_f64(secs))?;
    let v = serde_json::json!({
        "transactions": n,
        "seconds": elapsed,
        "per_second": n as f64 / elapsed,
        "mean_us": elapsed * 1e6 / n.max(1) as f64,
    });
    println!("{v}");
    Ok(())
}

/// Transactions done and seconds taken.
fn rr_run(connect: SocketAddr, limit: Duration) -> Result<(u64, f64), String> {
    let mut s = TcpStream::connect_timeout(&connect, Duration::from_secs(3))
        .map_err(|e| format!("connect to {connect}: {e}"))?;
    s.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let mut buf = [0u8; 1];
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < limit {
        s.write_all(&[1]).map_err(|e| format!("write: {e}"))?;
        s.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
        n += 1;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_times_by_sequence_and_their_median() {
        let out = "PING 10.99.2.2 (10.99.2.2) 56(84) bytes of data.\n\
                   64 bytes from 10.99.2.2: icmp_seq=1 ttl=63 time=0.061 ms\n\
                   64 bytes from 10.99.2.2: icmp_seq=2 ttl=63 time=4.20 ms\n\
                   64 bytes from 10.99.2.2: icmp_seq=4 ttl=63 time=0.058 ms\n\n\
                   --- 10.99.2.2 ping statistics ---\n4 packets transmitted, 3 received, \
                   25% packet loss, time 30ms\nrtt min/avg/max/mdev = 0.058/1.440/4.200/1.950 ms\n";
        let t = parse_ping_times(out);
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), vec![1, 2, 4]);
        assert!((t[&2] - 4200.0).abs() < 1e-6);
        // One stall of 4.2 ms moves the average to 1.44 ms; the median stays the path's.
        assert!((median_time(&t).unwrap() - 61.0).abs() < 1e-6);
        assert!(parse_ping_times("3 packets transmitted, 0 received, 100% packet loss").is_empty());
    }

    #[test]
    fn paired_ping_difference_pairs_sequence_numbers() {
        // The machine slows both paths alike from ping 3 on; ping 2 of `b` was lost. The
        // pairs say +10 µs throughout, the difference of the medians would say +5.
        let a: BTreeMap<u32, f64> = [(1, 60.0), (2, 62.0), (3, 110.0), (4, 112.0)].into();
        let b: BTreeMap<u32, f64> = [(1, 50.0), (3, 100.0), (4, 102.0), (5, 40.0)].into();
        assert_eq!(paired_difference(&a, &b), Some(10.0));
        assert_eq!(paired_difference(&a, &BTreeMap::new()), None);
    }

    #[test]
    fn each_weft_row_has_its_anchor_of_its_family() {
        let path = |label: &'static str, ip: &str| {
            PathRun::failed(label, Family::of(ip.parse().unwrap()), String::new())
        };
        let paths = vec![
            path("host to host", "10.0.0.1"),
            path("hand routes", "10.0.0.1"),
            path("hand VXLAN", "10.0.0.1"),
            path("hand routes", "fd00::1"),
            path("weft route mode, NAT off", "fd00::1"),
            path("weft VXLAN mode", "10.0.0.1"),
        ];
        assert_eq!(anchor_index(&paths, 0), None);
        assert_eq!(anchor_index(&paths, 1), None);
        assert_eq!(anchor_index(&paths, 4), Some(3));
        assert_eq!(anchor_index(&paths, 5), Some(2));
    }

    #[test]
    fn paired_ratio_pairs_rounds_and_skips_unmeasured_ones() {
        // Round 2 was slow for both paths: the pairs say 0.9 every round.
        let r = paired_ratio(&[9.0, 4.5, 9.0], &[10.0, 5.0, 10.0]).unwrap();
        assert!((r - 0.9).abs() < 1e-9, "{r}");
        // A path that failed after one round pairs only that round.
        assert_eq!(paired_ratio(&[8.0], &[10.0, 1.0]), Some(0.8));
        assert_eq!(paired_ratio(&[], &[10.0]), None);
        assert_eq!(paired_ratio(&[1.0], &[0.0]), None);
    }

    #[test]
    fn median_of_rounds() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn request_response_on_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || rr_serve(&l));
        let (n, secs) = rr_run(addr, Duration::from_millis(200)).expect("client");
        assert!(n > 10, "only {n} transactions");
        assert!(secs >= 0.2);
        // The client closed its connection: the one-shot server ends cleanly.
        assert!(server.join().expect("join").is_ok());
    }

    #[test]
    fn listening_socket_in_proc() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert!(listens(
            std::process::id(),
            Ipv4Addr::LOCALHOST.into(),
            port
        ));
        drop(l);
        assert!(!listens(
            std::process::id(),
            Ipv4Addr::LOCALHOST.into(),
            port
        ));
        // IPv6: the tcp6 table (skipped where the kernel has no IPv6).
        if let Ok(l) = TcpListener::bind("[::1]:0") {
            let port = l.local_addr().expect("addr").port();
            assert!(listens(
                std::process::id(),
                Ipv6Addr::LOCALHOST.into(),
                port
            ));
            assert!(!listens(
                std::process::id(),
                Ipv4Addr::LOCALHOST.into(),
                port
            ));
            drop(l);
            assert!(!listens(
                std::process::id(),
                Ipv6Addr::LOCALHOST.into(),
                port
            ));
        }
    }

    #[test]
    fn proc_net_addresses() {
        // As the kernel prints them on a little-endian machine (the unit's own layout).
        let v4 = proc_net_addr(&Ipv4Addr::new(127, 0, 0, 1).octets());
        let v6 = proc_net_addr(&Ipv6Addr::LOCALHOST.octets());
        if cfg!(target_endian = "little") {
            assert_eq!(v4, "0100007F");
            assert_eq!(v6, "00000000000000000000000001000000");
        }
        assert_eq!(v6.len(), 32);
    }

    #[test]
    fn rr_on_ipv6_loopback() {
        let Ok(l) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 in this kernel
        };
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || rr_serve(&l));
        let (n, _) = rr_run(addr, Duration::from_millis(100)).expect("client");
        assert!(n > 10, "only {n} transactions");
        assert!(server.join().expect("join").is_ok());
    }
}
