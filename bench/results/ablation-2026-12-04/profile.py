"""Where in lb_xdp_public a bench pkt row's time goes: the row's packets run for a few seconds on
one CPU (the bench's own harness and tables: a SYN row in the big block's tables (524,288 embryonic entries), with the insert table half full and each
round's entries deleted after it, an established row as primed by its handshakes) while `perf
record` samples that CPU; then lb_xdp_public's JIT image (BPF_OBJ_GET_INFO_BY_FD: this bpftool has
no disassembler) is disassembled with objdump and its samples counted per instruction.
Run from a tree, as root: .venv/bin/python bench/results/ablation-2026-12-04/profile.py ROW [seconds]
(ROW: a SYN row's key -- dh, wlc, floor, ... -- or dr1, drmany)"""
import collections
import ctypes
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, ".")
from bench import pkt as P  # noqa: E402

CPU = 1


def jit_image(prog_fd: int) -> bytes:
    """the program's JITed bytes: BPF_OBJ_GET_INFO_BY_FD, jited_prog_len at 16, jited_prog_insns at 24"""
    libc = ctypes.CDLL(None, use_errno=True)

    def info(jlen=0, buf=None):
        b = bytearray(256)
        struct.pack_into("<I", b, 16, jlen)
        struct.pack_into("<Q", b, 24, ctypes.addressof(buf) if buf is not None else 0)
        ib = ctypes.create_string_buffer(bytes(b), 256)
        attr = ctypes.create_string_buffer(struct.pack("<IIQ", prog_fd, 256, ctypes.addressof(ib)), 16)
        if libc.syscall(321, 15, attr, 16) < 0:       # bpf(BPF_OBJ_GET_INFO_BY_FD)
            raise OSError(ctypes.get_errno(), "BPF_OBJ_GET_INFO_BY_FD")
        return ib.raw
    jlen = struct.unpack_from("<I", info(), 16)[0]
    buf = ctypes.create_string_buffer(jlen)
    info(jlen, buf)
    return buf.raw


def main():
    key, secs = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 6
    os.sched_setaffinity(0, {CPU})
    est = key in ("dr1", "drmany")
    b = P.Bench(P.DEFAULT_TABLE if est else P.BIG_TABLE)   # the README's rows: SYNs at 524,288
    try:
        if est:
            rows = b.established(10000)
            per = None
        else:
            rows, per = b.new_conns(15, 2000)
        r = next(x for x in rows if x.key == key)
        stop = threading.Event()
        done = [0]

        def load():
            while not stop.is_set():
                if per:
                    for rnd in range(15):
                        b.run(r.fd, r.frames[rnd * per:(rnd + 1) * per], per)
                        b.insert_map.delete_many(r.keys[rnd * per:(rnd + 1) * per])
                        done[0] += per
                else:
                    b.run(r.fd, r.frames, 20000)
                    done[0] += 20000
        t = threading.Thread(target=load)
        t.start()
        time.sleep(1)
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "perf.data")
            n0, t0 = done[0], time.monotonic()
            subprocess.run(["perf", "record", "-q", "-C", str(CPU), "-o", data, "--", "sleep", str(secs)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            n1, t1 = done[0], time.monotonic()
            stop.set()
            t.join()
            script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym,symoff"], capture_output=True,
                                    text=True).stdout
            binf = os.path.join(tmp, "jit.bin")
            with open(binf, "wb") as f:
                f.write(jit_image(b.dp.fns["lb_xdp_public"].fd))
            asm = subprocess.run(["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", binf],
                                 capture_output=True, text=True).stdout
        each = (t1 - t0) / max(1, n1 - n0) * 1e9      # the CPU's time per packet, deletes and all
        print(f"row {key} ({r.name}): {n1 - n0} packets while sampled, {each:.0f} ns of the CPU's time each "
              f"(the test-run syscalls, the bench's deletes); last {b.last_action}")
        syms = collections.Counter()
        offs = collections.Counter()
        for line in script.splitlines():
            line = line.strip()
            if not line:
                continue
            sym = line.split()[-1].split("+")[0]
            syms[re.sub(r"^bpf_prog_[0-9a-f]+_", "bpf_prog_", sym)] += 1
            if sym.endswith("_lb_xdp_public") and "+0x" in line:
                offs[int(line.split("+0x")[1], 16)] += 1
        total, own = sum(syms.values()), sum(offs.values())
        print(f"{total} samples; lb_xdp_public's own {own} ({100 * own / total:.1f}%)")
        for s, n in syms.most_common(12):
            print(f"  {100 * n / total:5.1f}%  ~{each * n / total:4.0f} ns  {s}")
        insn = {int(m.group(1), 16): m.group(2).strip() for m in
                (re.match(r"\s*([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s*(.*)", ln) for ln in asm.splitlines()) if m}
        addrs = sorted(insn)
        print("lb_xdp_public's hottest instructions (a sample lands on the one after a load that waited):")
        for off, n in offs.most_common(8):
            i = addrs.index(off) if off in insn else None
            ctx = " | ".join(f"{a:x}: {insn[a]}" for a in addrs[max(0, i - 2):i + 2]) if i is not None else "?"
            print(f"  {100 * n / own:5.1f}% of its own, ~{each * n / total:.0f} ns a packet  +0x{off:x}   {ctx}")
    finally:
        b.close()


main()
