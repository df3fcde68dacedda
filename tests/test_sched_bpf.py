"""The BPF schedulers pick the same real server as the pure-Python IPVS model (lb.sched.model),
new connection by new connection, through BPF_PROG_TEST_RUN."""
from __future__ import annotations

import ipaddress
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.sched import model
from packets_util import CLIENT_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, age, client6, loaded_dataplane, real_mac, run

VIP = ipaddress.ip_address("198.18.0.30")
_ports = itertools.count(1000)
_sports = itertools.count(10000)


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("sched") as d:
        yield d


def _reals(n, family=4):
    if family == 6:
        return [ipaddress.ip_address(f"2001:2:0:2::{i + 1:x}") for i in range(n)]
    return [ipaddress.ip_address(f"198.18.2.{i + 1}") for i in range(n)]


def check_against_model(dp, sched, weights, count, acks=(), vip=VIP, clients=("198.18.0.2",),
                        thresholds=(), flags=(), sports=None, fins=(), port=None):
    """Program a fresh service (new port) with `weights` in config order, send `count` SYNs,
    and compare each pick with the model's.  A SYN alone leaves the connection SYN_RECV, which
    counts as active (as in kernel IPVS); when acks[i] (or acks is True) the i-th flow's ACK
    follows its SYN, which makes the connection ESTABLISHED (still active) under DR.  When
    fins[i] (or fins is True) a FIN follows (after the ACK, if any): the connection leaves the
    active states (FIN_WAIT or TIME_WAIT, inactive) and the model deactivates it.  The i-th flow
    comes from clients[i % len(clients)] (sh hashes it) to `vip` (dh hashes it).  An IPv6 `vip`
    makes an IPv6 service with IPv6 real servers (clients then IPv6 too).  `port`: the service's
    port (default a new one); the same port again changes that service's scheduler."""
    port = next(_ports) if port is None else port
    vip = ipaddress.ip_address(vip)
    addrs = _reals(len(weights), vip.version)
    ip = IPv6 if vip.version == 6 else IP
    th = list(thresholds) + [(0, 0)] * (len(weights) - len(thresholds))
    spec = ServiceSpec("tcp", vip, port, sched, tuple(RealSpec(a, 80, w, "dr", *t)
                                                      for a, w, t in zip(addrs, weights, th)),
                       sched_flags=tuple(flags))
    dp.apply(TableSpec((spec,)))
    m = model.Service(sched, flags)
    for a, w, t in zip(addrs, weights, th):   # the lvs daemon adds them in config order
        m.add(str(a), w, u_threshold=t[0], l_threshold=t[1])
    mac_to_addr = {real_mac(a): str(a) for a in addrs}
    got, want = [], []
    for i in range(count):
        sport = next(_sports) % 65536 or 1
        client = clients[i % len(clients)]
        base = Ether(src=CLIENT_MAC, dst=PUB_MAC) / ip(src=str(client), dst=str(vip))
        rc, out = run(dp, "lb_xdp_public", base / TCP(sport=sport, dport=port, flags="S"))
        assert rc in (XDP_REDIRECT, XDP_PASS)
        g = mac_to_addr.get(Ether(out).dst) if rc == XDP_REDIRECT else None
        # the model hashes IPVS's addr_fold of each address (an IPv4 address is its own fold)
        # a packet from the VIP it is sent to is not balanced (bpf/lb.c lb_from_itself: the
        # kernel drops it as a martian before IPVS would see it)
        w = None if ipaddress.ip_address(client) == vip else \
            m.schedule(saddr=model.addr_fold(client), daddr=model.addr_fold(vip), sport=sport)
        got.append(g)
        want.append(w)
        if g != w:
            break
        ack = acks if isinstance(acks, bool) else (i < len(acks) and acks[i])
        if ack and w is not None:
            rc, out = run(dp, "lb_xdp_public", base / TCP(sport=sport, dport=port, flags="A", seq=1, ack=1))
            assert rc == XDP_REDIRECT and mac_to_addr.get(Ether(out).dst) == w
            # SYN_RECV -> ESTABLISHED: active before and after, the counts do not change
        fin = fins if isinstance(fins, bool) else (i < len(fins) and fins[i])
        if fin and w is not None:
            rc, out = run(dp, "lb_xdp_public", base / TCP(sport=sport, dport=port, flags="FA", seq=1, ack=1))
            assert rc == XDP_REDIRECT and mac_to_addr.get(Ether(out).dst) == w
            m.deactivate(w)   # -> FIN_WAIT (after ESTABLISHED) or TIME_WAIT (after SYN_RECV): inactive
    assert got == want


