/* Connection table: IPVS connection states, timeouts and the ActiveConn/InActConn counters. */
#ifndef LB_CONNTRACK_H
#define LB_CONNTRACK_H

#include "lb_maps.h"
#include "lb_parse.h"

static __always_inline void lb_conn_key_in(struct lb_conn_key *k, struct lb_pkt *pkt)
{
    __builtin_memcpy(k->saddr, pkt->saddr, 16);
    __builtin_memcpy(k->daddr, pkt->daddr, 16);
    k->sport = *pkt->sport_p;
    k->dport = *pkt->dport_p;
    k->proto = pkt->proto;
    k->family = pkt->family;
    k->dir = 0;
    k->pad = 0;
}

/* lb_conns, the established connections, is two tables: lb_conns4 (IPv4, lb_conn_key4) and
 * lb_conns6 (lb_conn_key).  The packet path builds one lb_conn_key for every table and these
 * go to the family's. */
static __always_inline void lb_conn_key4_of(struct lb_conn_key4 *k4, const struct lb_conn_key *k)
{
    __builtin_memcpy(&k4->saddr, k->saddr, 4);
    __builtin_memcpy(&k4->daddr, k->daddr, 4);
    k4->sport = k->sport;
    k4->dport = k->dport;
    k4->proto = k->proto;
    k4->dir = k->dir;
    k4->pad[0] = 0;
    k4->pad[1] = 0;
}

/* The asm statements after each map call keep clang from merging the two tables' calls into
 * one with the map in a register, which the verifier cannot inline (tests/test_bpf_calls.py). */
static __always_inline struct lb_conn *lb_conns_lookup(const struct lb_conn_key *k)
{
    struct lb_conn *c;
    if (k->family == LB_AF_INET) {
        struct lb_conn_key4 k4;
        lb_conn_key4_of(&k4, k);
        c = lb_conns4.lookup(&k4);
        asm volatile("/* lb_conns4 */");
        return c;
    }
    c = lb_conns6.lookup((struct lb_conn_key *)k);
    asm volatile("/* lb_conns6 */");
    return c;
}

static __always_inline int lb_conns_delete(const struct lb_conn_key *k)
{
    int rc;
    if (k->family == LB_AF_INET) {
        struct lb_conn_key4 k4;
        lb_conn_key4_of(&k4, k);
        rc = lb_conns4.delete(&k4);
        asm volatile("/* lb_conns4 */");
        return rc;
    }
    rc = lb_conns6.delete((struct lb_conn_key *)k);
    asm volatile("/* lb_conns6 */");
    return rc;
}

/* noexist: BPF_NOEXIST (an insert), else BPF_ANY */
static __always_inline int lb_conns_write(const struct lb_conn_key *k, struct lb_conn *v, int noexist)
{
    int rc;
    if (k->family == LB_AF_INET) {
        struct lb_conn_key4 k4;
        lb_conn_key4_of(&k4, k);
        rc = noexist ? lb_conns4.insert(&k4, v) : lb_conns4.update(&k4, v);
        asm volatile("/* lb_conns4 */");
        return rc;
    }
    rc = noexist ? lb_conns6.insert((struct lb_conn_key *)k, v) : lb_conns6.update((struct lb_conn_key *)k, v);
    asm volatile("/* lb_conns6 */");
    return rc;
}

static __always_inline void lb_real_conns_add(__u32 real, int active, int inactive)
{
    struct lb_real_conns *c = lb_real_conns.lookup(&real);
    if (!c)
        return;
    if (active)
        __sync_fetch_and_add(&c->active, active);
    if (inactive)
        __sync_fetch_and_add(&c->inactive, inactive);
}

/* active + inactive (IPVS ip_vs_dest_totalconns), the sweep's share taken off */
static __always_inline __u32 lb_real_total(__u32 real)
{
    struct lb_real_conns *c = lb_real_conns.lookup(&real);
    struct lb_real_counts *s = lb_real_swept.lookup(&real);
    if (!c || !s)
        return 0;
    return (c->active - s->active) + (c->inactive - s->inactive);
}

/* Set or clear OVERLOAD: lb_real_overload (what the control plane reads) and the flag in the
 * scheduler's view, lb_svc_dests[svc].d[pos] (what every pick loop already tests). */
