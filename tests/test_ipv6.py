"""IPv6 virtual services through the loaded XDP programs (BPF_PROG_TEST_RUN: exact bytes out,
nothing leaves the kernel's test harness), their persistence by prefix length, and `lb list`.

No IPv6 traffic runs on any link here: test traffic stays on 198.18.0.0/15 (the project's
network rule).  Addresses are from 2001:2::/48, the IPv6 benchmarking range."""
from __future__ import annotations

import ipaddress
import itertools
import os
import subprocess
import sys

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (ICMPv6ND_NS, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrSegmentRouting, PadN)
from scapy.layers.l2 import Dot1Q, Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane import layout as L
from lb.dataplane.maps import PinnedMaps

from packets_util import (CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, XDP_TX,
                           loaded_dataplane, real_mac, run, template_items)

ip = ipaddress.ip_address
CLIENT = "2001:2:0:9::2"
VIP_DR = "2001:2::10"
VIP_NAT = "2001:2::20"
VIP_P = "2001:2::30"          # persistent, prefix 64
REALS = ["2001:2:0:1::11", "2001:2:0:1::12", "2001:2:0:1::13"]
_sport = itertools.count(30000)


def _svc(proto, vip, port, sched, fwd, rport=None, persistent=0, pmask=None):
    reals = tuple(RealSpec(ip(a), rport or port, 1, fwd) for a in REALS)
    return ServiceSpec(proto, ip(vip), port, sched, reals, persistent=persistent, pmask=pmask)


TABLE = TableSpec((
    _svc("tcp", VIP_DR, 80, "rr", "dr"),
    _svc("tcp", VIP_DR, 81, "rr", "dr"),           # test_dr_rewrites_only_macs's own: rr from the head
    _svc("tcp", VIP_NAT, 80, "rr", "nat", rport=8080),
    _svc("udp", VIP_NAT, 53, "rr", "nat", rport=5353),
    _svc("tcp", VIP_P, 443, "rr", "dr", persistent=360, pmask=64),
    ServiceSpec("tcp", ip("198.18.0.10"), 80, "rr", (RealSpec(ip("198.18.1.11"), 80, 1, "dr"),)),
))


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("ipv6", table=TABLE) as d:
        yield d


def client_pkt(dst, dport, sport=None, flags="S", proto="tcp", payload=b"", src=CLIENT, ext=None):
    sport = next(_sport) if sport is None else sport
    l4 = TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=0 if flags == "S" else 1) if proto == "tcp" \
        else UDP(sport=sport, dport=dport)
    l3 = IPv6(src=src, dst=dst, hlim=64, fl=0x12345)
    if ext is not None:
        l3 = l3 / ext
    return Ether(src=CLIENT_MAC, dst=PUB_MAC) / l3 / l4 / payload


def _l4_checksum_ok(raw: bytes) -> None:
    p = Ether(raw)
    fresh = p.copy()
    l4 = TCP if TCP in fresh else UDP
    del fresh[l4].chksum
    assert p[l4].chksum == Ether(bytes(fresh))[l4].chksum


def _real_of(out: bytes) -> str:
    return {real_mac(a): a for a in REALS}[Ether(out).dst]


def test_dr_rewrites_only_macs(dp):
    pkt = client_pkt(VIP_DR, 81, 40000, payload=b"x")
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    expected = pkt.copy()
    expected[Ether].src = PRIV_MAC
    expected[Ether].dst = real_mac(REALS[2])    # rr's first pick: the IPVS list head (last configured)
    assert out == bytes(expected)
    # the flow's ACK follows it; other flows move rr on
    run(dp, "lb_xdp_public", client_pkt(VIP_DR, 81))
    rc, out = run(dp, "lb_xdp_public", client_pkt(VIP_DR, 81, 40000, flags="A"))
    assert rc == XDP_REDIRECT and _real_of(out) == REALS[2]


def test_nat_request_and_reply(dp):
    req = client_pkt(VIP_NAT, 80, 41000, payload=b"hello")
    rc, out = run(dp, "lb_xdp_public", req)
    assert rc == XDP_REDIRECT
    rs = _real_of(out)
    expected = Ether(src=PRIV_MAC, dst=real_mac(rs)) / IPv6(src=CLIENT, dst=rs, hlim=64, fl=0x12345) / \
        TCP(sport=41000, dport=8080, flags="S", seq=1000) / b"hello"
    assert out == bytes(expected)
    _l4_checksum_ok(out)

    reply = Ether(src=real_mac(rs), dst=PRIV_MAC) / IPv6(src=rs, dst=CLIENT, hlim=64) / \
        TCP(sport=8080, dport=41000, flags="SA", seq=5000, ack=1001) / b"world"
    rc, out = run(dp, "lb_xdp_private", reply)
    assert rc == XDP_TX       # back out where the client's packets came in
    expected = Ether(src=PUB_MAC, dst=CLIENT_MAC) / IPv6(src=VIP_NAT, dst=CLIENT, hlim=64) / \
        TCP(sport=80, dport=41000, flags="SA", seq=5000, ack=1001) / b"world"
    assert out == bytes(expected)
    _l4_checksum_ok(out)