# kernel IPVS's own picks (Debian's kernel in the VM), recorded by tests/vm/record_sequences.py;
# tests/vm/test_ipvs_vm.py checks on every VM run that the kernel still picks these
KERNEL_SEQUENCES = json.loads((Path(__file__).parent / "golden" / "ipvs_sequences.json").read_text())["sequences"]


def xdp_sequence(dp, sched, weights, count) -> list[int | None]:
    """The XDP programs' picks for `count` new connections to a fresh service over len(weights)
    real servers added in config order: each pick as the real's index in config order."""
    port = next(_ports)
    addrs = _reals(len(weights))
    dp.apply(TableSpec((ServiceSpec("tcp", VIP, port, sched, tuple(RealSpec(a, 80, w, "dr")
                                                                   for a, w in zip(addrs, weights))),)))
    index = {real_mac(a): i for i, a in enumerate(addrs)}
    out = []
    for _ in range(count):
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst=str(VIP)) / \
            TCP(sport=next(_sports) % 65536 or 1, dport=port, flags="S")
        rc, raw = run(dp, "lb_xdp_public", pkt)
        out.append(index.get(Ether(raw).dst) if rc == XDP_REDIRECT else None)
    return out


@pytest.mark.parametrize("case, sched", [("rr-equal", "rr"), ("wrr-321", "wrr"), ("wlc-2000", "wlc")])
def test_kernel_sequence(dp, case, sched):
    """rr 1:1:1 (kernel order rs3 rs2 rs1 ...), wrr 3:2:1 (rs3 rs2 rs1 rs1 rs2 rs1, repeating),
    wlc 2000:1000:1000: the XDP programs pick exactly what kernel IPVS picked (the recording),
    and so does the model."""
    rec = KERNEL_SEQUENCES[case]
    assert rec["scheduler"] == sched
    n = len(rec["picks"])
    assert xdp_sequence(dp, sched, rec["weights"], n) == rec["picks"]
    check_against_model(dp, sched, rec["weights"], n)


def test_rr_kernel_order(dp):
    assert xdp_sequence(dp, "rr", [1, 1, 1], 9) == KERNEL_SEQUENCES["rr-equal"]["picks"] == [2, 1, 0] * 3


def test_wrr_kernel_sequence(dp):
    assert xdp_sequence(dp, "wrr", [3, 2, 1], 12) == KERNEL_SEQUENCES["wrr-321"]["picks"] == [2, 1, 0, 0, 1, 0] * 2


def test_wrr_keeps_its_place_through_a_service_only_edit(dp):
    """ipvsadm -E of a wrr service that leaves its real servers alone (its persistence here)
    runs no scheduler hook: the sequence goes on where it was (every rewrite of the service
    started it from the list's head again, as only a real server's edit does: wrr_dest_changed)."""
    port = next(_ports)
    addrs = _reals(3)
    index = {real_mac(a): i for i, a in enumerate(addrs)}
    clients = (f"198.18.5.{i}" for i in range(1, 250))

    def apply(persistent=0):
        reals = tuple(RealSpec(a, 80, w, "dr") for a, w in zip(addrs, (3, 2, 1)))
        dp.apply(TableSpec((ServiceSpec("tcp", VIP, port, "wrr", reals, persistent=persistent),)))

    def picks(n):
        out = []
        for _ in range(n):                     # a new client each time: no template to follow
            pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=next(clients), dst=str(VIP)) / \
                TCP(sport=next(_sports) % 65536 or 1, dport=port, flags="S")
            rc, raw = run(dp, "lb_xdp_public", pkt)
            out.append(index.get(Ether(raw).dst) if rc == XDP_REDIRECT else None)
        return out
    cycle = [2, 1, 0, 0, 1, 0]                 # 3:2:1, as kernel IPVS picks it (above)
    apply()
    first = picks(2)
    apply(persistent=300)                      # a service-only edit
    assert first + picks(10) == cycle * 2
    dp.apply(TableSpec(()))


