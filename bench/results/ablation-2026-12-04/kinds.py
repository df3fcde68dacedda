"""10,000 established DR flows: a bare lookup (a hit, lb's 40-byte key and 64-byte value, the
established floor's answer) in tables of the same size that differ only in their kind --
lru_hash (what lb_conns is), lru_hash with BPF_F_NO_COMMON_LRU, hash preallocated, hash with
BPF_F_NO_PREALLOC (elements from the kernel's allocator, not one vmalloc'd area) -- each written
from Python in flow order (fresh), then deleted and written back (recycled), then with 20,000
other entries written and removed in between (lived; no more: a
BPF_F_NO_COMMON_LRU table gives each CPU a list of half its entries, and Python writes from one).
Run from a tree: .venv/bin/python bench/results/ablation-2026-12-04/kinds.py [rounds]"""
import statistics
import struct
import sys

sys.path.insert(0, ".")
from bench import pkt as P  # noqa: E402
from lb.dataplane.maps import BpfMap  # noqa: E402

KINDS = {"lru": ('"lru_hash"', "0"), "lru_nocommon": ('"lru_hash"', "BPF_F_NO_COMMON_LRU"),
         "hash": ('"hash"', "0"), "hash_noprealloc": ('"hash"', "BPF_F_NO_PREALLOC")}
TEXT = "".join(f"""
BPF_F_TABLE({kind}, struct ks_key40, struct ks_val, kt_{name}, KS_TABLE_SIZE, {flags});
int bench_kt_{name}(struct xdp_md *ctx)
{{
    struct ks_key40 k;
    if (!est_key_of(ctx, k.b))
        return XDP_DROP;
    struct ks_val *v = kt_{name}.lookup(&k);
    return est_answer(ctx, v ? v->b : 0);
}}
""" for name, (kind, flags) in KINDS.items())
P.KEY_SIZES += TEXT

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 25
b = P.Bench(P.DEFAULT_TABLE)
try:
    from bcc import BPF
    lots = b.dr_many(10000)
    keys = P.conn_keys(lots, P.VIP_DR, 80)
    others = P.conn_keys(P.flows(20000, 10000, "198.18.8.0"), P.VIP_DR, 80)
    fr = P.frames(P.VIP_DR, 80, "A", lots)
    val = struct.pack("=Q", 1).ljust(b.dp.maps["lb_conns"].value_size, b"\0")
    rows, maps = b.baselines()[:1], {}
    for name in KINDS:
        fn = b.bpf.load_func(f"bench_kt_{name}".encode(), BPF.XDP)
        t = b.bpf[f"kt_{name}".encode()]
        maps[name] = BpfMap(t.map_fd, f"kt_{name}", owned=False)
        maps[name].set_many(keys, [val] * len(keys))
        rows.append(P.Row(name, name, fn.fd, fr, kind="reference"))

    def show(tag):
        for r in rows:
            r.vals.clear()
            b.run(r.fd, r.frames, len(r.frames))
            if b.last_action != "XDP_TX":
                raise RuntimeError(f"{r.key}: {b.last_action}")
        b.measure(rows, rounds, 20000)
        base = statistics.median(rows[0].vals)
        print(f"{tag:10}", f"trivial={base:.1f}ns",
              " ".join(f"{r.key}={statistics.median(r.vals) / base:.2f}x" for r in rows[1:]), flush=True)

    show("fresh")
    for m in maps.values():
        m.delete_many(keys)
        m.set_many(keys, [val] * len(keys))
    show("recycled")
    for m in maps.values():
        m.delete_many(keys[::2])
        m.set_many(others, [val] * len(others))
        m.set_many(keys[::2], [val] * len(keys[::2]))
        m.delete_many(others)
    show("lived")
    show("lived")
finally:
    b.close()
