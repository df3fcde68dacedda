"""Under attack, no established flow is lost (bpf/lb_embryo.h, lb/dataplane/defense.py), through
the loaded programs with BPF_PROG_TEST_RUN: floods of spoofed SYNs from random sources in
198.18.0.0/15 (lb.lab.flood), ten times the tables' sizes, never evict an established
connection (DR or NAT) or a client's persistence template; only a pure SYN opens a connection;
UDP and secure_tcp's promotions; IPVS's defenses engaging and ending.  Nothing leaves the
kernel's test harness (the lab's flood is tests/test_flood_lab.py)."""
from __future__ import annotations

import ipaddress
import logging
import subprocess
import sys
import time
import zlib

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from lb.config.model import Defense
from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane.defense import DROP_ENTRY_SLICES
from lb.dataplane.xdp import Sizes
from lb.lab import flood

from packets_util import (CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, conn_get,
                          loaded_dataplane, real_mac, run)

ip = ipaddress.ip_address
REALS = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]
VIP_DR, VIP_NAT, VIP_P = "198.18.0.10", "198.18.0.20", "198.18.0.40"
CLIENTS = "198.18.0.0"          # legitimate clients: 198.18.0.x, outside the flood's range
CONNS, EMBRYO = 4096, 1024      # lb_conns, and the embryonic tables (lb_persist: 1024 too)
SIZES = Sizes(16, 256, 16, CONNS, EMBRYO)


def _svc(proto, vip, port, fwd, rport=None, **kw):
    return ServiceSpec(proto, ip(vip), port, "rr", tuple(RealSpec(ip(a), rport or port, 1, fwd) for a in REALS), **kw)


TABLE = TableSpec((
    _svc("tcp", VIP_DR, 80, "dr"), _svc("udp", VIP_DR, 53, "dr"),
    _svc("tcp", VIP_NAT, 80, "nat", 8080), _svc("udp", VIP_NAT, 53, "nat", 5353),
    _svc("tcp", VIP_P, 80, "dr", name="persist", persistent=300),
))


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("flood", sizes=SIZES, table=TABLE) as d:
        yield d


def _client(i: int) -> str:
    """client i (of 250): 198.18.0.x but for the VIPs (a packet from the VIP it is sent to is
    not balanced: bpf/lb.c lb_from_itself)"""
    addrs = [a for a in (ip(CLIENTS) + 2 + n for n in range(256)) if str(a) not in (VIP_DR, VIP_NAT, VIP_P)]
    return str(addrs[i % 250])


def _pkt(src, dst, sport, dport, flags="A", proto="tcp"):
    l4 = TCP(sport=sport, dport=dport, flags=flags, seq=1) if proto == "tcp" else UDP(sport=sport, dport=dport)
    return Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=src, dst=dst) / l4 / b"data"


def _real(out: bytes) -> str:
    return {real_mac(a): a for a in REALS}[Ether(out).dst]


def _send(dp, *a, **kw) -> tuple[int, bytes]:
    return run(dp, "lb_xdp_public", _pkt(*a, **kw))


def _establish(dp, src, vip, sport, dport=80) -> str:
    """SYN, then the client's ACK: an established connection; its real server"""
    rc, out = _send(dp, src, vip, sport, dport, "S")
    assert rc == XDP_REDIRECT
    real = _real(out)
    rc, out = _send(dp, src, vip, sport, dport, "A")
    assert rc == XDP_REDIRECT and _real(out) == real
    return real


def _where(dp, src, vip, sport, dport=80, proto=6) -> str | None:
    key = L.ConnKey(ip(src), ip(vip), sport, dport, proto).pack()
    if dp.maps["lb_conns"].get(key) is not None:
        return "established"
    if dp.maps["lb_conns_embryo"].get(key) is not None:
        return "embryonic"
    return None


def _flood(dp, vip, n, seed, dport=80) -> None:
    blob, size = flood.frames(vip, dport, n, seed)
    flood.run_frames(dp.fns["lb_xdp_public"].fd, blob, size)


