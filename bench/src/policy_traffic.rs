//! `weft-bench policy`, traffic: pod-to-pod throughput and TCP request/response through
//! 100 and 1000 policies beside the same path without policy, on one lab.
//!
//! One 2-host route-mode lab with the defaults (NAT and the fast path on). On h1 the client
//! (`role=client`); on h2 three servers that differ only in what isolates them:
//! - `free` in namespace `default`, which no policy selects;
//! - `s100` in namespace `c`, isolated by 100 policies (`policies_yaml_in(100, "c")`);
//! - `s1000` in namespace `b`, isolated by 1000 (`policies_yaml_in(1000, "b")`).
//!
//! In both sets the client's packets pass every rule but the last, which lets them in.
//! The three paths share the lab, the client, the hosts and the policies in force; the
//! measurements of a round are made back to back (the order rotating round by round), and
//! each ratio is the median of the rounds' own ratios. Why one lab and not three: on this
//! kind of machine one iperf3 stream gives 13 to 21 Gbit/s on the same path from one run
//! to the next (docs/benchmarks.md), and only measurements close in time and place compare.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::dataplane::{
    catch_signals, check_interrupted, iperf_netns, median, paired_ratio, rr_between,
};
use crate::policy::{policies_yaml_in, Lab};

/// Options of the traffic part.
pub struct Opts {
    /// Rounds; each measures every server once per kind.
    pub rounds: usize,
    /// iperf3 seconds per measurement.
    pub secs: u64,
    /// TCP request/response seconds per measurement.
    pub rr_secs: f64,
}

/// One server and what was measured towards it.
struct Target {
    label: &'static str,
    ns: String,
    addr: IpAddr,
    gbits: Vec<f64>,
    rr_us: Vec<f64>,
}

/// The lab's containers: (pod, namespace, label, policies isolating it).
const PODS: [(&str, &str, &str, usize); 3] = [
    ("free", "default", "app=server", 0),
    ("s100", "c", "app=server", 100),
    ("s1000", "b", "app=server", 1000),
];

