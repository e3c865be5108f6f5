//! Network policy over time, in the lab (docs/policy.md): a pod is isolated from its very
//! first packet and its allow rules follow; a policy applied on one host is enforced on the
//! others; established connections a new policy forbids are cut while allowed ones go on;
//! every drop is explained by `weft flows`; policies survive every agent restarting; pods
//! no policy isolates keep the fast path.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dp;
use common::*;
use serde_json::Value;

/// A pod: where it runs and its addresses.
struct P {
    host: String,
    name: String,
    netns: String,
    v4: IpAddr,
}

fn start(lab: &Lab, host: &str, name: &str, ns: &str, labels: &[&str], cmd: &[&str]) -> P {
    let mut args = vec![
        "lab",
        "run",
        "--name",
        &lab.name,
        "--json",
        "--namespace",
        ns,
    ];
    for l in labels {
        args.push("--label");
        args.push(l);
    }
    args.push(host);
    args.push(name);
    if !cmd.is_empty() {
        args.push("--");
        args.extend_from_slice(cmd);
    }
    let out = weft_ok(&args);
    let v: Value = serde_json::from_str(&out).unwrap();
    P {
        host: host.into(),
        name: name.into(),
        netns: v["netns"].as_str().unwrap().into(),
        v4: v["ip"].as_str().unwrap().parse().unwrap(),
    }
}

fn enter(netns: &str) {
    let f = weft_netlink::open_netns(std::path::Path::new(&format!("/run/netns/{netns}"))).unwrap();
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// An echo server on TCP `port` in `pod`, until the flag is set.
fn echo_server(pod: &P, port: u16) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, netns) = (stop.clone(), pod.netns.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&netns);
        let l = TcpListener::bind(("::", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !s.load(Ordering::SeqCst) {
            if let Ok((mut c, _)) = l.accept() {
                std::thread::spawn(move || {
                    let mut b = [0u8; 256];
                    while let Ok(n) = c.read(&mut b) {
                        if n == 0 || c.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    stop
}

/// A TCP connection from inside `from` (it stays in that namespace after the thread ends).
fn connect(from: &P, to: SocketAddr, wait: Duration) -> Option<TcpStream> {
    let netns = from.netns.clone();
    std::thread::spawn(move || {
        enter(&netns);
        TcpStream::connect_timeout(&to, wait).ok()
    })
    .join()
    .unwrap()
}

/// Sends a line and waits for its echo.
fn echoes(s: &mut TcpStream, line: &str) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(line.as_bytes()).is_err() {
        return false;
    }
    let mut b = vec![0u8; line.len()];
    s.read_exact(&mut b).is_ok() && b == line.as_bytes()
}

/// Sends a megabyte in 4 KiB pieces, each read back from the echo before the next.
fn bulk_echoes(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let piece: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; piece.len()];
    (0..256)
        .all(|_| s.write_all(&piece).is_ok() && s.read_exact(&mut back).is_ok() && back == piece)
}

/// Polls until `f` holds; the time it took.
/// Object records a host holds as its own that another node wrote (copies it made so
/// that an object outlives its writer), from the agent's `objects.json`.
fn copies_held(lab: &Lab, host: &str) -> usize {
    let path = format!("/run/weft-lab/{}/{host}/agent/objects.json", lab.name);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return 0;
    };
    let v: Value = serde_json::from_str(&text).expect("objects.json");
    let records = v["records"].as_array().cloned().unwrap_or_default();
    records
        .iter()
        .filter(|r| {
            let Some(bytes) = r["value"].as_array() else {
                return false; // deleted
            };
            let raw: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().map(|b| b as u8))
                .collect();
            let obj: Value = serde_json::from_slice(&raw).unwrap_or_default();
            obj["stamp"]["node"] != r["owner"]
        })
        .count()
}

fn until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Whether a host's policy table is hooked in (None: it has none).
fn hooked(lab: &Lab, host: &str) -> Option<bool> {
    let (ok, text) = lab.exec(host, &["nft", "list", "table", "inet", "weft_policy"]);
    let head: String = text.lines().take(3).collect::<Vec<_>>().join("\n");
    ok.then(|| !head.contains("flags dormant"))
}

/// The test's policy `b/friends-only`: s admits these peers (a YAML flow list's items).
fn friends_only(from: &str) -> String {
    format!(
        "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {{name: friends-only, namespace: b}}
spec:
  podSelector: {{matchLabels: {{app: s}}}}
  ingress:
  - from: [{from}]
"
    )
}

fn apply(lab: &Lab, host: &str, yaml: &str) {
    common::truth::apply(lab, host, yaml, false);
}

fn ping_log(lab: &Lab, host: &str, name: &str) -> String {
    let path = format!("/run/weft-lab/{}/{host}/{name}.log", lab.name);
    let mut text = String::new();
    until(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        text.contains("packet loss")
    });
    text
}

#[test]
fn a_pod_is_isolated_from_its_first_packet_and_its_allow_rules_follow() {
    if !root_or_skip("a_pod_is_isolated_from_its_first_packet_and_its_allow_rules_follow") {
        return;
    }
    let lab = Lab::up("pol3", 3, "mesh");
    let srv = start(&lab, "h2", "srv", "open", &["app=srv"], &[]);
    let _echo = echo_server(&srv, 80);
    let other = start(&lab, "h3", "other", "open", &[], &[]);
    // Routes between the hosts' new blocks first: what follows is about policy only.
    let _probe = start(&lab, "h1", "probe", "open", &[], &[]);
    for to in [other.v4, srv.v4] {
        let ok = until(Duration::from_secs(20), || {
            lab.exec("h1/probe", &["ping", "-c", "1", "-W", "1", &to.to_string()])
                .0
        });
        assert!(ok.is_some(), "h1 never reached {to}");
    }
    // In namespace "locked" everything is denied both ways, except egress to srv on TCP
    // 80; srv lets in only pods of "locked" labelled app=client.
    apply(
        &lab,
        "h1",
        "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: lock, namespace: locked}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: open}}, podSelector: {matchLabels: {app: srv}}}]
    ports: [{port: 80}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: srv-in, namespace: open}
spec:
  podSelector: {matchLabels: {app: srv}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: locked}}, podSelector: {matchLabels: {app: client}}}]
