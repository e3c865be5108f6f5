//! Builds the BPF program with clang (`scripts/setup.sh` installs it). `CLANG` picks
//! another compiler.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/fastpath.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("fastpath.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // The UAPI headers' asm/ directory lives in the multiarch include path on Debian.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} could not build {src} ({s})"),
        Err(e) => panic!(
            "weft's BPF fast path is built with clang, which could not be run ({clang}: {e}); \
             `bash scripts/setup.sh` installs it (apt-get install clang)"
        ),
    }
}
