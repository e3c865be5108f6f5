//! The agent's configuration: a JSON file and flags; errors name the field.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use weft_ipam::{IpamConfig, Space};

/// Default TCP port for peer connections.
pub const DEFAULT_PORT: u16 = 6783;
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/weft";
/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";
/// Default cluster address pool.
pub const DEFAULT_IPAM_POOL: &str = "10.32.0.0/12";
/// Default IPv4 block prefix length.
pub const DEFAULT_IPAM_BLOCK_V4: u8 = 26;
/// Default IPv6 block prefix length.
pub const DEFAULT_IPAM_BLOCK_V6: u8 = 122;
/// Default number of nodes that start the cluster together.
pub const DEFAULT_IPAM_INIT: usize = 1;
/// Default time an empty active block waits before going back to reserve.
pub const DEFAULT_IPAM_GRACE_MS: u64 = 60_000;
/// Default time a node stays down before its heir reclaims its space (0 = never).
pub const DEFAULT_IPAM_RECLAIM_AFTER_MS: u64 = 1_800_000;
/// Default time an unanswered request for space waits before it goes elsewhere.
pub const DEFAULT_IPAM_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Default address of the Prometheus metrics (loopback: nothing leaves the host unless
/// the operator says so). Weave Net's metrics port.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:6782";
/// Default log filter (`tracing`'s `EnvFilter` syntax), when neither the config nor
/// `WEFT_LOG` / `RUST_LOG` give one.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// A validated agent configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// This node's name.
    pub name: String,
    /// Where to accept peer connections.
    pub listen: SocketAddr,
    /// The address other nodes should dial (published in the mesh).
    pub advertise: SocketAddr,
    /// Peers to connect to at start (`host:port` or `ip`, default port 6783).
    pub peers: Vec<SocketAddr>,
    /// Identity and state directory.
    pub data_dir: PathBuf,
    /// The cluster secret file.
    pub secret_file: PathBuf,
    /// The local API socket.
    pub socket: PathBuf,
    /// At most this many peer connections are dialled.
    pub max_peers: usize,
    /// Anti-entropy tick in milliseconds.
    pub tick_ms: u64,
    /// A node unreachable this long is declared gone, in seconds.
    pub down_after_secs: u64,
    /// The cluster IPAM: pools, block sizes, bootstrap and timings.
    pub ipam: IpamConfig,
    /// The kernel data plane: routes, VXLAN and NAT (docs/dataplane.md).
    pub dataplane: DataplaneConfig,
    /// Where `GET /metrics` is served; `None`: only on the API socket.
    pub metrics_addr: Option<SocketAddr>,
    /// The metrics address was given: failing to bind it stops the agent (the default's
    /// failure, e.g. a second agent in one network namespace, is only logged).
    pub metrics_given: bool,
    /// Logs: format and filter.
    pub log: LogConfig,
    /// The name service (docs/dns.md); `None`: off.
    pub dns: Option<DnsConfig>,
    /// Docker's network and IPAM plugin (docs/docker.md); `None`: off.
    pub docker: Option<DockerConfig>,
}

/// The default dockerd API socket, where Docker containers' names are read.
pub const DEFAULT_DOCKER_HOST: &str = "/var/run/docker.sock";

/// The Docker plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// The plugin socket: `/run/docker/plugins/weft.sock` makes the driver `weft`.
    pub plugin: PathBuf,
    /// dockerd's API socket.
    pub host: PathBuf,
}

/// The default address of the name service: the containers' IPv4 gateway.
pub const DEFAULT_DNS_ADDR: &str = "169.254.1.1";
/// The default file of upstream servers.
pub const DEFAULT_DNS_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The agent's DNS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The address it answers on (port 53), put on the link `weft.dns`.
    pub addr: IpAddr,
    /// The cluster domain, lower case, no final dot.
    pub domain: String,
    /// TTL of answers, seconds.
    pub ttl: u32,
    /// Where the upstream servers are read.
    pub resolv_conf: PathBuf,
}

