//! `weft-bench policy`: what network policy costs (docs/policy.md), measured beside the
//! same thing without policy in one run.
//!
//! - Programming: the time `weft apply` of N policies takes on a host (parse, records,
//!   compile, one `nft` transaction), and until another host enforces them (a probe
//!   connection to a port they leave closed is dropped there).
//! - CNI ADD latency with N policies present beside none: two one-host labs (agents with
//!   cluster IPAM), the weft plugin called directly as a runtime would, alternating
//!   between the labs pod by pod; the pods are selected by the policies (each ADD
//!   isolates its pod before it returns) or not.
//!
//! - Traffic through 100 and 1000 policies beside none: throughput and TCP
//!   request/response on one lab, to three servers that differ only in what isolates them
//!   (bench/src/policy_traffic.rs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `weft-bench policy`.
pub struct Opts {
    /// The weft binary (absolute).
    pub weft: PathBuf,
    /// Policies to program.
    pub policies: usize,
    /// Pods per lab in the ADD measurement.
    pub pods: usize,
    /// Hosts of the programming lab, each with an isolated pod (0: not measured).
    pub hosts: usize,
    /// The traffic measurement (0 rounds: not made).
    pub traffic: crate::policy_traffic::Opts,
}

/// `N` policies in namespace `b` selecting `app=server`, each letting in the addresses of
/// its own /24 of 100.64.0.0/10 (which no pod has) on port 10000+I, and last (`zz-allow`)
/// one letting `role=client` of any namespace in on every port: a packet of the client
/// passes every other rule first (rules whose peers match nothing would be left out of
/// the compiled chains, hence address blocks).
pub fn policies_yaml(n: usize) -> String {
    policies_yaml_in(n, "b")
}

/// [`policies_yaml`]'s set in namespace `ns`.
pub(crate) fn policies_yaml_in(n: usize, ns: &str) -> String {
    let mut s = String::new();
    for i in 0..n.saturating_sub(1) {
        s.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p-{i:05}, namespace: {ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 100.{}.{}.0/24}}}}]\n    ports: [{{port: {}}}]\n",
            64 + i / 256 % 64,
            i % 256,
            10000 + i % 50000
        ));
    }
    if n > 0 {
        s.push_str(&format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: zz-allow, namespace: {ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{role: client}}}}}}]\n"));
    }
    s
}

pub(crate) fn weft(weft: &Path, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut child = Command::new(weft)
        .args(args)
        .env_remove("CNI_COMMAND")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run weft: {e}"))?;
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            return if st.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                Err(format!(
                    "weft {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            };
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "weft {} took over {} s",
                args.join(" "),
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A lab taken down when dropped.
pub(crate) struct Lab<'a> {
    weft: &'a Path,
    pub(crate) name: &'static str,
}

impl<'a> Lab<'a> {
    pub(crate) fn up(weft: &'a Path, name: &'static str, hosts: usize) -> Result<Lab<'a>, String> {
        Lab::up_with(weft, name, hosts, &[])
    }

    /// [`Lab::up`] with more `weft lab up` arguments (`--mode route`, say).
    pub(crate) fn up_with(
        weft: &'a Path,
        name: &'static str,
        hosts: usize,
        more: &[&str],
    ) -> Result<Lab<'a>, String> {
        let lab = Lab { weft, name };
        let _ = lab.down();
        let h = hosts.to_string();
        let mut args = vec![
            "lab",
            "up",
            "--name",
            name,
            "--hosts",
            &h,
            "--topology",
            "mesh",
        ];
        args.extend_from_slice(more);
        self::weft(weft, &args, Duration::from_secs(300))?;
        Ok(lab)
    }

    fn down(&self) -> Result<String, String> {
        weft(
            self.weft,
            &["lab", "down", "--name", self.name],
            Duration::from_secs(120),
        )
    }

    pub(crate) fn exec(
        &self,
        target: &str,
        cmd: &[&str],
        limit: Duration,
    ) -> Result<String, String> {
        let mut args = vec!["lab", "exec", "--name", self.name, target, "--"];
        args.extend_from_slice(cmd);
        weft(self.weft, &args, limit)
    }

    pub(crate) fn run(
        &self,
        host: &str,
        pod: &str,
        ns: &str,
        label: &str,
    ) -> Result<String, String> {
        let out = weft(
            self.weft,
            &[
                "lab",
                "run",
                "--name",
                self.name,
                "--json",
                "--namespace",
                ns,
                "--label",
                label,
                host,
                pod,
            ],
            Duration::from_secs(60),
        )?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        v["ip"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| "no address".into())
    }

    fn apply(&self, host: &str, yaml: &str) -> Result<Duration, String> {
        let path = format!("/run/weft-lab/{}/bench-policies.yaml", self.name);
        std::fs::write(&path, yaml).map_err(|e| e.to_string())?;
        let t = Instant::now();
        self.exec(
            host,
            &["weft", "apply", "-f", &path],
            Duration::from_secs(300),
        )?;
        Ok(t.elapsed())
    }
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("policy: {e}");
        }
    }
}

