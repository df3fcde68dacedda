"""The kernel-IPVS data plane touches only its own services: one somebody else put into kernel
IPVS with a key the table wants is refused by plan (it was taken over, rewritten and deleted at
lb's stop); a clean stop tries every removal, and what the kernel would not remove stays the
instance's (its state file too), for the next run to remove.  And a lower threshold without an
upper one is not sent (the kernel refuses l_threshold > u_threshold, even u_threshold 0)."""
from __future__ import annotations

import ipaddress
import os

import pytest

from lb.dataplane import ipvs
from lb.dataplane.errors import TableDoesNotFit
from lb.dataplane.ipvs import IpvsDataplane, IpvsError
from lb.dataplane.spec import RealSpec, ServiceSpec, TableSpec
from test_ipvs_ipv6 import kservice

ip = ipaddress.ip_address


def spec(vip: str, *reals: str) -> ServiceSpec:
    return ServiceSpec("tcp", ip(vip), 80, "rr", tuple(RealSpec(ip(a), 80, 1, "dr") for a in reals))


class FakeKernel:
    """kernel IPVS's services (key -> KService), shared by every `with Kernel()`; del_service of a
    key in `refuse` fails as the kernel would."""
    services_now: dict = {}
    refuse: set = set()

    def __init__(self, *a, **kw):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def services(self):
        return list(self.services_now.values())

    def del_service(self, s):
        if s.key in self.refuse:
            raise IpvsError(f"kernel IPVS refused to del_service {s.key}: Device or resource busy")
        self.services_now.pop(s.key)


@pytest.fixture
def kernel(monkeypatch):
    FakeKernel.services_now, FakeKernel.refuse = {}, set()
    monkeypatch.setattr(ipvs, "Kernel", FakeKernel)
    monkeypatch.setattr(ipvs, "_sched_missing", lambda sched: None)
    return FakeKernel


def test_a_service_somebody_else_put_into_ipvs_is_refused_not_taken_over(tmp_path, kernel):
    theirs = spec("198.18.0.10", "198.18.1.99")
    kernel.services_now[theirs.key] = kservice(theirs, "255.255.255.255")
    dp = IpvsDataplane("t", run_dir=str(tmp_path))
    with pytest.raises(TableDoesNotFit, match=r"virtual service TCP 198.18.0.10:80 exists in kernel IPVS and is "
                                              r"not instance t's"):
        dp.plan(TableSpec((spec("198.18.0.10", "198.18.1.11"),)))
    dp.owned.add(theirs.key)            # its own (made or adopted): planned as usual
    dp.plan(TableSpec((spec("198.18.0.10", "198.18.1.11"),)))


def test_a_stop_tries_every_removal_and_keeps_what_is_left(tmp_path, kernel):
    a, b = spec("198.18.0.10", "198.18.1.11"), spec("198.18.0.11", "198.18.1.12")
    for s in (a, b):
        kernel.services_now[s.key] = kservice(s, "255.255.255.255")
    kernel.refuse = {a.key}
    dp = IpvsDataplane("t", run_dir=str(tmp_path))
    dp.owned = {a.key, b.key}
    dp._write_state()
    dp.detach_all()
    dp.unpin()
    assert list(kernel.services_now) == [a.key]          # b removed though a was refused first
    assert dp.owned == {a.key} and os.path.exists(dp.state_path)
    kernel.refuse = set()
    dp.detach_all()
    dp.unpin()
    assert kernel.services_now == {} and not os.path.exists(dp.state_path)


def test_a_lower_threshold_without_an_upper_one_is_not_sent():
    sent = [dict(ipvs.Kernel._dest(r).dump_nla()["attrs"])["IPVS_DEST_ATTR_L_THRESH"]
            for r in (RealSpec(ip("198.18.1.11"), 80, 1, "dr", l_threshold=5),
                      RealSpec(ip("198.18.1.12"), 80, 1, "dr", u_threshold=10, l_threshold=5))]
    assert sent == [0, 5]
