/* IPv4 datagrams in fragments.  IPVS sees whole datagrams (the kernel reassembles them before
 * ip_vs_in; ip_vs_out gathers a NAT reply's), so a fragmented UDP datagram -- a large DNS answer
 * with EDNS, a SIP or RADIUS message -- or a TCP segment without DF is balanced whole.  XDP sees
 * each fragment, and only the first carries the ports.  Passed to the kernel as they were, the
 * fragments of a request were answered by the director's own stack (port unreachable, a RST)
 * and a NAT reply's went on with the real server's address as their source.
 *
 * So, as Cilium's IPv4 fragment tracking does: the first fragment (offset 0, more to come) goes
 * the way of any packet of its flow, and when lb forwards it, the datagram (addresses, IP id,
 * protocol, direction) is remembered with its ports in lb_frags4; each later fragment finds its
 * flow's connection by those ports and goes the same way: the same real server (DR, NAT with
 * the address rewritten, tunnel), or the same client (a NAT reply).  It changes no state and no
 * timer (its first did), and counts in the stats as a packet of its own.  One that comes before
 * its first, or whose first was not forwarded, is passed as before (counted `fragment`).
 * IPv6 fragments are still the kernel's. */
#ifndef LB_FRAG_H
#define LB_FRAG_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_stats.h"
#include "lb_clock.h"
#include "lb_csum.h"
#include "lb_embryo.h"
#include "lb_forward.h"

/* The ports of a later fragment's datagram (its first fragment's, forwarded within
 * LB_FRAG_TIMEOUT_NS), or 0 */
static __always_inline struct lb_frag *lb_frag_first(struct lb_pkt *pkt, __u8 dir)
{
    struct lb_frag_key4 fk;
    lb_frag_key_of(&fk, pkt, dir);
    struct lb_frag *f = lb_frags4.lookup(&fk);
    /* signed: a first fragment stamped on another CPU, whose cached clock was a tick ahead */
    if (!f || (__s64)(lb_now() - f->ns) > (__s64)LB_FRAG_TIMEOUT_NS)
        return 0;
    return f;
}

/* The connection key of a later fragment's flow (dir 1: a NAT reply's reverse entry) */
static __always_inline void lb_frag_conn_key(struct lb_conn_key *k, struct lb_pkt *pkt, struct lb_frag *f, __u8 dir)
{
    __builtin_memset(k, 0, sizeof(*k));
    __builtin_memcpy(k->saddr, pkt->saddr, 16);
    __builtin_memcpy(k->daddr, pkt->daddr, 16);
    k->sport = f->sport;
    k->dport = f->dport;
    k->proto = pkt->proto;
    k->family = pkt->family;
    k->dir = dir;
}

/* The connection a later fragment's datagram belongs to (dir 1: a NAT reply's reverse entry), or 0 */
static __always_inline struct lb_conn *lb_frag_conn(struct lb_pkt *pkt, __u8 dir)
{
    struct lb_frag *f = lb_frag_first(pkt, dir);
    if (!f)
        return 0;
    struct lb_conn_key k;
    lb_frag_conn_key(&k, pkt, f, dir);
    int embryo;
    return lb_conn_find(&k, &embryo);
}

static __always_inline int lb_frag_passed(void)
{
    lb_count(LB_CNT_FRAGMENT);
    return XDP_PASS;
}

/* A later fragment from a client: to its connection's real server, as its first fragment went */
static __always_inline int lb_frag_public(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    struct lb_conn *c = lb_frag_conn(pkt, 0);
    if (!c)
        return lb_frag_passed();
    __u32 real_id = c->real, svc_id = c->svc;
    struct lb_real *r = lb_reals.lookup(&real_id);
    if (!r || r->svc != svc_id || r->family == 0)
        return lb_frag_passed();
    /* too big once encapsulated (a sender's fragments fill its path MTU): dropped, as any packet
     * without DF (XDP cannot fragment), counted tunnel_too_big, not forwarded */
    if (r->fwd == LB_FWD_TUNNEL && r->mtu && pkt->len + sizeof(struct iphdr) > r->mtu)
        return lb_tunnel_xmit(ctx, pkt, r);
    lb_count(LB_CNT_FRAG_FORWARDED);
    lb_stats_in(svc_id, real_id, pkt->len, 0);
    if (r->fwd == LB_FWD_NAT) {
        __be32 old = pkt->ip4->daddr, addr = *(__be32 *)r->addr;
        pkt->ip4->daddr = addr;
        lb_csum_replace4((__u16 *)&pkt->ip4->check, old, addr);
        return lb_xmit(ctx, pkt->eth, r->mac, r->src_mac, r->ifindex);
    }
    if (r->fwd == LB_FWD_TUNNEL)
        return lb_tunnel_xmit(ctx, pkt, r);
    return lb_xmit(ctx, pkt->eth, r->mac, r->src_mac, r->ifindex);   /* DR */
}

/* A later fragment of a NAT reply: back to the client from the VIP, as its first fragment went */
static __always_inline int lb_frag_private(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    struct lb_conn *rev = lb_frag_conn(pkt, 1);
    if (!rev || !(rev->flags & LB_CONN_F_OUT))
        return lb_frag_passed();
    lb_count(LB_CNT_FRAG_FORWARDED);
    lb_stats_out(rev->svc, rev->real, pkt->len);
    __be32 old = pkt->ip4->saddr, vip = *(__be32 *)rev->vaddr;
    pkt->ip4->saddr = vip;
    lb_csum_replace4((__u16 *)&pkt->ip4->check, old, vip);
    return lb_xmit(ctx, pkt->eth, rev->client_mac, rev->local_mac, rev->client_ifindex);
}

#endif
