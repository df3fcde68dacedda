"""diagnostic (not part of lb): the idle `lb run` daemon's CPU in bench http's NAT lab, by table size,
and a perf profile of it (kernel + C frames)"""
import os, subprocess, sys, time
sys.path.insert(0, os.getcwd())
from bench.common import lab_up
from bench import http as H

conns = os.environ.get("CONNS", "4194304")
H.LB_CONF = H.LB_CONF.replace("connections = 4194304", "connections = " + conns)
secs = float(os.environ.get("SECS", "20"))
tck = os.sysconf("SC_CLK_TCK")

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tck

with lab_up("nat") as lab:
    h = H.Http(lab, "full")
    try:
        h.sysctls()
        h.set_route(False)
        p = h.start_lb("nat")
        try:
            time.sleep(6)
            pid = int(subprocess.run(["pgrep", "-f", "lb run --config"], capture_output=True, text=True).stdout.split()[0])
            c0 = cpu(pid)
            if os.environ.get("PYSPY") == "none":
                time.sleep(secs)
            else:
              subprocess.run([os.environ.get("PYSPY", "py-spy"), "record", "-p", str(pid), "-d", str(int(secs)), "-r", "250",
                            "-f", "raw", "-o", f"/tmp/idle/spy-{conns}.txt", "--threads"], capture_output=True)
            c1 = cpu(pid)
            print(f"CONNS={conns}: daemon CPU {c1 - c0:.3f} s in {secs:.0f} s idle")
        finally:
            h.stop(p)
    finally:
        h.cleanup()
