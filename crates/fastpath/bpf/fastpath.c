// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
// weft's fast path: a tc program on the host-side veth of every weft container and on
// weft.vx, both at ingress. A packet between two pool addresses is forwarded along weft's
// route (or the kernel's FIB) straight to its egress device (or into the destination container's
// namespace), so it skips the host namespace's IP stack and netfilter hooks. Anything
// else, and anything the program is not sure about, goes on to the stack unchanged
// (TC_ACT_OK): the fast path is an acceleration, never needed for correctness.
// A second entry point runs at egress of container veths (`weft_egress`). Both keep the
// replies of connections that someone else translated (Services, hostPorts) on the stack,
// where conntrack translates them back: docs/dataplane.md, "Connections that others
// translate". Design: docs/dataplane.md, "Fast path".

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

// Helpers, by their stable numbers in the kernel's UAPI.
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_fib_lookup)(void *ctx, struct bpf_fib_lookup *params, int plen,
                              __u32 flags) = (void *)BPF_FUNC_fib_lookup;
static long (*bpf_redirect)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect;
static long (*bpf_redirect_peer)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect_peer;
static long (*bpf_redirect_neigh)(__u32 ifindex, void *params, int plen,
                                  __u64 flags) = (void *)BPF_FUNC_redirect_neigh;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
                                   __u64 flags) = (void *)BPF_FUNC_map_update_elem;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_delete_elem;
static __u64 (*bpf_ktime_get_coarse_ns)(void) = (void *)BPF_FUNC_ktime_get_coarse_ns;
static __u32 (*bpf_get_smp_processor_id)(void) = (void *)BPF_FUNC_get_smp_processor_id;
static long (*bpf_check_mtu)(void *ctx, __u32 ifindex, __u32 *mtu_len, __s32 len_diff,
                             __u64 flags) = (void *)BPF_FUNC_check_mtu;

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_ICMPV6 58
#define htons(x) __builtin_bswap16(x)
#define htonl(x) __builtin_bswap32(x)
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_SCTP 132
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
// The packet mark bit weft's netfilter rule (in its NAT chain) sets on the first packet
// of a translated connection that goes to a pod (`TRANSLATED_MARK` in crates/dataplane).
#define TRANSLATED_MARK 0x01000000

// What the agent tells the program as a whole (`Config` in src/lib.rs has the same
// layout), in the one element of an array map, whose lookup the verifier inlines: one
// or two cache lines, where a trie or hash lookup costs a helper call and several lines.
// This matters for a packet that finds the caches cold (a ping every few milliseconds):
// docs/dataplane.md, "Fast path", cold cost. Only traffic from a pool address to a pool
// address is forwarded here (traffic to the outside needs the stack: outbound NAT).
// Addresses and masks are in network order; `n4` and `n6` say how many pools of each
// family there are. `isolating` is nonzero while the `isolated` maps hold an address:
// only then are they looked up (the agent sets it before it adds the first address).
#define MAX_POOLS 16
struct pool4 {
    __u32 addr;
    __u32 mask;
};

struct pool6 {
    __u32 addr[4];
    __u32 mask[4];
};

struct config {
    __u32 n4;
    __u32 n6;
    __u32 isolating;
    __u32 pad;
    struct pool4 p4[MAX_POOLS];
    struct pool6 p6[MAX_POOLS];
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct config);
} config SEC(".maps");

// What each device the program may forward between is (by ifindex): a host-side container
// veth the agent attached the program to and enabled (DEV_POD), or a device packets may be
// sent out of (DEV_UPLINK: weft.vx, the underlay). A device not listed is left to the
// stack: a new container's veth is listed only after the agent has told the program its
// translated connections. An ifindex below DEVS_LOW is listed in the array `devs_low`
// (an inlined lookup), a larger one in the hash `devs`.
#define DEV_POD 1
#define DEV_UPLINK 2
#define DEVS_LOW 2048
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, DEVS_LOW);
    __type(key, __u32);
    __type(value, __u8);
} devs_low SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, __u8);
} devs SEC(".maps");

// A socket: an address (IPv4 in the first four bytes, network order), a port (network
// order) and an IP protocol. `SockKey` in src/lib.rs has the same layout.
struct sock_key {
    __u32 addr[4];
    __u16 port;
    __u8 proto;
    __u8 family;
};

