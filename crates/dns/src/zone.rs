//! The zone: every name the server answers for, built whole from the names of live
//! owners (docs/dns.md, "Names and where they live"). Names are kept in lower case,
//! without the final dot; lookups take names in that form.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;

/// The default cluster domain.
pub const DEFAULT_DOMAIN: &str = "weft.local";
/// The default TTL of answers (and of negative answers), in seconds.
pub const DEFAULT_TTL: u32 = 5;

/// What the zone serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The cluster domain, lower case, no final dot.
    pub domain: String,
    /// TTL of every answer, seconds.
    pub ttl: u32,
    /// The pools: their reverse zones are answered here (unknown addresses NXDOMAIN).
    pub reverse: Vec<IpNet>,
}

impl Config {
    /// A config for `domain` (checked: DNS labels; case and a final dot are dropped).
    pub fn new(domain: &str, ttl: u32, reverse: Vec<IpNet>) -> Result<Config, String> {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        if d.is_empty() || d.len() > 200 || !d.split('.').all(valid_label) {
            return Err(format!(
                "{domain:?} is not a domain: labels of 1 to 63 letters, digits, '-' or '_', 200 characters at most"
            ));
        }
        Ok(Config {
            domain: d,
            ttl,
            reverse,
        })
    }
}

/// Where a name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A container's attachment (an endpoint record).
    Endpoint,
    /// `weft dns add`.
    Added,
}

/// One source of names: an endpoint or a name added by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its name (relative to the domain; for an endpoint, the container's name).
    pub name: String,
    /// An endpoint's namespace (its names get `NAME.NAMESPACE.DOMAIN` too).
    pub namespace: Option<String>,
    /// More names (network aliases), like `name`.
    pub aliases: Vec<String>,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
    /// The node that holds it (for listings).
    pub node: String,
    /// Endpoint or added.
    pub kind: Kind,
}

/// A name as `weft dns list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Listed {
    /// The full name.
    pub name: String,
    /// Its addresses (from this source).
    pub addrs: Vec<IpAddr>,
    /// The node that holds it.
    pub node: String,
    /// Endpoint or added.
    pub kind: Kind,
}

/// The result of looking a name up in the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The name has these addresses.
    Found(&'a [IpAddr]),
    /// The name has no records but names below it (an empty non-terminal), or is the
    /// domain itself.
    Empty,
    /// No such name.
    Missing,
}

/// What a reverse (`in-addr.arpa`, `ip6.arpa`) name means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reverse {
    /// A whole address.
    Addr(IpAddr),
    /// Only a prefix of one (fewer labels).
    Prefix(IpNet),
}

/// Every name the server answers, with reverse entries.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    cfg: Option<Config>,
    names: HashMap<String, Vec<IpAddr>>,
    nonterminal: HashSet<String>,
    ptr: HashMap<IpAddr, Vec<String>>,
    listed: Vec<Listed>,
}

