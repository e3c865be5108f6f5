//! weft's benchmarks. Each runs weft and its anchor on the same lab in one run and reports
//! both and their ratio; `scripts/bench.sh` writes the report into docs/benchmarks.md.
//!
//! `weft-bench cni`: CNI ADD and DEL latency, p50 and p99, of the weft plugin beside
//! Debian's reference `bridge` + `host-local` plugins, over N containers each, on one lab
//! host. The two plugins alternate container by container so drift on a shared machine
//! hits both alike.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "weft benchmarks: weft beside its anchors, in one run, as ratios")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// CNI ADD/DEL latency: weft vs the reference bridge + host-local plugins.
    Cni {
        /// Containers per plugin.
        #[arg(long, default_value_t = 200)]
        containers: usize,
        /// The weft binary to measure (a release build).
        #[arg(long, default_value = "target/release/weft")]
        weft: PathBuf,
    },
    /// Mesh control traffic: bytes each node sends per state change, in the simulator, at
    /// growing cluster sizes (the growth must be flat, not linear).
    MeshBytes {
        /// Cluster sizes.
        #[arg(long, value_delimiter = ',', default_value = "20,200,1000")]
        nodes: Vec<usize>,
        /// Seeds averaged per size.
        #[arg(long, default_value_t = 3)]
        seeds: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Cni { containers, weft } => cni(containers, &weft),
        Cmd::MeshBytes { nodes, seeds } => {
            mesh_bytes(&nodes, seeds);
            Ok(())
        }
    };
    if let Err(e) = res {
        eprintln!("weft-bench: {e}");
        std::process::exit(1);
    }
}

fn mesh_bytes(sizes: &[usize], seeds: u64) {
    println!("Bytes sent per node per state change (one record written by one node), simulated,");
    println!("bounded-degree random graph, no loss, periodic digests not counted; mean of {seeds} seeds\n");
    println!("| nodes | bytes per node per change | vs the smallest |");
    println!("|---|---|---|");
    let mut first = None;
    for &n in sizes {
        let mean = (0..seeds)
            .map(|s| weft_mesh::sim::bytes_per_change(n, s))
            .sum::<f64>()
            / seeds as f64;
        let base = *first.get_or_insert(mean);
        println!("| {n} | {mean:.0} | {:.2}x |", mean / base);
    }
}

const LAB: &str = "benchcni";

struct Plugin {
    label: &'static str,
    binary: PathBuf,
    conf: String,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

fn cni(n: usize, weft: &Path) -> Result<(), String> {
    let weft = weft.canonicalize().map_err(|e| {
        format!(
            "{}: {e} (build it: cargo build --release -p weft)",
            weft.display()
        )
    })?;
    let _ = weft_lab::down(LAB);
    weft_lab::up(LAB, 1, weft_lab::Topology::Mesh, &weft).map_err(|e| e.0)?;
    let res = cni_run(n, &weft);
    let down = weft_lab::down(LAB).map_err(|e| e.0);
    res.and(down)
}

fn cni_run(n: usize, weft: &Path) -> Result<(), String> {
    let host = weft_lab::host_dir(LAB, "h1");
    let mut plugins = [
        Plugin {
            label: "weft",
            binary: weft.to_path_buf(),
            conf: serde_json::json!({
                "cniVersion": "1.0.0", "name": "weft", "type": "weft",
                "range": "10.32.0.0/16", "dataDir": host.join("weft"),
            })
            .to_string(),
            add: vec![],
            del: vec![],
        },
        Plugin {
            label: "bridge+host-local",
            binary: PathBuf::from(weft_lab::SYSTEM_CNI_DIR).join("bridge"),
            conf: serde_json::json!({
                "cniVersion": "1.0.0", "name": "ref", "type": "bridge",
                "bridge": "cni0", "isGateway": true, "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.33.0.0/16"}]],
                    "dataDir": host.join("host-local"),
                },
            })
            .to_string(),
            add: vec![],
            del: vec![],
        },
    ];
    if !plugins[1].binary.exists() {
        return Err(
            "the reference plugins are missing: apt-get install containernetworking-plugins".into(),
        );
    }
    // This process enters the lab host's namespace; plugins it spawns start there. It goes
    // back to where it was before the lab is torn down.
    let home = std::fs::File::open("/proc/self/ns/net").map_err(|e| e.to_string())?;
    let res = measure(n, &mut plugins);
    nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("return to the original namespace: {e}"))?;
    res
}

fn measure(n: usize, plugins: &mut [Plugin; 2]) -> Result<(), String> {
    let host_ns = weft_netlink::open_netns(Path::new(&weft_lab::sys::netns_path(&format!(
        "weft-{LAB}-h1"
    ))))
    .map_err(|e| e.to_string())?;
    nix::sched::setns(&host_ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("enter the lab host: {e}"))?;

    let names: Vec<String> = (0..n).map(|i| format!("weft-{LAB}-c{i}")).collect();
    for name in &names {
        weft_lab::sys::run("ip", &["netns", "add", name]).map_err(|e| e.0)?;
    }
    // One warm-up attachment each (page cache, bridge creation), not counted.
    let warm = format!("weft-{LAB}-warm");
    weft_lab::sys::run("ip", &["netns", "add", &warm]).map_err(|e| e.0)?;
    for p in plugins.iter() {
        call(p, "ADD", "warm", &warm)?;
        call(p, "DEL", "warm", &warm)?;
    }
    for (i, ns) in names.iter().enumerate() {
        for p in plugins.iter_mut() {
            let t = call(p, "ADD", &format!("c{i}"), ns)?;
            p.add.push(t);
        }
    }
    for (i, ns) in names.iter().enumerate() {
        for p in plugins.iter_mut() {
            let t = call(p, "DEL", &format!("c{i}"), ns)?;
            p.del.push(t);
        }
    }
    report(n, plugins);
    Ok(())
}

/// Runs one plugin invocation; returns its wall time (spawn to exit).
fn call(p: &Plugin, command: &str, id: &str, ns: &str) -> Result<Duration, String> {
    // Each plugin gets its own interface name space: both attach to the same namespace.
    let ifname = if p.label == "weft" { "eth0" } else { "eth1" };
    let start = Instant::now();
    let mut child = Command::new(&p.binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env(
            "CNI_CONTAINERID",
            format!("{}-{id}", p.label.replace('+', "-")),
        )
        .env("CNI_NETNS", format!("/run/netns/{ns}"))
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", weft_lab::SYSTEM_CNI_DIR)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {}: {e}", p.binary.display()))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(p.conf.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{} {command} {id} failed: {}{}",
            p.label,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(elapsed)
}

fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    let idx = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn report(n: usize, plugins: &mut [Plugin]) {
    let [w, r] = plugins else { return };
    println!("CNI ADD/DEL latency, {n} containers per plugin, one lab host, sequential calls\n");
    println!("| operation | weft | bridge + host-local | ratio weft / reference |");
    println!("|---|---|---|---|");
    for (op, q) in [
        ("ADD p50", 0.5),
        ("ADD p99", 0.99),
        ("DEL p50", 0.5),
        ("DEL p99", 0.99),
    ] {
        let (a, b) = if op.starts_with("ADD") {
            (pct(&mut w.add, q), pct(&mut r.add, q))
        } else {
            (pct(&mut w.del, q), pct(&mut r.del, q))
        };
        println!(
            "| {op} | {} | {} | {:.2} |",
            ms(a),
            ms(b),
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
}
