//! Connections that others translate, on weft's paths with the defaults (NAT and the fast
//! path on) and without them, in route and VXLAN mode: a Service address DNAT'd on the
//! client's host by rules written as kube-proxy's nftables mode and its iptables mode
//! (iptables-nft) write them, to a backend on another host and on the client's own host;
//! a hostPort (the reference `portmap` plugin) on another host and on the client's own
//! host; a long-lived connection through a Service that keeps its replies across an agent
//! restart, idle past the set's timeout meanwhile; and plain pod-to-pod traffic that still takes the fast path. The same for
//! IPv6 (dual-stack pools on a dual underlay: `ip6` kube-proxy tables, ip6tables-nft,
//! portmap's IPv6 hostPort).
//! Design: docs/dataplane.md, "Connections that others translate".

mod common;
use common::dp::{fast_path_attached, run_with, wait_for};
use common::*;

use serde_json::{json, Value};
use std::time::Duration;

/// A TCP server in a container that answers every connection with `word`.
fn server(lab: &Lab, host: &str, name: &str, conflist: Option<&str>, word: &str) -> String {
    run_with(
        lab,
        host,
        name,
        conflist,
        &["busybox", "nc", "-ll", "-p", "80", "-e", "echo", word],
    )
}

/// What `nc ADDR PORT` from container `from` reads, trying for a while (the agents may
/// still be settling their routes).
fn fetch(lab: &Lab, from: &str, addr: &str, port: &str, want: &str) -> String {
    output_with(lab, from, &["busybox", "nc", "-w", "2", addr, port], want)
}