// Client sockets of connections that may be translated by someone else: every socket from
// which a pod sent to an address outside the pools (at ingress), and the source socket of
// every packet the stack delivered into a container with weft's translated mark (at
// egress). A packet to one of them takes the stack.
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct sock_key);
    __type(value, __u8);
} translated SEC(".maps");

// Addresses of this host's pods that a network policy isolates (in either direction):
// every packet from or to them takes the stack, where the policy's nftables rules and
// conntrack judge it (docs/policy.md). Filled by the agent before it answers a pod's ADD.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, __u8);
} isolated SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct in6_addr);
    __type(value, __u8);
} isolated6 SEC(".maps");

// One direction of a TCP connection (`FlowKey` in src/lib.rs has the same layout):
// addresses (IPv4 in the first four bytes, network order), ports (network order).
struct flow_key {
    __u32 src[4];
    __u32 dst[4];
    __u16 sport;
    __u16 dport;
    __u8 family;
    __u8 pad[3];
};

// What the program keeps of a promoted direction (`FlowValue` in src/lib.rs): the epoch
// it was promoted in, and the second (CLOCK_MONOTONIC, coarse) of its last packet here,
// by which the agent keeps the conntrack entry of a connection in use alive.
struct flow_value {
    __u32 epoch;
    __u32 seen;
};

// Established TCP connections of isolated pods that the agent promoted: conntrack saw
// their handshake, the policy allowed them, and the agent made conntrack's entry accept
// packets it does not see (liberal window tracking). Each direction the agent promoted
// maps to the epoch it was promoted in; only the current epoch counts, so the agent
// drops every promotion at once (a policy change, a pod leaving) by moving the epoch on.
// A SYN, FIN or RST deletes both directions and takes the stack: a new connection on
// the same ports, or the end of this one, is conntrack's again.
// Design: docs/policy.md, "Established connections".
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct flow_key);
    __type(value, struct flow_value);
} flows SEC(".maps");

// The current epoch of `flows` (one element; 0 until the agent sets it: nothing counts).
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} epoch SEC(".maps");

// weft's routes to other hosts' blocks (the agent's plan): for a packet from a container
// of this host, the next hop and device without the kernel's FIB lookup, the costliest
// step of the program when the caches are cold (docs/dataplane.md, "Fast path", cold
// cost). The keys have the layout of aya's `lpm_trie::Key<[u8; 4]>` and `<[u8; 16]>`, the
// values that of `RouteValue` in src/lib.rs. A destination whose longest match is an
// entry without a device (ifindex 0: a prefix inside one of weft's that the kernel may
// route otherwise, such as a container's borrowed address or a route into the tunnel),
// or that matches none, is looked up in the FIB.
struct route_key4 {
    __u32 prefixlen;
    __u32 addr;
};

struct route_key6 {
    __u32 prefixlen;
    __u32 addr[4];
};

// The device (the underlay, weft.vx), the path MTU of weft's route, and the gateway (an
// IPv4 or IPv6 address: `family` AF_INET or AF_INET6, IPv4 in `nh[0]`, network order),
// whose MAC the kernel's neighbour table gives (`bpf_redirect_neigh`).
struct route {
    __u32 ifindex;
    __u32 mtu;
    __u32 family;
    __u32 nh[4];
};

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 65536);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct route_key4);
    __type(value, struct route);
} routes4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 65536);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct route_key6);
    __type(value, struct route);
} routes6 SEC(".maps");

// Packet counters (the indexes are those of `Counter` in src/lib.rs): one cache line per
// CPU in a plain array, whose lookup the verifier inlines and whose memory the kernel
// takes from its linear map. A per-CPU array lives in pages the kernel maps one by one
// (its per-CPU allocator's chunks): a packet that finds the caches cold paid a TLB miss
// (in a virtual machine, a nested page walk) for its counter, about 1.5 us measured
// here (docs/dataplane.md, "Fast path", cold cost). The add is atomic, so CPUs beyond
// COUNTER_SLOTS may share a slot.
enum { C_EGRESS, C_PEER, C_NEIGH, C_PASS, C_STATEFUL, C_POLICY, C_ESTABLISHED, C_MAX };
#define COUNTER_SLOTS 256
struct counter_slot {
    __u64 c[8];
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, COUNTER_SLOTS);
    __type(key, __u32);
    __type(value, struct counter_slot);
} counters SEC(".maps");

