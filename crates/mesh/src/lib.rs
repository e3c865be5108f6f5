//! Pure, sans-IO core of weft's mesh control plane (see `docs/mesh.md`).
//!
//! - [`Store`]: the replicated state, records owned by nodes, merged by version.
//! - [`Message`]: what peers exchange (push updates, digests, version vectors, deltas).
//! - [`Node`]: the per-host state machine; the caller feeds it connection events,
//!   messages and ticks with the current time, and performs the [`Output`]s.
//! - [`routes`]: shortest-path next hops over the published `links` records.
//! - [`sim`]: a deterministic simulator of many nodes with faults, reusable by
//!   other crates' simulations.
//!
//! Nothing here does I/O, reads a clock or spawns threads; time is passed in as
//! milliseconds (`now`).

#![warn(missing_docs)]

mod id;
mod message;
mod node;
pub mod routes;
pub mod sim;
mod store;

pub use id::{NodeId, ParseNodeIdError};
pub use message::{Message, GONE_BIT};
pub use node::{
    decode_links, encode_links, MeshConfig, Node, Output, Persisted, Status, LINKS_KEY,
};
pub use store::{Record, RecordRef, Store, Tombstone};
