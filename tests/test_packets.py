"""Packets through the loaded XDP programs (BPF_PROG_TEST_RUN): exact bytes out, compared with
packets scapy builds (and checksums scapy computes)."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from lb.dataplane import RealSpec, ServiceSpec, TableSpec

from packets_util import (CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, XDP_TX,
                           loaded_dataplane, real_mac, run)

CLIENT = "198.18.0.2"
VIP_DR = "198.18.0.10"
VIP_NAT = "198.18.0.20"
REALS = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]
ip = ipaddress.ip_address


def _svc(proto, vip, port, sched, fwd, rport=None, weights=(1, 1, 1)):
    reals = tuple(RealSpec(ip(a), rport or port, w, fwd) for a, w in zip(REALS, weights))
    return ServiceSpec(proto, ip(vip), port, sched, reals)


TABLE = TableSpec((
    _svc("tcp", VIP_DR, 80, "rr", "dr"),
    _svc("tcp", VIP_DR, 81, "rr", "dr"),           # test_dr_rewrites_only_macs's own: rr from the head
    _svc("tcp", VIP_NAT, 80, "rr", "nat", rport=8080),
    _svc("udp", VIP_NAT, 53, "rr", "nat", rport=5353),
))


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("pkt", table=TABLE) as d:
        yield d


def client_pkt(dst, dport, sport, flags="S", proto="tcp", payload=b""):
    l4 = TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=0 if flags == "S" else 1) if proto == "tcp" \
        else UDP(sport=sport, dport=dport)
    return Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=dst, id=7, ttl=64) / l4 / payload


def test_dr_rewrites_only_macs(dp):
    pkt = client_pkt(VIP_DR, 81, 40000)
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    # rr over the IPVS list (reverse config order): the first new connection goes to the last real
    expected = pkt.copy()
    expected[Ether].src = PRIV_MAC
    expected[Ether].dst = real_mac(REALS[2])
    assert out == bytes(expected)


def _dr_reals(dp) -> dict[str, tuple]:
    """real server -> (ActiveConn, InActConn, conns, inpkts, inbytes) of the DR service, as
    `lb list --stats` reads them from the pinned maps."""
    from lb.dataplane import reader
    from lb.dataplane.maps import PinnedMaps

    with PinnedMaps(dp.instance) as maps:
        [svc] = [r for r in reader.read_services(maps) if str(r.address) == VIP_DR and r.port == 80]
    return {str(r.address): (r.active, r.inactive, r.stats.conns, r.stats.inpkts, r.stats.inbytes)
            for r in svc.reals}


def test_dr_established_flow_keeps_its_real_and_counts(dp):
    before = _dr_reals(dp)
    syn = client_pkt(VIP_DR, 80, 40100)
    rc, out = run(dp, "lb_xdp_public", syn)
    first = Ether(out).dst
    for sport in (40101, 40102):            # other new flows move the rr cursor on
        run(dp, "lb_xdp_public", client_pkt(VIP_DR, 80, sport))
    ack = client_pkt(VIP_DR, 80, 40100, flags="A")
    rc, out = run(dp, "lb_xdp_public", ack)
    assert rc == XDP_REDIRECT
    assert Ether(out).dst == first
    # the counters: each of the three reals got one new connection (rr), active from its SYN;
    # the established flow's real counted both its packets and their IP bytes, the others one
    after = _dr_reals(dp)
    real = next(a for a in REALS if real_mac(a) == first)
    for a in REALS:
        npk = 2 if a == real else 1
        nbytes = len(syn[IP]) + (len(ack[IP]) if a == real else 0)
        want = tuple(b + d for b, d in zip(before[a], (1, 0, 1, npk, nbytes)))
        assert after[a] == want, (a, before[a], after[a])


def _checksums_ok(raw: bytes) -> None:
    p = Ether(raw)
    fresh = p.copy()
    del fresh[IP].chksum
    l4 = TCP if TCP in fresh else UDP
    del fresh[l4].chksum
    fresh = Ether(bytes(fresh))
    assert p[IP].chksum == fresh[IP].chksum
    assert p[l4].chksum == fresh[l4].chksum


def test_nat_request_and_reply(dp):
    req = client_pkt(VIP_NAT, 80, 41000, payload=b"hello")
    rc, out = run(dp, "lb_xdp_public", req)
    assert rc == XDP_REDIRECT
    rs = REALS[2]
    expected = Ether(src=PRIV_MAC, dst=real_mac(rs)) / IP(src=CLIENT, dst=rs, id=7, ttl=64) / \
        TCP(sport=41000, dport=8080, flags="S", seq=1000) / b"hello"
    assert out == bytes(expected)
    _checksums_ok(out)

    reply = Ether(src=real_mac(rs), dst=PRIV_MAC) / IP(src=rs, dst=CLIENT, id=9, ttl=64) / \
        TCP(sport=8080, dport=41000, flags="SA", seq=5000, ack=1001) / b"world"
    rc, out = run(dp, "lb_xdp_private", reply)
    # the reply leaves where the client's packets came in (the test run's ingress, so XDP_TX),
    # addressed to the hop the request came from
    assert rc == XDP_TX
    expected = Ether(src=PUB_MAC, dst=CLIENT_MAC) / IP(src=VIP_NAT, dst=CLIENT, id=9, ttl=64) / \
        TCP(sport=80, dport=41000, flags="SA", seq=5000, ack=1001) / b"world"
    assert out == bytes(expected)
    _checksums_ok(out)


def test_nat_udp_with_and_without_checksum(dp):
    req = client_pkt(VIP_NAT, 53, 42000, proto="udp", payload=b"q" * 11)
    rc, out = run(dp, "lb_xdp_public", req)
    assert rc == XDP_REDIRECT
    p = Ether(out)
    assert (p[IP].dst, p[UDP].dport) == (REALS[2], 5353)
    _checksums_ok(out)
    # checksum 0 means "none" in UDP and must stay 0
    req = client_pkt(VIP_NAT, 53, 42001, proto="udp", payload=b"q" * 11)
    raw = bytearray(bytes(req))
    raw[14 + 20 + 6:14 + 20 + 8] = b"\0\0"
    rc, out = run(dp, "lb_xdp_public", bytes(raw))
    assert rc == XDP_REDIRECT
    assert Ether(out)[UDP].chksum == 0
    assert Ether(out)[UDP].dport == 5353


def test_reply_of_unknown_flow_passes(dp):
    reply = Ether(src=real_mac(REALS[0]), dst=PRIV_MAC) / IP(src=REALS[0], dst=CLIENT) / TCP(sport=8080, dport=1)
    rc, out = run(dp, "lb_xdp_private", reply)
    assert rc == XDP_PASS and out == bytes(reply)


@pytest.mark.parametrize("pkt", [
    pytest.param(Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst="198.18.0.1") / TCP(dport=22, flags="S"),
                 id="not-a-vip"),
    pytest.param(Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=VIP_DR) / TCP(dport=443, flags="S"),
                 id="vip-other-port"),
    pytest.param(Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=VIP_DR) / ICMP(), id="icmp-to-vip"),
    pytest.param(Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=CLIENT, pdst=VIP_DR), id="arp"),
    pytest.param(bytes(Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=VIP_DR) / TCP(dport=80))[:14 + 12],
                 id="truncated-ip"),
    pytest.param(bytes(Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=VIP_DR) / TCP(dport=80))[:14 + 20 + 10],
                 id="truncated-tcp"),
    pytest.param(Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=VIP_DR, frag=185) / Raw(b"x" * 64),
                 id="fragment-whose-first-never-came"),
    pytest.param(Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=VIP_DR) / TCP(sport=43000, dport=80, flags="A"),
                 id="tcp-ack-without-connection"),
])
def test_passes_untouched(dp, pkt):
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_PASS
    assert out == bytes(pkt)


def test_vlan_tagged_request_keeps_its_tag(dp):
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / Dot1Q(vlan=42) / IP(src=CLIENT, dst=VIP_DR, id=1) / \
        TCP(sport=44000, dport=80, flags="S")
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    p = Ether(out)
    assert p[Dot1Q].vlan == 42 and p[Ether].src == PRIV_MAC and p[Ether].dst in {real_mac(r) for r in REALS}
    assert bytes(p[Dot1Q]) == bytes(pkt[Dot1Q])


def test_a_packet_refreshes_its_entrys_timer_when_the_state_moves_or_it_is_old(dp):
    """An established flow's packets rewrite its entry's timestamp only once it is
    LB_TOUCH_NS (0.25 s) old, or when the state changes (its new timeout runs from then, as in
    IPVS): in NAT both directions' CPUs share the entry, so it is not written per packet."""
    from lb.dataplane import layout as L
    from packets_util import age

    key = L.ConnKey(ip(CLIENT), ip(VIP_DR), 40900, 80, 6).pack()

    def last() -> tuple[int, int]:
        c = L.Conn.unpack(dp.maps["lb_conns"].get(key))
        return c.last_ns, c.state

    for flags in ("S", "A"):                       # established: in lb_conns
        assert run(dp, "lb_xdp_public", client_pkt(VIP_DR, 80, 40900, flags=flags))[0] == XDP_REDIRECT
    age(dp, 0.1)                                   # 0.1 s old: the next packet leaves it so
    t0, state = last()
    assert run(dp, "lb_xdp_public", client_pkt(VIP_DR, 80, 40900, flags="A"))[0] == XDP_REDIRECT
    assert last() == (t0, state)
    age(dp, 1.0)                                   # a second old: the next packet refreshes it
    assert run(dp, "lb_xdp_public", client_pkt(VIP_DR, 80, 40900, flags="A"))[0] == XDP_REDIRECT
    t1, _ = last()
    assert t1 >= t0
    age(dp, 0.1)                                   # young, but a FIN moves the state: refreshed
    assert run(dp, "lb_xdp_public", client_pkt(VIP_DR, 80, 40900, flags="FA"))[0] == XDP_REDIRECT
    t2, state2 = last()
    assert state2 != state and t2 >= t1


