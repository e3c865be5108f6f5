//! The compiler from the world to one host's kernel rules (docs/policy.md, "Compile
//! scheme"): the nftables table `inet weft_policy` (policy chains with interval sets,
//! group chains shared by endpoints with the same policies, verdict maps from each
//! isolated local address to its group), the addresses to exempt from `notrack` and to
//! keep off the fast path, and the `nft -f` scripts that make the kernel match it: whole,
//! or as the difference from what was applied before.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use crate::engine::{isolating, peer_matches, selects, Dir};
use crate::k8s::{NetworkPolicy, PortValue, Protocol, Rule};
use crate::model::{Endpoint, World};
use crate::ranges::{addr_num, cidr_span, show_addr_interval, Intervals};
use crate::selector::Labels;

/// The table's family and name.
pub const TABLE: &str = "inet weft_policy";
/// The policy table's name alone.
pub const TABLE_NAME: &str = "weft_policy";

/// The set of isolated addresses in weft's `ip weft` / `ip6 weft` tables (exempt from
/// their `notrack`).
pub const ISOLATED_SET: &str = "isolated";

/// The NFLOG group of weft's policy log.
pub const LOG_GROUP: u16 = 7;

/// The conntrack mark bit of a TCP connection picked up mid-stream.
pub const PICKUP_MARK: u32 = 0x0200_0000;

/// The conntrack mark bit of a connection whose first allowed packet was logged.
pub const LOGGED_MARK: u32 = 0x0400_0000;

/// The conntrack mark bit of an established TCP connection of an isolated pod that was
/// logged for the agent to promote to the fast path (docs/policy.md, "Established
/// connections").
pub const PROMOTE_MARK: u32 = 0x0800_0000;

/// Allowed new connections logged per second per host, at most.
pub const ALLOW_LOG_RATE: u32 = 1000;

/// The prefix of every policy log message.
pub const LOG_PREFIX: &str = "weft";

/// Drop log messages per second per host, at most (the counters count every drop).
pub const DROP_LOG_RATE: u32 = 1000;

/// The type of a named set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// IPv4 intervals.
    Addr4,
    /// IPv6 intervals.
    Addr6,
    /// `inet_proto . inet_service` intervals.
    ProtoPort,
    /// `ipv4_addr . inet_proto . inet_service`.
    Addr4ProtoPort,
    /// `ipv6_addr . inet_proto . inet_service`.
    Addr6ProtoPort,
}

impl SetKind {
    fn decl(self) -> &'static str {
        match self {
            SetKind::Addr4 => "type ipv4_addr; flags interval;",
            SetKind::Addr6 => "type ipv6_addr; flags interval;",
            SetKind::ProtoPort => "type inet_proto . inet_service; flags interval;",
            SetKind::Addr4ProtoPort => "type ipv4_addr . inet_proto . inet_service;",
            SetKind::Addr6ProtoPort => "type ipv6_addr . inet_proto . inet_service;",
        }
    }
}

/// A named set and its elements (nftables text, sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Its type.
    pub kind: SetKind,
    /// Its elements.
    pub elements: Vec<String>,
}

/// What a chain stands for, to explain log messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainInfo {
    /// Endpoints isolated by these policies in this direction.
    Group {
        /// Its direction.
        dir: Dir,
        /// The policies, in key order.
        policies: Vec<String>,
    },
}

/// One host's compiled policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Local addresses isolated in some direction.
    pub isolated: BTreeSet<IpAddr>,
    /// Per direction and family (`true` = IPv6): local address → its group chain.
    pub dispatch: BTreeMap<(Dir, bool), BTreeMap<IpAddr, String>>,
    /// Chains by name, with their rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Named sets.
    pub sets: BTreeMap<String, Set>,
    /// What each group chain is (a drop's log names its chain).
    pub info: BTreeMap<String, ChainInfo>,
}

/// 48 bits of FNV-1a 64: stable names for chains and sets, and policies' buckets.
fn hash48(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h >> 16
}

/// [`hash48`] as 12 hex digits.
fn short_hash(s: &str) -> String {
    format!("{:012x}", hash48(s))
}

/// The chain of a policy's rules in one direction.
pub fn policy_chain(key: &str, dir: Dir) -> String {
    format!("p_{}_{}", short_hash(key), dir.short())
}

/// A chain named by the policies it jumps to (`kind` `g`: a group, `b`: a bucket).
fn named_by<S: AsRef<str>>(kind: char, dir: Dir, policies: &[S]) -> String {
    let keys: Vec<&str> = policies.iter().map(AsRef::as_ref).collect();
    format!("{kind}_{}_{}", short_hash(&keys.join(",")), dir.short())
}

fn group_chain(dir: Dir, policies: &[String]) -> String {
    named_by('g', dir, policies)
}

/// An endpoint's group in one direction: its chain and the policies that isolate it.
pub type Group = (String, Vec<String>);

