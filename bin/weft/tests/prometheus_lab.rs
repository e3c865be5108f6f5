//! Debian's real Prometheus server, run in a lab host's namespace, scrapes every host's
//! agent (metrics on each host's own addresses, inside its namespace) and answers, through
//! its HTTP API, `up` and weft's series: mesh peers, IPAM, data plane routes and the CNI
//! ADD latency of the containers started on the hosts, all with sane values.

mod common;
use common::*;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const HOSTS: usize = 3;

/// The Prometheus server, ended (SIGKILL, by its pid) when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asks Prometheus's HTTP API (`/api/v1/query`) in lab host `ns`; the result vector.
fn query(lab: &Lab, q: &str) -> Vec<Value> {
    let url = format!("http://127.0.0.1:9090/api/v1/query?query={}", encode(q));
    let (_, out) = lab.exec("h1", &["curl", "-s", "--max-time", "5", &url]);
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// (instance, value) of each series of a query's answer.
fn values(r: &[Value]) -> Vec<(String, f64)> {
    r.iter()
        .map(|s| {
            (
                s["metric"]["instance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            )
        })
        .collect()
}

/// Waits until `q`'s answer satisfies `ok`; returns it.
fn eventually(lab: &Lab, q: &str, ok: impl Fn(&[(String, f64)]) -> bool) -> Vec<(String, f64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = values(&query(lab, q));
        if ok(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("Prometheus never answered {q} as expected; last answer: {last:?}");
}

#[test]
fn prometheus_scrapes_every_agent_and_sees_peers_ipam_routes_and_cni_latency() {
    if !root_or_skip("prometheus_scrapes_every_agent") {
        return;
    }
    let (ok, _) = sh("prometheus", &["--version"]);
    assert!(ok, "prometheus is not installed: run scripts/setup.sh");
    let lab = Lab::up_args("prom", HOSTS, "mesh", &["--metrics-addr", "0.0.0.0:6782"]);
    let dir = format!("/run/weft-lab/{}/prometheus", lab.name);
    std::fs::create_dir_all(format!("{dir}/data")).unwrap();
    let targets: Vec<String> = (1..=HOSTS)
        .map(|i| format!("\"172.30.0.{i}:6782\""))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: weft\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
         static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(format!("{dir}/prometheus.yml"), config).unwrap();
    let log = std::fs::File::create(format!("{dir}/prometheus.log")).unwrap();
    let _prom = Prometheus(
        Command::new("ip")
            .args(["netns", "exec", &lab.host_ns("h1"), "prometheus"])
            .arg(format!("--config.file={dir}/prometheus.yml"))
            .arg(format!("--storage.tsdb.path={dir}/data"))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );

    // A container on every host: a CNI ADD each, through the host's agent.
    for i in 1..=HOSTS {
        weft_ok(&[
            "lab",
            "run",
            "--name",
            &lab.name,
            &format!("h{i}"),
            &format!("c{i}"),
        ]);
    }

    let all_up = |v: &[(String, f64)]| v.len() == HOSTS && v.iter().all(|(_, x)| *x == 1.0);
    let up = eventually(&lab, "up{job=\"weft\"}", all_up);
    let mut instances: Vec<&str> = up.iter().map(|(i, _)| i.as_str()).collect();
    instances.sort();
    assert_eq!(
        instances,
        ["172.30.0.1:6782", "172.30.0.2:6782", "172.30.0.3:6782"]
    );

    // Mesh: each sees the two others up, connected.
    let peers = HOSTS as f64 - 1.0;
    eventually(&lab, "weft_mesh_peers{status=\"up\"}", |v| {
        v.len() == HOSTS && v.iter().all(|(_, x)| *x == peers)
    });
    eventually(&lab, "sum by (instance) (weft_mesh_peer_up)", |v| {
        v.len() == HOSTS && v.iter().all(|(_, x)| *x == peers)
    });
    eventually(&lab, "weft_mesh_received_bytes_total", |v| {
        v.len() == HOSTS && v.iter().all(|(_, x)| *x > 0.0)
    });
    // IPAM: ready, an active block and a used address on every host, the pool's size.
    eventually(&lab, "weft_ipam_ready", all_up);
    eventually(&lab, "weft_ipam_blocks{state=\"active\"}", |v| {
        v.len() == HOSTS && v.iter().all(|(_, x)| *x >= 1.0)
    });
    eventually(&lab, "weft_ipam_addresses{state=\"used\"}", |v| {
        v.len() == HOSTS && v.iter().all(|(_, x)| *x == 1.0)
    });
    eventually(&lab, "weft_ipam_pool_addresses", |v| {
        v.len() == HOSTS && v.iter().all(|(_, x)| *x == 1_048_574.0)
    });
    // Data plane: a route to each other host's block.
    eventually(&lab, "sum by (instance) (weft_dataplane_routes)", |v| {
        v.len() == HOSTS && v.iter().all(|(_, x)| *x >= peers)
    });
    // CNI: one successful ADD per host, with a latency between 0 and 10 s.
    eventually(
        &lab,
        "weft_cni_operations_total{command=\"ADD\",result=\"ok\"}",
        |v| v.len() == HOSTS && v.iter().all(|(_, x)| *x == 1.0),
    );
    eventually(
        &lab,
        "weft_cni_operation_duration_seconds_sum{command=\"ADD\"} / weft_cni_operation_duration_seconds_count{command=\"ADD\"}",
        |v| v.len() == HOSTS && v.iter().all(|(_, x)| *x > 0.0 && *x < 10.0),
    );
    eventually(
        &lab,
        "histogram_quantile(0.99, weft_cni_operation_duration_seconds_bucket{command=\"ADD\"})",
        |v| v.len() == HOSTS && v.iter().all(|(_, x)| *x > 0.0 && *x < 20.0),
    );
    // No errors of the kinds that mean trouble.
    let errors = values(&query(
        &lab,
        "sum by (instance) (weft_errors_total{kind=~\"peer_refused|dataplane_apply|save\"})",
    ));
    assert!(errors.iter().all(|(_, x)| *x == 0.0), "{errors:?}");

    // A removed container is a DEL, counted the same way.
    weft_ok(&["lab", "rm", "--name", &lab.name, "h2", "c2"]);
    eventually(
        &lab,
        "weft_cni_operations_total{command=\"DEL\",result=\"ok\"}",
        |v| v.len() == 1 && v[0].0 == "172.30.0.2:6782" && v[0].1 == 1.0,
    );
}
