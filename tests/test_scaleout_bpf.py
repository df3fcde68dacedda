"""Active-active scale-out in the data plane (bpf/lb_sloppy.h): a TCP packet of a flow this
director has no entry for -- an ECMP change moved it here from another director -- is scheduled
by the service's hash scheduler and tracked (IPVS's sloppy_tcp), so it reaches the real server
the flow's first director picked; without the sloppy flag it passes to the kernel as before.
Bytes out of lb_xdp_public (BPF_PROG_TEST_RUN), the connection table as `lb list -c` reads it."""
from __future__ import annotations

import ipaddress
import itertools

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane.reader import read_connections, read_counters
from lb.sched import model
from packets_util import CLIENT_MAC, PRIV_ADDR, PUB_MAC, XDP_PASS, XDP_REDIRECT, loaded_dataplane, real_mac, run

VIP = ipaddress.ip_address("198.18.10.10")
REALS = [ipaddress.ip_address(f"198.18.1.{11 + i}") for i in range(5)]
_sports = itertools.count(30000)


def spec(port: int, sloppy: bool, forward: str = "dr", sched: str = "mh", proto: str = "tcp") -> ServiceSpec:
    return ServiceSpec(proto, VIP, port, sched, tuple(RealSpec(a, port, 1, forward) for a in REALS),
                       sloppy=sloppy)


SERVICES = {"sloppy": spec(80, True), "plain": spec(81, False), "tunnel": spec(82, True, "tunnel"),
            "sh": spec(83, True, sched="sh"), "udp": spec(84, True, proto="udp")}


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("sloppy", table=TableSpec(tuple(SERVICES.values()))) as d:
        yield d


def mh_model(port: int) -> model.Service:
    m = model.Service("mh", ())
    for a in REALS:
        m.add(str(a), 1, port=port)
    return m


def tcp(client: str, sport: int, dport: int, flags: str):
    return Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=client, dst=str(VIP)) / TCP(
        sport=sport, dport=dport, flags=flags, seq=1000, ack=2000) / b"mid-flow data"


def sent_to(rc: int, out: bytes) -> str | None:
    """The real server a DR packet went to (by its MAC), None when it was not forwarded."""
    if rc != XDP_REDIRECT:
        return None
    by_mac = {real_mac(a): str(a) for a in REALS}
    return by_mac[Ether(out).dst]


def entries(dp, client: str, sport: int, vport: int) -> list:
    return [c for c in read_connections(dp.maps) if c.client == (ipaddress.ip_address(client), sport)
            and c.virtual == (VIP, vport)]


def clients(n: int) -> list[str]:
    return [str(ipaddress.IPv4Address(0xC6120300 + (i * 7919) % 65000)) for i in range(n)]   # 198.18.3.0/...


def test_mid_flow_ack_is_scheduled_by_mh_and_tracked(dp):
    m = mh_model(80)
    for client in clients(40):
        sport = next(_sports)
        want = m.schedule(saddr=model.addr_fold(client), sport=sport)
        rc, out = run(dp, "lb_xdp_public", tcp(client, sport, 80, "PA"))
        assert sent_to(rc, out) == want
        # DR: the client's packet unchanged but for the MACs
        assert bytes(Ether(out).payload) == bytes(tcp(client, sport, 80, "PA").payload)
        # IPVS's state table: NONE + ACK -> CLOSE (10 s, renewed by every packet; when it lapses
        # the next packet is scheduled again, to the same server)
        (row,) = entries(dp, client, sport, 80)
        assert (row.state, str(row.dest[0])) == ("CLOSE", want) and row.expire <= 10
        # the next packets of the flow follow the entry
        rc, out = run(dp, "lb_xdp_public", tcp(client, sport, 80, "A"))
        assert sent_to(rc, out) == want


def test_the_mid_flow_pick_is_the_syn_pick(dp):
    """What another director's SYN chose (same table, same hash) is what this one's ACK chooses."""
    for client in clients(30):
        sport = next(_sports)
        syn_pick = sent_to(*run(dp, "lb_xdp_public", tcp(client, sport, 80, "S")))
        ack_pick = sent_to(*run(dp, "lb_xdp_public", tcp(client, sport + 1, 80, "A")))   # mh hashes the address
        assert syn_pick == ack_pick and syn_pick is not None


def test_without_sloppy_a_mid_flow_packet_goes_to_the_kernel(dp):
    before = read_counters(dp.maps)["tcp_not_syn"]
    client, sport = clients(1)[0], next(_sports)
    rc, out = run(dp, "lb_xdp_public", tcp(client, sport, 81, "PA"))
    assert rc == XDP_PASS and out == bytes(tcp(client, sport, 81, "PA"))
    assert entries(dp, client, sport, 81) == []
    assert read_counters(dp.maps)["tcp_not_syn"] == before + 1
    rc, _ = run(dp, "lb_xdp_public", tcp(client, sport, 81, "S"))
    assert rc == XDP_REDIRECT


@pytest.mark.parametrize("flags", ["R", "RA"])
def test_a_reset_never_creates_an_entry(dp, flags):
    client, sport = clients(1)[0], next(_sports)
    rc, _ = run(dp, "lb_xdp_public", tcp(client, sport, 80, flags))
    assert rc == XDP_PASS
    assert entries(dp, client, sport, 80) == []


def test_fin_mid_flow_is_forwarded(dp):
    client, sport = clients(2)[1], next(_sports)
    rc, out = run(dp, "lb_xdp_public", tcp(client, sport, 80, "FA"))
    assert sent_to(rc, out) is not None
    (row,) = entries(dp, client, sport, 80)
    assert row.state == "CLOSE"          # NONE + FIN -> CLOSE


def test_tunnel_and_sh(dp):
    client, sport = "198.18.3.77", next(_sports)
    want = mh_model(82).schedule(saddr=model.addr_fold(client), sport=sport)
    rc, out = run(dp, "lb_xdp_public", tcp(client, sport, 82, "A"))
    assert rc == XDP_REDIRECT
    outer = Ether(out)[IP]
    assert (outer.proto, outer.src, outer.dst) == (4, str(PRIV_ADDR[4]), want)
    assert bytes(outer.payload) == bytes(tcp(client, sport, 82, "A")[IP])
    sh = model.Service("sh", ())
    for a in REALS:
        sh.add(str(a), 1, port=83)
    rc, out = run(dp, "lb_xdp_public", tcp(client, sport, 83, "A"))
    assert sent_to(rc, out) == sh.schedule(saddr=model.addr_fold(client), sport=sport)


def test_udp_is_as_before_and_the_flag_is_in_the_map(dp):
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.3.5", dst=str(VIP)) / UDP(sport=5000, dport=84)
    rc, _ = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    flags = {s.port: L.Svc.unpack(dp.maps["lb_svc"].get(L.U32.pack(st.id))).flags & L.SVC_F_SLOPPY
             for s in SERVICES.values()
             for st in [dp.services[L.SvcKey(17 if s.protocol == "udp" else 6, VIP, s.port)]]}
    assert flags == {80: L.SVC_F_SLOPPY, 81: 0, 82: L.SVC_F_SLOPPY, 83: L.SVC_F_SLOPPY, 84: L.SVC_F_SLOPPY}
