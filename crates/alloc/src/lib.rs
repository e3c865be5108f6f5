//! Address allocation from a range, tied to (container, interface) owners. Pure state machine, persisted by the caller.
//!
//! The crate has no I/O: a caller (the CNI plugin) loads an [`AllocTable`] from
//! its state file (JSON via serde), calls [`AllocTable::check`], mutates it with
//! [`AllocTable::allocate`] / [`AllocTable::release`] / [`AllocTable::gc`], and
//! writes it back, all under its own file lock.
//!
//! Allocation is round robin: the next address handed out is the first free one
//! after the last address handed out, wrapping around the range, so a
//! just-released address is not reused immediately.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Errors returned by range construction, allocation and table validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every address of the range is allocated.
    #[error("address range {range} is exhausted: all {size} addresses are allocated")]
    Exhausted {
        /// Human description of the range (see the `Display` impl of [`Range`]).
        range: String,
        /// Number of usable addresses in the range.
        size: u128,
    },
    /// The range configuration is invalid (bad bounds, mixed families, ...).
    #[error("invalid address range: {0}")]
    InvalidRange(String),
    /// A table violates its invariants (typically after a hand edit of the state file).
    #[error("corrupt allocation table: {0}")]
    Corrupt(String),
}

/// The holder of an address: one interface of one container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// Container (sandbox) identifier, as given by the container runtime.
    pub container_id: String,
    /// Interface name inside the container (e.g. `eth0`).
    pub ifname: String,
}

