/* Schedulers for new connections, following IPVS (net/netfilter/ipvs/ip_vs_*.c).
 * The real servers of a service sit in lb_svc_reals in IPVS list order (newest first); every
 * scheduler walks at most LB_MAX_SVC_REALS positions.  A scheduler returns a real id or LB_NONE.
 * Adding one: a LB_SCHED_* constant, a lb_pick_<name>() here, a lb_sched_<name> program in
 * lb.c, and the name in lb/dataplane/layout.py. */
#ifndef LB_SCHED_H
#define LB_SCHED_H

/* dh / sh bucket tables: 256 list positions per service, computed by the control plane
 * (lb.sched.model.dh_table / sh_table) and present only for services that use them */
#define LB_SCHED_HASH_BITS 8
#define LB_SCHED_BUCKETS (1 << LB_SCHED_HASH_BITS)
struct lb_sched_buckets {
    __u32 pos[LB_SCHED_BUCKETS];  /* list position in lb_svc_dests, or LB_NONE */
};
BPF_TABLE_PINNED("hash", __u32, struct lb_sched_buckets, lb_sched_buckets, LB_MAX_SERVICES,
                 LB_PIN(lb_sched_buckets), BPF_F_NO_PREALLOC);

/* LB_REAL_F_OVERLOAD in d->flags is IPVS's OVERLOAD from the connection thresholds, set and
 * cleared in place when connections bind and unbind (lb_conntrack.h): the loops pay nothing */
static __always_inline int lb_dest_usable(struct lb_dest *d)
{
    if (d->weight == 0 || (d->flags & LB_REAL_F_SKIP))
        return 0;
    return 1;
}

/* quiesce_server's baseline (lb_real_base) taken off a count; a connection older than the
 * baseline that ends before the control plane lowers it would take the count below zero:
 * that reads as 0, never as a huge unsigned number */
static __always_inline __u32 lb_real_less_base(__u32 n, __u32 base)
{
    return (__s32)(n - base) < 0 ? 0 : n - base;
}

/* IPVS ip_vs_dest_conn_overhead(): (activeconns << 8) + inactconns */
static __always_inline __u64 lb_real_overhead(__u32 real_id)
{
    struct lb_real_conns *c = lb_real_conns.lookup(&real_id);
    struct lb_real_conns *s = lb_real_swept.lookup(&real_id);
    struct lb_real_conns *b = lb_real_base.lookup(&real_id);
    if (!c)
        return 0;
    __u32 act = c->active, inact = c->inactive;
    if (s) {
        act -= s->active;
        inact -= s->inactive;
    }
    if (b) {
        act = lb_real_less_base(act, b->active);
        inact = lb_real_less_base(inact, b->inactive);
    }
    return ((__u64)act << 8) + inact;
}

/* activeconns of a real server (sweeper's share and quiesce_server's baseline removed), as
 * ip_vs_sed/nq/ovf read it */
static __always_inline __u32 lb_real_active(__u32 real_id)
{
    struct lb_real_conns *c = lb_real_conns.lookup(&real_id);
    struct lb_real_conns *s = lb_real_swept.lookup(&real_id);
    struct lb_real_conns *b = lb_real_base.lookup(&real_id);
    if (!c)
        return 0;
    __u32 act = c->active;
    if (s)
        act -= s->active;
    if (b)
        act = lb_real_less_base(act, b->active);
    return act;
}

typedef volatile struct lb_sched_scratch lb_scratch_t;

static __always_inline void lb_sched_init(struct lb_svc *svc, struct lb_sched_state *st,
                                          lb_scratch_t *sc)
{
    __u32 n = svc->nreals < LB_MAX_SVC_REALS ? svc->nreals : LB_MAX_SVC_REALS;
    sc->n = n;
    sc->start = (st->cl == LB_POS_HEAD || st->cl >= n) ? 0 : st->cl + 1;
    sc->first = LB_NONE;
    sc->maxw = 0;
    sc->real = LB_NONE;
}

/* rr: the next usable server after the last pick, wrapping round to the last pick itself.
 * One forward scan: the first usable at or after the cursor, else the first usable at all. */
