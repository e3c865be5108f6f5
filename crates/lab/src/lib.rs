//! The virtual multi-host lab: hosts as network namespaces joined by an isolated underlay,
//! containers attached through CNI.
//!
//! Everything a lab makes is a named network namespace called `weft-LAB-...` plus files
//! under `/run/weft-lab/LAB/`. Links are created inside lab namespaces only (a veth's
//! peer is created directly in its target namespace), so nothing is ever added to the root
//! network namespace or linked to it. `down` ends the processes inside the lab's
//! namespaces, asks each host's podman to remove its containers, and deletes the
//! namespaces, which removes every link in them. `up` first clears what a crashed run left.
//!
//! Every host runs the mesh agent (`weft agent`, see [`agents`]) unless the lab is made
//! without; `cut` and `heal` block and unblock pairs of hosts at their switches. A host's
//! dockerd ([`docker`]) starts on the first `weft lab docker`; its process tree and its
//! containers are found by their cgroups (`weft-lab-LAB-HOST...`), which `down` empties
//! and removes.

pub mod agents;
pub mod docker;
pub mod plan;
mod runtime;
pub mod settle;
pub mod sys;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use agents::{
    agent, agent_running, agent_socket, cut, heal, secret_path, status_json, AgentAction,
    AgentState,
};
pub use plan::{plan, LabPlan, Topology};
pub use runtime::{cni_exec, CniCall};

/// Where labs keep their files.
pub const LAB_ROOT: &str = "/run/weft-lab";

/// A lab failure, in words for the person at the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LabError(pub String);

impl LabError {
    /// A new error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        LabError(msg.into())
    }
}

/// A container the lab started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    /// Host it runs on.
    pub host: String,
    /// Its name (unique per host).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// The CNI container id used for it.
    pub container_id: String,
    /// The conflist it was attached with.
    pub conflist: PathBuf,
    /// The host namespace its plugins ran in.
    pub host_netns: String,
    /// The CNI_PATH its plugins were found in.
    pub cni_path: String,
    /// The final CNI result of its ADD.
    pub result: serde_json::Value,
    /// Its (first) address, from the result.
    pub ip: Option<String>,
    /// Every address, from the result (IPv4 first).
    #[serde(default)]
    pub ips: Vec<String>,
    /// The pid of the command it runs, if one was given.
    pub pid: Option<i32>,
    /// Its identity as passed to CNI: namespace, labels, named ports.
    #[serde(default)]
    pub identity: Identity,
}

/// Who a lab container is, as a container runtime tells CNI: `CNI_ARGS`
/// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` (the container's name), labels in the network
/// config's `args.cni.labels`, named ports in `args.weft.ports` (docs/policy.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Its namespace (`default` when none).
    pub namespace: Option<String>,
    /// Labels, KEY → VALUE.
    pub labels: Vec<(String, String)>,
    /// Named ports: (name, port, protocol TCP|UDP|SCTP).
    pub ports: Vec<(String, u16, String)>,
}

impl Identity {
    fn cni_args(&self, container: &str) -> Vec<(String, String)> {
        vec![
            ("IgnoreUnknown".into(), "1".into()),
            (
                "K8S_POD_NAMESPACE".into(),
                self.namespace.clone().unwrap_or_else(|| "default".into()),
            ),
            ("K8S_POD_NAME".into(), container.into()),
        ]
    }

    fn conf_args(&self) -> Option<serde_json::Value> {
        if self.labels.is_empty() && self.ports.is_empty() {
            return None;
        }
        let labels: Vec<serde_json::Value> = self
            .labels
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect();
        let ports: Vec<serde_json::Value> = self
            .ports
            .iter()
            .map(|(n, p, proto)| serde_json::json!({"name": n, "port": p, "protocol": proto}))
            .collect();
        Some(serde_json::json!({"cni": {"labels": labels}, "weft": {"ports": ports}}))
    }
}