/// The groups of endpoint kinds. Which policies isolate an endpoint depends only on its
/// namespace and labels (and the policies), so the pods of one kind (a deployment's
/// replicas) share one computation, which with a thousand policies selecting them costs
/// more than the rest of a CNI ADD's isolation. Valid for one policy map, which it holds
/// so that a new map is never mistaken for it (`World::policies` is shared, not copied,
/// while no object changes).
#[derive(Debug, Clone, Default)]
pub struct Groups {
    policies: Option<Arc<BTreeMap<String, NetworkPolicy>>>,
    kinds: BTreeMap<(Dir, String, Labels), Option<Group>>,
}

impl Groups {
    /// `e`'s group in `dir`; None when no policy isolates it that way.
    pub fn of(&mut self, world: &World, e: &Endpoint, dir: Dir) -> Option<&Group> {
        if !self
            .policies
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, &world.policies))
        {
            self.kinds.clear();
            self.policies = Some(world.policies.clone());
        }
        self.kinds
            .entry((dir, e.namespace.clone(), e.labels.clone()))
            .or_insert_with(|| {
                let pols: Vec<String> = isolating(world, e, dir).iter().map(|p| p.key()).collect();
                (!pols.is_empty()).then(|| (group_chain(dir, &pols), pols))
            })
            .as_ref()
    }
}

/// Groups of more policies than this jump to them through bucket chains.
const BUCKET_OVER: usize = 32;

/// The bucket chains of a large group: a policy's bucket is fixed by its key.
const BUCKETS: u64 = 64;

/// The jumps at the head of a group chain: to each policy's chain, or, for a large group,
/// to bucket chains that jump to them. Chains are named by their contents, so a policy
/// added to or removed from a large group changes the group's chain (64 jumps at most)
/// and its own bucket's (a sixty-fourth of the group), and every other bucket chain is
/// the same chain as before: a change among a thousand policies does not rewrite a
/// thousand rules on every host.
fn group_jumps(c: &mut Compiled, dir: Dir, pols: &[String]) -> Vec<String> {
    let jumps = |keys: &[&String]| -> Vec<String> {
        keys.iter()
            .map(|k| format!("jump {}", policy_chain(k, dir)))
            .collect()
    };
    let all: Vec<&String> = pols.iter().collect();
    if pols.len() <= BUCKET_OVER {
        return jumps(&all);
    }
    let mut buckets: BTreeMap<u64, Vec<&String>> = BTreeMap::new();
    for k in all {
        buckets.entry(hash48(k) % BUCKETS).or_default().push(k);
    }
    let mut out = Vec::new();
    for keys in buckets.values() {
        let name = named_by('b', dir, keys);
        c.chains.entry(name.clone()).or_insert_with(|| jumps(keys));
        out.push(format!("jump {name}"));
    }
    out
}

/// Compiles `world` for the endpoints `local` says are this host's.
pub fn compile(world: &World, local: impl Fn(&Endpoint) -> bool) -> Compiled {
    let mut c = Compiled::default();
    let mut used: BTreeSet<(String, Dir)> = BTreeSet::new();
    let locals: Vec<&Endpoint> = world.endpoints.values().filter(|e| local(e)).collect();
    let mut groups = Groups::default();
    // Chains for the groups of every endpoint of the cluster, dispatch for the local ones:
    // a new pod whose group has a member anywhere is isolated by the ADD's quick step
    // (elements over netlink), not by a compile that runs `nft` (docs/policy.md).
    for e in world.endpoints.values() {
        let is_local = local(e);
        for dir in [Dir::Ingress, Dir::Egress] {
            let Some((g, pols)) = groups.of(world, e, dir) else {
                continue;
            };
            let (g, pols) = (g.clone(), pols.clone());
            for a in e.addrs.iter().filter(|_| is_local) {
                c.isolated.insert(*a);
                c.dispatch
                    .entry((dir, a.is_ipv6()))
                    .or_default()
                    .insert(*a, g.clone());
            }
            if !c.chains.contains_key(&g) {
                let mut rules = group_jumps(&mut c, dir, &pols);
                // A pod never blocks itself: reached through a hairpin DNAT (its own
                // hostPort or Service), its packets cross `forward` from itself to itself.
                // Looked up only by what would be dropped.
                rules.push(format!("ip saddr . ip daddr @{} accept", self_name(false)));
                rules.push(format!("ip6 saddr . ip6 daddr @{} accept", self_name(true)));
                rules.push(format!(
                    "limit rate {DROP_LOG_RATE}/second burst 100 packets log prefix \"{LOG_PREFIX} D {} {g}\" group {LOG_GROUP}",
                    dir.short()
                ));
                rules.push(format!("counter name \"drop_{}\" drop", dir.short()));
                c.chains.insert(g.clone(), rules);
                c.info.insert(
                    g,
                    ChainInfo::Group {
                        dir,
                        policies: pols.clone(),
                    },
                );
            }
            for k in pols {
                used.insert((k, dir));
            }
        }
    }
    for (key, dir) in used {
        if let Some(p) = world.policies.get(&key) {
            policy_rules(world, p, dir, &locals, &mut c);
        }
    }
    c
}

