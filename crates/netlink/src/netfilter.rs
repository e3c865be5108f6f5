//! Small pieces of netfilter's netlink (`NETLINK_NETFILTER`), written out by hand:
//! receiving the packets nftables' `log group N` sends to userspace (nfnetlink_log),
//! listing the connection tracking table and deleting one entry by its original tuple
//! (ctnetlink), changing nftables set elements and a table's dormant flag, and asking
//! whether a table or chain exists. All work in the namespace the socket was opened in.

use std::net::IpAddr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::{Error, Result};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNL_SUBSYS_ULOG: u16 = 4;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_MARK: u16 = 8;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_TIMEOUT: u16 = 7;
const IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED: u8 = 0x10;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;
const IP_CT_TCP_FLAG_BE_LIBERAL: u8 = 0x08;
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
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes (type without its flag bits, payload) in `buf`; stops at the first one
/// that does not fit.
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> + '_ {
    let mut a = 0;
    std::iter::from_fn(move || {
        if a + 4 > buf.len() {
            return None;
        }
        let alen = u16::from_ne_bytes([buf[a], buf[a + 1]]) as usize;
        let akind = u16::from_ne_bytes([buf[a + 2], buf[a + 3]]) & 0x3fff;
        if alen < 4 || a + alen > buf.len() {
            return None;
        }
        let data = &buf[a + 4..a + alen];
        a += align4(alen);
        Some((akind, data))
    })
}

/// The netlink messages (type, payload after the 16-byte header) in one received buffer;
/// stops at the first one that does not fit.
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> + '_ {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 16 > buf.len() {
            return None;
        }
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < 16 || off + len > buf.len() {
            return None;
        }
        let body = &buf[off + 16..off + len];
        off += align4(len);
        Some((kind, body))
    })
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
    messages(buf)
        .filter(|&(kind, body)| kind == NLMSG_ERROR && body.len() >= 4)
        .map(|(_, body)| i32::from_ne_bytes(body[..4].try_into().unwrap_or_default()))
}