/// The output of `cmd` in container `from`, run again for a while until it contains
/// `want`.
fn output_with(lab: &Lab, from: &str, cmd: &[&str], want: &str) -> String {
    let mut got = String::new();
    for _ in 0..30 {
        got = lab.exec(from, cmd).1;
        if got.contains(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    got
}

/// kube-proxy's nftables mode, reduced to what matters here: its own `ip kube-proxy`
/// table, a verdict map from (address, protocol, port) to a service chain, a service
/// chain picking an endpoint chain, endpoint chains that mark hairpin traffic for
/// masquerade and DNAT, and masquerading of marked packets.
fn kube_proxy_nftables(services: &[(&str, &str)]) -> String {
    let mut elements = Vec::new();
    let mut chains = String::new();
    for (i, (vip, backend)) in services.iter().enumerate() {
        elements.push(format!("{vip} . tcp . 80 : goto service-{i}"));
        chains.push_str(&format!(
            "  chain service-{i} {{\n    ip daddr {vip} tcp dport 80 ip saddr != 10.32.0.0/12 jump mark-for-masquerade\n    numgen random mod 1 vmap {{ 0 : goto endpoint-{i} }}\n  }}\n  chain endpoint-{i} {{\n    ip saddr {backend} jump mark-for-masquerade\n    meta l4proto tcp dnat to {backend}:80\n  }}\n"
        ));
    }
    format!(
        "table ip kube-proxy {{\n  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}\n  chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }}\n  chain nat-output {{\n    type nat hook output priority -100; policy accept;\n    jump services\n  }}\n  chain nat-postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    jump masquerading\n  }}\n  chain services {{\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }}\n  chain mark-for-masquerade {{\n    meta mark set meta mark | 0x4000\n  }}\n  chain masquerading {{\n    meta mark & 0x4000 == 0 return\n    meta mark set meta mark ^ 0x4000\n    masquerade fully-random\n  }}\n{chains}}}\n",
        elements.join(", ")
    )
}

/// kube-proxy's iptables mode (through iptables-nft), as `iptables-save` shows it.
fn kube_proxy_iptables(services: &[(&str, &str)]) -> String {
    let mut decl = String::new();
    let mut rules = String::new();
    for (i, (vip, backend)) in services.iter().enumerate() {
        decl.push_str(&format!(":KUBE-SVC-{i} - [0:0]\n:KUBE-SEP-{i} - [0:0]\n"));
        rules.push_str(&format!(
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"default/s{i} cluster IP\" -m tcp --dport 80 -j KUBE-SVC-{i}\n\
             -A KUBE-SVC-{i} ! -s 10.32.0.0/12 -d {vip}/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ\n\
             -A KUBE-SVC-{i} -m statistic --mode random --probability 1.00000000000 -j KUBE-SEP-{i}\n\
             -A KUBE-SEP-{i} -s {backend}/32 -j KUBE-MARK-MASQ\n\
             -A KUBE-SEP-{i} -p tcp -m tcp -j DNAT --to-destination {backend}:80\n"
        ));
    }
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n{decl}\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n{rules}COMMIT\n"
    )
}

fn host_sh(lab: &Lab, host: &str, script: &str) {
    let (ok, out) = lab.exec(host, &["sh", "-c", script]);
    assert!(ok, "{host}: {script}: {out}");
}

fn fast_counters(lab: &Lab, host: &str) -> Value {
    let out = weft_ok(&[
        "status",
        "--socket",
        &format!("/run/weft-lab/{}/{host}/weft.sock", lab.name),
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["dataplane"]["fast_path"].clone()
}

/// A conflist with weft (cluster IPAM from the host's agent) and portmap publishing
/// host port 8080 to the container's port 80.
fn hostport_conflist(lab: &Lab, host: &str) -> String {
    let path = format!("/run/weft-lab/{}/{host}-hostport.conflist", lab.name);
    let conf = json!({
        // Debian's reference plugins speak up to 1.0.0.
        "cniVersion": "1.0.0",
        "name": "weft",
        "plugins": [
            {"type": "weft",
             "agentSocket": format!("/run/weft-lab/{}/{host}/weft.sock", lab.name),
             "dataDir": lab.data_dir(host)},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true,
             "runtimeConfig": {"portMappings": [
                 {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}
        ]
    });
    std::fs::write(&path, conf.to_string()).unwrap();
    path
}

fn round(name: &str, extra: &[&str], fast_path: bool, restart: bool) {
    let lab = Lab::up_args(name, 2, "mesh", extra);
    let what = extra.join(" ");
    let b = server(&lab, "h2", "b", None, "from-b");
    let c = server(&lab, "h1", "c", None, "from-c");
    let p = server(
        &lab,
        "h2",
        "p",
        Some(&hostport_conflist(&lab, "h2")),
        "from-p",
    );
    let pool: ipnet::Ipv4Net = "10.32.0.0/12".parse().unwrap();
    assert!(
        pool.contains(&p.parse::<std::net::Ipv4Addr>().unwrap()),
        "{p}"
    );
    let a = run_with(&lab, "h1", "a", None, &[]);
    run_with(&lab, "h2", "d", None, &[]);
    if fast_path {
        for h in ["h1", "h2"] {
            fast_path_attached(&lab, h);
        }
    }

    // Plain pod-to-pod traffic first: it works, and (with the fast path) takes it.
    assert!(
        fetch(&lab, "h1/a", &b, "80", "from-b").contains("from-b"),
        "{what}: a -> b directly"
    );

    // Services on h1, as kube-proxy writes them: to a backend on h2 and one on h1.
    let nft = kube_proxy_nftables(&[("10.96.0.10", &b), ("10.96.0.12", &c)]);
    let file = format!("/run/weft-lab/{name}/kube-proxy.nft");
    std::fs::write(&file, nft).unwrap();
    host_sh(&lab, "h1", &format!("nft -f {file}"));
    let ipt = kube_proxy_iptables(&[("10.96.0.11", &b), ("10.96.0.13", &c)]);
    let file = format!("/run/weft-lab/{name}/kube-proxy.iptables");
    std::fs::write(&file, ipt).unwrap();
    host_sh(
        &lab,
        "h1",
        &format!("iptables-nft-restore --noflush < {file}"),
    );
    for (vip, word, style) in [
        ("10.96.0.10", "from-b", "nftables, backend on another host"),
        (
            "10.96.0.12",
            "from-c",
            "nftables, backend on the client's host",
        ),
        ("10.96.0.11", "from-b", "iptables, backend on another host"),
        (
            "10.96.0.13",
            "from-c",
            "iptables, backend on the client's host",
        ),
    ] {
        let got = fetch(&lab, "h1/a", vip, "80", word);
        assert!(
            got.contains(word),
            "{what}: Service {vip} ({style}): {got:?}"
        );
    }

    // A DNS Service over UDP on h1 (the DNAT of kube-proxy's rules, reduced), to dnsmasq
    // in a pod on h2: each query is a new UDP socket, learnt with a shorter timeout than
    // TCP's, so a node resolving many names cannot fill the set for an hour.
    let u = run_with(
        &lab,
        "h2",
        "u",
        None,
        &[
            "dnsmasq",
            "--conf-file=/dev/null",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--user=root",
            "--group=root",
            "--port=5353",
            "--address=/svc.test/192.0.2.7",
        ],
    );
    let file = format!("/run/weft-lab/{name}/dns-service.nft");
    std::fs::write(
        &file,
        format!(
            "table ip dns-service {{\n  chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr 10.96.0.53 udp dport 53 dnat to {u}:5353\n  }}\n}}\n"
        ),
    )
    .unwrap();
    host_sh(&lab, "h1", &format!("nft -f {file}"));
    let got = output_with(
        &lab,
        "h1/a",
        &[
            "dig",
            "+time=2",
            "+tries=1",
            "+short",
            "@10.96.0.53",
            "x.svc.test",
        ],
        "192.0.2.7",
    );
    assert_eq!(got.trim(), "192.0.2.7", "{what}: DNS Service over UDP");
    if extra.iter().all(|x| *x != "off") {
        let (_, set) = lab.exec("h1", &["nft", "list", "set", "ip", "weft", "translated"]);
        let elements: Vec<&str> = set
            .split_once("elements = {")
            .map(|(_, e)| e.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let of = |proto: &str| -> Vec<&str> {
            let key = format!("{a} . {proto} . ");
            elements
                .iter()
                .copied()
                .filter(|e| e.starts_with(&key))
                .collect()
        };
        let (udp, tcp) = (of("udp"), of("tcp"));
        assert!(!udp.is_empty() && !tcp.is_empty(), "{what}: {set}");
        assert!(
            udp.iter().all(|e| e.contains("timeout 5m")),
            "{what}: UDP sockets with the set's own timeout: {set}"
        );
        assert!(
            tcp.iter().all(|e| !e.contains("timeout 5m")),
            "{what}: TCP sockets with a timeout of their own: {set}"
        );
    }

    // A hostPort on h2, from a pod on h1 and from a pod on h2 itself.
    let h2 = "172.30.0.2";
    for from in ["h1/a", "h2/d"] {
        let got = fetch(&lab, from, h2, "8080", "from-p");
        assert!(
            got.contains("from-p"),
            "{what}: hostPort from {from}: {got:?}"
        );
    }

    // The same hostPort from a pod whose host does not masquerade it (a NAT binding of
    // the test's own, to the pod's own address, before weft's masquerade), so h2 sees the
    // pod's address: the reply is translated back on h2 (weft's NAT-chain rule, the fast
    // path's egress program) or it would reach a with p's address.
    if extra.iter().all(|x| *x != "off") {
        host_sh(
            &lab,
            "h1",
            &format!(
                "nft add table ip nomasq && \
                 nft add chain ip nomasq post '{{ type nat hook postrouting priority 50; }}' && \
                 nft add rule ip nomasq post ip saddr {a} ip daddr {h2} snat to {a}"
            ),
        );
        let got = fetch(&lab, "h1/a", h2, "8080", "from-p");
        assert!(
            got.contains("from-p"),
            "{what}: hostPort from an unmasqueraded pod of h1: {got:?}"
        );
        let (_, seen) = lab.exec("h2", &["nft", "list", "set", "ip", "weft", "translated"]);
        assert!(
            seen.contains(&a),
            "{what}: h2 did not learn a's socket: {seen}"
        );
    }

    if fast_path {
        let f = fast_counters(&lab, "h1");
        assert_eq!(f["state"], "on", "{what}: {f}");
        // The replies of the translated connections were left to conntrack by the map.
        assert!(
            f["counters"]["stateful"].as_u64().unwrap_or(0) > 0,
            "{what}: no reply was left to conntrack: {f}"
        );
        // And plain pod-to-pod traffic still takes the fast path.
        let sent = f["counters"]["egress"].as_u64().unwrap_or(0)
            + f["counters"]["peer"].as_u64().unwrap_or(0);
        assert!(sent > 0, "{what}: the fast path forwarded nothing: {f}");
    }

    if restart {
        long_connection_survives_an_agent_restart(&lab, &what);
    }
}

/// A connection from h1/cli through a Service to h2, with data from the backend (the
/// translated direction) before and after h1's agent was down while the connection
/// idled past the `translated` set's timeout.
fn long_connection_survives_an_agent_restart(lab: &Lab, what: &str) {
    let dir = format!("/run/weft-lab/{}", lab.name);
    let fifo = format!("{dir}/long.fifo");
    let (ok, t) = sh("mkfifo", &[&fifo]);
    assert!(ok, "mkfifo: {t}");
    // The backend sends what the test writes into the fifo; the client logs it.
    let srv = run_with(
        lab,
        "h2",
        "srv",
        None,
        &["sh", "-c", &format!("exec busybox nc -l -p 7001 < {fifo}")],
    );
    let nft = kube_proxy_nftables(&[("10.96.0.20", &srv)])
        .replace("tcp . 80", "tcp . 7001")
        .replace("tcp dport 80", "tcp dport 7001")
        .replace(&format!("{srv}:80"), &format!("{srv}:7001"))
        .replace("table ip kube-proxy", "table ip kube-proxy-long");
    let file = format!("{dir}/long.nft");
    std::fs::write(&file, nft).unwrap();
    host_sh(lab, "h1", &format!("nft -f {file}"));
    let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let listening = (0..100).any(|_| {
        let (_, t) = lab.exec("h2/srv", &["ss", "-ltn"]);
        std::thread::sleep(Duration::from_millis(100));
        t.contains(":7001")
    });
    assert!(listening, "nc did not listen in h2/srv");
    let cli = run_with(
        lab,
        "h1",
        "cli",
        None,
        &["sh", "-c", "sleep 1000 | exec busybox nc 10.96.0.20 7001"],
    );
    let log = format!("{dir}/h1/cli.log");
    let received = |word: &str| {
        (0..150).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains(word))
        })
    };
    use std::io::Write;
    feed.write_all(b"before-restart\n").unwrap();
    feed.flush().unwrap();
    assert!(
        received("before-restart"),
        "{what}: the Service connection did not start: {:?}",
        std::fs::read_to_string(&log)
    );
    // The connection's client socket, as the set lists it.
    let (_, ss) = lab.exec("h1/cli", &["ss", "-tnH", "dst", "10.96.0.20"]);
    let port = ss
        .split_whitespace()
        .nth(3)
        .and_then(|local| local.rsplit(':').next())
        .unwrap_or_else(|| panic!("{what}: no connection to the Service in h1/cli: {ss}"))
        .to_string();
    let elem = format!("{cli} . tcp . {port}");
    // As listed: an element is followed by its expiry (so another port with the same
    // digits first does not match).
    let listed = format!("{elem} ");
    // While h1's agent is down, the connection idles past the set's timeout: its client
    // socket is gone from the set (flushed here rather than waited for). The client
    // sends nothing more, so only the new agent, which enters the sockets of the
    // translated connections conntrack knows, can bring it back before the backend's
    // next message.
    weft_ok(&["lab", "agent", "--name", &lab.name, "h1", "stop"]);
    host_sh(lab, "h1", "nft flush set ip weft translated");
    let set = || {
        lab.exec("h1", &["nft", "list", "set", "ip", "weft", "translated"])
            .1
    };
    assert!(
        !set().contains(&cli),
        "{what}: the set was not flushed: {}",
        set()
    );
    weft_ok(&["lab", "agent", "--name", &lab.name, "h1", "start"]);
    let entered = wait_for(Duration::from_secs(10), || {
        set().contains(&listed).then_some(())
    });
    assert!(
        entered.is_some(),
        "{what}: the new agent did not enter the idle connection's client socket ({elem}) into the set: {}",
        set()
    );
    // The new agent's fast path is attached again before the next message is sent.
    let back = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let f = fast_counters(lab, "h1");
        f["state"] == "on" && f["devices"].as_array().is_some_and(|d| d.len() >= 4)
    });
    assert!(back, "{what}: h1's fast path did not come back");
    // The new agent replaced the old one's tc filters on every container veth: one at
    // each hook, its own (the old program is gone with the old agent's maps).
    for l in weft_links(&lab.host_ns("h1")) {
        let dev = l
            .split(':')
            .nth(1)
            .unwrap()
            .trim()
            .split('@')
            .next()
            .unwrap();
        for (hook, prog) in [("ingress", "weft_fast"), ("egress", "weft_egress")] {
            let (_, f) = lab.exec("h1", &["tc", "filter", "show", "dev", dev, hook]);
            let n = f.lines().filter(|l| l.contains(prog)).count();
            assert_eq!(n, 1, "{what}: {dev} {hook} has {n} weft filters: {f}");
        }
    }
    feed.write_all(b"after-restart\n").unwrap();
    feed.flush().unwrap();
    assert!(
        received("after-restart"),
        "{what}: the Service connection lost its replies across the agent restart: {:?}",
        std::fs::read_to_string(&log)
    );

    // Someone flushes h1's ruleset (`systemctl restart nftables` does): the agent writes
    // its table again within its 30 s check, enters the connection's socket again, says
    // so in `weft status`, and the connection goes on.
    host_sh(lab, "h1", "nft flush ruleset");
    let back = wait_for(Duration::from_secs(45), || {
        set().contains(&listed).then_some(())
    });
    assert!(
        back.is_some(),
        "{what}: h1's agent did not write its table and set again: {}",
        set()
    );
    let st: Value = serde_json::from_str(&weft_ok(&[
        "lab", "exec", "--name", &lab.name, "h1", "--", "weft", "status", "--json",
    ]))
    .unwrap();
    let restored = &st["dataplane"]["nftables"]["restored"];
    assert!(restored.as_u64().unwrap_or(0) >= 1, "{what}: {st}");
    feed.write_all(b"after-flush\n").unwrap();
    feed.flush().unwrap();
    assert!(
        received("after-flush"),
        "{what}: the Service connection lost its replies after the flush: {:?}",
        std::fs::read_to_string(&log)
    );

    // An entry about to expire while its connection idles gets its whole timeout back at
    // the agent's next refresh (within 30 s), not only when it is missing.
    host_sh(
        lab,
        "h1",
        &format!("nft add element ip weft translated {{ {elem} timeout 10m expires 15s }}"),
    );
    let left = || expires_secs(&set(), &listed);
    assert!(left().is_some_and(|s| s <= 15), "{what}: {}", set());
    let renewed = wait_for(Duration::from_secs(45), || {
        left().is_some_and(|s| s >= 300).then_some(())
    });
    assert!(
        renewed.is_some(),
        "{what}: the agent did not renew {elem}: {}",
        set()
    );

    // A reply gives the entry its whole timeout back by itself (the `raw_translated`
    // chain), also while the agent is down: a connection in use keeps its socket.
    weft_ok(&["lab", "agent", "--name", &lab.name, "h1", "stop"]);
    host_sh(
        lab,
        "h1",
        &format!("nft add element ip weft translated {{ {elem} timeout 10m expires 15s }}"),
    );
    assert!(left().is_some_and(|s| s <= 15), "{what}: {}", set());
    feed.write_all(b"while-stopped\n").unwrap();
    feed.flush().unwrap();
    assert!(
        received("while-stopped"),
        "{what}: the Service connection lost its replies with h1's agent stopped: {:?}",
        std::fs::read_to_string(&log)
    );
    assert!(
        left().is_some_and(|s| s >= 300),
        "{what}: the backend's reply did not renew {elem}: {}",
        set()
    );
    weft_ok(&["lab", "agent", "--name", &lab.name, "h1", "start"]);
}

#[test]
fn an_elements_expiry_is_read_from_nfts_listing() {
    let set = "elements = { 10.32.0.3 . tcp . 40001 expires 1m2s3ms, 10.32.0.3 . tcp . 4000 timeout 10m expires 9m59s996ms }";
    assert_eq!(expires_secs(set, "10.32.0.3 . tcp . 4000 "), Some(599));
    assert_eq!(expires_secs(set, "10.32.0.3 . tcp . 40001 "), Some(62));
    assert_eq!(expires_secs(set, "10.32.0.4 . tcp . 1 "), None);
}

/// The seconds left before `elem` expires, as `nft list set` shows it (`expires 9m59s996ms`).
fn expires_secs(set: &str, elem: &str) -> Option<u64> {
    let after = &set[set.find(elem)? + elem.len()..];
    let e = after.split(',').next()?.split("expires ").nth(1)?;
    let mut secs = 0;
    let mut num = String::new();
    let mut chars = e.split_whitespace().next()?.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        match c {
            'd' => secs += n * 86400,
            'h' => secs += n * 3600,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
            }
            'm' => secs += n * 60,
            's' => secs += n,
            _ => return None,
        }
    }
    Some(secs)
}

