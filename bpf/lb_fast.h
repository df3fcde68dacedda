/* An established connection's commonest packet, the short way: a client's IPv4 TCP segment
 * with ACK alone of SYN/FIN/RST/ACK, or UDP datagram, no VLAN tag, no IP options, not a
 * fragment, whose entry in lb_conns4 is ESTABLISHED (UDP: its one state, and its timeout the
 * current one), live and refreshed within LB_TOUCH_NS, forwarded by DR or NAT, its checksum
 * whole.  Such a packet changes nothing in its entry (lb_conn_next_state keeps ESTABLISHED on a
 * lone ACK, and writes a UDP entry the state and timeout it has; lb_conn_touch leaves a timestamp
 * younger than LB_TOUCH_NS), so what lb_xdp_public_full does with it is: count it and forward
 * it.  Done here, in the attached program, without the general parse, the 40-byte key and the
 * full program's tail call: about 30 ns a packet on this VM
 * (bench/results/ablation-2026-12-06/fast-path.txt, udp-fast-path.txt).  Anything else -- and
 * any of these tests failing -- goes on to lb_xdp_public_full, which sees the packet as it
 * came.  The same packet takes either way to the same bytes (tests/test_fast_path.py).  A UDP
 * flow's first two datagrams go the full way: its entry waits in the embryonic table until the
 * second (lb_embryo.h). */
#ifndef LB_FAST_H
#define LB_FAST_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_csum.h"
#include "lb_stats.h"
#include "lb_clock.h"
#include "lb_conntrack.h"
#include "lb_forward.h"

/* An XDP action, or LB_CONTINUE: the full way */
static __always_inline int lb_fast_established(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    struct udphdr *uh = (void *)(ip + 1);     /* the ports, where TCP's are too */
    if ((void *)(uh + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
        return LB_CONTINUE;
    /* version 4 and a 20-byte header in one byte; no fragment bits (MF, offset) */
    if (((__u8 *)ip)[0] != 0x45 || (ip->frag_off & bpf_htons(0x3fff)))
        return LB_CONTINUE;
    __u8 proto = ip->protocol, state;
    __u16 *check;
    if (proto == IPPROTO_TCP) {
        struct tcphdr *th = (void *)(ip + 1);
        if ((void *)(th + 1) > data_end)
            return LB_CONTINUE;
        if ((((__u8 *)th)[13] & (LB_TCP_SYN | LB_TCP_FIN | LB_TCP_RST | LB_TCP_ACK)) != LB_TCP_ACK)
            return LB_CONTINUE;
        check = (__u16 *)&th->check;
        state = LB_TCP_S_ESTABLISHED;
    } else if (proto == IPPROTO_UDP) {
        check = (__u16 *)&uh->check;
        state = LB_UDP_S_NORMAL;
    } else {
        return LB_CONTINUE;
    }
    struct lb_conn_key4 k4 = { .saddr = ip->saddr, .daddr = ip->daddr, .sport = uh->source,
                               .dport = uh->dest, .proto = proto };
    struct lb_conn *c = lb_conns4.lookup(&k4);
    if (!c || c->state != state)
        return LB_CONTINUE;
    __u64 now = lb_now();
    if ((__s64)(now - c->last_ns) > (__s64)LB_TOUCH_NS || lb_conn_expired(c, now))
        return LB_CONTINUE;       /* its timestamp (or its removal) is the full way's */
    /* a UDP entry takes the current timeout at every datagram (lb_conn_next_state): one changed
     * since ([timeouts] at a reload) is the full way's to write */
    if (proto == IPPROTO_UDP && c->timeout != lb_timeout_of(LB_UDP_S_NORMAL))
        return LB_CONTINUE;
    __u32 real_id = c->real;
    struct lb_real *r = lb_reals.lookup(&real_id);
    if (!r || r->svc != c->svc || !r->family)
        return LB_CONTINUE;       /* its real server gone: the full way counts and drops it */
    __u32 len = bpf_ntohs(ip->tot_len);
    /* a partial checksum (the sender's tx offload: only the pseudo header's sum) is the full
     * way's to complete (lb_csum_complete); a UDP datagram's 0 (no checksum) never equals it */
    __u64 pseudo = (__u64)ip->saddr + ip->daddr + bpf_htons((__u16)proto) + bpf_htons((__u16)(len - 20));
    if (*check == lb_csum_fold64(pseudo))
        return LB_CONTINUE;
    if (r->fwd == LB_FWD_NAT) {
        /* lb_rewrite4: the destination to the real server's address and port (0: the packet's) */
        __be32 to = *(__be32 *)r->addr, from = ip->daddr;
        __be16 port = r->port ? r->port : uh->dest, was = uh->dest;
        ip->daddr = to;
        uh->dest = port;
        lb_csum_replace4((__u16 *)&ip->check, from, to);
        if (proto == IPPROTO_TCP || *check) {     /* an IPv4 datagram's 0 stays "no checksum" */
            lb_csum_replace4(check, from, to);
            lb_csum_replace2(check, was, port);
            if (proto == IPPROTO_UDP && *check == 0)
                *check = 0xffff;                  /* RFC 768, as lb_l4csum_fix_udp */
        }
    } else if (r->fwd != LB_FWD_DR) {
        return LB_CONTINUE;       /* a tunnel's header: the full way */
    }
    lb_stats_in(c->svc, real_id, len, 0);
    return lb_xmit(ctx, eth, r->mac, r->src_mac, r->ifindex);
}

#endif