",
    );
    // h1 and h3 have no isolated pod yet: their policy tables are there (srv on h2 is
    // isolated) but hooked out; the ADDs below hook them in before their answers.
    for host in ["h1", "h3"] {
        assert!(
            until(Duration::from_secs(10), || hooked(&lab, host)
                == Some(false))
            .is_some(),
            "{host}'s policy table was not hooked out with no isolated pod there: {:?}",
            hooked(&lab, host)
        );
    }
    assert_eq!(hooked(&lab, "h2"), Some(true), "srv's host must enforce");
    // Egress at the first instant: the pod's own first packets (a ping started by the
    // runtime right after ADD) go nowhere; the same ping from an unisolated pod arrives.
    let to = other.v4.to_string();
    start(
        &lab,
        "h1",
        "first",
        "locked",
        &["app=client"],
        &["ping", "-c", "1", "-W", "2", &to],
    );
    let log = ping_log(&lab, "h1", "first");
    assert!(
        log.contains("0 packets received") || log.contains(" 0 received"),
        "an isolated pod's first ping got through: {log}"
    );
    assert_eq!(hooked(&lab, "h1"), Some(true), "h1 isolates a pod now");
    start(
        &lab,
        "h1",
        "control",
        "open",
        &[],
        &["ping", "-c", "1", "-W", "2", &to],
    );
    let log = ping_log(&lab, "h1", "control");
    assert!(
        log.contains("1 packets received") || log.contains(" 1 received"),
        "the control pod's ping did not arrive, so the check above proves nothing: {log}"
    );
    // Ingress at the first instant: pinged the moment its ADD returned.
    let fresh = start(&lab, "h3", "fresh", "locked", &["app=client"], &[]);
    let (ok, t) = lab.exec(
        "h3/other",
        &["ping", "-c", "1", "-W", "2", &fresh.v4.to_string()],
    );
    assert!(!ok, "a freshly isolated pod answered a ping: {t}");
    let open = start(&lab, "h3", "fresh2", "open", &[], &[]);
    let (ok, t) = lab.exec(
        "h3/other",
        &["ping", "-c", "1", "-W", "2", &open.v4.to_string()],
    );
    assert!(
        ok,
        "a fresh unisolated pod did not answer, so the check above proves nothing: {t}"
    );
    // The allow rules follow: srv on h2 lets the new client in once h2 knows it.
    let cl = start(&lab, "h1", "cl", "locked", &["app=client"], &[]);
    let took = until(Duration::from_secs(10), || {
        connect(&cl, SocketAddr::new(srv.v4, 80), Duration::from_millis(300)).is_some()
    })
    .expect("the new client never reached srv: its allow rules did not follow");
    eprintln!(
        "policy: a new pod's allow rules took {} ms after its ADD returned to reach another host",
        took.as_millis()
    );
    // ... and nothing else is allowed: not to other, not on another port.
    assert!(connect(
        &cl,
        SocketAddr::new(other.v4, 80),
        Duration::from_millis(500)
    )
    .is_none());
    assert!(connect(&cl, SocketAddr::new(srv.v4, 81), Duration::from_millis(500)).is_none());
}