def test_nat_udp(dp):
    req = client_pkt(VIP_NAT, 53, 42000, proto="udp", payload=b"q" * 11)
    rc, out = run(dp, "lb_xdp_public", req)
    assert rc == XDP_REDIRECT
    p = Ether(out)
    rs = p[IPv6].dst
    assert rs in REALS and p[UDP].dport == 5353
    _l4_checksum_ok(out)
    reply = Ether(src=real_mac(rs), dst=PRIV_MAC) / IPv6(src=rs, dst=CLIENT) / UDP(sport=5353, dport=42000) / b"a"
    rc, out = run(dp, "lb_xdp_private", reply)
    assert rc == XDP_TX
    p = Ether(out)
    assert (p[IPv6].src, p[UDP].sport, p[IPv6].dst) == (VIP_NAT, 53, CLIENT)
    _l4_checksum_ok(out)


@pytest.mark.parametrize("ext", [
    pytest.param(IPv6ExtHdrHopByHop(), id="hop-by-hop"),
    pytest.param(IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(), id="hop-by-hop+dest-opts"),
    pytest.param(IPv6ExtHdrRouting(addresses=[]) / IPv6ExtHdrDestOpt(options=[PadN(optdata=bytes(20))]),
                 id="routing+long-dest-opts"),
])
def test_extension_headers_are_walked_and_kept(dp, ext):
    pkt = client_pkt(VIP_NAT, 80, ext=ext, payload=b"e")
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    p = Ether(out)
    assert p[IPv6].dst in REALS and p[TCP].dport == 8080
    n = len(bytes(ext))
    assert bytes(p[IPv6].payload)[:n] == bytes(Ether(bytes(pkt))[IPv6].payload)[:n]   # headers untouched
    _l4_checksum_ok(out)


@pytest.mark.parametrize("rh", [
    pytest.param(IPv6ExtHdrRouting(addresses=["2001:2:0:9::99"], segleft=1), id="type-0"),
    pytest.param(IPv6ExtHdrSegmentRouting(addresses=["2001:2:0:9::99", VIP_NAT], segleft=1), id="segment-routing"),
])
def test_a_routing_header_with_segments_left_is_the_kernels(dp, rh):
    """The VIP is only a hop on the packet's way (segments left): its final destination, the one
    the TCP checksum covers, is another.  The kernel routes it on, as IPVS leaves it; lb had
    NATed it, with a checksum adjusted for an address the pseudo header does not hold."""
    pkt = client_pkt(VIP_NAT, 80, ext=rh)
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_PASS and out == bytes(pkt)


def _counter(dp, name: str) -> int:
    return dp.counters()[name]


def test_fragment_passes_and_is_counted(dp):
    before = _counter(dp, "fragment")
    pkt = client_pkt(VIP_DR, 80, ext=IPv6ExtHdrFragment(m=1, id=5))
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_PASS and out == bytes(pkt)
    assert _counter(dp, "fragment") == before + 1


@pytest.mark.parametrize("pkt", [
    pytest.param(Ether(src=CLIENT_MAC, dst="33:33:ff:00:00:10") /
                 IPv6(src=CLIENT, dst="ff02::1:ff00:10", hlim=255) / ICMPv6ND_NS(tgt=VIP_DR), id="neighbour-solicitation"),
    pytest.param(client_pkt("2001:2::99", 80), id="not-a-vip"),
    pytest.param(client_pkt(VIP_DR, 443), id="vip-other-port"),
    pytest.param(client_pkt(VIP_DR, 80, 43000, flags="A"), id="tcp-ack-without-connection"),
    pytest.param(client_pkt(VIP_DR, 80, ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() /
                            IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()), id="too-many-extension-headers"),
    pytest.param(bytes(client_pkt(VIP_DR, 80))[:14 + 30], id="truncated-ipv6"),
    pytest.param(bytes(client_pkt(VIP_DR, 80))[:14 + 40 + 10], id="truncated-tcp"),
])
def test_passes_untouched(dp, pkt):
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_PASS
    assert out == bytes(pkt)


def test_vlan_tagged(dp):
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / Dot1Q(vlan=5) / IPv6(src=CLIENT, dst=VIP_DR) / \
        TCP(sport=next(_sport), dport=80, flags="S")
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    assert Ether(out)[Dot1Q].vlan == 5 and Ether(out)[IPv6].dst == VIP_DR


