//! `weft lab demo`: the main job of the README, narrated.

use std::path::Path;
use std::process::Command;

const LAB: &str = "demo";

fn step(text: &str) {
    println!("\n==> {text}");
}

fn show(args: &[&str]) -> Result<String, String> {
    println!("$ {}", args.join(" "));
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("run {}: {e}", args[0]))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    if !out.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

/// Runs the demo; tears the lab down afterwards unless `keep`.
pub fn run(weft: &Path, keep: bool) -> Result<(), String> {
    let res = demo(weft);
    if !keep || res.is_err() {
        step("tearing the lab down");
        let _ = weft_lab::down(LAB);
        println!("lab {LAB} is down; the root network namespace was never touched");
    }
    res
}

fn demo(weft: &Path) -> Result<(), String> {
    let w = weft.to_string_lossy().to_string();
    let e = |e: weft_lab::LabError| e.0;
    step("a lab of three hosts in network namespaces; h3 reaches only h2 (partial topology)");
    let _ = weft_lab::down(LAB);
    weft_lab::up(LAB, 3, weft_lab::Topology::Partial, weft).map_err(e)?;
    step("the mesh: each agent was given one peer; they find the rest and route around the gap");
    let sock = weft_lab::agent_socket(LAB, "h3")
        .to_string_lossy()
        .to_string();
    for _ in 0..100 {
        let out = Command::new(&w)
            .args(["status", "--socket", &sock, "--json"])
            .output()
            .map_err(|e| format!("run weft status: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let up = v["peers"]
            .as_array()
            .map(|p| p.iter().filter(|x| x["status"] == "up").count())
            .unwrap_or(0);
        if up == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    show(&[&w, "status", "--socket", &sock])?;
    step("the cluster IPAM: the three agents agreed on one start and share the pool in blocks");
    for _ in 0..100 {
        let out = Command::new(&w)
            .args(["ipam", "--socket", &sock, "--json"])
            .output()
            .map_err(|e| format!("run weft ipam: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let heirs_known = v["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 3 && n.iter().all(|x| x["heir"].is_string()));
        if v["ready"] == true && heirs_known {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    show(&[&w, "ipam", "--socket", &sock])?;
    step("two containers on h1, attached by the weft CNI plugin");
    let a = weft_lab::run(LAB, "h1", "a", None, &[]).map_err(e)?;
    let b = weft_lab::run(
        LAB,
        "h1",
        "b",
        None,
        &[
            "busybox", "nc", "-ll", "-p", "8080", "-e", "echo", "hello", "from", "b",
        ]
        .map(String::from),
    )
    .map_err(e)?;
    let a_ip = a.ip.clone().unwrap_or_default();
    let b_ip = b.ip.clone().unwrap_or_default();
    println!("a = {a_ip}, b = {b_ip}");
    step("inside a: one veth, a /32 address, a default route through a link-local gateway");
    show(&[
        &w, "lab", "exec", "--name", LAB, "h1/a", "--", "ip", "-br", "addr",
    ])?;
    show(&[
        &w, "lab", "exec", "--name", LAB, "h1/a", "--", "ip", "route",
    ])?;
    step("on h1: a /32 route per container, no bridge");
    show(&[&w, "lab", "exec", "--name", LAB, "h1", "--", "ip", "route"])?;
    step("a pings b");
    show(&[
        &w, "lab", "exec", "--name", LAB, "h1/a", "--", "ping", "-c", "3", "-i", "0.2", &b_ip,
    ])?;
    step("a talks TCP to b");
    let mut reply = String::new();
    for _ in 0..20 {
        reply = show(&[
            &w, "lab", "exec", "--name", LAB, "h1/a", "--", "busybox", "nc", "-w", "2", &b_ip,
            "8080",
        ])
        .unwrap_or_default();
        if reply.contains("hello from b") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if !reply.contains("hello from b") {
        return Err("TCP from a to b did not get b's answer".into());
    }
    step("the lab");
    show(&[&w, "lab", "status", "--name", LAB])?;
    println!("\ndemo passed: two containers on one lab host reach each other over weft");
    Ok(())
}
