//! The lab never touches the root network namespace: `up --hosts 3` in each topology, a
//! container, then `down` leave `ip netns`, `ip link`, routes and `nft list ruleset` of the
//! root namespace exactly as before. Also: the underlay of each topology behaves as
//! documented, a crashed lab is cleared by the next `up`, and two labs coexist.
//!
//! One test function on purpose: the root snapshot must not see other tests' labs.

mod common;
use common::*;

fn reaches(lab: &Lab, from: &str, to: &str) -> bool {
    lab.exec(from, &["ping", "-c", "1", "-W", "1", to]).0
}

#[test]
fn lab_leaves_the_root_namespace_as_it_was() {
    if !root_or_skip("lab_leaves_the_root_namespace_as_it_was") {
        return;
    }
    let before = root_snapshot();

    // mesh: every host reaches every other on one segment.
    {
        let lab = Lab::up("rmesh", 3, "mesh");
        assert!(reaches(&lab, "h1", "172.30.0.3"));
        assert!(reaches(&lab, "h3", "172.30.0.2"));
        let status = weft_ok(&["lab", "status", "--name", "rmesh", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(v[0]["plan"]["hosts"].as_array().unwrap().len(), 3);
        // A container in the lab, to be cleaned with it.
        weft_ok(&[
            "lab", "run", "--name", "rmesh", "h2", "c1", "--", "sleep", "300",
        ]);
        let (ok, _) = lab.exec("h2/c1", &["ip", "addr", "show", "eth0"]);
        assert!(ok);
    }
    assert_eq!(
        before,
        root_snapshot(),
        "mesh lab changed the root namespace"
    );

    // subnets: hosts on two segments reach each other through the router.
    {
        let lab = Lab::up("rsub", 3, "subnets");
        assert!(
            reaches(&lab, "h1", "172.30.2.3"),
            "h1 -> h3 across the router"
        );
        let (_, route) = lab.exec("h3", &["ip", "route", "get", "172.30.1.1"]);
        assert!(route.contains("via 172.30.2.254"), "{route}");
    }
    assert_eq!(
        before,
        root_snapshot(),
        "subnets lab changed the root namespace"
    );

    // partial: h3 reaches h2 but not h1; h1 and h2 reach each other.
    {
        let lab = Lab::up("rpart", 3, "partial");
        assert!(reaches(&lab, "h3", "172.30.0.2"));
        assert!(reaches(&lab, "h1", "172.30.0.2"));
        assert!(!reaches(&lab, "h3", "172.30.0.1"), "h3 must not reach h1");
        assert!(!reaches(&lab, "h1", "172.30.0.3"), "h1 must not reach h3");
    }
    assert_eq!(
        before,
        root_snapshot(),
        "partial lab changed the root namespace"
    );

    // Two labs at once, same host names and addresses, no clash; each goes down alone.
    {
        let a = Lab::up("ra", 2, "mesh");
        let b = Lab::up("rb", 2, "mesh");
        assert!(reaches(&a, "h1", "172.30.0.2"));
        assert!(reaches(&b, "h1", "172.30.0.2"));
        drop(a);
        assert!(
            reaches(&b, "h2", "172.30.0.1"),
            "lab b survives lab a's down"
        );
        let (_, list) = sh("ip", &["netns", "list"]);
        assert!(!list.contains("weft-ra-"), "{list}");
    }
    assert_eq!(
        before,
        root_snapshot(),
        "two labs changed the root namespace"
    );

    // A crash: the state file is gone and an `up` died half-way; the next `up` clears the
    // remains and `down` leaves nothing.
    {
        weft_ok(&["lab", "up", "--name", "rcrash", "--hosts", "2"]);
        weft_ok(&[
            "lab", "run", "--name", "rcrash", "h1", "c1", "--", "sleep", "300",
        ]);
        std::fs::remove_file("/run/weft-lab/rcrash/state.json").unwrap();
        let (ok, _) = sh("ip", &["netns", "add", "weft-rcrash-h9"]);
        assert!(ok);
        let lab = Lab::up("rcrash", 2, "mesh");
        let (_, list) = sh("ip", &["netns", "list"]);
        assert!(
            !list.contains("weft-rcrash-h9"),
            "stale namespace survived: {list}"
        );
        assert!(
            !list.contains("weft-rcrash-h1-c1"),
            "stale container survived: {list}"
        );
        drop(lab);
    }
    assert_eq!(
        before,
        root_snapshot(),
        "crash recovery changed the root namespace"
    );

    // `up` of a lab that is already up is refused and leaves it alone.
    {
        let lab = Lab::up("rtwice", 2, "mesh");
        let out = weft(&["lab", "up", "--name", "rtwice", "--hosts", "2"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("already up"));
        assert!(reaches(&lab, "h1", "172.30.0.2"));
    }
    assert_eq!(
        before,
        root_snapshot(),
        "a refused up changed the root namespace"
    );
}

#[test]
fn lab_refuses_bad_input_with_clear_errors() {
    if !root_or_skip("lab_refuses_bad_input_with_clear_errors") {
        return;
    }
    let cases: &[(&[&str], &str)] = &[
        (&["lab", "up", "--name", "Bad-Name"], "invalid lab name"),
        (
            &["lab", "up", "--name", "rbad", "--hosts", "0"],
            "1 to 100 hosts",
        ),
        (
            &["lab", "up", "--name", "rbad", "--topology", "ring"],
            "unknown topology",
        ),
        (
            &[
                "lab",
                "up",
                "--name",
                "rbad",
                "--hosts",
                "1",
                "--topology",
                "subnets",
            ],
            "at least 2 hosts",
        ),
        (&["lab", "down", "--name", "no_such"], "invalid lab name"),
        (&["lab", "status", "--name", "nosuchlab"], "no lab named"),
    ];
    for (args, want) in cases {
        let out = weft(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "weft {args:?} should fail");
        assert!(err.contains(want), "weft {args:?}: {err:?} lacks {want:?}");
    }
    // Flags for the agents are checked as the agents check them, before the lab makes
    // anything: the agent's own message, no agent started, no namespace left.
    for (flag, value) in [
        ("--ipam-pools", "10.0.0.0/33"),
        ("--tunnel-rotate-secs", "500"),
    ] {
        let args = ["lab", "up", "--name", "rbad", "--hosts", "2", flag, value];
        let out = weft(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "weft {args:?} should fail");
        let field = flag.trim_start_matches("--");
        assert!(
            err.starts_with(&format!("weft: agent config field `{field}`")),
            "weft {args:?}: {err:?}"
        );
        assert!(!err.contains("exited at start"), "weft {args:?}: {err:?}");
        let (_, netns) = sh("ip", &["netns", "list"]);
        assert!(!netns.contains("weft-rbad-"), "{netns}");
    }
}