/// What the lab knows about itself, kept in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabState {
    /// The plan it was made from.
    pub plan: LabPlan,
    /// True once `up` finished.
    pub complete: bool,
    /// Containers started with `run`.
    pub containers: Vec<ContainerState>,
    /// Each host's mesh agent (also when the lab was made without starting them).
    #[serde(default)]
    pub agents: Vec<AgentState>,
    /// Host pairs cut with `cut` (each pair once, names in order), on top of the
    /// topology's own blocked pairs.
    #[serde(default)]
    pub cuts: Vec<(String, String)>,
    /// Containers get addresses from the agents' cluster IPAM (the lab was made with
    /// agents); otherwise from each host's own range.
    #[serde(default)]
    pub cluster_ipam: bool,
}

/// How `up_with` makes a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpOptions {
    /// Start the mesh agent on every host (and wait until each answers on its socket).
    /// Containers then get cluster addresses from the agents; without agents, from each
    /// host's own range.
    pub agents: bool,
    /// More arguments for every agent (e.g. `--mode vxlan`).
    pub agent_args: Vec<String>,
    /// The underlay's address families.
    pub underlay: plan::Underlay,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            agents: true,
            agent_args: Vec::new(),
            underlay: plan::Underlay::Ipv4,
        }
    }
}

/// The directory of lab `name`.
pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(name)
}

/// The directory of one host of a lab (its CNI configs and data).
pub fn host_dir(name: &str, host: &str) -> PathBuf {
    lab_dir(name).join(host)
}

/// The CNI plugin directory of a lab (holds `weft`), listed before the system's.
pub fn cni_bin_dir(name: &str) -> PathBuf {
    lab_dir(name).join("bin")
}

/// Where Debian's reference CNI plugins live.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// The CNI_PATH the lab uses.
pub fn cni_path(name: &str) -> String {
    format!("{}:{SYSTEM_CNI_DIR}", cni_bin_dir(name).display())
}

fn require_root() -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::new(
            "the lab creates network namespaces: run it as root",
        ));
    }
    Ok(())
}

/// Reads a lab's state.
pub fn load(name: &str) -> Result<LabState, LabError> {
    plan::check_name(name).map_err(LabError::new)?;
    let path = lab_dir(name).join("state.json");
    let bytes = fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            LabError::new(format!("no lab named {name:?} (see `weft lab status`)"))
        } else {
            LabError::new(format!("read {}: {e}", path.display()))
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| LabError::new(format!("{} is damaged: {e}", path.display())))
}

fn save(state: &LabState) -> Result<(), LabError> {
    let path = lab_dir(&state.plan.name).join("state.json");
    let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
    sys::write_atomic(&path, &bytes)
}

/// Changes a lab's state under its lock.
fn update<T>(name: &str, f: impl FnOnce(&mut LabState) -> T) -> Result<T, LabError> {
    let _lock = sys::lock(&lab_dir(name).join("lock"))?;
    let mut state = load(name)?;
    let out = f(&mut state);
    save(&state)?;
    Ok(out)
}

/// The names of all labs with a state file.
pub fn list() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(LAB_ROOT)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("state.json").exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Resolves an optional `--name`: the given one, or the only lab there is.
pub fn resolve(name: Option<&str>) -> Result<String, LabError> {
    if let Some(n) = name {
        plan::check_name(n).map_err(LabError::new)?;
        return Ok(n.to_string());
    }
    let labs = list();
    match labs.len() {
        0 => Err(LabError::new(
            "no lab is up: start one with `weft lab up --hosts N`",
        )),
        1 => Ok(labs[0].clone()),
        _ => Err(LabError::new(format!(
            "several labs exist ({}): say which with --name",
            labs.join(", ")
        ))),
    }
}

/// Brings a lab up with an agent on every host. `weft_bin` is the weft binary the hosts use
/// as their CNI plugin and agent.
pub fn up(
    name: &str,
    hosts: usize,
    topology: Topology,
    weft_bin: &Path,
) -> Result<LabState, LabError> {
    up_with(name, hosts, topology, weft_bin, UpOptions::default())
}

