//! The encrypted tunnel's Linux side (docs/encryption.md): a TUN device, a UDP socket and
//! two threads that move packets between them through [`weft_tunnel::Tunnel`]. Packets
//! read from the device go to the peer whose prefixes hold their destination, sealed;
//! datagrams are opened, their sender's endpoint learned from them (a peer behind NAT is
//! reached where its packets come from), and written to the device only if their source
//! is one of that peer's prefixes. Whatever has no key, no peer or no route is dropped and
//! counted, never sent in clear.
//!
//! With offloads (`Tun::create_with(.., true)`) the device hands over TCP superpackets
//! (`IFF_VNET_HDR`, TSO), cut into segments that are sealed one by one and leave in one
//! UDP GSO system call; received batches (UDP GRO) are opened and joined back into
//! superpackets (docs/encryption.md, "Batching").

mod batch;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use weft_tunnel::offload::{self, VnetHdr, VNET_HDR_LEN};
use weft_tunnel::packet::{Kind, HEADER_LEN, OVERHEAD};
use weft_tunnel::{Control, Drop, Tunnel};

/// A TUN device (layer 3, no packet information header).
pub struct Tun {
    file: File,
    name: String,
    offload: bool,
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tun {
    /// Creates (or attaches to) the TUN device `name` in the calling thread's network
    /// namespace.
    pub fn create(name: &str) -> std::io::Result<Tun> {
        Tun::create_with(name, false)
    }

    /// As [`Tun::create`]; with `offload`, the device hands over and takes TCP
    /// superpackets (`IFF_VNET_HDR`, TSO): every read and write then starts with a
    /// `virtio_net_hdr`. Returns an error if the kernel refuses the offloads.
    pub fn create_with(name: &str, offload: bool) -> std::io::Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name:?} is not an interface name"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI | if offload { libc::IFF_VNET_HDR } else { 0 })
                as libc::c_short,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one (name of
        // IFNAMSIZ bytes, NUL-terminated as `name` is shorter, then the flags, padded to
        // the kernel's 40 bytes) and lives across the call; the fd is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if offload {
            let flags = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
            // SAFETY: TUNSETOFFLOAD takes its flags as the argument itself; the fd is an
            // open TUN device.
            let rc = unsafe {
                libc::ioctl(
                    file.as_raw_fd(),
                    libc::TUNSETOFFLOAD,
                    flags as libc::c_ulong,
                )
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Tun {
            file,
            name: name.to_string(),
            offload,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the device hands over superpackets (`IFF_VNET_HDR` and TSO are on).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// With `persist`, the device outlives this file descriptor (and the process): its
    /// routes stay and, with no reader, the kernel drops what they carry instead of
    /// sending it elsewhere. A later [`Tun::create_with`] of the same name attaches to it.
    pub fn set_persist(&self, persist: bool) -> std::io::Result<()> {
        // SAFETY: TUNSETPERSIST takes its flag as the argument itself; the fd is an open
        // TUN device.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETPERSIST,
                libc::c_ulong::from(persist),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Counters of the pump (drops also live per peer in the tunnel).
#[derive(Debug, Default)]
pub struct PumpCounters {
    /// Packets read from the device with no peer for their destination.
    pub no_route: AtomicU64,
    /// Packets to a peer with no known endpoint.
    pub no_endpoint: AtomicU64,
    /// Opened packets whose source is not one of their sender's prefixes.
    pub spoofed: AtomicU64,
    /// Datagrams the tunnel refused (by reason in the tunnel's per-peer counters).
    pub refused: AtomicU64,
}

/// What the threads share with their owner: the tunnel, where each peer's prefixes and
/// endpoint are, and counters.
pub struct Shared<P: Ord + Clone> {
    /// The protocol state.
    pub tunnel: Mutex<Tunnel<P>>,
    /// (prefix, peer): the peer that holds each prefix.
    pub routes: RwLock<Vec<(IpNet, P)>>,
    /// Where each peer is reached (learned from its packets too).
    pub endpoints: RwLock<BTreeMap<P, SocketAddr>>,
    /// The pump's own counters.
    pub counters: PumpCounters,
    /// UDP GSO is used on send (off when the kernel refused it).
    pub gso: AtomicBool,
    /// UDP GRO is on for the socket.
    pub gro: AtomicBool,
    /// The device takes superpackets (off when it refused one).
    pub tso: AtomicBool,
    start: Instant,
    stop: AtomicBool,
}

impl<P: Ord + Clone> Shared<P> {
    /// An empty state around `tunnel`.
    pub fn new(tunnel: Tunnel<P>) -> Arc<Shared<P>> {
        Arc::new(Shared {
            tunnel: Mutex::new(tunnel),
            routes: RwLock::new(Vec::new()),
            endpoints: RwLock::new(BTreeMap::new()),
            counters: PumpCounters::default(),
            gso: AtomicBool::new(false),
            gro: AtomicBool::new(false),
            tso: AtomicBool::new(false),
            start: Instant::now(),
            stop: AtomicBool::new(false),
        })
    }

    /// Milliseconds since this state was made: the tunnel's clock.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The tunnel's periodic work; returns the messages for the mesh.
    pub fn tick(&self) -> Vec<(P, Control)> {
        let now = self.now();
        self.tunnel
            .lock()
            .expect("tunnel lock")
            .tick(now, &mut random)
    }

    /// A message from peer `p` over the mesh; returns answers for the mesh.
    pub fn control(&self, p: &P, msg: Control) -> Vec<(P, Control)> {
        let now = self.now();
        self.tunnel
            .lock()
            .expect("tunnel lock")
            .control(now, p, msg, &mut random)
    }

    fn peer_for(&self, dst: IpAddr) -> Option<P> {
        self.routes
            .read()
            .expect("routes lock")
            .iter()
            .filter(|(net, _)| net.contains(&dst))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, p)| p.clone())
    }

    fn owns(&self, p: &P, src: IpAddr) -> bool {
        self.routes
            .read()
            .expect("routes lock")
            .iter()
            .any(|(net, q)| q == p && net.contains(&src))
    }
}

/// Randomness for keys and indices: the system's.
fn random(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system's random source works");
}

/// (source, destination) of an IPv4 or IPv6 packet.
fn addrs(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let s: [u8; 4] = packet[12..16].try_into().ok()?;
            let d: [u8; 4] = packet[16..20].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        6 if packet.len() >= 40 => {
            let s: [u8; 16] = packet[8..24].try_into().ok()?;
            let d: [u8; 16] = packet[24..40].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        _ => None,
    }
}

/// Each way of the UDP socket (wireguard-go uses 7 MiB).
const SOCKET_BUFFER: usize = 8 << 20;

/// The largest packet the device carries.
const MAX_PACKET: usize = 65_535;

/// The two threads of a running tunnel; [`Pump::stop`] ends them.
pub struct Pump<P: Ord + Clone + Send + Sync + 'static> {
    shared: Arc<Shared<P>>,
    threads: Vec<JoinHandle<()>>,
}

impl<P: Ord + Clone + Send + Sync + 'static> Pump<P> {
    /// Starts moving packets between `tun` and `udp`.
    pub fn start(tun: Tun, udp: UdpSocket, shared: Arc<Shared<P>>) -> std::io::Result<Pump<P>> {
        // The receive side wakes up now and then to see whether it should stop.
        udp.set_read_timeout(Some(Duration::from_millis(200)))?;
        batch::set_buffers(&udp, SOCKET_BUFFER);
        let offload = tun.offload;
        if offload {
            // Without GRO the receive side still works, a datagram at a time.
            let gro = batch::enable_gro(&udp).is_ok();
            shared.gro.store(gro, Ordering::Relaxed);
        }
        shared.gso.store(offload, Ordering::Relaxed);
        shared.tso.store(offload, Ordering::Relaxed);
        let udp_in = udp.try_clone()?;
        let tun_in = tun.file.try_clone()?;
        let tun_out = tun.file;
        let (s1, s2) = (shared.clone(), shared.clone());
        let out = std::thread::Builder::new()
            .name("weft-tun-out".into())
            .spawn(move || outbound(s1, tun_in, udp, offload))?;
        let inn = std::thread::Builder::new()
            .name("weft-tun-in".into())
            .spawn(move || inbound(s2, tun_out, udp_in, offload))?;
        Ok(Pump {
            shared,
            threads: vec![out, inn],
        })
    }

    /// Sends a keepalive to every peer with an endpoint (NAT mappings stay open).
    pub fn keepalive(&self, udp: &UdpSocket) -> Vec<(P, Drop)> {
        let eps: Vec<(P, SocketAddr)> = self
            .shared
            .endpoints
            .read()
            .expect("lock")
            .iter()
            .map(|(p, a)| (p.clone(), *a))
            .collect();
        let mut failed = Vec::new();
        for (p, to) in eps {
            let mut d = Vec::new();
            let now = self.shared.now();
            let r = self.shared.tunnel.lock().expect("tunnel lock").seal(
                now,
                &p,
                Kind::Keepalive,
                &[],
                &mut d,
            );
            match r {
                Ok(()) => {
                    let _ = udp.send_to(&d, to);
                }
                Err(e) => failed.push((p, e)),
            }
        }
        failed
    }

    /// Stops the receive thread; the send thread ends when the device is closed or its
    /// next packet arrives.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        drop(self.threads);
    }
}

