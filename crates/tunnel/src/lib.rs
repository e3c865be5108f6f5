//! The encrypted tunnel's protocol core (docs/encryption.md), sans-IO: the caller passes
//! the time (ms), randomness, datagrams and mesh messages in, and sends what comes out.
//!
//! Each direction's key is chosen by its receiver and offered to the sender over the
//! mesh connection (a Noise session between the two nodes' identities): [`Control`].
//! Receivers rotate every `rotate_after` and keep the previous key for `keep_old`;
//! senders refuse keys too old or used too often, and ask for a new one. Packets without
//! a usable key are dropped and counted, never sent in clear.

pub mod offload;
pub mod packet;
pub mod replay;

use std::collections::{BTreeMap, HashMap};

use packet::{Header, Key, Kind, HEADER_LEN};
use replay::Window;

/// Timings and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// A receiver offers a new key when its newest is this old.
    pub rotate_after_ms: u64,
    /// The previous receive key is accepted this long after the new one was offered.
    pub keep_old_ms: u64,
    /// A sender does not use a key it got this long ago.
    pub reject_after_ms: u64,
    /// A sender does not use a key for more packets than this.
    pub message_limit: u64,
    /// A sender without a usable key asks at most this often.
    pub request_every_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rotate_after_ms: 120_000,
            keep_old_ms: 30_000,
            reject_after_ms: 180_000,
            message_limit: 1 << 40,
            request_every_ms: 1_000,
        }
    }
}

/// A message between two nodes' tunnels, carried by the mesh connection.
#[derive(Clone, PartialEq, Eq)]
pub enum Control {
    /// "Send to me with this key, under this index."
    Offer {
        /// The receiver's index of the key.
        index: u32,
        /// The key.
        key: [u8; 32],
    },
    /// "Offer me a new key": the sender has none it may use.
    Request,
}

impl Control {
    /// Its bytes on the mesh: `1 | index (BE) | key` or `2`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Control::Offer { index, key } => {
                let mut v = Vec::with_capacity(37);
                v.push(1);
                v.extend_from_slice(&index.to_be_bytes());
                v.extend_from_slice(key);
                v
            }
            Control::Request => vec![2],
        }
    }

    /// Parses [`Control::encode`]'s bytes; anything else is `None`.
    pub fn decode(b: &[u8]) -> Option<Control> {
        match b {
            [2] => Some(Control::Request),
            [1, rest @ ..] if rest.len() == 36 => {
                let index = u32::from_be_bytes(rest[..4].try_into().ok()?);
                if index == 0 {
                    return None;
                }
                let key: [u8; 32] = rest[4..].try_into().ok()?;
                Some(Control::Offer { index, key })
            }
            _ => None,
        }
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::Offer { index, .. } => write!(f, "Offer {{ index: {index:#x}, key: .. }}"),
            Control::Request => f.write_str("Request"),
        }
    }
}

/// Why a packet or datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Drop {
    /// To send: no key the sender may use (none yet, too old, used up).
    NoKey,
    /// To send: no such peer.
    NoPeer,
    /// Received: too short, unknown type, bad reserved bytes.
    Malformed,
    /// Received: no key under that index.
    UnknownKey,
    /// Received: counter seen or too old.
    Replay,
    /// Received: the tag did not verify.
    BadTag,
    /// Received: a counter past the message limit.
    CounterLimit,
}

/// A peer's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams sealed and their plaintext bytes.
    pub sent: u64,
    /// Plaintext bytes sealed.
    pub sent_bytes: u64,
    /// Datagrams opened.
    pub received: u64,
    /// Plaintext bytes opened.
    pub received_bytes: u64,
    /// Drops by reason.
    pub drops: BTreeMap<Drop, u64>,
}

#[derive(Debug)]
struct RxKey {
    index: u32,
    key: Key,
    window: Window,
    made_ms: u64,
    /// When a newer key replaced it.
    retired_ms: Option<u64>,
}

#[derive(Debug)]
struct TxKey {
    index: u32,
    key: Key,
    counter: u64,
    got_ms: u64,
}

/// One peer's keys and counters.
#[derive(Debug, Default)]
pub struct Peer {
    /// Newest last; at most two.
    rx: Vec<RxKey>,
    tx: Option<TxKey>,
    /// The peer asked for a new key.
    asked: bool,
    last_request_ms: Option<u64>,
    request_due: bool,
    counters: Counters,
}

impl Peer {
    /// The peer's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Age of the key this node sends with, if it has one.
    pub fn send_key_age(&self, now: u64) -> Option<u64> {
        self.tx.as_ref().map(|t| now.saturating_sub(t.got_ms))
    }

