//! What keeps connections that others translate correct (docs/dataplane.md, "Connections
//! that others translate"): the `weft` nftables tables (outbound NAT, the `notrack`
//! exemption of pod-to-pod traffic, and the set of client sockets whose replies must be
//! tracked), and the client sockets of translated connections read from the kernel's
//! connection tracking table, to seed the fast path's map after an agent start.

use std::net::IpAddr;

use ipnet::IpNet;

/// The nftables table weft owns, in the `ip` and `ip6` families.
pub const NFT_TABLE: &str = "weft";

/// The packet mark bit weft's `postrouting` rule sets on the first packet of a translated
/// connection between pool addresses (the fast path's egress program reads it; `TRANSLATED_MARK` in fastpath.c).
pub const TRANSLATED_MARK: u32 = 0x0100_0000;

/// The chain at the `forward` hook of agents before 2026-12-07, and its hook: deleted.
const OLD_FORWARD: &str = "forward";
const OLD_FORWARD_HOOK: &str = "type filter hook forward priority filter; policy accept;";

/// How long a translated TCP or SCTP client socket stays in the set without a reply of its
/// connection or a refresh by the agent, which enters the socket
/// of every translated connection conntrack still knows again every
/// [`TRANSLATED_REFRESH_SECS`] (see [`refresh_script`]): so a connection idle for longer
/// keeps its socket, and the set only has to outlive an agent restart. At 10 minutes the
/// set holds the sockets of about 437 new connections a second (262,144 / 600 s).
pub const TRANSLATED_TIMEOUT: &str = "10m";

/// [`TRANSLATED_TIMEOUT`] in seconds.
pub const TRANSLATED_TIMEOUT_SECS: u64 = 600;

/// How often, in seconds, the agent enters the client sockets of the translated
/// connections conntrack knows into the set again.
pub const TRANSLATED_REFRESH_SECS: u64 = 30;

/// The same for UDP, shorter: every DNS query through a Service VIP comes from a new
/// socket, so a node that resolves names through one makes many (at 5 minutes the set
/// holds about 870 new ones a second), and conntrack itself forgets a UDP flow after 2
/// minutes without packets (`nf_conntrack_udp_timeout_stream`), after which a reply
/// cannot be translated anyway.
pub const TRANSLATED_UDP_TIMEOUT: &str = "5m";

/// [`TRANSLATED_UDP_TIMEOUT`] in seconds.
pub const TRANSLATED_UDP_TIMEOUT_SECS: u64 = 300;

/// At most this many translated client sockets per family in the set.
pub const TRANSLATED_SIZE: u32 = 262_144;