def _nat_reply(real, client, sport, flags="A"):
    return Ether(src=real_mac(real), dst=PRIV_MAC) / IP(src=real, dst=client) / \
        TCP(sport=8080, dport=sport, flags=flags, seq=9) / b"reply"


def test_only_a_pure_syn_opens_a_connection(dp):
    before = dp.counters()
    for i, flags in enumerate(("SA", "SR", "SF", "SAF", "SRA")):
        pkt = _pkt(_client(1), VIP_DR, 20000 + i, 80, flags)
        rc, out = run(dp, "lb_xdp_public", pkt)
        assert rc == XDP_PASS and out == bytes(pkt), flags
        assert _where(dp, _client(1), VIP_DR, 20000 + i) is None, flags
    after = dp.counters()
    assert after["tcp_syn_invalid"] == before["tcp_syn_invalid"] + 5
    # ECN's SYN (ECE|CWR) is a pure SYN: it opens one, embryonic until the client's ACK
    rc, _out = _send(dp, _client(1), VIP_DR, 20010, 80, "SEC")
    assert rc == XDP_REDIRECT and _where(dp, _client(1), VIP_DR, 20010) == "embryonic"
    _send(dp, _client(1), VIP_DR, 20010, 80, "A")
    assert _where(dp, _client(1), VIP_DR, 20010) == "established"


def test_syn_flood_ten_times_the_tables_keeps_every_established_connection(dp):
    """Established DR and NAT connections (lb_conns holds them and their reverse entries), then
    10 x the table size of spoofed SYNs to both VIPs: each connection still goes to its real
    server both ways, the flood's embryos evicted only each other, and a new client is served."""
    dr = {20100 + i: _establish(dp, _client(i), VIP_DR, 20100 + i) for i in range(40)}
    nat = {}
    for i in range(40):
        sport = 21100 + i
        rc, out = _send(dp, _client(i), VIP_NAT, sport, 80, "S")
        real = Ether(out)[IP].dst
        assert run(dp, "lb_xdp_private", _nat_reply(real, _client(i), sport, "SA"))[0] == XDP_TX
        assert _send(dp, _client(i), VIP_NAT, sport, 80, "A")[0] == XDP_REDIRECT
        nat[sport] = real
    assert all(_where(dp, _client(i), VIP_DR, p) == "established" for i, p in enumerate(dr))
    _flood(dp, VIP_DR, 5 * CONNS, seed=1)             # 10 x the connection table in all
    _flood(dp, VIP_NAT, 5 * CONNS, seed=2)
    for i, (sport, real) in enumerate(dr.items()):
        rc, out = _send(dp, _client(i), VIP_DR, sport, 80, "PA")
        assert (rc, _real(out)) == (XDP_REDIRECT, real), sport
    for i, (sport, real) in enumerate(nat.items()):
        rc, out = _send(dp, _client(i), VIP_NAT, sport, 80, "PA")
        assert rc == XDP_REDIRECT and Ether(out)[IP].dst == real, sport
        rc, out = run(dp, "lb_xdp_private", _nat_reply(real, _client(i), sport))
        assert rc == XDP_TX and (Ether(out)[IP].src, Ether(out)[TCP].sport) == (VIP_NAT, 80)
    # not one of the flood's sources (198.18.2.0 and up) made it into lb_conns
    clients = ipaddress.ip_network("198.18.0.0/23")
    for k, _ in dp.maps["lb_conns"].items():
        key = L.ConnKey.unpack(k)
        assert (key.daddr if key.dir else key.saddr) in clients, key
    assert len(dp.maps["lb_conns_embryo"].items()) <= EMBRYO
    _establish(dp, _client(99), VIP_DR, 29999)  # a new client is served during the flood's aftermath
    assert dp.counters()["conn_table_full"] == 0