/// The nftables family of a table an element goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFamily {
    /// `inet` (weft's policy table).
    Inet,
    /// `ip` (weft's IPv4 table).
    Ip,
    /// `ip6` (weft's IPv6 table).
    Ip6,
}

impl TableFamily {
    /// nftables' name of the family.
    pub fn name(self) -> &'static str {
        match self {
            TableFamily::Inet => "inet",
            TableFamily::Ip => "ip",
            TableFamily::Ip6 => "ip6",
        }
    }
}

/// One element to add to (or delete from) a set or verdict map: an address, and for a
/// verdict map the chain to jump to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementOp {
    /// Delete it (it is there) instead of adding it.
    pub delete: bool,
    /// The table's family.
    pub family: TableFamily,
    /// The table.
    pub table: &'static str,
    /// The set or map.
    pub set: String,
    /// The address.
    pub key: IpAddr,
    /// The key is the address twice (`A . A`, the `self` sets).
    pub pair: bool,
    /// The chain a verdict map element jumps to.
    pub jump: Option<String>,
}

/// The `nft -f` text of element changes (one transaction, in order).
pub fn elements_script(ops: &[ElementOp]) -> String {
    let mut s = String::new();
    if ops
        .iter()
        .any(|e| e.table == "weft" && e.set == ISOLATED_SET)
    {
        declare_isolated(&mut s);
    }
    for e in ops {
        let value = match (&e.jump, e.delete) {
            (Some(g), false) => format!("{} : jump {g}", e.key),
            _ if e.pair => format!("{0} . {0}", e.key),
            _ => e.key.to_string(),
        };
        let _ = writeln!(
            s,
            "{} element {} {} {} {{ {value} }}",
            if e.delete { "delete" } else { "add" },
            e.family.name(),
            e.table,
            e.set
        );
    }
    s
}

/// The change from `old` to `new` as element operations alone, when that is all it is:
/// the same chains with the same rules and the same sets with the same elements, only
/// isolation and dispatch differing (endpoints of this host come, go or move between
/// groups). Those are applied straight over netlink; `nft` would read the whole ruleset
/// first, which with a thousand policies costs more than the change (docs/policy.md,
/// "Programming"). None when anything else differs: then [`diff_script`].
pub fn diff_elements(old: &Compiled, new: &Compiled) -> Option<Vec<ElementOp>> {
    if old.chains != new.chains || old.sets != new.sets {
        return None;
    }
    let mut out = Vec::new();
    // Isolated before dispatched, dispatched elements replaced in place, and isolation
    // lifted last: the same order as diff_script, all in one transaction anyway.
    for a in new.isolated.difference(&old.isolated) {
        out.extend(isolation_ops(false, *a));
    }
    let empty = BTreeMap::new();
    for dir in [Dir::Ingress, Dir::Egress] {
        for v6 in [false, true] {
            let o = old.dispatch.get(&(dir, v6)).unwrap_or(&empty);
            let n = new.dispatch.get(&(dir, v6)).unwrap_or(&empty);
            for (a, g) in o {
                if n.get(a) != Some(g) {
                    out.push(policy_op(true, vmap_name(dir, v6), *a, None));
                }
                if !n.contains_key(a) {
                    out.push(policy_op(true, held_name(dir, v6), *a, None));
                }
            }
            for (a, g) in n {
                if !o.contains_key(a) {
                    out.push(policy_op(false, held_name(dir, v6), *a, None));
                }
                if o.get(a) != Some(g) {
                    out.push(policy_op(false, vmap_name(dir, v6), *a, Some(g.clone())));
                }
            }
        }
    }
    for a in old.isolated.difference(&new.isolated) {
        out.extend(isolation_ops(true, *a));
    }
    Some(out)
}

/// An element change in weft's policy table.
fn policy_op(delete: bool, set: String, key: IpAddr, jump: Option<String>) -> ElementOp {
    ElementOp {
        delete,
        family: TableFamily::Inet,
        table: TABLE_NAME,
        set,
        key,
        pair: false,
        jump,
    }
}

/// An address into (or out of) the isolated sets: the policy table's `iso4`/`iso6` and
/// `self4`/`self6` (as `A . A`), and weft's `isolated` set of its family.
fn isolation_ops(delete: bool, a: IpAddr) -> [ElementOp; 3] {
    [
        policy_op(delete, iso_set(&a), a, None),
        ElementOp {
            pair: true,
            ..policy_op(delete, self_name(a.is_ipv6()).into(), a, None)
        },
        ElementOp {
            delete,
            family: weft_table_family(&a),
            table: "weft",
            set: ISOLATED_SET.into(),
            key: a,
            pair: false,
            jump: None,
        },
    ]
}

fn iso_set(a: &IpAddr) -> String {
    iso_name(a.is_ipv6()).into()
}

