//! The policy's local API (docs/policy.md):
//!
//! - `POST /policy/apply {"objects": [K8S JSON...], "namespace": NS}` → `{"results":
//!   [{"object", "action": created|configured|unchanged}]}`: NetworkPolicy and Namespace
//!   objects (or Lists of them), validated again here, written as this node's records and
//!   applied on this host before the answer (the other hosts follow through the mesh).
//! - `POST /policy/delete {"objects": [...], "namespace": NS}` → `{"results": [{"object",
//!   "action": deleted|not found}]}`.
//! - `GET /policy/get?kind=networkpolicies|namespaces|endpoints[&namespace=NS]` → a
//!   Kubernetes `List` (policies, namespaces) or `{"endpoints": [...]}`.
//! - `POST /policy/label {"namespace", "name", "set": {K: V}, "remove": [K]}` → the
//!   endpoints relabelled.
//! - `GET /policy/check?from=A&to=B&protocol=P&port=N` (A, B: an address or NS/NAME) → the
//!   reference engine's verdict and its reason.
//! - `GET /flows?after=N` → [`crate::flows::FlowsAnswer`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use weft_policy::engine::{isolating, Dir};
use weft_policy::k8s::{check_label_key, check_label_value, Object, Protocol};
use weft_policy::records::{labels_key, object_key};
use weft_policy::{parse_objects, Flow, Labels};

use crate::api::error_json;
use crate::Agent;