def test_a_quiet_nat_connection_keeps_its_replies_way_until_it_expires():
    """A NAT connection quiet for two minutes (ESTABLISHED's timeout is 15) still gets its real
    server's replies rewritten back to the VIP after lb's sweep: the reverse entry (made at the
    SYN, with SYN_RECV's minute) lives as long as the connection's.  Once the connection expires
    (closed by the client: CLOSE_WAIT's minute) the sweep removes both, and a reply passes to the
    director's stack."""
    from lb.dataplane import layout as L
    from packets_util import age, conn_items

    with loaded_dataplane("quiet", table=TABLE) as d:
        rc, out = run(d, "lb_xdp_public", client_pkt(VIP_NAT, 80, 42000))
        assert rc == XDP_REDIRECT
        rs = Ether(out)[IP].dst

        def reply(flags="A", payload=b""):
            pkt = Ether(src=real_mac(rs), dst=PRIV_MAC) / IP(src=rs, dst=CLIENT, id=9, ttl=64) / \
                TCP(sport=8080, dport=42000, flags=flags, seq=5000, ack=1001) / payload
            return run(d, "lb_xdp_private", pkt)

        assert reply("SA")[0] == XDP_TX
        assert run(d, "lb_xdp_public", client_pkt(VIP_NAT, 80, 42000, flags="A"))[0] == XDP_REDIRECT
        assert reply("A", b"x")[0] == XDP_TX
        age(d, 120)
        assert d.sweep() == 0
        assert run(d, "lb_xdp_public", client_pkt(VIP_NAT, 80, 42000, flags="A", payload=b"q"))[0] == XDP_REDIRECT
        rc, out = reply("A", b"r")
        assert rc == XDP_TX
        p = Ether(out)
        assert (p[IP].src, p[TCP].sport, p[IP].dst, p[TCP].dport) == (VIP_NAT, 80, CLIENT, 42000)
        assert bytes(p[TCP].payload) == b"r"
        # the reverse entry now carries the connection's timer
        timeouts = {L.ConnKey.unpack(k).dir: L.Conn.unpack(v).timeout for k, v in conn_items(d.maps)}
        assert timeouts == {0: 900, 1: 900}

        assert run(d, "lb_xdp_public", client_pkt(VIP_NAT, 80, 42000, flags="FA"))[0] == XDP_REDIRECT
        age(d, 200)                                # past CLOSE_WAIT's minute, not the 15 above
        assert d.sweep() == 1
        assert conn_items(d.maps) == []
        assert reply("A", b"late")[0] == XDP_PASS


