//! The weft CNI plugin: ADD, DEL, CHECK, VERSION, STATUS and GC over the kernel.
//!
//! One attachment is a veth pair. Its host end is named from a hash of (container id,
//! interface) so DEL finds it without any state, and carries the alias
//! `weft:NETWORK:CONTAINER:IFNAME`, weft's ownership mark: weft deletes only links that
//! carry it. Inside the container the interface gets the address as a /32 (or /128), a
//! link-scope route to a link-local gateway, a default route through it and a permanent
//! neighbour entry for the gateway pointing at the host end, so no ARP is needed to leave.
//! On the host a /32 route (protocol [`WEFT_ROUTE_PROTOCOL`]) and a permanent neighbour
//! entry point at the container. No bridge: `ip route` and `traceroute` show the truth.
//!
//! Addresses come from an [`store::AddressSource`]: the weft agent's cluster IPAM when the
//! network config has no `range` ([`store::AgentSource`]), else a table of the range on this
//! host ([`store::LocalFileSource`]).
//!
//! Every failure undoes what the call made: the veth (and with it its routes and
//! neighbours) and the allocation.

mod report;
pub mod store;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use weft_alloc::{Owner, Range};
use weft_cni::{code, CniError, CniResult, Command, Env, Interface, IpConfig, NetConf, Route};
use weft_config::NetworkConfig;
use weft_netlink::{self as nl, Netlink, Scope, MAIN_TABLE, WEFT_ROUTE_PROTOCOL};

use store::{AddressSource, AgentSource, Allocated, LocalFileSource};

/// CHECK found the attachment not as ADD made it (plugin-specific code).
pub const CHECK_FAILED: u32 = 101;

/// The MTU used when none is configured and none can be detected.
const FALLBACK_MTU: u32 = 1500;

/// What one plugin invocation prints and how it exits.
pub struct Outcome {
    /// Text for stdout (a result or an error JSON; may be empty).
    pub stdout: String,
    /// Process exit code.
    pub code: i32,
}

/// Runs one CNI invocation: `get` reads the environment, `stdin` is the network config.
pub fn run(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let started = std::time::Instant::now();
    // The version to speak in errors: the config's if it can be read, else the latest.
    let conf_version = stdin_version(stdin);
    let result = dispatch(&get, stdin);
    report::send(&get, stdin, started, result.as_ref().err().map(|e| e.code));
    match result {
        Ok(stdout) => Outcome { stdout, code: 0 },
        Err(e) => Outcome {
            stdout: e.to_json(&conf_version),
            code: 1,
        },
    }
}

/// The cniVersion the caller's config asks for, if it can be read; else the latest.
fn stdin_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str().map(String::from))
        })
        .unwrap_or_else(|| weft_cni::Version::LATEST.as_str().to_string())
}

fn dispatch(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<String, CniError> {
    let env = Env::from_vars(get)?;
    if env.command == Command::Version {
        let v = stdin_version(stdin);
        return Ok(weft_cni::version_info(&v));
    }
    let (conf, net) = weft_config::parse(stdin)?;
    let ctx = Ctx::new(conf, net)?;
    match env.command {
        Command::Add => ctx.add(&env),
        Command::Del => ctx.del(&env).map(|_| String::new()),
        Command::Check => ctx.check(&env).map(|_| String::new()),
        Command::Status => ctx.status().map(|_| String::new()),
        Command::Gc => ctx.gc().map(|_| String::new()),
        Command::Version => unreachable!("handled above"),
    }
}

struct Ctx {
    conf: NetConf,
    net: NetworkConfig,
    /// The standalone range; `None`: cluster addresses from the agent.
    range: Option<Range>,
}

/// The ids of one attachment.
struct Attach<'a> {
    container_id: &'a str,
    ifname: &'a str,
}

impl Ctx {
    fn new(conf: NetConf, net: NetworkConfig) -> Result<Self, CniError> {
        let range = match net.range {
            Some(r) => Some(
                Range::new(r, net.range_start, net.range_end)
                    .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?,
            ),
            None => None,
        };
        Ok(Ctx { conf, net, range })
    }

    /// The network aliases the runtime gives this network (`runtimeConfig.aliases.NAME`,
    /// podman's `aliases` capability): more names for the name service.
    fn aliases(&self) -> Vec<String> {
        self.conf
            .runtime_config
            .as_ref()
            .and_then(|r| {
                r.pointer("/aliases")?
                    .get(&self.net.name)?
                    .as_array()
                    .cloned()
            })
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    }