/// Whether `from` (HOST/POD) connects to ADDR:PORT within a second.
fn connects(lab: &Lab, from: &str, addr: &str, port: u16) -> bool {
    let cmd = format!("busybox nc -w 1 {addr} {port} </dev/null >/dev/null");
    lab.exec(from, &["sh", "-c", &cmd], Duration::from_secs(5))
        .is_ok()
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Moves this thread into the network namespace of the lab's container HOST-POD (setns
/// acts on the calling thread only).
pub(crate) fn enter(lab: &str, pod: &str) -> Result<(), String> {
    let ns = weft_netlink::open_netns(Path::new(&weft_lab::sys::netns_path(&format!(
        "weft-{lab}-{pod}"
    ))))
    .map_err(|e| e.to_string())?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("enter {pod}: {e}"))
}

/// Whether a TCP connection to ADDR:PORT from this thread's namespace is accepted within
/// `limit`; a probe costs no process, so twenty of them do not load the lab's hosts.
/// Probes that wait for a connection use `ALLOW_PROBE`, shorter than the kernel's first
/// SYN retransmission (1 s): a probe whose SYN was dropped fails then and the next one
/// starts, instead of the retransmission making every measurement a whole second.
fn tcp_probe(addr: &str, port: u16, limit: Duration) -> bool {
    match addr.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::TcpStream::connect_timeout(&std::net::SocketAddr::new(ip, port), limit)
            .is_ok(),
        Err(_) => false,
    }
}

/// How long a probe that waits for a drop gives a connection (a slow accept is not a drop).
const DROP_PROBE: Duration = Duration::from_secs(1);

/// How long a probe that waits for a connection gives it (see `tcp_probe`).
const ALLOW_PROBE: Duration = Duration::from_millis(250);

