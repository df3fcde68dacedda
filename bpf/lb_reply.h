/* NAT replies that touch only their own entry.
 *
 * A NAT reply finds its reverse entry (real server -> client), which holds everything the
 * rewrite back to the VIP needs; the connection's own entry (client -> VIP) it needs only for
 * IPVS's state machine and the connection's timer.  Once the connection is ESTABLISHED, a reply
 * without SYN, FIN or RST leaves the state where it is (IPVS's OUTPUT table: ACK keeps
 * ESTABLISHED, in the usual and in secure_tcp's table alike), and the timer needs a refresh only
 * every LB_TOUCH_NS (lb_conn_touch).  So the reverse entry carries LB_CONN_F_EST_REPLY while its
 * connection is ESTABLISHED, and a reply ACK within LB_TOUCH_NS of the reverse entry's stamp is
 * rewritten and sent from the reverse entry alone: one lookup, and no read of the cache line the
 * client's CPU writes.  Every other reply (SYN|ACK, FIN, RST, the first one after LB_TOUCH_NS)
 * takes the full way, which stamps both entries at once: the connection's timer lags its last
 * reply by at most LB_TOUCH_NS, as it lags its client's last packet.
 *
 * The flag follows the connection's state: the full way sets or clears it from the state it
 * finds (at least every LB_TOUCH_NS while replies come), and a client's packet that moves the
 * connection out of ESTABLISHED (FIN, RST) clears it at once.  A race of the two (a FIN and a
 * reply on two CPUs) can leave it set for one LB_TOUCH_NS on a connection in CLOSE_WAIT or CLOSE,
 * whose OUTPUT ACK keeps the state too. */
#ifndef LB_REPLY_H
#define LB_REPLY_H

#include "lb_consts.h"
#include "lb_structs.h"
#include "lb_parse.h"
#include "lb_embryo.h"

/* 1: rev's flag is set, the reply is an ACK without SYN, FIN or RST (the flag is only ever set
 * on a TCP entry), and rev was stamped within LB_TOUCH_NS */
static __always_inline int lb_reply_fast(struct lb_conn *rev, struct lb_pkt *pkt, __u64 now)
{
    return (rev->flags & LB_CONN_F_EST_REPLY) &&
           (pkt->tcp_flags & (LB_TCP_SYN | LB_TCP_FIN | LB_TCP_RST | LB_TCP_ACK)) == LB_TCP_ACK &&
           (__s64)(now - rev->last_ns) <= (__s64)LB_TOUCH_NS;
}

/* The full way's stamp and flag: both entries stamped when rev's stamp is LB_TOUCH_NS old (so the
 * fast way's replies are never further than that from the connection's stamp), else the
 * connection's as lb_conn_touch does; the flag from the connection's state (c: as the reply left
 * it; was: before). */
static __always_inline void lb_reply_touch(struct lb_conn *rev, struct lb_conn *c, __u8 was, struct lb_pkt *pkt,
                                           __u64 now)
{
    if ((__s64)(now - rev->last_ns) > (__s64)LB_TOUCH_NS) {
        c->last_ns = now;
        rev->last_ns = now;
        if (c->state == was)
            c->timeout = lb_timeout_of(c->state);   /* as lb_conn_touch: a changed timeout applies */
    } else {
        lb_conn_touch(c, now, was);
    }
    __u8 est = pkt->proto == IPPROTO_TCP && c->state == LB_TCP_S_ESTABLISHED ? LB_CONN_F_EST_REPLY : 0;
    if ((rev->flags & LB_CONN_F_EST_REPLY) != est)
        rev->flags ^= LB_CONN_F_EST_REPLY;
}

/* A client's packet moved its NAT connection (key, to real server r) out of ESTABLISHED: its
 * replies take the full way again (their state moves: the server's FIN, a SYN after a reuse) */
static __always_inline void lb_reply_fast_off(struct lb_conn_key *key, struct lb_real *r)
{
    struct lb_conn_key rk;
    int embryo;
    lb_conn_key_reverse(&rk, key, r);
    struct lb_conn *rev = lb_conn_find(&rk, &embryo);
    if (rev && (rev->flags & LB_CONN_F_EST_REPLY))
        rev->flags &= ~LB_CONN_F_EST_REPLY;
}

#endif
