//! Datagrams in batches for the DNS server: `recvmmsg` takes every query waiting (up to
//! [`BATCH`]) in one system call, `sendmmsg` sends their answers in one, so that under
//! load the server makes a few calls per batch instead of two per query.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

/// Datagrams per call at most.
pub(crate) const BATCH: usize = 32;
/// The largest query taken (EDNS queries are small; a longer datagram is dropped).
const MAX_IN: usize = 4096;

/// A peer's address as the kernel gave it, to answer to.
#[derive(Clone, Copy)]
pub(crate) struct Peer {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Peer {
    /// As a `SocketAddr` (None: not IPv4 or IPv6).
    pub(crate) fn socket_addr(&self) -> Option<SocketAddr> {
        match i32::from(self.addr.ss_family) {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in (family AF_INET) into this
                // storage, which is larger and aligned for any socket address.
                let a = unsafe { &*(&self.addr as *const _ as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, a sockaddr_in6 (family AF_INET6).
                let a = unsafe { &*(&self.addr as *const _ as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(a.sin6_port)))
            }
            _ => None,
        }
    }
}

/// Buffers for one `recvmmsg`.
pub(crate) struct Batch {
    bufs: Vec<[u8; MAX_IN]>,
    peers: Vec<Peer>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
}

impl Batch {
    pub(crate) fn new() -> Batch {
        Batch {
            bufs: vec![[0u8; MAX_IN]; BATCH],
            // SAFETY: sockaddr_storage is plain data for which all zeroes is valid.
            peers: vec![
                Peer {
                    addr: unsafe { std::mem::zeroed() },
                    len: 0
                };
                BATCH
            ],
            lens: vec![0; BATCH],
            truncated: vec![false; BATCH],
        }
    }

    /// Waits for at least one datagram on the blocking socket `fd` and takes every one
    /// waiting, up to [`BATCH`]; returns how many.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iov: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: MAX_IN,
            })
            .collect();
        // SAFETY: mmsghdr is plain data for which all zeroes is valid.
        let mut hdrs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&mut self.peers[i].addr as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut iov[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at an iovec over a live buffer of MAX_IN bytes and
        // at a live sockaddr_storage with its size, all owned here and not moved until
        // the call returns; the kernel writes at most that much.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs.iter().take(n).enumerate() {
            self.lens[i] = h.msg_len as usize;
            self.peers[i].len = h.msg_hdr.msg_namelen;
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    /// Datagram `i` of the last `recv` and who sent it; None when it was too long.
    pub(crate) fn get(&self, i: usize) -> Option<(&[u8], Peer)> {
        (!self.truncated[i]).then(|| (&self.bufs[i][..self.lens[i]], self.peers[i]))
    }
}

/// Sends each answer to its peer on `fd`, as few calls as the kernel allows; answers the
/// kernel refuses (a peer gone) are dropped.
pub(crate) fn send_all(fd: RawFd, out: &mut [(Vec<u8>, Peer)]) {
    let mut done = 0;
    while done < out.len() {
        let rest = &mut out[done..];
        let mut iov: Vec<libc::iovec> = rest
            .iter_mut()
            .map(|(b, _)| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain data for which all zeroes is valid.
        let mut hdrs: Vec<libc::mmsghdr> = (0..rest.len())
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&mut rest[i].1.addr as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = rest[i].1.len;
            h.msg_hdr.msg_iov = &mut iov[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at an iovec over a live answer buffer and at its
        // peer's address with the length the kernel gave; nothing moves during the call.
        let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, 0) };
        if n <= 0 {
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first answer cannot be sent (its peer is unreachable): skip it.
            done += 1;
        } else {
            done += n as usize;
        }
    }
}
