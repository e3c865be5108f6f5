//! One node's engine on its own (init 1): bootstrap, allocation across an IPv4 and an
//! IPv6 pool, idempotent allocation, release, GC, the grace time, and rmpeer's refusals.

use std::collections::BTreeSet;
use std::net::IpAddr;

use weft_alloc::Owner;
use weft_ipam::{AllocError, Ipam, IpamConfig, Space};
use weft_mesh::{NodeId, Store};

fn engine(pools: &[&str]) -> Ipam {
    let space = Space::new(pools.iter().map(|p| p.parse().unwrap()).collect(), 28, 124).unwrap();
    let cfg = IpamConfig {
        space,
        init: 1,
        grace_ms: 1_000,
        reclaim_after_ms: 0,
        request_timeout_ms: 1_000,
    };
    Ipam::new(NodeId([1; 16]), cfg, None)
}

fn step(ip: &mut Ipam, now: u64) {
    let live = |_: &NodeId| false;
    ip.step(&Store::new(), &live, now);
}

#[test]
fn a_lone_node_fills_an_ipv4_then_an_ipv6_pool_and_frees_them() {
    let mut ip = engine(&["10.1.0.0/27", "fd00::/123"]);
    assert!(matches!(
        ip.allocate(&Owner::new("x", "eth0")),
        Err(AllocError::NotReady(_))
    ));
    step(&mut ip, 0);
    ip.ready().unwrap();
    // 30 usable IPv4 addresses (not the pool's network and broadcast), 31 IPv6 ones (not
    // the network address).
    let mut got = Vec::new();
    for i in 0..61 {
        let o = Owner::new(format!("c{i}"), "eth0");
        let a = ip.allocate(&o).unwrap_or_else(|e| panic!("c{i}: {e}"));
        assert_eq!(
            ip.allocate(&o).unwrap(),
            a,
            "the same owner gets the same address"
        );
        assert_eq!(ip.lookup(&o), Some(a));
        got.push(a);
    }
    let distinct: BTreeSet<IpAddr> = got.iter().copied().collect();
    assert_eq!(distinct.len(), 61);
    assert_eq!(got.iter().filter(|a| a.is_ipv4()).count(), 30);
    assert!(!distinct.contains(&"10.1.0.0".parse::<IpAddr>().unwrap()));
    assert!(!distinct.contains(&"10.1.0.31".parse::<IpAddr>().unwrap()));
    assert!(!distinct.contains(&"fd00::".parse::<IpAddr>().unwrap()));
    assert_eq!(
        ip.allocate(&Owner::new("one-more", "eth0")),
        Err(AllocError::Exhausted)
    );

    // Release frees exactly one; GC frees what is not valid.
    assert_eq!(ip.release(&Owner::new("c0", "eth0")), Some(got[0]));
    assert_eq!(ip.release(&Owner::new("c0", "eth0")), None);
    let valid: BTreeSet<Owner> = (1..10)
        .map(|i| Owner::new(format!("c{i}"), "eth0"))
        .collect();
    let freed = ip.gc(&valid);
    assert_eq!(freed.len(), 51);
    assert_eq!(ip.list().len(), 9);
    for o in &valid {
        ip.release(o);
    }
    assert!(ip.list().is_empty());

    // Empty active blocks go back to reserve once the grace time has passed.
    step(&mut ip, 10);
    assert!(ip.held_blocks().iter().any(|(_, active)| *active));
    step(&mut ip, 500);
    assert!(
        ip.held_blocks().iter().any(|(_, active)| *active),
        "within grace"
    );
    step(&mut ip, 1_100);
    assert!(
        ip.held_blocks().iter().all(|(_, active)| !active),
        "{:?}",
        ip.held_blocks()
    );
}

#[test]
fn rmpeer_refuses_itself_a_node_that_is_up_and_a_stranger() {
    let mut ip = engine(&["10.1.0.0/27"]);
    step(&mut ip, 0);
    let me = ip.id();
    let up = |_: &NodeId| true;
    let down = |_: &NodeId| false;
    assert!(ip
        .rmpeer(me, &down)
        .unwrap_err()
        .contains("cannot remove itself"));
    let other = NodeId([2; 16]);
    assert!(ip.rmpeer(other, &up).unwrap_err().contains("is up"));
    assert!(ip.rmpeer(other, &down).unwrap_err().contains("not known"));
}
