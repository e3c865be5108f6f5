//! weft's own network configuration: parsing and validation with errors that name the field. Pure, no I/O.
//!
//! The runtime hands the plugin a JSON object (`"type": "weft"`); this crate
//! turns the generic [`weft_cni::NetConf`] into a validated
//! [`NetworkConfig`], or into a [`ConfigError`] that names the offending
//! field, what was expected and what was found.

#![warn(missing_docs)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;
use serde_json::{Map, Value};
use weft_cni::{CniError, NetConf, Version};

/// The plugin `type` this config belongs to.
pub const PLUGIN_TYPE: &str = "weft";
/// Default `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/weft";
/// Default `hostVethPrefix`.
pub const DEFAULT_HOST_VETH_PREFIX: &str = "weft";
/// Default link-local gateway for IPv4 ranges.
pub const DEFAULT_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Default link-local gateway for IPv6 ranges.
pub const DEFAULT_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Default `agentSocket`: the weft agent's API, which hands out cluster addresses when the
/// config has no `range`.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/weft/weft.sock";

/// weft's plugin-specific keys.
const WEFT_KEYS: &[&str] = &[
    "range",
    "rangeStart",
    "rangeEnd",
    "gateway",
    "mtu",
    "dataDir",
    "hostVethPrefix",
    "agentSocket",
];
/// Standard CNI keys that end up in `NetConf::extra` and are tolerated.
const TOLERATED_KEYS: &[&str] = &["args", "ipam", "dns"];

/// A validated weft network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Negotiated CNI version (`cniVersion`).
    pub cni_version: Version,
    /// Network name (`name`).
    pub name: String,
    /// The container address range (`range`), host bits zero: standalone mode, addresses
    /// from a table on this host. `None`: addresses come from the cluster IPAM of the weft
    /// agent at `agent_socket`.
    pub range: Option<IpNet>,
    /// First allocatable address (`rangeStart`), inside `range`.
    pub range_start: Option<IpAddr>,
    /// Last allocatable address (`rangeEnd`), inside `range`.
    pub range_end: Option<IpAddr>,
    /// Link-local next hop given to containers (`gateway`); defaults to
    /// 169.254.1.1 for IPv4 ranges and fe80::1 for IPv6 ranges. Without a range, the
    /// configured gateway (default 169.254.1.1) serves addresses of its family and the
    /// other family gets its default: see [`NetworkConfig::gateway_for`].
    pub gateway: IpAddr,
    /// Container MTU (`mtu`); `None` means the plugin detects it.
    pub mtu: Option<u32>,
    /// Directory for weft's state (`dataDir`), absolute.
    pub data_dir: String,
    /// Prefix of host-side veth names (`hostVethPrefix`), 1..=6 of `[a-z0-9]`.
    pub host_veth_prefix: String,
    /// The weft agent's API socket (`agentSocket`), absolute; used when there is no `range`.
    pub agent_socket: String,
}

/// A config validation error naming the field, what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network config field \"{field}\": expected {expected}, found {found}")]
pub struct ConfigError {
    /// The JSON key, e.g. `"range"`.
    pub field: String,
    /// What a valid value looks like.
    pub expected: String,
    /// The offending value rendered as JSON, or `nothing` when missing.
    pub found: String,
}

impl ConfigError {
    /// Builds an error; `found` is the offending value (`None` = missing).
    pub fn new(field: &str, expected: impl Into<String>, found: Option<&Value>) -> Self {
        ConfigError {
            field: field.to_string(),
            expected: expected.into(),
            found: render(found),
        }
    }
}

impl From<ConfigError> for CniError {
    fn from(e: ConfigError) -> Self {
        CniError::new(weft_cni::code::INVALID_CONFIG, e.to_string())
    }
}

/// Renders a found value as (possibly shortened) JSON.
fn render(v: Option<&Value>) -> String {
    const MAX: usize = 80;
    let Some(v) = v else {
        return "nothing".to_string();
    };
    let s = v.to_string();
    if s.chars().count() <= MAX {
        s
    } else {
        let mut cut: String = s.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_valid_veth_prefix(s: &str) -> bool {
    (1..=6).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// First and last usable addresses of `net`: the network address is never
/// usable, nor is the IPv4 broadcast address. `None` when fewer than 2
/// addresses are usable.
pub fn usable_bounds(net: &IpNet) -> Option<(IpAddr, IpAddr)> {
    match net {
        IpNet::V4(n) => {
            let first = u32::from(n.network()).checked_add(1)?;
            let last = u32::from(n.broadcast()).checked_sub(1)?;
            (first < last).then(|| (Ipv4Addr::from(first).into(), Ipv4Addr::from(last).into()))
        }
        IpNet::V6(n) => {
            let first = u128::from(n.network()).checked_add(1)?;
            let last = u128::from(n.broadcast());
            (first < last).then(|| (Ipv6Addr::from(first).into(), Ipv6Addr::from(last).into()))
        }
    }
}

/// Optional string field: absent or `null` → `None`, non-string → error.
fn opt_str<'a>(
    extra: &'a Map<String, Value>,
    key: &str,
    expected: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match extra.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ConfigError::new(key, expected, Some(other))),
    }
}