static __attribute__((always_inline)) void count(__u32 which)
{
    __u32 slot = bpf_get_smp_processor_id() % COUNTER_SLOTS;
    struct counter_slot *s = bpf_map_lookup_elem(&counters, &slot);
    if (s && which < C_MAX)
        __sync_fetch_and_add(&s->c[which], 1);
}

static __attribute__((always_inline)) struct config *get_config(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&config, &zero);
}

static __attribute__((always_inline)) int in_pools(struct config *c, __u32 addr)
{
    for (int i = 0; i < MAX_POOLS; i++) {
        if (i >= c->n4)
            return 0;
        if ((addr & c->p4[i].mask) == c->p4[i].addr)
            return 1;
    }
    return 0;
}

static __attribute__((always_inline)) int in_pools6(struct config *c, __u32 *a)
{
    for (int i = 0; i < MAX_POOLS; i++) {
        if (i >= c->n6)
            return 0;
        struct pool6 *p = &c->p6[i];
        if ((a[0] & p->mask[0]) == p->addr[0] && (a[1] & p->mask[1]) == p->addr[1] &&
            (a[2] & p->mask[2]) == p->addr[2] && (a[3] & p->mask[3]) == p->addr[3])
            return 1;
    }
    return 0;
}

static __attribute__((always_inline)) __u8 dev_kind(__u32 ifindex)
{
    __u8 *v = ifindex < DEVS_LOW ? bpf_map_lookup_elem(&devs_low, &ifindex)
                                 : bpf_map_lookup_elem(&devs, &ifindex);
    return v ? *v : 0;
}