/// How the agent logs (to stderr, through `tracing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// One JSON object per event (`json`), or text lines.
    pub json: bool,
    /// An `EnvFilter` directive such as `info,weft::mesh=debug`; `None`: `WEFT_LOG`, else
    /// `RUST_LOG`, else [`DEFAULT_LOG_FILTER`].
    pub filter: Option<String>,
}

/// Default UDP port of weft's VXLAN (next to the peer port).
pub const DEFAULT_VXLAN_PORT: u16 = 6784;
/// Default UDP port of the encrypted tunnel.
pub const DEFAULT_TUNNEL_PORT: u16 = 6785;
/// Default VXLAN network identifier.
pub const DEFAULT_VXLAN_ID: u32 = 6783;

/// How the agent programs the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// `auto`, `route` or `vxlan`; `None` = off (the agent programs nothing).
    pub mode: Option<weft_dataplane::Mode>,
    /// Outbound NAT of pod traffic to addresses outside the pools.
    pub nat: bool,
    /// Forward pod-to-pod IPv4 packets with the BPF fast path (weft-fastpath) when the
    /// kernel allows it; the kernel's stack carries them otherwise.
    pub fast_path: bool,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// VXLAN network identifier.
    pub vxlan_id: u32,
    /// Which peers the encrypted tunnel carries (docs/encryption.md).
    pub encrypt: weft_dataplane::Encrypt,
    /// The tunnel's UDP port.
    pub tunnel_port: u16,
    /// TUN and UDP offloads (superpackets, GSO, GRO) when the kernel has them.
    pub tunnel_offload: bool,
    /// A tunnel receiver offers a new key this often, seconds.
    pub tunnel_rotate_secs: u64,
}

/// The raw form, as in the config file (every field optional; flags fill in).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    /// Node name.
    pub name: Option<String>,
    /// Listen address.
    pub listen: Option<String>,
    /// Advertised address.
    pub advertise: Option<String>,
    /// Initial peers.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Data directory.
    pub data_dir: Option<String>,
    /// Secret file.
    pub secret_file: Option<String>,
    /// API socket.
    pub socket: Option<String>,
    /// Peer limit.
    pub max_peers: Option<usize>,
    /// Tick.
    pub tick_ms: Option<u64>,
    /// Down-after.
    pub down_after_secs: Option<u64>,
    /// Cluster address pools (CIDRs).
    pub ipam_pools: Option<Vec<String>>,
    /// IPv4 block prefix length.
    pub ipam_block_v4: Option<u64>,
    /// IPv6 block prefix length.
    pub ipam_block_v6: Option<u64>,
    /// Nodes that start the cluster together.
    pub ipam_init: Option<u64>,
    /// Grace of an empty active block, ms.
    pub ipam_grace_ms: Option<u64>,
    /// Automatic reclaim of a down node after this long, ms (0 = off).
    pub ipam_reclaim_after_ms: Option<u64>,
    /// Timeout of a request for space, ms.
    pub ipam_request_timeout_ms: Option<u64>,
    /// Data plane mode: auto, route, vxlan or off.
    pub mode: Option<String>,
    /// Outbound NAT: on or off.
    pub nat: Option<bool>,
    /// The BPF fast path for pod-to-pod traffic: on or off.
    pub fast_path: Option<bool>,
    /// VXLAN UDP port.
    pub vxlan_port: Option<u64>,
    /// VXLAN network identifier.
    pub vxlan_id: Option<u64>,
    /// Encryption: off, on or cross-subnet.
    pub encrypt: Option<String>,
    /// The tunnel's UDP port.
    pub tunnel_port: Option<u64>,
    /// Tunnel offloads: on or off.
    pub tunnel_offload: Option<bool>,
    /// Key rotation interval, seconds.
    pub tunnel_rotate_secs: Option<u64>,
    /// Metrics address, IP:PORT, or `off`.
    pub metrics_addr: Option<String>,
    /// Log format: text or json.
    pub log_format: Option<String>,
    /// Log filter (`EnvFilter` syntax).
    pub log_filter: Option<String>,
    /// The name service: on or off.
    pub dns: Option<bool>,
    /// Its address.
    pub dns_addr: Option<String>,
    /// The cluster domain.
    pub dns_domain: Option<String>,
    /// TTL of answers, seconds.
    pub dns_ttl: Option<u64>,
    /// The resolv.conf of upstream servers.
    pub dns_resolv_conf: Option<String>,
    /// Where to serve Docker's plugin protocol, or `off`.
    pub docker_plugin: Option<String>,
    /// dockerd's API socket.
    pub docker_host: Option<String>,
}

