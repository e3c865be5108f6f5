//! One peer connection: the Noise handshake, then frames both ways until either side fails.
//! Any framing, decryption or decoding error closes the connection; the agent goes on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use weft_mesh::{Message, NodeId};
use weft_wire::{encode_frame, ClusterKey, FrameReader, Handshake, Identity, Role, Transport};

use crate::metrics::{ErrorKind, Metrics};
use crate::Event;

/// What a connection authenticates with: this node's identity and the cluster key.
pub(crate) struct Keys {
    pub(crate) ident: Arc<Identity>,
    pub(crate) key: Arc<ClusterKey>,
}

/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection that stays silent this long is dead (peers send a digest every tick).
fn idle_timeout(events_tick_ms: u64) -> Duration {
    Duration::from_millis((events_tick_ms * 5).max(5000))
}

async fn read_frame(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    buf: &mut [u8],
    metrics: &Metrics,
) -> Result<Vec<u8>, String> {
    loop {
        if let Some(f) = reader.next_frame().map_err(|e| e.to_string())? {
            return Ok(f);
        }
        let n = stream.read(buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed by peer".into());
        }
        metrics.received_bytes(n);
        reader.push(&buf[..n]);
    }
}

async fn handshake(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    role: Role,
    ident: &Identity,
    key: &ClusterKey,
    metrics: &Metrics,
) -> Result<Transport, String> {
    let mut hs = Handshake::new(role, ident, key).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    while !hs.is_finished() {
        if hs.my_turn() {
            let msg = hs.write().map_err(|e| e.to_string())?;
            let frame = encode_frame(&msg).map_err(|e| e.to_string())?;
            stream.write_all(&frame).await.map_err(|e| e.to_string())?;
            metrics.sent_bytes(frame.len());
        } else {
            let frame = read_frame(stream, reader, &mut buf, metrics).await?;
            hs.read(&frame).map_err(|e| e.to_string())?;
        }
    }
    hs.finish().map_err(|e| e.to_string())
}

/// Runs one connection to its end.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    mut stream: TcpStream,
    addr: SocketAddr,
    outbound: bool,
    dialled: Option<SocketAddr>,
    conn: u64,
    events: mpsc::UnboundedSender<Event>,
    keys: Keys,
    metrics: Arc<Metrics>,
) {
    let _ = stream.set_nodelay(true);
    let role = if outbound {
        Role::Initiator
    } else {
        Role::Responder
    };
    let mut reader = FrameReader::new();
    let transport = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(
            &mut stream,
            &mut reader,
            role,
            &keys.ident,
            &keys.key,
            &metrics,
        ),
    )
    .await
    .unwrap_or_else(|_| Err("handshake timed out".into()));
    let mut transport = match transport {
        Ok(t) => t,
        Err(why) => {
            // Wrong secret, garbage, or a port scan: refuse and say so.
            metrics.error(ErrorKind::PeerRefused);
            tracing::warn!(
                target: "weft::mesh",
                peer_addr = %addr,
                direction = if outbound { "dialled" } else { "accepted" },
                reason = %why,
                "refused connection with {addr}: {why}"
            );
            if let Some(a) = dialled {
                let _ = events.send(Event::DialFailed {
                    addr: a,
                    why: format!("handshake failed: {why}"),
                });
            }
            return;
        }
    };
    let peer = NodeId(transport.remote_node_id());
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let (decide_tx, decide_rx) = oneshot::channel();
    if events
        .send(Event::Connected {
            conn,
            peer,
            addr,
            outbound,
            dialled,
            tx,
            decide: decide_tx,
        })
        .is_err()
    {
        return;
    }
    if !decide_rx.await.unwrap_or(false) {
        return;
    }
    let why = pump(
        &mut stream,
        &mut reader,
        &mut transport,
        &mut rx,
        conn,
        peer,
        &events,
        &metrics,
    )
    .await;
    let _ = events.send(Event::Disconnected { conn, peer, why });
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    transport: &mut Transport,
    rx: &mut mpsc::UnboundedReceiver<Message>,
    conn: u64,
    peer: NodeId,
    events: &mpsc::UnboundedSender<Event>,
    metrics: &Metrics,
) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let idle = idle_timeout(1000);
    // Only a successful read moves the deadline: our own sends must not keep a silent peer.
    let silence = tokio::time::sleep(idle);
    tokio::pin!(silence);
    // The agent's owner task sends a digest every tick; while it is busy (an `nft` run of
    // a thousand policies on a loaded host takes seconds) this connection's own task sends
    // one in its place, so the peer does not take a busy node for a dead one. A digest
    // that matches nothing only makes the peer answer with its vector.
    let keepalive = idle / 3;
    let quiet = tokio::time::sleep(keepalive);
    tokio::pin!(quiet);
    // Sealed frames not yet taken by the socket. They are written a piece at a time beside
    // the reads and the silence deadline, never awaited whole: a peer cut off by the
    // network stops acknowledging, the socket's buffer fills and a whole-message write
    // would wait for TCP to give up (some 15 minutes), the silence never noticed; and two
    // peers sending each other large states at once would each wait for the other to read.
    // The next message is taken only when these are written, so they stay one message.
    let mut pending: Vec<u8> = Vec::new();
    let mut written = 0;
    let (mut rd, mut wr) = stream.split();
    loop {
        // Whole frames already buffered first.
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => match transport.open(&frame) {
                    Ok(Some(bytes)) => match serde_json::from_slice::<Message>(&bytes) {
                        Ok(msg) => {
                            metrics.message(false, &msg);
                            if events.send(Event::Message { conn, peer, msg }).is_err() {
                                return "agent stopping".into();
                            }
                        }
                        Err(e) => return format!("undecodable message: {e}"),
                    },
                    Ok(None) => {}
                    Err(e) => return format!("bad frame: {e}"),
                },
                Ok(None) => break,
                Err(e) => return format!("bad framing: {e}"),
            }
        }
        let idle_out = pending.is_empty();
        tokio::select! {
            _ = &mut silence => return format!("silent for {} s", idle.as_secs()),
            read = rd.read(&mut buf) => match read {
                Err(e) => return e.to_string(),
                Ok(0) => return "closed by peer".into(),
                Ok(n) => {
                    metrics.received_bytes(n);
                    reader.push(&buf[..n]);
                    silence.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            },
            w = wr.write(&pending[written..]), if !idle_out => match w {
                Err(e) => return e.to_string(),
                Ok(0) => return "the socket takes no more".into(),
                Ok(n) => {
                    metrics.sent_bytes(n);
                    written += n;
                    if written == pending.len() {
                        pending.clear();
                        written = 0;
                    }
                }
            },
            out = rx.recv(), if idle_out => match out {
                None => return "replaced by another connection".into(),
                Some(msg) => {
                    if let Err(e) = seal(&mut pending, transport, &msg, metrics) {
                        return e;
                    }
                    quiet.as_mut().reset(tokio::time::Instant::now() + keepalive);
                }
            },
            _ = &mut quiet, if idle_out => {
                if let Err(e) = seal(&mut pending, transport, &Message::Digest(0), metrics) {
                    return e;
                }
                quiet.as_mut().reset(tokio::time::Instant::now() + keepalive);
            }
        }
    }
}

