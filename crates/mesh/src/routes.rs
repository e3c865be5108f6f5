//! Next hops by breadth-first search over the published links.
//!
//! An edge exists when both ends list each other in their `links` record. All
//! edges cost 1. For each destination the next hop is the first hop of a
//! shortest path, ties broken by the lowest [`NodeId`] of the first hop.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::NodeId;

/// The result of a route computation from one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// Destination → next hop (a direct neighbour of the source).
    pub next_hops: BTreeMap<NodeId, NodeId>,
    /// Destination → number of hops.
    pub distance: BTreeMap<NodeId, u32>,
}

/// Computes next hops from `me` over `links` (owner → the NodeIds it reports
/// connected). Only mutual links are edges. `me` itself is not a destination.
pub fn compute(me: NodeId, links: &BTreeMap<NodeId, BTreeSet<NodeId>>) -> Routes {
    let neighbours = |a: &NodeId| -> Vec<NodeId> {
        match links.get(a) {
            None => Vec::new(),
            Some(set) => set
                .iter()
                .filter(|b| **b != *a && links.get(*b).is_some_and(|s| s.contains(a)))
                .copied()
                .collect(),
        }
    };
    let mut routes = Routes::default();
    let mut dist: BTreeMap<NodeId, u32> = BTreeMap::new();
    dist.insert(me, 0);
    let mut queue = VecDeque::new();
    for n in neighbours(&me) {
        dist.insert(n, 1);
        routes.next_hops.insert(n, n);
        queue.push_back(n);
    }
    // BFS in level order: every node of level d is final (distance and lowest
    // first hop over all its level d-1 parents) before it is expanded.
    while let Some(a) = queue.pop_front() {
        let da = dist[&a];
        let hop = routes.next_hops[&a];
        for b in neighbours(&a) {
            match dist.get(&b) {
                None => {
                    dist.insert(b, da + 1);
                    routes.next_hops.insert(b, hop);
                    queue.push_back(b);
                }
                Some(&db) if db == da + 1 => {
                    let cur = routes.next_hops.get_mut(&b).expect("discovered");
                    if hop < *cur {
                        *cur = hop;
                    }
                }
                Some(_) => {}
            }
        }
    }
    dist.remove(&me);
    routes.distance = dist;
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> NodeId {
        NodeId([i; 16])
    }

    fn graph(edges: &[(u8, u8)]) -> BTreeMap<NodeId, BTreeSet<NodeId>> {
        let mut g: BTreeMap<NodeId, BTreeSet<NodeId>> = BTreeMap::new();
        for &(a, b) in edges {
            g.entry(id(a)).or_default().insert(id(b));
            g.entry(id(b)).or_default().insert(id(a));
        }
        g
    }

    #[test]
    fn line() {
        let g = graph(&[(1, 2), (2, 3), (3, 4)]);
        let r = compute(id(1), &g);
        assert_eq!(r.next_hops.len(), 3);
        for d in 2..=4 {
            assert_eq!(r.next_hops[&id(d)], id(2));
        }
        assert_eq!(r.distance[&id(4)], 3);
        let r = compute(id(3), &g);
        assert_eq!(r.next_hops[&id(1)], id(2));
        assert_eq!(r.next_hops[&id(4)], id(4));
    }

    #[test]
    fn ring_takes_shortest_way_and_breaks_ties_by_lowest_first_hop() {
        // 1-2-3-4-5-6-1
        let g = graph(&[(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 1)]);
        let r = compute(id(1), &g);
        assert_eq!(r.next_hops[&id(3)], id(2));
        assert_eq!(r.next_hops[&id(5)], id(6));
        // 4 is 3 hops both ways: the lowest first hop (2) wins.
        assert_eq!(r.next_hops[&id(4)], id(2));
        let r = compute(id(4), &g);
        assert_eq!(r.next_hops[&id(1)], id(3));
    }

    #[test]
    fn tie_is_resolved_by_lowest_first_hop_even_when_discovered_late() {
        // 1 connects to 9 and 5; both reach 7 in one more hop.
        let g = graph(&[(1, 9), (1, 5), (9, 7), (5, 7)]);
        assert_eq!(compute(id(1), &g).next_hops[&id(7)], id(5));
        // Tie inherited across levels: 1-{3,8}, 3-10, 8-10, 10-11.
        let g = graph(&[(1, 8), (1, 3), (8, 10), (3, 10), (10, 11)]);
        let r = compute(id(1), &g);
        assert_eq!(r.next_hops[&id(11)], id(3));
    }

    #[test]
    fn partial_shape_host_n_connects_only_to_n_minus_1() {
        let g = graph(&[(1, 2), (2, 3), (3, 4), (4, 5)]);
        for src in 1..=5u8 {
            let r = compute(id(src), &g);
            for dst in 1..=5u8 {
                if dst == src {
                    continue;
                }
                let expect = if dst > src { src + 1 } else { src - 1 };
                assert_eq!(r.next_hops[&id(dst)], id(expect), "{src}->{dst}");
            }
        }
    }

    #[test]
    fn one_sided_links_are_not_edges() {
        let mut g = graph(&[(1, 2)]);
        g.entry(id(2)).or_default().insert(id(3)); // 3 does not list 2
        g.entry(id(3)).or_default();
        let r = compute(id(1), &g);
        assert!(!r.next_hops.contains_key(&id(3)));
        assert_eq!(r.next_hops.len(), 1);
    }
}
