//! Encryption on real namespaces (docs/encryption.md): with `--encrypt on` every pair of
//! containers reaches each other over both families (ping, full-size ping with DF, TCP, a
//! 2 MiB transfer) through weft's tunnel on `mesh`, `partial` (relayed) and `subnets` over
//! an IPv6 underlay (`cross-subnet`: only across the router); a capture in the switch
//! namespace during a transfer of a marker sees the marker and pod addresses with
//! `--encrypt off` and neither with `on`; a captured datagram sent again is dropped as a
//! replay, a changed one as a bad tag; an encrypted TCP connection survives agent
//! restarts; keys rotating every 2 s under an iperf3 transfer drop nothing; offloads off
//! gives the same results; a node with another cluster's secret gets no connection, no
//! key and no route; on `nat` (the last host behind a masquerading router) the host behind
//! NAT is reached through the tunnel whatever the setting, over IPv4 and IPv6 underlays.

mod common;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::capture::*;
use common::dp::*;
use common::*;

const POOLS: &[&str] = &["--ipam-pools", "10.32.0.0/12,fd32::/48"];
const TUNNEL_PORT: u16 = 6785;
const MARKER: &str = "WEFT-CLEAR-TEXT-MARKER-7f3a";

fn lab(name: &str, hosts: usize, topology: &str, extra: &[&str]) -> Lab {
    let mut args = POOLS.to_vec();
    args.extend_from_slice(extra);
    Lab::up_args(name, hosts, topology, &args)
}

/// `www` plus a 2 MiB file of the marker.
fn www_with_marker(lab: &Lab) -> String {
    let dir = www(lab);
    let line = format!("{MARKER}\n");
    std::fs::write(
        format!("{dir}/marker"),
        line.repeat(BIG / line.len()).as_bytes(),
    )
    .unwrap();
    dir
}

fn in_pools(ip: &IpAddr) -> bool {
    ["10.32.0.0/12", "fd32::/48"]
        .iter()
        .any(|p| p.parse::<ipnet::IpNet>().unwrap().contains(ip))
}

fn pod<'a>(pods: &'a [Pod], host: &str) -> &'a Pod {
    pods.iter()
        .find(|p| p.host == host && p.name == "c1")
        .unwrap()
}

/// The frames on switch `sw` while `from` fetches the marker file from `to` (IPv4).
fn transfer_captured(lab: &Lab, sw: &str, from: &Pod, to: &Pod) -> Vec<Frame> {
    let file = format!("/run/weft-lab/{}/{sw}.pcap", lab.name);
    let cap = Capture::start(&format!("weft-{}-{sw}", lab.name), "br0", &file);
    let target = format!("{}/{}", from.host, from.name);
    let (ok, n) = lab.exec(
        &target,
        &[
            "sh",
            "-c",
            &format!("curl -s -m 10 http://{}:8000/marker | wc -c", to.ip),
        ],
    );
    let frames = cap.stop();
    let line = MARKER.len() + 1;
    let size = (BIG / line * line).to_string();
    assert!(
        ok && n.trim() == size,
        "transfer {target} -> {}: {n}",
        to.ip
    );
    frames
}

