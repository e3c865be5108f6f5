//! `weft`: one binary for the whole container network. With `CNI_COMMAND` set it is the CNI
//! plugin; otherwise a command-line tool (`weft lab ...`, `weft install-cni`, ...).

mod agent_cli;
mod demo;
mod dns_cli;
mod install;
mod policy_cli;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "weft: a multi-host container network",
    long_about = "weft gives every container on every host an address on one flat network.\n\n\
        Run with CNI_COMMAND set, this binary is the CNI plugin (network type \"weft\").\n\
        Otherwise it is the command-line tool below."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A virtual multi-host lab on this machine (network namespaces only; root).
    #[command(subcommand)]
    Lab(LabCmd),
    /// Install weft as a CNI plugin: copy this binary into the plugin directory and write a
    /// conflist (weft chained with portmap, bandwidth and tuning).
    InstallCni(InstallCni),
    /// Set this host up and join it to a cluster, in one command: the binary, the agent's
    /// config and the cluster secret, the systemd unit, the CNI plugin and its conflist;
    /// then the agent is enabled and started (when systemd runs). Again with the same
    /// options, it changes nothing; it refuses files of someone else's in the way.
    Install(Box<install::InstallArgs>),
    /// Remove what `weft install` made, and nothing else (the agent's data directory only
    /// with --purge).
    Uninstall(install::UninstallArgs),
    /// The cluster secret: `weft secret new` makes one.
    #[command(subcommand)]
    Secret(install::SecretCmd),
    /// Run the per-host agent in the foreground: peer connections, the replicated mesh
    /// state, routes over the mesh, and the local API.
    Agent(Box<agent_cli::AgentArgs>),
    /// This node, every other node of the mesh, their state and next hops (asks the agent).
    Status(agent_cli::SocketArg),
    /// This node's direct peer connections and dial targets (asks the agent).
    Peers(agent_cli::SocketArg),
    /// Ask the agent to connect to a peer address.
    Connect {
        #[command(flatten)]
        socket: agent_cli::SocketArg,
        /// IP, IP:PORT or HOST:PORT (port 6783 if left out).
        addr: String,
    },
    /// Ask the agent to stop dialling a peer address.
    Forget {
        #[command(flatten)]
        socket: agent_cli::SocketArg,
        /// The address given to `connect` or `--peer`.
        addr: String,
    },
    /// The cluster's address management as this node sees it: pools, whether this node
    /// allocates (and why not), and per node its active blocks, reserve blocks, used, free,
    /// lent and borrowed addresses, removal and heir (asks the agent).
    #[command(
        long_about = "The cluster's address management as this node sees it (asks the agent).\n\n\
            One line per node: name (* = this node), id prefix, mesh status, number of active \
            blocks, reserve blocks, addresses used by its containers, free addresses in its \
            active blocks, addresses lent to and borrowed from other nodes, whether it was \
            removed, its heir (the node that takes its space if it is removed) and its active \
            blocks. Then the pools and totals. If this node does not allocate, the first line \
            says why (e.g. waiting for its heir after a restart)."
    )]
    Ipam(agent_cli::SocketArg),
    /// Remove a node that is gone for good from the cluster's address management: its heir
    /// takes its blocks, and its addresses become free. Refused while the node is up.
    #[command(
        long_about = "Remove a node that is gone for good from the cluster's address \
            management (asks the agent; run it on any live node).\n\n\
            The removed node's heir takes its blocks and keeps what it had lent to others; the \
            addresses its containers had become free. Refused while the node is up: stop it \
            first. If the node comes back later, it drops its old space and starts empty. \
            Nodes down longer than --ipam-reclaim-after-ms are removed automatically."
    )]
    Rmpeer {
        #[command(flatten)]
        socket: agent_cli::SocketArg,
        /// The node's name, or its 32-hex id (`weft ipam` shows both).
        peer: String,
    },
    /// Create or update Kubernetes NetworkPolicy and Namespace objects, cluster-wide
    /// (YAML or JSON, as kubectl takes them; defaulted and validated as the API server
    /// does). They take effect on this host before the command returns, and on every
    /// other host as the mesh carries them (asks the agent).
    Apply(policy_cli::FileArgs),
    /// Delete the NetworkPolicy and Namespace objects named in files (asks the agent).
    Delete(policy_cli::FileArgs),
    /// List networkpolicies, namespaces or endpoints (every pod attachment of the cluster
    /// with its labels, named ports and the policies isolating it) (asks the agent).
    Get(policy_cli::GetArgs),
    /// Set (KEY=VALUE) or remove (KEY-) labels of an endpoint, cluster-wide; policies
    /// follow at once (asks the agent).
    Label(policy_cli::LabelArgs),
    /// Recent flows that network policy dropped or allowed on this host, with the reason:
    /// for a drop, which policies isolate the pod and that none of them allows the peer
    /// and port (asks the agent).
    Flows(policy_cli::FlowsArgs),
    /// Network policy questions: `weft policy check --from A --to B --port N` says whether
    /// the policies allow a connection and why.
    #[command(subcommand)]
    Policy(policy_cli::PolicyCmd),
    /// The name service: `weft dns add NAME ADDR...` and `remove` for names outside
    /// containers, `weft dns list` for every name answered (asks the agent).
    #[command(subcommand)]
    Dns(dns_cli::DnsCmd),
}