/// Brings a lab up as `opts` says.
pub fn up_with(
    name: &str,
    hosts: usize,
    topology: Topology,
    weft_bin: &Path,
    opts: UpOptions,
) -> Result<LabState, LabError> {
    require_root()?;
    let plan = plan::plan_with(name, hosts, topology, opts.underlay).map_err(LabError::new)?;
    if let Ok(state) = load(name) {
        if state.complete
            && state
                .plan
                .namespaces()
                .iter()
                .all(|ns| Path::new(&sys::netns_path(ns)).exists())
        {
            return Err(LabError::new(format!(
                "lab {name:?} is already up; `weft lab down --name {name}` first"
            )));
        }
    }
    // Whatever a crashed run left behind goes first.
    down(name)?;
    let result = build(&plan, weft_bin, &opts);
    if let Err(e) = result {
        let _ = down(name);
        return Err(e);
    }
    load(name)
}

fn build(plan: &LabPlan, weft_bin: &Path, opts: &UpOptions) -> Result<(), LabError> {
    let name = &plan.name;
    let dir = lab_dir(name);
    fs::create_dir_all(&dir)
        .map_err(|e| LabError::new(format!("create {}: {e}", dir.display())))?;
    let mut state = LabState {
        plan: plan.clone(),
        complete: false,
        containers: vec![],
        agents: agents::plan_agents(plan, weft_bin, &opts.agent_args),
        cuts: vec![],
        cluster_ipam: opts.agents,
    };
    save(&state)?;

    for ns in plan.namespaces() {
        sys::netns_add(&ns)?;
        // The lab plans every address, so duplicate address detection only delays them
        // (a second per address): new links of lab namespaces skip it.
        if ipv6_on() {
            for key in ["all", "default"] {
                sys::netns_sysctl(&ns, &format!("net.ipv6.conf.{key}.accept_dad"), "0")?;
            }
        }
    }
    for sw in &plan.switches {
        sys::ip_batch(
            sw,
            &["link add br0 type bridge".into(), "link set br0 up".into()],
        )?;
    }
    if let Some(rt) = &plan.router {
        for (i, sw) in plan.switches.iter().enumerate() {
            let seg = i + 1;
            sys::ip_batch(
                sw,
                &[
                    format!("link add rt type veth peer name eth{seg} netns {rt}"),
                    "link set rt master br0 up".into(),
                ],
            )?;
            let mut lines = Vec::new();
            if plan.underlay.v4() {
                lines.push(format!("addr add 172.30.{seg}.254/24 dev eth{seg}"));
            }
            if plan.underlay.v6() {
                let a = plan::underlay6(seg as u8, 0xfe);
                lines.push(format!("addr add {a}/64 dev eth{seg}"));
            }
            lines.push(format!("link set eth{seg} up"));
            sys::ip_batch(rt, &lines)?;
        }
        sys::netns_sysctl(rt, "net.ipv4.ip_forward", "1")?;
        if ipv6_on() {
            sys::netns_sysctl(rt, "net.ipv6.conf.all.forwarding", "1")?;
        }
        if plan.topology == plan::Topology::Nat {
            sys::run_input(
                "ip",
                &["netns", "exec", rt, "nft", "-f", "-"],
                Some(NAT_RULES),
            )?;
        }
    }
    for h in &plan.hosts {
        let v4 = (!h.v6_only).then_some(h.underlay);
        attach(
            &h.switch,
            &h.name,
            &h.netns,
            v4,
            h.gateway,
            h.underlay6,
            h.gateway6,
        )?;
        sys::netns_sysctl(&h.netns, "net.ipv4.ip_forward", "1")?;
        // Containers' IPv6 traffic (dual-stack pools) is forwarded by the host too.
        if ipv6_on() {
            sys::netns_sysctl(&h.netns, "net.ipv6.conf.all.forwarding", "1")?;
        }
        write_host_files(name, h, opts.agents)?;
    }
    let out = &plan.outside;
    let v4 = plan.underlay.v4().then_some(out.addr);
    attach(
        &out.switch,
        "out",
        &out.netns,
        v4,
        out.gateway,
        out.addr6,
        out.gateway6,
    )?;
    apply_filters(plan, &[])?;

    let bin = cni_bin_dir(name);
    fs::create_dir_all(&bin)
        .map_err(|e| LabError::new(format!("create {}: {e}", bin.display())))?;
    let link = bin.join("weft");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(weft_bin, &link)
        .map_err(|e| LabError::new(format!("link {}: {e}", link.display())))?;

    agents::write_secret(name)?;
    if opts.agents {
        // Saved with the pids even when one fails, so `down` and `status` see them.
        let started = agents::start_all(&mut state);
        save(&state)?;
        started?;
    }
    // Whoever uses the lab next (a test comparing state, a ping) sees the kernel's final
    // state: carriers, link-local addresses, no tentative address.
    for ns in plan.namespaces() {
        settle::wait_settled(&ns, SETTLE_LIMIT)?;
    }
    state.complete = true;
    save(&state)
}