static __always_inline void lb_overload_set(__u32 real, struct lb_real *r, __u32 *o, __u32 on)
{
    *o = on;
    __u32 svc = r->svc, pos = r->pos;
    struct lb_svc_dests *ds = lb_svc_dests.lookup(&svc);
    if (!ds || pos >= LB_MAX_SVC_REALS || ds->d[pos].real != real)
        return;
    if (on)
        ds->d[pos].flags |= LB_REAL_F_OVERLOAD;
    else
        ds->d[pos].flags &= ~LB_REAL_F_OVERLOAD;
}

/* IPVS ip_vs_bind_dest: OVERLOAD once active + inactive >= u_threshold */
static __always_inline void lb_overload_bind(__u32 real, struct lb_real *r)
{
    if (!r->u_threshold || lb_real_total(real) < r->u_threshold)
        return;
    __u32 *o = lb_real_overload.lookup(&real);
    if (o && !*o)
        lb_overload_set(real, r, o, 1);
}

/* IPVS ip_vs_unbind_dest: cleared below l_threshold, or (l_threshold 0) below 3/4 of
 * u_threshold.  Servers without thresholds never get the flag. */
static __always_inline void lb_overload_unbind(__u32 real)
{
    __u32 *o = lb_real_overload.lookup(&real);
    if (!o || !*o)
        return;
    struct lb_real *r = lb_reals.lookup(&real);
    if (!r)
        return;
    __u64 total = lb_real_total(real);
    if (r->l_threshold ? total < r->l_threshold : total * 4 < (__u64)r->u_threshold * 3)
        lb_overload_set(real, r, o, 0);
}

/* Undo a connection's contribution to its real server's counters. */
static __always_inline void lb_conn_uncount(struct lb_conn *c)
{
    if (c->flags & LB_CONN_F_INACTIVE)
        lb_real_conns_add(c->real, 0, -1);
    else
        lb_real_conns_add(c->real, -1, 0);
    lb_overload_unbind(c->real);
}

static __always_inline __u32 lb_timeout_of(__u32 state)
{
    __u32 *t = lb_timeouts.lookup(&state);
    return t ? *t : 60;
}

/* A packet's refresh of its entry's timer: when the state changed (its new timeout runs from
 * now, as in IPVS), else once the timestamp is LB_TOUCH_NS old.  A timer runs out at most that
 * much early (IPVS shows and syncs whole seconds), and an established flow's entry -- in NAT
 * shared by the CPUs of its two directions -- is written a few times a second, not once per
 * packet. */
static __always_inline void lb_conn_touch(struct lb_conn *c, __u64 now, __u8 old_state)
{
    if (c->state != old_state) {
        c->last_ns = now;         /* lb_conn_next_state set the new state's timeout */
    } else if ((__s64)(now - c->last_ns) > (__s64)LB_TOUCH_NS) {
        c->last_ns = now;
        /* IPVS set_tcp_state re-reads the state's timeout at every packet, so a timeout changed
         * since (ipvsadm --set, [timeouts] at a reload) applies from the connection's next packet */
        c->timeout = lb_timeout_of(c->state);
    }
}

/* Signed: a last_ns ahead of the coarse clock (an entry the control plane wrote from the
 * precise clock, e.g. one synced from the peer director) is fresh, not 584 years old. */
static __always_inline int lb_conn_expired(struct lb_conn *c, __u64 now)
{
    return (__s64)(now - c->last_ns) > (__s64)((__u64)c->timeout * 1000000000ULL);
}

/* IPVS conn_reuse_mode 1 (is_new_conn_expected): a client reusing its port sends a SYN (no
 * ACK) into an entry left in TIME_WAIT or CLOSE; that entry is expired and the SYN scheduled
 * afresh, unless persistence controls the connection.  Otherwise busy clients with short
 * connections keep landing on a stale entry (and its real server's TIME_WAIT).  A pure SYN
 * only (no FIN either, as lb_tcp_pure_syn): a SYN|FIN, which makes no connection here, would
 * remove the entry and be passed to the kernel. */
static __always_inline int lb_conn_reusable(struct lb_conn *c, struct lb_pkt *pkt)
{
    return pkt->proto == IPPROTO_TCP &&
           (pkt->tcp_flags & (LB_TCP_SYN | LB_TCP_ACK | LB_TCP_RST | LB_TCP_FIN)) == LB_TCP_SYN &&
           (c->state == LB_TCP_S_TIME_WAIT || c->state == LB_TCP_S_CLOSE) &&
           !(c->flags & LB_CONN_F_PERSIST);
}