/// A configuration error: which field, what was expected, what was found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("agent config field `{field}`: expected {expected}, found {found}")]
pub struct ConfigError {
    /// The field (flag name without dashes, or file key).
    pub field: String,
    /// What would have been accepted.
    pub expected: String,
    /// What was given.
    pub found: String,
}

fn err(field: &str, expected: &str, found: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        field: field.into(),
        expected: expected.into(),
        found: found.to_string(),
    }
}

impl RawConfig {
    /// Parses a config file's JSON.
    pub fn from_json(text: &str) -> Result<RawConfig, ConfigError> {
        serde_json::from_str(text).map_err(|e| {
            let msg = e.to_string();
            let field = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.contains("unknown field"))
                .unwrap_or("(file)")
                .to_string();
            err(
                &field,
                "a JSON object with the keys name, listen, advertise, peers, dataDir, secretFile, socket, maxPeers, tickMs, downAfterSecs, ipamPools, ipamBlockV4, ipamBlockV6, ipamInit, ipamGraceMs, ipamReclaimAfterMs, ipamRequestTimeoutMs, mode, nat, fastPath, vxlanPort, vxlanId, encrypt, tunnelPort, tunnelOffload, tunnelRotateSecs, metricsAddr, logFormat, logFilter, dns, dnsAddr, dnsDomain, dnsTtl, dnsResolvConf, dockerPlugin, dockerHost",
                msg,
            )
        })
    }

    /// Overlays `other` (flags) on this (file): set fields of `other` win; peers add up.
    pub fn overlay(mut self, other: RawConfig) -> RawConfig {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            name,
            listen,
            advertise,
            data_dir,
            secret_file,
            socket,
            max_peers,
            tick_ms,
            down_after_secs,
            ipam_pools,
            ipam_block_v4,
            ipam_block_v6,
            ipam_init,
            ipam_grace_ms,
            ipam_reclaim_after_ms,
            ipam_request_timeout_ms,
            mode,
            nat,
            fast_path,
            vxlan_port,
            vxlan_id,
            encrypt,
            tunnel_port,
            tunnel_offload,
            tunnel_rotate_secs,
            metrics_addr,
            log_format,
            log_filter,
            dns,
            dns_addr,
            dns_domain,
            dns_ttl,
            dns_resolv_conf,
            docker_plugin,
            docker_host
        );
        self.peers.extend(other.peers);
        self
    }

    /// Validates and fills in defaults.
    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        // Checked now, reported after the fields before it.
        let ipam = ipam_config(&self);
        let dataplane = dataplane_config(&self);
        let dns = dns_config(&self);
        let docker = docker_config(&self);
        let name = self
            .name
            .ok_or_else(|| err("name", "a node name", "nothing"))?;
        if name.is_empty()
            || name.len() > 63
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(err(
                "name",
                "1 to 63 characters of A-Z a-z 0-9 - _ .",
                format!("{name:?}"),
            ));
        }
        let listen = match &self.listen {
            None => SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            Some(s) => parse_addr(s)
                .ok_or_else(|| err("listen", "IP:PORT such as 0.0.0.0:6783", format!("{s:?}")))?,
        };
        let advertise = match &self.advertise {
            Some(s) => {
                let a = parse_addr(s).ok_or_else(|| {
                    err(
                        "advertise",
                        "IP:PORT such as 10.0.0.5:6783",
                        format!("{s:?}"),
                    )
                })?;
                if a.ip().is_unspecified() {
                    return Err(err("advertise", "an address peers can dial", s));
                }
                a
            }
            None if !listen.ip().is_unspecified() => listen,
            None => {
                return Err(err(
                    "advertise",
                    "the address peers should dial (needed when listen is 0.0.0.0 or ::)",
                    "nothing",
                ))
            }
        };
        let peers = self
            .peers
            .iter()
            .map(|p| {
                parse_addr(p)
                    .ok_or_else(|| err("peer", "IP, IP:PORT or HOST:PORT", format!("{p:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let data_dir = PathBuf::from(self.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()));
        if !data_dir.is_absolute() {
            return Err(err("data-dir", "an absolute path", data_dir.display()));
        }
        let secret_file = PathBuf::from(self.secret_file.ok_or_else(|| {
            err(
                "secret-file",
                "the path of the cluster secret file",
                "nothing",
            )
        })?);
        let socket = PathBuf::from(self.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()));
        let max_peers = self.max_peers.unwrap_or(100);
        if max_peers == 0 {
            return Err(err("max-peers", "at least 1", 0));
        }
        let tick_ms = self.tick_ms.unwrap_or(1000);
        // Connections idle for 5 s are dead, and a tick sends a digest on each: ticks stay short.
        if !(50..=1000).contains(&tick_ms) {
            return Err(err("tick-ms", "50 to 1000", tick_ms));
        }
        let down_after_secs = self.down_after_secs.unwrap_or(300);
        if down_after_secs == 0 {
            return Err(err("down-after-secs", "at least 1", 0));
        }
        let ipam = ipam?;
        let dataplane = dataplane?;
        let dns = dns?;
        let docker = docker?;
        let metrics_given = self.metrics_addr.is_some();
        let metrics_addr = match self.metrics_addr.as_deref().unwrap_or(DEFAULT_METRICS_ADDR) {
            "off" => None,
            s => Some(s.parse::<SocketAddr>().map_err(|_| {
                err(
                    "metrics-addr",
                    "IP:PORT such as 127.0.0.1:6782, or off",
                    format!("{s:?}"),
                )
            })?),
        };
        let json = match self.log_format.as_deref().unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => return Err(err("log-format", "text or json", format!("{other:?}"))),
        };
        if let Some(f) = &self.log_filter {
            if let Err(e) = crate::logging::check_filter(f) {
                return Err(err(
                    "log-filter",
                    "a filter such as info or warn,weft::mesh=debug",
                    format!("{f:?} ({e})"),
                ));
            }
        }
        Ok(AgentConfig {
            name,
            listen,
            advertise,
            peers,
            data_dir,
            secret_file,
            socket,
            max_peers,
            tick_ms,
            down_after_secs,
            ipam,
            dataplane,
            metrics_addr,
            metrics_given,
            log: LogConfig {
                json,
                filter: self.log_filter,
            },
            dns,
            docker,
        })
    }
}

fn docker_config(r: &RawConfig) -> Result<Option<DockerConfig>, ConfigError> {
    let plugin = match r.docker_plugin.as_deref() {
        None | Some("off") => return Ok(None),
        Some(p) => PathBuf::from(p),
    };
    if !plugin.is_absolute() || plugin.extension().is_none_or(|e| e != "sock") {
        return Err(err(
            "docker-plugin",
            "an absolute path ending in .sock, such as /run/docker/plugins/weft.sock (the file's name is the driver's), or off",
            plugin.display(),
        ));
    }
    let host = PathBuf::from(r.docker_host.as_deref().unwrap_or(DEFAULT_DOCKER_HOST));
    if !host.is_absolute() {
        return Err(err(
            "docker-host",
            "the absolute path of dockerd's API socket",
            host.display(),
        ));
    }
    Ok(Some(DockerConfig { plugin, host }))
}

fn dns_config(r: &RawConfig) -> Result<Option<DnsConfig>, ConfigError> {
    if r.dns == Some(false) {
        return Ok(None);
    }
    let a = r.dns_addr.as_deref().unwrap_or(DEFAULT_DNS_ADDR);
    let addr: IpAddr = a.parse().map_err(|_| {
        err(
            "dns-addr",
            "an IP address such as 169.254.1.1",
            format!("{a:?}"),
        )
    })?;
    if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
        return Err(err(
            "dns-addr",
            "an address containers can reach (not 0.0.0.0, loopback or multicast)",
            addr,
        ));
    }
    let d = r.dns_domain.as_deref().unwrap_or(weft_dns::DEFAULT_DOMAIN);
    let domain = weft_dns::Config::new(d, 0, Vec::new())
        .map_err(|_| {
            err(
                "dns-domain",
                "a domain such as weft.local (labels of letters, digits, '-', '_')",
                format!("{d:?}"),
            )
        })?
        .domain;
    let ttl = r.dns_ttl.unwrap_or(weft_dns::DEFAULT_TTL.into());
    if ttl > 86_400 {
        return Err(err("dns-ttl", "0 to 86400 seconds", ttl));
    }
    let resolv_conf = PathBuf::from(
        r.dns_resolv_conf
            .as_deref()
            .unwrap_or(DEFAULT_DNS_RESOLV_CONF),
    );
    Ok(Some(DnsConfig {
        addr,
        domain,
        ttl: ttl as u32,
        resolv_conf,
    }))
}

