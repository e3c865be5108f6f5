//! CNI specification 1.0/1.1 types: environment, network config, results, errors, version negotiation. Pure, no I/O.
//!
//! Nothing in this crate touches the process environment, the file system or
//! stdin/stdout: callers pass environment variables in through a closure
//! ([`Env::from_vars`]) and configuration bytes in as slices
//! ([`NetConf::parse`]), and get JSON strings back.

#![warn(missing_docs)]

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Well-known CNI error codes (CNI spec, "Error" section) plus weft's own.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// Plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin is available with limited connectivity (STATUS).
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// weft-specific: no free address left in the range.
    pub const ADDRESS_EXHAUSTED: u32 = 100;
    /// weft-specific: internal error (a bug).
    pub const INTERNAL: u32 = 999;
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A CNI error as reported to the runtime on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// Error code (see [`code`]).
    pub code: u32,
    /// Short human-readable message.
    pub msg: String,
    /// Longer details; empty when there are none.
    pub details: String,
}

impl CniError {
    /// Creates an error with the given code and message and no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Returns the error with its details set to `details`.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Serializes the error as the CNI error JSON object
    /// `{"cniVersion":..,"code":..,"msg":..,"details":..}`; `details` is
    /// omitted when empty.
    pub fn to_json(&self, version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version: version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .expect("serializing plain strings cannot fail")
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

// ---------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------

/// A CNI specification version supported by weft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// CNI spec 1.0.0.
    V1_0_0,
    /// CNI spec 1.1.0.
    V1_1_0,
}

/// All versions weft supports, oldest first.
pub const SUPPORTED: &[Version] = &[Version::V1_0_0, Version::V1_1_0];

impl Version {
    /// The newest supported version.
    pub const LATEST: Version = Version::V1_1_0;

    /// The version as it appears in JSON, e.g. `"1.0.0"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }
}

fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Version {
    type Err = CniError;

    /// Parses `"1.0.0"` or `"1.1.0"`; anything else is an
    /// [`code::INCOMPATIBLE_VERSION`] error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SUPPORTED
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "unsupported cniVersion {s:?}: weft supports CNI versions {}",
                        supported_list()
                    ),
                )
                .with_details(format!(
                    "config is {s:?}, plugin supports [{}]",
                    supported_list()
                ))
            })
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: CniError| serde::de::Error::custom(e.msg))
    }
}

/// Picks the version to speak for a config's `cniVersion`.
///
/// Missing (or empty) → [`code::INVALID_CONFIG`] "cniVersion is missing";
/// unknown or unsupported → [`code::INCOMPATIBLE_VERSION`] naming the
/// supported versions.
pub fn negotiate(conf_version: Option<&str>) -> Result<Version, CniError> {
    match conf_version {
        None | Some("") => Err(CniError::new(code::INVALID_CONFIG, "cniVersion is missing")
            .with_details(format!(
                "the network configuration must set \"cniVersion\" to one of {}",
                supported_list()
            ))),
        Some(v) => v.parse(),
    }
}

/// The JSON answer to the VERSION command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version of the request (or the latest supported one).
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Every version the plugin supports.
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

/// JSON for the VERSION command, echoing `conf_version` (or the latest
/// supported version when it is empty) as `cniVersion`.
pub fn version_info(conf_version: &str) -> String {
    let cni_version = if conf_version.is_empty() {
        Version::LATEST.as_str().to_string()
    } else {
        conf_version.to_string()
    };
    let info = VersionInfo {
        cni_version,
        supported_versions: SUPPORTED.iter().map(|v| v.as_str().to_string()).collect(),
    };
    serde_json::to_string(&info).expect("serializing strings cannot fail")
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `ADD`: attach the container to the network.
    Add,
    /// `DEL`: detach the container.
    Del,
    /// `CHECK`: verify the attachment.
    Check,
    /// `VERSION`: report supported versions.
    Version,
    /// `STATUS` (1.1.0): report whether the plugin is ready.
    Status,
    /// `GC` (1.1.0): collect resources of stale attachments.
    Gc,
}

impl Command {
    /// The command as the runtime spells it, e.g. `"ADD"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = CniError;

    /// Parses the upper-case command name; anything else is an
    /// [`code::INVALID_ENV`] error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "CNI_COMMAND: expected one of ADD, DEL, CHECK, VERSION, STATUS, GC, found {s:?}"
                    ),
                ))
            }
        })
    }
}

