/* A tracked connection's packet, after its lookup: a client's (lb_xdp_public_full's established path)
 * and a real server's NAT reply (lb_xdp_private's).  An IPv6 first fragment takes the same way
 * in lb_xdp_frag6_public / _private (lb_frag.h) with note6 set: the same state, timer and
 * promotion, its datagram noted (lb_frag_note6) just before it is forwarded, and what the
 * whole-packet path would pass counted as a fragment passed.  note6 is a constant at each
 * call: in lb_xdp_public_full and lb_xdp_private its code is compiled out. */
#ifndef LB_FLOW_H
#define LB_FLOW_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_stats.h"
#include "lb_conntrack.h"
#include "lb_embryo.h"
#include "lb_forward.h"
#include "lb_reply.h"

static __always_inline int lb_frag_passed(void)
{
    lb_count(LB_CNT_FRAGMENT);
    return XDP_PASS;
}

/* A client's packet on its connection c (key: its lookup key; embryo: c is in the embryonic
 * table), now: the clock.  An XDP action. */
static __always_inline int lb_conn_packet_in(struct xdp_md *ctx, struct lb_pkt *pkt, struct lb_conn_key *key,
                                             struct lb_conn *c, int embryo, __u64 now, int note6)
{
    /* a template is not refreshed by its connections' packets (IPVS re-arms it only for a new
     * connection through it); the control plane's sweep keeps one that still controls live
     * connections, as ip_vs_conn_expire does (lb/dataplane/conntable.py) */
    __u32 svc_id = c->svc;

    __u32 real_id = c->real;
    struct lb_real *r = lb_reals.lookup(&real_id);
    if (!r || r->svc != svc_id || r->family == 0) {
        /* its real server has left the service: drop the packet (expire_nodest_conn = 0), or
         * also expire the connection so the client's next SYN is scheduled afresh (= 1) */
        lb_count(LB_CNT_BAD_REAL);
        __u32 g = LB_G_EXPIRE_NODEST;
        __u32 *expire = lb_globals.lookup(&g);
        if (expire && *expire)
            lb_conn_expire_in(key, c, embryo);
        return XDP_DROP;
    }
    __u8 was = c->state;
    lb_conn_state(c, lb_fsm_table(r), pkt);
    lb_conn_touch(c, now, was);
    if (was == LB_TCP_S_ESTABLISHED && c->state != was && r->fwd == LB_FWD_NAT)
        lb_reply_fast_off(key, r);       /* a FIN or RST: the replies' state moves again */
    if (embryo && lb_embryo_grown(c, pkt->proto)) {
        struct lb_conn_key rk;
        lb_conn_key_reverse(&rk, key, r);
        lb_embryo_promote(key, c, r->fwd == LB_FWD_NAT ? &rk : 0);
    }
    lb_stats_in(svc_id, real_id, pkt->len, 0);
    if (note6)
        lb_frag_note6(pkt, 0);
    return lb_forward_to_real(ctx, pkt, r);
}


/* A packet from a real server's side: a NAT reply back to its client from the VIP, or (not a
 * NAT reply) the kernel's.  An XDP action. */
static __always_inline int lb_reply_packet(struct xdp_md *ctx, struct lb_pkt *pkt, int note6)
{
    struct lb_conn_key rk;
    lb_conn_key_in(&rk, pkt);
    rk.dir = 1;
    int rev_embryo, embryo;
    struct lb_conn *rev = lb_conn_find(&rk, &rev_embryo);
    if (!rev || !(rev->flags & LB_CONN_F_OUT)) {
        if (note6)
            return lb_frag_passed();
        lb_progs_prev.call(ctx, LB_PREV_PRIVATE);    /* a resize: the old maps may hold it */
        return XDP_PASS;          /* not a NAT reply: the director's own traffic, DR replies */
    }
    __u64 now = lb_now();
    if (lb_reply_fast(rev, pkt, now)) {
        lb_stats_out(rev->svc, rev->real, pkt->len);
        if (note6)
            lb_frag_note6(pkt, 1);
        return lb_forward_to_client(ctx, pkt, rev);
    }

    __u32 svc_id = rev->svc;
    struct lb_conn_key key = {};
    __builtin_memcpy(key.saddr, pkt->daddr, 16);
    __builtin_memcpy(key.daddr, rev->vaddr, 16);
    key.sport = *pkt->dport_p;
    key.dport = rev->vport;
    key.proto = pkt->proto;
    key.family = pkt->family;
    struct lb_conn *c = lb_conn_find(&key, &embryo);
    if (!c || c->real != rev->real) {
        if (note6)
            return lb_frag_passed();
        /* a resize's copy can catch a NAT connection's reverse entry without its client's (the
         * old programs moved both to lb_conns as the copy walked it): the old maps hold both */
        lb_progs_prev.call(ctx, LB_PREV_PRIVATE);
        return XDP_PASS;
    }
    if (lb_conn_expired(c, now)) {
        lb_conn_expire_in(&key, c, embryo);
        lb_conn_delete_in(&rk, rev_embryo);
        return note6 ? lb_frag_passed() : XDP_PASS;
    }
    __u8 was = c->state;
    lb_conn_state(c, LB_FSM_OUTPUT, pkt);
    lb_reply_touch(rev, c, was, pkt, now);
    /* a UDP reply, or (secure_tcp) the real server's ACK after the handshake: established */
    if (embryo && lb_embryo_grown(c, pkt->proto)) {
        lb_embryo_promote(&key, c, &rk);
        struct lb_conn *moved = lb_conns_lookup(&key);   /* the embryonic entry is gone */
        if (moved)
            c = moved;
    }
    lb_stats_out(svc_id, c->real, pkt->len);
    if (note6)
        lb_frag_note6(pkt, 1);
    return lb_forward_to_client(ctx, pkt, c);
}


#endif
