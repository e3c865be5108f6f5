//! Kubernetes objects as `weft apply` takes them: `NetworkPolicy` (networking.k8s.io/v1)
//! and `Namespace` (v1), from YAML (several documents) or JSON (one object, or a `List`
//! with `items`), defaulted and validated as the API server would, with errors that name
//! the field.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::selector::{Labels, Operator, Requirement, Selector};

/// The label every namespace carries with its own name.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A protocol a port rule names.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// From an IP protocol number.
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// nftables' name.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Parses the API's spelling (case-sensitive, as the API server).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port of a rule: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    /// A port number.
    Number(u16),
    /// A named port, looked up in the destination pod's ports.
    Name(String),
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Port {
    /// The protocol (defaulted to TCP).
    pub protocol: Protocol,
    /// The port; none = every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortValue>,
    /// The last port of a range starting at the numeric `port`.
    #[serde(default, rename = "endPort", skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

/// An `ipBlock` peer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IpBlock {
    /// The block.
    pub cidr: IpNet,
    /// Parts of it that are not matched, each strictly inside `cidr`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNet>,
}

/// One peer of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// Pods of the selected namespaces (none: the policy's own namespace).
    #[serde(
        default,
        rename = "namespaceSelector",
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace_selector: Option<Selector>,
    /// The selected pods (none: every pod of those namespaces).
    #[serde(
        default,
        rename = "podSelector",
        skip_serializing_if = "Option::is_none"
    )]
    pub pod_selector: Option<Selector>,
    /// Addresses; never together with the selectors.
    #[serde(default, rename = "ipBlock", skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// An ingress or egress rule. No peers = every peer; no ports = every port.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// `from` (ingress) or `to` (egress).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    /// The ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// A defaulted, validated NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The pods of its namespace it selects.
    pub pod_selector: Selector,
    /// Isolates the selected pods for ingress.
    pub ingress_isolates: bool,
    /// Isolates the selected pods for egress.
    pub egress_isolates: bool,
    /// Ingress rules.
    pub ingress: Vec<Rule>,
    /// Egress rules.
    pub egress: Vec<Rule>,
}

impl NetworkPolicy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The object as the API server would return it (defaulted).
    pub fn to_k8s(&self) -> Value {
        let mut types = Vec::new();
        if self.ingress_isolates {
            types.push("Ingress");
        }
        if self.egress_isolates {
            types.push("Egress");
        }
        let rules = |rules: &[Rule], peer_key: &str| -> Value {
            Value::Array(
                rules
                    .iter()
                    .map(|r| {
                        let mut m = Map::new();
                        if !r.peers.is_empty() {
                            m.insert(
                                peer_key.into(),
                                serde_json::to_value(&r.peers).unwrap_or(Value::Null),
                            );
                        }
                        if !r.ports.is_empty() {
                            m.insert(
                                "ports".into(),
                                serde_json::to_value(&r.ports).unwrap_or(Value::Null),
                            );
                        }
                        Value::Object(m)
                    })
                    .collect(),
            )
        };
        let mut spec = Map::new();
        spec.insert(
            "podSelector".into(),
            serde_json::to_value(&self.pod_selector).unwrap_or(Value::Null),
        );
        if !self.ingress.is_empty() {
            spec.insert("ingress".into(), rules(&self.ingress, "from"));
        }
        if !self.egress.is_empty() {
            spec.insert("egress".into(), rules(&self.egress, "to"));
        }
        spec.insert("policyTypes".into(), serde_json::json!(types));
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        })
    }
}

/// A Namespace: its name and labels (always with [`NAME_LABEL`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Namespace {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
}

impl Namespace {
    /// The object as the API server would return it.
    pub fn to_k8s(&self) -> Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.name, "labels": self.labels},
        })
    }
}

/// One object of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// A NetworkPolicy.
    NetworkPolicy(NetworkPolicy),
    /// A Namespace.
    Namespace(Namespace),
}

impl Object {
    /// `NetworkPolicy x/name` or `Namespace x`.
    pub fn describe(&self) -> String {
        match self {
            Object::NetworkPolicy(p) => format!("networkpolicy {}", p.key()),
            Object::Namespace(n) => format!("namespace {}", n.name),
        }
    }
}

/// A refused object: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Which document or item (`document 2`, `items[3]`), empty for a lone object.
    pub item: String,
    /// The field path, e.g. `spec.ingress[0].ports[1].port`.
    pub field: String,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.item.is_empty() {
            write!(f, "{}: ", self.item)?;
        }
        if self.field.is_empty() {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "{}: {}", self.field, self.msg)
        }
    }
}