#[test]
fn services_and_host_ports_work_with_the_defaults_in_route_mode() {
    if !root_or_skip("services_and_host_ports_route") {
        return;
    }
    round("tsroute", &["--mode", "route"], true, false);
}

#[test]
fn services_and_host_ports_work_with_the_defaults_in_vxlan_mode_and_across_a_restart() {
    if !root_or_skip("services_and_host_ports_vxlan") {
        return;
    }
    round("tsvxlan", &["--mode", "vxlan"], true, true);
}

#[test]
fn services_and_host_ports_work_without_nat_and_fast_path() {
    if !root_or_skip("services_and_host_ports_plain") {
        return;
    }
    round(
        "tsplain",
        &["--mode", "vxlan", "--nat", "off", "--fast-path", "off"],
        false,
        false,
    );
}

/// kube-proxy's rules of [`kube_proxy_nftables`] and [`kube_proxy_iptables`] for IPv6.
fn to_ipv6_nft(v4: &str) -> String {
    v4.replace("table ip kube-proxy", "table ip6 kube-proxy")
        .replace("ipv4_addr", "ipv6_addr")
        .replace("ip saddr != 10.32.0.0/12", "ip6 saddr != fd32::/48")
        .replace("ip daddr", "ip6 daddr")
        .replace("ip saddr", "ip6 saddr")
}

