//! Docker's network and IPAM plugin in the agent (docs/docker.md): the calls of
//! libnetwork's remote drivers, answered by the owner task from the cluster IPAM, weft's
//! endpoint records and the kernel. `weft_docker` decides the answers; `docker_link`
//! wires veths; `docker_names` reads names from dockerd after the calls.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use weft_alloc::Owner;
use weft_docker::endpoint as dep;
use weft_docker::ports::{self, Mapping};
use weft_docker::{pools, Call, EndpointCall, Iface};
use weft_policy::identity::Identity;

use crate::Agent;

/// The agent's record of Docker endpoints, in `docker.json`.
const STATE_FILE: &str = "docker.json";

/// One endpoint on this host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Endpoint {
    /// Docker's network id (this host's).
    pub network: String,
    /// Its addresses, IPv4 first.
    pub addrs: Vec<IpAddr>,
    /// The container end's MAC.
    pub mac: [u8; 6],
    /// Ports published (`-p`).
    #[serde(default)]
    pub ports: Vec<Mapping>,
    /// The container's name, once read from dockerd.
    #[serde(default)]
    pub name: Option<String>,
    /// Its network aliases.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// The plugin's state.
#[derive(Default)]
pub(crate) struct DockerState {
    /// Endpoints by id.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Counts the IPAM owners of Docker's addresses.
    next: u64,
    /// The last `weft_docker` table applied.
    ports_applied: Option<String>,
    /// When unused addresses were last looked for.
    gc_at: Option<std::time::Instant>,
}

/// How often addresses no endpoint took are looked for.
const GC_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How long an address handed to dockerd may wait for its endpoint.
const ADDRESS_GRACE_MS: u64 = 10 * 60 * 1000;

fn identity(name: &str, aliases: &[String]) -> Identity {
    Identity {
        namespace: weft_policy::identity::DEFAULT_NAMESPACE.to_string(),
        name: name.to_string(),
        labels: Default::default(),
        ports: Vec::new(),
        aliases: aliases.to_vec(),
    }
}

fn owner(endpoint_id: &str) -> Owner {
    Owner::new(dep::owner_id(endpoint_id), dep::IFNAME.to_string())
}

impl Agent {
    fn docker_state_path(&self) -> PathBuf {
        self.cfg.data_dir.join(STATE_FILE)
    }