static __always_inline __u32 lb_pick_rr(struct lb_svc *svc, struct lb_svc_dests *ds,
                                        struct lb_sched_state *st, lb_scratch_t *sc)
{
    lb_sched_init(svc, st, sc);
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (!lb_dest_usable(d))
            continue;
        if (pos >= sc->start) {
            st->cl = pos;
            return d->real;
        }
        if (sc->first == LB_NONE)
            sc->first = pos;
    }
    __u32 first = sc->first;
    if (first >= LB_MAX_SVC_REALS)
        return LB_NONE;
    st->cl = first;
    return ds->d[first].real;
}

/* wrr, as ip_vs_wrr_schedule(): walk on from the cursor for weight >= cw; at the end of a pass
 * cw -= di (wrapping to mw).  Passes that cannot match any usable server are skipped in one
 * step (cw jumps to the largest value on its grid <= the largest usable weight), which picks
 * the same server as the kernel's pass-by-pass walk with a loop bounded by 2 passes. */
static __always_inline __u32 lb_pick_wrr(struct lb_svc *svc, struct lb_svc_dests *ds,
                                         struct lb_sched_state *st, lb_scratch_t *sc)
{
    __s32 mw = svc->wrr_mw, di = svc->wrr_di ? svc->wrr_di : 1;

    if (mw <= 0)
        return LB_NONE;
    lb_sched_init(svc, st, sc);
    /* rest of the current pass */
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (!lb_dest_usable(d))
            continue;
        if (d->weight > sc->maxw)
            sc->maxw = d->weight;
        if (pos >= sc->start && (__s32)d->weight >= st->cw) {
            st->cl = pos;
            return d->real;
        }
    }
    __u32 maxw = sc->maxw;
    if (!maxw)
        return LB_NONE;
    __s32 cw = st->cw - di;
    if (cw <= 0)
        cw = mw;
    if (cw > (__s32)maxw) {
        /* here mw >= cw > maxw, so the difference is positive: unsigned division */
        __u32 k = ((__u32)(mw - (__s32)maxw) + (__u32)di - 1) / (__u32)di;
        cw = mw - (__s32)(k * (__u32)di);
    }
    if (cw <= 0)                  /* weights changed under us: the last pass takes any weight */
        cw = 1;
    st->cw = cw;
    /* a fresh pass from the head: the server with maxw qualifies, so this finds one */
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (lb_dest_usable(d) && (__s32)d->weight >= st->cw) {
            st->cl = pos;
            return d->real;
        }
    }
    return LB_NONE;
}

/* wlc: least overhead/weight, compared as loh * w > doh * lw; the first usable server wins ties */
static __always_inline __u32 lb_pick_wlc(struct lb_svc *svc, struct lb_svc_dests *ds,
                                         struct lb_sched_state *st, lb_scratch_t *sc)
{
    lb_sched_init(svc, st, sc);
    sc->loh = 0;
    sc->lw = 0;
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (!lb_dest_usable(d))
            continue;
        __u64 doh = lb_real_overhead(d->real);
        if (sc->real == LB_NONE || sc->loh * d->weight > doh * sc->lw) {
            sc->real = d->real;
            sc->loh = doh;
            sc->lw = d->weight;
        }
    }
    return sc->real;
}

/* lc, as ip_vs_lc_schedule(): least overhead among usable servers; the first wins ties */
static __always_inline __u32 lb_pick_lc(struct lb_svc *svc, struct lb_svc_dests *ds,
                                        struct lb_sched_state *st, lb_scratch_t *sc)
{
    lb_sched_init(svc, st, sc);
    sc->loh = 0;
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (!lb_dest_usable(d))
            continue;
        __u64 doh = lb_real_overhead(d->real);
        if (sc->real == LB_NONE || doh < sc->loh) {
            sc->real = d->real;
            sc->loh = doh;
        }
    }
    return sc->real;
}

/* sed (nq = 0), as ip_vs_sed_schedule(): least (activeconns + 1) / weight, compared as
 * loh * w > doh * lw; the first usable server wins ties.
 * nq (nq = 1), as ip_vs_nq_schedule(): the first usable server with no active connection
 * wins at once, else the sed rule. */
static __always_inline __u32 lb_pick_sed_nq(struct lb_svc *svc, struct lb_svc_dests *ds,
                                            struct lb_sched_state *st, lb_scratch_t *sc, int nq)
{
    lb_sched_init(svc, st, sc);
    sc->loh = 0;
    sc->lw = 0;
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (!lb_dest_usable(d))
            continue;
        __u32 act = lb_real_active(d->real);
        if (nq && act == 0)
            return d->real;
        __u64 doh = (__u64)act + 1;
        if (sc->real == LB_NONE || sc->loh * d->weight > doh * sc->lw) {
            sc->real = d->real;
            sc->loh = doh;
            sc->lw = d->weight;
        }
    }
    return sc->real;
}

