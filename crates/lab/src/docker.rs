//! A dockerd per lab host (`weft lab docker HOST -- ARGS...`).
//!
//! Each host's dockerd runs in the host's network namespace and in a mount namespace of its
//! own, with everything it keeps under `/run/weft-lab/LAB/HOST/docker` (D):
//!
//! - `D/data` and `D/exec`: its data and exec roots (images, containers, its containerd's
//!   state, the containers' network namespaces, all mounted in its private mount
//!   namespace only);
//! - `D/docker.sock`: its API, `D/docker.pid`, `D/dockerd.log` (dockerd's and its
//!   containerd's output), `D/daemon.json` (instead of the machine's
//!   `/etc/docker/daemon.json`: only where the key is), `D/key.json` (dockerd's identity);
//! - `D/plugins`: shown to this dockerd as `/run/docker/plugins`, the directory every
//!   dockerd looks for plugin sockets in; the host's agent serves `weft.sock` there, so
//!   `docker network create -d weft` on a host finds that host's agent;
//! - `D/containerd`: shown as `/run/containerd`, so that no dockerd uses a containerd of the
//!   machine's and the shims' sockets (`/run/containerd/s/...`) stay in D.
//!
//! dockerd runs with `--bridge=none --iptables=false --ip6tables=false`: it makes no link,
//! address or rule of its own (only networks created with a driver do), `--live-restore`,
//! `--dns 169.254.1.1` (weft's name service; Docker's embedded resolver forwards names it
//! does not know there), the cgroupfs driver and the cgroup parent `/weft-lab-LAB-HOST`
//! for its containers. Its own process tree (dockerd, containerd, the shims) lives in the
//! cgroup `weft-lab-LAB-HOST-d`, which it is put in before it starts. The two cgroups find
//! every process a host's docker started, also after a crash: [`stop_dockerd`] removes the
//! containers through dockerd when it answers, stops it, then kills whatever is left in
//! the cgroups and removes them.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::agents::{alive, log_tail};
use crate::{host_dir, require_root, sys, LabError};

/// The image every lab host's dockerd has, imported from the machine's busybox-static.
pub const DOCKER_IMAGE: &str = "weft-busybox";

/// The name server containers are given (`--dns`): weft's name service address.
pub const DOCKER_DNS: &str = "169.254.1.1";

/// How long a starting dockerd has to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop_dockerd` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How long the processes left in the cgroups have to go after SIGKILL.
const KILL_LIMIT: Duration = Duration::from_secs(10);

/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The docker directory of a lab host (D).
pub fn docker_dir(lab: &str, host: &str) -> PathBuf {
    host_dir(lab, host).join("docker")
}

/// The directory the host's dockerd sees as `/run/docker/plugins`.
pub fn plugin_dir(lab: &str, host: &str) -> PathBuf {
    docker_dir(lab, host).join("plugins")
}

/// Where the host's agent serves Docker's plugin API (the plugin `weft`).
pub fn plugin_socket(lab: &str, host: &str) -> PathBuf {
    plugin_dir(lab, host).join("weft.sock")
}

/// The API socket of the host's dockerd.
pub fn api_socket(lab: &str, host: &str) -> PathBuf {
    docker_dir(lab, host).join("docker.sock")
}

/// The log of the host's dockerd (and its containerd).
pub fn dockerd_log(lab: &str, host: &str) -> PathBuf {
    docker_dir(lab, host).join("dockerd.log")
}

fn pid_file(lab: &str, host: &str) -> PathBuf {
    docker_dir(lab, host).join("docker.pid")
}

/// The cgroup (relative to each hierarchy's root) the host's containers are put under.
pub fn container_cgroup(lab: &str, host: &str) -> String {
    format!("weft-lab-{lab}-{host}")
}

/// The cgroup of the host's dockerd, its containerd and the shims.
pub fn daemon_cgroup(lab: &str, host: &str) -> String {
    format!("weft-lab-{lab}-{host}-d")
}

