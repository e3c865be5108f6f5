//! What `weft install` and `weft uninstall` do to a host's file tree (docs/operations.md).
//!
//! Pure: the caller says what each path holds now ([`Found`], through a `look` function)
//! and what the last install recorded ([`Manifest`]); this crate answers with a [`Plan`]
//! of actions, or with every reason to refuse. The binary applies the plan and nothing
//! else. Paths are relative to the root the install goes into (`/`, or `--root DIR`), so
//! a tree made for packaging names the same files as a host's.
//!
//! Ownership is the manifest, `etc/weft/install.json`: the files install wrote (with the
//! SHA-256 and mode it wrote them with) and the directories it created. A file install
//! wrote and nobody changed since is weft's to replace or remove; a file that already
//! holds exactly what install wants is left as it is and not claimed (so `uninstall`
//! leaves it too); anything else in the way is refused, unless `force`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The binary, where the unit runs it from.
pub const BIN: &str = "usr/local/bin/weft";
/// The CNI plugin (the same binary).
pub const PLUGIN: &str = "opt/cni/bin/weft";
/// The agent's config.
pub const CONFIG: &str = "etc/weft/agent.json";
/// The cluster secret.
pub const SECRET: &str = "etc/weft/secret";
/// The systemd unit.
pub const UNIT: &str = "etc/systemd/system/weft-agent.service";
/// The CNI network config (cluster IPAM: addresses from the agent).
pub const CONFLIST: &str = "etc/cni/net.d/weft.conflist";
/// What the last install made.
pub const MANIFEST: &str = "etc/weft/install.json";
/// The agent's data directory (made by the agent; removed only by `uninstall --purge`).
pub const DATA_DIR: &str = "var/lib/weft";
/// The agent's API socket, as the installed config and conflist name it.
pub const SOCKET: &str = "/run/weft/weft.sock";
/// The systemd unit's name.
pub const SERVICE: &str = "weft-agent.service";

/// The SHA-256 of `bytes`, in hex.
pub fn digest(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in Sha256::digest(bytes) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What this host's agent is told (the rest takes the agent's defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The node's name.
    pub name: String,
    /// The address other nodes dial, `IP:PORT`.
    pub advertise: String,
    /// Where to accept peers, `IP:PORT` (`0.0.0.0:PORT` or `[::]:PORT` by default).
    pub listen: Option<String>,
    /// Peers to dial at start.
    pub peers: Vec<String>,
    /// The cluster's address pools (CIDRs); the agent's default when empty.
    pub ipam_pools: Vec<String>,
    /// How many nodes start the cluster together (the founding hosts); `None` when
    /// joining a running cluster.
    pub ipam_init: Option<u64>,
    /// Where metrics are served; the agent's default (loopback) when `None`.
    pub metrics_addr: Option<String>,
    /// Data plane mode (auto, route, vxlan, off); the agent's default when `None`.
    pub mode: Option<String>,
}

/// The agent's config file (`etc/weft/agent.json`) for `s`: JSON with the keys of `weft
/// agent --config`.
pub fn agent_config(s: &Settings) -> String {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        m.insert(k.to_string(), v);
    };
    put("name", s.name.clone().into());
    if let Some(l) = &s.listen {
        put("listen", l.clone().into());
    }
    put("advertise", s.advertise.clone().into());
    put("peers", s.peers.clone().into());
    put("secretFile", format!("/{SECRET}").into());
    put("dataDir", format!("/{DATA_DIR}").into());
    put("socket", SOCKET.into());
    if !s.ipam_pools.is_empty() {
        put("ipamPools", s.ipam_pools.clone().into());
    }
    if let Some(n) = s.ipam_init {
        put("ipamInit", n.into());
    }
    if let Some(a) = &s.metrics_addr {
        put("metricsAddr", a.clone().into());
    }
    if let Some(mode) = &s.mode {
        put("mode", mode.clone().into());
    }
    let mut text = serde_json::to_string_pretty(&serde_json::Value::Object(m)).expect("json");
    text.push('\n');
    text
}

