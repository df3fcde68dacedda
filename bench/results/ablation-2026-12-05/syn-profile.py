"""Where a SYN's time goes in a warm batch (syn-batch.py's driver, one CPU): perf samples that CPU
while a row's SYNs run (the embryonic table half full, each run's entries deleted), and
lb_xdp_public's JIT image is disassembled (profile.py's jit_image) to count samples per
instruction.  Run from a tree, as root:
  .venv/bin/python bench/results/ablation-2026-12-05/syn-profile.py ROW [SECONDS]  (ROW: rr, dh, wlc, mh)"""
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
sys.path.insert(0, os.getcwd())
from bench import pkt as P  # noqa: E402

src = open("bench/results/ablation-2026-12-04/profile.py").read().replace("\nmain()\n", "\n")
prof: dict = {}
exec(compile(src, "profile.py", "exec"), prof)
key = sys.argv[1]
secs = float(sys.argv[2]) if len(sys.argv) > 2 else 4
table = int(sys.argv[3]) if len(sys.argv) > 3 else P.DEFAULT_TABLE
cpu = 1
os.sched_setaffinity(0, {cpu})
b = P.Bench(table)
try:
    m = b.insert_map; size = m.max_entries
    b.clear(m); b.fill(m, int(size * P.FILL))
    syn = {k: v for k, _s, _n, v in P.SYN_SERVICES}
    vip = syn[key]
    b.bpf[b"drv_next"][0] = b.dp.fns["lb_xdp_public"].fd
    n = 4096
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "perf.data")
    perf = subprocess.Popen(["perf", "record", "-q", "-C", str(cpu), "-o", data, "--", "sleep", str(secs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    pk, ns = 0, 0.0
    while time.monotonic() - t0 < secs + 0.5:
        fd = b.driver(cpu, 0, b.drv_base(cpu))
        frame = P.frames(vip, 80, "S", b.drv_flows(cpu, 0, 1))[0]
        r = b.on_cpus(fd, frame, [cpu], n, n)
        pk += n; ns += n * 1e3 / r["mpps"]
        m.delete_many(P.conn_keys(b.drv_flows(cpu, 0, r["done"][cpu]), vip, 80))
    perf.wait()
    print(f"{key}: {ns / pk:.1f} ns/packet (kernel measure), {pk} packets")
    script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym,symoff"], capture_output=True, text=True).stdout
    with open(os.path.join(tmp, "jit.bin"), "wb") as f:
        f.write(prof["jit_image"](b.dp.fns["lb_xdp_public"].fd))
    asm = subprocess.run(["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", os.path.join(tmp, "jit.bin")], capture_output=True, text=True).stdout
finally:
    b.close()
offs: collections.Counter = collections.Counter()
total = 0
for line in script.splitlines():
    line = line.strip()
    if not line:
        continue
    total += 1
    sym = line.split()[-1]
    if "_lb_xdp_public+0x" in sym:
        offs[int(sym.split("+0x")[1], 16)] += 1
wall = secs * 1e9
insn = {int(mm.group(1), 16): mm.group(2).strip() for mm in
        (re.match(r"\s*([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s*(.*)", ln) for ln in asm.splitlines()) if mm}
addrs = sorted(insn)
own = sum(offs.values())
print(f"own {own} samples = {own / total * wall / pk:.1f} ns/packet")
for off, c in offs.most_common(25):
    i = addrs.index(off) if off in insn else None
    ctx = " | ".join(f"{a:x}: {insn[a]}" for a in addrs[max(0, i - 3):i + 1]) if i is not None else "?"
    print(f"{c / total * wall / pk:6.1f} ns +0x{off:x}  {ctx}")
