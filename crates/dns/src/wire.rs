//! DNS messages in and out (docs/dns.md, "The server"): the only module that uses
//! hickory-proto, so its next API change stays here.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::zone::{parse_reverse, Lookup, Reverse, Zone};

/// How a message came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: answers are limited to the client's EDNS size (512 without EDNS).
    Udp,
    /// TCP: answers are whole.
    Tcp,
}

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this answer back.
    Reply(Vec<u8>),
    /// Not ours: send the message as it came to the upstream servers.
    Forward,
    /// Say nothing (not a query).
    Drop,
}

/// The size a UDP answer may have at most, whatever the client offers.
pub const MAX_UDP: u16 = 4096;
/// Without EDNS.
pub const MIN_UDP: u16 = 512;

/// Answers `packet`; `seed` shuffles the addresses.
pub fn respond(zone: &Zone, packet: &[u8], transport: Transport, seed: u64) -> Action {
    let req = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => return formerr(packet),
    };
    if req.metadata.message_type != MessageType::Query {
        return Action::Drop;
    }
    let mut resp = response_to(&req);
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => usize::from(
            req.edns
                .as_ref()
                .map_or(MIN_UDP, |e| e.max_payload().clamp(MIN_UDP, MAX_UDP)),
        ),
    };
    if req.edns.as_ref().is_some_and(|e| e.version() > 0) {
        resp.metadata.response_code = ResponseCode::BADVERS;
        return reply(resp, limit);
    }
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return reply(resp, limit);
    }
    if req.queries.len() != 1 {
        resp.metadata.response_code = ResponseCode::FormErr;
        return reply(resp, limit);
    }
    let q = &req.queries[0];
    let asked = q.name().clone();
    let name = lower(&asked);
    let qtype = q.query_type();
    if zone.config().is_none() {
        return Action::Forward;
    }
    if q.query_class() != DNSClass::IN {
        if zone.in_domain(&name) {
            resp.metadata.response_code = ResponseCode::Refused;
            return reply(resp, limit);
        }
        return Action::Forward;
    }
    let ttl = zone.ttl();
    let domain = zone.domain().to_string();
    if zone.in_domain(&name) || (!name.contains('.') && !name.is_empty()) {
        let full = if zone.in_domain(&name) {
            name.clone()
        } else {
            format!("{name}.{domain}")
        };
        match zone.lookup(&full) {
            Lookup::Found(addrs) => {
                resp.metadata.authoritative = true;
                let mut recs: Vec<Record> = addrs
                    .iter()
                    .filter_map(|a| addr_record(&asked, ttl, *a, qtype))
                    .collect();
                if recs.is_empty() {
                    resp.authorities.push(soa(&domain, ttl));
                }
                shuffle(&mut recs, seed);
                resp.answers = recs;
            }
            Lookup::Empty => {
                resp.metadata.authoritative = true;
                if full == domain && matches!(qtype, RecordType::SOA | RecordType::ANY) {
                    resp.answers.push(soa(&domain, ttl));
                } else {
                    resp.authorities.push(soa(&domain, ttl));
                }
            }
            Lookup::Missing if zone.in_domain(&name) => {
                resp.metadata.authoritative = true;
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.authorities.push(soa(&domain, ttl));
            }
            Lookup::Missing => return Action::Forward,
        }
        return reply(resp, limit);
    }
    match parse_reverse(&name) {
        Some(Reverse::Addr(ip)) => {
            let names = zone.ptr(ip);
            let Some(apex) = zone.reverse_zone(ip.into()) else {
                if names.is_empty() {
                    return Action::Forward;
                }
                return ptr_answer(resp, &asked, names, qtype, &domain, ttl, limit);
            };
            if names.is_empty() {
                resp.metadata.authoritative = true;
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.authorities.push(soa(&apex, ttl));
                return reply(resp, limit);
            }
            ptr_answer(resp, &asked, names, qtype, &apex, ttl, limit)
        }
        Some(Reverse::Prefix(net)) => match zone.reverse_zone(net) {
            Some(apex) => {
                resp.metadata.authoritative = true;
                if name == apex && matches!(qtype, RecordType::SOA | RecordType::ANY) {
                    resp.answers.push(soa(&apex, ttl));
                } else {
                    resp.authorities.push(soa(&apex, ttl));
                }
                reply(resp, limit)
            }
            None => Action::Forward,
        },
        None => Action::Forward,
    }
}

