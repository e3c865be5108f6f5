//! Pools and blocks: address arithmetic over one flat block index.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Most blocks a space may have (all pools together), so that walking every
/// block stays cheap.
pub const MAX_BLOCKS: u64 = 1 << 20;
/// Most addresses in one block.
pub const MAX_BLOCK_ADDRS: u64 = 1 << 16;

/// The address space: pools cut into blocks, numbered by one flat index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    /// The pools, in order.
    pub pools: Vec<IpNet>,
    /// Prefix length of IPv4 blocks.
    pub block_v4: u8,
    /// Prefix length of IPv6 blocks.
    pub block_v6: u8,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v6: bool, x: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(x))
    } else {
        IpAddr::V4(Ipv4Addr::from(x as u32))
    }
}

/// An IPv6 pool contributes at most 2^16 blocks (65,536; with /122 blocks, 4,194,304
/// addresses), the first ones of the pool: more could never be used, and blocks are
/// enumerated.
pub const V6_MAX_EXP: u32 = 16;

impl Space {
    /// The pools of one family (IPv6 when `v6`), with the same block sizes; `None` when
    /// there are none.
    pub fn family(&self, v6: bool) -> Option<Space> {
        let pools: Vec<IpNet> = self
            .pools
            .iter()
            .filter(|p| p.addr().is_ipv6() == v6)
            .copied()
            .collect();
        if pools.is_empty() {
            return None;
        }
        Space::new(pools, self.block_v4, self.block_v6).ok()
    }

    /// Validates pools and block sizes.
    pub fn new(pools: Vec<IpNet>, block_v4: u8, block_v6: u8) -> Result<Space, String> {
        if pools.is_empty() {
            return Err("at least one pool is needed".into());
        }
        if block_v4 > 32 || block_v6 > 128 {
            return Err("block prefix length too long".into());
        }
        let mut total: u64 = 0;
        for (i, p) in pools.iter().enumerate() {
            if p.trunc() != *p {
                return Err(format!(
                    "pool {p} has host bits set (did you mean {})",
                    p.trunc()
                ));
            }
            let blen = if p.addr().is_ipv4() {
                block_v4
            } else {
                block_v6
            };
            if blen < p.prefix_len() {
                return Err(format!(
                    "pool {p} is smaller than one /{blen} block; use a shorter pool prefix or a longer block"
                ));
            }
            let bits = u32::from(p.max_prefix_len() - blen);
            if bits > 16 {
                return Err(format!(
                    "/{blen} blocks hold more than {MAX_BLOCK_ADDRS} addresses"
                ));
            }
            let mut exp = u32::from(blen - p.prefix_len());
            if p.addr().is_ipv6() {
                // IPv6 pools are vast (a /48 holds 2^74 /122 blocks): only the first
                // V6_MAX_EXP bits' worth of blocks are used.
                exp = exp.min(V6_MAX_EXP);
            }
            if exp > 20 {
                return Err(format!(
                    "pool {p} has more than {MAX_BLOCKS} /{blen} blocks"
                ));
            }
            total += 1u64 << exp;
            if total > MAX_BLOCKS {
                return Err(format!("the pools have more than {MAX_BLOCKS} blocks"));
            }
            for q in &pools[..i] {
                if q.contains(&p.network()) || p.contains(&q.network()) {
                    return Err(format!("pools {q} and {p} overlap"));
                }
            }
        }
        Ok(Space {
            pools,
            block_v4,
            block_v6,
        })
    }

    fn blen(&self, p: usize) -> u8 {
        if self.pools[p].addr().is_ipv4() {
            self.block_v4
        } else {
            self.block_v6
        }
    }

    /// Blocks in pool `p` (of an IPv6 pool, at most 2^[`V6_MAX_EXP`]: its first ones).
    pub fn blocks_in(&self, p: usize) -> u64 {
        let mut exp = u32::from(self.blen(p) - self.pools[p].prefix_len());
        if self.pools[p].addr().is_ipv6() {
            exp = exp.min(V6_MAX_EXP);
        }
        1u64 << exp
    }

    /// Blocks of all pools.
    pub fn total_blocks(&self) -> u64 {
        (0..self.pools.len()).map(|p| self.blocks_in(p)).sum()
    }

    fn locate(&self, k: u64) -> Option<(usize, u64)> {
        let mut k = k;
        for p in 0..self.pools.len() {
            let n = self.blocks_in(p);
            if k < n {
                return Some((p, k));
            }
            k -= n;
        }
        None
    }

    /// The CIDR of block `k`.
    pub fn block_net(&self, k: u64) -> Option<IpNet> {
        let (p, i) = self.locate(k)?;
        let pool = self.pools[p];
        let size_bits = u32::from(pool.max_prefix_len() - self.blen(p));
        let base = to_u128(pool.network()) + (u128::from(i) << size_bits);
        IpNet::new(from_u128(pool.addr().is_ipv6(), base), self.blen(p)).ok()
    }

    /// The block holding `ip`, if it is in a pool.
    pub fn block_of(&self, ip: IpAddr) -> Option<u64> {
        let mut first = 0u64;
        for (p, pool) in self.pools.iter().enumerate() {
            if pool.contains(&ip) {
                let size_bits = u32::from(pool.max_prefix_len() - self.blen(p));
                let off = (to_u128(ip) - to_u128(pool.network())) >> size_bits;
                // Past the blocks used of a vast IPv6 pool: in no block.
                return (off < u128::from(self.blocks_in(p))).then(|| first + off as u64);
            }
            first += self.blocks_in(p);
        }
        None
    }

