"""IPVS NAT forwards the real servers' replies (addressed to the clients) through the kernel's
FORWARD path, so the director needs forwarding on in each family it serves.  The IPVS data plane
turned on net.ipv4.ip_forward only: an IPv6 NAT service got its requests to the real servers,
and their replies were dropped by ip6_forward (net.ipv6.conf.all.forwarding = 0, a host's
default) before IPVS saw them.  Now IPv6 forwarding is turned on too once an IPv6 service is in
the table (at attach, or by the apply that adds the first one), and only then."""
from __future__ import annotations

import ipaddress

import pytest

from lb.dataplane import ipvs
from lb.dataplane.ipvs import IpvsDataplane
from lb.dataplane.spec import RealSpec, ServiceSpec, TableSpec
from test_ipvs_fwmark_family import FamilyKernel, NoMarks

ip = ipaddress.ip_address
V4 = ServiceSpec("tcp", ip("198.18.0.10"), 80, "rr", (RealSpec(ip("198.18.1.11"), 80, 1, "nat"),))
V6 = ServiceSpec("tcp", ip("2001:2::10"), 80, "rr", (RealSpec(ip("2001:2:0:1::11"), 80, 1, "nat"),))


@pytest.fixture
def forwarding(tmp_path, monkeypatch):
    """the two forwarding switches, off (as on a host that is no router); read back by family"""
    paths = {}
    for family, (_, name) in ipvs.IP_FORWARD.items():
        p = tmp_path / f"forward{family}"
        p.write_text("0\n")
        paths[family] = (str(p), name)
    monkeypatch.setattr(ipvs, "IP_FORWARD", paths)
    FamilyKernel.table = {}
    monkeypatch.setattr(ipvs, "Kernel", FamilyKernel)
    monkeypatch.setattr(IpvsDataplane, "_set_sysctl", staticmethod(lambda *a, **kw: None))
    return lambda: {f: open(p).read().strip() for f, (p, _) in paths.items()}


def dataplane(tmp_path) -> IpvsDataplane:
    dp = IpvsDataplane("t", run_dir=str(tmp_path))
    dp.marks = NoMarks()
    return dp


def test_nat_with_an_ipv6_service_turns_ipv6_forwarding_on(tmp_path, forwarding):
    dp = dataplane(tmp_path)
    dp.apply(TableSpec((V4, V6)))
    dp.attach("pub0", "public")
    assert forwarding() == {4: "0", 6: "0"}          # not before the private side (NAT) is served
    dp.attach("priv0", "private")
    assert forwarding() == {4: "1", 6: "1"}


def test_ipv4_only_nat_leaves_ipv6_forwarding_alone_until_a_reload_adds_an_ipv6_service(tmp_path, forwarding):
    dp = dataplane(tmp_path)
    dp.apply(TableSpec((V4,)))
    dp.attach("pub0", "public")
    dp.attach("priv0", "private")
    assert forwarding() == {4: "1", 6: "0"}
    dp.apply(TableSpec((V4, V6)))
    assert forwarding() == {4: "1", 6: "1"}


def test_no_private_side_no_forwarding(tmp_path, forwarding):
    dp = dataplane(tmp_path)
    dp.attach("pub0", "public")
    dp.apply(TableSpec((V6,)))
    assert forwarding() == {4: "0", 6: "0"}


def test_ipv6_forwarding_warns_of_interfaces_that_stop_taking_router_advertisements(tmp_path, forwarding, caplog,
                                                                                  monkeypatch):
    conf = tmp_path / "conf"
    for dev, ra in (("all", "1"), ("default", "1"), ("eth0", "1"), ("eth1", "2"), ("lo", "0")):
        (conf / dev).mkdir(parents=True)
        (conf / dev / "accept_ra").write_text(ra + "\n")
    monkeypatch.setattr(ipvs._warn_accept_ra, "__defaults__", (str(conf),))
    dp = dataplane(tmp_path)
    dp.apply(TableSpec((V6,)))
    with caplog.at_level("WARNING", logger="lb.dataplane.ipvs"):
        dp.attach("priv0", "private")
    assert forwarding()[6] == "1"
    warned = [r.getMessage() for r in caplog.records if "router advertisements" in r.getMessage()]
    assert len(warned) == 1 and "ignored on eth0 " in warned[0] and "eth1" not in warned[0]
