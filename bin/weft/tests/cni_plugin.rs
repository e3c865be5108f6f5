//! The weft CNI plugin against the real kernel, inside lab hosts: ADD/DEL/CHECK/VERSION/
//! STATUS/GC, concurrency, chaining, and bad input that must leave nothing behind.

mod common;
use common::*;

/// These tests watch the plugin alone and compare host state before and after: the
/// agents run without a data plane, which would otherwise add its own objects meanwhile.
const PLUGIN_ONLY: &[&str] = &["--mode", "off"];

use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Everything a failed or undone call could leave on a host: its links, routes,
/// neighbours and the allocation file, once the kernel has settled (carriers, IPv6
/// link-local addresses, duplicate address detection): the kernel adds a link-local
/// address and its `local` route on its own time, which is not the plugin's doing.
fn host_state(lab: &Lab, host: &str) -> String {
    let ns = lab.host_ns(host);
    weft_lab::settle::wait_settled(&ns, std::time::Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    let links = stdout_of("ip", &["-n", &ns, "-o", "link", "show"]);
    let routes = stdout_of("ip", &["-n", &ns, "route", "show", "table", "all"]);
    let neigh = stdout_of("ip", &["-n", &ns, "neigh", "show", "nud", "permanent"]);
    let alloc = std::fs::read_to_string(format!("{}/networks/weft/alloc.json", lab.data_dir(host)))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .map(|v| v["entries"].to_string())
        .unwrap_or_else(|| "{}".into());
    format!("{links}\n{routes}\n{neigh}\nalloc {alloc}")
}

fn allocations(lab: &Lab, host: &str) -> usize {
    std::fs::read_to_string(format!("{}/networks/weft/alloc.json", lab.data_dir(host)))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["entries"].as_object().map(|m| m.len()))
        .unwrap_or(0)
}

