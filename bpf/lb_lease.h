/* The HA lease.  With [ha], the daemon refreshes lb_lease with each heartbeat it sends: an expiry
 * on the bpf_ktime_get_coarse_ns() clock, deadtime ahead.  A daemon that is gone (kill -9, a hang)
 * stops sending heartbeats, so its peer takes over after deadtime, and stops refreshing, so from
 * the same moment on this director stops claiming the addresses of lb_lease_addrs (the VIPs and
 * nat_router), which stay on its interfaces (XDP programs and addresses outlive the daemon, for
 * hitless restarts): ARP requests and IPv6 neighbour solicitations for them are dropped before
 * the kernel would answer them, and packets addressed to them are dropped instead of forwarded.
 * Without [ha] the lease is 0 and nothing is checked: a crashed daemon keeps forwarding. */
#ifndef LB_LEASE_H
#define LB_LEASE_H

#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include "lb_consts.h"
#include "lb_structs.h"
#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_stats.h"
#include "lb_clock.h"

#define LB_ARPOP_REQUEST 1
#define LB_ND_NEIGHBOR_SOLICIT 135

struct lb_arp_ip4 {               /* an ARP message for IPv4 over Ethernet */
    __be16 htype;
    __be16 ptype;
    __u8 hlen;
    __u8 plen;
    __be16 op;
    __u8 sha[ETH_ALEN];
    __u8 spa[4];
    __u8 tha[ETH_ALEN];
    __u8 tpa[4];
} __attribute__((packed));

struct lb_nd_solicit {            /* ICMPv6 neighbour solicitation: header, reserved, target */
    __u8 type;
    __u8 code;
    __sum16 check;
    __be32 reserved;
    __u8 target[16];
};

/* The lease ran out: the daemon is gone (with [ha]; without, there is no lease) */
static __always_inline int lb_lease_lapsed(void)
{
    __u32 zero = 0;
    struct lb_lease *l = lb_lease.lookup(&zero);
    return l && l->expires_ns && lb_now() > l->expires_ns;
}

/* One of this director's addresses (16 bytes, IPv4 in the first 4) */
static __always_inline int lb_lease_covers(const __u8 *addr, __u8 family)
{
    struct lb_addr_key k = {};
    if (family == LB_AF_INET)
        __builtin_memcpy(k.addr, addr, 4);
    else
        __builtin_memcpy(k.addr, addr, 16);
    k.family = family;
    return lb_lease_addrs.lookup(&k) != 0;
}

static __always_inline int lb_lease_drop(void)
{
    lb_count(LB_CNT_LEASE_LAPSED);
    return XDP_DROP;
}

/* First thing every program attached to an interface does: XDP_DROP for a neighbour request
 * for, or a packet to, one of the covered addresses once the lease has run out; LB_CONTINUE for
 * anything else (one array lookup while the lease holds). */
static __always_inline int lb_lease_guard(struct xdp_md *ctx)
{
    if (!lb_lease_lapsed())
        return LB_CONTINUE;
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return LB_CONTINUE;
    void *cur;
    __be16 proto = lb_eth_proto(eth, data_end, &cur);
    if (proto == bpf_htons(ETH_P_ARP)) {
        struct lb_arp_ip4 *a = cur;
        if ((void *)(a + 1) > data_end)
            return LB_CONTINUE;
        if (a->op == bpf_htons(LB_ARPOP_REQUEST) && a->ptype == bpf_htons(ETH_P_IP) && a->plen == 4 &&
            lb_lease_covers(a->tpa, LB_AF_INET))
            return lb_lease_drop();
        return LB_CONTINUE;
    }
    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = cur;
        if ((void *)(ip + 1) > data_end)
            return LB_CONTINUE;
        if (lb_lease_covers((const __u8 *)&ip->daddr, LB_AF_INET))
            return lb_lease_drop();
        return LB_CONTINUE;
    }
    if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = cur;
        if ((void *)(ip6 + 1) > data_end)
            return LB_CONTINUE;
        if (lb_lease_covers((const __u8 *)&ip6->daddr, LB_AF_INET6))
            return lb_lease_drop();
        /* a solicitation goes to the target's solicited-node multicast address */
        struct lb_nd_solicit *ns = (void *)(ip6 + 1);
        if (ip6->nexthdr == IPPROTO_ICMPV6 && (void *)(ns + 1) <= data_end &&
            ns->type == LB_ND_NEIGHBOR_SOLICIT && lb_lease_covers(ns->target, LB_AF_INET6))
            return lb_lease_drop();
    }
    return LB_CONTINUE;
}

#endif
