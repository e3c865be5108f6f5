//! The name service in the lab (docs/dns.md), with real clients inside containers: dig,
//! nslookup and glibc's `getent` through the resolv.conf the CNI result gave, dnsmasq as
//! the upstream server, podman containers resolving each other across hosts.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A container started with `weft lab run`: its netns and addresses.
struct C {
    v4: String,
    v6: Option<String>,
}

fn run(lab: &Lab, host: &str, name: &str, ns: &str) -> C {
    let out = weft_ok(&[
        "lab",
        "run",
        "--name",
        &lab.name,
        "--json",
        "--namespace",
        ns,
        host,
        name,
        "--",
        "sleep",
        "600",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let ips: Vec<String> = v["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect();
    C {
        v4: ips.iter().find(|i| !i.contains(':')).unwrap().clone(),
        v6: ips.iter().find(|i| i.contains(':')).cloned(),
    }
}

fn rm(lab: &Lab, host: &str, name: &str) {
    weft_ok(&["lab", "rm", "--name", &lab.name, host, name]);
}

/// `dig ARGS` in a container: its output.
fn dig(lab: &Lab, target: &str, args: &[&str]) -> String {
    let mut a = vec!["dig", "+time=2", "+tries=1"];
    a.extend_from_slice(args);
    lab.exec(target, &a).1
}

/// The sorted answers of `dig +short`.
fn short(lab: &Lab, target: &str, args: &[&str]) -> BTreeSet<String> {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    dig(lab, target, &a)
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(String::from)
        .collect()
}

/// Asserts that `dig +short ARGS` in `target` answers exactly `want`, waiting up to 5 s
/// for the mesh to bring the names.
fn answers(lab: &Lab, target: &str, args: &[&str], want: &[&str]) {
    let want = set(want);
    let ok = until(5, || short(lab, target, args) == want).0;
    assert!(
        ok,
        "{target}: dig {args:?} = {:?}, want {want:?}",
        short(lab, target, args)
    );
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The moment another host's container resolves here, it is reachable from here: the
/// agent routes a host's new block in the turn that brings it, before it answers the
/// block's names. h2 has no block until `b` starts, so its route and `b`'s name come
/// together; a client on h1 pings `b` once, as soon as the name resolves.
#[test]
fn a_name_from_another_host_resolves_only_once_this_host_routes_to_it() {
    if !root_or_skip("dns_lab routes") {
        return;
    }
    let lab = Lab::up("dnsroute", 2, "mesh");
    run(&lab, "h1", "a", "default");
    let script = "for i in $(seq 1 1000); do \
         ip=$(dig +short +time=1 +tries=1 b.weft.local A); \
         if [ -n \"$ip\" ]; then echo \"resolved $ip\"; exec ping -c1 -W2 \"$ip\"; fi; \
         sleep 0.01; done; echo never resolved; exit 2";
    let (client, b) = std::thread::scope(|s| {
        let client = s.spawn(|| lab.exec("h1/a", &["sh", "-c", script]));
        let b = run(&lab, "h2", "b", "default");
        (client.join().unwrap(), b)
    });
    let (ok, out) = client;
    assert!(
        out.contains(&format!("resolved {}", b.v4)),
        "b ({}) never resolved on h1: {out}",
        b.v4
    );
    assert!(ok, "h1/a's first ping to b as it resolved: {out}");
}

/// Waits (at most `secs`) until `f` holds; returns whether it did and how long it took.
fn until(secs: u64, mut f: impl FnMut() -> bool) -> (bool, Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if f() {
            return (true, t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (f(), t0.elapsed())
}

/// dnsmasq in a lab namespace, ended by its pid.
struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dnsmasq(lab: &Lab, target: &str, listen: &str, answer: &str) -> Dnsmasq {
    let ns = if target == "out" {
        format!("weft-{}-out", lab.name)
    } else {
        lab.host_ns(target)
    };
    let child = Command::new("ip")
        .args(["netns", "exec", &ns, "dnsmasq", "--keep-in-foreground"])
        .args([
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--user=root",
            "--group=root",
        ])
        .args(["--bind-interfaces", &format!("--listen-address={listen}")])
        .arg(format!("--address=/example.test/{answer}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq");
    Dnsmasq(child)
}

#[test]
fn names_resolve_across_hosts_exactly_as_the_specs_say() {
    if !root_or_skip("dns_lab") {
        return;
    }
    let lab = Lab::up_args(
        "dns",
        3,
        "mesh",
        &["--ipam-pools", "10.32.0.0/12,fd32::/48"],
    );
    let a = run(&lab, "h1", "a", "default");
    let b2 = run(&lab, "h2", "b", "default");
    let b3 = run(&lab, "h3", "b", "default");
    let c = run(&lab, "h3", "c", "team");
    let (a6, b26, b36, c6) = (
        a.v6.clone().unwrap(),
        b2.v6.clone().unwrap(),
        b3.v6.clone().unwrap(),
        c.v6.clone().unwrap(),
    );
    let conf = lab.exec("h1/a", &["cat", "/etc/resolv.conf"]).1;
    assert!(
        conf.contains("nameserver 169.254.1.1")
            && conf.contains("search default.weft.local weft.local"),
        "{conf}"
    );

    // One name on two hosts: both addresses of each family, from a third host too.
    let (ok, took) = until(5, || {
        short(&lab, "h1/a", &["b.weft.local", "A"]) == set(&[&b2.v4, &b3.v4])
    });
    assert!(ok, "{:?}", short(&lab, "h1/a", &["b.weft.local", "A"]));
    eprintln!(
        "b's names answered on h1 {} ms after the last ADD",
        took.as_millis()
    );
    answers(
        &lab,
        "h1/a",
        &["b.default.weft.local", "AAAA"],
        &[&b26, &b36],
    );
    answers(&lab, "h2/b", &["c.team.weft.local", "A"], &[&c.v4]);
    answers(&lab, "h2/b", &["c.weft.local", "AAAA"], &[&c6]);
    // glibc through the search list: an unqualified name, both families.
    let g = lab.exec("h1/a", &["getent", "ahosts", "b"]).1;
    for ip in [&b2.v4, &b3.v4, &b26, &b36] {
        assert!(g.contains(ip.as_str()), "getent ahosts b: {g}");
    }
    let g = lab.exec("h2/b", &["getent", "hosts", "a"]).1;
    assert!(g.contains(&a6) || g.contains(&a.v4), "{g}");
    let n = lab.exec("h1/a", &["nslookup", "c"]).1;
    assert!(n.contains(&c.v4), "nslookup c: {n}");
    // Case does not matter.
    answers(&lab, "h1/a", &["C.TEAM.Weft.Local", "A"], &[&c.v4]);

    // PTR of both families, upper case too.
    answers(&lab, "h1/a", &["-x", &c.v4], &["c.team.weft.local."]);
    answers(&lab, "h1/a", &["-x", &c6], &["c.team.weft.local."]);
    let rev = c.v4.split('.').rev().collect::<Vec<_>>().join(".") + ".IN-ADDR.ARPA";
    answers(&lab, "h2/b", &[&rev, "PTR"], &["c.team.weft.local."]);
    let out = dig(&lab, "h1/a", &["-x", "10.47.255.254"]);
    assert!(
        out.contains("status: NXDOMAIN") && out.contains("SOA"),
        "{out}"
    );

    // MX on a name that exists: NOERROR and no answer; an unknown name: NXDOMAIN + SOA.
    let out = dig(&lab, "h1/a", &["b.weft.local", "MX"]);
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );
    let out = dig(&lab, "h1/a", &["nobody.weft.local", "A"]);
    assert!(
        out.contains("status: NXDOMAIN") && out.contains("IN\tSOA\tns.weft.local."),
        "{out}"
    );

    // Names outside containers; an IPv4-only name answers AAAA with NOERROR, empty.
    weft_ok(&[
        "lab",
        "exec",
        "--name",
        &lab.name,
        "h2",
        "--",
        "weft",
        "dns",
        "add",
        "db",
        "10.99.0.1",
    ]);
    assert!(
        until(5, || short(&lab, "h1/a", &["db.weft.local"])
            == set(&["10.99.0.1"]))
        .0
    );
    let out = dig(&lab, "h1/a", &["db.weft.local", "AAAA"]);
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0") && out.contains("SOA"),
        "{out}"
    );
    // Removing it elsewhere is refused and says where it lives; on its host it goes.
    let (ok, text) = lab.exec("h1", &["weft", "dns", "remove", "db"]);
    assert!(!ok && text.contains("added on h2"), "{text}");
    weft_ok(&[
        "lab", "exec", "--name", &lab.name, "h2", "--", "weft", "dns", "remove", "db",
    ]);
    assert!(
        until(5, || dig(&lab, "h1/a", &["db.weft.local"])
            .contains("NXDOMAIN"))
        .0
    );
    let (ok, text) = lab.exec("h1", &["weft", "dns", "add", "bad name", "10.0.0.1"]);
    assert!(!ok && text.contains("not a name"), "{text}");

    // 50 addresses: cut at a record boundary with TC over UDP, whole over TCP.
    let many: Vec<String> = (1..=50).map(|i| format!("10.99.1.{i}")).collect();
    let mut args = vec!["weft", "dns", "add", "many"];
    args.extend(many.iter().map(String::as_str));
    let (ok, text) = lab.exec("h3", &args);
    assert!(ok, "{text}");
    assert!(
        until(5, || short(&lab, "h1/a", &["+tcp", "many.weft.local"])
            .len()
            == 50)
        .0
    );
    let udp = dig(&lab, "h1/a", &["+ignore", "+noedns", "many.weft.local"]);
    assert!(udp.contains(" tc ") || udp.contains(" tc;"), "{udp}");
    let answered: usize = udp
        .lines()
        .filter(|l| l.starts_with("many.weft.local."))
        .count();
    assert!(
        answered > 0 && answered < 50,
        "{answered} records over UDP: {udp}"
    );
    let big = dig(
        &lab,
        "h1/a",
        &["+ignore", "+bufsize=4096", "many.weft.local"],
    );
    assert!(big.contains("ANSWER: 50") && !big.contains(" tc "), "{big}");
    let tcp = short(&lab, "h1/a", &["+tcp", "many.weft.local"]);
    assert_eq!(tcp, many.iter().cloned().collect::<BTreeSet<_>>());

    // A DEL takes the name away on the other hosts.
    rm(&lab, "h2", "b");
    let (ok, took) = until(5, || {
        short(&lab, "h1/a", &["b.weft.local"]) == set(&[&b3.v4])
    });
    assert!(ok, "{:?}", short(&lab, "h1/a", &["b.weft.local"]));
    eprintln!(
        "b's address on h2 gone on h1 {} ms after its DEL",
        took.as_millis()
    );
    run(&lab, "h2", "b", "default");
    // A container killed and started again five times: exactly its current address.
    let mut last = String::new();
    for _ in 0..5 {
        rm(&lab, "h2", "b");
        last = run(&lab, "h2", "b", "default").v4;
    }
    let want = set(&[&last, &b3.v4]);
    let (ok, _) = until(5, || short(&lab, "h1/a", &["b.weft.local"]) == want);
    assert!(
        ok,
        "{:?} != {want:?}",
        short(&lab, "h1/a", &["b.weft.local"])
    );

    // Forwarding: names outside the domain go to h1's upstream (dnsmasq outside), over
    // UDP and TCP; with the upstream gone, SERVFAIL.
    let up = dnsmasq(&lab, "out", "172.30.0.250", "192.0.2.7");
    std::fs::write(
        format!("/run/weft-lab/{}/h1/resolv.conf", lab.name),
        "nameserver 172.30.0.250\n",
    )
    .unwrap();
    let (ok, _) = until(10, || {
        short(&lab, "h1/a", &["example.test"]) == set(&["192.0.2.7"])
    });
    assert!(ok, "{}", dig(&lab, "h1/a", &["example.test"]));
    answers(&lab, "h1/a", &["+tcp", "example.test"], &["192.0.2.7"]);
    drop(up);
    let (ok, _) = until(10, || {
        dig(&lab, "h1/a", &["example.test"]).contains("status: SERVFAIL")
    });
    assert!(ok, "{}", dig(&lab, "h1/a", &["example.test"]));

    // Isolation: a pod denied all egress still resolves names through its own host.
    let deny = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-a", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {}}, "policyTypes": ["Egress"]}}"#;
    let path = format!("/run/weft-lab/{}/deny.json", lab.name);
    std::fs::write(&path, deny).unwrap();
    weft_ok(&[
        "lab", "exec", "--name", &lab.name, "h1", "--", "weft", "apply", "-f", &path,
    ]);
    let (blocked, _) = until(5, || !lab.exec("h1/a", &["ping", "-c1", "-W1", &c.v4]).0);
    assert!(blocked, "the deny-all egress policy does not hold");
    answers(&lab, "h1/a", &["c.team.weft.local"], &[&c.v4]);

    // A partition, a container gone meanwhile, its host restarted, the partition healed:
    // the name does not come back on any host.
    let _d = run(&lab, "h3", "d", "default");
    assert!(until(5, || !short(&lab, "h1/a", &["d.weft.local"]).is_empty()).0);
    weft_ok(&["lab", "cut", "--name", &lab.name, "h1", "h3"]);
    weft_ok(&["lab", "cut", "--name", &lab.name, "h2", "h3"]);
    rm(&lab, "h3", "d");
    weft_ok(&["lab", "agent", "--name", &lab.name, "h3", "restart"]);
    weft_ok(&["lab", "heal", "--name", &lab.name]);
    // (A restarted node allocates once its heir confirmed it, after the heal: the ADD
    // says "try again later" until then.)
    let t0 = Instant::now();
    let e = loop {
        let out = weft(&[
            "lab", "run", "--name", &lab.name, "--json", "h3", "e", "--", "sleep", "600",
        ]);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            break v["ip"].as_str().unwrap().to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "e on h3 after the heal: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let (ok, _) = until(20, || short(&lab, "h2/b", &["e.weft.local"]) == set(&[&e]));
    assert!(
        ok,
        "e after the heal: {:?}",
        short(&lab, "h2/b", &["e.weft.local"])
    );
    for t in ["h1/a", "h2/b"] {
        let out = dig(&lab, t, &["d.weft.local"]);
        assert!(out.contains("status: NXDOMAIN"), "{t}: d came back: {out}");
    }
    let list = lab.exec("h1", &["weft", "dns", "list", "--json"]).1;
    let v: Value = serde_json::from_str(&list).unwrap();
    assert!(
        !v["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "d.weft.local"),
        "{list}"
    );

    // A host that is down takes its names with it, and brings them back.
    weft_ok(&["lab", "agent", "--name", &lab.name, "h3", "stop"]);
    let (ok, _) = until(10, || {
        dig(&lab, "h1/a", &["c.weft.local"]).contains("status: NXDOMAIN")
    });
    assert!(
        ok,
        "c with h3 down: {}",
        dig(&lab, "h1/a", &["c.weft.local"])
    );
    weft_ok(&["lab", "agent", "--name", &lab.name, "h3", "start"]);
    let (ok, _) = until(20, || {
        short(&lab, "h1/a", &["c.weft.local"]) == set(&[&c.v4])
    });
    assert!(
        ok,
        "c with h3 back: {:?}",
        short(&lab, "h1/a", &["c.weft.local"])
    );
    let _ = (a6, b26, b36);
}

#[test]
fn podman_containers_get_the_resolver_and_resolve_each_other_across_hosts() {
    if !root_or_skip("dns_lab podman") {
        return;
    }
    let lab = Lab::up("dnspod", 2, "mesh");
    const IMG: &str = "localhost/weft-busybox";
    let p = |host: &str, args: &[&str]| {
        let (ok, out) = lab.lab_cmd("podman", host, args);
        assert!(ok, "podman {}: {out}", args.join(" "));
        out
    };
    p("h1", &["run", "-d", "--name", "one", IMG, "sleep", "600"]);
    p(
        "h2",
        &[
            "run",
            "-d",
            "--name",
            "two",
            "--network-alias",
            "second",
            IMG,
            "sleep",
            "600",
        ],
    );
    let conf = p("h1", &["exec", "one", "cat", "/etc/resolv.conf"]);
    assert!(conf.contains("nameserver 169.254.1.1"), "{conf}");
    let two = p(
        "h2",
        &[
            "inspect",
            "two",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        ],
    );
    let two = two.trim();
    for name in ["two", "two.weft.local", "second"] {
        let (ok, _) = until(10, || {
            let (ok, out) = lab.lab_cmd(
                "podman",
                "h1",
                &["exec", "one", "busybox", "nslookup", name],
            );
            ok && out.contains(two)
        });
        assert!(
            ok,
            "{name}: {}",
            lab.lab_cmd(
                "podman",
                "h1",
                &["exec", "one", "busybox", "nslookup", name]
            )
            .1
        );
    }
    let (ok, out) = lab.lab_cmd(
        "podman",
        "h1",
        &["exec", "one", "ping", "-c1", "-W2", "two"],
    );
    assert!(ok && out.contains(two), "ping two by name: {out}");
    // An IPv4-only container: AAAA is NOERROR with no records, not NXDOMAIN.
    let out = lab
        .exec(
            "h1",
            &["dig", "@169.254.1.1", "+time=2", "two.weft.local", "AAAA"],
        )
        .1;
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );
    p("h1", &["rm", "-f", "-t", "0", "one"]);
    p("h2", &["rm", "-f", "-t", "0", "two"]);
}