fn ptr_answer(
    mut resp: Message,
    asked: &Name,
    names: &[String],
    qtype: RecordType,
    zone_apex: &str,
    ttl: u32,
    limit: usize,
) -> Action {
    resp.metadata.authoritative = true;
    if matches!(qtype, RecordType::PTR | RecordType::ANY) {
        for n in names {
            if let Ok(target) = Name::from_ascii(format!("{n}.")) {
                resp.answers.push(Record::from_rdata(
                    asked.clone(),
                    ttl,
                    RData::PTR(PTR(target)),
                ));
            }
        }
    } else {
        resp.authorities.push(soa(zone_apex, ttl));
    }
    reply(resp, limit)
}

/// The lower-case text of a name, without the final dot.
fn lower(n: &Name) -> String {
    let mut s = n.to_ascii().to_ascii_lowercase();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

fn addr_record(owner: &Name, ttl: u32, a: IpAddr, qtype: RecordType) -> Option<Record> {
    let rdata = match (a, qtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(owner.clone(), ttl, rdata))
}

/// The SOA of a zone whose apex is `apex`: its minimum (the negative TTL) is the TTL.
fn soa(apex: &str, ttl: u32) -> Record {
    let n = |s: String| Name::from_ascii(s).unwrap_or_else(|_| Name::root());
    let rdata = SOA::new(
        n(format!("ns.{apex}.")),
        n(format!("hostmaster.{apex}.")),
        1,
        3600,
        600,
        86400,
        ttl,
    );
    Record::from_rdata(n(format!("{apex}.")), ttl, RData::SOA(rdata))
}

/// Encodes `resp` in at most `limit` bytes: when the whole answer does not fit, as many
/// answer records as fit (a record boundary), no authority, and TC set.
fn reply(mut resp: Message, limit: usize) -> Action {
    match resp.to_vec() {
        Ok(b) if b.len() <= limit => return Action::Reply(b),
        Ok(_) => {}
        Err(_) => return servfail_of(&resp).map_or(Action::Drop, Action::Reply),
    }
    resp.metadata.truncation = true;
    resp.authorities.clear();
    resp.additionals.clear();
    let answers = std::mem::take(&mut resp.answers);
    // The most answers that fit: encoded sizes grow with the count.
    let (mut lo, mut hi) = (0, answers.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        resp.answers = answers[..mid].to_vec();
        match resp.to_vec() {
            Ok(b) if b.len() <= limit => lo = mid,
            _ => hi = mid - 1,
        }
    }
    resp.answers = answers[..lo].to_vec();
    match resp.to_vec() {
        Ok(b) if b.len() <= limit => Action::Reply(b),
        _ => Action::Drop,
    }
}

/// The empty answer to `req`: its id, opcode, RD and question, recursion available, and
/// an OPT when it had one.
fn response_to(req: &Message) -> Message {
    let mut r = Message::response(req.metadata.id, req.metadata.op_code);
    r.metadata.recursion_desired = req.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut o = Edns::new();
        o.set_max_payload(MAX_UDP);
        r.edns = Some(o);
    }
    r
}

fn servfail_of(m: &Message) -> Option<Vec<u8>> {
    let mut r = response_to(m);
    r.metadata.response_code = ResponseCode::ServFail;
    r.to_vec().ok()
}

/// SERVFAIL for the query `packet` (the upstream servers did not answer); None when it
/// is not a readable query.
pub fn servfail(packet: &[u8]) -> Option<Vec<u8>> {
    let m = Message::from_vec(packet).ok()?;
    (m.metadata.message_type == MessageType::Query)
        .then(|| servfail_of(&m))
        .flatten()
}

/// FORMERR for a message that cannot be parsed, from its header alone; nothing when not
/// even a query header is there.
fn formerr(packet: &[u8]) -> Action {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return Action::Drop;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let mut m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
    m.metadata.recursion_available = true;
    m.to_vec().map_or(Action::Drop, Action::Reply)
}

/// Whether `answer` is an answer to `query` (same id, a response): what comes back from
/// an upstream server is checked before it is passed on.
pub fn answers(query: &[u8], answer: &[u8]) -> bool {
    query.len() >= 12 && answer.len() >= 12 && query[..2] == answer[..2] && answer[2] & 0x80 != 0
}

/// A small permutation from `seed` (xorshift), enough to spread clients over addresses.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests;
