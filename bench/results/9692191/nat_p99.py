import sys, json, statistics
sys.path.insert(0, ".")
from bench import http as H
from bench.common import lab_up
conns = sys.argv[1]
pairs = int(sys.argv[2])
H.LB_CONF = H.LB_CONF.replace("connections = 4194304", f"connections = {conns}")
with lab_up("nat") as lab:
    h = H.Http(lab, "full")
    try:
        h.sysctls(); h.direct_source(); h.set_route(False)
        p = h.start_lb("nat")
        out = []
        for i in range(pairs):
            a = h.wrk(f"http://{H.VIP}/", False); b = h.wrk(f"http://{H.RS1}/", False)
            out.append((a["p99_ms"], b["p99_ms"], a["rps"], b["rps"]))
            print(f"{a['p99_ms']:.3f} {b['p99_ms']:.3f} {a['rps']:.0f} {b['rps']:.0f}", flush=True)
        h.stop(p)
    finally:
        h.cleanup()
r = [a / b for a, b, _, _ in out]
print("conns", conns, "median p99 ratio", round(statistics.median(r), 3), "nat med", round(statistics.median(x[0] for x in out), 3), "direct med", round(statistics.median(x[1] for x in out), 3))