/// The tunnel drops of `host` by reason, summed over its peers.
fn tunnel_drops(lab: &Lab, host: &str, reason: &str) -> u64 {
    let s = status(lab, host);
    s["dataplane"]["tunnel"]["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["drops"][reason].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn underlay_of(lab: &Lab, host: &str) -> IpAddr {
    let s = status(lab, host);
    s["node"]["addr"]
        .as_str()
        .unwrap()
        .parse::<SocketAddr>()
        .unwrap()
        .ip()
}

/// An agent in the lab's `out` namespace with a secret of its own and `--encrypt on`,
/// dialling h1; a process this test starts and ends by its pid.
struct Rogue {
    child: std::process::Child,
    dir: String,
}

impl Rogue {
    fn start(lab: &Lab) -> Rogue {
        let dir = format!("/run/weft-lab/{}/rogue", lab.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/secret"), "not the cluster's secret at all\n").unwrap();
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("weft-{}-out", lab.name),
                WEFT,
                "agent",
            ])
            .args(["--name", "rogue", "--listen", "172.30.0.250:6783"])
            .args(["--peer", "172.30.0.1:6783", "--encrypt", "on"])
            .args(["--ipam-pools", "10.32.0.0/12,fd32::/48"])
            .arg("--secret-file")
            .arg(format!("{dir}/secret"))
            .arg("--data-dir")
            .arg(format!("{dir}/data"))
            .arg("--socket")
            .arg(format!("{dir}/weft.sock"))
            .args([
                "--docker-plugin",
                "off",
                "--metrics-addr",
                "off",
                "--dns",
                "off",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(format!("{dir}/agent.log")).unwrap())
            .spawn()
            .expect("start the rogue agent");
        Rogue { child, dir }
    }

    fn status(&self) -> serde_json::Value {
        let sock = format!("{}/weft.sock", self.dir);
        let out = std::process::Command::new(WEFT)
            .args(["status", "--json", "--socket", &sock])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "rogue status: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                std::fs::read_to_string(format!("{}/agent.log", self.dir)).unwrap_or_default()
            )
        })
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

#[test]
fn without_encryption_the_underlay_sees_the_marker_and_pod_addresses() {
    if !root_or_skip("encryption off, captured") {
        return;
    }
    let lab = lab("eno", 2, "mesh", &["--encrypt", "off"]);
    let www = www_with_marker(&lab);
    let pods = pods(&lab, 2, &www);
    all_reach_all(&lab, &pods);
    let frames = transfer_captured(&lab, "sw1", pod(&pods, "h1"), pod(&pods, "h2"));
    assert!(
        seen(&frames, MARKER.as_bytes()),
        "the capture works: the marker is in clear"
    );
    assert!(
        frames.iter().any(|f| in_pools(&f.src) || in_pools(&f.dst)),
        "pod addresses are the outer addresses of direct routes"
    );
    let s = status(&lab, "h1");
    assert_eq!(
        s["dataplane"]["tunnel"]["device"],
        serde_json::Value::Null,
        "{s}"
    );
}

