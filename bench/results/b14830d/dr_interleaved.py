import os, signal, statistics, subprocess
from bench.common import lab_up
from bench import http as H
with lab_up("nat") as lab:
    h = H.Http(lab, "full")
    try:
        h.sysctls(); h.set_route(True); h.wait_http(H.RS1, 80)
        p = h.start_lb("direct")
        print(lab.run("director", ["ip", "-br", "link"]).stdout)
        print(lab.run("director", ["ip", "link", "show", "priv0"]).stdout)
        res = {}
        for phase in ("running", "stopped"):
            if phase == "stopped":
                os.kill(p.pid, signal.SIGSTOP)
            for _ in range(6):
                for name, url in (("direct", f"http://{H.RS1}/"), ("dr", f"http://{H.VIP}/")):
                    r = h.wrk(url, False)
                    res.setdefault((phase, name), []).append((r["rps"], r["p99_ms"]))
            if phase == "stopped":
                os.kill(p.pid, signal.SIGCONT)
        h.stop(p)
        for k, v in res.items():
            print(k, "rps", round(statistics.median(x for x, _ in v)), "p99", round(statistics.median(y for _, y in v), 3), [y for _, y in v])
    finally:
        h.cleanup()
