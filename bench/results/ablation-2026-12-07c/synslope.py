import sys, json
sys.path.insert(0, ".")
from bench import pkt
runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
b = pkt.Bench(pkt.DEFAULT_TABLE)
try:
    syn, n = b.new_conns(runs, 2000)
    rows = b.baselines() + syn
    b.measure(rows, runs, 100_000)
    out = pkt.results(rows, "syn")
    for r in out:
        if r.get("key") in ("trivial", "floor", "mindir", "lc", "wlc", "wlc32", "wlc64", "slope", "rr", "dh"):
            print(r["key"], round(r["ns"], 1), r.get("delta_floor_ns") and round(r["delta_floor_ns"], 1),
                  {k: round(v, 2) if isinstance(v, float) else v for k, v in r.get("stats", {}).items() if k in ("ci_low", "ci_high", "noisy")})
finally:
    b.close()
