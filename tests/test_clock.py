"""The data path's clock (bpf/lb_clock.h): bpf_ktime_get_coarse_ns() read through a per-CPU cache
that is refreshed when the jiffy moves.  What a user relies on: a new connection's timestamp is
the coarse monotonic clock's (lb list's expiry, the sweep, HA sync all compare with it), and it
moves on -- a stuck cache would make every connection look as old as the daemon."""
from __future__ import annotations

import ipaddress
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from packets_util import CLIENT_MAC, PUB_MAC, XDP_REDIRECT, conn_get, loaded_dataplane, run

ip = ipaddress.ip_address
VIP, CLIENT = "198.18.0.10", "198.18.0.2"
COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)
TICK_NS = 10_000_000               # a jiffy at HZ=100, the coarsest kernel tick


def _new_conn_ns(dp, sport: int) -> int:
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags="S")
    rc, _ = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    return L.Conn.unpack(conn_get(dp.maps, L.ConnKey(ip(CLIENT), ip(VIP), sport, 80, 6).pack())).last_ns


def test_connection_timestamps_follow_the_coarse_clock():
    with loaded_dataplane("clock") as dp:
        dp.apply(TableSpec((ServiceSpec("tcp", ip(VIP), 80, "rr", (RealSpec(ip("198.18.1.11"), 80, 1, "dr"),),
                                        "web"),)))
        seen = []
        for i in range(3):
            before = time.clock_gettime_ns(COARSE)
            stamp = _new_conn_ns(dp, 45000 + i)
            after = time.clock_gettime_ns(COARSE)
            assert before - TICK_NS <= stamp <= after, (before, stamp, after)
            seen.append(stamp)
            time.sleep(0.05)           # several jiffies: the cache must be read afresh
        assert seen[0] < seen[1] < seen[2]
