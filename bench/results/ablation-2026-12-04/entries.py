"""10,000 established DR flows in lb_conns: how many entries the table holds, and where they lie.
  occupancy   the DR flows alone (A), 30,000 more entries added (B), those deleted again (C)
  placement   entries as lb's handshakes made them, then deleted and written back from Python
Run from a tree: .venv/bin/python bench/results/ablation-2026-12-04/entries.py occupancy|placement
(occupancy.txt and placement.txt: its two modes, then named fill2.py and place.py)"""
import statistics
import sys

sys.path.insert(0, ".")
from bench import pkt as P  # noqa: E402

ROWS = {"occupancy": {"trivial", "drmany", "estfloormany", "key40_many", "dr1", "estfloor1"},
        "placement": {"trivial", "drmany", "estfloormany", "key40_many", "key16_many", "dr1arm", "redirect", "nat1"}}
mode = sys.argv[1]
b = P.Bench(P.DEFAULT_TABLE)
try:
    rows = [r for r in b.baselines() + b.established(10000) if r.key in ROWS[mode]]
    m = b.dp.maps["lb_conns"]

    def show(tag):
        for r in rows:
            r.vals.clear()
        b.measure(rows, 25, 20000)
        base = statistics.median(next(r for r in rows if r.key == "trivial").vals)
        print(tag, "entries", len(m.items()),
              " ".join(f"{r.key}={statistics.median(r.vals) / base:.2f}x" for r in rows), flush=True)

    if mode == "occupancy":
        show("A dr only")
        show("A again")
        b.established_nat(10000)
        b.established_full(10000)
        show("B all")
        dr = set(P.conn_keys(P.flows(1), P.VIP_DR, 80) + P.conn_keys(P.flows(10000, 30000), P.VIP_DR, 80))
        m.delete_many([k for k, _ in m.items() if k not in dr])
        show("C dr only again")
        show("C again")
    else:
        show("primed by handshakes")
        items = m.items()
        m.delete_many([k for k, _ in items])
        m.set_many([k for k, _ in items], [v for _, v in items])
        show("rewritten from Python")
        show("again")
finally:
    b.close()