impl std::error::Error for ParseError {}

type Res<T> = Result<T, ParseError>;

fn err(field: &str, msg: impl Into<String>) -> ParseError {
    ParseError {
        item: String::new(),
        field: field.to_string(),
        msg: msg.into(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Parses a file's text: JSON (one object, or a List with `items`) or YAML (documents
/// separated by `---`). `default_ns` is the namespace of objects that name none.
pub fn parse_objects(text: &str, default_ns: &str) -> Result<Vec<Object>, ParseError> {
    parse_objects_warn(text, default_ns).map(|(objs, _)| objs)
}

/// As [`parse_objects`], with the warnings (field path first) that `weft apply` prints, as
/// the API server sends them to kubectl.
pub fn parse_objects_warn(text: &str, default_ns: &str) -> Result<Parsed, ParseError> {
    let trimmed = text.trim_start();
    let docs: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text).map_err(|e| err("", format!("not JSON: {e}")))?;
        match v {
            Value::Array(items) => items,
            v => vec![v],
        }
    } else {
        // YAML 1.2's booleans only: `y`, `n`, `on` and `off` are strings (namespace `y`).
        let mut opts = serde_saphyr::Options::default();
        opts.strict_booleans = true;
        serde_saphyr::from_multiple_with_options::<Value>(text, opts)
            .map_err(|e| err("", format!("not YAML: {}", one_line(&e.to_string()))))?
    };
    let mut out = (Vec::new(), Vec::new());
    let many = docs.len() > 1;
    for (i, doc) in docs.iter().enumerate() {
        let item = if many {
            format!("document {}", i + 1)
        } else {
            String::new()
        };
        parse_value(doc, default_ns, &item, &mut out)?;
    }
    if out.0.is_empty() {
        return Err(err("", "no object found"));
    }
    Ok(out)
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a file holds: its objects, and warnings about what was read as the API server
/// would read it but is better written otherwise.
type Parsed = (Vec<Object>, Vec<String>);

fn parse_value(v: &Value, default_ns: &str, item: &str, out: &mut Parsed) -> Res<()> {
    let tag = |mut e: ParseError| {
        if e.item.is_empty() {
            e.item = item.to_string();
        }
        e
    };
    let obj = v
        .as_object()
        .ok_or_else(|| tag(err("", "expected an object with apiVersion and kind")))?;
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let api = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    match (kind, api) {
        ("List", "v1") | ("NetworkPolicyList", _) | ("NamespaceList", _) => {
            let items = obj
                .get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| tag(err("items", "a List needs an array of items")))?;
            for (i, it) in items.iter().enumerate() {
                let name = if item.is_empty() {
                    format!("items[{i}]")
                } else {
                    format!("{item} items[{i}]")
                };
                parse_value(it, default_ns, &name, out)?;
            }
            Ok(())
        }
        ("NetworkPolicy", "networking.k8s.io/v1") => {
            let mut warn = Vec::new();
            let p = parse_policy(obj, default_ns, &mut warn).map_err(tag)?;
            out.0.push(Object::NetworkPolicy(p));
            out.1.extend(warn.into_iter().map(|w| match item {
                "" => w,
                _ => format!("{item}: {w}"),
            }));
            Ok(())
        }
        ("Namespace", "v1") => {
            out.0
                .push(Object::Namespace(parse_namespace(obj).map_err(tag)?));
            Ok(())
        }
        ("", _) => Err(tag(err("kind", "missing"))),
        ("NetworkPolicy", _) => Err(tag(err(
            "apiVersion",
            format!("expected networking.k8s.io/v1 for a NetworkPolicy, got {api:?}"),
        ))),
        ("Namespace", _) => Err(tag(err(
            "apiVersion",
            format!("expected v1 for a Namespace, got {api:?}"),
        ))),
        (k, _) => Err(tag(err(
            "kind",
            format!("weft takes NetworkPolicy, Namespace and List objects, not {k:?}"),
        ))),
    }
}

fn only_keys(m: &Map<String, Value>, path: &str, allowed: &[&str]) -> Res<()> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(err(
                &join(path, k),
                format!("unknown field (expected one of: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn object<'a>(v: &'a Value, path: &str) -> Res<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| err(path, "expected an object"))
}

fn array<'a>(v: &'a Value, path: &str) -> Res<&'a [Value]> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Null => Ok(&[]),
        _ => Err(err(path, "expected a list")),
    }
}