def test_ipv4_service_beside_ipv6_ones(dp):
    from scapy.layers.inet import IP
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst="198.18.0.10") / \
        TCP(sport=next(_sport), dport=80, flags="S")
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT and Ether(out).dst == real_mac("198.18.1.11")
    # the IPv4 address 198.18.0.10 as the first bytes of an IPv6 one is not that service
    v6 = client_pkt("c612:a::", 80)
    assert run(dp, "lb_xdp_public", v6)[0] == XDP_PASS


def _persist_pick(dp, client):
    rc, out = run(dp, "lb_xdp_public", client_pkt(VIP_P, 443, src=client))
    assert rc == XDP_REDIRECT
    return _real_of(out)


def test_persistence_by_prefix_length(dp):
    """pmask 64: a client's /64 keeps its server; another /64 is scheduled afresh (rr moves on)."""
    first = _persist_pick(dp, "2001:2:0:5::1")
    assert [_persist_pick(dp, "2001:2:0:5::1") for _ in range(5)] == [first] * 5
    assert _persist_pick(dp, "2001:2:0:5:ffff:1:2:3") == first          # same /64
    other = _persist_pick(dp, "2001:2:0:6::1")                             # another /64
    assert other != first
    assert _persist_pick(dp, "2001:2:0:6::abcd") == other
    with PinnedMaps(dp.instance) as maps:
        svc = next(s for s in reader.read_services(maps) if str(s.address) == VIP_P)
    assert (svc.persistent, svc.netmask) == (360, 64)
    assert {str(r.address): r.persist for r in svc.reals if r.persist} == {first: 1, other: 1}
    # the templates are keyed by the client's /64, as IPVS's ipv6_addr_prefix_copy
    keys = [L.PERSIST_KEY.unpack(k) for k, _ in template_items(dp.maps)]
    nets = {str(ipaddress.IPv6Address(k[0])) for k in keys if k[1] == ip(VIP_P).packed}
    assert {"2001:2:0:5::", "2001:2:0:6::"} <= nets