/// The `CTA_TUPLE_ORIG` attribute of `src:sport -> dst:dport` over IP protocol `proto`
/// (ports left out for protocols without them), and the message family.
fn orig_tuple(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> (Vec<u8>, u8) {
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
    (attrs, family)
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
    let (attrs, family) = orig_tuple(src, dst, proto, sport, dport);
    ct_ack(&ct_entry_request(IPCTNL_MSG_CT_DELETE, family, &attrs), &op)
}

/// A ctnetlink request about one entry (`attrs` name it by a tuple), to be acknowledged.
fn ct_entry_request(kind: u16, family: u8, attrs: &[u8]) -> Vec<u8> {
    message(
        NFNL_SUBSYS_CTNETLINK,
        kind,
        NLM_F_REQUEST | NLM_F_ACK,
        1,
        family,
        0,
        attrs,
    )
}

/// Sends `msg` on a socket of its own and waits for its acknowledgement: Ok(false) when
/// the kernel has no such entry.
fn ct_ack(msg: &[u8], op: &str) -> Result<bool> {
    let mut s = open(op)?;
    request_ack(&mut s, msg, op)
}

/// The update that makes the TCP entry of original tuple `src:sport -> dst:dport` check
/// neither direction's sequence and acknowledgement numbers against its windows
/// (`IP_CT_TCP_FLAG_BE_LIBERAL` in both directions, as the kernel's own flowtable does for
/// the connections it forwards past the stack): segments conntrack no longer sees must not
/// make the other direction's acknowledgements invalid.
fn liberal_message(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let (mut attrs, family) = orig_tuple(src, dst, 6, sport, dport);
    nested(&mut attrs, CTA_PROTOINFO, |p| {
        nested(p, CTA_PROTOINFO_TCP, |t| {
            // struct nf_ct_tcp_flags: the flags, then the mask of those to change. Data
            // conntrack saw unacknowledged caps the entry's timeout at 300 s; the
            // acknowledgement may be among the segments it will not see: cleared.
            let liberal = [
                IP_CT_TCP_FLAG_BE_LIBERAL,
                IP_CT_TCP_FLAG_BE_LIBERAL | IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED,
            ];
            attr(t, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &liberal);
            attr(t, CTA_PROTOINFO_TCP_FLAGS_REPLY, &liberal);
        });
    });
    // A `new` message without NLM_F_CREATE changes an existing entry only.
    ct_entry_request(IPCTNL_MSG_CT_NEW, family, &attrs)
}

/// The tracked connection whose original tuple is `src:sport -> dst:dport` over TCP (the
/// kernel finds it by either direction's tuple), with its original and reply tuples and
/// its status, mark and state; None when there is none.
pub fn conntrack_get_tcp(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
) -> Result<Option<(CtEntry, CtMeta)>> {
    let op = format!("read the tracked connection {src}:{sport} -> {dst}:{dport}");
    let (attrs, family) = orig_tuple(src, dst, 6, sport, dport);
    let msg = ct_entry_request(IPCTNL_MSG_CT_GET, family, &attrs);
    match ct_records(&msg, &op, 8192) {
        Ok(mut found) => Ok(found.pop()),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets the timeout of the tracked TCP connection of tuple `src:sport -> dst:dport` (either
/// direction's) to `secs` from now. Ok(false) when there is no such entry.
pub fn conntrack_tcp_timeout(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    secs: u32,
) -> Result<bool> {
    let op = format!("refresh the tracked connection {src}:{sport} -> {dst}:{dport}");
    let (mut attrs, family) = orig_tuple(src, dst, 6, sport, dport);
    attr(&mut attrs, CTA_TIMEOUT, &secs.to_be_bytes());
    ct_ack(&ct_entry_request(IPCTNL_MSG_CT_NEW, family, &attrs), &op)
}

/// Makes the tracked TCP connection of original tuple `src:sport -> dst:dport` liberal
/// (see [`liberal_message`]). Ok(false) when there is no such entry.
pub fn conntrack_tcp_liberal(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Result<bool> {
    let op = format!("make the tracked connection {src}:{sport} -> {dst}:{dport} liberal");
    ct_ack(&liberal_message(src, dst, sport, dport), &op)
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
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
    /// The key is the address twice (a set of `type ipv4_addr . ipv4_addr`, say): a
    /// concatenation's fields are laid out one after the other, each a multiple of 4 bytes.
    pub pair: bool,
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
    let msgs: Vec<(u16, u16, u8, Vec<u8>)> = elems
        .iter()
        .map(|e| {
            let mut attrs = Vec::new();
            attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &cstr(e.table));
            attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &cstr(e.set));
            nested(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
                nested(l, NFTA_LIST_ELEM, |el| {
                    nested(el, NFTA_SET_ELEM_KEY, |k| {
                        let mut key = match e.key {
                            IpAddr::V4(a) => a.octets().to_vec(),
                            IpAddr::V6(a) => a.octets().to_vec(),
                        };
                        if e.pair {
                            key.extend_from_within(..);
                        }
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
            (kind, flags, e.family, attrs)
        })
        .collect();
    nft_transaction(&msgs, &op)
}

const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;

/// An element of a set whose type is `ipv4_addr . inet_proto . inet_service` (or its
/// IPv6 form): a socket, and how long it stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketElement {
    /// The address (its family must be the set's).
    pub addr: IpAddr,
    /// The IP protocol.
    pub proto: u8,
    /// The port.
    pub port: u16,
    /// Its timeout, and its expiry from now, in milliseconds.
    pub timeout_ms: u64,
}

/// The key of a socket element: each field of the concatenation in a multiple of 4
/// bytes, as nftables lays them out (the address; the protocol byte and 3 bytes of
/// padding; the port in network order and 2 bytes of padding).
fn socket_key(e: &SocketElement) -> Vec<u8> {
    let mut key = match e.addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    key.extend_from_slice(&[e.proto, 0, 0, 0]);
    key.extend_from_slice(&e.port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}

/// Adds socket elements to the set `set` of table `table` (`family`), each with its
/// timeout and an expiry of that long from now: an element already there gets its expiry
/// back (the kernel updates an existing element when an expiration is given), one that is
/// missing is entered. In transactions of at most 1024 elements, each one message (a full
/// set fails only the transaction that would grow it); every transaction is tried, and the
/// first error is returned. Straight over netlink: `nft` would read the whole ruleset
/// first.
pub fn nft_add_socket_elements(
    family: u8,
    table: &str,
    set: &str,
    elems: &[SocketElement],
) -> Result<()> {
    let mut first_err = None;
    for chunk in elems.chunks(1024) {
        let op = format!(
            "refresh {} elements of nftables set {table} {set}",
            chunk.len()
        );
        let mut attrs = Vec::new();
        attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
        attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &cstr(set));
        nested(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
            for e in chunk {
                nested(l, NFTA_LIST_ELEM, |el| {
                    nested(el, NFTA_SET_ELEM_KEY, |k| {
                        attr(k, NFTA_DATA_VALUE, &socket_key(e));
                    });
                    attr(el, NFTA_SET_ELEM_TIMEOUT, &e.timeout_ms.to_be_bytes());
                    attr(el, NFTA_SET_ELEM_EXPIRATION, &e.timeout_ms.to_be_bytes());
                });
            }
        });
        let msg = [(
            NFT_MSG_NEWSETELEM,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
            family,
            attrs,
        )];
        if let Err(e) = nft_transaction(&msg, &op) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Hooks an existing nftables table out (`dormant`: none of its base chains sees a
/// packet) or back in, as `nft add table T { flags dormant; }` and its reverse do, in a
/// transaction of its own. Fails (ENOENT) when there is no such table: it never creates
/// one.
pub fn nft_table_dormant(family: u8, table: &str, dormant: bool) -> Result<()> {
    let op = format!(
        "{} nftables table {table}",
        if dormant { "hook out" } else { "hook in" }
    );
    let mut attrs = Vec::new();
    attr(&mut attrs, NFTA_TABLE_NAME, &cstr(table));
    attr(
        &mut attrs,
        NFTA_TABLE_FLAGS,
        &u32::from(dormant).to_be_bytes(),
    );
    nft_transaction(
        &[(NFT_MSG_NEWTABLE, NLM_F_REQUEST | NLM_F_ACK, family, attrs)],
        &op,
    )
}

/// Whether the nftables table `table` of `family` exists, asked for by name (what `nft
/// list table` learns first, without reading any other table or rule).
pub fn nft_table_exists(family: u8, table: &str) -> Result<bool> {
    let mut attrs = Vec::new();
    attr(&mut attrs, NFTA_TABLE_NAME, &cstr(table));
    nft_get_exists(
        NFT_MSG_GETTABLE,
        family,
        &attrs,
        &format!("look for nftables table {table}"),
    )
}

/// Whether the chain `chain` of the nftables table `table` of `family` exists (so also
/// the table), asked for by name.
pub fn nft_chain_exists(family: u8, table: &str, chain: &str) -> Result<bool> {
    let mut attrs = Vec::new();
    attr(&mut attrs, NFTA_CHAIN_TABLE, &cstr(table));
    attr(&mut attrs, NFTA_CHAIN_NAME, &cstr(chain));
    nft_get_exists(
        NFT_MSG_GETCHAIN,
        family,
        &attrs,
        &format!("look for nftables chain {table} {chain}"),
    )
}

/// Asks for one nftables object: true when the kernel has it (its description comes
/// first, then the acknowledgement), false on ENOENT.
fn nft_get_exists(kind: u16, family: u8, attrs: &[u8], op: &str) -> Result<bool> {
    let msg = message(
        NFNL_SUBSYS_NFTABLES,
        kind,
        NLM_F_REQUEST | NLM_F_ACK,
        1,
        family,
        0,
        attrs,
    );
    let mut s = open(op)?;
    request_ack(&mut s, &msg, op)
}

/// Sends nftables messages (type, flags, family, attributes) as one transaction (all or
/// none, in order) and waits for each one's acknowledgement.
fn nft_transaction(msgs: &[(u16, u16, u8, Vec<u8>)], op: &str) -> Result<()> {
    let mut batch = raw_message(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        1,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    for (i, (kind, flags, family, attrs)) in msgs.iter().enumerate() {
        batch.extend(message(
            NFNL_SUBSYS_NFTABLES,
            *kind,
            *flags,
            2 + i as u32,
            *family,
            0,
            attrs,
        ));
    }
    batch.extend(raw_message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        2 + msgs.len() as u32,
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
        .map_err(|e| Error::new(op, e))?;
    let mut kept = ELEMENTS_SOCKET.lock().unwrap_or_else(|p| p.into_inner());
    let s = match kept.take() {
        Some((ns, s)) if ns == netns => s,
        _ => open(op)?,
    };
    s.send_to(&batch, &SocketAddr::new(0, 0), 0)
        .map_err(|e| Error::new(op, e))?;
    // One acknowledgement per message; the first error aborts the transaction.
    let mut acks = 0;
    let mut buf = vec![0u8; 8192];
    while acks < msgs.len() {
        let n = s
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| Error::new(op, e))?;
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
        // Each packet sent at once: by default the kernel batches 100 of them or waits
        // up to a second, so a lone drop would reach `weft flows` a second late.
        attr(&mut attrs, NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
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
    for (kind, body) in messages(buf) {
        if kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET || body.len() < 4 {
            continue;
        }
        let mut p = LoggedPacket {
            prefix: String::new(),
            payload: Vec::new(),
        };
        for (akind, data) in attrs(&body[4..]) {
            match akind {
                NFULA_PREFIX => {
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    p.prefix = String::from_utf8_lossy(&data[..end]).into_owned();
                }
                NFULA_PAYLOAD => p.payload = data.to_vec(),
                _ => {}
            }
        }
        out.push(p);
    }
    out
}

/// One direction of a tracked connection as conntrack keeps it: source, destination,
/// source port, destination port (ports 0 for protocols without them).
pub type CtEnds = (IpAddr, IpAddr, u16, u16);

/// A tracked connection: IP protocol number, its original tuple (as the opener sent it)
/// and its reply tuple (as the answer is expected: a translated connection's differs from
/// the original's reverse).
pub type CtEntry = (u8, CtEnds, CtEnds);

/// Lists the connection tracking table of the calling thread's network namespace over
/// ctnetlink (what `conntrack -L` does): every entry of `family` (`libc::AF_INET`,
/// `AF_INET6`, or 0 for both). Unlike `/proc/net/nf_conntrack` this needs no
/// `CONFIG_NF_CONNTRACK_PROCFS` and sends binary records, not formatted text.
pub fn conntrack_list(family: u8) -> Result<Vec<CtEntry>> {
    Ok(conntrack_list_status(family)?
        .into_iter()
        .map(|(e, _)| e)
        .collect())
}

/// What weft reads of a tracked connection besides its tuples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtMeta {
    /// Status bits (`CT_ASSURED`, ...).
    pub status: u32,
    /// The connection's mark.
    pub mark: u32,
    /// TCP's state (`enum tcp_conntrack`; `CT_TCP_ESTABLISHED`), 0 for other protocols.
    pub tcp_state: u8,
}

/// The TCP state `ESTABLISHED` of `CtMeta::tcp_state`.
pub const CT_TCP_ESTABLISHED: u8 = 3;

/// Status bits of a tracked connection (`CTA_STATUS`, enum ip_conntrack_status).
pub const CT_ASSURED: u32 = 0x04;
pub const CT_SRC_NAT: u32 = 0x10;
pub const CT_DST_NAT: u32 = 0x20;

/// As [`conntrack_list`], each entry with its status, mark and TCP state.
pub fn conntrack_list_status(family: u8) -> Result<Vec<(CtEntry, CtMeta)>> {
    let op = "list the tracked connections (ctnetlink)";
    let msg = message(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        family,
        0,
        &[],
    );
    ct_records(&msg, op, 1 << 16)
}

/// Sends a ctnetlink request and reads the connections it answers with until its end (a
/// dump's `NLMSG_DONE`, or the acknowledgement of a single `get`); the kernel's error as
/// an error.
fn ct_records(msg: &[u8], op: &str, bufsize: usize) -> Result<Vec<(CtEntry, CtMeta)>> {
    let s = open(op)?;
    s.send_to(msg, &SocketAddr::new(0, 0), 0)
        .map_err(|e| Error::new(op, e))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; bufsize];
    loop {
        let n = s
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| Error::new(op, e))?;
        match parse_conntrack(&buf[..n], &mut out) {
            Dump::More => {}
            Dump::Done => return Ok(out),
            Dump::Failed(errno) => {
                return Err(Error::new(op, std::io::Error::from_raw_os_error(errno)))
            }
        }
    }
}

/// Where a dump stands after one received buffer.
#[derive(Debug, PartialEq, Eq)]
enum Dump {
    More,
    Done,
    Failed(i32),
}

/// Appends the entries of one buffer of a ctnetlink dump to `out` (an entry without a
/// whole original and reply tuple is skipped).
fn parse_conntrack(buf: &[u8], out: &mut Vec<(CtEntry, CtMeta)>) -> Dump {
    for (kind, body) in messages(buf) {
        match kind {
            NLMSG_DONE => return Dump::Done,
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
                    .unwrap_or(-libc::EIO);
                return if code == 0 {
                    Dump::Done
                } else {
                    Dump::Failed(-code)
                };
            }
            k if k == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW && body.len() >= 4 => {
                let (mut orig, mut reply, mut meta) = (None, None, CtMeta::default());
                let be32 = |d: &[u8]| u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                for (akind, data) in attrs(&body[4..]) {
                    match (akind, data.len()) {
                        (CTA_TUPLE_ORIG, _) => orig = ct_tuple(data),
                        (CTA_TUPLE_REPLY, _) => reply = ct_tuple(data),
                        (CTA_STATUS, 4) => meta.status = be32(data),
                        (CTA_MARK, 4) => meta.mark = be32(data),
                        (CTA_PROTOINFO, _) => {
                            let tcp = attrs(data).find(|&(k, _)| k == CTA_PROTOINFO_TCP);
                            for (k, d) in tcp.into_iter().flat_map(|(_, t)| attrs(t)) {
                                if k == CTA_PROTOINFO_TCP_STATE && d.len() == 1 {
                                    meta.tcp_state = d[0];
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if let (Some((proto, o)), Some((_, r))) = (orig, reply) {
                    out.push(((proto, o, r), meta));
                }
            }
            _ => {}
        }
    }
    Dump::More
}

/// A `CTA_TUPLE_*` attribute's protocol and ends.
fn ct_tuple(buf: &[u8]) -> Option<(u8, CtEnds)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for (kind, data) in attrs(buf) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, a) in attrs(data) {
                    let addr = match (k, a.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
                            IpAddr::from(<[u8; 4]>::try_from(a).ok()?)
                        }
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                            IpAddr::from(<[u8; 16]>::try_from(a).ok()?)
                        }
                        _ => continue,
                    };
                    if matches!(k, CTA_IP_V4_SRC | CTA_IP_V6_SRC) {
                        src = Some(addr);
                    } else {
                        dst = Some(addr);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, a) in attrs(data) {
                    match (k, a.len()) {
                        (CTA_PROTO_NUM, 1) => proto = Some(a[0]),
                        (CTA_PROTO_SRC_PORT, 2) => sport = u16::from_be_bytes([a[0], a[1]]),
                        (CTA_PROTO_DST_PORT, 2) => dport = u16::from_be_bytes([a[0], a[1]]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((proto?, (src?, dst?, sport, dport)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_key_lays_each_field_out_in_four_byte_units() {
        let e = |addr: &str| SocketElement {
            addr: addr.parse().unwrap(),
            proto: 6,
            port: 4000,
            timeout_ms: 600_000,
        };
        assert_eq!(
            socket_key(&e("10.32.0.3")),
            [10, 32, 0, 3, 6, 0, 0, 0, 0x0f, 0xa0, 0, 0]
        );
        let v6 = socket_key(&e("fd32::2"));
        assert_eq!(v6.len(), 24);
        assert_eq!(&v6[..2], &[0xfd, 0x32]);
        assert_eq!(&v6[16..], &[6, 0, 0, 0, 0x0f, 0xa0, 0, 0]);
    }

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

    /// A dump record as ctnetlink sends it: the tuples of both directions, and the
    /// status and timeout attributes a parser must step over.
    fn ct_record(proto: u8, orig: CtEnds, reply: CtEnds) -> Vec<u8> {
        let tuple = |t: &mut Vec<u8>, (src, dst, sport, dport): CtEnds| {
            nested(t, CTA_TUPLE_IP, |ip| match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    attr(ip, CTA_IP_V4_SRC, &s.octets());
                    attr(ip, CTA_IP_V4_DST, &d.octets());
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    attr(ip, CTA_IP_V6_SRC, &s.octets());
                    attr(ip, CTA_IP_V6_DST, &d.octets());
                }
                _ => unreachable!(),
            });
            nested(t, CTA_TUPLE_PROTO, |p| {
                attr(p, CTA_PROTO_NUM, &[proto]);
                if sport != 0 {
                    attr(p, CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
                    attr(p, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
                }
            });
        };
        let mut a = Vec::new();
        nested(&mut a, CTA_TUPLE_ORIG, |t| tuple(t, orig));
        nested(&mut a, CTA_TUPLE_REPLY, |t| tuple(t, reply));
        attr(&mut a, 3, &8u32.to_be_bytes());
        attr(&mut a, 7, &120u32.to_be_bytes());
        attr(&mut a, 8, &0x0400_0000u32.to_be_bytes());
        if proto == 6 {
            nested(&mut a, CTA_PROTOINFO, |p| {
                nested(p, CTA_PROTOINFO_TCP, |t| {
                    attr(t, CTA_PROTOINFO_TCP_STATE, &[3]);
                    attr(t, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &[0x08, 0x08]);
                })
            });
        }
        message(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW, 2, 9, 2, 0, &a)
    }

    #[test]
    fn a_conntrack_dump_is_read_back_whole_and_ends_at_done() {
        let a: IpAddr = "10.32.0.5".parse().unwrap();
        let vip: IpAddr = "10.96.0.10".parse().unwrap();
        let b: IpAddr = "10.40.0.7".parse().unwrap();
        let a6: IpAddr = "fd32::5".parse().unwrap();
        let b6: IpAddr = "fd32:0:0:1::7".parse().unwrap();
        // A DNAT'd TCP connection, a UDP one over IPv6, an ICMP echo (no ports).
        let tcp = (6, (a, vip, 40000, 80), (b, a, 8080, 40000));
        let udp = (17, (a6, b6, 5353, 53), (b6, a6, 53, 5353));
        let icmp = (1, (a, b, 0, 0), (b, a, 0, 0));
        let mut buf = Vec::new();
        for (p, o, r) in [tcp, udp, icmp] {
            buf.extend(ct_record(p, o, r));
        }
        let mut got = Vec::new();
        assert_eq!(parse_conntrack(&buf, &mut got), Dump::More);
        // (Each record's status: 8, confirmed; its mark 0x04000000; TCP established.)
        let meta = |tcp_state| CtMeta {
            status: 8,
            mark: 0x0400_0000,
            tcp_state,
        };
        assert_eq!(got, vec![(tcp, meta(3)), (udp, meta(0)), (icmp, meta(0))]);
        // The dump's end, in the same buffer as the last records or alone.
        buf.extend(raw_message(NLMSG_DONE, 2, 9, 0, 0, &[]));
        let mut again = Vec::new();
        assert_eq!(parse_conntrack(&buf, &mut again), Dump::Done);
        assert_eq!(again, got);
        // An error ends it with the kernel's errno.
        let mut err = raw_message(NLMSG_ERROR, 0, 9, 0, 0, &[]);
        err.truncate(16);
        err.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        err[..4].copy_from_slice(&20u32.to_ne_bytes());
        assert_eq!(
            parse_conntrack(&err, &mut Vec::new()),
            Dump::Failed(libc::EPERM)
        );
        // Truncated input yields what is whole, never a panic.
        for cut in 0..buf.len() {
            let _ = parse_conntrack(&buf[..cut], &mut Vec::new());
        }
        // A record whose reply tuple is cut off is skipped, not half read.
        let mut half = ct_record(tcp.0, tcp.1, tcp.2);
        let orig_len = 20 + u16::from_ne_bytes([half[20], half[21]]) as usize;
        half.truncate(orig_len);
        half[..4].copy_from_slice(&(orig_len as u32).to_ne_bytes());
        let mut none = Vec::new();
        parse_conntrack(&half, &mut none);
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn the_liberal_update_names_the_entry_and_changes_only_the_liberal_flags() {
        let a: IpAddr = "10.32.0.5".parse().unwrap();
        let b: IpAddr = "10.40.0.7".parse().unwrap();
        let msg = liberal_message(a, b, 40000, 80);
        // A change (`new` without create or replace), acknowledged.
        let kind = u16::from_ne_bytes([msg[4], msg[5]]);
        let flags = u16::from_ne_bytes([msg[6], msg[7]]);
        assert_eq!(kind, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(msg[16], libc::AF_INET as u8);
        let body = &msg[20..];
        let mut tuple = None;
        let mut tcp = Vec::new();
        for (k, data) in attrs(body) {
            match k {
                CTA_TUPLE_ORIG => tuple = ct_tuple(data),
                CTA_PROTOINFO => {
                    for (pk, pd) in attrs(data) {
                        assert_eq!(pk, CTA_PROTOINFO_TCP);
                        tcp.extend(attrs(pd).map(|(fk, fd)| (fk, fd.to_vec())));
                    }
                }
                other => panic!("unexpected attribute {other}"),
            }
        }
        assert_eq!(tuple, Some((6, (a, b, 40000, 80))));
        // Both directions: liberal set, data-unacknowledged cleared (the mask), state,
        // window scale and the other flags untouched.
        assert_eq!(
            tcp,
            vec![
                (CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, vec![0x08, 0x18]),
                (CTA_PROTOINFO_TCP_FLAGS_REPLY, vec![0x08, 0x18]),
            ]
        );
    }
}
