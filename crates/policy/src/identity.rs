//! An attachment's identity from what container runtimes pass to a CNI plugin
//! (docs/policy.md, "Objects and where they live"): `CNI_ARGS` `K8S_POD_NAMESPACE` and
//! `K8S_POD_NAME`, the CNI convention `args.cni.labels` in the network config, and weft's
//! own `args.weft.ports` for named ports.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::k8s::{check_label_key, check_label_name, check_label_value, check_port_name, Protocol};
use crate::model::NamedPort;
use crate::selector::Labels;

/// The namespace of an attachment whose runtime names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Who an attachment is, as the agent registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Namespace (a DNS label).
    pub namespace: String,
    /// Name (the pod's, or the container's).
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: Labels,
    /// Named ports.
    #[serde(default)]
    pub ports: Vec<NamedPort>,
    /// More names for the name service (podman's `aliases` runtime capability).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// A refused identity: the field (`CNI_ARGS K8S_POD_NAMESPACE`, `args.cni.labels[1].key`)
/// and why; `env` says whether it came from the environment (else the network config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityError {
    /// Where.
    pub field: String,
    /// What is wrong.
    pub msg: String,
    /// From `CNI_ARGS` (else from the config's `args`).
    pub env: bool,
}

impl std::fmt::Display for IdentityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.msg)
    }
}

fn cfg_err(field: String, msg: impl Into<String>) -> IdentityError {
    IdentityError {
        field,
        msg: msg.into(),
        env: false,
    }
}