/// Seals `msg` into frames appended to `out`, to be written in order.
fn seal(
    out: &mut Vec<u8>,
    transport: &mut Transport,
    msg: &Message,
    metrics: &Metrics,
) -> Result<(), String> {
    metrics.message(true, msg);
    let bytes = serde_json::to_vec(msg).expect("json");
    let frames = transport.seal(&bytes).map_err(|e| format!("seal: {e}"))?;
    for f in frames {
        out.extend_from_slice(&encode_frame(&f).expect("sealed frames fit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that reads nothing (a cut link acknowledges nothing) while this end has far
    /// more to send than the sockets hold: the connection still ends as silent after the
    /// idle limit, instead of waiting in a write until TCP gives up (it never does here:
    /// the peer's kernel keeps answering with a closed window).
    #[test]
    fn a_peer_that_reads_nothing_is_found_silent_while_a_send_waits() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let key = ClusterKey::from_secret(b"the conn test secret").unwrap();
            let metrics = Metrics::default();
            let (a_id, b_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
            let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let (mut a, mut b) = (dialled.unwrap(), accepted.unwrap().0);
            let (mut ra, mut rb) = (FrameReader::new(), FrameReader::new());
            let (ta, tb) = tokio::join!(
                handshake(&mut a, &mut ra, Role::Initiator, &a_id, &key, &metrics),
                handshake(&mut b, &mut rb, Role::Responder, &b_id, &key, &metrics),
            );
            let (mut ta, _tb) = (ta.unwrap(), tb.unwrap());
            let peer = NodeId(ta.remote_node_id());
            let (tx, mut rx) = mpsc::unbounded_channel();
            // 16 messages of 1 MiB (twice that as JSON): more than both sockets' buffers.
            for _ in 0..16 {
                tx.send(Message::Tunnel(vec![7; 1 << 20])).unwrap();
            }
            let (events, _events_rx) = mpsc::unbounded_channel();
            let why = tokio::time::timeout(
                Duration::from_secs(120),
                pump(
                    &mut a, &mut ra, &mut ta, &mut rx, 1, peer, &events, &metrics,
                ),
            )
            .await
            .expect("the connection never ended: a waiting write hid the silence");
            assert!(why.starts_with("silent for"), "{why}");
            // The peer's end was open (and unread) all along.
            drop((b, tx));
        });
    }
}
