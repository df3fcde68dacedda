"""diagnostic (not part of lb): NAT keep-alive p99 vs direct; the lb daemon running or SIGSTOPped"""
import os, signal, sys, time
sys.path.insert(0, os.getcwd())
from bench.common import lab_up
from bench import http as H

H.LB_CONF = H.LB_CONF.replace("connections = 4194304", "connections = " + os.environ.get("CONNS", "4194304"))
with lab_up("nat") as lab:
    h = H.Http(lab, "full")
    try:
        h.sysctls()
        def direct():
            h.set_route(True)
            return h.wrk(f"http://{H.RS1}/", False)
        out = {}
        for rnd in range(int(os.environ.get("ROUNDS", "3"))):
            out.setdefault("direct", []).append(direct())
            h.set_route(False)
            p = h.start_lb("nat")
            try:
                out.setdefault("nat", []).append(h.wrk(f"http://{H.VIP}/", False))
                # the daemon stopped: only its XDP programs work
                import subprocess
                pids = subprocess.run(["pgrep", "-f", "lb run --config"], capture_output=True, text=True).stdout.split()
                for pid in pids: os.kill(int(pid), signal.SIGSTOP)
                try:
                    out.setdefault("nat-stopped", []).append(h.wrk(f"http://{H.VIP}/", False))
                finally:
                    for pid in pids: os.kill(int(pid), signal.SIGCONT)
            finally:
                h.stop(p)
        for k, v in out.items():
            print(k, " ".join(f"{r['rps']:.0f}/{r['p50_ms']:.3f}/{r['p99_ms']:.3f}" for r in v))
    finally:
        h.cleanup()
