//! Docker's network and IPAM plugin protocol, as libnetwork's remote drivers speak it
//! (plugin API v1: `POST /<Interface>.<Method>` with a JSON body, answers in JSON), and
//! what weft answers. Pure: the agent passes in the pools, the addresses and the names,
//! and does what the answers say (docs/docker.md).
//!
//! - [`parse`] turns one request into a [`Call`], or a refusal in the form the calling
//!   interface expects ([`Iface::error`]: `Err` for the network driver, `Error` for IPAM).
//! - [`pools`]: `RequestPool` against the cluster's pools, and `CreateNetwork`'s checks.
//! - [`endpoint`]: the names, MAC and alias of an endpoint's veth, and `Join`'s answer.
//! - [`ports`]: `-p` mappings from a portmap and the `inet weft_docker` table.

pub mod endpoint;
pub mod pools;
pub mod ports;

use serde::Deserialize;
use serde_json::{json, Value};

/// The plugin's interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iface {
    /// `/Plugin.Activate`.
    Plugin,
    /// `/NetworkDriver.*`.
    Network,
    /// `/IpamDriver.*`.
    Ipam,
}

impl Iface {
    /// An error answer to a call of this interface: libnetwork reads `Err` from network
    /// driver answers and `Error` from IPAM driver answers (HTTP 200 for both).
    pub fn error(self, msg: &str) -> String {
        match self {
            Iface::Ipam => json!({ "Error": msg }).to_string(),
            _ => json!({ "Err": msg }).to_string(),
        }
    }
}

/// The answer to `/Plugin.Activate`.
pub fn activate() -> String {
    json!({ "Implements": ["NetworkDriver", "IpamDriver"] }).to_string()
}

/// The network driver's capabilities: scope local (every dockerd keeps its own network
/// object; there is no cluster store), connectivity across hosts.
pub fn network_capabilities() -> String {
    json!({ "Scope": "local", "ConnectivityScope": "global" }).to_string()
}

/// The IPAM driver's capabilities: no MAC needed, no replay of requests at a restart
/// (the cluster IPAM keeps its own state).
pub fn ipam_capabilities() -> String {
    json!({ "RequiresMACAddress": false, "RequiresRequestReplay": false }).to_string()
}

/// The one address space weft has.
pub const ADDRESS_SPACE: &str = "weft";

/// The answer to `GetDefaultAddressSpaces`.
pub fn default_address_spaces() -> String {
    json!({ "LocalDefaultAddressSpace": ADDRESS_SPACE, "GlobalDefaultAddressSpace": ADDRESS_SPACE })
        .to_string()
}

/// An empty success.
pub fn ok() -> String {
    "{}".to_string()
}

/// `CreateNetwork`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetwork {
    /// Docker's id of the network (different on every host).
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// `com.docker.network.enable_ipv6`, `com.docker.network.generic` (the `--opt`s).
    #[serde(default)]
    pub options: serde_json::Map<String, Value>,
    /// The IPv4 pools from the IPAM driver.
    #[serde(default, rename = "IPv4Data")]
    pub ipv4_data: Option<Vec<IpamData>>,
    /// The IPv6 pools.
    #[serde(default, rename = "IPv6Data")]
    pub ipv6_data: Option<Vec<IpamData>>,
}

/// One pool of a network.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    /// The address space the pool came from.
    #[serde(default)]
    pub address_space: String,
    /// The pool.
    #[serde(default)]
    pub pool: String,
    /// The gateway, CIDR.
    #[serde(default)]
    pub gateway: String,
}

/// `CreateEndpoint`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpoint {
    /// The network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// Its addresses from the IPAM driver.
    #[serde(default)]
    pub interface: Option<EndpointInterface>,
    /// Port mappings and exposed ports.
    #[serde(default)]
    pub options: serde_json::Map<String, Value>,
}

/// An endpoint's interface as Docker sends it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    /// `a.b.c.d/32`, or empty.
    #[serde(default)]
    pub address: String,
    /// `x::y/128`, or empty.
    #[serde(default, rename = "AddressIPv6")]
    pub address_ipv6: String,
    /// A MAC the user chose (`--mac-address`), or empty.
    #[serde(default)]
    pub mac_address: String,
}

/// A call that names one endpoint (`Join`, `Leave`, `DeleteEndpoint`,
/// `ProgramExternalConnectivity`, ...).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointCall {
    /// The network.
    #[serde(default, rename = "NetworkID")]
    pub network_id: String,
    /// The endpoint.
    #[serde(default, rename = "EndpointID")]
    pub endpoint_id: String,
    /// `Join`: the sandbox's namespace path.
    #[serde(default)]
    pub sandbox_key: String,
    /// `Join`, `ProgramExternalConnectivity`: the sandbox's labels (port maps).
    #[serde(default)]
    pub options: Option<serde_json::Map<String, Value>>,
}

