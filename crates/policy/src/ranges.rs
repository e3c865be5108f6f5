//! Disjoint intervals of addresses and ports: nftables interval sets refuse overlapping
//! elements, so unions and `except` holes are computed here, before loading.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// A set of values as sorted, disjoint, non-adjacent inclusive intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Intervals(Vec<(u128, u128)>);

impl Intervals {
    /// The empty set.
    pub fn new() -> Intervals {
        Intervals(Vec::new())
    }

    /// Adds `[lo, hi]`.
    pub fn add(&mut self, lo: u128, hi: u128) {
        debug_assert!(lo <= hi);
        self.0.push((lo, hi));
        self.normalize();
    }

    /// Adds every interval of `other`.
    pub fn extend(&mut self, other: &Intervals) {
        self.0.extend_from_slice(&other.0);
        self.normalize();
    }

    /// Removes `[lo, hi]`.
    pub fn remove(&mut self, lo: u128, hi: u128) {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &(a, b) in &self.0 {
            if b < lo || a > hi {
                out.push((a, b));
                continue;
            }
            if a < lo {
                out.push((a, lo - 1));
            }
            if b > hi {
                out.push((hi + 1, b));
            }
        }
        self.0 = out;
    }

    /// Whether `v` is in the set.
    pub fn contains(&self, v: u128) -> bool {
        self.0.iter().any(|&(a, b)| a <= v && v <= b)
    }

    /// The intervals.
    pub fn iter(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        self.0.iter().copied()
    }

    /// Empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn normalize(&mut self) {
        self.0.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(self.0.len());
        for &(a, b) in &self.0 {
            match out.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        self.0 = out;
    }
}

/// An address as a number (IPv4 in the low 32 bits).
pub fn addr_num(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

/// The first and last address of a CIDR, as numbers.
pub fn cidr_span(n: &IpNet) -> (u128, u128) {
    (addr_num(n.network()), addr_num(n.broadcast()))
}

/// nftables text of an address interval of the family `v6`: one address, a prefix when
/// the interval is exactly one, else `first-last`.
pub fn show_addr_interval(lo: u128, hi: u128, v6: bool) -> String {
    let addr = |n: u128| -> String {
        if v6 {
            Ipv6Addr::from(n).to_string()
        } else {
            Ipv4Addr::from(n as u32).to_string()
        }
    };
    if lo == hi {
        return addr(lo);
    }
    let bits = if v6 { 128 } else { 32 };
    match (hi - lo).checked_add(1) {
        // Every IPv6 address.
        None => return format!("{}/0", addr(0)),
        Some(size) if size.is_power_of_two() && lo.is_multiple_of(size) => {
            let len = bits - size.trailing_zeros();
            return format!("{}/{len}", addr(lo));
        }
        Some(_) => {}
    }
    format!("{}-{}", addr(lo), addr(hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn overlapping_and_adjacent_intervals_merge() {
        let mut s = Intervals::new();
        s.add(10, 20);
        s.add(15, 30);
        s.add(31, 31);
        s.add(40, 50);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(10, 31), (40, 50)]);
    }

    #[test]
    fn removing_leaves_holes() {
        let mut s = Intervals::new();
        s.add(0, 255);
        s.remove(16, 31);
        s.remove(0, 0);
        s.remove(255, 300);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(1, 15), (32, 254)]);
    }

    #[test]
    fn intervals_print_as_addresses_prefixes_or_ranges() {
        let n: IpNet = "10.1.0.0/16".parse().unwrap();
        let (a, b) = cidr_span(&n);
        assert_eq!(show_addr_interval(a, b, false), "10.1.0.0/16");
        assert_eq!(show_addr_interval(a, a, false), "10.1.0.0");
        assert_eq!(show_addr_interval(a + 1, a + 5, false), "10.1.0.1-10.1.0.5");
        let n6: IpNet = "fd32::/64".parse().unwrap();
        let (a, b) = cidr_span(&n6);
        assert_eq!(show_addr_interval(a, b, true), "fd32::/64");
        assert_eq!(
            show_addr_interval(0, u128::from(u32::MAX), false),
            "0.0.0.0/0"
        );
        assert_eq!(show_addr_interval(0, u128::MAX, true), "::/0");
    }

    proptest! {
        /// The normalized set holds exactly the values of the intervals added minus those
        /// removed, and its intervals are disjoint and not adjacent.
        #[test]
        fn intervals_equal_brute_force(
            adds in proptest::collection::vec((0u128..200, 0u128..20), 0..8),
            removes in proptest::collection::vec((0u128..200, 0u128..20), 0..4),
        ) {
            let mut s = Intervals::new();
            let mut brute = [false; 230];
            for &(a, l) in &adds {
                s.add(a, a + l);
                for v in a..=a + l { brute[v as usize] = true; }
            }
            for &(a, l) in &removes {
                s.remove(a, a + l);
                for v in a..=a + l { brute[v as usize] = false; }
            }
            for (v, &b) in brute.iter().enumerate() {
                prop_assert_eq!(s.contains(v as u128), b);
            }
            let v: Vec<_> = s.iter().collect();
            for w in v.windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0);
            }
        }
    }
}