/// The identity of an attachment: from `cni_args` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`;
/// the name defaults to the container id) and the network config's `args` value.
pub fn from_cni(
    cni_args: &[(String, String)],
    config_args: Option<&Value>,
    container_id: &str,
) -> Result<Identity, IdentityError> {
    let arg = |k: &str| {
        cni_args
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let namespace = arg("K8S_POD_NAMESPACE")
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_string();
    check_label_name(&namespace, "").map_err(|e| IdentityError {
        field: "CNI_ARGS K8S_POD_NAMESPACE".into(),
        msg: e.msg,
        env: true,
    })?;
    let name = arg("K8S_POD_NAME").unwrap_or(container_id).to_string();
    if name.len() > 253 || name.contains('/') || name.chars().any(char::is_control) {
        return Err(IdentityError {
            field: "CNI_ARGS K8S_POD_NAME".into(),
            msg: format!("{name:?} is not a name (at most 253 characters, no '/')"),
            env: true,
        });
    }
    let mut id = Identity {
        namespace,
        name,
        labels: Labels::new(),
        ports: Vec::new(),
        aliases: Vec::new(),
    };
    let Some(args) = config_args else {
        return Ok(id);
    };
    if let Some(labels) = args.pointer("/cni/labels") {
        let list = labels.as_array().ok_or_else(|| {
            cfg_err(
                "args.cni.labels".into(),
                "expected a list of {\"key\": ..., \"value\": ...}",
            )
        })?;
        for (i, l) in list.iter().enumerate() {
            let field = format!("args.cni.labels[{i}]");
            let key = l["key"]
                .as_str()
                .ok_or_else(|| cfg_err(format!("{field}.key"), "expected a string"))?;
            let value = l["value"]
                .as_str()
                .ok_or_else(|| cfg_err(format!("{field}.value"), "expected a string"))?;
            check_label_key(key, "").map_err(|e| cfg_err(format!("{field}.key"), e.msg))?;
            check_label_value(value, "").map_err(|e| cfg_err(format!("{field}.value"), e.msg))?;
            id.labels.insert(key.to_string(), value.to_string());
        }
    }
    if let Some(ports) = args.pointer("/weft/ports") {
        let list = ports.as_array().ok_or_else(|| {
            cfg_err(
                "args.weft.ports".into(),
                "expected a list of {\"name\": ..., \"port\": ..., \"protocol\": ...}",
            )
        })?;
        for (i, p) in list.iter().enumerate() {
            let field = format!("args.weft.ports[{i}]");
            let name = p["name"]
                .as_str()
                .ok_or_else(|| cfg_err(format!("{field}.name"), "expected a string"))?;
            check_port_name(name, "").map_err(|e| cfg_err(format!("{field}.name"), e.msg))?;
            let port = p["port"]
                .as_u64()
                .filter(|n| (1..=65535).contains(n))
                .ok_or_else(|| cfg_err(format!("{field}.port"), "expected 1 to 65535"))?
                as u16;
            let protocol = match &p["protocol"] {
                Value::Null => Protocol::Tcp,
                Value::String(s) => Protocol::parse(s).ok_or_else(|| {
                    cfg_err(
                        format!("{field}.protocol"),
                        format!("expected TCP, UDP or SCTP, got {s:?}"),
                    )
                })?,
                _ => {
                    return Err(cfg_err(
                        format!("{field}.protocol"),
                        "expected TCP, UDP or SCTP",
                    ))
                }
            };
            if id
                .ports
                .iter()
                .any(|q| q.name == name && q.protocol == protocol)
            {
                return Err(cfg_err(
                    format!("{field}.name"),
                    format!("{name:?} is named twice for {protocol}"),
                ));
            }
            id.ports.push(NamedPort {
                name: name.to_string(),
                port,
                protocol,
            });
        }
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kubernetes_args_labels_and_named_ports_make_the_identity() {
        let conf = serde_json::json!({
            "cni": {"labels": [{"key": "app", "value": "web"}, {"key": "example.com/tier", "value": ""}]},
            "weft": {"ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"}]}
        });
        let id = from_cni(
            &args(&[
                ("IgnoreUnknown", "1"),
                ("K8S_POD_NAMESPACE", "shop"),
                ("K8S_POD_NAME", "web-1"),
            ]),
            Some(&conf),
            "c0ffee",
        )
        .unwrap();
        assert_eq!(id.namespace, "shop");
        assert_eq!(id.name, "web-1");
        assert_eq!(id.labels["app"], "web");
        assert_eq!(id.labels["example.com/tier"], "");
        assert_eq!(id.ports[0].protocol, Protocol::Tcp);
        assert_eq!(id.ports[1].port, 53);
    }

    #[test]
    fn without_kubernetes_args_the_namespace_is_default_and_the_name_the_container_id() {
        let id = from_cni(&[], None, "c0ffee").unwrap();
        assert_eq!(
            (id.namespace.as_str(), id.name.as_str()),
            ("default", "c0ffee")
        );
    }

    #[test]
    fn bad_identities_name_the_field() {
        let e = from_cni(&args(&[("K8S_POD_NAMESPACE", "Not_A_Label")]), None, "c").unwrap_err();
        assert!(e.env && e.field == "CNI_ARGS K8S_POD_NAMESPACE", "{e}");
        for (conf, field) in [
            (
                serde_json::json!({"cni": {"labels": [{"key": "-x", "value": "v"}]}}),
                "args.cni.labels[0].key",
            ),
            (
                serde_json::json!({"cni": {"labels": [{"key": "k", "value": "a b"}]}}),
                "args.cni.labels[0].value",
            ),
            (
                serde_json::json!({"cni": {"labels": "app=web"}}),
                "args.cni.labels",
            ),
            (
                serde_json::json!({"weft": {"ports": [{"name": "HTTP", "port": 80}]}}),
                "args.weft.ports[0].name",
            ),
            (
                serde_json::json!({"weft": {"ports": [{"name": "http", "port": 0}]}}),
                "args.weft.ports[0].port",
            ),
            (
                serde_json::json!({"weft": {"ports": [{"name": "http", "port": 80, "protocol": "tcp"}]}}),
                "args.weft.ports[0].protocol",
            ),
            (
                serde_json::json!({"weft": {"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]}}),
                "args.weft.ports[1].name",
            ),
        ] {
            let e = from_cni(&[], Some(&conf), "c").unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(!e.env);
        }
    }
}
