//! TCP segmentation and coalescing in userspace, for a TUN device opened with
//! `IFF_VNET_HDR` and TSO (docs/encryption.md, "Batching"): the kernel hands the tunnel
//! TCP superpackets of up to 64 KB with a `virtio_net_hdr`; [`split`] cuts one into the
//! packets that travel (each sealed alone), with their IP and TCP headers and checksums
//! as the kernel would have made them. On the way in, [`coalesce`] joins consecutive
//! segments of one flow back into a superpacket and its header, so the kernel takes 64 KB
//! per write. Pure: buffers in, buffers out.

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the transport checksum holds only the pseudo-header's
/// sum; the rest is to be added from `csum_start`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// The header's length (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// `struct virtio_net_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` or 0.
    pub flags: u8,
    /// `GSO_*`.
    pub gso_type: u8,
    /// Length of the IP and TCP headers.
    pub hdr_len: u16,
    /// The segment size (MSS).
    pub gso_size: u16,
    /// Where checksumming starts (the TCP header).
    pub csum_start: u16,
    /// Where the checksum is, from `csum_start` (16 for TCP).
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the 10 bytes (little endian, as on x86 and as `TUNSETVNETLE` says).
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// The 10 bytes.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// Why a packet cannot be cut or joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// Not IPv4 or IPv6 with TCP where the header says, or too short.
    NotTcp,
    /// The header's lengths or offsets do not match the packet.
    BadHeader,
}

/// One's complement sum of `data` added to `sum` (not folded).
fn sum16(data: &[u8], mut sum: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The IP version and header length of `p`, and whether it carries TCP.
fn ip_header(p: &[u8]) -> Result<(bool, usize), OffloadError> {
    match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < ihl || p[9] != 6 {
                return Err(OffloadError::NotTcp);
            }
            Ok((false, ihl))
        }
        // IPv6 without extension headers: TCP right after the fixed header.
        Some(6) if p.len() >= 40 && p[6] == 6 => Ok((true, 40)),
        _ => Err(OffloadError::NotTcp),
    }
}

/// The pseudo-header's sum for a TCP segment of `tcp_len` bytes in packet `p`.
fn pseudo(p: &[u8], v6: bool, tcp_len: usize) -> u64 {
    let mut s = if v6 {
        sum16(&p[8..40], 0)
    } else {
        sum16(&p[12..20], 0)
    };
    s += 6 + tcp_len as u64;
    s
}