fn weft_table_family(a: &IpAddr) -> TableFamily {
    if a.is_ipv6() {
        TableFamily::Ip6
    } else {
        TableFamily::Ip
    }
}

/// What an ADD's quick step changes, in two transactions: `isolate` before the answer
/// (plain set elements: the endpoint's addresses are dropped in each direction a policy
/// isolates it), `dispatch` after it (the verdict map elements that send its packets to
/// its group's allow rules).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quick {
    /// Isolation: `iso4`/`iso6`, weft's `isolated` sets and the held sets.
    pub isolate: Vec<ElementOp>,
    /// Dispatch: a `jump` element per address and direction.
    pub dispatch: Vec<ElementOp>,
}

impl Quick {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.isolate.is_empty() && self.dispatch.is_empty()
    }
}

/// Isolates one new local endpoint on top of `applied` at once, when the group chains it
/// needs are there already: returns the element changes (none when no policy isolates
/// it) and records them in `applied`; an address still dispatched to another group (its
/// last owner's DEL not applied yet) is taken out of it with the isolation and put in
/// the new one with the dispatch. None when a group chain is missing: the caller compiles
/// the whole world. The endpoint's place in other rules' peer sets (and named-port sets)
/// is left to that whole compile: allow rules may follow, isolation may not. Adding a
/// `jump` element makes the kernel check the whole table's jump graph when it commits
/// (about 0.7 ms with a thousand policies; a plain element 0.1 ms), which is why the
/// dispatch is a second transaction, after the answer (docs/policy.md, "Applying").
pub fn isolate_one(
    applied: &mut Compiled,
    kinds: &mut Groups,
    world: &World,
    e: &Endpoint,
) -> Option<Quick> {
    let mut groups = Vec::new();
    for dir in [Dir::Ingress, Dir::Egress] {
        if let Some((g, _)) = kinds.of(world, e, dir) {
            if !applied.chains.contains_key(g) {
                return None;
            }
            groups.push((dir, g.clone()));
        }
    }
    let mut out = Quick::default();
    if groups.is_empty() {
        return Some(out);
    }
    for a in &e.addrs {
        let v6 = a.is_ipv6();
        if applied.isolated.insert(*a) {
            out.isolate.extend(isolation_ops(false, *a));
        }
        for (dir, g) in &groups {
            // The address may still be dispatched for an endpoint just gone (its DEL not
            // applied yet; IPAM hands the address out again): the same group stays, another
            // is left in the first batch and the new one joined in the second.
            let old = applied
                .dispatch
                .entry((*dir, v6))
                .or_default()
                .insert(*a, g.clone());
            if old.as_ref() == Some(g) {
                continue;
            }
            // Out of the other group, or held, before the answer; in its own after it.
            out.isolate.push(if old.is_some() {
                policy_op(true, vmap_name(*dir, v6), *a, None)
            } else {
                policy_op(false, held_name(*dir, v6), *a, None)
            });
            out.dispatch
                .push(policy_op(false, vmap_name(*dir, v6), *a, Some(g.clone())));
        }
    }
    Some(out)
}

