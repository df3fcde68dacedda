"""Live frames at many flows: how much of lb's gap to the pps suite's stateful reference is the
size of its connection entry?  The reference keeps a 16-byte key and a 16-byte value it never
reads on a hit (an element of 80 bytes); lb_conns4 a 16-byte key and lb's 64-byte struct lb_conn,
read on every packet (an element of 128 bytes).  A third program is the reference with lb's entry:
the same lookup, insert and redirect over an LRU table of lb_conns4's key and value sizes, its
value's first word read on a hit as lb reads last_ns.  The three take the director's place in
interleaved rounds (the order rotated each round), as in bench/pps.py, at 1,000 and 64,000 flows.
Run from a tree, the lab free: .venv/bin/python bench/results/ablation-2026-12-05/entry-size.py [rounds]"""
import sys
import tempfile

sys.path.insert(0, ".")
from bench import pps as P  # noqa: E402
from bench.common import estimate, lab_up, paired  # noqa: E402

P.PROGS += r"""
/* the reference with lb's entry: lb_conns4's key and value sizes (an element of 128 bytes) */
struct ref_val64 { __u64 first_ns; __u32 real; __u32 pad[13]; };
BPF_TABLE("lru_hash", struct ref_key, struct ref_val64, ref_conns64, REF_TABLE_SIZE);

int bench_stateful64(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_TCP)
        return XDP_PASS;
    struct tcphdr *th = (void *)(ip + 1);
    if ((void *)(th + 1) > end)
        return XDP_PASS;
    struct ref_key k = {.saddr = ip->saddr, .daddr = ip->daddr, .sport = th->source, .dport = th->dest,
                        .proto = IPPROTO_TCP};
    struct ref_val64 *v = ref_conns64.lookup(&k);
    if (!v) {
        struct ref_val64 n = {.first_ns = bpf_ktime_get_coarse_ns()};
        ref_conns64.update(&k, &n);
    } else if (!v->first_ns) {
        return XDP_DROP;          /* never: the read is what counts */
    }
    rewrite(eth);
    return bench_tx_ports.redirect_map(0, 0);
}
"""
P.PROGRAMS = ("stateful", "stateful64", "lb")
FLOWS = (1000, 64000)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 21
count = 700_000

with lab_up("direct") as lab, tempfile.TemporaryDirectory(prefix="lb-ablation-") as tmp:
    from bcc import BPF

    p = P.Pps(lab, P.find_trafgen(), tmp)
    try:
        p.progs["stateful64"] = p.bpf.load_func(b"bench_stateful64", BPF.XDP)
        p.load_lb()
        print(f"primed {p.prime('live frames', max(FLOWS))} connections; {rounds} rounds of {count} frames")
        for flows in FLOWS:
            raw = p.measure("live frames", flows, count, rounds)
            mpps = {prog: [d / t / 1e6 for t, d in raw[prog]] for prog in P.PROGRAMS}
            print(f"\n{flows} flows, Mpps (median, 95% interval):")
            for prog in P.PROGRAMS:
                e = estimate(mpps[prog])
                print(f"  {prog:11s} {e['median']:.3f}  [{e['ci_low']:.3f}, {e['ci_high']:.3f}]")
            for a, b in (("lb", "stateful"), ("lb", "stateful64"), ("stateful64", "stateful")):
                e = estimate(paired(mpps[a], mpps[b], lambda x, y: x / y))
                print(f"  {a} / {b}: {e['median']:.3f}x  [{e['ci_low']:.3f}, {e['ci_high']:.3f}]")
            e = estimate(paired(mpps["lb"], mpps["stateful64"], lambda x, y: 1e3 / x - 1e3 / y))
            print(f"  lb's ns a packet over the reference with lb's entry: {e['median']:+.1f} "
                  f"[{e['ci_low']:+.1f}, {e['ci_high']:+.1f}]")
            e = estimate(paired(mpps["stateful64"], mpps["stateful"], lambda x, y: 1e3 / x - 1e3 / y))
            print(f"  lb's entry's ns a packet over the reference's: {e['median']:+.1f} "
                  f"[{e['ci_low']:+.1f}, {e['ci_high']:+.1f}]")
    finally:
        p.unload_lb()
        p.close()