#[test]
fn mesh_encrypted_carries_everything_leaks_nothing_refuses_replays_and_survives_restarts() {
    if !root_or_skip("encryption on a mesh") {
        return;
    }
    let lab = lab("enm", 3, "mesh", &["--encrypt", "on"]);
    let www = www_with_marker(&lab);
    let pods = pods(&lab, 3, &www);
    all_reach_all(&lab, &pods);

    // Every route to another host goes into the tunnel; containers get its MTU.
    let s = status(&lab, "h1");
    assert_eq!(s["dataplane"]["pod_mtu"], 1440, "{s}");
    for (dst, mode, _) in dp_routes(&lab, "h1") {
        assert_eq!(mode, "tunnel", "{dst}");
    }
    let t = &s["dataplane"]["tunnel"];
    assert_eq!(t["encrypt"], "on", "{t}");
    let peers = t["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{t}");
    for p in peers {
        assert_eq!(p["encrypted"], true, "{p}");
        assert!(p["send_key_age_ms"].is_u64(), "a key: {p}");
        assert!(
            p["sent"].as_u64().unwrap() > 0 && p["received"].as_u64().unwrap() > 0,
            "{p}"
        );
    }

    // The underlay sees only tunnel datagrams between host addresses, never the marker.
    let (h1, h2) = (pod(&pods, "h1"), pod(&pods, "h2"));
    let frames = transfer_captured(&lab, "sw1", h1, h2);
    assert!(
        !seen(&frames, MARKER.as_bytes()),
        "the marker crossed the underlay in clear"
    );
    let leaked: Vec<_> = frames
        .iter()
        .filter(|f| in_pools(&f.src) || in_pools(&f.dst))
        .collect();
    assert!(
        leaked.is_empty(),
        "pod addresses on the underlay: {:?}",
        &leaked[..leaked.len().min(3)]
    );
    let tunnel: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.udp.as_ref().is_some_and(|(_, d, _)| *d == TUNNEL_PORT))
        .collect();
    // The whole body crossed in them, however many datagrams the offloads made of it (a
    // faster machine coalesces more segments per datagram: a count would depend on it).
    let carried: usize = tunnel
        .iter()
        .filter_map(|f| f.udp.as_ref().map(|(_, _, p)| p.len()))
        .sum();
    let body = BIG / (MARKER.len() + 1) * (MARKER.len() + 1);
    assert!(
        carried >= body,
        "{} tunnel datagrams carried {carried} bytes, the body is {body}",
        tunnel.len()
    );

    // A captured data datagram (a single one: small, whole) sent again is a replay; a
    // changed one fails its tag. Both are only counted.
    let h2_addr = underlay_of(&lab, "h2");
    let sample = tunnel
        .iter()
        .filter(|f| f.dst == h2_addr)
        .filter_map(|f| f.udp.as_ref().map(|(_, _, p)| p.clone()))
        .find(|p| p.first() == Some(&1) && (48..300).contains(&p.len()))
        .expect("a small data datagram to h2");
    let to = SocketAddr::new(h2_addr, TUNNEL_PORT);
    let replays = tunnel_drops(&lab, "h2", "replay");
    send_udp_from("weft-enm-out", to, sample.clone());
    let counted = wait_for(Duration::from_secs(5), || {
        (tunnel_drops(&lab, "h2", "replay") > replays).then_some(())
    });
    assert!(counted.is_some(), "the replay was not counted");
    let bad = tunnel_drops(&lab, "h2", "bad_tag");
    let mut forged = sample;
    *forged.last_mut().unwrap() ^= 1;
    // A fresh counter (below the message limit), so the window does not refuse it first.
    forged[8..16].copy_from_slice(&(1u64 << 39).to_be_bytes());
    send_udp_from("weft-enm-out", to, forged);
    let counted = wait_for(Duration::from_secs(5), || {
        (tunnel_drops(&lab, "h2", "bad_tag") > bad).then_some(())
    });
    assert!(counted.is_some(), "the forged datagram was not counted");
    // The sender's endpoint stays where it was: only authenticated packets move it.
    let s2 = status(&lab, "h2");
    for p in s2["dataplane"]["tunnel"]["peers"].as_array().unwrap() {
        assert!(
            !p["endpoint"]
                .as_str()
                .unwrap_or_default()
                .starts_with("172.30.0.250"),
            "{p}"
        );
    }

    // A node of another cluster (its own secret) next to h1 gets nothing: no mesh
    // connection, so no key; no route to it; nothing it sends is opened.
    let rogue = Rogue::start(&lab);
    std::thread::sleep(Duration::from_secs(4));
    let s1 = status(&lab, "h1");
    let names: Vec<&str> = s1["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["h2", "h3"], "{s1}");
    let rs = rogue.status();
    assert!(
        rs["peers"].as_array().unwrap().is_empty(),
        "the rogue learned of the cluster: {rs}"
    );
    assert!(
        rs["dataplane"]["tunnel"]["peers"]
            .as_array()
            .is_none_or(|p| p.is_empty()),
        "{rs}"
    );
    drop(rogue);

    // An encrypted TCP connection outlives both agents' restarts (the tunnel device
    // persists, keys are offered again as the mesh reconnects).
    long_connection_survives(&lab, false, || {
        for h in ["h1", "h2"] {
            agent(&lab, h, "restart");
        }
    });
    all_reach_all(&lab, &pods);
}

