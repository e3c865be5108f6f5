//! The name service's benchmark (docs/dns.md): dnsperf from a container against weft's
//! DNS and against dnsmasq serving the same names from a hosts file on the same host,
//! in alternating order; and on a lab of many hosts, the time from a container's ADD
//! until its name resolves on every host.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::policy::{enter, pct, Lab};

/// What to run.
pub struct Opts {
    pub weft: PathBuf,
    /// Containers whose names are queried.
    pub names: usize,
    /// Rounds of the dnsperf comparison.
    pub rounds: usize,
    /// dnsperf seconds per throughput measurement.
    pub secs: u64,
    /// Hosts of the propagation lab (0: skip it).
    pub hosts: usize,
    /// New containers timed on the propagation lab.
    pub adds: usize,
}

const LAB: &str = "bdns";
const LAB_P: &str = "bdnsp";

/// dnsmasq on a lab host, ended by its pid when dropped.
struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One dnsperf run from the client container: (queries per second, lost, per-query
/// latencies when `verbose`).
fn dnsperf(
    server: &str,
    file: &Path,
    args: &[&str],
    verbose: bool,
) -> Result<(f64, u64, Vec<Duration>), String> {
    let ns = format!("weft-{LAB}-h1-client");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns, "dnsperf", "-s", server, "-d"])
        .arg(file)
        .args(args);
    if verbose {
        cmd.arg("-v");
    }
    let out = cmd.output().map_err(|e| format!("run dnsperf: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "dnsperf -s {server}: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let qps = field("Queries per second:").ok_or_else(|| format!("dnsperf said: {text}"))?;
    let lost = field("Queries lost:").unwrap_or(0.0) as u64;
    let lat = text
        .lines()
        .filter(|l| l.starts_with("> NOERROR"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .collect();
    Ok((qps, lost, lat))
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// weft's DNS beside dnsmasq from one container.
fn throughput(o: &Opts) -> Result<(), String> {
    let lab = Lab::up(&o.weft, LAB, 2)?;
    let mut hosts_file = String::new();
    for i in 0..o.names {
        let name = format!("n{i:04}");
        let host = if i % 2 == 0 { "h1" } else { "h2" };
        let ip = lab.run(host, &name, "default", "bench=dns")?;
        hosts_file.push_str(&format!(
            "{ip} {name}.weft.local {name}.default.weft.local\n"
        ));
    }
    lab.run("h1", "client", "default", "bench=dns")?;
    // Every name is answered on h1 before anything is measured.
    let want = 2 * o.names + 2;
    let ready = crate::wait_until(Duration::from_secs(30), || {
        lab.exec(
            "h1",
            &["weft", "dns", "list", "--json"],
            Duration::from_secs(10),
        )
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["names"].as_array().map(Vec::len))
            == Some(want)
    });
    if ready.is_none() {
        return Err(format!("h1 does not answer the {want} names within 30 s"));
    }
    let dir = PathBuf::from(format!("/run/weft-lab/{LAB}"));
    let hosts_path = dir.join("bench-hosts");
    let queries = dir.join("bench-queries");
    std::fs::write(&hosts_path, hosts_file).map_err(|e| e.to_string())?;
    let q: String = (0..o.names)
        .map(|i| format!("n{i:04}.weft.local A\n"))
        .collect();
    std::fs::write(&queries, q).map_err(|e| e.to_string())?;
    let dm = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("weft-{LAB}-h1"),
            "dnsmasq",
            "--keep-in-foreground",
        ])
        .args([
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--user=root",
            "--group=root",
        ])
        .arg(format!("--addn-hosts={}", hosts_path.display()))
        .args([
            "--local=/weft.local/",
            "--listen-address=172.30.0.1",
            "--bind-interfaces",
        ])
        .args(["--log-facility=/dev/null"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start dnsmasq: {e}"))?;
    let _dm = Dnsmasq(dm);
    std::thread::sleep(Duration::from_millis(500));
    let servers = [("weft", "169.254.1.1"), ("dnsmasq", "172.30.0.1")];
    // Both answer every name the same before they are compared.
    for (label, s) in servers {
        let (_, lost, lat) = dnsperf(s, &queries, &["-n", "1"], true)?;
        if lost > 0 || lat.len() != o.names {
            return Err(format!(
                "{label} answered {} of {} names with NOERROR ({lost} lost)",
                lat.len(),
                o.names
            ));
        }
    }
    let secs = o.secs.to_string();
    let mut qps: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut lats: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut lost = [0u64; 2];
    for r in 0..o.rounds {
        for k in 0..2 {
            let i = if r % 2 == 0 { k } else { 1 - k };
            let s = servers[i].1;
            // Throughput: four clients, 100 queries outstanding.
            let (q, l, _) = dnsperf(s, &queries, &["-l", &secs, "-c", "4", "-q", "100"], false)?;
            qps[i].push(q);
            lost[i] += l;
            // Latency: a steady 2000 queries per second, every query timed.
            let (_, l, lat) = dnsperf(s, &queries, &["-l", "3", "-Q", "2000"], true)?;
            lost[i] += l;
            lats[i].extend(lat);
        }
        eprintln!(
            "dns round {}: weft {:.0} q/s, dnsmasq {:.0} q/s",
            r + 1,
            qps[0][r],
            qps[1][r]
        );
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (qw, qd) = (med(&mut qps[0]), med(&mut qps[1]));
    println!(
        "### Name service: weft's DNS beside dnsmasq (dnsperf from a container, {} names, {} rounds)\n",
        o.names, o.rounds
    );
    println!("| server | queries/s (median of rounds) | p50 latency | p99 latency | lost |");
    println!("|---|---|---|---|---|");
    for (i, (label, _)) in servers.iter().enumerate() {
        let q = if i == 0 { qw } else { qd };
        let l = &mut lats[i];
        if l.is_empty() {
            return Err(format!("no latency samples of {label}"));
        }
        println!(
            "| {label} | {q:.0} | {} | {} | {} |",
            us(pct(l, 0.5)),
            us(pct(l, 0.99)),
            lost[i]
        );
    }
    println!("\nweft / dnsmasq queries per second: {:.2}\n", qw / qd);
    drop(lab);
    Ok(())
}

/// A DNS query for `name` type A (id 0x5746), by hand: the bench does not link the DNS
/// library it measures.
fn query(name: &str) -> Vec<u8> {
    let mut q = vec![0x57, 0x46, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether `name` has an address at the host's agent, asked from this thread's namespace.
fn resolves(sock: &UdpSocket, q: &[u8]) -> bool {
    let to: SocketAddr = "169.254.1.1:53".parse().expect("address");
    if sock.send_to(q, to).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    match sock.recv(&mut buf) {
        // Same id, a response, NOERROR, at least one answer.
        Ok(n) if n >= 12 => {
            buf[..2] == q[..2]
                && buf[2] & 0x80 != 0
                && buf[3] & 0x0f == 0
                && (buf[6], buf[7]) != (0, 0)
        }
        _ => false,
    }
}

/// On a lab of `hosts`, new containers one at a time: how long until every host's agent
/// answers each one's name, from the ADD's return.
fn propagation(o: &Opts) -> Result<(), String> {
    let lab = Lab::up(&o.weft, LAB_P, o.hosts)?;
    let mut worst = Vec::new();
    for k in 0..o.adds {
        let name = format!("new{k}");
        let host = format!("h{}", 1 + (k * 7) % o.hosts);
        let q = query(&format!("{name}.weft.local"));
        let start = Arc::new(Barrier::new(o.hosts + 1));
        let mut probes = Vec::new();
        for h in 1..=o.hosts {
            let (q, start) = (q.clone(), start.clone());
            probes.push(std::thread::spawn(
                move || -> Result<Option<Instant>, String> {
                    enter(LAB_P, &format!("h{h}"))?;
                    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
                    sock.set_read_timeout(Some(Duration::from_millis(200)))
                        .map_err(|e| e.to_string())?;
                    start.wait();
                    let t0 = Instant::now();
                    while t0.elapsed() < Duration::from_secs(20) {
                        if resolves(&sock, &q) {
                            return Ok(Some(Instant::now()));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(None)
                },
            ));
        }
        start.wait();
        let t_add = Instant::now();
        lab.run(&host, &name, "default", "bench=dns")?;
        let added = Instant::now();
        let mut last = Duration::ZERO;
        for p in probes {
            match p.join().map_err(|_| "probe thread panicked")?? {
                Some(t) => last = last.max(t.saturating_duration_since(added)),
                None => return Err(format!("{name} did not resolve on every host within 20 s")),
            }
        }
        eprintln!(
            "dns: {name} on {host}: ADD {} ms, every host answers {} ms after it returned",
            added.duration_since(t_add).as_millis(),
            last.as_millis()
        );
        worst.push(last);
    }
    let mut w = worst.clone();
    println!(
        "### Name service: a new container's name on every host ({} hosts, {} containers)\n",
        o.hosts, o.adds
    );
    println!(
        "After its CNI ADD returned, every host's agent answered the name within: median {} ms, worst {} ms (target ≤ 1000 ms).\n",
        pct(&mut w, 0.5).as_millis(),
        worst.iter().max().copied().unwrap_or_default().as_millis()
    );
    Ok(())
}

/// Both parts.
pub fn dns(o: &Opts) -> Result<(), String> {
    throughput(o)?;
    if o.hosts > 0 {
        propagation(o)?;
    }
    Ok(())
}