/// Writes the lengths, the IPv4 header checksum and the TCP checksum of packet `p`
/// (IP header `ip_len` long).
fn finish(p: &mut [u8], v6: bool, ip_len: usize) {
    let tcp_len = p.len() - ip_len;
    if v6 {
        p[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    } else {
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = !fold(sum16(&p[..ip_len], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let csum_at = ip_len + 16;
    p[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    let s = pseudo(p, v6, tcp_len);
    let c = !fold(sum16(&p[ip_len..], s));
    p[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
}

/// True if the TCP checksum (and the IPv4 header checksum) of `p` verify.
pub fn checksums_ok(p: &[u8]) -> bool {
    let Ok((v6, ip_len)) = ip_header(p) else {
        return false;
    };
    if p.len() < ip_len + 20 {
        return false;
    }
    let ip_ok = v6 || fold(sum16(&p[..ip_len], 0)) == 0xffff;
    let tcp_len = p.len() - ip_len;
    ip_ok && fold(sum16(&p[ip_len..], pseudo(p, v6, tcp_len))) == 0xffff
}

/// Cuts the packet a TUN device gave (`hdr`, then `p`) into the packets that travel,
/// each with full checksums. A packet without GSO comes back whole (its checksum
/// completed when the header asks for it); TCP with GSO in `gso_size` pieces: sequence
/// numbers advanced, IPv4 ids counted up, FIN and PSH on the last piece only, CWR on
/// the first only.
pub fn split(hdr: &VnetHdr, p: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let mut out = Vec::new();
    split_each(hdr, p, &mut Vec::new(), |seg| out.push(seg.to_vec()))?;
    Ok(out)
}

/// As [`split`], handing each packet to `f` in turn, built in `scratch` (no allocation
/// per packet); returns how many there were.
pub fn split_each(
    hdr: &VnetHdr,
    p: &[u8],
    scratch: &mut Vec<u8>,
    mut f: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    if hdr.gso_type == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM == 0 {
            f(p);
            return Ok(1);
        }
        let start = usize::from(hdr.csum_start);
        let at = start + usize::from(hdr.csum_offset);
        if at + 2 > p.len() || start > p.len() {
            return Err(OffloadError::BadHeader);
        }
        scratch.clear();
        scratch.extend_from_slice(p);
        // The field holds the pseudo-header's sum; add the rest.
        scratch[at..at + 2].copy_from_slice(&[0, 0]);
        let partial = u64::from(u16::from_be_bytes([p[at], p[at + 1]]));
        let c = !fold(sum16(&scratch[start..], partial));
        scratch[at..at + 2].copy_from_slice(&c.to_be_bytes());
        f(scratch);
        return Ok(1);
    }
    let (v6, ip_len) = ip_header(p)?;
    if (hdr.gso_type & 0x7f) != if v6 { GSO_TCPV6 } else { GSO_TCPV4 } {
        return Err(OffloadError::BadHeader);
    }
    if p.len() < ip_len + 20 {
        return Err(OffloadError::NotTcp);
    }
    let tcp_hdr = usize::from(p[ip_len + 12] >> 4) * 4;
    let headers = ip_len + tcp_hdr;
    let mss = usize::from(hdr.gso_size);
    if tcp_hdr < 20 || p.len() < headers || mss == 0 {
        return Err(OffloadError::BadHeader);
    }
    let payload = &p[headers..];
    if payload.is_empty() {
        scratch.clear();
        scratch.extend_from_slice(p);
        finish(scratch, v6, ip_len);
        f(scratch);
        return Ok(1);
    }
    let seq = u32::from_be_bytes(p[ip_len + 4..ip_len + 8].try_into().expect("4 bytes"));
    let id = u16::from_be_bytes([p[4], p[5]]);
    let flags = p[ip_len + 13];
    let n = payload.len().div_ceil(mss);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        scratch.clear();
        scratch.extend_from_slice(&p[..headers]);
        scratch.extend_from_slice(chunk);
        let off = (i * mss) as u32;
        scratch[ip_len + 4..ip_len + 8].copy_from_slice(&seq.wrapping_add(off).to_be_bytes());
        let mut fl = flags;
        if i + 1 < n {
            fl &= !(0x01 | 0x08); // FIN, PSH: the last piece's
        }
        if i > 0 {
            fl &= !0x80; // CWR: the first piece's
        }
        scratch[ip_len + 13] = fl;
        if !v6 {
            scratch[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        }
        finish(scratch, v6, ip_len);
        f(scratch);
    }
    Ok(n)
}

/// The flow and position of a TCP packet, for coalescing.
struct Seg {
    v6: bool,
    ip_len: usize,
    headers: usize,
    seq: u32,
}

fn seg(p: &[u8]) -> Option<Seg> {
    let (v6, ip_len) = ip_header(p).ok()?;
    if p.len() < ip_len + 20 {
        return None;
    }
    let tcp_hdr = usize::from(p[ip_len + 12] >> 4) * 4;
    let headers = ip_len + tcp_hdr;
    if tcp_hdr < 20 || p.len() < headers {
        return None;
    }
    // Only plain data segments join: ACK and at most PSH; IPv4 without fragmentation
    // flags other than DF and without options.
    let flags = p[ip_len + 13];
    if flags & !(0x10 | 0x08) != 0 || flags & 0x10 == 0 {
        return None;
    }
    if !v6 && (ip_len != 20 || p[6] & 0x3f != 0 || p[7] != 0) {
        return None;
    }
    Some(Seg {
        v6,
        ip_len,
        headers,
        seq: u32::from_be_bytes(p[ip_len + 4..ip_len + 8].try_into().ok()?),
    })
}

/// True if `b` continues `a` in one flow: the same addresses, ports, ack, window,
/// options and TTL, the next sequence number, and `a` not pushed.
fn follows(a: &[u8], sa: &Seg, b: &[u8], sb: &Seg) -> bool {
    if sa.v6 != sb.v6 || sa.headers != sb.headers {
        return false;
    }
    let ip = sa.ip_len;
    let same_ip = if sa.v6 {
        a[8..40] == b[8..40] && a[0..4] == b[0..4] && a[7] == b[7]
    } else {
        a[12..20] == b[12..20] && a[8] == b[8] && a[1] == b[1] && a[6] == b[6]
    };
    let payload_a = (a.len() - sa.headers) as u32;
    same_ip
        // Ports, ack, data offset, window, options; the flags apart from PSH.
        && a[ip..ip + 4] == b[ip..ip + 4]
        && a[ip + 8..ip + 13] == b[ip + 8..ip + 13]
        && a[ip + 14..ip + 16] == b[ip + 14..ip + 16]
        && a[ip + 20..sa.headers] == b[ip + 20..sb.headers]
        && a[ip + 13] & 0x08 == 0
        && sa.seq.wrapping_add(payload_a) == sb.seq
}

/// Joins `packets` (decrypted, in arrival order) into what is written to the TUN device:
/// runs of consecutive full-size segments of one flow (the last may be shorter) become
/// one superpacket with a GSO header; anything else goes alone with an empty header.
/// Nothing is reordered. `max` bounds a superpacket's length (64 KB).
pub fn coalesce<T: AsRef<[u8]>>(packets: &[T], max: usize) -> Vec<(VnetHdr, Vec<u8>)> {
    let mut out: Vec<(VnetHdr, Vec<u8>)> = Vec::new();
    // The run being built: its first segment's info, its segment size and whether it
    // ended (a shorter segment closes it).
    let mut run: Option<(Seg, usize, bool, Vec<u8>, u32)> = None;
    let close = |run: &mut Option<(Seg, usize, bool, Vec<u8>, u32)>,
                 out: &mut Vec<(VnetHdr, Vec<u8>)>| {
        if let Some((s, mss, _, mut p, count)) = run.take() {
            if count == 1 {
                out.push((VnetHdr::default(), p));
                return;
            }
            let tcp_len = p.len() - s.ip_len;
            // Lengths and the IPv4 header checksum of the whole; the TCP checksum field
            // holds the pseudo-header's sum, the kernel adds the rest (NEEDS_CSUM).
            finish(&mut p, s.v6, s.ip_len);
            let partial = fold(pseudo(&p, s.v6, tcp_len));
            let at = s.ip_len + 16;
            p[at..at + 2].copy_from_slice(&partial.to_be_bytes());
            out.push((
                VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: if s.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                    hdr_len: s.headers as u16,
                    gso_size: mss as u16,
                    csum_start: s.ip_len as u16,
                    csum_offset: 16,
                },
                p,
            ));
        }
    };
    for pkt in packets {
        let pkt = pkt.as_ref();
        let Some(sb) = seg(pkt) else {
            close(&mut run, &mut out);
            out.push((VnetHdr::default(), pkt.to_vec()));
            continue;
        };
        let len_b = pkt.len() - sb.headers;
        let joins = match &run {
            Some((sa, mss, ended, p, count)) => {
                !*ended
                    && len_b > 0
                    && len_b <= *mss
                    && p.len() + len_b <= max
                    && *count < u32::from(u16::MAX)
                    && follows(p, sa, pkt, &sb)
            }
            None => false,
        };
        if joins {
            let (_, mss, ended, p, count) = run.as_mut().expect("joins a run");
            p.extend_from_slice(&pkt[sb.headers..]);
            // PSH on the segment that ends the run stays on the whole.
            let ip = sb.ip_len;
            p[ip + 13] |= pkt[ip + 13] & 0x08;
            *count += 1;
            if len_b < *mss || pkt[ip + 13] & 0x08 != 0 {
                *ended = true;
            }
            continue;
        }
        close(&mut run, &mut out);
        if len_b == 0 {
            out.push((VnetHdr::default(), pkt.to_vec()));
            continue;
        }
        let pushed = pkt[sb.ip_len + 13] & 0x08 != 0;
        run = Some((sb, len_b, pushed, pkt.to_vec(), 1));
    }
    close(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests;