/// The chain and sets of policy `p` in `dir`.
fn policy_rules(
    world: &World,
    p: &NetworkPolicy,
    dir: Dir,
    locals: &[&Endpoint],
    c: &mut Compiled,
) {
    let chain = policy_chain(&p.key(), dir);
    let rules = match dir {
        Dir::Ingress => &p.ingress,
        Dir::Egress => &p.egress,
    };
    let peer_field = match dir {
        Dir::Ingress => "saddr",
        Dir::Egress => "daddr",
    };
    let mut out = Vec::new();
    for (k, r) in rules.iter().enumerate() {
        let base = format!("{chain}_{k}");
        // The peer part, per family: None = any address.
        let peers: [Option<String>; 2] = if r.peers.is_empty() {
            [None, None]
        } else {
            let sets = peer_intervals(world, p, r);
            let mut parts = [None, None];
            for (i, v6) in [false, true].into_iter().enumerate() {
                let (fam, kind, suffix) = if v6 {
                    ("ip6", SetKind::Addr6, "a6")
                } else {
                    ("ip", SetKind::Addr4, "a4")
                };
                let iv = &sets[i];
                let name = format!("{base}_{suffix}");
                let elements: Vec<String> = iv
                    .iter()
                    .map(|(lo, hi)| show_addr_interval(lo, hi, v6))
                    .collect();
                // An empty family matches nothing: a rule that can never match is left out.
                parts[i] = Some(if elements.is_empty() {
                    String::new()
                } else {
                    c.sets.insert(name.clone(), Set { kind, elements });
                    format!("{fam} {peer_field} @{name}")
                });
            }
            parts
        };
        let (numeric, named) = split_ports(r);
        let fams: &[Option<bool>] = if peers[0].is_none() {
            &[None]
        } else {
            &[Some(false), Some(true)]
        };
        if r.ports.is_empty() {
            for f in fams {
                match f {
                    None => out.push("accept".to_string()),
                    Some(v6) => match &peers[usize::from(*v6)] {
                        Some(m) if !m.is_empty() => out.push(format!("{m} accept")),
                        _ => {}
                    },
                }
            }
            continue;
        }
        if !numeric.is_empty() {
            let name = format!("{base}_pp");
            c.sets.insert(
                name.clone(),
                Set {
                    kind: SetKind::ProtoPort,
                    elements: numeric,
                },
            );
            let ports = format!("meta l4proto . th dport @{name}");
            for f in fams {
                match f {
                    None => out.push(format!("{ports} accept")),
                    Some(v6) => match &peers[usize::from(*v6)] {
                        Some(m) if !m.is_empty() => out.push(format!("{m} {ports} accept")),
                        _ => {}
                    },
                }
            }
        }
        if !named.is_empty() {
            // Named ports resolve at the destination: the local endpoints the policy
            // selects (ingress) or the peer pods (egress).
            let dsts: Vec<&Endpoint> = match dir {
                Dir::Ingress => locals
                    .iter()
                    .copied()
                    .filter(|e| selects(p, e, Dir::Ingress))
                    .collect(),
                Dir::Egress => world.endpoints.values().collect(),
            };
            for v6 in [false, true] {
                let mut elements = Vec::new();
                for e in &dsts {
                    for a in e.addrs.iter().filter(|a| a.is_ipv6() == v6) {
                        if dir == Dir::Egress
                            && !r.peers.is_empty()
                            && !r
                                .peers
                                .iter()
                                .any(|x| peer_matches(world, &p.namespace, x, *a, Some(e)))
                        {
                            continue;
                        }
                        for (name, proto) in &named {
                            if let Some(n) = e.named_port(name, *proto) {
                                elements.push(format!("{a} . {} . {n}", proto.nft()));
                            }
                        }
                    }
                }
                elements.sort();
                elements.dedup();
                if elements.is_empty() {
                    continue;
                }
                let (fam, kind, suffix) = if v6 {
                    ("ip6", SetKind::Addr6ProtoPort, "n6")
                } else {
                    ("ip", SetKind::Addr4ProtoPort, "n4")
                };
                let name = format!("{base}_{suffix}");
                c.sets.insert(name.clone(), Set { kind, elements });
                let m = format!("{fam} daddr . meta l4proto . th dport @{name}");
                // Egress: the set holds only peers. Ingress: the peers are sources.
                let peer = match (dir, &peers[usize::from(v6)]) {
                    (Dir::Egress, _) | (_, None) => String::new(),
                    (Dir::Ingress, Some(x)) if x.is_empty() => continue,
                    (Dir::Ingress, Some(x)) => format!("{x} "),
                };
                out.push(format!("{peer}{m} accept"));
            }
        }
    }
    c.chains.insert(chain, out);
}

/// The addresses a rule's peers match, IPv4 and IPv6: pods as single addresses, ipBlocks
/// minus their own excepts.
fn peer_intervals(world: &World, p: &NetworkPolicy, r: &Rule) -> [Intervals; 2] {
    let mut out = [Intervals::new(), Intervals::new()];
    for peer in &r.peers {
        if let Some(b) = &peer.ip_block {
            let mut iv = Intervals::new();
            let (lo, hi) = cidr_span(&b.cidr);
            iv.add(lo, hi);
            for e in &b.except {
                let (lo, hi) = cidr_span(e);
                iv.remove(lo, hi);
            }
            out[usize::from(b.cidr.addr().is_ipv6())].extend(&iv);
            continue;
        }
        for e in world.endpoints.values() {
            for a in &e.addrs {
                if peer_matches(world, &p.namespace, peer, *a, Some(e)) {
                    let n = addr_num(*a);
                    out[usize::from(a.is_ipv6())].add(n, n);
                }
            }
        }
    }
    out
}

/// A rule's numeric ports as `proto . first-last` elements (merged per protocol), and its
/// named ports.
fn split_ports(r: &Rule) -> (Vec<String>, Vec<(String, Protocol)>) {
    let mut per: BTreeMap<Protocol, Intervals> = BTreeMap::new();
    let mut named = Vec::new();
    for p in &r.ports {
        match &p.port {
            None => per.entry(p.protocol).or_default().add(0, 65535),
            Some(PortValue::Number(n)) => per
                .entry(p.protocol)
                .or_default()
                .add(u128::from(*n), u128::from(p.end_port.unwrap_or(*n))),
            Some(PortValue::Name(s)) => named.push((s.clone(), p.protocol)),
        }
    }
    let mut out = Vec::new();
    for (proto, iv) in per {
        for (lo, hi) in iv.iter() {
            out.push(if lo == hi {
                format!("{} . {lo}", proto.nft())
            } else {
                format!("{} . {lo}-{hi}", proto.nft())
            });
        }
    }
    named.sort();
    named.dedup();
    (out, named)
}

fn vmap_name(dir: Dir, v6: bool) -> String {
    format!("{}{}", dir.short(), if v6 { 6 } else { 4 })
}