def test_persistence_template_survives_a_flood_of_new_sources(dp):
    """A client with a template keeps its real server however many new sources come (their
    templates stay embryonic, in their own table); its new connections still follow it."""
    real = _establish(dp, _client(7), VIP_P, 22000)
    assert len(dp.maps["lb_persist"].items()) == 1
    _flood(dp, VIP_P, 10 * CONNS, seed=3)
    assert len(dp.maps["lb_persist"].items()) == 1
    assert len(dp.maps["lb_persist_embryo"].items()) <= EMBRYO
    for sport in range(22001, 22011):
        assert _establish(dp, _client(7), VIP_P, sport) == real
    # the flood's templates were counted (PersistConn) and the sweep's census takes them back
    dp.sweep()
    st = next(s for s in dp.services.values() if getattr(s.key, "addr", None) == ip(VIP_P))
    persist = sum(dp.table.real_conns(rid)[2] for _, rid in st.dests)
    assert persist == 1 + len(dp.maps["lb_persist_embryo"].items())


def test_a_full_template_table_is_counted_and_existing_templates_stay(dp, caplog):
    """lb_persist full (max(1024, connections / 4) templates of established clients): a new
    client's template stays embryonic, counted and logged; the clients with templates keep theirs."""
    caplog.set_level(logging.WARNING, logger="lb.dataplane")
    first = _establish(dp, "198.18.0.250", VIP_P, 23000)
    dp.defender.tick(time.monotonic() + 1000)       # the counters' log baseline (once per LOG_EVERY)
    before = dp.counters()["persist_table_full"]
    n = dp.sizes.persist + 20
    frames = []
    for i in range(n):          # n distinct clients of 198.18.64.0/18, each SYN then its ACK
        syn = flood.syn_frame(str(ip("198.18.64.0") + i), VIP_P, 40000, 80, bytes.fromhex("020000000002"),
                              bytes.fromhex("020000000101"))
        ack = bytearray(syn)
        ack[14 + 20 + 13] = 0x10                               # ACK (the checksum is not checked)
        frames += [syn, bytes(ack)]
    flood.run_frames(dp.fns["lb_xdp_public"].fd, b"".join(frames), len(frames[0]))
    assert len(dp.maps["lb_persist"].items()) == dp.sizes.persist
    assert dp.counters()["persist_table_full"] > before
    assert _establish(dp, "198.18.0.250", VIP_P, 23001) == first
    caplog.clear()
    dp.defender.tick(time.monotonic() + 2000)       # defense_work's next second: the log line
    assert "data path: persist_table_full +" in caplog.text and "lb_persist is full" in caplog.text


def test_udp_is_established_at_its_second_packet(dp):
    rc, out = _send(dp, _client(3), VIP_DR, 24000, 53, proto="udp")
    assert rc == XDP_REDIRECT and _where(dp, _client(3), VIP_DR, 24000, 53, 17) == "embryonic"
    real = _real(out)
    rc, out = _send(dp, _client(3), VIP_DR, 24000, 53, proto="udp")
    assert (rc, _real(out)) == (XDP_REDIRECT, real)
    assert _where(dp, _client(3), VIP_DR, 24000, 53, 17) == "established"
    # NAT: the real server's reply is the second packet; the reverse entry moves with it
    rc, out = _send(dp, _client(3), VIP_NAT, 24001, 53, proto="udp")
    real = Ether(out)[IP].dst
    reply = Ether(src=real_mac(real), dst=PRIV_MAC) / IP(src=real, dst=_client(3)) / UDP(sport=5353, dport=24001)
    rc, out = run(dp, "lb_xdp_private", reply)
    assert rc == XDP_TX and Ether(out)[IP].src == VIP_NAT
    assert _where(dp, _client(3), VIP_NAT, 24001, 53, 17) == "established"
    rev = L.ConnKey(ip(real), ip(_client(3)), 5353, 24001, 17, 1).pack()
    assert dp.maps["lb_conns"].get(rev) is not None and dp.maps["lb_conns_embryo"].get(rev) is None


def _set_global(dp, idx, value):
    dp.maps["lb_globals"].set(L.U32.pack(idx), L.U32.pack(value))


