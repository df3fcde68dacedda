/* Persistence templates (IPVS ip_vs_sched_persist): a client network's new connections to a
 * persistent service go to the real server its template names, while the template lives. */
#ifndef LB_PERSIST_H
#define LB_PERSIST_H

#include "lb_maps.h"
#include "lb_parse.h"

static __always_inline void lb_persist_key_of(struct lb_persist_key *pk, struct lb_pkt *pkt,
                                              struct lb_svc *svc)
{
    __builtin_memset(pk, 0, sizeof(*pk));
    /* IPv4 netmask or IPv6 prefix, both as a 16-byte mask (IPVS: svc->netmask) */
    __be32 *ca = (__be32 *)pk->caddr;
    ca[0] = pkt->saddr[0] & svc->persist_mask[0];
    ca[1] = pkt->saddr[1] & svc->persist_mask[1];
    ca[2] = pkt->saddr[2] & svc->persist_mask[2];
    ca[3] = pkt->saddr[3] & svc->persist_mask[3];
    if (svc->fwmark) {            /* IPVS: <client & netmask, fwmark> across the whole group */
        pk->fwmark = svc->fwmark;
        pk->family = svc->family;
        return;
    }
    __builtin_memcpy(pk->vaddr, svc->addr, 16);
    pk->vport = svc->port;
    pk->proto = svc->proto;
    pk->family = svc->family;
}

static __always_inline int lb_persist_expired(struct lb_persist *t, __u64 now)
{
    return (__s64)(now - t->last_ns) > (__s64)((__u64)t->timeout * 1000000000ULL);   /* as lb_conn_expired */
}

static __always_inline void lb_persist_count(__u32 real, int delta)
{
    struct lb_real_conns *c = lb_real_conns.lookup(&real);
    if (c)
        __sync_fetch_and_add(&c->persist, delta);
}

/* Remove a template; whoever's delete succeeds uncounts it (as for connections). */
static __always_inline void lb_persist_drop(struct lb_persist_key *pk, struct lb_persist *t)
{
    __u32 real = t->real;
    if (lb_persist.delete(pk) == 0)
        lb_persist_count(real, -1);
}

/* A template is valid while its real server is still in the service (IPVS: AVAILABLE). */
static __always_inline int lb_persist_usable(struct lb_persist *t, __u32 svc_id)
{
    __u32 real = t->real;
    struct lb_real *r = lb_reals.lookup(&real);
    return r && r->svc == svc_id && r->family != 0 && !(r->flags & LB_REAL_F_DRAINING);
}

#endif