    /// True if `ip` may be handed out: inside a pool, not the pool's network
    /// address nor (IPv4) its broadcast address.
    pub fn usable(&self, ip: IpAddr) -> bool {
        self.pools.iter().any(|pool| {
            pool.contains(&ip) && ip != pool.network() && (ip.is_ipv6() || ip != pool.broadcast())
        })
    }

    /// The usable addresses of block `k`, in order.
    pub fn addrs(&self, k: u64) -> Vec<IpAddr> {
        let Some(net) = self.block_net(k) else {
            return Vec::new();
        };
        let v6 = net.addr().is_ipv6();
        let base = to_u128(net.network());
        let n = 1u128 << u32::from(net.max_prefix_len() - net.prefix_len());
        (0..n)
            .map(|i| from_u128(v6, base + i))
            .filter(|a| self.usable(*a))
            .collect()
    }

    /// Number of usable addresses in all pools.
    pub fn usable_total(&self) -> u128 {
        self.pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let block = 1u128 << u32::from(p.max_prefix_len() - self.blen(i));
                let n = u128::from(self.blocks_in(i)) * block;
                n - if p.addr().is_ipv4() { 2 } else { 1 }
            })
            .sum()
    }

    /// The genesis share of member `i` of `n`: blocks `[lo, hi)`.
    pub fn share(&self, i: usize, n: usize) -> (u64, u64) {
        let t = u128::from(self.total_blocks());
        let lo = t * i as u128 / n as u128;
        let hi = t * (i as u128 + 1) / n as u128;
        (lo as u64, hi as u64)
    }

    /// The genesis member (index among `n`) whose share holds block `k`.
    pub fn share_of(&self, k: u64, n: usize) -> usize {
        // Smallest i with hi(i) > k.
        let (mut lo, mut hi) = (0usize, n - 1);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.share(mid, n).1 > k {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(pools: &[&str], v4: u8, v6: u8) -> Space {
        Space::new(pools.iter().map(|p| p.parse().unwrap()).collect(), v4, v6).unwrap()
    }

    #[test]
    fn blocks_and_addresses() {
        let s = sp(&["10.32.0.0/12"], 26, 122);
        assert_eq!(s.total_blocks(), 16384);
        assert_eq!(s.block_net(0).unwrap().to_string(), "10.32.0.0/26");
        assert_eq!(s.block_net(16383).unwrap().to_string(), "10.47.255.192/26");
        assert_eq!(
            s.addrs(0).len(),
            63,
            "the pool's network address is skipped"
        );
        assert_eq!(
            s.addrs(16383).len(),
            63,
            "the pool's broadcast address is skipped"
        );
        assert_eq!(s.addrs(5).len(), 64);
        assert_eq!(s.block_of("10.32.1.70".parse().unwrap()), Some(5));
        assert_eq!(s.block_of("10.48.0.1".parse().unwrap()), None);
        assert_eq!(s.usable_total(), (1 << 20) - 2);
    }

    #[test]
    fn a_vast_ipv6_pool_uses_its_first_blocks() {
        let s = sp(&["fd32::/48"], 26, 122);
        assert_eq!(s.total_blocks(), 1 << V6_MAX_EXP);
        assert_eq!(
            s.block_net(0).unwrap().to_string(),
            "fd32::/122",
            "the first block"
        );
        let last = s.block_net((1 << V6_MAX_EXP) - 1).unwrap();
        assert_eq!(last.to_string(), "fd32::3f:ffc0/122");
        assert_eq!(s.block_of(last.network()), Some((1 << V6_MAX_EXP) - 1));
        assert_eq!(s.block_of("fd32::40:0".parse().unwrap()), None);
        assert_eq!(s.usable_total(), (1u128 << 22) - 1);
    }

    #[test]
    fn v6_and_several_pools() {
        let s = sp(&["10.0.0.0/24", "fd00::/112"], 28, 122);
        assert_eq!(s.total_blocks(), 16 + 1024);
        assert_eq!(s.block_net(16).unwrap().to_string(), "fd00::/122");
        assert_eq!(s.block_of("fd00::41".parse().unwrap()), Some(17));
        assert_eq!(s.addrs(16).len(), 63);
        assert_eq!(s.usable_total(), 254 + 65535);
    }

    #[test]
    fn bad_spaces_are_refused() {
        let p = |s: &str| -> IpNet { s.parse().unwrap() };
        assert!(Space::new(vec![], 26, 122).is_err());
        assert!(Space::new(vec![p("10.0.0.1/24")], 26, 122).is_err());
        assert!(Space::new(vec![p("10.0.0.0/27")], 26, 122).is_err());
        assert!(Space::new(vec![p("10.0.0.0/8")], 30, 122).is_err());
        assert!(Space::new(vec![p("10.0.0.0/16"), p("10.0.1.0/24")], 26, 122).is_err());
        assert!(Space::new(vec![p("10.0.0.0/16")], 12, 122).is_err());
    }

    proptest::proptest! {
        #[test]
        fn shares_cover_every_block_once(n in 1usize..40, k in 0u64..16384) {
            let s = sp(&["10.32.0.0/12"], 26, 122);
            let i = s.share_of(k, n);
            let (lo, hi) = s.share(i, n);
            proptest::prop_assert!(lo <= k && k < hi);
            let sum: u64 = (0..n).map(|i| { let (a, b) = s.share(i, n); b - a }).sum();
            proptest::prop_assert_eq!(sum, 16384);
        }
    }
}
