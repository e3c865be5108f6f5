//! The command line without root: install-cni, help, and the CNI mode switch.

mod common;
use common::*;

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("weft-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn install_cni_writes_the_plugin_and_the_example_conflist() {
    let d = tmpdir("install");
    let (bin, conf) = (d.join("bin"), d.join("conf"));
    let args = [
        "install-cni",
        "--bin-dir",
        bin.to_str().unwrap(),
        "--conf-dir",
        conf.to_str().unwrap(),
    ];
    weft_ok(&args);
    let written = std::fs::read_to_string(conf.join("weft.conflist")).unwrap();
    let example = include_str!("../../../examples/weft.conflist");
    assert_eq!(
        written.trim(),
        example.trim(),
        "examples/weft.conflist is out of date"
    );
    assert_eq!(
        std::fs::read(bin.join("weft")).unwrap(),
        std::fs::read(WEFT).unwrap()
    );
    // No silent overwrite; --force overwrites.
    let out = weft(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let mut forced = args.to_vec();
    forced.push("--force");
    weft_ok(&forced);
    // A bad range is refused before anything is written.
    let d2 = tmpdir("install-bad");
    let out = weft(&[
        "install-cni",
        "--bin-dir",
        d2.join("bin").to_str().unwrap(),
        "--conf-dir",
        d2.join("conf").to_str().unwrap(),
        "--range",
        "10.0.0.0/33",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("range"));
    assert!(!d2.exists(), "a refused install wrote files");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn help_explains_the_commands() {
    let top = weft_ok(&["--help"]);
    for word in ["lab", "install-cni", "CNI_COMMAND"] {
        assert!(top.contains(word), "weft --help lacks {word}: {top}");
    }
    let lab = weft_ok(&["lab", "--help"]);
    for word in [
        "up", "down", "status", "exec", "run", "rm", "podman", "demo",
    ] {
        assert!(lab.contains(word), "weft lab --help lacks {word}");
    }
    let up = weft_ok(&["lab", "up", "--help"]);
    assert!(up.contains("mesh") && up.contains("subnets") && up.contains("partial"));
}

#[test]
fn a_cni_caller_without_cni_command_gets_a_cni_error_not_usage() {
    let out = std::process::Command::new(WEFT)
        .env_clear()
        .env("CNI_CONTAINERID", "x")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("CNI error JSON");
    assert_eq!(v["code"], 4);
    assert!(v["msg"].as_str().unwrap().contains("CNI_COMMAND"));
}

#[test]
fn a_silent_agent_gets_a_sentence_with_the_socket_and_the_wait_not_os_error_11() {
    let d = tmpdir("silent");
    std::fs::create_dir_all(&d).unwrap();
    let sock = d.join("weft.sock");
    // Accepts connections (the kernel's backlog does) and never answers.
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let s = sock.to_str().unwrap();
    let started = std::time::Instant::now();
    let out = weft(&["status", "--socket", s, "--timeout", "0.5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("the agent at {s} did not answer within 0.5 s")),
        "{err}"
    );
    assert!(err.contains("--timeout"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // No agent at all: said so, with the way to another socket.
    let out = weft(&["peers", "--socket", d.join("none.sock").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach the weft agent"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let out = weft(&["status", "--timeout", "0"]);
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&d);
}