/// A DNS label as weft accepts in names: 1-63 of letters, digits, `-`, `_`.
pub fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A name relative to `domain` (`web`, `web.team`, or the same ending in the domain,
/// with or without the final dot), in lower case; None when it is not a name in it.
pub fn relative(domain: &str, name: &str) -> Option<String> {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    let rel = match n.strip_suffix(domain) {
        Some(r) if r.ends_with('.') => r.trim_end_matches('.').to_string(),
        Some("") => return None,
        _ => n,
    };
    (!rel.is_empty() && rel.len() + 1 + domain.len() <= 253 && rel.split('.').all(valid_label))
        .then_some(rel)
}

impl Zone {
    /// Builds the zone of `sources`. Names that are not DNS names are left out.
    pub fn build(cfg: Config, sources: &[Source]) -> Zone {
        let mut names: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        let mut ptr: HashMap<IpAddr, BTreeSet<String>> = HashMap::new();
        let mut listed = Vec::new();
        let d = cfg.domain.clone();
        for s in sources {
            let mut rels: Vec<String> = Vec::new();
            for n in std::iter::once(&s.name).chain(&s.aliases) {
                let Some(n) = relative(&d, n) else { continue };
                if let Some(ns) = &s.namespace {
                    if let Some(full) = relative(&d, &format!("{n}.{ns}")) {
                        rels.push(full);
                    }
                }
                rels.push(n);
            }
            // The reverse name: the most specific name of its first name.
            let primary = rels.first().map(|r| format!("{r}.{d}"));
            for r in &rels {
                let full = format!("{r}.{d}");
                names.entry(full.clone()).or_default().extend(&s.addrs);
                listed.push(Listed {
                    name: full,
                    addrs: s.addrs.clone(),
                    node: s.node.clone(),
                    kind: s.kind,
                });
            }
            if let Some(p) = primary {
                for a in &s.addrs {
                    ptr.entry(*a).or_default().insert(p.clone());
                }
            }
        }
        let mut nonterminal = HashSet::new();
        for n in names.keys() {
            let mut rest = n.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if parent.len() < d.len() {
                    break;
                }
                nonterminal.insert(parent.to_string());
                rest = parent;
            }
        }
        nonterminal.insert(d);
        listed.sort();
        Zone {
            cfg: Some(cfg),
            names: names
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect(),
            nonterminal,
            ptr: ptr
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect(),
            listed,
        }
    }

    /// The config it was built with.
    pub fn config(&self) -> Option<&Config> {
        self.cfg.as_ref()
    }

    /// The domain ("" for an empty zone).
    pub fn domain(&self) -> &str {
        self.cfg.as_ref().map_or("", |c| c.domain.as_str())
    }

    /// The TTL of answers.
    pub fn ttl(&self) -> u32 {
        self.cfg.as_ref().map_or(DEFAULT_TTL, |c| c.ttl)
    }

    /// Whether `name` (lower case, no final dot) is the domain or below it.
    pub fn in_domain(&self, name: &str) -> bool {
        let d = self.domain();
        !d.is_empty()
            && (name == d
                || name
                    .strip_suffix(d)
                    .is_some_and(|r| r.ends_with('.') && r.len() > 1))
    }

    /// Looks `name` (lower case, no final dot, in the domain) up.
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        if let Some(a) = self.names.get(name) {
            return Lookup::Found(a);
        }
        if self.nonterminal.contains(name) {
            return Lookup::Empty;
        }
        Lookup::Missing
    }

    /// The names that hold `ip` (for PTR).
    pub fn ptr(&self, ip: IpAddr) -> &[String] {
        self.ptr.get(&ip).map_or(&[], Vec::as_slice)
    }

    /// The reverse zone (its apex name) of the pool holding `net`, if any.
    pub fn reverse_zone(&self, net: IpNet) -> Option<String> {
        let cfg = self.cfg.as_ref()?;
        cfg.reverse.iter().find_map(|p| {
            let apex = reverse_apex(*p);
            (apex.prefix_len() <= net.prefix_len() && apex.contains(&net.network()))
                .then(|| reverse_name(apex))
        })
    }

    /// Every name with its addresses, node and kind, sorted (for `weft dns list`).
    pub fn listed(&self) -> &[Listed] {
        &self.listed
    }

    /// The number of distinct names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether it has no names.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The largest prefix of `net` at a label boundary of its reverse tree (octets for IPv4,
/// nibbles for IPv6): the apex of its reverse zone.
pub fn reverse_apex(net: IpNet) -> IpNet {
    let step = if net.addr().is_ipv4() { 8 } else { 4 };
    let len = net.prefix_len() / step * step;
    IpNet::new(net.addr(), len).map_or(net, |n| n.trunc())
}

/// The reverse name of a prefix at a label boundary (`2.1.10.in-addr.arpa`), or of a
/// whole address.
pub fn reverse_name(net: IpNet) -> String {
    match net.addr() {
        IpAddr::V4(a) => {
            let n = usize::from(net.prefix_len() / 8);
            let mut labels: Vec<String> = a.octets()[..n].iter().map(u8::to_string).collect();
            labels.reverse();
            labels.push("in-addr.arpa".into());
            labels.join(".")
        }
        IpAddr::V6(a) => {
            let n = usize::from(net.prefix_len() / 4);
            let nibbles: Vec<String> = a
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 15])
                .take(n)
                .map(|x| format!("{x:x}"))
                .collect();
            let mut labels = nibbles;
            labels.reverse();
            labels.push("ip6.arpa".into());
            labels.join(".")
        }
    }
}

