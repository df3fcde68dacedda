"""apply() collects its map writes and flushes them map by map (BPF_MAP_UPDATE_BATCH through
lb._bpfbatch, single writes where that is missing or refused): the maps end up byte for byte
as with single writes, services become visible only once whole (and stop being visible before
they are taken apart), and the write count is the logical one it always was."""
from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.dataplane import PortGroup, RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane import maps as maps_mod
from lb.dataplane.maps import BpfMap, have_batch
from lb.dataplane.services import WrrGrow
from lb.dataplane.xdp import Sizes
from lb.sched import model
from packets_util import loaded_dataplane

ip = ipaddress.ip_address
SIZES = Sizes(32, 4096, 16, 4096)


def _reals(base: str, n: int, weights=None, fwd="dr", port=80, **kw) -> tuple[RealSpec, ...]:
    first = ip(base)
    return tuple(RealSpec(first + i, port, (weights[i] if weights else 1 + i % 3), fwd, **kw) for i in range(n))


def mixed_table(step: int = 0) -> TableSpec:
    """Every kind of service there is; step 1 changes weights, membership and schedulers and
    removes / adds services."""
    v4 = ip("198.18.0.50")
    svcs = [
        ServiceSpec("tcp", v4, 80, "wlc", _reals("198.18.1.1", 6, weights=[1, 2, 3, 0, 5, 6])),
        ServiceSpec("tcp", v4, 81, "rr", _reals("198.18.1.20", 5, fwd="nat", port=8080)),
        ServiceSpec("tcp", v4, 82, "wrr", _reals("198.18.1.30", 7, weights=[4, 6, 8, 2, 2, 10, 6])),
        ServiceSpec("tcp", v4, 83, "mh", _reals("198.18.1.40", 5), sched_flags=("mh-port",), mh_size=251),
        ServiceSpec("udp", v4, 53, "dh", _reals("198.18.1.50", 4)),
        ServiceSpec("tcp", v4, 84, "sh", _reals("198.18.1.60", 4, weights=[1, 3, 2, 1]),
                    sched_flags=("sh-fallback", "sh-port")),
        ServiceSpec("tcp", v4, 443, "rr", _reals("198.18.1.70", 3), persistent=300, pmask="255.255.255.0"),
        ServiceSpec("tcp", v4, 85, "lblc", _reals("198.18.1.80", 3)),
        ServiceSpec("tcp", v4, 86, "wlc", _reals("198.18.1.90", 3, u_threshold=10, l_threshold=5)),
        ServiceSpec("tcp", v4, 21, "rr", _reals("198.18.1.100", 3, fwd="nat", port=0), "ftp", 300,
                    "255.255.255.255", fwmark=21,
                    groups=(PortGroup("tcp", v4, 21, 21), PortGroup("tcp", v4, 40000, 40099))),
        ServiceSpec("tcp", ip("2001:2::50"), 80, "wlc", _reals("2001:2:0:1::1", 4)),
        ServiceSpec("tcp", ip("2001:2::51"), 443, "mh", _reals("2001:2:0:1::10", 4), persistent=360, pmask=64,
                    mh_size=251),
        ServiceSpec("tcp", ip("2001:2::52"), 80, "sh", _reals("2001:2:0:1::20", 3)),
    ]
    if step == 1:
        s = svcs
        s[0] = dataclasses.replace(s[0], reals=_reals("198.18.1.1", 6, weights=[1, 2, 9, 0, 5, 6]))
        s[1] = dataclasses.replace(s[1], reals=s[1].reals[1:] + _reals("198.18.1.29", 1, fwd="nat", port=8080))
        s[2] = dataclasses.replace(s[2], scheduler="dh")               # wrr -> dh: gets buckets
        s[3] = dataclasses.replace(s[3], reals=_reals("198.18.1.40", 6, weights=[1, 1, 4, 1, 1, 2]))
        s[4] = dataclasses.replace(s[4], scheduler="wlc")              # dh -> wlc: its buckets go
        s[11] = dataclasses.replace(s[11], scheduler="rr")             # mh -> rr: its table goes
        del s[7]                                                       # lblc service removed
        del s[8]                                                       # the firewall-mark service removed
        s.append(ServiceSpec("udp", ip("2001:2::53"), 53, "mh", _reals("2001:2:0:1::30", 3), mh_size=251))
        s.append(ServiceSpec("tcp", v4, 22, "rr", _reals("198.18.1.110", 2), fwmark=22,
                             groups=(PortGroup("tcp", v4, 22, 22),)))
    return TableSpec(tuple(svcs), lblcr_expiration=3600)


