"""A firewall-mark service whose port groups move to the other address family (same mark):
kernel IPVS keys such a service by (family, mark), so the IPv4 one cannot be edited into the
IPv6 one -- every write addressed with the new family finds no service (ESRCH).  The data plane
replaces it (delete, add) instead of failing every apply and leaving the old family in place."""
from __future__ import annotations

import errno
import ipaddress
import os
import socket

import pytest

from lb.dataplane import ipvs
from lb.dataplane.ipvs import IpvsDataplane, IpvsError, KDest, KService
from lb.dataplane.spec import PortGroup, RealSpec, ServiceSpec, TableSpec

ip = ipaddress.ip_address


def _af(spec) -> int:
    return socket.AF_INET6 if ipvs._is_v6(spec) else socket.AF_INET


class FamilyKernel:
    """kernel IPVS keyed as the kernel keys it: (family, service key)"""
    table: dict = {}

    def __init__(self, *a, **kw):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def services(self):
        return list(self.table.values())

    def timeouts(self):
        return (900, 120, 300)

    def set_timeouts(self, *t):
        pass

    def _find(self, s):
        ks = self.table.get((_af(s), s.key))
        if ks is None:
            raise IpvsError(f"kernel IPVS refused to write {s.key}: {os.strerror(errno.ESRCH)}")
        return ks

    def add_service(self, s):
        self.table[(_af(s), s.key)] = KService(6, None if s.fwmark else s.address, 0 if s.fwmark else s.port,
                                               s.fwmark, _af(s), s.scheduler, 2, 0, None, [])

    def set_service(self, s):
        self._find(s).sched = s.scheduler

    def del_service(self, s):
        self._find(s)
        del self.table[(_af(s), s.key)]

    def add_dest(self, s, r):
        self._find(s).dests.insert(0, KDest(r.address, r.port, ipvs.FWD_METHODS[r.forward], r.weight))

    def set_dest(self, s, r):
        d = next(d for d in self._find(s).dests if d.key == r.key)
        d.weight = r.weight

    def del_dest(self, s, r):
        ks = self._find(s)
        ks.dests = [d for d in ks.dests if d.key != r.key]


def fwm(vip: str, real: str) -> ServiceSpec:
    return ServiceSpec("tcp", ip(vip), 0, "rr", (RealSpec(ip(real), 0, 1, "dr"),), fwmark=21,
                       groups=(PortGroup("tcp", ip(vip), 21, 21),))


class NoMarks:
    table = "inet lb_t"
    rules: list = []

    def load(self):
        pass

    def apply(self, services):
        return 0

    def apply_rules(self, rules):
        return 0


@pytest.mark.parametrize("old, new", [(("198.18.0.10", "198.18.1.11"), ("2001:2::1", "2001:2::11")),
                                      (("2001:2::1", "2001:2::11"), ("198.18.0.10", "198.18.1.11"))])
def test_a_firewall_mark_service_changing_family_is_replaced(tmp_path, monkeypatch, old, new):
    FamilyKernel.table = {}
    monkeypatch.setattr(ipvs, "Kernel", FamilyKernel)
    monkeypatch.setattr(ipvs, "_sched_missing", lambda sched: None)
    monkeypatch.setattr(ipvs, "ensure_module", lambda: None)
    monkeypatch.setattr(IpvsDataplane, "_set_sysctl", staticmethod(lambda *a, **kw: None))
    dp = IpvsDataplane("t", run_dir=str(tmp_path))
    dp.marks = NoMarks()
    dp.load()
    dp.apply(TableSpec((fwm(*old),)))
    dp.apply(TableSpec((fwm(*new),)))          # refused (ApplyFailed, the old family back) before
    want = fwm(*new)
    assert [(ks.af, ks.fwmark, [str(d.address) for d in ks.dests]) for ks in FamilyKernel.table.values()] == \
        [(_af(want), 21, [new[1]])]
