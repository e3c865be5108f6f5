//! weft's cluster-wide IPAM (design: `docs/ipam.md`). Pure and sans-IO: the
//! caller feeds [`Ipam::step`] the mesh store, liveness and the time, writes
//! the records it returns through the mesh node, and persists
//! [`Ipam::persist`] before it answers an allocation.
//!
//! - [`space`]: pools and blocks, address arithmetic.
//! - [`view`]: record formats and the materialized view of ownership.
//! - [`Ipam`]: one node's engine: bootstrap, allocation, giving, lending,
//!   reclaim, re-admission.
//! - [`Families`]: dual stack, one engine per address family of the pools.

#![warn(missing_docs)]

mod engine;
mod families;
pub mod space;
mod step;
pub mod view;

pub use engine::{AllocError, Ipam, IpamConfig, Liveness, Persist, Use};
pub use families::Families;
pub use space::Space;
pub use step::Write;
pub use view::View;
