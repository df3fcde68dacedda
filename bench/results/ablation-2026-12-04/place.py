import sys, statistics
sys.path.insert(0, ".")
from bench import pkt as P
b = P.Bench(P.DEFAULT_TABLE)
try:
    rows = b.baselines() + b.established(10000)
    keep = {"trivial", "drmany", "estfloormany", "key40_many", "key16_many", "dr1arm", "redirect", "nat1"}
    rows = [r for r in rows if r.key in keep]
    m = b.dp.maps["lb_conns"]
    def show(tag):
        for r in rows: r.vals.clear()
        b.measure(rows, 25, 20000)
        base = statistics.median(next(r for r in rows if r.key == "trivial").vals)
        print(tag, "entries", len(m.items()), " ".join(f"{r.key}={statistics.median(r.vals)/base:.2f}x" for r in rows), flush=True)
    show("primed by handshakes")
    items = m.items()
    m.delete_many([k for k, _ in items])
    m.set_many([k for k, _ in items], [v for _, v in items])
    show("rewritten from Python")
    show("again")
finally:
    b.close()