/// The set of local addresses isolated in `dir` (the dispatch map's keys): an address in
/// it without its dispatch element yet is dropped (fail closed), by the held chain.
fn held_name(dir: Dir, v6: bool) -> String {
    format!("{}_held", vmap_name(dir, v6))
}

/// The chain that drops (logged, counted) the packets of an address isolated in `dir`
/// whose dispatch element is not there yet.
fn held_chain(dir: Dir) -> String {
    format!("held_{}", dir.short())
}

/// The dispatch map's keys, as set elements.
fn held_elements(m: &BTreeMap<IpAddr, String>) -> Vec<String> {
    m.keys().map(ToString::to_string).collect()
}

fn weft_family(v6: bool) -> &'static str {
    if v6 {
        "ip6 weft"
    } else {
        "ip weft"
    }
}

/// Declarations of weft's `isolated` sets (created if missing, merged if present).
fn declare_isolated(s: &mut String) {
    for v6 in [false, true] {
        let _ = writeln!(
            s,
            "table {} {{\n  set {ISOLATED_SET} {{ {} }}\n}}",
            weft_family(v6),
            addr_decl(v6)
        );
    }
}

/// The set of `A . A` for every isolated address `A` of one family.
fn self_name(v6: bool) -> &'static str {
    if v6 {
        "self6"
    } else {
        "self4"
    }
}

/// The declaration of a `self` set.
fn pair_decl(v6: bool) -> &'static str {
    if v6 {
        "type ipv6_addr . ipv6_addr;"
    } else {
        "type ipv4_addr . ipv4_addr;"
    }
}

/// The `self` set's elements: each address of one family twice.
fn self_elements(addrs: &BTreeSet<IpAddr>, v6: bool) -> Vec<String> {
    of_family(addrs, v6)
        .into_iter()
        .map(|a| format!("{a} . {a}"))
        .collect()
}

/// The declaration of a plain set of addresses of one family.
fn addr_decl(v6: bool) -> &'static str {
    if v6 {
        "type ipv6_addr;"
    } else {
        "type ipv4_addr;"
    }
}

/// The declaration of a dispatch map.
fn vmap_decl(v6: bool) -> &'static str {
    if v6 {
        "type ipv6_addr : verdict;"
    } else {
        "type ipv4_addr : verdict;"
    }
}

/// `{ DECL elements = { ... } }`: a set's body with its elements inline. The whole and
/// difference scripts write elements only this way, never with `add element` or `delete
/// element` (only [`elements_script`], the rare fallback of the netlink element path,
/// does): before running those, `nft` reads the whole ruleset (some 100 ms with a thousand policies, however
/// small the change), before a declaration it does not. Declaring a set that exists adds
/// the elements to it; after a `flush` in the same transaction, replaces them.
fn body(decl: &str, elements: &[String]) -> String {
    if elements.is_empty() {
        format!("{{ {decl} }}")
    } else {
        format!("{{ {decl} elements = {{ {} }} }}", elements.join(", "))
    }
}

/// The addresses of one family.
fn of_family(addrs: &BTreeSet<IpAddr>, v6: bool) -> Vec<String> {
    addrs
        .iter()
        .filter(|a| a.is_ipv6() == v6)
        .map(|a| a.to_string())
        .collect()
}

/// A dispatch map's elements.
fn dispatch_elements(m: &BTreeMap<IpAddr, String>) -> Vec<String> {
    m.iter().map(|(a, g)| format!("{a} : jump {g}")).collect()
}

