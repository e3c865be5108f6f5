//! The policy truth table in a lab: pods a, b, c in namespaces x, y, z on three hosts
//! (each host holds one pod of each name), every pod serving TCP and UDP on ports 80 and
//! 81 (servers in this test process, on threads inside the pods' namespaces) and
//! receiving SCTP (this kernel has no SCTP sockets: probes are raw SCTP INIT packets,
//! and a raw socket in the destination sees which arrive). Every probe of every pair is
//! compared with the reference engine's verdict (`weft_policy`), and the table is probed
//! again until it matches or a deadline passes (policies take a moment to arrive).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_policy::engine::{verdict, Flow};
use weft_policy::{gen, World};

use super::*;

pub const PORTS: [u16; 2] = [80, 81];
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const PROTOS: [u8; 3] = [TCP, UDP, SCTP];

/// How long a probe waits for its answer.
const PROBE_WAIT: Duration = Duration::from_millis(600);

#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: String,
    pub name: String,
    pub host: String,
    pub netns: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            self.v6
        } else {
            self.v4
        }
    }
}

/// Which host holds NS/POD: a Latin square, so no host has two pods of one name.
pub fn host_of(ns: &str, pod: &str) -> String {
    let i = gen::NAMESPACES.iter().position(|n| *n == ns).unwrap();
    let j = gen::PODS.iter().position(|p| *p == pod).unwrap();
    format!("h{}", (i + j) % 3 + 1)
}

/// The namespaces' objects: `ns=NAME`, as the engine's world has them.
pub fn namespaces_yaml() -> String {
    gen::NAMESPACES
        .iter()
        .map(|n| format!("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {n}\n  labels: {{ns: {n}}}\n"))
        .collect()
}

/// Starts the nine pods (`weft lab run` with namespace, labels and named ports).
pub fn start_pods(lab: &Lab) -> Vec<Pod> {
    let mut pods = Vec::new();
    for ns in gen::NAMESPACES {
        for p in gen::PODS {
            let host = host_of(ns, p);
            let label = format!("pod={p}");
            let mut args = vec![
                "lab",
                "run",
                "--name",
                &lab.name,
                "--json",
                "--namespace",
                ns,
                "--label",
                &label,
            ];
            let ports: Vec<String> = gen::named_ports()
                .iter()
                .map(|np| format!("{}={}/{}", np.name, np.port, np.protocol))
                .collect();
            for np in &ports {
                args.push("--port");
                args.push(np);
            }
            args.push(&host);
            args.push(p);
            let out = weft_ok(&args);
            let v: Value = serde_json::from_str(&out).expect("lab run --json");
            let ips: Vec<IpAddr> = v["ips"]
                .as_array()
                .expect("ips")
                .iter()
                .map(|i| i.as_str().unwrap().parse().unwrap())
                .collect();
            let v4 = *ips.iter().find(|a| a.is_ipv4()).expect("an IPv4 address");
            let v6 = *ips.iter().find(|a| a.is_ipv6()).expect("an IPv6 address");
            pods.push(Pod {
                ns: ns.into(),
                name: p.into(),
                netns: v["netns"].as_str().unwrap().into(),
                host,
                v4,
                v6,
            });
        }
    }
    pods
}

/// The engine's world of these pods, with `yaml`'s policies.
pub fn world(pods: &[Pod], yaml: &str) -> World {
    let policies = if yaml.trim().is_empty() {
        vec![]
    } else {
        weft_policy::parse_objects(yaml, "default")
            .expect("policies parse")
            .into_iter()
            .filter_map(|o| match o {
                weft_policy::Object::NetworkPolicy(p) => Some(p),
                _ => None,
            })
            .collect()
    };
    gen::truth_world(
        |ns, p| {
            let pod = pods.iter().find(|x| x.ns == ns && x.name == p).unwrap();
            vec![pod.v4, pod.v6]
        },
        policies,
    )
}