/// The CNI environment variables of one plugin invocation, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (set for ADD, CHECK, DEL).
    pub container_id: Option<String>,
    /// `CNI_NETNS` (set for ADD and CHECK, optional for DEL).
    pub netns: Option<String>,
    /// `CNI_IFNAME` (set for ADD, CHECK, DEL).
    pub ifname: Option<String>,
    /// `CNI_ARGS` split into key/value pairs, in order.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH` split on `:`, empty entries dropped.
    pub path: Vec<String>,
}

fn invalid_env(var: &str, expected: &str, found: Option<&str>) -> CniError {
    let found = match found {
        None => "it is not set".to_string(),
        Some(v) => format!("found {v:?}"),
    };
    CniError::new(
        code::INVALID_ENV,
        format!("{var}: expected {expected}, {found}"),
    )
}

/// Whether `id` is a valid container id: non-empty, `[A-Za-z0-9_.-]`,
/// starting with a letter or digit.
pub fn is_valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Whether `name` is a valid interface name: 1..=15 bytes, no `/`, `:` or
/// whitespace, not `.` or `..`.
pub fn is_valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

/// Splits `CNI_ARGS` (`K1=V1;K2=V2`) into pairs. Empty segments are
/// skipped; a segment without `=` or with an empty key is an error.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|seg| !seg.is_empty())
        .map(|seg| match seg.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.chars().any(char::is_whitespace) => {
                Ok((k.to_string(), v.to_string()))
            }
            _ => Err(invalid_env(
                "CNI_ARGS",
                "semicolon-separated KEY=VALUE pairs",
                Some(seg),
            )),
        })
        .collect()
}

impl Env {
    /// Reads and validates the CNI variables through `get` (e.g.
    /// `|k| std::env::var(k).ok()` in the plugin binary).
    ///
    /// Errors are [`code::INVALID_ENV`] and name the variable. Empty values
    /// count as unset. For VERSION, STATUS and GC the container id, netns
    /// and ifname are ignored (always `None`); VERSION also ignores
    /// `CNI_ARGS` and `CNI_PATH` so that it always answers.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let var = |k: &str| get(k).filter(|v| !v.is_empty());
        let command_raw = var("CNI_COMMAND").ok_or_else(|| {
            invalid_env(
                "CNI_COMMAND",
                "one of ADD, DEL, CHECK, VERSION, STATUS, GC",
                None,
            )
        })?;
        let command: Command = command_raw.parse()?;

        let (need_ids, need_netns) = match command {
            Command::Add | Command::Check => (true, true),
            Command::Del => (true, false),
            Command::Version | Command::Status | Command::Gc => (false, false),
        };

        let mut env = Env {
            command,
            container_id: None,
            netns: None,
            ifname: None,
            args: Vec::new(),
            path: Vec::new(),
        };

        if need_ids {
            const CID: &str =
                "a container id made of letters, digits, '_', '.' and '-', starting with a letter or digit";
            let id = var("CNI_CONTAINERID");
            match id.as_deref() {
                Some(v) if is_valid_container_id(v) => env.container_id = id,
                other => return Err(invalid_env("CNI_CONTAINERID", CID, other)),
            }

            const IFN: &str = "an interface name of 1 to 15 bytes without '/', ':' or whitespace, not \".\" or \"..\"";
            let ifname = var("CNI_IFNAME");
            match ifname.as_deref() {
                Some(v) if is_valid_ifname(v) => env.ifname = ifname,
                other => return Err(invalid_env("CNI_IFNAME", IFN, other)),
            }

            const NS: &str = "an absolute path to a network namespace";
            let netns = var("CNI_NETNS");
            match netns.as_deref() {
                Some(v) if v.starts_with('/') && !v.contains('\0') => env.netns = netns,
                None if !need_netns => {}
                other => return Err(invalid_env("CNI_NETNS", NS, other)),
            }
        }

        if command != Command::Version {
            if let Some(args) = var("CNI_ARGS") {
                env.args = parse_cni_args(&args)?;
            }
            if let Some(path) = var("CNI_PATH") {
                env.path = path
                    .split(':')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
            }
        }
        Ok(env)
    }

    /// The value of the first `CNI_ARGS` pair with key `key`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