/// The script that replaces the whole table with `c` (one transaction: the old rules
/// stay in force until the new ones replace them).
pub fn full_script(c: &Compiled) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table {TABLE}\ndelete table {TABLE}");
    let _ = writeln!(s, "table {TABLE} {{");
    let _ = writeln!(
        s,
        "  comment \"weft: network policy (egress at the source's host, ingress at the destination's)\""
    );
    let _ = writeln!(s, "  counter drop_in {{ }}\n  counter drop_out {{ }}");
    for name in c.chains.keys() {
        let _ = writeln!(s, "  chain {name} {{ }}");
    }
    for v6 in [false, true] {
        let iso = of_family(&c.isolated, v6);
        let _ = writeln!(s, "  set {} {}", iso_name(v6), body(addr_decl(v6), &iso));
        let pairs = self_elements(&c.isolated, v6);
        let _ = writeln!(s, "  set {} {}", self_name(v6), body(pair_decl(v6), &pairs));
    }
    let empty = BTreeMap::new();
    for dir in [Dir::Ingress, Dir::Egress] {
        for v6 in [false, true] {
            let m = c.dispatch.get(&(dir, v6)).unwrap_or(&empty);
            let _ = writeln!(
                s,
                "  map {} {}",
                vmap_name(dir, v6),
                body(vmap_decl(v6), &dispatch_elements(m))
            );
            let _ = writeln!(
                s,
                "  set {} {}",
                held_name(dir, v6),
                body(addr_decl(v6), &held_elements(m))
            );
        }
        let _ = writeln!(
            s,
            "  chain {} {{\n    limit rate {DROP_LOG_RATE}/second burst 100 packets log prefix \"{LOG_PREFIX} D {} {}\" group {LOG_GROUP}\n    counter name \"drop_{}\" drop\n  }}",
            held_chain(dir),
            dir.short(),
            held_chain(dir),
            dir.short()
        );
    }
    for (name, set) in &c.sets {
        let _ = writeln!(s, "  set {name} {}", body(set.kind.decl(), &set.elements));
    }
    let keep = format!("ct state established,related ct mark & {PICKUP_MARK:#010x} == 0 accept");
    // The set lookup last: a rule's expressions run in order, so the untracked packets of
    // unisolated pods (which a receiving host's stack still passes here) stop at the
    // `ct state` test.
    let pickup = |fam: &str, field: &str, set: &str| {
        format!(
            "ct state new meta l4proto tcp tcp flags & (syn | ack) != syn {fam} {field} @{set} ct mark set ct mark | {PICKUP_MARK:#010x}"
        )
    };
    // After the dispatch, whose group chains end in a verdict: an address isolated in the
    // direction whose dispatch element is not there yet (the ADD's second transaction).
    let held = |dir: Dir, field: &str| {
        format!(
            "ip {field} @{} goto {c}\n    ip6 {field} @{} goto {c}",
            held_name(dir, false),
            held_name(dir, true),
            c = held_chain(dir)
        )
    };
    let _ = writeln!(
        s,
        "  chain egress {{\n    type filter hook forward priority filter - 1; policy accept;\n    {keep}\n    {}\n    {}\n    {}\n    {}\n    ip saddr vmap @out4\n    ip6 saddr vmap @out6\n    {}\n  }}",
        pickup("ip", "saddr", "iso4"),
        pickup("ip", "daddr", "iso4"),
        pickup("ip6", "saddr", "iso6"),
        pickup("ip6", "daddr", "iso6"),
        held(Dir::Egress, "saddr"),
    );
    let _ = writeln!(
        s,
        "  chain ingress {{\n    type filter hook forward priority filter; policy accept;\n    {keep}\n    ip daddr vmap @in4\n    ip6 daddr vmap @in6\n    {}\n  }}",
        held(Dir::Ingress, "daddr"),
    );
    // What passed both: the first packet of each connection of an isolated pod is logged
    // as allowed, once (the mark), whatever its state stays (one-way UDP stays `new`; a
    // connection picked up mid-stream passes the rules packet by packet). The agent asks
    // the engine which rule allowed it.
    // And once more when it is established (conntrack saw the handshake both ways, the
    // policy passed it): a TCP connection nobody translates is logged for the agent to
    // promote, so the fast path forwards its segments past the stack from then on
    // (docs/policy.md, "Established connections"). Not one picked up mid-stream (its
    // packets are judged one by one). The cheapest test first: untracked packets and new
    // connections stop at `ct status assured`.
    let _ = writeln!(
        s,
        "  chain allowed {{\n    type filter hook forward priority filter + 1; policy accept;\n    ct state new ct mark & {LOGGED_MARK:#010x} == 0 limit rate {ALLOW_LOG_RATE}/second burst 100 packets goto allowed_new\n    ct status assured ct mark & {:#010x} == 0 ct direction original ct status ! snat,dnat meta l4proto tcp goto promote\n  }}",
        PROMOTE_MARK | PICKUP_MARK
    );
    let mut new = String::new();
    let mut promote = String::new();
    for (fam, set) in [("ip", "iso4"), ("ip6", "iso6")] {
        for field in ["saddr", "daddr"] {
            let _ = write!(
                new,
                "\n    {fam} {field} @{set} ct mark set ct mark | {LOGGED_MARK:#010x} log prefix \"{LOG_PREFIX} A\" group {LOG_GROUP} accept"
            );
            let _ = write!(promote, "\n    {fam} {field} @{set} goto promote_log");
        }
    }
    let _ = writeln!(s, "  chain allowed_new {{{new}\n  }}");
    // Another component's connection (not an isolated pod's) is marked and not looked at
    // again; one over the log's rate is not marked and tries again with its next packet.
    let _ = writeln!(
        s,
        "  chain promote {{{promote}\n    ct mark set ct mark | {PROMOTE_MARK:#010x}\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain promote_log {{\n    limit rate {ALLOW_LOG_RATE}/second burst 100 packets ct mark set ct mark | {PROMOTE_MARK:#010x} log prefix \"{LOG_PREFIX} E\" group {LOG_GROUP}\n  }}"
    );
    let _ = writeln!(s, "}}");
    for (name, rules) in &c.chains {
        for r in rules {
            let _ = writeln!(s, "add rule {TABLE} {name} {r}");
        }
    }
    declare_isolated(&mut s);
    for v6 in [false, true] {
        refill_isolated(&mut s, v6, &c.isolated);
    }
    s
}

