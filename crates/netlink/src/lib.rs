//! Thin synchronous netlink wrapper: links, veth pairs, addresses, routes, neighbours, and
//! running code inside a network namespace.
//!
//! This crate decides nothing. It turns small, typed requests into rtnetlink messages on a
//! blocking `NETLINK_ROUTE` socket and reports the kernel's answer. It is synchronous on
//! purpose: the CNI plugin is a short-lived process where a runtime would cost more start-up
//! time than the whole ADD.
//!
//! A [`Netlink`] handle talks to the network namespace its socket was opened in. To work in
//! another namespace, open a handle there with [`Netlink::open_in`] (the calling thread
//! enters it only for the `socket` call), or use [`in_netns`], which runs a closure on a
//! fresh OS thread that has entered the namespace (for work that is not netlink: files of
//! `/proc/sys`, sockets of other kinds).

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
    RouteType, RouteVia,
};
use netlink_packet_route::tc::TcMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The route protocol number weft marks its routes with (`ip route` shows `proto 0x77`
/// unless `/etc/iproute2/rt_protos` names it). Routes with any other protocol are not weft's.
pub const WEFT_ROUTE_PROTOCOL: u8 = 0x77;

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// An error from the kernel or from the socket, with the operation it happened in.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct Error {
    /// What was being done, in words, e.g. `create veth weft1a2b`.
    pub op: String,
    /// The underlying OS error (the kernel's errno for netlink NACKs).
    #[source]
    pub source: std::io::Error,
}

impl Error {
    fn new(op: impl Into<String>, source: std::io::Error) -> Self {
        Error {
            op: op.into(),
            source,
        }
    }

    /// The errno, if the error came from the kernel or a syscall.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// True when the object already exists (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True when the object does not exist (`ENODEV`, `ENOENT`, `ESRCH`, `EADDRNOTAVAIL`).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
        )
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

pub mod netfilter;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU in bytes.
    pub mtu: u32,
    /// Hardware address, if any.
    pub mac: Option<[u8; 6]>,
    /// Administratively up.
    pub up: bool,
    /// The link kind (`veth`, `bridge`, ...), when the kernel reports one.
    pub kind: Option<String>,
    /// The index of the peer/parent link (`IFLA_LINK`), e.g. a veth's other end.
    pub link: Option<u32>,
    /// The alias (`IFLA_IFALIAS`), which weft uses to mark links as its own.
    pub alias: Option<String>,
}

/// A route as the kernel reports it (only the fields weft uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Route scope.
    pub scope: Scope,
    /// Route protocol (who made it).
    pub protocol: u8,
    /// Routing table.
    pub table: u32,
    /// Path MTU (`mtu` metric), if set.
    pub mtu: Option<u32>,
    /// The gateway is on the link whatever the link's addresses say (`onlink`).
    pub onlink: bool,
}

impl Route {
    /// A route with no MTU and without `onlink`.
    pub fn new(
        dst: IpNet,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
        scope: Scope,
        protocol: u8,
        table: u32,
    ) -> Route {
        Route {
            dst,
            gateway,
            oif,
            scope,
            protocol,
            table,
            mtu: None,
            onlink: false,
        }
    }
}

/// Route scope, the subset weft uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Reaches beyond this host (`scope global`).
    Universe,
    /// Directly attached to a link (`scope link`).
    Link,
    /// This host only.
    Host,
    /// Any other value.
    Other(u8),
}

impl From<RouteScope> for Scope {
    fn from(s: RouteScope) -> Self {
        match s {
            RouteScope::Universe => Scope::Universe,
            RouteScope::Link => Scope::Link,
            RouteScope::Host => Scope::Host,
            other => Scope::Other(u8::from(other)),
        }
    }
}

impl From<Scope> for RouteScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Universe => RouteScope::Universe,
            Scope::Link => RouteScope::Link,
            Scope::Host => RouteScope::Host,
            Scope::Other(v) => RouteScope::from(v),
        }
    }
}