fn dataplane_config(r: &RawConfig) -> Result<DataplaneConfig, ConfigError> {
    use weft_dataplane::Mode;
    let mode = match r.mode.as_deref().unwrap_or("auto") {
        "auto" => Some(Mode::Auto),
        "route" => Some(Mode::Route),
        "vxlan" => Some(Mode::Vxlan),
        "off" => None,
        other => {
            return Err(err(
                "mode",
                "auto, route, vxlan or off",
                format!("{other:?}"),
            ))
        }
    };
    let vxlan_port = r.vxlan_port.unwrap_or(DEFAULT_VXLAN_PORT.into());
    if !(1..=65535).contains(&vxlan_port) {
        return Err(err("vxlan-port", "a UDP port, 1 to 65535", vxlan_port));
    }
    let vxlan_id = r.vxlan_id.unwrap_or(DEFAULT_VXLAN_ID.into());
    if !(1..(1 << 24)).contains(&vxlan_id) {
        return Err(err("vxlan-id", "1 to 16777215", vxlan_id));
    }
    let encrypt = match r.encrypt.as_deref().unwrap_or("off") {
        "off" => weft_dataplane::Encrypt::Off,
        "on" => weft_dataplane::Encrypt::On,
        "cross-subnet" => weft_dataplane::Encrypt::CrossSubnet,
        other => {
            return Err(err(
                "encrypt",
                "off, on or cross-subnet",
                format!("{other:?}"),
            ))
        }
    };
    let tunnel_port = r.tunnel_port.unwrap_or(DEFAULT_TUNNEL_PORT.into());
    if !(1..=65535).contains(&tunnel_port) || tunnel_port == vxlan_port {
        return Err(err(
            "tunnel-port",
            "a UDP port, 1 to 65535, not the VXLAN port",
            tunnel_port,
        ));
    }
    let tunnel_rotate_secs = r.tunnel_rotate_secs.unwrap_or(120);
    if !(1..=120).contains(&tunnel_rotate_secs) {
        return Err(err(
            "tunnel-rotate-secs",
            "1 to 120 seconds (keys live at most 2 minutes)",
            tunnel_rotate_secs,
        ));
    }
    Ok(DataplaneConfig {
        encrypt,
        tunnel_port: tunnel_port as u16,
        tunnel_offload: r.tunnel_offload.unwrap_or(true),
        tunnel_rotate_secs,
        mode,
        nat: r.nat.unwrap_or(true),
        fast_path: r.fast_path.unwrap_or(true),
        vxlan_port: vxlan_port as u16,
        vxlan_id: vxlan_id as u32,
    })
}

