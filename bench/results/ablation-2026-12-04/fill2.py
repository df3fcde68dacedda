import sys, statistics
sys.path.insert(0, ".")
from bench import pkt as P
b = P.Bench(P.DEFAULT_TABLE)
try:
    rows = b.baselines() + b.established(10000)
    keep = {"trivial", "drmany", "estfloormany", "key40_many", "dr1", "estfloor1"}
    rows = [r for r in rows if r.key in keep]
    m = b.dp.maps["lb_conns"]
    def show(tag):
        for r in rows: r.vals.clear()
        b.measure(rows, 25, 20000)
        base = statistics.median(next(r for r in rows if r.key == "trivial").vals)
        print(tag, "entries", len(m.items()), " ".join(f"{r.key}={statistics.median(r.vals)/base:.2f}x" for r in rows), flush=True)
    show("A dr only")
    show("A again")
    b.established_nat(10000); b.established_full(10000)
    show("B all")
    dr = set(P.conn_keys(P.flows(1), P.VIP_DR, 80) + P.conn_keys(P.flows(10000, 30000), P.VIP_DR, 80))
    m.delete_many([k for k, _ in m.items() if k not in dr])
    show("C dr only again")
    show("C again")
finally:
    b.close()
