"""A DR data plane's load (compile cache warm) with every XDP program at start (before 3a8a21b) against
the NAT and IPv6-fragment programs left for when asked for (3a8a21b, 5b4cf37): interleaved, wall and the
process's CPU (the verifier runs in the loading threads: system time)"""
import sys, time, resource, statistics
sys.path.insert(0, "tests")
from lb.dataplane import program
from packets_util import loaded_dataplane
BASE = program.BASE_PROGRAMS
res = {"all": [], "lazy": []}
for rnd in range(int(sys.argv[1])):
    for mode in ("all", "lazy") if rnd % 2 == 0 else ("lazy", "all"):
        program.BASE_PROGRAMS = program.XDP_PROGRAMS if mode == "all" else BASE
        r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
        with loaded_dataplane("lab"):
            t1 = time.perf_counter(); r1 = resource.getrusage(resource.RUSAGE_SELF)
        res[mode].append((t1 - t0, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime))
for mode, v in res.items():
    print(f"{mode:5s} wall median {statistics.median(w for w, _ in v):.2f} s  CPU median {statistics.median(c for _, c in v):.2f} s  "
          f"(wall {' '.join(f'{w:.2f}' for w, _ in v)})")
