//! `weft install`, `weft uninstall` and `weft secret new`: the thin part. It looks at the
//! tree, asks `weft-install` (pure) for the plan, applies it, and tells systemd when the
//! root is this host's and systemd runs it. Design: docs/operations.md.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use weft_install::{self as plan, Action, Content, Found, Manifest, Settings};

/// Options of `weft install`.
#[derive(Args)]
pub struct InstallArgs {
    /// Install into this directory tree instead of / (packaging, tests): the files name
    /// their final paths, and nothing is started.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// This node's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// The address other hosts dial, IP or IP:PORT [default: this host's address towards
    /// the first --peer, else towards its default route].
    #[arg(long, value_name = "IP[:PORT]")]
    advertise: Option<String>,
    /// Where the agent accepts peers [default: every address, the advertised port].
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<String>,
    /// A host of the cluster to join (IP, IP:PORT or HOST:PORT); repeat for more. None:
    /// this host starts a new cluster.
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<String>,
    /// The cluster's address pools, comma-separated CIDRs; the same on every host
    /// [default: 10.32.0.0/12].
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    ipam_pools: Vec<String>,
    /// On the hosts that found the cluster together: how many they are (more than half
    /// of them must be up to start). Leave out when joining a running cluster.
    #[arg(long, value_name = "N")]
    ipam_init: Option<u64>,
    /// The cluster secret, the same on every host (`weft secret new` makes one). Left
    /// out: the installed one is kept; a new cluster (no --peer) gets a new one.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Where the agent serves Prometheus metrics, IP:PORT or off [default:
    /// 127.0.0.1:6782].
    #[arg(long, value_name = "IP:PORT|off")]
    metrics_addr: Option<String>,
    /// The data plane mode: auto, route, vxlan or off [default: auto].
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// Write the files but do not enable or start the agent.
    #[arg(long)]
    no_start: bool,
    /// Replace files in the way (someone else's, or weft's changed since) instead of
    /// refusing.
    #[arg(long)]
    force: bool,
}

/// Options of `weft uninstall`.
#[derive(Args)]
pub struct UninstallArgs {
    /// The tree `weft install --root` installed into.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// Remove the agent's data directory too (its identity, IPAM and policy state).
    #[arg(long)]
    purge: bool,
}

