//! A small CNI runtime, as a container engine would be: runs the plugins of a conflist in
//! order for ADD (passing each one the previous result) and in reverse for DEL, inside a
//! lab host's network namespace. A failed ADD is undone with DEL over the whole chain.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::{sys, LabError};

/// The parameters of one CNI invocation.
#[derive(Debug, Clone)]
pub struct CniCall {
    /// The lab host namespace the plugin runs in.
    pub host_netns: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS.
    pub netns_path: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_PATH.
    pub cni_path: String,
    /// CNI_ARGS pairs (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...), empty for none.
    pub args: Vec<(String, String)>,
    /// The network config's `args` (labels, named ports), merged into every plugin's.
    pub conf_args: Option<Value>,
}

/// Runs one plugin binary for `command` with `conf` on stdin, inside the call's host
/// namespace. Returns (exit code, stdout, stderr).
pub fn cni_exec(
    call: &CniCall,
    command: &str,
    plugin_type: &str,
    conf: &Value,
) -> Result<(i32, String, String), LabError> {
    let bin = call
        .cni_path
        .split(':')
        .map(|d| Path::new(d).join(plugin_type))
        .find(|p| p.exists())
        .ok_or_else(|| {
            LabError::new(format!(
                "CNI plugin {plugin_type:?} not found in {}",
                call.cni_path
            ))
        })?;
    let ns = weft_netlink::open_netns(Path::new(&sys::netns_path(&call.host_netns)))
        .map_err(|e| LabError::new(e.to_string()))?;
    let input = serde_json::to_vec(conf).expect("json");
    // Spawned from a thread inside the host namespace, the plugin starts there.
    let out = weft_netlink::in_netns(&ns, || -> std::io::Result<std::process::Output> {
        let mut cmd = Command::new(&bin);
        if !call.args.is_empty() {
            let args: Vec<String> = call.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            cmd.env("CNI_ARGS", args.join(";"));
        }
        let mut child = cmd
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &call.container_id)
            .env("CNI_NETNS", &call.netns_path)
            .env("CNI_IFNAME", &call.ifname)
            .env("CNI_PATH", &call.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&input)?;
        }
        child.wait_with_output()
    })
    .map_err(|e| LabError::new(e.to_string()))?
    .map_err(|e| LabError::new(format!("run {}: {e}", bin.display())))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn read_conflist(path: &Path) -> Result<(String, String, Vec<Value>), LabError> {
    let bytes =
        std::fs::read(path).map_err(|e| LabError::new(format!("read {}: {e}", path.display())))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| LabError::new(format!("{} is not JSON: {e}", path.display())))?;
    let version = v["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
    let name = v["name"].as_str().unwrap_or("weft").to_string();
    let plugins = v["plugins"]
        .as_array()
        .cloned()
        .ok_or_else(|| LabError::new(format!("{} has no \"plugins\" list", path.display())))?;
    Ok((version, name, plugins))
}

fn plugin_conf(
    version: &str,
    name: &str,
    plugin: &Value,
    prev: Option<&Value>,
    args: Option<&Value>,
) -> Value {
    let mut conf = plugin.clone();
    if let Some(a) = args {
        conf["args"] = a.clone();
    }
    conf["cniVersion"] = json!(version);
    conf["name"] = json!(name);
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    conf
}

fn describe(plugin: &str, code: i32, stdout: &str, stderr: &str) -> String {
    let msg = serde_json::from_str::<Value>(stdout)
        .ok()
        .and_then(|v| {
            v["msg"].as_str().map(|m| {
                format!(
                    "{m} (CNI error code {})",
                    v["code"].as_u64().unwrap_or_default()
                )
            })
        })
        .unwrap_or_else(|| format!("{} {}", stdout.trim(), stderr.trim()));
    format!("CNI plugin {plugin} failed (exit {code}): {msg}")
}

/// ADD over a conflist; returns the final result. On failure, DELs the whole chain.
pub fn chain_add(call: &CniCall, conflist: &Path) -> Result<Value, LabError> {
    let (version, name, plugins) = read_conflist(conflist)?;
    let mut prev: Option<Value> = None;
    for plugin in &plugins {
        let ty = plugin["type"].as_str().unwrap_or_default();
        let conf = plugin_conf(
            &version,
            &name,
            plugin,
            prev.as_ref(),
            call.conf_args.as_ref(),
        );
        let (code, out, err) = cni_exec(call, "ADD", ty, &conf)?;
        if code != 0 {
            let _ = chain_del(call, conflist, prev.as_ref());
            return Err(LabError::new(describe(ty, code, &out, &err)));
        }
        let result: Value = serde_json::from_str(&out).map_err(|e| {
            LabError::new(format!(
                "CNI plugin {ty} printed no JSON result: {e}: {out}"
            ))
        })?;
        prev = Some(result);
    }
    prev.ok_or_else(|| LabError::new(format!("{} lists no plugins", conflist.display())))
}

/// DEL over a conflist, last plugin first; every plugin runs even if one fails.
pub fn chain_del(call: &CniCall, conflist: &Path, prev: Option<&Value>) -> Result<(), LabError> {
    let (version, name, plugins) = read_conflist(conflist)?;
    let mut errors = Vec::new();
    for plugin in plugins.iter().rev() {
        let ty = plugin["type"].as_str().unwrap_or_default();
        let conf = plugin_conf(&version, &name, plugin, prev, call.conf_args.as_ref());
        match cni_exec(call, "DEL", ty, &conf) {
            Ok((0, _, _)) => {}
            Ok((code, out, err)) => errors.push(describe(ty, code, &out, &err)),
            Err(e) => errors.push(e.0),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LabError::new(errors.join("; ")))
    }
}
