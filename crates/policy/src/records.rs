//! Policy state as replicated records (docs/policy.md, "Objects and where they live"):
//! endpoints, owned by their host (`ep/CONTAINER/IF`), and cluster objects that any host
//! may write (`k8s/np/NS/NAME`, `k8s/ns/NAME`, `k8s/labels/CONTAINER/IF`), merged as
//! last-writer-wins registers by their stamps. Pure: the agent hands in the records of
//! its mesh store and writes what this module encodes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::k8s::{parse_objects, Namespace, NetworkPolicy, Object};
use crate::model::{Endpoint, World};
use crate::selector::Labels;

/// Key prefix of endpoint records.
pub const EP_PREFIX: &str = "ep/";
/// Key prefix of cluster objects.
pub const OBJ_PREFIX: &str = "k8s/";

/// The record key of an endpoint.
pub fn endpoint_key(uid: &str) -> String {
    format!("{EP_PREFIX}{uid}")
}

/// The record key of a policy.
pub fn policy_key(ns: &str, name: &str) -> String {
    format!("{OBJ_PREFIX}np/{ns}/{name}")
}

/// The record key of a namespace.
pub fn namespace_key(name: &str) -> String {
    format!("{OBJ_PREFIX}ns/{name}")
}

/// The record key of an endpoint's labels set with `weft label`.
pub fn labels_key(uid: &str) -> String {
    format!("{OBJ_PREFIX}labels/{uid}")
}

/// The record key of an object.
pub fn object_key(o: &Object) -> String {
    match o {
        Object::NetworkPolicy(p) => policy_key(&p.namespace, &p.name),
        Object::Namespace(n) => namespace_key(&n.name),
    }
}

/// When a cluster object was written, and by which node: the greater wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds (a hybrid clock: wall time, or above every stamp seen for the key).
    pub ms: u64,
    /// The writing node's id.
    pub node: String,
}

/// The value of a cluster object record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectValue {
    /// Its stamp.
    pub stamp: Stamp,
    /// The object (Kubernetes JSON for policies and namespaces, a label map for labels);
    /// none when deleted.
    #[serde(default)]
    pub object: Option<Value>,
}

impl ObjectValue {
    /// Encodes for a record.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A record as the mesh store holds it, for this module.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// The owner node id.
    pub owner: &'a str,
    /// The owner's node name (for endpoints' `node`).
    pub owner_name: &'a str,
    /// The owner is live (its endpoints count).
    pub owner_up: bool,
    /// The key.
    pub key: &'a str,
    /// The value.
    pub value: &'a [u8],
}

/// The winning value of each cluster object key, with the owner of the winning record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Objects {
    /// Key → (winning value, owner of that record).
    pub winners: BTreeMap<String, (ObjectValue, String)>,
}

