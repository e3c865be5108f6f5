//! Peer connection security, sans-IO: node identities, the cluster pre-shared key, the Noise
//! `XXpsk3` handshake, framing, and the encrypted transport.
//!
//! Nothing here touches a socket: the agent feeds received bytes in and writes the bytes this
//! crate returns. The design is in docs/mesh.md ("Connections").
//!
//! - Both ends authenticate with their static Curve25519 keys (the XX pattern sends them
//!   encrypted) and mix in the cluster PSK at the last handshake message, so a peer without
//!   the cluster secret cannot finish a handshake and nothing it sent is ever used.
//! - The PSK comes from the cluster secret through HKDF-SHA256, never a bare hash.
//! - Transport messages carry an implicit counter nonce: a replayed, reordered, dropped or
//!   altered frame fails to open and the connection must be closed.
#![warn(missing_docs)]

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The Noise protocol weft speaks.
pub const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";

/// Bound to every handshake: a peer speaking another protocol or version fails at once.
pub const PROLOGUE: &[u8] = b"weft/1";

/// The largest frame on the wire (Noise's message limit), length prefix excluded.
pub const MAX_FRAME: usize = 65535;

/// AEAD tag added to every transport message.
const TAG: usize = 16;

/// The largest application message [`Transport::open`] reassembles (guards memory against a
/// peer that never ends a message).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// What can go wrong on a connection. Every error means: close the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The Noise layer refused a message: wrong PSK, bad key, altered or replayed bytes.
    #[error("noise: {0}")]
    Noise(String),
    /// A frame or message broke the framing rules.
    #[error("bad frame: {0}")]
    Frame(String),
    /// A handshake step was called out of turn.
    #[error("handshake out of order: {0}")]
    Order(&'static str),
    /// The cluster secret is unusable.
    #[error("cluster secret: {0}")]
    Secret(String),
}

fn noise(e: snow::Error) -> WireError {
    WireError::Noise(e.to_string())
}

fn params() -> snow::params::NoiseParams {
    NOISE_PARAMS.parse().expect("valid noise params")
}

/// A node's long-term identity: its static Noise key pair.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Curve25519 private key, hex in JSON.
    #[serde(with = "hex32")]
    pub private: [u8; 32],
    /// Curve25519 public key, hex in JSON.
    #[serde(with = "hex32")]
    pub public: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("Identity")
            .field("node_id", &to_hex(&self.node_id()))
            .finish()
    }
}

impl Identity {
    /// A fresh identity from the system's random source.
    pub fn generate() -> Result<Identity, WireError> {
        let kp = snow::Builder::new(params())
            .generate_keypair()
            .map_err(noise)?;
        let mut id = Identity {
            private: [0; 32],
            public: [0; 32],
        };
        id.private.copy_from_slice(&kp.private);
        id.public.copy_from_slice(&kp.public);
        Ok(id)
    }

    /// The node id: the first 16 bytes of SHA-256 of the public key.
    pub fn node_id(&self) -> [u8; 16] {
        node_id_of(&self.public)
    }
}

/// The node id of a static public key.
pub fn node_id_of(public: &[u8]) -> [u8; 16] {
    let digest = Sha256::digest(public);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// Lower-case hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex (either case); `None` if malformed.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

mod hex32 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_hex(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let bytes = super::from_hex(&s).ok_or_else(|| D::Error::custom("expected hex"))?;
        bytes
            .try_into()
            .map_err(|_| D::Error::custom("expected 32 bytes (64 hex characters)"))
    }
}

/// The cluster's pre-shared key, derived from the cluster secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Derives the PSK from the content of the cluster secret file: surrounding whitespace
    /// is ignored (a trailing newline must not change the key); HKDF-SHA256 with a fixed salt
    /// and context stretches it into the 32-byte Noise PSK.
    pub fn from_secret(secret: &[u8]) -> Result<ClusterKey, WireError> {
        let trimmed = trim(secret);
        if trimmed.is_empty() {
            return Err(WireError::Secret("the cluster secret is empty".into()));
        }
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"weft cluster v1"), trimmed);
        let mut key = [0u8; 32];
        hk.expand(b"noise psk3", &mut key)
            .map_err(|_| WireError::Secret("key derivation failed".into()))?;
        Ok(ClusterKey(key))
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

/// Which end of a connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The end that dialled.
    Initiator,
    /// The end that accepted.
    Responder,
}

/// A Noise `XXpsk3` handshake in progress: three messages, initiator first.
pub struct Handshake {
    state: snow::HandshakeState,
}

impl Handshake {
    /// Starts a handshake as `role` with this node's identity and the cluster key.
    pub fn new(role: Role, identity: &Identity, key: &ClusterKey) -> Result<Handshake, WireError> {
        let builder = snow::Builder::new(params())
            .prologue(PROLOGUE)
            .map_err(noise)?
            .local_private_key(&identity.private)
            .map_err(noise)?
            .psk(3, &key.0)
            .map_err(noise)?;
        let state = match role {
            Role::Initiator => builder.build_initiator(),
            Role::Responder => builder.build_responder(),
        }
        .map_err(noise)?;
        Ok(Handshake { state })
    }

