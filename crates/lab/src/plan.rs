//! The lab's plan: which namespaces, links, addresses and filters a topology needs.
//! Pure: computed from the lab name, host count and topology, and unit-tested.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The most hosts a lab may have (addresses are /24 underlays).
pub const MAX_HOSTS: usize = 100;

/// How the lab's hosts are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// All hosts on one L2 segment.
    Mesh,
    /// Two L2 segments joined by a router namespace; the first half of the hosts on the
    /// first segment, the rest on the second.
    Subnets,
    /// One L2 segment, but host N reaches only host N-1 directly (as across a firewall).
    Partial,
    /// The last host sits alone on a private segment behind a router that masquerades
    /// its traffic and lets nothing in that it did not start (a home or cloud NAT); the
    /// other hosts share the public segment and have no route to the private one.
    Nat,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Topology::Mesh => "mesh",
            Topology::Subnets => "subnets",
            Topology::Partial => "partial",
            Topology::Nat => "nat",
        })
    }
}

impl FromStr for Topology {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mesh" => Ok(Topology::Mesh),
            "subnets" => Ok(Topology::Subnets),
            "partial" => Ok(Topology::Partial),
            "nat" => Ok(Topology::Nat),
            other => Err(format!(
                "unknown topology {other:?}: expected mesh, subnets, partial or nat"
            )),
        }
    }
}

/// Which address families the lab's underlay (hosts, router, outside) has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Underlay {
    /// 172.30.S.N/24 only (the agents peer over IPv4).
    #[default]
    Ipv4,
    /// fd30:S::N/64 only (the agents peer over IPv6).
    Ipv6,
    /// Both; the agents peer over IPv4.
    Dual,
}

impl Underlay {
    /// The underlay has IPv4 addresses.
    pub fn v4(self) -> bool {
        self != Underlay::Ipv6
    }
    /// The underlay has IPv6 addresses.
    pub fn v6(self) -> bool {
        self != Underlay::Ipv4
    }
}

impl fmt::Display for Underlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Underlay::Ipv4 => "ipv4",
            Underlay::Ipv6 => "ipv6",
            Underlay::Dual => "dual",
        })
    }
}

impl FromStr for Underlay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ipv4" => Ok(Underlay::Ipv4),
            "ipv6" => Ok(Underlay::Ipv6),
            "dual" => Ok(Underlay::Dual),
            other => Err(format!(
                "unknown underlay {other:?}: expected ipv4, ipv6 or dual"
            )),
        }
    }
}

/// The IPv6 underlay address of host (or router, outside) number `n` on segment `seg`.
pub fn underlay6(seg: u8, n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd30, u16::from(seg), 0, 0, 0, 0, 0, u16::from(n))
}

/// One virtual host of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    /// `h1`, `h2`, ...
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Which switch namespace its `eth0` is plugged into.
    pub switch: String,
    /// Its underlay address (`eth0`), with prefix length 24.
    pub underlay: Ipv4Addr,
    /// The router's address on its segment, for `subnets` (its default route).
    pub gateway: Option<Ipv4Addr>,
    /// The container range this host's CNI config allocates from.
    pub pod_range: String,
    /// Its IPv6 underlay address (/64), when the underlay has IPv6.
    #[serde(default)]
    pub underlay6: Option<Ipv6Addr>,
    /// The underlay has IPv6 only: `underlay` is not configured.
    #[serde(default)]
    pub v6_only: bool,
    /// The router's IPv6 address on its segment, for `subnets` with an IPv6 underlay.
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
}

impl HostPlan {
    /// The address its agent listens on and advertises: IPv6 on an IPv6-only underlay,
    /// else IPv4 (the IPv4 address is planned always, configured only when the underlay
    /// has IPv4).
    pub fn agent_addr(&self) -> IpAddr {
        match self.underlay6 {
            Some(v6) if self.v6_only => IpAddr::V6(v6),
            _ => IpAddr::V4(self.underlay),
        }
    }
}