impl Owner {
    /// Builds an owner from a container id and an interface name.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Owner {
        Owner {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// Numeric value of an address (IPv4 addresses map to `0..2^32`).
fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Address of the given family with numeric value `v`.
///
/// For IPv4, `v` must fit in 32 bits; callers only pass values between bounds
/// of an IPv4 range.
fn from_u128(v4: bool, v: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// Lowest and highest usable host address of a (truncated) network.
///
/// IPv4: network and broadcast addresses are excluded, except for /31 (both
/// addresses usable, RFC 3021) and /32 (the single address).
/// IPv6: the subnet-router anycast address (all-zero host) is excluded, except
/// for /127 (RFC 6164) and /128.
fn usable_bounds(net: &IpNet) -> (u128, u128) {
    let lo = to_u128(net.network());
    let hi = to_u128(net.broadcast());
    match net {
        IpNet::V4(n) => match n.prefix_len() {
            32 | 31 => (lo, hi),
            _ => (lo + 1, hi - 1),
        },
        IpNet::V6(n) => match n.prefix_len() {
            128 | 127 => (lo, hi),
            _ => (lo + 1, hi),
        },
    }
}

/// A contiguous, inclusive range `start..=end` of usable addresses inside a network.
///
/// Invariants (enforced by [`Range::new`] and by deserialization): `net` has no
/// host bits set, `start` and `end` belong to the family of `net`, lie within
/// its usable host addresses, and `start <= end`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RangeRepr")]
pub struct Range {
    net: IpNet,
    start: IpAddr,
    end: IpAddr,
}

/// Unvalidated serialized form of a [`Range`].
#[derive(Deserialize)]
struct RangeRepr {
    net: IpNet,
    start: IpAddr,
    end: IpAddr,
}

impl TryFrom<RangeRepr> for Range {
    type Error = AllocError;

    fn try_from(r: RangeRepr) -> Result<Range, AllocError> {
        Range::new(r.net, Some(r.start), Some(r.end))
    }
}

impl Range {
    /// Builds a range inside `net`.
    ///
    /// `net` is truncated (host bits cleared). `start` defaults to the first and
    /// `end` to the last usable host address of `net`: for IPv4 the network and
    /// broadcast addresses are excluded (a /31 has two usable addresses, a /32
    /// one); for IPv6 the subnet-router anycast address (all-zero host) is
    /// excluded (except for /127 and /128).
    ///
    /// Errors with [`AllocError::InvalidRange`] when `start` or `end` is of
    /// another family than `net`, is not one of its usable addresses, or when
    /// `start > end`.
    pub fn new(
        net: IpNet,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
    ) -> Result<Range, AllocError> {
        let net = net.trunc();
        let v4 = matches!(net, IpNet::V4(_));
        let (lo, hi) = usable_bounds(&net);
        let check = |what: &str, addr: IpAddr| -> Result<u128, AllocError> {
            if addr.is_ipv4() != v4 {
                return Err(AllocError::InvalidRange(format!(
                    "{what} address {addr} is not of the same address family as {net}"
                )));
            }
            let v = to_u128(addr);
            if v < lo || v > hi {
                return Err(AllocError::InvalidRange(format!(
                    "{what} address {addr} is outside the usable addresses of {net} ({}-{})",
                    from_u128(v4, lo),
                    from_u128(v4, hi)
                )));
            }
            Ok(v)
        };
        let start = start.unwrap_or_else(|| from_u128(v4, lo));
        let end = end.unwrap_or_else(|| from_u128(v4, hi));
        let s = check("start", start)?;
        let e = check("end", end)?;
        if s > e {
            return Err(AllocError::InvalidRange(format!(
                "start address {start} is after end address {end} in {net}"
            )));
        }
        Ok(Range { net, start, end })
    }

    /// The network the range belongs to (host bits cleared).
    pub fn net(&self) -> IpNet {
        self.net
    }

    /// First address of the range (inclusive).
    pub fn start(&self) -> IpAddr {
        self.start
    }

    /// Last address of the range (inclusive).
    pub fn end(&self) -> IpAddr {
        self.end
    }

    /// Number of usable addresses, `end - start + 1`.
    ///
    /// Cannot overflow: a range never includes both the all-zero and the
    /// all-one IPv6 address.
    pub fn size(&self) -> u128 {
        self.hi() - self.lo() + 1
    }

    /// Whether `addr` is of the range's family and between `start` and `end` inclusive.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.is_v4() && self.start <= addr && addr <= self.end
    }

    fn is_v4(&self) -> bool {
        self.start.is_ipv4()
    }

    fn lo(&self) -> u128 {
        to_u128(self.start)
    }

    fn hi(&self) -> u128 {
        to_u128(self.end)
    }

    fn addr(&self, v: u128) -> IpAddr {
        from_u128(self.is_v4(), v)
    }
}

impl fmt::Display for Range {
    /// Formats as `10.0.0.0/24 (10.0.0.1-10.0.0.254)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}-{})", self.net, self.start, self.end)
    }
}

/// Allocation state of one range: which owner holds which address.
///
/// Serialized (e.g. to JSON) as
/// `{"range":{"net":..,"start":..,"end":..},"last":..,"entries":{"<addr>":{"container_id":..,"ifname":..}}}`
/// with entries ordered by address, so the output is stable.
///
/// Deserialization validates the range but accepts otherwise inconsistent
/// entries (out of range addresses, owners holding several addresses); call
/// [`AllocTable::check`] after loading a file that may have been edited by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TableRepr")]
pub struct AllocTable {
    range: Range,
    last: Option<IpAddr>,
    entries: BTreeMap<IpAddr, Owner>,
    /// Reverse index: each owner mapped to the lowest address it holds.
    /// Derived from `entries`; in a valid table it is a bijection.
    #[serde(skip)]
    by_owner: BTreeMap<Owner, IpAddr>,
}

/// Serialized form of an [`AllocTable`] (without the derived reverse index).
#[derive(Deserialize)]
struct TableRepr {
    range: Range,
    #[serde(default)]
    last: Option<IpAddr>,
    #[serde(default)]
    entries: BTreeMap<IpAddr, Owner>,
}

impl From<TableRepr> for AllocTable {
    fn from(r: TableRepr) -> AllocTable {
        let mut t = AllocTable {
            range: r.range,
            last: r.last,
            entries: r.entries,
            by_owner: BTreeMap::new(),
        };
        t.reindex();
        t
    }
}

impl AllocTable {
    /// An empty table over `range`.
    pub fn new(range: Range) -> AllocTable {
        AllocTable {
            range,
            last: None,
            entries: BTreeMap::new(),
            by_owner: BTreeMap::new(),
        }
    }

    /// The range addresses are allocated from.
    pub fn range(&self) -> &Range {
        &self.range
    }