/// The systemd unit (`etc/systemd/system/weft-agent.service`; the same as
/// `examples/weft-agent.service`).
pub fn unit() -> String {
    format!(
        "\
# weft agent as a systemd service, written by `weft install` (`weft uninstall` removes it).
# The agent's settings are in /{CONFIG}, the cluster secret (the same on every host) in
# /{SECRET}; its state is kept in /{DATA_DIR}. With the CNI network config
# /{CONFLIST} (no \"range\"), the plugin asks this agent for container addresses.
[Unit]
Description=weft container network agent
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/{BIN} agent --config /{CONFIG}
Restart=on-failure
RestartSec=2
# The data plane (routes, links) stays up while the agent restarts.
KillMode=process
StateDirectory=weft
RuntimeDirectory=weft
RuntimeDirectoryPreserve=yes

[Install]
WantedBy=multi-user.target
"
    )
}

/// The CNI network config install writes: weft with cluster IPAM through the agent's
/// socket, chained with portmap, bandwidth and tuning.
pub fn conflist() -> String {
    let mut text = weft_config::example_agent_conflist("weft", SOCKET, &format!("/{DATA_DIR}"));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// These bytes.
    Bytes(Vec<u8>),
    /// The running weft binary (its digest is in [`Want::digest`]).
    SelfExe,
}

/// A file install wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// Path under the root.
    pub path: String,
    /// SHA-256 of the content, hex.
    pub digest: String,
    /// Permission bits.
    pub mode: u32,
    /// The content.
    pub content: Content,
}

impl Want {
    /// A file of `bytes`.
    pub fn bytes(path: &str, bytes: impl Into<Vec<u8>>, mode: u32) -> Want {
        let bytes = bytes.into();
        Want {
            path: path.to_string(),
            digest: digest(&bytes),
            mode,
            content: Content::Bytes(bytes),
        }
    }

    /// The running binary, whose content has `digest`.
    pub fn self_exe(path: &str, digest: &str) -> Want {
        Want {
            path: path.to_string(),
            digest: digest.to_string(),
            mode: 0o755,
            content: Content::SelfExe,
        }
    }
}

/// The files of an install: binary, plugin, config, secret, unit and conflist (the
/// manifest is added by [`install`]).
pub fn wants(settings: &Settings, exe_digest: &str, secret: &[u8]) -> Vec<Want> {
    vec![
        Want::self_exe(BIN, exe_digest),
        Want::self_exe(PLUGIN, exe_digest),
        Want::bytes(CONFIG, agent_config(settings), 0o644),
        Want::bytes(SECRET, secret, 0o600),
        Want::bytes(UNIT, unit(), 0o644),
        Want::bytes(CONFLIST, conflist(), 0o644),
    ]
}

/// What a path holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing.
    Absent,
    /// A regular file with this content digest and mode.
    File {
        /// SHA-256, hex.
        digest: String,
        /// Permission bits.
        mode: u32,
    },
    /// A directory.
    Dir,
    /// Something else: a symbolic link, a socket, a device.
    Other,
}

/// One file of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// SHA-256 of what install wrote, hex.
    pub sha256: String,
    /// The mode it wrote.
    pub mode: u32,
}

/// What an install made: the record `uninstall` works from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always "weft install": a file without it is not weft's.
    pub made_by: String,
    /// Files written, by path under the root.
    pub files: BTreeMap<String, Owned>,
    /// Directories created, by path under the root.
    pub dirs: BTreeSet<String>,
}

/// The value of [`Manifest::made_by`].
pub const MADE_BY: &str = "weft install";