fn string<'a>(v: &'a Value, path: &str) -> Res<&'a str> {
    v.as_str().ok_or_else(|| err(path, "expected a string"))
}

fn metadata(obj: &Map<String, Value>, namespaced: bool) -> Res<(String, Option<String>, Labels)> {
    let meta = object(
        obj.get("metadata")
            .ok_or_else(|| err("metadata", "missing"))?,
        "metadata",
    )?;
    only_keys(
        meta,
        "metadata",
        &[
            "name",
            "namespace",
            "labels",
            "annotations",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "generateName",
            "ownerReferences",
            "finalizers",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ],
    )?;
    if let Some(a) = meta.get("annotations") {
        check_annotations(a, "metadata.annotations")?;
    }
    let name = string(
        meta.get("name").ok_or_else(|| {
            err(
                "metadata.name",
                "missing (weft applies objects by name; generateName is not enough)",
            )
        })?,
        "metadata.name",
    )?
    .to_string();
    if namespaced {
        check_subdomain(&name, "metadata.name")?;
    } else {
        check_label_name(&name, "metadata.name")?;
    }
    // Empty is unset (the request's namespace), and the API server clears it on a
    // Namespace, which is in none.
    let ns = match meta.get("namespace") {
        None | Some(Value::Null) => None,
        Some(v) => match string(v, "metadata.namespace")? {
            "" => None,
            _ if !namespaced => None,
            s => {
                check_label_name(s, "metadata.namespace")?;
                Some(s.to_string())
            }
        },
    };
    let labels = match meta.get("labels") {
        None | Some(Value::Null) => Labels::new(),
        Some(v) => labels(v, "metadata.labels")?,
    };
    Ok((name, ns, labels))
}

fn labels(v: &Value, path: &str) -> Res<Labels> {
    let m = object(v, path)?;
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let p = format!("{path}[{k:?}]");
        check_label_key(k, &p)?;
        // The API decodes labels into strings: `1` or `true` is refused there, not read
        // as "1" or "true" (quote them); null is the empty value.
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            _ => {
                return Err(err(
                    &p,
                    format!("a label value is a string (quote it: \"{v}\")"),
                ))
            }
        };
        check_label_value(&v, &p)?;
        out.insert(k.clone(), v);
    }
    Ok(out)
}

fn parse_namespace(obj: &Map<String, Value>) -> Res<Namespace> {
    only_keys(
        obj,
        "",
        &["apiVersion", "kind", "metadata", "spec", "status"],
    )?;
    let (name, _, mut labels) = metadata(obj, false)?;
    // The API server's defaulting sets the name label, over any value given.
    labels.insert(NAME_LABEL.to_string(), name.clone());
    Ok(Namespace { name, labels })
}

fn parse_policy(
    obj: &Map<String, Value>,
    default_ns: &str,
    warn: &mut Vec<String>,
) -> Res<NetworkPolicy> {
    only_keys(
        obj,
        "",
        &["apiVersion", "kind", "metadata", "spec", "status"],
    )?;
    let (name, ns, _) = metadata(obj, true)?;
    let namespace = ns.unwrap_or_else(|| default_ns.to_string());
    check_label_name(&namespace, "metadata.namespace")?;
    // A missing spec is the empty one: every pod of the namespace, isolated for ingress.
    let empty = Map::new();
    let spec = match obj.get("spec") {
        None | Some(Value::Null) => &empty,
        Some(v) => object(v, "spec")?,
    };
    only_keys(
        spec,
        "spec",
        &["podSelector", "ingress", "egress", "policyTypes"],
    )?;
    // Optional: missing, like `{}`, selects every pod of the namespace.
    let pod_selector = match spec.get("podSelector") {
        None => Selector::default(),
        Some(v) => selector(v, "spec.podSelector")?,
    };
    let ingress = rules(spec.get("ingress"), "spec.ingress", "from", warn)?;
    let egress = rules(spec.get("egress"), "spec.egress", "to", warn)?;
    let (mut ing, mut eg) = (false, false);
    let types = match spec.get("policyTypes") {
        None => &[][..],
        Some(v) => array(v, "spec.policyTypes")?,
    };
    // As the API server: at most two entries, each Ingress or Egress (one named twice is
    // taken).
    if types.len() > 2 {
        return Err(err(
            "spec.policyTypes",
            "may not name more than two policy types",
        ));
    }
    for (i, t) in types.iter().enumerate() {
        let p = format!("spec.policyTypes[{i}]");
        match string(t, &p)? {
            "Ingress" => ing = true,
            "Egress" => eg = true,
            other => {
                return Err(err(
                    &p,
                    format!("expected Ingress or Egress, got {other:?}"),
                ))
            }
        }
    }
    if types.is_empty() {
        // The API server's defaulting: Ingress always, Egress when there are egress rules.
        ing = true;
        eg = !egress.is_empty();
    }
    Ok(NetworkPolicy {
        namespace,
        name,
        pod_selector,
        ingress_isolates: ing,
        egress_isolates: eg,
        ingress,
        egress,
    })
}