    /// The last address handed out, if any (the round-robin cursor).
    pub fn last(&self) -> Option<IpAddr> {
        self.last
    }

    /// Allocates an address for `owner`.
    ///
    /// Idempotent: if `owner` already holds an address, that address is
    /// returned and nothing changes. Otherwise returns the first free address
    /// after [`last`](AllocTable::last), wrapping around to the start of the
    /// range, and records it as the new `last`.
    ///
    /// Cost is proportional to the number of consecutive allocated addresses
    /// skipped (at most the number of entries), plus logarithmic map operations.
    ///
    /// Errors with [`AllocError::Exhausted`] when every address is allocated.
    pub fn allocate(&mut self, owner: Owner) -> Result<IpAddr, AllocError> {
        if let Some(&addr) = self.by_owner.get(&owner) {
            return Ok(addr);
        }
        let (lo, hi) = (self.range.lo(), self.range.hi());
        let first = match self.last {
            Some(l) if self.range.contains(l) && to_u128(l) < hi => to_u128(l) + 1,
            _ => lo,
        };
        let found = self.first_free(first, hi).or_else(|| {
            (first > lo)
                .then(|| self.first_free(lo, first - 1))
                .flatten()
        });
        let Some(v) = found else {
            return Err(AllocError::Exhausted {
                range: self.range.to_string(),
                size: self.range.size(),
            });
        };
        let addr = self.range.addr(v);
        self.entries.insert(addr, owner.clone());
        self.by_owner.insert(owner, addr);
        self.last = Some(addr);
        Ok(addr)
    }

    /// First address in `from..=to` (numeric, within the range) with no entry.
    fn first_free(&self, from: u128, to: u128) -> Option<u128> {
        let mut candidate = from;
        let keys = self
            .entries
            .range(self.range.addr(from)..=self.range.addr(to))
            .map(|(k, _)| to_u128(*k));
        // Keys come sorted and unique, all >= candidate: walk the run of
        // allocated addresses starting at `from` until the first gap.
        for k in keys {
            if k != candidate {
                break;
            }
            if candidate == to {
                return None;
            }
            candidate += 1;
        }
        Some(candidate)
    }

    /// Releases the address held by `owner`; returns it, or `None` if the
    /// owner held nothing. Idempotent. Does not move the round-robin cursor,
    /// so the released address is not handed out again right away.
    pub fn release(&mut self, owner: &Owner) -> Option<IpAddr> {
        let addr = self.by_owner.remove(owner)?;
        self.entries.remove(&addr);
        if self.entries.len() != self.by_owner.len() {
            // Corrupt table (owner held several addresses): drop them all.
            self.entries.retain(|_, o| o != owner);
        }
        Some(addr)
    }

    /// Releases every address held by any interface of `container_id`;
    /// returns the released addresses in ascending order.
    pub fn release_container(&mut self, container_id: &str) -> Vec<IpAddr> {
        let released = self.remove_where(|_, o| o.container_id == container_id);
        released.into_iter().map(|(a, _)| a).collect()
    }

    /// The address held by `owner`, if any.
    pub fn lookup(&self, owner: &Owner) -> Option<IpAddr> {
        self.by_owner.get(owner).copied()
    }

    /// The owner of `addr`, if it is allocated.
    pub fn owner_of(&self, addr: IpAddr) -> Option<&Owner> {
        self.entries.get(&addr)
    }

    /// Garbage collection: releases every entry whose owner is not in
    /// `valid`; returns the released entries in ascending address order.
    pub fn gc(&mut self, valid: &[Owner]) -> Vec<(IpAddr, Owner)> {
        let valid: BTreeSet<&Owner> = valid.iter().collect();
        self.remove_where(|_, o| !valid.contains(o))
    }

    /// Number of allocated addresses.
    pub fn used(&self) -> usize {
        self.entries.len()
    }

    /// Number of free addresses in the range, `size - used` (saturating, for
    /// tables that fail [`check`](AllocTable::check)).
    pub fn free(&self) -> u128 {
        self.range.size().saturating_sub(self.entries.len() as u128)
    }

