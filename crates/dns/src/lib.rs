//! weft's name service (docs/dns.md), pure: the zone of every live name (`zone`), the
//! answers to DNS messages (`wire`, the one user of hickory-proto), the records of names
//! added by hand (`records`) and the upstream servers of a resolv.conf (`resolv`). The
//! agent owns the sockets, the mesh and the clock.

pub mod records;
pub mod resolv;
pub mod wire;
pub mod zone;

pub use wire::{respond, servfail, Action, Transport};
pub use zone::{Config, Kind, Listed, Lookup, Source, Zone, DEFAULT_DOMAIN, DEFAULT_TTL};
