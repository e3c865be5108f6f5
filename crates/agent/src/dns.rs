//! The name service on this host (docs/dns.md): the owner task's part. It keeps the zone
//! of every live owner's names (`ep/` records and `dns/` names added by hand) up to the
//! mesh, hands it to the server thread (`dns_server.rs`) through a shared pointer, writes
//! the names `weft dns add` and `remove` ask for, and makes the server's address local
//! (a `local` route of weft's own).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use ipnet::IpNet;
use serde::Deserialize;
use weft_dns::records::{self as dns_records, Added};
use weft_dns::{Kind, Source, Zone};
use weft_mesh::{NodeId, Status};
use weft_policy::records::{EndpointValue, EP_PREFIX};

use crate::api::error_json;
use crate::config::DnsConfig;
use crate::Agent;

/// The zone the server answers from: replaced whole by the owner task.
pub(crate) type SharedZone = Arc<RwLock<Arc<Zone>>>;

/// The name service's state in the owner task.
#[derive(Default)]
pub(crate) struct DnsState {
    pub(crate) zone: SharedZone,
    /// The server's last error (bind, link), for `weft status`; written by the server.
    pub(crate) error: Arc<Mutex<Option<String>>>,
    /// What the zone was built from: the mesh digest and the live owners.
    built: Option<(u64, BTreeSet<NodeId>)>,
    /// Each live owner's names, at the version they were read.
    owners: BTreeMap<NodeId, (u64, Vec<Source>)>,
}

/// The body of `POST /dns/add` and `/dns/remove`.
#[derive(Deserialize)]
struct Change {
    name: String,
    #[serde(default)]
    addrs: Vec<IpAddr>,
}