/// The docker CLI: Debian's `/usr/bin/docker` (the one that matches its dockerd), else
/// whichever `docker` is first in PATH.
pub fn docker_bin() -> PathBuf {
    let deb = Path::new("/usr/bin/docker");
    if deb.exists() {
        deb.to_path_buf()
    } else {
        PathBuf::from("docker")
    }
}

fn dockerd_bin() -> PathBuf {
    let deb = Path::new("/usr/sbin/dockerd");
    if deb.exists() {
        deb.to_path_buf()
    } else {
        PathBuf::from("dockerd")
    }
}

/// dockerd's arguments for a lab host (without the binary); `live_restore` unless the
/// host runs swarm ([`ensure_dockerd_swarm`]). Pure.
pub fn dockerd_args(lab: &str, host: &str, live_restore: bool) -> Vec<String> {
    let d = docker_dir(lab, host);
    let p = |name: &str| d.join(name).to_string_lossy().into_owned();
    let mut args: Vec<String> = vec![
        "--config-file".into(),
        p("daemon.json"),
        "--data-root".into(),
        p("data"),
        "--exec-root".into(),
        p("exec"),
        "--pidfile".into(),
        p("docker.pid"),
        "-H".into(),
        format!("unix://{}", p("docker.sock")),
        "--bridge=none".into(),
        "--iptables=false".into(),
        "--ip6tables=false".into(),
        "--dns".into(),
        DOCKER_DNS.into(),
        "--exec-opt".into(),
        "native.cgroupdriver=cgroupfs".into(),
        "--cgroup-parent".into(),
        format!("/{}", container_cgroup(lab, host)),
    ];
    if live_restore {
        args.push("--live-restore".into());
    }
    args
}

/// The marker of a host whose dockerd runs without `--live-restore` (swarm mode refuses
/// it).
fn swarm_marker(lab: &str, host: &str) -> PathBuf {
    docker_dir(lab, host).join("swarm")
}

/// As [`ensure_dockerd`], for a host that joins a swarm: its dockerd runs without
/// `--live-restore` from now on (stopped first, with its containers, if it ran with it).
pub fn ensure_dockerd_swarm(lab: &str, host: &str) -> Result<(), LabError> {
    let marker = swarm_marker(lab, host);
    if !marker.exists() {
        if answering(&api_socket(lab, host)) || daemon_pid(lab, host).is_some() {
            stop(lab, host)?;
        }
        fs::create_dir_all(docker_dir(lab, host))
            .map_err(|e| LabError::new(format!("create {}: {e}", marker.display())))?;
        fs::write(&marker, b"")
            .map_err(|e| LabError::new(format!("write {}: {e}", marker.display())))?;
    }
    ensure_dockerd(lab, host)
}

/// dockerd's configuration file for a lab host: only where its identity key is kept (else
/// `/etc/docker/key.json`; dockerd 20.10 has no flag for it). Pure.
pub fn daemon_json(lab: &str, host: &str) -> String {
    let key = docker_dir(lab, host).join("key.json");
    let v = serde_json::json!({ "deprecated-key-path": key });
    format!("{v}\n")
}

