//! `weft install --root`, `weft uninstall --root` and `weft secret new` on a directory
//! tree (no root needed), and the installed unit through `systemd-analyze verify` (root:
//! it runs in a private mount namespace where the installed binary is at its path).

mod common;
use common::*;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-install-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every path under `root`: (type and mode, content digest for files, mtime).
fn snapshot(root: &Path) -> BTreeMap<String, (String, String, i64)> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (String, String, i64)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let kind = if m.is_dir() { "dir" } else { "file" };
            let content = if m.is_file() {
                weft_install::digest(&std::fs::read(&p).unwrap())
            } else {
                String::new()
            };
            out.insert(
                rel,
                (
                    format!("{kind} {:o}", m.mode() & 0o7777),
                    content,
                    m.mtime_nsec() + m.mtime() * 1_000_000_000,
                ),
            );
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn install_args<'a>(root: &'a str, secret: &'a str) -> Vec<&'a str> {
    vec![
        "install",
        "--root",
        root,
        "--name",
        "node1",
        "--advertise",
        "10.0.0.11",
        "--peer",
        "10.0.0.10",
        "--ipam-init",
        "3",
        "--secret-file",
        secret,
    ]
}

#[test]
fn install_writes_exactly_the_expected_files_a_rerun_changes_nothing_and_uninstall_restores() {
    let d = tmpdir("tree");
    let root = d.join("root");
    // A tree as a host has it: some directories, and a file of someone else's.
    for dir in [
        "etc/systemd/system",
        "usr/local/bin",
        "var/lib",
        "etc/cni/net.d",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("etc/cni/net.d/10-other.conflist"), "{}").unwrap();
    let secret = d.join("secret");
    weft_ok(&["secret", "new", "--out", secret.to_str().unwrap()]);
    assert_eq!(
        std::fs::metadata(&secret).unwrap().mode() & 0o777,
        0o600,
        "the secret is private"
    );
    let before = snapshot(&root);
    let (r, s) = (root.to_str().unwrap(), secret.to_str().unwrap());
    let out = weft_ok(&install_args(r, s));
    assert!(out.contains("wrote /etc/weft/agent.json"), "{out}");

    let after = snapshot(&root);
    let added: Vec<(&str, &str)> = after
        .iter()
        .filter(|(p, _)| !before.contains_key(*p))
        .map(|(p, (kind, _, _))| (p.as_str(), kind.as_str()))
        .collect();
    assert_eq!(
        added,
        vec![
            ("etc/cni/net.d/weft.conflist", "file 644"),
            ("etc/systemd/system/weft-agent.service", "file 644"),
            ("etc/weft", "dir 755"),
            ("etc/weft/agent.json", "file 644"),
            ("etc/weft/install.json", "file 644"),
            ("etc/weft/secret", "file 600"),
            ("opt", "dir 755"),
            ("opt/cni", "dir 755"),
            ("opt/cni/bin", "dir 755"),
            ("opt/cni/bin/weft", "file 755"),
            ("usr/local/bin/weft", "file 755"),
        ]
    );
    let exe = weft_install::digest(&std::fs::read(WEFT).unwrap());
    assert_eq!(after["usr/local/bin/weft"].1, exe);
    assert_eq!(after["opt/cni/bin/weft"].1, exe);
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert_eq!(
        read("etc/weft/secret"),
        std::fs::read_to_string(&secret).unwrap()
    );
    // The files are the examples the README points at, and a config the agent takes.
    assert_eq!(
        read("etc/systemd/system/weft-agent.service"),
        include_str!("../../../examples/weft-agent.service"),
        "examples/weft-agent.service is out of date"
    );
    assert_eq!(
        read("etc/cni/net.d/weft.conflist").trim(),
        include_str!("../../../examples/weft-cluster.conflist").trim()
    );
    let config: serde_json::Value = serde_json::from_str(&read("etc/weft/agent.json")).unwrap();
    assert_eq!(config["name"], "node1");
    assert_eq!(config["advertise"], "10.0.0.11:6783");
    assert_eq!(config["peers"], serde_json::json!(["10.0.0.10"]));
    assert_eq!(config["ipamInit"], 3);
    assert_eq!(config["secretFile"], "/etc/weft/secret");

    // Again, the same: nothing is written (not even a timestamp).
    let out = weft_ok(&install_args(r, s));
    assert!(out.contains("nothing changed"), "{out}");
    assert_eq!(snapshot(&root), after, "a second install changed the tree");

    // Another peer: exactly the config changes.
    let mut more = install_args(r, s);
    more.extend(["--peer", "10.0.0.12"]);
    let out = weft_ok(&more);
    assert_eq!(out.trim(), "updated /etc/weft/agent.json", "{out}");
    let changed: Vec<String> = snapshot(&root)
        .into_iter()
        .filter(|(p, v)| after.get(p) != Some(v) && !v.0.starts_with("dir"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        changed,
        vec!["etc/weft/agent.json", "etc/weft/install.json"]
    );

    let out = weft_ok(&["uninstall", "--root", r]);
    assert!(out.contains("removed /usr/local/bin/weft"), "{out}");
    let mut left = snapshot(&root);
    let mut was = before.clone();
    // Directories whose content changed have a new mtime; everything else is as before.
    for v in left.values_mut().chain(was.values_mut()) {
        if v.0.starts_with("dir") {
            v.2 = 0;
        }
    }
    assert_eq!(left, was, "uninstall did not restore the tree");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn install_refuses_what_is_not_weft_s_and_joining_needs_the_secret() {
    let d = tmpdir("refuse");
    let root = d.join("root");
    std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
    std::fs::write(
        root.join("etc/systemd/system/weft-agent.service"),
        "[Service]\nExecStart=/opt/other/weft\n",
    )
    .unwrap();
    let secret = d.join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let before = snapshot(&root);
    let r = root.to_str().unwrap();
    let out = weft(&install_args(r, secret.to_str().unwrap()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/etc/systemd/system/weft-agent.service exists and is not weft install's"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(snapshot(&root), before, "a refused install wrote something");

    // Joining (--peer) without a secret: refused, with the way out.
    let out = weft(&[
        "install",
        "--root",
        r,
        "--name",
        "n2",
        "--advertise",
        "10.0.0.12",
        "--peer",
        "10.0.0.10",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--secret-file"),
        "{err}"
    );
    // A bad setting is the agent's refusal, named, before anything is written.
    let out = weft(&[
        "install",
        "--root",
        r,
        "--name",
        "n 2",
        "--advertise",
        "10.0.0.12",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`name`"), "{err}");
    assert_eq!(snapshot(&root), before);

    // A new cluster (no --peer) gets a new secret, kept across reinstalls.
    let fresh = d.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let f = fresh.to_str().unwrap();
    let args = [
        "install",
        "--root",
        f,
        "--name",
        "n1",
        "--advertise",
        "10.0.0.11",
    ];
    weft_ok(&args);
    let s1 = std::fs::read_to_string(fresh.join("etc/weft/secret")).unwrap();
    assert_eq!(s1.trim().len(), 64, "{s1}");
    let out = weft_ok(&args);
    assert!(out.contains("nothing changed"), "{out}");
    weft_ok(&["uninstall", "--root", f, "--purge"]);
    assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_installed_unit_passes_systemd_analyze_verify() {
    if !root_or_skip("the_installed_unit_passes_systemd_analyze_verify") {
        return;
    }
    let d = tmpdir("verify");
    let root = d.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let r = root.to_str().unwrap();
    weft_ok(&[
        "install",
        "--root",
        r,
        "--name",
        "n1",
        "--advertise",
        "10.0.0.11",
    ]);
    // systemd checks that ExecStart's binary exists: in a mount namespace of its own, the
    // installed /usr/local/bin is where the unit expects it. Nothing outside changes.
    let script = format!(
        "mount --bind {r}/usr/local/bin /usr/local/bin && \
         systemd-analyze verify --man=no {r}/etc/systemd/system/weft-agent.service"
    );
    let (ok, text) = sh(
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    );
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
