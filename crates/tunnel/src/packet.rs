//! The tunnel's datagram: a 16-byte header (type, three zero bytes, the receiver's key
//! index, the counter), the ciphertext and a 16-byte tag. The header is the AEAD's
//! associated data; the nonce is four zero bytes and the counter.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// Header length.
pub const HEADER_LEN: usize = 16;
/// Tag length.
pub const TAG_LEN: usize = 16;
/// What the tunnel adds to a packet, besides the outer IP and UDP headers.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A pod packet.
    Data = 1,
    /// Nothing: keeps NAT mappings and endpoints alive.
    Keepalive = 2,
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the datagram carries.
    pub kind: Kind,
    /// The receiver's index of the key.
    pub index: u32,
    /// The sender's counter for that key.
    pub counter: u64,
}

impl Header {
    /// The 16 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = self.kind as u8;
        h[4..8].copy_from_slice(&self.index.to_be_bytes());
        h[8..16].copy_from_slice(&self.counter.to_be_bytes());
        h
    }

    /// Reads the header of `datagram`; `None` if it is too short for a header and a tag,
    /// of an unknown type, or has non-zero reserved bytes.
    pub fn parse(datagram: &[u8]) -> Option<Header> {
        if datagram.len() < OVERHEAD || datagram[1..4] != [0, 0, 0] {
            return None;
        }
        let kind = match datagram[0] {
            1 => Kind::Data,
            2 => Kind::Keepalive,
            _ => return None,
        };
        Some(Header {
            kind,
            index: u32::from_be_bytes(datagram[4..8].try_into().ok()?),
            counter: u64::from_be_bytes(datagram[8..16].try_into().ok()?),
        })
    }
}

/// One direction's AES-256-GCM key.
pub struct Key(LessSafeKey);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

impl Key {
    /// A key from 32 bytes.
    pub fn new(bytes: &[u8; 32]) -> Key {
        Key(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes make an AES-256 key"),
        ))
    }

    /// Appends the datagram for `plaintext` under `header` to `out`.
    pub fn seal(&self, header: &Header, plaintext: &[u8], out: &mut Vec<u8>) {
        let h = header.encode();
        let start = out.len();
        out.extend_from_slice(&h);
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                nonce(header.counter),
                Aad::from(h),
                &mut out[start + HEADER_LEN..],
            )
            .expect("AES-GCM seals any packet shorter than 64 GB");
        out.extend_from_slice(tag.as_ref());
    }

    /// Decrypts `datagram` (whose header is `header`) where it lies; the plaintext's
    /// length, or `None` when the tag does not verify. The plaintext starts at
    /// [`HEADER_LEN`].
    pub fn open_in_place(&self, header: &Header, datagram: &mut [u8]) -> Option<usize> {
        let h: [u8; HEADER_LEN] = datagram.get(..HEADER_LEN)?.try_into().ok()?;
        let n = self
            .0
            .open_in_place(
                nonce(header.counter),
                Aad::from(h),
                &mut datagram[HEADER_LEN..],
            )
            .ok()?
            .len();
        Some(n)
    }

    /// The plaintext of `datagram` (whose header is `header`), or `None` when the tag
    /// does not verify.
    pub fn open(&self, header: &Header, datagram: &[u8]) -> Option<Vec<u8>> {
        let mut body = datagram[HEADER_LEN..].to_vec();
        let h: [u8; HEADER_LEN] = datagram[..HEADER_LEN].try_into().ok()?;
        let n = self
            .0
            .open_in_place(nonce(header.counter), Aad::from(h), &mut body)
            .ok()?
            .len();
        body.truncate(n);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_opens_only_as_sealed() {
        let key = Key::new(&[7; 32]);
        let h = Header {
            kind: Kind::Data,
            index: 0xdead_beef,
            counter: 42,
        };
        let mut d = Vec::new();
        key.seal(&h, b"hello", &mut d);
        assert_eq!(d.len(), OVERHEAD + 5);
        assert_eq!(Header::parse(&d), Some(h));
        assert_eq!(key.open(&h, &d).as_deref(), Some(&b"hello"[..]));
        // Any change of header, body or tag, or another key: refused.
        for i in [0, 5, 9, HEADER_LEN, d.len() - 1] {
            let mut bad = d.clone();
            bad[i] ^= 1;
            let hb = Header::parse(&bad).unwrap_or(h);
            assert!(key.open(&hb, &bad).is_none(), "flipped byte {i}");
        }
        assert!(Key::new(&[8; 32]).open(&h, &d).is_none());
    }

    #[test]
    fn short_or_strange_datagrams_have_no_header() {
        let mut d = Vec::new();
        Key::new(&[1; 32]).seal(
            &Header {
                kind: Kind::Keepalive,
                index: 1,
                counter: 0,
            },
            b"",
            &mut d,
        );
        assert!(Header::parse(&d).is_some(), "an empty keepalive is whole");
        assert!(Header::parse(&d[..OVERHEAD - 1]).is_none(), "truncated");
        let mut t = d.clone();
        t[0] = 3;
        assert!(Header::parse(&t).is_none(), "unknown type");
        let mut r = d.clone();
        r[2] = 1;
        assert!(Header::parse(&r).is_none(), "reserved bytes");
    }
}
