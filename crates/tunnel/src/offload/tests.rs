use super::*;
use proptest::prelude::*;

/// A TCP packet as a TUN device with TSO hands it over: IPv4 (DF, id 100) or IPv6,
/// `opts` bytes of TCP options, ACK plus `flags`, the TCP checksum field holding the
/// pseudo-header's sum (NEEDS_CSUM).
fn superpacket(v6: bool, opts: usize, payload: &[u8], flags: u8) -> Vec<u8> {
    let ip_len = if v6 { 40 } else { 20 };
    let tcp_len = 20 + opts;
    let mut p = vec![0u8; ip_len + tcp_len];
    if v6 {
        p[0] = 0x60;
        p[6] = 6;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0x32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0xfd, 0x32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        p[0] = 0x45;
        p[4..6].copy_from_slice(&100u16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 32, 0, 1]);
        p[16..20].copy_from_slice(&[10, 32, 0, 2]);
    }
    let t = ip_len;
    p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&0xffff_ff00u32.to_be_bytes()); // wraps inside
    p[t + 8..t + 12].copy_from_slice(&77u32.to_be_bytes());
    p[t + 12] = ((tcp_len / 4) as u8) << 4;
    p[t + 13] = 0x10 | flags;
    p[t + 14..t + 16].copy_from_slice(&500u16.to_be_bytes());
    for i in 0..opts {
        p[t + 20 + i] = 1; // NOPs
    }
    p.extend_from_slice(payload);
    finish(&mut p, v6, ip_len);
    let partial = fold(pseudo(&p, v6, p.len() - ip_len));
    p[t + 16..t + 18].copy_from_slice(&partial.to_be_bytes());
    p
}

fn gso(v6: bool, ip_len: usize, opts: usize, mss: u16) -> VnetHdr {
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: (ip_len + 20 + opts) as u16,
        gso_size: mss,
        csum_start: ip_len as u16,
        csum_offset: 16,
    }
}

#[test]
fn headers_round_trip() {
    let h = gso(false, 20, 12, 1448);
    assert_eq!(VnetHdr::parse(&h.encode()), Some(h));
    assert_eq!(VnetHdr::parse(&[0; 9]), None);
}

#[test]
fn a_packet_without_gso_gets_its_checksum_completed() {
    let p = superpacket(false, 0, b"hello", 0x08);
    assert!(!checksums_ok(&p), "only the pseudo-header's sum so far");
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let out = split(&h, &p).unwrap();
    assert_eq!(out.len(), 1);
    assert!(checksums_ok(&out[0]));
    assert_eq!(
        split(&VnetHdr::default(), &out[0]).unwrap(),
        out,
        "no checksum asked: as is"
    );
}

#[test]
fn other_packets_are_refused_or_passed() {
    let mut udp = superpacket(false, 0, b"x", 0);
    udp[9] = 17;
    assert_eq!(
        split(&gso(false, 20, 0, 100), &udp),
        Err(OffloadError::NotTcp)
    );
    let p = superpacket(true, 0, &[1; 300], 0);
    assert_eq!(
        split(&gso(false, 40, 0, 100), &p),
        Err(OffloadError::BadHeader),
        "family"
    );
    let out = coalesce(&[udp.clone()], 65_535);
    assert_eq!(out, vec![(VnetHdr::default(), udp)]);
}

#[test]
fn different_flows_and_gaps_are_not_joined_and_order_is_kept() {
    let a = split(
        &gso(false, 20, 0, 100),
        &superpacket(false, 0, &[7; 300], 0),
    )
    .unwrap();
    let mut b = split(
        &gso(false, 20, 0, 100),
        &superpacket(false, 0, &[8; 300], 0),
    )
    .unwrap();
    for s in &mut b {
        s[20..22].copy_from_slice(&40001u16.to_be_bytes()); // another source port
        finish(s, false, 20);
    }
    // a0 b0 a1 a2: a0 alone (b0 interrupts), b0 alone, a1+a2 joined.
    let seq = vec![a[0].clone(), b[0].clone(), a[1].clone(), a[2].clone()];
    let out = coalesce(&seq, 65_535);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0].1, a[0]);
    assert_eq!(out[1].1, b[0]);
    assert_eq!(out[2].0.gso_size, 100);
    // A gap (a0 then a2) is not joined.
    let out = coalesce(&[a[0].clone(), a[2].clone()], 65_535);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|(h, _)| h.gso_type == GSO_NONE));
}

proptest! {
    #[test]
    fn split_then_coalesce_gives_back_the_superpacket(
        v6 in any::<bool>(),
        opts in prop_oneof![Just(0usize), Just(12usize)],
        mss in 500u16..1500,
        len in 1usize..20_000,
        fin in any::<bool>(),
    ) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let ip_len = if v6 { 40 } else { 20 };
        let flags = 0x08 | if fin { 0x01 } else { 0 };
        let p = superpacket(v6, opts, &payload, flags);
        let hdr = gso(v6, ip_len, opts, mss);
        let segs = split(&hdr, &p).unwrap();
        let headers = ip_len + 20 + opts;
        prop_assert_eq!(segs.len(), len.div_ceil(usize::from(mss)));
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            prop_assert!(checksums_ok(s), "segment {} checksums", i);
            prop_assert!(s.len() <= headers + usize::from(mss));
            let last = i + 1 == segs.len();
            prop_assert_eq!(s[ip_len + 13] & 0x09 != 0, last, "PSH/FIN on the last only");
            joined.extend_from_slice(&s[headers..]);
        }
        prop_assert_eq!(&joined, &payload);
        let out = coalesce(&segs, 65_535 + 1000);
        if fin {
            // A FIN is no plain data segment: the ones before it join, it goes alone.
            prop_assert_eq!(out.len(), if segs.len() > 1 { 2 } else { 1 });
            prop_assert_eq!(&out.last().unwrap().1, segs.last().unwrap());
            return Ok(());
        }
        prop_assert_eq!(out.len(), 1);
        let (h, whole) = &out[0];
        if segs.len() == 1 {
            prop_assert_eq!(h.gso_type, GSO_NONE);
            prop_assert_eq!(whole, &segs[0]);
        } else {
            prop_assert_eq!(h.gso_size, mss);
            prop_assert_eq!(usize::from(h.hdr_len), headers);
            prop_assert_eq!(&whole[headers..], &payload[..]);
            // What the kernel does with it gives the same segments again.
            prop_assert_eq!(split(h, whole).unwrap(), segs);
        }
    }
}