def test_lc_spreads_by_overhead(dp):
    # half-open connections count active: overheads 0,0,0 -> first, then the others, in turn;
    # weight only gates (0 = never)
    check_against_model(dp, "lc", [5, 1, 0, 2], 9)
    # all closed (inactive): likewise in turn
    check_against_model(dp, "lc", [5, 1, 0, 2], 9, fins=True)
    # active connections weigh 256 inactive ones: some flows stay open, the others close
    check_against_model(dp, "lc", [1, 1, 1], 12, acks=[True, False, False, True, True],
                        fins=[False, True, True, False, False] + [True] * 7)
    # an ACK does not change the counts: ACKed and half-open connections are both active
    check_against_model(dp, "lc", [1, 1, 1], 12, acks=[True, False, False, True, True])


def test_sed_and_nq_use_active_only(dp):
    # all active: sed follows (active+1)/weight, 3:1 -> rs1 gets the first ones
    check_against_model(dp, "sed", [3, 1], 12, acks=True)
    check_against_model(dp, "sed", [1, 2, 4], 14, acks=True)
    # half-open (SYN_RECV) connections count as active for sed too: they alternate
    check_against_model(dp, "sed", [1, 1], 5)
    # inactive (closed) connections do not count for sed: always the same (first least) server
    check_against_model(dp, "sed", [1, 1], 5, fins=True)
    # nq: an idle server wins at once, even with a small weight
    check_against_model(dp, "nq", [10, 1, 1], 12, acks=True)
    check_against_model(dp, "nq", [10, 1, 1], 12)
    check_against_model(dp, "nq", [2, 3], 10, acks=[True, False, True, True, False, True],
                        fins=[False, True, False, False, True, False])


def test_fo_highest_weight(dp):
    check_against_model(dp, "fo", [1, 5, 5, 2], 4)       # ties: the first in list order (config's last)
    check_against_model(dp, "fo", [0, 0], 2)             # nothing usable: no pick


def test_ovf_overflows_when_active_exceeds_weight(dp):
    # rs2 (weight 3) takes connections until it has 4 active, then rs1 (2), then nothing fits:
    # with every server over its weight there is no destination
    check_against_model(dp, "ovf", [2, 3], 10, acks=True)
    check_against_model(dp, "ovf", [1, 1], 6, acks=[False, True, True])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sched=st.sampled_from(["rr", "wrr", "wlc"]),
       weights=st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=10))
def test_bpf_matches_model(dp, sched, weights):
    check_against_model(dp, sched, weights, 3 * len(weights) + 5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sched=st.sampled_from(["wlc", "lc", "sed", "nq", "fo", "ovf"]),
       weights=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=8),
       acks=st.lists(st.booleans(), max_size=40))
def test_bpf_matches_model_with_active_conns(dp, sched, weights, acks):
    check_against_model(dp, sched, weights, 3 * len(weights) + 5, acks=acks)


# ---- dh / sh: 256-bucket tables built by the control plane (lb_sched_buckets)

_addrs = st.integers(min_value=1, max_value=2**32 - 2).map(lambda n: str(ipaddress.IPv4Address(n)))
# a client's: no martian (0/8, 127/8, multicast, class E): the kernel drops those before IPVS,
# and lb passes them to it (not_routable)
_clients = st.integers(min_value=1 << 24, max_value=(224 << 24) - 1).map(
    lambda n: str(ipaddress.IPv4Address(n if n >> 24 != 127 else n + (1 << 24))))


def test_sh_same_client_same_server_and_weights_fill_buckets(dp):
    clients = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(300)]
    check_against_model(dp, "sh", [3, 1, 0, 2], len(clients), clients=clients)
    # every client sticks to its server
    check_against_model(dp, "sh", [3, 1, 0, 2], 20, clients=clients[:5])
    assert model.sh_table([3, 1, 0, 2])[:8] == [0, 0, 0, 1, 2, 3, 3, 0]


def test_dh_hashes_the_vip(dp):
    for vip in ("198.18.0.30", "198.18.0.31", "198.18.0.77", "203.0.113.9"):
        check_against_model(dp, "dh", [1, 2, 0], 3, vip=vip, clients=("198.18.0.2", "10.1.1.1"))
    assert model.dh_table(3)[:5] == [0, 1, 2, 0, 1]


