//! The world a policy decision is made in: endpoints with their identity, namespaces with
//! their labels, and the policies.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::k8s::{NetworkPolicy, Protocol, NAME_LABEL};
use crate::selector::Labels;

/// A named port of an endpoint (a container port with a name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    /// The name (an IANA service name).
    pub name: String,
    /// Its number.
    pub port: u16,
    /// Its protocol.
    #[serde(default)]
    pub protocol: Protocol,
}

/// One attachment of a pod (a container interface) with its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `CONTAINER/IFNAME`: unique in the cluster.
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name (the pod's, or the container's).
    pub name: String,
    /// Its labels.
    #[serde(default)]
    pub labels: Labels,
    /// Its named ports.
    #[serde(default)]
    pub ports: Vec<NamedPort>,
    /// Its addresses (one per family).
    pub addrs: Vec<IpAddr>,
    /// The node that hosts it (its name, for people).
    #[serde(default)]
    pub node: String,
}

impl Endpoint {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The number a named port has on this endpoint for `protocol`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// Everything policy decisions depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    /// Namespaces that have an object, with their labels (always with
    /// `kubernetes.io/metadata.name`).
    pub namespaces: BTreeMap<String, Labels>,
    /// Endpoints by uid.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Policies by `namespace/name` (shared: the index hands the same map to every world
    /// it builds while no object changed, so a new endpoint does not copy a thousand
    /// policies).
    pub policies: Arc<BTreeMap<String, NetworkPolicy>>,
    by_addr: BTreeMap<IpAddr, String>,
}

impl World {
    /// A world of these parts.
    pub fn new(
        namespaces: BTreeMap<String, Labels>,
        endpoints: impl IntoIterator<Item = Endpoint>,
        policies: impl IntoIterator<Item = NetworkPolicy>,
    ) -> World {
        let map = policies.into_iter().map(|p| (p.key(), p)).collect();
        World::with_policies(namespaces, endpoints, Arc::new(map))
    }

    /// A world of these parts, sharing a policy map built before.
    pub fn with_policies(
        namespaces: BTreeMap<String, Labels>,
        endpoints: impl IntoIterator<Item = Endpoint>,
        policies: Arc<BTreeMap<String, NetworkPolicy>>,
    ) -> World {
        let mut w = World {
            namespaces,
            policies,
            ..World::default()
        };
        for e in endpoints {
            w.add_endpoint(e);
        }
        w
    }

    /// Adds or replaces an endpoint.
    pub fn add_endpoint(&mut self, e: Endpoint) {
        self.remove_endpoint(&e.uid.clone());
        for a in &e.addrs {
            self.by_addr.insert(*a, e.uid.clone());
        }
        self.endpoints.insert(e.uid.clone(), e);
    }

    /// Removes an endpoint.
    pub fn remove_endpoint(&mut self, uid: &str) -> Option<Endpoint> {
        let e = self.endpoints.remove(uid)?;
        for a in &e.addrs {
            if self.by_addr.get(a).is_some_and(|u| u == uid) {
                self.by_addr.remove(a);
            }
        }
        Some(e)
    }

    /// The endpoint holding `addr`.
    pub fn endpoint_at(&self, addr: IpAddr) -> Option<&Endpoint> {
        self.by_addr.get(&addr).and_then(|u| self.endpoints.get(u))
    }

    /// A namespace's labels: its object's, or only its name label.
    pub fn namespace_labels(&self, ns: &str) -> Labels {
        self.namespaces.get(ns).cloned().unwrap_or_else(|| {
            let mut l = Labels::new();
            l.insert(NAME_LABEL.to_string(), ns.to_string());
            l
        })
    }

    /// Every namespace known: with an object, or with an endpoint.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .namespaces
            .keys()
            .cloned()
            .chain(self.endpoints.values().map(|e| e.namespace.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}