impl Manifest {
    /// Reads a manifest; `Err` when the file is not one of weft's.
    pub fn parse(text: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(text)
            .map_err(|e| format!("/{MANIFEST} is not a weft install record: {e}"))?;
        if m.made_by != MADE_BY {
            return Err(format!(
                "/{MANIFEST} is not a weft install record (made_by {:?})",
                m.made_by
            ));
        }
        Ok(m)
    }

    /// Its file's text.
    pub fn text(&self) -> String {
        let mut t = serde_json::to_string_pretty(self).expect("json");
        t.push('\n');
        t
    }
}

/// One step of a plan, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a directory (its parent exists by then).
    CreateDir(String),
    /// Write a file whole (atomically: a temporary file renamed over it), with its mode.
    Write {
        /// Path under the root.
        path: String,
        /// Bytes.
        content: Content,
        /// Permission bits.
        mode: u32,
    },
    /// Set a file's mode.
    Chmod {
        /// Path under the root.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// Remove a file.
    Remove(String),
    /// Remove a directory and everything in it (`--purge` of the data directory).
    RemoveTree(String),
    /// Remove a directory if it is empty by then.
    RemoveDirIfEmpty(String),
}

/// What to do, and what it means in words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The steps.
    pub actions: Vec<Action>,
    /// One line per path the plan changes or leaves alone for a reason.
    pub notes: Vec<String>,
    /// Paths whose content the plan changes (written or removed).
    pub changed: BTreeSet<String>,
}

impl Plan {
    /// True when applying it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Why install or uninstall refuses: every reason, each a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub Vec<String>);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nothing was changed:")?;
        for r in &self.0 {
            write!(f, "\n  {r}")?;
        }
        Ok(())
    }
}

/// The directories above `path`, outermost first (`a`, `a/b` for `a/b/c`).
fn parents(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').collect();
    (1..parts.len()).map(|i| parts[..i].join("/")).collect()
}

/// The plan that makes the tree hold `wants` (plus the manifest), given what `look`
/// finds and the last install's `manifest`. `force` replaces files in the way (someone
/// else's, or weft's changed since) instead of refusing.
pub fn install(
    wants: &[Want],
    look: &dyn Fn(&str) -> Found,
    manifest: Option<&Manifest>,
    force: bool,
) -> Result<Plan, Refusal> {
    let old = manifest.cloned().unwrap_or_default();
    let mut refusals = Vec::new();
    let mut plan = Plan::default();
    let mut new = Manifest {
        made_by: MADE_BY.into(),
        files: BTreeMap::new(),
        dirs: BTreeSet::new(),
    };
    // Directories, outermost first.
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for w in wants {
        dirs.extend(parents(&w.path));
    }
    dirs.extend(parents(MANIFEST));
    let mut dirs: Vec<String> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| d.matches('/').count());
    for d in &dirs {
        match look(d) {
            Found::Dir => {
                if old.dirs.contains(d) {
                    new.dirs.insert(d.clone());
                }
            }
            Found::Absent => {
                plan.actions.push(Action::CreateDir(d.clone()));
                new.dirs.insert(d.clone());
            }
            Found::File { .. } | Found::Other => {
                refusals.push(format!("/{d} is in the way: weft needs a directory there"))
            }
        }
    }
    for w in wants {
        let ours = old.files.get(&w.path);
        let write = Action::Write {
            path: w.path.clone(),
            content: w.content.clone(),
            mode: w.mode,
        };
        let claim = || Owned {
            sha256: w.digest.clone(),
            mode: w.mode,
        };
        match look(&w.path) {
            Found::Absent => {
                plan.actions.push(write);
                plan.notes.push(format!("wrote /{}", w.path));
                plan.changed.insert(w.path.clone());
                new.files.insert(w.path.clone(), claim());
            }
            Found::File { digest, mode } if digest == w.digest => {
                if ours.is_some() {
                    if mode != w.mode {
                        plan.actions.push(Action::Chmod {
                            path: w.path.clone(),
                            mode: w.mode,
                        });
                        plan.notes
                            .push(format!("set the mode of /{} to {:o}", w.path, w.mode));
                    }
                    new.files.insert(w.path.clone(), claim());
                } else {
                    plan.notes.push(format!(
                        "kept /{}: it already holds what weft needs (not weft install's: \
                         uninstall leaves it)",
                        w.path
                    ));
                }
            }
            Found::File { digest, .. } => {
                let unchanged_since = ours.is_some_and(|o| o.sha256 == digest);
                if unchanged_since || force {
                    plan.actions.push(write);
                    plan.notes.push(if unchanged_since {
                        format!("updated /{}", w.path)
                    } else {
                        format!("replaced /{} (--force)", w.path)
                    });
                    plan.changed.insert(w.path.clone());
                    new.files.insert(w.path.clone(), claim());
                } else if ours.is_some() {
                    refusals.push(format!(
                        "/{} was changed since weft install wrote it: move it away, or pass \
                         --force to write weft's over it",
                        w.path
                    ));
                } else {
                    refusals.push(format!(
                        "/{} exists and is not weft install's: move it away, or pass --force \
                         to replace it",
                        w.path
                    ));
                }
            }
            Found::Dir => refusals.push(format!(
                "/{} is a directory: weft needs a file there",
                w.path
            )),
            Found::Other => refusals.push(format!(
                "/{} is not a regular file (a link?): weft needs a file there",
                w.path
            )),
        }
    }
    // Files an earlier install wrote that are no longer wanted go, if nobody changed them.
    for (path, owned) in &old.files {
        if wants.iter().any(|w| &w.path == path) {
            continue;
        }
        forget_file(path, owned, look, &mut plan);
    }
    if !refusals.is_empty() {
        return Err(Refusal(refusals));
    }
    if manifest != Some(&new) {
        plan.actions.push(Action::Write {
            path: MANIFEST.into(),
            content: Content::Bytes(new.text().into_bytes()),
            mode: 0o644,
        });
    }
    Ok(plan)
}