#[derive(Args)]
struct InstallCni {
    /// Directory of CNI plugin binaries.
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// Directory of CNI network configs.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The network's name (the conflist is NAME.conflist).
    #[arg(long, default_value = "weft")]
    name: String,
    /// This host's container address range (standalone: addresses from a table on this
    /// host, no agent needed).
    #[arg(long, default_value = "10.32.0.0/24")]
    range: String,
    /// Take container addresses from the cluster's pools through the weft agent instead of
    /// a range of this host: the conflist has no "range", and `weft agent` must run.
    #[arg(long, conflicts_with = "range")]
    cluster_ipam: bool,
    /// The agent's API socket, with --cluster-ipam.
    #[arg(long, default_value = weft_config::DEFAULT_AGENT_SOCKET, requires = "cluster_ipam")]
    agent_socket: String,
    /// Where the plugin keeps its allocations.
    #[arg(long, default_value = "/var/lib/weft")]
    data_dir: String,
    /// Overwrite an existing conflist of the same name.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Create a lab: N hosts (network namespaces h1..hN) joined by an isolated underlay.
    Up {
        /// Lab name (a-z, 0-9; up to 12 characters).
        #[arg(long, default_value = "lab")]
        name: String,
        /// Number of hosts.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// mesh: one L2 segment; subnets: two segments joined by a router;
        /// partial: as mesh, but the last host reaches only the one before it; nat: the
        /// last host alone behind a router that masquerades it and lets nothing in.
        #[arg(long, default_value = "mesh")]
        topology: weft_lab::Topology,
        /// Do not start the mesh agent on the hosts (start one with `weft lab agent HOST
        /// start`).
        #[arg(long)]
        no_agents: bool,
        /// The agents' data plane mode: auto (direct routes on a segment, VXLAN across),
        /// route, vxlan or off [default: auto].
        #[arg(long, value_name = "MODE", value_parser = ["auto", "route", "vxlan", "off"])]
        mode: Option<String>,
        /// The agents' outbound NAT of container traffic leaving the pools: on or off
        /// [default: on]. With off, containers reach only each other.
        #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
        nat: Option<String>,
        /// The agents' BPF fast path for container-to-container traffic: on or off
        /// [default: on].
        #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
        fast_path: Option<String>,
        /// The agents' encryption of container traffic between hosts: off, on (every
        /// peer) or cross-subnet (only across the router of `subnets`) [default: off].
        #[arg(long, value_name = "off|on|cross-subnet", value_parser = ["off", "on", "cross-subnet"])]
        encrypt: Option<String>,
        /// The agents' tunnel offloads: on or off [default: on].
        #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
        tunnel_offload: Option<String>,
        /// The agents' key rotation interval, seconds [default: 120].
        #[arg(long, value_name = "SECS")]
        tunnel_rotate_secs: Option<String>,
        /// The agents' cluster address pools, comma-separated CIDRs [default:
        /// 10.32.0.0/12]. With an IPv4 and an IPv6 pool (10.32.0.0/12,fd32::/48) every
        /// container gets an address of each family.
        #[arg(long, value_name = "CIDR,...")]
        ipam_pools: Option<String>,
        /// Where each host's agent serves Prometheus metrics, inside the host's namespace
        /// (e.g. 0.0.0.0:6782 to be scraped from other lab hosts) [default:
        /// 127.0.0.1:6782].
        #[arg(long, value_name = "IP:PORT")]
        metrics_addr: Option<String>,
        /// The underlay's address families: ipv4 (172.30.S.N/24), ipv6 (fd30:S::N/64; the
        /// agents peer over IPv6) or dual (both; the agents peer over IPv4).
        #[arg(long, default_value = "ipv4", value_name = "ipv4|ipv6|dual")]
        underlay: weft_lab::plan::Underlay,
        /// Print the lab as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a lab and everything in it (also after a crash).
    Down {
        /// Lab name; may be left out when one lab exists.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show labs, their hosts and containers.
    Status {
        /// Only this lab.
        #[arg(long)]
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command on a lab host (HOST), in a container (HOST/CONTAINER), or in `out`, the
    /// namespace standing in for the world outside the cluster (reached through NAT). On a
    /// host, `weft ...` talks to that host's agent (WEFT_SOCKET is set) and is the lab's
    /// own weft binary.
    Exec {
        /// Lab name; may be left out when one lab exists.
        #[arg(long)]
        name: Option<String>,
        /// HOST or HOST/CONTAINER.
        target: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Start a container on a host: its own network namespace, attached through CNI as a
    /// runtime would, optionally running CMD in the background.
    Run {
        /// Lab name; may be left out when one lab exists.
        #[arg(long)]
        name: Option<String>,
        /// Use this conflist instead of the host's default (weft alone).
        #[arg(long)]
        conflist: Option<PathBuf>,
        /// Print the container (and its CNI result) as JSON.
        #[arg(long)]
        json: bool,
        /// Its namespace (CNI_ARGS K8S_POD_NAMESPACE; the name is the container's).
        #[arg(long)]
        namespace: Option<String>,
        /// A label KEY=VALUE (the network config's args.cni.labels); repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// A named port NAME=PORT/PROTO, e.g. http=80/TCP (the network config's
        /// args.weft.ports); repeatable.
        #[arg(long = "port", value_parser = parse_port)]
        ports: Vec<(String, u16, String)>,
        /// Host name (h1, h2, ...).
        host: String,
        /// Container name (a-z, 0-9, _).
        container: String,
        /// Command to run inside, in the background.
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Remove a container: CNI DEL, then its namespace.
    Rm {
        /// Lab name; may be left out when one lab exists.
        #[arg(long)]
        name: Option<String>,
        /// Host name.
        host: String,
        /// Container name.
        container: String,
    },
    /// Run podman on a lab host, configured for weft (CNI backend, weft chained with
    /// portmap, bandwidth and tuning), e.g. `weft lab podman h1 -- run -d
    /// localhost/weft-busybox sleep 1d`. The busybox image is imported on first use.
    Podman {
        /// Lab name; may be left out when one lab exists.
        #[arg(long)]
        name: Option<String>,
        /// Host name.
        host: String,
        /// podman's arguments.
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// Run the docker CLI against a lab host's own dockerd, started on first use, e.g.
    /// `weft lab docker h1 -- run --rm weft-busybox echo hi`.
    #[command(
        long_about = "Run the docker CLI (/usr/bin/docker) against the dockerd of lab host HOST, \
            starting that dockerd on first use. The exit status is docker's.\n\n\
            Each host has its own dockerd, running in that host's network namespace only, \
            with its own data and exec roots, containerd and log under \
            /run/weft-lab/LAB/HOST/docker, and a mount namespace of its own in which \
            /run/docker/plugins is the host's plugin directory: there the host's weft agent \
            serves the network and IPAM driver `weft`. dockerd runs with --bridge=none \
            --iptables=false --ip6tables=false --live-restore (no docker0 bridge, no \
            iptables rules in the host's namespace), --dns 169.254.1.1 (weft's name \
            service: Docker's embedded resolver forwards names it does not know there) and \
            its containers' cgroups under /weft-lab-LAB-HOST. The image weft-busybox (the machine's busybox-static) is \
            imported on first use, no registry needed. `weft lab down` removes every \
            container and stops every dockerd, also after a crash.\n\n\
            Without --network a container has no network but its loopback (there is no \
            bridge). A weft network is created on each host that uses it (Docker's networks \
            are per host; weft's are the cluster's):\n\n  \
            weft lab docker h1 -- network create -d weft --ipam-driver weft weftnet\n  \
            weft lab docker h1 -- run -d --name web --network weftnet weft-busybox httpd -f -p 80\n  \
            weft lab docker h2 -- network create -d weft --ipam-driver weft weftnet\n  \
            weft lab docker h2 -- run --rm --network weftnet weft-busybox wget -qO- http://web/etc/hostname"
    )]
    Docker {
        /// Lab name; may be left out when one lab exists.
        #[arg(long)]
        name: Option<String>,
        /// Host name.
        host: String,
        /// docker's arguments.
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// Start, stop (SIGTERM, then SIGKILL after 5 s), kill (SIGKILL) or restart a host's
    /// mesh agent. Its identity is kept, so a restarted agent has the same node id.
    Agent {
        /// Lab name; may be left out when one lab exists.
        #[arg(long)]
        name: Option<String>,
        /// Host name.
        host: String,
        /// start, stop, kill or restart.
        action: weft_lab::AgentAction,
    },
    /// Cut the underlay between two hosts (both directions, at their switches), as a
    /// broken link or firewall would; `heal` undoes it.
    Cut {
        /// Lab name; may be left out when one lab exists.
        #[arg(long)]
        name: Option<String>,
        /// One host.
        a: String,
        /// The other host.
        b: String,
    },
    /// Heal the cut between two hosts, or every cut when no hosts are given.
    Heal {
        /// Lab name; may be left out when one lab exists.
        #[arg(long)]
        name: Option<String>,
        /// Two hosts, or none for all cuts.
        #[arg(num_args = 0..=2)]
        hosts: Vec<String>,
    },
    /// The demo: a lab host with two containers talking over weft, then cleaned up.
    Demo {
        /// Keep the lab up afterwards (remove it with `weft lab down --name demo`).
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> ExitCode {
    // CNI mode: CNI_COMMAND is set, or (a runtime that forgot it) no arguments and some
    // other CNI_ variable, so the caller gets a CNI error rather than usage text.
    let cni_vars = std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("CNI_"));
    if std::env::var_os("CNI_COMMAND").is_some() || (std::env::args_os().len() == 1 && cni_vars) {
        return cni_main();
    }
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Agent(_)) {
        quiet_on_closed_output();
    }
    let res = match cli.cmd {
        Cmd::Lab(cmd) => lab(cmd),
        Cmd::InstallCni(args) => install_cni(&args),
        Cmd::Install(args) => install::install(*args),
        Cmd::Uninstall(args) => install::uninstall(args),
        Cmd::Secret(cmd) => install::secret(cmd),
        Cmd::Agent(args) => agent_cli::agent(*args),
        Cmd::Status(s) => agent_cli::status(s),
        Cmd::Peers(s) => agent_cli::peers(s),
        Cmd::Connect { socket, addr } => agent_cli::connect_or_forget(socket, &addr, true),
        Cmd::Forget { socket, addr } => agent_cli::connect_or_forget(socket, &addr, false),
        Cmd::Ipam(s) => agent_cli::ipam(s),
        Cmd::Rmpeer { socket, peer } => agent_cli::rmpeer(socket, &peer),
        Cmd::Apply(a) => policy_cli::apply(a, false),
        Cmd::Delete(a) => policy_cli::apply(a, true),
        Cmd::Get(a) => policy_cli::get(a),
        Cmd::Label(a) => policy_cli::label(a),
        Cmd::Flows(a) => policy_cli::flows(a),
        Cmd::Dns(c) => dns_cli::dns(c),
        Cmd::Policy(c) => policy_cli::policy(c),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Output to a closed pipe (`weft status | head -1`) ends the command quietly, as it ends
/// coreutils: SIGPIPE's default action, instead of the panic of a failed `println!`. Not
/// for the agent, whose sockets report a closed peer as an error, nor for the CNI plugin;
/// the API client sends with MSG_NOSIGNAL, so a closed agent socket stays an error too.
fn quiet_on_closed_output() {
    // SAFETY: setting SIGPIPE's disposition to SIG_DFL installs no handler (nothing runs
    // in signal context); it is done in main before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn cni_main() -> ExitCode {
    let mut stdin = Vec::new();
    let cmd = std::env::var("CNI_COMMAND").unwrap_or_default();
    // VERSION may come with no stdin at all; everything else reads the config.
    if !(cmd == "VERSION" && std::io::IsTerminal::is_terminal(&std::io::stdin())) {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    let out = weft_plugin::run(|k| std::env::var(k).ok(), &stdin);
    if !out.stdout.is_empty() {
        println!("{}", out.stdout);
    }
    if out.code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(out.code.clamp(1, 255) as u8)
    }
}

type Res = Result<ExitCode, String>;

/// `KEY=VALUE`.
fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    weft_policy::k8s::check_label_key(k, "").map_err(|e| e.msg)?;
    weft_policy::k8s::check_label_value(v, "").map_err(|e| e.msg)?;
    Ok((k.to_string(), v.to_string()))
}

/// `NAME=PORT/PROTO` (the protocol TCP when left out).
fn parse_port(s: &str) -> Result<(String, u16, String), String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PORT/PROTO, e.g. http=80/TCP"))?;
    weft_policy::k8s::check_port_name(name, "").map_err(|e| e.msg)?;
    let (port, proto) = rest.split_once('/').unwrap_or((rest, "TCP"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{s:?}: the port must be 1 to 65535"))?;
    let proto = proto.to_uppercase();
    if weft_policy::Protocol::parse(&proto).is_none() {
        return Err(format!("{s:?}: the protocol must be TCP, UDP or SCTP"));
    }
    Ok((name.to_string(), port, proto))
}

fn self_exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the weft binary: {e}"))
}

fn lab(cmd: LabCmd) -> Res {
    let e = |e: weft_lab::LabError| e.0;
    match cmd {
        LabCmd::Up {
            name,
            hosts,
            topology,
            no_agents,
            mode,
            nat,
            fast_path,
            encrypt,
            tunnel_offload,
            tunnel_rotate_secs,
            ipam_pools,
            metrics_addr,
            underlay,
            json,
        } => {
            let mut agent_args = Vec::new();
            for (flag, value) in [
                ("--mode", mode),
                ("--nat", nat),
                ("--fast-path", fast_path),
                ("--encrypt", encrypt),
                ("--tunnel-offload", tunnel_offload),
                ("--tunnel-rotate-secs", tunnel_rotate_secs),
                ("--ipam-pools", ipam_pools),
                ("--metrics-addr", metrics_addr),
            ] {
                if let Some(v) = value {
                    agent_args.extend([flag.to_string(), v]);
                }
            }
            if !no_agents {
                // Before anything is made: a flag the agents would refuse at their start
                // fails here, with the agent's own message.
                agent_cli::check_flags(&agent_args)?;
            }
            let opts = weft_lab::UpOptions {
                agents: !no_agents,
                agent_args,
                underlay,
            };
            let state = weft_lab::up_with(&name, hosts, topology, &self_exe()?, opts).map_err(e)?;
            if json {
                let v = weft_lab::status_json(&state);
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else {
                println!(
                    "lab {} is up: {} hosts, topology {}",
                    name, hosts, state.plan.topology
                );
                print_hosts(&state);
                println!("\nnext: weft lab run --name {name} h1 c1 -- sleep 3600; weft lab exec --name {name} h1/c1 -- ip addr");
            }
        }
        LabCmd::Down { name } => {
            let name = weft_lab::resolve(name.as_deref()).map_err(e)?;
            weft_lab::down(&name).map_err(e)?;
            println!("lab {name} is down");
        }
        LabCmd::Status { name, json } => {
            let names = match name {
                Some(n) => vec![n],
                None => weft_lab::list(),
            };
            let states = names
                .iter()
                .map(|n| weft_lab::load(n))
                .collect::<Result<Vec<_>, _>>()
                .map_err(e)?;
            if json {
                let v: Vec<_> = states.iter().map(weft_lab::status_json).collect();
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else if states.is_empty() {
                println!("no labs");
            } else {
                for s in &states {
                    println!(
                        "lab {}: {} hosts, topology {}{}",
                        s.plan.name,
                        s.plan.hosts.len(),
                        s.plan.topology,
                        if s.complete {
                            ""
                        } else {
                            " (incomplete: run `weft lab down`)"
                        }
                    );
                    print_hosts(s);
                }
            }
        }
        LabCmd::Exec { name, target, cmd } => {
            let name = weft_lab::resolve(name.as_deref()).map_err(e)?;
            let state = weft_lab::load(&name).map_err(e)?;
            let ns = weft_lab::target_netns(&state, &target).map_err(e)?;
            let mut command = std::process::Command::new("ip");
            command.args(["netns", "exec", &ns]).args(&cmd);
            if state.plan.host(&target).is_some() {
                // `weft ...` run on a lab host talks to that host's agent, and finds the
                // lab's own weft binary first.
                command.env("WEFT_SOCKET", weft_lab::agent_socket(&name, &target));
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut dirs = vec![weft_lab::cni_bin_dir(&name)];
                dirs.extend(std::env::split_paths(&path));
                if let Ok(joined) = std::env::join_paths(dirs) {
                    command.env("PATH", joined);
                }
            }
            let status = command
                .status()
                .map_err(|err| format!("run ip netns exec: {err}"))?;
            return Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ));
        }
        LabCmd::Run {
            name,
            conflist,
            json,
            namespace,
            labels,
            ports,
            host,
            container,
            cmd,
        } => {
            let name = weft_lab::resolve(name.as_deref()).map_err(e)?;
            let identity = weft_lab::Identity {
                namespace,
                labels,
                ports,
            };
            let c = weft_lab::run(
                &name,
                &host,
                &container,
                conflist.as_deref(),
                &identity,
                &cmd,
            )
            .map_err(e)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c).expect("json"));
            } else {
                let at = if c.ips.is_empty() {
                    "?".to_string()
                } else {
                    c.ips.join(" and ")
                };
                println!("container {host}/{container} is up at {at}");
            }
        }
        LabCmd::Rm {
            name,
            host,
            container,
        } => {
            let name = weft_lab::resolve(name.as_deref()).map_err(e)?;
            weft_lab::rm(&name, &host, &container).map_err(e)?;
            println!("container {host}/{container} removed");
        }
        LabCmd::Podman { name, host, args } => {
            let name = weft_lab::resolve(name.as_deref()).map_err(e)?;
            let code = weft_lab::podman(&name, &host, &args).map_err(e)?;
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        LabCmd::Docker { name, host, args } => {
            let name = weft_lab::resolve(name.as_deref()).map_err(e)?;
            let status = weft_lab::docker::run_docker(&name, &host, &args).map_err(e)?;
            let code = match (status.code(), status.signal()) {
                (Some(c), _) => c,
                (None, Some(sig)) => 128 + sig,
                (None, None) => 1,
            };
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        LabCmd::Agent { name, host, action } => {
            let name = weft_lab::resolve(name.as_deref()).map_err(e)?;
            println!("{}", weft_lab::agent(&name, &host, action).map_err(e)?);
        }
        LabCmd::Cut { name, a, b } => {
            let name = weft_lab::resolve(name.as_deref()).map_err(e)?;
            if weft_lab::cut(&name, &a, &b).map_err(e)? {
                println!("cut {a} from {b}");
            } else {
                println!("{a} and {b} were already cut");
            }
        }
        LabCmd::Heal { name, hosts } => {
            let name = weft_lab::resolve(name.as_deref()).map_err(e)?;
            let pair = match hosts.as_slice() {
                [] => None,
                [a, b] => Some((a.as_str(), b.as_str())),
                _ => return Err("heal takes two hosts, or none to heal every cut".into()),
            };
            let n = weft_lab::heal(&name, pair).map_err(e)?;
            match (pair, n) {
                (Some((a, b)), 0) => println!("{a} and {b} were not cut"),
                (Some((a, b)), _) => println!("healed {a} and {b}"),
                (None, n) => println!("healed {n} cut(s)"),
            }
        }
        LabCmd::Demo { keep } => demo::run(&self_exe()?, keep)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_hosts(state: &weft_lab::LabState) {
    for h in &state.plan.hosts {
        let pods = if state.cluster_ipam {
            "cluster IPAM"
        } else {
            h.pod_range.as_str()
        };
        let mut underlay: Vec<String> = Vec::new();
        if !h.v6_only {
            underlay.push(h.underlay.to_string());
        }
        underlay.extend(h.underlay6.map(|a| a.to_string()));
        println!(
            "  {:<4} underlay {:<15} pods {:<16} netns {}",
            h.name,
            underlay.join(" "),
            pods,
            h.netns
        );
        if let Some(a) = state.agents.iter().find(|a| a.host == h.name) {
            let run = match (a.pid, weft_lab::agent_running(a)) {
                (Some(pid), true) => format!("running, pid {pid}"),
                (Some(pid), false) => format!("not running (pid {pid} exited)"),
                (None, _) => "not running".into(),
            };
            println!("       agent {run:<28} socket {}", a.socket.display());
        }
        for c in state.containers.iter().filter(|c| c.host == h.name) {
            println!(
                "       container {:<12} {:<15} netns {}",
                c.name,
                if c.ips.is_empty() {
                    c.ip.clone().unwrap_or_else(|| "-".into())
                } else {
                    c.ips.join(" ")
                },
                c.netns
            );
        }
    }
    let out = &state.plan.outside;
    let mut addrs: Vec<String> = Vec::new();
    if state.plan.underlay.v4() {
        addrs.push(out.addr.to_string());
    }
    addrs.extend(out.addr6.map(|a| a.to_string()));
    println!(
        "  out  {:<24} netns {} (the outside world: no route to the pools)",
        addrs.join(" "),
        out.netns
    );
    let cuts: Vec<String> = state.cuts.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    if !cuts.is_empty() {
        println!("  cut: {}", cuts.join(", "));
    }
}

fn install_cni(a: &InstallCni) -> Res {
    let conflist = if a.cluster_ipam {
        weft_config::example_agent_conflist(&a.name, &a.agent_socket, &a.data_dir)
    } else {
        weft_config::example_conflist(&a.name, &a.range, &a.data_dir)
    };
    // Refuse a config weft itself would refuse, before writing anything.
    let v: serde_json::Value = serde_json::from_str(&conflist).expect("json");
    let mut first = v["plugins"][0].clone();
    first["cniVersion"] = v["cniVersion"].clone();
    first["name"] = v["name"].clone();
    weft_config::parse(first.to_string().as_bytes()).map_err(|e| e.msg)?;
    let conf_path = a.conf_dir.join(format!("{}.conflist", a.name));
    if conf_path.exists() && !a.force {
        return Err(format!(
            "{} exists; pass --force to overwrite it",
            conf_path.display()
        ));
    }
    std::fs::create_dir_all(&a.bin_dir)
        .map_err(|e| format!("create {}: {e}", a.bin_dir.display()))?;
    std::fs::create_dir_all(&a.conf_dir)
        .map_err(|e| format!("create {}: {e}", a.conf_dir.display()))?;
    let bin = a.bin_dir.join("weft");
    copy_atomic(&self_exe()?, &bin)?;
    let tmp = conf_path.with_extension("conflist.tmp");
    std::fs::write(&tmp, conflist).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &conf_path).map_err(|e| format!("write {}: {e}", conf_path.display()))?;
    println!("installed {} and {}", bin.display(), conf_path.display());
    Ok(ExitCode::SUCCESS)
}

fn copy_atomic(from: &Path, to: &Path) -> Result<(), String> {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).map_err(|e| format!("copy to {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, to).map_err(|e| format!("install {}: {e}", to.display()))
}