#[test]
fn policies_reach_every_host_cut_forbidden_connections_explain_drops_and_survive_restarts() {
    if !root_or_skip(
        "policies_reach_every_host_cut_forbidden_connections_explain_drops_and_survive_restarts",
    ) {
        return;
    }
    let lab = Lab::up("pol4", 3, "mesh");
    let s = start(&lab, "h3", "s", "b", &["app=s"], &[]);
    let _echo = echo_server(&s, 81);
    let c = start(&lab, "h1", "c", "a", &[], &[]);
    let f = start(&lab, "h2", "f", "a", &["role=friend"], &[]);
    // A friend on s's own host: its packets to s and s's to it both pass the fast path
    // of h3 once their connection is promoted (docs/policy.md, "Established connections").
    // On a port of its own: s answers port 81 to a client outside the pools below (a
    // hostPort), which sends every packet to s:81 to the stack from then on.
    let n = start(&lab, "h3", "n", "a", &["role=friend"], &[]);
    let _echo2 = echo_server(&s, 82);
    let to = SocketAddr::new(s.v4, 81);
    // Routes between the hosts' new blocks first.
    let mut first = None;
    until(Duration::from_secs(20), || {
        first = connect(&c, to, Duration::from_millis(500));
        first.is_some()
    });
    let mut conn_c = first.expect("c connects before any policy");
    let mut conn_f = connect(&f, to, Duration::from_secs(3)).expect("f connects before any policy");
    assert!(echoes(&mut conn_c, "c1\n") && echoes(&mut conn_f, "f1\n"));

    // Applied on h1; s lives on h3: it takes effect there.
    let t0 = Instant::now();
    apply(
        &lab,
        "h1",
        &friends_only("{namespaceSelector: {}, podSelector: {matchLabels: {role: friend}}}"),
    );
    until(Duration::from_secs(10), || {
        connect(&c, to, Duration::from_millis(200)).is_none()
    })
    .expect("the policy applied on h1 never took effect on h3");
    eprintln!(
        "policy: applied on h1 (weft apply started), enforced on h3 after {} ms",
        t0.elapsed().as_millis()
    );
    // The established connection the policy forbids is cut; the allowed one goes on.
    let cut = until(Duration::from_secs(5), || !echoes(&mut conn_c, "c2\n"));
    assert!(
        cut.is_some(),
        "c's established connection still works under a policy that forbids it"
    );
    assert!(
        echoes(&mut conn_f, "f2\n"),
        "f's allowed connection was cut"
    );
    assert!(
        connect(&f, to, Duration::from_secs(2)).is_some(),
        "a new connection from f is refused"
    );

    // weft flows on h3 names the policy and why.
    let flows = until(Duration::from_secs(5), || {
        let (ok, out) = lab.exec("h3", &["weft", "flows", "--dropped", "--json"]);
        ok && out.contains("a/c") && out.contains("b/friends-only")
    });
    let (_, out) = lab.exec("h3", &["weft", "flows", "--dropped"]);
    assert!(
        flows.is_some(),
        "no explained drop of a/c in weft flows on h3:\n{out}"
    );
    assert!(
        out.contains("ingress of b/s")
            && out.contains("is isolated by b/friends-only and none of them allows a/c"),
        "{out}"
    );
    let (ok, status) = lab.exec("h3", &["weft", "status", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&status).unwrap();
    assert!(
        v["policy"]["dropped_ingress"].as_u64().unwrap_or(0) > 0,
        "{}",
        v["policy"]
    );
    assert_eq!(v["policy"]["isolated"], 1, "{}", v["policy"]);
    // And Prometheus sees the same.
    let (ok, metrics) = lab.exec("h3", &["curl", "-s", "127.0.0.1:6782/metrics"]);
    assert!(ok, "{metrics}");
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("weft_policy_dropped_packets_total{direction=\"ingress\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "no ingress drops in the metrics:\n{metrics}");
    assert!(
        metrics.contains("weft_policy_isolated_endpoints 1"),
        "{metrics}"
    );
    // weft policy check says the same.
    let (allowed, out) = lab.exec(
        "h2",
        &[
            "weft", "policy", "check", "--from", "a/c", "--to", "b/s", "--port", "81",
        ],
    );
    assert!(
        !allowed && out.contains("isolated by b/friends-only"),
        "{out}"
    );

    // Pods that no policy isolates keep the fast path: c -> f passes no FORWARD hook,
    // while the isolated s's packets were left to the stack.
    let pod = |p: &P| dp::Pod {
        host: p.host.clone(),
        name: p.name.clone(),
        ip: p.v4.to_string(),
        ip6: None,
    };
    dp::fast_path_attached(&lab, &c.host);
    assert_eq!(dp::forward_hook_sees(&lab, &pod(&c), &pod(&f)), 0);
    let st = dp::status(&lab, "h3");
    assert!(
        st["dataplane"]["fast_path"]["counters"]["policy"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{}",
        st["dataplane"]["fast_path"]
    );

    // Every agent restarts (stopped all at once, the kernel enforces meanwhile).
    for h in ["h1", "h2", "h3"] {
        dp::agent(&lab, h, "stop");
    }
    assert!(
        connect(&c, to, Duration::from_millis(500)).is_none(),
        "with the agents stopped, c got in"
    );
    assert!(
        echoes(&mut conn_f, "f3\n"),
        "f's connection died with the agents"
    );
    for h in ["h1", "h2", "h3"] {
        dp::agent(&lab, h, "start");
    }
    for h in ["h1", "h2", "h3"] {
        let ok = until(Duration::from_secs(20), || {
            let (ok, out) = lab.exec(h, &["weft", "get", "networkpolicies"]);
            ok && out.contains("friends-only")
        });
        assert!(ok.is_some(), "{h} lost the policy across the restart");
    }
    assert!(
        connect(&c, to, Duration::from_millis(500)).is_none(),
        "after the restarts, c got in"
    );
    assert!(
        connect(&f, to, Duration::from_secs(2)).is_some(),
        "after the restarts, f is refused"
    );
    assert!(
        echoes(&mut conn_f, "f4\n"),
        "f's connection died across the restarts"
    );
    // Nobody wrote the policy again while its writer was up: a restarted agent sees every
    // other node down until its peers are heard from (3 s after the first connection),
    // and decides nothing before. With h1, the writer, stopped, the lowest node up keeps
    // it (writes it again); once h1 is back, that copy is dropped.
    std::thread::sleep(Duration::from_secs(6));
    for h in ["h1", "h2", "h3"] {
        assert_eq!(
            copies_held(&lab, h),
            0,
            "{h} wrote again objects whose writer is up"
        );
    }
    dp::agent(&lab, "h1", "stop");
    let others = || copies_held(&lab, "h2") + copies_held(&lab, "h3");
    assert!(
        until(Duration::from_secs(30), || others() > 0).is_some(),
        "with its writer stopped, no host kept the policy"
    );
    dp::agent(&lab, "h1", "start");
    assert!(
        until(Duration::from_secs(30), || others() == 0).is_some(),
        "the copies stayed after the writer came back"
    );

    // A connection opened under the policy is tracked from its first packet; when a
    // change no longer allows it, the agent deletes its conntrack entry and its next
    // packets are judged again: cut. So is one that reached s through a hostPort-style
    // DNAT on h3 (judged by its destination after DNAT, as `forward` sees it), from h2's
    // own namespace, which the policy allows by address until the change. h3's own
    // connection to s is never judged (a pod and its node are never kept apart).
    apply(
        &lab,
        "h2",
        &friends_only("{namespaceSelector: {}, podSelector: {matchLabels: {role: friend}}}, {ipBlock: {cidr: 172.30.0.0/24}}"),
    );
    // (Masqueraded when s reaches itself by it, as portmap and kube-proxy do.)
    let dnat = format!(
        "add rule ip hostport pre tcp dport 8181 dnat to {}:81",
        s.v4
    );
    let hairpin = format!(
        "add rule ip hostport post ip saddr {0} ip daddr {0} masquerade",
        s.v4
    );
    for cmd in [
        "add table ip hostport",
        "add chain ip hostport pre { type nat hook prerouting priority dstnat; }",
        "add chain ip hostport post { type nat hook postrouting priority srcnat; }",
        &dnat,
        &hairpin,
    ] {
        let (ok, out) = lab.exec("h3", &["nft", cmd]);
        assert!(ok, "nft {cmd}: {out}");
    }
    let host = |h: &str| P {
        host: h.into(),
        name: h.into(),
        netns: format!("weft-{}-{h}", lab.name),
        v4: dp::host_underlay(&lab, h).parse().unwrap(),
    };
    let (h2, h3) = (host("h2"), host("h3"));
    let via_hostport = SocketAddr::new(h3.v4, 8181);
    let mut conn_hp = None;
    until(Duration::from_secs(10), || {
        conn_hp = connect(&h2, via_hostport, Duration::from_millis(500));
        conn_hp.is_some()
    });
    let mut conn_hp = conn_hp.expect("h2 reaches s through h3's DNAT under the policy");
    let mut conn_h = connect(&h3, to, Duration::from_secs(2)).expect("h3 reaches its pod s");
    let mut conn_f2 = connect(&f, to, Duration::from_secs(2)).expect("f connects under the policy");
    let to82 = SocketAddr::new(s.v4, 82);
    let mut conn_n =
        connect(&n, to82, Duration::from_secs(2)).expect("n connects under the policy");
    assert!(echoes(&mut conn_f2, "g1\n") && echoes(&mut conn_n, "n1\n"));
    // Established under the policy, n's connection is promoted to h3's fast path: a
    // megabyte each way goes through, and the fast path counts the segments it forwarded
    // into s and back.
    let counters = || dp::status(&lab, "h3")["dataplane"]["fast_path"]["counters"].clone();
    let before = counters()["established"].as_u64().unwrap_or(0);
    assert!(bulk_echoes(&mut conn_n));
    assert!(
        until(Duration::from_secs(5), || {
            echoes(&mut conn_n, "n2\n")
                && counters()["established"].as_u64().unwrap_or(0) > before + 400
        })
        .is_some(),
        "h3's fast path forwarded no promoted segment of n and s: {}",
        counters()
    );
    assert!(echoes(&mut conn_hp, "p1\n") && echoes(&mut conn_h, "h1\n"));
    // An allowed connection is logged once, with the rule that allows it: also one-way
    // UDP, which conntrack keeps `new` (unanswered) so that every datagram passes the
    // rules.
    let (netns, dst) = (f.netns.clone(), SocketAddr::new(s.v4, 9999));
    let sport = std::thread::spawn(move || {
        enter(&netns);
        let u = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..20 {
            u.send_to(b"x", dst).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        u.local_addr().unwrap().port()
    })
    .join()
    .unwrap();
    let udp_rows = || {
        let (_, out) = lab.exec("h3", &["weft", "flows", "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        (v.as_array().cloned().unwrap_or_default().into_iter())
            .filter(|r| r["protocol"] == "UDP" && r["sport"] == sport)
            .collect::<Vec<_>>()
    };
    until(Duration::from_secs(3), || !udp_rows().is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let rows = udp_rows();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["verdict"], "allowed");
    assert_eq!(rows[0]["direction"], "ingress");
    assert_eq!(rows[0]["policy"], "b/friends-only");
    assert!(
        rows[0]["reason"] == "allowed by b/friends-only (ingress rule 0)",
        "{rows:#?}"
    );
    let (allowed, out) = lab.exec(
        "h3",
        &[
            "weft",
            "policy",
            "check",
            "--from",
            &h3.v4.to_string(),
            "--to",
            "b/s",
            "--port",
            "81",
        ],
    );
    assert!(allowed && out.contains("own node"), "{out}");
    apply(
        &lab,
        "h2",
        &friends_only("{namespaceSelector: {}, podSelector: {matchLabels: {role: best-friend}}}"),
    );
    let cut = until(Duration::from_secs(5), || !echoes(&mut conn_f2, "g2\n"));
    assert!(
        cut.is_some(),
        "f's tracked connection still works under a policy that no longer allows it"
    );
    // n's connection never crosses h3's stack once promoted: the change withdraws the
    // promotion, and its packets are judged again.
    assert!(
        until(Duration::from_secs(5), || !echoes(&mut conn_n, "n3\n")).is_some(),
        "n's promoted connection still works under a policy that no longer allows it: {}",
        counters()
    );
    assert!(
        until(Duration::from_secs(5), || !echoes(&mut conn_hp, "p2\n")).is_some(),
        "the connection through h3's DNAT still works under a policy that no longer allows it"
    );
    assert!(
        echoes(&mut conn_h, "h2\n"),
        "h3's own connection to its pod was cut"
    );
    // A pod never blocks itself: s, which the policy does not admit, reaches itself
    // through h3's DNAT (its packets cross `forward` from s to s).
    let mut conn_self = connect(&s, via_hostport, Duration::from_secs(2))
        .expect("s cannot reach itself through its hostPort");
    assert!(echoes(&mut conn_self, "s1\n"));
    let v: Value = serde_json::from_str(&lab.exec("h3", &["weft", "status", "--json"]).1).unwrap();
    assert!(
        v["policy"]["connections_cut"].as_u64().unwrap_or(0) > 0,
        "{}",
        v["policy"]
    );

    // Deleted on h2: c gets in again. h3's table goes with the last policy, and its drop
    // counters with it: weft status still counts the drops.
    let drops = |lab: &Lab| {
        let v: Value = serde_json::from_str(&lab.exec("h3", &["weft", "status", "--json"]).1)
            .unwrap_or_default();
        v["policy"]["dropped_ingress"].as_u64().unwrap_or(0)
    };
    let drops_before = drops(&lab);
    assert!(drops_before > 0);
    common::truth::apply(
        &lab,
        "h2",
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: friends-only, namespace: b}\nspec:\n  podSelector: {}\n",
        true,
    );
    assert!(
        until(Duration::from_secs(10), || connect(
            &c,
            to,
            Duration::from_millis(300)
        )
        .is_some())
        .is_some(),
        "after the policy was deleted, c is still refused"
    );
    let (table, _) = lab.exec("h3", &["nft", "list", "table", "inet", "weft_policy"]);
    assert!(!table, "h3 kept its policy table with no policy left");
    assert!(
        drops(&lab) >= drops_before,
        "{} < {drops_before}",
        drops(&lab)
    );

    // podman's names are unique per host only: a second a/c, on h2, makes the name
    // ambiguous, and `weft label` says so rather than relabelling both pods.
    start(&lab, "h2", "c", "a", &[], &[]);
    let (ok, out) = lab.exec("h3", &["weft", "label", "-n", "a", "c", "x=y"]);
    assert!(
        !ok && out.contains("a/c names 2 pods") && out.contains("--node"),
        "{out}"
    );
    let (ok, out) = lab.exec(
        "h3",
        &["weft", "label", "-n", "a", "c", "x=y", "--node", "h1"],
    );
    assert!(ok && out.contains("labelled: x=y"), "{out}");
    let (_, out) = lab.exec("h3", &["weft", "get", "endpoints", "-n", "a", "--json"]);
    let eps: Value = serde_json::from_str(&out).unwrap();
    let labelled: Vec<&str> = (eps["endpoints"].as_array().unwrap().iter())
        .filter(|e| e["name"] == "c" && e["labels"]["x"] == "y")
        .map(|e| e["node"].as_str().unwrap())
        .collect();
    assert_eq!(labelled, ["h1"], "{out}");
}
