//! Docker on weft (docs/docker.md) with real dockerd 20.10 on three lab hosts, each started
//! by `weft lab docker` in its host's namespace: `docker network create -d weft` on every
//! host, containers of different hosts reaching each other by address (IPv4 and IPv6),
//! by name and by alias, `-p`, 100 `docker run --rm` cycles, dockerd and agent restarts,
//! and bad options refused.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn docker(lab: &Lab, host: &str, args: &[&str]) -> (bool, String) {
    lab.lab_cmd("docker", host, args)
}

fn docker_ok(lab: &Lab, host: &str, args: &[&str]) -> String {
    let (ok, out) = docker(lab, host, args);
    assert!(ok, "docker {args:?} on {host}: {out}");
    out.trim().to_string()
}

/// Waits (at most `secs`) until `f` holds.
fn until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// (IPv4, IPv6) of a container on the network.
fn addrs(lab: &Lab, host: &str, name: &str) -> (String, String) {
    let out = docker_ok(
        lab,
        host,
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.GlobalIPv6Address}}{{end}}",
            name,
        ],
    );
    let mut it = out.split_whitespace().map(String::from);
    let v4 = it.next().unwrap_or_default();
    let v6 = it.next().unwrap_or_default();
    assert!(!v4.is_empty() && v6.contains(':'), "{name}: {out:?}");
    (v4, v6)
}

/// The addresses the cluster IPAM holds for Docker on `host`.
fn docker_allocations(lab: &Lab, host: &str) -> Vec<String> {
    let sock = format!("/run/weft-lab/{}/{host}/weft.sock", lab.name);
    let (ok, out) = sh(
        "curl",
        &["-s", "--unix-socket", &sock, "http://weft/ipam/list"],
    );
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect(&out);
    v["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["container_id"]
                .as_str()
                .is_some_and(|c| c.starts_with("docker:"))
        })
        .map(|a| a["address"].as_str().unwrap().to_string())
        .collect()
}

/// The host's underlay IPv4 address.
fn host_addr(lab: &Lab, host: &str) -> String {
    let out = lab
        .exec(host, &["ip", "-4", "-o", "addr", "show", "scope", "global"])
        .1;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .expect(&out)
        .to_string()
}

fn reaches(lab: &Lab, host: &str, from: &str, url: &str, want: &str) -> bool {
    let (ok, out) = docker(
        lab,
        host,
        &["exec", from, "timeout", "3", "wget", "-qO-", url],
    );
    ok && out.contains(want)
}

