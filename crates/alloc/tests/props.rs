//! Property tests: random sequences of operations against a small range,
//! compared with a naive linear-scan reference model.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use weft_alloc::{AllocError, AllocTable, Owner, Range};

#[derive(Debug, Clone)]
enum Op {
    Allocate(u8),
    Release(u8),
    ReleaseContainer(u8),
    Gc(Vec<bool>),
    RoundTrip,
}

const CONTAINERS: u8 = 5;
const IFNAMES: u8 = 2;

fn owner(i: u8) -> Owner {
    Owner::new(
        format!("c{}", i % CONTAINERS),
        format!("eth{}", i / CONTAINERS),
    )
}

fn op() -> impl Strategy<Value = Op> {
    let n = CONTAINERS * IFNAMES;
    prop_oneof![
        6 => (0..n).prop_map(Op::Allocate),
        3 => (0..n).prop_map(Op::Release),
        1 => (0..CONTAINERS).prop_map(Op::ReleaseContainer),
        1 => proptest::collection::vec(any::<bool>(), n as usize).prop_map(Op::Gc),
        1 => Just(Op::RoundTrip),
    ]
}

fn ranges() -> impl Strategy<Value = Range> {
    prop_oneof![
        Just(Range::new("10.0.0.0/29".parse().unwrap(), None, None).unwrap()),
        Just(
            Range::new(
                "10.0.0.0/24".parse().unwrap(),
                Some("10.0.0.250".parse().unwrap()),
                None
            )
            .unwrap()
        ),
        Just(
            Range::new(
                "fd00::/64".parse().unwrap(),
                Some("fd00::10".parse().unwrap()),
                Some("fd00::17".parse().unwrap())
            )
            .unwrap()
        ),
        Just(Range::new("fd00::/125".parse().unwrap(), None, None).unwrap()),
        Just(Range::new("10.0.0.9/32".parse().unwrap(), None, None).unwrap()),
    ]
}

/// Naive reference: enumerates the range linearly.
struct Model {
    addrs: Vec<IpAddr>,
    entries: BTreeMap<IpAddr, Owner>,
    last: Option<usize>,
}

impl Model {
    fn new(r: &Range) -> Model {
        let mut addrs = vec![r.start()];
        while *addrs.last().unwrap() != r.end() {
            let next = match *addrs.last().unwrap() {
                IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
                IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
            };
            addrs.push(next);
        }
        Model {
            addrs,
            entries: BTreeMap::new(),
            last: None,
        }
    }

    fn allocate(&mut self, o: &Owner) -> Option<IpAddr> {
        if let Some((a, _)) = self.entries.iter().find(|(_, x)| *x == o) {
            return Some(*a);
        }
        let n = self.addrs.len();
        let first = self.last.map_or(0, |l| (l + 1) % n);
        for k in 0..n {
            let i = (first + k) % n;
            if !self.entries.contains_key(&self.addrs[i]) {
                self.entries.insert(self.addrs[i], o.clone());
                self.last = Some(i);
                return Some(self.addrs[i]);
            }
        }
        None
    }
}