#[derive(Deserialize)]
struct ObjectsBody {
    objects: Vec<Value>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct LabelBody {
    #[serde(default)]
    namespace: Option<String>,
    name: String,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// One endpoint in `weft get endpoints`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `CONTAINER/IFNAME`.
    pub uid: String,
    /// The node hosting it.
    pub node: String,
    /// Labels (after `weft label`).
    pub labels: Labels,
    /// Named ports as `NAME=PORT/PROTO`.
    pub ports: Vec<String>,
    /// Addresses.
    pub addrs: Vec<IpAddr>,
    /// Policies isolating it for ingress.
    pub ingress_isolated_by: Vec<String>,
    /// Policies isolating it for egress.
    pub egress_isolated_by: Vec<String>,
}

fn bad(msg: impl std::fmt::Display) -> (u16, String) {
    (400, error_json(&msg.to_string()))
}

impl Agent {
    /// The policy endpoints; `None` if `path` is not one of them.
    pub(crate) fn api_policy(
        &mut self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: &str,
    ) -> Option<(u16, String)> {
        let q = |k: &str| {
            query
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        Some(match (method, path) {
            ("POST", "/policy/apply") => self.api_policy_write(body, false),
            ("POST", "/policy/delete") => self.api_policy_write(body, true),
            ("GET", "/policy/get") => self.api_policy_get(q("kind").unwrap_or(""), q("namespace")),
            ("POST", "/policy/label") => self.api_policy_label(body),
            ("GET", "/policy/check") => self.api_policy_check(
                q("from").unwrap_or(""),
                q("to").unwrap_or(""),
                q("protocol").unwrap_or("TCP"),
                q("port").unwrap_or("0"),
            ),
            ("GET", "/flows") => {
                self.policy_index();
                let after = q("after").and_then(|a| a.parse().ok()).unwrap_or(0);
                (
                    200,
                    serde_json::to_string(&self.pol.flows.after(after)).unwrap_or_default(),
                )
            }
            _ => return None,
        })
    }

    fn api_policy_write(&mut self, body: &str, delete: bool) -> (u16, String) {
        let b: ObjectsBody = match serde_json::from_str(body) {
            Ok(b) => b,
            Err(e) => return bad(format!("expected {{\"objects\": [...]}}: {e}")),
        };
        let ns = b.namespace.unwrap_or_else(|| "default".into());
        let mut objs = Vec::new();
        for (i, o) in b.objects.iter().enumerate() {
            match parse_objects(&o.to_string(), &ns) {
                Ok(v) => objs.extend(v),
                Err(e) => return bad(format!("object {}: {e}", i + 1)),
            }
        }
        self.policy_index();
        let mut results = Vec::new();
        let mut writes = Vec::new();
        for o in &objs {
            let key = object_key(o);
            let normal = match o {
                Object::NetworkPolicy(p) => p.to_k8s(),
                Object::Namespace(n) => n.to_k8s(),
            };
            let current = self
                .pol
                .objects
                .winners
                .get(&key)
                .and_then(|(v, _)| v.object.clone());
            let action = match (delete, &current) {
                (true, None) => "not found",
                (true, Some(_)) => {
                    writes.push((key, None));
                    "deleted"
                }
                (false, Some(c)) if *c == normal => "unchanged",
                (false, c) => {
                    writes.push((key, Some(normal)));
                    if c.is_some() {
                        "configured"
                    } else {
                        "created"
                    }
                }
            };
            results.push(json!({"object": o.describe(), "action": action}));
        }
        self.policy_write(writes);
        // Enforced on this host before the answer; the others follow through the mesh.
        if let Err(e) = self.policy_apply() {
            self.pol.error = Some(e.clone());
            return (
                500,
                error_json(&format!(
                    "the objects were stored, but this host could not apply the policy: {e}"
                )),
            );
        }
        (200, json!({ "results": results }).to_string())
    }

    fn api_policy_get(&mut self, kind: &str, ns: Option<&str>) -> (u16, String) {
        self.policy_index();
        let w = &self.pol.world;
        let in_ns = |n: &str| ns.is_none_or(|x| x == n);
        match kind {
            "networkpolicies" | "networkpolicy" | "netpol" => {
                let items: Vec<Value> = w
                    .policies
                    .values()
                    .filter(|p| in_ns(&p.namespace))
                    .map(|p| p.to_k8s())
                    .collect();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
                )
            }
            "namespaces" | "namespace" | "ns" => {
                let items: Vec<Value> = w
                    .namespace_names()
                    .into_iter()
                    .filter(|n| in_ns(n))
                    .map(|n| {
                        json!({
                            "apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": n, "labels": w.namespace_labels(&n)},
                        })
                    })
                    .collect();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
                )
            }
            "endpoints" | "endpoint" | "ep" => {
                let list: Vec<EndpointReport> = w
                    .endpoints
                    .values()
                    .filter(|e| in_ns(&e.namespace))
                    .map(|e| EndpointReport {
                        namespace: e.namespace.clone(),
                        name: e.name.clone(),
                        uid: e.uid.clone(),
                        node: e.node.clone(),
                        labels: e.labels.clone(),
                        ports: e
                            .ports
                            .iter()
                            .map(|p| format!("{}={}/{}", p.name, p.port, p.protocol))
                            .collect(),
                        addrs: e.addrs.clone(),
                        ingress_isolated_by: isolating(w, e, Dir::Ingress)
                            .iter()
                            .map(|p| p.key())
                            .collect(),
                        egress_isolated_by: isolating(w, e, Dir::Egress)
                            .iter()
                            .map(|p| p.key())
                            .collect(),
                    })
                    .collect();
                (200, json!({ "endpoints": list }).to_string())
            }
            other => bad(format!(
                "no such kind {other:?}: networkpolicies, namespaces or endpoints"
            )),
        }
    }

    fn api_policy_label(&mut self, body: &str) -> (u16, String) {
        let b: LabelBody = match serde_json::from_str(body) {
            Ok(b) => b,
            Err(e) => {
                return bad(format!(
                    "expected {{\"namespace\", \"name\", \"set\": {{}}, \"remove\": []}}: {e}"
                ))
            }
        };
        for (k, v) in &b.set {
            if let Err(e) = check_label_key(k, "") {
                return bad(format!("label {k}={v}: {}", e.msg));
            }
            if let Err(e) = check_label_value(v, "") {
                return bad(format!("label {k}={v}: {}", e.msg));
            }
        }
        for k in &b.remove {
            if let Err(e) = check_label_key(k, "") {
                return bad(format!("label {k}-: {}", e.msg));
            }
        }
        let ns = b.namespace.unwrap_or_else(|| "default".into());
        self.policy_index();
        let targets: Vec<(String, Labels)> = self
            .pol
            .world
            .endpoints
            .values()
            .filter(|e| e.namespace == ns && e.name == b.name)
            .filter(|e| b.node.as_ref().is_none_or(|n| *n == e.node))
            .map(|e| (e.uid.clone(), e.labels.clone()))
            .collect();
        if targets.is_empty() {
            let on = b
                .node
                .as_ref()
                .map(|n| format!(" on {n}"))
                .unwrap_or_default();
            return (
                404,
                error_json(&format!(
                    "no endpoint {ns}/{}{on} is known here (`weft get endpoints` lists them)",
                    b.name
                )),
            );
        }
        // One pod's attachments (its interfaces) share its container; pods of one name in
        // several containers (podman's names are unique per host only) are not one pod.
        let pods = pods_of(&self.pol.world, targets.iter().map(|(u, _)| u.as_str()));
        if pods.len() > 1 {
            return (
                409,
                error_json(&format!(
                    "{ns}/{} names {} pods ({}): say which with --node",
                    b.name,
                    pods.len(),
                    pods.join(", ")
                )),
            );
        }
        let mut out = Vec::new();
        let mut writes = Vec::new();
        for (uid, mut labels) in targets {
            for k in &b.remove {
                labels.remove(k);
            }
            for (k, v) in &b.set {
                labels.insert(k.clone(), v.clone());
            }
            writes.push((labels_key(&uid), Some(json!(labels))));
            out.push(json!({"uid": uid, "labels": labels}));
        }
        self.policy_write(writes);
        if let Err(e) = self.policy_apply() {
            self.pol.error = Some(e.clone());
            return (
                500,
                error_json(&format!("labels stored, but not applied here: {e}")),
            );
        }
        (200, json!({ "endpoints": out }).to_string())
    }

    /// An address, or the first address of endpoint `NS/NAME` (of `family`, if given).
    fn resolve(&self, who: &str, family: Option<bool>) -> Result<IpAddr, String> {
        if let Ok(a) = who.parse::<IpAddr>() {
            return Ok(a);
        }
        let (ns, name) = who.split_once('/').unwrap_or(("default", who));
        let all: Vec<&weft_policy::Endpoint> = (self.pol.world.endpoints.values())
            .filter(|e| e.namespace == ns && e.name == name)
            .collect();
        let pods = pods_of(&self.pol.world, all.iter().map(|e| e.uid.as_str()));
        if pods.len() > 1 {
            return Err(format!(
                "{who} names {} pods ({}): give an address instead",
                pods.len(),
                pods.join(", ")
            ));
        }
        let e = all
            .first()
            .ok_or_else(|| format!("{who:?} is neither an address nor a known endpoint NS/NAME"))?;
        e.addrs
            .iter()
            .find(|a| family.is_none_or(|v6| a.is_ipv6() == v6))
            .copied()
            .ok_or_else(|| format!("{who} has no address of that family"))
    }

    fn api_policy_check(&mut self, from: &str, to: &str, proto: &str, port: &str) -> (u16, String) {
        self.policy_index();
        let Ok(port) = port.parse::<u16>() else {
            return bad(format!("port {port:?}: expected 0 to 65535"));
        };
        let proto_n = match Protocol::parse(&proto.to_uppercase()) {
            Some(p) => p.number(),
            None => match proto.to_lowercase().as_str() {
                "icmp" => 1,
                "icmpv6" => 58,
                _ => {
                    return bad(format!(
                        "protocol {proto:?}: expected TCP, UDP, SCTP or ICMP"
                    ))
                }
            },
        };
        let src = match self.resolve(from, None) {
            Ok(a) => a,
            Err(e) => return bad(format!("from: {e}")),
        };
        let dst = match self.resolve(to, Some(src.is_ipv6())) {
            Ok(a) => a,
            Err(e) => return bad(format!("to: {e}")),
        };
        let flow = Flow {
            src,
            dst,
            proto: if proto_n == 1 && src.is_ipv6() {
                58
            } else {
                proto_n
            },
            port,
        };
        // A pod of this host and this host's own addresses: never kept apart (the other
        // nodes' addresses are judged as any address: this host does not know them all).
        let local = self.policy_local_uids();
        let dns = self.cfg.dns.as_ref().map(|d| d.addr);
        let host = crate::dataplane::host_addrs(dns).unwrap_or_default();
        let v = weft_policy::verdict_on(&self.pol.world, &flow, |e, a| {
            local.contains(&e.uid) && host.contains(&a)
        });
        (
            200,
            json!({
                "from": src, "to": dst, "allowed": v.allowed,
                "egress": v.egress, "ingress": v.ingress,
                "explanation": v.explain(&self.pol.world, &flow),
            })
            .to_string(),
        )
    }
}

/// The distinct pods (containers) of these attachment uids (`CONTAINER/IFNAME`), each as
/// `NODE (CONTAINER)`, the container id cut to 12 characters.
fn pods_of<'a>(world: &weft_policy::World, uids: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = uids
        .map(|u| {
            let node = world
                .endpoints
                .get(u)
                .map(|e| e.node.as_str())
                .unwrap_or("?");
            let cid = u.split('/').next().unwrap_or(u);
            format!("{node} ({})", cid.chars().take(12).collect::<String>())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
