//! weft's benchmarks. Each runs weft and its anchor on the same lab in one run and reports
//! both and their ratio; `scripts/bench.sh` writes the report into docs/benchmarks.md.
//!
//! `weft-bench cni`: CNI ADD and DEL latency, p50 and p99, of the weft plugin beside
//! Debian's reference `bridge` + `host-local` plugins, over N containers each, on one lab
//! host. The two plugins alternate container by container so drift on a shared machine
//! hits both alike.
//!
//! `weft-bench dataplane`: pod-to-pod throughput and latency across two lab hosts, over
//! IPv4 and IPv6, weft's route and VXLAN modes beside host to host and the same paths made
//! by hand (see `dataplane.rs`).
//!
//! `weft-bench docker`: weft's Docker network beside Docker's swarm overlay network on the
//! same two lab hosts: throughput, request/response, and `docker run` until reachable from
//! the other host (see `docker.rs`).

mod dataplane;
mod dns;
mod docker;
mod encrypt;
mod policy;
mod policy_traffic;

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
        /// Containers per plugin and round.
        #[arg(long, default_value_t = 200)]
        containers: usize,
        /// Rounds: each adds every container with both plugins, then deletes them all;
        /// the percentiles are over every round's calls.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// The weft binary to measure (a release build) [default: the weft beside this
        /// weft-bench].
        #[arg(long)]
        weft: Option<PathBuf>,
    },
    /// Mesh convergence and footprint on a lab: time until every agent sees a host that
    /// (re)joins as up, and each agent's resident memory.
    MeshJoin {
        /// Lab hosts.
        #[arg(long, default_value_t = 20)]
        hosts: usize,
        /// Joins measured (the last host leaves and joins again each time).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// The weft binary (a release build) [default: the weft beside this weft-bench].
        #[arg(long)]
        weft: Option<PathBuf>,
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
    /// Pod-to-pod data plane across two lab hosts, IPv4 and IPv6: weft route and VXLAN modes
    /// beside host to host, hand-made routes and a hand-made VXLAN (iperf3, ping, TCP
    /// request/response).
    Dataplane {
        /// The weft binary (a release build) [default: the weft beside this weft-bench].
        #[arg(long)]
        weft: Option<PathBuf>,
        /// Lab name of the anchors (1 to 10 of a-z0-9); the IPv6 anchors' lab is NAME6, the
        /// weft labs are NAMEr, NAMErn, NAMErs, NAMEv, NAMEvn and NAMEvs (route and VXLAN
        /// mode: defaults, NAT off, fast path off), NAME6r, NAME6rn, NAME6rs and NAME6v (IPv6
        /// underlay). Traffic through network policies is `weft-bench policy`'s.
        #[arg(long, default_value = "bdp")]
        lab: String,
        /// Rounds; in each, every weft path is measured with its anchor (throughput back to
        /// back, pings at the same time) and the medians of the pairs are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// iperf3 seconds per measurement.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Pings per measurement (10 ms apart).
        #[arg(long, default_value_t = 300)]
        pings: usize,
        /// TCP request/response seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        rr_secs: f64,
        /// Leave ping and the request/response ends where the scheduler puts them (by
        /// default the pinging process and both request/response ends are pinned to one
        /// CPU, so the packets' whole path runs there).
        #[arg(long)]
        rr_unpinned: bool,
        /// Seconds a weft lab's containers may take to reach each other.
        #[arg(long, default_value_t = 30)]
        ready_secs: u64,
    },
    /// Network policy's costs: programming N policies (locally and until another host
    /// enforces them), CNI ADD latency with N policies present beside none, and pod-to-pod
    /// throughput and request/response through 100 and 1000 policies beside a pod of the
    /// same host that no policy selects.
    Policy {
        /// The weft binary (a release build) [default: the weft beside this weft-bench].
        #[arg(long)]
        weft: Option<PathBuf>,
        /// Policies to program.
        #[arg(long, default_value_t = 1000)]
        policies: usize,
        /// Pods added per row of the ADD measurement; 0 skips it.
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Hosts of the programming lab (an isolated pod on each; the target is at 20); 0
        /// skips the programming measurement.
        #[arg(long, default_value_t = 20)]
        hosts: usize,
        /// Rounds of the traffic measurement (throughput and request/response to a server
        /// no policy selects, one isolated by 100 policies and one by 1000, on lab bpolt);
        /// 0 skips it.
        #[arg(long, default_value_t = 15)]
        traffic_rounds: usize,
        /// iperf3 seconds per traffic measurement.
        #[arg(long, default_value_t = 3)]
        secs: u64,
        /// TCP request/response seconds per traffic measurement.
        #[arg(long, default_value_t = 2.0)]
        rr_secs: f64,
    },
    /// The name service: dnsperf from a container against weft's DNS and against dnsmasq
    /// serving the same names from a hosts file on the same host (labs bdns), and the time
    /// until a new container's name resolves on every host of a bigger lab (bdnsp).
    Dns {
        /// The weft binary (a release build) [default: the weft beside this weft-bench].
        #[arg(long)]
        weft: Option<PathBuf>,
        /// Containers whose names are queried.
        #[arg(long, default_value_t = 50)]
        names: usize,
        /// Rounds of the comparison (alternating which server goes first).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// dnsperf seconds per throughput measurement.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Hosts of the propagation lab (the target is at 20); 0 skips it.
        #[arg(long, default_value_t = 20)]
        hosts: usize,
        /// New containers timed on the propagation lab.
        #[arg(long, default_value_t = 5)]
        adds: usize,
    },
    /// Docker: weft's Docker network (`-d weft`) beside Docker's overlay network of a swarm
    /// on the same 2-host lab (NAME; weft's VXLAN mode on lab NAMEv): container-to-container
    /// TCP throughput, TCP request/response, and `docker run` until the container is
    /// reachable from the other host.
    Docker {
        /// The weft binary (a release build) [default: the weft beside this weft-bench].
        #[arg(long)]
        weft: Option<PathBuf>,
        /// Lab name (1 to 11 of a-z0-9); weft's VXLAN lab is NAMEv.
        #[arg(long, default_value = "bdk")]
        lab: String,
        /// Rounds of throughput and request/response (networks alternate; medians reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// iperf3 seconds per measurement.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// TCP request/response seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        rr_secs: f64,
        /// Leave the request/response ends where the scheduler puts them (by default both
        /// are pinned to one CPU).
        #[arg(long)]
        rr_unpinned: bool,
        /// Containers started per network for the time until reachable.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Leave out weft's VXLAN mode (its lab NAMEv).
        #[arg(long)]
        no_vxlan: bool,
    },
    /// Encryption: weft's encrypted tunnel (defaults, and offloads off) beside weft's VXLAN
    /// mode, Debian's wireguard-go, boringtun-cli from crates.io and Debian's nebula, on
    /// 2-host labs in one run: single-stream TCP throughput, TCP request/response and the
    /// machine's CPU seconds per GB.
    Encrypt {
        /// The weft binary (a release build) [default: the weft beside this weft-bench].
        #[arg(long)]
        weft: Option<PathBuf>,
        /// Lab name prefix (1 to 11 of a-z0-9): labs NAMEv, NAMEe and NAMEo.
        #[arg(long, default_value = "ben")]
        lab: String,
        /// Rounds (paths alternate; medians reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// iperf3 seconds per measurement.
        #[arg(long, default_value_t = 8)]
        secs: u64,
        /// TCP request/response seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        rr_secs: f64,
        /// boringtun-cli (scripts/bench.sh builds it from crates.io).
        #[arg(long, default_value = "target/anchors/bin/boringtun-cli")]
        boringtun: PathBuf,
    },
    /// TCP request/response server: echoes one connection's bytes (used by `dataplane`).
    #[command(hide = true)]
    RrServer {
        /// Address and port to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Pin to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// TCP request/response client: 1-byte ping-pong for SECS, prints JSON (used by
    /// `dataplane`).
    #[command(hide = true)]
    RrClient {
        /// The server's address and port.
        #[arg(long)]
        connect: std::net::SocketAddr,
        /// How long to run.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Pin to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Cni {
            containers,
            rounds,
            weft,
        } => cni(containers, rounds, &weft),
        Cmd::MeshJoin {
            hosts,
            rounds,
            weft,
        } => mesh_join(hosts, rounds, &weft),
        Cmd::MeshBytes { nodes, seeds } => {
            mesh_bytes(&nodes, seeds);
            Ok(())
        }
        Cmd::Dataplane {
            weft,
            lab,
            rounds,
            secs,
            pings,
            rr_secs,
            rr_unpinned,
            ready_secs,
        } => weft_binary(&weft).and_then(|weft| {
            dataplane::dataplane(&dataplane::Opts {
                weft,
                lab,
                rounds,
                secs,
                pings,
                rr_secs,
                rr_cpu: if rr_unpinned {
                    None
                } else {
                    dataplane::first_cpu()
                },
                ready_secs,
            })
        }),
        Cmd::Dns { hosts, .. } if hosts == 1 || hosts > 60 => Err(format!(
            "--hosts {hosts}: the propagation lab needs 2 to 60 hosts (0: skip it)"
        )),
        Cmd::Dns { names: 0, .. } | Cmd::Dns { rounds: 0, .. } => {
            Err("--names and --rounds must be at least 1".into())
        }
        Cmd::Dns {
            weft,
            names,
            rounds,
            secs,
            hosts,
            adds,
        } => weft_binary(&weft).and_then(|weft| {
            dns::dns(&dns::Opts {
                weft,
                names,
                rounds,
                secs,
                hosts,
                adds,
            })
        }),
        Cmd::Policy { hosts, .. } if hosts == 1 || hosts > 60 => Err(format!(
            "--hosts {hosts}: the programming lab needs 2 to 60 hosts (0: skip it)"
        )),
        Cmd::Policy { secs, rr_secs, .. } if secs == 0 || !(rr_secs > 0.0 && rr_secs < 3600.0) => {
            Err("--secs must be above 0, --rr-secs above 0 and below 3600".into())
        }
        Cmd::Policy {
            weft,
            policies,
            pods,
            hosts,
            traffic_rounds,
            secs,
            rr_secs,
        } => weft_binary(&weft).and_then(|weft| {
            policy::policy(&policy::Opts {
                weft,
                policies,
                pods,
                hosts,
                traffic: policy_traffic::Opts {
                    rounds: traffic_rounds,
                    secs,
                    rr_secs,
                },
            })
        }),
        Cmd::Docker {
            weft,
            lab,
            rounds,
            secs,
            rr_secs,
            rr_unpinned,
            runs,
            no_vxlan,
        } => weft_binary(&weft).and_then(|weft| {
            docker::docker_bench(&docker::Opts {
                weft,
                lab,
                rounds,
                secs,
                rr_secs,
                rr_cpu: if rr_unpinned {
                    None
                } else {
                    dataplane::first_cpu()
                },
                runs,
                vxlan: !no_vxlan,
                command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
            })
        }),
        Cmd::Encrypt {
            weft,
            lab,
            rounds,
            secs,
            rr_secs,
            boringtun,
        } => weft_binary(&weft).and_then(|weft| {
            let boringtun = std::fs::canonicalize(&boringtun).map_err(|e| {
                format!(
                    "{}: {e} (scripts/bench.sh builds it: cargo install --root target/anchors \
                     boringtun-cli)",
                    boringtun.display()
                )
            })?;
            encrypt::encrypt_bench(&encrypt::Opts {
                weft,
                lab,
                rounds,
                secs,
                rr_secs,
                rr_cpu: dataplane::first_cpu(),
                boringtun,
                command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
            })
        }),
        Cmd::RrServer { listen, cpu } => dataplane::rr_server(listen, cpu),
        Cmd::RrClient { connect, secs, cpu } => dataplane::rr_client(connect, secs, cpu),
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

const MESH_LAB: &str = "benchmesh";

/// For every agent: how many other nodes it sees up, and whether it sees `name` up.
fn mesh_views(state: &weft_lab::LabState, name: &str) -> Vec<(usize, bool)> {
    state
        .agents
        .iter()
        .map(|a| {
            let Ok((200, body)) = weft_agent::api::request(&a.socket, "GET", "/status", None)
            else {
                return (0, false);
            };
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let peers = v["peers"].as_array().cloned().unwrap_or_default();
            let up: Vec<&serde_json::Value> =
                peers.iter().filter(|p| p["status"] == "up").collect();
            (
                up.len(),
                up.iter().any(|p| p["name"] == name) || v["node"]["name"] == name,
            )
        })
        .collect()
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The weft binary to measure: `--weft`, else the one built beside this program (cargo
/// builds both into the same directory).
fn weft_binary(weft: &Option<PathBuf>) -> Result<PathBuf, String> {
    let path = match weft {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("where is weft-bench: {e}"))?
            .with_file_name("weft"),
    };
    path.canonicalize().map_err(|e| {
        format!(
            "{}: {e} (build it: cargo build --release -p weft)",
            path.display()
        )
    })
}

fn mesh_join(hosts: usize, rounds: usize, weft: &Option<PathBuf>) -> Result<(), String> {
    let weft = weft_binary(weft)?;
    let _ = weft_lab::down(MESH_LAB);
    let started = Instant::now();
    weft_lab::up(MESH_LAB, hosts, weft_lab::Topology::Mesh, &weft).map_err(|e| e.0)?;
    let res = mesh_join_run(hosts, rounds, started);
    let down = weft_lab::down(MESH_LAB).map_err(|e| e.0);
    res.and(down)
}

fn mesh_join_run(hosts: usize, rounds: usize, started: Instant) -> Result<(), String> {
    let state = weft_lab::load(MESH_LAB).map_err(|e| e.0)?;
    let last = format!("h{hosts}");
    let all_agree = |state: &weft_lab::LabState| {
        mesh_views(state, &last)
            .iter()
            .all(|(up, sees)| *up == hosts - 1 && *sees)
    };
    wait_until(Duration::from_secs(60), || all_agree(&state))
        .ok_or("the lab's agents never agreed on all hosts")?;
    let first = started.elapsed();
    let mut joins = Vec::new();
    for _ in 0..rounds {
        weft_lab::agent(MESH_LAB, &last, weft_lab::AgentAction::Stop).map_err(|e| e.0)?;
        let state = weft_lab::load(MESH_LAB).map_err(|e| e.0)?;
        wait_until(Duration::from_secs(60), || {
            mesh_views(&state, &last)
                .iter()
                .enumerate()
                .all(|(i, (_, sees))| i == hosts - 1 || !*sees)
        })
        .ok_or("the others never saw the last host go")?;
        let t0 = Instant::now();
        weft_lab::agent(MESH_LAB, &last, weft_lab::AgentAction::Start).map_err(|e| e.0)?;
        let state = weft_lab::load(MESH_LAB).map_err(|e| e.0)?;
        wait_until(Duration::from_secs(60), || all_agree(&state))
            .ok_or("the mesh never agreed after the join")?;
        joins.push(t0.elapsed());
    }
    let state = weft_lab::load(MESH_LAB).map_err(|e| e.0)?;
    let rss: Vec<u64> = state
        .agents
        .iter()
        .filter_map(|a| a.pid.and_then(rss_kib))
        .collect();
    joins.sort();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!("Mesh on a {hosts}-host lab (mesh topology, each agent given one peer, tick 1 s)\n");
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| lab up to all agents agreeing (start of {hosts} agents) | {} | — |",
        ms(first)
    );
    println!(
        "| a host joins: until every agent sees it up, median of {rounds} | {} | ≤ 2 s |",
        ms(joins[joins.len() / 2])
    );
    println!(
        "| a host joins: worst of {rounds} | {} | ≤ 2 s |",
        ms(joins[joins.len() - 1])
    );
    if !rss.is_empty() {
        let max = rss.iter().max().copied().unwrap_or(0);
        let mean = rss.iter().sum::<u64>() / rss.len() as u64;
        println!(
            "| agent RSS, mean / max over {} agents | {:.1} / {:.1} MiB | ≤ 30 MB |",
            rss.len(),
            mean as f64 / 1024.0,
            max as f64 / 1024.0
        );
    }
    Ok(())
}

const LAB: &str = "benchcni";

struct Plugin {
    label: &'static str,
    binary: PathBuf,
    conf: String,
    /// Each round's ADD times, in call order.
    add: Vec<Vec<Duration>>,
    /// Each round's DEL times, in call order.
    del: Vec<Vec<Duration>>,
}

fn cni(n: usize, rounds: usize, weft: &Option<PathBuf>) -> Result<(), String> {
    if n == 0 || rounds == 0 {
        return Err("--containers and --rounds must be at least 1".into());
    }
    let weft = weft_binary(weft)?;
    let _ = weft_lab::down(LAB);
    weft_lab::up(LAB, 1, weft_lab::Topology::Mesh, &weft).map_err(|e| e.0)?;
    let res = cni_run(n, rounds, &weft);
    let down = weft_lab::down(LAB).map_err(|e| e.0);
    res.and(down)
}

fn cni_run(n: usize, rounds: usize, weft: &Path) -> Result<(), String> {
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
    let res = measure(n, rounds, &mut plugins);
    nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("return to the original namespace: {e}"))?;
    res
}

fn measure(n: usize, rounds: usize, plugins: &mut [Plugin; 2]) -> Result<(), String> {
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
    // Each round attaches every container with both plugins, then detaches them all. The
    // plugins alternate container by container, and which of them goes first alternates
    // too: a call inherits what the one before it left to the kernel (RCU callbacks of a
    // deleted veth, a Go runtime's exit), so neither always follows the other.
    for round in 0..rounds {
        for p in plugins.iter_mut() {
            p.add.push(Vec::with_capacity(n));
            p.del.push(Vec::with_capacity(n));
        }
        for command in ["ADD", "DEL"] {
            for (i, ns) in names.iter().enumerate() {
                let order = if (i + round) % 2 == 0 { [0, 1] } else { [1, 0] };
                for k in order {
                    let p = &mut plugins[k];
                    let t = call(p, command, &format!("r{round}-c{i}"), ns)?;
                    let v = if command == "ADD" {
                        &mut p.add
                    } else {
                        &mut p.del
                    };
                    v[round].push(t);
                }
            }
        }
        eprintln!("cni: round {} of {rounds} done", round + 1);
    }
    report(n, rounds, plugins);
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

fn report(n: usize, rounds: usize, plugins: &mut [Plugin]) {
    let [w, r] = plugins else { return };
    println!(
        "CNI ADD/DEL latency, {n} containers per plugin in each of {rounds} round{} ({} calls \
         per plugin and operation), one lab host, sequential calls\n",
        if rounds == 1 { "" } else { "s" },
        n * rounds
    );
    println!("| operation | weft | bridge + host-local | ratio weft / reference |");
    println!("|---|---|---|---|");
    let ops = [
        ("ADD p50", 0.5),
        ("ADD p99", 0.99),
        ("DEL p50", 0.5),
        ("DEL p99", 0.99),
    ];
    let pick = |p: &Plugin, op: &str| -> Vec<Vec<Duration>> {
        if op.starts_with("ADD") {
            p.add.clone()
        } else {
            p.del.clone()
        }
    };
    // The whole distributions, for whoever looks into a ratio (stderr, not the report).
    for p in [&*w, &*r] {
        for (op, v) in [("ADD", &p.add), ("DEL", &p.del)] {
            let mut all = v.concat();
            let qs: Vec<String> = [0.1, 0.5, 0.9, 0.95, 0.99, 1.0]
                .iter()
                .map(|q| format!("{:.1}", pct(&mut all, *q).as_secs_f64() * 1000.0))
                .collect();
            eprintln!(
                "cni: {} {op} ms at p10 p50 p90 p95 p99 max: {}",
                p.label,
                qs.join(" ")
            );
        }
    }
    let mut spread = Vec::new();
    for (op, q) in ops {
        let (ws, rs) = (pick(w, op), pick(r, op));
        let a = pct(&mut ws.concat(), q);
        let b = pct(&mut rs.concat(), q);
        println!(
            "| {op} | {} | {} | {:.2} |",
            ms(a),
            ms(b),
            a.as_secs_f64() / b.as_secs_f64()
        );
        let per_round: Vec<String> = ws
            .into_iter()
            .zip(rs)
            .map(|(mut x, mut y)| {
                format!(
                    "{:.2}",
                    pct(&mut x, q).as_secs_f64() / pct(&mut y, q).as_secs_f64()
                )
            })
            .collect();
        spread.push(format!("{op} {}", per_round.join(", ")));
    }
    if rounds > 1 {
        println!(
            "\nThe same ratios taken over each round's {n} containers alone (round by round): {}.",
            spread.join("; ")
        );
    }
}