    /// All allocations, in ascending address order.
    pub fn entries(&self) -> impl Iterator<Item = (&IpAddr, &Owner)> + '_ {
        self.entries.iter()
    }

    /// Switches to a new range (configuration change). Entries inside the new
    /// range are kept; those outside are removed and returned, in ascending
    /// address order, for the caller to deal with. The round-robin cursor is
    /// kept if it lies inside the new range, reset otherwise.
    pub fn rebase(&mut self, range: Range) -> Vec<(IpAddr, Owner)> {
        self.range = range;
        if self.last.is_some_and(|l| !self.range.contains(l)) {
            self.last = None;
        }
        let range = self.range.clone();
        self.remove_where(|a, _| !range.contains(*a))
    }

    /// Verifies the invariants: every entry lies inside the range, no owner
    /// holds two addresses, and the cursor (`last`) is inside the range.
    /// Errors with [`AllocError::Corrupt`] describing the first violation found.
    pub fn check(&self) -> Result<(), AllocError> {
        if let Some(l) = self.last {
            if !self.range.contains(l) {
                return Err(AllocError::Corrupt(format!(
                    "last allocated address {l} is outside range {}",
                    self.range
                )));
            }
        }
        let mut seen: BTreeMap<&Owner, IpAddr> = BTreeMap::new();
        for (addr, owner) in &self.entries {
            if !self.range.contains(*addr) {
                return Err(AllocError::Corrupt(format!(
                    "address {addr} held by {owner} is outside range {}",
                    self.range
                )));
            }
            if let Some(prev) = seen.insert(owner, *addr) {
                return Err(AllocError::Corrupt(format!(
                    "{owner} holds two addresses: {prev} and {addr}"
                )));
            }
        }
        Ok(())
    }

    /// Removes and returns (ascending) the entries matching `pred`, keeping
    /// the reverse index in sync.
    fn remove_where(
        &mut self,
        mut pred: impl FnMut(&IpAddr, &Owner) -> bool,
    ) -> Vec<(IpAddr, Owner)> {
        let mut removed = Vec::new();
        self.entries.retain(|a, o| {
            if pred(a, o) {
                removed.push((*a, o.clone()));
                false
            } else {
                true
            }
        });
        if !removed.is_empty() {
            self.reindex();
        }
        removed
    }

