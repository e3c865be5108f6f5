//! Two small pieces of netfilter's netlink (`NETLINK_NETFILTER`), written out by hand:
//! receiving the packets nftables' `log group N` sends to userspace (nfnetlink_log), and
//! deleting one connection tracking entry by its original tuple (ctnetlink). Both work in
//! the namespace the socket was opened in.

use std::net::IpAddr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::{Error, Result};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNL_SUBSYS_ULOG: u16 = 4;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one attribute (type, payload), padded.
fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// Appends a nested attribute built by `f`.
fn nested(buf: &mut Vec<u8>, kind: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    attr(buf, kind | NLA_F_NESTED, &inner);
}

/// A netfilter message: netlink header, `nfgenmsg` (family, version 0, res_id), attributes.
fn message(
    subsys: u16,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) -> Vec<u8> {
    raw_message((subsys << 8) | kind, flags, seq, family, res_id, attrs)
}

/// As [`message`], with the netlink message type given whole (the batch markers belong
/// to no subsystem).
fn raw_message(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + attrs.len());
    let len = 16 + 4 + attrs.len();
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(family);
    m.push(0);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

fn open(op: &str) -> Result<Socket> {
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(|e| Error::new(op, e))?;
    s.bind_auto().map_err(|e| Error::new(op, e))?;
    Ok(s)
}

/// Sends `msg` and waits for the kernel's acknowledgement; Ok(false) when it answers
/// ENOENT.
fn request_ack(s: &mut Socket, msg: &[u8], op: &str) -> Result<bool> {
    s.send_to(msg, &SocketAddr::new(0, 0), 0)
        .map_err(|e| Error::new(op, e))?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = s
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| Error::new(op, e))?;
        if let Some(code) = ack_codes(&buf[..n]).next() {
            return match -code {
                0 => Ok(true),
                libc::ENOENT => Ok(false),
                errno => Err(Error::new(op, std::io::Error::from_raw_os_error(errno))),
            };
        }
    }
}

/// The error codes of the acknowledgements (`NLMSG_ERROR` messages; 0 is success) in one
/// received buffer of netlink messages, in order.
fn ack_codes(buf: &[u8]) -> impl Iterator<Item = i32> + '_ {
    let mut off = 0;
    std::iter::from_fn(move || {
        while off + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if len < 16 || off + len > buf.len() {
                return None;
            }
            let at = off;
            off += align4(len);
            if kind == NLMSG_ERROR && len >= 20 {
                return Some(i32::from_ne_bytes(
                    buf[at + 16..at + 20].try_into().unwrap_or_default(),
                ));
            }
        }
        None
    })
}

