"""The DR rows' way out: bpf_redirect(ifindex) against bpf_redirect_map() into a devmap (what
xdp-tools and many forwarders use, said to be the faster one), each after the trivial program's
MAC swap, beside the trivial XDP_TX, interleaved round by round.  In BPF_PROG_TEST_RUN no frame
leaves: this is the program's side of the redirect, the part the DR rows measure.
Run from a tree: .venv/bin/python bench/results/ablation-2026-12-04/devmap.py [rounds] [loads]"""
import ctypes
import statistics
import sys

sys.path.insert(0, ".")
from bench import pkt as P  # noqa: E402

P.KEY_SIZES += r"""
BPF_DEVMAP(xp_out, 16);
int bench_devmap(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    unsigned char tmp[ETH_ALEN];
    if ((void *)(eth + 1) > end)
        return XDP_DROP;
    __builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
    return xp_out.redirect_map(1, 0);
}
"""
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 21
loads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
for load in range(loads):
    b = P.Bench(P.DEFAULT_TABLE)
    try:
        from bcc import BPF
        fn = b.bpf.load_func(b"bench_devmap", BPF.XDP)
        b.bpf[b"xp_out"][ctypes.c_int(1)] = ctypes.c_int(1)      # slot 1: lo (never sent to here)
        one = P.frames(P.VIP_DR, 80, "A", P.flows(1))
        rows = b.baselines()[:1] + [P.Row("redirect", "bpf_redirect", b.redirect.fd, one, kind="baseline"),
                                    P.Row("devmap", "bpf_redirect_map", fn.fd, one, kind="baseline")]
        for r in rows:
            b.run(r.fd, r.frames, 1)
            want = "XDP_TX" if r.key == "trivial" else "XDP_REDIRECT"
            if b.last_action != want:
                raise RuntimeError(f"{r.key}: {b.last_action}")
        b.measure(rows, rounds, 20000)
        print(f"load {load}:", " ".join(f"{r.key}={statistics.median(r.vals):.1f}ns" for r in rows), flush=True)
    finally:
        b.close()