/// `RequestPool`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPool {
    /// The address space (weft's, or another driver's name when misused).
    #[serde(default)]
    pub address_space: String,
    /// The pool asked for (`--subnet`), or empty.
    #[serde(default)]
    pub pool: String,
    /// `--ip-range`, or empty.
    #[serde(default)]
    pub sub_pool: String,
    /// `--ipam-opt`s.
    #[serde(default)]
    pub options: Option<serde_json::Map<String, Value>>,
    /// An IPv6 pool.
    #[serde(default, rename = "V6")]
    pub v6: bool,
}

/// `RequestAddress`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddress {
    /// The pool id from `RequestPool`.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// A specific address (`--ip`, `--gateway`), or empty.
    #[serde(default)]
    pub address: String,
    /// `RequestAddressType` and the like.
    #[serde(default)]
    pub options: Option<serde_json::Map<String, Value>>,
}

/// `ReleaseAddress`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReleaseAddress {
    /// The pool id.
    #[serde(default, rename = "PoolID")]
    pub pool_id: String,
    /// The address, without a prefix length.
    #[serde(default)]
    pub address: String,
}

/// One request to the plugin.
#[derive(Debug, Clone)]
pub enum Call {
    /// `Plugin.Activate`.
    Activate,
    /// `NetworkDriver.GetCapabilities`.
    NetworkCapabilities,
    /// `NetworkDriver.CreateNetwork`.
    CreateNetwork(CreateNetwork),
    /// `NetworkDriver.DeleteNetwork`.
    DeleteNetwork,
    /// `NetworkDriver.CreateEndpoint`.
    CreateEndpoint(CreateEndpoint),
    /// `NetworkDriver.EndpointOperInfo`.
    EndpointOperInfo(EndpointCall),
    /// `NetworkDriver.DeleteEndpoint`.
    DeleteEndpoint(EndpointCall),
    /// `NetworkDriver.Join`.
    Join(EndpointCall),
    /// `NetworkDriver.Leave`.
    Leave(EndpointCall),
    /// `NetworkDriver.ProgramExternalConnectivity`.
    ProgramExternal(EndpointCall),
    /// `NetworkDriver.RevokeExternalConnectivity`.
    RevokeExternal(EndpointCall),
    /// Swarm and cluster-store calls weft has no use for, answered with success:
    /// `DiscoverNew`, `DiscoverDelete`, `AllocateNetwork`, `FreeNetwork`.
    Ignored,
    /// `IpamDriver.GetCapabilities`.
    IpamCapabilities,
    /// `IpamDriver.GetDefaultAddressSpaces`.
    DefaultAddressSpaces,
    /// `IpamDriver.RequestPool`.
    RequestPool(RequestPool),
    /// `IpamDriver.ReleasePool`.
    ReleasePool,
    /// `IpamDriver.RequestAddress`.
    RequestAddress(RequestAddress),
    /// `IpamDriver.ReleaseAddress`.
    ReleaseAddress(ReleaseAddress),
}

/// A request that is not one of the plugin's calls, or whose body does not parse: the
/// interface to answer in, the HTTP status and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Which interface's error form to answer in.
    pub iface: Iface,
    /// 404 for a method weft does not implement (libnetwork tolerates it where optional).
    pub status: u16,
    /// What was wrong.
    pub msg: String,
}

impl Refusal {
    /// The body of the answer.
    pub fn body(&self) -> String {
        self.iface.error(&self.msg)
    }
}

/// True for a path of the plugin protocol (`/Plugin.*`, `/NetworkDriver.*`,
/// `/IpamDriver.*`).
pub fn is_plugin_path(path: &str) -> bool {
    ["/Plugin.", "/NetworkDriver.", "/IpamDriver."]
        .iter()
        .any(|p| path.starts_with(p))
}