/// Deletes the connection tracking entry whose original tuple is `src:sport -> dst:dport`
/// over IP protocol `proto` (ports are ignored for protocols without them). Ok(false)
/// when there is none.
pub fn conntrack_delete(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
) -> Result<bool> {
    let op =
        format!("delete the tracked connection {src}:{sport} -> {dst}:{dport} (protocol {proto})");
    let mut attrs = Vec::new();
    nested(&mut attrs, CTA_TUPLE_ORIG, |t| {
        nested(t, CTA_TUPLE_IP, |ip| match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                attr(ip, CTA_IP_V4_SRC, &s.octets());
                attr(ip, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V6(x) => x.octets(),
                    IpAddr::V4(x) => x.to_ipv6_mapped().octets(),
                };
                attr(ip, CTA_IP_V6_SRC, &v6(s));
                attr(ip, CTA_IP_V6_DST, &v6(d));
            }
        });
        nested(t, CTA_TUPLE_PROTO, |p| {
            attr(p, CTA_PROTO_NUM, &[proto]);
            if matches!(proto, 6 | 17 | 132) {
                attr(p, CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
                attr(p, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
            }
        });
    });
    let family = if src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    let msg = message(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        1,
        family,
        0,
        &attrs,
    );
    let mut s = open(&op)?;
    request_ack(&mut s, &msg, &op)
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const NLM_F_CREATE: u16 = 0x400;

/// nftables' table families, as `nfgen_family`.
pub const NFPROTO_INET: u8 = 1;
/// `ip`.
pub const NFPROTO_IPV4: u8 = 2;
/// `ip6`.
pub const NFPROTO_IPV6: u8 = 10;

/// An element to add to an nftables set or verdict map whose key is an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElement<'a> {
    /// The table's family (`NFPROTO_*`).
    pub family: u8,
    /// The table.
    pub table: &'a str,
    /// The set or map.
    pub set: &'a str,
    /// The address (the key, in network order).
    pub key: IpAddr,
    /// For a verdict map: the chain to jump to (ignored when deleting).
    pub jump: Option<&'a str>,
    /// Delete the element instead of adding it (it must exist).
    pub delete: bool,
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Adds elements to existing nftables sets and verdict maps, and deletes others, in one
/// transaction (all or none, in the given order), straight over netlink: what `nft add
/// element` and `nft delete element` do, without starting `nft` and without it reading
/// the whole ruleset first. Elements added that are already there are left as they are;
/// deleting one that is not there fails the transaction.
pub fn nft_add_elements(elems: &[SetElement]) -> Result<()> {
    if elems.is_empty() {
        return Ok(());
    }
    let dels = elems.iter().filter(|e| e.delete).count();
    let op = format!(
        "change {} nftables set elements ({} added, {dels} deleted)",
        elems.len(),
        elems.len() - dels
    );
    let mut batch = raw_message(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        1,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    for (i, e) in elems.iter().enumerate() {
        let mut attrs = Vec::new();
        attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &cstr(e.table));
        attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &cstr(e.set));
        nested(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
            nested(l, NFTA_LIST_ELEM, |el| {
                nested(el, NFTA_SET_ELEM_KEY, |k| {
                    let key = match e.key {
                        IpAddr::V4(a) => a.octets().to_vec(),
                        IpAddr::V6(a) => a.octets().to_vec(),
                    };
                    attr(k, NFTA_DATA_VALUE, &key);
                });
                if let (Some(chain), false) = (e.jump, e.delete) {
                    nested(el, NFTA_SET_ELEM_DATA, |d| {
                        nested(d, NFTA_DATA_VERDICT, |v| {
                            attr(v, NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                            attr(v, NFTA_VERDICT_CHAIN, &cstr(chain));
                        });
                    });
                }
            });
        });
        let (kind, flags) = if e.delete {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        } else {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK)
        };
        batch.extend(message(
            NFNL_SUBSYS_NFTABLES,
            kind,
            flags,
            2 + i as u32,
            e.family,
            0,
            &attrs,
        ));
    }
    batch.extend(raw_message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        2 + elems.len() as u32,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    ));
    // One socket for the process, kept open: the kernel frees what a transaction deleted
    // after an RCU grace period, and closing a netfilter socket waits for that (some 10 ms
    // here), which every CNI DEL's element deletions would pay. A socket that saw an error
    // is closed (it may hold answers not read); one of another network namespace than the
    // calling thread's is not used.
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .map_err(|e| Error::new(&op, e))?;
    let mut kept = ELEMENTS_SOCKET.lock().unwrap_or_else(|p| p.into_inner());
    let s = match kept.take() {
        Some((ns, s)) if ns == netns => s,
        _ => open(&op)?,
    };
    s.send_to(&batch, &SocketAddr::new(0, 0), 0)
        .map_err(|e| Error::new(&op, e))?;
    // One acknowledgement per element message; the first error aborts the transaction.
    let mut acks = 0;
    let mut buf = vec![0u8; 8192];
    while acks < elems.len() {
        let n = s
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| Error::new(&op, e))?;
        for code in ack_codes(&buf[..n]) {
            if code != 0 {
                return Err(Error::new(op, std::io::Error::from_raw_os_error(-code)));
            }
            acks += 1;
        }
    }
    *kept = Some((netns, s));
    Ok(())
}

