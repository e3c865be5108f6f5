use std::cell::RefCell;

use super::*;

/// A file tree in memory: path → content and mode, directories.
#[derive(Default, Clone, PartialEq, Debug)]
struct Tree {
    files: BTreeMap<String, (Vec<u8>, u32)>,
    dirs: BTreeSet<String>,
    others: BTreeSet<String>,
}

const EXE: &[u8] = b"the weft binary";

impl Tree {
    fn with_dirs(dirs: &[&str]) -> Tree {
        Tree {
            dirs: dirs.iter().map(|d| d.to_string()).collect(),
            ..Tree::default()
        }
    }

    fn look(&self, p: &str) -> Found {
        if let Some((b, m)) = self.files.get(p) {
            Found::File {
                digest: digest(b),
                mode: *m,
            }
        } else if self.dirs.contains(p) {
            Found::Dir
        } else if self.others.contains(p) {
            Found::Other
        } else {
            Found::Absent
        }
    }

    fn manifest(&self) -> Option<Manifest> {
        self.files
            .get(MANIFEST)
            .map(|(b, _)| Manifest::parse(b).unwrap())
    }

    /// Applies a plan as the binary does.
    fn apply(&mut self, plan: &Plan) {
        for a in &plan.actions {
            match a {
                Action::CreateDir(d) => {
                    assert!(self.dirs.insert(d.clone()), "{d} made twice");
                }
                Action::Write {
                    path,
                    content,
                    mode,
                } => {
                    let bytes = match content {
                        Content::Bytes(b) => b.clone(),
                        Content::SelfExe => EXE.to_vec(),
                    };
                    self.files.insert(path.clone(), (bytes, *mode));
                }
                Action::Chmod { path, mode } => self.files.get_mut(path).unwrap().1 = *mode,
                Action::Remove(p) => {
                    self.files.remove(p).unwrap();
                }
                Action::RemoveTree(d) => {
                    let prefix = format!("{d}/");
                    self.files.retain(|p, _| !p.starts_with(&prefix));
                    self.dirs.retain(|p| p != d && !p.starts_with(&prefix));
                }
                Action::RemoveDirIfEmpty(d) => {
                    let prefix = format!("{d}/");
                    let empty = !self.files.keys().any(|p| p.starts_with(&prefix))
                        && !self.dirs.iter().any(|p| p.starts_with(&prefix));
                    if empty {
                        self.dirs.remove(d);
                    }
                }
            }
        }
    }

    fn install(
        &mut self,
        settings: &Settings,
        secret: &[u8],
        force: bool,
    ) -> Result<Plan, Refusal> {
        let wants = wants(settings, &digest(EXE), secret);
        let me = RefCell::new(self.clone());
        let plan = install(
            &wants,
            &|p| me.borrow().look(p),
            self.manifest().as_ref(),
            force,
        )?;
        self.apply(&plan);
        Ok(plan)
    }

    fn uninstall(&mut self, purge: bool) -> Result<Plan, Refusal> {
        let m = self.manifest().expect("installed");
        let me = self.clone();
        let plan = uninstall(&|p| me.look(p), &m, purge)?;
        self.apply(&plan);
        Ok(plan)
    }
}

fn settings() -> Settings {
    Settings {
        name: "node1".into(),
        advertise: "10.0.0.11:6783".into(),
        peers: vec!["10.0.0.10".into()],
        ipam_init: Some(3),
        ..Settings::default()
    }
}

/// A Debian host: the usual directories, none of weft's.
fn debian() -> Tree {
    Tree::with_dirs(&[
        "etc",
        "etc/systemd",
        "etc/systemd/system",
        "usr",
        "usr/local",
        "usr/local/bin",
        "var",
        "var/lib",
    ])
}

