"""The expiry sweep at N connections: the C scan against the Python pass, plain and persistent (see sweep-ab.txt)"""
import dataclasses
import sys
import time

sys.path.insert(0, ".")
from bench import ctl
from lb.dataplane import conntable, layout as L
from lb.dataplane import TableSpec
n = int(sys.argv[1])
c = ctl.Ctl(10, 8, n)
real = conntable._bpfbatch
def timed(py):
    conntable._bpfbatch = None if py else real
    try:
        t0 = time.perf_counter()
        c.dp.sweep()
        return time.perf_counter() - t0
    finally:
        conntable._bpfbatch = real
try:
    tab = ctl.table(10, 8)
    c.dp.apply(tab)
    c.fill_conns(n)
    for rnd in range(3):
        print(f"plain n={n} C {timed(False):.3f}s  Python {timed(True):.3f}s", flush=True)
    # persistent services: every connection flagged (its template absent: the sweep still maps each)
    ptab = TableSpec(tuple(dataclasses.replace(s, persistent=300) for s in tab.services))
    c.dp.apply(ptab)
    m = c.dp.maps["lb_conns4"]
    from lb import _bpfbatch
    ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
    keys, vals, cnt = m.dump()
    vs = m.value_size
    vb = bytearray(ffi.buffer(vals, cnt * vs))
    flag_off = dict((f, o) for f, o, _ in L.CONN.fields)["flags"]
    for i in range(cnt):
        vb[i * vs + flag_off] |= L.CONN_F_PERSIST
    lib.bb_update(m.fd, m.key_size, vs, keys, ffi.from_buffer(vb), cnt)
    # one template so the sweep has templates (and maps every persistent connection to its own)
    rid = next(iter(c.dp.reals))
    c.dp.maps["lb_persist"].set(L.PERSIST_KEY.pack(b"\1" * 16, b"\2" * 16, b"\0\x50", 6, 2, 0),
                                L.PERSIST.pack(time.clock_gettime_ns(6), rid, 300))
    for rnd in range(3):
        print(f"persistent n={n} C {timed(False):.3f}s  Python {timed(True):.3f}s", flush=True)
finally:
    c.close()
