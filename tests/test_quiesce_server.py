"""quiesce_server: when a real server joins, the schedulers' connection counts of its service
restart from zero (lb_real_base), so lc does not send every new connection to the newcomer;
old connections that end afterwards never make a count wrap around.  Packets go through the
loaded XDP program with BPF_PROG_TEST_RUN."""
from __future__ import annotations

import collections
import ipaddress
import itertools

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from packets_util import CLIENT_MAC, PUB_MAC, XDP_REDIRECT, loaded_dataplane, real_mac, run

VIP = ipaddress.ip_address("198.18.0.31")
A, B = ipaddress.ip_address("198.18.2.11"), ipaddress.ip_address("198.18.2.12")
NAMES = {real_mac(A): "A", real_mac(B): "B"}
_sports = itertools.count(20000)


@pytest.fixture
def dp():
    with loaded_dataplane("qsrv") as d:
        yield d


def spec(port, *reals):
    return ServiceSpec("tcp", VIP, port, "lc", tuple(RealSpec(a, 80, 1, "dr") for a in reals))


def tcp(dp, port, sport, flags):
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst=str(VIP)) / TCP(
        sport=sport, dport=port, flags=flags, seq=1, ack=1 if "A" in flags or "R" in flags else 0)
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    return NAMES[Ether(out).dst]


def open_conns(dp, port, n):
    """n established connections; [(client port, server name)]"""
    out = []
    for _ in range(n):
        sport = next(_sports)
        name = tcp(dp, port, sport, "S")
        assert tcp(dp, port, sport, "A") == name
        out.append((sport, name))
    return out


def rid_of(dp, port, addr):
    st = dp.services[L.SvcKey(L.PROTO_NUMBERS["tcp"], VIP, port)]
    return next(rid for (a, _), rid in st.dests if a == addr)


def base(dp, rid):
    return L.REAL_COUNTS.unpack(dp.maps["lb_real_base"].get(L.U32.pack(rid)))[:2]


def offsets_hold(dp) -> bool:
    """sched_off, what the pick loops take off BPF's counts in the same lb_real_conns entry (read
    here by syscall, as BPF sees it, not through the control plane's mapping), is lb_real_swept +
    lb_real_base for every real server"""
    m = 0xFFFFFFFF
    for rid in dp.reals:
        k = L.U32.pack(rid)
        s, b = (L.REAL_COUNTS.unpack(dp.maps[n].get(k)) for n in ("lb_real_swept", "lb_real_base"))
        o = L.REAL_COUNTS.unpack(L.REAL_CONNS.unpack(dp.maps["lb_real_conns"].get(k))[-1])
        if o[:2] != ((s[0] + b[0]) & m, (s[1] + b[1]) & m):
            return False
    return True


def test_a_joining_server_is_not_flooded_and_old_connections_never_wrap(dp):
    # two services, same history: A holds 4 connections, then B joins; only port 81 restarts
    dp.apply(TableSpec((spec(80, A), spec(81, A))))
    old = {port: open_conns(dp, port, 4) for port in (80, 81)}
    assert all(n == "A" for conns in old.values() for _, n in conns)
    table = TableSpec((spec(80, A, B), spec(81, A, B)))
    dp.apply(table)
    assert dp.restart_sched_counts(table.services[1]) == 4
    a81 = rid_of(dp, 81, A)
    assert base(dp, a81) == (4, 0)
    assert offsets_hold(dp)

    # lc without the restart: the newcomer takes every new connection; with it, they alternate
    assert collections.Counter(n for _, n in open_conns(dp, 80, 4)) == {"B": 4}
    assert [n for _, n in open_conns(dp, 81, 4)] == ["B", "A", "B", "A"]
    # lb list's counts stay true: 4 old + 2 new active connections on A
    assert dp.table.real_conns(a81)[:2] == (6, 0)

    # the 4 old connections on A are reset before the baseline catches up: A's active count
    # would be 2 - 4; it reads 0, so A (overhead 4 inactive) beats B (2 active = 512)
    for sport, _ in old[81]:
        assert tcp(dp, 81, sport, "R") == "A"
    assert dp.table.real_conns(a81)[:2] == (2, 4)
    sport = next(_sports)
    assert tcp(dp, 81, sport, "S") == "A"

    # the baseline follows the old connections: now inactive, then gone
    assert dp.refresh_sched_base() == 4
    assert base(dp, a81) == (0, 4)
    assert offsets_hold(dp)
    dp.sweep(now_ns=2**62)                    # every connection expires
    assert offsets_hold(dp)
    assert dp.refresh_sched_base() == 0
    assert base(dp, a81) == (0, 0) and dp.sched_base == {}
    assert dp.table.real_conns(a81)[:2] == (0, 0)
    assert offsets_hold(dp)
    # what the sweep took off (lb_real_swept) is off the schedulers' counts too: both servers
    # at zero again, lc's tie goes to the first in IPVS's list, the newest (B); were B's swept
    # connections still counted, A would win
    assert [n for _, n in open_conns(dp, 81, 2)] == ["B", "A"]


def test_restart_of_an_unknown_service_does_nothing(dp):
    dp.apply(TableSpec((spec(82, A),)))
    assert dp.restart_sched_counts(spec(83, A)) == 0
    assert dp.sched_base == {}