impl Objects {
    /// Merges every `k8s/` record.
    pub fn from_records<'a>(records: impl IntoIterator<Item = RecordRef<'a>>) -> Objects {
        let mut winners: BTreeMap<String, (ObjectValue, String)> = BTreeMap::new();
        for r in records {
            if !r.key.starts_with(OBJ_PREFIX) {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<ObjectValue>(r.value) else {
                continue;
            };
            match winners.get(r.key) {
                Some((w, owner)) if (&w.stamp, owner.as_str()) >= (&v.stamp, r.owner) => {}
                _ => {
                    winners.insert(r.key.to_string(), (v, r.owner.to_string()));
                }
            }
        }
        Objects { winners }
    }

    /// The stamp for a new write of `key` at wall time `now_ms` by `node`: above every
    /// stamp seen for it.
    pub fn next_stamp(&self, key: &str, now_ms: u64, node: &str) -> Stamp {
        let seen = self.winners.get(key).map_or(0, |(v, _)| v.stamp.ms + 1);
        Stamp {
            ms: now_ms.max(seen),
            node: node.to_string(),
        }
    }

    /// Live policies, parsed back (records that do not parse are skipped).
    pub fn policies(&self) -> Vec<NetworkPolicy> {
        self.live("np/")
            .filter_map(|v| match parse_objects(&v.to_string(), "default") {
                Ok(mut o) if o.len() == 1 => match o.pop() {
                    Some(Object::NetworkPolicy(p)) => Some(p),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Live namespaces.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.live("ns/")
            .filter_map(|v| match parse_objects(&v.to_string(), "default") {
                Ok(mut o) if o.len() == 1 => match o.pop() {
                    Some(Object::Namespace(n)) => Some(n),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Label maps set with `weft label`, by endpoint uid.
    pub fn labels(&self) -> BTreeMap<String, Labels> {
        let prefix = format!("{OBJ_PREFIX}labels/");
        self.winners
            .iter()
            .filter_map(|(k, (v, _))| {
                let uid = k.strip_prefix(&prefix)?;
                let l: Labels = serde_json::from_value(v.object.clone()?).ok()?;
                Some((uid.to_string(), l))
            })
            .collect()
    }

    fn live<'s>(&'s self, kind: &'s str) -> impl Iterator<Item = &'s Value> + 's {
        let prefix = format!("{OBJ_PREFIX}{kind}");
        self.winners
            .iter()
            .filter(move |(k, _)| k.starts_with(&prefix))
            .filter_map(|(_, (v, _))| v.object.as_ref())
    }
}

/// An endpoint record's value (the uid is in the key, the node is the owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointValue {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels given by the runtime.
    #[serde(default)]
    pub labels: Labels,
    /// Named ports.
    #[serde(default)]
    pub ports: Vec<crate::model::NamedPort>,
    /// Addresses.
    pub addrs: Vec<std::net::IpAddr>,
}

impl EndpointValue {
    /// Encodes for a record.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The world of every live owner's endpoints and the winning objects: labels set with
/// `weft label` replace the runtime's labels of their endpoint.
pub fn world<'a>(records: impl IntoIterator<Item = RecordRef<'a>> + Clone) -> (World, Objects) {
    let objects = Objects::from_records(records.clone());
    let labels = objects.labels();
    let mut eps = Vec::new();
    for r in records {
        let Some(uid) = r.key.strip_prefix(EP_PREFIX) else {
            continue;
        };
        if !r.owner_up {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<EndpointValue>(r.value) else {
            continue;
        };
        eps.push(Endpoint {
            uid: uid.to_string(),
            namespace: v.namespace,
            name: v.name,
            labels: labels.get(uid).cloned().unwrap_or(v.labels),
            ports: v.ports,
            addrs: v.addrs,
            node: r.owner_name.to_string(),
        });
    }
    let namespaces = objects
        .namespaces()
        .into_iter()
        .map(|n| (n.name, n.labels))
        .collect();
    let w = World::new(namespaces, eps, objects.policies());
    (w, objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(owner: &'a str, key: &'a str, value: &'a [u8]) -> RecordRef<'a> {
        RecordRef {
            owner,
            owner_name: owner,
            owner_up: true,
            key,
            value,
        }
    }

    fn ns_obj(name: &str, team: &str, ms: u64, node: &str) -> Vec<u8> {
        ObjectValue {
            stamp: Stamp {
                ms,
                node: node.into(),
            },
            object: Some(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": {"team": team}}
            })),
        }
        .encode()
    }

    #[test]
    fn the_highest_stamp_wins_whoever_owns_the_record() {
        let key = namespace_key("x");
        let a = ns_obj("x", "old", 100, "a");
        let b = ns_obj("x", "new", 200, "b");
        let (w, objs) = world(vec![rec("a", &key, &a), rec("b", &key, &b)]);
        assert_eq!(w.namespaces["x"]["team"], "new");
        assert_eq!(objs.winners[&key].1, "b");
        // Any order gives the same winner.
        let (w2, _) = world(vec![rec("b", &key, &b), rec("a", &key, &a)]);
        assert_eq!(w, w2);
    }

    #[test]
    fn a_delete_wins_over_older_writes_and_a_later_write_over_it() {
        let key = namespace_key("x");
        let a = ns_obj("x", "t", 100, "a");
        let del = ObjectValue {
            stamp: Stamp {
                ms: 150,
                node: "b".into(),
            },
            object: None,
        }
        .encode();
        let (w, objs) = world(vec![rec("a", &key, &a), rec("b", &key, &del)]);
        assert!(w.namespaces.is_empty());
        // A write after seeing the delete stamps above it, even with a clock behind.
        let s = objs.next_stamp(&key, 10, "a");
        assert_eq!(s.ms, 151);
        let again = ns_obj("x", "back", s.ms, "a");
        let (w, _) = world(vec![rec("a", &key, &again), rec("b", &key, &del)]);
        assert_eq!(w.namespaces["x"]["team"], "back");
    }

    #[test]
    fn endpoints_of_owners_that_are_down_do_not_count_and_labels_replace_the_runtimes() {
        let v = EndpointValue {
            namespace: "x".into(),
            name: "a".into(),
            labels: [("pod".to_string(), "a".to_string())].into(),
            ports: vec![],
            addrs: vec!["10.0.0.1".parse().unwrap()],
        }
        .encode();
        let lk = labels_key("c1/eth0");
        let lv = ObjectValue {
            stamp: Stamp {
                ms: 5,
                node: "n".into(),
            },
            object: Some(serde_json::json!({"pod": "z"})),
        }
        .encode();
        let mut down = rec("n2", "ep/c2/eth0", &v);
        down.owner_up = false;
        let (w, _) = world(vec![rec("n", "ep/c1/eth0", &v), rec("n", &lk, &lv), down]);
        assert_eq!(w.endpoints.len(), 1);
        assert_eq!(w.endpoints["c1/eth0"].labels["pod"], "z");
        assert_eq!(w.endpoints["c1/eth0"].node, "n");
    }
}
