/* Datagrams in fragments.  IPVS sees whole datagrams (the kernel reassembles them before
 * ip_vs_in, IPv6's in nf_defrag_ipv6; ip_vs_out gathers a NAT reply's), so a fragmented UDP
 * datagram -- a large DNS answer with EDNS, a SIP or RADIUS message -- or a TCP segment without
 * DF is balanced whole.  XDP sees each fragment, and only the first carries the ports.  Passed
 * to the kernel as they were, the fragments of a request were answered by the director's own
 * stack (port unreachable, a RST) and a NAT reply's went on with the real server's address as
 * their source.
 *
 * So, as Cilium's fragment tracking does: the first fragment (offset 0) goes the way of any
 * packet of its flow, and when lb forwards it, the datagram (addresses, the IPv4 id or the IPv6
 * fragment header's, protocol, direction) is remembered with its ports in lb_frags4 or
 * lb_frags6; each later fragment finds its flow's connection by those ports and goes the same
 * way: the same real server (DR, NAT with the address rewritten, tunnel), or the same client (a
 * NAT reply).  A later fragment changes no state and no timer (its first did), and counts in the
 * stats as a packet of its own.  One that comes before its first, or whose first was not forwarded, is
 * passed as before (counted `fragment`).
 *
 * Every IPv6 fragment, the first too, goes on in programs of their own (lb_xdp_frag6_public /
 * _private, tail-called): parsed inline, its path took lb_xdp_public past the verifier's million
 * instructions, its 40-byte keys past the 512-byte stack (they are built in lb_frag6_scratch).
 * There a first fragment takes its flow's connection as a whole packet would (lb_flow.h: state,
 * timer, promotion, a gone real server) -- a client's datagram after a whole one, a NAT reply --
 * but one that would make a new connection is the kernel's, as before: a flow that opens in
 * fragments is rare, and scheduling there would duplicate lb_xdp_public_full's new-connection path.
 * An atomic fragment (offset 0, no more to come: a whole datagram) is a first fragment here. */
#ifndef LB_FRAG_H
#define LB_FRAG_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_stats.h"
#include "lb_clock.h"
#include "lb_csum.h"
#include "lb_embryo.h"
#include "lb_forward.h"
#include "lb_flow.h"

/* f, when its first fragment was forwarded within LB_FRAG_TIMEOUT_NS, or 0 */
static __always_inline struct lb_frag *lb_frag_fresh(struct lb_frag *f)
{
    /* signed: a first fragment stamped on another CPU, whose cached clock was a tick ahead */
    if (!f || (__s64)(lb_now() - f->ns) > (__s64)LB_FRAG_TIMEOUT_NS)
        return 0;
    return f;
}

/* The ports of a later fragment's datagram (its first fragment's), or 0 */
static __always_inline struct lb_frag *lb_frag_first(struct lb_pkt *pkt, __u8 dir)
{
    if (pkt->ip6) {
        struct lb_frag6_note *n = lb_frag6_key(pkt, dir);
        return n ? lb_frag_fresh(lb_frags6.lookup(&n->key)) : 0;
    }
    struct lb_frag_key4 fk;
    lb_frag_key_of(&fk, pkt, dir);
    return lb_frag_fresh(lb_frags4.lookup(&fk));
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

/* A later fragment from a client: to its connection's real server, as its first fragment went */
static __always_inline int lb_frag_later_public(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    struct lb_conn *c = lb_frag_conn(pkt, 0);
    if (!c)
        return lb_frag_passed();
    __u32 real_id = c->real, svc_id = c->svc;
    struct lb_real *r = lb_reals.lookup(&real_id);
    if (!r || r->svc != svc_id || r->family == 0)
        return lb_frag_passed();
    /* too big once encapsulated (a sender's fragments fill its path MTU): IPv4's dropped, as any
     * packet without DF (XDP cannot fragment), counted tunnel_too_big, not forwarded; IPv6's
     * too, unanswered (the datagram's first fragment, its largest, drew the Packet Too Big) */
    if (r->fwd == LB_FWD_TUNNEL && r->mtu &&
        pkt->len + (pkt->ip6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr)) > r->mtu) {
        if (!pkt->ip6)
            return lb_tunnel_xmit(ctx, pkt, r);
        lb_count(LB_CNT_TOO_BIG);
        lb_count(LB_CNT_TOO_BIG_UNANSWERED);
        return XDP_DROP;
    }
    lb_count(LB_CNT_FRAG_FORWARDED);
    lb_stats_in(svc_id, real_id, pkt->len, 0);
    if (r->fwd == LB_FWD_NAT) {
        if (pkt->ip6) {
            /* no header checksum; the transport checksum is in the first fragment */
            __builtin_memcpy(&pkt->ip6->daddr, r->addr, 16);
        } else if (pkt->ip4) {
            __be32 old = pkt->ip4->daddr, addr = *(__be32 *)r->addr;
            pkt->ip4->daddr = addr;
            lb_csum_replace4((__u16 *)&pkt->ip4->check, old, addr);
        }
        return lb_xmit(ctx, pkt->eth, r->mac, r->src_mac, r->ifindex);
    }
    if (r->fwd == LB_FWD_TUNNEL)
        return lb_tunnel_xmit(ctx, pkt, r);
    return lb_xmit(ctx, pkt->eth, r->mac, r->src_mac, r->ifindex);   /* DR */
}