/// The `nft -f` script that makes the `weft` tables what `pools`, `nat` and the VXLAN port
/// say, in one transaction. With `nat`, a family that has pools gets its table: the pools
/// as a set, masquerade of traffic leaving the pools, `notrack` of traffic between pools
/// and of weft's VXLAN packets, except replies to client sockets of translated connections
/// (the `translated` set, filled at `postrouting` from `ct status dnat` by the first packet
/// of each such connection, the only one a NAT chain sees, and kept by its replies) and
/// ICMP errors.
/// A family with one pool has its prefix written into the rules (see [`pool_match`]). The
/// table is changed in place (chains flushed and refilled), never deleted and re-made, so
/// the `translated` set survives an agent restart or a change of the pools. With `policy`
/// (a network policy is in force here), the table exists without `nat` too, and the
/// addresses in its set `isolated` (pods a policy isolates, filled by the policy's own
/// script, docs/policy.md) are not `notrack`ed: their connections are tracked (without
/// `policy` those two lookups are left out, so the caller must write this script with
/// `policy` before a policy isolates its first pod). Without `nat` or `policy`, or without
/// pools of a family, that family's table is deleted.
pub fn nft_script(pools: &[IpNet], nat: bool, policy: bool, vxlan_port: u16) -> String {
    let mut s = String::new();
    for v6 in [false, true] {
        let (fam, addr_type, icmp_errors) = if v6 {
            (
                "ip6",
                "ipv6_addr",
                "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem }",
            )
        } else {
            (
                "ip",
                "ipv4_addr",
                "icmp type { destination-unreachable, time-exceeded, parameter-problem }",
            )
        };
        let nets: Vec<String> = pools
            .iter()
            .filter(|p| p.addr().is_ipv6() == v6)
            .map(|p| p.to_string())
            .collect();
        if nets.is_empty() || !(nat || policy) {
            // Declaring then deleting works whether or not it exists.
            s.push_str(&format!(
                "table {fam} {NFT_TABLE}\ndelete table {fam} {NFT_TABLE}\n"
            ));
            continue;
        }
        let t = format!("{fam} {NFT_TABLE}");
        let chains = [
            (
                "raw_prerouting",
                "type filter hook prerouting priority raw; policy accept;",
            ),
            (
                "raw_output",
                "type filter hook output priority raw; policy accept;",
            ),
            ("raw_pods", ""),
            ("raw_translated", ""),
            (
                "postrouting",
                "type nat hook postrouting priority srcnat; policy accept;",
            ),
        ];
        s.push_str(&format!(
            "table {t} {{\n  comment \"weft: outbound NAT of container traffic, none between containers\"\n  set pools {{ type {addr_type}; flags interval; }}\n  set translated {{ type {addr_type} . inet_proto . inet_service; flags dynamic, timeout; timeout {TRANSLATED_TIMEOUT}; size {TRANSLATED_SIZE}; }}\n  set isolated {{ type {addr_type}; }}\n"
        ));
        for (c, hook) in chains {
            s.push_str(&format!("  chain {c} {{ {hook} }}\n"));
        }
        // Agents before 2026-12-07 learnt at a `forward` chain, which every forwarded
        // packet passed: declared (whether or not it is there) and deleted.
        s.push_str(&format!("  chain {OLD_FORWARD} {{ {OLD_FORWARD_HOOK} }}\n"));
        s.push_str("}\n");
        s.push_str(&format!(
            "flush chain {t} {OLD_FORWARD}\ndelete chain {t} {OLD_FORWARD}\n"
        ));
        // The pools inline in a declaration (`nft` reads the whole ruleset before a
        // separate `add element`, a thousand policy chains included).
        s.push_str(&format!("flush set {t} pools\n"));
        s.push_str(&format!(
            "add set {t} pools {{ type {addr_type}; flags interval; elements = {{ {} }} }}\n",
            nets.join(", ")
        ));
        for (c, _) in chains {
            s.push_str(&format!("flush chain {t} {c}\n"));
        }
        let pool = |field: &str, op: &str| pool_match(fam, field, op, &nets);
        let between = format!("{} {}", pool("saddr", ""), pool("daddr", ""));
        // Every packet a host forwards or sends passes these chains, so each address is
        // looked up once: traffic between pools goes to `raw_pods`, which decides; weft's
        // VXLAN packets (between underlay addresses) are not tracked; the rest is.
        for c in ["raw_prerouting", "raw_output"] {
            for rule in [
                format!("{between} goto raw_pods"),
                format!(
                    "udp dport {vxlan_port} {} {} notrack",
                    pool("saddr", "!= "),
                    pool("daddr", "!= ")
                ),
            ] {
                s.push_str(&format!("add rule {t} {c} {rule}\n"));
            }
        }
        // Replies to a translated connection's client socket: tracked, so conntrack
        // translates them back. (No protocol test first: the set holds only TCP, UDP and
        // SCTP sockets, so another protocol's key never matches.)
        let socket = format!("{fam} daddr . meta l4proto . th dport");
        let mut pods = vec![
            format!("{socket} @translated goto raw_translated"),
            format!("{icmp_errors} accept"),
        ];
        if policy {
            // Pods a network policy isolates: their connections are tracked. Without a
            // policy the rules are left out (two lookups less for every packet); the
            // agent writes them before a policy's first isolated pod (docs/policy.md).
            pods.push(format!("{fam} saddr @isolated accept"));
            pods.push(format!("{fam} daddr @isolated accept"));
        }
        pods.push("notrack".to_string());
        for rule in pods {
            s.push_str(&format!("add rule {t} raw_pods {rule}\n"));
        }
        // UDP sockets with a timeout of their own (see TRANSLATED_UDP_TIMEOUT).
        let kinds = [
            (
                "meta l4proto udp ",
                format!(" timeout {TRANSLATED_UDP_TIMEOUT}"),
            ),
            ("", String::new()),
        ];
        // A reply to a translated socket keeps its entry while the connection is in
        // use, also while the agent is down (only packets that matched the set come
        // here: the refresh costs nothing to the rest).
        for (proto, timeout) in &kinds {
            s.push_str(&format!(
                "add rule {t} raw_translated {proto}update @translated {{ {socket}{timeout} }} accept\n"
            ));
        }
        // Learnt from the first packet of a DNAT'd connection between pool addresses:
        // NAT chains see only a connection's first packet, so the packets of untracked
        // traffic pass no rule of weft's here. Marked for the fast path's egress program.
        for (proto, timeout) in [
            ("meta l4proto udp", &kinds[0].1),
            ("meta l4proto { tcp, sctp }", &kinds[1].1),
        ] {
            s.push_str(&format!(
                "add rule {t} postrouting ct status dnat {between} {proto} update @translated {{ {fam} saddr . meta l4proto . th sport{timeout} }} meta mark set meta mark or {TRANSLATED_MARK:#010x}\n"
            ));
        }
        if nat {
            s.push_str(&format!(
                "add rule {t} postrouting {} {} masquerade\n",
                pool("saddr", ""),
                pool("daddr", "!= ")
            ));
        }
    }
    s
}