def test_bucket_tables_follow_the_scheduler_and_stale_ones_are_never_read(dp):
    """lb_sched_buckets is an array (an inlined lookup for dh's and sh's SYNs) that the data
    path reads only while lb_svc names dh or sh: a service that leaves sh for rr keeps its old
    table, and rr picks as the model says; one that comes to dh gets its table before its
    first SYN; so does a new service on a removed one's id."""
    port = next(_ports)
    clients = [f"198.18.{i}.{3 * i + 1}" for i in range(9)]
    buckets = dp.maps["lb_sched_buckets"]
    for sched in ("sh", "rr", "dh", "rr", "sh"):          # one service, its scheduler changed
        check_against_model(dp, sched, [3, 1, 2], 9, clients=clients, port=port)
        sid = L.U32.pack(next(iter(dp.services.values())).id)
        if sched == "rr":
            assert any(p != L.LB_NONE for p in L.SCHED_BUCKETS.unpack(buckets.get(sid)))   # stale, unread
    dp.apply(TableSpec(()))
    check_against_model(dp, "dh", [1, 2, 0], 6, vip="198.18.0.31", clients=clients)   # the id again
    check_against_model(dp, "sh", [2, 0, 1], 9, clients=clients)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sched=st.sampled_from(["dh", "sh"]),
       weights=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=8),
       vip=_addrs, clients=st.lists(_clients, min_size=1, max_size=12))
def test_bpf_hash_schedulers_match_model(dp, sched, weights, vip, clients):
    check_against_model(dp, sched, weights, len(clients), vip=vip, clients=clients)


_addrs6 = st.integers(min_value=1, max_value=2**128 - 2).map(lambda n: str(ipaddress.IPv6Address(n)))
_clients6 = st.integers(min_value=2, max_value=(0xFF << 120) - 1).map(client6)   # no martian (packets_util)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sched=st.sampled_from(["dh", "sh", "lblc", "lblcr"]),
       weights=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=8),
       vip=_addrs6, clients=st.lists(_clients6, min_size=1, max_size=12))
def test_bpf_hash_schedulers_match_model_ipv6(dp, sched, weights, vip, clients):
    """IPv6: dh and sh hash the XOR of the address's four words (IPVS's addr_fold); lblc and
    lblcr key their tables on the whole destination address."""
    check_against_model(dp, sched, weights, len(clients), vip=vip, clients=clients)


@pytest.mark.parametrize("sched", ["rr", "wrr", "wlc", "lc", "sed", "nq", "fo", "ovf"])
def test_ipv6_service_schedules_as_ipv4(dp, sched):
    weights = [3, 1, 0, 2]
    check_against_model(dp, sched, weights, 12, vip="2001:2::30", clients=("2001:2:0:1::2",), acks=True)


def test_sh_ipv6_clients_fold_to_different_buckets(dp):
    """Clients differing only in their interface id land on servers by their fold, as IPVS."""
    clients = [f"2001:2:0:1::{i:x}" for i in range(1, 200)]
    check_against_model(dp, "sh", [1, 1, 1, 1], len(clients), vip="2001:2::30", clients=clients)


# ---- connection thresholds (IPVS OVERLOAD): every scheduler skips an overloaded server

def test_upper_threshold_stops_new_connections(dp):
    # rs3 (list head) takes 2 then is overloaded; with the others overloaded too, nothing
    check_against_model(dp, "rr", [1, 1, 1], 8, thresholds=[(2, 0), (2, 1), (2, 0)])
    check_against_model(dp, "wlc", [1, 1], 6, thresholds=[(0, 0), (3, 0)], acks=True)


_thresholds = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)).map(
    lambda t: (t[0], min(t[0], t[1]) if t[0] else 0)), max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sched=st.sampled_from(["rr", "wrr", "wlc", "lc", "sed", "nq", "fo", "ovf", "dh", "sh"]),
       weights=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=8),
       thresholds=_thresholds, acks=st.lists(st.booleans(), max_size=30),
       clients=st.lists(_clients, min_size=1, max_size=6))
