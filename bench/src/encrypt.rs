//! `weft-bench encrypt`: weft's encrypted tunnel (docs/encryption.md) beside weft's VXLAN
//! mode and the userspace tunnels of the field, on the same machine in one run.
//!
//! Three 2-host mesh labs, up at the same time: `NAMEv` (agents `--mode vxlan`), `NAMEe`
//! (`--encrypt on`, defaults) and `NAMEo` (`--encrypt on --tunnel-offload off`); on each, a
//! container per host, measured container to container. On `NAMEv`'s two hosts the anchors
//! run too, each its own device and port, measured host to host over its tunnel's
//! addresses: Debian's wireguard-go (`wg` sets keys, peer, endpoint), boringtun-cli from
//! crates.io (the same `wg` configuration) and Debian's nebula (a CA and two certificates
//! made by `nebula-cert`, a static host map, no lighthouse, the default MTU 1300).
//!
//! Every round measures every path, the order rotating: one iperf3 TCP stream (the
//! receiver's count, the sender's retransmits), the CPU the whole machine spent meanwhile
//! (`/proc/stat`, all cores, busy time) per GB delivered, and weft-bench's TCP
//! request/response. Medians are reported, with ratios to weft's VXLAN mode.
//!
//! The anchors are processes this benchmark starts and ends by their pid; the labs are taken
//! down by guards, also on error or Ctrl-C.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::dataplane::{
    catch_signals, check_interrupted, exec, first_words, iperf_client, median, rr_between, Server,
    IPERF_PORT,
};
use crate::docker::{host_plan, LabGuard};

/// Options of `weft-bench encrypt`.
pub struct Opts {
    /// The weft binary (absolute).
    pub weft: PathBuf,
    /// The labs' name prefix (NAMEv, NAMEe, NAMEo).
    pub lab: String,
    /// Rounds (medians reported).
    pub rounds: usize,
    /// iperf3 seconds per measurement.
    pub secs: u64,
    /// TCP request/response seconds per measurement.
    pub rr_secs: f64,
    /// The CPU both request/response ends are pinned to.
    pub rr_cpu: Option<usize>,
    /// boringtun-cli (built from crates.io by scripts/bench.sh).
    pub boringtun: PathBuf,
    /// The command line, as reported.
    pub command: String,
}

const SHORT: Duration = Duration::from_secs(30);

/// A process of this benchmark (an anchor daemon), ended by its pid when dropped.
struct Daemon {
    child: Child,
    what: String,
    socket: Option<PathBuf>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
        eprintln!("encrypt: stopped {}", self.what);
    }
}

fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    crate::dataplane::run(prog, args, SHORT).map(|o| o.trim().to_string())
}

fn netns(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut a = vec!["netns", "exec", ns];
    a.extend_from_slice(args);
    run("ip", &a)
}

fn spawn_in(ns: &str, prog: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Child, String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, prog]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {prog} in {ns}: {e}"))
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !f() {
        check_interrupted()?;
        if start.elapsed() > limit {
            return Err(format!("{what}: not within {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One measured path.
struct PathRun {
    label: String,
    client_ns: String,
    server_ns: String,
    server: IpAddr,
    gbits: Vec<f64>,
    cpu_s_per_gb: Vec<f64>,
    retransmits: Vec<f64>,
    rr_us: Vec<f64>,
}

impl PathRun {
    fn new(label: &str, client_ns: String, server_ns: String, server: IpAddr) -> PathRun {
        PathRun {
            label: label.into(),
            client_ns,
            server_ns,
            server,
            gbits: vec![],
            cpu_s_per_gb: vec![],
            retransmits: vec![],
            rr_us: vec![],
        }
    }
}

/// Busy CPU seconds of the whole machine so far (all cores, `/proc/stat`).
fn busy_secs() -> Result<f64, String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| e.to_string())?;
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    if f.len() < 5 {
        return Err("/proc/stat has no cpu line".into());
    }
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    let total: f64 = f.iter().take(8).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) } as f64;
    Ok((total - f[3] - f[4]) / hz)
}