type CniEnv = Vec<(&'static str, String)>;

#[test]
fn add_check_del_wire_a_container_and_undo_it() {
    if !root_or_skip("add_check_del") {
        return;
    }
    let lab = Lab::up_args("cadd", 1, "mesh", PLUGIN_ONLY);
    let hns = lab.host_ns("h1");
    let netns = lab.netns("a");
    let conf = weft_conf("1.1.0", "10.32.1.0/24", &lab.data_dir("h1"));
    let before = host_state(&lab, "h1");

    let (code, res, raw) = plugin(Plugin {
        host_ns: &hns,
        env: cni_env("ADD", "ctr-a", &netns, "eth0"),
        stdin: conf.clone(),
    });
    assert_eq!(code, 0, "ADD failed: {raw}");
    assert_eq!(res["cniVersion"], "1.1.0");
    let addr = res["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("10.32.1.") && addr.ends_with("/32"),
        "{addr}"
    );
    let ip = addr.trim_end_matches("/32");
    assert_eq!(res["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(res["ips"][0]["interface"], 1);
    assert_eq!(res["interfaces"][1]["name"], "eth0");
    assert_eq!(res["interfaces"][1]["sandbox"], netns.as_str());
    let host_if = res["interfaces"][0]["name"].as_str().unwrap().to_string();

    // Container: the address, up, default route via the link-local gateway.
    let cns = netns.trim_start_matches("/run/netns/");
    let (_, a) = sh("ip", &["-n", cns, "addr", "show", "eth0"]);
    assert!(a.contains(&addr) && a.contains("UP"), "{a}");
    let (_, r) = sh("ip", &["-n", cns, "route"]);
    assert!(r.contains("default via 169.254.1.1 dev eth0"), "{r}");
    // Host: the /32 route through the veth, marked as weft's (proto 119).
    let (_, r) = sh("ip", &["-n", &hns, "route"]);
    assert!(
        r.contains(&format!("{ip} dev {host_if} proto 119 scope link")),
        "{r}"
    );
    // The container reaches its host and the host the container.
    let (ok, out) = sh(
        "ip",
        &[
            "netns",
            "exec",
            cns,
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "172.30.0.1",
        ],
    );
    assert!(ok, "container -> host: {out}");
    let (ok, out) = sh(
        "ip",
        &["netns", "exec", &hns, "ping", "-c", "1", "-W", "2", ip],
    );
    assert!(ok, "host -> container: {out}");

    // ADD again for the same attachment is refused and changes nothing.
    let (code, res2, _) = plugin(Plugin {
        host_ns: &hns,
        env: cni_env("ADD", "ctr-a", &netns, "eth0"),
        stdin: conf.clone(),
    });
    assert_ne!(code, 0);
    assert!(res2["msg"].as_str().unwrap().contains("already"), "{res2}");
    let (ok, _) = sh(
        "ip",
        &[
            "netns",
            "exec",
            cns,
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "172.30.0.1",
        ],
    );
    assert!(ok, "a refused second ADD must not break the first");

    // CHECK passes, with and without prevResult.
    let mut with_prev: Value = serde_json::from_str(&conf).unwrap();
    with_prev["prevResult"] = res.clone();
    let (code, _, raw) = plugin(Plugin {
        host_ns: &hns,
        env: cni_env("CHECK", "ctr-a", &netns, "eth0"),
        stdin: with_prev.to_string(),
    });
    assert_eq!(code, 0, "CHECK failed: {raw}");
    // Break the container's default route: CHECK says what is wrong.
    sh("ip", &["-n", cns, "route", "del", "default"]);
    let (code, err, _) = plugin(Plugin {
        host_ns: &hns,
        env: cni_env("CHECK", "ctr-a", &netns, "eth0"),
        stdin: conf.clone(),
    });
    assert_eq!(code, 1);
    assert_eq!(err["code"], 101);
    assert!(
        err["msg"].as_str().unwrap().contains("default route"),
        "{err}"
    );
    // CHECK of something never added.
    let (code, err, _) = plugin(Plugin {
        host_ns: &hns,
        env: cni_env("CHECK", "ctr-none", &netns, "eth0"),
        stdin: conf.clone(),
    });
    assert_eq!(code, 1);
    assert!(err["msg"].as_str().unwrap().contains("no address"), "{err}");

    // DEL removes everything; a second DEL, a DEL with the namespace gone and a DEL of an
    // unknown container all succeed.
    let del = |cid: &str, ns: &str| {
        plugin(Plugin {
            host_ns: &hns,
            env: cni_env("DEL", cid, ns, "eth0"),
            stdin: conf.clone(),
        })
    };
    assert_eq!(del("ctr-a", &netns).0, 0);
    assert_eq!(before, host_state(&lab, "h1"), "DEL left something behind");
    assert_eq!(del("ctr-a", &netns).0, 0, "second DEL");
    sh("ip", &["netns", "del", cns]);
    assert_eq!(del("ctr-a", &netns).0, 0, "DEL after the namespace is gone");
    assert_eq!(del("ctr-a", "").0, 0, "DEL with no CNI_NETNS");
    assert_eq!(
        del("never-seen", "/run/netns/nope").0,
        0,
        "DEL of an unknown container"
    );
    assert_eq!(before, host_state(&lab, "h1"));
}

#[test]
fn version_lists_the_spec_versions() {
    // VERSION needs no namespace and no root: run the plugin directly.
    use std::io::Write;
    for stdin in [r#"{"cniVersion":"1.0.0"}"#, ""] {
        let mut child = std::process::Command::new(WEFT)
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let vs: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert!(vs.contains(&"1.0.0") && vs.contains(&"1.1.0"), "{vs:?}");
        if !stdin.is_empty() {
            assert_eq!(v["cniVersion"], "1.0.0");
        }
    }
}

#[test]
fn fifty_parallel_adds_get_fifty_distinct_addresses() {
    if !root_or_skip("fifty_parallel_adds") {
        return;
    }
    let lab = Lab::up_args("cpar", 1, "mesh", PLUGIN_ONLY);
    let hns = lab.host_ns("h1");
    let conf = weft_conf("1.0.0", "10.32.1.0/24", &lab.data_dir("h1"));
    let before = host_state(&lab, "h1");
    let nss: Vec<String> = (0..50).map(|i| lab.netns(&format!("p{i}"))).collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (hns, conf) = (&hns, &conf);
                s.spawn(move || {
                    let (code, res, raw) = plugin(Plugin {
                        host_ns: hns,
                        env: cni_env("ADD", &format!("par-{i}"), ns, "eth0"),
                        stdin: conf.clone(),
                    });
                    assert_eq!(code, 0, "ADD {i}: {raw}");
                    res["ips"][0]["address"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 50, "duplicate addresses: {ips:?}");
    assert_eq!(allocations(&lab, "h1"), 50);
    assert_eq!(weft_links(&hns).len(), 50);
    std::thread::scope(|s| {
        for (i, ns) in nss.iter().enumerate() {
            let (hns, conf) = (&hns, &conf);
            s.spawn(move || {
                let (code, _, raw) = plugin(Plugin {
                    host_ns: hns,
                    env: cni_env("DEL", &format!("par-{i}"), ns, "eth0"),
                    stdin: conf.clone(),
                });
                assert_eq!(code, 0, "DEL {i}: {raw}");
            });
        }
    });
    assert_eq!(allocations(&lab, "h1"), 0);
    assert_eq!(before, host_state(&lab, "h1"));
}

#[test]
fn bad_input_gets_spec_errors_and_leaves_nothing_behind() {
    if !root_or_skip("bad_input") {
        return;
    }
    let lab = Lab::up_args("cbad", 1, "mesh", PLUGIN_ONLY);
    let hns = lab.host_ns("h1");
    let data = lab.data_dir("h1");
    let netns = lab.netns("b");
    let good = weft_conf("1.0.0", "10.32.1.0/24", &data);
    let before = host_state(&lab, "h1");

    let env = |f: &dyn Fn(&mut CniEnv)| {
        let mut e = cni_env("ADD", "bad-1", &netns, "eth0");
        f(&mut e);
        e
    };
    // (what, environment, stdin, expected code, text the message must contain)
    let cases: Vec<(&str, CniEnv, String, u64, &str)> = vec![
        ("malformed JSON", env(&|_| {}), "{\"cniVersion\": ".into(), 6, "decode"),
        ("not an object", env(&|_| {}), "[1,2]".into(), 6, ""),
        (
            "missing cniVersion",
            env(&|_| {}),
            json!({"name":"weft","type":"weft","range":"10.32.1.0/24","dataDir":data}).to_string(),
            7,
            "cniVersion",
        ),
        (
            "unknown cniVersion",
            env(&|_| {}),
            weft_conf("9.9.9", "10.32.1.0/24", &data),
            1,
            "1.0.0",
        ),
        (
            "old cniVersion",
            env(&|_| {}),
            weft_conf("0.4.0", "10.32.1.0/24", &data),
            1,
            "",
        ),
        (
            "bad range",
            env(&|_| {}),
            weft_conf("1.0.0", "10.32.1.0/33", &data),
            7,
            "range",
        ),
        (
            "wrong type",
            env(&|_| {}),
            json!({"cniVersion":"1.0.0","name":"weft","type":"bridge","range":"10.32.1.0/24"})
                .to_string(),
            7,
            "type",
        ),
        (
            "unknown field",
            env(&|_| {}),
            json!({"cniVersion":"1.0.0","name":"weft","type":"weft","range":"10.32.1.0/24","rnage":1})
                .to_string(),
            7,
            "rnage",
        ),
        (
            "missing CNI_COMMAND",
            env(&|e| e.retain(|(k, _)| *k != "CNI_COMMAND")),
            good.clone(),
            4,
            "CNI_COMMAND",
        ),
        (
            "unknown CNI_COMMAND",
            env(&|e| e[0].1 = "ATTACH".into()),
            good.clone(),
            4,
            "CNI_COMMAND",
        ),
        (
            "missing CNI_CONTAINERID",
            env(&|e| e.retain(|(k, _)| *k != "CNI_CONTAINERID")),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "bad CNI_IFNAME",
            env(&|e| e[3].1 = "this-name-is-too-long".into()),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "netns does not exist",
            env(&|e| e[2].1 = "/run/netns/weft-no-such-ns".into()),
            good.clone(),
            4,
            "CNI_NETNS",
        ),
        (
            "netns is not a namespace",
            env(&|e| e[2].1 = "/etc/hostname".into()),
            good.clone(),
            4,
            "CNI_NETNS",
        ),
    ];
    for (what, env, stdin, want_code, want_text) in cases {
        let (code, err, raw) = plugin(Plugin {
            host_ns: &hns,
            env,
            stdin,
        });
        assert_ne!(code, 0, "{what}: exit code 0: {raw}");
        assert_eq!(err["code"].as_u64(), Some(want_code), "{what}: {raw}");
        let msg = err["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(want_text),
            "{what}: {msg:?} lacks {want_text:?}"
        );
        assert!(err["cniVersion"].is_string(), "{what}: {raw}");
        assert_eq!(
            before,
            host_state(&lab, "h1"),
            "{what} left something behind"
        );
    }

    // An interface of that name already in the container: ADD fails after allocating and
    // creating the veth; everything is undone.
    let cns = netns.trim_start_matches("/run/netns/");
    let (ok, out) = sh(
        "ip",
        &[
            "-n", cns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ],
    );
    assert!(ok, "{out}");
    let (code, err, raw) = plugin(Plugin {
        host_ns: &hns,
        env: cni_env("ADD", "bad-2", &netns, "eth0"),
        stdin: good.clone(),
    });
    assert_ne!(code, 0, "{raw}");
    assert!(
        err["msg"].as_str().unwrap().contains("already exists"),
        "{raw}"
    );
    assert_eq!(
        before,
        host_state(&lab, "h1"),
        "failed ADD left something behind"
    );

    // An exhausted range: a /30 has two addresses; the third ADD gets code 100, leaves
    // nothing, and STATUS reports the network unavailable.
    let tiny = weft_conf("1.1.0", "10.32.9.0/30", &format!("{data}/tiny"));
    let ns1 = lab.netns("t1");
    let ns2 = lab.netns("t2");
    let ns3 = lab.netns("t3");
    let status = || {
        plugin(Plugin {
            host_ns: &hns,
            env: vec![("CNI_COMMAND", "STATUS".into())],
            stdin: tiny.clone(),
        })
    };
    assert_eq!(status().0, 0, "STATUS with free addresses");
    for (i, ns) in [&ns1, &ns2].into_iter().enumerate() {
        let (code, _, raw) = plugin(Plugin {
            host_ns: &hns,
            env: cni_env("ADD", &format!("tiny-{i}"), ns, "eth0"),
            stdin: tiny.clone(),
        });
        assert_eq!(code, 0, "{raw}");
    }
    let full = weft_links(&hns);
    let (code, err, raw) = plugin(Plugin {
        host_ns: &hns,
        env: cni_env("ADD", "tiny-3", &ns3, "eth0"),
        stdin: tiny.clone(),
    });
    assert_ne!(code, 0);
    assert_eq!(err["code"], 100, "{raw}");
    assert!(err["msg"].as_str().unwrap().contains("exhausted"), "{raw}");
    assert_eq!(full, weft_links(&hns), "exhausted ADD left a link");
    let (code, err, raw) = status();
    assert_ne!(code, 0);
    assert_eq!(err["code"], 50, "{raw}");
}

#[test]
fn gc_removes_attachments_not_listed_as_valid() {
    if !root_or_skip("gc") {
        return;
    }
    let lab = Lab::up_args("cgc", 1, "mesh", PLUGIN_ONLY);
    let hns = lab.host_ns("h1");
    let conf = weft_conf("1.1.0", "10.32.1.0/24", &lab.data_dir("h1"));
    for i in 0..3 {
        let ns = lab.netns(&format!("g{i}"));
        let (code, _, raw) = plugin(Plugin {
            host_ns: &hns,
            env: cni_env("ADD", &format!("gc-{i}"), &ns, "eth0"),
            stdin: conf.clone(),
        });
        assert_eq!(code, 0, "{raw}");
    }
    assert_eq!(weft_links(&hns).len(), 3);
    // GC without the list is a config error.
    let (code, err, _) = plugin(Plugin {
        host_ns: &hns,
        env: vec![("CNI_COMMAND", "GC".into())],
        stdin: conf.clone(),
    });
    assert_ne!(code, 0);
    assert_eq!(err["code"], 7);
    assert_eq!(weft_links(&hns).len(), 3, "a refused GC removed links");

    let mut gc: Value = serde_json::from_str(&conf).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc-1", "ifname": "eth0"}]);
    let (code, _, raw) = plugin(Plugin {
        host_ns: &hns,
        env: vec![("CNI_COMMAND", "GC".into())],
        stdin: gc.to_string(),
    });
    assert_eq!(code, 0, "{raw}");
    let left = weft_links(&hns);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains("weft:weft:gc-1:eth0"), "{left:?}");
    assert_eq!(allocations(&lab, "h1"), 1);
}

#[test]
fn chained_with_reference_plugins_through_the_lab_runtime() {
    if !root_or_skip("chained") {
        return;
    }
    let lab = Lab::up_args("cchain", 2, "mesh", PLUGIN_ONLY);
    let conflist = format!("/run/weft-lab/{}/chain.conflist", lab.name);
    std::fs::write(
        &conflist,
        json!({
            "cniVersion": "1.0.0",
            "name": "weft",
            "plugins": [
                {"type": "weft", "range": "10.32.1.0/24", "dataDir": lab.data_dir("h1")},
                {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}},
                {"type": "bandwidth", "ingressRate": 100000000, "ingressBurst": 1000000},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let out = weft_ok(&[
        "lab",
        "run",
        "--name",
        "cchain",
        "--conflist",
        &conflist,
        "--json",
        "h1",
        "web",
        "--",
        "busybox",
        "nc",
        "-ll",
        "-p",
        "8080",
        "-e",
        "echo",
        "chained",
    ]);
    let c: Value = serde_json::from_str(&out).unwrap();
    // weft's interfaces and address came through every plugin of the chain.
    let res = &c["result"];
    assert_eq!(res["interfaces"][1]["name"], "eth0", "{res}");
    assert!(res["ips"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with("10.32.1."));
    // tuning applied its sysctl inside the container; bandwidth put a qdisc on the host veth.
    let (_, v) = lab.exec(
        "h1/web",
        &["cat", "/proc/sys/net/ipv4/conf/eth0/accept_local"],
    );
    assert_eq!(v.trim(), "1");
    let host_if = res["interfaces"][0]["name"].as_str().unwrap();
    let (_, q) = sh(
        "ip",
        &[
            "netns",
            "exec",
            &lab.host_ns("h1"),
            "tc",
            "qdisc",
            "show",
            "dev",
            host_if,
        ],
    );
    assert!(q.contains("tbf"), "bandwidth qdisc missing: {q}");
    // A second container on the same host talks TCP to it.
    weft_ok(&["lab", "run", "--name", "cchain", "h1", "client"]);
    let ip = c["ip"].as_str().unwrap();
    let mut got = String::new();
    for _ in 0..20 {
        got = lab
            .exec("h1/client", &["busybox", "nc", "-w", "2", ip, "8080"])
            .1;
        if got.contains("chained") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(got.contains("chained"), "{got}");
    // DEL runs through the chain in reverse and leaves no weft link.
    weft_ok(&["lab", "rm", "--name", "cchain", "h1", "web"]);
    weft_ok(&["lab", "rm", "--name", "cchain", "h1", "client"]);
    assert!(weft_links(&lab.host_ns("h1")).is_empty());
    assert_eq!(allocations(&lab, "h1"), 0);
}

#[test]
fn prev_result_is_kept_and_mtu_is_applied() {
    if !root_or_skip("prev_result_and_mtu") {
        return;
    }
    let lab = Lab::up_args("cprev", 1, "mesh", PLUGIN_ONLY);
    let hns = lab.host_ns("h1");
    let netns = lab.netns("m");
    let mut conf: Value =
        serde_json::from_str(&weft_conf("1.1.0", "10.32.1.0/24", &lab.data_dir("h1"))).unwrap();
    conf["mtu"] = json!(1400);
    // As if an earlier plugin in the chain had made an interface and an address.
    conf["prevResult"] = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "earlier0", "sandbox": netns}],
        "ips": [{"address": "192.0.2.7/24", "interface": 0}]
    });
    let (code, res, raw) = plugin(Plugin {
        host_ns: &hns,
        env: cni_env("ADD", "prev-1", &netns, "eth0"),
        stdin: conf.to_string(),
    });
    assert_eq!(code, 0, "{raw}");
    let ifs = res["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3, "{res}");
    assert_eq!(ifs[0]["name"], "earlier0");
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(res["ips"][0]["address"], "192.0.2.7/24");
    assert_eq!(
        res["ips"][1]["interface"], 2,
        "weft's address points at its eth0"
    );
    let (_, link) = sh(
        "ip",
        &[
            "-n",
            netns.trim_start_matches("/run/netns/"),
            "link",
            "show",
            "eth0",
        ],
    );
    assert!(link.contains("mtu 1400"), "{link}");
    let host_if = ifs[1]["name"].as_str().unwrap();
    let (_, hl) = sh("ip", &["-n", &hns, "link", "show", host_if]);
    assert!(hl.contains("mtu 1400"), "{hl}");
}
