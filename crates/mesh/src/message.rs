//! Messages exchanged between connected peers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{NodeId, Record};

/// Flag set on an entry of a [`Message::Vector`] to say "the sender holds this
/// owner as gone, at version `entry & !GONE_BIT`". Versions stay below 2^63.
pub const GONE_BIT: u64 = 1 << 63;

/// One anti-entropy message. The agent encodes it (serde) into frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Push of records new to the sender (its own writes, or records it just merged).
    ///
    /// Each record is taken by a receiver only when its version is exactly one
    /// above the receiver's version for that owner, which keeps every store
    /// *complete up to its version vector*; anything else is left to
    /// anti-entropy (a [`Message::Delta`]).
    Update(Vec<Record>),
    /// Hash of the sender's version vector (live owners), sent every tick.
    Digest(u64),
    /// The sender's version vector, sent in answer to a digest that differs.
    /// Live owners map to their highest version; owners the sender holds as
    /// gone map to their tombstone version with [`GONE_BIT`] set.
    Vector(BTreeMap<NodeId, u64>),
    /// Every record of the sender, for each owner present in `records`, whose
    /// version is above `base[owner]` (0 when absent): a complete range, so a
    /// receiver at or above the base can take it whole. `base[owner] == 0`
    /// is a full snapshot of that owner; `base[owner] == GONE_BIT` is a full
    /// snapshot sent because the owner is up at the sender, which also lifts a
    /// receiver's tombstone at the same version (an unvouched snapshot lifts
    /// only a lower tombstone, so stale copies cannot resurrect a gone owner).
    Delta {
        /// Per owner, the version the records start after.
        base: BTreeMap<NodeId, u64>,
        /// The records, all versions above their owner's base.
        records: Vec<Record>,
    },
    /// A message for the nodes' encrypted tunnel (its own encoding, `weft_tunnel::Control`):
    /// the mesh only carries it between the two connected nodes, inside their Noise
    /// session, and never stores or forwards it.
    Tunnel(Vec<u8>),
}

impl Message {
    /// Short name of the variant, for logs and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Update(_) => "update",
            Message::Digest(_) => "digest",
            Message::Vector(_) => "vector",
            Message::Delta { .. } => "delta",
            Message::Tunnel(_) => "tunnel",
        }
    }
}
