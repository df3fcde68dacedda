"""Interleaved A/B of SYN rows over -D variants of the data plane (dev tool, not part of lb)."""
import os, sys, statistics, itertools
sys.path.insert(0, os.getcwd())
import bench.pkt as P
from bench.pkt import Row
from lb.dataplane.xdp import Sizes, XdpDataplane

EXTRA = []
_orig = Sizes.cflags
Sizes.cflags = lambda self, pin: _orig(self, pin) + EXTRA
counter = itertools.count()

class B(P.Bench):
    def __init__(self, table):
        from bcc import BPF
        self.BPF, self.bpf = BPF, None
        t = P.Tables()
        self.dp = XdpDataplane(f"abl{os.getpid()}x{next(counter)}", Sizes(t.services, t.real_servers, t.reals_per_service, table),
                               resolver=P._resolver)
        try:
            self.dp.load(); self._setup()
        except BaseException:
            self.close(); raise

variants = [v.split(",") if v else [] for v in sys.argv[1].split(";")]
keys = sys.argv[2].split(",")          # row keys, e.g. dh,wlc,floor; or cpu2 (the two-CPU rows)
if keys == ["cpu2"]:                   # abl.py "VARIANTS" cpu2 REPETITIONS: Bench.two_cpus, loads alternating
    reps, benches, out = int(sys.argv[3]) if len(sys.argv) > 3 else 2, [], {}
    try:
        for v in variants:
            EXTRA[:] = [f"-D{x}" for x in v]
            benches.append(((",".join(v) or "base") + f"#{len(benches)}", B(P.DEFAULT_TABLE)))
        for rep in range(reps):
            for name, b in benches:
                for r in b.two_cpus(3, 1_000_000, 50_000, 1000)[0]:
                    out.setdefault((name, r["key"]), []).append(
                        (r["one_cpu_mpps"]["median"], r["two_cpu_mpps"]["median"], r["ratio"]))
        for (name, k), v in sorted(out.items(), key=lambda x: (x[0][1], x[0][0])):
            print(f"{k:9s} {name:24s} one " + " ".join(f"{a:.2f}" for a, _, _ in v) + "  two "
                  + " ".join(f"{b:.2f}" for _, b, _ in v) + "  scaling " + " ".join(f"{c:.2f}" for *_, c in v))
    finally:
        for _, b in benches:
            b.close()
    sys.exit(0)
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 21
table = int(sys.argv[4]) if len(sys.argv) > 4 else P.DEFAULT_TABLE
benches = []
try:
    for v in variants:
        EXTRA[:] = [f"-D{x}" for x in v]
        b = B(table)
        if "dr1" in keys or "estfloor1" in keys:
            rows = b.established(int(os.environ.get("ABL_MANY", "1000"))) + (b.established_full(1000) if "dr6many" in keys else []) + \
                [Row("floor", "t", b.trivial.fd, P.frames(P.VIP_DR, 80, "A", P.flows(1)))]
        else:
            rows, n = b.new_conns(runs, 100000)
        b.sel = sorted([r for r in rows if r.key in keys], key=lambda r: keys.index(r.key))
        benches.append(((",".join(v) or "base") + f"#{len(benches)}", b))
    vals = {(name, r.key): [[] for _ in range(runs)] for name, b in benches for r in b.sel}
    for rnd in range(runs):
        order = benches[rnd % len(benches):] + benches[:rnd % len(benches)]
        for name, b in order:
            ins = []
            for r in b.sel:
                if not r.one_pass:
                    if os.environ.get("ABL_WARM") and len(r.frames) > 1:
                        b.run(r.fd, r.frames, len(r.frames))     # the flows active, as bench pkt's
                    vals[(name, r.key)][rnd].append(b.run(r.fd, r.frames, 20000))
                    continue
                n = len(r.frames) // runs
                fr = r.frames[rnd * n:(rnd + 1) * n]
                vals[(name, r.key)][rnd].append(b.checked(r.name, lambda: b.run(r.fd, fr, n)))
                ins += r.keys[rnd * n:(rnd + 1) * n]
            if ins:
                b.insert_map.delete_many(ins)
    mean = lambda xs: sum(xs) / len(xs)
    for (name, k), v in vals.items():
        per = [mean(x) for x in v]
        fl = [mean(x) for x in vals[(name, "floor")]] if (name, "floor") in vals else None
        base = [mean(x) for x in vals[(benches[0][0], k)]]
        d_floor = statistics.median(a - b for a, b in zip(per, fl)) if fl else float("nan")
        d_base = statistics.median(a - b for a, b in zip(per, base))
        print(f"{name:24s} {k:6s} median {statistics.median(per):7.1f}  -floor {d_floor:6.1f}  -base {d_base:6.1f}")
finally:
    for _, b in benches:
        b.close()
