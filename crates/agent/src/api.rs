//! The local API: HTTP/1.1 + JSON on a unix socket, one request per connection, and its
//! blocking client used by the `weft` CLI and the CNI plugin. Endpoints: `GET /status`,
//! `GET /peers`, `POST /connect {"addr"}`, `POST /forget {"addr"}`, and the cluster IPAM:
//!
//! - `POST /ipam/allocate {"container_id","ifname"}` → `{"address"}`; waits (up to
//!   [`ALLOCATE_WAIT`]) while space is being fetched or the IPAM is not ready yet, then
//!   503; 507 when every address of the pools is in use.
//! - `POST /ipam/release {"container_id","ifname"}` → `{"address": ADDR or null}`.
//! - `POST /ipam/gc {"valid": [{"container_id","ifname"}, ...]}` → `{"released": [ADDR, ...]}`.
//! - `GET /ipam/lookup?container_id=..&ifname=..` or `POST /ipam/lookup {"container_id",
//!   "ifname"}` → `{"address": ADDR or null}`.
//! - `GET /ipam/list` → `{"allocations": [{"address","container_id","ifname"}, ...]}`.
//! - `GET /ipam` → [`crate::IpamReport`].
//! - `POST /ipam/rmpeer {"peer": NAME or ID}` → `{"message"}`, or 409 with the refusal.
//!
//! Errors are `{"error": "..."}` with a 4xx or 5xx status.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::{AgentError, Event};

/// Largest request accepted.
const MAX_REQUEST: usize = 1024 * 1024;

/// How long the agent keeps an allocation waiting for space or readiness before it answers
/// 503.
pub const ALLOCATE_WAIT: Duration = Duration::from_secs(10);

/// How long one API connection may last (an allocation may wait [`ALLOCATE_WAIT`]).
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

/// How long a client waits for an allocation's answer: more than [`ALLOCATE_WAIT`].
pub const ALLOCATE_CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A JSON error body.
pub fn error_json(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

/// Binds the API socket; a stale socket file (no agent answering) is replaced, a live one is
/// an error.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError(format!("create {}: {e}", dir.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(AgentError(format!(
                "another agent is serving {}",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path)
        .map_err(|e| AgentError(format!("bind {}: {e}", path.display())))?;
    let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    Ok(l)
}

pub(crate) async fn serve(listener: UnixListener, events: mpsc::UnboundedSender<Event>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let events = events.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_LIMIT, handle(stream, events)).await;
        });
    }
}

async fn handle(
    mut stream: UnixStream,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, content_len) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut stream, 413, &error_json("request too large")).await;
        }
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
            let len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (pos + 4, len);
        }
    };
    if content_len > MAX_REQUEST {
        return respond(&mut stream, 413, &error_json("request too large")).await;
    }
    while buf.len() < head_end + content_len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (
        words.next().unwrap_or_default().to_string(),
        words.next().unwrap_or_default().to_string(),
    );
    let body = String::from_utf8_lossy(&buf[head_end..(head_end + content_len).min(buf.len())])
        .to_string();
    let (tx, rx) = oneshot::channel();
    if events
        .send(Event::Api {
            method,
            path,
            body,
            reply: tx,
        })
        .is_err()
    {
        return respond(&mut stream, 503, &error_json("agent stopping")).await;
    }
    let (code, body) = rx.await.unwrap_or((503, error_json("agent stopping")));
    respond(&mut stream, code, &body).await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn respond(stream: &mut UnixStream, code: u16, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        507 => "Insufficient Storage",
        _ => "Service Unavailable",
    };
    let msg = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes()).await?;
    stream.shutdown().await
}

/// Why a request to the agent failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket (no agent, or a stale socket file).
    #[error("cannot reach the weft agent at {socket}: {why}")]
    Unreachable {
        /// The socket path.
        socket: String,
        /// The connect error.
        why: String,
    },
    /// The connection broke or the answer was not HTTP.
    #[error("{0}")]
    Failed(String),
}

/// Sends one request to the agent at `socket` and returns (status code, body).
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    call(socket, method, path, body, Duration::from_secs(10)).map_err(|e| match e {
        ClientError::Unreachable { .. } => {
            format!("{e} (is `weft agent` running? --socket or WEFT_SOCKET choose another)")
        }
        ClientError::Failed(msg) => msg,
    })
}

/// Sends one request to the agent at `socket`, waiting at most `timeout` for the answer;
/// returns (status code, body).
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let mut s =
        std::os::unix::net::UnixStream::connect(socket).map_err(|e| ClientError::Unreachable {
            socket: socket.display().to_string(),
            why: e.to_string(),
        })?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: weft\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let failed = |what: &str, e: std::io::Error| ClientError::Failed(format!("{what}: {e}"));
    s.write_all(req.as_bytes())
        .map_err(|e| failed("send to the agent", e))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| failed("read the agent's answer", e))?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Failed("the agent's answer is not HTTP".to_string()))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Failed("the agent's answer has no status".to_string()))?;
    Ok((code, body.to_string()))
}

/// Splits `PATH?QUERY` and decodes the query's `key=value` pairs (percent-encoding and `+`).
pub fn split_query(target: &str) -> (&str, Vec<(String, String)>) {
    let Some((path, query)) = target.split_once('?') else {
        return (target, Vec::new());
    };
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    (path, pairs)
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_split_and_decode() {
        let (p, q) = split_query("/ipam/lookup?container_id=a%2Fb+c&ifname=eth0&x");
        assert_eq!(p, "/ipam/lookup");
        assert_eq!(
            q,
            vec![
                ("container_id".to_string(), "a/b c".to_string()),
                ("ifname".to_string(), "eth0".to_string()),
                ("x".to_string(), String::new()),
            ]
        );
        assert_eq!(split_query("/ipam"), ("/ipam", vec![]));
        let odd = "a b/c%d:é";
        let (_, q) = split_query(&format!("/x?v={}", percent_encode(odd)));
        assert_eq!(q[0].1, odd);
        // A stray or short escape stays as it is.
        assert_eq!(split_query("/x?v=%4").1[0].1, "%4");
        assert_eq!(split_query("/x?v=%zz").1[0].1, "%zz");
    }
}