    fn docker_save(&self) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(&self.docker.endpoints).map_err(|e| e.to_string())?;
        crate::store::write_private(&self.docker_state_path(), &text).map_err(|e| e.0)
    }

    /// At start: the endpoints of the last run, their ports published again, and names
    /// still missing asked for. Returns the plugin socket's listener.
    pub(crate) fn docker_start(
        &mut self,
    ) -> Result<Option<tokio::net::UnixListener>, crate::AgentError> {
        let Some(cfg) = self.cfg.docker.clone() else {
            return Ok(None);
        };
        let path = self.docker_state_path();
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(eps) => self.docker.endpoints = eps,
                Err(e) => {
                    return Err(crate::AgentError(format!(
                        "{} is not weft's Docker state ({e}): move it away to start without it",
                        path.display()
                    )))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::AgentError(format!("read {}: {e}", path.display()))),
        }
        if let Err(e) = self.docker_ports_apply() {
            tracing::warn!(target: "weft::docker", "docker: publish ports: {e}");
        }
        let unnamed: Vec<(String, String)> = self
            .docker
            .endpoints
            .iter()
            .filter(|(_, e)| e.name.is_none())
            .map(|(id, e)| (id.clone(), e.network.clone()))
            .collect();
        for (id, net) in unnamed {
            self.docker_learn_name(&net, &id);
        }
        let listener = crate::api::bind(&cfg.plugin)?;
        tracing::info!(
            target: "weft::docker",
            "docker: plugin {:?} on {} ({} endpoints), names from {}",
            cfg.plugin.file_stem().unwrap_or_default(),
            cfg.plugin.display(),
            self.docker.endpoints.len(),
            cfg.host.display()
        );
        Ok(Some(listener))
    }

    /// One call of Docker's plugin protocol; answered through `reply` (at once, or after
    /// the IPAM found space).
    pub(crate) fn docker_call(
        &mut self,
        path: &str,
        body: &str,
        reply: oneshot::Sender<(u16, String)>,
    ) {
        let call = match weft_docker::parse(path, body) {
            Ok(c) => c,
            Err(r) => {
                self.answer(reply, (r.status, r.body()));
                return;
            }
        };
        if let Call::RequestAddress(r) = &call {
            self.docker_request_address(r, reply);
            return;
        }
        let net = |r: Result<String, String>| match r {
            Ok(body) => (200, body),
            Err(msg) => (200, Iface::Network.error(&msg)),
        };
        let ipam = |r: Result<String, String>| match r {
            Ok(body) => (200, body),
            Err(msg) => (200, Iface::Ipam.error(&msg)),
        };
        let pool_list = self.cfg.ipam.space.pools.clone();
        let answer = match call {
            Call::Activate => (200, weft_docker::activate()),
            Call::NetworkCapabilities => (200, weft_docker::network_capabilities()),
            Call::CreateNetwork(c) => {
                net(pools::check_network(&c, &pool_list).map(|()| weft_docker::ok()))
            }
            Call::DeleteNetwork | Call::Ignored | Call::ReleasePool => (200, weft_docker::ok()),
            Call::CreateEndpoint(c) => net(self.docker_create_endpoint(&c)),
            Call::EndpointOperInfo(e) => (200, self.docker_oper_info(&e)),
            Call::DeleteEndpoint(e) => net(self.docker_delete_endpoint(&e)),
            Call::Join(e) => net(self.docker_join(&e)),
            Call::Leave(e) => net(self.docker_leave(&e)),
            Call::ProgramExternal(e) => net(self.docker_ports(&e, true)),
            Call::RevokeExternal(e) => net(self.docker_ports(&e, false)),
            Call::IpamCapabilities => (200, weft_docker::ipam_capabilities()),
            Call::DefaultAddressSpaces => (200, weft_docker::default_address_spaces()),
            Call::RequestPool(r) => ipam(pools::request_pool(&r, &pool_list)),
            Call::ReleaseAddress(r) => ipam(self.docker_release_address(&r)),
            Call::RequestAddress(_) => unreachable!("answered above"),
        };
        self.answer(reply, answer);
    }

    fn docker_request_address(
        &mut self,
        r: &weft_docker::RequestAddress,
        reply: oneshot::Sender<(u16, String)>,
    ) {
        let refuse = |msg: String| (200, Iface::Ipam.error(&msg));
        let Some(v6) = pools::pool_family(&r.pool_id) else {
            self.answer(
                reply,
                refuse(format!(
                    "weft: unknown pool {:?}: the network's IPAM driver must be weft",
                    r.pool_id
                )),
            );
            return;
        };
        if !r.address.is_empty() {
            self.answer(reply, refuse(format!(
                "weft: a chosen address ({}, --ip or --gateway) is not supported: the cluster IPAM hands out addresses so that no two hosts give the same one",
                r.address
            )));
            return;
        }
        self.docker.next += 1;
        let o = Owner::new(
            dep::address_owner(crate::policy::wall_ms(), self.docker.next),
            if v6 { "v6" } else { "v4" }.to_string(),
        );
        self.allocate_or_wait(o, identity("", &[]), Some(v6), reply);
    }

    fn docker_release_address(
        &mut self,
        r: &weft_docker::ReleaseAddress,
    ) -> Result<String, String> {
        let Some(addr) = pools::parse_address(&r.address) else {
            return Ok(weft_docker::ok());
        };
        let held = self
            .ipam
            .list()
            .into_iter()
            .find(|(a, o)| *a == addr && o.container_id.starts_with(dep::OWNER_PREFIX));
        if let Some((_, o)) = held {
            self.ipam.release(&o);
            self.save_ipam()?;
            self.ipam_step();
        }
        Ok(weft_docker::ok())
    }

    fn docker_create_endpoint(
        &mut self,
        c: &weft_docker::CreateEndpoint,
    ) -> Result<String, String> {
        if !dep::valid_id(&c.endpoint_id) {
            return Err(format!("weft: {:?} is not an endpoint id", c.endpoint_id));
        }
        let iface = c.interface.clone().unwrap_or_default();
        let mut addrs: Vec<IpAddr> = [&iface.address, &iface.address_ipv6]
            .into_iter()
            .filter_map(|a| pools::parse_address(a))
            .collect();
        addrs.sort_by_key(|a| a.is_ipv6());
        if addrs.is_empty() {
            return Err(
                "weft: the endpoint has no address: create the network with --ipam-driver weft"
                    .into(),
            );
        }
        // Bad port maps are refused now rather than at the container's start.
        ports::from_options(Some(&c.options))?;
        let user_mac = parse_mac(&iface.mac_address);
        let ep = Endpoint {
            network: c.network_id.clone(),
            addrs: addrs.clone(),
            mac: user_mac.unwrap_or_else(|| dep::mac(&c.endpoint_id)),
            ports: Vec::new(),
            name: None,
            aliases: Vec::new(),
        };
        let mac = ep.mac;
        self.docker.endpoints.insert(c.endpoint_id.clone(), ep);
        let name = dep::short(&c.endpoint_id).to_string();
        let done = self.docker_save().and_then(|()| {
            self.endpoint_add(&owner(&c.endpoint_id), &identity(&name, &[]), &addrs)
        });
        if let Err(e) = done {
            self.docker.endpoints.remove(&c.endpoint_id);
            let _ = self.docker_save();
            self.endpoint_remove(&owner(&c.endpoint_id));
            return Err(format!("weft: {e}"));
        }
        self.dns_refresh();
        // Only fields Docker left empty may be answered.
        Ok(match user_mac {
            Some(_) => weft_docker::ok(),
            None => {
                serde_json::json!({ "Interface": { "MacAddress": weft_netlink::format_mac(&mac) } })
                    .to_string()
            }
        })
    }

    fn docker_oper_info(&self, e: &EndpointCall) -> String {
        let value = match self.docker.endpoints.get(&e.endpoint_id) {
            Some(ep) => serde_json::json!({
                "weft.host_interface": dep::host_ifname(&e.endpoint_id),
                "weft.addresses": ep.addrs,
                "weft.ports": ep.ports.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            }),
            None => serde_json::json!({}),
        };
        serde_json::json!({ "Value": value }).to_string()
    }

    fn docker_delete_endpoint(&mut self, e: &EndpointCall) -> Result<String, String> {
        let _ = crate::docker_link::remove(&e.endpoint_id);
        if let Some(ep) = self.docker.endpoints.remove(&e.endpoint_id) {
            self.docker_save()?;
            self.endpoint_remove(&owner(&e.endpoint_id));
            if !ep.ports.is_empty() {
                self.docker_ports_apply()?;
            }
        }
        Ok(weft_docker::ok())
    }

    fn docker_join(&mut self, e: &EndpointCall) -> Result<String, String> {
        let ep = self.docker.endpoints.get(&e.endpoint_id).cloned().ok_or_else(|| {
            format!(
                "weft: endpoint {} is not known on this host (created while the agent was away?): restart the container",
                dep::short(&e.endpoint_id)
            )
        })?;
        crate::docker_link::wire(&e.endpoint_id, &ep.addrs, ep.mac, self.dp.pod_mtu())?;
        if ep.name.is_none() {
            self.docker_learn_name(&e.network_id, &e.endpoint_id);
        }
        Ok(dep::join_answer(&e.endpoint_id, &ep.addrs))
    }

    fn docker_leave(&mut self, e: &EndpointCall) -> Result<String, String> {
        crate::docker_link::remove(&e.endpoint_id)?;
        Ok(weft_docker::ok())
    }

    /// `ProgramExternalConnectivity` (`publish`) or `RevokeExternalConnectivity`.
    fn docker_ports(&mut self, e: &EndpointCall, publish: bool) -> Result<String, String> {
        let maps = if publish {
            ports::from_options(e.options.as_ref())?
        } else {
            Vec::new()
        };
        let Some(ep) = self.docker.endpoints.get(&e.endpoint_id) else {
            return if maps.is_empty() {
                Ok(weft_docker::ok())
            } else {
                Err(format!(
                    "weft: endpoint {} is not known on this host: its ports cannot be published",
                    dep::short(&e.endpoint_id)
                ))
            };
        };
        if ep.ports == maps {
            return Ok(weft_docker::ok());
        }
        if let Some(msg) = ports::conflict(&e.endpoint_id, &maps, &self.docker_published()) {
            return Err(msg);
        }
        let before = ep.ports.clone();
        self.docker_set_ports(&e.endpoint_id, maps);
        if let Err(err) = self.docker_save().and_then(|()| self.docker_ports_apply()) {
            self.docker_set_ports(&e.endpoint_id, before);
            let _ = self.docker_save();
            return Err(format!("weft: publish ports: {err}"));
        }
        Ok(weft_docker::ok())
    }

    fn docker_set_ports(&mut self, id: &str, maps: Vec<Mapping>) {
        if let Some(ep) = self.docker.endpoints.get_mut(id) {
            ep.ports = maps;
        }
    }

    fn docker_published(&self) -> BTreeMap<String, (Vec<IpAddr>, Vec<Mapping>)> {
        self.docker
            .endpoints
            .iter()
            .filter(|(_, e)| !e.ports.is_empty())
            .map(|(id, e)| (id.clone(), (e.addrs.clone(), e.ports.clone())))
            .collect()
    }

    /// Writes the `inet weft_docker` table when what it should hold changed.
    fn docker_ports_apply(&mut self) -> Result<(), String> {
        let script = ports::script(&self.docker_published());
        if self.docker.ports_applied.as_deref() == Some(script.as_str()) {
            return Ok(());
        }
        crate::dataplane::run_nft(&script)?;
        self.docker.ports_applied = Some(script);
        Ok(())
    }

    /// Reads the endpoint's container name and aliases from dockerd, after this call.
    fn docker_learn_name(&self, network: &str, endpoint: &str) {
        let Some(cfg) = &self.cfg.docker else {
            return;
        };
        tokio::spawn(crate::docker_names::learn(
            cfg.host.clone(),
            network.to_string(),
            endpoint.to_string(),
            self.events.clone(),
        ));
    }

    /// dockerd told the endpoint's name: it goes into the endpoint's record.
    pub(crate) fn docker_named(&mut self, endpoint: &str, name: String, aliases: Vec<String>) {
        let Some(ep) = self.docker.endpoints.get_mut(endpoint) else {
            return;
        };
        if ep.name.as_deref() == Some(name.as_str()) && ep.aliases == aliases {
            return;
        }
        ep.name = Some(name.clone());
        ep.aliases = aliases.clone();
        let addrs = ep.addrs.clone();
        let res = self
            .docker_save()
            .and_then(|()| self.endpoint_add(&owner(endpoint), &identity(&name, &aliases), &addrs));
        match res {
            Ok(()) => {
                tracing::info!(target: "weft::docker", endpoint = dep::short(endpoint), "docker: endpoint {} is {name} (aliases {aliases:?})", dep::short(endpoint));
                self.dns_refresh();
            }
            Err(e) => {
                tracing::warn!(target: "weft::docker", "docker: name endpoint {}: {e}", dep::short(endpoint))
            }
        }
    }

    /// Every minute: frees addresses handed to Docker that no endpoint took within
    /// [`ADDRESS_GRACE_MS`].
    pub(crate) fn docker_tick(&mut self) {
        if self.cfg.docker.is_none() || self.docker.gc_at.is_some_and(|t| t.elapsed() < GC_EVERY) {
            return;
        }
        self.docker.gc_at = Some(std::time::Instant::now());
        let in_use = self
            .docker
            .endpoints
            .values()
            .flat_map(|e| e.addrs.iter().copied())
            .collect();
        let list = self.ipam.list();
        let stale: Vec<Owner> = dep::stale_addresses(
            list.iter().map(|(a, o)| (*a, o.container_id.as_str())),
            &in_use,
            crate::policy::wall_ms(),
            ADDRESS_GRACE_MS,
        )
        .into_iter()
        .filter_map(|c| {
            list.iter()
                .find(|(_, o)| o.container_id == c)
                .map(|(_, o)| o.clone())
        })
        .collect();
        if stale.is_empty() {
            return;
        }
        for o in &stale {
            let freed = self.ipam.release(o);
            tracing::info!(target: "weft::docker", "docker: freed {freed:?}: handed to dockerd, taken by no endpoint");
        }
        if let Err(e) = self.save_ipam() {
            tracing::warn!(target: "weft::docker", "docker: {e}");
        }
        self.ipam_step();
    }

    /// The plugin's part of `weft status`.
    pub(crate) fn docker_report(&self) -> Option<crate::DockerReport> {
        let cfg = self.cfg.docker.as_ref()?;
        let eps = &self.docker.endpoints;
        Some(crate::DockerReport {
            plugin: cfg.plugin.display().to_string(),
            host: cfg.host.display().to_string(),
            endpoints: eps.len(),
            named: eps.values().filter(|e| e.name.is_some()).count(),
            ports: eps
                .values()
                .flat_map(|e| {
                    let who = e.name.clone().unwrap_or_else(|| "?".into());
                    e.ports
                        .iter()
                        .map(move |m| format!("{m} -> {who}:{}", m.port))
                })
                .collect(),
        })
    }

    /// The plugin socket goes with the agent: dockerd then sees no plugin, not a dead one.
    pub(crate) fn docker_stop(&self) {
        if let Some(cfg) = &self.cfg.docker {
            let _ = std::fs::remove_file(&cfg.plugin);
        }
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}
