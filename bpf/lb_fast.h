/* An established connection's commonest packet, the short way: a client's TCP segment with ACK
 * alone of SYN/FIN/RST/ACK, or UDP datagram, IPv4 or IPv6, no VLAN tag, no IP options or IPv6
 * extension headers, not a fragment, whose entry in lb_conns4 / lb_conns6 is ESTABLISHED (UDP:
 * its one state, and its timeout the current one), live and refreshed within LB_TOUCH_NS,
 * forwarded by DR or NAT, its checksum whole.  Such a packet changes nothing in its entry
 * (lb_conn_next_state keeps ESTABLISHED on a lone ACK, and writes a UDP entry the state and
 * timeout it has; lb_conn_touch leaves a timestamp younger than LB_TOUCH_NS), so what
 * lb_xdp_public_full does with it is: count it and forward it.  Done here, in the attached
 * program, without the general parse and the full program's tail call: 20-40 ns a packet on
 * this VM (bench/results/ablation-2026-12-06/fast-path.txt, udp-fast-path.txt, ipv6-fast-path.txt).
 * Anything else -- and any of these tests failing -- goes on to lb_xdp_public_full, which sees
 * the packet as it came.  The same packet takes either way to the same bytes
 * (tests/test_fast_path.py).  A UDP flow's first two datagrams go the full way: its entry waits
 * in the embryonic table until the second (lb_embryo.h). */
#ifndef LB_FAST_H
#define LB_FAST_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_csum.h"
#include "lb_stats.h"
#include "lb_clock.h"
#include "lb_conntrack.h"
#include "lb_forward.h"

/* The L4 header at l4 (TCP's or UDP's: the ports first in both): its checksum field, and in
 * *state the state its entry must be in; 0: the full way's */
static __always_inline __u16 *lb_fast_l4(void *l4, void *data_end, __u8 proto, __u8 *state)
{
    if (proto == IPPROTO_TCP) {
        struct tcphdr *th = l4;
        if ((void *)(th + 1) > data_end)
            return 0;
        if ((((__u8 *)th)[13] & (LB_TCP_SYN | LB_TCP_FIN | LB_TCP_RST | LB_TCP_ACK)) != LB_TCP_ACK)
            return 0;
        *state = LB_TCP_S_ESTABLISHED;
        return (__u16 *)&th->check;
    }
    if (proto == IPPROTO_UDP) {
        struct udphdr *uh = l4;
        if ((void *)(uh + 1) > data_end)
            return 0;
        *state = LB_UDP_S_NORMAL;
        return (__u16 *)&uh->check;
    }
    return 0;
}

/* The real server of entry c when its packet may go the short way, else 0 */
static __always_inline struct lb_real *lb_fast_real(struct lb_conn *c, __u8 state, __u8 proto)
{
    if (!c || c->state != state)
        return 0;
    __u64 now = lb_now();
    if ((__s64)(now - c->last_ns) > (__s64)LB_TOUCH_NS || lb_conn_expired(c, now))
        return 0;                 /* its timestamp (or its removal) is the full way's */
    /* a UDP entry takes the current timeout at every datagram (lb_conn_next_state): one changed
     * since ([timeouts] at a reload) is the full way's to write */
    if (proto == IPPROTO_UDP && c->timeout != lb_timeout_of(LB_UDP_S_NORMAL))
        return 0;
    __u32 real_id = c->real;
    struct lb_real *r = lb_reals.lookup(&real_id);
    if (!r || r->svc != c->svc || !r->family)
        return 0;                 /* its real server gone: the full way counts and drops it */
    if (r->fwd != LB_FWD_DR && r->fwd != LB_FWD_NAT)
        return 0;                 /* a tunnel's header: the full way */
    return r;
}

