"""The expiry sweep's pass over the connection tables runs in C (cext/bpfbatch.c bb_sweep_scan:
1M entries took ~3 s of a core every 5 s in Python).  Two data planes get the same traffic and
the same aging -- live, expired and embryonic connections, NAT reverse entries outliving their
timeout, persistence templates past theirs with connections still controlling them, a stamp
ahead of the clock, IPv4 and IPv6 -- and one is swept in C, the other by the Python pass
(lb._bpfbatch absent): the tables, the templates, the counters' correction (S0 - W: C's
bb_sweep_recount against counts_snapshot and the census dicts), the established
filter's census and the embryonic table's count come out the same."""
from __future__ import annotations

import dataclasses
import ipaddress
import types

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import conntable
from lb.dataplane import layout as L
from packets_util import CLIENT_MAC, PUB_MAC, XDP_REDIRECT, age, loaded_dataplane, run

ip = ipaddress.ip_address
PERSIST_VIP, DR_VIP, NAT_VIP, VIP6 = "198.18.0.10", "198.18.0.11", "198.18.0.20", "2001:2::10"
MASKED_VIP, PERSIST_VIP6 = "198.18.0.12", "2001:2::12"
TABLE = TableSpec((
    ServiceSpec("tcp", ip(PERSIST_VIP), 80, "rr", tuple(RealSpec(ip(a), 80, 1, "dr") for a in ("198.18.1.11", "198.18.1.12")),
                persistent=300),
    # a client's /28 shares a template; IPv6 clients by their /64
    ServiceSpec("tcp", ip(MASKED_VIP), 80, "rr", tuple(RealSpec(ip(a), 80, 1, "dr") for a in ("198.18.1.15", "198.18.1.16")),
                persistent=300, pmask="255.255.255.240"),
    ServiceSpec("tcp", ip(PERSIST_VIP6), 80, "rr", tuple(RealSpec(ip(a), 80, 1, "dr") for a in ("2001:2:0:1::15", "2001:2:0:1::16")),
                persistent=300, pmask=64),
    ServiceSpec("tcp", ip(DR_VIP), 80, "rr", tuple(RealSpec(ip(a), 80, 1, "dr") for a in ("198.18.1.13", "198.18.1.14"))),
    ServiceSpec("tcp", ip(NAT_VIP), 80, "rr", (RealSpec(ip("198.18.1.21"), 8080, 1, "nat"),)),
    ServiceSpec("tcp", ip(VIP6), 80, "rr", (RealSpec(ip("2001:2:0:1::11"), 80, 1, "dr"),)),
))


def send(dp, client: str, vip: str, sport: int, flags: str) -> None:
    l3 = IPv6 if ":" in vip else IP
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / l3(src=client, dst=vip) / TCP(sport=sport, dport=80, flags=flags)
    assert run(dp, "lb_xdp_public", pkt)[0] == XDP_REDIRECT


def populate(dp) -> None:
    """the same connections and templates, aged the same way, in any data plane of TABLE"""
    def connect(i, vip, handshake=True):
        client = f"2001:2::1:{i:x}" if ":" in vip else f"198.18.2.{i}"
        send(dp, client, vip, 30000 + i, "S")
        if handshake:
            send(dp, client, vip, 30000 + i, "A")

    for i in range(1, 31):
        connect(i, DR_VIP, handshake=i > 10)          # 10 embryonic (SYN_RECV), 20 established
    for i in range(40, 50):
        connect(i, PERSIST_VIP)                       # their templates
    for i in range(50, 55):
        connect(i, PERSIST_VIP, handshake=False)      # embryonic, their templates in lb_persist_embryo
    for i in range(1, 40, 3):
        connect(i, MASKED_VIP)                        # 13 clients in three /28s: three templates
    for i in range(1, 7):
        connect(i, PERSIST_VIP6)
    for i in range(60, 70):
        connect(i, NAT_VIP)                           # and their reverse entries
    for i in range(80, 85):
        connect(i, VIP6)
    # 400 s on: the embryonic connections (60 s) and the reverse entries (SYN_RECV's 60 s) ran
    # out, the established ones (900 s) did not, the templates (300 s) did -- with connections
    # still controlling them, but the embryonic ones' ran out before theirs did
    age(dp, 400)
    for i in range(100, 105):
        connect(i, DR_VIP)                            # new since
    # one entry stamped ahead of the clock (written from the precise clock): live, not expired
    m = dp.maps["lb_conns"]
    k, v = next((k, v) for k, v in m.items() if not L.ConnKey.unpack(k).dir)
    c = L.Conn.unpack(v)
    m.set(k, dataclasses.replace(c, last_ns=c.last_ns + 10**12).pack())


