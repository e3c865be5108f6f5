//! Property tests of the store merge.

use proptest::prelude::*;
use weft_mesh::{NodeId, Record, Store};

fn record() -> impl Strategy<Value = Record> {
    (
        0u8..4,
        0u8..4,
        1u64..12,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..3)),
    )
        .prop_map(|(o, k, version, value)| Record {
            owner: NodeId([o; 16]),
            key: format!("k{k}"),
            version,
            value,
        })
}

fn merged(records: &[Record]) -> Store {
    let mut s = Store::new();
    for r in records {
        s.merge(r.clone());
    }
    s
}

proptest! {
    #[test]
    fn merge_order_does_not_matter(records in proptest::collection::vec(record(), 0..40), seed in any::<u64>()) {
        let a = merged(&records);
        // A permutation, with duplicates.
        let mut shuffled = records.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut dup = shuffled.clone();
        dup.extend(records.iter().take(5).cloned());
        let b = merged(&dup);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(a.vector(), b.vector());
    }

    #[test]
    fn merge_is_idempotent(records in proptest::collection::vec(record(), 0..30)) {
        let mut a = merged(&records);
        let before = a.clone();
        for r in &records {
            prop_assert!(!a.merge(r.clone()));
        }
        prop_assert_eq!(a, before);
    }

    #[test]
    fn merging_stores_is_commutative_and_associative(
        x in proptest::collection::vec(record(), 0..20),
        y in proptest::collection::vec(record(), 0..20),
        z in proptest::collection::vec(record(), 0..20),
    ) {
        let all = |s: &Store| s.newer_than(&Default::default());
        let (sx, sy, sz) = (merged(&x), merged(&y), merged(&z));
        // (x ∪ y) ∪ z
        let mut left = sx.clone();
        for r in all(&sy) { left.merge(r); }
        for r in all(&sz) { left.merge(r); }
        // z ∪ (y ∪ x)
        let mut yx = sy.clone();
        for r in all(&sx) { yx.merge(r); }
        let mut right = sz.clone();
        for r in all(&yx) { right.merge(r); }
        prop_assert_eq!(left.digest(), right.digest());
        prop_assert_eq!(left, right);
    }

    #[test]
    fn newer_than_brings_a_store_up_to_date(
        x in proptest::collection::vec(record(), 0..30),
        y in proptest::collection::vec(record(), 0..30),
    ) {
        let full = merged(&x.iter().chain(&y).cloned().collect::<Vec<_>>());
        let mut part = merged(&x);
        for r in full.newer_than(&part.vector()) { part.merge(r); }
        prop_assert_eq!(part.vector(), full.vector());
    }
}
