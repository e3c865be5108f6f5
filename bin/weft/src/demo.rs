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
    step("a web container on each host, started by podman through the weft CNI plugin");
    let mut pods = Vec::new();
    for h in ["h1", "h2", "h3"] {
        let name = format!("web-{h}");
        let ip = start_pod(h, &name)?;
        println!("{h}: {name} = {ip}");
        pods.push((h, name, ip));
    }
    step("every container fetches every other's page, across hosts");
    for (h, name, _) in &pods {
        for (h2, _, ip) in &pods {
            if h == h2 {
                continue;
            }
            let url = format!("http://{ip}/");
            let want = format!("hello from {h2}");
            let mut got = String::new();
            for _ in 0..50 {
                got = pod_exec(h, name, &["wget", "-qO-", &url]).unwrap_or_default();
                if got.contains(&want) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            if !got.contains(&want) {
                return Err(format!("{name} on {h} did not reach {url}: {got:?}"));
            }
            println!("{name} -> {ip}: {}", got.trim());
        }
    }
    step("on h1: a /32 route per local container; a route per block of the other hosts, h3's through h2 (h1 cannot reach h3 directly)");
    show(&[&w, "lab", "exec", "--name", LAB, "h1", "--", "ip", "route"])?;
    step("ping from h1's container to h3's, and the path it takes: through h2");
    let h3_ip = pods[2].2.clone();
    println!("$ weft lab podman h1 -- exec web-h1 ping -c 3 {h3_ip}");
    print!(
        "{}",
        pod_exec("h1", "web-h1", &["ping", "-c", "3", &h3_ip])?
    );
    println!("$ weft lab podman h1 -- exec web-h1 traceroute -n {h3_ip}");
    print!(
        "{}",
        pod_exec(
            "h1",
            "web-h1",
            &["traceroute", "-n", "-w", "1", "-q", "1", &h3_ip]
        )?
    );
    step("weft status on h1: the mesh, and the data plane it programmed");
    let sock1 = weft_lab::agent_socket(LAB, "h1")
        .to_string_lossy()
        .to_string();
    show(&[&w, "status", "--socket", &sock1])?;
    step("the lab");
    show(&[&w, "lab", "status", "--name", LAB])?;
    println!("\ndemo passed: containers on three lab hosts reach each other over weft, h3's through the relay h2");
    Ok(())
}

/// Starts a busybox web container on `host` with podman; returns its address.
fn start_pod(host: &str, name: &str) -> Result<String, String> {
    let page = format!("echo hello from {host} > /tmp/index.html; exec httpd -f -p 80 -h /tmp");
    let code = weft_lab::podman(
        LAB,
        host,
        &[
            "run",
            "-d",
            "--name",
            name,
            weft_lab::BUSYBOX_IMAGE,
            "sh",
            "-c",
            &page,
        ]
        .map(String::from),
    )
    .map_err(|e| e.0)?;
    if code != 0 {
        return Err(format!("podman run on {host} failed (exit {code})"));
    }
    let ip = podman_out(
        host,
        &[
            "inspect",
            name,
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        ],
    )?;
    Ok(ip.trim().to_string())
}

/// `podman exec NAME ARGS` on `host`: its output.
fn pod_exec(host: &str, name: &str, args: &[&str]) -> Result<String, String> {
    let mut v = vec!["exec", name];
    v.extend_from_slice(args);
    podman_out(host, &v)
}

fn podman_out(host: &str, args: &[&str]) -> Result<String, String> {
    let state = weft_lab::load(LAB).map_err(|e| e.0)?;
    let hp = state
        .plan
        .host(host)
        .ok_or_else(|| format!("no host {host}"))?
        .clone();
    let out = weft_lab::podman_command(LAB, &hp)
        .map_err(|e| e.0)?
        .args(args)
        .output()
        .map_err(|e| format!("run podman: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