/// Programming N policies: applied on h1, until every host enforces them on its isolated
/// pod; then again on the isolated pod's own host.
fn programming(o: &Opts) -> Result<(), String> {
    let lab = Lab::up(&o.weft, "bpolp", o.hosts)?;
    let hosts: Vec<String> = (1..=o.hosts).map(|k| format!("h{k}")).collect();
    let mut servers = Vec::new();
    for h in &hosts {
        let ip = lab.run(h, "server", "b", "app=server")?;
        lab.exec(
            &format!("{h}/server"),
            &[
                "sh",
                "-c",
                "busybox nc -ll -p 9999 -e true </dev/null >/dev/null 2>&1 &",
            ],
            Duration::from_secs(5),
        )?;
        servers.push(ip);
    }
    lab.run("h1", "client", "a", "role=client")?;
    lab.run("h1", "stranger", "a", "role=stranger")?;
    for (h, ip) in hosts.iter().zip(&servers) {
        wait_until(Duration::from_secs(60), || {
            connects(&lab, "h1/stranger", ip, 9999)
        })
        .ok_or_else(|| format!("h1's stranger never reached {h}'s server before the policies"))?;
    }
    let yaml = policies_yaml(o.policies);
    // Every host's isolated pod is probed from h1's stranger (which no rule allows), one
    // prober thread per host inside the stranger's namespace, 50 ms between probes; a host
    // enforces by the start of its first probe that fails (a dropped probe takes its 1 s
    // timeout to fail; its start bounds the time, the timeout does not count). Then the
    // client (let in by the last policy) is probed until it connects again: until then a
    // host has not programmed the whole set.
    let t0 = Instant::now();
    let limit = Duration::from_secs(120);
    let (local, enforced) = std::thread::scope(|sc| {
        let probers: Vec<_> = hosts
            .iter()
            .zip(&servers)
            .map(|(h, ip)| {
                let name = lab.name;
                sc.spawn(move || -> Result<(Duration, Duration), String> {
                    enter(name, "h1-stranger")?;
                    let dropped = loop {
                        let at = Instant::now();
                        if !tcp_probe(ip, 9999, DROP_PROBE) {
                            break at.saturating_duration_since(t0);
                        }
                        if t0.elapsed() > limit {
                            return Err(format!("{h} never enforced the policies applied on h1"));
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    };
                    enter(name, "h1-client")?;
                    let allowed = loop {
                        if tcp_probe(ip, 9999, ALLOW_PROBE) {
                            break t0.elapsed();
                        }
                        if t0.elapsed() > limit {
                            return Err(format!(
                                "{h} never let the client in after the policies applied on h1"
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    };
                    Ok((dropped, allowed))
                })
            })
            .collect();
        let local = lab.apply("h1", &yaml);
        let enforced: Vec<Result<(Duration, Duration), String>> = probers
            .into_iter()
            .map(|p| p.join().unwrap_or_else(|_| Err("a prober panicked".into())))
            .collect();
        (local, enforced)
    });
    let local = local?;
    let times = enforced.into_iter().collect::<Result<Vec<_>, _>>()?;
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!(
        "| `weft apply` of {} policies on h1 (returns once h1 applied them) | {} |",
        o.policies,
        ms(local)
    );
    println!(
        "| until h1 drops a stranger's connection to its own isolated pod / lets the client in | {} / {} |",
        ms(times[0].0),
        ms(times[0].1)
    );
    let mut dropped: Vec<Duration> = times[1..].iter().map(|t| t.0).collect();
    let mut allowed: Vec<Duration> = times[1..].iter().map(|t| t.1).collect();
    dropped.sort();
    allowed.sort();
    if let (Some(d), Some(a)) = (dropped.last(), allowed.last()) {
        println!(
            "| until the other {} hosts drop the stranger: median / slowest host | {} / {} |",
            dropped.len(),
            ms(dropped[dropped.len() / 2]),
            ms(*d)
        );
        println!(
            "| until the other {} hosts let the client in through the last policy (all {} programmed): median / slowest host | {} / {} |",
            allowed.len(),
            o.policies,
            ms(allowed[allowed.len() / 2]),
            ms(*a)
        );
    }
    // One policy changed on h1 among the thousand: `zz-allow` deleted (every host drops
    // the client), then applied again (every host lets it in). From a steady state: the
    // hosts that programmed the thousand last are still saving and indexing for a few
    // seconds after they let the client in, which is the programming's cost, not the
    // change's.
    std::thread::sleep(Duration::from_secs(5));
    let one = policies_yaml(o.policies);
    let zz = one
        .split("---\n")
        .find(|d| d.contains("zz-allow"))
        .map(|d| format!("---\n{d}"))
        .ok_or("no zz-allow policy")?;
    let zz_path = format!("/run/weft-lab/{}/bench-zz.yaml", lab.name);
    std::fs::write(&zz_path, &zz).map_err(|e| e.to_string())?;
    for (verb, want) in [("delete", false), ("apply", true)] {
        let t0 = Instant::now();
        let times = std::thread::scope(|sc| {
            let probers: Vec<_> = servers
                .iter()
                .map(|ip| {
                    let name = lab.name;
                    sc.spawn(move || -> Result<Duration, String> {
                        enter(name, "h1-client")?;
                        loop {
                            let at = Instant::now();
                            let wait = if want { ALLOW_PROBE } else { DROP_PROBE };
                            if tcp_probe(ip, 9999, wait) == want {
                                // A drop is known at its probe's start, a connection at
                                // its end.
                                return Ok(if want {
                                    t0.elapsed()
                                } else {
                                    at.saturating_duration_since(t0)
                                });
                            }
                            if t0.elapsed() > limit {
                                return Err(format!(
                                    "{ip}: `weft {verb}` of zz-allow never took effect"
                                ));
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    })
                })
                .collect();
            let r = lab.exec(
                "h1",
                &["weft", verb, "-f", &zz_path],
                Duration::from_secs(60),
            );
            let t: Vec<Result<Duration, String>> = probers
                .into_iter()
                .map(|p| p.join().unwrap_or_else(|_| Err("a prober panicked".into())))
                .collect();
            r.map(|_| t)
        })?;
        let mut t = times.into_iter().collect::<Result<Vec<_>, _>>()?;
        t.sort();
        println!(
            "| one policy of the {} changed on h1 (`weft {verb}` of zz-allow): until every one of the {} hosts {} the client: median / slowest host | {} / {} |",
            o.policies,
            o.hosts,
            if want { "lets in" } else { "drops" },
            ms(t[t.len() / 2]),
            ms(t[t.len() - 1])
        );
    }
    // Programming them again from nothing on an isolated pod's own host.
    let prog = hosts.last().ok_or("no hosts")?;
    let t = Instant::now();
    let delete_path = format!("/run/weft-lab/{}/bench-policies.yaml", lab.name);
    lab.exec(
        prog,
        &["weft", "delete", "-f", &delete_path],
        Duration::from_secs(300),
    )?;
    let del = t.elapsed();
    let again = lab.apply(prog, &yaml)?;
    println!(
        "| `weft delete` of the {} policies on {prog}, an isolated pod's host | {} |",
        o.policies,
        ms(del)
    );
    println!(
        "| `weft apply` of them again on {prog} (compiled and programmed there before it returns) | {} |",
        ms(again)
    );
    Ok(())
}

struct Adds {
    label: String,
    times: Vec<Duration>,
}

/// One CNI ADD of pod `id` in namespace `ns` labelled `label`, on the lab's h1 (this
/// process is inside its namespace); its wall time. DEL follows, not counted.
fn add_del(weft: &Path, lab: &str, id: &str, ns: &str, label: &str) -> Result<Duration, String> {
    let netns = format!("weft-{lab}-x{id}");
    weft_lab::sys::run("ip", &["netns", "add", &netns]).map_err(|e| e.0)?;
    let conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": "weft", "type": "weft",
        "agentSocket": weft_lab::agent_socket(lab, "h1"),
        "dataDir": weft_lab::host_dir(lab, "h1").join("data"),
        "args": {"cni": {"labels": [{"key": label.split('=').next().unwrap_or("app"), "value": label.split('=').nth(1).unwrap_or("")}]}},
    })
    .to_string();
    let run = |cmd: &str| -> Result<Duration, String> {
        let t = Instant::now();
        let mut child = Command::new(weft)
            .env_clear()
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", format!("bench-{id}"))
            .env("CNI_NETNS", format!("/run/netns/{netns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", weft_lab::SYSTEM_CNI_DIR)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME=p{id}"),
            )
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "weft {cmd} {id}: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
        Ok(t.elapsed())
    };
    let t = run("ADD");
    let d = run("DEL");
    let _ = weft_lab::sys::run("ip", &["netns", "del", &netns]);
    let t = t?;
    d?;
    Ok(t)
}

pub(crate) fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// CNI ADD latency with policies and without.
fn adds(o: &Opts) -> Result<(), String> {
    let none = Lab::up(&o.weft, "bpola", 1)?;
    let many = Lab::up(&o.weft, "bpolb", 1)?;
    many.apply("h1", &policies_yaml(o.policies))?;
    // Both agents' IPAM ready: one pod each.
    for lab in [&none, &many] {
        wait_until(Duration::from_secs(60), || {
            lab.run("h1", "warm", "a", "x=y").is_ok()
        })
        .ok_or("the agent's IPAM never became ready")?;
    }
    let home = std::fs::File::open("/proc/self/ns/net").map_err(|e| e.to_string())?;
    // The first pod the policies isolate makes its group's chains (a compile that runs
    // `nft` over the 1000 policies): timed once, then a resident pod of that group stays,
    // as a deployment's other replicas do, and the rows measure pods joining it.
    let in_lab = |lab: &Lab, id: &str| -> Result<Duration, String> {
        enter(lab.name, "h1")?;
        let t = add_del(&o.weft, lab.name, id, "b", "app=server");
        nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("return: {e}"))?;
        t
    };
    let first = in_lab(&many, "first")?;
    many.run("h1", "resident", "b", "app=server")?;
    let mut rows = [
        Adds {
            label: "no policy".into(),
            times: vec![],
        },
        Adds {
            label: format!("{} policies, pods they do not select", o.policies),
            times: vec![],
        },
        Adds {
            label: format!(
                "{} policies, pods they isolate (their group has a member)",
                o.policies
            ),
            times: vec![],
        },
    ];
    let res = (|| -> Result<(), String> {
        for i in 0..o.pods {
            for (k, (lab, ns, label)) in [
                (&none, "b", "app=server"),
                (&many, "a", "app=server"),
                (&many, "b", "app=server"),
            ]
            .into_iter()
            .enumerate()
            {
                enter(lab.name, "h1")?;
                let t = add_del(&o.weft, lab.name, &format!("{k}{i}"), ns, label);
                nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("return: {e}"))?;
                rows[k].times.push(t?);
            }
        }
        Ok(())
    })();
    nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("return to the original namespace: {e}"))?;
    res?;
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    let (mut b50, mut b99) = (Duration::ZERO, Duration::ZERO);
    println!();
    println!(
        "CNI ADD latency, {} pods per row, one-host labs with cluster IPAM, the rows alternating pod by pod\n",
        o.pods
    );
    println!("| pods | ADD p50 | ADD p99 | p50 / no policy | p99 / no policy |");
    println!("|---|---|---|---|---|");
    for (k, r) in rows.iter_mut().enumerate() {
        let (p50, p99) = (pct(&mut r.times, 0.5), pct(&mut r.times, 0.99));
        if k == 0 {
            (b50, b99) = (p50, p99);
        }
        println!(
            "| {} | {} | {} | {:.2} | {:.2} |",
            r.label,
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / b50.as_secs_f64(),
            p99.as_secs_f64() / b99.as_secs_f64()
        );
    }
    println!(
        "\nThe first pod of a group no pod had before (its chains made by a compile that runs \
         `nft` over the {} policies): ADD {}.",
        o.policies,
        ms(first)
    );
    Ok(())
}

/// `weft-bench policy`.
pub fn policy(o: &Opts) -> Result<(), String> {
    if o.hosts > 0 {
        println!(
            "Programming {} policies ({}-host mesh lab, an isolated pod on every host, probed \
             from a pod on h1 that no rule allows)\n",
            o.policies, o.hosts
        );
        println!("| measure | value |");
        println!("|---|---|");
        programming(o)?;
    }
    if o.pods > 0 {
        adds(o)?;
    }
    if o.traffic.rounds > 0 {
        crate::policy_traffic::traffic(&o.weft, &o.traffic)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_policy::k8s::{parse_objects, Object};

    /// The sets the benchmarks apply parse as weft apply reads them: N policies in the
    /// namespace asked for, every one selecting `app=server` and isolating for ingress, the
    /// allowing one last.
    #[test]
    fn the_policy_sets_parse_in_their_namespace() {
        for (n, ns) in [(1, "b"), (100, "c"), (1000, "b")] {
            let objs = parse_objects(&policies_yaml_in(n, ns), "default").expect("parses");
            assert_eq!(objs.len(), n);
            let names: Vec<String> = objs
                .iter()
                .map(|o| match o {
                    Object::NetworkPolicy(p) => {
                        assert_eq!(p.namespace, ns);
                        assert!(p.ingress_isolates && !p.egress_isolates);
                        assert_eq!(p.ingress.len(), 1);
                        p.name.clone()
                    }
                    Object::Namespace(_) => panic!("a namespace in the set"),
                })
                .collect();
            assert_eq!(names.last().map(String::as_str), Some("zz-allow"));
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), n, "names are distinct");
        }
        assert_eq!(policies_yaml(10), policies_yaml_in(10, "b"));
        assert!(policies_yaml_in(0, "b").is_empty());
    }
}