/// Removes a file install wrote if it still holds what install wrote; notes why not.
fn forget_file(path: &str, owned: &Owned, look: &dyn Fn(&str) -> Found, plan: &mut Plan) {
    match look(path) {
        Found::File { digest, .. } if digest == owned.sha256 => {
            plan.actions.push(Action::Remove(path.to_string()));
            plan.notes.push(format!("removed /{path}"));
            plan.changed.insert(path.to_string());
        }
        Found::Absent => plan.notes.push(format!("/{path} was already gone")),
        _ => plan.notes.push(format!(
            "left /{path}: it was changed since weft install wrote it"
        )),
    }
}

/// The plan that removes what the install recorded in `manifest` made, and nothing else:
/// its files that nobody changed since, the manifest, then its directories that are
/// empty by then (innermost first). `purge` removes the agent's data directory too.
pub fn uninstall(
    look: &dyn Fn(&str) -> Found,
    manifest: &Manifest,
    purge: bool,
) -> Result<Plan, Refusal> {
    let mut plan = Plan::default();
    for (path, owned) in &manifest.files {
        forget_file(path, owned, look, &mut plan);
    }
    plan.actions.push(Action::Remove(MANIFEST.into()));
    if purge {
        match look(DATA_DIR) {
            Found::Dir => {
                plan.actions.push(Action::RemoveTree(DATA_DIR.into()));
                plan.notes.push(format!("removed /{DATA_DIR} (--purge)"));
                plan.changed.insert(DATA_DIR.into());
            }
            Found::Absent => {}
            _ => {
                return Err(Refusal(vec![format!(
                    "/{DATA_DIR} is not a directory: --purge leaves it, remove it by hand"
                )]))
            }
        }
    }
    let mut dirs: Vec<&String> = manifest.dirs.iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for d in dirs {
        plan.actions.push(Action::RemoveDirIfEmpty(d.clone()));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests;
