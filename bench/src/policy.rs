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
//! The pod-to-pod throughput and latency through N rules is `weft-bench dataplane`'s
//! business (its policy rows).

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
}

/// `N` policies in namespace `b` selecting `app=server`, each letting in pods labelled
/// `role=other-I` on port 10000+I, and last (`zz-allow`) one letting `role=client` in on
/// every port: a packet of the client passes every other rule first.
pub fn policies_yaml(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n.saturating_sub(1) {
        s.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p-{i:05}, namespace: b}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{role: other-{i}}}}}}}]\n    ports: [{{port: {}}}]\n",
            10000 + i
        ));
    }
    if n > 0 {
        s.push_str("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: zz-allow, namespace: b}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]\n");
    }
    s
}

fn weft(weft: &Path, args: &[&str], limit: Duration) -> Result<String, String> {
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
struct Lab<'a> {
    weft: &'a Path,
    name: &'static str,
}

impl<'a> Lab<'a> {
    fn up(weft: &'a Path, name: &'static str, hosts: usize) -> Result<Lab<'a>, String> {
        let lab = Lab { weft, name };
        let _ = lab.down();
        let h = hosts.to_string();
        self::weft(
            weft,
            &["lab", "up", "--name", name, "--hosts", &h],
            Duration::from_secs(120),
        )?;
        Ok(lab)
    }

    fn down(&self) -> Result<String, String> {
        weft(
            self.weft,
            &["lab", "down", "--name", self.name],
            Duration::from_secs(120),
        )
    }

    fn exec(&self, target: &str, cmd: &[&str], limit: Duration) -> Result<String, String> {
        let mut args = vec!["lab", "exec", "--name", self.name, target, "--"];
        args.extend_from_slice(cmd);
        weft(self.weft, &args, limit)
    }

    fn run(&self, host: &str, pod: &str, ns: &str, label: &str) -> Result<String, String> {
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

/// Programming N policies: on the host of the isolated pod, and until another host's
/// apply is enforced there.
fn programming(o: &Opts) -> Result<(), String> {
    let lab = Lab::up(&o.weft, "bpolp", 2)?;
    let server = lab.run("h2", "server", "b", "app=server")?;
    lab.run("h1", "client", "a", "role=client")?;
    let _srv = lab.exec(
        "h2/server",
        &[
            "sh",
            "-c",
            "busybox nc -ll -p 9999 -e true </dev/null >/dev/null 2>&1 &",
        ],
        Duration::from_secs(5),
    );
    wait_until(Duration::from_secs(30), || {
        connects(&lab, "h1/client", &server, 9999)
    })
    .ok_or("the client never reached the server's port 9999 without policy")?;
    let yaml = policies_yaml(o.policies);
    // On h1: the server (on h2) must be isolated by them; the client's port 9999 is
    // not allowed... (zz-allow lets role=client in on every port, so probe with a pod
    // that no rule allows).
    lab.run("h1", "stranger", "a", "role=stranger")?;
    wait_until(Duration::from_secs(30), || {
        connects(&lab, "h1/stranger", &server, 9999)
    })
    .ok_or("the stranger never reached the server before the policies")?;
    let t0 = Instant::now();
    let local = lab.apply("h1", &yaml)?;
    let remote = wait_until(Duration::from_secs(120), || {
        !connects(&lab, "h1/stranger", &server, 9999)
    })
    .ok_or("h2 never enforced the policies applied on h1")?;
    let enforced = t0.elapsed();
    let _ = remote;
    let allowed = connects(&lab, "h1/client", &server, 9999);
    println!(
        "| `weft apply` of {} policies on h1 (returns once h1 applied them) | {:.0} ms |",
        o.policies,
        local.as_secs_f64() * 1000.0
    );
    println!(
        "| the same, until h2 drops a stranger's connection to its isolated pod (probes 1 s apart at most) | {:.0} ms |",
        enforced.as_secs_f64() * 1000.0
    );
    println!(
        "| the client, allowed by the last of the {} policies, still connects | {} |",
        o.policies,
        if allowed { "yes" } else { "NO" }
    );
    // Programming them again from nothing on the isolated pod's own host.
    let t = Instant::now();
    let delete_path = format!("/run/weft-lab/{}/bench-policies.yaml", lab.name);
    lab.exec(
        "h2",
        &["weft", "delete", "-f", &delete_path],
        Duration::from_secs(300),
    )?;
    let del = t.elapsed();
    let again = lab.apply("h2", &yaml)?;
    println!(
        "| `weft delete` of the {} policies on h2, the isolated pod's host | {:.0} ms |",
        o.policies,
        del.as_secs_f64() * 1000.0
    );
    println!(
        "| `weft apply` of them again on h2 (compiled and programmed there before it returns) | {:.0} ms |",
        again.as_secs_f64() * 1000.0
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

fn pct(v: &mut [Duration], q: f64) -> Duration {
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
            label: format!("{} policies, pods they isolate", o.policies),
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
                let host = weft_netlink::open_netns(Path::new(&weft_lab::sys::netns_path(
                    &format!("weft-{}-h1", lab.name),
                )))
                .map_err(|e| e.to_string())?;
                nix::sched::setns(&host, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("enter the lab host: {e}"))?;
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
    Ok(())
}

/// `weft-bench policy`.
pub fn policy(o: &Opts) -> Result<(), String> {
    println!(
        "Programming {} policies (2-host lab; the isolated pod on h2)\n",
        o.policies
    );
    println!("| measure | value |");
    println!("|---|---|");
    programming(o)?;
    adds(o)
}
