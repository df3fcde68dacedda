"""Helpers for packet tests: a data plane loaded with fixed next hops, run through
BPF_PROG_TEST_RUN (no interfaces, no traffic leaves the kernel's test harness)."""
from __future__ import annotations

import contextlib
import ipaddress
import os
import struct
from typing import Iterator

from lb import listing
from lb.dataplane import reader
from lb.dataplane.bpfsys import prog_test_run
from lb.dataplane.maps import PinnedMaps
from lb.dataplane.mhtable import open_table
from lb.dataplane.nexthop import NextHop
from lb.dataplane.spec import TableSpec
from lb.dataplane.xdp import Sizes, XdpDataplane

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

CLIENT_MAC = "02:00:00:00:00:02"      # the client (or its router) as seen on pub0
PUB_MAC = "02:00:00:00:01:01"         # director pub0
PRIV_MAC = "02:00:00:00:01:02"        # director priv0
PRIV_IFINDEX = 7                      # != the test run's ingress (lo): forwarding is a redirect


def real_mac(addr) -> str:
    last = int(ipaddress.ip_address(addr)) & 0xFF
    return f"02:00:00:00:02:{last:02x}"


PRIV_MTU = 1500                       # priv0's MTU (a tunnel's outer header must fit in it)
PRIV_ADDR = {4: ipaddress.ip_address("198.18.1.1"), 6: ipaddress.ip_address("2001:2:0:1::1")}   # ours on priv0


def fake_resolver(addr, need_onlink=False):
    mac = bytes.fromhex(real_mac(addr).replace(":", ""))
    return NextHop(PRIV_IFINDEX, "priv0", mac, bytes.fromhex(PRIV_MAC.replace(":", "")), True,
                   PRIV_ADDR[ipaddress.ip_address(addr).version], PRIV_MTU)


@contextlib.contextmanager
def loaded_dataplane(name: str, sizes: Sizes | None = None, table: TableSpec | None = None,
                     keep_bcc: bool = False) -> Iterator[XdpDataplane]:
    """A data plane loaded under a per-process pin directory (with `table` applied), unpinned and
    closed afterwards, also when loading fails: bcc pins the maps before the verifier has its say.
    keep_bcc: compiled afresh (not from the compile cache) and bcc's module kept (dp.bpf)."""
    dp = XdpDataplane(f"{name}{os.getpid()}", sizes or Sizes(16, 4096, 16, 4096), resolver=fake_resolver,
                      keep_bcc=keep_bcc)
    try:
        dp.load()
        if table is not None:
            dp.apply(table)
        yield dp
    finally:
        dp.unpin()
        dp.close()


# every map the control plane writes (the data path's own: lb_conns, lb_persist, counters, are
# not a table); the mh tables by content
TABLE_MAPS = ("lb_services", "lb_svc", "lb_sched_state", "lb_svc_dests", "lb_sched_buckets", "lb_reals",
              "lb_real_conns", "lb_real_swept", "lb_real_base", "lb_real_overload", "lb_real_stats",
              "lb_real_rates", "lb_svc_stats", "lb_svc_rates", "lb_fwm_ranges", "lb_fwm_services", "lb_globals",
              "lb_timeouts", "lb_mh_last", "lb_lblc", "lb_lblcr", "lb_vip_addrs")


def maps_now(dp: XdpDataplane) -> dict:
    """The content of every map of TABLE_MAPS, and of each mh table (by service id)."""
    out = {name: sorted(dp.maps[name].items(batch=False)) for name in TABLE_MAPS}
    tables = {}
    for k, v in dp.maps["lb_mh_tables"].items(batch=False):
        m = open_table(int.from_bytes(v, "little"))
        try:
            tables[k] = [m.get(i.to_bytes(4, "little")) for i in range(m.max_entries)]
        finally:
            m.close()
    out["mh tables"] = sorted(tables.items())
    return out


