/* Persistence templates (IPVS ip_vs_sched_persist): a client network's new connections to a
 * persistent service go to the real server its template names, while the template lives.  A
 * template lives in lb_persist_embryo until a connection it controls is established, then in
 * lb_persist (lb_embryo.h), so new sources cannot fill lb_persist. */
#ifndef LB_PERSIST_H
#define LB_PERSIST_H

#include "lb_maps.h"
#include "lb_parse.h"

/* The template key of a client address (16 bytes, as lb_pkt's) in service svc */
static __always_inline void lb_persist_key_from(struct lb_persist_key *pk, const __be32 *caddr,
                                                struct lb_svc *svc)
{
    __builtin_memset(pk, 0, sizeof(*pk));
    /* IPv4 netmask or IPv6 prefix, both as a 16-byte mask (IPVS: svc->netmask) */
    __be32 *ca = (__be32 *)pk->caddr;
    ca[0] = caddr[0] & svc->persist_mask[0];
    ca[1] = caddr[1] & svc->persist_mask[1];
    ca[2] = caddr[2] & svc->persist_mask[2];
    ca[3] = caddr[3] & svc->persist_mask[3];
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

static __always_inline void lb_persist_key_of(struct lb_persist_key *pk, struct lb_pkt *pkt,
                                              struct lb_svc *svc)
{
    lb_persist_key_from(pk, pkt->saddr, svc);
}

/* A client's template: lb_persist (its connections got established), else lb_persist_embryo
 * (made by a connection not established yet, lb_embryo.h); *embryo says which. */
static __always_inline struct lb_persist *lb_persist_find(struct lb_persist_key *pk, int *embryo)
{
    struct lb_persist *t = lb_persist.lookup(pk);
    *embryo = 0;
    if (t)
        return t;
    t = lb_persist_embryo.lookup(pk);
    if (t)
        *embryo = 1;
    return t;
}

static __always_inline int lb_persist_expired(struct lb_persist *t, __u64 now)
{
    __u64 secs = t->timeout & LB_PERSIST_TIMEOUT;
    return (__s64)(now - t->last_ns) > (__s64)(secs * 1000000000ULL);   /* as lb_conn_expired */
}

/* A template IPVS has freed: past its timeout, and the control plane's last sweep found no live
 * connection it controls (LB_PERSIST_F_IDLE; none made through it since, which clears the flag),
 * so none was left when its timer ran out (ip_vs_conn_expire frees a template then unless
 * n_control).  The data path takes it for absent: drops it, as the sweep would, and schedules
 * afresh.  One past its timeout without the flag still controls a connection: it is kept. */
static __always_inline int lb_persist_gone(struct lb_persist *t, __u64 now)
{
    return (t->timeout & LB_PERSIST_F_IDLE) && lb_persist_expired(t, now);
}

static __always_inline void lb_persist_count(__u32 real, int delta)
{
    struct lb_real_conns *c = lb_real_conns.lookup(&real);
    if (c)
        __sync_fetch_and_add(&c->persist, delta);
}

/* Remove a template (from lb_persist_embryo when embryo); whoever's delete succeeds uncounts it
 * (as for connections). */
static __always_inline void lb_persist_drop(struct lb_persist_key *pk, struct lb_persist *t, int embryo)
{
    __u32 real = t->real;
    long rc = embryo ? lb_persist_embryo.delete(pk) : lb_persist.delete(pk);
    if (rc == 0)
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