/// Everything one lab is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPlan {
    /// The lab's name.
    pub name: String,
    /// Its topology.
    pub topology: Topology,
    /// Switch namespaces (each holds one bridge `br0`).
    pub switches: Vec<String>,
    /// The router namespace, for `subnets`.
    pub router: Option<String>,
    /// The hosts.
    pub hosts: Vec<HostPlan>,
    /// Host pairs that cannot reach each other (by host name), for `partial`.
    pub blocked: Vec<(String, String)>,
    /// A namespace standing in for the world outside the cluster (for outbound NAT): on
    /// the first switch, with no route to the container pools.
    pub outside: OutsidePlan,
    /// The underlay's address families.
    #[serde(default)]
    pub underlay: Underlay,
}

/// The lab's stand-in for the outside world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsidePlan {
    /// Its namespace (`weft-NAME-out`); `weft lab exec out -- ...` runs there.
    pub netns: String,
    /// The switch its `eth0` is plugged into.
    pub switch: String,
    /// Its address (/24).
    pub addr: Ipv4Addr,
    /// Its default route (the router, for `subnets`): towards the underlay only.
    pub gateway: Option<Ipv4Addr>,
    /// Its IPv6 address (/64), when the underlay has IPv6.
    #[serde(default)]
    pub addr6: Option<Ipv6Addr>,
    /// Its IPv6 default route (the router, for `subnets`).
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
}

/// The name `weft lab exec` knows the outside namespace by.
pub const OUTSIDE: &str = "out";

/// Checks a lab name: 1 to 12 characters of `a-z0-9`, so namespace names built from it
/// (`weft-NAME-...`) can never be mistaken for another lab's.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 12
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "invalid lab name {name:?}: use 1 to 12 characters of a-z and 0-9"
        ));
    }
    Ok(())
}

/// Checks a container name: 1 to 24 characters of `a-z0-9_` (it becomes part of a
/// namespace name and of the CNI container id).
pub fn check_container_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 24
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "invalid container name {name:?}: use 1 to 24 characters of a-z, 0-9 and _"
        ));
    }
    Ok(())
}

/// The prefix of every namespace of lab `name`.
pub fn ns_prefix(name: &str) -> String {
    format!("weft-{name}-")
}

/// The namespace of container `container` on host `host` of lab `lab`.
pub fn container_netns(lab: &str, host: &str, container: &str) -> String {
    format!("weft-{lab}-{host}-{container}")
}

/// Computes the plan of a lab with an IPv4 underlay.
pub fn plan(name: &str, hosts: usize, topology: Topology) -> Result<LabPlan, String> {
    plan_with(name, hosts, topology, Underlay::Ipv4)
}