fn measure(p: &mut PathRun, o: &Opts, me: &Path) -> Result<(), String> {
    let addr = p.server.to_string();
    let port = IPERF_PORT.to_string();
    let mut sargs = vec!["netns", "exec", p.server_ns.as_str()];
    sargs.extend_from_slice(&["iperf3", "-s", "-1", "-B", &addr, "-p", &port]);
    let server = Server::start_prog(
        "ip",
        &sargs,
        format!("iperf3 -s in {}", p.server_ns),
        p.server,
        IPERF_PORT,
    )?;
    let before = busy_secs()?;
    let out = iperf_client("ip", &["netns", "exec", &p.client_ns], &addr, o.secs)?;
    let cpu = busy_secs()? - before;
    server.finish();
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .map_err(|_| format!("iperf3: {}", first_words(&out.stderr, &out.stdout)))?;
    if let Some(e) = v["error"].as_str() {
        return Err(format!("iperf3 over {}: {e}", p.label));
    }
    let recv = &v["end"]["sum_received"];
    let bits = recv["bits_per_second"].as_f64().unwrap_or(0.0);
    let bytes = recv["bytes"].as_f64().unwrap_or(0.0);
    p.gbits.push(bits / 1e9);
    if bytes > 0.0 {
        p.cpu_s_per_gb.push(cpu / (bytes / 1e9));
    }
    p.retransmits
        .push(v["end"]["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0));
    let rr = rr_between(
        "ip",
        &["netns", "exec", &p.server_ns],
        &["netns", "exec", &p.client_ns],
        p.server,
        o.rr_secs,
        o.rr_cpu,
        me,
    )?;
    p.rr_us.push(rr);
    Ok(())
}

/// A container on `host` of `lab`: its namespace and IPv4 address.
fn container(weft: &Path, lab: &str, host: &str) -> Result<(String, IpAddr), String> {
    let out = run(
        &weft.to_string_lossy(),
        &[
            "lab", "run", "--name", lab, "--json", host, "bench", "--", "sleep", "36000",
        ],
    )?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("weft lab run: {e}: {out}"))?;
    let ip = v["ips"][0]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("weft lab run: no address in {out}"))?;
    Ok((weft_lab::plan::container_netns(lab, host, "bench"), ip))
}

/// Pings until `to` answers from `ns` (keys exchanged, routes in place).
fn reachable(ns: &str, to: IpAddr) -> Result<(), String> {
    let t = to.to_string();
    wait_for(&format!("{to} from {ns}"), Duration::from_secs(30), || {
        netns(ns, &["ping", "-c1", "-W1", "-q", &t]).is_ok()
    })
}

