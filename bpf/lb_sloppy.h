/* Active-active directors behind ECMP ([bgp] mode = "active-active"): a router's ECMP change
 * moves established flows to a director that has no entry for them.  Such a service is
 * "sloppy", as IPVS with its sloppy_tcp sysctl: a TCP packet without a connection entry is
 * scheduled and tracked even without SYN (the hash schedulers give the real server every
 * director picks), instead of going to the kernel, which would answer RST.  A RST never
 * creates an entry (ip_vs_proto_tcp.c tcp_conn_schedule: th->syn || sloppy, and !th->rst). */
#ifndef LB_SLOPPY_H
#define LB_SLOPPY_H

#include "lb_consts.h"
#include "lb_structs.h"
#include "lb_parse.h"
#include "lb_embryo.h"

/* Whether a packet without a connection entry may create one (LB_SVC_F_SLOPPY: lb_consts.h).
 * A SYN must be a pure one (lb_embryo.h), sloppy or not: SYN|ACK, SYN|RST and SYN|FIN never
 * make a connection, so such floods cost no entry. */
static __always_inline int lb_may_schedule(const struct lb_pkt *pkt, const struct lb_svc *svc)
{
    if (pkt->proto != IPPROTO_TCP)
        return 1;
    if (pkt->tcp_flags & LB_TCP_SYN)
        return lb_tcp_pure_syn(pkt->tcp_flags);
    return (svc->flags & LB_SVC_F_SLOPPY) && !(pkt->tcp_flags & LB_TCP_RST);
}

#endif