def snapshot(dp) -> dict:
    """Every map apply writes, as bytes (the mh tables by content: their fds differ)."""
    out = {}
    for name in SIZES.expected():
        if name == "lb_mh_tables":
            continue
        out[name] = dict(dp.maps[name].items(batch=False))
    out["mh"] = {sid: m.items(batch=False) for sid, (m, _) in dp.mh.tables.items()}
    out["lb_mh_tables keys"] = sorted(k for k, _ in dp.maps["lb_mh_tables"].items(batch=False))
    for name in ("lb_timeouts", "lb_globals"):
        out[name] = dict(dp.maps[name].items(batch=False))
    return out


@pytest.fixture(scope="module")
def two():
    """(batch data plane, single-write data plane)"""
    with loaded_dataplane("abat", SIZES) as fast, loaded_dataplane("asgl", SIZES) as slow:
        slow.batch_writes = False
        yield fast, slow


def _count_batches(monkeypatch) -> list:
    calls = []
    real = maps_mod._update_batch

    def spy(fd, ks, vs, kb, vb, n):
        calls.append(n)
        return real(fd, ks, vs, kb, vb, n)

    monkeypatch.setattr(maps_mod, "_update_batch", spy)
    return calls


def test_batch_and_single_writes_give_the_same_maps(two, monkeypatch):
    fast, slow = two
    calls = _count_batches(monkeypatch)
    for step in (0, 1, 0):
        table = mixed_table(step)
        before = len(calls)
        w_fast = fast.apply(table)
        mid = len(calls)
        w_slow = slow.apply(table)
        assert len(calls) == mid                    # the single-write path made no batch call
        if have_batch():
            assert mid > before                     # the batch path did
        assert w_fast == w_slow > 0
        a, b = snapshot(fast), snapshot(slow)
        assert a.keys() == b.keys()
        for name in a:
            assert a[name] == b[name], f"step {step}: {name} differs"
        assert len(a["lb_services"]) + len(a["lb_fwm_services"]) == len(table.services)
        assert {fast.services[k].id for k in fast.services} == {slow.services[k].id for k in slow.services}
    # the mh services really have their tables, the others none
    mh_ids = {st.id for st in fast.services.values() if st.sched == "mh"}
    assert set(fast.mh.tables) == mh_ids and len(mh_ids) == 2
    assert fast.apply(mixed_table(0)) == slow.apply(mixed_table(0)) == 0


def test_refused_batch_falls_back_to_single_writes(monkeypatch):
    """A kernel without BPF_MAP_UPDATE_BATCH for a map (ENOTSUPP) gets single writes, and the
    map stops trying."""
    def refuse(fd, ks, vs, kb, vb, n):
        refuse.calls += 1
        return -524

    refuse.calls = 0
    with loaded_dataplane("aref", SIZES) as dp, loaded_dataplane("aref2", SIZES) as ref:
        dp.batch_writes = True
        monkeypatch.setattr(maps_mod, "_update_batch", refuse)
        monkeypatch.setattr(maps_mod, "_bpfbatch", maps_mod._bpfbatch or object())
        n0 = dp.apply(mixed_table(0))
        first = refuse.calls
        assert first > 0
        assert not dp.maps["lb_reals"].batch_update
        weights = {rid: w for st in dp.services.values()           # a weight lives in its dest slot
                   for rid, w, _ in L.unpack_dests(dp.maps["lb_svc_dests"].get(L.U32.pack(st.id)), len(st.dests))}
        got = {rid: L.Real.unpack(dp.maps["lb_reals"].get(L.U32.pack(rid)), weights[rid]) for rid in dp.reals}
        assert {(r.addr, r.port, r.weight) for r in got.values()} == \
               {(r.address, r.port, r.weight) for s in mixed_table(0).services for r in s.reals}
        snap0 = snapshot(dp)
        n1 = dp.apply(mixed_table(1))
        assert refuse.calls == first                # refused maps are not asked again
        snap1 = snapshot(dp)
        monkeypatch.undo()
        ref.batch_writes = False
        for n, step, snap in ((n0, 0, snap0), (n1, 1, snap1)):
            assert ref.apply(mixed_table(step)) == n
            want = snapshot(ref)
            for name in want:
                assert snap[name] == want[name], f"step {step}: {name} differs"