#[test]
fn a_fresh_install_writes_every_file_and_records_what_it_made() {
    let mut t = debian();
    let before = t.clone();
    let plan = t.install(&settings(), b"s3cret\n", false).unwrap();
    let files: BTreeSet<&str> = t.files.keys().map(String::as_str).collect();
    assert_eq!(
        files,
        BTreeSet::from([BIN, PLUGIN, CONFIG, SECRET, UNIT, CONFLIST, MANIFEST])
    );
    assert_eq!(t.files[SECRET], (b"s3cret\n".to_vec(), 0o600));
    assert_eq!(t.files[BIN].1, 0o755);
    assert_eq!(t.files[UNIT].0, unit().into_bytes());
    let m = t.manifest().unwrap();
    assert_eq!(m.files.len(), 6, "the manifest does not list itself");
    // Only the directories that were missing are recorded.
    assert_eq!(
        m.dirs,
        BTreeSet::from(
            [
                "etc/weft",
                "opt",
                "opt/cni",
                "opt/cni/bin",
                "etc/cni",
                "etc/cni/net.d"
            ]
            .map(String::from)
        )
    );
    assert_eq!(plan.changed.len(), 6);
    // Directories come before the files in them.
    let first_write = plan
        .actions
        .iter()
        .position(|a| matches!(a, Action::Write { .. }))
        .unwrap();
    assert!(plan.actions[..first_write]
        .iter()
        .all(|a| matches!(a, Action::CreateDir(_))));
    assert!(t.dirs.is_superset(&before.dirs));
}

#[test]
fn a_second_install_with_the_same_settings_changes_nothing() {
    let mut t = debian();
    t.install(&settings(), b"s", false).unwrap();
    let after_first = t.clone();
    let plan = t.install(&settings(), b"s", false).unwrap();
    assert!(plan.is_empty(), "{:?}", plan.actions);
    assert_eq!(t, after_first);
}

#[test]
fn a_changed_setting_rewrites_exactly_the_config() {
    let mut t = debian();
    t.install(&settings(), b"s", false).unwrap();
    let mut s = settings();
    s.peers.push("10.0.0.12:6783".into());
    let plan = t.install(&s, b"s", false).unwrap();
    assert_eq!(plan.changed, BTreeSet::from([CONFIG.to_string()]));
    let config: serde_json::Value = serde_json::from_slice(&t.files[CONFIG].0).unwrap();
    assert_eq!(config["peers"][1], "10.0.0.12:6783");
    // The manifest follows (the config's new digest).
    assert_eq!(
        t.manifest().unwrap().files[CONFIG].sha256,
        digest(&t.files[CONFIG].0)
    );
    // A new binary replaces both copies.
    let wants2 = vec![Want::self_exe(BIN, &digest(b"weft 2"))];
    let m = t.manifest().unwrap();
    let plan = install(&wants2, &|p| t.look(p), Some(&m), false).unwrap();
    assert!(plan.changed.contains(BIN));
    // ... and files no longer wanted go.
    assert!(plan.actions.contains(&Action::Remove(CONFIG.into())));
}

#[test]
fn uninstall_leaves_the_tree_as_it_was_before_install() {
    for purge in [false, true] {
        let mut t = debian();
        let before = t.clone();
        t.install(&settings(), b"s", false).unwrap();
        t.uninstall(purge).unwrap();
        assert_eq!(t, before, "purge {purge}");
    }
}

#[test]
fn uninstall_keeps_the_data_directory_unless_purged_and_what_others_changed() {
    let mut t = debian();
    t.install(&settings(), b"s", false).unwrap();
    // The agent ran: its data directory has its identity.
    t.dirs.insert(DATA_DIR.into());
    t.files
        .insert(format!("{DATA_DIR}/identity"), (b"key".to_vec(), 0o600));
    // An administrator edited the config.
    t.files.get_mut(CONFIG).unwrap().0.extend(b" ");
    let plan = t.uninstall(false).unwrap();
    assert!(
        t.files.contains_key(CONFIG),
        "an edited file is not weft's to remove"
    );
    assert!(t.dirs.contains("etc/weft"), "its directory stays with it");
    assert!(plan
        .notes
        .iter()
        .any(|n| n.contains("left /etc/weft/agent.json")));
    assert!(t.files.contains_key(&format!("{DATA_DIR}/identity")));
    assert!(!t.files.contains_key(BIN) && !t.files.contains_key(MANIFEST));
    // With --purge the data directory goes too.
    let mut t2 = debian();
    t2.install(&settings(), b"s", false).unwrap();
    t2.dirs.insert(DATA_DIR.into());
    t2.files
        .insert(format!("{DATA_DIR}/identity"), (b"key".to_vec(), 0o600));
    t2.uninstall(true).unwrap();
    assert!(!t2.dirs.contains(DATA_DIR));
    assert_eq!(t2, debian());
}

