/* Schedulers for new connections, following IPVS (net/netfilter/ipvs/ip_vs_*.c).
 * The real servers of a service sit in lb_svc_dests in IPVS list order (newest first); every
 * scheduler walks at most LB_MAX_SVC_REALS positions.  A scheduler returns a real id or LB_NONE.
 * Adding one: an LB_SCHED_<NAME> id in lb_consts.h (the control plane reads it from there), a
 * lb_pick_<name>() here, a lb_sched_<name> program in lb.c, and its model in lb.sched.model
 * with its name in the config's scheduler list (lb.config.model.SCHEDULERS). */
#ifndef LB_SCHED_H
#define LB_SCHED_H

#include "lb_maps.h"
#include "lb_parse.h"

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
 * that reads as 0, never as a huge unsigned number.  The difference is taken in 32 bits (the
 * counts wrap) and widened signed, so the result is a 64-bit count with no zero-extension to
 * follow: the pick loops run at the CPU's instruction rate (bench/results/ablation-2026-12-07c). */
static __always_inline __u64 lb_real_less_base(__u32 n, __u32 base)
{
    __s64 d = (__s32)(n - base);
    return d > 0 ? d : 0;
}

/* a real server's connection counts as the schedulers see them: BPF's atomic counts less the
 * sweeper's share (lb_real_swept) and quiesce_server's baseline (lb_real_base), which the
 * control plane keeps summed beside the counts (sched_off) -- one lookup per server in the pick
 * loops, in the entry the counts are in (u32 arithmetic: (c - s) - b and c - (s + b) are the
 * same bits); 0 if the map has no entry */
static __always_inline void lb_real_sched_counts(__u32 real_id, __u64 *act, __u64 *inact)
{
    struct lb_real_conns *c = lb_real_conns.lookup(&real_id);
    if (!c) {
        *act = 0;
        *inact = 0;
        return;
    }
    *act = lb_real_less_base(c->active, c->sched_off.active);
    *inact = lb_real_less_base(c->inactive, c->sched_off.inactive);
}

/* IPVS ip_vs_dest_conn_overhead(): (activeconns << 8) + inactconns */
static __always_inline __u64 lb_real_overhead(__u32 real_id)
{
    __u64 act, inact;
    lb_real_sched_counts(real_id, &act, &inact);
    return (act << 8) + inact;
}

/* activeconns of a real server, as ip_vs_sed/nq/ovf read it (< 2^31) */
static __always_inline __u64 lb_real_active(__u32 real_id)
{
    __u64 act, inact;
    lb_real_sched_counts(real_id, &act, &inact);
    return act;
}

typedef volatile struct lb_sched_scratch lb_scratch_t;

/* the positions of the service's list the loops walk */
static __always_inline __u32 lb_svc_len(const struct lb_svc *svc)
{
    return svc->nreals < LB_MAX_SVC_REALS ? svc->nreals : LB_MAX_SVC_REALS;
}

/* where rr's and wrr's walk starts: after the cursor cl (the last pick), or at the list's head
 * when the cursor is there or past a list of n that has shrunk */
static __always_inline __u32 lb_sched_start(__u32 cl, __u32 n)
{
    return (cl == LB_POS_HEAD || cl >= n) ? 0 : cl + 1;
}

static __always_inline void lb_sched_init(struct lb_svc *svc, struct lb_sched_state *st,
                                          lb_scratch_t *sc)
{
    __u32 n = lb_svc_len(svc);
    sc->n = n;
    sc->start = lb_sched_start(st->cl, n);
    sc->first = LB_NONE;
    sc->maxw = 0;
    sc->real = LB_NONE;
}

/* The dest at list position start + i (into *pos), or 0 past the service's last.  64-bit and
 * behind an empty asm, so the verifier sees the constant bound checked on the very register
 * that indexes the list (a 32-bit position is widened after its check, on a copy it does not
 * link to the checked one). */
static __always_inline struct lb_dest *lb_dest_from(struct lb_svc_dests *ds, lb_scratch_t *sc, __u32 i,
                                                    __u32 *pos)
{
    __u64 p = (__u64)sc->start + i;
    if (p >= sc->n)
        return 0;
    asm volatile("" : "+r"(p));
    if (p >= LB_MAX_SVC_REALS)
        return 0;
    *pos = p;
    return &ds->d[p];
}