/// The router of the `nat` topology: what the private segment (`eth2`) sends out of the
/// public one (`eth1`) leaves from the router's address, and nothing comes in that the
/// private side did not start, over both families.
const NAT_RULES: &str = "table inet weftlab_nat {
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname \"eth1\" oifname \"eth2\" ct state established,related accept
    iifname \"eth1\" oifname \"eth2\" drop
  }
  chain postrouting {
    type nat hook postrouting priority 100;
    iifname \"eth2\" oifname \"eth1\" masquerade
  }
}
";

/// The kernel has IPv6 (not booted with `ipv6.disable=1`).
fn ipv6_on() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

/// How long `up` waits for a namespace's links to settle (the kernel's link watcher
/// batches carrier changes by up to a second; duplicate address detection is off).
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// The conflist every lab host uses by default: weft alone, with cluster addresses from the
/// host's agent (`cluster`), else from the host's own range.
pub fn host_conflist(lab: &str, host: &plan::HostPlan, cluster: bool) -> String {
    let data = host_dir(lab, &host.name).join("data");
    let plugin = if cluster {
        serde_json::json!({
            "type": "weft",
            "agentSocket": agents::agent_socket(lab, &host.name),
            "dataDir": data,
        })
    } else {
        serde_json::json!({ "type": "weft", "range": host.pod_range, "dataDir": data })
    };
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "weft",
        "plugins": [plugin]
    }))
    .expect("json")
}

/// Plugs `netns` into the switch namespace `switch` (a veth `port` on its `br0`, `eth0`
/// inside) with `addr`/24 and `addr6`/64 when given and, when given, default routes via
/// `gateway` and `gateway6`.
fn attach(
    switch: &str,
    port: &str,
    netns: &str,
    addr: Option<std::net::Ipv4Addr>,
    gateway: Option<std::net::Ipv4Addr>,
    addr6: Option<std::net::Ipv6Addr>,
    gateway6: Option<std::net::Ipv6Addr>,
) -> Result<(), LabError> {
    sys::ip_batch(
        switch,
        &[
            format!("link add {port} type veth peer name eth0 netns {netns}"),
            format!("link set {port} master br0 up"),
        ],
    )?;
    let mut lines = Vec::new();
    if let Some(a) = addr {
        lines.push(format!("addr add {a}/24 dev eth0"));
    }
    if let Some(a) = addr6 {
        lines.push(format!("addr add {a}/64 dev eth0"));
    }
    lines.push("link set eth0 up".into());
    if let Some(gw) = gateway {
        lines.push(format!("route add default via {gw}"));
    }
    if let Some(gw) = gateway6 {
        lines.push(format!("route add default via {gw}"));
    }
    sys::ip_batch(netns, &lines)
}

fn write_host_files(lab: &str, h: &plan::HostPlan, cluster: bool) -> Result<(), LabError> {
    let dir = host_dir(lab, &h.name);
    let netd = dir.join("net.d");
    // The agent serves Docker's plugin API in the docker directory's `plugins`.
    for sub in [netd.clone(), docker::plugin_dir(lab, &h.name)] {
        fs::create_dir_all(&sub)
            .map_err(|e| LabError::new(format!("create {}: {e}", sub.display())))?;
    }
    sys::write_atomic(
        &netd.join("weft.conflist"),
        host_conflist(lab, h, cluster).as_bytes(),
    )
}