fn invariants(t: &AllocTable) {
    t.check().unwrap();
    let r = t.range();
    let mut seen = std::collections::BTreeSet::new();
    for (a, o) in t.entries() {
        assert!(r.contains(*a), "{a} outside {r}");
        assert!(seen.insert(o.clone()), "{o} holds two addresses");
        assert_eq!(t.lookup(o), Some(*a));
    }
    assert_eq!(t.used() as u128 + t.free(), r.size());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ops_preserve_invariants(range in ranges(), ops in proptest::collection::vec(op(), 0..80)) {
        let mut t = AllocTable::new(range.clone());
        let mut m = Model::new(&range);
        for op in ops {
            match op {
                Op::Allocate(i) => {
                    let o = owner(i);
                    let held_before = t.lookup(&o);
                    let used_before = t.used();
                    let got = t.allocate(o.clone());
                    let want = m.allocate(&o);
                    match got {
                        Ok(a) => {
                            prop_assert_eq!(Some(a), want);
                            prop_assert!(range.contains(a));
                            prop_assert_eq!(t.owner_of(a), Some(&o));
                            if let Some(h) = held_before {
                                prop_assert_eq!(h, a);
                                prop_assert_eq!(t.used(), used_before);
                            } else {
                                prop_assert_eq!(t.used(), used_before + 1);
                            }
                        }
                        Err(e) => {
                            prop_assert_eq!(want, None);
                            prop_assert!(held_before.is_none());
                            prop_assert_eq!(t.used() as u128, range.size());
                            let exhausted =
                                matches!(e, AllocError::Exhausted { size, .. } if size == range.size());
                            prop_assert!(exhausted, "unexpected error {}", e);
                        }
                    }
                }
                Op::Release(i) => {
                    let o = owner(i);
                    let held = t.lookup(&o);
                    prop_assert_eq!(t.release(&o), held);
                    prop_assert_eq!(t.lookup(&o), None);
                    m.entries.retain(|_, x| *x != o);
                }
                Op::ReleaseContainer(c) => {
                    let id = format!("c{c}");
                    let mut want: Vec<IpAddr> = m
                        .entries
                        .iter()
                        .filter(|(_, o)| o.container_id == id)
                        .map(|(a, _)| *a)
                        .collect();
                    want.sort();
                    prop_assert_eq!(t.release_container(&id), want);
                    m.entries.retain(|_, o| o.container_id != id);
                }
                Op::Gc(mask) => {
                    let valid: Vec<Owner> = mask
                        .iter()
                        .enumerate()
                        .filter(|(_, keep)| **keep)
                        .map(|(i, _)| owner(i as u8))
                        .collect();
                    let released = t.gc(&valid);
                    for (a, o) in &released {
                        prop_assert!(!valid.contains(o));
                        let removed = m.entries.remove(a);
                        prop_assert_eq!(removed.as_ref(), Some(o));
                    }
                    prop_assert!(m.entries.values().all(|o| valid.contains(o)));
                }
                Op::RoundTrip => {
                    let json = serde_json::to_string(&t).unwrap();
                    let back: AllocTable = serde_json::from_str(&json).unwrap();
                    prop_assert_eq!(&back, &t);
                    t = back;
                }
            }
            invariants(&t);
            let model_entries: Vec<(IpAddr, Owner)> =
                m.entries.iter().map(|(a, o)| (*a, o.clone())).collect();
            let entries: Vec<(IpAddr, Owner)> = t.entries().map(|(a, o)| (*a, o.clone())).collect();
            prop_assert_eq!(entries, model_entries);
        }
    }

    #[test]
    fn rebase_partitions_entries(
        allocs in proptest::collection::vec(0u8..10, 0..20),
        lo in 1u8..=254,
        len in 0u8..=253,
    ) {
        let net: ipnet::IpNet = "10.0.0.0/24".parse().unwrap();
        let mut t = AllocTable::new(
            Range::new(net, Some("10.0.0.1".parse().unwrap()), Some("10.0.0.12".parse().unwrap())).unwrap(),
        );
        for i in allocs {
            let _ = t.allocate(owner(i));
        }
        let before: Vec<(IpAddr, Owner)> = t.entries().map(|(a, o)| (*a, o.clone())).collect();
        let hi = lo.saturating_add(len).min(254);
        let r = Range::new(
            net,
            Some(IpAddr::from([10, 0, 0, lo])),
            Some(IpAddr::from([10, 0, 0, hi])),
        )
        .unwrap();
        let out = t.rebase(r.clone());
        invariants(&t);
        for (a, _) in &out {
            prop_assert!(!r.contains(*a));
        }
        let kept: Vec<(IpAddr, Owner)> = t.entries().map(|(a, o)| (*a, o.clone())).collect();
        let mut all = kept.clone();
        all.extend(out);
        all.sort();
        prop_assert_eq!(all, before);
    }
}