def test_the_sweep_leaves_a_later_connections_reverse_entry():
    """When the sweep removes a NAT connection, a reverse entry with its key that names another
    VIP (a later connection from the same client port, through another virtual service, to the
    same real server) is that connection's and stays."""
    from lb.dataplane import layout as L
    from packets_util import CONN_TABLES, age, conn_items

    with loaded_dataplane("later", table=TABLE) as d:
        rc, out = run(d, "lb_xdp_public", client_pkt(VIP_NAT, 80, 42100))
        assert rc == XDP_REDIRECT
        rs = Ether(out)[IP].dst
        assert run(d, "lb_xdp_public", client_pkt(VIP_NAT, 80, 42100, flags="A"))[0] == XDP_REDIRECT
        assert run(d, "lb_xdp_public", client_pkt(VIP_NAT, 80, 42100, flags="FA"))[0] == XDP_REDIRECT
        age(d, 200)                                      # the connection's CLOSE_WAIT minute is out
        rkey = L.ConnKey(ip(rs), ip(CLIENT), 8080, 42100, 6, 1).pack()
        table = next(n for n in CONN_TABLES if d.maps[n].get(rkey) is not None)
        other = L.Conn.unpack(d.maps[table].get(rkey))
        other.vaddr = L.pack_addr(ip("198.18.0.30"))     # as a later connection through another VIP,
        other.last_ns += 200 * 10**9                     # made just now
        d.maps[table].set(rkey, other.pack())
        assert d.sweep() == 1
        assert [(k, L.Conn.unpack(v).vaddr) for k, v in conn_items(d.maps)] == [(rkey, other.vaddr)]