def test_bpf_matches_model_with_thresholds(dp, sched, weights, thresholds, acks, clients):
    check_against_model(dp, sched, weights, 3 * len(weights) + 6, acks=acks, clients=clients,
                        thresholds=thresholds[:len(weights)])


def test_thresholds_in_the_listing(dp):
    from lb import listing
    from lb.dataplane import reader
    from lb.dataplane.maps import PinnedMaps

    port = next(_ports)
    reals = tuple(RealSpec(a, 80, 1, "dr", u, l) for a, (u, l) in zip(_reals(2), [(10, 5), (0, 0)]))
    dp.apply(TableSpec((ServiceSpec("tcp", VIP, port, "wlc", reals),)))
    with PinnedMaps(dp.instance) as maps:
        rows = reader.read_services(maps)
    text = listing.format_services(rows, mode="thresholds")
    assert "  -> %-28s %-10d %-10d %-10d %-10d\n" % ("198.18.2.1:80", 10, 5, 0, 0) in text
    assert "  -> %-28s %-10d %-10d %-10d %-10d\n" % ("198.18.2.2:80", 0, 0, 0, 0) in text


@pytest.fixture
def fresh_dp():
    """A data plane of its own, its connection tables empty: in the module's, filled by the
    model tests, an LRU insert from another CPU may reclaim an entry just made (the kernel's
    LRU steals unreferenced nodes from other CPUs' lists when its free list is empty)."""
    with loaded_dataplane("overload") as d:
        yield d


def test_overload_clears_when_connections_end(fresh_dp):
    """IPVS unbind: UDP flows (1 s timeout here) fill u_threshold 2; once they expire (the
    sweep, or the data path meeting them) the server takes connections again."""
    from scapy.layers.inet import UDP

    dp = fresh_dp

    port = next(_ports)
    [addr] = _reals(1)
    spec = ServiceSpec("udp", VIP, port, "wlc", (RealSpec(addr, 53, 1, "dr", 2, 0),))
    dp.apply(TableSpec((spec,), timeouts=(900, 120, 1)))

    def flow(sport):
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst=str(VIP)) / UDP(sport=sport, dport=port)
        return run(dp, "lb_xdp_public", pkt)[0]

    try:
        assert [flow(1), flow(2), flow(3)] == [XDP_REDIRECT, XDP_REDIRECT, XDP_PASS]   # 2 >= u: overloaded
        rid = dp.services[L.SvcKey(17, VIP, port)].dests[0][1]
        assert dp.maps["lb_real_overload"].get(L.U32.pack(rid)) == L.U32.pack(1)
        age(dp, 2.2)
        dp.sweep()                                      # both flows expire: 0 * 4 < 2 * 3
        assert dp.maps["lb_real_overload"].get(L.U32.pack(rid)) == L.U32.pack(0)
        assert [flow(4), flow(5), flow(6)] == [XDP_REDIRECT, XDP_REDIRECT, XDP_PASS]
        age(dp, 2.2)
        assert flow(4) == XDP_REDIRECT                  # the data path expired flow 4 itself: 1 * 4 < 6
    finally:
        dp.apply(TableSpec(()))


def test_everything_loads_with_512_real_servers_per_service():
    """The verifier accepts every scheduler loop at the config's largest reals_per_service."""
    from lb.dataplane.xdp import Sizes

    with loaded_dataplane("sched512", Sizes(4, 2048, 512, 2048)) as d:
        weights = [(i % 5) for i in range(250)]          # one /24: real_mac() tells them apart
        for sched in ("rr", "wrr", "wlc", "sh"):
            check_against_model(d, sched, weights, 6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=st.sampled_from([(), ("sh-port",), ("sh-fallback",), ("sh-fallback", "sh-port")]),
       weights=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=8),
       thresholds=_thresholds, clients=st.lists(_clients, min_size=1, max_size=8))
def test_sh_flags_match_model(dp, flags, weights, thresholds, clients):
    check_against_model(dp, "sh", weights, 2 * len(clients) + 2, clients=clients, flags=flags,
                        thresholds=thresholds[:len(weights)])


