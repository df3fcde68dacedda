/* Counting: the per-CPU event counters (lb_counters, LB_CNT_*) and the service and real server
 * stats that `lb list --stats` sums over CPUs.  Per-CPU: no atomics needed. */
#ifndef LB_STATS_H
#define LB_STATS_H

#include "lb_maps.h"

static __always_inline void lb_count(__u32 idx)
{
    __u64 *v = lb_counters.lookup(&idx);
    if (v)
        *v += 1;                  /* per-CPU: no atomics needed */
}

static __always_inline void lb_stats_in(__u32 svc, __u32 real, __u32 len, int new_conn)
{
    struct lb_stats *s = lb_svc_stats.lookup(&svc);
    if (s) {
        s->inpkts++;
        s->inbytes += len;
        s->conns += new_conn;
    }
    s = lb_real_stats.lookup(&real);
    if (s) {
        s->inpkts++;
        s->inbytes += len;
        s->conns += new_conn;
    }
}

static __always_inline void lb_stats_out(__u32 svc, __u32 real, __u32 len)
{
    struct lb_stats *s = lb_svc_stats.lookup(&svc);
    if (s) {
        s->outpkts++;
        s->outbytes += len;
    }
    s = lb_real_stats.lookup(&real);
    if (s) {
        s->outpkts++;
        s->outbytes += len;
    }
}

#endif
