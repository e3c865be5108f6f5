//! Published ports (`docker run -p`): the mappings of a portmap, conflicts between
//! endpoints, and the `inet weft_docker` table that DNATs them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The key of the port map in `Join` and `ProgramExternalConnectivity` options.
pub const PORTMAP: &str = "com.docker.network.portmap";

/// weft's table of published ports.
pub const TABLE: &str = "weft_docker";

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mapping {
    /// The protocol.
    pub proto: Proto,
    /// Only this host address (`-p ADDR:HOSTPORT:PORT`); `None`: every address of the host.
    pub host_ip: Option<IpAddr>,
    /// The host's port.
    pub host_port: u16,
    /// The container's port.
    pub port: u16,
}

impl std::fmt::Display for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(ip) if ip.is_ipv6() => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(f, "{}/{}", self.host_port, self.proto.name())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Raw {
    proto: u8,
    #[serde(default, rename = "HostIP")]
    host_ip: String,
    port: u16,
    host_port: u16,
    #[serde(default)]
    host_port_end: u16,
}

/// The mappings of a call's options (none when it has no port map).
pub fn from_options(
    options: Option<&serde_json::Map<String, Value>>,
) -> Result<Vec<Mapping>, String> {
    let Some(list) = options.and_then(|o| o.get(PORTMAP)) else {
        return Ok(Vec::new());
    };
    if list.is_null() {
        return Ok(Vec::new());
    }
    let raw: Vec<Raw> = serde_json::from_value(list.clone())
        .map_err(|e| format!("weft: cannot read the port map: {e}"))?;
    let mut out = Vec::new();
    for r in raw {
        let proto = match r.proto {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            132 => Proto::Sctp,
            p => return Err(format!("weft: cannot publish protocol number {p}")),
        };
        if r.host_port == 0 {
            return Err(format!(
                "weft: publish port {}/{} on a chosen host port (-p HOSTPORT:{}): weft does not pick host ports",
                r.port,
                proto.name(),
                r.port
            ));
        }
        if r.host_port_end != 0 && r.host_port_end != r.host_port {
            return Err(format!(
                "weft: host port ranges are not supported ({}-{}): give one host port per container port",
                r.host_port, r.host_port_end
            ));
        }
        let host_ip = match r.host_ip.as_str() {
            "" | "0.0.0.0" | "::" => None,
            s => Some(
                s.parse()
                    .map_err(|_| format!("weft: {s:?} is not a host address"))?,
            ),
        };
        let m = Mapping {
            proto,
            host_ip,
            host_port: r.host_port,
            port: r.port,
        };
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// True if two mappings take the same host port of some address.
fn overlaps(a: &Mapping, b: &Mapping) -> bool {
    a.proto == b.proto
        && a.host_port == b.host_port
        && match (a.host_ip, b.host_ip) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

/// The first of `new` that another endpoint of `published` holds already: the message to
/// refuse it with.
pub fn conflict(
    endpoint: &str,
    new: &[Mapping],
    published: &BTreeMap<String, (Vec<IpAddr>, Vec<Mapping>)>,
) -> Option<String> {
    for m in new {
        for (other, (_, theirs)) in published {
            if other != endpoint && theirs.iter().any(|t| overlaps(m, t)) {
                return Some(format!(
                    "weft: host port {m} is already published by endpoint {}",
                    crate::endpoint::short(other)
                ));
            }
        }
    }
    None
}

/// The whole `inet weft_docker` table for every endpoint's (addresses, mappings): DNAT
/// at prerouting (connections from elsewhere) and output (from the host itself) of the
/// host's own addresses to the container's address of the same family. Replaces what
/// was there in one transaction; with nothing published the table goes.
pub fn script(published: &BTreeMap<String, (Vec<IpAddr>, Vec<Mapping>)>) -> String {
    let mut rules = String::new();
    for (endpoint, (addrs, maps)) in published {
        for m in maps {
            for v6 in [false, true] {
                if m.host_ip.is_some_and(|h| h.is_ipv6() != v6) {
                    continue;
                }
                let Some(to) = addrs.iter().find(|a| a.is_ipv6() == v6) else {
                    continue;
                };
                let (fam, l3) = if v6 { ("ipv6", "ip6") } else { ("ipv4", "ip") };
                let dst = match m.host_ip {
                    Some(h) => format!("{l3} daddr {h}"),
                    None => "fib daddr type local".to_string(),
                };
                let target = if v6 {
                    format!("[{to}]:{}", m.port)
                } else {
                    format!("{to}:{}", m.port)
                };
                let _ = writeln!(
                    rules,
                    "    meta nfproto {fam} {dst} {} dport {} dnat {l3} to {target} comment \"{}\"",
                    m.proto.name(),
                    m.host_port,
                    crate::endpoint::short(endpoint)
                );
            }
        }
    }
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    if rules.is_empty() {
        return s;
    }
    let _ = write!(
        s,
        "table inet {TABLE} {{\n  comment \"weft: ports Docker containers publish (-p)\"\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n{rules}  }}\n}}\n"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(json: &str) -> serde_json::Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn portmaps_read_as_docker_sends_them() {
        let o = opts(
            r#"{"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},{"Proto":17,"IP":"","Port":53,"HostIP":"10.0.0.2","HostPort":5353,"HostPortEnd":5353}]}"#,
        );
        let m = from_options(Some(&o)).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].to_string(), "8080/tcp");
        assert_eq!(m[1].to_string(), "10.0.0.2:5353/udp");
        assert!(from_options(None).unwrap().is_empty());
        let e = from_options(Some(&opts(
            r#"{"com.docker.network.portmap":[{"Proto":6,"Port":80,"HostPort":0}]}"#,
        )))
        .unwrap_err();
        assert!(e.contains("-p HOSTPORT:80"), "{e}");
    }

    #[test]
    fn a_host_port_is_published_once() {
        let m = |ip: Option<&str>, hp| Mapping {
            proto: Proto::Tcp,
            host_ip: ip.map(|s| s.parse().unwrap()),
            host_port: hp,
            port: 80,
        };
        let mut p = BTreeMap::new();
        p.insert("aaaa".to_string(), (vec![], vec![m(None, 8080)]));
        assert!(conflict("bbbb", &[m(None, 8080)], &p).is_some());
        assert!(conflict("bbbb", &[m(Some("10.0.0.2"), 8080)], &p).is_some());
        assert!(conflict("bbbb", &[m(None, 8081)], &p).is_none());
        assert!(conflict("aaaa", &[m(None, 8080)], &p).is_none());
    }

    #[test]
    fn the_table_dnats_each_family_to_its_address() {
        let mut p = BTreeMap::new();
        assert!(!script(&p).contains("chain"));
        p.insert(
            "eafec8a3e4d1ffd9".to_string(),
            (
                vec!["10.32.0.5".parse().unwrap(), "fd77::5".parse().unwrap()],
                vec![Mapping {
                    proto: Proto::Tcp,
                    host_ip: None,
                    host_port: 8080,
                    port: 80,
                }],
            ),
        );
        let s = script(&p);
        assert!(
            s.contains(
                "meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.32.0.5:80"
            ),
            "{s}"
        );
        assert!(s.contains("dnat ip6 to [fd77::5]:80"), "{s}");
        assert_eq!(s.matches("dnat").count(), 4, "{s}");
    }
}