/// `FAM FIELD [!= ]POOLS`: with one pool the prefix itself, which the kernel compares in
/// the rule (a mask and a compare); with several, the `pools` set (a lookup in an interval
/// set, a tree walk, on the path every forwarded packet takes).
fn pool_match(fam: &str, field: &str, op: &str, nets: &[String]) -> String {
    match nets {
        [one] => format!("{fam} {field} {op}{one}"),
        _ => format!("{fam} {field} {op}@pools"),
    }
}

/// A client socket: address, IP protocol number, port.
pub type Socket = (IpAddr, u8, u16);

/// One direction of a tracked connection: source, destination, source port, destination
/// port (ports 0 for protocols without them).
pub type Ends = (IpAddr, IpAddr, u16, u16);

/// A tracked connection as conntrack lists it: IP protocol number, original tuple (as the
/// opener sent it), reply tuple (as the answer is expected).
pub type Conn = (u8, Ends, Ends);

fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132)
}

/// The client sockets of translated connections among `conns`: connections whose original
/// source is in `pools` and whose reply does not come from the original destination
/// (someone DNAT'd them), TCP, UDP or SCTP.
pub fn translated_clients(conns: &[Conn], pools: &[IpNet]) -> Vec<Socket> {
    client_sockets(conns, pools, |_| true)
}

/// The client sockets among `conns` of translated connections whose `backend` (the reply's
/// source) `keep` accepts, sorted, each once.
fn client_sockets(conns: &[Conn], pools: &[IpNet], keep: impl Fn(IpAddr) -> bool) -> Vec<Socket> {
    let mut out: Vec<Socket> = conns
        .iter()
        .filter(|&&(proto, (src, dst, _, dport), (rsrc, _, rsport, _))| {
            has_ports(proto)
                && (rsrc != dst || rsport != dport)
                && pools.iter().any(|p| p.contains(&src))
                && keep(rsrc)
        })
        .map(|&(proto, (src, _, sport, _), _)| (src, proto, sport))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The client sockets that belong in the `translated` sets of the tables [`nft_script`]
/// writes with the same `pools`, `nat` and `policy`: those of every connection in `conns`
/// that the sets' `postrouting` rule learns (translated, from a pool address to a pool address
/// after DNAT, TCP, UDP or SCTP), for each family that has a table. The agent enters them
/// again every [`TRANSLATED_REFRESH_SECS`], each with its [`translated_timeout_secs`] as
/// both timeout and expiry, so one already there gets its expiry back and one that expired
/// while its connection idled is entered again.
pub fn refresh_sockets(conns: &[Conn], pools: &[IpNet], nat: bool, policy: bool) -> Vec<Socket> {
    if !(nat || policy) {
        return Vec::new();
    }
    let in_pools = |a: IpAddr| pools.iter().any(|p| p.contains(&a));
    // A client in the pools has a table of its family (the family has pools).
    client_sockets(conns, pools, in_pools)
}

/// The timeout, in seconds, of a translated client socket of IP protocol `proto` in the set
/// (what the `postrouting` rule gives it: [`TRANSLATED_UDP_TIMEOUT`] for UDP,
/// [`TRANSLATED_TIMEOUT`] otherwise).
pub fn translated_timeout_secs(proto: u8) -> u64 {
    if proto == 17 {
        TRANSLATED_UDP_TIMEOUT_SECS
    } else {
        TRANSLATED_TIMEOUT_SECS
    }
}

/// A tracked connection of TCP, UDP or SCTP: its original tuple (as the opener sent it,
/// the key to delete it by), and the destination the `forward` hook sees, after any DNAT
/// (the reply's source): a hostPort's or Service's backend, not the address the client
/// dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tracked {
    /// IP protocol number.
    pub proto: u8,
    /// Original source.
    pub src: IpAddr,
    /// Original destination.
    pub dst: IpAddr,
    /// Original source port.
    pub sport: u16,
    /// Original destination port.
    pub dport: u16,
    /// The destination after DNAT (the original destination if none).
    pub to: IpAddr,
    /// The destination port after DNAT.
    pub to_port: u16,
}