/// The socket [`nft_add_elements`] keeps between calls, with its network namespace's
/// inode.
static ELEMENTS_SOCKET: std::sync::Mutex<Option<(u64, Socket)>> = std::sync::Mutex::new(None);

/// A packet that a `log group N` rule sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedPacket {
    /// The rule's `prefix`.
    pub prefix: String,
    /// The packet from its network header on (as much as the copy range allowed).
    pub payload: Vec<u8>,
}

/// A subscription to one NFLOG group.
pub struct NfLog {
    sock: Socket,
    buf: Vec<u8>,
}

impl NfLog {
    /// Binds to `group`, asking for the first `copy` bytes of each packet. Fails with
    /// EBUSY when another process holds the group.
    pub fn bind(group: u16, copy: u32) -> Result<NfLog> {
        let op = format!("listen to NFLOG group {group}");
        let mut s = open(&op)?;
        let mut attrs = Vec::new();
        attr(&mut attrs, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND, 0, 0, 0]);
        let msg = message(
            NFNL_SUBSYS_ULOG,
            NFULNL_MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            1,
            0,
            group,
            &attrs,
        );
        request_ack(&mut s, &msg, &op)?;
        let mut attrs = Vec::new();
        let mut mode = copy.to_be_bytes().to_vec();
        mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
        attr(&mut attrs, NFULA_CFG_MODE, &mode);
        let msg = message(
            NFNL_SUBSYS_ULOG,
            NFULNL_MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            2,
            0,
            group,
            &attrs,
        );
        request_ack(&mut s, &msg, &op)?;
        // A large receive buffer: a burst of drops must not overflow it at once.
        let _ = s.set_rx_buf_sz(4 << 20);
        Ok(NfLog {
            sock: s,
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Blocks until packets arrive; returns them. An overflowed socket (ENOBUFS: the
    /// kernel dropped log messages) is reported as an error the caller may go on after.
    pub fn recv(&mut self) -> Result<Vec<LoggedPacket>> {
        let n = self
            .sock
            .recv(&mut &mut self.buf[..], 0)
            .map_err(|e| Error::new("read NFLOG", e))?;
        Ok(parse_packets(&self.buf[..n]))
    }
}

/// The packets in one datagram of nfnetlink_log messages.
pub fn parse_packets(buf: &[u8]) -> Vec<LoggedPacket> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 20 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < 20 || off + len > buf.len() {
            break;
        }
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
            let mut p = LoggedPacket {
                prefix: String::new(),
                payload: Vec::new(),
            };
            let mut a = off + 20;
            while a + 4 <= off + len {
                let alen = u16::from_ne_bytes([buf[a], buf[a + 1]]) as usize;
                let akind = u16::from_ne_bytes([buf[a + 2], buf[a + 3]]) & 0x3fff;
                if alen < 4 || a + alen > off + len {
                    break;
                }
                let data = &buf[a + 4..a + alen];
                match akind {
                    NFULA_PREFIX => {
                        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                        p.prefix = String::from_utf8_lossy(&data[..end]).into_owned();
                    }
                    NFULA_PAYLOAD => p.payload = data.to_vec(),
                    _ => {}
                }
                a += align4(alen);
            }
            out.push(p);
        }
        off += align4(len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_packet_message_is_read_back() {
        let mut attrs = Vec::new();
        attr(&mut attrs, NFULA_PREFIX, b"weft D in g_1\0");
        attr(&mut attrs, 3, &[0u8; 16]);
        attr(&mut attrs, NFULA_PAYLOAD, &[0x45, 0, 0, 20]);
        let m = message(NFNL_SUBSYS_ULOG, NFULNL_MSG_PACKET, 0, 0, 2, 7, &attrs);
        let mut two = m.clone();
        two.extend_from_slice(&m);
        let p = parse_packets(&two);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].prefix, "weft D in g_1");
        assert_eq!(p[0].payload, vec![0x45, 0, 0, 20]);
        // Truncated input yields what is whole, never a panic.
        for cut in 0..m.len() {
            let _ = parse_packets(&m[..cut]);
        }
    }
}