/// Reads one request: `path` is `/Interface.Method`, `body` its JSON (empty for calls
/// without arguments).
pub fn parse(path: &str, body: &str) -> Result<Call, Refusal> {
    let (iface, method) = match path.strip_prefix('/').and_then(|p| p.split_once('.')) {
        Some(("Plugin", m)) => (Iface::Plugin, m),
        Some(("NetworkDriver", m)) => (Iface::Network, m),
        Some(("IpamDriver", m)) => (Iface::Ipam, m),
        _ => {
            return Err(Refusal {
                iface: Iface::Network,
                status: 404,
                msg: format!("{path} is not a call of Docker's plugin protocol"),
            })
        }
    };
    fn arg<T: serde::de::DeserializeOwned>(
        iface: Iface,
        method: &str,
        body: &str,
    ) -> Result<T, Refusal> {
        let text = if body.trim().is_empty() { "{}" } else { body };
        serde_json::from_str(text).map_err(|e| Refusal {
            iface,
            status: 400,
            msg: format!("weft: cannot read the {method} request: {e}"),
        })
    }
    let call = match (iface, method) {
        (Iface::Plugin, "Activate") => Call::Activate,
        (Iface::Network, "GetCapabilities") => Call::NetworkCapabilities,
        (Iface::Network, "CreateNetwork") => Call::CreateNetwork(arg(iface, method, body)?),
        (Iface::Network, "DeleteNetwork") => Call::DeleteNetwork,
        (Iface::Network, "CreateEndpoint") => Call::CreateEndpoint(arg(iface, method, body)?),
        (Iface::Network, "EndpointOperInfo") => Call::EndpointOperInfo(arg(iface, method, body)?),
        (Iface::Network, "DeleteEndpoint") => Call::DeleteEndpoint(arg(iface, method, body)?),
        (Iface::Network, "Join") => Call::Join(arg(iface, method, body)?),
        (Iface::Network, "Leave") => Call::Leave(arg(iface, method, body)?),
        (Iface::Network, "ProgramExternalConnectivity") => {
            Call::ProgramExternal(arg(iface, method, body)?)
        }
        (Iface::Network, "RevokeExternalConnectivity") => {
            Call::RevokeExternal(arg(iface, method, body)?)
        }
        (Iface::Network, "DiscoverNew" | "DiscoverDelete" | "AllocateNetwork" | "FreeNetwork") => {
            Call::Ignored
        }
        (Iface::Ipam, "GetCapabilities") => Call::IpamCapabilities,
        (Iface::Ipam, "GetDefaultAddressSpaces") => Call::DefaultAddressSpaces,
        (Iface::Ipam, "RequestPool") => Call::RequestPool(arg(iface, method, body)?),
        (Iface::Ipam, "ReleasePool") => Call::ReleasePool,
        (Iface::Ipam, "RequestAddress") => Call::RequestAddress(arg(iface, method, body)?),
        (Iface::Ipam, "ReleaseAddress") => Call::ReleaseAddress(arg(iface, method, body)?),
        _ => {
            return Err(Refusal {
                iface,
                status: 404,
                msg: format!("weft does not implement {path}"),
            })
        }
    };
    Ok(call)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_parse_from_what_dockerd_sends() {
        assert!(matches!(parse("/Plugin.Activate", ""), Ok(Call::Activate)));
        // Bodies as dockerd 20.10 sent them in the lab.
        let c = parse(
            "/NetworkDriver.CreateEndpoint",
            r#"{"NetworkID":"96b0","EndpointID":"eafe","Interface":{"Address":"10.77.0.1/32","AddressIPv6":"fd00:77::2/128","MacAddress":""},"Options":{"com.docker.network.endpoint.dnsservers":["169.254.1.1"],"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]}}"#,
        )
        .unwrap();
        let Call::CreateEndpoint(ce) = c else {
            panic!("{c:?}")
        };
        assert_eq!(ce.endpoint_id, "eafe");
        assert_eq!(ce.interface.unwrap().address_ipv6, "fd00:77::2/128");
        let c = parse(
            "/IpamDriver.RequestAddress",
            r#"{"PoolID":"weft-v4","Address":"","Options":null}"#,
        )
        .unwrap();
        assert!(
            matches!(c, Call::RequestAddress(r) if r.pool_id == "weft-v4" && r.address.is_empty())
        );
        assert!(matches!(
            parse("/NetworkDriver.DiscoverNew", "{}"),
            Ok(Call::Ignored)
        ));
    }

    #[test]
    fn errors_take_the_form_each_interface_reads() {
        let r = parse("/IpamDriver.RequestPool", "{not json").unwrap_err();
        assert_eq!(r.iface, Iface::Ipam);
        assert!(r.body().starts_with(r#"{"Error":"#), "{}", r.body());
        let r = parse("/NetworkDriver.Join", "\"x\"").unwrap_err();
        assert!(r.body().starts_with(r#"{"Err":"#), "{}", r.body());
        let r = parse("/NetworkDriver.Frobnicate", "{}").unwrap_err();
        assert_eq!(r.status, 404);
        assert!(parse("/ipam/list", "").is_err());
        assert!(is_plugin_path("/IpamDriver.RequestPool"));
        assert!(!is_plugin_path("/ipam/allocate"));
    }
}