/// The TCP, UDP and SCTP connections among `conns` whose original source or destination,
/// or destination after DNAT, `wanted` accepts.
pub fn tracked(conns: &[Conn], wanted: impl Fn(IpAddr) -> bool) -> Vec<Tracked> {
    conns
        .iter()
        .filter(|&&(proto, (src, dst, _, _), (to, _, _, _))| {
            has_ports(proto) && (wanted(src) || wanted(dst) || wanted(to))
        })
        .map(
            |&(proto, (src, dst, sport, dport), (to, _, to_port, _))| Tracked {
                proto,
                src,
                dst,
                sport,
                dport,
                to,
                to_port,
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Vec<IpNet> {
        vec![
            "10.32.0.0/12".parse().unwrap(),
            "fd32::/48".parse().unwrap(),
        ]
    }

    #[test]
    fn with_nat_each_family_gets_its_table_changed_in_place() {
        let s = nft_script(&pools(), true, false, 6784);
        for fam in ["ip", "ip6"] {
            let t = format!("{fam} weft");
            // Declared (merged into what exists), never deleted: the set survives.
            assert!(s.contains(&format!("table {t} {{")), "{s}");
            assert!(!s.contains(&format!("delete table {t}")), "{s}");
            assert!(s.contains(&format!("flush chain {t} raw_prerouting")));
            assert!(s.contains(&format!("flush set {t} pools")));
        }
        assert!(s.contains(
            "add set ip weft pools { type ipv4_addr; flags interval; elements = { 10.32.0.0/12 } }"
        ));
        assert!(s.contains(
            "add set ip6 weft pools { type ipv6_addr; flags interval; elements = { fd32::/48 } }"
        ));
        assert!(!s.contains(" element "), "{s}");
        // One pool per family: its prefix is compared in the rules, no set lookup.
        assert!(s.contains("ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 masquerade"));
        assert!(s.contains("ip6 saddr fd32::/48 ip6 daddr != fd32::/48 masquerade"));
        // weft's VXLAN packets, between underlay addresses, are not tracked; a pod's
        // packets to that port are (its masquerade needs them tracked).
        assert!(s.contains(
            "add rule ip weft raw_prerouting udp dport 6784 ip saddr != 10.32.0.0/12 ip daddr != 10.32.0.0/12 notrack"
        ));
    }

    #[test]
    fn several_pools_of_a_family_are_matched_through_the_set() {
        let mut p = pools();
        p.push("10.64.0.0/16".parse().unwrap());
        let s = nft_script(&p, true, false, 6784);
        assert!(
            s.contains("elements = { 10.32.0.0/12, 10.64.0.0/16 }"),
            "{s}"
        );
        assert!(s.contains(
            "add rule ip weft raw_prerouting ip saddr @pools ip daddr @pools goto raw_pods"
        ));
        assert!(s.contains("ip saddr @pools ip daddr != @pools masquerade"));
        // The other family still has one pool.
        assert!(s.contains("add rule ip6 weft raw_prerouting ip6 saddr fd32::/48 ip6 daddr fd32::/48 goto raw_pods"));
    }

    #[test]
    fn replies_to_translated_sockets_and_icmp_errors_are_exempt_before_notrack() {
        let s = nft_script(&pools(), true, true, 6784);
        let rules = |c: &str| -> Vec<String> {
            s.lines()
                .filter_map(|l| l.strip_prefix(&format!("add rule ip weft {c} ")))
                .map(str::to_string)
                .collect()
        };
        // Both raw chains send traffic between pools to one chain that decides.
        for c in ["raw_prerouting", "raw_output"] {
            let chain = rules(c);
            assert_eq!(chain.len(), 2, "{s}");
            assert_eq!(
                chain[0],
                "ip saddr 10.32.0.0/12 ip daddr 10.32.0.0/12 goto raw_pods"
            );
        }
        let chain = rules("raw_pods");
        assert_eq!(chain.len(), 5, "{s}");
        assert_eq!(
            chain[0],
            "ip daddr . meta l4proto . th dport @translated goto raw_translated"
        );
        assert!(chain[1].starts_with("icmp type {") && chain[1].ends_with("accept"));
        // Pods a policy isolates are tracked.
        assert_eq!(chain[2], "ip saddr @isolated accept");
        assert_eq!(chain[3], "ip daddr @isolated accept");
        assert_eq!(chain[4], "notrack");
        // A reply to a translated socket gives its entry its timeout again (UDP's own).
        assert_eq!(
            rules("raw_translated"),
            [
                "meta l4proto udp update @translated { ip daddr . meta l4proto . th dport timeout 5m } accept",
                "update @translated { ip daddr . meta l4proto . th dport } accept",
            ],
            "{s}"
        );
        // Without a policy there is nothing isolated to look up.
        let none = nft_script(&pools(), true, false, 6784);
        assert!(!none.contains("@isolated"), "{none}");
        assert!(none.contains("add rule ip weft raw_pods icmp type {"));
        assert!(none.contains("add rule ip weft raw_pods notrack"));
        // The NAT chain learns the client socket of a DNAT'd connection between pods from
        // its first packet and marks it for the fast path's egress program, before the
        // masquerade; UDP sockets (a DNS query each) expire sooner than TCP and SCTP ones.
        assert_eq!(
            rules("postrouting"),
            [
                "ct status dnat ip saddr 10.32.0.0/12 ip daddr 10.32.0.0/12 meta l4proto udp update @translated { ip saddr . meta l4proto . th sport timeout 5m } meta mark set meta mark or 0x01000000",
                "ct status dnat ip saddr 10.32.0.0/12 ip daddr 10.32.0.0/12 meta l4proto { tcp, sctp } update @translated { ip saddr . meta l4proto . th sport } meta mark set meta mark or 0x01000000",
                "ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 masquerade",
            ],
            "{s}"
        );
        // No rule of weft's at `forward` (every forwarded packet would pass it); an old
        // agent's chain there is deleted.
        assert!(!s.contains("add rule ip weft forward"), "{s}");
        assert!(s.contains("flush chain ip weft forward\ndelete chain ip weft forward\n"));
        assert!(s.contains("icmpv6 type { destination-unreachable, packet-too-big"));
    }

    #[test]
    fn without_nat_or_policy_or_pools_of_a_family_its_table_is_deleted() {
        let off = nft_script(&pools(), false, false, 6784);
        assert!(off.contains("delete table ip weft") && off.contains("delete table ip6 weft"));
        assert!(!off.contains("hook"), "{off}");
        // A policy keeps the table (and its notrack exemptions), without masquerade.
        let pol = nft_script(&pools(), false, true, 6784);
        assert!(!pol.contains("delete table"), "{pol}");
        assert!(pol.contains("ip saddr @isolated accept"));
        assert!(!pol.contains("masquerade"), "{pol}");
        let v4only = nft_script(&pools()[..1], true, false, 6784);
        assert!(v4only.contains("delete table ip6 weft"));
        assert!(!v4only.contains("delete table ip weft"));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A table as conntrack lists it (what `/proc/net/nf_conntrack` would show first).
    fn ct() -> Vec<Conn> {
        let (c2, c3, c4, c7) = (
            ip("10.32.0.2"),
            ip("10.32.0.3"),
            ip("10.32.0.4"),
            ip("10.32.0.7"),
        );
        let host = ip("172.30.1.2");
        vec![
            // A Service VIP DNAT'd to a pod, TCP and UDP (not answered yet).
            (
                6,
                (c2, ip("10.96.0.10"), 40000, 80),
                (ip("10.32.1.5"), c2, 80, 40000),
            ),
            (
                17,
                (c3, ip("10.96.0.53"), 5353, 53),
                (ip("10.32.1.9"), c3, 53, 5353),
            ),
            // Masqueraded only.
            (
                6,
                (c2, ip("1.1.1.1"), 41000, 443),
                (ip("1.1.1.1"), ip("172.30.1.1"), 443, 41000),
            ),
            // A hostPort reached from a host (the client is outside the pools).
            (
                6,
                (host, ip("172.30.1.1"), 50000, 8080),
                (c7, host, 80, 50000),
            ),
            // ICMP, DNAT'd.
            (1, (c2, ip("10.96.0.10"), 0, 0), (ip("10.32.1.5"), c2, 0, 0)),
            (
                6,
                (ip("fd32::2"), ip("fd96::10"), 40001, 80),
                (ip("fd32:0:0:1::5"), ip("fd32::2"), 80, 40001),
            ),
            // Plain pod to pod.
            (
                6,
                (c4, ip("10.32.1.4"), 45000, 80),
                (ip("10.32.1.4"), c4, 80, 45000),
            ),
        ]
    }

    #[test]
    fn tracked_connections_are_read_by_their_original_tuple() {
        let a: IpAddr = "10.32.0.4".parse().unwrap();
        let got = tracked(&ct(), |x| x == a);
        assert_eq!(
            got,
            vec![Tracked {
                proto: 6,
                src: a,
                dst: ip("10.32.1.4"),
                sport: 45000,
                dport: 80,
                to: ip("10.32.1.4"),
                to_port: 80,
            }]
        );
        // ICMP is skipped; every TCP/UDP connection is taken, by source or destination.
        assert_eq!(tracked(&ct(), |_| true).len(), 6);
        assert_eq!(tracked(&ct(), |x| x == ip("10.32.1.4")), got);
        // A hostPort's backend is found by its address after DNAT, and judged there.
        let hp = tracked(&ct(), |x| x == ip("10.32.0.7"));
        assert_eq!(hp.len(), 1);
        assert_eq!((hp[0].dst, hp[0].dport), (ip("172.30.1.1"), 8080));
        assert_eq!((hp[0].to, hp[0].to_port), (ip("10.32.0.7"), 80));
    }

    #[test]
    fn translated_clients_are_dnatd_connections_from_pool_addresses() {
        let got = translated_clients(&ct(), &pools());
        assert_eq!(
            got,
            vec![
                ("10.32.0.2".parse().unwrap(), 6, 40000),
                ("10.32.0.3".parse().unwrap(), 17, 5353),
                ("fd32::2".parse().unwrap(), 6, 40001),
            ]
        );
        // Masqueraded only (to 1.1.1.1), from outside the pools (a hostPort reached by a
        // host), ICMP, and a plain pod-to-pod connection are not translated clients.
    }

    #[test]
    fn the_refresh_enters_sockets_of_connections_translated_to_pods() {
        let mut conns = ct();
        // A Service whose backend is on the host network: tracked anyway (not between
        // pools), so the set's rule never learns it and the refresh leaves it out.
        conns.push((
            6,
            (ip("10.32.0.5"), ip("10.96.0.1"), 42000, 443),
            (ip("172.30.1.1"), ip("10.32.0.5"), 6443, 42000),
        ));
        let want: Vec<Socket> = vec![
            (ip("10.32.0.2"), 6, 40000),
            (ip("10.32.0.3"), 17, 5353),
            (ip("fd32::2"), 6, 40001),
        ];
        assert_eq!(refresh_sockets(&conns, &pools(), true, false), want);
        // With a policy but no NAT the tables exist too; with neither they do not.
        assert_eq!(refresh_sockets(&conns, &pools(), false, true), want);
        assert!(refresh_sockets(&conns, &pools(), false, false).is_empty());
        // A family without pools has no table and gets nothing.
        let v4: Vec<IpNet> = vec!["10.32.0.0/12".parse().unwrap()];
        assert_eq!(refresh_sockets(&conns, &v4, true, false), want[..2]);
        // Nothing translated, nothing to enter.
        assert!(refresh_sockets(&conns[2..4], &pools(), true, false).is_empty());
    }

    #[test]
    fn the_refresh_gives_each_socket_the_timeout_its_rule_gives() {
        assert_eq!(translated_timeout_secs(17), 300);
        assert_eq!(translated_timeout_secs(6), 600);
        assert_eq!(translated_timeout_secs(132), 600);
        // The same durations as the rules and the set declare.
        assert_eq!(
            TRANSLATED_TIMEOUT,
            format!("{}m", TRANSLATED_TIMEOUT_SECS / 60)
        );
        assert_eq!(
            TRANSLATED_UDP_TIMEOUT,
            format!("{}m", TRANSLATED_UDP_TIMEOUT_SECS / 60)
        );
    }

    #[test]
    fn a_port_only_dnat_is_translated_too() {
        let (a, b) = (ip("10.32.0.2"), ip("10.32.1.4"));
        let ct = [(6, (a, b, 1, 8080), (b, a, 80, 1))];
        assert_eq!(
            translated_clients(&ct, &pools()),
            vec![("10.32.0.2".parse().unwrap(), 6, 1)]
        );
    }
}