/* A later fragment of a NAT reply: back to the client from the VIP, as its first fragment went */
static __always_inline int lb_frag_later_private(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    struct lb_conn *rev = lb_frag_conn(pkt, 1);
    if (!rev || !(rev->flags & LB_CONN_F_OUT))
        return lb_frag_passed();
    lb_count(LB_CNT_FRAG_FORWARDED);
    lb_stats_out(rev->svc, rev->real, pkt->len);
    if (pkt->ip6) {
        __builtin_memcpy(&pkt->ip6->saddr, rev->vaddr, 16);
    } else if (pkt->ip4) {
        __be32 old = pkt->ip4->saddr, vip = *(__be32 *)rev->vaddr;
        pkt->ip4->saddr = vip;
        lb_csum_replace4((__u16 *)&pkt->ip4->check, old, vip);
    }
    return lb_xmit(ctx, pkt->eth, rev->client_mac, rev->local_mac, rev->client_ifindex);
}

/* A later fragment from a client (dir 0) or of a NAT reply (dir 1) */
static __always_inline int lb_frag_later(struct xdp_md *ctx, struct lb_pkt *pkt, __u8 dir)
{
    return dir ? lb_frag_later_private(ctx, pkt) : lb_frag_later_public(ctx, pkt);
}

/* lb_xdp_public_full's (dir 0) and lb_xdp_private's (dir 1) way for a later fragment (IPv4) or any
 * fragment (IPv6): IPv4's here, IPv6's in its program (a failed tail call: passed, as before).
 * dir is a constant at each call: one slot, a direct jump. */
static __always_inline int lb_frag_packet(struct xdp_md *ctx, struct lb_pkt *pkt, __u8 dir)
{
    if (pkt->ip6) {
        lb_frag6_progs.call(ctx, dir ? LB_FRAG6_PRIVATE : LB_FRAG6_PUBLIC);
        lb_count(LB_CNT_TAIL_CALL);
        return lb_frag_passed();
    }
    return lb_frag_later(ctx, pkt, dir);
}

/* An IPv6 fragment's program: the frame parsed again (a tail call keeps nothing else), a first
 * fragment on to its ports.  LB_FRAG_FIRST (ports parsed), LB_FRAG_LATER, or 0: pass it. */
static __always_inline int lb_frag6_begin(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    __u32 counter = LB_CNT_MAX;
    int act = lb_parse_frag(ctx, pkt, &counter, 1);
    if (!pkt->ip6)
        return 0;
    if (pkt->frag == LB_FRAG_LATER)
        return LB_FRAG_LATER;
    return pkt->frag == LB_FRAG_FIRST && act == LB_CONTINUE ? LB_FRAG_FIRST : 0;
}

/* An IPv6 first fragment from a client: along its flow's connection, as any packet of the flow
 * (state, timer, promotion: lb_conn_packet_in), noted for the fragments after it.  A datagram
 * that would make a new connection is the kernel's, as before (a flow that opens in fragments
 * is rare; IPVS would schedule it whole). */
static __always_inline int lb_frag_first6_public(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    __u64 now = lb_now();
    struct lb_conn_key key;
    lb_conn_key_in(&key, pkt);
    int embryo;
    struct lb_conn *c = lb_conn_find(&key, &embryo);
    if (c && (lb_conn_expired(c, now) || lb_conn_reusable(c, pkt))) {
        lb_conn_expire_in(&key, c, embryo);
        c = 0;
    }
    if (!c)
        return lb_frag_passed();
    return lb_conn_packet_in(ctx, pkt, &key, c, embryo, now, 1);
}

/* lb_xdp_frag6_public's (dir 0) and lb_xdp_frag6_private's (dir 1) whole work: a later
 * fragment the way its first went, a first one its connection's way (a client's, or as any NAT
 * reply), noted; anything else passed */
static __always_inline int lb_frag6_program(struct xdp_md *ctx, __u8 dir)
{
    struct lb_pkt pkt = {};
    int act = lb_frag6_begin(ctx, &pkt);
    if (act == LB_FRAG_LATER)
        return lb_frag_later(ctx, &pkt, dir);
    if (act != LB_FRAG_FIRST)
        return lb_frag_passed();
    return dir ? lb_reply_packet(ctx, &pkt, 1) : lb_frag_first6_public(ctx, &pkt);
}

#endif
