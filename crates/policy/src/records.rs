//! Policy state as replicated records (docs/policy.md, "Objects and where they live"):
//! endpoints, owned by their host (`ep/CONTAINER/IF`), and cluster objects that any host
//! may write (`k8s/np/NS/NAME`, `k8s/ns/NAME`, `k8s/labels/CONTAINER/IF`), merged as
//! last-writer-wins registers by their stamps. Pure: the agent hands in the records of
//! its mesh store and writes what this module encodes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::k8s::{parse_objects, NetworkPolicy, Object};
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
    /// Key → (winning value, owner of that record); shared between builds while no
    /// object changed.
    pub winners: Arc<BTreeMap<String, (ObjectValue, String)>>,
}

impl Objects {
    /// The stamp for a new write of `key` at wall time `now_ms` by `node`: above every
    /// stamp seen for it.
    pub fn next_stamp(&self, key: &str, now_ms: u64, node: &str) -> Stamp {
        let seen = self.winners.get(key).map_or(0, |(v, _)| v.stamp.ms + 1);
        Stamp {
            ms: now_ms.max(seen),
            node: node.to_string(),
        }
    }

    /// The label map set with `weft label` for one endpoint, if any.
    pub fn labels_of(&self, uid: &str) -> Option<Labels> {
        let (v, _) = self.winners.get(&labels_key(uid))?;
        serde_json::from_value(v.object.clone()?).ok()
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
    /// More names for the name service (network aliases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl EndpointValue {
    /// Encodes for a record.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Every owner's endpoint and object records, parsed once, from which the world is
/// assembled: the agent replaces an owner's part only when that owner's version changed.
#[derive(Debug, Clone, Default)]
pub struct Index {
    owners: BTreeMap<String, OwnerPart>,
    /// Parsed policies and namespaces by record key, with the stamp they were parsed at.
    parsed: BTreeMap<String, (Stamp, Option<Object>)>,
    /// What the objects made at the last build, while no owner's objects changed since:
    /// endpoints come and go far more often than objects.
    built: Option<Built>,
}

/// The part of a build that depends on objects only.
#[derive(Debug, Clone)]
struct Built {
    objects: Objects,
    namespaces: BTreeMap<String, Labels>,
    policies: Arc<BTreeMap<String, NetworkPolicy>>,
    labels: BTreeMap<String, Labels>,
}

#[derive(Debug, Clone, Default)]
struct OwnerPart {
    name: String,
    version: u64,
    /// From a cache of an earlier run, not (yet) from the mesh.
    cached: bool,
    endpoints: BTreeMap<String, EndpointValue>,
    objects: BTreeMap<String, ObjectValue>,
    /// A hash of each record's bytes: unchanged records are not parsed again.
    hashes: BTreeMap<String, u64>,
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// The version the index holds of `owner` (None: none, or only cached records).
    pub fn version(&self, owner: &str) -> Option<u64> {
        self.owners
            .get(owner)
            .filter(|p| !p.cached)
            .map(|p| p.version)
    }

    /// Replaces `owner`'s part by `records` (its `ep/` and `k8s/` records; others are
    /// ignored), at `version`; `cached` marks records from an earlier run's cache.
    pub fn set_owner<'a>(
        &mut self,
        owner: &str,
        name: &str,
        version: u64,
        cached: bool,
        records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) {
        let mut part = OwnerPart {
            name: name.to_string(),
            version,
            cached,
            ..OwnerPart::default()
        };
        let mut old = self.owners.remove(owner).unwrap_or_default();
        let old_objects = old.objects.len();
        let mut objects_changed = false;
        for (key, value) in records {
            let h = fnv(value);
            part.hashes.insert(key.to_string(), h);
            if old.hashes.get(key) == Some(&h) {
                // Unchanged since the last time: taken over as parsed (moved, not copied).
                if let Some(uid) = key.strip_prefix(EP_PREFIX) {
                    if let Some(v) = old.endpoints.remove(uid) {
                        part.endpoints.insert(uid.to_string(), v);
                    }
                } else if let Some(v) = old.objects.remove(key) {
                    part.objects.insert(key.to_string(), v);
                }
                continue;
            }
            if let Some(uid) = key.strip_prefix(EP_PREFIX) {
                if let Ok(v) = serde_json::from_slice::<EndpointValue>(value) {
                    part.endpoints.insert(uid.to_string(), v);
                }
            } else if key.starts_with(OBJ_PREFIX) {
                objects_changed = true;
                if let Ok(v) = serde_json::from_slice::<ObjectValue>(value) {
                    part.objects.insert(key.to_string(), v);
                }
            }
        }
        // Unchanged objects were taken over above; any other change (one added, changed
        // or gone) makes the next build compute the objects' part again.
        if objects_changed || part.objects.len() != old_objects {
            self.built = None;
        }
        self.owners.insert(owner.to_string(), part);
    }

    /// Drops an owner's part.
    pub fn remove_owner(&mut self, owner: &str) {
        if self
            .owners
            .remove(owner)
            .is_some_and(|p| !p.objects.is_empty())
        {
            self.built = None;
        }
    }

    /// Drops the parts that came only from the cache.
    pub fn drop_cached(&mut self) -> bool {
        let before = self.owners.len();
        if self
            .owners
            .values()
            .any(|p| p.cached && !p.objects.is_empty())
        {
            self.built = None;
        }
        self.owners.retain(|_, p| !p.cached);
        before != self.owners.len()
    }

    /// What `me` writes of the cluster objects so that each outlives its writer, and
    /// no more: `adopt` are winning records whose holders are all down (nodes not in
    /// `up`), which `me` writes again with the same stamp when it is the lowest node up
    /// (`lowest`); `release` are copies `me` holds of another node's write that a node
    /// up holds too, newer, or as the writer itself, or as a lower node: `me` drops
    /// them. Call it only once the view of who is up has settled: at a start, before
    /// the peers are heard from, every other node looks down, and every node would
    /// write every object again (each owner then holding a copy of all of them).
    pub fn adoption(
        &self,
        me: &str,
        up: &BTreeSet<String>,
        lowest: bool,
        winners: &BTreeMap<String, (ObjectValue, String)>,
    ) -> (Vec<(String, ObjectValue)>, Vec<String>) {
        let held = |node: &str, key: &str| -> Option<&Stamp> {
            self.owners
                .get(node)
                .filter(|p| !p.cached)
                .and_then(|p| p.objects.get(key))
                .map(|v| &v.stamp)
        };
        let mut adopt = Vec::new();
        if lowest {
            for (key, (v, owner)) in winners {
                if up.contains(owner) {
                    continue;
                }
                if up
                    .iter()
                    .any(|n| held(n, key).is_some_and(|s| *s >= v.stamp))
                {
                    continue;
                }
                adopt.push((key.clone(), v.clone()));
            }
        }
        let mut release = Vec::new();
        if let Some(mine) = self.owners.get(me).filter(|p| !p.cached) {
            for (key, v) in &mine.objects {
                let s = &v.stamp;
                if s.node == me {
                    continue;
                }
                let redundant = up.iter().filter(|n| n.as_str() != me).any(|n| {
                    held(n, key)
                        .is_some_and(|t| t > s || (t == s && (*n == s.node || n.as_str() < me)))
                });
                if redundant {
                    release.push(key.clone());
                }
            }
        }
        (adopt, release)
    }

    /// Owners held, with whether each is from the cache.
    pub fn owners(&self) -> impl Iterator<Item = (&str, bool)> {
        self.owners.iter().map(|(o, p)| (o.as_str(), p.cached))
    }

    /// Every record held, as (owner, owner name, key, value), to cache for the next run.
    pub fn records(&self) -> Vec<(String, String, String, Vec<u8>)> {
        let mut out = Vec::new();
        for (o, p) in &self.owners {
            for (uid, v) in &p.endpoints {
                out.push((o.clone(), p.name.clone(), endpoint_key(uid), v.encode()));
            }
            for (k, v) in &p.objects {
                out.push((o.clone(), p.name.clone(), k.clone(), v.encode()));
            }
        }
        out
    }

    /// The winning objects and the world they make with every owner's endpoints: labels
    /// set with `weft label` replace the runtime's labels of their endpoint.
    pub fn build(&mut self) -> (World, Objects) {
        let built = match self.built.take() {
            Some(b) => b,
            None => self.build_objects(),
        };
        let mut eps = Vec::new();
        for p in self.owners.values() {
            for (uid, v) in &p.endpoints {
                eps.push(Endpoint {
                    uid: uid.clone(),
                    namespace: v.namespace.clone(),
                    name: v.name.clone(),
                    labels: built
                        .labels
                        .get(uid)
                        .cloned()
                        .unwrap_or_else(|| v.labels.clone()),
                    ports: v.ports.clone(),
                    addrs: v.addrs.clone(),
                    node: p.name.clone(),
                });
            }
        }
        let world = World::with_policies(built.namespaces.clone(), eps, built.policies.clone());
        let objects = built.objects.clone();
        self.built = Some(built);
        (world, objects)
    }

    /// The winning objects, and the namespaces, policies and labels they make.
    fn build_objects(&mut self) -> Built {
        let mut winners: BTreeMap<String, (ObjectValue, String)> = BTreeMap::new();
        for (owner, p) in &self.owners {
            for (key, v) in &p.objects {
                match winners.get(key) {
                    Some((w, o)) if (&w.stamp, o.as_str()) >= (&v.stamp, owner.as_str()) => {}
                    _ => {
                        winners.insert(key.clone(), (v.clone(), owner.clone()));
                    }
                }
            }
        }
        let objects = Objects {
            winners: Arc::new(winners),
        };
        // Parse what changed since the last build only.
        self.parsed.retain(|k, (stamp, _)| {
            objects
                .winners
                .get(k)
                .is_some_and(|(v, _)| v.stamp == *stamp)
        });
        for (k, (v, _)) in objects.winners.iter() {
            if self.parsed.contains_key(k) || !(k.contains("/np/") || k.contains("/ns/")) {
                continue;
            }
            let obj = v.object.as_ref().and_then(|o| {
                parse_objects(&o.to_string(), "default")
                    .ok()
                    .and_then(|mut v| v.pop())
            });
            self.parsed.insert(k.clone(), (v.stamp.clone(), obj));
        }
        let mut policies = BTreeMap::new();
        let mut namespaces = BTreeMap::new();
        for (_, o) in self.parsed.values() {
            match o {
                Some(Object::NetworkPolicy(p)) => {
                    policies.insert(p.key(), p.clone());
                }
                Some(Object::Namespace(n)) => {
                    namespaces.insert(n.name.clone(), n.labels.clone());
                }
                None => {}
            }
        }
        let labels = objects.labels();
        Built {
            objects,
            namespaces,
            policies: Arc::new(policies),
            labels,
        }
    }
}

/// The world of every live owner's endpoints and the winning objects (see
/// [`Index::build`]).
pub fn world<'a>(records: impl IntoIterator<Item = RecordRef<'a>> + Clone) -> (World, Objects) {
    type Part<'a> = (&'a str, Vec<(&'a str, &'a [u8])>);
    let mut by_owner: BTreeMap<&str, Part> = BTreeMap::new();
    for r in records {
        let e = by_owner
            .entry(r.owner)
            .or_insert((r.owner_name, Vec::new()));
        if r.owner_up || !r.key.starts_with(EP_PREFIX) {
            e.1.push((r.key, r.value));
        }
    }
    let mut index = Index::new();
    for (owner, (name, recs)) in by_owner {
        index.set_owner(owner, name, 0, false, recs);
    }
    index.build()
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
    fn the_index_reuses_the_objects_part_until_an_object_changes() {
        let ep = |ip: &str| {
            EndpointValue {
                namespace: "x".into(),
                name: "a".into(),
                labels: Default::default(),
                ports: vec![],
                addrs: vec![ip.parse().unwrap()],
                aliases: vec![],
            }
            .encode()
        };
        let (nx, ny) = (ns_obj("x", "red", 1, "a"), ns_obj("y", "blue", 1, "a"));
        let (e1, e2) = (ep("10.0.0.1"), ep("10.0.0.2"));
        let mut ix = Index::new();
        ix.set_owner(
            "a",
            "h1",
            1,
            false,
            vec![(namespace_key("x").as_str(), nx.as_slice())],
        );
        ix.set_owner("b", "h2", 1, false, vec![("ep/c1/eth0", e1.as_slice())]);
        let (w1, o1) = ix.build();
        // An endpoint changes: the same objects and policy map, the new endpoint.
        ix.set_owner("b", "h2", 2, false, vec![("ep/c1/eth0", e2.as_slice())]);
        let (w2, o2) = ix.build();
        assert!(Arc::ptr_eq(&o1.winners, &o2.winners));
        assert!(Arc::ptr_eq(&w1.policies, &w2.policies));
        assert_eq!(
            w2.endpoints["c1/eth0"].addrs,
            ["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
        // An object added, changed or gone: built again.
        ix.set_owner(
            "a",
            "h1",
            2,
            false,
            vec![
                (namespace_key("x").as_str(), nx.as_slice()),
                (namespace_key("y").as_str(), ny.as_slice()),
            ],
        );
        let (w3, o3) = ix.build();
        assert!(!Arc::ptr_eq(&o2.winners, &o3.winners));
        assert_eq!(w3.namespaces["y"]["team"], "blue");
        let ny2 = ns_obj("y", "green", 2, "a");
        ix.set_owner(
            "a",
            "h1",
            3,
            false,
            vec![
                (namespace_key("x").as_str(), nx.as_slice()),
                (namespace_key("y").as_str(), ny2.as_slice()),
            ],
        );
        assert_eq!(ix.build().0.namespaces["y"]["team"], "green");
        ix.set_owner(
            "a",
            "h1",
            4,
            false,
            vec![(namespace_key("x").as_str(), nx.as_slice())],
        );
        assert!(!ix.build().0.namespaces.contains_key("y"));
        ix.remove_owner("a");
        assert!(ix.build().0.namespaces.is_empty());
        // The same answers as a build from nothing.
        let mut fresh = Index::new();
        fresh.set_owner("b", "h2", 2, false, vec![("ep/c1/eth0", e2.as_slice())]);
        assert_eq!(fresh.build(), ix.build());
    }

    #[test]
    fn endpoints_of_owners_that_are_down_do_not_count_and_labels_replace_the_runtimes() {
        let v = EndpointValue {
            namespace: "x".into(),
            name: "a".into(),
            labels: [("pod".to_string(), "a".to_string())].into(),
            ports: vec![],
            addrs: vec!["10.0.0.1".parse().unwrap()],
            aliases: vec![],
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

    #[test]
    fn objects_are_written_again_by_the_lowest_node_up_once_and_released_when_held_elsewhere() {
        let x = namespace_key("x");
        let y = namespace_key("y");
        // "c" wrote x and y; "b" holds a copy of x (it adopted it while c was down).
        let x_c = ns_obj("x", "blue", 5, "c");
        let y_c = ns_obj("y", "red", 6, "c");
        let mut ix = Index::new();
        ix.set_owner(
            "c",
            "h3",
            2,
            false,
            vec![(x.as_str(), x_c.as_slice()), (y.as_str(), y_c.as_slice())],
        );
        ix.set_owner("b", "h2", 1, false, vec![(x.as_str(), x_c.as_slice())]);
        ix.set_owner("a", "h1", 1, false, Vec::<(&str, &[u8])>::new());
        let (_, o) = ix.build();
        let up = |ns: &[&str]| ns.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        // c down: a, lowest up, writes y again; x is held by b, up: not again.
        let (adopt, release) = ix.adoption("a", &up(&["a", "b"]), true, &o.winners);
        assert_eq!(
            adopt.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            vec![y.as_str()]
        );
        assert_eq!(adopt[0].1.stamp.node, "c", "the same stamp");
        assert!(release.is_empty());
        // Not the lowest up: nothing.
        assert!(ix
            .adoption("b", &up(&["a", "b"]), false, &o.winners)
            .0
            .is_empty());
        // b keeps its copy while c is down and no lower node holds x...
        assert!(ix
            .adoption("b", &up(&["a", "b"]), false, &o.winners)
            .1
            .is_empty());
        // ...and releases it once c, the writer, is up again.
        assert_eq!(
            ix.adoption("b", &up(&["a", "b", "c"]), false, &o.winners).1,
            vec![x.clone()]
        );
        // Two adopters of the same stamp, writer down: the higher one releases.
        ix.set_owner("a", "h1", 2, false, vec![(x.as_str(), x_c.as_slice())]);
        assert_eq!(
            ix.adoption("b", &up(&["a", "b"]), false, &o.winners).1,
            vec![x.clone()]
        );
        assert!(ix
            .adoption("a", &up(&["a", "b"]), true, &o.winners)
            .1
            .is_empty());
        // A newer write elsewhere makes an adopted copy useless.
        let x_new = ns_obj("x", "green", 9, "d");
        ix.set_owner("d", "h4", 1, false, vec![(x.as_str(), x_new.as_slice())]);
        assert_eq!(
            ix.adoption("a", &up(&["a", "d"]), true, &o.winners).1,
            vec![x.clone()]
        );
        // A node's own writes are never released.
        assert!(ix
            .adoption("c", &up(&["a", "b", "c", "d"]), false, &o.winners)
            .1
            .is_empty());
    }
}
