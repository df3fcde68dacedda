/* Embryonic connections: a flood of new sources' first packets never evicts an established
 * connection (a spoofer that adds a blind ACK to each SYN, or a second UDP packet, does make
 * its entries established: docs/architecture.md, "Under attack").
 *
 * A new connection (a pure SYN, a UDP flow's first packet) is made in lb_conns_embryo, an LRU
 * table of its own, with its NAT reverse entry; the persistence template it makes goes to
 * lb_persist_embryo.  It moves to lb_conns (and its template to lb_persist) once it is
 * established: TCP when it enters ESTABLISHED (after the client's ACK; with secure_tcp, as IPVS's
 * tcp_states_dos, only after the real server answered), UDP at its second packet either way.  So
 * spoofed SYNs alone, which never complete a handshake, only ever evict each other, however many come;
 * lb_conns holds connections that got past their first packet and is only full when there are
 * that many of them.
 *
 * Established packets find their entry in lb_conns and pay nothing for this; only a miss looks
 * in the embryonic table too.  The control plane counts both tables (ActiveConn/InActConn), and
 * estimates the embryonic table's fill from lb_ct_events between its censuses to drive IPVS's
 * defenses (lb/dataplane/defense.py). */
#ifndef LB_EMBRYO_H
#define LB_EMBRYO_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_stats.h"
#include "lb_conntrack.h"
#include "lb_persist.h"

static __always_inline void lb_ct_event(__u32 idx)
{
    __u64 *v = lb_ct_events.lookup(&idx);
    if (v)
        *v += 1;                  /* per-CPU */
}

/* Only a pure SYN opens a TCP connection: SYN without ACK, RST or FIN (ECE/CWR/URG/PSH may
 * come with it).  IPVS schedules SYN|ACK (active FTP from a real server) and SYN|FIN too. */
static __always_inline int lb_tcp_pure_syn(__u8 flags)
{
    return (flags & (LB_TCP_SYN | LB_TCP_ACK | LB_TCP_RST | LB_TCP_FIN)) == LB_TCP_SYN;
}

/* The established filter.  A pure SYN almost always opens a new connection, and a miss in a
 * big lb_conns (a bucket walk through cold memory) costs more than the rest of its path; it may
 * still belong to one there (a client reusing its port while the old entry waits in TIME_WAIT,
 * an entry synced from the peer director), so lb_conns is skipped only for a key whose bit is
 * clear in every bitmap of lb_est_filter.  Bits are set before an entry goes into lb_conns: by
 * a promotion here (atomically, into the bitmap lb_globals[LB_G_EST_WRITE] names) and by the
 * control plane's imports (the census); they are cleared only by the control plane's sweep,
 * which rebuilds the census from the table (lb/dataplane/conntable.py: after switching the
 * promotions to the other bitmap, so no bit of a live entry is ever missing).  A stale bit costs
 * the lookup it would have cost anyway.  The hash: lb/dataplane/layout.py est_filter_bit. */
static __always_inline __u32 lb_est_bit(struct lb_conn_key *k)
{
    __u32 *w = (__u32 *)k;
    __u32 h = w[0] ^ w[1] ^ w[2] ^ w[3];
    h = (h * LB_EST_HASH_MUL) ^ w[4] ^ w[5] ^ w[6] ^ w[7];
    h = (h * LB_EST_HASH_MUL) ^ w[8];
    h = (h * LB_EST_HASH_MUL) ^ w[9];
    return (h * LB_EST_HASH_MUL) >> (32 - LB_EST_FILTER_BITS);
}

/* 0: key is certainly not in lb_conns (its bit clear in the three bitmaps: one cache line) */
static __always_inline int lb_est_maybe(struct lb_conn_key *k)
{
    __u32 bit = lb_est_bit(k), word = (bit >> 6) & (LB_EST_FILTER_WORDS - 1);
    struct lb_est_word *e = lb_est_filter.lookup(&word);
    if (!e)
        return 1;
    return ((e->w[LB_EST_CENSUS] | e->w[LB_EST_MARKS] | e->w[LB_EST_MARKS + 1]) >> (bit & 63)) & 1;
}

static __always_inline void lb_est_mark(struct lb_conn_key *k)
{
    __u32 bit = lb_est_bit(k), word = (bit >> 6) & (LB_EST_FILTER_WORDS - 1);
    __u32 g = LB_G_EST_WRITE;
    __u32 *wr = lb_globals.lookup(&g);
    struct lb_est_word *e = lb_est_filter.lookup(&word);
    if (e)
        __sync_fetch_and_or(&e->w[LB_EST_MARKS + (wr ? (*wr & 1) : 0)], 1ULL << (bit & 63));
}

/* The connection of key: lb_conns first (every established packet stops there), then the
 * embryonic table; *embryo says which one holds it. */
static __always_inline struct lb_conn *lb_conn_find(struct lb_conn_key *k, int *embryo)
{
    struct lb_conn *c = lb_conns_lookup(k);
    *embryo = 0;
    if (c)
        return c;
    c = lb_conns_embryo.lookup(k);
    if (c)
        *embryo = 1;
    return c;
}

/* lb_conn_find for a packet from a client: a pure SYN skips lb_conns where the established
 * filter allows */