def state(dp) -> dict:
    """what a sweep leaves, less the timestamps (the two data planes' clocks read apart)"""
    def conns(name):
        return sorted((k, c.real, c.svc, c.timeout, c.state, c.flags)
                      for k, c in ((k, L.Conn.unpack(v)) for k, v in dp.maps[name].items()))

    def templates(name):
        return sorted((k, real, raw) for k, (_, real, raw) in
                      ((k, L.PERSIST.unpack(v)) for k, v in dp.maps[name].items()))

    swept = {rid: dp.maps["lb_real_swept"].get(L.U32.pack(rid)) for rid in dp.reals}
    census = list(dp.conns._est_words()[L.EST_CENSUS::conntable.EST_STRIDE])
    return {"lb_conns": conns("lb_conns"), "lb_conns_embryo": conns("lb_conns_embryo"),
            "lb_persist": templates("lb_persist"), "lb_persist_embryo": templates("lb_persist_embryo"),
            "swept": swept, "est_census": census, "embryo_entries": (dp.conns.embryo_census or (None,))[0]}


def test_the_sweep_in_c_leaves_what_the_python_pass_leaves(monkeypatch):
    assert conntable._bpfbatch is not None, "lb._bpfbatch is built by the install (make setup)"
    real = conntable._bpfbatch
    calls = []

    class Lib:                                     # the C scan, counted
        def __getattr__(self, name):
            return getattr(real.lib, name)

        def bb_sweep_scan(self, *a):
            calls.append(a[2])                     # the entries it scanned
            return real.lib.bb_sweep_scan(*a)

        def bb_sweep_controlling(self, *a):
            mapped.append(real.lib.bb_sweep_controlling(*a))
            return mapped[-1]

        def bb_sweep_recount(self, *a):
            recounted.append(real.lib.bb_sweep_recount(*a))     # the real servers corrected
            return recounted[-1]

    mapped, recounted = [], []
    with loaded_dataplane("swc", table=TABLE) as in_c, loaded_dataplane("swpy", table=TABLE) as in_py:
        populate(in_c)
        populate(in_py)
        for dp in (in_c, in_py):          # three connections counted and gone uncounted (an eviction's)
            rid = next(rid for rid, r in dp.reals.items() if str(r.addr) == "198.18.1.13")
            m, k = dp.maps["lb_real_conns"], L.U32.pack(rid)
            v = L.REAL_CONNS.unpack(m.get(k))
            m.set(k, L.REAL_CONNS.pack(v[0] + 3, *v[1:]))
        before = state(in_c)
        assert before["lb_conns_embryo"] and before["lb_persist"] and len(before["lb_persist_embryo"]) == 5
        monkeypatch.setattr(conntable, "_bpfbatch", types.SimpleNamespace(ffi=real.ffi, lib=Lib()))
        n_c = in_c.sweep()
        monkeypatch.setattr(conntable, "_bpfbatch", None)
        n_py = in_py.sweep()
        after_c, after_py = state(in_c), state(in_py)

    assert calls and sum(calls) == len(before["lb_conns"]) + len(before["lb_conns_embryo"]), calls
    # the persistent connections mapped to their templates in C: 10 + 13 + 6 established (the
    # embryonic table's 5 too, though run out: their templates' timers ran out later)
    assert mapped == [29, 5], mapped
    # S0 - W in C once (the Python pass's in counts_snapshot and dicts), a correction for some
    assert len(recounted) == 1 and recounted[0] >= 1, recounted
    assert n_c == n_py == 15, (n_c, n_py)          # the embryonic connections that ran out
    assert after_c == after_py
    # ... and the sweep did each thing this table asks for
    assert not after_c["lb_conns_embryo"] and not after_c["lb_persist_embryo"], \
        "templates whose connections ran out before they did are gone"
    assert len(after_c["lb_persist"]) == 10 + 3 + 1 and all(t == 60 for _, _, t in after_c["lb_persist"]), \
        "templates past their timeout kept 60 s more for the connections they control"
    reverse = [c for c in after_c["lb_conns"] if c[5] & L.CONN_F_OUT]
    assert len(reverse) == 10 and all(t == 900 for _, _, _, t, _, _ in reverse), \
        "the NAT reverse entries took their connections' timeout"
    assert any(after_c["est_census"]) and after_c["embryo_entries"] == 15
    assert any(after_c["swept"].values())


@pytest.mark.parametrize("bits, words", [(0, 64), (33, 64), (12, 8)])
def test_a_scan_refuses_a_filter_it_cannot_fill(bits, words, monkeypatch):
    """bb_sweep_scan writes bit b of the census into words[b >> 6]: a filter whose bits its words
    cannot hold is refused before C writes past them"""
    with loaded_dataplane("swbad", table=TABLE) as dp:
        monkeypatch.setattr(dp.conns, "_est_bits", lambda: bits)
        monkeypatch.setattr(dp.conns, "_est_words", lambda: memoryview(bytearray(8 * words * conntable.EST_STRIDE)).cast("Q"))
        with pytest.raises(ValueError, match="established filter"):
            dp.sweep()