@pytest.fixture()
def plain():
    with loaded_dataplane("aplain", SIZES) as dp:
        yield dp


def plain_table(nsvc: int, nreal: int, weight0: int = 1, drop_last: bool = False) -> TableSpec:
    svcs = []
    for s in range(nsvc):
        reals = tuple(RealSpec(ip("198.19.0.0") + s * nreal + r, 80, weight0 if (s, r) == (0, 0) else 1 + r % 3,
                               "dr") for r in range(nreal))
        if drop_last and s == 0:
            reals = reals[:-1]
        svcs.append(ServiceSpec("tcp", ip("198.18.100.0") + s, 80, "wlc", reals))
    return TableSpec(tuple(svcs))


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "single"])
def test_write_counts_are_the_logical_ones(plain, batch):
    """The counts the benchmark shows: per new wlc service of r real servers, 7 counters + 1
    lb_reals per server, r - 1 position fixes, lb_svc_dests, lb_svc, lb_sched_state, stats,
    rates, lb_services, its VIP's lb_vip_addrs entry (each has its own); then 12 timeouts +
    lblcr_expiration + the VIP filter + the too-big answers' interval and burst once.  A
    one-weight change is 3 writes, removing the front real server 1 + (r - 1) + 3, an unchanged
    table 0."""
    plain.batch_writes = batch
    nsvc, r = 20, 16
    assert plain.apply(plain_table(nsvc, r)) == nsvc * (8 * r + (r - 1) + 7) + 16
    w = plain.apply(plain_table(nsvc, r, weight0=5))
    assert w == 3               # lb_svc_dests (the weight's one place), lb_svc, lb_sched_state
    st = next(s for s in plain.services.values() if s.key.addr == ip("198.18.100.0"))
    rid = next(rid for (a, _), rid in st.dests if a == ip("198.19.0.0"))
    dests = L.unpack_dests(plain.maps["lb_svc_dests"].get(L.U32.pack(st.id)), len(st.dests))
    assert (rid, 5, 0) in dests
    assert plain.apply(plain_table(nsvc, r, weight0=5, drop_last=True)) == 1 + (r - 1) + 3
    assert plain.apply(plain_table(nsvc, r, weight0=5, drop_last=True)) == 0


