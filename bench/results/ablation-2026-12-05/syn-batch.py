"""A SYN's cost in a warm batch, not one test run per SYN: the pkt suite's two-CPU driver
(bench/pkt.py DRIVER: each packet a new flow, repeat=N in the kernel) tail-calls lb_xdp_public
(rr, dh, wlc, mh over 16 real servers) or the floor program (a lookup miss + an LRU insert into
lb's embryonic table), on one CPU, the embryonic table half full as in the pkt suite's
new-connection blocks, each run's entries deleted after it; rows interleaved round by round.
EBITS=n in the environment sets LB_EST_FILTER_BITS (the established filter's bits per bitmap;
the default install's 65,536-entry table gets 2^20: 512 KB with its three bitmaps interleaved).
Run from a tree, as root:
  .venv/bin/python bench/results/ablation-2026-12-05/syn-batch.py [TABLE [ROUNDS]]"""
import os
import statistics
import sys

sys.path.insert(0, os.getcwd())
from bench import pkt as P  # noqa: E402

if os.environ.get("EBITS"):
    from lb.dataplane import program as _pg
    for _c in vars(_pg).values():
        if isinstance(_c, type) and "est_filter_bits" in vars(_c):
            _c.est_filter_bits = property(lambda s: int(os.environ["EBITS"]))

table = int(sys.argv[1]) if len(sys.argv) > 1 else P.DEFAULT_TABLE
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 9
b = P.Bench(table)
try:
    m = b.insert_map
    size = m.max_entries
    b.clear(m)
    b.fill(m, int(size * P.FILL))
    cpu = sorted(os.sched_getaffinity(0))[0]
    n = min(2000, int(size * P.ROUND_SHARE / 4))
    syn = {k: v for k, _s, _n, v in P.SYN_SERVICES}
    rows = [("floor", P.VIP_DR), ("rr", syn["rr"]), ("dh", syn["dh"]), ("wlc", syn["wlc"]), ("mh", syn["mh"])]
    res = {k: [] for k, _ in rows}
    for rnd in range(rounds):
        k0 = rnd % len(rows)
        for key, vip in rows[k0:] + rows[:k0]:
            b.bpf[b"drv_next"][0] = (b.floor if key == "floor" else b.dp.fns["lb_xdp_public"]).fd
            fd = b.driver(cpu, 0, b.drv_base(cpu))
            frame = P.frames(vip, 80, "S", b.drv_flows(cpu, 0, 1))[0]
            r = b.checked(key, lambda: b.on_cpus(fd, frame, [cpu], n, n // 4))
            fl = b.drv_flows(cpu, 0, r["done"][cpu])
            keys = P.floor_keys(fl, vip, 80, m.key_size) if key == "floor" else P.conn_keys(fl, vip, 80)
            before = len(m.items())
            m.delete_many(keys)
            if before - len(m.items()) != len(keys):
                raise RuntimeError(f"{key}: {len(keys)} SYNs made {before - len(m.items())} entries")
            res[key].append(1e3 / r["mpps"])
    fl = statistics.median(res["floor"])
    print(f"# EBITS={os.environ.get('EBITS') or 'default'} table {table} embryonic {size} ({n} SYNs a run); "
          f"ns per SYN, median of {rounds} rounds")
    for key, v in res.items():
        md = statistics.median(v)
        print(f"{key:6s} {md:7.1f} ns  floor+{md - fl:6.1f}  runs {' '.join(f'{x:.0f}' for x in v)}")
finally:
    b.close()