/// A WireGuard-protocol daemon (`prog`: wireguard-go or boringtun-cli) on both hosts,
/// configured with `wg`: device `dev{1,2}`, port `port`, addresses `10.99.NET.{1,2}/24`.
#[allow(clippy::too_many_arguments)]
fn wireguard(
    label: &str,
    prog: &str,
    args: &[&str],
    env: &[(&str, &str)],
    dev: &str,
    port: u16,
    net: u8,
    hosts: &[(IpAddr, String); 2],
    dir: &Path,
) -> Result<(Vec<Daemon>, PathRun), String> {
    let mut daemons = Vec::new();
    let mut keys = Vec::new();
    for i in 0..2 {
        let private = run("wg", &["genkey"])?;
        let public = exec(Path::new("wg"), &["pubkey"], Some(&private), SHORT, false)?
            .stdout
            .trim()
            .to_string();
        let file = dir.join(format!("{dev}{}.key", i + 1));
        std::fs::write(&file, format!("{private}\n")).map_err(|e| e.to_string())?;
        keys.push((file, public));
    }
    for i in 0..2 {
        let name = format!("{dev}{}", i + 1);
        let socket = PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
        let _ = std::fs::remove_file(&socket);
        let mut a = args.to_vec();
        a.push(&name);
        let child = spawn_in(&hosts[i].1, prog, &a, env)?;
        daemons.push(Daemon {
            child,
            what: format!("{label} on {}", hosts[i].1),
            socket: Some(socket.clone()),
        });
        wait_for(
            &format!("{label}'s socket {}", socket.display()),
            Duration::from_secs(10),
            || socket.exists(),
        )?;
        let other = 1 - i;
        let endpoint = format!("{}:{port}", hosts[other].0);
        let allowed = format!("10.99.{net}.{}/32", other + 1);
        netns(
            &hosts[i].1,
            &[
                "wg",
                "set",
                &name,
                "listen-port",
                &port.to_string(),
                "private-key",
                &keys[i].0.to_string_lossy(),
                "peer",
                &keys[other].1,
                "endpoint",
                &endpoint,
                "allowed-ips",
                &allowed,
            ],
        )?;
        let addr = format!("10.99.{net}.{}/24", i + 1);
        run(
            "ip",
            &["-n", &hosts[i].1, "addr", "add", &addr, "dev", &name],
        )?;
        run("ip", &["-n", &hosts[i].1, "link", "set", &name, "up"])?;
    }
    let server: IpAddr = format!("10.99.{net}.1").parse().expect("address");
    reachable(&hosts[1].1, server)?;
    Ok((
        daemons,
        PathRun::new(label, hosts[1].1.clone(), hosts[0].1.clone(), server),
    ))
}

/// Nebula on both hosts: a CA, a certificate per host, a static host map, no lighthouse.
fn nebula(hosts: &[(IpAddr, String); 2], dir: &Path) -> Result<(Vec<Daemon>, PathRun), String> {
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let _ = std::fs::remove_file(d("ca.crt"));
    let _ = std::fs::remove_file(d("ca.key"));
    run(
        "nebula-cert",
        &[
            "ca",
            "-name",
            "weft-bench",
            "-out-crt",
            &d("ca.crt"),
            "-out-key",
            &d("ca.key"),
        ],
    )?;
    let mut daemons = Vec::new();
    for i in 0..2 {
        let n = i + 1;
        let (crt, key) = (d(&format!("h{n}.crt")), d(&format!("h{n}.key")));
        let _ = std::fs::remove_file(&crt);
        let _ = std::fs::remove_file(&key);
        run(
            "nebula-cert",
            &[
                "sign",
                "-name",
                &format!("h{n}"),
                "-ip",
                &format!("10.99.3.{n}/24"),
                "-ca-crt",
                &d("ca.crt"),
                "-ca-key",
                &d("ca.key"),
                "-out-crt",
                &crt,
                "-out-key",
                &key,
            ],
        )?;
        let other = 1 - i;
        let config = format!(
            "pki:\n  ca: {}\n  cert: {crt}\n  key: {key}\nstatic_host_map:\n  \"10.99.3.{}\": [\"{}:4242\"]\nlighthouse:\n  am_lighthouse: false\n  hosts: []\nlisten:\n  host: 0.0.0.0\n  port: 4242\npunchy:\n  punch: false\ntun:\n  dev: nebula1\n  mtu: 1300\nlogging:\n  level: warning\nfirewall:\n  outbound:\n    - port: any\n      proto: any\n      host: any\n  inbound:\n    - port: any\n      proto: any\n      host: any\n",
            d("ca.crt"),
            other + 1,
            hosts[other].0,
        );
        let file = d(&format!("h{n}.yml"));
        std::fs::write(&file, config).map_err(|e| e.to_string())?;
        let child = spawn_in(&hosts[i].1, "nebula", &["-config", &file], &[])?;
        daemons.push(Daemon {
            child,
            what: format!("nebula on {}", hosts[i].1),
            socket: None,
        });
    }
    let server: IpAddr = "10.99.3.1".parse().expect("address");
    reachable(&hosts[1].1, server)?;
    Ok((
        daemons,
        PathRun::new(
            "nebula 1.6.1 (Debian), MTU 1300",
            hosts[1].1.clone(),
            hosts[0].1.clone(),
            server,
        ),
    ))
}