static __attribute__((always_inline)) int has_ports(__u8 proto)
{
    return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

// The socket at one end of an IPv4 packet without options (TCP, UDP and SCTP all start
// with the source and destination ports); 0 when the packet has none.
static __attribute__((always_inline)) int socket_of(struct iphdr *ip, void *end, int dst,
                                                     struct sock_key *k)
{
    __u16 *ports = (void *)(ip + 1);
    if (!has_ports(ip->protocol) || (ip->frag_off & htons(IP_OFFSET)) ||
        (void *)(ports + 2) > end)
        return 0;
    k->addr[0] = dst ? ip->daddr : ip->saddr;
    k->port = dst ? ports[1] : ports[0];
    k->proto = ip->protocol;
    k->family = 4;
    return 1;
}

static __attribute__((always_inline)) void remember_source(struct iphdr *ip, void *end)
{
    struct sock_key k = {};
    __u8 one = 1;
    // A lookup refreshes a known socket's place in the LRU; only a new one is written.
    if (socket_of(ip, end, 0, &k) && !bpf_map_lookup_elem(&translated, &k))
        bpf_map_update_elem(&translated, &k, &one, BPF_ANY);
}

// A packet between pool addresses that must take the stack because conntrack has to see
// it: a reply to a client socket of a translated connection, an ICMP error (its quoted
// header may need translating), a fragment (no ports to look at).
static __attribute__((always_inline)) int stateful(struct iphdr *ip, void *end)
{
    if (ip->frag_off & htons(IP_MF | IP_OFFSET))
        return 1;
    if (ip->protocol == IPPROTO_ICMP) {
        __u8 *type = (void *)(ip + 1);
        if ((void *)(type + 1) > end)
            return 1;
        return *type == 3 || *type == 11 || *type == 12;
    }
    struct sock_key k = {};
    return socket_of(ip, end, 1, &k) && bpf_map_lookup_elem(&translated, &k) != 0;
}

// The socket at one end of an IPv6 packet whose next header is TCP, UDP or SCTP (packets
// with extension headers are the stack's and never get here); 0 when it has none.
static __attribute__((always_inline)) int socket_of6(struct ipv6hdr *ip6, void *end, int dst,
                                                      struct sock_key *k)
{
    __u16 *ports = (void *)(ip6 + 1);
    if (!has_ports(ip6->nexthdr) || (void *)(ports + 2) > end)
        return 0;
    __builtin_memcpy(k->addr, dst ? (void *)&ip6->daddr : (void *)&ip6->saddr, 16);
    k->port = dst ? ports[1] : ports[0];
    k->proto = ip6->nexthdr;
    k->family = 6;
    return 1;
}

static __attribute__((always_inline)) void remember_source6(struct ipv6hdr *ip6, void *end)
{
    struct sock_key k = {};
    __u8 one = 1;
    if (socket_of6(ip6, end, 0, &k) && !bpf_map_lookup_elem(&translated, &k))
        bpf_map_update_elem(&translated, &k, &one, BPF_ANY);
}

// As stateful(), for IPv6: ICMPv6 errors (destination unreachable, packet too big, time
// exceeded, parameter problem) and replies to translated sockets.
static __attribute__((always_inline)) int stateful6(struct ipv6hdr *ip6, void *end)
{
    if (ip6->nexthdr == IPPROTO_ICMPV6) {
        __u8 *type = (void *)(ip6 + 1);
        if ((void *)(type + 1) > end)
            return 1;
        return *type >= 1 && *type <= 4;
    }
    struct sock_key k = {};
    return socket_of6(ip6, end, 1, &k) && bpf_map_lookup_elem(&translated, &k) != 0;
}

static __attribute__((always_inline)) int forward(struct __sk_buff *skb, struct ethhdr *eth,
                                                  struct bpf_fib_lookup *fib);

// A packet from a container of this host along weft's route `r` (found in `routes4` or
// `routes6`): sent out of the route's device to its gateway, whose MAC the kernel's
// neighbour table gives. -1: not this way (no route, an entry for the FIB, a device that
// is not an enabled uplink, a GSO packet whose segments the device's MTU does not take):
// the FIB decides. TC_ACT_OK: too big for the route's MTU, the stack answers.
static __attribute__((always_inline)) int via_route(struct __sk_buff *skb, struct route *r,
                                                    __u32 l3len)
{
    if (!r || !r->ifindex || r->ifindex == skb->ingress_ifindex ||
        dev_kind(r->ifindex) != DEV_UPLINK)
        return -1;
    if (skb->gso_size) {
        // As the FIB lookup checks it: each segment against the device's MTU.
        __u32 mtu_len = 0;
        if (bpf_check_mtu(skb, r->ifindex, &mtu_len, 0, 0))
            return -1;
    } else if (l3len > r->mtu) {
        count(C_PASS);
        return TC_ACT_OK;
    }
    struct bpf_redir_neigh nh = {.nh_family = r->family};
    __builtin_memcpy(nh.ipv6_nh, r->nh, 16);
    count(C_EGRESS);
    return bpf_redirect_neigh(r->ifindex, &nh, sizeof(nh), 0);
}

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04

// A packet of an isolated pod (from or to it) that may skip the stack anyway: a TCP
// segment, without SYN, FIN or RST, of a direction the agent promoted in the current
// epoch (see `flows`). `tcp` points past the IP header (no options or extension headers).
static __attribute__((always_inline)) int promoted(struct flow_key *k, __u8 proto, void *tcp,
                                                   void *end)
{
    __u8 *h = tcp;
    if (proto != IPPROTO_TCP || (void *)(h + 14) > end)
        return 0;
    __builtin_memcpy(&k->sport, h, 4);
    struct flow_value *v = bpf_map_lookup_elem(&flows, k);
    if (h[13] & (TCP_SYN | TCP_FIN | TCP_RST)) {
        if (v) {
            // This direction and the other: the connection is conntrack's again.
            struct flow_key r = {.family = k->family, .sport = k->dport, .dport = k->sport};
            __builtin_memcpy(r.src, k->dst, 16);
            __builtin_memcpy(r.dst, k->src, 16);
            bpf_map_delete_elem(&flows, k);
            bpf_map_delete_elem(&flows, &r);
        }
        return 0;
    }
    __u32 zero = 0;
    __u32 *now = bpf_map_lookup_elem(&epoch, &zero);
    if (!now || !v || *now == 0 || v->epoch != *now)
        return 0;
    __u32 sec = bpf_ktime_get_coarse_ns() / 1000000000;
    if (v->seen != sec)
        v->seen = sec;
    return 1;
}

// An IPv6 packet: the same decisions as for IPv4. Only TCP, UDP, SCTP and ICMPv6 without
// extension headers are forwarded here; the last hop before the hop limit runs out is the
// stack's.
static __attribute__((always_inline)) int fast6(struct __sk_buff *skb, struct ethhdr *eth,
                                                void *end, const int uplink)
{
    struct ipv6hdr *ip6 = (void *)(eth + 1);
    struct config *c = get_config();
    if ((void *)(ip6 + 1) > end || !c)
        return TC_ACT_OK;
    if (!in_pools6(c, ip6->saddr.in6_u.u6_addr32))
        return TC_ACT_OK;
    if (!in_pools6(c, ip6->daddr.in6_u.u6_addr32)) {
        remember_source6(ip6, end);
        return TC_ACT_OK;
    }
    __u8 nh = ip6->nexthdr;
    if (ip6->hop_limit <= 1 || !(has_ports(nh) || nh == IPPROTO_ICMPV6))
        return TC_ACT_OK;
    if (stateful6(ip6, end)) {
        count(C_STATEFUL);
        return TC_ACT_OK;
    }
    int promoted_pkt = 0;
    if (c->isolating &&
        (bpf_map_lookup_elem(&isolated6, &ip6->saddr) || bpf_map_lookup_elem(&isolated6, &ip6->daddr))) {
        struct flow_key k = {.family = 6};
        __builtin_memcpy(k.src, ip6->saddr.in6_u.u6_addr32, 16);
        __builtin_memcpy(k.dst, ip6->daddr.in6_u.u6_addr32, 16);
        if (!promoted(&k, nh, ip6 + 1, end)) {
            count(C_POLICY);
            return TC_ACT_OK;
        }
        promoted_pkt = 1;
    }
    int rc = -1;
    if (!uplink && dev_kind(skb->ingress_ifindex) == DEV_POD) {
        struct route_key6 k = {.prefixlen = 128};
        __builtin_memcpy(k.addr, ip6->daddr.in6_u.u6_addr32, 16);
        rc = via_route(skb, bpf_map_lookup_elem(&routes6, &k), skb->len - sizeof(*eth));
    }
    if (rc < 0) {
        struct bpf_fib_lookup fib = {};
        fib.family = AF_INET6;
        fib.flowinfo = *(__be32 *)ip6 & htonl(0x0FFFFFFF);
        fib.l4_protocol = nh;
        fib.tot_len = 0;
        __builtin_memcpy(fib.ipv6_src, ip6->saddr.in6_u.u6_addr32, 16);
        __builtin_memcpy(fib.ipv6_dst, ip6->daddr.in6_u.u6_addr32, 16);
        fib.ifindex = skb->ingress_ifindex;
        rc = forward(skb, eth, &fib);
    }
    if (rc != TC_ACT_OK) {
        ip6->hop_limit -= 1;
        if (promoted_pkt)
            count(C_ESTABLISHED);
    }
    return rc;
}

// Both ingress programs: `uplink` is 1 (a constant, so the compiler drops what does not
// apply) at ingress of the underlay, whose packets from other hosts' containers are
// delivered into this host's containers and never sent on.
static __attribute__((always_inline)) int fast(struct __sk_buff *skb, const int uplink)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);

    if ((void *)(eth + 1) > end)
        return TC_ACT_OK;
    if (eth->h_proto == htons(ETH_P_IPV6))
        return fast6(skb, eth, end, uplink);
    if ((void *)(ip + 1) > end || eth->h_proto != htons(ETH_P_IP))
        return TC_ACT_OK;
    // Options are the stack's.
    struct config *c = get_config();
    if (ip->ihl != 5 || !c)
        return TC_ACT_OK;
    if (!in_pools(c, ip->saddr))
        return TC_ACT_OK;
    if (!in_pools(c, ip->daddr)) {
        // Leaving the pools, perhaps to a Service address or a hostPort someone will
        // translate: its replies will come back to this socket.
        remember_source(ip, end);
        return TC_ACT_OK;
    }
    // The last hop before a TTL runs out is the stack's: it answers it.
    if (ip->ttl <= 1)
        return TC_ACT_OK;
    if (stateful(ip, end)) {
        count(C_STATEFUL);
        return TC_ACT_OK;
    }
    int promoted_pkt = 0;
    if (c->isolating &&
        (bpf_map_lookup_elem(&isolated, &ip->saddr) || bpf_map_lookup_elem(&isolated, &ip->daddr))) {
        struct flow_key k = {.family = 4};
        k.src[0] = ip->saddr;
        k.dst[0] = ip->daddr;
        if (!promoted(&k, ip->protocol, ip + 1, end)) {
            count(C_POLICY);
            return TC_ACT_OK;
        }
        promoted_pkt = 1;
    }

    int rc = -1;
    if (!uplink && dev_kind(skb->ingress_ifindex) == DEV_POD) {
        struct route_key4 k = {.prefixlen = 32, .addr = ip->daddr};
        rc = via_route(skb, bpf_map_lookup_elem(&routes4, &k), skb->len - sizeof(*eth));
    }
    if (rc < 0) {
        struct bpf_fib_lookup fib = {};
        fib.family = AF_INET;
        fib.tos = ip->tos;
        fib.l4_protocol = ip->protocol;
        fib.tot_len = 0; // 0: the kernel checks the packet against the egress MTU
        fib.ipv4_src = ip->saddr;
        fib.ipv4_dst = ip->daddr;
        fib.ifindex = skb->ingress_ifindex;
        rc = forward(skb, eth, &fib);
    }
    if (rc != TC_ACT_OK) {
        if (promoted_pkt)
            count(C_ESTABLISHED);
        // Forwarded: one hop less, and the checksum updated incrementally (RFC 1624).
        // (The redirect happens when the program returns, so this still goes out.)
        __u32 check = ip->check;
        check += htons(0x0100);
        ip->check = (__u16)(check + (check >= 0xFFFF));
        ip->ttl -= 1;
    }
    return rc;
}