fn enter(netns: &str) {
    let f = weft_netlink::open_netns(std::path::Path::new(&format!("/run/netns/{netns}")))
        .expect("open netns");
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// A raw SCTP socket of `family` (this kernel has no SCTP stack; raw sockets still send and
/// receive the protocol's packets).
fn raw_sctp(v6: bool) -> OwnedFd {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_NONBLOCK, 132) };
    assert!(
        fd >= 0,
        "raw SCTP socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// CRC32c (Castagnoli), as SCTP's checksum.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP INIT from port 40000 to `port` carrying `tag` as its initiate tag.
fn sctp_init(port: u16, tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag of an INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, below
    p.extend_from_slice(&[1, 0, 0, 20]); // INIT, flags, length 20
    p.extend_from_slice(&tag.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&tag.to_be_bytes()); // initial TSN
    let c = crc32c(&p);
    p[8..12].copy_from_slice(&c.to_le_bytes());
    p
}

/// The initiate tag of an SCTP INIT in `buf` (`ip` says whether an IPv4 header leads).
fn init_tag(buf: &[u8], ip: bool) -> Option<u32> {
    let off = if ip {
        usize::from(buf.first()? & 0x0f) * 4
    } else {
        0
    };
    let s = buf.get(off..off + 20)?;
    (s[12] == 1).then(|| u32::from_be_bytes([s[16], s[17], s[18], s[19]]))
}

/// Servers in every pod until dropped.
pub struct Servers {
    stop: Arc<AtomicBool>,
    /// SCTP INIT tags each pod received, by pod index.
    pub sctp: Arc<Mutex<Vec<HashSet<u32>>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub fn serve(pods: &[Pod]) -> Servers {
    let stop = Arc::new(AtomicBool::new(false));
    let sctp = Arc::new(Mutex::new(vec![HashSet::new(); pods.len()]));
    let mut threads = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for (i, pod) in pods.iter().enumerate() {
        let (stop, sctp, netns, ready) = (
            stop.clone(),
            sctp.clone(),
            pod.netns.clone(),
            ready_tx.clone(),
        );
        threads.push(std::thread::spawn(move || {
            enter(&netns);
            let tcp: Vec<TcpListener> = PORTS
                .iter()
                .map(|p| TcpListener::bind(("::", *p)).expect("tcp listen"))
                .collect();
            let udp: Vec<UdpSocket> = PORTS
                .iter()
                .map(|p| UdpSocket::bind(("::", *p)).expect("udp bind"))
                .collect();
            for l in &tcp {
                l.set_nonblocking(true).unwrap();
            }
            for u in &udp {
                u.set_nonblocking(true).unwrap();
            }
            let raw = [raw_sctp(false), raw_sctp(true)];
            ready.send(()).unwrap();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                for l in &tcp {
                    while let Ok((mut s, _)) = l.accept() {
                        let _ = s.write_all(b"ok");
                    }
                }
                for u in &udp {
                    while let Ok((n, from)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(&buf[..n], from);
                    }
                }
                for (k, r) in raw.iter().enumerate() {
                    loop {
                        // SAFETY: recv(2) into a buffer we own, of its length.
                        let n = unsafe {
                            libc::recv(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                        };
                        if n <= 0 {
                            break;
                        }
                        if let Some(tag) = init_tag(&buf[..n as usize], k == 0) {
                            sctp.lock().unwrap()[i].insert(tag);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        }));
    }
    for _ in pods {
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("servers listening");
    }
    Servers {
        stop,
        sctp,
        threads,
    }
}

static TAG: AtomicU32 = AtomicU32::new(1);

/// One probe: (source index, destination index, protocol, port).
pub type Probe = (usize, usize, u8, u16);

/// Every probe of the table over IPv4 (or IPv6): does it get through?
pub fn probe_all(pods: &[Pod], servers: &Servers, v6: bool) -> BTreeMap<Probe, bool> {
    let out = Arc::new(Mutex::new(BTreeMap::new()));
    let mut sctp_sent: Vec<(Probe, u32)> = Vec::new();
    std::thread::scope(|s| {
        for (i, src) in pods.iter().enumerate() {
            let mut sent = Vec::new();
            for (j, _) in pods.iter().enumerate() {
                for port in PORTS {
                    sent.push(((i, j, SCTP, port), TAG.fetch_add(1, Ordering::SeqCst)));
                }
            }
            sctp_sent.extend(sent.iter().cloned());
            let out = out.clone();
            let netns = src.netns.clone();
            s.spawn(move || {
                enter(&netns);
                // Threads started here are in the pod's namespace too.
                std::thread::scope(|s2| {
                    for (j, dst) in pods.iter().enumerate() {
                        let addr = dst.addr(v6);
                        for port in PORTS {
                            let o = out.clone();
                            s2.spawn(move || {
                                let ok = tcp_probe(SocketAddr::new(addr, port));
                                o.lock().unwrap().insert((i, j, TCP, port), ok);
                            });
                            let o = out.clone();
                            s2.spawn(move || {
                                let ok = udp_probe(SocketAddr::new(addr, port));
                                o.lock().unwrap().insert((i, j, UDP, port), ok);
                            });
                        }
                    }
                    let raw = raw_sctp(v6);
                    for ((_, j, _, port), tag) in &sent {
                        let pkt = sctp_init(*port, *tag);
                        let to = SocketAddr::new(pods[*j].addr(v6), 0);
                        send_raw(&raw, &pkt, to);
                    }
                });
            });
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut out = Arc::try_unwrap(out).unwrap().into_inner().unwrap();
    let seen = servers.sctp.lock().unwrap();
    for ((i, j, p, port), tag) in sctp_sent {
        out.insert((i, j, p, port), seen[j].contains(&tag));
    }
    out
}

fn send_raw(fd: &OwnedFd, pkt: &[u8], to: SocketAddr) {
    match to.ip() {
        IpAddr::V4(a) => {
            // SAFETY: an all-zero sockaddr_in is valid; the fields are then set.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            // SAFETY: sendto(2) with a buffer and an address we own, of their lengths.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
            }
        }
        IpAddr::V6(a) => {
            // SAFETY: an all-zero sockaddr_in6 is valid; the fields are then set.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = a.octets();
            // SAFETY: as above.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                );
            }
        }
    }
}

fn tcp_probe(to: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&to, PROBE_WAIT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(PROBE_WAIT));
    let mut b = [0u8; 2];
    s.read_exact(&mut b).is_ok() && &b == b"ok"
}

fn udp_probe(to: SocketAddr) -> bool {
    let bind = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let Ok(u) = UdpSocket::bind(bind) else {
        return false;
    };
    let _ = u.set_read_timeout(Some(PROBE_WAIT));
    if u.send_to(b"probe", to).is_err() {
        return false;
    }
    let mut b = [0u8; 16];
    matches!(u.recv_from(&mut b), Ok((5, from)) if from.ip() == to.ip())
}

/// What the engine expects of every probe.
pub fn expected(pods: &[Pod], world: &World, v6: bool) -> BTreeMap<Probe, bool> {
    let mut out = BTreeMap::new();
    for (i, s) in pods.iter().enumerate() {
        for (j, d) in pods.iter().enumerate() {
            for proto in PROTOS {
                for port in PORTS {
                    let f = Flow {
                        src: s.addr(v6),
                        dst: d.addr(v6),
                        proto,
                        port,
                    };
                    out.insert((i, j, proto, port), verdict(world, &f).allowed);
                }
            }
        }
    }
    out
}

fn proto_name(p: u8) -> &'static str {
    match p {
        TCP => "TCP",
        UDP => "UDP",
        _ => "SCTP",
    }
}

/// The probes that differ, as lines for people, with the engine's reason.
pub fn differences(
    pods: &[Pod],
    world: &World,
    want: &BTreeMap<Probe, bool>,
    got: &BTreeMap<Probe, bool>,
    v6: bool,
) -> Vec<String> {
    let mut v = Vec::new();
    for (k, w) in want {
        let g = got.get(k).copied().unwrap_or(false);
        if g != *w {
            let (i, j, proto, port) = *k;
            let f = Flow {
                src: pods[i].addr(v6),
                dst: pods[j].addr(v6),
                proto,
                port,
            };
            v.push(format!(
                "{} -> {} {} {port}: {} but the engine says {}",
                pods[i].key(),
                pods[j].key(),
                proto_name(proto),
                if g {
                    "got through"
                } else {
                    "did not get through"
                },
                verdict(world, &f).explain(world, &f)
            ));
        }
    }
    v
}

/// Probes until the lab matches the engine for `world` (both families when `v6`), or
/// `limit` passes; returns the time it took, or the differences of the last round.
pub fn converge(
    pods: &[Pod],
    servers: &Servers,
    world: &World,
    families: &[bool],
    limit: Duration,
) -> Result<Duration, Vec<String>> {
    let start = Instant::now();
    let want: Vec<BTreeMap<Probe, bool>> = families
        .iter()
        .map(|v6| expected(pods, world, *v6))
        .collect();
    loop {
        let mut diffs = Vec::new();
        for (k, v6) in families.iter().enumerate() {
            let got = probe_all(pods, servers, *v6);
            diffs.extend(differences(pods, world, &want[k], &got, *v6));
        }
        if diffs.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(diffs);
        }
    }
}

/// `weft apply -f -` on `host` with `yaml`.
pub fn apply(lab: &Lab, host: &str, yaml: &str, delete: bool) {
    let path = format!(
        "/run/weft-lab/{}/policy-{}.yaml",
        lab.name,
        std::process::id()
    );
    std::fs::write(&path, yaml).unwrap();
    let verb = if delete { "delete" } else { "apply" };
    let (ok, out) = lab.exec(host, &["weft", verb, "-f", &path]);
    assert!(ok, "weft {verb} on {host}: {out}\n{yaml}");
}