/// A blocking rtnetlink socket bound to the network namespace it was opened in.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let mut sock =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::new("open netlink socket", e))?;
        sock.bind_auto()
            .map_err(|e| Error::new("bind netlink socket", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::new("connect netlink socket", e))?;
        // Extended acks give the kernel's reason text on some errors; ignore if unsupported.
        let _ = sock.set_ext_ack(true);
        Ok(Netlink {
            sock,
            seq: 1,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Opens a socket in the network namespace `ns`. A socket stays in the namespace it was
    /// made in, so the calling thread enters `ns` only for the `socket` call and is back in
    /// its own before this returns: two `setns` instead of a thread (the CNI plugin's ADD
    /// programs the container's end this way, on the critical path of every container
    /// start). If the thread cannot go back, the process aborts: everything it did after
    /// would act on the wrong namespace.
    pub fn open_in(ns: &File) -> Result<Self> {
        use nix::sched::{setns, CloneFlags};
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| Error::new("open /proc/thread-self/ns/net", e))?;
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::new("enter network namespace", e.into()))?;
        let opened = Netlink::open();
        if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!("weft: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
        opened
    }

    /// Sends one request with a new sequence number, which it returns.
    fn send(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.sock.send(&out, 0).map_err(|e| Error::new(op(), e))?;
        Ok(self.seq)
    }

    /// Sends one request and collects the answer: for a dump, every message until `DONE`;
    /// otherwise the kernel's ACK (an empty vector) or its error.
    fn request(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(op, msg, flags)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answer = Vec::new();
        self.answers(op, seq, |bytes| {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                .map_err(|e| Error::new(op(), invalid(e)))?;
            if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                answer.push(inner);
                return Ok(!dump);
            }
            Ok(false)
        })?;
        Ok(answer)
    }

    /// Reads the answers to request `seq` until `DONE`, the kernel's ACK or error, or until
    /// `each`, given every other answer whole (header included), says it has what it wants.
    fn answers(
        &mut self,
        op: &dyn Fn() -> String,
        seq: u32,
        mut each: impl FnMut(&[u8]) -> Result<bool>,
    ) -> Result<()> {
        const NLMSG_ERROR: u16 = 2;
        const NLMSG_DONE: u16 = 3;
        loop {
            self.buf.clear();
            self.sock
                .recv(&mut self.buf, 0)
                .map_err(|e| Error::new(op(), e))?;
            let mut offset = 0;
            while offset < self.buf.len() {
                let m = NetlinkBuffer::new_checked(&self.buf[offset..])
                    .map_err(|e| Error::new(op(), invalid(e)))?;
                let whole = &self.buf[offset..offset + m.length() as usize];
                offset += (whole.len() + 3) & !3;
                if m.sequence_number() != seq {
                    continue;
                }
                match m.message_type() {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        // `struct nlmsgerr`: the error first, 0 for an ACK.
                        let code = m
                            .payload()
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        return match code {
                            0 => Ok(()),
                            c => Err(Error::new(op(), std::io::Error::from_raw_os_error(-c))),
                        };
                    }
                    _ => {
                        if each(whole)? {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    fn ack(&mut self, op: &dyn Fn() -> String, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.request(op, msg, flags | NLM_F_ACK).map(|_| ())
    }

    /// All links in this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let msgs = self.request(
            &|| "list links".into(),
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(l)),
                _ => None,
            })
            .collect())
    }

    /// Every queueing discipline in this namespace, as `tc qdisc show` lists them: the
    /// index of its device and its kind (`noqueue`, `clsact`, `tbf`, `ingress`, ...).
    /// Only the kind is read from each answer, so options the parser does not know (a
    /// qdisc from a newer kernel) cannot fail the listing.
    pub fn qdiscs(&mut self) -> Result<Vec<(u32, String)>> {
        let mut out = Vec::new();
        self.dump_raw(
            &|| "list qdiscs".into(),
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            |payload| out.extend(qdisc_kind(payload)),
        )?;
        Ok(out)
    }

    /// A dump whose answers `each` reads from their raw payload (after the netlink
    /// header), not parsed as a whole.
    fn dump_raw(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        mut each: impl FnMut(&[u8]),
    ) -> Result<()> {
        let seq = self.send(op, msg, NLM_F_DUMP)?;
        self.answers(op, seq, |whole| {
            each(NetlinkBuffer::new(whole).payload());
            Ok(false)
        })
    }

    /// The link with this name, or `None`.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(&|| format!("look up link {name}"), msg)
    }

    /// The link with this index, or `None`.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(&|| format!("look up link #{index}"), msg)
    }

    fn get_link(&mut self, op: &dyn Fn() -> String, msg: LinkMessage) -> Result<Option<Link>> {
        match self.request(op, RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(mut msgs) => Ok(match msgs.pop() {
                Some(RouteNetlinkMessage::NewLink(l)) => Some(link_from(l)),
                _ => None,
            }),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a veth pair: `name` here, `peer` moved at once into the namespace open as
    /// `peer_netns`. Both ends get `mtu` and the alias `alias` (weft's ownership mark).
    /// Fails with `EEXIST` if `name` exists here.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: RawFd,
        mtu: u32,
        alias: &str,
    ) -> Result<()> {
        self.new_veth(name, peer, LinkAttribute::NetNsFd(peer_netns), mtu, alias)
    }

    /// A veth `name` with its peer `peer` (placed or set up by `peer_attr`), both of MTU
    /// `mtu`; `name` gets `alias` unless it is empty.
    fn new_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_attr: LinkAttribute,
        mtu: u32,
        alias: &str,
    ) -> Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes = vec![
            LinkAttribute::IfName(peer.to_string()),
            LinkAttribute::Mtu(mtu),
            peer_attr,
        ];
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
            ]),
        ];
        self.ack(
            &|| format!("create veth {name} (peer {peer})"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        if !alias.is_empty() {
            if let Some(link) = self.link_by_name(name)? {
                self.set_alias(link.index, alias)?;
            }
        }
        Ok(())
    }

    /// Creates a veth pair with both ends in this namespace (for a runtime that moves the
    /// peer itself, as Docker does): the peer gets `peer_mac`, the first end `alias`.
    pub fn create_veth_pair(
        &mut self,
        name: &str,
        peer: &str,
        peer_mac: [u8; 6],
        mtu: u32,
        alias: &str,
    ) -> Result<()> {
        self.new_veth(
            name,
            peer,
            LinkAttribute::Address(peer_mac.to_vec()),
            mtu,
            alias,
        )
    }

    /// Points `addr` (a container's /32 or /128) at link `index`: a permanent neighbour
    /// entry to `mac` and a link-scope route of protocol `protocol` in the main table.
    pub fn point_at(&mut self, index: u32, addr: IpNet, mac: [u8; 6], protocol: u8) -> Result<()> {
        self.set_permanent_neighbour(index, addr.addr(), mac)?;
        self.add_route(
            &Route::new(addr, None, Some(index), Scope::Link, protocol, MAIN_TABLE),
            true,
        )
    }

    /// Sets a link's alias (`ip link set DEV alias TEXT`).
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.ack(
            &|| format!("set alias of link #{index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    /// Renames a link (it must be down).
    pub fn rename_link(&mut self, index: u32, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.ack(
            &|| format!("rename link #{index} to {name}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    /// Sets a link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.ack(
            &|| format!("set link #{index} up"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    /// Deletes a link (a veth pair goes with either end).
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack(
            &|| format!("delete link #{index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
    }

    /// Adds an address to a link; `noprefixroute` suppresses the kernel's prefix route.
    pub fn add_address(&mut self, index: u32, addr: IpNet, noprefixroute: bool) -> Result<()> {
        self.add_address_scoped(index, addr, noprefixroute, Scope::Universe)
    }

    /// As [`Netlink::add_address`], with a scope (`Scope::Link`: never the source of
    /// packets to other links' destinations).
    pub fn add_address_scoped(
        &mut self,
        index: u32,
        addr: IpNet,
        noprefixroute: bool,
        scope: Scope,
    ) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.scope =
            netlink_packet_route::address::AddressScope::from(u8::from(RouteScope::from(scope)));
        msg.header.family = family(&addr.addr());
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(addr.addr()));
        msg.attributes.push(AddressAttribute::Address(addr.addr()));
        {
            use netlink_packet_route::address::AddressFlags;
            let mut flags = AddressFlags::empty();
            if noprefixroute {
                flags |= AddressFlags::Noprefixroute;
            }
            // weft's IPv6 addresses are planned, never shared on a link: no duplicate
            // address detection, which would keep them unusable ("tentative") for a second.
            if addr.addr().is_ipv6() {
                flags |= AddressFlags::Nodad;
            }
            if !flags.is_empty() {
                msg.attributes.push(AddressAttribute::Flags(flags));
            }
        }
        self.ack(
            &|| format!("add address {addr} to link #{index}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The addresses on a link (all links when `index` is 0).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(u32, IpNet)>> {
        let msgs = self.request(
            &|| "list addresses".into(),
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                if index != 0 && a.header.index != index {
                    continue;
                }
                let ip = a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                if let Some(ip) = ip {
                    if let Ok(net) = IpNet::new(ip, a.header.prefix_len) {
                        out.push((a.header.index, net));
                    }
                }
            }
        }
        Ok(out)
    }

    fn route_message(route: &Route) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(&route.dst.addr());
        msg.header.destination_prefix_length = route.dst.prefix_len();
        msg.header.protocol = RouteProtocol::from(route.protocol);
        msg.header.scope = route.scope.into();
        msg.header.kind = RouteType::Unicast;
        if route.table < 256 {
            msg.header.table = route.table as u8;
        } else {
            msg.header.table = 252; // RT_TABLE_COMPAT: the real id is in the attribute
        }
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                route.dst.network(),
            )));
        msg.attributes.push(RouteAttribute::Table(route.table));
        match route.gateway {
            // A gateway of the other family (an IPv4 route through an IPv6 neighbour)
            // goes in RTA_VIA, which names its family.
            Some(IpAddr::V6(gw)) if route.dst.addr().is_ipv4() => msg
                .attributes
                .push(RouteAttribute::Via(RouteVia::Inet6(gw))),
            Some(gw) => msg
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw))),
            None => {}
        }
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(mtu) = route.mtu {
            msg.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        if route.onlink {
            msg.header.flags |= RouteFlags::Onlink;
        }
        msg
    }

    /// Adds a route; with `replace` an existing route to the same destination is replaced.
    pub fn add_route(&mut self, route: &Route, replace: bool) -> Result<()> {
        let flags = if replace {
            NLM_F_CREATE | NLM_F_REPLACE
        } else {
            NLM_F_CREATE | NLM_F_EXCL
        };
        self.ack(
            &|| format!("add route to {}", route.dst),
            RouteNetlinkMessage::NewRoute(Self::route_message(route)),
            flags,
        )
    }

    /// Makes `addr` an address of this host with a route of type `local` in the local
    /// table through `oif` (usually `lo`), marked with `protocol`: the host accepts
    /// packets to it and sockets bind to it, with no link and no change to one
    /// (`ip route add local ADDR dev lo table local proto P`). An existing route (weft's,
    /// or the kernel's for an address someone configured) is left as it is.
    pub fn add_local_route(&mut self, addr: IpAddr, oif: u32, protocol: u8) -> Result<()> {
        let route = Route::new(
            IpNet::from(addr),
            None,
            Some(oif),
            Scope::Host,
            protocol,
            255,
        );
        let mut msg = Self::route_message(&route);
        msg.header.kind = RouteType::Local;
        match self.ack(
            &|| format!("add local route {addr}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_APPEND,
        ) {
            Err(e) if e.is_exists() => Ok(()),
            other => other,
        }
    }

    /// Deletes a route matching destination, table, protocol and (if set) gateway and oif.
    pub fn delete_route(&mut self, route: &Route) -> Result<()> {
        self.ack(
            &|| format!("delete route to {}", route.dst),
            RouteNetlinkMessage::DelRoute(Self::route_message(route)),
            0,
        )
    }

    /// The unicast routes of one family in one table.
    pub fn routes(&mut self, v6: bool, table: u32) -> Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs = self.request(
            &|| "list routes".into(),
            RouteNetlinkMessage::GetRoute(req),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.kind != RouteType::Unicast {
                continue;
            }
            let mut t = u32::from(r.header.table);
            let mut dst = None;
            let mut gateway = None;
            let mut oif = None;
            let mut mtu = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Table(v) => t = *v,
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                        dst = Some(IpAddr::V4(*ip))
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                        dst = Some(IpAddr::V6(*ip))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => {
                        gateway = Some(IpAddr::V4(*ip))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => {
                        gateway = Some(IpAddr::V6(*ip))
                    }
                    RouteAttribute::Via(RouteVia::Inet6(ip)) => gateway = Some(IpAddr::V6(*ip)),
                    RouteAttribute::Via(RouteVia::Inet(ip)) => gateway = Some(IpAddr::V4(*ip)),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Metrics(ms) => {
                        for m in ms {
                            if let RouteMetric::Mtu(v) = m {
                                mtu = Some(*v);
                            }
                        }
                    }
                    _ => {}
                }
            }
            if t != table {
                continue;
            }
            let dst = dst.unwrap_or(if v6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            });
            let Ok(dst) = IpNet::new(dst, r.header.destination_prefix_length) else {
                continue;
            };
            out.push(Route {
                dst,
                gateway,
                oif,
                scope: r.header.scope.into(),
                protocol: u8::from(r.header.protocol),
                table: t,
                mtu,
                onlink: r.header.flags.contains(RouteFlags::Onlink),
            });
        }
        Ok(out)
    }

    /// Adds (or replaces) a permanent neighbour entry: `ip` is at `mac` on link `index`.
    pub fn set_permanent_neighbour(&mut self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(&ip);
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(NeighbourAttribute::Destination(neigh_addr(ip)));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.ack(
            &|| format!("add neighbour {ip} on link #{index}"),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Permanent neighbour entries on a link.
    pub fn permanent_neighbours(&mut self, index: u32) -> Result<Vec<(IpAddr, Option<[u8; 6]>)>> {
        let msgs = self.request(
            &|| "list neighbours".into(),
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index
                || n.header.state != NeighbourState::Permanent
                || n.header.family == AddressFamily::Bridge
            {
                continue;
            }
            let (ip, mac) = neigh_fields(&n);
            if let Some(ip) = ip {
                out.push((ip, mac));
            }
        }
        Ok(out)
    }

    /// Deletes a neighbour entry (`ip neigh del IP dev #index`).
    pub fn delete_neighbour(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(&ip);
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(neigh_addr(ip)));
        self.ack(
            &|| format!("delete neighbour {ip} on link #{index}"),
            RouteNetlinkMessage::DelNeighbour(msg),
            0,
        )
    }

    /// Creates a VXLAN device without learning: `vni`, UDP `port`, outer source `local`,
    /// its own `mac`, `mtu`, and the alias `alias` (the ownership mark). Forwarding entries
    /// are added with [`Netlink::add_fdb`]. Fails with `EEXIST` if `name` exists.
    pub fn create_vxlan(
        &mut self,
        name: &str,
        p: &Vxlan,
        mac: [u8; 6],
        alias: &str,
    ) -> Result<u32> {
        let mut info = vec![
            InfoVxlan::Id(p.vni),
            InfoVxlan::Port(p.port),
            InfoVxlan::Learning(false),
            InfoVxlan::Ttl(64),
        ];
        info.push(match p.local {
            IpAddr::V4(a) => InfoVxlan::Local(a),
            IpAddr::V6(a) => InfoVxlan::Local6(a),
        });
        if let Some(l) = p.link {
            info.push(InfoVxlan::Link(l));
        }
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::Mtu(p.mtu),
            LinkAttribute::Address(mac.to_vec()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(info)),
            ]),
        ];
        self.ack(
            &|| format!("create vxlan device {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        let link = self.link_by_name(name)?.ok_or_else(|| {
            Error::new(
                format!("find {name} after creating it"),
                std::io::Error::from_raw_os_error(libc::ENODEV),
            )
        })?;
        self.set_alias(link.index, alias)?;
        Ok(link.index)
    }

    /// The VXLAN parameters of link `index`, or `None` if it is not a VXLAN device.
    pub fn vxlan_params(&mut self, index: u32) -> Result<Option<Vxlan>> {
        let mut req = LinkMessage::default();
        req.header.index = index;
        let msgs = self.request(
            &|| format!("get link #{index}"),
            RouteNetlinkMessage::GetLink(req),
            0,
        )?;
        let mut out = None;
        for m in msgs {
            let RouteNetlinkMessage::NewLink(l) = m else {
                continue;
            };
            let mut p = Vxlan {
                vni: 0,
                port: 0,
                local: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                link: None,
                mtu: 0,
                learning: true,
            };
            let mut is_vxlan = false;
            for a in l.attributes {
                match a {
                    LinkAttribute::Mtu(m) => p.mtu = m,
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            if let LinkInfo::Data(InfoData::Vxlan(v)) = i {
                                is_vxlan = true;
                                for x in v {
                                    match x {
                                        InfoVxlan::Id(id) => p.vni = id,
                                        InfoVxlan::Port(port) => p.port = port,
                                        InfoVxlan::Local(a) => p.local = IpAddr::V4(a),
                                        InfoVxlan::Local6(a) => p.local = IpAddr::V6(a),
                                        InfoVxlan::Link(l) => p.link = Some(l),
                                        InfoVxlan::Learning(b) => p.learning = b,
                                        _ => {}
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            if is_vxlan {
                out = Some(p);
            }
        }
        Ok(out)
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.ack(
            &|| format!("set the MTU of link #{index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    fn fdb_message(index: u32, mac: [u8; 6], dst: IpAddr) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(neigh_addr(dst)));
        msg
    }

    /// Adds a static forwarding entry to a VXLAN device: frames for `mac` go to `dst`
    /// (`bridge fdb append MAC dev DEV dst DST self permanent`).
    pub fn add_fdb(&mut self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        self.ack(
            &|| {
                format!(
                    "add fdb entry {} dst {dst} on link #{index}",
                    format_mac(&mac)
                )
            },
            RouteNetlinkMessage::NewNeighbour(Self::fdb_message(index, mac, dst)),
            NLM_F_CREATE | NLM_F_APPEND,
        )
    }

    /// Deletes one forwarding entry of a VXLAN device.
    pub fn delete_fdb(&mut self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        self.ack(
            &|| {
                format!(
                    "delete fdb entry {} dst {dst} on link #{index}",
                    format_mac(&mac)
                )
            },
            RouteNetlinkMessage::DelNeighbour(Self::fdb_message(index, mac, dst)),
            0,
        )
    }

    /// The forwarding entries (MAC, destination) of a VXLAN device.
    pub fn fdb(&mut self, index: u32) -> Result<Vec<([u8; 6], IpAddr)>> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let msgs = self.request(
            &|| "list fdb entries".into(),
            RouteNetlinkMessage::GetNeighbour(req),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index || n.header.family != AddressFamily::Bridge {
                continue;
            }
            let (ip, mac) = neigh_fields(&n);
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push((mac, ip));
            }
        }
        Ok(out)
    }
}

/// Parameters of a VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Outer source address.
    pub local: IpAddr,
    /// The underlay link it is bound to, if any.
    pub link: Option<u32>,
    /// The device MTU.
    pub mtu: u32,
    /// Learning of remote MACs from received frames (weft turns it off).
    pub learning: bool,
}

fn neigh_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn neigh_fields(n: &NeighbourMessage) -> (Option<IpAddr>, Option<[u8; 6]>) {
    let mut ip = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(IpAddr::V4(*v)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                ip = Some(IpAddr::V6(*v))
            }
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                mac = Some([b[0], b[1], b[2], b[3], b[4], b[5]])
            }
            _ => {}
        }
    }
    (ip, mac)
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn link_from(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        link: None,
        alias: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Address(a) if a.len() == 6 => {
                link.mac = Some([a[0], a[1], a[2], a[3], a[4], a[5]])
            }
            LinkAttribute::Link(l) => link.link = Some(l),
            LinkAttribute::IfAlias(a) => link.alias = Some(a),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Opens a network namespace file (e.g. `/run/netns/NAME` or `/proc/PID/ns/net`) and checks
/// that it is one.
pub fn open_netns(path: &Path) -> Result<File> {
    let file = File::open(path).map_err(|e| Error::new(format!("open {}", path.display()), e))?;
    // SAFETY: `file` is a valid open descriptor for the duration of the call; NS_GET_NSTYPE
    // takes no argument and only returns the namespace type of the descriptor.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind < 0 {
        return Err(Error::new(
            format!("{} is not a namespace file", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    if kind != libc::CLONE_NEWNET {
        return Err(Error::new(
            format!("{} is not a network namespace", path.display()),
            std::io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    Ok(file)
}

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Runs `f` on a new OS thread that has entered the network namespace `ns`. The calling
/// thread's namespace never changes; the helper thread ends with `f`.
pub fn in_netns<T, F>(ns: &File, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::new("enter network namespace", e.into()))?;
            Ok(f())
        });
        handle.join().unwrap_or_else(|_| {
            Err(Error::new(
                "work inside network namespace",
                std::io::Error::other("thread panicked"),
            ))
        })
    })
}

/// The device index and kind of one `RTM_NEWQDISC` payload: a `struct tcmsg` (family, 3
/// bytes of padding, ifindex, handle, parent, info: 20 bytes), then attributes, of which
/// `TCA_KIND` (1) is the qdisc's name, NUL-terminated.
fn qdisc_kind(payload: &[u8]) -> Option<(u32, String)> {
    const TCMSG_LEN: usize = 20;
    const TCA_KIND: u16 = 1;
    let index = i32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
    let mut attrs = payload.get(TCMSG_LEN..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        let value = attrs.get(4..len)?;
        if kind == TCA_KIND {
            let name = value.split(|b| *b == 0).next()?;
            let index = u32::try_from(index).ok()?;
            return Some((index, String::from_utf8_lossy(name).into_owned()));
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `tcmsg` for device `index` with attributes (type, value), each padded to 4 bytes.
    fn tcmsg(index: i32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; 20];
        b[4..8].copy_from_slice(&index.to_ne_bytes());
        for (ty, value) in attrs {
            let len = 4 + value.len();
            b.extend((len as u16).to_ne_bytes());
            b.extend(ty.to_ne_bytes());
            b.extend(*value);
            b.resize(b.len() + ((4 - len % 4) % 4), 0);
        }
        b
    }

    #[test]
    fn a_qdiscs_kind_is_read_whatever_its_options() {
        // TCA_OPTIONS (2) before the kind, of a length the parser knows nothing of.
        let m = tcmsg(7, &[(2, &[1u8, 2, 3, 4, 5][..]), (1, &b"tbf\0"[..])]);
        assert_eq!(qdisc_kind(&m), Some((7, "tbf".to_string())));
        assert_eq!(
            qdisc_kind(&tcmsg(12, &[(1, &b"ingress\0"[..]), (2, &[][..])])),
            Some((12, "ingress".to_string()))
        );
        // No kind, a truncated attribute, a truncated header: nothing, no panic.
        assert_eq!(qdisc_kind(&tcmsg(7, &[(2, &[0u8; 8][..])])), None);
        let mut cut = tcmsg(7, &[(1, &b"tbf\0"[..])]);
        cut[20] = 40;
        assert_eq!(qdisc_kind(&cut), None);
        assert_eq!(qdisc_kind(&[0; 6]), None);
    }
}