    fn count(&mut self, d: Drop) -> Drop {
        *self.counters.drops.entry(d).or_default() += 1;
        d
    }

    fn wants_rotation(&self, now: u64, cfg: &Config) -> bool {
        self.asked
            || self
                .rx
                .last()
                .is_none_or(|k| now.saturating_sub(k.made_ms) >= cfg.rotate_after_ms)
    }

    fn rotate(&mut self, now: u64, index: u32, key: [u8; 32]) -> (Control, Vec<u32>) {
        let mut gone = Vec::new();
        // The one before the current goes now: at most the current and the new remain.
        while self.rx.len() >= 2 {
            gone.push(self.rx.remove(0).index);
        }
        if let Some(cur) = self.rx.last_mut() {
            cur.retired_ms = Some(now);
        }
        self.rx.push(RxKey {
            index,
            key: Key::new(&key),
            window: Window::default(),
            made_ms: now,
            retired_ms: None,
        });
        self.asked = false;
        (Control::Offer { index, key }, gone)
    }

    fn expire(&mut self, now: u64, cfg: &Config) -> Vec<u32> {
        let mut gone = Vec::new();
        self.rx.retain(|k| {
            let keep = k
                .retired_ms
                .is_none_or(|t| now.saturating_sub(t) < cfg.keep_old_ms);
            if !keep {
                gone.push(k.index);
            }
            keep
        });
        gone
    }

    fn usable_tx(&self, now: u64, cfg: &Config) -> bool {
        self.tx.as_ref().is_some_and(|t| {
            now.saturating_sub(t.got_ms) < cfg.reject_after_ms && t.counter < cfg.message_limit
        })
    }
}

/// One node's tunnel: its peers (named by `P`, e.g. node ids) and the index of every
/// receive key.
#[derive(Debug)]
pub struct Tunnel<P: Ord + Clone> {
    cfg: Config,
    peers: BTreeMap<P, Peer>,
    by_index: HashMap<u32, P>,
}

impl<P: Ord + Clone> Tunnel<P> {
    /// An empty tunnel.
    pub fn new(cfg: Config) -> Tunnel<P> {
        Tunnel {
            cfg,
            peers: BTreeMap::new(),
            by_index: HashMap::new(),
        }
    }

    /// Adds a peer (no keys yet: its first [`Tunnel::tick`] offers one, and asks the peer
    /// for one, in case the peer's own offer came before this node knew it).
    pub fn add_peer(&mut self, p: P) {
        self.peers.entry(p).or_insert_with(|| Peer {
            request_due: true,
            ..Peer::default()
        });
    }

    /// Forgets a peer and its keys.
    pub fn remove_peer(&mut self, p: &P) {
        if let Some(peer) = self.peers.remove(p) {
            for k in peer.rx {
                self.by_index.remove(&k.index);
            }
        }
    }

    /// The peers, in order.
    pub fn peers(&self) -> impl Iterator<Item = (&P, &Peer)> {
        self.peers.iter()
    }

    /// Offers peer `p` a new key at the next [`Tunnel::tick`] (its mesh connection came
    /// back: an offer may have been lost with the old one, or the peer restarted and
    /// holds none of this node's keys). The sender side asks again by itself.
    pub fn reoffer(&mut self, p: &P) {
        if let Some(peer) = self.peers.get_mut(p) {
            peer.asked = true;
        }
    }

    /// A peer's state.
    pub fn peer(&self, p: &P) -> Option<&Peer> {
        self.peers.get(p)
    }

    /// A fresh key and an index no receive key of this node has (never 0).
    fn fresh(&self, rng: &mut dyn FnMut(&mut [u8])) -> (u32, [u8; 32]) {
        let mut key = [0u8; 32];
        rng(&mut key);
        loop {
            let mut b = [0u8; 4];
            rng(&mut b);
            let index = u32::from_ne_bytes(b);
            if index != 0 && !self.by_index.contains_key(&index) {
                return (index, key);
            }
        }
    }

    fn rotate(&mut self, now: u64, p: &P, rng: &mut dyn FnMut(&mut [u8])) -> Option<Control> {
        let (index, key) = self.fresh(rng);
        let peer = self.peers.get_mut(p)?;
        let (offer, gone) = peer.rotate(now, index, key);
        for g in gone {
            self.by_index.remove(&g);
        }
        self.by_index.insert(index, p.clone());
        Some(offer)
    }

