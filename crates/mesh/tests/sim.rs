//! Simulation tests: many seeds with every fault, hundreds of nodes, and the
//! per-change byte cost. `WEFT_SIM_SEED=N` replays one seed.

use std::time::Instant;

use weft_mesh::sim::{bytes_per_change, run_seed, seed_from_env, Sim, SimConfig};

fn seeds(release: u64, debug: u64) -> Vec<u64> {
    if let Some(s) = seed_from_env() {
        return vec![s];
    }
    let n = if cfg!(debug_assertions) {
        debug
    } else {
        release
    };
    (0..n).collect()
}

fn small_config(seed: u64) -> SimConfig {
    SimConfig::faulty(10 + (seed % 21) as usize)
}

#[test]
fn many_seeds_small_meshes_with_all_faults() {
    let t = Instant::now();
    let mut failures = Vec::new();
    let mut totals = weft_mesh::sim::Stats::default();
    for seed in seeds(200, 60) {
        match run_seed(&small_config(seed), seed) {
            Ok(s) => {
                totals.lost += s.lost;
                totals.partitions += s.partitions;
                totals.restarts += s.restarts;
                totals.writes += s.writes;
                totals.duplicated += s.duplicated;
            }
            Err(e) => failures.push(e),
        }
    }
    eprintln!("small meshes: {:?} in {:?}", totals, t.elapsed());
    assert!(
        failures.is_empty(),
        "{} failing seed(s), replay with WEFT_SIM_SEED=N cargo test -p weft-mesh:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn hundreds_of_nodes_with_all_faults() {
    let t = Instant::now();
    let nodes = if cfg!(debug_assertions) { 200 } else { 250 };
    for seed in seeds(2, 1) {
        let mut cfg = SimConfig::faulty(nodes);
        cfg.partition_chance = 0.05;
        cfg.restart_chance = 0.1;
        cfg.write_chance = 1.0;
        cfg.fault_ticks = 100;
        let mut sim = Sim::new(cfg, 1_000 + seed);
        let r = sim.run();
        eprintln!(
            "{nodes} nodes, seed {}: {:?} in {:?}",
            1_000 + seed,
            sim.stats,
            t.elapsed()
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

#[test]
fn partition_longer_than_down_after_heals_without_new_writes() {
    for seed in seeds(20, 5) {
        let mut cfg = SimConfig::calm(20);
        cfg.extra_edges = 10;
        let mut sim = Sim::new(cfg, seed);
        sim.run_until_quiet().unwrap();
        let side: std::collections::BTreeSet<usize> = (0..7).collect();
        sim.partition(&side);
        sim.run_ticks(80); // > down_after (30 ticks): each side holds the other gone
        sim.run_until_quiet().unwrap();
        let comps = sim.components();
        if comps.len() > 1 {
            let (a, b) = (comps[0][0], comps[1][0]);
            let st = sim.node(a).unwrap().status(&sim.id(b));
            assert_eq!(st, weft_mesh::Status::Gone, "seed {seed}");
        }
        sim.check().unwrap_or_else(|e| panic!("{e}"));
        sim.heal();
        sim.run_until_quiet().unwrap();
        assert_eq!(sim.components().len(), 1);
        sim.check().unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn quiet_mesh_sends_only_digests() {
    let mut sim = Sim::new(SimConfig::calm(30), 7);
    sim.run_until_quiet().unwrap();
    let before = sim.stats.clone();
    sim.run_ticks(10);
    let msgs = sim.stats.messages - before.messages;
    // One digest per direction of each connection per tick.
    let directed: usize = (0..sim.len())
        .map(|i| sim.node(i).unwrap().peers().len())
        .sum();
    assert_eq!(msgs, 10 * directed as u64);
    sim.check().unwrap();
}

#[test]
fn bytes_per_change_does_not_grow_linearly() {
    let t = Instant::now();
    let b20 = bytes_per_change(20, 1);
    let b200 = bytes_per_change(200, 1);
    let b1000 = bytes_per_change(1000, 1);
    eprintln!(
        "bytes per node per change: 20 → {b20:.0}, 200 → {b200:.0}, 1000 → {b1000:.0} ({:?})",
        t.elapsed()
    );
    assert!(b20 > 0.0);
    assert!(
        b1000 < 5.0 * b20,
        "per-node cost grows with N: {b20} at 20, {b1000} at 1000"
    );
    assert!(
        b200 < 5.0 * b20,
        "per-node cost grows with N: {b20} at 20, {b200} at 200"
    );
}
