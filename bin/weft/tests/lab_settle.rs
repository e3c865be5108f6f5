//! `weft lab up` returns hosts whose kernel state has settled: nothing the kernel adds on
//! its own time (carriers, IPv6 link-local addresses and their `local` routes, the end of
//! duplicate address detection) appears after it returned. Tests that compare a host's
//! state before and after an action depend on this; on a freshly booted machine the
//! link-local address of `eth0` used to arrive after their first snapshot.

mod common;
use common::*;

/// Every namespace of the lab: links, addresses and all routes of both families, without
/// the lifetimes that count down on their own.
fn lab_state(lab: &str) -> String {
    let mut s = String::new();
    let mut nss: Vec<String> = stdout_of("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("weft-{lab}-")))
        .map(String::from)
        .collect();
    nss.sort();
    for ns in nss {
        for args in [
            vec!["-o", "link", "show"],
            vec!["-o", "addr", "show"],
            vec!["route", "show", "table", "all"],
            vec!["-6", "route", "show", "table", "all"],
        ] {
            let mut full = vec!["-n", ns.as_str()];
            full.extend(&args);
            let out = stdout_of("ip", &full);
            let out: String = out
                .lines()
                .filter(|l| !l.contains("expires"))
                .map(|l| {
                    // `valid_lft`/`preferred_lft` follow the address on its line.
                    l.split("valid_lft").next().unwrap_or(l).to_string() + "\n"
                })
                .collect();
            s.push_str(&format!("### {ns} ip {}\n{out}", args.join(" ")));
        }
    }
    s
}

#[test]
fn lab_up_returns_hosts_whose_state_has_settled() {
    if !root_or_skip("lab_up_returns_hosts_whose_state_has_settled") {
        return;
    }
    for topology in ["mesh", "subnets"] {
        let lab = Lab::up_args("settle", 2, topology, &["--no-agents"]);
        let right_after = lab_state(&lab.name);
        // Every link that is up already has its IPv6 link-local address.
        let (_, addrs) = lab.exec("h1", &["ip", "-6", "addr", "show", "dev", "eth0"]);
        assert!(addrs.contains("fe80::"), "{topology}: {addrs}");
        assert!(!addrs.contains("tentative"), "{topology}: {addrs}");
        // Long enough for the link watcher (1 s) and duplicate address detection (1 s)
        // to have added what they would have added had `up` not waited for them.
        std::thread::sleep(std::time::Duration::from_secs(3));
        assert_eq!(
            right_after,
            lab_state(&lab.name),
            "{topology}: the lab's state changed after `up` returned"
        );
    }
}