/// Waits until h2 isolates its two selected pods under all the policies, and the client
/// connects to every server.
fn wait_ready(lab: &Lab, policies: usize, targets: &[Target]) -> Result<(), String> {
    let start = Instant::now();
    let limit = Duration::from_secs(120);
    loop {
        check_interrupted()?;
        let out = lab.exec("h2", &["weft", "status", "--json"], Duration::from_secs(20))?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let p = &v["policy"];
        if p["policies"].as_u64() == Some(policies as u64) && p["isolated"].as_u64() == Some(2) {
            break;
        }
        if start.elapsed() > limit {
            return Err(format!("h2 never isolated its two pods: {p}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for t in targets {
        let to = t.addr.to_string();
        while lab
            .exec(
                "h1/c1",
                &["ping", "-c", "1", "-W", "1", &to],
                Duration::from_secs(5),
            )
            .is_err()
        {
            check_interrupted()?;
            if start.elapsed() > limit {
                return Err(format!("the client never reached {} ({})", t.label, t.addr));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// The fast path's `established` counter on h2: packets of isolated pods' established
/// connections it forwarded.
fn established(lab: &Lab) -> Result<u64, String> {
    let out = lab.exec("h2", &["weft", "status", "--json"], Duration::from_secs(20))?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    Ok(v["dataplane"]["fast_path"]["counters"]["established"]
        .as_u64()
        .unwrap_or(0))
}

/// Throughput and request/response through 100 and 1000 policies beside none.
pub fn traffic(weft: &Path, o: &Opts) -> Result<(), String> {
    catch_signals();
    let lab = Lab::up_with(weft, "bpolt", 2, &["--mode", "route"])?;
    lab.run("h1", "c1", "default", "role=client")?;
    let mut targets = Vec::new();
    for (pod, ns, label, _) in PODS {
        let ip = lab.run("h2", pod, ns, label)?;
        targets.push(Target {
            label: pod,
            ns: format!("weft-{}-h2-{pod}", lab.name),
            addr: ip.parse().map_err(|_| format!("{pod}: bad address {ip}"))?,
            gbits: vec![],
            rr_us: vec![],
        });
    }
    // One `weft apply` per set (`weft apply` reads at most 1024 documents from a file).
    let mut total = 0;
    for (_, ns, _, n) in PODS.iter().filter(|p| p.3 > 0) {
        let path = format!("/run/weft-lab/{}/bench-policies-{ns}.yaml", lab.name);
        std::fs::write(&path, policies_yaml_in(*n, ns))
            .map_err(|e| format!("write {path}: {e}"))?;
        lab.exec(
            "h1",
            &["weft", "apply", "-f", &path],
            Duration::from_secs(300),
        )?;
        total += n;
    }
    wait_ready(&lab, total, &targets)?;

    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let before = established(&lab)?;
    let mut failed = None;
    for round in 0..o.rounds {
        if let Err(e) = measure_round(&lab, &mut targets, round, o, &me) {
            // The rounds made so far are reported; the run still fails.
            for t in targets.iter_mut() {
                t.gbits.truncate(round);
                t.rr_us.truncate(round);
            }
            failed = Some(e);
            break;
        }
        eprintln!(
            "policy: traffic round {} of {}: {}",
            round + 1,
            o.rounds,
            targets
                .iter()
                .map(|t| format!(
                    "{} {:.2} Gbit/s {:.1} µs",
                    t.label,
                    t.gbits.last().unwrap_or(&0.0),
                    t.rr_us.last().unwrap_or(&0.0)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let done = targets[0].gbits.len();
    if done > 0 {
        let promoted = established(&lab)?.saturating_sub(before);
        report(o, done, &mut targets, promoted);
    }
    match failed {
        Some(e) => Err(format!("traffic round {} of {}: {e}", done + 1, o.rounds)),
        None => Ok(()),
    }
}

/// One round: every server's throughput back to back, then every server's
/// request/response, the order rotated by `round`.
fn measure_round(
    lab: &Lab,
    targets: &mut [Target],
    round: usize,
    o: &Opts,
    me: &Path,
) -> Result<(), String> {
    let n = targets.len();
    let client = format!("weft-{}-h1-c1", lab.name);
    for k in 0..n {
        check_interrupted()?;
        let t = &mut targets[(k + round) % n];
        let g =
            iperf_netns(&t.ns, &client, t.addr, o.secs).map_err(|e| format!("{}: {e}", t.label))?;
        t.gbits.push(g);
    }
    for k in 0..n {
        check_interrupted()?;
        let t = &mut targets[(k + round) % n];
        let us = rr_between(
            "ip",
            &["netns", "exec", &t.ns],
            &["netns", "exec", &client],
            t.addr,
            o.rr_secs,
            Some(0),
            me,
        )
        .map_err(|e| format!("{}: {e}", t.label))?;
        t.rr_us.push(us);
    }
    Ok(())
}

fn report(o: &Opts, rounds: usize, targets: &mut [Target], promoted: u64) {
    println!();
    println!(
        "Pod-to-pod through policies (one 2-host route-mode lab with the defaults; client on \
         h1, three servers on h2: one no policy selects, one isolated by 100 policies, one by \
         1000, each set letting the client in by its last rule); {} of {} rounds, each measuring \
         every server back to back (the order rotating): iperf3 one TCP stream {} s, TCP \
         request/response 1-byte ping-pong on one connection {} s with both ends pinned to \
         CPU 0\n",
        rounds, o.rounds, o.secs, o.rr_secs
    );
    println!("| server | throughput Gbit/s (median) | / no policy (median of the rounds' ratios) | TCP RR µs/txn (median) | − no policy (median of the rounds' differences) | transactions/s / no policy |");
    println!("|---|---|---|---|---|---|");
    let (base_g, base_rr) = (targets[0].gbits.clone(), targets[0].rr_us.clone());
    for t in targets.iter_mut() {
        let ratio = paired_ratio(&t.gbits, &base_g).unwrap_or(f64::NAN);
        let mut diffs: Vec<f64> = t.rr_us.iter().zip(&base_rr).map(|(a, b)| a - b).collect();
        let diff = median(&mut diffs).unwrap_or(f64::NAN);
        // Transactions per second relative to no policy: the inverse of the time ratio.
        let tps = paired_ratio(&base_rr, &t.rr_us).unwrap_or(f64::NAN);
        let what = match t.label {
            "free" => "no policy".to_string(),
            l => format!("{} policies", &l[1..]),
        };
        println!(
            "| {what} | {:.2} | {ratio:.2} | {:.1} | {diff:+.2} | {tps:.2} |",
            median(&mut t.gbits.clone()).unwrap_or(f64::NAN),
            median(&mut t.rr_us.clone()).unwrap_or(f64::NAN),
        );
    }
    println!(
        "\nTarget: ≥ 0.95 of no policy with 1000 policies (\"no policy\": the server no policy \
         selects, on the same host as the isolated ones). The fast path forwarded {promoted} \
         packets of the isolated servers' established connections on h2 during the rounds \
         (its `established` counter: docs/policy.md, \"Established connections\")."
    );
}
