//! Helpers of the data plane lab tests: containers serving a page, a big file and a CGI
//! that answers the address it saw, on every host; every container checking every other
//! over each family it has; routes and status of a host.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::*;

pub const BIG: usize = 2 * 1024 * 1024;

pub struct Pod {
    pub host: String,
    pub name: String,
    /// Its IPv4 address (its first).
    pub ip: String,
    /// Its IPv6 address, with dual-stack pools.
    pub ip6: Option<String>,
}

/// The directory every httpd serves (inside the lab's directory, so `lab down` removes it).
pub fn www(lab: &Lab) -> String {
    let dir = format!("/run/weft-lab/{}/www", lab.name);
    std::fs::create_dir_all(format!("{dir}/cgi-bin")).unwrap();
    std::fs::write(format!("{dir}/index.html"), "weft-ok\n").unwrap();
    std::fs::write(format!("{dir}/big"), vec![b'x'; BIG]).unwrap();
    let cgi = format!("{dir}/cgi-bin/ip");
    std::fs::write(
        &cgi,
        // httpd listens dual-stack: "[::ffff:10.32.0.1]" becomes "10.32.0.1".
        "#!/bin/sh\na=${REMOTE_ADDR#[}; a=${a%]}; a=${a#::ffff:}\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$a\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `weft lab run HOST NAME -- CMD`: the container's address.
pub fn run(lab: &Lab, host: &str, name: &str, cmd: &[&str]) -> String {
    run_with(lab, host, name, None, cmd)
}

/// `weft lab run HOST NAME [--conflist F] -- CMD`: the container's (first) address.
pub fn run_with(lab: &Lab, host: &str, name: &str, conflist: Option<&str>, cmd: &[&str]) -> String {
    let mut args = vec!["lab", "run", "--name", &lab.name];
    if let Some(c) = conflist {
        args.extend(["--conflist", c]);
    }
    args.extend([host, name, "--"]);
    args.extend_from_slice(cmd);
    let out = weft_ok(&args);
    out.split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// Two containers per host, each serving `www` on port 8000 (both families).
pub fn pods(lab: &Lab, hosts: usize, www: &str) -> Vec<Pod> {
    let mut v = Vec::new();
    for h in 1..=hosts {
        for c in ["c1", "c2"] {
            let host = format!("h{h}");
            let out = weft_ok(&[
                "lab", "run", "--name", &lab.name, "--json", &host, c, "--", "busybox", "httpd",
                "-f", "-p", "8000", "-h", www,
            ]);
            let st: serde_json::Value = serde_json::from_str(&out).unwrap();
            let ips: Vec<String> = st["ips"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let ip = ips.first().cloned().unwrap_or_default();
            assert!(
                ip.parse::<std::net::Ipv4Addr>().is_ok(),
                "{host}/{c}: {out}"
            );
            let ip6 = ips.iter().find(|a| a.contains(':')).cloned();
            v.push(Pod {
                host,
                name: c.into(),
                ip,
                ip6,
            });
        }
    }
    v
}

/// The shell script run in one container against all the others: prints one `FAIL` line
/// per failed check, nothing else. A ping gets a second packet when the first goes
/// unanswered: one packet lost on a loaded machine is not a broken path, a path that
/// loses both is reported.
pub fn script(src: &Pod, pods: &[Pod]) -> String {
    let mut s = String::from("MTU=$(cat /sys/class/net/eth0/mtu)\n");
    for d in pods
        .iter()
        .filter(|d| !(d.host == src.host && d.name == src.name))
    {
        let to = format!("{}/{}", d.host, d.name);
        let mut families = vec![("", d.ip.clone(), d.ip.clone(), src.ip.clone(), 28)];
        if let (Some(d6), Some(s6)) = (&d.ip6, &src.ip6) {
            families.push(("-6", d6.clone(), format!("[{d6}]"), s6.clone(), 48));
        }
        for (flag, ip, host, src_ip, headers) in families {
            let fam = if flag.is_empty() { "IPv4" } else { "IPv6" };
            s.push_str(&format!(
                "p() {{ ping {flag} -c1 -W2 -q \"$@\" {ip} || ping {flag} -c1 -W2 -q \"$@\" {ip}; }}\n\
                 p >/dev/null 2>&1 || echo 'FAIL {fam} ping {to}'\n\
                 p -M do -s $((MTU-{headers})) >/dev/null 2>&1 || echo \"FAIL {fam} full-size ($MTU) ping {to}\"\n\
                 r=$(curl -s -m 3 http://{host}:8000/cgi-bin/ip 2>&1); [ \"$r\" = '{src_ip}' ] || echo \"FAIL {fam} tcp {to}: seen as '$r', not {src_ip}\"\n\
                 n=$(curl -s -m 5 http://{host}:8000/big 2>/dev/null | wc -c); [ \"$n\" = {BIG} ] || echo \"FAIL {fam} transfer {to}: $n bytes\"\n",
            ));
        }
    }
    s
}

/// Runs every container's checks; the failures, empty when all passed.
pub fn failures(lab: &Lab, pods: &[Pod]) -> Vec<String> {
    let mut out = Vec::new();
    for p in pods {
        let target = format!("{}/{}", p.host, p.name);
        let (ok, text) = lab.exec(&target, &["sh", "-c", &script(p, pods)]);
        if !ok {
            out.push(format!("{target}: the checks did not run: {text}"));
        }
        out.extend(
            text.lines()
                .filter(|l| l.starts_with("FAIL"))
                .map(|l| format!("{target}: {l}")),
        );
    }
    out
}

/// Every container reaches every other: retried until the data plane has converged
/// (bounded), then asserted. A round of checks on a loaded machine can itself take most
/// of the deadline, so at least three rounds are run before a failure counts; a failure
/// is reported with what the first round saw.
pub fn all_reach_all(lab: &Lab, pods: &[Pod]) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut first: Option<Vec<String>> = None;
    for round in 1.. {
        let f = failures(lab, pods);
        if f.is_empty() {
            return;
        }
        if round >= 3 && Instant::now() > deadline {
            let (_, st) = lab.exec("h1", &["ip", "route"]);
            let first = first.unwrap_or_default();
            panic!(
                "{} failed checks in round {round}:\n{}\n{} in the first round:\n{}\nh1 routes:\n{st}",
                f.len(),
                f.join("\n"),
                first.len(),
                first.join("\n")
            );
        }
        first.get_or_insert(f);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Each container fetches the outside's CGI: it must see the container's host's underlay
/// address (masquerade). The outside has no route to the pools, so only NAT can answer.
/// Over IPv6 when `outside` is an IPv6 address: then the container's host's IPv6 underlay
/// address must be seen.
pub fn nat_to_outside(lab: &Lab, pods: &[Pod], www: &str, outside: &str) {
    let (_, listening) = lab.exec("out", &["ss", "-ltn"]);
    if !listening.contains(":8000") {
        let (ok, text) = lab.exec("out", &["busybox", "httpd", "-p", "8000", "-h", www]);
        assert!(ok, "httpd in out: {text}");
    }
    let v6 = outside.contains(':');
    for fam in ["-4", "-6"] {
        let (_, routes) = lab.exec("out", &["ip", fam, "route"]);
        assert!(
            !routes.contains("10.32.") && !routes.contains("fd32:"),
            "the outside must not route the pools: {routes}"
        );
    }
    for p in pods {
        let underlay = if v6 {
            host_underlay6(lab, &p.host)
        } else {
            host_underlay(lab, &p.host)
        };
        let target = format!("{}/{}", p.host, p.name);
        let url = if v6 {
            format!("http://[{outside}]:8000/cgi-bin/ip")
        } else {
            format!("http://{outside}:8000/cgi-bin/ip")
        };
        let seen = wait_for(Duration::from_secs(10), || {
            let (ok, t) = lab.exec(&target, &["curl", "-s", "-m", "3", &url]);
            (ok && t.trim() == underlay).then_some(t)
        });
        assert!(
            seen.is_some(),
            "{target} ({}) did not reach the outside as {underlay}",
            p.ip
        );
    }
}

/// With `--nat off` no host has a weft nftables table (weft turns on no connection
/// tracking) and a container's request never comes back from the outside, which has no
/// route to the pools.
pub fn no_nat(lab: &Lab, pods: &[Pod], www: &str, outside: &str) {
    let (ok, text) = lab.exec("out", &["busybox", "httpd", "-p", "8000", "-h", www]);
    assert!(ok, "httpd in out: {text}");
    let url = format!("http://{outside}:8000/cgi-bin/ip");
    // The same request from a host succeeds, so a failure below is the missing NAT.
    let (ok, text) = lab.exec("h1", &["curl", "-s", "-m", "3", &url]);
    assert!(ok, "h1 must reach the outside itself: {text}");
    // One container per host (a refused answer takes the whole timeout).
    let mut seen = std::collections::BTreeSet::new();
    for p in pods.iter().filter(|p| seen.insert(p.host.clone())) {
        let (_, tables) = lab.exec(&p.host, &["nft", "list", "tables"]);
        assert!(
            !tables.contains("weft"),
            "{}: no weft table without NAT: {tables}",
            p.host
        );
        let target = format!("{}/{}", p.host, p.name);
        let (ok, text) = lab.exec(&target, &["curl", "-s", "-m", "2", &url]);
        assert!(!ok, "{target} reached the outside without NAT: {text}");
    }
}

/// The global IPv6 address of `host`'s `eth0`.
pub fn host_underlay6(lab: &Lab, host: &str) -> String {
    let (_, t) = lab.exec(
        host,
        &[
            "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
        ],
    );
    t.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_string()
}

pub fn host_underlay(lab: &Lab, host: &str) -> String {
    let (_, t) = lab.exec(host, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    t.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_string()
}

pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The weft routes of a host (`proto 119` with a gateway), one per line, sorted.
pub fn weft_routes(lab: &Lab, host: &str) -> Vec<String> {
    let (_, t) = lab.exec(host, &["ip", "route", "show", "proto", "119"]);
    let mut v: Vec<String> = t
        .lines()
        .filter(|l| l.contains(" via "))
        .map(|l| l.trim().to_string())
        .collect();
    v.sort();
    v
}

pub fn status(lab: &Lab, host: &str) -> serde_json::Value {
    let sock = format!("/run/weft-lab/{}/{host}/weft.sock", lab.name);
    let (ok, t) = lab.exec(host, &[WEFT, "status", "--json", "--socket", &sock]);
    assert!(ok, "weft status on {host}: {t}");
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("status json: {e}: {t}"))
}

/// The data plane routes of `host`'s status: (destination, mode, via host name).
pub fn dp_routes(lab: &Lab, host: &str) -> Vec<(String, String, String)> {
    let s = status(lab, host);
    s["dataplane"]["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or_default().to_string(),
                r["mode"].as_str().unwrap_or_default().to_string(),
                r["via_name"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

/// Waits until the routes `host`'s fast path follows without a FIB lookup are exactly
/// its data plane's routes through the underlay and `weft.vx` (`PREFIX via GATEWAY`; the
/// gateway of a VXLAN route is the peer's VTEP, which the status does not list, so those
/// compare by prefix), and returns them; panics with both lists if they do not agree
/// within 5 s.
pub fn fast_routes_follow(lab: &Lab, host: &str) -> Vec<String> {
    let both = || {
        let s = status(lab, host);
        let vxlan: Vec<String> = s["dataplane"]["routes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|r| r["mode"] == "vxlan")
            .filter_map(|r| r["dst"].as_str().map(str::to_string))
            .collect();
        let shown = |r: String| match r.split(' ').next() {
            Some(p) if vxlan.iter().any(|v| v == p) => p.to_string(),
            _ => r,
        };
        let mut fast: Vec<String> = s["dataplane"]["fast_path"]["routes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.as_str().filter(|r| r.contains(" via ")))
            .map(|r| shown(r.to_string()))
            .collect();
        let mut dp: Vec<String> = s["dataplane"]["routes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|r| r["mode"] == "route" || r["mode"] == "vxlan")
            .map(|r| {
                let dst = r["dst"].as_str().unwrap_or_default();
                shown(format!(
                    "{dst} via {}",
                    r["via"].as_str().unwrap_or_default()
                ))
            })
            .collect();
        fast.sort();
        dp.sort();
        (fast, dp)
    };
    let same = wait_for(Duration::from_secs(5), || {
        let (fast, dp) = both();
        (fast == dp).then_some(fast)
    });
    same.unwrap_or_else(|| {
        panic!(
            "{host}: the fast path's routes and weft's differ: {:?}",
            both()
        )
    })
}

/// The route of `ip` in `host`'s status (its JSON object): the longest match, as the
/// kernel picks (with encryption the pools' catch-all holds every address too).
fn route_of(lab: &Lab, host: &str, ip: &str) -> Option<serde_json::Value> {
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let s = status(lab, host);
    s["dataplane"]["routes"]
        .as_array()?
        .iter()
        .filter_map(|r| {
            let net: ipnet::IpNet = r["dst"].as_str()?.parse().ok()?;
            net.contains(&ip).then_some((net.prefix_len(), r))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, r)| r.clone())
}

/// The route of `ip` in `host`'s data plane routes, with its mode and next hop.
pub fn route_to(lab: &Lab, host: &str, ip: &str) -> Option<(String, String)> {
    let r = route_of(lab, host, ip)?;
    Some((
        r["mode"].as_str().unwrap_or_default().to_string(),
        r["via_name"].as_str().unwrap_or("?").to_string(),
    ))
}

/// Whose block holds `ip`, as `host`'s status names it (its route's `owner`): the other
/// end of a relayed route, not the relay.
pub fn route_owner(lab: &Lab, host: &str, ip: &str) -> Option<String> {
    route_of(lab, host, ip)?["owner"].as_str().map(String::from)
}

/// How many of 3 pings from `src` to `dst` the netfilter FORWARD hook of `src`'s host saw:
/// a counting chain of the test's own, in the lab host's namespace, made and removed here.
/// The fast path forwards a container's packets itself (0); the kernel's stack passes
/// every one through FORWARD (3).
pub fn forward_hook_sees(lab: &Lab, src: &Pod, dst: &Pod) -> u64 {
    forward_probe(lab, &src.host, src, dst, false)
}

/// As [`forward_hook_sees`], over IPv6.
pub fn forward_hook_sees6(lab: &Lab, src: &Pod, dst: &Pod) -> u64 {
    forward_probe(lab, &src.host, src, dst, true)
}

/// As [`forward_hook_sees`] (over IPv6 when `v6`), at the FORWARD hook of `dst`'s host:
/// in route mode the fast path at the underlay's ingress delivers into the container past
/// it (0).
pub fn receiver_forward_hook_sees(lab: &Lab, src: &Pod, dst: &Pod, v6: bool) -> u64 {
    forward_probe(lab, &dst.host, src, dst, v6)
}

/// The same probe of `host`'s FORWARD hook, pinging from `src` to `dst`.
fn forward_probe(lab: &Lab, host: &str, src: &Pod, dst: &Pod, v6: bool) -> u64 {
    let (from, to, fam, icmp, flag) = if v6 {
        let (s, d) = (src.ip6.as_deref().unwrap(), dst.ip6.as_deref().unwrap());
        (s, d, "ip6", "icmpv6", "-6")
    } else {
        (src.ip.as_str(), dst.ip.as_str(), "ip", "icmp", "-4")
    };
    let rule = format!(
        "nft add table {fam} weftprobe && \
         nft add chain {fam} weftprobe probe '{{ type filter hook forward priority 0; }}' && \
         nft add rule {fam} weftprobe probe {fam} saddr {from} {fam} daddr {to} {icmp} type echo-request counter"
    );
    let (ok, t) = lab.exec(host, &["sh", "-c", &rule]);
    assert!(ok, "{host}: the probe table: {t}");
    let target = format!("{}/{}", src.host, src.name);
    let (ok, t) = lab.exec(
        &target,
        &["ping", flag, "-c", "3", "-i", "0.2", "-W", "2", to],
    );
    let (_, list) = lab.exec(host, &["nft", "list", "chain", fam, "weftprobe", "probe"]);
    let (gone, g) = lab.exec(host, &["nft", "delete", "table", fam, "weftprobe"]);
    assert!(gone, "{host}: removing the probe table: {g}");
    assert!(ok, "{target} -> {to}: {t}");
    list.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {list}"))
}

/// `host`'s fast path is attached at its underlay's ingress: its status names the data
/// plane's underlay device there.
pub fn underlay_attached(lab: &Lab, host: &str) {
    let d = &status(lab, host)["dataplane"];
    let attached = d["fast_path"]["underlay"].as_str().unwrap_or("-");
    let underlay = d["underlay"].as_str().unwrap_or_default();
    assert!(underlay.starts_with(&format!("{attached} ")), "{host}: {d}");
}

/// The fast path runs on every host of `pods`, is attached to weft.vx and each
/// container's veth, and carries the pods' traffic: once it is attached everywhere, every
/// pod reaches every other again, until packets of `kinds` (`egress`: forwarded out of a
/// host; `peer`: delivered into a container) are counted on every host. The traffic
/// before is not enough: a veth is enabled a tick or two after its ADD, and with routes
/// that are there at once the pods may all have talked before that.
pub fn fast_path_carried(lab: &Lab, pods: &[Pod], kinds: &[&str]) {
    let hosts: BTreeSet<&str> = pods.iter().map(|p| p.host.as_str()).collect();
    for host in &hosts {
        fast_path_attached(lab, host);
    }
    let missing = || -> Vec<String> {
        let mut m = Vec::new();
        for host in &hosts {
            let f = status(lab, host)["dataplane"]["fast_path"].clone();
            let devices = f["devices"].as_array().map(|d| d.len()).unwrap_or(0);
            if f["state"] != "on" || devices < 3 {
                m.push(format!(
                    "{host}: not on weft.vx and two container veths: {f}"
                ));
            }
            for k in kinds {
                if f["counters"][k].as_u64().unwrap_or(0) == 0 {
                    m.push(format!("{host}: no {k} packets: {f}"));
                }
            }
        }
        m
    };
    let done = wait_for(Duration::from_secs(20), || {
        all_reach_all(lab, pods);
        missing().is_empty().then_some(())
    });
    assert!(done.is_some(), "{}", missing().join("\n"));
}

pub fn agent(lab: &Lab, host: &str, action: &str) {
    weft_ok(&["lab", "agent", "--name", &lab.name, host, action]);
}

/// A long-lived TCP connection h1/cli -> h2/srv (over IPv6 when `v6`): the client's nc
/// reads from a FIFO this test writes to, the server's nc writes what it receives to its
/// log. A line sent after `between` ran (agent restarts, say) arrives only if the same
/// connection still works (nc does not reconnect); exactly one connection is seen. Both
/// ends read from FIFOs this test holds open (read and write: opening never blocks, and
/// no end of file comes early): busybox nc ends the connection when its input ends.
pub fn long_connection_survives(lab: &Lab, v6: bool, between: impl FnOnce()) {
    let dir = format!("/run/weft-lab/{}", lab.name);
    let fifo = |name: &str| {
        let path = format!("{dir}/{name}");
        let (ok, t) = sh("mkfifo", &[&path]);
        assert!(ok, "mkfifo: {t}");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (path, f)
    };
    let (hold, _hold) = fifo("hold");
    let (feed_path, mut feed) = fifo("feed");
    let out = weft_ok(&[
        "lab",
        "run",
        "--name",
        &lab.name,
        "--json",
        "h2",
        "srv",
        "--",
        "sh",
        "-c",
        &format!("exec busybox nc -l -p 7001 < {hold}"),
    ]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    let srv = st["ips"][usize::from(v6)]
        .as_str()
        .unwrap_or_else(|| panic!("srv has no such address: {out}"))
        .to_string();
    let listening = wait_for(Duration::from_secs(10), || {
        let (_, t) = lab.exec("h2/srv", &["ss", "-ltn"]);
        t.contains(":7001").then_some(())
    });
    assert!(listening.is_some(), "nc did not listen in h2/srv");
    run(
        lab,
        "h1",
        "cli",
        &[
            "sh",
            "-c",
            &format!("exec busybox nc {srv} 7001 < {feed_path}"),
        ],
    );
    let log = format!("{dir}/h2/srv.log");
    let received = |word: &str| {
        wait_for(Duration::from_secs(15), || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains(word))
                .map(|_| ())
        })
        .is_some()
    };
    use std::io::Write;
    feed.write_all(b"before-restart\n").unwrap();
    assert!(
        received("before-restart"),
        "the long connection to {srv} did not start"
    );
    between();
    feed.write_all(b"after-restart\n").unwrap();
    assert!(
        received("after-restart"),
        "the connection to {srv} broke: {:?}",
        std::fs::read_to_string(&log)
    );
    let (_, conns) = lab.exec("h2/srv", &["ss", "-tn", "state", "established"]);
    assert_eq!(
        conns.lines().filter(|l| l.contains(":7001")).count(),
        1,
        "one connection, the first one: {conns}"
    );
}

/// Waits (up to 20 s) until `host`'s fast path is attached to every weft container veth
/// there, or has left it to the stack for a qdisc of someone else's: the agent attaches to
/// a new container's veth from the second tick that sees it (docs/dataplane.md, "Fast
/// path"), so a test that counts what the program did waits for it first.
pub fn fast_path_attached(lab: &Lab, host: &str) {
    let veths = || -> Vec<String> {
        let (ok, t) = lab.exec(host, &["ip", "-j", "link", "show", "type", "veth"]);
        assert!(ok, "{host}: ip link: {t}");
        let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|l| {
                l["ifalias"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("weft:"))
            })
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .collect()
    };
    let done = wait_for(Duration::from_secs(20), || {
        let f = status(lab, host)["dataplane"]["fast_path"].clone();
        let listed = |k: &str| -> Vec<String> {
            f[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        };
        let (devices, shaped) = (listed("devices"), listed("shaped"));
        (f["state"] == "on"
            && veths()
                .iter()
                .all(|v| devices.contains(v) || shaped.contains(v)))
        .then_some(())
    });
    assert!(
        done.is_some(),
        "{host}: the fast path did not attach to every container veth: {} (veths {:?})",
        status(lab, host)["dataplane"]["fast_path"],
        veths()
    );
}