static __always_inline int lb_fast4(struct xdp_md *ctx, struct ethhdr *eth, void *data_end)
{
    struct iphdr *ip = (void *)(eth + 1);
    struct udphdr *uh = (void *)(ip + 1);     /* the ports, where TCP's are too */
    if ((void *)(uh + 1) > data_end)
        return LB_CONTINUE;
    /* version 4 and a 20-byte header in one byte; no fragment bits (MF, offset) */
    if (((__u8 *)ip)[0] != 0x45 || (ip->frag_off & bpf_htons(0x3fff)))
        return LB_CONTINUE;
    __u8 proto = ip->protocol, state;
    __u16 *check = lb_fast_l4(uh, data_end, proto, &state);
    if (!check)
        return LB_CONTINUE;
    struct lb_conn_key4 k4 = { .saddr = ip->saddr, .daddr = ip->daddr, .sport = uh->source,
                               .dport = uh->dest, .proto = proto };
    struct lb_conn *c = lb_conns4.lookup(&k4);
    struct lb_real *r = lb_fast_real(c, state, proto);
    if (!r)
        return LB_CONTINUE;
    __u32 len = bpf_ntohs(ip->tot_len);
    /* a partial checksum (the sender's tx offload: only the pseudo header's sum) is the full
     * way's to complete (lb_csum_complete); a UDP datagram's 0 (no checksum) never equals it */
    if (*check == lb_csum_pseudo_of(&ip->saddr, &ip->daddr, 0, proto, len - 20))
        return LB_CONTINUE;
    /* NAT, as lb_nat_daddr: the destination to the real server's address and port (0: the
     * packet's); an IPv4 datagram's 0 stays "no checksum" (lb_parse_l4 leaves l4csum 0) */
    if (r->fwd == LB_FWD_NAT)
        lb_rewrite4_at((__u16 *)&ip->check, (proto == IPPROTO_TCP || *check) ? check : 0, proto, &ip->daddr,
                       *(__be32 *)r->addr, &uh->dest, r->port ? r->port : uh->dest);
    lb_stats_in(c->svc, c->real, len, 0);
    return lb_xmit(ctx, eth, r->mac, r->src_mac, r->ifindex);
}

static __always_inline int lb_fast6(struct xdp_md *ctx, struct ethhdr *eth, void *data_end)
{
    struct ipv6hdr *ip6 = (void *)(eth + 1);
    struct udphdr *uh = (void *)(ip6 + 1);    /* no extension header: the next is TCP or UDP */
    if ((void *)(uh + 1) > data_end || ip6->version != 6)
        return LB_CONTINUE;
    __u8 proto = ip6->nexthdr, state;
    __u16 *check = lb_fast_l4(uh, data_end, proto, &state);
    /* an IPv6 datagram without a checksum is given one by the full way (lb_csum_complete) */
    if (!check || (proto == IPPROTO_UDP && *check == 0))
        return LB_CONTINUE;
    __be32 *s = ip6->saddr.in6_u.u6_addr32, *d = ip6->daddr.in6_u.u6_addr32;
    struct lb_conn_key k = { .sport = uh->source, .dport = uh->dest, .proto = proto,
                             .family = LB_AF_INET6 };
    __builtin_memcpy(k.saddr, s, 16);
    __builtin_memcpy(k.daddr, d, 16);
    struct lb_conn *c = lb_conns6.lookup(&k);
    struct lb_real *r = lb_fast_real(c, state, proto);
    if (!r)
        return LB_CONTINUE;
    __u32 l4len = bpf_ntohs(ip6->payload_len);
    if (*check == lb_csum_pseudo_of(s, d, 1, proto, l4len))
        return LB_CONTINUE;
    if (r->fwd == LB_FWD_NAT)     /* as lb_nat_daddr */
        lb_rewrite6_at(check, proto, d, (const __be32 *)r->addr, &uh->dest, r->port ? r->port : uh->dest);
    lb_stats_in(c->svc, c->real, l4len + sizeof(*ip6), 0);
    return lb_xmit(ctx, eth, r->mac, r->src_mac, r->ifindex);
}

/* An XDP action, or LB_CONTINUE: the full way */
static __always_inline int lb_fast_established(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return LB_CONTINUE;
    if (eth->h_proto == bpf_htons(ETH_P_IP))
        return lb_fast4(ctx, eth, data_end);
    if (eth->h_proto == bpf_htons(ETH_P_IPV6))
        return lb_fast6(ctx, eth, data_end);
    return LB_CONTINUE;
}

#endif
