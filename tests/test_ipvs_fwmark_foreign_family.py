"""A firewall mark may name two kernel IPVS services, an IPv4 and an IPv6 one (IPVS keys a
firewall-mark service by family and mark; ipvsadm -A -f 21 and ipvsadm -A -f 21 -6).  lb's
service of one family and the operator's of the other one share lb's key ("fwmark", 21), and the
data plane took whichever the kernel's dump gave last for its own: an apply "replaced" the
operator's service of the other family (deleted it, then failed to add its own), a stop deleted
it and left lb's, and a start with the operator's IPv6 one in place refused lb's IPv4 one as
"somebody else's".  Now the operator's service of the other family is left alone."""
from __future__ import annotations

import ipaddress
import socket

import pytest

from lb.dataplane import ipvs
from lb.dataplane.errors import TableDoesNotFit
from lb.dataplane.ipvs import IpvsDataplane, KDest, KService
from lb.dataplane.spec import TableSpec
from test_ipvs_fwmark_family import FamilyKernel, NoMarks, fwm

ip = ipaddress.ip_address


def operators_ipv6_fwm21() -> KService:
    """ipvsadm -A -f 21 -6 -s wlc; ipvsadm -a -f 21 -6 -r 2001:2::99"""
    return KService(0, None, 0, 21, socket.AF_INET6, "wlc", 2, 0, 128,
                    [KDest(ip("2001:2::99"), 0, ipvs.IP_VS_CONN_F_DROUTE, 1)])


def view():
    return sorted((af, ks.sched, [str(d.address) for d in ks.dests]) for (af, _), ks in FamilyKernel.table.items())


@pytest.fixture
def kernel(monkeypatch):
    FamilyKernel.table = {}
    monkeypatch.setattr(ipvs, "Kernel", FamilyKernel)
    monkeypatch.setattr(ipvs, "_sched_missing", lambda sched: None)
    monkeypatch.setattr(ipvs, "ensure_module", lambda: None)
    monkeypatch.setattr(IpvsDataplane, "_set_sysctl", staticmethod(lambda *a, **kw: None))
    return FamilyKernel


class Marks(NoMarks):
    def remove(self):
        return 0


def dataplane(tmp_path) -> IpvsDataplane:
    dp = IpvsDataplane("t", run_dir=str(tmp_path))
    dp.marks = Marks()
    dp.load()
    return dp


OPERATORS = (socket.AF_INET6, "wlc", ["2001:2::99"])


@pytest.mark.parametrize("first", ["lb", "operator"])
def test_the_operators_service_of_the_other_family_is_left_alone(tmp_path, kernel, first):
    theirs = operators_ipv6_fwm21()
    if first == "operator":
        kernel.table[(socket.AF_INET6, ("fwmark", 21))] = theirs
    dp = dataplane(tmp_path)
    table = TableSpec((fwm("198.18.0.10", "198.18.1.11"),))
    dp.plan(table)                      # refused as "not instance t's" when it was there first
    dp.apply(table)
    if first == "lb":
        # added after lb's: the kernel's dump gives the newest first, a FamilyKernel the newest last
        kernel.table[(socket.AF_INET6, ("fwmark", 21))] = theirs
    table = TableSpec((fwm("198.18.0.10", "198.18.1.12"),))
    dp.plan(table)
    dp.apply(table)
    assert view() == sorted([OPERATORS, (socket.AF_INET, "rr", ["198.18.1.12"])])
    # a restart that keeps the data plane adopts lb's service, not the operator's
    dp = dataplane(tmp_path)
    assert dp.adopted and dp.services[("fwmark", 21)].address.version == 4
    dp.apply(table)
    assert view() == sorted([OPERATORS, (socket.AF_INET, "rr", ["198.18.1.12"])])
    dp.detach_all()
    dp.unpin()
    assert view() == [OPERATORS]


def test_moving_into_the_family_of_the_operators_service_is_refused_by_plan(tmp_path, kernel):
    dp = dataplane(tmp_path)
    dp.apply(TableSpec((fwm("198.18.0.10", "198.18.1.11"),)))
    kernel.table[(socket.AF_INET6, ("fwmark", 21))] = operators_ipv6_fwm21()
    with pytest.raises(TableDoesNotFit, match="FWM 21 IPv6 exists in kernel IPVS and is not instance t's"):
        dp.plan(TableSpec((fwm("2001:2::1", "2001:2::11"),)))
