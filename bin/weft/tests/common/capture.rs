//! Captures on a lab's underlay: tcpdump (a process this test starts and ends by its pid)
//! writes a pcap file, read back here into frames with their outer addresses.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::process::{Child, ChildStderr, Command, Stdio};

/// A running capture.
pub struct Capture {
    child: Child,
    stderr: BufReader<ChildStderr>,
    file: String,
}

/// One captured IP packet (Ethernet link type).
#[derive(Debug, Clone)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol (next header of IPv6 without extension headers).
    pub proto: u8,
    /// The transport payload after the UDP header, for UDP.
    pub udp: Option<(u16, u16, Vec<u8>)>,
    /// The whole frame.
    pub raw: Vec<u8>,
}

impl Capture {
    /// Starts tcpdump on `iface` in namespace `ns`, writing to `file`, and waits until it
    /// listens.
    pub fn start(ns: &str, iface: &str, file: &str) -> Capture {
        let _ = std::fs::remove_file(file);
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-i",
                iface,
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-B",
                "32768",
                "-w",
                file,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcpdump");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
        let mut line = String::new();
        loop {
            line.clear();
            let n = stderr.read_line(&mut line).expect("tcpdump's stderr");
            assert!(n > 0, "tcpdump ended before listening");
            if line.contains("listening on") {
                break;
            }
        }
        Capture {
            child,
            stderr,
            file: file.to_string(),
        }
    }

    /// Ends the capture (SIGINT to the process this test started) and reads it. tcpdump
    /// writes each packet as it reads it (`-U`) and drops what is still in the kernel's
    /// buffer when it is interrupted, so the file is first given time to stop growing; a
    /// capture the kernel dropped packets from is refused (it would not show everything
    /// that crossed).
    pub fn stop(mut self) -> Vec<Frame> {
        let size = || std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let (mut last, mut same) = (size(), 0);
        while same < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let now = size();
            same = if now == last { same + 1 } else { 0 };
            last = now;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        let mut stats = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stderr, &mut stats);
        let dropped = stats
            .lines()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok());
        assert!(
            dropped.unwrap_or(0) == 0,
            "the capture is incomplete (tcpdump: {stats})"
        );
        let bytes = std::fs::read(&self.file).expect("the capture file");
        let _ = std::fs::remove_file(&self.file);
        parse_pcap(&bytes)
    }
}

/// The frames of a pcap file (Ethernet), skipping what is not IPv4 or IPv6.
pub fn parse_pcap(b: &[u8]) -> Vec<Frame> {
    assert!(b.len() >= 24, "not a pcap file");
    let le = b[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32at = |at: usize| {
        let w: [u8; 4] = b[at..at + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    assert_eq!(u32at(20), 1, "link type Ethernet");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let len = u32at(at + 8) as usize;
        let start = at + 16;
        if start + len > b.len() {
            break;
        }
        if let Some(f) = frame(&b[start..start + len]) {
            out.push(f);
        }
        at = start + len;
    }
    out
}

fn frame(raw: &[u8]) -> Option<Frame> {
    let ethertype = u16::from_be_bytes(raw.get(12..14)?.try_into().ok()?);
    let ip = raw.get(14..)?;
    let (src, dst, proto, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), ip[9], ip.get(ihl..)?)
        }
        0x86dd => {
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), ip[6], ip.get(40..)?)
        }
        _ => return None,
    };
    let udp = (proto == 17 && l4.len() >= 8).then(|| {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
            l4[8..].to_vec(),
        )
    });
    Some(Frame {
        src,
        dst,
        proto,
        udp,
        raw: raw.to_vec(),
    })
}

/// Whether `needle` is anywhere in the captured bytes.
pub fn seen(frames: &[Frame], needle: &[u8]) -> bool {
    frames
        .iter()
        .any(|f| f.raw.windows(needle.len()).any(|w| w == needle))
}

/// Sends `payload` as one UDP datagram to `to` from the lab namespace `ns` (a thread of
/// this test enters it; the test's own namespace is untouched).
pub fn send_udp_from(ns: &str, to: std::net::SocketAddr, payload: Vec<u8>) {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let f = weft_netlink::open_netns(std::path::Path::new(&format!("/run/netns/{ns}")))
            .expect("open netns");
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let bind: std::net::SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = std::net::UdpSocket::bind(bind).expect("bind");
        s.send_to(&payload, to).expect("send");
    })
    .join()
    .expect("sender thread");
}
