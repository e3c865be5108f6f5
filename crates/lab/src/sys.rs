//! Small helpers over the system: running commands, namespaces, processes, locks.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::LabError;

/// Runs a command, returns its stdout; fails with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, LabError> {
    run_input(cmd, args, None)
}

/// Runs a command with `input` on stdin.
pub fn run_input(cmd: &str, args: &[&str], input: Option<&str>) -> Result<String, LabError> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::new(format!("cannot run {cmd}: {e} (is it installed?)")))?;
    if let Some(text) = input {
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| LabError::new(format!("write to {cmd}: {e}")))?;
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::new(format!("wait for {cmd}: {e}")))?;
    if !out.status.success() {
        return Err(LabError::new(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -n NS -batch -` with the given lines.
pub fn ip_batch(ns: &str, lines: &[String]) -> Result<(), LabError> {
    let mut text = lines.join("\n");
    text.push('\n');
    run_input("ip", &["-n", ns, "-batch", "-"], Some(&text)).map(|_| ())
}

/// The names of all named network namespaces (`/run/netns`).
pub fn netns_list() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The path of a named network namespace.
pub fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}

/// Creates a named network namespace with `lo` up.
pub fn netns_add(name: &str) -> Result<(), LabError> {
    run("ip", &["netns", "add", name])?;
    run("ip", &["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// The pids of processes whose network namespace is `ns`, never this process itself (a
/// caller that entered a lab namespace must not end itself).
pub fn netns_pids(ns: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    run("ip", &["netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|p| *p != me)
                .collect()
        })
        .unwrap_or_default()
}

/// Ends the processes inside `ns` (which the lab started there): TERM, then KILL after
/// `grace`.
pub fn kill_netns_processes(ns: &str, grace: Duration) {
    let pids = netns_pids(ns);
    if pids.is_empty() {
        return;
    }
    for &pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if netns_pids(ns).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in netns_pids(ns) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !netns_pids(ns).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deletes a named network namespace; a missing one is not an error.
pub fn netns_del(name: &str) -> Result<(), LabError> {
    if !Path::new(&netns_path(name)).exists() {
        return Ok(());
    }
    run("ip", &["netns", "del", name]).map(|_| ())
}

/// Writes a sysctl inside a network namespace (`/proc/sys/net/...` is per namespace).
pub fn netns_sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let file = weft_netlink::open_netns(Path::new(&netns_path(ns)))
        .map_err(|e| LabError::new(e.to_string()))?;
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    weft_netlink::in_netns(&file, || fs::write(&path, value))
        .map_err(|e| LabError::new(e.to_string()))?
        .map_err(|e| LabError::new(format!("set {key} in {ns}: {e}")))
}

/// Reads a sysctl inside a network namespace.
pub fn netns_sysctl_read(ns: &str, key: &str) -> Result<String, LabError> {
    let file = weft_netlink::open_netns(Path::new(&netns_path(ns)))
        .map_err(|e| LabError::new(e.to_string()))?;
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    weft_netlink::in_netns(&file, || fs::read_to_string(&path))
        .map_err(|e| LabError::new(e.to_string()))?
        .map_err(|e| LabError::new(format!("read {key} in {ns}: {e}")))
}

/// An exclusive advisory lock on a file, released on drop.
pub struct Lock(#[allow(dead_code)] File);

/// Takes an exclusive lock on `path` (created if missing).
pub fn lock(path: &Path) -> Result<Lock, LabError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| LabError::new(format!("open {}: {e}", path.display())))?;
    loop {
        // SAFETY: `file` is an open descriptor that outlives the call; flock only takes an
        // advisory lock on it.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(Lock(file));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(LabError::new(format!("lock {}: {err}", path.display())));
        }
    }
}

/// Writes a file atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(|e| LabError::new(format!("write {}: {e}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(|e| LabError::new(format!("write {}: {e}", path.display())))
}

/// Writes a file only its owner may read (mode 0600), atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| LabError::new(format!("write {}: {e}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(|e| LabError::new(format!("write {}: {e}", path.display())))
}
