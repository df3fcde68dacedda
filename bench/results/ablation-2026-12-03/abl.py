"""Where a packet's time goes: bench pkt's rows (bench/pkt.py) through several builds of lb's data
plane that differ by -D flags, interleaved round by round.  A one-off experiment, not a suite:
the flags exist only with ablation.patch applied (each compiles one part of the path out).

    git apply bench/results/ablation-2026-12-03/ablation.patch
    .venv/bin/python bench/results/ablation-2026-12-03/abl.py \
        ";ABL_NOCOUNT;ABL_NOFWD;ABL_NOEST;ABL_NOLEASE;ABL_MIN" dh,wlc,floor 21
    git checkout bpf/

argv: variants (";"-separated, each a ","-separated list of flags, "" = lb as built; a variant
named twice is built twice), row keys (SYN rows and "floor", or "dr1", "estfloor1" and "floor"
for the established path, where "floor" is the trivial program), rounds, the connection table
size.  Per row: the median of the per-round means, and the medians of the per-round
differences with the variant's own floor row and with lb as built.  Run from the checkout."""
import itertools
import os
import statistics
import sys

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
keys = sys.argv[2].split(",")          # row keys, e.g. dh,wlc,floor
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 21
table = int(sys.argv[4]) if len(sys.argv) > 4 else P.DEFAULT_TABLE
benches = []
try:
    for v in variants:
        EXTRA[:] = [f"-D{x}" for x in v]
        b = B(table)
        if "dr1" in keys or "estfloor1" in keys:
            rows = b.established(1000) + [Row("floor", "t", b.trivial.fd, P.frames(P.VIP_DR, 80, "A", P.flows(1)))]
        else:
            rows, n = b.new_conns(runs, 100000)
        b.sel = [r for r in rows if r.key in keys]
        benches.append((",".join(v) or "base", b))
    vals = {(name, r.key): [[] for _ in range(runs)] for name, b in benches for r in b.sel}
    for rnd in range(runs):
        order = benches[rnd % len(benches):] + benches[:rnd % len(benches)]
        for name, b in order:
            ins = []
            for r in b.sel:
                if not r.one_pass:
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
        base = [mean(x) for x in vals[("base", k)]]
        d_floor = statistics.median(a - b for a, b in zip(per, fl)) if fl else float("nan")
        d_base = statistics.median(a - b for a, b in zip(per, base))
        print(f"{name:24s} {k:6s} median {statistics.median(per):7.1f}  -floor {d_floor:6.1f}  -base {d_base:6.1f}")
finally:
    for _, b in benches:
        b.close()
