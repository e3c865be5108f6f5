//! The mesh agent of every lab host (`weft agent`), and cutting links between hosts.
//!
//! Each host runs its agent inside its namespace, detached in its own process group, with
//! its identity under `/run/weft-lab/LAB/HOST/agent`, its API socket at
//! `/run/weft-lab/LAB/HOST/weft.sock`, its log at `/run/weft-lab/LAB/HOST/agent.log` and the
//! lab's shared secret `/run/weft-lab/LAB/secret`. It serves Docker's plugin API to the
//! host's dockerd at `/run/weft-lab/LAB/HOST/docker/plugins/weft.sock` (see
//! [`crate::docker`]). Its one initial peer is the host before it (h1's is h2), which every
//! topology lets it reach; the mesh finds the rest.
//!
//! The lab only ever signals the pid it recorded, and only while that pid is still the
//! process it started (its command line names this host's socket), so a recycled pid is
//! never hit.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::{host_dir, lab_dir, require_root, sys, update, LabError, LabPlan, LabState};

/// The TCP port agents listen on.
pub const AGENT_PORT: u16 = 6783;

/// How long a starting agent has to answer on its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One host's agent, as the lab state keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentState {
    /// The host it runs on.
    pub host: String,
    /// The namespace it runs in.
    pub netns: String,
    /// Its command line (run as `ip netns exec NETNS CMD...`); `start` reuses it.
    pub cmd: Vec<String>,
    /// Its API socket.
    pub socket: PathBuf,
    /// Its log (stdout and stderr, appended across restarts).
    pub log: PathBuf,
    /// The pid of the process the lab last started, while it is believed to run.
    pub pid: Option<i32>,
}

/// What `weft lab agent HOST ACTION` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAction {
    /// Start it again with the same arguments (refused while it runs).
    Start,
    /// SIGTERM, up to 5 s, then SIGKILL.
    Stop,
    /// SIGKILL.
    Kill,
    /// Stop, then start.
    Restart,
}

impl fmt::Display for AgentAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentAction::Start => "start",
            AgentAction::Stop => "stop",
            AgentAction::Kill => "kill",
            AgentAction::Restart => "restart",
        })
    }
}

impl FromStr for AgentAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "start" => Ok(AgentAction::Start),
            "stop" => Ok(AgentAction::Stop),
            "kill" => Ok(AgentAction::Kill),
            "restart" => Ok(AgentAction::Restart),
            other => Err(format!(
                "unknown agent action {other:?}: expected start, stop, kill or restart"
            )),
        }
    }
}

/// The lab's cluster secret file.
pub fn secret_path(lab: &str) -> PathBuf {
    lab_dir(lab).join("secret")
}

/// The API socket of a host's agent.
pub fn agent_socket(lab: &str, host: &str) -> PathBuf {
    host_dir(lab, host).join("weft.sock")
}

/// The data directory (identity) of a host's agent, kept across restarts.
pub fn agent_data_dir(lab: &str, host: &str) -> PathBuf {
    host_dir(lab, host).join("agent")
}

/// The resolv.conf of a host's agent's upstream servers (`--dns-resolv-conf`): lab hosts
/// cannot reach the machine's resolvers, so each has its own file (empty at first; a
/// test puts a lab name server in it).
pub fn agent_resolv_conf(lab: &str, host: &str) -> PathBuf {
    host_dir(lab, host).join("resolv.conf")
}

/// The log of a host's agent.
pub fn agent_log(lab: &str, host: &str) -> PathBuf {
    host_dir(lab, host).join("agent.log")
}

/// The one initial peer of host number `i` (1-based) of `n`: the host before it; h1's is
/// h2; none when alone.
fn initial_peer(i: usize, n: usize) -> Option<usize> {
    match (i, n) {
        (_, 1) => None,
        (1, _) => Some(2),
        _ => Some(i - 1),
    }
}