/// Device to network: read a packet (with offloads, a superpacket cut into segments),
/// seal each for the peer that holds its destination, send (with offloads, the
/// datagrams of a superpacket in one system call).
fn outbound<P: Ord + Clone>(s: Arc<Shared<P>>, mut tun: File, udp: UdpSocket, offload: bool) {
    let mut buf = vec![0u8; MAX_PACKET + VNET_HDR_LEN];
    let mut scratch = Vec::with_capacity(MAX_PACKET);
    let mut dgrams = Vec::with_capacity(2 * (MAX_PACKET + 64 * OVERHEAD));
    let mut sizes = Vec::with_capacity(64);
    let mut gso = offload;
    while !s.stop.load(Ordering::Relaxed) {
        let n = match tun.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let (hdr, packet) = if offload {
            match VnetHdr::parse(&buf[..n]) {
                Some(h) => (h, &buf[VNET_HDR_LEN..n]),
                None => continue,
            }
        } else {
            (VnetHdr::default(), &buf[..n])
        };
        // Every segment of a superpacket has its destination.
        let Some(peer) = addrs(packet).and_then(|(_, d)| s.peer_for(d)) else {
            s.counters.no_route.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(to) = s.endpoints.read().expect("lock").get(&peer).copied() else {
            s.counters.no_endpoint.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        dgrams.clear();
        sizes.clear();
        let cut = {
            let now = s.now();
            let mut t = s.tunnel.lock().expect("tunnel lock");
            offload::split_each(&hdr, packet, &mut scratch, |seg| {
                let before = dgrams.len();
                if t.seal(now, &peer, Kind::Data, seg, &mut dgrams).is_ok() {
                    sizes.push(dgrams.len() - before);
                }
            })
        };
        if cut.is_err() {
            s.counters.no_route.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        send_all(&udp, &dgrams, &sizes, to, &mut gso);
        if !gso && offload {
            s.gso.store(false, Ordering::Relaxed);
        }
    }
}

/// Sends datagrams of `sizes` lying back to back in `buf`: runs of one size (the last of
/// a run may be shorter) in one GSO system call each while `gso` holds; one by one
/// otherwise, and from then on if the kernel refuses GSO.
fn send_all(udp: &UdpSocket, buf: &[u8], sizes: &[usize], to: SocketAddr, gso: &mut bool) {
    let mut at = 0;
    let mut i = 0;
    while i < sizes.len() {
        let size = sizes[i];
        let mut j = i;
        let mut bytes = 0;
        if *gso {
            while j < sizes.len()
                && j - i < batch::MAX_SEGMENTS
                && bytes + sizes[j] <= batch::MAX_BYTES
                && sizes[j] <= size
            {
                bytes += sizes[j];
                j += 1;
                if sizes[j - 1] < size {
                    break;
                }
            }
        }
        if j - i > 1 {
            match batch::send_gso(udp, &buf[at..at + bytes], size, to) {
                Ok(()) => {
                    at += bytes;
                    i = j;
                    continue;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                    *gso = false;
                }
                Err(_) => {}
            }
        }
        let _ = udp.send_to(&buf[at..at + size], to);
        at += size;
        i += 1;
    }
}

/// Network to device: receive (with GRO, many datagrams at once), open each, learn the
/// sender's endpoint, keep what its sender may send, write (with offloads, runs of one
/// flow joined into superpackets).
fn inbound<P: Ord + Clone>(s: Arc<Shared<P>>, mut tun: File, udp: UdpSocket, offload: bool) {
    let mut buf = vec![0u8; 2 * (MAX_PACKET + OVERHEAD)];
    let mut frame = Vec::with_capacity(MAX_PACKET + VNET_HDR_LEN);
    let mut keep: Vec<std::ops::Range<usize>> = Vec::with_capacity(64);
    let mut join = true;
    let mut scratch = Vec::with_capacity(MAX_PACKET);
    let mut single = Vec::with_capacity(MAX_PACKET + VNET_HDR_LEN);
    while !s.stop.load(Ordering::Relaxed) {
        let (n, from, seg) = match batch::recv_gro(&udp, &mut buf) {
            Ok(x) => x,
            Err(_) => continue,
        };
        let seg = seg.max(1);
        keep.clear();
        {
            let mut t = s.tunnel.lock().expect("tunnel lock");
            for (k, d) in buf[..n].chunks_mut(seg).enumerate() {
                let (peer, kind, len) = match t.open_in_place(d) {
                    Ok(x) => x,
                    Err(_) => {
                        s.counters.refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                // Authenticated: the peer is where this came from (NAT, roaming).
                let known = s.endpoints.read().expect("lock").get(&peer) == Some(&from);
                if !known {
                    s.endpoints
                        .write()
                        .expect("lock")
                        .insert(peer.clone(), from);
                }
                if kind != Kind::Data {
                    continue;
                }
                let plain = &d[HEADER_LEN..HEADER_LEN + len];
                match addrs(plain) {
                    Some((src, _)) if s.owns(&peer, src) => {
                        let start = k * seg + HEADER_LEN;
                        keep.push(start..start + len);
                    }
                    _ => {
                        s.counters.spoofed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let plains: Vec<&[u8]> = keep.iter().map(|r| &buf[r.clone()]).collect();
        if offload && join {
            for (h, p) in offload::coalesce(&plains, MAX_PACKET) {
                frame.clear();
                frame.extend_from_slice(&h.encode());
                frame.extend_from_slice(&p);
                match tun.write(&frame) {
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO)) => {
                        // The device refuses superpackets: this one goes in pieces, and
                        // from now on every packet alone.
                        join = false;
                        s.tso.store(false, Ordering::Relaxed);
                        let _ = offload::split_each(&h, &p, &mut scratch, |seg| {
                            write_plain(&mut tun, &mut single, seg);
                        });
                    }
                    _ => {}
                }
            }
        } else if offload {
            for p in plains {
                write_plain(&mut tun, &mut single, p);
            }
        } else {
            for p in plains {
                let _ = tun.write(p);
            }
        }
    }
}

/// Writes one packet to a device with `IFF_VNET_HDR`: behind an empty header.
fn write_plain(tun: &mut File, frame: &mut Vec<u8>, packet: &[u8]) {
    frame.clear();
    frame.extend_from_slice(&VnetHdr::default().encode());
    frame.extend_from_slice(packet);
    let _ = tun.write(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_addresses_of_both_families() {
        let mut v4 = vec![0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        v4[16..20].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(
            addrs(&v4),
            Some(("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()))
        );
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        v6[23] = 1;
        v6[39] = 2;
        assert_eq!(
            addrs(&v6),
            Some(("::1".parse().unwrap(), "::2".parse().unwrap()))
        );
        assert_eq!(addrs(&v4[..19]), None);
        assert_eq!(addrs(&[0x20; 40]), None);
    }
}
