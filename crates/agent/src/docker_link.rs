//! The kernel side of a Docker endpoint: its veth pair in the host's namespace, wired as
//! a CNI attachment is (docs/docker.md). libnetwork moves the container end into the
//! sandbox itself after `Join`.

use std::net::IpAddr;

use ipnet::IpNet;
use weft_docker::endpoint as dep;
use weft_docker::pools::gateway;
use weft_netlink::{self as nl, Netlink, Scope, WEFT_ROUTE_PROTOCOL};

/// The MTU when the data plane has none yet.
const FALLBACK_MTU: u32 = 1500;

fn nl_err(e: nl::Error) -> String {
    format!("weft: {e}")
}

/// Makes the endpoint's veth pair and programs the host end: up, forwarding, the
/// containers' gateways as link-local addresses (the kernel then answers their ARP and
/// neighbour solicitations), and for each address a permanent neighbour and a host route.
/// Undoes the veth if anything fails.
pub(crate) fn wire(
    endpoint_id: &str,
    addrs: &[IpAddr],
    mac: [u8; 6],
    mtu: Option<u32>,
) -> Result<(), String> {
    let host_if = dep::host_ifname(endpoint_id);
    let mut nlh = Netlink::open().map_err(nl_err)?;
    if let Some(old) = nlh.link_by_name(&host_if).map_err(nl_err)? {
        // A Join after a failed one, or after the agent lost the Leave: start clean.
        if old.alias.as_deref() == Some(dep::alias(endpoint_id).as_str()) {
            nlh.delete_link(old.index).map_err(nl_err)?;
        } else {
            return Err(format!(
                "weft: {host_if} exists and is not weft's: cannot wire endpoint {}",
                dep::short(endpoint_id)
            ));
        }
    }
    let mtu = mtu.unwrap_or(FALLBACK_MTU);
    nlh.create_veth_pair(
        &host_if,
        &dep::container_ifname(endpoint_id),
        mac,
        mtu,
        &dep::alias(endpoint_id),
    )
    .map_err(nl_err)?;
    let res = program(&mut nlh, &host_if, addrs, mac);
    if res.is_err() {
        let _ = remove(endpoint_id);
    }
    res
}

fn program(nlh: &mut Netlink, host_if: &str, addrs: &[IpAddr], mac: [u8; 6]) -> Result<(), String> {
    let host = nlh
        .link_by_name(host_if)
        .map_err(nl_err)?
        .ok_or_else(|| format!("weft: {host_if} vanished"))?;
    for v6 in [false, true] {
        if !addrs.iter().any(|a| a.is_ipv6() == v6) {
            continue;
        }
        let fam = if v6 { "ipv6" } else { "ipv4" };
        let path = format!("/proc/sys/net/{fam}/conf/{host_if}/forwarding");
        std::fs::write(&path, b"1").map_err(|e| format!("weft: write {path}: {e}"))?;
        let gw = IpNet::new(gateway(v6), if v6 { 64 } else { 32 }).expect("valid prefix");
        nlh.add_address_scoped(host.index, gw, v6, Scope::Link)
            .map_err(nl_err)?;
    }
    nlh.set_up(host.index).map_err(nl_err)?;
    for a in addrs {
        nlh.point_at(host.index, IpNet::from(*a), mac, WEFT_ROUTE_PROTOCOL)
            .map_err(nl_err)?;
    }
    Ok(())
}

/// Deletes the endpoint's veth if it exists and carries weft's mark (its routes and
/// neighbours go with it).
pub(crate) fn remove(endpoint_id: &str) -> Result<(), String> {
    let mut nlh = Netlink::open().map_err(nl_err)?;
    if let Some(link) = nlh
        .link_by_name(&dep::host_ifname(endpoint_id))
        .map_err(nl_err)?
    {
        if link.alias.as_deref() == Some(dep::alias(endpoint_id).as_str()) {
            match nlh.delete_link(link.index) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(nl_err(e)),
            }
        }
    }
    Ok(())
}