def test_flush_order_keeps_services_whole(plain, monkeypatch):
    """The order the kernel sees: a new service's real servers, dest list, scheduler state and
    lb_svc before its lb_services entry; a removed service's entry before its real servers are
    retired."""
    log: list[tuple[str, str, int]] = []
    orig_many, orig_set, orig_del = BpfMap.set_many, BpfMap.set, BpfMap.delete

    def set_many(self, keys, values, batch=True):
        log.append(("set", self.name, len(keys)))
        return orig_many(self, keys, values, batch)

    def set_one(self, key, value, flags=0):
        log.append(("set", self.name, 1))
        return orig_set(self, key, value, flags)

    def delete(self, key):
        log.append(("del", self.name, 1))
        return orig_del(self, key)

    monkeypatch.setattr(BpfMap, "set_many", set_many)
    monkeypatch.setattr(BpfMap, "set", set_one)
    monkeypatch.setattr(BpfMap, "delete", delete)
    plain.apply(plain_table(30, 8))
    names = [n for op, n, _ in log if op == "set"]
    first = {n: names.index(n) for n in set(names)}
    last = {n: len(names) - 1 - names[::-1].index(n) for n in set(names)}
    assert [k for op, n, k in log if op == "set" and n == "lb_services"] == [30]    # one batch of 30
    for part in ("lb_real_conns", "lb_real_stats", "lb_reals", "lb_svc_dests", "lb_svc", "lb_sched_state",
                 "lb_svc_stats"):
        assert last[part] < first["lb_services"], part
    assert last["lb_reals"] < first["lb_svc_dests"] and last["lb_svc_dests"] < first["lb_svc"]
    log.clear()
    plain.apply(plain_table(29, 8))         # the last service goes
    seq = [(op, n) for op, n, _ in log]
    assert seq.index(("del", "lb_services")) < seq.index(("set", "lb_reals"))
    assert seq.index(("del", "lb_services")) < seq.index(("set", "lb_svc"))
    # an mh service the data path sees: its table's slots are written in place after the
    # lb_reals entry of the server they name, and after the service's list and lb_svc (the old
    # slots are checked against both: a list under an old lb_svc leaves its last servers out)
    mh = ServiceSpec("tcp", ip("198.18.0.61"), 80, "mh", _reals("198.18.3.10", 3), mh_size=251)
    plain.apply(TableSpec((mh,)))
    log.clear()
    plain.apply(TableSpec((dataclasses.replace(mh, reals=_reals("198.18.3.10", 4)),)))
    seq = [(op, n) for op, n, _ in log]
    assert ("set", "lb_mh_table") in seq
    assert seq.index(("set", "lb_reals")) < seq.index(("set", "lb_svc_dests")) < seq.index(("set", "lb_svc")) \
        < seq.index(("set", "lb_mh_table"))
    # another size: the new table, whole, before lb_svc names it
    log.clear()
    plain.apply(TableSpec((dataclasses.replace(mh, reals=_reals("198.18.3.10", 4), mh_size=257),)))
    seq = [(op, n) for op, n, _ in log]
    assert seq.index(("set", "lb_mh_table")) < seq.index(("set", "lb_mh_tables")) < seq.index(("set", "lb_svc"))


def test_batched_reads_see_pending_writes(plain):
    """A threshold change clears OVERLOAD (pending) and the dest list written in the same apply
    must not carry the stale flag."""
    t = TableSpec((ServiceSpec("tcp", ip("198.18.0.60"), 80, "wlc", _reals("198.18.3.1", 3, u_threshold=4)),))
    plain.apply(t)
    st = next(iter(plain.services.values()))
    rid = st.dests[0][1]
    plain.maps["lb_real_overload"].set(L.U32.pack(rid), L.U32.pack(1))    # as BPF sets it
    plain.table.write_dests(st)
    assert L.unpack_dests(plain.maps["lb_svc_dests"].get(L.U32.pack(st.id)), 3)[0][2] & L.REAL_F_OVERLOAD
    # u_threshold 4 -> 10, above its 0 connections: OVERLOAD goes (IPVS __ip_vs_update_dest)
    t2 = TableSpec((ServiceSpec("tcp", ip("198.18.0.60"), 80, "wlc", _reals("198.18.3.1", 3, u_threshold=10)),))
    plain.apply(t2)
    assert plain.maps["lb_real_overload"].get(L.U32.pack(rid)) == L.U32.pack(0)
    flags = [f for _, _, f in L.unpack_dests(plain.maps["lb_svc_dests"].get(L.U32.pack(st.id)), 3)]
    assert not any(f & L.REAL_F_OVERLOAD for f in flags)


@settings(max_examples=300, deadline=None)
@given(base=st.lists(st.integers(0, 40), max_size=6), added=st.lists(st.integers(0, 40), min_size=1, max_size=12),
       cw=st.integers(0, 50))
def test_wrr_grow_matches_the_model(base, added, cw):
    """WrrGrow (apply's O(1) per added server) against sched_model.wrr_dest_changed on the
    whole list after each insert at the front."""
    grow, ws = WrrGrow(list(base), cw), list(base)
    want = model.WrrMark(None, cw, 0, 1)
    for w in added:
        ws.insert(0, w)
        want = model.wrr_dest_changed(want, ws)
        grow.add(w)
        assert grow.mark() == want
    with pytest.raises(ValueError):
        grow.add(-1)