/// Parses a reverse name (lower case, no final dot); None when it is not one.
pub fn parse_reverse(name: &str) -> Option<Reverse> {
    if let Some(rest) = name.strip_suffix("in-addr.arpa") {
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        let mut octets: Vec<u8> = Vec::new();
        if !rest.is_empty() {
            for l in rest.split('.').rev() {
                if l.is_empty() || l.len() > 3 || (l.len() > 1 && l.starts_with('0')) {
                    return None;
                }
                octets.push(l.parse().ok()?);
            }
        }
        if octets.len() > 4 {
            return None;
        }
        let len = octets.len();
        octets.resize(4, 0);
        let a = Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]);
        return Some(if len == 4 {
            Reverse::Addr(a.into())
        } else {
            Reverse::Prefix(IpNet::new(a.into(), (len * 8) as u8).ok()?)
        });
    }
    if let Some(rest) = name.strip_suffix("ip6.arpa") {
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        let mut nibbles: Vec<u8> = Vec::new();
        if !rest.is_empty() {
            for l in rest.split('.').rev() {
                if l.len() != 1 {
                    return None;
                }
                nibbles.push(u8::from_str_radix(l, 16).ok()?);
            }
        }
        if nibbles.len() > 32 {
            return None;
        }
        let len = nibbles.len();
        nibbles.resize(32, 0);
        let mut o = [0u8; 16];
        for (i, b) in o.iter_mut().enumerate() {
            *b = (nibbles[2 * i] << 4) | nibbles[2 * i + 1];
        }
        let a = Ipv6Addr::from(o);
        return Some(if len == 32 {
            Reverse::Addr(a.into())
        } else {
            Reverse::Prefix(IpNet::new(a.into(), (len * 4) as u8).ok()?)
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::new("Weft.Local.", 5, vec!["10.32.0.0/12".parse().unwrap()]).unwrap()
    }

    fn ep(name: &str, ns: &str, addrs: &[&str]) -> Source {
        Source {
            name: name.into(),
            namespace: Some(ns.into()),
            aliases: vec![],
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            node: "h1".into(),
            kind: Kind::Endpoint,
        }
    }

    #[test]
    fn an_endpoint_has_its_name_its_namespaced_name_and_aliases() {
        let mut s = ep("Web", "team", &["10.32.0.5", "fd00::5"]);
        s.aliases = vec!["front".into()];
        let z = Zone::build(cfg(), &[s]);
        assert_eq!(z.domain(), "weft.local");
        for n in [
            "web.weft.local",
            "web.team.weft.local",
            "front.weft.local",
            "front.team.weft.local",
        ] {
            assert!(
                matches!(z.lookup(n), Lookup::Found(a) if a.len() == 2),
                "{n}"
            );
        }
        assert_eq!(z.lookup("team.weft.local"), Lookup::Empty);
        assert_eq!(z.lookup("weft.local"), Lookup::Empty);
        assert_eq!(z.lookup("nope.weft.local"), Lookup::Missing);
        assert_eq!(
            z.ptr("10.32.0.5".parse().unwrap()),
            ["web.team.weft.local".to_string()]
        );
    }

    #[test]
    fn one_name_on_two_hosts_gives_both_addresses_and_bad_names_none() {
        let z = Zone::build(
            cfg(),
            &[
                ep("web", "default", &["10.32.0.5"]),
                ep("web", "default", &["10.32.1.5"]),
                ep(&"f".repeat(64), "default", &["10.32.1.6"]),
                ep("a b", "default", &["10.32.1.7"]),
            ],
        );
        assert!(matches!(z.lookup("web.weft.local"), Lookup::Found(a) if a.len() == 2));
        assert_eq!(z.len(), 2);
        assert!(z.ptr("10.32.1.6".parse().unwrap()).is_empty());
    }

    #[test]
    fn names_relative_to_the_domain() {
        assert_eq!(relative("weft.local", "Db"), Some("db".into()));
        assert_eq!(relative("weft.local", "db.weft.local."), Some("db".into()));
        assert_eq!(
            relative("weft.local", "x.db.WEFT.local"),
            Some("x.db".into())
        );
        assert_eq!(relative("weft.local", "weft.local"), None);
        assert_eq!(relative("weft.local", "a..b"), None);
        assert_eq!(relative("weft.local", ""), None);
        assert!(Config::new("bad domain", 5, vec![]).is_err());
    }

    #[test]
    fn in_domain_needs_a_label_boundary() {
        let z = Zone::build(cfg(), &[]);
        assert!(z.in_domain("weft.local"));
        assert!(z.in_domain("a.weft.local"));
        assert!(!z.in_domain("aweft.local"));
        assert!(!z.in_domain("local"));
    }

    #[test]
    fn reverse_names_both_ways() {
        let v4: IpAddr = "10.32.1.5".parse().unwrap();
        let v6: IpAddr = "fd00::1:5".parse().unwrap();
        for a in [v4, v6] {
            let n = reverse_name(IpNet::from(a));
            assert_eq!(parse_reverse(&n), Some(Reverse::Addr(a)), "{n}");
        }
        assert_eq!(reverse_name(IpNet::from(v4)), "5.1.32.10.in-addr.arpa");
        assert_eq!(
            parse_reverse("32.10.in-addr.arpa"),
            Some(Reverse::Prefix("10.32.0.0/16".parse().unwrap()))
        );
        assert_eq!(parse_reverse("300.1.2.3.in-addr.arpa"), None);
        assert_eq!(parse_reverse("01.1.2.3.in-addr.arpa"), None);
        assert_eq!(parse_reverse("example.com"), None);
        assert_eq!(
            reverse_apex("10.32.0.0/12".parse().unwrap()),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        let z = Zone::build(cfg(), &[]);
        assert_eq!(
            z.reverse_zone(IpNet::from(v4)),
            Some("10.in-addr.arpa".to_string())
        );
        assert_eq!(z.reverse_zone("192.168.0.1/32".parse().unwrap()), None);
    }

    proptest::proptest! {
        #[test]
        fn reverse_names_round_trip(a: u32, b: u128, l4 in 0u8..=4, l6 in 0u8..=32) {
            let n4 = IpNet::new(Ipv4Addr::from(a).into(), l4 * 8).unwrap().trunc();
            let n6 = IpNet::new(Ipv6Addr::from(b).into(), l6 * 4).unwrap().trunc();
            for n in [n4, n6] {
                let full = n.prefix_len() == n.max_prefix_len();
                let want = if full { Reverse::Addr(n.addr()) } else { Reverse::Prefix(n) };
                proptest::prop_assert_eq!(parse_reverse(&reverse_name(n)), Some(want));
            }
        }
    }
}
