//! Names added with `weft dns add`, as replicated records: `dns/NAME` (relative to the
//! domain, lower case), owned by the node that wrote it, so they leave with that node.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Key prefix of added names.
pub const DNS_PREFIX: &str = "dns/";

/// The record key of an added name (already relative and lower case).
pub fn name_key(rel: &str) -> String {
    format!("{DNS_PREFIX}{rel}")
}

/// An added name's value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Added {
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
}

impl Added {
    /// Encodes for a record.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a record's value.
    pub fn decode(b: &[u8]) -> Option<Added> {
        serde_json::from_slice(b).ok()
    }

    /// `self` with `add` added and `remove` taken out (all of them when `remove_all`),
    /// sorted, without duplicates; None when nothing is left.
    pub fn change(&self, add: &[IpAddr], remove: &[IpAddr], remove_all: bool) -> Option<Added> {
        let mut addrs: Vec<IpAddr> = if remove_all {
            Vec::new()
        } else {
            self.addrs
                .iter()
                .filter(|a| !remove.contains(a))
                .copied()
                .collect()
        };
        addrs.extend(add);
        addrs.sort();
        addrs.dedup();
        (!addrs.is_empty()).then_some(Added { addrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_and_removing_addresses() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "fd00::1".parse().unwrap();
        let v = Added::default().change(&[b, a, a], &[], false).unwrap();
        assert_eq!(v.addrs, [a, b]);
        assert_eq!(Added::decode(&v.encode()), Some(v.clone()));
        assert_eq!(v.change(&[], &[a], false).unwrap().addrs, [b]);
        assert_eq!(v.change(&[], &[a, b], false), None);
        assert_eq!(v.change(&[], &[], true), None);
        assert_eq!(name_key("db"), "dns/db");
    }
}
