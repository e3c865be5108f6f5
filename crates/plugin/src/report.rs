//! Tells the host's agent how long a CNI command took and how it ended (`POST
//! /cni/report`), for its `weft_cni_operations_total` and
//! `weft_cni_operation_duration_seconds` metrics. Best effort: skipped when no agent
//! socket is there, and never waits long: the agent records the report as soon as it
//! reads it, so a report whose answer is late is still counted, and a slow or absent agent
//! costs a CNI command at most [`REPORT_WAIT`].

use std::path::Path;
use std::time::{Duration, Instant};

use weft_agent::api;
use weft_cni::Command;

/// The longest a report may delay the plugin's answer.
const REPORT_WAIT: Duration = Duration::from_millis(100);

/// Reports the command of this invocation (ADD, DEL and CHECK only) to the agent named
/// by the config's `agentSocket` (default `/run/weft/weft.sock`); `error` is the CNI
/// error code of a failure.
pub(crate) fn send(
    get: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    started: Instant,
    error: Option<u32>,
) {
    let command = match get("CNI_COMMAND").and_then(|c| c.parse::<Command>().ok()) {
        Some(c @ (Command::Add | Command::Del | Command::Check)) => c,
        _ => return,
    };
    let socket = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("agentSocket")?.as_str().map(String::from))
        .unwrap_or_else(|| weft_config::DEFAULT_AGENT_SOCKET.to_string());
    let socket = Path::new(&socket);
    if !socket.exists() {
        return;
    }
    let body = serde_json::json!({
        "command": command.as_str(),
        "seconds": started.elapsed().as_secs_f64(),
        "code": error.unwrap_or(0),
    });
    let _ = api::call(
        socket,
        "POST",
        "/cni/report",
        Some(&body.to_string()),
        REPORT_WAIT,
    );
}