/* IPVS tcp_state_idx(): RST before SYN before FIN before ACK */
static __always_inline __u32 lb_tcp_event(__u8 flags)
{
    if (flags & LB_TCP_RST)
        return LB_EV_RST;
    if (flags & LB_TCP_SYN)
        return LB_EV_SYN;
    if (flags & LB_TCP_FIN)
        return LB_EV_FIN;
    if (flags & LB_TCP_ACK)
        return LB_EV_ACK;
    return LB_NONE;
}

/* IPVS tcp_state_active(): ESTABLISHED and the half-open states count in ActiveConn (checked
 * against kernel IPVS in the VM: a connection after its SYN is active) */
static __always_inline int lb_tcp_state_active(__u32 s)
{
    return s == LB_TCP_S_ESTABLISHED || s == LB_TCP_S_SYN_SENT || s == LB_TCP_S_SYN_RECV ||
           s == LB_TCP_S_SYNACK;
}

/* The state table's next state: IPVS's, or secure_tcp's (tcp_states_dos) while that defense
 * is engaged (lb_globals[LB_G_DEFENSE], set by the control plane as IPVS's defense_work does).
 * Both tables are looked up and one is chosen after: written as a lookup in one map or the
 * other, clang merges the two calls into one whose map the verifier cannot know, so it cannot
 * inline it -- the generic helper and an indirect call, 10-30 ns on every state change here,
 * where two inlined array lookups are a few instructions each. */
static __always_inline __u32 *lb_fsm_next(__u32 idx)
{
    __u32 g = LB_G_DEFENSE;
    __u32 *def = lb_globals.lookup(&g);
    __u32 *usual = lb_tcp_fsm.lookup(&idx);
    __u32 *secure = lb_tcp_fsm_secure.lookup(&idx);
    return def && (*def & LB_DEF_SECURE_TCP) ? secure : usual;
}

/* IPVS set_tcp_state() without the counters: c's next state and timeout, and its INACTIVE flag
 * to match.  Returns how the real server's counters move: +1 inactive -> active, -1 active ->
 * inactive, 0 neither. */
static __always_inline int lb_conn_next_state(struct lb_conn *c, __u32 table, struct lb_pkt *pkt)
{
    __u32 new_state;
    int move = 0;

    if (pkt->proto != IPPROTO_TCP) {
        c->state = LB_UDP_S_NORMAL;
        c->timeout = lb_timeout_of(LB_UDP_S_NORMAL);
        return 0;
    }
    /* the common case, an ACK inside an established flow, stays ESTABLISHED in every table */
    if (c->state == LB_TCP_S_ESTABLISHED &&
        (pkt->tcp_flags & (LB_TCP_SYN | LB_TCP_FIN | LB_TCP_RST | LB_TCP_ACK)) == LB_TCP_ACK)
        return 0;
    new_state = LB_TCP_S_CLOSE;
    __u32 ev = lb_tcp_event(pkt->tcp_flags);
    if (ev != LB_NONE && c->state < LB_TCP_S_LAST) {
        __u32 idx = (table * 4 + ev) * LB_TCP_S_LAST + c->state;
        __u32 *ns = lb_fsm_next(idx);
        if (ns)
            new_state = *ns;
    }
    if (new_state == c->state)
        return 0;                 /* same state, same timeout (IPVS re-reads it; we skip a lookup) */
    if (!(c->flags & LB_CONN_F_INACTIVE) && !lb_tcp_state_active(new_state)) {
        c->flags |= LB_CONN_F_INACTIVE;
        move = -1;
    } else if ((c->flags & LB_CONN_F_INACTIVE) && lb_tcp_state_active(new_state)) {
        c->flags &= ~LB_CONN_F_INACTIVE;
        move = 1;
    }
    c->state = new_state;
    c->timeout = lb_timeout_of(new_state);
    return move;
}

/* IPVS set_tcp_state(): move along the state table and keep the real server's counters. */
static __always_inline void lb_conn_state(struct lb_conn *c, __u32 table, struct lb_pkt *pkt)
{
    int move = lb_conn_next_state(c, table, pkt);
    if (move > 0)
        lb_real_conns_add(c->real, 1, -1);
    else if (move < 0)
        lb_real_conns_add(c->real, -1, 1);
}

/* The state table of a client's packet (lb_conn_state): DR (and tunnel) see only the client's
 * half of the flow, IPVS's INPUT-ONLY table */
static __always_inline __u32 lb_fsm_table(struct lb_real *r)
{
    return r->fwd == LB_FWD_NAT ? LB_FSM_INPUT : LB_FSM_INPUT_ONLY;
}

#endif
