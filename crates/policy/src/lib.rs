//! Network policy, pure (docs/policy.md): Kubernetes `NetworkPolicy` and `Namespace`
//! objects (`k8s`: parsing, defaulting and validation as the API server does them), label
//! selectors, the world of endpoints and objects (`model`), the reference engine that
//! decides a flow (`engine`), the compiler to one host's nftables table (`compile`), and
//! the replicated records the agent keeps them in (`records`). No syscalls: the agent
//! feeds records in and applies the scripts this crate returns.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod compile;
pub mod engine;
pub mod gen;
pub mod identity;
pub mod k8s;
pub mod model;
pub mod ranges;
pub mod records;
pub mod selector;

pub use compile::{compile, diff_script, full_script, Compiled};
pub use engine::{local_verdict, verdict, verdict_on, Dir, Flow, Side, Verdict};
pub use k8s::{
    parse_objects, parse_objects_warn, Namespace, NetworkPolicy, Object, ParseError, Protocol,
};
pub use model::{Endpoint, NamedPort, World};
pub use selector::{Labels, Selector};