/* rr: the next usable server after the last pick, wrapping round to the last pick itself:
 * the first usable from the cursor on, else the first usable before it.  Scanning from the
 * cursor, a pick usually looks at one position, not at every one before it. */
static __always_inline __u32 lb_pick_rr(struct lb_svc *svc, struct lb_svc_dests *ds,
                                        struct lb_sched_state *st, lb_scratch_t *sc)
{
    lb_sched_init(svc, st, sc);
    for (__u32 i = 0; i < LB_MAX_SVC_REALS; i++) {
        __u32 pos;
        struct lb_dest *d = lb_dest_from(ds, sc, i, &pos);
        if (!d)
            break;
        if (lb_dest_usable(d)) {
            st->cl = pos;
            return d->real;
        }
    }
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->start || pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (lb_dest_usable(d)) {
            st->cl = pos;
            return d->real;
        }
    }
    return LB_NONE;
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
    /* rest of the current pass, from the cursor on */
    for (__u32 i = 0; i < LB_MAX_SVC_REALS; i++) {
        __u32 pos;
        struct lb_dest *d = lb_dest_from(ds, sc, i, &pos);
        if (!d)
            break;
        if (!lb_dest_usable(d))
            continue;
        if (d->weight > sc->maxw)
            sc->maxw = d->weight;
        if ((__s32)d->weight >= st->cw) {
            st->cl = pos;
            return d->real;
        }
    }
    /* the pass is over: the largest usable weight, from the positions before the cursor too */
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->start || pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (lb_dest_usable(d) && d->weight > sc->maxw)
            sc->maxw = d->weight;
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

/* wlc: least overhead/weight, compared as loh * w > doh * lw; the first usable server wins ties.
 * loh 1 and lw 0 before the first: any usable server's weight (never 0) makes 1 * w > doh * 0, so
 * the loop needs no test for "no pick yet" (sed's likewise, lc's loh ~0: no count reaches it). */