    /// Rebuilds the reverse index from `entries` (lowest address per owner).
    fn reindex(&mut self) {
        self.by_owner.clear();
        for (addr, owner) in &self.entries {
            self.by_owner.entry(owner.clone()).or_insert(*addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn own(c: &str) -> Owner {
        Owner::new(c, "eth0")
    }

    fn table(n: &str) -> AllocTable {
        AllocTable::new(Range::new(net(n), None, None).unwrap())
    }

    #[test]
    fn range_defaults_v4() {
        let r = Range::new(net("10.1.2.3/24"), None, None).unwrap();
        assert_eq!(r.net(), net("10.1.2.0/24"));
        assert_eq!(r.start(), ip("10.1.2.1"));
        assert_eq!(r.end(), ip("10.1.2.254"));
        assert_eq!(r.size(), 254);
        assert!(r.contains(ip("10.1.2.1")));
        assert!(r.contains(ip("10.1.2.254")));
        assert!(!r.contains(ip("10.1.2.0")));
        assert!(!r.contains(ip("10.1.2.255")));
        assert!(!r.contains(ip("::1")));
        assert_eq!(r.to_string(), "10.1.2.0/24 (10.1.2.1-10.1.2.254)");
    }

    #[test]
    fn range_defaults_small_v4() {
        let r = Range::new(net("10.0.0.0/31"), None, None).unwrap();
        assert_eq!(
            (r.start(), r.end(), r.size()),
            (ip("10.0.0.0"), ip("10.0.0.1"), 2)
        );
        let r = Range::new(net("10.0.0.7/32"), None, None).unwrap();
        assert_eq!(
            (r.start(), r.end(), r.size()),
            (ip("10.0.0.7"), ip("10.0.0.7"), 1)
        );
        let r = Range::new(net("10.0.0.0/30"), None, None).unwrap();
        assert_eq!(
            (r.start(), r.end(), r.size()),
            (ip("10.0.0.1"), ip("10.0.0.2"), 2)
        );
        let r = Range::new(net("0.0.0.0/0"), None, None).unwrap();
        assert_eq!(r.size(), (1u128 << 32) - 2);
    }

    #[test]
    fn range_defaults_v6() {
        let r = Range::new(net("fd00::/64"), None, None).unwrap();
        assert_eq!(r.start(), ip("fd00::1"));
        assert_eq!(r.end(), ip("fd00::ffff:ffff:ffff:ffff"));
        assert_eq!(r.size(), (1u128 << 64) - 1);
        let r = Range::new(net("::/0"), None, None).unwrap();
        assert_eq!(r.size(), u128::MAX);
        let r = Range::new(net("fd00::5/128"), None, None).unwrap();
        assert_eq!(r.size(), 1);
        let r = Range::new(net("fd00::/127"), None, None).unwrap();
        assert_eq!(r.size(), 2);
    }

    #[test]
    fn range_explicit_and_invalid() {
        let r = Range::new(
            net("10.0.0.0/24"),
            Some(ip("10.0.0.10")),
            Some(ip("10.0.0.19")),
        )
        .unwrap();
        assert_eq!(r.size(), 10);
        let bad = [
            (Some(ip("10.0.1.1")), None),
            (Some(ip("10.0.0.0")), None),
            (None, Some(ip("10.0.0.255"))),
            (Some(ip("fd00::1")), None),
            (None, Some(ip("fd00::1"))),
            (Some(ip("10.0.0.20")), Some(ip("10.0.0.19"))),
        ];
        for (s, e) in bad {
            let err = Range::new(net("10.0.0.0/24"), s, e).unwrap_err();
            assert!(
                matches!(err, AllocError::InvalidRange(_)),
                "{s:?} {e:?}: {err}"
            );
        }
        let err = Range::new(net("fd00::/64"), Some(ip("fd00::")), None).unwrap_err();
        assert!(matches!(err, AllocError::InvalidRange(_)));
        // A single-address range is fine.
        let r = Range::new(
            net("10.0.0.0/24"),
            Some(ip("10.0.0.9")),
            Some(ip("10.0.0.9")),
        )
        .unwrap();
        assert_eq!(r.size(), 1);
    }

    #[test]
    fn allocate_v4_sequential_and_idempotent() {
        let mut t = table("10.0.0.0/24");
        assert_eq!(t.allocate(own("a")).unwrap(), ip("10.0.0.1"));
        assert_eq!(t.allocate(own("b")).unwrap(), ip("10.0.0.2"));
        assert_eq!(t.allocate(own("a")).unwrap(), ip("10.0.0.1"));
        assert_eq!(t.last(), Some(ip("10.0.0.2")));
        assert_eq!(t.allocate(Owner::new("a", "eth1")).unwrap(), ip("10.0.0.3"));
        assert_eq!(t.lookup(&own("a")), Some(ip("10.0.0.1")));
        assert_eq!(t.lookup(&own("zz")), None);
        assert_eq!(t.owner_of(ip("10.0.0.2")), Some(&own("b")));
        assert_eq!(t.used(), 3);
        assert_eq!(t.free(), 251);
        t.check().unwrap();
    }

    #[test]
    fn allocate_v6() {
        let mut t = table("fd00:1::/64");
        assert_eq!(t.allocate(own("a")).unwrap(), ip("fd00:1::1"));
        assert_eq!(t.allocate(own("b")).unwrap(), ip("fd00:1::2"));
        assert_eq!(t.free(), (1u128 << 64) - 3);
        let r = Range::new(
            net("fd00:1::/64"),
            Some(ip("fd00:1::ffff:ffff:ffff:fffe")),
            None,
        )
        .unwrap();
        let mut t = AllocTable::new(r);
        assert_eq!(
            t.allocate(own("a")).unwrap(),
            ip("fd00:1::ffff:ffff:ffff:fffe")
        );
        assert_eq!(
            t.allocate(own("b")).unwrap(),
            ip("fd00:1::ffff:ffff:ffff:ffff")
        );
        assert!(matches!(
            t.allocate(own("c")),
            Err(AllocError::Exhausted { size: 2, .. })
        ));
        t.release(&own("a"));
        assert_eq!(
            t.allocate(own("c")).unwrap(),
            ip("fd00:1::ffff:ffff:ffff:fffe")
        );
        t.check().unwrap();
    }

    #[test]
    fn allocate_at_top_of_address_space() {
        let mut t = table("::/0");
        let r = Range::new(
            net("::/0"),
            Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")),
            None,
        )
        .unwrap();
        t.rebase(r);
        assert_eq!(
            t.allocate(own("a")).unwrap(),
            ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")
        );
        assert_eq!(
            t.allocate(own("b")).unwrap(),
            ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        );
        assert!(t.allocate(own("c")).is_err());
        let mut t = table("255.255.255.254/31");
        assert_eq!(t.allocate(own("a")).unwrap(), ip("255.255.255.254"));
        assert_eq!(t.allocate(own("b")).unwrap(), ip("255.255.255.255"));
        assert!(t.allocate(own("c")).is_err());
    }

    #[test]
    fn exhaustion_exactly_at_size() {
        let mut t = table("10.0.0.0/29");
        assert_eq!(t.range().size(), 6);
        for i in 0..6 {
            t.allocate(own(&format!("c{i}"))).unwrap();
        }
        assert_eq!(t.free(), 0);
        let err = t.allocate(own("c6")).unwrap_err();
        assert_eq!(
            err,
            AllocError::Exhausted {
                range: "10.0.0.0/29 (10.0.0.1-10.0.0.6)".into(),
                size: 6
            }
        );
        assert_eq!(
            err.to_string(),
            "address range 10.0.0.0/29 (10.0.0.1-10.0.0.6) is exhausted: all 6 addresses are allocated"
        );
        // Existing owners still get their address back when full.
        assert_eq!(t.allocate(own("c0")).unwrap(), ip("10.0.0.1"));
        assert_eq!(t.used(), 6);
    }

    #[test]
    fn release_is_idempotent_and_round_robin() {
        let mut t = table("10.0.0.0/29");
        for c in ["a", "b", "c"] {
            t.allocate(own(c)).unwrap();
        }
        assert_eq!(t.release(&own("a")), Some(ip("10.0.0.1")));
        assert_eq!(t.release(&own("a")), None);
        // Released address is not reused immediately.
        assert_eq!(t.allocate(own("d")).unwrap(), ip("10.0.0.4"));
        assert_eq!(t.release(&own("c")), Some(ip("10.0.0.3")));
        assert_eq!(t.allocate(own("e")).unwrap(), ip("10.0.0.5"));
        assert_eq!(t.allocate(own("f")).unwrap(), ip("10.0.0.6"));
        // Wrap around: next free after .6 is .1, then .3.
        assert_eq!(t.allocate(own("g")).unwrap(), ip("10.0.0.1"));
        assert_eq!(t.allocate(own("h")).unwrap(), ip("10.0.0.3"));
        assert!(t.allocate(own("i")).is_err());
        t.check().unwrap();
    }

    #[test]
    fn wrap_around_skips_held_run() {
        let mut t = table("10.0.0.0/28"); // .1 ..= .14
        for i in 0..14 {
            t.allocate(own(&format!("c{i}"))).unwrap();
        }
        // Free .9 only; last is .14 so the walk wraps and skips .1-.8.
        t.release(&own("c8"));
        assert_eq!(t.allocate(own("x")).unwrap(), ip("10.0.0.9"));
        assert_eq!(t.last(), Some(ip("10.0.0.9")));
        t.release(&own("c13"));
        t.release(&own("c0"));
        // After .9: .10-.13 held, .14 free.
        assert_eq!(t.allocate(own("y")).unwrap(), ip("10.0.0.14"));
        assert_eq!(t.allocate(own("z")).unwrap(), ip("10.0.0.1"));
    }

    #[test]
    fn release_container_all_interfaces() {
        let mut t = table("10.0.0.0/24");
        t.allocate(Owner::new("a", "eth0")).unwrap();
        t.allocate(Owner::new("b", "eth0")).unwrap();
        t.allocate(Owner::new("a", "eth1")).unwrap();
        assert_eq!(
            t.release_container("a"),
            vec![ip("10.0.0.1"), ip("10.0.0.3")]
        );
        assert!(t.release_container("a").is_empty());
        assert_eq!(t.used(), 1);
        assert_eq!(t.lookup(&Owner::new("a", "eth1")), None);
        assert_eq!(t.lookup(&Owner::new("b", "eth0")), Some(ip("10.0.0.2")));
        t.check().unwrap();
    }

    #[test]
    fn gc_releases_unknown_owners() {
        let mut t = table("10.0.0.0/24");
        for c in ["a", "b", "c", "d"] {
            t.allocate(own(c)).unwrap();
        }
        let released = t.gc(&[own("b"), own("d"), own("unknown")]);
        assert_eq!(
            released,
            vec![(ip("10.0.0.1"), own("a")), (ip("10.0.0.3"), own("c"))]
        );
        assert_eq!(t.used(), 2);
        assert_eq!(t.lookup(&own("a")), None);
        assert_eq!(t.lookup(&own("b")), Some(ip("10.0.0.2")));
        assert!(t.gc(&[own("b"), own("d")]).is_empty());
        assert_eq!(t.gc(&[]).len(), 2);
        assert_eq!(t.used(), 0);
        t.check().unwrap();
    }

    #[test]
    fn rebase_keeps_inside_returns_outside() {
        let mut t = table("10.0.0.0/24");
        for i in 0..10 {
            t.allocate(own(&format!("c{i}"))).unwrap();
        }
        let r = Range::new(
            net("10.0.0.0/24"),
            Some(ip("10.0.0.3")),
            Some(ip("10.0.0.6")),
        )
        .unwrap();
        let out = t.rebase(r.clone());
        let out_addrs: Vec<IpAddr> = out.iter().map(|(a, _)| *a).collect();
        assert_eq!(
            out_addrs,
            [
                "10.0.0.1",
                "10.0.0.2",
                "10.0.0.7",
                "10.0.0.8",
                "10.0.0.9",
                "10.0.0.10"
            ]
            .map(ip)
            .to_vec()
        );
        assert_eq!(out[0].1, own("c0"));
        assert_eq!(t.range(), &r);
        assert_eq!(t.used(), 4);
        assert_eq!(t.free(), 0);
        assert_eq!(t.last(), None);
        assert_eq!(t.lookup(&own("c0")), None);
        assert_eq!(t.lookup(&own("c2")), Some(ip("10.0.0.3")));
        t.check().unwrap();
        // Owners returned by rebase can be re-allocated once space frees up.
        t.release(&own("c4"));
        assert_eq!(t.allocate(own("c0")).unwrap(), ip("10.0.0.5"));

        // Changing family drops everything.
        let out = t.rebase(Range::new(net("fd00::/120"), None, None).unwrap());
        assert_eq!(out.len(), 4);
        assert_eq!(t.used(), 0);
        assert_eq!(t.allocate(own("c0")).unwrap(), ip("fd00::1"));
    }

    #[test]
    fn rebase_keeps_cursor_inside() {
        let mut t = table("10.0.0.0/24");
        for i in 0..5 {
            t.allocate(own(&format!("c{i}"))).unwrap();
        }
        t.rebase(Range::new(net("10.0.0.0/23"), None, None).unwrap());
        assert_eq!(t.last(), Some(ip("10.0.0.5")));
        assert_eq!(t.allocate(own("x")).unwrap(), ip("10.0.0.6"));
        assert_eq!(t.range().size(), 510);
    }

    #[test]
    fn serde_round_trip_stable() {
        let mut t = table("10.0.0.0/24");
        t.allocate(Owner::new("b", "eth0")).unwrap();
        t.allocate(Owner::new("a", "eth0")).unwrap();
        t.allocate(Owner::new("a", "eth1")).unwrap();
        t.release(&Owner::new("b", "eth0"));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            json,
            r#"{"range":{"net":"10.0.0.0/24","start":"10.0.0.1","end":"10.0.0.254"},"last":"10.0.0.3","entries":{"10.0.0.2":{"container_id":"a","ifname":"eth0"},"10.0.0.3":{"container_id":"a","ifname":"eth1"}}}"#
        );
        let back: AllocTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        back.check().unwrap();
        assert_eq!(back.lookup(&Owner::new("a", "eth1")), Some(ip("10.0.0.3")));
        assert_eq!(serde_json::to_string(&back).unwrap(), json);

        let mut t6 = table("fd00::/64");
        t6.allocate(own("x")).unwrap();
        let json = serde_json::to_string_pretty(&t6).unwrap();
        let back: AllocTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t6);

        let empty = table("10.0.0.0/30");
        let json = serde_json::to_string(&empty).unwrap();
        assert!(json.contains(r#""last":null"#));
        assert_eq!(serde_json::from_str::<AllocTable>(&json).unwrap(), empty);
    }

    #[test]
    fn deserialize_rejects_invalid_range() {
        let json = r#"{"range":{"net":"10.0.0.0/24","start":"10.0.1.1","end":"10.0.0.254"},"last":null,"entries":{}}"#;
        let err = serde_json::from_str::<AllocTable>(json).unwrap_err();
        assert!(err.to_string().contains("invalid address range"), "{err}");
    }

    #[test]
    fn check_detects_hand_edits() {
        let base = r#"{"range":{"net":"10.0.0.0/24","start":"10.0.0.1","end":"10.0.0.10"},"last":"10.0.0.2","entries":{"10.0.0.2":{"container_id":"a","ifname":"eth0"},"#;
        let dup = format!(r#"{base}"10.0.0.5":{{"container_id":"a","ifname":"eth0"}}}}}}"#);
        let t: AllocTable = serde_json::from_str(&dup).unwrap();
        let err = t.check().unwrap_err();
        assert!(
            matches!(&err, AllocError::Corrupt(m) if m.contains("two addresses")),
            "{err}"
        );
        // Releasing a duplicated owner drops all its addresses.
        let mut t2 = t.clone();
        assert_eq!(t2.release(&own("a")), Some(ip("10.0.0.2")));
        assert_eq!(t2.used(), 0);
        t2.check().unwrap();

        let outside = format!(r#"{base}"10.0.0.50":{{"container_id":"b","ifname":"eth0"}}}}}}"#);
        let t: AllocTable = serde_json::from_str(&outside).unwrap();
        let err = t.check().unwrap_err();
        assert!(
            matches!(&err, AllocError::Corrupt(m) if m.contains("outside range")),
            "{err}"
        );

        let v6 = format!(r#"{base}"fd00::1":{{"container_id":"b","ifname":"eth0"}}}}}}"#);
        let t: AllocTable = serde_json::from_str(&v6).unwrap();
        assert!(t.check().is_err());

        let bad_last = r#"{"range":{"net":"10.0.0.0/24","start":"10.0.0.1","end":"10.0.0.10"},"last":"10.0.0.99","entries":{}}"#;
        let mut t: AllocTable = serde_json::from_str(bad_last).unwrap();
        assert!(t.check().is_err());
        // Still usable: an out-of-range cursor restarts at the range start.
        assert_eq!(t.allocate(own("a")).unwrap(), ip("10.0.0.1"));
    }

    #[test]
    fn nearly_full_slash16_is_fast() {
        let mut t = table("10.8.0.0/16");
        let size = t.range().size() as usize;
        for i in 0..size {
            t.allocate(own(&format!("c{i}"))).unwrap();
        }
        assert_eq!(t.free(), 0);
        assert!(t.allocate(own("extra")).is_err());
        // Free a few scattered addresses and re-allocate repeatedly: each
        // allocation walks at most the held runs, never the whole /16 per step.
        for i in [10usize, 30_000, 65_000] {
            t.release(&own(&format!("c{i}")));
        }
        assert_eq!(t.allocate(own("n0")).unwrap(), ip("10.8.0.11"));
        assert_eq!(t.allocate(own("n1")).unwrap(), ip("10.8.117.49"));
        assert_eq!(t.allocate(own("n2")).unwrap(), ip("10.8.253.233"));
        assert!(t.allocate(own("n3")).is_err());
        t.check().unwrap();
    }
}
