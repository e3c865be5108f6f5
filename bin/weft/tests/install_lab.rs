//! `weft install` on every host of a lab, each into a root of its own, and each agent
//! started from what was installed as systemd would start it: the unit's `ExecStart`, run
//! with that root as `/` (a chroot in the host's namespace, with the system's programs
//! and libraries bound in, and the unit's runtime and state directories made). The hosts
//! join into one cluster and carry container traffic, through the installed network
//! config (its socket and data paths seen from outside the root).

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOSTS: usize = 3;

fn wait_for(what: &str, mut f: impl FnMut() -> bool, diag: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("gave up waiting for: {what}\n{}", diag());
}

/// The words of the unit's `ExecStart=`.
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has ExecStart");
    line.split_whitespace().map(String::from).collect()
}

/// Starts the installed agent of `host` as systemd would: the unit's command, in the
/// host's network namespace, with `root` as `/`. `ip netns exec` gives the command a
/// mount namespace of its own, so the binds below vanish with the agent.
fn start_installed(lab: &Lab, host: &str, root: &Path, log: &Path) -> Agent {
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/weft-agent.service")).unwrap();
    let cmd = exec_start(&unit).join(" ");
    let r = root.display();
    let script = format!(
        "set -e
        for d in usr/bin usr/sbin usr/lib usr/lib64 usr/libexec usr/share; do
          [ -d /$d ] || continue; mkdir -p {r}/$d; mount --bind /$d {r}/$d
        done
        for l in bin sbin lib lib64; do
          if [ -L /$l ]; then ln -sfn \"$(readlink /$l)\" {r}/$l
          elif [ -d /$l ]; then mkdir -p {r}/$l; mount --bind /$l {r}/$l; fi
        done
        for d in proc sys dev; do mkdir -p {r}/$d; mount --rbind /$d {r}/$d; done
        # RuntimeDirectory=weft and StateDirectory=weft
        mkdir -p {r}/run/weft {r}/var/lib/weft
        exec chroot {r} {cmd}"
    );
    let logf = std::fs::File::create(log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.host_ns(host), "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .unwrap();
    Agent {
        child,
        socket: root.join("run/weft/weft.sock").display().to_string(),
        log: log.display().to_string(),
    }
}

fn status(a: &Agent) -> Option<serde_json::Value> {
    let out = weft(&["status", "--socket", &a.socket, "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn peers_up(a: &Agent) -> usize {
    status(a).map_or(0, |s| {
        s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"] == "up")
            .count()
    })
}

#[test]
fn installed_hosts_join_and_carry_container_traffic() {
    if !root_or_skip("installed_hosts_join_and_carry_container_traffic") {
        return;
    }
    let lab = Lab::up_args("inst", HOSTS, "mesh", &["--no-agents"]);
    let dir = PathBuf::from(format!("/run/weft-lab/{}", lab.name));
    let secret = dir.join("cluster.secret");
    weft_ok(&["secret", "new", "--out", secret.to_str().unwrap()]);
    let roots: Vec<PathBuf> = (1..=HOSTS)
        .map(|i| dir.join(format!("root-h{i}")))
        .collect();
    let mut agents = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        let (n, host) = (i + 1, format!("h{}", i + 1));
        std::fs::create_dir_all(root).unwrap();
        // Each host joins through the one before it (h1 through h2); the three found the
        // cluster together. The advertised address is detected on the host.
        let peer = format!("172.30.0.{}", if n == 1 { 2 } else { n - 1 });
        let (ok, out) = lab.exec(
            &host,
            &[
                WEFT,
                "install",
                "--root",
                root.to_str().unwrap(),
                "--name",
                &host,
                "--peer",
                &peer,
                "--ipam-init",
                &HOSTS.to_string(),
                "--secret-file",
                secret.to_str().unwrap(),
            ],
        );
        assert!(ok, "install on {host}: {out}");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("etc/weft/agent.json")).unwrap())
                .unwrap();
        assert_eq!(
            config["advertise"],
            format!("172.30.0.{n}:6783"),
            "detected"
        );
        agents.push(start_installed(
            &lab,
            &host,
            root,
            &dir.join(format!("agent-h{n}.log")),
        ));
    }
    let diag = || {
        agents
            .iter()
            .map(|a| {
                let log = std::fs::read_to_string(&a.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "{}:\n  {}",
                    a.log,
                    lines[lines.len().saturating_sub(8)..].join("\n  ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    wait_for(
        "every installed agent sees the others up",
        || agents.iter().all(|a| peers_up(a) == HOSTS - 1),
        diag,
    );

    // Containers attached with the installed network config, as seen from outside the
    // roots: the plugin asks the installed agent of its host for addresses.
    let mut addrs = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        let host = format!("h{}", i + 1);
        let text = std::fs::read_to_string(root.join("etc/cni/net.d/weft.conflist")).unwrap();
        let mut conf: serde_json::Value = serde_json::from_str(&text).unwrap();
        conf["plugins"][0]["agentSocket"] =
            root.join("run/weft/weft.sock").display().to_string().into();
        conf["plugins"][0]["dataDir"] = root.join("var/lib/weft").display().to_string().into();
        let conflist = dir.join(format!("installed-{host}.conflist"));
        std::fs::write(&conflist, conf.to_string()).unwrap();
        let c = format!("c{}", i + 1);
        let out = weft_ok(&[
            "lab",
            "run",
            "--name",
            &lab.name,
            "--conflist",
            conflist.to_str().unwrap(),
            "--json",
            &host,
            &c,
            "--",
            "busybox",
            "nc",
            "-ll",
            "-p",
            "80",
            "-e",
            "echo",
            &format!("hello from {host}"),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        addrs.push(v["ip"].as_str().expect("an address").to_string());
    }
    for (i, from) in (1..=HOSTS).enumerate() {
        for (j, to) in addrs.iter().enumerate() {
            if i == j {
                continue;
            }
            let want = format!("hello from h{}", j + 1);
            let target = format!("h{from}/c{from}");
            wait_for(
                &format!("h{from}/c{from} reaches {to} on h{}", j + 1),
                || {
                    let (_, out) = lab.exec(&target, &["busybox", "nc", "-w", "2", to, "80"]);
                    out.contains(&want)
                },
                diag,
            );
        }
    }

    // The agents keep their state where the unit says: the root's /var/lib/weft.
    for root in &roots {
        assert!(
            root.join("var/lib/weft/ipam.json").exists(),
            "{}",
            root.display()
        );
    }

    // Stopped, the roots uninstall cleanly: the installed files go.
    for a in agents.drain(..) {
        drop(a);
    }
    for root in &roots {
        let out = weft_ok(&["uninstall", "--root", root.to_str().unwrap(), "--purge"]);
        assert!(out.contains("removed /usr/local/bin/weft"), "{out}");
        for p in [
            "usr/local/bin/weft",
            "etc/weft",
            "opt/cni/bin/weft",
            "var/lib/weft",
        ] {
            assert!(!root.join(p).exists(), "{p} is still there");
        }
    }
}