    fn source(&self) -> Box<dyn AddressSource> {
        match &self.range {
            Some(range) => Box::new(LocalFileSource::new(
                Path::new(&self.net.data_dir),
                &self.net.name,
                range.clone(),
            )),
            None => Box::new(AgentSource::new(Path::new(&self.net.agent_socket))),
        }
    }

    /// Where addresses come from, for messages.
    fn space(&self) -> String {
        match &self.net.range {
            Some(r) => r.to_string(),
            None => "the cluster's pools".to_string(),
        }
    }

    fn alias(&self, a: &Attach) -> String {
        format!("weft:{}:{}:{}", self.net.name, a.container_id, a.ifname)
    }

    fn host_ifname(&self, a: &Attach) -> String {
        host_veth_name(&self.net.host_veth_prefix, a.container_id, a.ifname)
    }

    fn gateway(&self, ip: &IpAddr) -> IpAddr {
        self.net.gateway_for(ip)
    }

    fn attach<'a>(env: &'a Env) -> Attach<'a> {
        Attach {
            container_id: env.container_id.as_deref().unwrap_or_default(),
            ifname: env.ifname.as_deref().unwrap_or_default(),
        }
    }

    fn add(&self, env: &Env) -> Result<String, CniError> {
        let a = Self::attach(env);
        let netns_path = env.netns.as_deref().unwrap_or_default();
        let netns = open_netns_env(netns_path)?;
        let prev = match &self.conf.prev_result {
            Some(v) => Some(CniResult::parse_prev(v)?),
            None => None,
        };
        let owner = Owner {
            container_id: a.container_id.to_string(),
            ifname: a.ifname.to_string(),
        };
        // An attachment that exists already is refused before anything is touched, so the
        // undo below only ever removes what this call made.
        let host_if = self.host_ifname(&a);
        let mut nlh = Netlink::open().map_err(nl_err)?;
        if nlh.link_by_name(&host_if).map_err(nl_err)?.is_some() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "container {} already has {} attached (host interface {host_if}); DEL it first",
                    a.container_id, a.ifname
                ),
            ));
        }
        let mut source = match &self.range {
            Some(_) => self.source(),
            None => {
                // The agent registers the endpoint with its identity as it allocates.
                let mut id = weft_policy::identity::from_cni(
                    &env.args,
                    self.conf.extra.get("args"),
                    a.container_id,
                )
                .map_err(|e| {
                    let c = if e.env {
                        code::INVALID_ENV
                    } else {
                        code::INVALID_CONFIG
                    };
                    CniError::new(c, e.to_string())
                })?;
                id.aliases = self.aliases();
                Box::new(AgentSource::new(Path::new(&self.net.agent_socket)).with_identity(id))
            }
        };
        let Allocated { ips, held_before } = source.allocate(&owner)?;
        match self.wire(&mut nlh, &a, &netns, netns_path, &ips, source.mtu()) {
            Ok(mut result) => {
                if let Some(dns) = source.dns() {
                    result.dns = dns;
                }
                if let Some(mut prev) = prev {
                    prev.cni_version = result.cni_version.clone();
                    prev.append(result);
                    result = prev;
                }
                Ok(result.to_json_string())
            }
            Err(e) => {
                // Undo: the veth (routes and neighbours go with it), then the address.
                let _ = self.remove_host_link(&a);
                // Unless the attachment held all of them before this call.
                if !held_before {
                    let _ = source.release(&owner);
                }
                Err(e)
            }
        }
    }

    /// Makes the veth pair and programs both ends for addresses `ips` (one per family):
    /// each a /32 or /128 with a permanent neighbour for its link-local gateway and a
    /// default route through it in the container, a permanent neighbour and a host route
    /// on the host.
    fn wire(
        &self,
        nlh: &mut Netlink,
        a: &Attach,
        netns: &File,
        netns_path: &str,
        ips: &[IpAddr],
        source_mtu: Option<u32>,
    ) -> Result<CniResult, CniError> {
        let host_if = self.host_ifname(a);
        // The configured MTU, else the one the agent's data plane allows, else the
        // interface of the default route's.
        let mtu = match self.net.mtu.or(source_mtu) {
            Some(m) => m,
            None => detect_mtu(nlh),
        };
        if ips.iter().any(|ip| ip.is_ipv6()) && mtu < 1280 {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("mtu {mtu} is below IPv6's minimum of 1280"),
            ));
        }
        nlh.create_veth(&host_if, a.ifname, netns.as_raw(), mtu, &self.alias(a))
            .map_err(|e| {
                if e.is_exists() {
                    CniError::new(
                        code::INVALID_CONFIG,
                        format!(
                            "cannot create {}: an interface of that name already exists in the container (CNI_IFNAME)",
                            a.ifname
                        ),
                    )
                } else {
                    nl_err(e)
                }
            })?;
        let host = nlh
            .link_by_name(&host_if)
            .map_err(nl_err)?
            .ok_or_else(|| CniError::new(code::IO_FAILURE, format!("{host_if} vanished")))?;
        let host_mac = host
            .mac
            .ok_or_else(|| CniError::new(code::IO_FAILURE, format!("{host_if} has no MAC")))?;
        // (address /32 or /128, its gateway, the gateway as /32 or /128)
        let plan: Vec<(IpNet, IpAddr, IpNet)> = ips
            .iter()
            .map(|ip| {
                let len = if ip.is_ipv4() { 32 } else { 128 };
                let gw = self.gateway(ip);
                (
                    IpNet::new(*ip, len).expect("valid prefix"),
                    gw,
                    IpNet::new(gw, len).expect("valid prefix"),
                )
            })
            .collect();

        // Container side, through a socket opened in the container's namespace.
        let cont_mac = wire_container(netns, a.ifname, &plan, host_mac).map_err(nl_err)?;

        // Host side.
        for v6 in [false, true] {
            if ips.iter().any(|ip| ip.is_ipv6() == v6) {
                set_forwarding(&host_if, v6)?;
            }
        }
        nlh.set_up(host.index).map_err(nl_err)?;
        for (ip_net, _, _) in &plan {
            nlh.point_at(host.index, *ip_net, cont_mac, WEFT_ROUTE_PROTOCOL)
                .map_err(nl_err)?;
        }

        let mut result = CniResult::new(self.net.cni_version);
        result.interfaces = vec![
            Interface {
                name: host_if,
                mac: Some(nl::format_mac(&host_mac)),
                mtu: Some(mtu),
                ..Default::default()
            },
            Interface {
                name: a.ifname.to_string(),
                mac: Some(nl::format_mac(&cont_mac)),
                mtu: Some(mtu),
                sandbox: Some(netns_path.to_string()),
                ..Default::default()
            },
        ];
        result.ips = plan
            .iter()
            .map(|(ip_net, gw, _)| IpConfig {
                address: *ip_net,
                gateway: Some(*gw),
                interface: Some(1),
            })
            .collect();
        result.routes = plan
            .iter()
            .map(|(ip_net, gw, _)| Route {
                dst: default_net(ip_net.addr()),
                gw: Some(*gw),
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            })
            .collect();
        Ok(result)
    }

    /// Deletes the host end of an attachment if it exists and carries weft's mark.
    fn remove_host_link(&self, a: &Attach) -> Result<(), CniError> {
        let host_if = self.host_ifname(a);
        let mut nlh = Netlink::open().map_err(nl_err)?;
        if let Some(link) = nlh.link_by_name(&host_if).map_err(nl_err)? {
            if link.alias.as_deref() == Some(self.alias(a).as_str()) {
                match nlh.delete_link(link.index) {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(nl_err(e)),
                }
            }
        }
        Ok(())
    }

    fn del(&self, env: &Env) -> Result<(), CniError> {
        let a = Self::attach(env);
        // The veth first: once it is gone nothing routes to the address, then free it.
        self.remove_host_link(&a)?;
        self.source().release(&Owner {
            container_id: a.container_id.to_string(),
            ifname: a.ifname.to_string(),
        })?;
        Ok(())
    }

    fn check(&self, env: &Env) -> Result<(), CniError> {
        let a = Self::attach(env);
        let fail = |msg: String| CniError::new(CHECK_FAILED, msg);
        let owner = Owner {
            container_id: a.container_id.to_string(),
            ifname: a.ifname.to_string(),
        };
        let ips = self.source().lookup(&owner)?;
        if ips.is_empty() {
            return Err(fail(format!(
                "no address is allocated to container {} interface {}",
                a.container_id, a.ifname
            )));
        }
        if let Some(prev) = &self.conf.prev_result {
            let prev = CniResult::parse_prev(prev)?;
            if let Some(ip) = ips
                .iter()
                .find(|ip| !prev.ips.iter().any(|c| c.address.addr() == **ip))
            {
                return Err(fail(format!(
                    "prevResult does not list {ip}, an address allocated to this attachment"
                )));
            }
        }
        let host_if = self.host_ifname(&a);
        let mut nlh = Netlink::open().map_err(nl_err)?;
        let host = nlh
            .link_by_name(&host_if)
            .map_err(nl_err)?
            .ok_or_else(|| fail(format!("host interface {host_if} is missing")))?;
        if host.alias.as_deref() != Some(self.alias(&a).as_str()) {
            return Err(fail(format!(
                "host interface {host_if} does not carry weft's mark {:?}",
                self.alias(&a)
            )));
        }
        if !host.up {
            return Err(fail(format!("host interface {host_if} is down")));
        }
        let want: Vec<(IpNet, IpAddr)> = ips
            .iter()
            .map(|ip| {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                (
                    IpNet::new(*ip, prefix).expect("valid prefix"),
                    self.gateway(ip),
                )
            })
            .collect();
        for (ip_net, _) in &want {
            let routes = nlh
                .routes(ip_net.addr().is_ipv6(), MAIN_TABLE)
                .map_err(nl_err)?;
            if !routes
                .iter()
                .any(|r| r.dst == *ip_net && r.oif == Some(host.index))
            {
                return Err(fail(format!(
                    "host route {ip_net} dev {host_if} is missing"
                )));
            }
        }
        let netns = open_netns_env(env.netns.as_deref().unwrap_or_default())?;
        let problem = check_container(&netns, a.ifname, &want).map_err(nl_err)?;
        match problem {
            Some(p) => Err(fail(p)),
            None => Ok(()),
        }
    }

    fn status(&self) -> Result<(), CniError> {
        let free = self.source().free().map_err(|e| {
            CniError::new(
                code::NOT_AVAILABLE,
                format!("weft cannot allocate: {}", e.msg),
            )
        })?;
        if free == 0 {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!(
                    "weft cannot add containers: every address of {} is allocated",
                    self.space()
                ),
            ));
        }
        Ok(())
    }

    fn gc(&self) -> Result<(), CniError> {
        let valid: BTreeSet<Owner> = self
            .conf
            .valid_attachments
            .as_ref()
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "GC needs \"cni.dev/valid-attachments\" in the network config",
                )
            })?
            .iter()
            .map(|v| Owner::new(v.container_id.clone(), v.ifname.clone()))
            .collect();
        // Links carrying this network's mark whose attachment is not valid.
        let prefix = format!("weft:{}:", self.net.name);
        let mut nlh = Netlink::open().map_err(nl_err)?;
        for link in nlh.links().map_err(nl_err)? {
            let Some(rest) = link.alias.as_deref().and_then(|s| s.strip_prefix(&prefix)) else {
                continue;
            };
            let Some((cid, ifname)) = rest.split_once(':') else {
                continue;
            };
            if !valid.contains(&Owner::new(cid, ifname)) {
                match nlh.delete_link(link.index) {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(nl_err(e)),
                }
            }
        }
        // Allocations whose attachment is not valid.
        self.source().gc(&valid)?;
        Ok(())
    }
}