/// Parses an optional address field that must lie in the usable part of `range`.
fn range_bound(
    extra: &Map<String, Value>,
    key: &str,
    range: &IpNet,
    bounds: (IpAddr, IpAddr),
) -> Result<Option<IpAddr>, ConfigError> {
    let expected = format!(
        "an {} address inside range {range}, from {} to {}",
        family(&range.addr()),
        bounds.0,
        bounds.1
    );
    let Some(s) = opt_str(extra, key, &expected)? else {
        return Ok(None);
    };
    let err = || ConfigError::new(key, expected.clone(), extra.get(key));
    let ip: IpAddr = s.parse().map_err(|_| err())?;
    if ip.is_ipv4() != range.addr().is_ipv4() || ip < bounds.0 || ip > bounds.1 {
        return Err(err());
    }
    Ok(Some(ip))
}

impl NetworkConfig {
    /// Validates the weft-specific view of a parsed network config.
    pub fn from_netconf(conf: &NetConf) -> Result<NetworkConfig, ConfigError> {
        let extra = &conf.extra;
        let as_json = |s: &Option<String>| s.as_ref().map(|s| Value::String(s.clone()));

        // cniVersion
        let cni_version = weft_cni::negotiate(conf.cni_version.as_deref()).map_err(|_| {
            ConfigError::new(
                "cniVersion",
                format!(
                    "one of the supported CNI versions {}",
                    weft_cni::SUPPORTED
                        .iter()
                        .map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                as_json(&conf.cni_version).as_ref(),
            )
        })?;

        // type
        if conf.plugin_type.as_deref() != Some(PLUGIN_TYPE) {
            return Err(ConfigError::new(
                "type",
                format!("the plugin type \"{PLUGIN_TYPE}\""),
                as_json(&conf.plugin_type).as_ref(),
            ));
        }

        // name
        let name = match conf.name.as_deref() {
            Some(n) if is_valid_name(n) => n.to_string(),
            _ => {
                return Err(ConfigError::new(
                    "name",
                    "a non-empty network name made of letters, digits, '_', '.' and '-'",
                    as_json(&conf.name).as_ref(),
                ))
            }
        };

        // unknown keys
        if let Some((key, value)) = extra.iter().find(|(k, _)| {
            !WEFT_KEYS.contains(&k.as_str()) && !TOLERATED_KEYS.contains(&k.as_str())
        }) {
            return Err(ConfigError::new(
                key,
                format!(
                    "no such key; weft accepts cniVersion, name, type, {}, the standard CNI keys capabilities, runtimeConfig, prevResult, cni.dev/valid-attachments, {}",
                    WEFT_KEYS.join(", "),
                    TOLERATED_KEYS.join(", ")
                ),
                Some(value),
            ));
        }

        // range (absent or null: cluster addresses from the agent)
        const RANGE: &str = "an IP network in CIDR form such as 10.32.1.0/24";
        let range_val = extra.get("range");
        let range: Option<IpNet> = match opt_str(extra, "range", RANGE)? {
            Some(s) => Some(
                s.parse()
                    .map_err(|_| ConfigError::new("range", RANGE, range_val))?,
            ),
            None => None,
        };
        let (range_start, range_end) = match &range {
            Some(range) => {
                if range.addr() != range.network() {
                    return Err(ConfigError::new(
                        "range",
                        format!(
                            "an IP network with the host bits zero, such as {}",
                            range.trunc()
                        ),
                        range_val,
                    ));
                }
                let bounds = usable_bounds(range).ok_or_else(|| {
                    ConfigError::new(
                        "range",
                        "a network with at least 2 usable addresses (IPv4 prefix /30 or shorter, IPv6 prefix /126 or shorter)",
                        range_val,
                    )
                })?;

                // rangeStart / rangeEnd
                let range_start = range_bound(extra, "rangeStart", range, bounds)?;
                let range_end = range_bound(extra, "rangeEnd", range, bounds)?;
                if let (Some(start), Some(end)) = (range_start, range_end) {
                    if start > end {
                        return Err(ConfigError::new(
                            "rangeEnd",
                            format!("an address not below rangeStart {start}"),
                            extra.get("rangeEnd"),
                        ));
                    }
                }
                (range_start, range_end)
            }
            None => {
                for key in ["rangeStart", "rangeEnd"] {
                    if let Some(v) = extra.get(key).filter(|v| !v.is_null()) {
                        return Err(ConfigError::new(
                            key,
                            "nothing: it needs \"range\" (without a range, addresses come from the weft agent)",
                            Some(v),
                        ));
                    }
                }
                (None, None)
            }
        };

        // gateway
        let v4 = range.is_none_or(|r| r.addr().is_ipv4());
        let default_gw: IpAddr = if v4 {
            DEFAULT_GATEWAY_V4.into()
        } else {
            DEFAULT_GATEWAY_V6.into()
        };
        let gw_expected = match &range {
            Some(range) => format!(
                "an {} unicast address outside range {range}, such as {default_gw}",
                family(&range.addr())
            ),
            None => format!("a unicast address outside the cluster's pools, such as {default_gw}"),
        };
        let gateway = match opt_str(extra, "gateway", &gw_expected)? {
            None if range.is_some_and(|r| r.contains(&default_gw)) => {
                let range = range.expect("checked");
                return Err(ConfigError::new(
                    "gateway",
                    format!(
                        "an explicit {} gateway outside range {range}, because the default {default_gw} lies inside it",
                        family(&range.addr())
                    ),
                    None,
                ));
            }
            None => default_gw,
            Some(s) => {
                let err = || ConfigError::new("gateway", gw_expected.clone(), extra.get("gateway"));
                let gw: IpAddr = s.parse().map_err(|_| err())?;
                let bad = range
                    .is_some_and(|r| gw.is_ipv4() != r.addr().is_ipv4() || r.contains(&gw))
                    || gw.is_unspecified()
                    || gw.is_multicast()
                    || gw == IpAddr::V4(Ipv4Addr::BROADCAST);
                if bad {
                    return Err(err());
                }
                gw
            }
        };

        // mtu
        let min_mtu = if v4 { 576 } else { 1280 };
        let mtu = match extra.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(m) if (min_mtu..=65535).contains(&m) => Some(m as u32),
                _ => {
                    return Err(ConfigError::new(
                        "mtu",
                        format!("an integer MTU from {min_mtu} to 65535"),
                        Some(v),
                    ))
                }
            },
        };