def csum_fold(s: int) -> int:
    """a one's complement sum folded to 16 bits (not complemented)"""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo_sum(saddr: bytes, daddr: bytes, proto: int, seglen: int) -> int:
    """What a sender with tx checksum offload leaves in the TCP/UDP checksum field: the pseudo
    header's sum, folded, not complemented (the kernel's ~csum_tcpudp_magic).  saddr/daddr packed,
    4 or 16 bytes (IPv6's 32-bit length and next header sum as these two 16-bit words do)."""
    addrs = saddr.ljust(16, b"\0") + daddr.ljust(16, b"\0")
    return csum_fold(sum(struct.unpack("!16H", addrs)) + proto + seglen)


def lb_list(dp: XdpDataplane) -> str:
    """`lb list -n` of the data plane's pinned maps."""
    with PinnedMaps(dp.instance) as maps:
        return listing.format_services(reader.read_services(maps))


def run(dp: XdpDataplane, prog: str, pkt) -> tuple[int, bytes]:
    rc, out, _ = prog_test_run(dp.fns[prog].fd, bytes(pkt))
    return rc, out


def connect(dp: XdpDataplane, vip="198.18.0.10", sport=40000) -> str:
    """An established TCP connection from the client (198.18.0.2) to vip:80, through
    lb_xdp_public (SYN, then ACK): the real server (198.18.1.x) it went to."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    for flags in ("S", "A"):
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst=vip) / TCP(sport=sport, dport=80,
                                                                                      flags=flags)
        rc, out = run(dp, "lb_xdp_public", pkt)
        assert rc == XDP_REDIRECT
    return {real_mac(f"198.18.1.{n}"): f"198.18.1.{n}" for n in range(1, 255)}[Ether(out).dst]


CONN_TABLES = ("lb_conns", "lb_conns_embryo")        # established, embryonic (bpf/lb_embryo.h)
TEMPLATE_TABLES = ("lb_persist", "lb_persist_embryo")


def conn_items(maps) -> list[tuple[bytes, bytes]]:
    """(key, value) of every entry of both connection tables (maps: a data plane's maps or
    PinnedMaps)"""
    return [kv for name in CONN_TABLES for kv in maps[name].items(batch=False)]


def template_items(maps) -> list[tuple[bytes, bytes]]:
    """(key, value) of every persistence template, established or embryonic"""
    return [kv for name in TEMPLATE_TABLES for kv in maps[name].items(batch=False)]


def conn_get(maps, key: bytes) -> bytes | None:
    """a connection's value, from whichever table holds it"""
    for name in CONN_TABLES:
        raw = maps[name].get(key)
        if raw is not None:
            return raw
    return None


def age(dp: XdpDataplane, seconds: float) -> None:
    """Time passes for the data plane's entries: every connection's and persistence template's
    timestamp moves `seconds` back, so the data path (and lb's sweep) find them as old as that
    -- a timeout is tested without waiting for it."""
    import struct

    from lb.dataplane import layout as L

    ns = int(seconds * 1e9)
    for name in (*CONN_TABLES, *TEMPLATE_TABLES):
        m = dp.maps[name]
        for k, v in list(m.items()):
            (last,) = struct.unpack_from("=Q", v)
            # on a machine up for less than `seconds` the stamp wraps, and is still that old
            m.set(k, struct.pack("=Q", L.stamp_ago(last, ns)) + v[8:])


def seconds_since(t0: float) -> int:
    """Whole seconds (rounded up) since time.monotonic() read t0: how much further a
    connection's timer stamped after t0 may have run by now on a loaded machine.  A timer
    check asserts `left <= T - 1 and left + seconds_since(t0) >= T - 1` (`lb list -c` prints
    T - 1 a moment after the packet), not that the machine was quick."""
    import math
    import time

    return math.ceil(time.monotonic() - t0)


def client6(n: int) -> str:
    """An IPv6 client address from an integer in [2, ff00::): not a martian -- ::, ::1, ff00::/8
    are out of that range, and one in the IPv4-mapped ::ffff:0:0/96 moves to ::1:ffff:0:0/96 --
    which lb_not_routable (bpf/lb_parse.h) passes to the kernel, as ip6_rcv_core drops it."""
    return str(ipaddress.IPv6Address(n + (1 << 48) if n >> 32 == 0xFFFF else n))