/// The host-side veth name: `PREFIX` + hex of a stable hash of (container id, ifname),
/// 15 characters in all (the kernel's limit).
pub fn host_veth_name(prefix: &str, container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bit: stable across Rust versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let hex = format!("{h:016x}");
    let take = 15usize.saturating_sub(prefix.len()).min(16);
    format!("{prefix}{}", &hex[..take])
}

fn default_net(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(_) => "0.0.0.0/0".parse().expect("valid"),
        IpAddr::V6(_) => "::/0".parse().expect("valid"),
    }
}

fn open_netns_env(path: &str) -> Result<File, CniError> {
    if path.is_empty() {
        return Err(CniError::new(code::INVALID_ENV, "CNI_NETNS is required"));
    }
    nl::open_netns(Path::new(path)).map_err(|e| {
        CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS={path} is not a usable network namespace: {}",
                e.source
            ),
        )
    })
}

/// What is wrong with the container's end of an attachment (`ifname` in the namespace
/// `netns`, with the addresses and gateways `want`), if anything.
fn check_container(
    netns: &File,
    ifname: &str,
    want: &[(IpNet, IpAddr)],
) -> Result<Option<String>, nl::Error> {
    let mut c = Netlink::open_in(netns)?;
    let Some(link) = c.link_by_name(ifname)? else {
        return Ok(Some(format!(
            "interface {ifname} is missing in the container"
        )));
    };
    if !link.up {
        return Ok(Some(format!("interface {ifname} is down in the container")));
    }
    let addrs = c.addresses(link.index)?;
    for (ip_net, gw) in want {
        if !addrs.iter().any(|(_, n)| n == ip_net) {
            return Ok(Some(format!(
                "interface {ifname} lacks address {ip_net} in the container"
            )));
        }
        let routes = c.routes(ip_net.addr().is_ipv6(), MAIN_TABLE)?;
        if !routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(*gw) && r.oif == Some(link.index))
        {
            return Ok(Some(format!(
                "the container has no default route via {gw} dev {ifname}"
            )));
        }
    }
    Ok(None)
}

