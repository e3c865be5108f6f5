//! Docker containers' names, read from dockerd's API after `Join` was answered (never
//! inside a driver call: dockerd waits on its plugins while restoring, and a plugin
//! waiting on dockerd then deadlocks it). libnetwork sends a driver no name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::Event;

/// How long a new endpoint's name is looked for.
const LOOK_FOR: Duration = Duration::from_secs(60);
/// Between two looks.
const EVERY: Duration = Duration::from_millis(100);
/// One request to dockerd.
const REQUEST_LIMIT: Duration = Duration::from_secs(5);

async fn get(host: &Path, path: &str) -> Result<Value, String> {
    let res = tokio::time::timeout(REQUEST_LIMIT, crate::api::exchange(host, "GET", path, None))
        .await
        .map_err(|_| format!("dockerd at {} did not answer GET {path}", host.display()))?;
    let (code, body) = res.map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!(
            "dockerd answered GET {path} with {code}: {}",
            body.trim()
        ));
    }
    serde_json::from_str(&body).map_err(|e| format!("dockerd's answer to GET {path}: {e}"))
}

/// The endpoint's container's (name, aliases on the network), once dockerd lists it.
async fn find(
    host: &Path,
    network: &str,
    endpoint: &str,
) -> Result<Option<(String, Vec<String>)>, String> {
    let net = get(host, &format!("/networks/{network}")).await?;
    let Some(containers) = net["Containers"].as_object() else {
        return Ok(None);
    };
    let Some((cid, c)) = containers
        .iter()
        .find(|(_, c)| c["EndpointID"].as_str() == Some(endpoint))
    else {
        return Ok(None);
    };
    let name = c["Name"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let container = get(host, &format!("/containers/{cid}/json")).await?;
    let aliases = container["NetworkSettings"]["Networks"]
        .as_object()
        .and_then(|nets| {
            nets.values()
                .find(|n| n["EndpointID"].as_str() == Some(endpoint))
        })
        .and_then(|n| n["Aliases"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .filter(|x| *x != name)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    Ok(Some((name, aliases)))
}

/// Looks for the endpoint's name until dockerd lists it (or [`LOOK_FOR`] passed), then
/// tells the owner task.
pub(crate) async fn learn(
    host: PathBuf,
    network: String,
    endpoint: String,
    events: mpsc::UnboundedSender<Event>,
) {
    let until = Instant::now() + LOOK_FOR;
    let mut last_error = None;
    loop {
        match find(&host, &network, &endpoint).await {
            Ok(Some((name, aliases))) if !name.is_empty() => {
                let _ = events.send(Event::DockerNamed {
                    endpoint,
                    name,
                    aliases,
                });
                return;
            }
            Ok(_) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= until || events.is_closed() {
            tracing::warn!(
                target: "weft::docker",
                "docker: no name for endpoint {} within {} s ({}); it is named by its id",
                weft_docker::endpoint::short(&endpoint),
                LOOK_FOR.as_secs(),
                last_error.unwrap_or_else(|| "dockerd does not list it".into())
            );
            return;
        }
        tokio::time::sleep(EVERY).await;
    }
}
