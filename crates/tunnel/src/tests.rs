//! Two tunnels in memory: every transition of docs/encryption.md's table.

use super::*;

/// A deterministic randomness source (xorshift): tests only.
fn rng(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut s = seed | 1;
    move |buf: &mut [u8]| {
        for b in buf {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *b = s as u8;
        }
    }
}

type Rng = Box<dyn FnMut(&mut [u8])>;

struct Pair {
    a: Tunnel<&'static str>,
    b: Tunnel<&'static str>,
    ra: Rng,
    rb: Rng,
}

impl Pair {
    fn new(cfg: Config) -> Pair {
        let mut a = Tunnel::new(cfg.clone());
        let mut b = Tunnel::new(cfg);
        a.add_peer("b");
        b.add_peer("a");
        Pair {
            a,
            b,
            ra: Box::new(rng(1)),
            rb: Box::new(rng(2)),
        }
    }

    /// Delivers control messages both ways until none is left.
    fn deliver(
        &mut self,
        now: u64,
        mut from_a: Vec<(&'static str, Control)>,
        mut from_b: Vec<(&'static str, Control)>,
    ) {
        while !from_a.is_empty() || !from_b.is_empty() {
            let mut next_b = Vec::new();
            for (_, m) in from_a.drain(..) {
                next_b.extend(self.b.control(now, &"a", m, &mut self.rb));
            }
            let mut next_a = Vec::new();
            for (_, m) in from_b.drain(..) {
                next_a.extend(self.a.control(now, &"b", m, &mut self.ra));
            }
            from_a = next_a;
            from_b = next_b;
        }
    }

    fn tick(&mut self, now: u64) {
        let fa = self.a.tick(now, &mut self.ra);
        let fb = self.b.tick(now, &mut self.rb);
        self.deliver(now, fa, fb);
    }

    /// a seals `msg` for b.
    fn a_to_b(&mut self, now: u64, msg: &[u8]) -> Result<Vec<u8>, Drop> {
        let mut d = Vec::new();
        self.a.seal(now, &"b", Kind::Data, msg, &mut d)?;
        Ok(d)
    }
}

fn drops(t: &Tunnel<&'static str>, p: &'static str, d: Drop) -> u64 {
    t.peer(&p)
        .unwrap()
        .counters()
        .drops
        .get(&d)
        .copied()
        .unwrap_or(0)
}

#[test]
fn nothing_is_sent_before_keys_and_everything_after() {
    let mut p = Pair::new(Config::default());
    assert_eq!(
        p.a_to_b(0, b"early"),
        Err(Drop::NoKey),
        "no key: dropped, not sent"
    );
    assert_eq!(drops(&p.a, "b", Drop::NoKey), 1);
    p.tick(0);
    let d = p.a_to_b(1, b"hello").unwrap();
    assert!(
        !d.windows(5).any(|w| w == b"hello"),
        "the plaintext is not on the wire"
    );
    assert_eq!(p.b.open(&d), Ok(("a", Kind::Data, b"hello".to_vec())));
    let mut back = Vec::new();
    p.b.seal(1, &"a", Kind::Keepalive, b"", &mut back).unwrap();
    assert_eq!(p.a.open(&back), Ok(("b", Kind::Keepalive, Vec::new())));
    assert_eq!(p.b.peer(&"a").unwrap().counters().received, 1);
    assert_eq!(
        p.a.seal(1, &"nobody", Kind::Data, b"x", &mut Vec::new()),
        Err(Drop::NoPeer)
    );
}

#[test]
fn a_new_peer_is_offered_a_key_and_asked_for_one_at_the_first_tick() {
    let mut p = Pair::new(Config::default());
    let out = p.a.tick(0, &mut p.ra);
    assert!(out.iter().any(|(_, m)| *m == Control::Request), "{out:?}");
    assert!(out.iter().any(|(_, m)| matches!(m, Control::Offer { .. })));
    // Said once: the next tick has nothing to say.
    assert!(p.a.tick(1, &mut p.ra).is_empty());
}

#[test]
fn a_sender_without_a_key_asks_at_most_every_second() {
    let mut p = Pair::new(Config::default());
    for t in [0, 10, 20] {
        assert_eq!(p.a_to_b(t, b"x"), Err(Drop::NoKey));
    }
    let out = p.a.tick(20, &mut p.ra);
    assert_eq!(
        out.iter().filter(|(_, m)| *m == Control::Request).count(),
        1
    );
    assert!(p
        .a
        .tick(30, &mut p.ra)
        .iter()
        .all(|(_, m)| *m != Control::Request));
    assert_eq!(p.a_to_b(1_100, b"x"), Err(Drop::NoKey));
    let out = p.a.tick(1_100, &mut p.ra);
    assert!(
        out.iter().any(|(_, m)| *m == Control::Request),
        "again after a second"
    );
    // The request makes b offer a key at once.
    let answer = p.b.control(1_100, &"a", Control::Request, &mut p.rb);
    assert!(matches!(answer.as_slice(), [("a", Control::Offer { .. })]));
}

#[test]
fn rotation_keeps_the_old_key_for_packets_in_flight_then_drops_it() {
    let cfg = Config::default();
    let mut p = Pair::new(cfg.clone());
    p.tick(0);
    let old = p.a_to_b(1, b"sent before the rotation").unwrap();
    // b rotates (its key is due); a switches as the offer arrives.
    p.tick(cfg.rotate_after_ms);
    let new = p.a_to_b(cfg.rotate_after_ms + 1, b"after").unwrap();
    assert_ne!(
        Header::parse(&old).unwrap().index,
        Header::parse(&new).unwrap().index
    );
    assert_eq!(
        Header::parse(&new).unwrap().counter,
        0,
        "a new key starts at 0"
    );
    assert!(p.b.open(&new).is_ok());
    assert!(
        p.b.open(&old).is_ok(),
        "the old key still opens packets in flight"
    );
    // After keep_old the old key is gone.
    let late = cfg.rotate_after_ms + cfg.keep_old_ms;
    p.tick(late);
    // A datagram of the old key, arriving after it is gone.
    let straggler = p.a_to_b(late, b"x").unwrap();
    assert!(p.b.open(&straggler).is_ok(), "sent with the new key");
    assert_eq!(p.b.open(&old), Err(Drop::UnknownKey));
    let fresh = p.a_to_b(late + 1, b"still fine").unwrap();
    assert!(p.b.open(&fresh).is_ok());
}

#[test]
fn a_sender_stops_using_old_or_worn_keys() {
    let cfg = Config {
        message_limit: 3,
        ..Config::default()
    };
    let mut p = Pair::new(cfg.clone());
    p.tick(0);
    for i in 0..3 {
        assert!(p.a_to_b(1, &[i]).is_ok());
    }
    assert_eq!(p.a_to_b(1, b"fourth"), Err(Drop::NoKey), "message limit");
    let out = p.a.tick(2, &mut p.ra);
    assert!(out.iter().any(|(_, m)| *m == Control::Request));
    let mut p = Pair::new(Config {
        rotate_after_ms: u64::MAX,
        ..Config::default()
    });
    p.tick(0);
    assert!(p.a_to_b(1, b"x").is_ok());
    assert_eq!(
        p.a_to_b(180_000, b"x"),
        Err(Drop::NoKey),
        "reject after time"
    );
}

#[test]
fn replays_forgeries_and_garbage_are_dropped_and_counted() {
    let mut p = Pair::new(Config::default());
    p.tick(0);
    let d = p.a_to_b(1, b"once").unwrap();
    assert!(p.b.open(&d).is_ok());
    assert_eq!(p.b.open(&d), Err(Drop::Replay), "the same datagram again");
    assert_eq!(drops(&p.b, "a", Drop::Replay), 1);
    let mut forged = p.a_to_b(2, b"twice").unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 0x80;
    assert_eq!(p.b.open(&forged), Err(Drop::BadTag));
    assert_eq!(drops(&p.b, "a", Drop::BadTag), 1);
    // A forged packet does not move the window: the genuine one still opens.
    forged[last] ^= 0x80;
    assert!(p.b.open(&forged).is_ok());
    assert_eq!(p.b.open(&d[..20]), Err(Drop::Malformed), "truncated");
    let mut unknown = d.clone();
    unknown[4..8].copy_from_slice(&[9, 9, 9, 9]);
    assert_eq!(p.b.open(&unknown), Err(Drop::UnknownKey));
    // A counter past the limit is refused before any crypto.
    let mut far = d.clone();
    far[8..16].copy_from_slice(&(1u64 << 41).to_be_bytes());
    assert_eq!(p.b.open(&far), Err(Drop::CounterLimit));
}

#[test]
fn reordered_packets_within_the_window_all_arrive_once() {
    let mut p = Pair::new(Config::default());
    p.tick(0);
    let ds: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| p.a_to_b(1, &i.to_be_bytes()).unwrap())
        .collect();
    // Newest first, then the rest: every one inside 8128 of the top.
    for d in ds.iter().rev() {
        assert!(p.b.open(d).is_ok());
    }
    for d in &ds {
        assert_eq!(p.b.open(d), Err(Drop::Replay));
    }
    assert_eq!(p.b.peer(&"a").unwrap().counters().received, 3000);
}

#[test]
fn a_resent_offer_does_not_reset_the_counter_and_a_removed_peer_gets_nothing() {
    let mut p = Pair::new(Config::default());
    let out = p.b.tick(0, &mut p.rb);
    let (_, offer) = out
        .iter()
        .find(|(_, m)| matches!(m, Control::Offer { .. }))
        .cloned()
        .unwrap();
    p.a.control(0, &"b", offer.clone(), &mut p.ra);
    assert!(p.a_to_b(1, b"x").is_ok());
    p.a.control(2, &"b", offer, &mut p.ra);
    let d = p.a_to_b(3, b"y").unwrap();
    assert_eq!(Header::parse(&d).unwrap().counter, 1, "no nonce reuse");
    p.b.remove_peer(&"a");
    assert_eq!(p.b.open(&d), Err(Drop::UnknownKey));
}

#[test]
fn control_messages_survive_their_encoding_and_garbage_is_refused() {
    let offer = Control::Offer {
        index: 0xdead_beef,
        key: [7; 32],
    };
    assert_eq!(Control::decode(&offer.encode()), Some(offer));
    assert_eq!(
        Control::decode(&Control::Request.encode()),
        Some(Control::Request)
    );
    let mut zero_index = Control::Offer {
        index: 1,
        key: [1; 32],
    }
    .encode();
    zero_index[1..5].copy_from_slice(&[0; 4]);
    for bad in [&[][..], &[3], &[2, 0], &[1; 36], &[1; 38], &zero_index] {
        assert_eq!(Control::decode(bad), None, "{bad:?}");
    }
}

#[test]
fn a_restarted_peer_is_reached_again_once_the_connection_returns() {
    let mut p = Pair::new(Config::default());
    p.tick(0);
    let d = p.a_to_b(10, b"before").unwrap();
    assert!(p.b.open(&d).is_ok());
    // b restarts: it has no keys; a still sends with the key b chose before.
    p.b = Tunnel::new(Config::default());
    p.b.add_peer("a");
    let d = p.a_to_b(20, b"lost").unwrap();
    assert_eq!(p.b.open(&d).unwrap_err(), Drop::UnknownKey);
    // b's first tick offers a key; the mesh connection is back, so a offers too.
    p.a.reoffer(&"b");
    p.tick(30);
    let d = p.a_to_b(40, b"after").unwrap();
    assert_eq!(p.b.open(&d).unwrap().2, b"after");
    let d = p.b.seal_for_test(40, "a", b"back");
    assert_eq!(p.a.open(&d).unwrap().2, b"back");
}

#[test]
fn a_lost_offer_is_made_good_by_reoffering() {
    let mut p = Pair::new(Config::default());
    p.tick(0);
    // b rotates but the offer is lost with the connection; b drops its old key later.
    let cfg = Config::default();
    let lost = p.b.tick(cfg.rotate_after_ms, &mut p.rb);
    assert_eq!(lost.len(), 1);
    p.b.tick(cfg.rotate_after_ms + cfg.keep_old_ms, &mut p.rb);
    let now = cfg.rotate_after_ms + cfg.keep_old_ms + 1;
    let d = p.a_to_b(now, b"stale").unwrap();
    assert_eq!(p.b.open(&d).unwrap_err(), Drop::UnknownKey);
    // The connection comes back: b offers again.
    p.b.reoffer(&"a");
    p.tick(now);
    let d = p.a_to_b(now, b"fresh").unwrap();
    assert_eq!(p.b.open(&d).unwrap().2, b"fresh");
}

impl Tunnel<&'static str> {
    fn seal_for_test(&mut self, now: u64, p: &'static str, msg: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        self.seal(now, &p, Kind::Data, msg, &mut d).unwrap();
        d
    }
}