#[test]
fn docker_containers_of_three_hosts_reach_each_other_by_address_and_name() {
    if !root_or_skip("docker_lab") {
        return;
    }
    let lab = Lab::up_args("dk", 3, "mesh", &["--ipam-pools", "10.32.0.0/12,fd32::/48"]);
    let hosts = ["h1", "h2", "h3"];

    // Bad options get a clear error from `docker network create`.
    let (ok, out) = docker(
        &lab,
        "h1",
        &[
            "network",
            "create",
            "-d",
            "weft",
            "--ipam-driver",
            "weft",
            "-o",
            "mtu=9000",
            "bad",
        ],
    );
    assert!(
        !ok && out.contains("unknown driver option \"mtu\""),
        "{out}"
    );
    let (ok, out) = docker(&lab, "h1", &["network", "create", "-d", "weft", "bad"]);
    assert!(!ok && out.contains("--ipam-driver weft"), "{out}");
    let (ok, out) = docker(
        &lab,
        "h1",
        &[
            "network",
            "create",
            "-d",
            "weft",
            "--ipam-driver",
            "weft",
            "--subnet",
            "192.168.7.0/24",
            "bad",
        ],
    );
    assert!(!ok && out.contains("not a pool of the cluster"), "{out}");

    for h in hosts {
        docker_ok(
            &lab,
            h,
            &[
                "network",
                "create",
                "-d",
                "weft",
                "--ipam-driver",
                "weft",
                "--ipv6",
                "weftnet",
            ],
        );
    }
    docker_ok(
        &lab,
        "h1",
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "weftnet",
            "--network-alias",
            "www",
            "-p",
            "8080:80",
            "weft-busybox",
            "sh",
            "-c",
            "mkdir -p /w && echo hello-from-web > /w/index.html && exec httpd -f -p 80 -h /w",
        ],
    );
    for (h, name) in [("h2", "cli"), ("h3", "third")] {
        docker_ok(
            &lab,
            h,
            &[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "weftnet",
                "weft-busybox",
                "sleep",
                "3600",
            ],
        );
    }
    let (web4, web6) = addrs(&lab, "h1", "web");
    let (cli4, _) = addrs(&lab, "h2", "cli");
    assert_ne!(
        web4, cli4,
        "one cluster IPAM: no two hosts give one address"
    );

    // By address, both families, ping and TCP, across hosts.
    for a in [&web4, &web6] {
        assert!(
            until(10, || docker(
                &lab,
                "h2",
                &["exec", "cli", "ping", "-c1", "-W2", a]
            )
            .0),
            "cli (h2) cannot ping web (h1) at {a}"
        );
    }
    assert!(reaches(
        &lab,
        "h2",
        "cli",
        &format!("http://{web4}/"),
        "hello-from-web"
    ));
    assert!(reaches(
        &lab,
        "h3",
        "third",
        &format!("http://[{web6}]/"),
        "hello-from-web"
    ));

    // By name and by alias, through Docker's resolver and weft's name service.
    for (h, from) in [("h2", "cli"), ("h3", "third")] {
        for name in ["web", "www", "web.weft.local"] {
            assert!(
                until(10, || reaches(
                    &lab,
                    h,
                    from,
                    &format!("http://{name}/"),
                    "hello-from-web"
                )),
                "{from} on {h} cannot reach {name}: {}",
                docker(&lab, h, &["exec", from, "nslookup", name]).1
            );
        }
    }

    // -p: the port published on h1, reached from h2's host and from a container of h3.
    let h1 = host_addr(&lab, "h1");
    assert!(
        until(10, || lab
            .exec(
                "h2",
                &["curl", "-s", "-m", "2", &format!("http://{h1}:8080/")]
            )
            .1
            .contains("hello-from-web")),
        "h1:8080 not published"
    );
    assert!(reaches(
        &lab,
        "h3",
        "third",
        &format!("http://{h1}:8080/"),
        "hello-from-web"
    ));
    // A second container cannot take the same host port.
    let (ok, out) = docker(
        &lab,
        "h1",
        &[
            "run",
            "-d",
            "--name",
            "web2",
            "--network",
            "weftnet",
            "-p",
            "8080:80",
            "weft-busybox",
            "sleep",
            "60",
        ],
    );
    assert!(!ok && out.contains("already published"), "{out}");
    let _ = docker(&lab, "h1", &["rm", "-f", "web2"]);
    // weft publishes fixed host ports only: a random one is refused with the way out.
    let (ok, out) = docker(
        &lab,
        "h1",
        &[
            "run",
            "-d",
            "--name",
            "web3",
            "--network",
            "weftnet",
            "-p",
            "80",
            "weft-busybox",
            "sleep",
            "60",
        ],
    );
    assert!(!ok && out.contains("-p HOSTPORT:80"), "{out}");
    let _ = docker(&lab, "h1", &["rm", "-f", "web3"]);
    // `weft status` shows the plugin, its endpoint and the port it publishes.
    let sock = format!("/run/weft-lab/{}/h1/weft.sock", lab.name);
    let st: Value =
        serde_json::from_str(&weft_ok(&["status", "--socket", &sock, "--json"])).unwrap();
    assert_eq!(st["docker"]["endpoints"], 1, "{st}");
    assert_eq!(st["docker"]["named"], 1, "{st}");
    assert_eq!(st["docker"]["ports"][0], "8080/tcp -> web:80", "{st}");

    // 100 `docker run --rm` cycles leave no address and no link behind.
    let links_before = weft_links(&lab.host_ns("h3")).len();
    let held_before = docker_allocations(&lab, "h3");
    for i in 0..100 {
        let out = docker_ok(
            &lab,
            "h3",
            &[
                "run",
                "--rm",
                "--network",
                "weftnet",
                "weft-busybox",
                "sh",
                "-c",
                "ip -4 -o addr show eth0",
            ],
        );
        // An address of the cluster's pool (10.32.0.0/12: 10.32.x.x to 10.47.x.x).
        let pool: ipnet::Ipv4Net = "10.32.0.0/12".parse().unwrap();
        let addr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.parse::<ipnet::Ipv4Net>().ok());
        assert!(
            addr.is_some_and(|a| pool.contains(&a.addr())),
            "cycle {i}: {out}"
        );
    }
    assert_eq!(weft_links(&lab.host_ns("h3")).len(), links_before);
    assert_eq!(docker_allocations(&lab, "h3"), held_before);

    // dockerd restarts (live restore), then the agent: running containers stay connected.
    let pid_file = format!("/run/weft-lab/{}/h1/docker/docker.pid", lab.name);
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(
        until(30, || nix::sys::signal::kill(pid, None).is_err()),
        "dockerd did not stop"
    );
    assert_eq!(
        docker_ok(&lab, "h1", &["inspect", "-f", "{{.State.Running}}", "web"]),
        "true",
        "web kept running through dockerd's restart"
    );
    weft_ok(&["lab", "agent", "--name", &lab.name, "h1", "restart"]);
    for (h, from) in [("h2", "cli"), ("h3", "third")] {
        assert!(
            until(15, || reaches(
                &lab,
                h,
                from,
                "http://web/",
                "hello-from-web"
            )),
            "{from} on {h} lost web after the restarts: {}\n{}",
            docker(&lab, h, &["exec", from, "nslookup", "web"]).1,
            docker(&lab, h, &["exec", from, "ping", "-c1", "-W1", &web4]).1
        );
    }
    assert!(reaches(
        &lab,
        "h2",
        "cli",
        &format!("http://[{web6}]/"),
        "hello-from-web"
    ));
    assert!(lab
        .exec(
            "h2",
            &["curl", "-s", "-m", "2", &format!("http://{h1}:8080/")]
        )
        .1
        .contains("hello-from-web"));

    // Containers and networks removed: nothing of weft's is left on any host.
    for (h, name) in [("h1", "web"), ("h2", "cli"), ("h3", "third")] {
        docker_ok(&lab, h, &["rm", "-f", name]);
        docker_ok(&lab, h, &["network", "rm", "weftnet"]);
        assert!(
            weft_links(&lab.host_ns(h)).is_empty(),
            "{h}: {:?}",
            weft_links(&lab.host_ns(h))
        );
        assert!(docker_allocations(&lab, h).is_empty(), "{h}");
    }
    let (_, rules) = lab.exec("h1", &["nft", "list", "tables"]);
    assert!(!rules.contains("weft_docker"), "{rules}");
}