fn round6(name: &str, extra: &[&str]) {
    let mut args = vec![
        "--ipam-pools",
        "10.32.0.0/12,fd32::/48",
        "--underlay",
        "dual",
    ];
    args.extend_from_slice(extra);
    let lab = Lab::up_args(name, 2, "mesh", &args);
    let what = format!("IPv6 {}", extra.join(" "));
    let v6 = |host: &str, name: &str, conflist: Option<&str>, cmd: &[&str]| -> String {
        let mut a = vec!["lab", "run", "--name", &lab.name, "--json"];
        if let Some(c) = conflist {
            a.extend(["--conflist", c]);
        }
        a.extend([host, name, "--"]);
        a.extend_from_slice(cmd);
        let out = weft_ok(&a);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["ips"][1]
            .as_str()
            .unwrap_or_else(|| panic!("no IPv6: {out}"))
            .to_string()
    };
    let serve = |word: &'static str| ["busybox", "nc", "-ll", "-p", "80", "-e", "echo", word];
    let b = v6("h2", "b", None, &serve("from-b"));
    let c = v6("h1", "c", None, &serve("from-c"));
    v6(
        "h2",
        "p",
        Some(&hostport_conflist(&lab, "h2")),
        &serve("from-p"),
    );
    v6("h1", "a", None, &[]);
    v6("h2", "d", None, &[]);
    if !extra.contains(&"off") {
        for h in ["h1", "h2"] {
            fast_path_attached(&lab, h);
        }
    }
    assert!(
        fetch(&lab, "h1/a", &b, "80", "from-b").contains("from-b"),
        "{what}: a -> b"
    );

    let nft = to_ipv6_nft(&kube_proxy_nftables(&[("fd96::10", &b), ("fd96::12", &c)]))
        .replace(&format!("{b}:80"), &format!("[{b}]:80"))
        .replace(&format!("{c}:80"), &format!("[{c}]:80"));
    let file = format!("/run/weft-lab/{name}/kube-proxy6.nft");
    std::fs::write(&file, nft).unwrap();
    host_sh(&lab, "h1", &format!("nft -f {file}"));
    let ipt = kube_proxy_iptables(&[("fd96::11", &b), ("fd96::13", &c)])
        .replace("/32 ", "/128 ")
        .replace("! -s 10.32.0.0/12", "! -s fd32::/48")
        .replace(&format!("{b}:80"), &format!("[{b}]:80"))
        .replace(&format!("{c}:80"), &format!("[{c}]:80"));
    let file = format!("/run/weft-lab/{name}/kube-proxy6.iptables");
    std::fs::write(&file, ipt).unwrap();
    host_sh(
        &lab,
        "h1",
        &format!("ip6tables-nft-restore --noflush < {file}"),
    );
    for (vip, word, style) in [
        ("fd96::10", "from-b", "nftables, backend on another host"),
        (
            "fd96::12",
            "from-c",
            "nftables, backend on the client's host",
        ),
        ("fd96::11", "from-b", "ip6tables, backend on another host"),
        (
            "fd96::13",
            "from-c",
            "ip6tables, backend on the client's host",
        ),
    ] {
        let got = fetch(&lab, "h1/a", vip, "80", word);
        assert!(
            got.contains(word),
            "{what}: Service {vip} ({style}): {got:?}"
        );
    }
    // portmap publishes the hostPort on h2's IPv6 address too.
    for from in ["h1/a", "h2/d"] {
        let got = fetch(&lab, from, "fd30::2", "8080", "from-p");
        assert!(
            got.contains("from-p"),
            "{what}: hostPort from {from}: {got:?}"
        );
    }
    if !extra.contains(&"off") {
        let f = fast_counters(&lab, "h1");
        assert!(
            f["counters"]["stateful"].as_u64().unwrap_or(0) > 0,
            "{what}: no IPv6 reply was left to conntrack: {f}"
        );
    }
}

#[test]
fn ipv6_services_and_host_ports_work_with_the_defaults_in_both_modes() {
    if !root_or_skip("ipv6 services") {
        return;
    }
    round6("ts6route", &["--mode", "route"]);
    round6("ts6vxlan", &["--mode", "vxlan"]);
}
