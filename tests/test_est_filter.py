"""The established filter (bpf/lb_embryo.h): a pure SYN looks in lb_conns only when
lb_est_filter says its key may be there.  A missing bit would show as a SYN inside a live
connection scheduled afresh, to another real server (or a reused port's TIME_WAIT entry left
behind).  So: a live entry's bit is never missing -- after BPF's promotion, after an import (HA
sync), after the sweep's census, after an adopting daemon's rebuild -- and the census drops the
bits of entries that are gone.  Through BPF_PROG_TEST_RUN: bytes out of lb_xdp_public."""
from __future__ import annotations

import ipaddress
from array import array

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from packets_util import CLIENT_MAC, PUB_MAC, XDP_REDIRECT, age, loaded_dataplane, real_mac, run

ip = ipaddress.ip_address
REALS = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]
VIP, CLIENT = "198.18.0.10", "198.18.0.2"
SLOTS = range(L.EST_BITMAPS)


@pytest.fixture
def dp():
    with loaded_dataplane("estf") as d:
        reals = tuple(RealSpec(ip(a), 80, 1, "dr") for a in REALS)
        d.apply(TableSpec((ServiceSpec("tcp", ip(VIP), 80, "rr", reals, "web"),)))
        yield d


def send(dp, sport: int, flags: str) -> str:
    """the real server lb_xdp_public sent the client's packet to"""
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags=flags)
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    return {real_mac(a): a for a in REALS}[Ether(out).dst]


def key(sport: int) -> bytes:
    return L.ConnKey(ip(CLIENT), ip(VIP), sport, 80, 6).pack()


def bit(dp, sport: int) -> int:
    return L.est_filter_bit(key(sport), dp.sizes.est_filter_bits)


def bits(dp, slot: int) -> set[int]:
    """the bits set in one bitmap, read entry by entry through the map (not lb's shared mapping):
    entry i holds word i of each bitmap (struct lb_est_word)"""
    words = [(int.from_bytes(k, "little"), L.EST_WORD.unpack(v)[slot]) for k, v in dp.maps["lb_est_filter"].items()]
    return {i * 64 + b for i, w in words if w for b in range(64) if w >> b & 1}


def marks_slot(dp) -> int:
    return L.EST_MARKS + (L.U32.unpack(dp.maps["lb_globals"].get(L.U32.pack(L.G_EST_WRITE)))[0] & 1)


def clear_filter(dp) -> None:
    m = dp.maps["lb_est_filter"]
    m.set_many([L.U32.pack(i) for i in range(m.max_entries)], [bytes(m.value_size)] * m.max_entries)


def test_promotion_marks_the_bit_python_computes_and_the_sweep_moves_it_to_the_census(dp):
    first = send(dp, 41000, "S")
    assert all(not bits(dp, s) for s in SLOTS)             # embryonic: not in lb_conns, no bit
    assert send(dp, 41000, "A") == first                   # established: promoted to lb_conns
    marked = marks_slot(dp)
    assert bits(dp, marked) == {bit(dp, 41000)}            # BPF's lb_est_bit == layout.est_filter_bit
    assert send(dp, 41000, "S") == first                   # a SYN inside a live connection: same server
    dp.sweep()
    assert bits(dp, L.EST_CENSUS) == {bit(dp, 41000)}
    assert not bits(dp, marked)                            # the promotions' old bitmap, cleared
    assert marks_slot(dp) != marked                        # ... and no longer the one marked
    assert send(dp, 41000, "S") == first


def _record(sport: int, real: str) -> tuple:
    """an established connection as the peer director exports it (ConnTable.export_conns)"""
    return (6, ip(CLIENT), sport, ip(VIP), 80, ip(real), 80, L.TCP_S["ESTABLISHED"], 0, 0, 900,
            bytes.fromhex(CLIENT_MAC.replace(":", "")))