/* fo (ovf = 0), as ip_vs_fo_schedule(): the usable server with the highest weight; the first
 * wins ties.  ovf (ovf = 1), as ip_vs_ovf_schedule(): the same among the usable servers with
 * activeconns <= weight. */
static __always_inline __u32 lb_pick_fo_ovf(struct lb_svc *svc, struct lb_svc_dests *ds,
                                            struct lb_sched_state *st, lb_scratch_t *sc, int ovf)
{
    lb_sched_init(svc, st, sc);
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (!lb_dest_usable(d) || d->weight <= sc->maxw)
            continue;
        if (ovf && lb_real_active(d->real) > d->weight)
            continue;
        sc->real = d->real;
        sc->maxw = d->weight;
    }
    return sc->real;
}

/* include/linux/hash.h hash_32(val, 8) */
static __always_inline __u32 lb_hash_32(__u32 val)
{
    return (val * 0x61C88647U) >> (32 - LB_SCHED_HASH_BITS);
}

/* dh / sh: the server of bucket `idx` if it is usable (weight > 0, not overloaded), else none
 * (ip_vs_dh_schedule; ip_vs_sh_get without sh-fallback) */
static __always_inline __u32 lb_pick_bucket(__u32 svc_id, struct lb_svc *svc,
                                            struct lb_svc_dests *ds, __u32 idx)
{
    struct lb_sched_buckets *b = lb_sched_buckets.lookup(&svc_id);
    if (!b)
        return LB_NONE;
    __u32 pos = b->pos[idx & (LB_SCHED_BUCKETS - 1)];
    if (pos >= svc->nreals || pos >= LB_MAX_SVC_REALS)
        return LB_NONE;
    struct lb_dest *d = &ds->d[pos];
    return lb_dest_usable(d) ? d->real : LB_NONE;
}

/* dh, as ip_vs_dh_hashkey(): hash_32(ntohl(daddr), 8) */
static __always_inline __u32 lb_pick_dh(__u32 svc_id, struct lb_svc *svc, struct lb_svc_dests *ds,
                                        __be32 daddr)
{
    return lb_pick_bucket(svc_id, svc, ds, lb_hash_32(bpf_ntohl(daddr)));
}

/* sh, as ip_vs_sh_schedule(): bucket hash_32(ntohs(sport) + ntohl(saddr), 8), the port only
 * with sh-port.  An unusable server means no destination, unless sh-fallback: then, as
 * ip_vs_sh_get_fallback(), probe bucket (k + 2 * ihash) & 255 for k = 0..255 (the kernel's
 * hashkey with offset (k + ihash)) and take the first usable one; an empty bucket stops. */
static __always_inline __u32 lb_pick_sh(__u32 svc_id, struct lb_svc *svc, struct lb_svc_dests *ds,
                                        __be32 saddr, __be16 sport, lb_scratch_t *sc)
{
    __u32 port = (svc->flags & LB_SVC_F_SCHED_PORT) ? bpf_ntohs(sport) : 0;
    __u32 ihash = lb_hash_32(bpf_ntohl(saddr) + port);
    struct lb_sched_buckets *b = lb_sched_buckets.lookup(&svc_id);
    if (!b)
        return LB_NONE;
    __u32 pos = b->pos[ihash & (LB_SCHED_BUCKETS - 1)];
    if (pos >= svc->nreals || pos >= LB_MAX_SVC_REALS)
        return LB_NONE;
    if (lb_dest_usable(&ds->d[pos]))
        return ds->d[pos].real;
    if (!(svc->flags & LB_SVC_F_SCHED_FALLBACK))
        return LB_NONE;
    sc->start = ihash;
    for (__u32 k = 0; k < LB_SCHED_BUCKETS; k++) {
        __u32 p = b->pos[(k + 2 * sc->start) & (LB_SCHED_BUCKETS - 1)];
        if (p >= LB_MAX_SVC_REALS || p >= svc->nreals)
            return LB_NONE;           /* an empty bucket (the kernel's !dest) */
        struct lb_dest *d = &ds->d[p];
        if (lb_dest_usable(d))
            return d->real;
    }
    return LB_NONE;
}

#endif