def test_secure_tcp_needs_the_real_servers_answer_in_nat(dp):
    """IPVS's tcp_states_dos: the client's ACK alone does not establish a NAT connection; the real
    server's SYN|ACK (SYNACK) and then its own ACK do."""
    _set_global(dp, L.G_DEFENSE, L.DEF_SECURE_TCP)
    try:
        c, sport = _client(5), 25000
        rc, out = _send(dp, c, VIP_NAT, sport, 80, "S")
        real = Ether(out)[IP].dst
        _send(dp, c, VIP_NAT, sport, 80, "A")                # a blind ACK: still half-open
        key = L.ConnKey(ip(c), ip(VIP_NAT), sport, 80, 6).pack()
        assert _where(dp, c, VIP_NAT, sport) == "embryonic"
        assert L.Conn.unpack(conn_get(dp.maps, key)).state == L.TCP_S["SYN_RECV"]
        run(dp, "lb_xdp_private", _nat_reply(real, c, sport, "SA"))
        assert L.Conn.unpack(conn_get(dp.maps, key)).state == L.TCP_S["SYNACK"]
        _send(dp, c, VIP_NAT, sport, 80, "A")
        assert _where(dp, c, VIP_NAT, sport) == "embryonic"
        assert run(dp, "lb_xdp_private", _nat_reply(real, c, sport, "A"))[0] == XDP_TX
        assert _where(dp, c, VIP_NAT, sport) == "established"
    finally:
        _set_global(dp, L.G_DEFENSE, 0)


def test_drop_packet_drops_new_connections_only(dp):
    est = 26000
    real = _establish(dp, _client(6), VIP_DR, est)
    _set_global(dp, L.G_DROP_RATE, 1)                     # rate 1: every new connection's packet
    try:
        before = dp.counters()["drop_packet"]
        assert _send(dp, _client(6), VIP_DR, est + 1, 80, "S")[0] == XDP_DROP
        assert dp.counters()["drop_packet"] == before + 1
        rc, out = _send(dp, _client(6), VIP_DR, est, 80, "PA")
        assert (rc, _real(out)) == (XDP_REDIRECT, real)
    finally:
        _set_global(dp, L.G_DROP_RATE, 0)