def test_sh_port_spreads_one_client_and_fallback_skips_quiesced(dp):
    clients = ["10.9.9.9"]
    check_against_model(dp, "sh", [1, 1, 1, 1], 24, clients=clients, flags=("sh-port",))
    check_against_model(dp, "sh", [0, 1, 0, 1], 24, clients=[f"10.0.0.{i}" for i in range(1, 25)],
                        flags=("sh-fallback",))


def _take_out_program(d, sched: str) -> None:
    """The scheduler's program out of lb_progs: a SYN that needs it is passed, a failed tail call."""
    import os

    from lb.dataplane.maps import BpfMap

    progs = BpfMap.open_pinned(os.path.join(d.pin, "lb_progs"))
    try:
        progs.delete(L.U32.pack(L.PROG_SCHED_BASE + L.SCHEDULERS[sched]))
    finally:
        progs.close()


# weights in config order; the list runs the other way (IPVS adds a real server at its head):
# [0, 1, 1, 1] is walked 1, 1, 1, 0 -- three steps in place, then the weight-0 server; wrr's
# [1, 3] two (its first pass takes any weight), then the list's end
@pytest.mark.parametrize("sched, weights, in_place", [("rr", [0, 1, 1, 1], 3), ("wrr", [0, 1, 1, 1], 3),
                                                     ("wrr", [1, 3], 2)])
def test_rr_and_wrr_take_their_first_step_in_place(sched, weights, in_place):
    """rr's and wrr's walk starts at the position after the last pick: when that server is usable
    (for wrr: weighs at least the pass's cw) lb_xdp_public picks it and makes the connection
    itself.  With the scheduler's program taken out of lb_progs, those SYNs still reach the
    model's real server, in its order; the first that needs the walk (a weight-0 server next, a
    lighter one than cw, the list's end) is passed, counted as a failed tail call, and the cursor
    stays where it was."""
    vip, port = ipaddress.ip_address("198.18.0.41"), 80
    addrs = _reals(len(weights))
    spec = ServiceSpec("tcp", vip, port, sched, tuple(RealSpec(a, 8080, w, "nat") for a, w in zip(addrs, weights)))
    m = model.Service(sched, ())
    for a, w in zip(addrs, weights):
        m.add(str(a), w, port=8080)
    with loaded_dataplane("schednext", table=TableSpec((spec,))) as d:
        _take_out_program(d, sched)
        picked = []
        for i in range(1, 2 * len(weights) + 2):
            failed = d.counters().get("tail_call_failed", 0)
            syn = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=f"198.18.0.{100 + i}", dst=str(vip)) / TCP(
                sport=42000 + i, dport=port, flags="S")
            rc, out = run(d, "lb_xdp_public", syn)
            if rc == XDP_PASS:
                assert out == bytes(syn)
                assert d.counters()["tail_call_failed"] == failed + 1
                break
            want = m.schedule(saddr=0, daddr=0, sport=0)
            assert rc == XDP_REDIRECT
            p = Ether(out)
            assert (p.dst, p[IP].dst, p[TCP].dport) == (real_mac(want), want, 8080)
            assert d.counters().get("tail_call_failed", 0) == failed
            picked.append(want)
        assert len(picked) == in_place, picked
        # the cursor did not move on the passed SYN: the next one is passed too
        failed = d.counters()["tail_call_failed"]
        syn = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.99", dst=str(vip)) / TCP(sport=43000, dport=port,
                                                                                             flags="S")
        assert run(d, "lb_xdp_public", syn)[0] == XDP_PASS
        assert d.counters()["tail_call_failed"] == failed + 1


