//! The DNS server (docs/dns.md, "The server"): UDP and TCP port 53 at the configured
//! address, on a thread of its own with its own runtime, so that a slow apply in the
//! owner task never delays an answer. Answers come from `weft_dns::respond` on the newest
//! zone; what it does not answer goes to the upstream servers of the resolv.conf.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use weft_dns::{respond, servfail, Action, Transport};

use crate::config::DnsConfig;
use crate::dns::SharedZone;

/// Each upstream server gets this long to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client idle this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// At most this many TCP clients at once (more are closed at once).
const TCP_MAX: usize = 256;
/// A failed bind is tried again after this long.
const RETRY: Duration = Duration::from_secs(2);
/// Forwarded queries waiting for an upstream answer at most (as Docker's resolver): more
/// get SERVFAIL at once, so a flood of outside names cannot pile up tasks and sockets.
const FORWARD_MAX: usize = 1024;

/// Starts the server thread.
pub(crate) fn spawn(cfg: DnsConfig, zone: SharedZone, error: Arc<Mutex<Option<String>>>) {
    let res = std::thread::Builder::new()
        .name("weft-dns".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    set_error(&error, Some(format!("dns: start the runtime: {e}")));
                    return;
                }
            };
            rt.block_on(run(cfg, zone, error));
        });
    if let Err(e) = res {
        tracing::warn!(target: "weft::dns", "dns: start the server thread: {e}");
    }
}

fn set_error(slot: &Mutex<Option<String>>, e: Option<String>) {
    let mut g = slot.lock().unwrap_or_else(|p| p.into_inner());
    if *g != e {
        match &e {
            Some(msg) => tracing::warn!(target: "weft::dns", "{msg}"),
            None => tracing::info!(target: "weft::dns", "dns: serving"),
        }
        *g = e;
    }
}

async fn run(cfg: DnsConfig, zone: SharedZone, error: Arc<Mutex<Option<String>>>) {
    let addr = SocketAddr::new(cfg.addr, 53);
    let upstream = Arc::new(Upstreams::new(cfg.resolv_conf.clone(), cfg.addr));
    loop {
        let bound = async {
            let udp = std::net::UdpSocket::bind(addr)?;
            let tcp = TcpListener::bind(addr).await?;
            Ok::<_, std::io::Error>((udp, tcp))
        }
        .await;
        match bound {
            Ok((udp, tcp)) => {
                set_error(&error, None);
                tracing::info!(target: "weft::dns", addr = %addr, "dns: answering on {addr} (UDP and TCP) for {}", cfg.domain);
                tokio::spawn(serve_tcp(tcp, zone.clone(), upstream.clone()));
                let (z, up, rt) = (zone.clone(), upstream.clone(), tokio::runtime::Handle::current());
                let e = tokio::task::spawn_blocking(move || serve_udp(udp, z, up, rt))
                    .await
                    .unwrap_or_else(|e| std::io::Error::other(e.to_string()));
                set_error(&error, Some(format!("dns: UDP on {addr}: {e}")));
                // The TCP side keeps its listener; serving UDP is not tried again.
                std::future::pending::<()>().await;
            }
            Err(e) => set_error(
                &error,
                Some(format!(
                    "dns: cannot listen on {addr}: {e} (is another DNS server bound to it, or is the address not local?)"
                )),
            ),
        }
        tokio::time::sleep(RETRY).await;
    }
}

static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

fn next_seed() -> u64 {
    SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
}