/// `weft secret ...`.
#[derive(Subcommand)]
pub enum SecretCmd {
    /// Make a new cluster secret (32 random bytes, hex) and print it, or write it to a
    /// file (mode 0600) that `weft install --secret-file` takes on every host.
    New {
        /// Write it here (refused if the file exists) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

type Res = Result<ExitCode, String>;

/// Prints a line; a closed output is not an error of the install, which is done by then.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn new_secret() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("read /dev/urandom: {e}"))?;
    let mut hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.push('\n');
    Ok(hex)
}

/// `weft secret new`.
pub fn secret(cmd: SecretCmd) -> Res {
    let SecretCmd::New { out } = cmd;
    let s = new_secret()?;
    match out {
        None => say(s.trim_end()),
        Some(p) => {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| format!("create {}: {e}", p.display()))?;
            f.write_all(s.as_bytes())
                .map_err(|e| format!("write {}: {e}", p.display()))?;
            say(&format!(
                "wrote a new cluster secret to {} (mode 0600): give it to `weft install \
                 --secret-file` on every host",
                p.display()
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The path of `p` (relative to the root) under `root`.
fn at(root: &Path, p: &str) -> PathBuf {
    root.join(p)
}

/// What a path under the root holds now (links are not followed).
fn look(root: &Path, p: &str) -> Found {
    let path = at(root, p);
    match fs::symlink_metadata(&path) {
        Err(_) => Found::Absent,
        Ok(m) if m.is_dir() => Found::Dir,
        Ok(m) if m.is_file() => match fs::read(&path) {
            Ok(bytes) => Found::File {
                digest: plan::digest(&bytes),
                mode: m.mode() & 0o7777,
            },
            Err(_) => Found::Other,
        },
        Ok(_) => Found::Other,
    }
}

fn read_manifest(root: &Path) -> Result<Option<Manifest>, String> {
    let p = at(root, plan::MANIFEST);
    match fs::read(&p) {
        Ok(b) => Manifest::parse(&b).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read {}: {e}", p.display())),
    }
}

/// This host's source address towards `target` (a route lookup: no packet is sent).
fn source_towards(target: SocketAddr) -> Option<std::net::IpAddr> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(target).ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
}

fn advertise(a: &InstallArgs) -> Result<SocketAddr, String> {
    let port = weft_agent::config::DEFAULT_PORT;
    if let Some(s) = &a.advertise {
        return weft_agent::config::parse_addr(s)
            .ok_or_else(|| format!("--advertise {s:?}: expected IP or IP:PORT"));
    }
    let target = match a.peers.first() {
        Some(p) => weft_agent::config::parse_addr(p)
            .ok_or_else(|| format!("--peer {p:?}: expected IP, IP:PORT or HOST:PORT"))?,
        // A documentation address: only the route towards it is looked up.
        None => SocketAddr::from(([192, 0, 2, 1], port)),
    };
    let ip = source_towards(target).ok_or_else(|| {
        format!("cannot tell this host's address towards {target} (no route?): give --advertise IP")
    })?;
    Ok(SocketAddr::new(ip, port))
}

fn host_name() -> Result<String, String> {
    let n = fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| format!("read the host name: {e} (give --name)"))?;
    Ok(n.trim().to_string())
}

/// The secret to install: the file given, else the one installed, else a new one for a
/// new cluster.
fn secret_bytes(a: &InstallArgs) -> Result<Vec<u8>, String> {
    if let Some(p) = &a.secret_file {
        let b = fs::read(p).map_err(|e| format!("--secret-file {}: {e}", p.display()))?;
        if b.iter().all(|c| c.is_ascii_whitespace()) {
            return Err(format!("--secret-file {}: the file is empty", p.display()));
        }
        return Ok(b);
    }
    let installed = at(&a.root, plan::SECRET);
    if let Ok(b) = fs::read(&installed) {
        return Ok(b);
    }
    if !a.peers.is_empty() {
        return Err(format!(
            "joining a cluster (--peer) needs its secret: --secret-file FILE, a copy of \
             /{} from one of its hosts",
            plan::SECRET
        ));
    }
    new_secret().map(String::into_bytes)
}

fn write_file(root: &Path, p: &str, content: &Content, mode: u32) -> Result<(), String> {
    let path = at(root, p);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.weft-tmp"));
    let _ = fs::remove_file(&tmp);
    let res = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        match content {
            Content::Bytes(b) => f.write_all(b)?,
            Content::SelfExe => {
                let exe = std::env::current_exe()?;
                std::io::copy(&mut fs::File::open(exe)?, &mut f)?;
            }
        }
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(|e| format!("write {}: {e}", path.display()))
}

/// Applies every action; stops at the first failure (every write is whole, so the tree
/// holds either the old or the new file) and says which.
fn apply(root: &Path, actions: &[Action]) -> Result<(), String> {
    for a in actions {
        match a {
            Action::CreateDir(d) => {
                let p = at(root, d);
                fs::create_dir(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o755));
            }
            Action::Write {
                path,
                content,
                mode,
            } => write_file(root, path, content, *mode)?,
            Action::Chmod { path, mode } => {
                let p = at(root, path);
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
                    .map_err(|e| format!("chmod {}: {e}", p.display()))?;
            }
            Action::Remove(f) => {
                let p = at(root, f);
                match fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(format!("remove {}: {e}", p.display()))
                    }
                    _ => {}
                }
            }
            Action::RemoveTree(d) => {
                let p = at(root, d);
                fs::remove_dir_all(&p).map_err(|e| format!("remove {}: {e}", p.display()))?;
            }
            Action::RemoveDirIfEmpty(d) => {
                // Not empty (someone else's files): it stays.
                let _ = fs::remove_dir(at(root, d));
            }
        }
    }
    Ok(())
}

/// True when `root` is this host's and systemd runs it (else the unit is only written).
fn systemd_runs(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").exists()
}