fn selector(v: &Value, path: &str) -> Res<Selector> {
    if v.is_null() {
        return Ok(Selector::default());
    }
    let m = object(v, path)?;
    only_keys(m, path, &["matchLabels", "matchExpressions"])?;
    let match_labels = match m.get("matchLabels") {
        None | Some(Value::Null) => Labels::new(),
        Some(v) => labels(v, &join(path, "matchLabels"))?,
    };
    let mut match_expressions = Vec::new();
    if let Some(v) = m.get("matchExpressions") {
        for (i, e) in array(v, &join(path, "matchExpressions"))?
            .iter()
            .enumerate()
        {
            let p = format!("{}[{i}]", join(path, "matchExpressions"));
            let em = object(e, &p)?;
            only_keys(em, &p, &["key", "operator", "values"])?;
            let key = string(
                em.get("key")
                    .ok_or_else(|| err(&join(&p, "key"), "missing"))?,
                &join(&p, "key"),
            )?;
            check_label_key(key, &join(&p, "key"))?;
            let op_s = string(
                em.get("operator")
                    .ok_or_else(|| err(&join(&p, "operator"), "missing"))?,
                &join(&p, "operator"),
            )?;
            let operator = Operator::parse(op_s).ok_or_else(|| {
                err(
                    &join(&p, "operator"),
                    format!("expected In, NotIn, Exists or DoesNotExist, got {op_s:?}"),
                )
            })?;
            let mut values = Vec::new();
            if let Some(vs) = em.get("values") {
                for (j, x) in array(vs, &join(&p, "values"))?.iter().enumerate() {
                    let vp = format!("{}[{j}]", join(&p, "values"));
                    let s = string(x, &vp)?;
                    check_label_value(s, &vp)?;
                    values.push(s.to_string());
                }
            }
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err(err(
                        &join(&p, "values"),
                        format!("{op_s} needs at least one value"),
                    ))
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err(err(&join(&p, "values"), format!("{op_s} takes no values")))
                }
                _ => {}
            }
            values.sort();
            values.dedup();
            match_expressions.push(Requirement {
                key: key.to_string(),
                operator,
                values,
            });
        }
    }
    Ok(Selector {
        match_labels,
        match_expressions,
    })
}

fn rules(v: Option<&Value>, path: &str, peer_key: &str, warn: &mut Vec<String>) -> Res<Vec<Rule>> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (i, r) in array(v, path)?.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let m = if r.is_null() {
            &Map::new()
        } else {
            object(r, &p)?
        };
        only_keys(m, &p, &[peer_key, "ports"])?;
        let mut peers = Vec::new();
        if let Some(v) = m.get(peer_key) {
            for (j, x) in array(v, &join(&p, peer_key))?.iter().enumerate() {
                peers.push(peer(x, &format!("{}[{j}]", join(&p, peer_key)), warn)?);
            }
        }
        let mut ports = Vec::new();
        if let Some(v) = m.get("ports") {
            for (j, x) in array(v, &join(&p, "ports"))?.iter().enumerate() {
                ports.push(port(x, &format!("{}[{j}]", join(&p, "ports")))?);
            }
        }
        out.push(Rule { peers, ports });
    }
    Ok(out)
}