def test_defenses_engage_under_a_flood_and_end_after_it(dp, caplog):
    """defense_work once a second: drop_entry, drop_packet and secure_tcp in automatic mode engage
    when fewer than amemthresh embryonic entries are free (a log line each), drop_entry thins the
    flood's embryos, and all end when the table is free again (a line each)."""
    caplog.set_level(logging.WARNING, logger="lb.dataplane")
    d = Defense(drop_entry=1, drop_packet=1, secure_tcp=1, amemthresh=EMBRYO // 4)
    dp.apply(TableSpec(TABLE.services, defense=d))
    try:
        _flood(dp, VIP_DR, 2 * EMBRYO, seed=4)
        dp.sweep()
        full = len(dp.maps["lb_conns_embryo"].items())
        dp.defend()
        status = dp.defense_status()
        assert set(status["engaged"]) == {"drop_entry", "drop_packet", "secure_tcp"}
        assert status["modes"] == {"drop_entry": 2, "drop_packet": 2, "secure_tcp": 2}
        assert L.U32.unpack(dp.maps["lb_globals"].get(L.U32.pack(L.G_DEFENSE)))[0] == L.DEF_SECURE_TCP
        assert L.U32.unpack(dp.maps["lb_globals"].get(L.U32.pack(L.G_DROP_RATE)))[0] >= 1
        assert status["drop_entry_deleted"] > 0 and len(dp.maps["lb_conns_embryo"].items()) < full
        text = caplog.text
        for name in ("drop_entry", "drop_packet", "secure_tcp"):
            assert f"defense: {name} engaged" in text
        # the flood's embryos gone (as their SYN_RECV timeout would take them): every defense ends
        for k, _ in dp.maps["lb_conns_embryo"].items():
            dp.maps["lb_conns_embryo"].delete(k)
        dp.sweep()
        caplog.clear()
        dp.defend()
        assert dp.defense_status()["engaged"] == []
        assert dp.defense_status()["modes"] == {"drop_entry": 1, "drop_packet": 1, "secure_tcp": 1}
        assert L.U32.unpack(dp.maps["lb_globals"].get(L.U32.pack(L.G_DEFENSE)))[0] == 0
        assert L.U32.unpack(dp.maps["lb_globals"].get(L.U32.pack(L.G_DROP_RATE)))[0] == 0
        for name in ("drop_entry", "drop_packet", "secure_tcp"):
            assert f"defense: {name} ended" in caplog.text
    finally:
        dp.apply(TABLE)
        dp.defend()


def test_a_defense_always_on_says_so_once(dp, caplog):
    """Mode 3 has no engaging for defense_work to log: the configuration that sets it gives one
    line per defense (again only when a reload sets it anew), and one when it is set off."""
    caplog.set_level(logging.WARNING, logger="lb.dataplane")
    d = Defense(drop_entry=3, drop_packet=3, secure_tcp=3, am_droprate=7)
    try:
        dp.apply(TableSpec(TABLE.services, defense=d))
        lines = [r.getMessage() for r in caplog.records if "always on" in r.getMessage()]
        assert sorted(lines) == [
            "defense: drop_entry always on (mode 3, set by the configuration)",
            "defense: drop_packet always on (mode 3, set by the configuration), dropping 1 in 7 new connections",
            "defense: secure_tcp always on (mode 3, set by the configuration)"]
        caplog.clear()
        dp.defend()
        dp.apply(TableSpec(TABLE.services, defense=d))     # a reload that keeps it: nothing new
        dp.defend()
        assert "defense:" not in caplog.text
        assert dp.defense_status()["engaged"] == ["drop_entry", "drop_packet", "secure_tcp"]
    finally:
        dp.apply(TABLE)
        dp.defend()
    for name in ("drop_entry", "drop_packet", "secure_tcp"):
        assert f"defense: {name} ended: set to 0 by the configuration" in caplog.text


def test_the_free_estimate_counts_what_the_control_plane_deleted(dp):
    """The embryonic table's free entries (the defenses' "available memory") after the sweep
    and drop_entry delete embryos themselves: the census a sweep takes is of its dump, before
    its own deletions, and BPF's tallies count only the data path's -- both were left out, so a
    flood's embryos swept at their timeout (or thinned by drop_entry) still read as a full
    table, and drop_packet went on dropping new clients until the next sweep, 5 s on."""
    def exact():
        return EMBRYO - len(dp.maps["lb_conns_embryo"].items())

    d = Defense(drop_entry=1, drop_packet=1, amemthresh=EMBRYO // 4)
    dp.apply(TableSpec(TABLE.services, defense=d))
    try:
        _flood(dp, VIP_DR, 2 * EMBRYO, seed=5)
        dp.sweep()
        dp.defend()                          # drop_entry engaged: it deletes a 32nd of the flood
        assert "drop_entry" in dp.defense_status()["engaged"] and dp.defense_status()["drop_entry_deleted"] > 0
        assert dp.defense_status()["embryonic_free"] == exact()
        # the flood's SYN_RECV embryos run out (60 s): the sweep deletes them
        swept = dp.sweep(time.monotonic_ns() + 120 * 10**9)
        assert swept > 0 and exact() > EMBRYO // 2
        assert dp.defense_status()["embryonic_free"] == exact()
        dp.defend()
        assert dp.defense_status()["engaged"] == []
        assert L.U32.unpack(dp.maps["lb_globals"].get(L.U32.pack(L.G_DROP_RATE)))[0] == 0
    finally:
        dp.apply(TABLE)
        dp.defend()


class _Slice:
    """drop_entry's random choice of a 32nd of the table, made: the slice of key"""
    def __init__(self, key: bytes):
        self.part = zlib.crc32(key) % DROP_ENTRY_SLICES

    def randrange(self, n: int) -> int:
        return self.part


def test_drop_entry_leaves_a_reverse_entry_that_is_another_connections():
    """One client port to two NAT VIPs whose real server is the same: both connections' reverse
    entries have one key, and the second one's is there.  drop_entry dropping the first
    connection leaves it (the second's replies still go out from their VIP) and counts only what
    it deleted; dropping the second takes its own reverse entry with it."""
    vip1, vip2, real, client = "198.18.0.31", "198.18.0.32", "198.18.1.11", "198.18.0.2"
    table = TableSpec(tuple(ServiceSpec("tcp", ip(v), 80, "rr", (RealSpec(ip(real), 8080, 1, "nat"),))
                            for v in (vip1, vip2)))
    def key(vip, sport):
        return L.ConnKey(ip(client), ip(vip), sport, 80, 6).pack()

    # a client port whose two connections fall in different slices
    sport = next(p for p in range(30000, 30100)
                 if zlib.crc32(key(vip1, p)) % DROP_ENTRY_SLICES != zlib.crc32(key(vip2, p)) % DROP_ENTRY_SLICES)
    rev = L.ConnKey(ip(real), ip(client), 8080, sport, 6, 1).pack()
    with loaded_dataplane("dropentry", table=table) as d:
        embryos = d.maps["lb_conns_embryo"]
        for vip in (vip1, vip2):
            rc, out = _send(d, client, vip, sport, 80, "S")
            assert rc == XDP_REDIRECT and Ether(out)[IP].dst == real
        assert L.Conn.unpack(embryos.get(rev)).vaddr == L.pack_addr(ip(vip2))
        defender = d.defender
        size = d.defense_status()["embryonic_size"]
        assert d.defense_status()["embryonic_free"] == size - 3     # two connections, one reverse entry
        deleted = d.conns.embryo_deleted
        defender._rng = _Slice(key(vip1, sport))
        assert defender.drop_entries() == 1
        assert embryos.get(key(vip1, sport)) is None and embryos.get(key(vip2, sport)) is not None
        assert d.conns.embryo_deleted == deleted + 1            # the connection's entry, no more
        rc, out = run(d, "lb_xdp_private", _nat_reply(real, client, sport, "SA"))
        assert rc == XDP_TX and (Ether(out)[IP].src, Ether(out)[TCP].sport) == (vip2, 80)
        defender._rng = _Slice(key(vip2, sport))
        assert defender.drop_entries() == 1
        assert embryos.get(key(vip2, sport)) is None and embryos.get(rev) is None
        assert d.conns.embryo_deleted == deleted + 3            # and now its own reverse entry
        assert run(d, "lb_xdp_private", _nat_reply(real, client, sport, "SA"))[0] == XDP_PASS
        assert d.defense_status()["drop_entry_deleted"] == 2
        assert d.defense_status()["embryonic_free"] == size == size - len(embryos.items())


def test_lb_list_counters(dp):
    _send(dp, _client(8), VIP_DR, 27000, 80, "SA")
    r = subprocess.run([sys.executable, "-m", "lb.cli.main", "list", "--counters", "--instance", dp.instance],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = {ln[:33].strip(): ln[33:].strip() for ln in r.stdout.splitlines()}
    assert int(lines["tcp_syn_invalid"]) == dp.counters()["tcp_syn_invalid"] > 0
    assert int(lines["embryonic entries made"]) > 0
    assert "drop_packet" in lines and "persist_table_full" in lines


@pytest.mark.parametrize("blob,size", [(b"", 64), (b"x" * 64, 0), (b"x" * 10, 64)])
def test_run_frames_refuses_no_frames(blob, size):
    """flood.run_frames over no frames: said (ValueError), not a ZeroDivisionError, nor the
    cffi loop's SIGFPE of a module built before it refused 0 packets."""
    with pytest.raises(ValueError, match="no frames to run"):
        flood.run_frames(-1, blob, size)
