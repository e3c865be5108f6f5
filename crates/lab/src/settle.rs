//! Waiting until a namespace's links and addresses have settled.
//!
//! The kernel finishes a link's set-up after `ip link set up` returns: the carrier comes
//! through the link watcher (batched, up to a second later), the IPv6 link-local address
//! follows it, and every IPv6 address is "tentative" until duplicate address detection
//! ends (its `local` route only appears then). Anything that compares a namespace's state
//! before and after, or that expects its addresses to answer, waits for [`wait_settled`].

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sys;
use crate::LabError;

/// What is not settled yet in the output of `ip -j addr show` (None: all settled). A link
/// that is administratively up must have its carrier, an IPv6 link-local address (unless
/// IPv6 is off on it: `ipv6` is false, or it is point-to-point) and no tentative address.
/// `lo` has no link-local address; links that are down are left as they are.
pub fn unsettled(addr_json: &str, ipv6: bool) -> Result<Option<String>, String> {
    let links: Vec<Value> =
        serde_json::from_str(addr_json).map_err(|e| format!("`ip -j addr` output: {e}"))?;
    for l in &links {
        let name = l["ifname"].as_str().unwrap_or("?");
        let flags: Vec<&str> = l["flags"]
            .as_array()
            .map(|f| f.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if !flags.contains(&"UP") || flags.contains(&"LOOPBACK") {
            continue;
        }
        if !flags.contains(&"LOWER_UP") {
            return Ok(Some(format!("{name} has no carrier yet")));
        }
        let addrs = l["addr_info"].as_array().cloned().unwrap_or_default();
        if let Some(a) = addrs
            .iter()
            .find(|a| a["tentative"].as_bool() == Some(true))
        {
            return Ok(Some(format!(
                "{name}'s address {} is still tentative (duplicate address detection)",
                a["local"].as_str().unwrap_or("?")
            )));
        }
        let link_local = addrs
            .iter()
            .any(|a| a["family"] == "inet6" && a["scope"] == "link");
        // A point-to-point device (weft's tunnel) may be made without one: it has no
        // neighbours to announce itself to.
        if ipv6 && !link_local && !flags.contains(&"POINTOPOINT") {
            return Ok(Some(format!("{name} has no IPv6 link-local address yet")));
        }
    }
    Ok(None)
}

/// Waits until every link of namespace `ns` has settled (see [`unsettled`]), at most
/// `limit`; then says what is still missing.
pub fn wait_settled(ns: &str, limit: Duration) -> Result<(), LabError> {
    let ipv6 = ipv6_enabled(ns);
    let deadline = Instant::now() + limit;
    loop {
        let out = sys::run("ip", &["-n", ns, "-j", "addr", "show"])?;
        match unsettled(&out, ipv6).map_err(LabError::new)? {
            None => return Ok(()),
            Some(what) if Instant::now() >= deadline => {
                return Err(LabError::new(format!(
                    "namespace {ns} did not settle within {} s: {what}",
                    limit.as_secs()
                )))
            }
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Whether IPv6 is on for new links of `ns` (`net.ipv6.conf.default.disable_ipv6` = 0).
fn ipv6_enabled(ns: &str) -> bool {
    sys::netns_sysctl_read(ns, "net.ipv6.conf.default.disable_ipv6")
        .map(|v| v.trim() == "0")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, flags: &[&str], addrs: Value) -> Value {
        serde_json::json!({"ifname": name, "flags": flags, "addr_info": addrs})
    }

    fn check(links: Vec<Value>) -> Option<String> {
        unsettled(&Value::Array(links).to_string(), true).unwrap()
    }

    #[test]
    fn settled_when_every_up_link_has_carrier_and_a_final_link_local() {
        let ll = serde_json::json!([{"family":"inet6","local":"fe80::1","scope":"link"}]);
        let v4 = serde_json::json!({"family":"inet","local":"172.30.1.1","scope":"global"});
        let mut both = ll.as_array().unwrap().clone();
        both.push(v4);
        assert_eq!(
            check(vec![
                link("lo", &["LOOPBACK", "UP", "LOWER_UP"], serde_json::json!([])),
                link("eth0", &["UP", "LOWER_UP"], Value::Array(both)),
                link("down0", &["BROADCAST"], serde_json::json!([])),
            ]),
            None
        );
    }

    #[test]
    fn a_missing_carrier_a_missing_link_local_or_a_tentative_address_is_unsettled() {
        let no_carrier = check(vec![link("eth0", &["UP"], serde_json::json!([]))]);
        assert!(no_carrier.unwrap().contains("no carrier"));
        let no_ll = check(vec![link(
            "eth0",
            &["UP", "LOWER_UP"],
            serde_json::json!([{"family":"inet","local":"172.30.1.1","scope":"global"}]),
        )]);
        assert!(no_ll.unwrap().contains("link-local"));
        let tentative = check(vec![link(
            "eth0",
            &["UP", "LOWER_UP"],
            serde_json::json!([{"family":"inet6","local":"fe80::1","scope":"link","tentative":true}]),
        )]);
        assert!(tentative.unwrap().contains("tentative"));
    }

    #[test]
    fn a_point_to_point_link_needs_no_link_local() {
        let tun = link(
            "weft.tun",
            &["POINTOPOINT", "NOARP", "UP", "LOWER_UP"],
            serde_json::json!([]),
        );
        assert_eq!(check(vec![tun]), None);
    }

    #[test]
    fn without_ipv6_no_link_local_is_expected() {
        let links = serde_json::json!([{"ifname":"eth0","flags":["UP","LOWER_UP"],"addr_info":[]}]);
        assert_eq!(unsettled(&links.to_string(), false).unwrap(), None);
    }

    #[test]
    fn output_that_is_not_json_is_an_error() {
        assert!(unsettled("Device not found", true).is_err());
    }
}