    /// Time passes: old receive keys are dropped, receive keys rotated when due (or
    /// asked for), requests of senders without a key sent. Returns the messages for the
    /// mesh.
    pub fn tick(&mut self, now: u64, rng: &mut dyn FnMut(&mut [u8])) -> Vec<(P, Control)> {
        let mut out = Vec::new();
        let names: Vec<P> = self.peers.keys().cloned().collect();
        for p in names {
            let cfg = self.cfg.clone();
            let peer = self.peers.get_mut(&p).expect("listed");
            for g in peer.expire(now, &cfg) {
                self.by_index.remove(&g);
            }
            if std::mem::take(&mut peer.request_due) {
                out.push((p.clone(), Control::Request));
            }
            if peer.wants_rotation(now, &cfg) {
                if let Some(offer) = self.rotate(now, &p, rng) {
                    out.push((p, offer));
                }
            }
        }
        out
    }

    /// A message from peer `p` over the mesh; may answer one.
    pub fn control(
        &mut self,
        now: u64,
        p: &P,
        msg: Control,
        rng: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<(P, Control)> {
        let Some(peer) = self.peers.get_mut(p) else {
            return Vec::new();
        };
        match msg {
            Control::Offer { index, key } => {
                if peer.tx.as_ref().is_some_and(|t| t.index == index) {
                    // The same offer again (a resent message): the counter stays.
                    return Vec::new();
                }
                peer.tx = Some(TxKey {
                    index,
                    key: Key::new(&key),
                    counter: 0,
                    got_ms: now,
                });
                Vec::new()
            }
            Control::Request => {
                peer.asked = true;
                self.rotate(now, p, rng)
                    .map(|o| vec![(p.clone(), o)])
                    .unwrap_or_default()
            }
        }
    }

    /// Seals `plaintext` for peer `p` and appends the datagram to `out`, or drops it
    /// (counted; with no usable key, a [`Control::Request`] goes out at the next tick,
    /// at most every `request_every_ms`).
    pub fn seal(
        &mut self,
        now: u64,
        p: &P,
        kind: Kind,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Drop> {
        let cfg = &self.cfg;
        let Some(peer) = self.peers.get_mut(p) else {
            return Err(Drop::NoPeer);
        };
        if !peer.usable_tx(now, cfg) {
            let due = peer
                .last_request_ms
                .is_none_or(|t| now.saturating_sub(t) >= cfg.request_every_ms);
            if due {
                peer.last_request_ms = Some(now);
                peer.request_due = true;
            }
            return Err(peer.count(Drop::NoKey));
        }
        let tx = peer.tx.as_mut().expect("usable");
        let header = Header {
            kind,
            index: tx.index,
            counter: tx.counter,
        };
        tx.counter += 1;
        tx.key.seal(&header, plaintext, out);
        peer.counters.sent += 1;
        peer.counters.sent_bytes += plaintext.len() as u64;
        Ok(())
    }

    /// Opens a datagram: (its sender, what it carries, the plaintext), or why it was
    /// dropped (counted on the peer when the index names one).
    pub fn open(&mut self, datagram: &[u8]) -> Result<(P, Kind, Vec<u8>), Drop> {
        let mut d = datagram.to_vec();
        let (p, kind, n) = self.open_in_place(&mut d)?;
        d.truncate(HEADER_LEN + n);
        d.drain(..HEADER_LEN);
        Ok((p, kind, d))
    }

    /// As [`Tunnel::open`], decrypting where the datagram lies: (sender, kind, length of
    /// the plaintext, which starts at [`HEADER_LEN`]).
    pub fn open_in_place(&mut self, datagram: &mut [u8]) -> Result<(P, Kind, usize), Drop> {
        let header = Header::parse(datagram).ok_or(Drop::Malformed)?;
        let p = self
            .by_index
            .get(&header.index)
            .cloned()
            .ok_or(Drop::UnknownKey)?;
        let limit = self.cfg.message_limit;
        let peer = self.peers.get_mut(&p).ok_or(Drop::UnknownKey)?;
        let Some(k) = peer.rx.iter_mut().find(|k| k.index == header.index) else {
            return Err(peer.count(Drop::UnknownKey));
        };
        if header.counter >= limit {
            return Err(peer.count(Drop::CounterLimit));
        }
        if !k.window.check(header.counter) {
            return Err(peer.count(Drop::Replay));
        }
        let Some(n) = k.key.open_in_place(&header, datagram) else {
            return Err(peer.count(Drop::BadTag));
        };
        if !k.window.update(header.counter) {
            return Err(peer.count(Drop::Replay));
        }
        peer.counters.received += 1;
        peer.counters.received_bytes += n as u64;
        Ok((p, header.kind, n))
    }
}

#[cfg(test)]
mod tests;