/// Replaces the elements of weft's `isolated` set of one family.
fn refill_isolated(s: &mut String, v6: bool, isolated: &BTreeSet<IpAddr>) {
    let fam = weft_family(v6);
    let _ = writeln!(s, "flush set {fam} {ISOLATED_SET}");
    let els = of_family(isolated, v6);
    if !els.is_empty() {
        let _ = writeln!(
            s,
            "add set {fam} {ISOLATED_SET} {}",
            body(addr_decl(v6), &els)
        );
    }
}

fn iso_name(v6: bool) -> &'static str {
    if v6 {
        "iso6"
    } else {
        "iso4"
    }
}

/// The script that turns `old` (applied before, as a whole or by earlier diffs) into
/// `new`, in one transaction; empty when nothing differs. A set or map whose elements
/// changed is emptied and declared again with all of them (see [`body`]).
pub fn diff_script(old: &Compiled, new: &Compiled) -> String {
    let mut s = String::new();
    // 1. Sets: new ones made with their elements, changed ones refilled.
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            Some(o) if o == set => continue,
            Some(_) => {
                let _ = writeln!(s, "flush set {TABLE} {name}");
            }
            None => {}
        }
        let _ = writeln!(
            s,
            "add set {TABLE} {name} {}",
            body(set.kind.decl(), &set.elements)
        );
    }
    // 2. Chains: new ones declared first (rules may jump to them), then filled.
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            let _ = writeln!(s, "add chain {TABLE} {name}");
        }
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(o) if o == rules => continue,
            Some(_) => {
                let _ = writeln!(s, "flush chain {TABLE} {name}");
            }
            None => {}
        }
        for r in rules {
            let _ = writeln!(s, "add rule {TABLE} {name} {r}");
        }
    }
    // 3. Isolation and dispatch, refilled where they changed (the chains they jump to
    //    exist by now; the chains they no longer jump to go in step 4).
    let mut weft = String::new();
    for v6 in [false, true] {
        let iso = of_family(&new.isolated, v6);
        if of_family(&old.isolated, v6) != iso {
            let name = iso_name(v6);
            let _ = writeln!(s, "flush set {TABLE} {name}");
            let _ = writeln!(s, "add set {TABLE} {name} {}", body(addr_decl(v6), &iso));
            let name = self_name(v6);
            let pairs = self_elements(&new.isolated, v6);
            let _ = writeln!(s, "flush set {TABLE} {name}");
            let _ = writeln!(s, "add set {TABLE} {name} {}", body(pair_decl(v6), &pairs));
            refill_isolated(&mut weft, v6, &new.isolated);
        }
    }
    let empty = BTreeMap::new();
    for dir in [Dir::Ingress, Dir::Egress] {
        for v6 in [false, true] {
            let o = old.dispatch.get(&(dir, v6)).unwrap_or(&empty);
            let n = new.dispatch.get(&(dir, v6)).unwrap_or(&empty);
            if o != n {
                let map = vmap_name(dir, v6);
                let _ = writeln!(s, "flush map {TABLE} {map}");
                let _ = writeln!(
                    s,
                    "add map {TABLE} {map} {}",
                    body(vmap_decl(v6), &dispatch_elements(n))
                );
            }
            if o.keys().ne(n.keys()) {
                let held = held_name(dir, v6);
                let _ = writeln!(s, "flush set {TABLE} {held}");
                let _ = writeln!(
                    s,
                    "add set {TABLE} {held} {}",
                    body(addr_decl(v6), &held_elements(n))
                );
            }
        }
    }
    if !weft.is_empty() {
        declare_isolated(&mut s);
        s.push_str(&weft);
    }
    // 4. Chains and sets no longer used: emptied first (no jumps or set references stay),
    //    then deleted.
    let dead: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    for name in &dead {
        let _ = writeln!(s, "flush chain {TABLE} {name}");
    }
    for name in &dead {
        let _ = writeln!(s, "delete chain {TABLE} {name}");
    }
    for name in old.sets.keys() {
        if !new.sets.contains_key(name) {
            let _ = writeln!(s, "delete set {TABLE} {name}");
        }
    }
    s
}

/// The script that removes weft's policy from the kernel (no policy is left). With
/// `keep_weft` (weft's `ip weft` tables stay for outbound NAT) their `isolated` sets are
/// emptied, else those tables go too.
pub fn remove_script(keep_weft: bool) -> String {
    let mut s = format!("table {TABLE}\ndelete table {TABLE}\n");
    if keep_weft {
        declare_isolated(&mut s);
        for v6 in [false, true] {
            let _ = writeln!(s, "flush set {} {ISOLATED_SET}", weft_family(v6));
        }
    } else {
        for v6 in [false, true] {
            let t = weft_family(v6);
            let _ = writeln!(s, "table {t}\ndelete table {t}");
        }
    }
    s
}

#[cfg(test)]
mod tests;