/// Programs the container's end of the veth (`ifname`, in the namespace `netns`): `lo` up,
/// each address of `plan` (address, gateway, gateway as a host prefix) with a permanent
/// neighbour for its gateway (`host_mac`), the route to the gateway and the default route
/// through it. Returns the container end's MAC.
fn wire_container(
    netns: &File,
    ifname: &str,
    plan: &[(IpNet, IpAddr, IpNet)],
    host_mac: [u8; 6],
) -> Result<[u8; 6], nl::Error> {
    let mut c = Netlink::open_in(netns)?;
    if let Some(lo) = c.link_by_name("lo")? {
        if !lo.up {
            c.set_up(lo.index)?;
        }
    }
    let link = c.link_by_name(ifname)?.ok_or_else(|| nl::Error {
        op: format!("find {ifname} in the container"),
        source: std::io::Error::from_raw_os_error(libc::ENODEV),
    })?;
    for (ip_net, _, _) in plan {
        c.add_address(link.index, *ip_net, true)?;
    }
    c.set_up(link.index)?;
    for (ip_net, gw, gw_net) in plan {
        c.set_permanent_neighbour(link.index, *gw, host_mac)?;
        c.add_route(
            &nl::Route::new(
                *gw_net,
                None,
                Some(link.index),
                Scope::Link,
                WEFT_ROUTE_PROTOCOL,
                MAIN_TABLE,
            ),
            true,
        )?;
        c.add_route(
            &nl::Route::new(
                default_net(ip_net.addr()),
                Some(*gw),
                Some(link.index),
                Scope::Universe,
                WEFT_ROUTE_PROTOCOL,
                MAIN_TABLE,
            ),
            true,
        )?;
    }
    link.mac.ok_or_else(|| nl::Error {
        op: format!("read the MAC of {ifname}"),
        source: std::io::Error::from_raw_os_error(libc::ENODEV),
    })
}