        // dataDir
        const DATA_DIR: &str = "an absolute directory path such as /var/lib/weft";
        let data_dir = match opt_str(extra, "dataDir", DATA_DIR)? {
            None => DEFAULT_DATA_DIR.to_string(),
            Some(d) if d.starts_with('/') && !d.contains('\0') => d.to_string(),
            Some(_) => return Err(ConfigError::new("dataDir", DATA_DIR, extra.get("dataDir"))),
        };

        // hostVethPrefix
        const PREFIX: &str = "1 to 6 characters from a-z and 0-9, such as \"weft\"";
        let host_veth_prefix = match opt_str(extra, "hostVethPrefix", PREFIX)? {
            None => DEFAULT_HOST_VETH_PREFIX.to_string(),
            Some(p) if is_valid_veth_prefix(p) => p.to_string(),
            Some(_) => {
                return Err(ConfigError::new(
                    "hostVethPrefix",
                    PREFIX,
                    extra.get("hostVethPrefix"),
                ))
            }
        };

        // agentSocket
        const SOCKET: &str = "an absolute path such as /run/weft/weft.sock";
        let agent_socket = match opt_str(extra, "agentSocket", SOCKET)? {
            None => DEFAULT_AGENT_SOCKET.to_string(),
            Some(p) if p.starts_with('/') && !p.contains('\0') => p.to_string(),
            Some(_) => {
                return Err(ConfigError::new(
                    "agentSocket",
                    SOCKET,
                    extra.get("agentSocket"),
                ))
            }
        };