fn current(zone: &SharedZone) -> Arc<weft_dns::Zone> {
    zone.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The UDP side, on a thread of its own with a blocking socket: queries in batches
/// (`dns_udp`), answered in place; forwarded ones on the runtime of `rt`.
fn serve_udp(
    udp: std::net::UdpSocket,
    zone: SharedZone,
    upstream: Arc<Upstreams>,
    rt: tokio::runtime::Handle,
) -> std::io::Error {
    use std::os::fd::AsRawFd;
    let udp = Arc::new(udp);
    let fd = udp.as_raw_fd();
    let mut batch = crate::dns_udp::Batch::new();
    let mut out = Vec::with_capacity(crate::dns_udp::BATCH);
    // Errors in a row: a socket that only fails is given up.
    let mut errors = 0u32;
    loop {
        let n = match batch.recv(fd) {
            Ok(n) => {
                errors = 0;
                n
            }
            // An ICMP error of an earlier answer's client (port or host unreachable):
            // the socket is fine.
            Err(e) if errors < 1000 => {
                errors += 1;
                tracing::debug!(target: "weft::dns", "dns: receive: {e}");
                continue;
            }
            Err(e) => return e,
        };
        let z = current(&zone);
        for i in 0..n {
            let Some((packet, peer)) = batch.get(i) else {
                continue;
            };
            match respond(&z, packet, Transport::Udp, next_seed()) {
                Action::Reply(b) => out.push((b, peer)),
                Action::Forward => {
                    let Some(to) = peer.socket_addr() else {
                        continue;
                    };
                    let (udp, up, q) = (udp.clone(), upstream.clone(), packet.to_vec());
                    rt.spawn(async move {
                        let answer = match up.ask_udp(&q).await {
                            Some(a) => a,
                            None => match servfail(&q) {
                                Some(s) => s,
                                None => return,
                            },
                        };
                        // A blocking socket, but a datagram send does not wait.
                        let _ = udp.send_to(&answer, to);
                    });
                }
                Action::Drop => {}
            }
        }
        crate::dns_udp::send_all(fd, &mut out);
        out.clear();
    }
}

async fn serve_tcp(l: TcpListener, zone: SharedZone, upstream: Arc<Upstreams>) {
    let open = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if open.load(Ordering::Relaxed) >= TCP_MAX as u64 {
            drop(s);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (zone, up, open) = (zone.clone(), upstream.clone(), open.clone());
        tokio::spawn(async move {
            let _ = tcp_client(s, zone, up).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn read_framed(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_framed(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await
}

async fn tcp_client(mut s: TcpStream, zone: SharedZone, up: Arc<Upstreams>) -> std::io::Result<()> {
    loop {
        let q = tokio::time::timeout(TCP_IDLE, read_framed(&mut s))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let answer = match respond(&current(&zone), &q, Transport::Tcp, next_seed()) {
            Action::Reply(b) => b,
            Action::Forward => match up.ask_tcp(&q).await {
                Some(a) => a,
                None => match servfail(&q) {
                    Some(s) => s,
                    None => return Ok(()),
                },
            },
            Action::Drop => return Ok(()),
        };
        write_framed(&mut s, &answer).await?;
    }
}

/// The upstream servers, from a resolv.conf re-read when it changes.
struct Upstreams {
    path: PathBuf,
    own: IpAddr,
    state: Mutex<UpState>,
    /// Forwarded queries in flight.
    inflight: std::sync::atomic::AtomicUsize,
}

/// A forwarded query's place among the [`FORWARD_MAX`]; given back when dropped.
struct Slot<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct UpState {
    checked: Option<Instant>,
    mtime: Option<SystemTime>,
    servers: Vec<IpAddr>,
}

impl Upstreams {
    fn new(path: PathBuf, own: IpAddr) -> Upstreams {
        Upstreams {
            path,
            own,
            state: Mutex::new(UpState::default()),
            inflight: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The servers now: the file is looked at at most once a second.
    fn servers(&self) -> Vec<IpAddr> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st
            .checked
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            st.checked = Some(Instant::now());
            let mtime = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if mtime != st.mtime || mtime.is_none() {
                st.mtime = mtime;
                let text = std::fs::read_to_string(&self.path).unwrap_or_default();
                st.servers = weft_dns::resolv::nameservers(&text, &[self.own]);
            }
        }
        st.servers.clone()
    }

    /// A place for one more forwarded query, if there is one.
    fn slot(&self) -> Option<Slot<'_>> {
        if self.inflight.fetch_add(1, Ordering::Relaxed) >= FORWARD_MAX {
            self.inflight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(&self.inflight))
    }

    /// The first answer of a server to `q` over UDP, asked in order.
    async fn ask_udp(&self, q: &[u8]) -> Option<Vec<u8>> {
        let _slot = self.slot()?;
        for server in self.servers() {
            let to = SocketAddr::new(server, 53);
            let local: SocketAddr = if server.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let attempt = async {
                let s = UdpSocket::bind(local).await.ok()?;
                s.connect(to).await.ok()?;
                s.send(q).await.ok()?;
                let mut buf = vec![0u8; 65_535];
                loop {
                    let n = s.recv(&mut buf).await.ok()?;
                    if weft_dns::wire::answers(q, &buf[..n]) {
                        return Some(buf[..n].to_vec());
                    }
                }
            };
            if let Ok(Some(a)) = tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                return Some(a);
            }
        }
        None
    }

    /// The same over TCP.
    async fn ask_tcp(&self, q: &[u8]) -> Option<Vec<u8>> {
        let _slot = self.slot()?;
        for server in self.servers() {
            let attempt = async {
                let mut s = TcpStream::connect(SocketAddr::new(server, 53)).await.ok()?;
                write_framed(&mut s, q).await.ok()?;
                let a = read_framed(&mut s).await.ok()?;
                weft_dns::wire::answers(q, &a).then_some(a)
            };
            if let Ok(Some(a)) = tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                return Some(a);
            }
        }
        None
    }
}