#[test]
fn partial_relays_encrypted_and_rotation_under_load_with_offloads_off_drops_nothing() {
    if !root_or_skip("encryption through a relay, rotating") {
        return;
    }
    let lab = lab(
        "enp",
        4,
        "partial",
        &[
            "--encrypt",
            "on",
            "--tunnel-offload",
            "off",
            "--tunnel-rotate-secs",
            "2",
        ],
    );
    let www = www_with_marker(&lab);
    let pods = pods(&lab, 4, &www);
    all_reach_all(&lab, &pods);
    // Without offloads, the same on the underlay: no marker, no pod address.
    let frames = transfer_captured(&lab, "sw1", pod(&pods, "h1"), pod(&pods, "h2"));
    assert!(
        !seen(&frames, MARKER.as_bytes()),
        "the marker crossed in clear"
    );
    assert!(!frames.iter().any(|f| in_pools(&f.src) || in_pools(&f.dst)));
    let s = status(&lab, "h1");
    let off = &s["dataplane"]["tunnel"]["offload"];
    assert_eq!(
        (off["tso"].as_bool(), off["gso"].as_bool()),
        (Some(false), Some(false)),
        "{s}"
    );
    // h1 reaches h4 through h3, in the tunnel both hops.
    let h4 = pod(&pods, "h4");
    for ip in [h4.ip.as_str(), h4.ip6.as_deref().unwrap()] {
        assert_eq!(
            route_to(&lab, "h1", ip),
            Some(("tunnel".into(), "h3".into())),
            "{:?}",
            dp_routes(&lab, "h1")
        );
    }

    // Keys rotate every 2 s under an 8 s transfer: every second carries data, and no
    // packet is refused for its key at either end.
    let (h1, h2) = (pod(&pods, "h1"), pod(&pods, "h2"));
    let reasons = ["no_key", "unknown_key", "replay", "bad_tag"];
    let before: Vec<u64> = ["h1", "h2"]
        .iter()
        .flat_map(|h| reasons.iter().map(move |r| (*h, *r)))
        .map(|(h, r)| tunnel_drops(&lab, h, r))
        .collect();
    let out = weft_ok(&[
        "lab", "run", "--name", "enp", "--json", "h2", "iperf", "--", "iperf3", "-s", "-1",
    ]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    let server = st["ips"][0].as_str().unwrap().to_string();
    let _ = h2;
    let report = wait_for(Duration::from_secs(20), || {
        let (ok, t) = lab.exec(
            &format!("{}/{}", h1.host, h1.name),
            &["iperf3", "-c", &server, "-t", "8", "-J"],
        );
        (ok && t.contains("\"intervals\"")).then_some(t)
    })
    .expect("iperf3 ran");
    let j: serde_json::Value = serde_json::from_str(&report).unwrap();
    let intervals = j["intervals"].as_array().unwrap();
    assert!(intervals.len() >= 7, "{report}");
    for i in intervals {
        let bytes = i["sum"]["bytes"].as_u64().unwrap_or(0);
        assert!(bytes > 0, "a second without delivery: {i}");
    }
    let after: Vec<u64> = ["h1", "h2"]
        .iter()
        .flat_map(|h| reasons.iter().map(move |r| (*h, *r)))
        .map(|(h, r)| tunnel_drops(&lab, h, r))
        .collect();
    assert_eq!(
        before, after,
        "drops by reason during the transfer ({reasons:?} on h1, h2)"
    );
    // The keys in use are younger than the transfer.
    let s = status(&lab, "h1");
    for p in s["dataplane"]["tunnel"]["peers"].as_array().unwrap() {
        let age = p["send_key_age_ms"].as_u64().unwrap();
        assert!(age < 4_000, "key of {} is {age} ms old", p["name"]);
    }
}

#[test]
fn cross_subnet_over_an_ipv6_underlay_encrypts_only_across_the_router() {
    if !root_or_skip("cross-subnet encryption") {
        return;
    }
    let lab = lab(
        "ens",
        4,
        "subnets",
        &["--encrypt", "cross-subnet", "--underlay", "ipv6"],
    );
    let www = www_with_marker(&lab);
    let pods = pods(&lab, 4, &www);
    all_reach_all(&lab, &pods);
    let (h1, h2, h3) = (pod(&pods, "h1"), pod(&pods, "h2"), pod(&pods, "h3"));
    for ip in [h2.ip.as_str(), h2.ip6.as_deref().unwrap()] {
        assert_eq!(route_to(&lab, "h1", ip).unwrap().0, "route", "{ip}");
    }
    for ip in [h3.ip.as_str(), h3.ip6.as_deref().unwrap()] {
        assert_eq!(
            route_to(&lab, "h1", ip),
            Some(("tunnel".into(), "h3".into())),
            "{ip}"
        );
    }
    // IPv6 underlay: 80 bytes of tunnel headers.
    assert_eq!(status(&lab, "h1")["dataplane"]["pod_mtu"], 1420);
    // On h1's segment: the marker to h2 in clear, to h3 never.
    let same = transfer_captured(&lab, "sw1", h1, h2);
    assert!(
        seen(&same, MARKER.as_bytes()),
        "on the segment: plain routes"
    );
    let across = transfer_captured(&lab, "sw1", h1, h3);
    assert!(
        !seen(&across, MARKER.as_bytes()),
        "across the router: encrypted"
    );
    assert!(!across.iter().any(|f| in_pools(&f.src) || in_pools(&f.dst)));
}

#[test]
fn a_host_behind_nat_is_reached_through_the_tunnel_even_without_encryption() {
    if !root_or_skip("a host behind NAT") {
        return;
    }
    let lab = lab("enn", 3, "nat", &["--encrypt", "off"]);
    let www = www(&lab);
    // The containers' MTU is the tunnel's once a peer needs it; one created before h1
    // has seen h3 behind the router keeps the larger MTU (docs/encryption.md, "MTU"):
    // the pods come once every host gives containers the tunnel's MTU (1500 less 60).
    let deadline = Instant::now() + Duration::from_secs(30);
    for h in ["h1", "h2", "h3"] {
        while status(&lab, h)["dataplane"]["pod_mtu"] != 1440 {
            assert!(
                Instant::now() < deadline,
                "{h} never gave containers the tunnel's MTU: {}",
                status(&lab, h)["dataplane"]
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let pods = pods(&lab, 3, &www);
    all_reach_all(&lab, &pods);
    let (h2, h3) = (pod(&pods, "h2"), pod(&pods, "h3"));
    // Between public hosts the kernel's paths; to and from h3 only the tunnel.
    assert_eq!(route_to(&lab, "h1", &h2.ip).unwrap().0, "route");
    for ip in [h3.ip.as_str(), h3.ip6.as_deref().unwrap()] {
        assert_eq!(
            route_to(&lab, "h1", ip),
            Some(("tunnel".into(), "h3".into()))
        );
    }
    for (dst, mode, _) in dp_routes(&lab, "h3") {
        assert_eq!(mode, "tunnel", "{dst}");
    }
    // h1 saw h3's connection come from the router and learned h3's endpoint from its
    // packets: the router's public address, not the private one h3 advertises.
    let s = status(&lab, "h1");
    let t = &s["dataplane"]["tunnel"];
    assert_eq!(t["nat"], serde_json::json!(["h3"]), "{t}");
    let ep = t["peers"][0]["endpoint"].as_str().unwrap_or_default();
    assert!(ep.starts_with("172.30.1.254:"), "{t}");
}

#[test]
fn a_host_behind_nat_over_an_ipv6_underlay_is_reached_encrypted() {
    if !root_or_skip("a host behind NAT66, encrypted") {
        return;
    }
    let lab = lab("en6", 3, "nat", &["--encrypt", "on", "--underlay", "ipv6"]);
    let www = www(&lab);
    let pods = pods(&lab, 3, &www);
    all_reach_all(&lab, &pods);
    for h in ["h1", "h2", "h3"] {
        for (dst, mode, _) in dp_routes(&lab, h) {
            assert_eq!(mode, "tunnel", "{h}: {dst}");
        }
    }
    let s = status(&lab, "h2");
    let t = &s["dataplane"]["tunnel"];
    let to_h3 = t["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "h3")
        .unwrap_or_else(|| panic!("{t}"));
    assert!(
        to_h3["endpoint"]
            .as_str()
            .unwrap_or_default()
            .starts_with("[fd30:1::fe]:"),
        "{t}"
    );
}
