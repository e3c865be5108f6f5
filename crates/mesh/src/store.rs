//! The replicated store: records owned by nodes, merged by version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// One replicated record. Only `owner` writes it; every write takes the owner's
/// next version. `value == None` is a tombstone (a deleted key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Record {
    /// The node that wrote the record.
    pub owner: NodeId,
    /// The key, unique per owner.
    pub key: String,
    /// The owner's version counter at the write.
    pub version: u64,
    /// The value, `None` for a deleted key.
    pub value: Option<Vec<u8>>,
}

impl Record {
    /// The record as a [`RecordRef`].
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            owner: &self.owner,
            key: &self.key,
            version: self.version,
            value: self.value.as_deref(),
        }
    }
}

/// A [`Record`] borrowed from the store; serializes exactly as the record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RecordRef<'a> {
    /// The node that wrote the record.
    pub owner: &'a NodeId,
    /// The key.
    pub key: &'a str,
    /// The owner's version counter at the write.
    pub version: u64,
    /// The value, `None` for a deleted key.
    pub value: Option<&'a [u8]>,
}

/// An owner declared gone: its records were dropped, and versions up to
/// `version` are refused (no resurrection by a peer that still has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// Highest version of the owner known when it was declared gone.
    pub version: u64,
    /// When (ms) it was declared gone here; collected `gc_after` later.
    pub since: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entry {
    version: u64,
    value: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct OwnerState {
    version: u64,
    records: BTreeMap<String, Entry>,
}

/// A node's store: owner → (highest version seen, records by key), plus owner
/// tombstones for gone owners.
///
/// [`Store::merge`] keeps a record when its version is higher than the stored
/// one for that (owner, key) (equal versions keep the greater value, so the
/// result never depends on arrival order): merging is commutative, associative
/// and idempotent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    owners: BTreeMap<NodeId, OwnerState>,
    gone: BTreeMap<NodeId, Tombstone>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// FNV-1a 64 of a version vector, in key order: the digest peers compare.
pub(crate) fn hash_vector<'a>(entries: impl Iterator<Item = (&'a NodeId, u64)>) -> u64 {
    let mut h = FNV_OFFSET;
    for (id, v) in entries {
        h = fnv1a(h, &id.0);
        h = fnv1a(h, &v.to_le_bytes());
    }
    h
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges one record; returns true if it was new (the store changed).
    ///
    /// A tombstoned owner refuses versions up to its tombstone version; a
    /// higher version lifts the tombstone.
    pub fn merge(&mut self, record: Record) -> bool {
        if let Some(t) = self.gone.get(&record.owner) {
            if record.version <= t.version {
                return false;
            }
            self.gone.remove(&record.owner);
        }
        let st = self.owners.entry(record.owner).or_default();
        if let Some(e) = st.records.get(&record.key) {
            if e.version > record.version
                || (e.version == record.version && e.value >= record.value)
            {
                return false;
            }
        }
        st.version = st.version.max(record.version);
        st.records.insert(
            record.key,
            Entry {
                version: record.version,
                value: record.value,
            },
        );
        true
    }

    /// The version vector: live owner → highest version held.
    pub fn vector(&self) -> BTreeMap<NodeId, u64> {
        self.owners.iter().map(|(k, s)| (*k, s.version)).collect()
    }

    /// 64-bit FNV-1a hash of the sorted version vector (live owners).
    pub fn digest(&self) -> u64 {
        hash_vector(self.owners.iter().map(|(k, s)| (k, s.version)))
    }

    /// Every live record whose version is above the vector's entry for its
    /// owner (0 when absent), tombstones of keys included.
    pub fn newer_than(&self, vector: &BTreeMap<NodeId, u64>) -> Vec<Record> {
        let mut out = Vec::new();
        for owner in self.owners.keys() {
            let base = vector.get(owner).copied().unwrap_or(0);
            out.extend(self.records_after(owner, base));
        }
        out
    }

    /// The records of `owner` with a version above `base`, in key order.
    pub fn records_after(&self, owner: &NodeId, base: u64) -> Vec<Record> {
        match self.owners.get(owner) {
            None => Vec::new(),
            Some(st) => st
                .records
                .iter()
                .filter(|(_, e)| e.version > base)
                .map(|(k, e)| Record {
                    owner: *owner,
                    key: k.clone(),
                    version: e.version,
                    value: e.value.clone(),
                })
                .collect(),
        }
    }

    /// The records of `owner` without copying them, in key order, as they serialize: a
    /// list of these is the JSON of a list of [`Record`]s.
    pub fn records_ref<'a>(
        &'a self,
        owner: &'a NodeId,
    ) -> impl Iterator<Item = RecordRef<'a>> + 'a {
        self.owners.get(owner).into_iter().flat_map(move |st| {
            st.records.iter().map(move |(k, e)| RecordRef {
                owner,
                key: k,
                version: e.version,
                value: e.value.as_deref(),
            })
        })
    }

    /// The records of `owner` whose keys start with `prefix` (deleted ones too), in key
    /// order, without copying them.
    pub fn records_with_prefix<'a>(
        &'a self,
        owner: &'a NodeId,
        prefix: &'a str,
    ) -> impl Iterator<Item = RecordRef<'a>> + 'a {
        self.owners
            .get(owner)
            .into_iter()
            .flat_map(move |st| st.records.range(prefix.to_string()..))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(move |(k, e)| RecordRef {
                owner,
                key: k,
                version: e.version,
                value: e.value.as_deref(),
            })
    }

    /// All records of `owner`, in key order (empty if unknown or gone).
    pub fn records_of(&self, owner: &NodeId) -> Vec<Record> {
        self.records_after(owner, 0)
    }

    /// The live (not deleted) records of `owner` whose keys start with `prefix`, in key
    /// order, without copying them.
    pub fn live_with_prefix<'a>(
        &'a self,
        owner: &NodeId,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.owners
            .get(owner)
            .into_iter()
            .flat_map(move |s| s.records.range(prefix.to_string()..))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter_map(|(k, e)| e.value.as_deref().map(|v| (k.as_str(), v)))
    }

    /// The current value of `(owner, key)`: `None` if unknown, `Some(None)` if deleted.
    pub fn get(&self, owner: &NodeId, key: &str) -> Option<Option<&[u8]>> {
        let e = self.owners.get(owner)?.records.get(key)?;
        Some(e.value.as_deref())
    }

    /// The record of `(owner, key)`, if held.
    pub fn record(&self, owner: &NodeId, key: &str) -> Option<Record> {
        let e = self.owners.get(owner)?.records.get(key)?;
        Some(Record {
            owner: *owner,
            key: key.to_string(),
            version: e.version,
            value: e.value.clone(),
        })
    }

    /// Highest version held for a live owner.
    pub fn version(&self, owner: &NodeId) -> Option<u64> {
        self.owners.get(owner).map(|s| s.version)
    }

    /// Live owners, in order.
    pub fn owners(&self) -> impl Iterator<Item = &NodeId> + '_ {
        self.owners.keys()
    }

    /// The tombstone of a gone owner.
    pub fn tombstone(&self, owner: &NodeId) -> Option<Tombstone> {
        self.gone.get(owner).copied()
    }

    /// All owner tombstones.
    pub fn tombstones(&self) -> &BTreeMap<NodeId, Tombstone> {
        &self.gone
    }

    /// Declares `owner` gone at `now`: drops its records and keeps a tombstone
    /// at the highest of its held version and `version`. Returns true if the
    /// store changed.
    pub fn mark_gone(&mut self, owner: NodeId, version: u64, now: u64) -> bool {
        let held = self.owners.remove(&owner).map(|s| s.version).unwrap_or(0);
        let v = held.max(version);
        match self.gone.get_mut(&owner) {
            Some(t) if t.version >= v => held != 0,
            Some(t) => {
                t.version = v;
                true
            }
            None => {
                self.gone.insert(
                    owner,
                    Tombstone {
                        version: v,
                        since: now,
                    },
                );
                true
            }
        }
    }

    /// Removes the tombstone of `owner` (it came back), returning it.
    pub fn lift(&mut self, owner: &NodeId) -> Option<Tombstone> {
        self.gone.remove(owner)
    }

    /// Collects tombstones older than `gc_after` ms; returns the collected owners.
    pub fn gc(&mut self, now: u64, gc_after: u64) -> Vec<NodeId> {
        let old: Vec<NodeId> = self
            .gone
            .iter()
            .filter(|(_, t)| now.saturating_sub(t.since) >= gc_after)
            .map(|(k, _)| *k)
            .collect();
        for k in &old {
            self.gone.remove(k);
        }
        old
    }

    /// True if both stores hold the same live owners, versions and records
    /// (tombstones are local judgements and not compared).
    pub fn live_eq(&self, other: &Store) -> bool {
        self.owners == other.owners
    }

    /// Number of live records.
    pub fn len(&self) -> usize {
        self.owners.values().map(|s| s.records.len()).sum()
    }

    /// True if no live record is held.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(o: u8, key: &str, version: u64, value: Option<&[u8]>) -> Record {
        Record {
            owner: NodeId([o; 16]),
            key: key.into(),
            version,
            value: value.map(|v| v.to_vec()),
        }
    }

    #[test]
    fn merge_keeps_highest_version_per_key() {
        let mut s = Store::new();
        assert!(s.merge(rec(1, "a", 2, Some(b"x"))));
        assert!(!s.merge(rec(1, "a", 2, Some(b"x"))), "idempotent");
        assert!(!s.merge(rec(1, "a", 1, Some(b"old"))), "older refused");
        assert!(s.merge(rec(1, "b", 3, None)));
        assert!(s.merge(rec(1, "a", 4, Some(b"y"))));
        assert_eq!(s.get(&NodeId([1; 16]), "a"), Some(Some(&b"y"[..])));
        assert_eq!(s.get(&NodeId([1; 16]), "b"), Some(None));
        assert_eq!(s.version(&NodeId([1; 16])), Some(4));
        assert_eq!(s.len(), 2);
        let mut v = BTreeMap::new();
        v.insert(NodeId([1; 16]), 3);
        assert_eq!(s.newer_than(&v), vec![rec(1, "a", 4, Some(b"y"))]);
        assert_eq!(s.newer_than(&BTreeMap::new()).len(), 2);
    }

    #[test]
    fn digest_follows_vector() {
        let mut a = Store::new();
        let mut b = Store::new();
        assert_eq!(a.digest(), b.digest());
        a.merge(rec(1, "a", 1, Some(b"x")));
        assert_ne!(a.digest(), b.digest());
        b.merge(rec(1, "a", 1, Some(b"x")));
        assert_eq!(a.digest(), b.digest());
        a.merge(rec(2, "a", 1, None));
        b.merge(rec(2, "a", 1, None));
        assert_eq!(a.digest(), b.digest());
        assert!(a.live_eq(&b));
    }

    #[test]
    fn owner_tombstone_refuses_older_and_lifts_on_newer() {
        let mut s = Store::new();
        let o = NodeId([7; 16]);
        s.merge(rec(7, "a", 1, Some(b"x")));
        s.merge(rec(7, "b", 5, Some(b"y")));
        assert!(s.mark_gone(o, 0, 100));
        assert_eq!(s.records_of(&o), vec![]);
        assert_eq!(
            s.tombstone(&o),
            Some(Tombstone {
                version: 5,
                since: 100
            })
        );
        assert!(!s.vector().contains_key(&o));
        // No resurrection by a peer that still has the old records.
        assert!(!s.merge(rec(7, "a", 1, Some(b"x"))));
        assert!(!s.merge(rec(7, "b", 5, Some(b"y"))));
        assert!(s.tombstone(&o).is_some());
        // The owner came back: a higher version lifts the tombstone.
        assert!(s.merge(rec(7, "c", 6, Some(b"z"))));
        assert!(s.tombstone(&o).is_none());
        assert_eq!(s.version(&o), Some(6));
    }

    #[test]
    fn borrowed_records_serialize_as_records() {
        let mut st = Store::default();
        st.merge(rec(1, "a", 1, Some(b"x\"y")));
        st.merge(rec(1, "b", 2, None));
        let id = NodeId([1; 16]);
        let owned = serde_json::to_string(&st.records_of(&id)).unwrap();
        let borrowed: Vec<RecordRef> = st.records_ref(&id).collect();
        assert_eq!(serde_json::to_string(&borrowed).unwrap(), owned);
        let back: Vec<Record> = serde_json::from_str(&owned).unwrap();
        assert_eq!(
            back.iter().map(Record::as_ref).collect::<Vec<_>>(),
            borrowed
        );
    }

    #[test]
    fn tombstones_are_collected() {
        let mut s = Store::new();
        s.merge(rec(3, "a", 1, Some(b"x")));
        s.mark_gone(NodeId([3; 16]), 0, 1_000);
        assert!(s.gc(1_500, 1_000).is_empty());
        assert_eq!(s.gc(2_000, 1_000), vec![NodeId([3; 16])]);
        assert!(s.tombstones().is_empty());
        // After collection an old record is accepted again (by design, gc_after is long).
        assert!(s.merge(rec(3, "a", 1, Some(b"x"))));
    }
}