impl Agent {
    /// Starts the name service if configured: the link and address, then the server.
    pub(crate) fn dns_start(&mut self) {
        let Some(cfg) = self.cfg.dns.clone() else {
            return;
        };
        if let Err(e) = ensure_address(&cfg) {
            tracing::warn!(target: "weft::dns", error = %e, "{e}");
            *self.dns.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
        // The zone first: the server never answers from an empty one.
        self.dns_rebuild();
        crate::dns_server::spawn(cfg, self.dns.zone.clone(), self.dns.error.clone());
    }

    /// The zone's config: the domain, TTL and the pools' reverse zones.
    fn dns_zone_config(&self, cfg: &DnsConfig) -> weft_dns::Config {
        let pools: Vec<IpNet> = self.cfg.ipam.space.pools.clone();
        weft_dns::Config {
            domain: cfg.domain.clone(),
            ttl: cfg.ttl,
            reverse: pools,
        }
    }

    /// Rebuilds the zone when the mesh or the set of live owners changed (at the end of a
    /// turn: [`Agent::dns_refresh`] asks for it).
    pub(crate) fn dns_rebuild(&mut self) {
        let Some(cfg) = self.cfg.dns.clone() else {
            return;
        };
        let digest = self.node.digest();
        let store = self.node.store();
        let live: BTreeSet<NodeId> = store
            .owners()
            .filter(|o| **o == self.id || self.node.status(o) == Status::Up)
            .copied()
            .collect();
        if self
            .dns
            .built
            .as_ref()
            .is_some_and(|(d, l)| *d == digest && *l == live)
        {
            return;
        }
        self.dns.owners.retain(|o, _| live.contains(o));
        for o in &live {
            let version = store.version(o).unwrap_or(0);
            if self.dns.owners.get(o).is_some_and(|(v, _)| *v == version) {
                continue;
            }
            let node = self.name_of(o).unwrap_or_else(|| o.to_string());
            let mut sources = Vec::new();
            for (_, v) in store.live_with_prefix(o, EP_PREFIX) {
                if let Ok(e) = serde_json::from_slice::<EndpointValue>(v) {
                    sources.push(Source {
                        name: e.name,
                        namespace: Some(e.namespace),
                        aliases: e.aliases,
                        addrs: e.addrs,
                        node: node.clone(),
                        kind: Kind::Endpoint,
                    });
                }
            }
            for (k, v) in store.live_with_prefix(o, dns_records::DNS_PREFIX) {
                if let Some(a) = Added::decode(v) {
                    sources.push(Source {
                        name: k[dns_records::DNS_PREFIX.len()..].to_string(),
                        namespace: None,
                        aliases: Vec::new(),
                        addrs: a.addrs,
                        node: node.clone(),
                        kind: Kind::Added,
                    });
                }
            }
            self.dns.owners.insert(*o, (version, sources));
        }
        let all: Vec<Source> = self
            .dns
            .owners
            .values()
            .flat_map(|(_, s)| s.iter().cloned())
            .collect();
        let zone = Zone::build(self.dns_zone_config(&cfg), &all);
        *self.dns.zone.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(zone);
        self.dns.built = Some((digest, live));
    }

    /// What containers put in their resolv.conf, for the CNI result (None: no DNS).
    pub(crate) fn dns_result(&self, namespace: &str) -> Option<serde_json::Value> {
        let cfg = self.cfg.dns.as_ref()?;
        Some(serde_json::json!({
            "nameservers": [cfg.addr.to_string()],
            "search": [format!("{namespace}.{}", cfg.domain), cfg.domain.clone()],
        }))
    }

    /// `POST /dns/add` (`remove` false) and `/dns/remove`: changes this node's record of
    /// an added name. Removing a name another node added is refused with who holds it.
    pub(crate) fn dns_change(&mut self, body: &str, remove: bool) -> (u16, String) {
        let Some(cfg) = self.cfg.dns.clone() else {
            return (
                409,
                error_json("the name service is off on this host (agent --dns off)"),
            );
        };
        let c: Change = match serde_json::from_str(body) {
            Ok(c) => c,
            Err(e) => return (400, error_json(&format!("bad request: {e}"))),
        };
        let Some(rel) = weft_dns::zone::relative(&cfg.domain, &c.name) else {
            return (
                400,
                error_json(&format!(
                    "{:?} is not a name in {}: labels of 1 to 63 letters, digits, '-' or '_'",
                    c.name, cfg.domain
                )),
            );
        };
        if !remove && c.addrs.is_empty() {
            return (400, error_json("give at least one address"));
        }
        let key = dns_records::name_key(&rel);
        let old = self
            .node
            .store()
            .get(&self.id, &key)
            .flatten()
            .and_then(Added::decode);
        if remove && old.is_none() {
            let elsewhere: Vec<String> = self
                .dns
                .zone
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .listed()
                .iter()
                .filter(|l| l.kind == Kind::Added && l.name == format!("{rel}.{}", cfg.domain))
                .map(|l| l.node.clone())
                .collect();
            let msg = if elsewhere.is_empty() {
                format!("no name {rel}.{} was added on this host", cfg.domain)
            } else {
                format!(
                    "{rel}.{} was added on {}: remove it there",
                    cfg.domain,
                    elsewhere.join(", ")
                )
            };
            return (404, error_json(&msg));
        }
        let old = old.unwrap_or_default();
        let new = if remove {
            old.change(&[], &c.addrs, c.addrs.is_empty())
        } else {
            old.change(&c.addrs, &[], false)
        };
        let now = self.now();
        let outs = self
            .node
            .set_local(&key, new.as_ref().map(Added::encode), now);
        self.perform(outs);
        self.save();
        self.dns_refresh();
        let name = format!("{rel}.{}", cfg.domain);
        (
            200,
            serde_json::json!({
                "name": name,
                "addrs": new.map(|n| n.addrs).unwrap_or_default(),
            })
            .to_string(),
        )
    }

    /// `GET /dns`: every name the server answers, and the server's state.
    pub(crate) fn dns_list(&self) -> (u16, String) {
        let Some(cfg) = &self.cfg.dns else {
            return (
                409,
                error_json("the name service is off on this host (agent --dns off)"),
            );
        };
        let zone = self
            .dns
            .zone
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let error = self
            .dns
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (
            200,
            serde_json::json!({
                "domain": cfg.domain,
                "addr": cfg.addr,
                "ttl": cfg.ttl,
                "error": error,
                "names": zone.listed(),
            })
            .to_string(),
        )
    }
}

/// Makes the server's address local to this host: a route of type `local` through `lo`
/// in the local table, with weft's route protocol (no link is needed or changed; these
/// kernels have no dummy links).
fn ensure_address(cfg: &DnsConfig) -> Result<(), String> {
    let mut nl = weft_netlink::Netlink::open().map_err(|e| format!("dns: netlink: {e}"))?;
    let lo = nl
        .link_by_name("lo")
        .map_err(|e| format!("dns: {e}"))?
        .ok_or("dns: this network namespace has no lo")?;
    nl.add_local_route(cfg.addr, lo.index, weft_netlink::WEFT_ROUTE_PROTOCOL)
        .map_err(|e| format!("dns: make {} local: {e}", cfg.addr))
}