static __always_inline __u32 lb_pick_wlc(struct lb_svc *svc, struct lb_svc_dests *ds,
                                         struct lb_sched_state *st, lb_scratch_t *sc)
{
    lb_sched_init(svc, st, sc);
    sc->loh = 1;
    sc->lw = 0;
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (!lb_dest_usable(d))
            continue;
        __u64 doh = lb_real_overhead(d->real);
        if (sc->loh * d->weight > doh * sc->lw) {
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
    sc->loh = ~0ULL;
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (!lb_dest_usable(d))
            continue;
        __u64 doh = lb_real_overhead(d->real);
        if (doh < sc->loh) {
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
    sc->loh = 1;
    sc->lw = 0;
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (!lb_dest_usable(d))
            continue;
        __u64 act = lb_real_active(d->real);
        if (nq && act == 0)
            return d->real;
        __u64 doh = act + 1;
        if (sc->loh * d->weight > doh * sc->lw) {
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

/* IPVS's addr_fold in host order (dh, sh, mh, lblc): an IPv4 address, or an IPv6 one's four
 * words XORed.  pkt addresses keep words 1-3 zero for IPv4, so one expression serves both. */
static __always_inline __u32 lb_addr_fold(const __be32 *a)
{
    return bpf_ntohl(a[0] ^ a[1] ^ a[2] ^ a[3]);
}

/* dh, as ip_vs_dh_hashkey(): hash_32(ntohl(addr_fold(daddr)), 8) */
static __always_inline __u32 lb_pick_dh(__u32 svc_id, struct lb_svc *svc, struct lb_svc_dests *ds,
                                        __u32 dfold)
{
    return lb_pick_bucket(svc_id, svc, ds, lb_hash_32(dfold));
}

/* sh, as ip_vs_sh_schedule(): bucket hash_32(ntohs(sport) + ntohl(addr_fold(saddr)), 8), the port only
 * with sh-port.  An unusable server means no destination, unless sh-fallback: then, as
 * ip_vs_sh_get_fallback(), probe bucket (k + 2 * ihash) & 255 for k = 0..255 (the kernel's
 * hashkey with offset (k + ihash)) and take the first usable one; an empty bucket stops. */
static __always_inline __u32 lb_sh_hash(struct lb_svc *svc, __u32 sfold, __be16 sport)
{
    __u32 port = (svc->flags & LB_SVC_F_SCHED_PORT) ? bpf_ntohs(sport) : 0;
    return lb_hash_32(sfold + port);
}

static __always_inline __u32 lb_pick_sh(__u32 svc_id, struct lb_svc *svc, struct lb_svc_dests *ds,
                                        __u32 sfold, __be16 sport, lb_scratch_t *sc)
{
    __u32 ihash = lb_sh_hash(svc, sfold, sport);
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

/* ---- lblc, lblcr (ip_vs_lblc.c, ip_vs_lblcr.c): a table keyed by the packet's destination
 * address remembers the server (lblc) or server set (lblcr) that served it.  The control
 * plane runs the kernel's periodic expiry (lb/dataplane/); the data path only looks up,
 * refreshes lastuse and, for lblcr, shrinks a set unchanged for lblcr_expiration. ---- */

/* IP_VS_DEST_F_AVAILABLE: the real server is still in this service's list (a removed one keeps
 * its id with family 0); its scheduler view (weight, flags) from lb_svc_dests */
static __always_inline int lb_lblc_avail(__u32 svc_id, struct lb_svc *svc, struct lb_svc_dests *ds,
                                         __u32 real, __u32 *weight, __u32 *flags)
{
    struct lb_real *r = lb_reals.lookup(&real);
    if (!r || r->svc != svc_id || r->family == 0)
        return 0;
    __u32 pos = r->pos;
    if (pos >= svc->nreals || pos >= LB_MAX_SVC_REALS)
        return 0;
    struct lb_dest *d = &ds->d[pos];
    if (d->real != real)
        return 0;
    *weight = d->weight;
    *flags = d->flags;
    return 1;
}

/* is_overloaded(): activeconns > weight while some server of the service (any: weight 0,
 * OVERLOAD and all) has activeconns * 2 < weight */
static __always_inline int lb_lblc_overloaded(struct lb_svc_dests *ds, __u32 real, __u32 weight,
                                              lb_scratch_t *sc)
{
    if (lb_real_active(real) <= weight)
        return 0;
    /* the answer goes through scratch memory, as the scheduler loops' state does: one
     * verifier state per iteration whatever the counts read */
    sc->first = 0;
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if ((__u64)lb_real_active(d->real) * 2 < d->weight) {
            sc->first = 1;
            break;
        }
    }
    return sc->first;
}

static __always_inline void lb_lblc_key_of(struct lb_lblc_key *k, __u32 svc_id, lb_scratch_t *sc)
{
    __builtin_memset(k, 0, sizeof(*k));
    k->svc = svc_id;
    k->family = sc->family;
    __builtin_memcpy(k->addr, (const void *)sc->daddr, 16);
}

/* lblc, as ip_vs_lblc_schedule(): the cached server if available, weight > 0 and not
 * is_overloaded() (its OVERLOAD flag is not looked at; a server without next hop is skipped, as
 * every scheduler here skips it), else wlc over the service, cached (lastuse = now) */
static __always_inline __u32 lb_pick_lblc(__u32 svc_id, struct lb_svc *svc, struct lb_svc_dests *ds,
                                          struct lb_sched_state *st, lb_scratch_t *sc,
                                          __u64 now)
{
    struct lb_lblc_key k;
    lb_lblc_key_of(&k, svc_id, sc);
    struct lb_lblc *e = lb_lblc.lookup(&k);
    if (e) {
        e->lastuse_ns = now;
        __u32 real = e->real, w = 0, f = 0;
        sc->n = lb_svc_len(svc);
        if (lb_lblc_avail(svc_id, svc, ds, real, &w, &f) && w > 0 && !(f & LB_REAL_F_NO_NEXTHOP) &&
            !lb_lblc_overloaded(ds, real, w, sc))
            return real;
    }
    __u32 real = lb_pick_wlc(svc, ds, st, sc);
    if (real == LB_NONE)
        return LB_NONE;
    struct lb_lblc v = { .lastuse_ns = now, .real = real };
    lb_lblc.update(&k, &v);       /* a full table: the pick serves uncached, as in IPVS */
    return real;
}

/* lblcr, as ip_vs_lblcr_schedule(): the set's least loaded member (ip_vs_dest_set_min) serves
 * unless there is none or it is_overloaded(); then wlc picks and joins the set at its head.
 * A set of more than one member unchanged for lblcr_expiration loses its most loaded member
 * (ip_vs_dest_set_max).  The set holds LB_LBLCR_SET_SIZE members: a full one drops its oldest. */
static __always_inline __u32 lb_pick_lblcr(__u32 svc_id, struct lb_svc *svc, struct lb_svc_dests *ds,
                                           struct lb_sched_state *st, lb_scratch_t *sc,
                                           __u64 now)
{
    struct lb_lblc_key k;
    lb_lblc_key_of(&k, svc_id, sc);
    struct lb_lblcr *e = lb_lblcr.lookup(&k);
    if (!e) {
        __u32 real = lb_pick_wlc(svc, ds, st, sc);
        if (real == LB_NONE)
            return LB_NONE;
        struct lb_lblcr v = { .lastuse_ns = now, .lastmod_ns = now, .n = 1 };
        v.real[0] = real;
        lb_lblcr.update(&k, &v);
        return real;
    }
    e->lastuse_ns = now;
    __u32 n = e->n < LB_LBLCR_SET_SIZE ? e->n : LB_LBLCR_SET_SIZE;
    /* ip_vs_dest_set_min */
    __u32 least = LB_NONE, lw = 0;
    __u64 loh = 0;
    for (__u32 i = 0; i < LB_LBLCR_SET_SIZE; i++) {
        if (i >= n)
            break;
        __u32 real = e->real[i], w = 0, f = 0;
        if (!lb_lblc_avail(svc_id, svc, ds, real, &w, &f) || (f & LB_REAL_F_SKIP))
            continue;
        __u64 doh = lb_real_overhead(real);
        if (least == LB_NONE) {
            if (w > 0) {
                least = real;
                loh = doh;
                lw = w;
            }
        } else if (loh * w > doh * lw) {
            least = real;
            loh = doh;
            lw = w;
        }
    }
    /* the pick waits in scratch memory while the set may shrink: registers that differ by
     * path would multiply the verifier's walks of the 512-server loops below */
    sc->real = least;
    sc->lw = lw;
    /* ip_vs_dest_set_max and erase: a member no longer in the service's list weighs 0 */
    __u32 g = LB_G_LBLCR_EXPIRATION;
    __u32 *exp = lb_globals.lookup(&g);
    __u64 exp_ns = (exp && *exp ? *exp : LB_LBLCR_EXPIRATION_DEFAULT) * 1000000000ULL;
    if (n > 1 && (__s64)(now - e->lastmod_ns) > (__s64)exp_ns) {   /* signed, as lb_conn_expired */
        __u32 most = LB_NONE, mw = 0;
        __u64 moh = 0;
        for (__u32 i = 0; i < LB_LBLCR_SET_SIZE; i++) {
            if (i >= n)
                break;
            __u32 real = e->real[i], w = 0, f = 0;
            lb_lblc_avail(svc_id, svc, ds, real, &w, &f);
            if (w == 0)
                continue;
            __u64 doh = lb_real_overhead(real);
            if (most == LB_NONE || moh * w < doh * mw) {
                most = i;
                moh = doh;
                mw = w;
            }
        }
        if (most < LB_LBLCR_SET_SIZE) {
            for (__u32 i = 0; i + 1 < LB_LBLCR_SET_SIZE; i++) {
                if (i + 1 >= n)
                    break;
                if (i >= most)
                    e->real[i] = e->real[i + 1];
            }
            n--;
            e->n = n;
            e->lastmod_ns = now;
        }
    }
    sc->n = lb_svc_len(svc);
    least = sc->real;
    lw = sc->lw;
    if (least != LB_NONE && !lb_lblc_overloaded(ds, least, lw, sc))
        return least;
    __u32 real = lb_pick_wlc(svc, ds, st, sc);
    if (real == LB_NONE)
        return LB_NONE;
    for (__u32 i = 0; i < LB_LBLCR_SET_SIZE; i++) {
        if (i >= n)
            break;
        if (e->real[i] == real)
            return real;          /* already a member: the set does not change */
    }
    /* list_add_rcu: the new member goes first */
    for (__u32 j = 0; j < LB_LBLCR_SET_SIZE - 1; j++) {
        __u32 i = LB_LBLCR_SET_SIZE - 1 - j;
        if (i <= n)
            e->real[i] = e->real[i - 1];
    }
    e->real[0] = real;
    e->n = n < LB_LBLCR_SET_SIZE ? n + 1 : LB_LBLCR_SET_SIZE;
    e->lastmod_ns = now;
    return real;
}

/* twos, as ip_vs_twos_schedule(): total = the usable servers' weights + 1, two random points
 * in [0, total), the first server whose running weight reaches each; the second wins when
 * weight2 * overhead1 > weight1 * overhead2.  Scratch: maxw = total, loh / lw = the two
 * points (signed), first / start = the two picks' positions. */
static __always_inline __u32 lb_pick_twos(struct lb_svc *svc, struct lb_svc_dests *ds, lb_scratch_t *sc)
{
    sc->n = lb_svc_len(svc);
    sc->maxw = 0;
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (lb_dest_usable(d))
            sc->maxw += d->weight;
    }
    if (!sc->maxw)
        return LB_NONE;
    __u32 total = sc->maxw + 1;
    sc->loh = (__s64)(bpf_get_prandom_u32() % total);
    sc->lw = (__s64)(bpf_get_prandom_u32() % total);
    sc->first = LB_NONE;
    sc->start = LB_NONE;
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= sc->n)
            break;
        struct lb_dest *d = &ds->d[pos];
        if (!lb_dest_usable(d))
            continue;
        sc->loh = (__s64)sc->loh - d->weight;
        sc->lw = (__s64)sc->lw - d->weight;
        if ((__s64)sc->loh <= 0 && sc->first == LB_NONE)
            sc->first = pos;
        if ((__s64)sc->lw <= 0 && sc->start == LB_NONE)
            sc->start = pos;
        if (sc->first != LB_NONE && sc->start != LB_NONE)
            break;
    }
    __u32 p1 = sc->first, p2 = sc->start;
    if (p1 >= LB_MAX_SVC_REALS || p2 >= LB_MAX_SVC_REALS)
        return LB_NONE;           /* weights changed under us */
    struct lb_dest *d1 = &ds->d[p1], *d2 = &ds->d[p2];
    if ((__u64)d2->weight * lb_real_overhead(d1->real) > (__u64)d1->weight * lb_real_overhead(d2->real))
        return d2->real;
    return d1->real;
}

/* ---- mh, as ip_vs_mh.c (Maglev hashing) ----
 * Each mh service's table is an array map of its own (mh_size slots of real ids, a prime),
 * reached through lb_mh_tables by service id (lb_maps.h). */

/* mh-fallback walks up to mh_size probes (ip_vs_mh_get_fallback); one run of lb_sched_mh
 * makes LB_MH_PROBES of them and tail-calls itself for the rest, with the walk in lb_mh_walk */
#ifndef LB_MH_PROBES
#define LB_MH_PROBES 512
#endif
#define LB_MH_CONTINUE 0xfffffffeU  /* lb_pick_mh: not found yet, go on in the next run */

/* lib/siphash.c hsiphash() of one u32 on a 64-bit kernel (SipHash-1-3, 32-bit result) with
 * ip_vs_mh's first key (2654435761 in both words): the lookup hash */
#define LB_ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define LB_SIPROUND                                                                       \
    do {                                                                                  \
        v0 += v1; v1 = LB_ROTL64(v1, 13); v1 ^= v0; v0 = LB_ROTL64(v0, 32);               \
        v2 += v3; v3 = LB_ROTL64(v3, 16); v3 ^= v2;                                       \
        v0 += v3; v3 = LB_ROTL64(v3, 21); v3 ^= v0;                                       \
        v2 += v1; v1 = LB_ROTL64(v1, 17); v1 ^= v2; v2 = LB_ROTL64(v2, 32);               \
    } while (0)
#define LB_MH_KEY1 2654435761ULL

static __always_inline __u32 lb_mh_hash(__u32 v)
{
    __u64 v0 = 0x736f6d6570736575ULL ^ LB_MH_KEY1, v1 = 0x646f72616e646f6dULL ^ LB_MH_KEY1;
    __u64 v2 = 0x6c7967656e657261ULL ^ LB_MH_KEY1, v3 = 0x7465646279746573ULL ^ LB_MH_KEY1;
    __u64 b = (4ULL << 56) | v;
    v3 ^= b;
    LB_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    LB_SIPROUND;
    LB_SIPROUND;
    LB_SIPROUND;
    return (__u32)((v0 ^ v1) ^ (v2 ^ v3));
}

/* The slot's real server if it still belongs to this service at its position and is usable
 * (ip_vs_mh's is_unavailable(): weight 0 or OVERLOAD).  1 usable, 0 not, -1 empty slot. */
static __always_inline int lb_mh_slot(void *tab, __u32 slot, __u32 svc_id, struct lb_svc *svc,
                                      struct lb_svc_dests *ds, __u32 *real)
{
    __u32 *e = bpf_map_lookup_elem(tab, &slot);
    if (!e || *e == LB_NONE)
        return -1;
    __u32 rid = *e;
    struct lb_real *r = lb_reals.lookup(&rid);
    if (!r || r->svc != svc_id || !r->family)
        return 0;
    __u32 pos = r->pos;
    if (pos >= LB_MAX_SVC_REALS || pos >= svc->nreals)
        return 0;
    struct lb_dest *d = &ds->d[pos];
    if (d->real != rid || !lb_dest_usable(d))
        return 0;
    *real = rid;
    return 1;
}

static __always_inline int lb_mh_any_usable(struct lb_svc *svc, struct lb_svc_dests *ds)
{
    for (__u32 pos = 0; pos < LB_MAX_SVC_REALS; pos++) {
        if (pos >= svc->nreals)
            break;
        if (lb_dest_usable(&ds->d[pos]))
            return 1;
    }
    return 0;
}

/* mh, as ip_vs_mh_schedule(): slot hsiphash(ntohs(sport) + ntohl(addr_fold(saddr))) % size, the port
 * only with mh-port.  An unusable server means no destination, unless mh-fallback: then, as
 * ip_vs_mh_get_fallback(), probe slot hsiphash((k + ihash) % size + port + saddr) % size for
 * k = 0..size-1 and take the first usable server.  Returns a real id, LB_NONE, or
 * LB_MH_CONTINUE when the walk must go on in another run (w holds where). */
static __always_inline __u32 lb_pick_mh(__u32 svc_id, struct lb_svc *svc, struct lb_svc_dests *ds,
                                        __u32 sfold, __be16 sport, struct lb_mh_walk *w)
{
    __u32 size = svc->mh_size;
    void *tab = lb_mh_tables.lookup(&svc_id);
    __u32 base = sfold + ((svc->flags & LB_SVC_F_SCHED_PORT) ? bpf_ntohs(sport) : 0);
    __u32 real = LB_NONE;
    int ok;

    if (!tab || size < 2) {
        w->svc = 0;
        return LB_NONE;
    }
    if (w->svc != svc_id + 1 || w->base != base) {
        /* a new pick (not the continuation of a walk) */
        w->svc = 0;
        __u32 ihash = lb_mh_hash(base) % size;
        ok = lb_mh_slot(tab, ihash, svc_id, svc, ds, &real);
        if (ok != 0)
            return real;                  /* usable, or no table (LB_NONE) */
        if (!(svc->flags & LB_SVC_F_SCHED_FALLBACK) || !lb_mh_any_usable(svc, ds))
            return LB_NONE;               /* (with no usable server the walk finds none) */
        w->base = base;
        w->ihash = ihash;
        w->next = 0;
    }
    w->svc = 0;
    __u32 k = w->next, ihash = w->ihash;
    for (__u32 i = 0; i < LB_MH_PROBES; i++, k++) {
        if (k >= size)
            return LB_NONE;               /* every probe made: none usable */
        __u32 roff = k + ihash;
        if (roff >= size)
            roff -= size;
        ok = lb_mh_slot(tab, lb_mh_hash(roff + base) % size, svc_id, svc, ds, &real);
        if (ok != 0)
            return real;                  /* usable, or an empty slot ends the walk */
    }
    w->svc = svc_id + 1;
    w->next = k;
    return LB_MH_CONTINUE;
}

/* ---- the schedulers lb_xdp_public_full runs in place: a SYN for them takes no tail call and is not
 * parsed again (30-70 ns a SYN less, measured beside the tail-called build).  dh, sh and mh when
 * their one bucket or slot has a usable server; rr and wrr when the position after the cursor
 * has one (and, for wrr, it weighs at least the pass's cw): their walk's first step, no loop.
 * Everything that walks (the rest of rr's and wrr's walks, the lc family, lblc/lblcr, and the
 * sh-fallback and mh-fallback walks when the bucket's or slot's server is not usable) goes on in
 * the scheduler's own program, so its loop is verified there and not on every path of
 * lb_xdp_public_full: rr's and wrr's walks over 512 real servers in lb_xdp_public_full take the
 * verifier past its million instructions. ---- */

#define LB_PICK_ELSEWHERE 0xfffffffdU   /* lb_pick_in_place: the scheduler's program picks */

static __always_inline int lb_sched_in_place(const struct lb_svc *svc)
{
    return svc->sched == LB_SCHED_DH || svc->sched == LB_SCHED_SH || svc->sched == LB_SCHED_MH ||
           svc->sched == LB_SCHED_RR || svc->sched == LB_SCHED_WRR;
}

/* rr's and wrr's first step, as lb_pick_rr's and lb_pick_wrr's first iteration takes it: the
 * position lb_sched_init starts from, picked (the cursor moved there) when its server is usable
 * and, for wrr, weighs at least cw; anything else -- past the list's end, an unusable server, a
 * lighter one, no weights -- LB_PICK_ELSEWHERE, and the program walks from the same cursor */
static __always_inline __u32 lb_pick_next_in_place(__u32 svc_id, struct lb_svc *svc, struct lb_svc_dests *ds)
{
    struct lb_sched_state *st = lb_sched_state.lookup(&svc_id);
    if (!st)
        return LB_PICK_ELSEWHERE;
    __u32 n = lb_svc_len(svc);
    __u64 pos = lb_sched_start(st->cl, n);
    if (pos >= n)
        return LB_PICK_ELSEWHERE;
    asm volatile("" : "+r"(pos));  /* the bound checked on the register that indexes (lb_dest_from) */
    if (pos >= LB_MAX_SVC_REALS)
        return LB_PICK_ELSEWHERE;
    struct lb_dest *d = &ds->d[pos];
    if (!lb_dest_usable(d))
        return LB_PICK_ELSEWHERE;
    if (svc->sched == LB_SCHED_WRR && ((__s32)svc->wrr_mw <= 0 || (__s32)d->weight < st->cw))
        return LB_PICK_ELSEWHERE;
    st->cl = pos;
    return d->real;
}

/* the pick of an in-place scheduler for a parsed new connection: a real id, LB_NONE (no usable
 * server, as the scheduler's program would say), or LB_PICK_ELSEWHERE (a fallback walk) */
static __always_inline __u32 lb_pick_in_place(__u32 svc_id, struct lb_svc *svc, struct lb_pkt *pkt)
{
    struct lb_svc_dests *ds = lb_svc_dests.lookup(&svc_id);
    if (!ds)
        return LB_NONE;
    if (svc->sched == LB_SCHED_RR || svc->sched == LB_SCHED_WRR)
        return lb_pick_next_in_place(svc_id, svc, ds);
    __u32 sfold = lb_addr_fold(pkt->saddr), real = LB_NONE;
    if (svc->sched == LB_SCHED_MH) {
        __u32 size = svc->mh_size;
        void *tab = lb_mh_tables.lookup(&svc_id);
        if (!tab || size < 2)
            return LB_NONE;
        __u32 base = sfold + ((svc->flags & LB_SVC_F_SCHED_PORT) ? bpf_ntohs(*pkt->sport_p) : 0);
        int ok = lb_mh_slot(tab, lb_mh_hash(base) % size, svc_id, svc, ds, &real);
        if (ok != 0)
            return real;                  /* usable, or no table (LB_NONE) */
        return (svc->flags & LB_SVC_F_SCHED_FALLBACK) ? LB_PICK_ELSEWHERE : LB_NONE;
    }
    if (svc->sched == LB_SCHED_DH)
        return lb_pick_bucket(svc_id, svc, ds, lb_hash_32(lb_addr_fold(pkt->daddr)));
    real = lb_pick_bucket(svc_id, svc, ds, lb_sh_hash(svc, sfold, *pkt->sport_p));
    if (real == LB_NONE && (svc->flags & LB_SVC_F_SCHED_FALLBACK))
        return LB_PICK_ELSEWHERE;
    return real;
}

#endif
