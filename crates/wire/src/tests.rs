use super::*;
use proptest::prelude::*;

fn key(s: &str) -> ClusterKey {
    ClusterKey::from_secret(s.as_bytes()).unwrap()
}

/// Runs a handshake between two ends, passing messages through the framing as a socket
/// would. Returns both transports, or the first error with the side that saw it.
fn handshake(
    a: &Identity,
    ka: &ClusterKey,
    b: &Identity,
    kb: &ClusterKey,
) -> Result<(Transport, Transport), (Role, WireError)> {
    let mut i = Handshake::new(Role::Initiator, a, ka).unwrap();
    let mut r = Handshake::new(Role::Responder, b, kb).unwrap();
    let mut wire = FrameReader::new();
    while !(i.is_finished() && r.is_finished()) {
        let (from, to, to_role) = if i.my_turn() {
            (&mut i, &mut r, Role::Responder)
        } else {
            (&mut r, &mut i, Role::Initiator)
        };
        let msg = from.write().unwrap();
        wire.push(&encode_frame(&msg).unwrap());
        let frame = wire.next_frame().unwrap().unwrap();
        to.read(&frame).map_err(|e| (to_role, e))?;
    }
    Ok((i.finish().unwrap(), r.finish().unwrap()))
}

#[test]
fn peers_with_the_secret_authenticate_each_other() {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let k = key("s3cret");
    let (mut ta, mut tb) = handshake(&a, &k, &b, &k).unwrap();
    assert_eq!(ta.remote_node_id(), b.node_id());
    assert_eq!(tb.remote_node_id(), a.node_id());
    let frames = ta.seal(b"hello").unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(tb.open(&frames[0]).unwrap().as_deref(), Some(&b"hello"[..]));
    let back = tb.seal(b"").unwrap();
    assert_eq!(ta.open(&back[0]).unwrap().as_deref(), Some(&b""[..]));
}

#[test]
fn a_peer_with_a_wrong_secret_is_refused() {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let err = handshake(&a, &key("wrong"), &b, &key("right"))
        .err()
        .unwrap();
    assert_eq!(
        err.0,
        Role::Responder,
        "the responder detects it at message 3"
    );
    assert!(matches!(err.1, WireError::Noise(_)));
}

#[test]
fn altered_replayed_and_reordered_frames_fail() {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let k = key("k");
    let (mut ta, mut tb) = handshake(&a, &k, &b, &k).unwrap();
    let f1 = ta.seal(b"one").unwrap().remove(0);
    let f2 = ta.seal(b"two").unwrap().remove(0);
    let mut altered = f1.clone();
    altered[3] ^= 1;
    assert!(tb.open(&altered).is_err());

    let (mut ta, mut tb) = handshake(&a, &k, &b, &k).unwrap();
    let f1 = ta.seal(b"one").unwrap().remove(0);
    assert!(tb.open(&f1).unwrap().is_some());
    assert!(tb.open(&f1).is_err(), "a replayed frame must fail");

    let (mut ta, mut tb) = handshake(&a, &k, &b, &k).unwrap();
    let _f1 = ta.seal(b"one").unwrap().remove(0);
    let f2b = ta.seal(b"two").unwrap().remove(0);
    assert!(tb.open(&f2b).is_err(), "a frame out of order must fail");
    let _ = f2;
}

#[test]
fn large_messages_are_chunked_and_reassembled() {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let k = key("k");
    let (mut ta, mut tb) = handshake(&a, &k, &b, &k).unwrap();
    let msg: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let frames = ta.seal(&msg).unwrap();
    assert_eq!(frames.len(), 4);
    let mut stream = Vec::new();
    for f in &frames {
        assert!(f.len() <= MAX_FRAME);
        stream.extend(encode_frame(f).unwrap());
    }
    // Delivered one byte at a time, as a slow socket might.
    let mut reader = FrameReader::new();
    let mut got = None;
    for byte in stream {
        reader.push(&[byte]);
        while let Some(frame) = reader.next_frame().unwrap() {
            if let Some(m) = tb.open(&frame).unwrap() {
                got = Some(m);
            }
        }
    }
    assert_eq!(got.unwrap(), msg);
}

#[test]
fn framing_rejects_empty_and_oversized_frames() {
    assert!(encode_frame(&[]).is_err());
    assert!(encode_frame(&vec![0; MAX_FRAME + 1]).is_err());
    assert_eq!(encode_frame(&[7]).unwrap(), vec![0, 1, 7]);
    let mut r = FrameReader::new();
    r.push(&[0, 0, 1]);
    assert!(r.next_frame().is_err());
    let mut r = FrameReader::new();
    r.push(&[0, 3, 1, 2]);
    assert_eq!(r.next_frame().unwrap(), None);
    r.push(&[3, 0]);
    assert_eq!(r.next_frame().unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(r.next_frame().unwrap(), None);
}

#[test]
fn handshake_steps_out_of_turn_are_errors() {
    let a = Identity::generate().unwrap();
    let k = key("k");
    let mut r = Handshake::new(Role::Responder, &a, &k).unwrap();
    assert!(!r.my_turn());
    assert!(matches!(r.write(), Err(WireError::Order(_))));
    assert!(r.read(b"garbage that is not a noise message").is_err());
    let i = Handshake::new(Role::Initiator, &a, &k).unwrap();
    assert!(matches!(i.finish(), Err(WireError::Order(_))));
}

#[test]
fn cluster_keys_come_from_the_secret_through_hkdf() {
    assert_eq!(key("abc"), ClusterKey::from_secret(b"  abc\n").unwrap());
    assert_ne!(key("abc"), key("abd"));
    assert!(ClusterKey::from_secret(b" \n\t").is_err());
    // Not a bare hash of the secret.
    let bare: [u8; 32] = Sha256::digest(b"abc").into();
    assert_ne!(key("abc").0, bare);
}

#[test]
fn identities_are_random_persistable_and_never_printed() {
    let a = Identity::generate().unwrap();
    let b = Identity::generate().unwrap();
    assert_ne!(a.node_id(), b.node_id());
    let json = serde_json::to_string(&a).unwrap();
    let back: Identity = serde_json::from_str(&json).unwrap();
    assert_eq!(a, back);
    assert_eq!(back.node_id(), a.node_id());
    assert!(!format!("{a:?}").contains(&to_hex(&a.private)));
    assert!(serde_json::from_str::<Identity>(r#"{"private":"00","public":"zz"}"#).is_err());
}

proptest! {
    // Each case runs a handshake (slow curve arithmetic in debug builds): fewer cases.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn garbage_never_panics_the_reader_or_the_transport(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)
    ) {
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let k = key("k");
        let (_ta, mut tb) = handshake(&a, &k, &b, &k).unwrap();
        let mut r = FrameReader::new();
        for c in &chunks {
            r.push(c);
            while let Ok(Some(frame)) = r.next_frame() {
                let _ = tb.open(&frame);
            }
        }
        let mut hs = Handshake::new(Role::Responder, &b, &k).unwrap();
        for c in &chunks {
            if hs.read(c).is_err() { break; }
        }
    }

    #[test]
    fn hex_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes));
    }
}