        Ok(NetworkConfig {
            cni_version,
            name,
            range,
            range_start,
            range_end,
            gateway,
            mtu,
            data_dir,
            host_veth_prefix,
            agent_socket,
        })
    }

    /// The effective first and last allocatable addresses of the range: `rangeStart` /
    /// `rangeEnd` when set, otherwise the usable bounds of `range` (network address and
    /// IPv4 broadcast excluded). `None` without a range (addresses from the agent).
    pub fn allocation_bounds(&self) -> Option<(IpAddr, IpAddr)> {
        let range = self.range.as_ref()?;
        let (first, last) = usable_bounds(range).expect("validated range has usable addresses");
        Some((
            self.range_start.unwrap_or(first),
            self.range_end.unwrap_or(last),
        ))
    }

    /// The gateway for a container address: the configured (or default) gateway when it is
    /// of the address's family, else the family's default (169.254.1.1 or fe80::1). With a
    /// range, addresses are of the range's family, so this is always `gateway`.
    pub fn gateway_for(&self, ip: &IpAddr) -> IpAddr {
        if self.gateway.is_ipv4() == ip.is_ipv4() {
            self.gateway
        } else if ip.is_ipv4() {
            DEFAULT_GATEWAY_V4.into()
        } else {
            DEFAULT_GATEWAY_V6.into()
        }
    }
}

/// Parses and validates stdin bytes for the weft plugin.
///
/// Malformed JSON → code 6, missing `cniVersion` → code 7, unsupported
/// `cniVersion` → code 1, any other invalid field → code 7.
pub fn parse(bytes: &[u8]) -> Result<(NetConf, NetworkConfig), CniError> {
    let conf = NetConf::parse(bytes)?;
    weft_cni::negotiate(conf.cni_version.as_deref())?;
    let net = NetworkConfig::from_netconf(&conf)?;
    Ok((conf, net))
}

/// A pretty-printed example conflist (cniVersion 1.0.0) with weft followed
/// by portmap, bandwidth and tuning. The arguments are inserted verbatim
/// (JSON-escaped), not validated. The text ends with a newline.
pub fn example_conflist(name: &str, range: &str, data_dir: &str) -> String {
    conflist(name, Some(range), None, data_dir)
}

/// As [`example_conflist`], for cluster addresses: no `range`; the weft agent at
/// `agent_socket` hands out addresses from the cluster's pools.
pub fn example_agent_conflist(name: &str, agent_socket: &str, data_dir: &str) -> String {
    conflist(name, None, Some(agent_socket), data_dir)
}

fn conflist(name: &str, range: Option<&str>, agent_socket: Option<&str>, data_dir: &str) -> String {
    #[derive(Serialize)]
    struct Conflist<'a> {
        #[serde(rename = "cniVersion")]
        cni_version: &'a str,
        name: &'a str,
        plugins: (Weft<'a>, Portmap, Bandwidth, Tuning),
    }
    #[derive(Serialize)]
    struct Weft<'a> {
        #[serde(rename = "type")]
        plugin_type: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        range: Option<&'a str>,
        #[serde(rename = "agentSocket", skip_serializing_if = "Option::is_none")]
        agent_socket: Option<&'a str>,
        #[serde(rename = "dataDir")]
        data_dir: &'a str,
        capabilities: WeftCaps,
    }
    /// Network aliases (podman's `--network-alias`) become names in weft's DNS.
    #[derive(Serialize)]
    struct WeftCaps {
        aliases: bool,
    }
    #[derive(Serialize)]
    struct Portmap {
        #[serde(rename = "type")]
        plugin_type: &'static str,
        capabilities: PortmapCaps,
        snat: bool,
    }
    #[derive(Serialize)]
    struct PortmapCaps {
        #[serde(rename = "portMappings")]
        port_mappings: bool,
    }
    #[derive(Serialize)]
    struct Bandwidth {
        #[serde(rename = "type")]
        plugin_type: &'static str,
        capabilities: BandwidthCaps,
    }
    #[derive(Serialize)]
    struct BandwidthCaps {
        bandwidth: bool,
    }
    #[derive(Serialize)]
    struct Tuning {
        #[serde(rename = "type")]
        plugin_type: &'static str,
    }
    let list = Conflist {
        cni_version: Version::V1_0_0.as_str(),
        name,
        plugins: (
            Weft {
                plugin_type: PLUGIN_TYPE,
                range,
                agent_socket,
                data_dir,
                capabilities: WeftCaps { aliases: true },
            },
            Portmap {
                plugin_type: "portmap",
                capabilities: PortmapCaps {
                    port_mappings: true,
                },
                snat: true,
            },
            Bandwidth {
                plugin_type: "bandwidth",
                capabilities: BandwidthCaps { bandwidth: true },
            },
            Tuning {
                plugin_type: "tuning",
            },
        ),
    };
    let mut s = serde_json::to_string_pretty(&list).expect("serializing strings cannot fail");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests;