fn systemctl(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| format!("run systemctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `weft install`.
pub fn install(a: InstallArgs) -> Res {
    let root = a.root.clone();
    if !root.is_dir() {
        return Err(format!("--root {}: not a directory", root.display()));
    }
    let advertise = advertise(&a)?;
    let settings = Settings {
        name: match &a.name {
            Some(n) => n.clone(),
            None => host_name()?,
        },
        advertise: advertise.to_string(),
        listen: a.listen.clone(),
        peers: a.peers.clone(),
        ipam_pools: a.ipam_pools.clone(),
        ipam_init: a.ipam_init,
        metrics_addr: a.metrics_addr.clone(),
        mode: a.mode.clone(),
    };
    // The config is one the agent takes, or nothing is written.
    let config = plan::agent_config(&settings);
    weft_agent::RawConfig::from_json(&config)
        .and_then(|r| r.validate())
        .map_err(|e| format!("the agent would refuse this config: {e}"))?;
    let secret = secret_bytes(&a)?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the weft binary: {e}"))?;
    let exe_bytes = fs::read(&exe).map_err(|e| format!("read {}: {e}", exe.display()))?;
    let wants = plan::wants(&settings, &plan::digest(&exe_bytes), &secret);
    drop(exe_bytes);
    let manifest = read_manifest(&root)?;
    let p = plan::install(
        &wants,
        &|path| look(&root, path),
        manifest.as_ref(),
        a.force,
    )
    .map_err(|r| format!("install into {}: {r}", root.display()))?;
    apply(&root, &p.actions)?;
    let mut lines = p.notes.clone();
    if p.changed.is_empty() {
        lines.push(format!(
            "weft is installed in {} as asked; nothing changed",
            root.display()
        ));
    }
    if systemd_runs(&root) && !a.no_start {
        if p.changed.contains(plan::UNIT) {
            systemctl(&["daemon-reload"])?;
        }
        if systemctl(&["is-enabled", plan::SERVICE]).is_err() {
            systemctl(&["enable", plan::SERVICE])?;
            lines.push(format!("enabled {}", plan::SERVICE));
        }
        if systemctl(&["is-active", plan::SERVICE]).is_err() {
            systemctl(&["start", plan::SERVICE])?;
            lines.push(format!("started {}", plan::SERVICE));
        } else if !p.changed.is_empty() {
            systemctl(&["restart", plan::SERVICE])?;
            lines.push(format!("restarted {}", plan::SERVICE));
        }
        lines.push("next: weft status".into());
    } else if root == Path::new("/") {
        lines.push(format!(
            "not started ({}): start it with `systemctl enable --now {}`, or run `/{} agent \
             --config /{}`",
            if a.no_start {
                "--no-start"
            } else {
                "systemd does not run this host"
            },
            plan::SERVICE,
            plan::BIN,
            plan::CONFIG
        ));
    }
    for l in lines {
        say(&l);
    }
    Ok(ExitCode::SUCCESS)
}

/// `weft uninstall`.
pub fn uninstall(a: UninstallArgs) -> Res {
    let root = a.root;
    let Some(manifest) = read_manifest(&root)? else {
        say(&format!(
            "no weft install record ({}): nothing to uninstall",
            at(&root, plan::MANIFEST).display()
        ));
        return Ok(ExitCode::SUCCESS);
    };
    let p = plan::uninstall(&|path| look(&root, path), &manifest, a.purge)
        .map_err(|r| format!("uninstall from {}: {r}", root.display()))?;
    let mut lines = Vec::new();
    if systemd_runs(&root)
        && manifest.files.contains_key(plan::UNIT)
        && systemctl(&["disable", "--now", plan::SERVICE]).is_ok()
    {
        lines.push(format!("stopped and disabled {}", plan::SERVICE));
    }
    apply(&root, &p.actions)?;
    if systemd_runs(&root) && p.changed.contains(plan::UNIT) {
        let _ = systemctl(&["daemon-reload"]);
    }
    lines.extend(p.notes);
    if !a.purge && at(&root, plan::DATA_DIR).exists() {
        lines.push(format!(
            "kept /{} (this node's identity and state): --purge removes it",
            plan::DATA_DIR
        ));
    }
    for l in lines {
        say(&l);
    }
    Ok(ExitCode::SUCCESS)
}