#[test]
fn someone_elses_files_are_refused_by_name_and_nothing_is_planned() {
    let mut t = debian();
    t.files.insert(
        UNIT.into(),
        (b"[Service]\nExecStart=/bin/other\n".to_vec(), 0o644),
    );
    t.dirs.insert("etc/cni".into());
    t.dirs.insert("etc/cni/net.d".into());
    t.others.insert(CONFLIST.into());
    let before = t.clone();
    let e = t.install(&settings(), b"s", false).unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    assert!(e.0[0].contains(UNIT) || e.0[1].contains(UNIT), "{e}");
    assert!(e.to_string().contains("is not weft install's"), "{e}");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert_eq!(t, before, "a refused install changed the tree");
    // --force replaces a file, never a link or directory.
    assert!(t.install(&settings(), b"s", true).is_err());
    t.others.clear();
    t.install(&settings(), b"s", true).unwrap();
    assert_eq!(t.files[UNIT].0, unit().into_bytes());
    // A directory where the config goes is refused even with --force.
    let mut t = debian();
    t.dirs.insert("etc/weft".into());
    t.dirs.insert(CONFIG.into());
    let e = t.install(&settings(), b"s", true).unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");
}

#[test]
fn a_file_that_already_holds_what_weft_wants_is_kept_and_not_claimed() {
    let mut t = debian();
    // The secret was copied by hand, with the right content.
    t.dirs.insert("etc/weft".into());
    t.files.insert(SECRET.into(), (b"s".to_vec(), 0o600));
    let before_secret = t.files[SECRET].clone();
    let plan = t.install(&settings(), b"s", false).unwrap();
    assert!(plan
        .notes
        .iter()
        .any(|n| n.contains("kept /etc/weft/secret")));
    assert!(!t.manifest().unwrap().files.contains_key(SECRET));
    assert!(!t.manifest().unwrap().dirs.contains("etc/weft"));
    t.uninstall(false).unwrap();
    assert_eq!(
        t.files.get(SECRET),
        Some(&before_secret),
        "uninstall took it"
    );
    assert!(t.dirs.contains("etc/weft"));
}

#[test]
fn a_file_weft_wrote_but_someone_changed_is_refused_then_forced() {
    let mut t = debian();
    t.install(&settings(), b"s", false).unwrap();
    t.files.get_mut(CONFIG).unwrap().0 = b"{\"name\": \"edited\"}".to_vec();
    let mut s = settings();
    s.name = "node2".into();
    let e = t.install(&s, b"s", false).unwrap_err();
    assert!(
        e.to_string()
            .contains("was changed since weft install wrote it"),
        "{e}"
    );
    t.install(&s, b"s", true).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&t.files[CONFIG].0).unwrap();
    assert_eq!(config["name"], "node2");
    // A mode changed by hand on a file of weft's is set back.
    t.files.get_mut(SECRET).unwrap().1 = 0o644;
    let plan = t.install(&s, b"s", false).unwrap();
    assert_eq!(
        plan.actions[0],
        Action::Chmod {
            path: SECRET.into(),
            mode: 0o600
        }
    );
    assert_eq!(t.files[SECRET].1, 0o600);
}

#[test]
fn the_config_is_what_weft_agent_reads_and_the_manifest_is_weft_s() {
    let text = agent_config(&settings());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["secretFile"], "/etc/weft/secret");
    assert_eq!(v["dataDir"], "/var/lib/weft");
    assert_eq!(v["socket"], SOCKET);
    assert_eq!(v["ipamInit"], 3);
    assert!(v.get("ipamPools").is_none(), "the agent's default pools");
    assert!(unit().contains("ExecStart=/usr/local/bin/weft agent --config /etc/weft/agent.json"));
    assert!(Manifest::parse(b"{\"made_by\": \"someone\", \"files\": {}, \"dirs\": []}").is_err());
    assert!(Manifest::parse(b"not json").is_err());
    let m = Manifest {
        made_by: MADE_BY.into(),
        ..Manifest::default()
    };
    assert_eq!(Manifest::parse(m.text().as_bytes()).unwrap(), m);
}
