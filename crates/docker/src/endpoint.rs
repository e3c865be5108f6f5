//! One Docker endpoint's veth: names, MAC and ownership alias derived from the endpoint
//! id (so `Leave` and a restarted agent find them without state), and `Join`'s answer.

use std::net::IpAddr;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::pools::gateway;

/// The interface name inside the container's sandbox: libnetwork appends an index
/// (`eth0`).
pub const DST_PREFIX: &str = "eth";

/// The interface an endpoint's addresses are recorded under (`ep/docker:ID/eth0`).
pub const IFNAME: &str = "eth0";

/// The prefix of endpoint owners in weft's records and of Docker addresses' owners in
/// the cluster IPAM.
pub const OWNER_PREFIX: &str = "docker:";

fn digest(endpoint_id: &str) -> [u8; 32] {
    Sha256::digest(endpoint_id.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The host end of the endpoint's veth: `weftd` + 10 hex digits (15 characters, the
/// kernel's limit).
pub fn host_ifname(endpoint_id: &str) -> String {
    format!("weftd{}", &hex(&digest(endpoint_id))[..10])
}

/// The container end before libnetwork moves and renames it: `wdc` + 12 hex digits.
pub fn container_ifname(endpoint_id: &str) -> String {
    format!("wdc{}", &hex(&digest(endpoint_id))[10..22])
}

/// The container end's MAC: locally administered, unicast, from the endpoint id.
pub fn mac(endpoint_id: &str) -> [u8; 6] {
    let d = digest(endpoint_id);
    [0x0a, 0x58, d[22], d[23], d[24], d[25]]
}

/// The ownership mark on the host end: `weft:@docker:ENDPOINT:eth`. It has the shape of a
/// CNI attachment's `weft:NETWORK:CONTAINER:IFNAME`, so the fast path treats both alike;
/// `@docker` is no CNI network's name (those are letters, digits, `_`, `.`, `-`), so a
/// CNI `GC` never takes a Docker endpoint's link for one of its own.
pub fn alias(endpoint_id: &str) -> String {
    format!("weft:@docker:{}:{DST_PREFIX}", short(endpoint_id))
}

/// The first 12 characters of an id (Docker's short form).
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The endpoint's owner in weft's records: (`docker:ENDPOINT`, `eth0`).
pub fn owner_id(endpoint_id: &str) -> String {
    format!("{OWNER_PREFIX}{endpoint_id}")
}

/// The IPAM owner of an address handed to Docker at wall-clock `ms`, the `n`th of this
/// agent: `docker:MS.N` (an endpoint's own owner is `docker:ID`, 64 hex digits).
pub fn address_owner(ms: u64, n: u64) -> String {
    format!("{OWNER_PREFIX}{ms}.{n}")
}

/// When an address owner was made (`None` for owners that are not addresses').
pub fn address_owner_ms(owner: &str) -> Option<u64> {
    owner
        .strip_prefix(OWNER_PREFIX)?
        .split_once('.')?
        .0
        .parse()
        .ok()
}

/// The address owners to free: handed to Docker more than `grace_ms` ago and in no
/// endpoint (dockerd asked and then never created the endpoint, or lost it in a crash:
/// it asks no release then, as it keeps no record of them).
pub fn stale_addresses<'a>(
    held: impl IntoIterator<Item = (std::net::IpAddr, &'a str)>,
    in_use: &std::collections::BTreeSet<std::net::IpAddr>,
    now_ms: u64,
    grace_ms: u64,
) -> Vec<&'a str> {
    held.into_iter()
        .filter(|(a, o)| {
            !in_use.contains(a)
                && address_owner_ms(o).is_some_and(|ms| now_ms.saturating_sub(ms) > grace_ms)
        })
        .map(|(_, o)| o)
        .collect()
}

/// A Docker endpoint id: 64 hex digits. Anything else is refused before it names a link.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `Join`'s answer: the container end to move in, and for each family it has, the
/// link-local gateway with a connected host route to it (libnetwork needs a direct route
/// to a gateway outside the container's /32).
pub fn join_answer(endpoint_id: &str, addrs: &[IpAddr]) -> String {
    let has = |v6: bool| addrs.iter().any(|a| a.is_ipv6() == v6);
    let mut routes = Vec::new();
    let mut answer = json!({
        "InterfaceName": { "SrcName": container_ifname(endpoint_id), "DstPrefix": DST_PREFIX },
        "DisableGatewayService": true,
    });
    if has(false) {
        answer["Gateway"] = json!(gateway(false).to_string());
        routes.push(json!({ "Destination": format!("{}/32", gateway(false)), "RouteType": 1 }));
    }
    if has(true) {
        answer["GatewayIPv6"] = json!(gateway(true).to_string());
        routes.push(json!({ "Destination": format!("{}/128", gateway(true)), "RouteType": 1 }));
    }
    answer["StaticRoutes"] = json!(routes);
    answer.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn names_fit_the_kernel_and_differ_per_endpoint(a in "[0-9a-f]{64}", b in "[0-9a-f]{64}") {
            prop_assert!(host_ifname(&a).len() <= 15);
            prop_assert!(container_ifname(&a).len() <= 15);
            prop_assert_eq!(host_ifname(&a), host_ifname(&a));
            if a != b {
                prop_assert_ne!(host_ifname(&a), host_ifname(&b));
            }
            let m = mac(&a);
            // Unicast, locally administered.
            prop_assert_eq!(m[0] & 0x03, 0x02);
            prop_assert!(valid_id(&a));
        }
    }

    #[test]
    fn addresses_no_endpoint_took_are_freed_after_the_grace() {
        let a: IpAddr = "10.32.0.5".parse().unwrap();
        let b: IpAddr = "10.32.0.6".parse().unwrap();
        let (oa, ob) = (address_owner(1_000, 1), address_owner(1_000, 2));
        let endpoint = owner_id("ab12");
        assert_eq!(address_owner_ms(&oa), Some(1_000));
        assert_eq!(address_owner_ms(&endpoint), None);
        let in_use = [a].into_iter().collect();
        let held = || vec![(a, oa.as_str()), (b, ob.as_str()), (b, endpoint.as_str())];
        assert!(
            stale_addresses(held(), &in_use, 2_000, 60_000).is_empty(),
            "young"
        );
        assert_eq!(
            stale_addresses(held(), &in_use, 70_000, 60_000),
            vec![ob.as_str()]
        );
    }

    #[test]
    fn join_gives_a_connected_gateway_per_family() {
        let id = "eafec8a3e4d1ffd97cbce2db6e3b95904bca5727a478ef62e5134b9bf35307d0";
        let a: serde_json::Value = serde_json::from_str(&join_answer(
            id,
            &["10.32.0.5".parse().unwrap(), "fd77::5".parse().unwrap()],
        ))
        .unwrap();
        assert_eq!(a["InterfaceName"]["SrcName"], container_ifname(id));
        assert_eq!(a["Gateway"], "169.254.1.1");
        assert_eq!(a["GatewayIPv6"], "fe80::1");
        assert_eq!(a["StaticRoutes"][0]["Destination"], "169.254.1.1/32");
        assert_eq!(a["StaticRoutes"][1]["Destination"], "fe80::1/128");
        assert_eq!(a["StaticRoutes"][1]["RouteType"], 1);
        let a: serde_json::Value =
            serde_json::from_str(&join_answer(id, &["10.32.0.5".parse().unwrap()])).unwrap();
        assert!(a.get("GatewayIPv6").is_none());
        assert_eq!(alias(id), "weft:@docker:eafec8a3e4d1:eth");
        assert!(!valid_id("../../x"));
        assert!(!valid_id(""));
    }
}
