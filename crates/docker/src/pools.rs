//! Pools and networks: `RequestPool` answered from the cluster's pools, pool ids, the
//! gateways Docker is told, and the checks of `CreateNetwork`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::json;

use crate::{CreateNetwork, RequestPool, ADDRESS_SPACE};

/// The pool id of a family.
pub fn pool_id(v6: bool) -> &'static str {
    if v6 {
        "weft-v6"
    } else {
        "weft-v4"
    }
}

/// The family of a pool id: `Some(true)` for IPv6.
pub fn pool_family(id: &str) -> Option<bool> {
    match id {
        "weft-v4" => Some(false),
        "weft-v6" => Some(true),
        _ => None,
    }
}

/// The gateway every container of a family is given (a link-local address on the host
/// end of its veth).
pub fn gateway(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 1, 1))
    }
}

/// The gateway as Docker's IPAM data carries it (CIDR).
fn gateway_cidr(v6: bool) -> String {
    let g = gateway(v6);
    format!("{g}/{}", if v6 { 128 } else { 32 })
}

fn families(pools: &[IpNet]) -> String {
    if pools.is_empty() {
        "none".to_string()
    } else {
        pools
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Answers `RequestPool` from the cluster's `pools`: the first pool of the family asked,
/// or the one `--subnet` names exactly. The data carries the gateway, so Docker does not
/// ask an address for it.
pub fn request_pool(req: &RequestPool, pools: &[IpNet]) -> Result<String, String> {
    let fam = if req.v6 { "IPv6" } else { "IPv4" };
    if !req.address_space.is_empty() && req.address_space != ADDRESS_SPACE {
        return Err(format!(
            "weft: unknown address space {:?} (weft has one, {ADDRESS_SPACE:?})",
            req.address_space
        ));
    }
    if !req.sub_pool.is_empty() {
        return Err(format!(
            "weft: --ip-range is not supported: the cluster IPAM hands out the whole pool by blocks (asked {})",
            req.sub_pool
        ));
    }
    if let Some(o) = req.options.as_ref().filter(|o| !o.is_empty()) {
        let keys: Vec<&str> = o.keys().map(|k| k.as_str()).collect();
        return Err(format!(
            "weft: unknown IPAM option {} (weft's IPAM takes none)",
            keys.join(", ")
        ));
    }
    let mine: Vec<&IpNet> = pools
        .iter()
        .filter(|p| matches!(p, IpNet::V6(_)) == req.v6)
        .collect();
    let pool = if req.pool.is_empty() {
        *mine.first().ok_or_else(|| {
            format!(
                "weft: the cluster has no {fam} pool (pools: {}); {}",
                families(pools),
                if req.v6 {
                    "drop --ipv6 or give the agents an IPv6 pool (--ipam-pools)"
                } else {
                    "Docker needs an IPv4 pool on every network"
                }
            )
        })?
    } else {
        let asked: IpNet = req
            .pool
            .parse()
            .map_err(|_| format!("weft: {:?} is not a subnet", req.pool))?;
        *mine.iter().find(|p| ***p == asked).ok_or_else(|| {
            format!(
                "weft: --subnet {asked} is not a pool of the cluster; give one of: {} (or no --subnet)",
                families(pools)
            )
        })?
    };
    Ok(json!({
        "PoolID": pool_id(req.v6),
        "Pool": pool.to_string(),
        "Data": { "com.docker.network.gateway": gateway_cidr(req.v6) },
    })
    .to_string())
}

/// The keys `CreateNetwork`'s options may carry.
const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
const GENERIC: &str = "com.docker.network.generic";

/// Checks `CreateNetwork`: weft's pools only, and no driver option (weft has none).
pub fn check_network(req: &CreateNetwork, pools: &[IpNet]) -> Result<(), String> {
    if let Some(g) = req.options.get(GENERIC).and_then(|g| g.as_object()) {
        if let Some(k) = g.keys().next() {
            return Err(format!(
                "weft: unknown driver option {k:?} (-o/--opt): the weft driver takes none; the network's pools, MTU and encryption are the cluster's"
            ));
        }
    }
    for key in req.options.keys() {
        if key != ENABLE_IPV6 && key != GENERIC {
            return Err(format!("weft: unsupported network option {key:?}"));
        }
    }
    for (data, v6) in [(&req.ipv4_data, false), (&req.ipv6_data, true)] {
        for d in data.iter().flatten() {
            let pool: Option<IpNet> = d.pool.parse().ok();
            if d.address_space != ADDRESS_SPACE || !pool.is_some_and(|p| pools.contains(&p)) {
                return Err(format!(
                    "weft: the pool {} is not the cluster's: create the network with --ipam-driver weft (the cluster's pools: {})",
                    d.pool,
                    families(pools)
                ));
            }
            if matches!(pool, Some(IpNet::V6(_))) != v6 {
                return Err(format!("weft: pool {} is of the wrong family", d.pool));
            }
        }
    }
    Ok(())
}

/// Parses an address as Docker sends it (`a.b.c.d/32`, or bare).
pub fn parse_address(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.split('/').next()?.parse().ok()
}

/// The answer to `RequestAddress` for `addr`: a /32 or /128 (each container's address
/// is alone on its link; the gateway is link-local).
pub fn address_answer(addr: IpAddr) -> String {
    let len = if addr.is_ipv4() { 32 } else { 128 };
    json!({ "Address": format!("{addr}/{len}"), "Data": {} }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Vec<IpNet> {
        vec![
            "10.32.0.0/12".parse().unwrap(),
            "fd77::/64".parse().unwrap(),
        ]
    }

    fn req(pool: &str, v6: bool) -> RequestPool {
        RequestPool {
            address_space: ADDRESS_SPACE.into(),
            pool: pool.into(),
            v6,
            ..Default::default()
        }
    }

    #[test]
    fn pools_come_from_the_cluster() {
        let a: serde_json::Value =
            serde_json::from_str(&request_pool(&req("", false), &pools()).unwrap()).unwrap();
        assert_eq!(a["Pool"], "10.32.0.0/12");
        assert_eq!(a["PoolID"], "weft-v4");
        assert_eq!(a["Data"]["com.docker.network.gateway"], "169.254.1.1/32");
        let a: serde_json::Value =
            serde_json::from_str(&request_pool(&req("fd77::/64", true), &pools()).unwrap())
                .unwrap();
        assert_eq!(a["PoolID"], "weft-v6");
        assert_eq!(a["Data"]["com.docker.network.gateway"], "fe80::1/128");
        let e = request_pool(&req("192.168.0.0/16", false), &pools()).unwrap_err();
        assert!(
            e.contains("not a pool of the cluster") && e.contains("10.32.0.0/12"),
            "{e}"
        );
        let e = request_pool(&req("", true), &pools()[..1]).unwrap_err();
        assert!(e.contains("no IPv6 pool"), "{e}");
        let mut r = req("", false);
        r.sub_pool = "10.32.1.0/24".into();
        assert!(request_pool(&r, &pools())
            .unwrap_err()
            .contains("--ip-range"));
        assert_eq!(pool_family(pool_id(true)), Some(true));
        assert_eq!(pool_family("x"), None);
    }

    #[test]
    fn networks_of_other_ipams_or_with_options_are_refused() {
        let body = |v4pool: &str, opts: &str| -> CreateNetwork {
            serde_json::from_str(&format!(
                r#"{{"NetworkID":"n","Options":{opts},"IPv4Data":[{{"AddressSpace":"{}","Gateway":"169.254.1.1/32","Pool":"{v4pool}"}}]}}"#,
                if v4pool.starts_with("10.32") { "weft" } else { "LocalDefault" }
            ))
            .unwrap()
        };
        assert!(check_network(&body("10.32.0.0/12", "{}"), &pools()).is_ok());
        let e = check_network(&body("172.18.0.0/16", "{}"), &pools()).unwrap_err();
        assert!(e.contains("--ipam-driver weft"), "{e}");
        let e = check_network(
            &body(
                "10.32.0.0/12",
                r#"{"com.docker.network.generic":{"mtu":"9000"}}"#,
            ),
            &pools(),
        )
        .unwrap_err();
        assert!(e.contains("\"mtu\""), "{e}");
        assert!(check_network(
            &body(
                "10.32.0.0/12",
                r#"{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{}}"#
            ),
            &pools()
        )
        .is_ok());
    }

    #[test]
    fn addresses_are_host_routes() {
        assert_eq!(
            parse_address("10.32.0.5/32"),
            Some("10.32.0.5".parse().unwrap())
        );
        assert_eq!(parse_address("fd77::5"), Some("fd77::5".parse().unwrap()));
        assert_eq!(parse_address(""), None);
        assert!(address_answer("fd77::5".parse().unwrap()).contains("fd77::5/128"));
    }
}
