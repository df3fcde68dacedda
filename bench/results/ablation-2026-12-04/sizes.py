"""What a compact IPv4 connection table would save, key and value apart: bare LRU lookups (a hit,
then the established floor's answer: est_key_of / floor_key_of, est_answer) of the same flows in
fresh tables of lb_conns' default size (65,536) that differ only in their key (lb's 40 bytes or a
16-byte IPv4 key) and value (lb_conns' 64 bytes, a DR entry's 24 without NAT's fields, or 40 with
an IPv4 NAT reply's), at 1, 10,000 and 50,000 flows, beside the trivial program, interleaved; (+-N): the median of the
rounds' differences with k40v64, lb_conns' own key and value.
Run from a tree: .venv/bin/python bench/results/ablation-2026-12-04/sizes.py [rounds]"""
import statistics
import struct
import sys

sys.path.insert(0, ".")
from bench import pkt as P  # noqa: E402
from bench.pkt import BpfMap  # noqa: E402

P.KEY_SIZES += r"""
struct vs_val24 { __u8 b[24]; };
struct vs_val40 { __u8 b[40]; };
BPF_TABLE("lru_hash", struct ks_key40, struct vs_val24, vs_t40_24, KS_TABLE_SIZE);
BPF_TABLE("lru_hash", struct ks_key16, struct vs_val24, vs_t16_24, KS_TABLE_SIZE);
BPF_TABLE("lru_hash", struct ks_key16, struct vs_val40, vs_t16_40, KS_TABLE_SIZE);
int bench_k40v24(struct xdp_md *ctx)
{
    struct ks_key40 k;
    if (!est_key_of(ctx, k.b)) return XDP_DROP;
    struct vs_val24 *v = vs_t40_24.lookup(&k);
    return est_answer(ctx, v ? v->b : 0);
}
int bench_k16v24(struct xdp_md *ctx)
{
    struct ks_key16 k;
    if (!floor_key_of(ctx, k.b, sizeof(k))) return XDP_DROP;
    struct vs_val24 *v = vs_t16_24.lookup(&k);
    return est_answer(ctx, v ? v->b : 0);
}
int bench_k16v40(struct xdp_md *ctx)
{
    struct ks_key16 k;
    if (!floor_key_of(ctx, k.b, sizeof(k))) return XDP_DROP;
    struct vs_val40 *v = vs_t16_40.lookup(&k);
    return est_answer(ctx, v ? v->b : 0);
}
"""
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
b = P.Bench(P.DEFAULT_TABLE)
try:
    from bcc import BPF
    progs = [("k40v64", b"bench_key40", "ks_table40", 40, 64), ("k16v64", b"bench_key16", "ks_table16", 16, 64),
             ("k40v24", b"bench_k40v24", "vs_t40_24", 40, 24), ("k16v24", b"bench_k16v24", "vs_t16_24", 16, 24),
             ("k16v40", b"bench_k16v40", "vs_t16_40", 16, 40)]
    for n in (1, 10000, 50000):
        fl = P.flows(n, 1024)
        fr = P.frames(P.VIP_DR, 80, "A", fl)
        rows = b.baselines()[:1]
        for tag, fn, tname, kb, vb in progs:
            f = b.bpf.load_func(fn, BPF.XDP)
            t = b.bpf[tname.encode()]
            m = BpfMap(t.map_fd, tname, owned=False)
            m.delete_many([k for k, _ in m.items()])
            keys = P.conn_keys(fl, P.VIP_DR, 80) if kb == 40 else P.floor_keys(fl, P.VIP_DR, 80, 16)
            val = struct.pack("=Q", 1).ljust(m.value_size, b"\0")
            m.set_many(keys, [val] * len(keys))
            b.run(f.fd, fr, len(fr))
            assert b.last_action == "XDP_TX", (tag, b.last_action)
            rows.append(P.Row(tag, tag, f.fd, fr, kind="reference"))
        b.measure(rows, rounds, 20000)
        base = statistics.median(rows[0].vals)
        lb40 = rows[1].vals                        # k40v64: lb_conns' own key and value
        print(f"{n} flows: trivial={base:.1f}ns", " ".join(
            f"{r.key}={statistics.median(r.vals):.1f}ns/{statistics.median(r.vals) / base:.2f}x"
            + ("" if r.vals is lb40 else f"({statistics.median([a - c for a, c in zip(r.vals, lb40)]):+.1f})")
            for r in rows[1:]), flush=True)
finally:
    b.close()