def _lb_list(dp, *args) -> str:
    r = subprocess.run([sys.executable, "-m", "lb.cli.main", "list", "-n", "--instance", dp.instance, *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_lb_list_shows_ipv6_as_ipvsadm(dp):
    out = _lb_list(dp)
    assert "TCP  [2001:2::30]:443 rr persistent 360 mask 64\n" in out
    assert "TCP  [2001:2::20]:80 rr\n" in out
    assert "UDP  [2001:2::20]:53 rr\n" in out
    assert "  -> %-28s %-7s %-6d " % ("[2001:2:0:1::11]:8080", "Masq", 1) in out
    assert "  -> %-28s %-7s %-6d " % ("[2001:2:0:1::13]:80", "Route", 1) in out
    assert "TCP  198.18.0.10:80 rr\n" in out


def test_lb_list_connections_ipv6(dp):
    sport = next(_sport)
    rc, out = run(dp, "lb_xdp_public", client_pkt(VIP_DR, 80, sport))
    assert rc == XDP_REDIRECT
    rs = _real_of(out)
    text = _lb_list(dp, "-c")
    line = next(ln for ln in text.splitlines() if f"[{CLIENT}]:{sport}" in ln)
    assert line.split()[0] == "TCP" and line.split()[2] == "SYN_RECV"
    assert line.split()[3:] == [f"[{CLIENT}]:{sport}", f"[{VIP_DR}]:80", f"[{rs}]:80"]


# ---- the control plane's netlink side for IPv6, in a namespace whose only link has no carrier
# (its peer stays down): nothing can leave it, so no IPv6 packet is sent anywhere

@pytest.fixture
def dead_link_ns():
    name = f"lbv6{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        def sh(*cmd):
            subprocess.run(["nsenter", f"--net=/run/netns/{name}", *cmd], check=True, capture_output=True)
        sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        sh("sysctl", "-qw", "net.ipv6.conf.v0.disable_ipv6=0", "net.ipv6.conf.v0.accept_dad=0")
        sh("ip", "link", "set", "v0", "up")                       # v1 stays down: no carrier
        sh("ip", "-6", "addr", "add", "2001:2:0:1::1/64", "dev", "v0", "nodad")
        sh("ip", "-6", "neigh", "add", "2001:2:0:1::11", "lladdr", "02:00:00:00:02:11", "dev", "v0",
           "nud", "permanent")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _in_ns(name: str, code: str) -> str:
    r = subprocess.run(["nsenter", f"--net=/run/netns/{name}", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_next_hop_of_an_ipv6_real_server(dead_link_ns):
    out = _in_ns(dead_link_ns, "import ipaddress\n"
                 "from lb.dataplane.nexthop import resolve\n"
                 "nh = resolve(ipaddress.ip_address('2001:2:0:1::11'), need_onlink=True)\n"
                 "print(nh.ifname, nh.mac.hex(), nh.onlink)")
    assert out.split() == ["v0", "020000000211", "True"]


def test_ipv6_vips_are_taken_without_dad_and_released(dead_link_ns):
    out = _in_ns(dead_link_ns, "import ipaddress, subprocess\n"
                 "from lb.ha.addresses import OwnedAddress, take, release\n"
                 "a = [OwnedAddress('v0', ipaddress.ip_interface('2001:2::10/128'))]\n"
                 "take(a); take(a)\n"
                 "print(subprocess.run(['ip', '-6', '-o', 'addr', 'show', 'dev', 'v0'], capture_output=True,"
                 " text=True).stdout)\n"
                 "release(a)\n"
                 "print('after', subprocess.run(['ip', '-6', '-o', 'addr', 'show', 'dev', 'v0'],"
                 " capture_output=True, text=True).stdout)")
    before, after = out.split("after")
    [line] = [ln for ln in before.splitlines() if "2001:2::10/128" in ln]
    assert "nodad" in line and "tentative" not in line
    assert "2001:2::10" not in after


def test_shipped_ipv6_config_forwards(tmp_path):
    """configs/ipv6.toml as the engine turns it into the data plane's table: the persistent
    service (pmask 64) and the firewall-mark service's port range forward IPv6 clients."""
    from pathlib import Path

    from lb.config import load
    from lb.engine import build_table

    cfg = load(Path(__file__).resolve().parents[1] / "configs" / "ipv6.toml")
    table = build_table(cfg)
    with loaded_dataplane("ipv6cfg", table=table) as d:
        reals = {real_mac(rs.address): str(rs.address) for vs in cfg.virtual_servers for rs in vs.real_servers}
        rc, out = run(d, "lb_xdp_public", client_pkt("2001:2::10", 443, src="2001:2:0:7::1"))
        assert rc == XDP_REDIRECT
        first = reals[Ether(out).dst]
        for src in ("2001:2:0:7::2", "2001:2:0:7:1::9"):        # same /64: same server
            rc, out = run(d, "lb_xdp_public", client_pkt("2001:2::10", 443, src=src))
            assert rc == XDP_REDIRECT and reals[Ether(out).dst] == first
        rc, out = run(d, "lb_xdp_public", client_pkt("2001:2::11", 30042, src="2001:2:0:7::1"))
        assert rc == XDP_REDIRECT and reals[Ether(out).dst] in ("2001:2:0:1::21", "2001:2:0:1::22")
        with PinnedMaps(d.instance) as maps:
            rows = {(s.fwmark or str(s.address)): s for s in reader.read_services(maps)}
        assert (rows[621].family, rows[621].netmask) == (6, 64)
        from lb import listing
        text = listing.format_services(list(rows.values()))
        assert "FWM  621 IPv6 rr persistent 300 mask 64\n" in text
        assert "TCP  [2001:2::10]:443 wlc persistent 300 mask 64\n" in text


def test_lb_list_selects_one_ipv6_service(dp):
    """-t [IPv6]:PORT as ipvsadm takes it: the column heads, the service, its real servers."""
    out = _lb_list(dp, "-t", "[2001:2::20]:80").splitlines()
    assert out[0].startswith("Prot LocalAddress:Port") and out[2] == "TCP  [2001:2::20]:80 rr"
    assert len(out) == 3 + 3 and all(ln.startswith("  -> [2001:2:0:1::1") for ln in out[3:])
    assert _lb_list(dp, "-u", "[2001:2::20]:53").splitlines()[2] == "UDP  [2001:2::20]:53 rr"
    assert _lb_list(dp, "-t", "198.18.0.10:80").splitlines()[2] == "TCP  198.18.0.10:80 rr"


@pytest.mark.parametrize("sched", ["lblc", "lblcr"])
def test_lblc_tables_key_the_whole_ipv6_destination(sched):
    """lblc/lblcr cache per destination address: an IPv6 service's entry holds all 16 bytes of
    it (and family 6), not a truncated or folded form."""
    vip = "2001:2:0:abcd::77"
    table = TableSpec((ServiceSpec("tcp", ip(vip), 8080, sched,
                                   tuple(RealSpec(ip(a), 8080, 1, "dr") for a in REALS)),))
    with loaded_dataplane(f"v6{sched}", table=table) as d:
        rc, out = run(d, "lb_xdp_public", client_pkt(vip, 8080))
        assert rc == XDP_REDIRECT
        keys = [L.LBLC_KEY.unpack(k) for k, _ in d.maps[f"lb_{sched}"].items(batch=False)]
        assert [(fam, addr) for _svc, fam, _pad, addr in keys] == [(6, ip(vip).packed)]