def test_wrr_walks_in_its_program_when_the_next_server_weighs_less_than_cw():
    """wrr's step in place takes the next server only if it weighs at least the pass's cw: with
    the cursor on the heavy server and cw above the light one's weight, the SYN goes to the
    program (taken out here: passed, a failed tail call) and the cursor stays; with cw at the
    light one's weight it is picked in place."""
    vip, port = ipaddress.ip_address("198.18.0.42"), 80
    heavy, light = _reals(2)[1], _reals(2)[0]
    spec = ServiceSpec("tcp", vip, port, "wrr", (RealSpec(light, 8080, 1, "nat"), RealSpec(heavy, 8080, 3, "nat")))
    with loaded_dataplane("schedwrrcw", table=TableSpec((spec,))) as d:
        _take_out_program(d, "wrr")
        sid = L.U32.pack(next(iter(d.services.values())).id)
        for i, (cw, want) in enumerate(((3, None), (2, None), (1, light))):
            d.maps["lb_sched_state"].set(sid, L.SCHED_STATE.pack(0, cw))    # the cursor on the heavy one
            failed = d.counters().get("tail_call_failed", 0)
            syn = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=f"198.18.0.{110 + i}", dst=str(vip)) / TCP(
                sport=44000 + i, dport=port, flags="S")
            rc, out = run(d, "lb_xdp_public", syn)
            if want is None:
                assert (rc, out) == (XDP_PASS, bytes(syn))
                assert d.counters()["tail_call_failed"] == failed + 1
                assert L.SCHED_STATE.unpack(d.maps["lb_sched_state"].get(sid)) == (0, cw)
            else:
                assert rc == XDP_REDIRECT and Ether(out)[IP].dst == str(want)
                assert L.SCHED_STATE.unpack(d.maps["lb_sched_state"].get(sid)) == (1, cw)


@pytest.mark.parametrize("sched", ["dh", "sh", "mh"])
def test_hash_schedulers_need_no_program_of_their_own(sched):
    """dh, sh and mh pick, and make the connection, in lb_xdp_public: with their programs taken
    out of lb_progs a NAT SYN still reaches the model's real server, rewritten, and the reply
    leaves from the VIP.  Only sh-fallback's and mh-fallback's walks (the bucket's or slot's
    server not usable) are their programs': without them such a SYN is passed, counted as a
    failed tail call."""
    from packets_util import PRIV_MAC, XDP_TX

    vip, port, sport = ipaddress.ip_address("198.18.0.40"), 80, 41000
    addrs = _reals(4)
    weights = [1, 1, 1, 1] if sched == "dh" else [1, 1, 1, 0]    # dh hashes the VIP: one bucket
    flags = () if sched == "dh" else (f"{sched}-fallback",)
    spec = ServiceSpec("tcp", vip, port, sched, tuple(RealSpec(a, 8080, w, "nat") for a, w in zip(addrs, weights)),
                       sched_flags=flags)
    plain, walking = model.Service(sched, ()), model.Service(sched, flags)
    for m in (plain, walking):
        for a, w in zip(addrs, weights):
            m.add(str(a), w, port=8080)
    in_place = walked = 0
    with loaded_dataplane("schedinplace", table=TableSpec((spec,))) as d:
        _take_out_program(d, sched)
        for i in range(1, 41):
            client = f"198.18.0.{100 + i}"
            failed = d.counters().get("tail_call_failed", 0)
            syn = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=client, dst=str(vip)) / TCP(sport=sport, dport=port,
                                                                                         flags="S")
            rc, out = run(d, "lb_xdp_public", syn)
            want = plain.schedule(saddr=model.addr_fold(client), daddr=model.addr_fold(vip), sport=sport)
            if want is None:
                # the bucket's or slot's server has weight 0: the fallback walk, in the program
                assert walking.schedule(saddr=model.addr_fold(client), daddr=model.addr_fold(vip),
                                        sport=sport) is not None
                assert (rc, out) == (XDP_PASS, bytes(syn))
                assert d.counters()["tail_call_failed"] == failed + 1
                walked += 1
                continue
            assert rc == XDP_REDIRECT
            p = Ether(out)
            assert (p.dst, p[IP].dst, p[TCP].dport) == (real_mac(want), want, 8080)
            reply = Ether(src=real_mac(want), dst=PRIV_MAC) / IP(src=want, dst=client) / TCP(
                sport=8080, dport=sport, flags="SA")
            rc, out = run(d, "lb_xdp_private", reply)
            p = Ether(out)
            assert rc == XDP_TX
            assert (p[IP].src, p[IP].dst, p[TCP].sport, p[TCP].flags) == (str(vip), client, port, "SA")
            assert d.counters().get("tail_call_failed", 0) == failed
            in_place += 1
    # sh keeps a weight-0 server's buckets (the walk starts there); mh gives it no slot, so its
    # walks (an overloaded slot's server) are tests/test_sched_mh_bpf.py's, through lb_xdp_public
    assert in_place > 0 and (sched != "sh" or walked > 0)