/// The agent command line of `host` (without the `ip netns exec` prefix). Pure.
pub fn agent_command(plan: &LabPlan, host: &str, weft_bin: &Path) -> Option<Vec<String>> {
    let i = plan.hosts.iter().position(|h| h.name == host)?;
    let h = &plan.hosts[i];
    let lab = &plan.name;
    let addr = std::net::SocketAddr::new(h.agent_addr(), AGENT_PORT).to_string();
    let mut cmd = vec![
        weft_bin.to_string_lossy().into_owned(),
        "agent".into(),
        "--name".into(),
        h.name.clone(),
        "--listen".into(),
        addr.clone(),
        "--advertise".into(),
        addr,
    ];
    // Every host of a lab starts together: they agree on the cluster IPAM's start as one.
    cmd.push("--ipam-init".into());
    cmd.push(plan.hosts.len().to_string());
    if let Some(p) = initial_peer(i + 1, plan.hosts.len()) {
        cmd.push("--peer".into());
        cmd.push(std::net::SocketAddr::new(plan.hosts[p - 1].agent_addr(), AGENT_PORT).to_string());
    }
    for (flag, path) in [
        ("--data-dir", agent_data_dir(lab, host)),
        ("--secret-file", secret_path(lab)),
        ("--socket", agent_socket(lab, host)),
        ("--dns-resolv-conf", agent_resolv_conf(lab, host)),
        // Docker's plugin API for the host's dockerd (`weft lab docker`), and that
        // dockerd's API for its containers' names.
        ("--docker-plugin", crate::docker::plugin_socket(lab, host)),
        ("--docker-host", crate::docker::api_socket(lab, host)),
    ] {
        cmd.push(flag.into());
        cmd.push(path.to_string_lossy().into_owned());
    }
    Some(cmd)
}

/// The agent entries of a new lab (none started yet).
pub(crate) fn plan_agents(plan: &LabPlan, weft_bin: &Path, extra: &[String]) -> Vec<AgentState> {
    plan.hosts
        .iter()
        .map(|h| AgentState {
            host: h.name.clone(),
            netns: h.netns.clone(),
            cmd: {
                let mut c = agent_command(plan, &h.name, weft_bin).expect("host of the plan");
                c.extend(extra.iter().cloned());
                c
            },
            socket: agent_socket(&plan.name, &h.name),
            log: agent_log(&plan.name, &h.name),
            pid: None,
        })
        .collect()
}

/// Writes a fresh random secret (32 bytes from /dev/urandom, hex), mode 0600.
pub(crate) fn write_secret(lab: &str) -> Result<(), LabError> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| LabError::new(format!("read /dev/urandom: {e}")))?;
    let mut hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.push('\n');
    sys::write_private(&secret_path(lab), hex.as_bytes())
}

/// True while `pid` is a process that has not exited (a zombie has).
pub(crate) fn alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X") | Some("x"))
}