// ---------------------------------------------------------------------------
// Network configuration (generic part)
// ---------------------------------------------------------------------------

/// An entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The container id of a still-valid attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name of that attachment.
    pub ifname: String,
}

/// The generic part of a plugin's stdin network configuration; plugin
/// specific keys are kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetConf {
    /// `cniVersion`.
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cni_version: Option<String>,
    /// `name` of the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `type`: the plugin binary name.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub plugin_type: Option<String>,
    /// `capabilities` the runtime may fill in `runtimeConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Map<String, Value>>,
    /// `runtimeConfig` injected by the runtime.
    #[serde(
        rename = "runtimeConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub runtime_config: Option<Value>,
    /// `prevResult` of the previous plugin in a chain.
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC only).
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Every other key, for the plugin to interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl NetConf {
    /// Parses stdin bytes. Malformed JSON, a non-object or a wrongly typed
    /// standard field is a [`code::DECODE`] error whose message carries
    /// serde's line and column.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        serde_json::from_slice::<NetConf>(bytes).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("failed to decode network configuration: {e}"),
            )
        })
    }
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// An interface in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, e.g. `"aa:bb:cc:dd:ee:ff"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path when the interface is inside the container, `None` on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// `socketPath` (1.1.0).
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// `pciID` (1.1.0).
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, e.g. `10.32.1.5/24`.
    pub address: IpNet,
    /// Default gateway for this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into the result's `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop; `None` means the gateway of the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority / metric (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

/// DNS settings in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name server addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether no DNS setting is present.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI success result (ADD output, `prevResult`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// `cniVersion` of the result.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Interfaces created or used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Assigned addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings (omitted when empty).
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// An empty result for `version`.
    pub fn new(version: Version) -> Self {
        CniResult {
            cni_version: version.as_str().to_string(),
            interfaces: Vec::new(),
            ips: Vec::new(),
            routes: Vec::new(),
            dns: Dns::default(),
        }
    }

    /// Decodes and checks a `prevResult`.
    ///
    /// Not an object, a missing or unsupported `cniVersion`, or an `ips`
    /// entry whose `interface` index is out of range → [`code::INVALID_CONFIG`];
    /// wrongly typed fields (bad addresses, …) → [`code::DECODE`].
    pub fn parse_prev(value: &Value) -> Result<CniResult, CniError> {
        let obj = value.as_object().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "prevResult: expected a JSON object with the previous plugin's result",
            )
        })?;
        match obj.get("cniVersion") {
            Some(Value::String(v)) => {
                v.parse::<Version>().map_err(|e| {
                    CniError::new(
                        code::INVALID_CONFIG,
                        format!("prevResult: cniVersion {v:?} is not supported"),
                    )
                    .with_details(e.msg)
                })?;
            }
            _ => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "prevResult: cniVersion is missing or not a string",
                ))
            }
        }
        let result = CniResult::deserialize(value).map_err(|e| {
            CniError::new(code::DECODE, format!("failed to decode prevResult: {e}"))
        })?;
        for (i, ip) in result.ips.iter().enumerate() {
            if let Some(idx) = ip.interface {
                if idx >= result.interfaces.len() {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!(
                            "prevResult: ips[{i}].interface is {idx} but there are only {} interfaces",
                            result.interfaces.len()
                        ),
                    ));
                }
            }
        }
        Ok(result)
    }

    /// Serializes the result as compact JSON.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(self).expect("result serialization cannot fail")
    }

    /// Appends `other` to `self`: its interfaces go after ours, its ips
    /// have their `interface` index shifted by our interface count, its
    /// routes are appended, and its DNS lists are merged (duplicates
    /// skipped, our domain kept if set). `self.cni_version` is kept.
    pub fn append(&mut self, other: CniResult) {
        let base = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        self.routes.extend(other.routes);
        fn merge(dst: &mut Vec<String>, src: Vec<String>) {
            for s in src {
                if !dst.contains(&s) {
                    dst.push(s);
                }
            }
        }
        merge(&mut self.dns.nameservers, other.dns.nameservers);
        merge(&mut self.dns.search, other.dns.search);
        merge(&mut self.dns.options, other.dns.options);
        if self.dns.domain.is_none() {
            self.dns.domain = other.dns.domain;
        }
    }
}

#[cfg(test)]
mod tests;
