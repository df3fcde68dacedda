/* The data path's clock: CLOCK_MONOTONIC at the tick's resolution (bpf_ktime_get_coarse_ns()),
 * read through a per-CPU cache.  The helper cost 20-30 ns a call on this VM's timekeeping, a
 * quarter of an established packet's work, while its value moves only at a tick: each CPU keeps
 * the value it last read with the jiffy it read it in (bpf_jiffies64(), which the verifier
 * inlines into a load) and calls the helper again only when the jiffy moved -- once a tick per
 * CPU, not once a packet.  A value is at most a tick behind the helper's (a read just between the
 * tick's jiffies update and its clock update), which the coarse clock's users already allow for:
 * connection timeouts are whole seconds and the HA lease is a deadtime. */
#ifndef LB_CLOCK_H
#define LB_CLOCK_H

#include "lb_maps.h"

static __always_inline __u64 lb_now(void)
{
    __u32 zero = 0;
    struct lb_clock *k = lb_clock.lookup(&zero);
    __u64 j = bpf_jiffies64();
    if (!k)
        return bpf_ktime_get_coarse_ns();
    if (k->jiffies != j) {
        k->now_ns = bpf_ktime_get_coarse_ns();
        k->jiffies = j;
    }
    return k->now_ns;
}

#endif
