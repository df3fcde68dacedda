"""The expiry sweep at N connections, every one persistent and its client's template present: the
template mapping in C (bb_sweep_controlling) against the C scan with the mapping in Python (the
build before it: the module without bb_sweep_controlling) and the all-Python pass (see
sweep-persist-ab.txt)"""
import dataclasses
import sys
import time
import types

sys.path.insert(0, ".")
from bench import ctl
from lb.dataplane import conntable, layout as L
from lb.dataplane import TableSpec

n = int(sys.argv[1])
c = ctl.Ctl(10, 8, n)
real = conntable._bpfbatch


class Older:                          # the module as built before bb_sweep_controlling
    def __getattr__(self, name):
        if name == "bb_sweep_controlling":
            raise AttributeError(name)
        return getattr(real.lib, name)


def timed(way):
    conntable._bpfbatch = {"c": real, "scan": types.SimpleNamespace(ffi=real.ffi, lib=Older()), "py": None}[way]
    try:
        t0 = time.perf_counter()
        c.dp.sweep()
        return time.perf_counter() - t0
    finally:
        conntable._bpfbatch = real


try:
    tab = ctl.table(10, 8)
    ptab = TableSpec(tuple(dataclasses.replace(s, persistent=300) for s in tab.services))
    c.dp.apply(ptab)
    c.fill_conns(n)
    m = c.dp.maps["lb_conns4"]
    ffi, lib = real.ffi, real.lib
    keys, vals, cnt = m.dump()
    ks, vs = m.key_size, m.value_size
    kb, vb = bytes(ffi.buffer(keys, cnt * ks)), bytearray(ffi.buffer(vals, cnt * vs))
    flag_off = dict((f, o) for f, o, _ in L.CONN.fields)["flags"]
    # every connection persistent; a template per client and service, with its first connection's real
    temps = {}
    for i in range(cnt):
        vb[i * vs + flag_off] |= L.CONN_F_PERSIST
        k4 = kb[i * ks:(i + 1) * ks]
        last, rid, sid = L.CONN.unpack(bytes(vb[i * vs:(i + 1) * vs]))[:3]
        ck = L.ConnKey.unpack(L.conn_key_of4(k4))
        temps.setdefault((ck.saddr, ck.daddr), rid)
    lib.bb_update(m.fd, ks, vs, keys, ffi.from_buffer(vb), cnt)
    now = time.clock_gettime_ns(6)
    for (caddr, vaddr), rid in temps.items():
        c.dp.maps["lb_persist"].set(L.PERSIST_KEY.pack(L.pack_addr(caddr), L.pack_addr(vaddr), b"\0\x50", 6, L.AF_INET, 0),
                                    L.PERSIST.pack(now, rid, 300))
    print(f"# {cnt} connections, all persistent; {len(temps)} templates", flush=True)
    for rnd in range(3):
        print(f"persistent n={n} C mapping {timed('c'):.3f}s  C scan + Python mapping {timed('scan'):.3f}s  "
              f"Python {timed('py'):.3f}s", flush=True)
finally:
    c.close()
