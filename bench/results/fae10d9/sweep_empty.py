import os, sys, time
sys.path.insert(0, os.getcwd())
from lb.dataplane.xdp import Sizes, XdpDataplane
for conns in (65536, 4194304):
    dp = XdpDataplane(f"sw{os.getpid()}x{conns}", Sizes(8, 8, 8, conns))
    try:
        dp.load()
        ts = []
        for _ in range(5):
            t = time.perf_counter(); dp.sweep(); ts.append(time.perf_counter() - t)
        cpu0 = time.process_time(); dp.sweep(); cpu = time.process_time() - cpu0
        print(conns, "sweep of an empty table:", " ".join(f"{x*1000:.1f}" for x in ts), "ms; CPU", f"{cpu*1000:.1f} ms")
    finally:
        dp.unpin(); dp.close()
