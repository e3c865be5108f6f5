//! The local API: HTTP/1.1 + JSON on a unix socket, served by hyper, one request per
//! connection, and its blocking client (hyper's, over the same socket) used by the `weft`
//! CLI and the CNI plugin. Endpoints: `GET /status`, `GET /peers`, `POST /connect
//! {"addr"}`, `POST /forget {"addr"}`, `GET /metrics` (the Prometheus text, as on the
//! metrics address), `POST /cni/report` (the plugin's timing of one CNI command, recorded
//! by the server itself: it never waits for the agent's owner task), and the cluster IPAM:
//!
//! - `POST /ipam/allocate {"container_id","ifname"}` → `{"address","addresses","mtu",
//!   "held"}` (and `"dns"` where the agent serves names): the first address, one of every
//!   family, the container MTU, and what the owner held before the call; waits (up to
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
//! Every other request becomes one [`Event::Api`] for the owner task, answered with a
//! status code and a body. Errors are `{"error": "..."}` with a 4xx or 5xx status. A
//! request's body is limited to [`MAX_REQUEST`] bytes (413 beyond), its head to
//! [`MAX_HEAD`], and a connection to [`CONNECTION_LIMIT`].

use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::{AgentError, Event};

/// Largest request body accepted.
pub const MAX_REQUEST: usize = 1024 * 1024;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// How long the agent keeps an allocation waiting for space or readiness before it answers
/// 503.
pub const ALLOCATE_WAIT: Duration = Duration::from_secs(10);

/// How long one API connection may last (an allocation may wait [`ALLOCATE_WAIT`]).
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

/// How long a client waits for an allocation's answer: more than [`ALLOCATE_WAIT`].
pub const ALLOCATE_CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`request`] waits for an answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of API answers.
const JSON: &str = "application/json";

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

/// Serves the API on `listener` until the agent stops.
/// With `plugin_only`, only Docker's plugin protocol is served (the plugin socket).
pub(crate) async fn serve(
    listener: UnixListener,
    events: mpsc::UnboundedSender<Event>,
    metrics: Arc<Metrics>,
    plugin_only: bool,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (events, metrics) = (events.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                handle(req, events.clone(), metrics.clone(), plugin_only)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            // A client that sends nothing, or never reads its answer, is cut off.
            let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
        });
    }
}

/// An answer with `code` and a body of `content_type`.
pub(crate) fn answer(code: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

/// Reads a request's body, at most `limit` bytes: `Err` is the answer to give instead.
pub(crate) async fn read_body(
    body: Incoming,
    limit: usize,
) -> Result<String, Response<Full<Bytes>>> {
    match Limited::new(body, limit).collect().await {
        Ok(b) => Ok(String::from_utf8_lossy(&b.to_bytes()).into_owned()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(answer(413, JSON, error_json("request too large")))
        }
        Err(e) => Err(answer(
            400,
            JSON,
            error_json(&format!("could not read the request: {e}")),
        )),
    }
}

/// Hands one request to the owner task and waits for its answer.
pub(crate) async fn ask_agent(
    events: &mpsc::UnboundedSender<Event>,
    method: String,
    path: String,
    body: String,
) -> (u16, String) {
    let (tx, rx) = oneshot::channel();
    let ev = Event::Api {
        method,
        path,
        body,
        reply: tx,
    };
    if events.send(ev).is_err() {
        return (503, error_json("agent stopping"));
    }
    rx.await.unwrap_or((503, error_json("agent stopping")))
}

async fn handle(
    req: Request<Incoming>,
    events: mpsc::UnboundedSender<Event>,
    metrics: Arc<Metrics>,
    plugin_only: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let body = match read_body(req.into_body(), MAX_REQUEST).await {
        Ok(b) => b,
        Err(refusal) => return Ok(refusal),
    };
    let path = split_query(&target).0.to_string();
    if plugin_only && !weft_docker::is_plugin_path(&path) {
        return Ok(answer(
            404,
            JSON,
            weft_docker::Iface::Network.error(&format!("weft: {path} is not a plugin call")),
        ));
    }
    if (method.as_str(), path.as_str()) == ("POST", crate::metrics::CNI_REPORT) {
        let (code, body) = metrics.cni_report(&body);
        return Ok(answer(code, JSON, body));
    }
    let (code, body) = ask_agent(&events, method.clone(), target, body).await;
    let kind = if (method.as_str(), path.as_str(), code) == ("GET", crate::metrics::PATH, 200) {
        crate::metrics::CONTENT_TYPE
    } else {
        JSON
    };
    Ok(answer(code, kind, body))
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
    /// The agent took the request but gave no answer in time.
    #[error("the agent at {socket} did not answer within {}", seconds(.waited))]
    TimedOut {
        /// The socket path.
        socket: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// The connection broke or the answer was not HTTP.
    #[error("{0}")]
    Failed(String),
}

/// `10 s`, `0.5 s`.
fn seconds(d: &Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Sends one request to the agent at `socket`, waiting up to [`DEFAULT_TIMEOUT`], and
/// returns (status code, body); errors are sentences for people.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    request_within(socket, method, path, body, DEFAULT_TIMEOUT)
}

/// As [`request`], waiting up to `timeout`.
pub fn request_within(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    call(socket, method, path, body, timeout).map_err(|e| match e {
        ClientError::Unreachable { .. } => {
            format!("{e} (is `weft agent` running? --socket or WEFT_SOCKET choose another)")
        }
        ClientError::TimedOut { .. } => {
            format!("{e} (it may be busy: --timeout SECONDS waits longer)")
        }
        ClientError::Failed(msg) => msg,
    })
}

/// Sends one request to the agent at `socket`, waiting at most `timeout` for the whole
/// exchange; returns (status code, body).
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| ClientError::Failed(format!("start the API client: {e}")))?;
    rt.block_on(async {
        tokio::time::timeout(timeout, exchange(socket, method, path, body))
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::TimedOut {
                    socket: socket.display().to_string(),
                    waited: timeout,
                })
            })
    })
}

pub(crate) async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), ClientError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        ClientError::Failed(format!("{what} the agent at {}: {e}", socket.display()))
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| ClientError::Unreachable {
            socket: socket.display().to_string(),
            why: e.to_string(),
        })?;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|e| ClientError::Failed(format!("bad method {method:?}: {e}")))?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "weft")
        .header(CONTENT_TYPE, JSON)
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .map_err(|e| ClientError::Failed(format!("bad request {path:?}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(NoSigpipe(stream)))
        .await
        .map_err(|e| failed("talk to", &e))?;
    // The connection is driven beside the request; it ends with the runtime.
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| failed("no answer from", &e))?;
    let code = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| failed("read the answer of", &e))?
        .to_bytes();
    Ok((code, String::from_utf8_lossy(&bytes).into_owned()))
}

/// A unix stream whose writes never raise SIGPIPE: the CLI lets SIGPIPE end it quietly
/// when its output is closed (as coreutils do), so an agent that closes the socket early
/// must come back as an error instead.
struct NoSigpipe(UnixStream);

impl AsyncRead for NoSigpipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for NoSigpipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let s = &self.0;
        loop {
            ready!(s.poll_write_ready(cx))?;
            let sent = s.try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(s).send_with_flags(buf, libc::MSG_NOSIGNAL)
            });
            match sent {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
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
