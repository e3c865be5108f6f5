//! Node identities.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node identity: 16 bytes (the first 16 bytes of SHA-256 of the node's static
/// public key, computed by the agent). Shown and serialized as 32 lowercase hex
/// characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub [u8; 16]);

/// Error returned when parsing a [`NodeId`] from a string that is not 32 hex characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseNodeIdError(pub String);

impl fmt::Display for ParseNodeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid node id {:?}: expected 32 hex characters",
            self.0
        )
    }
}

impl std::error::Error for ParseNodeIdError {}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseNodeIdError(s.to_string());
        let bytes = s.as_bytes();
        if bytes.len() != 32 {
            return Err(err());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            let hi = nibble(bytes[2 * i]).ok_or_else(err)?;
            let lo = nibble(bytes[2 * i + 1]).ok_or_else(err)?;
            *o = (hi << 4) | lo;
        }
        Ok(NodeId(out))
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let mut b = [0u8; 16];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i as u8) * 17;
        }
        let id = NodeId(b);
        let s = id.to_string();
        assert_eq!(s, "00112233445566778899aabbccddeeff");
        assert_eq!(s.parse::<NodeId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
        assert!("abc".parse::<NodeId>().is_err());
        assert!("zz112233445566778899aabbccddeeff"
            .parse::<NodeId>()
            .is_err());
    }

    #[test]
    fn keys_in_maps_serialize_as_hex() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(NodeId([1; 16]), 3u64);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "{\"01010101010101010101010101010101\":3}");
        let back: std::collections::BTreeMap<NodeId, u64> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
