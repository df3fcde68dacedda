"""The kernel-IPVS data plane touches only its own services: one somebody else put into kernel
IPVS with a key the table wants is refused by plan (it was taken over, rewritten and deleted at
lb's stop); a clean stop tries every removal, and what the kernel would not remove stays the
instance's (its state file too), for the next run to remove.  A restart adopts its services, and
a first apply the kernel refuses part-way writes them back as the kernel had them.  And a lower
threshold without an upper one is not sent (the kernel refuses l_threshold > u_threshold, even
u_threshold 0)."""
from __future__ import annotations

import ipaddress
import json
import os

import pytest

from lb.dataplane import ipvs
from lb.dataplane.errors import ApplyFailed, TableDoesNotFit
from lb.dataplane.ipvs import IpvsDataplane, IpvsError, KDest
from lb.dataplane.nft import NftError
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


class WritingKernel(FakeKernel):
    """FakeKernel that also takes writes, as kernel IPVS does; an add_dest of an address in
    `refuse_dest` fails"""
    refuse_dest: set = set()
    timeouts_now = (900, 120, 300)

    def timeouts(self):
        return self.timeouts_now

    def set_timeouts(self, *t):
        WritingKernel.timeouts_now = t

    def add_service(self, s):
        self.services_now[s.key] = kservice(ServiceSpec(s.protocol, s.address, s.port, s.scheduler, ()),
                                            "255.255.255.255")

    def set_service(self, s):
        self.services_now[s.key].sched = s.scheduler

    def add_dest(self, s, r):
        if r.address in self.refuse_dest:
            raise IpvsError(f"kernel IPVS refused to add real server {r.address}:{r.port}: Cannot allocate memory")
        self.services_now[s.key].dests.insert(0, KDest(r.address, r.port, ipvs.FWD_METHODS[r.forward], r.weight))

    def set_dest(self, s, r):
        d = next(d for d in self.services_now[s.key].dests if d.key == r.key)
        d.weight, d.fwd = r.weight, ipvs.FWD_METHODS[r.forward]

    def del_dest(self, s, r):
        self.services_now[s.key].dests = [d for d in self.services_now[s.key].dests if d.key != r.key]


class FakeMarks:
    """the nftables rules of the instance: those the previous run left"""
    table = "inet lb_t"

    def __init__(self, fail: bool, before_failing=lambda: None):
        self.rules, self.present, self.fail = [{"rule": "the previous run's"}], True, fail
        self.before_failing = before_failing

    def load(self):
        pass

    def apply(self, services):
        if self.fail:
            self.before_failing()
            raise NftError("nft: Could not process rule: No such file or directory")
        return self.apply_rules([])

    def apply_rules(self, rules):
        changed = rules != self.rules
        self.rules, self.present = list(rules), bool(rules)
        return int(changed)


def kernel_view(k):
    """the kernel's services, each with its real servers in the kernel's order (sh and mh hash
    over it)"""
    return {key: (ks.sched, [(str(d.address), d.port, d.weight, d.fwd) for d in ks.dests])
            for key, ks in k.services_now.items()}


SYSCTLS = {"expire_nodest_conn": "0", "lblc_expiration": "86400", "lblcr_expiration": "86400", "drop_entry": "0",
           "drop_packet": "0", "secure_tcp": "0", "am_droprate": "10"}


@pytest.mark.parametrize("refused", ["real server", "firewall-mark rules", "firewall-mark rules, a client on"])
def test_a_first_apply_refused_after_adopting_writes_the_previous_runs_table_back(tmp_path, monkeypatch,
                                                                                  refused):
    """A restart adopts the previous run's services; its first apply is refused part-way (after
    a service was removed, one added, a scheduler and a weight changed): the kernel gets back what the previous
    run left (the real servers of the service it removed in the kernel's order, IPVS's sysctls),
    the rules too, and the error says so; a real server it added that a client already uses
    drains at weight 0, its connection kept.  (Before, with no table of this run to write back, the
    kernel kept half of each while the failed start left the data plane in place.)"""
    monkeypatch.setattr(ipvs, "Kernel", WritingKernel)
    monkeypatch.setattr(ipvs, "_sched_missing", lambda sched: None)
    monkeypatch.setattr(ipvs, "ensure_module", lambda: None)
    sysctl = tmp_path / "vs"
    sysctl.mkdir()
    for name, value in SYSCTLS.items():
        (sysctl / name).write_text(value + "\n")
    monkeypatch.setattr(ipvs, "SYSCTL_DIR", str(sysctl))
    WritingKernel.services_now, WritingKernel.refuse = {}, set()
    WritingKernel.refuse_dest = {ip("198.18.1.13")} if refused == "real server" else set()
    a = spec("198.18.0.10", "198.18.1.11", "198.18.1.12")
    b = ServiceSpec("tcp", ip("198.18.0.11"), 80, "sh", tuple(RealSpec(ip(f"198.18.1.2{i}"), 80, 1, "dr")
                                                             for i in (3, 1, 2)))
    for s in (a, b):
        WritingKernel.services_now[s.key] = kservice(s, "255.255.255.255")
    before = kernel_view(WritingKernel)
    old = IpvsDataplane("t", run_dir=str(tmp_path))
    old.owned = {a.key, b.key}
    old._write_state()                   # as the previous run left it

    def a_client_connects_to_the_new_server():
        if refused.endswith("a client on"):
            next(d for d in WritingKernel.services_now[a.key].dests if d.address == ip("198.18.1.13")).active = 1

    dp = IpvsDataplane("t", run_dir=str(tmp_path))
    dp.marks = FakeMarks(fail=refused.startswith("firewall-mark rules"),
                         before_failing=a_client_connects_to_the_new_server)
    dp.load()
    assert dp.adopted
    c = ServiceSpec("tcp", ip("198.18.0.9"), 80, "lblc", (RealSpec(ip("198.18.1.31"), 80, 1, "dr"),))
    a2 = ServiceSpec("tcp", a.address, 80, "wlc", (RealSpec(ip("198.18.1.11"), 80, 5, "dr"),
                                                   RealSpec(ip("198.18.1.12"), 80, 1, "dr"),
                                                   RealSpec(ip("198.18.1.13"), 80, 1, "dr")))
    with pytest.raises(ApplyFailed, match="; the previous run's table is back") as exc:
        dp.apply(TableSpec((c, a2), expire_nodest_conn=True, lblc_expiration=60))
    assert exc.value.restored
    if refused.endswith("a client on"):
        # the server the refused apply added drains (weight 0) rather than leaving at once: IPVS
        # would drop its connections' packets (expire_nodest_conn = 0); the next start settles it
        before[a.key][1].insert(0, ("198.18.1.13", 80, 0, ipvs.FWD_METHODS["dr"]))
    assert kernel_view(WritingKernel) == before
    assert {p.name: p.read_text().strip() for p in sysctl.iterdir()} == SYSCTLS
    assert dp.marks.rules == [{"rule": "the previous run's"}]
    assert dp.owned == {a.key, b.key}
    assert json.loads(open(dp.state_path).read())["services"] == sorted([str(x) for x in k] for k in (a.key, b.key))