    /// True when this end must send the next message.
    pub fn my_turn(&self) -> bool {
        !self.state.is_handshake_finished() && self.state.is_my_turn()
    }

    /// True once all three messages have passed.
    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// Produces the next handshake message (a frame payload) when it is this end's turn.
    pub fn write(&mut self) -> Result<Vec<u8>, WireError> {
        if !self.my_turn() {
            return Err(WireError::Order("write when it is the peer's turn"));
        }
        let mut buf = vec![0u8; MAX_FRAME];
        let n = self.state.write_message(&[], &mut buf).map_err(noise)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Consumes the peer's handshake message. A wrong cluster key fails here on the
    /// responder, at the third message.
    pub fn read(&mut self, message: &[u8]) -> Result<(), WireError> {
        if self.my_turn() || self.is_finished() {
            return Err(WireError::Order("read when it is this end's turn"));
        }
        let mut buf = vec![0u8; MAX_FRAME];
        let n = self.state.read_message(message, &mut buf).map_err(noise)?;
        if n != 0 {
            return Err(WireError::Frame(
                "handshake messages carry no payload".into(),
            ));
        }
        Ok(())
    }

    /// The authenticated transport, once the handshake is finished.
    pub fn finish(self) -> Result<Transport, WireError> {
        if !self.is_finished() {
            return Err(WireError::Order("finish before the handshake is done"));
        }
        let remote: [u8; 32] = self
            .state
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| WireError::Noise("peer sent no static key".into()))?;
        let state = self.state.into_transport_mode().map_err(noise)?;
        Ok(Transport {
            state,
            remote,
            partial: Vec::new(),
        })
    }
}

/// An established, authenticated, encrypted connection.
pub struct Transport {
    state: snow::TransportState,
    remote: [u8; 32],
    partial: Vec<u8>,
}

impl Transport {
    /// The peer's static public key, authenticated by the handshake.
    pub fn remote_public(&self) -> [u8; 32] {
        self.remote
    }

    /// The peer's node id.
    pub fn remote_node_id(&self) -> [u8; 16] {
        node_id_of(&self.remote)
    }

    /// Encrypts one application message into frame payloads (several when it is larger than
    /// one frame), each to be sent with [`encode_frame`].
    pub fn seal(&mut self, message: &[u8]) -> Result<Vec<Vec<u8>>, WireError> {
        if message.len() > MAX_MESSAGE {
            return Err(WireError::Frame(format!(
                "message of {} bytes exceeds {MAX_MESSAGE}",
                message.len()
            )));
        }
        // Each chunk: one flag byte (1 = more follow, 0 = last), then data.
        let room = MAX_FRAME - TAG - 1;
        let mut chunks: Vec<&[u8]> = message.chunks(room).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        let mut out = Vec::with_capacity(chunks.len());
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut plain = Vec::with_capacity(chunk.len() + 1);
            plain.push(u8::from(i != last));
            plain.extend_from_slice(chunk);
            let mut buf = vec![0u8; plain.len() + TAG];
            let n = self.state.write_message(&plain, &mut buf).map_err(noise)?;
            buf.truncate(n);
            out.push(buf);
        }
        Ok(out)
    }

    /// Decrypts one frame payload; returns a whole message once its last chunk arrived.
    pub fn open(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
        if frame.len() < TAG + 1 {
            return Err(WireError::Frame(format!(
                "transport frame of {} bytes is too short",
                frame.len()
            )));
        }
        let mut plain = vec![0u8; frame.len()];
        let n = self.state.read_message(frame, &mut plain).map_err(noise)?;
        plain.truncate(n);
        let (flag, data) = plain
            .split_first()
            .ok_or_else(|| WireError::Frame("empty transport message".into()))?;
        if self.partial.len() + data.len() > MAX_MESSAGE {
            return Err(WireError::Frame(format!(
                "message exceeds {MAX_MESSAGE} bytes"
            )));
        }
        self.partial.extend_from_slice(data);
        match flag {
            0 => Ok(Some(std::mem::take(&mut self.partial))),
            1 => Ok(None),
            other => Err(WireError::Frame(format!("unknown chunk flag {other}"))),
        }
    }
}

/// Prefixes a frame payload with its 2-byte big-endian length.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, WireError> {
    if payload.is_empty() || payload.len() > MAX_FRAME {
        return Err(WireError::Frame(format!(
            "frame payload of {} bytes (1..={MAX_FRAME} allowed)",
            payload.len()
        )));
    }
    let mut out = Vec::with_capacity(payload.len() + 2);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Splits a byte stream into frame payloads.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame payload, if one has arrived. A zero length is an error.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize;
        if len == 0 {
            return Err(WireError::Frame("zero-length frame".into()));
        }
        if self.buf.len() < 2 + len {
            return Ok(None);
        }
        let frame = self.buf[2..2 + len].to_vec();
        self.buf.drain(..2 + len);
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests;