/// The MTU of the interface the default route leaves through, else the fallback.
fn detect_mtu(nlh: &mut Netlink) -> u32 {
    let oif = nlh.routes(false, MAIN_TABLE).ok().and_then(|routes| {
        routes
            .into_iter()
            .find(|r| r.dst.prefix_len() == 0)
            .and_then(|r| r.oif)
    });
    oif.and_then(|i| nlh.link_by_index(i).ok().flatten())
        .map(|l| l.mtu)
        .filter(|m| *m >= 576)
        .unwrap_or(FALLBACK_MTU)
}

fn set_forwarding(ifname: &str, v6: bool) -> Result<(), CniError> {
    let path = if v6 {
        format!("/proc/sys/net/ipv6/conf/{ifname}/forwarding")
    } else {
        format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding")
    };
    std::fs::write(&path, b"1")
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("write {path}: {e}")))
}

fn nl_err(e: nl::Error) -> CniError {
    CniError::new(code::IO_FAILURE, e.to_string())
}

trait AsRaw {
    fn as_raw(&self) -> std::os::fd::RawFd;
}

impl AsRaw for File {
    fn as_raw(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_and_fit_the_kernel_limit() {
        let a = host_veth_name("weft", "abc123", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("weft"));
        assert_eq!(a, host_veth_name("weft", "abc123", "eth0"));
        assert_ne!(a, host_veth_name("weft", "abc123", "eth1"));
        assert_ne!(a, host_veth_name("weft", "abc124", "eth0"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(
            host_veth_name("w", "ab", "ceth"),
            host_veth_name("w", "abc", "eth")
        );
        assert_eq!(host_veth_name("wf", "x", "eth0").len(), 15);
    }
}