fn peer(v: &Value, path: &str, warn: &mut Vec<String>) -> Res<Peer> {
    let m = object(v, path)?;
    only_keys(m, path, &["podSelector", "namespaceSelector", "ipBlock"])?;
    let present = |k: &str| m.get(k).is_some_and(|v| !v.is_null());
    let (pods, nss, block) = (
        present("podSelector"),
        present("namespaceSelector"),
        present("ipBlock"),
    );
    if block && (pods || nss) {
        return Err(err(
            path,
            "ipBlock cannot be combined with podSelector or namespaceSelector",
        ));
    }
    if !block && !pods && !nss {
        return Err(err(
            path,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        ));
    }
    if block {
        let bp = join(path, "ipBlock");
        let bm = object(&m["ipBlock"], &bp)?;
        only_keys(bm, &bp, &["cidr", "except"])?;
        let cp = join(&bp, "cidr");
        let cidr = cidr(
            string(bm.get("cidr").ok_or_else(|| err(&cp, "missing"))?, &cp)?,
            &cp,
            warn,
        )?;
        let mut except = Vec::new();
        if let Some(v) = bm.get("except") {
            for (i, x) in array(v, &join(&bp, "except"))?.iter().enumerate() {
                let ep = format!("{}[{i}]", join(&bp, "except"));
                let e = self::cidr(string(x, &ep)?, &ep, warn)?;
                let inside = e.addr().is_ipv4() == cidr.addr().is_ipv4()
                    && e.prefix_len() > cidr.prefix_len()
                    && cidr.contains(&e.network());
                if !inside {
                    return Err(err(
                        &ep,
                        format!("{e} must be strictly inside the cidr {cidr}"),
                    ));
                }
                except.push(e);
            }
        }
        return Ok(Peer {
            namespace_selector: None,
            pod_selector: None,
            ip_block: Some(IpBlock { cidr, except }),
        });
    }
    Ok(Peer {
        namespace_selector: if nss {
            Some(selector(
                &m["namespaceSelector"],
                &join(path, "namespaceSelector"),
            )?)
        } else {
            None
        },
        pod_selector: if pods {
            Some(selector(&m["podSelector"], &join(path, "podSelector"))?)
        } else {
            None
        },
        ip_block: None,
    })
}

/// A CIDR as the API server takes it by default: one with host bits set (`10.0.0.1/8`) is
/// its network (`10.0.0.0/8`), with a warning, as the server's legacy validation does (its
/// strict one, not yet on by default, refuses it).
fn cidr(s: &str, path: &str, warn: &mut Vec<String>) -> Res<IpNet> {
    let n: IpNet = s
        .parse()
        .map_err(|_| err(path, format!("{s:?} is not a CIDR such as 10.0.0.0/16")))?;
    if n.trunc() != n {
        warn.push(format!(
            "{path}: {s} has host bits set: read as {}, the network it is in (write that; Kubernetes will refuse it in a later release)",
            n.trunc()
        ));
    }
    Ok(n.trunc())
}

fn port(v: &Value, path: &str) -> Res<Port> {
    let m = object(v, path)?;
    only_keys(m, path, &["protocol", "port", "endPort"])?;
    let protocol = match m.get("protocol") {
        None | Some(Value::Null) => Protocol::Tcp,
        Some(v) => {
            let pp = join(path, "protocol");
            let s = string(v, &pp)?;
            Protocol::parse(s)
                .ok_or_else(|| err(&pp, format!("expected TCP, UDP or SCTP, got {s:?}")))?
        }
    };
    let pp = join(path, "port");
    let port = match m.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(PortValue::Number(port_number(n.as_i64(), &pp)?)),
        // IntOrString: a quoted "80" is a string, so a port name, which needs a letter
        // (the API server refuses it too).
        Some(Value::String(s)) => {
            check_port_name(s, &pp)?;
            Some(PortValue::Name(s.clone()))
        }
        Some(_) => return Err(err(&pp, "expected a port number or a port name")),
    };
    let ep = join(path, "endPort");
    let end_port = match m.get("endPort") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            let end = port_number(n.as_i64(), &ep)?;
            match &port {
                Some(PortValue::Number(p)) if end >= *p => Some(end),
                Some(PortValue::Number(p)) => {
                    return Err(err(&ep, format!("{end} is below port {p}")))
                }
                Some(PortValue::Name(_)) => {
                    return Err(err(&ep, "a named port cannot take endPort"))
                }
                None => return Err(err(&ep, "endPort needs a numeric port")),
            }
        }
        Some(_) => return Err(err(&ep, "expected a port number")),
    };
    Ok(Port {
        protocol,
        port,
        end_port,
    })
}

fn port_number(n: Option<i64>, path: &str) -> Res<u16> {
    match n {
        Some(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(err(path, "expected a port number from 1 to 65535")),
    }
}

mod names;
pub use names::{
    check_annotations, check_label_key, check_label_name, check_label_value, check_port_name,
    check_subdomain,
};

#[cfg(test)]
mod tests;