pub fn encrypt_bench(o: &Opts) -> Result<(), String> {
    catch_signals();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let labs = [
        (
            format!("{}v", o.lab),
            vec!["--mode", "vxlan"],
            "weft VXLAN mode",
        ),
        (
            format!("{}e", o.lab),
            vec!["--encrypt", "on"],
            "weft encrypted",
        ),
        (
            format!("{}o", o.lab),
            vec!["--encrypt", "on", "--tunnel-offload", "off"],
            "weft encrypted, offloads off",
        ),
    ];
    let mut guards = Vec::new();
    let mut paths = Vec::new();
    for (name, args, label) in &labs {
        let (guard, up) = LabGuard::up(&o.weft, name, args);
        guards.push(guard);
        up?;
        let (server_ns, server) = container(&o.weft, name, "h1")?;
        let (client_ns, _) = container(&o.weft, name, "h2")?;
        reachable(&client_ns, server)?;
        paths.push(PathRun::new(label, client_ns, server_ns, server));
    }
    let vx = &labs[0].0;
    let hosts = [host_plan(vx, "h1")?, host_plan(vx, "h2")?];
    let dir = weft_lab::lab_dir(vx).join("anchors");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut daemons = Vec::new();
    let (d, p) = wireguard(
        "wireguard-go 0.0.20220316 (Debian)",
        "wireguard-go",
        &["-f"],
        &[("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")],
        "wgg",
        51820,
        1,
        &hosts,
        &dir,
    )?;
    daemons.extend(d);
    paths.push(p);
    let bt = o.boringtun.to_string_lossy().into_owned();
    let (d, p) = wireguard(
        "boringtun-cli 0.7.1 (crates.io)",
        &bt,
        &["-f", "--disable-drop-privileges"],
        &[],
        "wgb",
        51821,
        2,
        &hosts,
        &dir,
    )?;
    daemons.extend(d);
    paths.push(p);
    let (d, p) = nebula(&hosts, &dir)?;
    daemons.extend(d);
    paths.push(p);

    for round in 0..o.rounds {
        let n = paths.len();
        for k in 0..n {
            check_interrupted()?;
            let p = &mut paths[(k + round) % n];
            eprintln!("encrypt: round {} of {}: {}", round + 1, o.rounds, p.label);
            measure(p, o, &me)?;
        }
    }
    drop(daemons);
    print!("{}", report(o, &mut paths));
    drop(guards);
    Ok(())
}

fn report(o: &Opts, paths: &mut [PathRun]) -> String {
    let base = median(&mut paths[0].gbits.clone()).unwrap_or(0.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Command: `weft-bench {}`. Medians of {} rounds; iperf3 one TCP stream {} s; TCP \
         request/response {} s{}; CPU: the whole machine's busy time during the iperf3 run per \
         GB delivered.\n",
        o.command,
        o.rounds,
        o.secs,
        o.rr_secs,
        match o.rr_cpu {
            Some(c) => format!(" (both ends pinned to CPU {c})"),
            None => String::new(),
        }
    );
    let _ = writeln!(
        s,
        "| path | Gbit/s | × weft VXLAN | TCP RR µs | CPU s per GB | TCP retransmits |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for p in paths.iter_mut() {
        let g = median(&mut p.gbits).unwrap_or(0.0);
        let ratio = if base > 0.0 { g / base } else { 0.0 };
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {:.1} | {:.2} | {:.0} |",
            p.label,
            g,
            ratio,
            median(&mut p.rr_us).unwrap_or(0.0),
            median(&mut p.cpu_s_per_gb).unwrap_or(0.0),
            median(&mut p.retransmits).unwrap_or(0.0),
        );
    }
    s
}
