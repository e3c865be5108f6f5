// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
// weft's fast path: a tc program on the host-side veth of every weft container and on
// weft.vx, both at ingress. A packet between two pool addresses is forwarded by the
// kernel's FIB straight to its egress device (or into the destination container's
// namespace), so it skips the host namespace's IP stack and netfilter hooks. Anything
// else, and anything the program is not sure about, goes on to the stack unchanged
// (TC_ACT_OK): the fast path is an acceleration, never needed for correctness.
// Design: docs/dataplane.md, "Fast path".

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
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

#define AF_INET 2
#define htons(x) __builtin_bswap16(x)

struct lpm_v4 {
    __u32 prefixlen;
    __u32 addr;
};

// The cluster's IPv4 pools: only traffic from a pool address to a pool address is
// forwarded here (traffic to the outside needs the stack: outbound NAT).
struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 256);
    __type(key, struct lpm_v4);
    __type(value, __u8);
    __uint(map_flags, BPF_F_NO_PREALLOC);
} pools SEC(".maps");

// The ifindex of every host-side container veth the agent attached the program to.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, __u8);
} pods SEC(".maps");

// Packet counters, per CPU (the indexes are those of `Counter` in src/lib.rs).
enum { C_EGRESS, C_PEER, C_NEIGH, C_PASS, C_MAX };
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, C_MAX);
    __type(key, __u32);
    __type(value, __u64);
} counters SEC(".maps");

static __attribute__((always_inline)) void count(__u32 which)
{
    __u64 *c = bpf_map_lookup_elem(&counters, &which);
    if (c)
        *c += 1;
}

static __attribute__((always_inline)) int in_pools(__u32 addr)
{
    struct lpm_v4 k = {.prefixlen = 32, .addr = addr};
    return bpf_map_lookup_elem(&pools, &k) != 0;
}

static __attribute__((always_inline)) int is_pod(__u32 ifindex)
{
    return bpf_map_lookup_elem(&pods, &ifindex) != 0;
}

SEC("classifier")
int weft_fast(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);

    if ((void *)(ip + 1) > end || eth->h_proto != htons(ETH_P_IP))
        return TC_ACT_OK;
    // Options, and the last hop before a TTL runs out, are the stack's: it answers them.
    if (ip->ihl != 5 || ip->ttl <= 1)
        return TC_ACT_OK;
    if (!in_pools(ip->saddr) || !in_pools(ip->daddr))
        return TC_ACT_OK;

    __u32 in = skb->ingress_ifindex;
    struct bpf_fib_lookup fib = {};
    fib.family = AF_INET;
    fib.tos = ip->tos;
    fib.l4_protocol = ip->protocol;
    fib.tot_len = 0; // 0: the kernel checks the packet against the egress MTU
    fib.ipv4_src = ip->saddr;
    fib.ipv4_dst = ip->daddr;
    fib.ifindex = in;
    long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
        count(C_PASS);
        return TC_ACT_OK;
    }
    __u32 out = fib.ifindex;
    int to_pod = is_pod(out);
    // Only a container's own traffic, or traffic for a container of this host: a relay
    // (weft.vx in, weft.vx out) and anything else is left to the stack.
    if (out == in || (!to_pod && !is_pod(in))) {
        count(C_PASS);
        return TC_ACT_OK;
    }

    // Forwarding: one hop less, and the checksum updated incrementally (RFC 1624).
    __u32 check = ip->check;
    check += htons(0x0100);
    ip->check = (__u16)(check + (check >= 0xFFFF));
    ip->ttl -= 1;

    if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
        // The kernel resolves the neighbour (and queues the packet meanwhile).
        count(C_NEIGH);
        return bpf_redirect_neigh(out, 0, 0, 0);
    }
    __builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
    if (to_pod) {
        // Straight into the container's namespace.
        count(C_PEER);
        return bpf_redirect_peer(out, 0);
    }
    count(C_EGRESS);
    return bpf_redirect(out, 0);
}

// The helpers used are GPL-only; this file is offered under GPL-2.0 as well (see above).
char _license[] SEC("license") = "GPL";