def test_synced_connections_are_found_by_their_syns(dp):
    """Three connections synced to one real server: were their SYNs scheduled, rr would spread
    them over all three."""
    ports = (42000, 42001, 42002)
    assert dp.import_conns([_record(p, REALS[1]) for p in ports], [], 7, bytes(6)) == (3, 0)
    assert {send(dp, p, "S") for p in ports} == {REALS[1]}           # the import's census bits
    dp.sweep()
    assert {send(dp, p, "S") for p in ports} == {REALS[1]}           # the sweep's census
    clear_filter(dp)                   # as a table filled by a version without the filter
    dp.conns.est_rebuild()
    assert {send(dp, p, "S") for p in ports} == {REALS[1]}           # an adopting daemon's rebuild
    # and the filter is what finds them: with every bit cleared, a SYN skips lb_conns
    clear_filter(dp)
    assert {send(dp, p, "S") for p in ports} == set(REALS)


def test_connections_synced_while_the_sweeps_scan_runs_keep_their_bits(dp):
    """The engine runs the sweep's scan without its lock (lb.engine Engine.sweep), so an HA
    import may land between the dump and the census: its keys' bits are not in the scan's
    census, which must not replace the one the import marked -- the next sweep's census has
    them."""
    ports = (42100, 42101, 42102)
    sp = dp.sweep_scan(dp.sweep_begin())
    assert dp.import_conns([_record(p, REALS[1]) for p in ports], [], 7, bytes(6)) == (3, 0)
    dp.sweep_end(sp)
    assert {send(dp, p, "S") for p in ports} == {REALS[1]}
    dp.sweep()
    dp.sweep()                         # both bitmaps of promotions cleared since: the census's
    assert {bit(dp, p) for p in ports} <= bits(dp, L.EST_CENSUS)
    assert {send(dp, p, "S") for p in ports} == {REALS[1]}


def test_reused_port_after_the_census_expires_the_old_entry(dp):
    """IPVS conn_reuse_mode: a SYN into a CLOSEd connection (found through the census, its
    promotion's mark cleared by the sweep) expires it and is scheduled afresh"""
    first = send(dp, 43000, "S")
    send(dp, 43000, "A")
    send(dp, 43000, "R")
    dp.sweep()
    dp.sweep()                         # both bitmaps of promotions cleared since
    assert not bits(dp, L.EST_MARKS) and not bits(dp, L.EST_MARKS + 1)
    second = send(dp, 43000, "S")
    assert second != first
    assert dp.maps["lb_conns"].get(key(43000)) is None     # the old entry expired, not left behind
    assert dp.maps["lb_conns_embryo"].get(key(43000)) is not None


def test_census_drops_the_bits_of_gone_connections(dp):
    for sport in (44000, 44001):
        send(dp, sport, "S")
        send(dp, sport, "A")
    dp.sweep()
    assert bits(dp, L.EST_CENSUS) == {bit(dp, 44000), bit(dp, 44001)}
    age(dp, 3600)                      # past every timeout: the next sweep expires them
    dp.sweep()
    assert dp.maps["lb_conns"].get(key(44000)) is None
    assert all(not bits(dp, s) for s in SLOTS)


def test_the_sweeps_census_in_c_sets_the_bits_bpf_tests():
    """lb._bpfbatch's bb_est_census (what the sweep runs) and layout.est_filter_bit (which the
    promotion test above holds to BPF's lb_est_bit) agree, IPv4 and IPv6 keys alike"""
    import random

    from lb.dataplane import conntable

    rnd = random.Random(7)
    keys = [L.ConnKey(ip(f"198.18.{rnd.randrange(256)}.{rnd.randrange(256)}"), ip(VIP), rnd.randrange(65536), 80,
                      6).pack() for _ in range(500)]
    keys += [L.ConnKey(ip(f"2001:2::{rnd.randrange(65536):x}"), ip("2001:2::10"), rnd.randrange(65536), 443,
                       17).pack() for _ in range(500)]
    assert conntable._bpfbatch is not None          # the C path is the one tested
    for bits in (16, 20, 25):
        words = conntable.est_bitmap(keys, bits, array("Q", bytes((1 << bits) // 8)))
        got = {i * 64 + b for i, w in enumerate(words) if w for b in range(64) if w >> b & 1}
        assert got == {L.est_filter_bit(k, bits) for k in keys}
