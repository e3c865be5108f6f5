//! Two network namespaces joined by a veth "underlay", a TUN device in each, and pod
//! packets between them through the encrypted tunnel (docs/encryption.md): ping with a
//! marker pattern and full-size with DF, a capture on the underlay that never shows the
//! marker, the receiver learning the sender's endpoint, a captured datagram injected again
//! dropped as a replay, a forged one as a bad tag. Needs root; never touches the root
//! namespace (the veth is made inside the namespaces).

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_tun::{Pump, Shared, Tun};
use weft_tunnel::{Config, Drop, Tunnel};

const MARKER: &str = "7765667473656372"; // "weftsecr"

fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("tunnel_lab needs root (it creates network namespaces) and CI is set");
    }
    eprintln!("SKIPPED tunnel_lab: needs root");
    false
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes the test's namespaces when dropped (and at the start, after a crash).
struct Namespaces([&'static str; 2]);

impl Namespaces {
    fn clear(&self) {
        for ns in self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl std::ops::Drop for Namespaces {
    fn drop(&mut self) {
        self.clear();
    }
}

/// tcpdump in a namespace, ended by its pid.
struct Capture(Child);

impl std::ops::Drop for Capture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ns_file(ns: &str) -> std::fs::File {
    std::fs::File::open(format!("/run/netns/{ns}")).expect("namespace file")
}

/// The TUN device and UDP socket of one side, made inside its namespace.
fn side(ns: &str, underlay: &str, me: &str, peer: &str, offload: bool) -> (Tun, UdpSocket) {
    let (tun, udp) = weft_netlink::in_netns(&ns_file(ns), || {
        (
            Tun::create_with("wt0", offload).expect("create the TUN device"),
            UdpSocket::bind((underlay, 6785)).expect("bind"),
        )
    })
    .expect("enter the namespace");
    sh(&["ip", "-n", ns, "link", "set", "wt0", "mtu", "1400", "up"]);
    sh(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{me}/32"),
        "dev",
        "wt0",
    ]);
    sh(&[
        "ip",
        "-n",
        ns,
        "route",
        "add",
        &format!("{peer}/32"),
        "dev",
        "wt0",
    ]);
    (tun, udp)
}

/// The UDP payloads of a pcap file (Ethernet, IPv4 without options, UDP) with their
/// destination address's last byte.
fn payloads(pcap: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let rec = &pcap[at + 16..(at + 16 + len).min(pcap.len())];
        if rec.len() > 42 {
            out.push((rec[33], rec[42..].to_vec()));
        }
        at += 16 + len;
    }
    out
}

/// One iperf3 TCP stream of 2 s from namespace `from` to a server at `to` in namespace
/// `at`, retried for up to 10 s until the server listens (before, the client's report
/// says "connection refused"): the receiver's bits per second.
fn iperf(from: &str, at: &str, to: &str) -> f64 {
    let server = Command::new("ip")
        .args(["netns", "exec", at, "iperf3", "-s", "-1", "-B", to])
        .stdout(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    let _server = Capture(server);
    let t0 = Instant::now();
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", from, "iperf3", "-c", to, "-t", "2", "-J"])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: serde_json::Value = serde_json::from_str(&report).unwrap_or_default();
        if let Some(bits) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return bits;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "iperf3: {report}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pod_packets_cross_the_underlay_only_encrypted() {
    run(false, ["weft-tnl-a", "weft-tnl-b"]);
}

#[test]
fn with_offloads_too() {
    run(true, ["weft-tnl-oa", "weft-tnl-ob"]);
}

fn run(offload: bool, names: [&'static str; 2]) {
    if !root_or_skip() {
        return;
    }
    let [ns_a, ns_b] = names;
    let guard = Namespaces(names);
    guard.clear();
    for ns in [ns_a, ns_b] {
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    sh(&[
        "ip", "-n", ns_a, "link", "add", "ua", "type", "veth", "peer", "name", "ub", "netns", ns_b,
    ]);
    sh(&["ip", "-n", ns_a, "addr", "add", "10.99.0.1/24", "dev", "ua"]);
    sh(&["ip", "-n", ns_b, "addr", "add", "10.99.0.2/24", "dev", "ub"]);
    sh(&["ip", "-n", ns_a, "link", "set", "ua", "up"]);
    sh(&["ip", "-n", ns_b, "link", "set", "ub", "up"]);
    let (tun_a, udp_a) = side(ns_a, "10.99.0.1", "10.100.0.1", "10.100.0.2", offload);
    let (tun_b, udp_b) = side(ns_b, "10.99.0.2", "10.100.0.2", "10.100.0.1", offload);

    let mut ta = Tunnel::new(Config::default());
    ta.add_peer("b".to_string());
    let mut tb = Tunnel::new(Config::default());
    tb.add_peer("a".to_string());
    let (sa, sb) = (Shared::new(ta), Shared::new(tb));
    sa.routes
        .write()
        .unwrap()
        .push(("10.100.0.2/32".parse().unwrap(), "b".to_string()));
    sb.routes
        .write()
        .unwrap()
        .push(("10.100.0.1/32".parse().unwrap(), "a".to_string()));
    // a knows where b is; b learns a from a's authenticated packets.
    sa.endpoints
        .write()
        .unwrap()
        .insert("b".to_string(), "10.99.0.2:6785".parse().unwrap());
    let pa = Pump::start(tun_a, udp_a, sa.clone()).unwrap();
    let pb = Pump::start(tun_b, udp_b, sb.clone()).unwrap();

    // The mesh, in memory: control messages both ways every 20 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let mesh = {
        let (sa, sb, stop) = (sa.clone(), sb.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut to_b = sa.tick();
                let mut to_a = sb.tick();
                while !to_a.is_empty() || !to_b.is_empty() {
                    let mut next_a = Vec::new();
                    for (_, m) in to_b.drain(..) {
                        next_a.extend(sb.control(&"a".to_string(), m));
                    }
                    let mut next_b = Vec::new();
                    for (_, m) in to_a.drain(..) {
                        next_b.extend(sa.control(&"b".to_string(), m));
                    }
                    to_a = next_a;
                    to_b = next_b;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let pcap = std::env::temp_dir().join(format!("{ns_a}-{}.pcap", std::process::id()));
    let mut cap = Capture(
        Command::new("ip")
            .args([
                "netns", "exec", ns_b, "tcpdump", "-U", "-n", "-i", "ub", "-w",
            ])
            .arg(&pcap)
            .args(["udp", "port", "6785"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump"),
    );
    // tcpdump says "listening on" once it captures.
    let t0 = Instant::now();
    let mut err = cap.0.stderr.take().unwrap();
    let mut said = Vec::new();
    while !String::from_utf8_lossy(&said).contains("listening on") {
        let mut b = [0u8; 256];
        let n = std::io::Read::read(&mut err, &mut b).unwrap_or(0);
        said.extend_from_slice(&b[..n]);
        assert!(
            n > 0 && t0.elapsed() < Duration::from_secs(10),
            "tcpdump: {}",
            String::from_utf8_lossy(&said)
        );
    }

    // Keys come within a tick; then ping with the marker, and full size with DF.
    let ping = |args: &[&str]| {
        Command::new("ip")
            .args([
                "netns", "exec", ns_a, "ping", "-c", "3", "-i", "0.2", "-W", "1",
            ])
            .args(args)
            .arg("10.100.0.2")
            .output()
            .unwrap()
    };
    let t0 = Instant::now();
    while !ping(&["-p", MARKER]).status.success() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no encrypted ping within 10 s"
        );
    }
    let full = ping(&["-M", "do", "-s", "1372"]);
    assert!(
        full.status.success(),
        "full-size with DF: {}",
        String::from_utf8_lossy(&full.stdout)
    );
    assert_eq!(
        sb.endpoints.read().unwrap().get("a"),
        Some(&"10.99.0.1:6785".parse().unwrap()),
        "b learned a's endpoint from its packets"
    );

    std::thread::sleep(Duration::from_millis(300));
    drop(cap);
    let captured = std::fs::read(&pcap).unwrap();
    let _ = std::fs::remove_file(&pcap);
    // TCP through the tunnel (with offloads: superpackets cut and joined): an iperf3
    // transfer completes; its rate is printed, not asserted.
    let bits = iperf(ns_a, ns_b, "10.100.0.2");
    assert!(bits > 0.0);
    // The underlay itself, for scale (printed, not asserted).
    let plain = iperf(ns_a, ns_b, "10.99.0.2");
    eprintln!(
        "tunnel (offload {offload}): {:.2} Gbit/s single TCP stream; the underlay veth {:.2}: {:.2} of it",
        bits / 1e9,
        plain / 1e9,
        bits / plain
    );

    let grams = payloads(&captured);
    assert!(grams.len() >= 6, "{} datagrams captured", grams.len());
    assert!(
        !captured.windows(8).any(|w| w == b"weftsecr"),
        "the marker crossed the underlay in clear"
    );
    assert!(
        grams.iter().all(|(_, g)| g[0] == 1 || g[0] == 2),
        "only tunnel datagrams"
    );

    // A captured datagram from a to b, injected again: dropped as a replay; forged: bad tag.
    let from_a = grams
        .iter()
        .find(|(to, g)| *to == 2 && g[0] == 1)
        .map(|(_, g)| g)
        .unwrap()
        .clone();
    let drops = |d: Drop| {
        sb.tunnel
            .lock()
            .unwrap()
            .peer(&"a".to_string())
            .unwrap()
            .counters()
            .drops
            .get(&d)
            .copied()
            .unwrap_or(0)
    };
    let injector =
        weft_netlink::in_netns(&ns_file(ns_a), || UdpSocket::bind("10.99.0.1:0").unwrap()).unwrap();
    let (replays, bad) = (drops(Drop::Replay), drops(Drop::BadTag));
    // A forgery with a counter never seen (the replay check passes, the tag does not).
    let mut forged = from_a.clone();
    forged[8..16].copy_from_slice(&(1u64 << 30).to_be_bytes());
    for g in [&from_a, &forged] {
        injector.send_to(g, "10.99.0.2:6785").unwrap();
    }
    let t0 = Instant::now();
    while (drops(Drop::Replay), drops(Drop::BadTag)) != (replays + 1, bad + 1) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "replay {} (was {replays}), bad tag {} (was {bad})",
            drops(Drop::Replay),
            drops(Drop::BadTag)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    stop.store(true, Ordering::Relaxed);
    mesh.join().unwrap();
    pa.stop();
    pb.stop();
}
