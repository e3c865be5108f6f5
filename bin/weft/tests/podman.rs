//! Real clients: podman 4 (CNI backend) inside a lab host, using weft chained with the
//! reference portmap, bandwidth and tuning plugins.

mod common;
use common::*;

fn podman(lab: &Lab, host: &str, args: &[&str]) -> (bool, String) {
    lab.lab_cmd("podman", host, args)
}

fn podman_ok(lab: &Lab, host: &str, args: &[&str]) -> String {
    let (ok, out) = podman(lab, host, args);
    assert!(ok, "podman {}: {out}", args.join(" "));
    out
}

fn container_ip(lab: &Lab, host: &str, name: &str) -> String {
    podman_ok(
        lab,
        host,
        &[
            "inspect",
            name,
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        ],
    )
    .trim()
    .to_string()
}

/// Retries a check a few times: servers in fresh containers take a moment to listen.
fn eventually(mut f: impl FnMut() -> (bool, String)) -> (bool, String) {
    let mut last = (false, String::new());
    for _ in 0..30 {
        last = f();
        if last.0 {
            return last;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    last
}

#[test]
fn podman_containers_ping_talk_tcp_and_publish_ports() {
    if !root_or_skip("podman") {
        return;
    }
    let lab = Lab::up("pod", 2, "mesh");
    const IMG: &str = "localhost/weft-busybox";
    podman_ok(
        &lab,
        "h1",
        &["run", "-d", "--name", "a", IMG, "sleep", "600"],
    );
    podman_ok(
        &lab,
        "h1",
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            "8080:80",
            IMG,
            "sh",
            "-c",
            "echo hello-from-web > /tmp/index.html; exec httpd -f -p 80 -h /tmp",
        ],
    );
    let a = container_ip(&lab, "h1", "a");
    let web = container_ip(&lab, "h1", "web");
    // Lab hosts hand out cluster addresses through their agent (default pool 10.32.0.0/12).
    let pool: ipnet::IpNet = "10.32.0.0/12".parse().unwrap();
    for ip in [&a, &web] {
        assert!(
            pool.contains(&ip.parse::<std::net::IpAddr>().unwrap()),
            "{ip}"
        );
    }
    assert_ne!(a, web);

    // weft's veth and /32 route for each container on the host.
    let (_, routes) = lab.exec("h1", &["ip", "route"]);
    assert!(routes.contains(&format!("{web} dev weft")), "{routes}");
    assert_eq!(weft_links(&lab.host_ns("h1")).len(), 2);

    // Ping and TCP between the two containers.
    let (ok, out) = podman(
        &lab,
        "h1",
        &["exec", "a", "ping", "-c", "2", "-W", "2", &web],
    );
    assert!(ok, "ping a -> web: {out}");
    let (ok, out) = eventually(|| {
        let (ok, out) = podman(
            &lab,
            "h1",
            &["exec", "a", "wget", "-qO-", &format!("http://{web}:80/")],
        );
        (ok && out.contains("hello-from-web"), out)
    });
    assert!(ok, "TCP a -> web: {out}");

    // portmap: h2 reaches the container through h1's underlay address, port 8080.
    let (ok, out) = eventually(|| {
        let (ok, out) = lab.exec(
            "h2",
            &["busybox", "wget", "-qO-", "http://172.30.0.1:8080/"],
        );
        (ok && out.contains("hello-from-web"), out)
    });
    assert!(ok, "published port from h2: {out}");

    // Removing the containers removes weft's links and frees the addresses.
    podman_ok(&lab, "h1", &["rm", "-f", "-t", "0", "a", "web"]);
    assert!(weft_links(&lab.host_ns("h1")).is_empty());
    let sock = format!("/run/weft-lab/{}/h1/weft.sock", lab.name);
    let (ok, text) = lab.exec("h1", &[WEFT, "ipam", "--json", "--socket", &sock]);
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let me = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["local"] == true)
        .cloned()
        .unwrap();
    assert_eq!(me["used"], 0, "the agent still holds addresses: {me}");

    // A container left running is removed by `lab down` with its namespace.
    podman_ok(
        &lab,
        "h1",
        &["run", "-d", "--name", "left", IMG, "sleep", "600"],
    );
    drop(lab);
    let (_, list) = sh("ip", &["netns", "list"]);
    assert!(!list.contains("weft-pod-"), "{list}");
    assert!(
        !list.contains("netns-"),
        "podman's namespace survived lab down: {list}"
    );
}
