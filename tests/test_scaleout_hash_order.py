"""Active-active: every director must program the same hash tables for the same real servers.
A real server that failed its health check on one director only (and came back) is re-added at
the front of that director's list (IPVS's order); the sh/dh buckets and mh slots of a sloppy
service must not depend on that history.  lb's real service writer on dict-backed maps (no BPF)."""
from __future__ import annotations

import dataclasses
import ipaddress
from collections import defaultdict
from unittest import mock

import pytest

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane import mhtable
from lb.dataplane.services import ServiceTable
from lb.dataplane.txn import MapTxn
from lb.dataplane.xdp import Sizes
from lb.sched import model

IP = ipaddress.ip_address
REALS = tuple(RealSpec(IP(f"198.18.1.{11 + i}"), 80, 1 + i % 2, "dr") for i in range(4))


class FakeMap:
    def __init__(self, name, max_entries=0):
        self.name, self.d, self.max_entries, self.fd = name, {}, max_entries, 100
        self.percpu, self.value_size, self._slot, self.ncpus = False, 8, 8, 1

    def get(self, k):
        return self.d.get(k)
    get_raw = get

    def get_many_raw(self, ks):
        return [self.d.get(k) for k in ks]

    def set(self, k, v):
        self.d[k] = v
    set_raw = set

    def set_many(self, ks, vs, batch=True):
        self.d.update(zip(ks, vs))

    def delete(self, k):
        return self.d.pop(k, None) is not None

    def items(self, batch=True):
        return list(self.d.items())

    def close(self):
        pass


class Maps(defaultdict):
    def __missing__(self, name):
        self[name] = m = FakeMap(name)
        return m


class NextHop:
    ifindex, mac, src_mac, src_addr, mtu, ifname = 2, b"\x02" * 6, b"\x04" * 6, None, 1500, "eth1"


@pytest.fixture(autouse=True)
def fake_mh_tables(monkeypatch):
    monkeypatch.setattr(mhtable, "create_table", lambda size: FakeMap("lb_mh_table", size))


def director() -> ServiceTable:
    maps = Maps()
    t = ServiceTable(maps, MapTxn(maps, batch=True), Sizes(16, 256, 8, 4096), lambda a, need_onlink=False: NextHop(),
                     mock.MagicMock(), mock.MagicMock(), mock.MagicMock())
    t.mh = mhtable.MhTables(maps["lb_mh_tables"], maps["lb_mh_last"], 8)
    return t


def targets(t: ServiceTable) -> list:
    """The real server each mh slot / sh or dh bucket sends to."""
    st = next(iter(t.services.values()))
    if st.sched == "mh":
        return [None if r == L.LB_NONE else t.reals[r].addr for r in t.mh.tables[st.id][1]]
    pos = L.SCHED_BUCKETS.unpack(t.txn.get("lb_sched_buckets", L.U32.pack(st.id)))
    return [None if p == L.LB_NONE else t.reals[st.dests[p][1]].addr for p in pos]


@pytest.mark.parametrize("sched", ["mh", "sh", "dh"])
def test_a_flap_seen_by_one_director_leaves_the_same_hash_tables(sched):
    spec = ServiceSpec("tcp", IP("198.18.10.10"), 80, sched, REALS, "web", mh_size=251, sloppy=True)
    a, b = director(), director()
    a.apply(TableSpec((spec,)))
    b.apply(TableSpec((spec,)))
    b.apply(TableSpec((dataclasses.replace(spec, reals=REALS[1:]),)))     # rs1 down, on b only
    b.apply(TableSpec((spec,)))                                            # and back
    assert targets(a) == targets(b)


@pytest.mark.parametrize("sched", ["mh", "sh"])
def test_a_fresh_start_builds_the_tables_ipvs_would(sched):
    """(Servers in ascending order, as the BPF tests write them: the model's list order.)"""
    spec = ServiceSpec("tcp", IP("198.18.10.10"), 80, sched, REALS, "web", mh_size=251, sloppy=True)
    t = director()
    t.apply(TableSpec((spec,)))
    m = model.Service(sched, mh_size=251)
    for r in REALS:
        m.add(str(r.address), r.weight, address=r.address, port=80)
    names = m.names
    if sched == "mh":
        want = [None if p is None else IP(names[p]) for p in m.mh_table]
    else:
        want = [None if p is None else IP(names[p]) for p in model.sh_table([d.weight for d in m.dests])]
    assert targets(t) == want