/// Computes the plan of a lab whose underlay has the families of `underlay`.
pub fn plan_with(
    name: &str,
    hosts: usize,
    topology: Topology,
    underlay: Underlay,
) -> Result<LabPlan, String> {
    check_name(name)?;
    if hosts == 0 || hosts > MAX_HOSTS {
        return Err(format!("--hosts {hosts}: a lab has 1 to {MAX_HOSTS} hosts"));
    }
    let routed = matches!(topology, Topology::Subnets | Topology::Nat);
    if routed && hosts < 2 {
        return Err(format!("the {topology} topology needs at least 2 hosts"));
    }
    let p = ns_prefix(name);
    let mut switches = vec![format!("{p}sw1")];
    let mut router = None;
    if routed {
        switches.push(format!("{p}sw2"));
        router = Some(format!("{p}rt"));
    }
    let first_half = hosts.div_ceil(2);
    let host_plans = (1..=hosts)
        .map(|i| {
            let (switch, segment, gateway) = if topology == Topology::Nat {
                // The public side has no route to the private segment.
                if i < hosts {
                    (switches[0].clone(), 1u8, None)
                } else {
                    (
                        switches[1].clone(),
                        2u8,
                        Some(Ipv4Addr::new(172, 30, 2, 254)),
                    )
                }
            } else if topology == Topology::Subnets {
                if i <= first_half {
                    (
                        switches[0].clone(),
                        1u8,
                        Some(Ipv4Addr::new(172, 30, 1, 254)),
                    )
                } else {
                    (
                        switches[1].clone(),
                        2u8,
                        Some(Ipv4Addr::new(172, 30, 2, 254)),
                    )
                }
            } else {
                (switches[0].clone(), 0u8, None)
            };
            let v6 = underlay.v6();
            HostPlan {
                name: format!("h{i}"),
                netns: format!("{p}h{i}"),
                switch,
                underlay: Ipv4Addr::new(172, 30, segment, i as u8),
                gateway: gateway.filter(|_| underlay.v4()),
                pod_range: format!("10.32.{i}.0/24"),
                underlay6: v6.then(|| underlay6(segment, i as u8)),
                v6_only: !underlay.v4(),
                gateway6: gateway.filter(|_| v6).map(|_| underlay6(segment, 0xfe)),
            }
        })
        .collect();
    let seg = if routed { 1 } else { 0 };
    let outside = OutsidePlan {
        netns: format!("{p}{OUTSIDE}"),
        switch: switches[0].clone(),
        addr: Ipv4Addr::new(172, 30, seg, 250),
        gateway: (topology == Topology::Subnets && underlay.v4())
            .then(|| Ipv4Addr::new(172, 30, 1, 254)),
        addr6: underlay.v6().then(|| underlay6(seg, 0xfa)),
        gateway6: (topology == Topology::Subnets && underlay.v6()).then(|| underlay6(1, 0xfe)),
    };
    let mut blocked = Vec::new();
    if topology == Topology::Partial && hosts >= 3 {
        for i in 1..hosts - 1 {
            blocked.push((format!("h{i}"), format!("h{hosts}")));
        }
    }
    Ok(LabPlan {
        name: name.to_string(),
        topology,
        switches,
        router,
        hosts: host_plans,
        blocked,
        outside,
        underlay,
    })
}

impl LabPlan {
    /// Every namespace of the lab (switches, router, hosts), in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = self.switches.clone();
        v.extend(self.router.iter().cloned());
        v.extend(self.hosts.iter().map(|h| h.netns.clone()));
        v.push(self.outside.netns.clone());
        v
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<&HostPlan> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The nft ruleset for a switch: drops traffic between blocked host pairs (both ways).
    /// Two hosts on this switch are separated between the ports named after them (every
    /// frame, ARP included). A host on this switch and one on another segment are separated
    /// between the host's port and the router port `rt`, by the other host's underlay
    /// address (IPv4 only: the router forwards nothing else). Pairs touching no host here
    /// add nothing.
    pub fn switch_filter(&self, switch: &str, extra_blocked: &[(String, String)]) -> String {
        let mut rules = String::new();
        for (a, b) in self.blocked.iter().chain(extra_blocked) {
            let (Some(ha), Some(hb)) = (self.host(a), self.host(b)) else {
                continue;
            };
            match (ha.switch == switch, hb.switch == switch) {
                (true, true) => rules.push_str(&format!(
                    "    iifname \"{a}\" oifname \"{b}\" drop\n    iifname \"{b}\" oifname \"{a}\" drop\n"
                )),
                (true, false) => rules.push_str(&cross_rules(ha, hb)),
                (false, true) => rules.push_str(&cross_rules(hb, ha)),
                (false, false) => {}
            }
        }
        format!(
            "table bridge weftlab {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n{rules}  }}\n}}\n"
        )
    }
}