/// True while `pid` is a live process whose command line names `socket`: the agent the lab
/// started (first `ip netns exec`, then `weft agent`), not whatever got its pid later.
fn is_agent(pid: i32, socket: &Path) -> bool {
    let want = socket.as_os_str().as_encoded_bytes();
    // While a process execs, its command line reads empty for a moment: look again.
    for _ in 0..50 {
        if !alive(pid) {
            return false;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        if !cmdline.is_empty() {
            return cmdline.split(|b| *b == 0).any(|arg| arg == want);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// True when the host's agent runs (the recorded pid is still the agent the lab started).
pub fn agent_running(a: &AgentState) -> bool {
    a.pid.is_some_and(|pid| is_agent(pid, &a.socket))
}

fn find<'a>(state: &'a mut LabState, host: &str) -> Result<&'a mut AgentState, LabError> {
    if state.plan.host(host).is_none() {
        return Err(crate::unknown_host(state, host));
    }
    let lab = state.plan.name.clone();
    state
        .agents
        .iter_mut()
        .find(|a| a.host == host)
        .ok_or_else(|| {
            LabError::new(format!(
                "lab {lab:?} was made before agents existed: recreate it with `weft lab up`"
            ))
        })
}

/// Starts an agent (not waiting for it); records its pid.
fn spawn(a: &mut AgentState, lab: &str) -> Result<(), LabError> {
    let data = agent_data_dir(lab, &a.host);
    fs::create_dir_all(&data)
        .map_err(|e| LabError::new(format!("create {}: {e}", data.display())))?;
    a.pid = Some(crate::spawn_detached(&a.netns, &a.log, &a.cmd, true)?);
    Ok(())
}

/// The last lines of a log, for an error message.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(10)..].join("\n    ");
    if tail.is_empty() {
        format!("{} is empty", log.display())
    } else {
        format!("{}:\n    {tail}", log.display())
    }
}

/// Waits until every agent answers on its socket; fails naming the first that exits or
/// stays silent, with the end of its log.
fn wait_ready(agents: &[&AgentState]) -> Result<(), LabError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut waiting: Vec<&AgentState> = agents.to_vec();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for a in waiting {
            if std::os::unix::net::UnixStream::connect(&a.socket).is_ok() && agent_running(a) {
                continue;
            }
            if !a.pid.is_some_and(alive) {
                return Err(LabError::new(format!(
                    "the agent on {} exited at start; {}",
                    a.host,
                    log_tail(&a.log)
                )));
            }
            still.push(a);
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let a = waiting[0];
            return Err(LabError::new(format!(
                "the agent on {} does not answer on {} after {} s; {}",
                a.host,
                a.socket.display(),
                READY_TIMEOUT.as_secs(),
                log_tail(&a.log)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts every host's agent of a lab being built and waits until all answer.
pub(crate) fn start_all(state: &mut LabState) -> Result<(), LabError> {
    let lab = state.plan.name.clone();
    for a in &mut state.agents {
        spawn(a, &lab)?;
    }
    let all: Vec<&AgentState> = state.agents.iter().collect();
    wait_ready(&all)
}

/// Waits until the agent has exited, up to `limit`.
fn wait_gone(a: &AgentState, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !agent_running(a) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(a: &AgentState, sig: Signal) {
    if let Some(pid) = a.pid {
        if is_agent(pid, &a.socket) {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

/// Stops (TERM, then KILL after the grace) or kills an agent; clears its pid.
fn end(a: &mut AgentState, action: AgentAction) -> Result<String, LabError> {
    let Some(pid) = a.pid.filter(|_| agent_running(a)) else {
        a.pid = None;
        return Ok(format!("the agent on {} was not running", a.host));
    };
    let how = if action == AgentAction::Kill {
        signal(a, Signal::SIGKILL);
        "killed"
    } else {
        signal(a, Signal::SIGTERM);
        if wait_gone(a, STOP_GRACE) {
            "stopped"
        } else {
            signal(a, Signal::SIGKILL);
            "killed after 5 s of SIGTERM"
        }
    };
    if !wait_gone(a, Duration::from_secs(2)) {
        return Err(LabError::new(format!(
            "the agent on {} (pid {pid}) is still running after SIGKILL",
            a.host
        )));
    }
    a.pid = None;
    Ok(format!("the agent on {} (pid {pid}) {how}", a.host))
}

/// `weft lab agent HOST ACTION`: start, stop, kill or restart one host's agent. `start`
/// waits until it answers on its socket. Returns what was done, in words.
pub fn agent(name: &str, host: &str, action: AgentAction) -> Result<String, LabError> {
    require_root()?;
    let lab = name.to_string();
    let mut started = None;
    let msg = update(name, |state| -> Result<String, LabError> {
        let a = find(state, host)?;
        let mut msg = String::new();
        if matches!(
            action,
            AgentAction::Stop | AgentAction::Kill | AgentAction::Restart
        ) {
            msg = end(a, action)?;
        }
        if matches!(action, AgentAction::Start | AgentAction::Restart) {
            if agent_running(a) {
                return Err(LabError::new(format!(
                    "the agent on {host} is already running (pid {})",
                    a.pid.unwrap_or(0)
                )));
            }
            spawn(a, &lab)?;
            started = Some(a.clone());
            if !msg.is_empty() {
                msg.push_str("; ");
            }
            msg.push_str(&format!(
                "the agent on {host} started (pid {})",
                a.pid.unwrap_or(0)
            ));
        }
        Ok(msg)
    })??;
    // Waited for outside the lock, so `status` and other hosts' commands go on meanwhile.
    if let Some(a) = started {
        wait_ready(&[&a])?;
    }
    Ok(msg)
}

/// The lab state as JSON, each agent with `running` (whether it runs now).
pub fn status_json(state: &LabState) -> serde_json::Value {
    let mut v = serde_json::to_value(state).expect("state serializes");
    if let Some(agents) = v["agents"].as_array_mut() {
        for (j, a) in agents.iter_mut().zip(&state.agents) {
            j["running"] = serde_json::Value::Bool(agent_running(a));
        }
    }
    v
}

/// The pair in a fixed order, so (a, b) and (b, a) are one cut.
fn ordered(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// `weft lab cut A B`: drops all traffic between hosts A and B at their switches (at the
/// router port for hosts on different segments), in both directions. Returns false when
/// they were already cut.
pub fn cut(name: &str, a: &str, b: &str) -> Result<bool, LabError> {
    require_root()?;
    update(name, |state| -> Result<bool, LabError> {
        for h in [a, b] {
            if state.plan.host(h).is_none() {
                return Err(crate::unknown_host(state, h));
            }
        }
        if a == b {
            return Err(LabError::new(format!("cannot cut {a} from itself")));
        }
        let pair = ordered(a, b);
        if state.cuts.contains(&pair) {
            return Ok(false);
        }
        crate::apply_filters(&state.plan, &with(&state.cuts, Some(&pair)))?;
        state.cuts.push(pair);
        Ok(true)
    })?
}

/// `weft lab heal [A B]`: lifts the cut between A and B, or every cut. Returns how many
/// cuts were lifted. The topology's own blocked pairs (`partial`) stay.
pub fn heal(name: &str, pair: Option<(&str, &str)>) -> Result<usize, LabError> {
    require_root()?;
    update(name, |state| -> Result<usize, LabError> {
        let keep: Vec<(String, String)> = match pair {
            None => vec![],
            Some((a, b)) => {
                for h in [a, b] {
                    if state.plan.host(h).is_none() {
                        return Err(crate::unknown_host(state, h));
                    }
                }
                let p = ordered(a, b);
                state.cuts.iter().filter(|c| **c != p).cloned().collect()
            }
        };
        let lifted = state.cuts.len() - keep.len();
        crate::apply_filters(&state.plan, &keep)?;
        state.cuts = keep;
        Ok(lifted)
    })?
}

fn with(cuts: &[(String, String)], extra: Option<&(String, String)>) -> Vec<(String, String)> {
    cuts.iter().chain(extra).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{plan, Topology};

    fn peer_of(cmd: &[String]) -> Vec<String> {
        cmd.windows(2)
            .filter(|w| w[0] == "--peer")
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn each_host_peers_with_the_one_before_it() {
        let p = plan("t", 4, Topology::Partial).unwrap();
        let bin = Path::new("/bin/weft");
        let c1 = agent_command(&p, "h1", bin).unwrap();
        assert_eq!(peer_of(&c1), vec!["172.30.0.2:6783"]);
        assert_eq!(&c1[..4], &["/bin/weft", "agent", "--name", "h1"]);
        for (h, peer) in [
            ("h2", "172.30.0.1"),
            ("h3", "172.30.0.2"),
            ("h4", "172.30.0.3"),
        ] {
            let c = agent_command(&p, h, bin).unwrap();
            assert_eq!(peer_of(&c), vec![format!("{peer}:6783")], "{h}");
        }
        let c4 = agent_command(&p, "h4", bin).unwrap();
        let s = c4.join(" ");
        assert!(s.contains("--listen 172.30.0.4:6783 --advertise 172.30.0.4:6783"));
        assert!(s.contains("--data-dir /run/weft-lab/t/h4/agent"));
        assert!(s.contains("--secret-file /run/weft-lab/t/secret"));
        assert!(s.contains("--socket /run/weft-lab/t/h4/weft.sock"));
        assert!(s.contains("--ipam-init 4"), "{s}");
        assert!(
            s.contains("--docker-plugin /run/weft-lab/t/h4/docker/plugins/weft.sock"),
            "{s}"
        );
        assert!(
            s.contains("--docker-host /run/weft-lab/t/h4/docker/docker.sock"),
            "{s}"
        );
        assert!(agent_command(&p, "h5", bin).is_none());
    }

    #[test]
    fn a_lone_host_has_no_peer_and_subnets_peer_across_the_router() {
        let p = plan("t", 1, Topology::Mesh).unwrap();
        assert!(peer_of(&agent_command(&p, "h1", Path::new("w")).unwrap()).is_empty());
        let p = plan("t", 4, Topology::Subnets).unwrap();
        let c3 = agent_command(&p, "h3", Path::new("w")).unwrap();
        assert_eq!(peer_of(&c3), vec!["172.30.1.2:6783"]);
        assert!(c3.join(" ").contains("--listen 172.30.2.3:6783"));
    }

    #[test]
    fn actions_parse() {
        for a in ["start", "stop", "kill", "restart"] {
            assert_eq!(a.parse::<AgentAction>().unwrap().to_string(), a);
        }
        assert!("pause".parse::<AgentAction>().is_err());
    }

    #[test]
    fn a_pid_that_is_not_the_agent_is_not_running() {
        // This test process is alive, but its command line names no agent socket.
        let a = AgentState {
            host: "h1".into(),
            netns: "x".into(),
            cmd: vec![],
            socket: "/run/weft-lab/t/h1/weft.sock".into(),
            log: "/dev/null".into(),
            pid: Some(std::process::id() as i32),
        };
        assert!(!agent_running(&a));
        assert!(!agent_running(&AgentState { pid: None, ..a }));
    }
}