// At ingress of a container's host-side veth and of weft.vx (the device is weft's own, so
// what the program leaves to the stack goes there at once).
SEC("classifier")
int weft_fast(struct __sk_buff *skb)
{
    return fast(skb, 0);
}

// At ingress of the underlay, a device weft did not create, through a TCX link of the
// agent's: a packet from another host's container to a container of this host goes
// straight into it (route mode's receiving host, which otherwise forwards it through its
// stack). Everything else, the host's own traffic first of all, goes on unchanged to
// whatever runs after this program on the device (the next TCX program, someone's tc
// filters, then the stack): TC_ACT_UNSPEC (TCX_NEXT), not TC_ACT_OK, which would end the
// device's tc processing there. Design: docs/dataplane.md, "Fast path", the underlay.
SEC("classifier")
int weft_uplink(struct __sk_buff *skb)
{
    int rc = fast(skb, 1);
    return rc == TC_ACT_OK ? TC_ACT_UNSPEC : rc;
}

// The common tail: the FIB lookup and, when the packet is the fast path's, its new MACs
// and the redirect (the caller then decrements the TTL or hop limit). TC_ACT_OK: the
// stack's.
static __attribute__((always_inline)) int forward(struct __sk_buff *skb, struct ethhdr *eth,
                                                  struct bpf_fib_lookup *fib)
{
    __u32 in = skb->ingress_ifindex;
    long rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
        count(C_PASS);
        return TC_ACT_OK;
    }
    __u32 out = fib->ifindex;
    __u8 out_kind = dev_kind(out);
    int to_pod = out_kind == DEV_POD;
    // Only a container's own traffic out of an uplink, or traffic for a container of this
    // host: a relay (weft.vx in, weft.vx out), a device not (yet) enabled, and anything
    // else is left to the stack.
    if (out == in || !out_kind || (!to_pod && dev_kind(in) != DEV_POD)) {
        count(C_PASS);
        return TC_ACT_OK;
    }
    if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
        // The kernel resolves the neighbour (and queues the packet meanwhile).
        count(C_NEIGH);
        return bpf_redirect_neigh(out, 0, 0, 0);
    }
    __builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
    if (to_pod) {
        // Straight into the container's namespace.
        count(C_PEER);
        return bpf_redirect_peer(out, 0);
    }
    count(C_EGRESS);
    return bpf_redirect(out, 0);
}

// At egress of a container veth: a packet the stack delivers into the container. One that
// weft's netfilter rule marked as translated (a hostPort's DNAT on this host, say) makes
// its source socket one whose packets take the stack, so the container's replies are
// translated back.
SEC("classifier")
int weft_egress(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);

    if (!(skb->mark & TRANSLATED_MARK) || (void *)(eth + 1) > end)
        return TC_ACT_OK;
    if (eth->h_proto == htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) <= end)
            remember_source6(ip6, end);
        return TC_ACT_OK;
    }
    if ((void *)(ip + 1) > end || eth->h_proto != htons(ETH_P_IP) || ip->ihl != 5)
        return TC_ACT_OK;
    remember_source(ip, end);
    return TC_ACT_OK;
}

// The helpers used are GPL-only; this file is offered under GPL-2.0 as well (see above).
char _license[] SEC("license") = "GPL";