/// Rules on `here`'s switch that separate it from `there`, a host behind the router, by
/// each of `there`'s underlay addresses.
fn cross_rules(here: &HostPlan, there: &HostPlan) -> String {
    let h = &here.name;
    let mut addrs = Vec::new();
    if !there.v6_only {
        addrs.push(("ip", there.underlay.to_string()));
    }
    if let Some(v6) = there.underlay6 {
        addrs.push(("ip6", v6.to_string()));
    }
    addrs
        .iter()
        .map(|(fam, ip)| {
            format!(
                "    iifname \"{h}\" oifname \"rt\" {fam} daddr {ip} drop\n    iifname \"rt\" oifname \"{h}\" {fam} saddr {ip} drop\n"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_or_dual_underlay_gives_hosts_router_and_outside_ipv6_addresses() {
        let p = plan_with("t", 4, Topology::Subnets, Underlay::Ipv6).unwrap();
        let h3 = &p.hosts[2];
        assert_eq!(h3.underlay6, Some("fd30:2::3".parse().unwrap()));
        assert_eq!(h3.gateway6, Some("fd30:2::fe".parse().unwrap()));
        assert_eq!(h3.gateway, None, "no IPv4 on an IPv6 underlay");
        assert_eq!(h3.agent_addr(), "fd30:2::3".parse::<IpAddr>().unwrap());
        assert_eq!(p.outside.addr6, Some("fd30:1::fa".parse().unwrap()));
        assert_eq!(p.outside.gateway6, Some("fd30:1::fe".parse().unwrap()));
        let d = plan_with("t", 3, Topology::Mesh, Underlay::Dual).unwrap();
        assert_eq!(
            d.hosts[0].agent_addr(),
            "172.30.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(d.hosts[0].underlay6, Some("fd30::1".parse().unwrap()));
        assert_eq!(d.outside.addr6, Some("fd30::fa".parse().unwrap()));
        let v4 = plan("t", 3, Topology::Mesh).unwrap();
        assert_eq!(v4.hosts[0].underlay6, None);
        assert_eq!("dual".parse::<Underlay>(), Ok(Underlay::Dual));
        assert!("ip6".parse::<Underlay>().is_err());
    }

    #[test]
    fn cuts_across_the_router_match_every_family_of_the_underlay() {
        let p = plan_with("t", 4, Topology::Subnets, Underlay::Dual).unwrap();
        let f = p.switch_filter("weft-t-sw1", &[("h1".into(), "h4".into())]);
        assert!(f.contains("ip daddr 172.30.2.4 drop"), "{f}");
        assert!(f.contains("ip6 daddr fd30:2::4 drop"), "{f}");
        let p6 = plan_with("t", 4, Topology::Subnets, Underlay::Ipv6).unwrap();
        let f6 = p6.switch_filter("weft-t-sw1", &[("h1".into(), "h4".into())]);
        assert!(!f6.contains("ip daddr"), "{f6}");
        assert!(f6.contains("ip6 saddr fd30:2::4 drop"), "{f6}");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("lab1").is_ok());
        assert!(check_name("").is_err());
        assert!(
            check_name("a-b").is_err(),
            "a dash would make prefixes ambiguous"
        );
        assert!(check_name("ABC").is_err());
        assert!(check_name("abcdefghijklm").is_err());
        assert!(check_container_name("web_1").is_ok());
        assert!(check_container_name("web-1").is_err());
    }

    #[test]
    fn mesh_puts_every_host_on_one_switch() {
        let p = plan("t", 3, Topology::Mesh).unwrap();
        assert_eq!(p.switches, vec!["weft-t-sw1"]);
        assert!(p.router.is_none());
        assert_eq!(p.hosts.len(), 3);
        assert!(p.hosts.iter().all(|h| h.switch == "weft-t-sw1"));
        assert_eq!(p.hosts[2].underlay, Ipv4Addr::new(172, 30, 0, 3));
        assert_eq!(p.hosts[2].pod_range, "10.32.3.0/24");
        assert!(p.blocked.is_empty());
        assert_eq!(
            p.namespaces(),
            vec![
                "weft-t-sw1",
                "weft-t-h1",
                "weft-t-h2",
                "weft-t-h3",
                "weft-t-out"
            ]
        );
    }

    #[test]
    fn subnets_splits_hosts_behind_a_router() {
        let p = plan("t", 3, Topology::Subnets).unwrap();
        assert_eq!(p.router.as_deref(), Some("weft-t-rt"));
        assert_eq!(p.hosts[0].switch, "weft-t-sw1");
        assert_eq!(p.hosts[1].switch, "weft-t-sw1");
        assert_eq!(p.hosts[2].switch, "weft-t-sw2");
        assert_eq!(p.hosts[2].underlay, Ipv4Addr::new(172, 30, 2, 3));
        assert_eq!(p.hosts[2].gateway, Some(Ipv4Addr::new(172, 30, 2, 254)));
        assert!(plan("t", 1, Topology::Subnets).is_err());
    }

    #[test]
    fn nat_puts_only_the_last_host_behind_the_router() {
        let p = plan_with("t", 3, Topology::Nat, Underlay::Dual).unwrap();
        assert_eq!(p.router.as_deref(), Some("weft-t-rt"));
        for h in &p.hosts[..2] {
            assert_eq!(h.switch, "weft-t-sw1");
            assert_eq!((h.gateway, h.gateway6), (None, None), "no route inside");
        }
        let last = &p.hosts[2];
        assert_eq!(last.switch, "weft-t-sw2");
        assert_eq!(last.gateway, Some(Ipv4Addr::new(172, 30, 2, 254)));
        assert_eq!(last.gateway6, Some(underlay6(2, 0xfe)));
        assert_eq!(p.outside.switch, "weft-t-sw1");
        assert_eq!(p.outside.gateway, None);
        assert!(plan("t", 1, Topology::Nat).is_err());
        assert_eq!("nat".parse::<Topology>(), Ok(Topology::Nat));
    }

    #[test]
    fn partial_lets_the_last_host_reach_only_its_neighbour() {
        let p = plan("t", 4, Topology::Partial).unwrap();
        assert_eq!(
            p.blocked,
            vec![
                ("h1".to_string(), "h4".to_string()),
                ("h2".to_string(), "h4".to_string())
            ]
        );
        let f = p.switch_filter("weft-t-sw1", &[]);
        assert!(f.contains("iifname \"h1\" oifname \"h4\" drop"));
        assert!(f.contains("iifname \"h4\" oifname \"h2\" drop"));
        assert!(!f.contains("\"h3\""));
    }

    #[test]
    fn extra_pairs_on_one_switch_drop_between_ports() {
        let p = plan("t", 3, Topology::Mesh).unwrap();
        let f = p.switch_filter("weft-t-sw1", &[("h1".into(), "h2".into())]);
        assert!(f.contains("iifname \"h1\" oifname \"h2\" drop"));
        assert!(f.contains("iifname \"h2\" oifname \"h1\" drop"));
        assert!(!f.contains("\"h3\""));
        // Unknown hosts are ignored, not turned into rules.
        let f = p.switch_filter("weft-t-sw1", &[("h1".into(), "h9".into())]);
        assert!(!f.contains("drop"));
    }

    #[test]
    fn pairs_across_the_router_drop_at_each_side_by_address() {
        let p = plan("t", 4, Topology::Subnets).unwrap();
        let cut = [("h1".to_string(), "h4".to_string())];
        let f1 = p.switch_filter("weft-t-sw1", &cut);
        assert!(f1.contains("iifname \"h1\" oifname \"rt\" ip daddr 172.30.2.4 drop"));
        assert!(f1.contains("iifname \"rt\" oifname \"h1\" ip saddr 172.30.2.4 drop"));
        assert!(!f1.contains("\"h2\""));
        let f2 = p.switch_filter("weft-t-sw2", &cut);
        assert!(f2.contains("iifname \"h4\" oifname \"rt\" ip daddr 172.30.1.1 drop"));
        assert!(f2.contains("iifname \"rt\" oifname \"h4\" ip saddr 172.30.1.1 drop"));
        assert!(!f2.contains("\"h3\""));
        // A pair on the first segment adds nothing to the second switch.
        let f2 = p.switch_filter("weft-t-sw2", &[("h1".into(), "h2".into())]);
        assert!(!f2.contains("drop"));
    }

    #[test]
    fn host_counts_are_bounded() {
        assert!(plan("t", 0, Topology::Mesh).is_err());
        assert!(plan("t", MAX_HOSTS + 1, Topology::Mesh).is_err());
        assert!(plan("t", MAX_HOSTS, Topology::Mesh).is_ok());
    }
}