/// Installs each switch's filter (blocked pairs of the topology plus `extra`).
fn apply_filters(plan: &LabPlan, extra: &[(String, String)]) -> Result<(), LabError> {
    for sw in &plan.switches {
        let rules = plan.switch_filter(sw, extra);
        let script = format!("table bridge weftlab\ndelete table bridge weftlab\n{rules}");
        sys::run_input(
            "ip",
            &["netns", "exec", sw, "nft", "-f", "-"],
            Some(&script),
        )?;
    }
    Ok(())
}

/// Tears a lab down: each host's podman containers, each host's dockerd with its
/// containers ([`docker::stop_dockerd`]), every process in its namespaces, every namespace
/// whose name starts with `weft-NAME-`, and its files. Works from whatever is
/// there, so it also clears a lab whose `up` crashed. A lab that does not exist is fine.
pub fn down(name: &str) -> Result<(), LabError> {
    require_root()?;
    plan::check_name(name).map_err(LabError::new)?;
    let dir = lab_dir(name);
    // Podman containers live in namespaces podman made (cni-...): ask podman to end them.
    if let Ok(rd) = fs::read_dir(&dir) {
        for entry in rd.filter_map(|e| e.ok()) {
            let host = entry.file_name().to_string_lossy().to_string();
            if entry.path().join("podman").exists() {
                let _ = podman_cleanup(name, &host);
            }
        }
    }
    let mut errors = Vec::new();
    // Each host's dockerd (`weft lab docker`) removes its containers while the hosts'
    // agents still answer its plugin calls; then what is left of its process tree and its
    // containers' cgroups goes, also after a crash.
    for host in docker::hosts_to_stop(name) {
        if let Err(e) = docker::stop_dockerd(name, &host) {
            errors.push(e.0);
        }
    }
    let prefix = plan::ns_prefix(name);
    let mine: Vec<String> = sys::netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    for ns in &mine {
        sys::kill_netns_processes(ns, Duration::from_secs(2));
    }
    for ns in &mine {
        if let Err(e) = sys::netns_del(ns) {
            errors.push(e.0);
        }
    }
    // Containers' resolv.conf files, also of namespaces already gone.
    if let Ok(rd) = fs::read_dir("/etc/netns") {
        for entry in rd.filter_map(|e| e.ok()) {
            let n = entry.file_name().to_string_lossy().to_string();
            if n.starts_with(&prefix) {
                remove_etc_netns(&n);
            }
        }
    }
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(&dir) {
            errors.push(format!("remove {}: {e}", dir.display()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LabError::new(errors.join("; ")))
    }
}

/// Where a `weft lab exec` target runs: `HOST`, `HOST/CONTAINER` or `out`.
pub fn target_netns(state: &LabState, target: &str) -> Result<String, LabError> {
    let name = &state.plan.name;
    match target.split_once('/') {
        None if target == plan::OUTSIDE => Ok(state.plan.outside.netns.clone()),
        None => state
            .plan
            .host(target)
            .map(|h| h.netns.clone())
            .ok_or_else(|| unknown_host(state, target)),
        Some((host, container)) => state
            .containers
            .iter()
            .find(|c| c.host == host && c.name == container)
            .map(|c| c.netns.clone())
            .ok_or_else(|| {
                LabError::new(format!(
                    "lab {name:?} has no container {container:?} on host {host:?}"
                ))
            }),
    }
}

/// The plan of one host of a lab.
fn load_host(name: &str, host: &str) -> Result<plan::HostPlan, LabError> {
    let state = load(name)?;
    state
        .plan
        .host(host)
        .cloned()
        .ok_or_else(|| unknown_host(&state, host))
}

fn unknown_host(state: &LabState, host: &str) -> LabError {
    LabError::new(format!(
        "lab {:?} has no host {host:?} (hosts: {})",
        state.plan.name,
        state
            .plan
            .hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Starts a container on `host`: a network namespace attached through the CNI conflist
/// (the host's default, or `conflist`), optionally running `cmd` in the background.
pub fn run(
    name: &str,
    host: &str,
    container: &str,
    conflist: Option<&Path>,
    identity: &Identity,
    cmd: &[String],
) -> Result<ContainerState, LabError> {
    require_root()?;
    plan::check_container_name(container).map_err(LabError::new)?;
    let hp = load_host(name, host)?;
    let netns = plan::container_netns(name, host, container);
    if Path::new(&sys::netns_path(&netns)).exists() {
        return Err(LabError::new(format!(
            "container {container:?} already exists on {host}"
        )));
    }
    let conflist = conflist
        .map(Path::to_path_buf)
        .unwrap_or_else(|| host_dir(name, host).join("net.d/weft.conflist"));
    sys::netns_add(&netns)?;
    let container_id = format!("lab-{name}-{host}-{container}");
    let call = CniCall {
        host_netns: hp.netns.clone(),
        container_id: container_id.clone(),
        netns_path: sys::netns_path(&netns),
        ifname: "eth0".into(),
        cni_path: cni_path(name),
        args: identity.cni_args(container),
        conf_args: identity.conf_args(),
    };
    let result = match runtime::chain_add(&call, &conflist) {
        Ok(r) => r,
        Err(e) => {
            let _ = sys::netns_del(&netns);
            return Err(e);
        }
    };
    let ips: Vec<String> = result["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["address"].as_str())
                .map(|s| s.split('/').next().unwrap_or(s).to_string())
                .collect()
        })
        .unwrap_or_default();
    let ip = ips.first().cloned();
    if let Err(e) = write_resolv_conf(&netns, &result) {
        let _ = sys::netns_del(&netns);
        return Err(e);
    }
    let mut c = ContainerState {
        host: host.into(),
        name: container.into(),
        netns: netns.clone(),
        container_id,
        conflist,
        host_netns: hp.netns.clone(),
        cni_path: cni_path(name),
        result,
        ip,
        ips,
        pid: None,
        identity: identity.clone(),
    };
    if !cmd.is_empty() {
        match spawn_in(
            &netns,
            &host_dir(name, host).join(format!("{container}.log")),
            cmd,
        ) {
            Ok(pid) => c.pid = Some(pid),
            Err(e) => {
                let _ = teardown_container(&c);
                return Err(e);
            }
        }
    }
    let saved = c.clone();
    update(name, move |s| s.containers.push(saved))?;
    Ok(c)
}

/// Starts `cmd` detached inside namespace `ns`, output to `log`; returns its pid.
fn spawn_in(ns: &str, log: &Path, cmd: &[String]) -> Result<i32, LabError> {
    spawn_detached(ns, log, cmd, false)
}

/// Starts `cmd` inside namespace `ns` in its own process group, stdin closed, output to
/// `log` (appended to or replaced); returns its pid (`ip netns exec` execs the command, so
/// it is the command's pid).
fn spawn_detached(ns: &str, log: &Path, cmd: &[String], append: bool) -> Result<i32, LabError> {
    use std::os::unix::process::CommandExt;
    let out = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(log)
        .map_err(|e| LabError::new(format!("create {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| LabError::new(format!("log {}: {e}", log.display())))?;
    let mut command = std::process::Command::new("ip");
    command
        .args(["netns", "exec", ns])
        .args(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = command
        .spawn()
        .map_err(|e| LabError::new(format!("start {:?}: {e}", cmd.join(" "))))?;
    Ok(child.id() as i32)
}

fn teardown_container(c: &ContainerState) -> Result<(), LabError> {
    sys::kill_netns_processes(&c.netns, Duration::from_secs(2));
    let call = CniCall {
        host_netns: c.host_netns.clone(),
        container_id: c.container_id.clone(),
        netns_path: sys::netns_path(&c.netns),
        ifname: "eth0".into(),
        cni_path: c.cni_path.clone(),
        args: c.identity.cni_args(&c.name),
        conf_args: c.identity.conf_args(),
    };
    let del = runtime::chain_del(&call, &c.conflist, Some(&c.result));
    remove_etc_netns(&c.netns);
    sys::netns_del(&c.netns)?;
    del
}

/// Where `ip netns exec NETNS` finds files it mounts over `/etc` (iproute2's convention).
fn etc_netns(netns: &str) -> PathBuf {
    Path::new("/etc/netns").join(netns)
}

/// Writes the container's resolv.conf from the CNI result's `dns` (the name service the
/// network gives it), where `ip netns exec` mounts it over `/etc/resolv.conf`; nothing
/// when the result has no name servers.
fn write_resolv_conf(netns: &str, result: &serde_json::Value) -> Result<(), LabError> {
    let list = |k: &str| -> Vec<String> {
        result["dns"][k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let servers = list("nameservers");
    if servers.is_empty() {
        return Ok(());
    }
    let mut text = String::from("# written by weft lab from the CNI result's dns\n");
    for s in &servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    let search = list("search");
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    let options = list("options");
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    let dir = etc_netns(netns);
    fs::create_dir_all(&dir)
        .and_then(|()| fs::write(dir.join("resolv.conf"), text))
        .map_err(|e| LabError::new(format!("write {}/resolv.conf: {e}", dir.display())))
}

/// Removes what `write_resolv_conf` wrote for a namespace.
fn remove_etc_netns(netns: &str) {
    let _ = fs::remove_dir_all(etc_netns(netns));
}

/// Removes a container: ends its command, CNI DEL through its conflist, deletes its
/// namespace.
pub fn rm(name: &str, host: &str, container: &str) -> Result<(), LabError> {
    require_root()?;
    let state = load(name)?;
    let c = state
        .containers
        .iter()
        .find(|c| c.host == host && c.name == container)
        .cloned()
        .ok_or_else(|| {
            LabError::new(format!(
                "lab {name:?} has no container {container:?} on host {host:?}"
            ))
        })?;
    let res = teardown_container(&c);
    update(name, |s| {
        s.containers
            .retain(|x| !(x.host == host && x.name == container))
    })?;
    res
}

/// Runs podman inside a lab host: only the network namespace is entered (podman needs the
/// host's cgroup mounts), with a per-host configuration, storage and CNI config directory
/// under the lab's directory. Returns podman's exit status code.
pub fn podman(name: &str, host: &str, args: &[String]) -> Result<i32, LabError> {
    require_root()?;
    let hp = load_host(name, host)?;
    ensure_busybox_image(name, &hp)?;
    let mut cmd = podman_command(name, &hp)?;
    cmd.args(args);
    let status = cmd
        .status()
        .map_err(|e| LabError::new(format!("run podman: {e} (is podman installed?)")))?;
    Ok(status.code().unwrap_or(1))
}

/// Builds the podman command line for a lab host, writing its config on first use.
pub fn podman_command(name: &str, hp: &plan::HostPlan) -> Result<std::process::Command, LabError> {
    let dir = host_dir(name, &hp.name).join("podman");
    let netd = dir.join("net.d");
    fs::create_dir_all(&netd)
        .map_err(|e| LabError::new(format!("create {}: {e}", netd.display())))?;
    let conf = dir.join("containers.conf");
    if !conf.exists() {
        let text = format!(
            "[containers]\ndefault_ulimits = []\nnetns = \"bridge\"\n\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{events}\"\nruntime = \"runc\"\nstatic_dir = \"{root}/libpod\"\ntmp_dir = \"{run}/tmp\"\n\n[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{bin}\", \"{sys}\"]\nnetwork_config_dir = \"{netd}\"\ndefault_network = \"weft\"\n",
            events = dir.join("events.log").display(),
            root = dir.join("root").display(),
            run = dir.join("run").display(),
            bin = cni_bin_dir(name).display(),
            sys = SYSTEM_CNI_DIR,
            netd = netd.display(),
        );
        sys::write_atomic(&conf, text.as_bytes())?;
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.join("root").display(),
            dir.join("run").display()
        );
        sys::write_atomic(&dir.join("storage.conf"), storage.as_bytes())?;
        let cluster = load(name).map(|s| s.cluster_ipam).unwrap_or(false);
        let conflist = weft_chain_conflist(name, hp, cluster);
        sys::write_atomic(&netd.join("weft.conflist"), conflist.as_bytes())?;
    }
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", sys::netns_path(&hp.netns)))
        .arg("--")
        .arg("podman")
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .arg("--tmpdir")
        .arg(dir.join("run/tmp"))
        .env("CONTAINERS_CONF", &conf)
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .env("XDG_RUNTIME_DIR", dir.join("xdg"))
        .env("CNI_PATH", cni_path(name));
    Ok(cmd)
}

/// The conflist podman uses on a lab host: weft chained with the reference portmap,
/// bandwidth and tuning plugins, the same as `weft install-cni` writes (spec 1.0.0, what
/// podman 4's libcni speaks); cluster addresses from the host's agent when `cluster`.
pub fn weft_chain_conflist(lab: &str, hp: &plan::HostPlan, cluster: bool) -> String {
    let data = host_dir(lab, &hp.name).join("data");
    if cluster {
        weft_config::example_agent_conflist(
            "weft",
            &agents::agent_socket(lab, &hp.name).to_string_lossy(),
            &data.to_string_lossy(),
        )
    } else {
        weft_config::example_conflist("weft", &hp.pod_range, &data.to_string_lossy())
    }
}

/// The image every lab host's podman has: a busybox-static root filesystem.
pub const BUSYBOX_IMAGE: &str = "localhost/weft-busybox";

/// Imports [`BUSYBOX_IMAGE`] into a host's podman storage on first use, from the machine's
/// `/bin/busybox` (Debian's busybox-static): no registry needed.
pub fn ensure_busybox_image(name: &str, hp: &plan::HostPlan) -> Result<(), LabError> {
    let dir = host_dir(name, &hp.name).join("podman");
    let marker = dir.join("image-imported");
    if marker.exists() {
        return Ok(());
    }
    let tar = busybox_rootfs_tar(&dir)?;
    let mut cmd = podman_command(name, hp)?;
    let out = cmd
        .args(["import", &tar.to_string_lossy(), BUSYBOX_IMAGE])
        .output()
        .map_err(|e| LabError::new(format!("run podman import: {e}")))?;
    if !out.status.success() {
        return Err(LabError::new(format!(
            "podman import failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let _ = fs::remove_file(&tar);
    fs::write(&marker, b"").map_err(|e| LabError::new(format!("write marker: {e}")))
}

/// The busybox applets linked in the lab's images.
const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "ping",
    "ping6",
    "nc",
    "ip",
    "sleep",
    "cat",
    "echo",
    "wget",
    "httpd",
    "ls",
    "traceroute",
    "hostname",
    "ifconfig",
    "route",
    "env",
    "nslookup",
    "true",
    "false",
    "grep",
    "seq",
    "ps",
    "kill",
    "mkdir",
    "rm",
    "sed",
    "head",
    "netstat",
    "timeout",
];

/// Writes `dir/rootfs.tar`: a root filesystem holding the machine's `/bin/busybox`
/// (Debian's busybox-static) and links to its applets in `/bin`. Returns the tar's path.
pub(crate) fn busybox_rootfs_tar(dir: &Path) -> Result<PathBuf, LabError> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| LabError::new("busybox not found: install busybox-static"))?;
    let root = dir.join("rootfs");
    let _ = fs::remove_dir_all(&root);
    for sub in ["bin", "tmp", "etc", "proc", "sys", "dev"] {
        fs::create_dir_all(root.join(sub))
            .map_err(|e| LabError::new(format!("create rootfs: {e}")))?;
    }
    fs::copy(busybox, root.join("bin/busybox"))
        .map_err(|e| LabError::new(format!("copy busybox: {e}")))?;
    for applet in BUSYBOX_APPLETS {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    let tar = dir.join("rootfs.tar");
    let made = sys::run(
        "tar",
        &[
            "-C",
            &root.to_string_lossy(),
            "-cf",
            &tar.to_string_lossy(),
            ".",
        ],
    );
    let _ = fs::remove_dir_all(&root);
    made.map(|_| tar)
}

fn podman_cleanup(name: &str, host: &str) -> Result<(), LabError> {
    let state = load(name)?;
    let Some(hp) = state.plan.host(host).cloned() else {
        return Ok(());
    };
    if !Path::new(&sys::netns_path(&hp.netns)).exists() {
        return Ok(());
    }
    let mut cmd = podman_command(name, &hp)?;
    cmd.args(["rm", "--all", "--force", "--time", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _ = cmd.status();
    Ok(())
}