/// The docker CLI talking to a lab host's dockerd (which must run: see [`ensure_dockerd`]).
pub fn docker_command(lab: &str, host: &str) -> Command {
    let mut cmd = Command::new(docker_bin());
    cmd.env(
        "DOCKER_HOST",
        format!("unix://{}", api_socket(lab, host).display()),
    );
    for var in [
        "DOCKER_CONTEXT",
        "DOCKER_TLS",
        "DOCKER_TLS_VERIFY",
        "DOCKER_CERT_PATH",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// `weft lab docker HOST -- ARGS...`: starts the host's dockerd if it does not answer, then
/// runs the docker CLI with `args` against it (stdin, stdout and stderr are this
/// process's). Returns docker's exit status.
pub fn run_docker(lab: &str, host: &str, args: &[String]) -> Result<ExitStatus, LabError> {
    ensure_dockerd(lab, host)?;
    docker_command(lab, host)
        .args(args)
        .status()
        .map_err(|e| LabError::new(format!("run {}: {e}", docker_bin().display())))
}

/// Starts the host's dockerd unless it answers (waiting up to a minute for it), and
/// imports [`DOCKER_IMAGE`] into it unless it has it.
pub fn ensure_dockerd(lab: &str, host: &str) -> Result<(), LabError> {
    require_root()?;
    let hp = crate::load_host(lab, host)?;
    let netns = sys::netns_path(&hp.netns);
    if !Path::new(&netns).exists() {
        return Err(LabError::new(format!(
            "the namespace of {host} ({netns}) is gone: `weft lab down --name {lab}`, then up again"
        )));
    }
    let d = docker_dir(lab, host);
    for sub in ["plugins", "data", "exec", "containerd"] {
        let dir = d.join(sub);
        fs::create_dir_all(&dir)
            .map_err(|e| LabError::new(format!("create {}: {e}", dir.display())))?;
    }
    // One start at a time per host; the CLI itself runs unlocked.
    let _lock = sys::lock(&d.join("lock"))?;
    if !answering(&api_socket(lab, host)) {
        if let Err(e) = start(lab, host, &netns) {
            // Nothing half-started stays behind.
            let _ = stop(lab, host);
            return Err(e);
        }
    }
    ensure_image(lab, host)
}

/// True when a dockerd answers `GET /_ping` on `sock`.
fn answering(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(3)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.starts_with("HTTP/1.") && text.split_whitespace().nth(1) == Some("200")
}

/// The pid in the host's dockerd pid file while it is the dockerd the lab started for this
/// host (its command line names this host's API socket), not whatever got its pid later.
fn daemon_pid(lab: &str, host: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file(lab, host))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let want = format!("unix://{}", api_socket(lab, host).display());
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let ours = cmdline.split(|b| *b == 0).any(|arg| arg == want.as_bytes());
    (ours && alive(pid)).then_some(pid)
}

/// The shell that runs between `unshare` and dockerd: it joins the daemon cgroup (so the
/// whole tree dockerd starts is in it), shows D/plugins as /run/docker/plugins and
/// D/containerd as /run/containerd in the new mount namespace, and becomes dockerd.
/// Arguments: the cgroup's `cgroup.procs`, D, then dockerd's command line.
/// A `sleep infinity` started here keeps the mount namespace (and the namespace files of
/// running containers that dockerd mounts in it) alive when dockerd exits, so a restarted
/// dockerd (`--live-restore`) enters it again and finds its containers' sandboxes.
const LAUNCH_SCRIPT: &str = r#"set -e
echo $$ > "$1"
mkdir -p /run/docker/plugins /run/containerd
mount --bind "$2/plugins" /run/docker/plugins
mount --bind "$2/containerd" /run/containerd
sleep infinity </dev/null >/dev/null 2>&1 &
echo $! > "$2/mntns.pid"
shift 2
exec "$@"
"#;

/// The same for a dockerd started again in the mount namespace kept by the holder.
const RELAUNCH_SCRIPT: &str = r#"set -e
echo $$ > "$1"
shift 2
exec "$@"
"#;

/// The pid of the process holding the host's dockerd mount namespace, while it lives.
fn mntns_holder(lab: &str, host: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(docker_dir(lab, host).join("mntns.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    (cmdline == b"sleep\0infinity\0" && alive(pid)).then_some(pid)
}

/// Starts the host's dockerd (unless one of ours is already starting) and waits until it
/// answers.
fn start(lab: &str, host: &str, netns: &str) -> Result<(), LabError> {
    if daemon_pid(lab, host).is_some() {
        // Started by another command a moment ago, or hung: wait for it.
        return wait_ready(lab, host, None);
    }
    let d = docker_dir(lab, host);
    let _ = fs::remove_file(pid_file(lab, host));
    sys::write_atomic(&d.join("daemon.json"), daemon_json(lab, host).as_bytes())?;
    let cgroup = daemon_cgroup_dir(lab, host)?;
    fs::create_dir_all(&cgroup)
        .map_err(|e| LabError::new(format!("create cgroup {}: {e}", cgroup.display())))?;
    let log_path = dockerd_log(lab, host);
    let mut log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| LabError::new(format!("open {}: {e}", log_path.display())))?;
    let _ = writeln!(log, "--- weft lab: starting dockerd for {lab}/{host}");
    let err = log
        .try_clone()
        .map_err(|e| LabError::new(format!("open {}: {e}", log_path.display())))?;
    // setsid (no fork: the child leads no group) detaches it from this terminal; nsenter
    // enters only the host's network namespace (`ip netns exec` would remount /sys,
    // which dockerd needs as it is); unshare gives it a mount namespace whose mounts do not
    // reach the machine's, while the machine's (namespaces deleted by `down`) reach it.
    let mut cmd = Command::new("setsid");
    cmd.arg("nsenter").arg(format!("--net={netns}"));
    match mntns_holder(lab, host) {
        Some(holder) => {
            cmd.arg(format!("--mount=/proc/{holder}/ns/mnt"))
                .arg("--")
                .args(["sh", "-c", RELAUNCH_SCRIPT, "weft-dockerd"]);
        }
        None => {
            cmd.arg("--")
                .args(["unshare", "--mount", "--propagation", "slave", "--"])
                .args(["sh", "-c", LAUNCH_SCRIPT, "weft-dockerd"]);
        }
    }
    cmd.arg(cgroup.join("cgroup.procs"))
        .arg(&d)
        .arg(dockerd_bin())
        .args(dockerd_args(lab, host, !swarm_marker(lab, host).exists()))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::new(format!("start dockerd for {host}: {e}")))?;
    // Reaped when it exits, so a long-lived caller keeps no zombie; the exit tells
    // `wait_ready` that it failed.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    wait_ready(lab, host, Some(rx))
}

/// Waits until the host's dockerd answers; fails when it exits (`exited` tells of the
/// process just started) or stays silent for [`READY_TIMEOUT`], with the end of its log.
fn wait_ready(
    lab: &str,
    host: &str,
    exited: Option<mpsc::Receiver<std::io::Result<ExitStatus>>>,
) -> Result<(), LabError> {
    let api = api_socket(lab, host);
    let log = dockerd_log(lab, host);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if answering(&api) {
            return Ok(());
        }
        let gone = match &exited {
            Some(rx) => match rx.try_recv() {
                Ok(status) => Some(match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                }),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => Some("unknown status".into()),
            },
            None => daemon_pid(lab, host)
                .is_none()
                .then(|| "the process of its pid file is gone".to_string()),
        };
        if let Some(how) = gone {
            return Err(LabError::new(format!(
                "dockerd on {host} exited at start ({how}); {}",
                log_tail(&log)
            )));
        }
        if Instant::now() >= deadline {
            return Err(LabError::new(format!(
                "dockerd on {host} does not answer on {} after {} s (stopped it); {}",
                api.display(),
                READY_TIMEOUT.as_secs(),
                log_tail(&log)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the docker CLI for a lab host with `args`, capturing its output; kills it after
/// `limit`.
fn docker_output(
    lab: &str,
    host: &str,
    args: &[&str],
    limit: Duration,
) -> Result<Output, LabError> {
    let mut child = docker_command(lab, host)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::new(format!("run {}: {e}", docker_bin().display())))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError::new(format!(
                    "`docker {}` on {host} did not finish in {} s",
                    args.join(" "),
                    limit.as_secs()
                )));
            }
            Err(e) => return Err(LabError::new(format!("wait for docker: {e}"))),
        }
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Imports [`DOCKER_IMAGE`] into the host's dockerd unless it has it.
fn ensure_image(lab: &str, host: &str) -> Result<(), LabError> {
    let have = docker_output(
        lab,
        host,
        &["image", "inspect", "--format", "{{.Id}}", DOCKER_IMAGE],
        Duration::from_secs(30),
    )?;
    if have.status.success() {
        return Ok(());
    }
    let dir = docker_dir(lab, host).join("image");
    fs::create_dir_all(&dir)
        .map_err(|e| LabError::new(format!("create {}: {e}", dir.display())))?;
    let tar = crate::busybox_rootfs_tar(&dir)?;
    let out = docker_output(
        lab,
        host,
        &[
            "import",
            "--change",
            r#"CMD ["sh"]"#,
            &tar.to_string_lossy(),
            DOCKER_IMAGE,
        ],
        Duration::from_secs(120),
    );
    let _ = fs::remove_dir_all(&dir);
    let out = out?;
    if !out.status.success() {
        return Err(LabError::new(format!(
            "docker import of {DOCKER_IMAGE} on {host} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Stops a lab host's dockerd and everything it started. When dockerd answers, every
/// container is removed through it (`docker rm -f`, so network drivers see their
/// endpoints go), then dockerd gets SIGTERM (SIGKILL after 15 s). Whatever is left in
/// the host's cgroups (containerd, shims, containers of a dockerd that crashed) is killed,
/// and the cgroups are removed. Nothing to stop is fine.
pub fn stop_dockerd(lab: &str, host: &str) -> Result<(), LabError> {
    require_root()?;
    crate::plan::check_name(lab).map_err(LabError::new)?;
    stop(lab, host)
}

fn stop(lab: &str, host: &str) -> Result<(), LabError> {
    if answering(&api_socket(lab, host)) {
        let limit = Duration::from_secs(60);
        if let Ok(out) = docker_output(lab, host, &["ps", "-aq"], limit) {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if out.status.success() && !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                // What fails here the cgroup sweep below still ends.
                let _ = docker_output(lab, host, &args, limit);
            }
        }
    }
    if let Some(pid) = daemon_pid(lab, host) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if !wait_exit(pid, STOP_GRACE) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            wait_exit(pid, Duration::from_secs(5));
        }
    }
    let swept = sweep_cgroups(&[container_cgroup(lab, host), daemon_cgroup(lab, host)]);
    unmount_under(&docker_dir(lab, host));
    let _ = fs::remove_file(pid_file(lab, host));
    swept
}

/// Waits until `pid` has exited, up to `limit`.
fn wait_exit(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The hosts of lab `lab` with something of docker's to stop: a docker directory, or a
/// cgroup `weft-lab-LAB-HOST[-d]` in some hierarchy (a lab whose files are gone).
pub(crate) fn hosts_to_stop(lab: &str) -> Vec<String> {
    let mut hosts = BTreeSet::new();
    if let Ok(rd) = fs::read_dir(crate::lab_dir(lab)) {
        for entry in rd.filter_map(|e| e.ok()) {
            if entry.path().join("docker").is_dir() {
                hosts.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    // Lab names have no `-`, so the prefix is this lab's alone; host names have none either.
    let prefix = format!("weft-lab-{lab}-");
    for mount in cgroup_mounts() {
        let Ok(rd) = fs::read_dir(&mount) else {
            continue;
        };
        for entry in rd.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(&prefix) {
                let host = rest.strip_suffix("-d").unwrap_or(rest);
                if !host.is_empty() && !host.contains('-') && entry.path().is_dir() {
                    hosts.insert(host.to_string());
                }
            }
        }
    }
    hosts.into_iter().collect()
}

/// The cgroup the host's dockerd is put in: on cgroup v2 in the unified hierarchy, on v1
/// in the pids hierarchy (else the first usable one).
fn daemon_cgroup_dir(lab: &str, host: &str) -> Result<PathBuf, LabError> {
    let root = Path::new(CGROUP_ROOT);
    let name = daemon_cgroup(lab, host);
    if root.join("cgroup.controllers").exists() {
        return Ok(root.join(name));
    }
    ["pids", "systemd", "unified", "memory", "cpu"]
        .iter()
        .map(|h| root.join(h))
        .find(|h| h.join("cgroup.procs").exists())
        .map(|h| h.join(name))
        .ok_or_else(|| LabError::new(format!("no cgroup hierarchy found under {CGROUP_ROOT}")))
}

/// The mount points of this mount namespace, with their file system types.
fn mounts() -> Vec<(PathBuf, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let point = head.split(' ').nth(4)?;
            let fstype = tail.split(' ').next()?;
            Some((PathBuf::from(unescape(point)), fstype.to_string()))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mounted cgroup hierarchy (v1 controllers, named ones, v2).
fn cgroup_mounts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|(_, t)| t == "cgroup" || t == "cgroup2")
        .map(|(p, _)| p)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `dir` and every cgroup below it, parents before children.
fn subtree(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(rd) = fs::read_dir(dir) {
        for entry in rd.filter_map(|e| e.ok()) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                subtree(&entry.path(), out);
            }
        }
    }
}

/// The processes in any of `dirs` (never this one).
fn cgroup_pids(dirs: &[PathBuf]) -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    dirs.iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .filter(|p| *p != me)
        .collect()
}

/// Thaws frozen cgroups (a paused container), whose processes a SIGKILL would not end.
fn thaw(dirs: &[PathBuf]) {
    for d in dirs {
        let v1 = d.join("freezer.state");
        if v1.exists() {
            let _ = fs::write(&v1, "THAWED");
        }
        let v2 = d.join("cgroup.freeze");
        if v2.exists() {
            let _ = fs::write(&v2, "0");
        }
    }
}

/// Kills every process in the cgroups named `names` (at the root of every hierarchy, and
/// below them), waits until they are gone, and removes the cgroups, deepest first.
fn sweep_cgroups(names: &[String]) -> Result<(), LabError> {
    let mut dirs = Vec::new();
    for mount in cgroup_mounts() {
        for name in names {
            let top = mount.join(name);
            if top.is_dir() {
                subtree(&top, &mut dirs);
            }
        }
    }
    if dirs.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + KILL_LIMIT;
    loop {
        let pids = cgroup_pids(&dirs);
        if pids.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(LabError::new(format!(
                "processes {pids:?} are still in the cgroups {} after SIGKILL",
                names.join(", ")
            )));
        }
        thaw(&dirs);
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut errors = Vec::new();
    for d in dirs.iter().rev() {
        // A cgroup whose last process just exited may stay busy for a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() >= deadline => {
                    errors.push(format!("remove cgroup {}: {e}", d.display()));
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LabError::new(errors.join("; ")))
    }
}

/// Lazily unmounts whatever is mounted under `dir` in this mount namespace. dockerd's
/// mounts (overlays, network namespaces) live in its own mount namespace, so normally
/// there is nothing.
fn unmount_under(dir: &Path) {
    let mut points: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerd_keeps_to_the_host_directory() {
        let a = dockerd_args("t", "h2", true).join(" ");
        assert!(!dockerd_args("t", "h2", false).contains(&"--live-restore".to_string()));
        for want in [
            "--data-root /run/weft-lab/t/h2/docker/data",
            "--exec-root /run/weft-lab/t/h2/docker/exec",
            "--pidfile /run/weft-lab/t/h2/docker/docker.pid",
            "-H unix:///run/weft-lab/t/h2/docker/docker.sock",
            "--config-file /run/weft-lab/t/h2/docker/daemon.json",
            "--bridge=none --iptables=false --ip6tables=false",
            "--dns 169.254.1.1",
            "--exec-opt native.cgroupdriver=cgroupfs",
            "--cgroup-parent /weft-lab-t-h2",
        ] {
            assert!(a.contains(want), "{want} in {a}");
        }
        assert_eq!(
            plugin_socket("t", "h2"),
            Path::new("/run/weft-lab/t/h2/docker/plugins/weft.sock")
        );
        assert_eq!(daemon_cgroup("t", "h2"), "weft-lab-t-h2-d");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }
}
