"""Persistence templates (IPVS persistent services) through the loaded programs."""
from __future__ import annotations

import ipaddress
import itertools

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane import layout as L
from lb.dataplane.maps import PinnedMaps
from packets_util import CLIENT_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, age, loaded_dataplane, real_mac, run, template_items

ip = ipaddress.ip_address
REALS = [ip("198.18.1.11"), ip("198.18.1.12"), ip("198.18.1.13")]
_sport = itertools.count(20000)


def table(*reals_idx, persistent=300, pmask="255.255.255.0", port=80):
    reals = tuple(RealSpec(REALS[i], 80, 1, "dr") for i in reals_idx)
    return TableSpec((ServiceSpec("tcp", ip("198.18.0.10"), port, "rr", reals, "web", persistent, pmask),))


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("persist") as d:
        yield d


def pick(dp, client, port=80):
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=client, dst="198.18.0.10") / \
        TCP(sport=next(_sport), dport=port, flags="S")
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    return {real_mac(a): str(a) for a in REALS}[Ether(out).dst]


def test_same_client_and_network_keep_their_server(dp):
    dp.apply(table(0, 1, 2, port=81))
    first = pick(dp, "198.18.0.2", 81)
    assert first == "198.18.1.13"                       # rr's first pick, as without persistence
    assert [pick(dp, "198.18.0.2", 81) for _ in range(5)] == [first] * 5
    assert pick(dp, "198.18.0.77", 81) == first             # same /24 with mask 255.255.255.0
    other = pick(dp, "198.18.9.2", 81)                       # another /24: scheduled (rr goes on)
    assert other == "198.18.1.12"
    assert pick(dp, "198.18.9.200", 81) == other
    with PinnedMaps(dp.instance) as maps:
        [svc] = reader.read_services(maps)
    assert (svc.persistent, svc.netmask) == (300, "255.255.255.0")
    persist = {str(r.address): r.persist for r in svc.reals}
    assert persist == {"198.18.1.13": 1, "198.18.1.12": 1, "198.18.1.11": 0}


def test_without_persistence_rr_rotates(dp):
    dp.apply(table(0, 1, 2, persistent=0, port=82))
    assert [pick(dp, "198.18.0.2", 82) for _ in range(3)] == ["198.18.1.13", "198.18.1.12", "198.18.1.11"]


def _templates(dp, port):
    """a port's templates, established or embryonic (a SYN's template waits in lb_persist_embryo)"""
    return {L.PERSIST_KEY.unpack(k)[0]: L.PERSIST.unpack(v) for k, v in template_items(dp.maps)
            if int.from_bytes(L.PERSIST_KEY.unpack(k)[2], "big") == port}


def test_template_expires_after_the_timeout(dp):
    dp.apply(table(0, 1, 2, persistent=1, port=83))
    first = pick(dp, "198.18.0.2", 83)
    assert pick(dp, "198.18.0.2", 83) == first
    age(dp, 61)                  # past the 1 s timeout, and its connections' (SYN_RECV, 60 s)
    assert dp.sweep() >= 2                                  # the two connections and the template
    assert _templates(dp, 83) == {}
    assert pick(dp, "198.18.0.2", 83) != first              # scheduled afresh: rr moved on


def test_template_of_a_removed_server_is_invalid(dp):
    dp.apply(table(0, 1, 2, port=84))
    first = pick(dp, "198.18.0.2", 84)
    keep = [i for i, a in enumerate(REALS) if str(a) != first]
    dp.apply(table(*keep, port=84))
    again = pick(dp, "198.18.0.2", 84)
    assert again != first
    assert [pick(dp, "198.18.0.2", 84) for _ in range(3)] == [again] * 3


def test_template_controlling_a_live_connection_outlives_its_timeout(dp):
    """IPVS (ip_vs_conn_expire): a template whose timeout runs out while a connection it made
    still lives gets 60 s more, and 60 s is its timeout from then on; the client's next
    connection still goes to its server.  (Held to kernel IPVS by tests/vm/oracle.py.)"""
    dp.apply(table(0, 1, 2, persistent=1, port=86))
    first = pick(dp, "198.18.0.2", 86)                   # SYN_RECV: lives 60 s
    age(dp, 2.2)
    dp.sweep()
    [(_last, _real, timeout)] = _templates(dp, 86).values()
    assert timeout == 60
    assert pick(dp, "198.18.0.2", 86) == first
    with PinnedMaps(dp.instance) as maps:
        [svc] = [r for r in reader.read_services(maps) if r.port == 86]
        assert sum(r.persist for r in svc.reals) == 1


def test_sweep_removes_expired_templates_and_their_count(dp):
    dp.apply(table(0, 1, 2, persistent=1, port=85))
    pick(dp, "198.18.0.2", 85)
    age(dp, 61)                                          # past the template's 1 s and SYN_RECV's 60 s
    dp.sweep()
    with PinnedMaps(dp.instance) as maps:
        [svc] = reader.read_services(maps)
        assert sum(r.persist for r in svc.reals) == 0
        left = [k for k, _ in template_items(maps)
                if int.from_bytes(L.PERSIST_KEY.unpack(k)[2], "big") == 85]
        assert left == []


def test_a_live_template_picks_in_lb_xdp_public():
    """A SYN whose client has a live template is made in lb_xdp_public: with lb_xdp_persist and
    the scheduler's program taken out of lb_progs, the client's next connections still go to its
    template's server, and the template's timer is re-armed; a client without one needs the
    programs, so its SYN is passed, counted as a failed tail call."""
    import os

    from lb.dataplane.maps import BpfMap

    with loaded_dataplane("persistinplace", table=table(0, 1, 2, port=85)) as d:
        first = pick(d, "198.18.0.2", 85)                   # the scheduler made the template
        [(_, before)] = _templates(d, 85).items()
        age(d, 5)
        progs = BpfMap.open_pinned(os.path.join(d.pin, "lb_progs"))
        try:
            for slot in (L.PROG_PERSIST, L.PROG_SCHED_BASE + L.SCHEDULERS["rr"]):
                progs.delete(L.U32.pack(slot))
        finally:
            progs.close()
        assert [pick(d, "198.18.0.77", 85) for _ in range(3)] == [first] * 3    # same /24
        [(_, after)] = _templates(d, 85).items()
        assert after[0] >= before[0]              # last_ns re-armed: the aging (5 s back) undone
        failed = d.counters().get("tail_call_failed", 0)
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.9.2", dst="198.18.0.10") / \
            TCP(sport=next(_sport), dport=85, flags="S")
        rc, out = run(d, "lb_xdp_public", pkt)
        assert (rc, out) == (XDP_PASS, bytes(pkt))
        assert d.counters()["tail_call_failed"] == failed + 1