/// Validates the `ipam-*` fields; the pools and block sizes through [`Space::new`], whose
/// message is reported under the field it concerns.
fn ipam_config(r: &RawConfig) -> Result<IpamConfig, ConfigError> {
    let pools: Vec<String> = match &r.ipam_pools {
        Some(p) => p.clone(),
        None => vec![DEFAULT_IPAM_POOL.to_string()],
    };
    let pools = pools
        .iter()
        .map(|p| {
            p.trim().parse::<IpNet>().map_err(|_| {
                err(
                    "ipam-pools",
                    "CIDRs such as 10.32.0.0/12 or fd00:32::/104",
                    format!("{p:?}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A block holds at most MAX_BLOCK_ADDRS addresses: prefix lengths from 16 (IPv4) or
    // 112 (IPv6) up to a single address.
    let bits = weft_ipam::space::MAX_BLOCK_ADDRS.trailing_zeros() as u64;
    let block_v4 = r.ipam_block_v4.unwrap_or(DEFAULT_IPAM_BLOCK_V4.into());
    if !(32 - bits..=32).contains(&block_v4) {
        return Err(err(
            "ipam-block-v4",
            &format!("an IPv4 block prefix length from {} to 32", 32 - bits),
            block_v4,
        ));
    }
    let block_v6 = r.ipam_block_v6.unwrap_or(DEFAULT_IPAM_BLOCK_V6.into());
    if !(128 - bits..=128).contains(&block_v6) {
        return Err(err(
            "ipam-block-v6",
            &format!("an IPv6 block prefix length from {} to 128", 128 - bits),
            block_v6,
        ));
    }
    let shown: Vec<String> = pools.iter().map(|p| p.to_string()).collect();
    let space = Space::new(pools, block_v4 as u8, block_v6 as u8).map_err(|msg| {
        err(
            "ipam-pools",
            &format!("pools that fit the block sizes /{block_v4} and /{block_v6} ({msg})"),
            shown.join(","),
        )
    })?;
    let init = r.ipam_init.unwrap_or(DEFAULT_IPAM_INIT as u64);
    if !(1..=1000).contains(&init) {
        return Err(err(
            "ipam-init",
            "1 to 1000 (the nodes that start the cluster together; more than half of them)",
            init,
        ));
    }
    let grace_ms = r.ipam_grace_ms.unwrap_or(DEFAULT_IPAM_GRACE_MS);
    let reclaim_after_ms = r
        .ipam_reclaim_after_ms
        .unwrap_or(DEFAULT_IPAM_RECLAIM_AFTER_MS);
    let request_timeout_ms = r
        .ipam_request_timeout_ms
        .unwrap_or(DEFAULT_IPAM_REQUEST_TIMEOUT_MS);
    if request_timeout_ms < 100 {
        return Err(err(
            "ipam-request-timeout-ms",
            "at least 100",
            request_timeout_ms,
        ));
    }
    Ok(IpamConfig {
        space,
        init: init as usize,
        grace_ms,
        reclaim_after_ms,
        request_timeout_ms,
    })
}

/// Parses `IP`, `IP:PORT`, `[V6]:PORT` or `HOST:PORT` (resolved once); the port defaults to
/// 6783.
pub fn parse_addr(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DEFAULT_PORT));
    }
    if s.contains(':') {
        return s.to_socket_addrs().ok()?.next();
    }
    (s, DEFAULT_PORT).to_socket_addrs().ok()?.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        RawConfig {
            name: Some("h1".into()),
            listen: Some("10.0.0.1:6783".into()),
            secret_file: Some("/etc/weft/secret".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_in() {
        let c = raw().validate().unwrap();
        assert_eq!(c.advertise, "10.0.0.1:6783".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.tick_ms, 1000);
        assert_eq!(
            c.ipam.space.pools,
            vec![DEFAULT_IPAM_POOL.parse::<IpNet>().unwrap()]
        );
        assert_eq!((c.ipam.space.block_v4, c.ipam.space.block_v6), (26, 122));
        assert_eq!(c.ipam.init, 1);
        assert_eq!(c.ipam.grace_ms, 60_000);
        assert_eq!(c.ipam.reclaim_after_ms, 1_800_000);
        assert_eq!(c.ipam.request_timeout_ms, 2_000);
        assert_eq!(c.metrics_addr, Some("127.0.0.1:6782".parse().unwrap()));
        assert!(!c.metrics_given && !c.log.json && c.log.filter.is_none());
    }

    #[test]
    fn metrics_and_log_fields_are_checked_and_named() {
        let with = |f: fn(&mut RawConfig)| {
            let mut r = raw();
            f(&mut r);
            r.validate()
        };
        let c = with(|r| r.metrics_addr = Some("off".into())).unwrap();
        assert_eq!(c.metrics_addr, None);
        let c = with(|r| r.metrics_addr = Some("[::1]:9000".into())).unwrap();
        assert_eq!(c.metrics_addr, Some("[::1]:9000".parse().unwrap()));
        assert!(c.metrics_given);
        let e = with(|r| r.metrics_addr = Some("localhost".into())).unwrap_err();
        assert_eq!(e.field, "metrics-addr");
        let c = with(|r| {
            r.log_format = Some("json".into());
            r.log_filter = Some("warn,weft::mesh=debug".into());
        })
        .unwrap();
        assert!(c.log.json);
        assert_eq!(c.log.filter.as_deref(), Some("warn,weft::mesh=debug"));
        let e = with(|r| r.log_format = Some("xml".into())).unwrap_err();
        assert_eq!(e.field, "log-format");
        let e = with(|r| r.log_filter = Some("weft=loud".into())).unwrap_err();
        assert_eq!(e.field, "log-filter");
        let f = RawConfig::from_json(r#"{"metricsAddr":"off","logFormat":"json"}"#).unwrap();
        assert_eq!(f.metrics_addr.as_deref(), Some("off"));
    }

    #[test]
    fn ipam_fields_are_checked_and_named() {
        type Case = (fn(&mut RawConfig), &'static str, &'static str);
        let bad: Vec<Case> = vec![
            (
                |r| r.ipam_pools = Some(vec!["10.0.0.0/33".into()]),
                "ipam-pools",
                "CIDR",
            ),
            (
                |r| r.ipam_pools = Some(vec!["10.0.0.1/24".into()]),
                "ipam-pools",
                "host bits",
            ),
            (
                |r| r.ipam_pools = Some(vec!["10.0.0.0/16".into(), "10.0.1.0/24".into()]),
                "ipam-pools",
                "overlap",
            ),
            (
                |r| r.ipam_pools = Some(vec![]),
                "ipam-pools",
                "at least one pool",
            ),
            (
                |r| r.ipam_pools = Some(vec!["10.0.0.0/27".into()]),
                "ipam-pools",
                "smaller than one /26 block",
            ),
            (|r| r.ipam_block_v4 = Some(33), "ipam-block-v4", "16 to 32"),
            (|r| r.ipam_block_v4 = Some(8), "ipam-block-v4", "16 to 32"),
            (
                |r| r.ipam_block_v6 = Some(64),
                "ipam-block-v6",
                "112 to 128",
            ),
            (|r| r.ipam_init = Some(0), "ipam-init", "more than half"),
            (
                |r| r.ipam_request_timeout_ms = Some(5),
                "ipam-request-timeout-ms",
                "100",
            ),
        ];
        for (f, field, text) in bad {
            let mut r = raw();
            f(&mut r);
            let e = r.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(text), "{e} lacks {text:?}");
        }
        let mut r = raw();
        r.ipam_pools = Some(vec!["10.99.0.0/24".into(), "fd00:99::/120".into()]);
        r.ipam_block_v4 = Some(28);
        r.ipam_block_v6 = Some(124);
        r.ipam_init = Some(3);
        r.ipam_reclaim_after_ms = Some(0);
        let c = r.validate().unwrap();
        assert_eq!(c.ipam.space.total_blocks(), 16 + 16);
        assert_eq!(c.ipam.init, 3);
        assert_eq!(c.ipam.reclaim_after_ms, 0);
    }

    #[test]
    fn encryption_fields_are_checked_and_named() {
        let c = raw().validate().unwrap();
        let d = &c.dataplane;
        assert_eq!(d.encrypt, weft_dataplane::Encrypt::Off);
        assert_eq!(
            (d.tunnel_port, d.tunnel_offload, d.tunnel_rotate_secs),
            (6785, true, 120)
        );
        fn with(f: impl FnOnce(&mut RawConfig)) -> Result<DataplaneConfig, ConfigError> {
            let mut r = raw();
            f(&mut r);
            r.validate().map(|c| c.dataplane)
        }
        let d = with(|r| r.encrypt = Some("cross-subnet".into())).unwrap();
        assert_eq!(d.encrypt, weft_dataplane::Encrypt::CrossSubnet);
        let e = with(|r| r.encrypt = Some("yes".into())).unwrap_err();
        assert_eq!(e.field, "encrypt");
        let e = with(|r| r.tunnel_port = Some(6784)).unwrap_err();
        assert_eq!(e.field, "tunnel-port", "the VXLAN port is taken");
        let e = with(|r| r.tunnel_port = Some(70_000)).unwrap_err();
        assert_eq!(e.field, "tunnel-port");
        for bad in [0, 121] {
            let e = with(|r| r.tunnel_rotate_secs = Some(bad)).unwrap_err();
            assert_eq!(e.field, "tunnel-rotate-secs");
        }
        // Keys in a file use camelCase.
        let f = RawConfig::from_json(r#"{"encrypt":"on","tunnelOffload":false}"#).unwrap();
        assert_eq!(f.encrypt.as_deref(), Some("on"));
        assert_eq!(f.tunnel_offload, Some(false));
    }

    #[test]
    fn errors_name_the_field() {
        let mut r = raw();
        r.listen = Some("nonsense:port".into());
        assert_eq!(r.validate().unwrap_err().field, "listen");
        let mut r = raw();
        r.listen = Some("0.0.0.0:6783".into());
        assert_eq!(r.validate().unwrap_err().field, "advertise");
        let mut r = raw();
        r.name = Some("bad name".into());
        assert_eq!(r.validate().unwrap_err().field, "name");
        let mut r = raw();
        r.peers = vec!["10.0.0.2:99999".into()];
        assert_eq!(r.validate().unwrap_err().field, "peer");
        let mut r = raw();
        r.secret_file = None;
        assert_eq!(r.validate().unwrap_err().field, "secret-file");
        let mut r = raw();
        r.data_dir = Some("relative".into());
        assert_eq!(r.validate().unwrap_err().field, "data-dir");
        let mut r = raw();
        r.tick_ms = Some(1);
        assert_eq!(r.validate().unwrap_err().field, "tick-ms");
    }

    #[test]
    fn files_parse_and_flags_win() {
        let f = RawConfig::from_json(
            r#"{"name":"a","listen":"10.0.0.1:1","peers":["10.0.0.2"],"secretFile":"/s"}"#,
        )
        .unwrap();
        let flags = RawConfig {
            name: Some("b".into()),
            peers: vec!["10.0.0.3".into()],
            ..Default::default()
        };
        let c = f.overlay(flags).validate().unwrap();
        assert_eq!(c.name, "b");
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[0], "10.0.0.2:6783".parse().unwrap());
        let e = RawConfig::from_json(r#"{"nmae":"a"}"#).unwrap_err();
        assert_eq!(e.field, "nmae");
        let f = RawConfig::from_json(
            r#"{"ipamPools":["10.99.0.0/24"],"ipamBlockV4":28,"ipamInit":2,"ipamGraceMs":5}"#,
        )
        .unwrap();
        let flags = RawConfig {
            ipam_init: Some(3),
            ..raw()
        };
        let c = f.overlay(flags).validate().unwrap();
        assert_eq!(
            c.ipam.space.pools,
            vec!["10.99.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(c.ipam.space.block_v4, 28);
        assert_eq!(c.ipam.init, 3);
        assert_eq!(c.ipam.grace_ms, 5);
    }
}