static __always_inline struct lb_conn *lb_conn_find_in(struct lb_conn_key *k, struct lb_pkt *pkt, int *embryo)
{
    if (pkt->proto == IPPROTO_TCP && lb_tcp_pure_syn(pkt->tcp_flags) && !lb_est_maybe(k)) {
        *embryo = 1;
        return lb_conns_embryo.lookup(k);
    }
    return lb_conn_find(k, embryo);
}

/* Drop an expired entry from its table (lb_conns or the embryonic one): whoever deletes it uncounts
 * it, so the control plane's sweep and the data path never both do */
static __always_inline void lb_conn_expire_in(struct lb_conn_key *k, struct lb_conn *c, int embryo)
{
    struct lb_conn copy = *c;
    if (!embryo) {
        if (lb_conns_delete(k) == 0)
            lb_conn_uncount(&copy);
        return;
    }
    if (lb_conns_embryo.delete(k) == 0) {
        lb_conn_uncount(&copy);
        lb_ct_event(LB_CTE_EMBRYO_GONE);
    }
}

static __always_inline void lb_conn_delete_in(struct lb_conn_key *k, int embryo)
{
    if (!embryo)
        lb_conns_delete(k);
    else if (lb_conns_embryo.delete(k) == 0)
        lb_ct_event(LB_CTE_EMBRYO_GONE);
}

/* The NAT reverse entry's key of a connection to real server r (reply: real -> client) */
static __always_inline void lb_conn_key_reverse(struct lb_conn_key *rk, struct lb_conn_key *k, struct lb_real *r)
{
    __builtin_memset(rk, 0, sizeof(*rk));
    __builtin_memcpy(rk->saddr, r->addr, 16);
    __builtin_memcpy(rk->daddr, k->saddr, 16);
    rk->sport = r->port ? r->port : k->dport;   /* port 0: the packet's (firewall-mark service) */
    rk->dport = k->sport;
    rk->proto = k->proto;
    rk->family = k->family;
    rk->dir = 1;
}

/* Established: TCP in ESTABLISHED; UDP at any packet after its first */
static __always_inline int lb_embryo_grown(struct lb_conn *c, __u8 proto)
{
    return proto != IPPROTO_TCP || c->state == LB_TCP_S_ESTABLISHED;
}

/* The persistence template of an established connection goes to lb_persist: the embryonic one
 * it made, or (when the flood evicted that) a new one naming the connection's real server, so
 * the client's next connections (FTP's data connections) follow it.  A full lb_persist keeps it
 * embryonic, counted (LB_CNT_PERSIST_FULL). */
static __always_inline void lb_persist_grow(const __be32 *caddr, __u32 svc_id, __u32 real_id, __u64 now)
{
    struct lb_svc *svc = lb_svc.lookup(&svc_id);
    if (!svc || !svc->persist_timeout)
        return;
    struct lb_persist_key pk;
    lb_persist_key_from(&pk, caddr, svc);
    if (lb_persist.lookup(&pk))
        return;                   /* an established connection of this client made it already */
    struct lb_persist *t = lb_persist_embryo.lookup(&pk);
    struct lb_persist v = { .last_ns = now, .real = real_id, .timeout = svc->persist_timeout };
    if (t)
        v = *t;
    if (lb_persist.insert(&pk, &v) != 0) {
        if (!lb_persist.lookup(&pk))
            lb_count(LB_CNT_PERSIST_FULL);
        return;
    }
    if (t)
        lb_persist_embryo.delete(&pk);   /* moved: PersistConn does not change */
    else
        lb_persist_count(real_id, 1);
}

/* Move an embryonic connection (as this packet left it) to lb_conns, with its NAT reverse entry
 * (rk, when it has one) and its persistence template.  The real server's counters do not change:
 * the connection is the same.  lb_conns refusing it (only when a CPU race left the LRU without a
 * free entry) keeps it embryonic, counted. */
static __always_inline void lb_embryo_promote(struct lb_conn_key *k, struct lb_conn *c, struct lb_conn_key *rk)
{
    struct lb_conn v = *c;
    lb_est_mark(k);               /* before it is there: a SYN must never skip a live entry */
    if (lb_conns_write(k, &v, 1) != 0 && !lb_conns_lookup(k)) {
        lb_count(LB_CNT_CONN_FULL);
        return;
    }
    lb_conns_embryo.delete(k);
    lb_ct_event(LB_CTE_EMBRYO_PROMOTED);
    if (rk) {
        struct lb_conn *rev = lb_conns_embryo.lookup(rk);
        if (rev) {
            struct lb_conn rv = *rev;
            rv.last_ns = v.last_ns;
            if (lb_conns_write(rk, &rv, 0) != 0)
                lb_count(LB_CNT_CONN_FULL);   /* the reverse entry stays embryonic */
            else if (lb_conns_embryo.delete(rk) == 0)
                lb_ct_event(LB_CTE_EMBRYO_PROMOTED);
        }
    }
    if (v.flags & LB_CONN_F_PERSIST)
        lb_persist_grow((const __be32 *)k->saddr, v.svc, v.real, v.last_ns);
}

/* drop_packet (IPVS ip_vs_todrop): while engaged, 1 in lb_globals[LB_G_DROP_RATE] new
 * connections' first packets is dropped */
static __always_inline int lb_defense_drop(void)
{
    __u32 g = LB_G_DROP_RATE;
    __u32 *rate = lb_globals.lookup(&g);
    if (!rate || !*rate)
        return 0;
    if (bpf_get_prandom_u32() % *rate)
        return 0;
    lb_count(LB_CNT_DROP_PACKET);
    return 1;
}

#endif
