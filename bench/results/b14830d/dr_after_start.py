import os, signal, statistics, subprocess, time
from bench.common import lab_up
from bench import http as H
with lab_up("nat") as lab:
    h = H.Http(lab, "full")
    try:
        h.sysctls(); h.set_route(True); h.wait_http(H.RS1, 80)
        out = {}
        for _ in range(5):
            out.setdefault("direct-before", []).append(h.wrk(f"http://{H.RS1}/", False)["p99_ms"])
        p = h.start_lb("direct")
        t0 = time.monotonic()
        for _ in range(5):
            out.setdefault("dr-right-after-start", []).append(h.wrk(f"http://{H.VIP}/", False)["p99_ms"])
        print("first five DR runs took", round(time.monotonic() - t0, 1), "s")
        for _ in range(5):
            out.setdefault("dr-later", []).append(h.wrk(f"http://{H.VIP}/", False)["p99_ms"])
        for _ in range(5):
            out.setdefault("direct-lb-running", []).append(h.wrk(f"http://{H.RS1}/", False)["p99_ms"])
        h.stop(p)
        for k, v in out.items():
            print(k, round(statistics.median(v), 3), [round(x, 3) for x in v])
    finally:
        h.cleanup()
