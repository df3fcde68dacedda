"""lblc, lblcr and twos in the XDP data plane: lblc / lblcr pick the same real server as the
IPVS model (lb.sched.model) new connection by new connection, with the same table (lb_lblc /
lb_lblcr against the model's entries); the control plane's periodic expiry; twos against its
weights, statistically, through BPF_PROG_TEST_RUN."""
from __future__ import annotations

import ipaddress
import itertools
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb import listing
from lb.dataplane import PortGroup, RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane import layout as L
from lb.dataplane.maps import PinnedMaps
from lb.dataplane.services import key_of
from lb.sched import model
from packets_util import CLIENT_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, loaded_dataplane, real_mac, run

ip = ipaddress.ip_address
VIPS = ("198.18.0.50", "198.18.0.51", "198.18.0.52")
CLIENTS = ("198.18.0.2", "198.18.0.3")
_ports = itertools.count(2000)
_marks = itertools.count(100)
_sports = itertools.count(20000)
NS = 1_000_000_000


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("lblc") as d:
        yield d


class Lab:
    """One service (a firewall-mark service over len(vips) VIPs, so that the packets'
    destination addresses differ) and its model twin; `syn` schedules in both and compares."""

    def __init__(self, dp, sched, weights, vips=VIPS, expiration=86400, thresholds=()):
        self.dp, self.sched, self.vips = dp, sched, [ip(v) for v in vips]
        self.port = next(_ports)
        self.addrs = [ip(f"198.18.2.{i + 1}") for i in range(len(weights))]
        th = list(thresholds) + [(0, 0)] * (len(weights) - len(thresholds))
        if len(vips) > 1:
            mark = next(_marks)
            reals = tuple(RealSpec(a, 0, w, "dr", *t) for a, w, t in zip(self.addrs, weights, th))
            groups = tuple(PortGroup("tcp", v, self.port, self.port) for v in self.vips)
            self.spec = ServiceSpec("tcp", self.vips[0], self.port, sched, reals, fwmark=mark, groups=groups)
        else:
            reals = tuple(RealSpec(a, 80, w, "dr", *t) for a, w, t in zip(self.addrs, weights, th))
            self.spec = ServiceSpec("tcp", self.vips[0], self.port, sched, reals)
        self.table = TableSpec((self.spec,), lblc_expiration=expiration, lblcr_expiration=expiration)
        dp.apply(self.table)
        self.m = model.Service(sched, expiration=expiration, max_set=L.LBLCR_SET_SIZE)
        for a, w, t in zip(self.addrs, weights, th):       # added in config order
            self.m.add(str(a), w, u_threshold=t[0], l_threshold=t[1])
        self.by_mac = {real_mac(a): str(a) for a in self.addrs}
        self.sid = dp.services[key_of(self.spec)].id

    def syn(self, vip=0, client=0, fin=False):
        """A new connection to VIP `vip` in BPF and in the model: (BPF's pick, the model's)."""
        sport = next(_sports) % 60000 + 1024
        base = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENTS[client], dst=str(self.vips[vip]))
        rc, out = run(self.dp, "lb_xdp_public", base / TCP(sport=sport, dport=self.port, flags="S"))
        assert rc in (XDP_REDIRECT, XDP_PASS)
        got = self.by_mac.get(Ether(out).dst) if rc == XDP_REDIRECT else None
        want = self.m.schedule(daddr=int(self.vips[vip]))
        if fin and got is not None and got == want:
            rc, _ = run(self.dp, "lb_xdp_public", base / TCP(sport=sport, dport=self.port, flags="FA", seq=1, ack=1))
            assert rc == XDP_REDIRECT
            self.m.deactivate(want)     # SYN_RECV -> TIME_WAIT: inactive
        return got, want

    def _entries(self):
        m = self.dp.maps[f"lb_{self.sched}"]
        out = {}
        for k, v in m.items():
            sid, _fam, _pad, addr = L.LBLC_KEY.unpack(k)
            if sid == self.sid:
                out[int(ipaddress.IPv4Address(addr[:4]))] = v
        return out

    def real_name(self, rid):
        return str(self.dp.reals[rid].addr)

    def bpf_table(self):
        """destination address -> server name (lblc) or member names, newest first (lblcr)"""
        out = {}
        for daddr, v in self._entries().items():
            if self.sched == "lblc":
                out[daddr] = self.real_name(L.LBLC.unpack(v)[1])
            else:
                _, _, n, _, *reals = L.LBLCR.unpack(v)
                out[daddr] = [self.real_name(r) for r in reals[:n]]
        return out

    def model_table(self):
        e = self.m.table.entries
        if self.sched == "lblc":
            return {k: v.dest.name for k, v in e.items()}
        return {k: [d.name for d in v.members] for k, v in e.items()}

    def age_sets(self, seconds):
        """Move every lblcr set's last change `seconds` back, in BPF and in the model."""
        m = self.dp.maps["lb_lblcr"]
        for k, v in m.items():
            if L.LBLC_KEY.unpack(k)[0] != self.sid:
                continue
            use, mod, n, pad, *reals = L.LBLCR.unpack(v)
            m.set(k, L.LBLCR.pack(use, L.stamp_ago(mod, seconds * NS), n, pad, *reals))  # wraps on a young machine
        for en in self.m.table.entries.values():
            en.lastmod -= seconds


def test_lblc_follows_the_model_and_its_table(dp):
    lab = Lab(dp, "lblc", [1, 2, 1])
    picks = [lab.syn(vip=i % 3) for i in range(14)]
    assert [g for g, _ in picks] == [w for _, w in picks]
    assert lab.bpf_table() == lab.model_table()
    assert len(lab.bpf_table()) == 3
    # weights 4, 1 (list: rs2 rs1): rs2 keeps the address until it has 2 active > 1 while rs1
    # is below half its weight: is_overloaded, and the address moves to rs1
    lab = Lab(dp, "lblc", [4, 1], vips=VIPS[:1])
    picks = [lab.syn() for _ in range(8)]
    assert [g for g, _ in picks] == [w for _, w in picks]
    assert [g for g, _ in picks[:3]] == ["198.18.2.2", "198.18.2.2", "198.18.2.1"]
    assert lab.bpf_table() == lab.model_table()


def test_lblc_weight_0_invalidates_the_cached_server(dp):
    lab = Lab(dp, "lblc", [1, 1], vips=VIPS[:1])
    first, _ = lab.syn()
    assert lab.syn() == (first, first)
    # the cached server is quiesced: wlc picks the other one, and the entry follows
    weights = {a: (0 if str(a) == first else 1) for a in lab.addrs}
    spec = ServiceSpec(lab.spec.protocol, lab.spec.address, lab.spec.port, "lblc",
                       tuple(RealSpec(r.address, r.port, weights[r.address], "dr") for r in lab.spec.reals))
    dp.apply(TableSpec((spec,)))
    lab.m.set_weight(first, 0)
    got, want = lab.syn()
    assert got == want and got != first
    assert lab.bpf_table() == lab.model_table() == {int(lab.vips[0]): got}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sched=st.sampled_from(["lblc", "lblcr"]),
       weights=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=6),
       ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1), st.booleans(), st.booleans()),
                    min_size=1, max_size=30))
def test_lblc_lblcr_match_the_model_packet_by_packet(dp, sched, weights, ops):
    """Random weights and a random run of new connections to three destination addresses from
    two clients; some close at once (inactive), and for lblcr some steps first age the sets
    past lblcr_expiration so the next lookup shrinks them."""
    lab = Lab(dp, sched, weights, expiration=100)
    for vip, client, fin, age in ops:
        if age and sched == "lblcr":
            lab.age_sets(101)
        got, want = lab.syn(vip, client, fin)
        assert got == want
        assert lab.bpf_table() == lab.model_table()


def test_lblcr_set_grows_when_members_overload_and_shrinks_after_expiration(dp):
    lab = Lab(dp, "lblcr", [1, 1, 1], vips=VIPS[:1], expiration=100)
    d = int(lab.vips[0])
    seq = [lab.syn() for _ in range(5)]
    assert [g for g, _ in seq] == [w for _, w in seq]
    assert len(lab.bpf_table()[d]) >= 2           # the first member overloaded: the set grew
    assert lab.bpf_table() == lab.model_table()
    before = lab.bpf_table()[d]
    # not yet expired: a new connection does not shrink the set
    lab.age_sets(50)
    assert lab.syn(fin=True)[0] is not None
    assert len(lab.bpf_table()[d]) >= len(before)
    # past lblcr_expiration: the most loaded member leaves (and lastmod is now)
    lab.age_sets(200)
    n = len(lab.bpf_table()[d])
    got, want = lab.syn(fin=True)
    assert got == want
    assert lab.bpf_table() == lab.model_table()
    _, mod, *_ = L.LBLCR.unpack(lab._entries()[d])
    assert abs(mod - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) < 5 * NS
    assert len(lab.bpf_table()[d]) in (n - 1, n)  # one left; the pick may have joined again


def test_lblc_entries_expire_in_the_periodic_full_check(dp):
    lab = Lab(dp, "lblc", [1, 1], expiration=600)
    for i in range(3):
        assert lab.syn(vip=i)[0] is not None
    assert len(lab.bpf_table()) == 3
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    # fresh entries: 30 ticks (a full check at the 30th) keep them all
    for _ in range(30):
        assert dp.lblc_check_expire(now + 10 * NS, force=True) == 0
    assert len(lab.bpf_table()) == 3
    # unused for lblc_expiration: the next 29 ticks only watch the size, the 30th drops them
    later = now + 601 * NS
    for _ in range(29):
        assert dp.lblc_check_expire(later, force=True) == 0
    assert len(lab.bpf_table()) == 3
    assert dp.lblc_check_expire(later, force=True) == 3
    assert lab.bpf_table() == {}
    # the model expires the same way, after which both schedule afresh alike
    for _ in range(30):
        lab.m.tick(10**6)
    assert lab.model_table() == {}
    picks = [lab.syn(vip=i % 3) for i in range(6)]
    assert [g for g, _ in picks] == [w for _, w in picks]
    assert lab.bpf_table() == lab.model_table()


def test_lblc_timer_runs_once_a_minute_from_the_sweep(dp):
    lab = Lab(dp, "lblc", [1], vips=VIPS[:1], expiration=1)
    lab.syn()
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    dp.lblc_check_expire(now, force=True)
    # without force the timer waits a minute between ticks: 60 sweeps in one minute tick once
    for i in range(60):
        dp.sweep(now + 2 * NS + i * 100_000_000)
    assert lab.bpf_table() != {}
    ticks = 0
    for i in range(1, 40):
        t = now + i * 61 * NS
        dp.sweep(t)
        ticks += 1
        if not lab.bpf_table():
            break
    assert not lab.bpf_table() and ticks <= 30


def test_tables_go_with_the_service_or_its_scheduler(dp):
    lab = Lab(dp, "lblcr", [1, 1], vips=VIPS[:2])
    lab.syn(0)
    lab.syn(1)
    assert len(lab.bpf_table()) == 2
    # ipvsadm -E to wlc: ip_vs_lblcr_done_svc frees the table
    dp.apply(TableSpec((ServiceSpec(**{**lab.spec.__dict__, "scheduler": "wlc"}),)))
    assert lab._entries() == {}
    lab2 = Lab(dp, "lblc", [1], vips=VIPS[:1])
    lab2.syn()
    assert len(lab2.bpf_table()) == 1
    dp.apply(TableSpec(()))
    assert dp.maps["lb_lblc"].items() == [] and dp.maps["lb_lblcr"].items() == []


def test_lb_list_shows_the_scheduler_names(dp):
    specs = tuple(ServiceSpec("tcp", ip(VIPS[0]), 7000 + i, s, (RealSpec(ip("198.18.2.1"), 80, 1, "dr"),))
                  for i, s in enumerate(("lblc", "lblcr", "twos")))
    dp.apply(TableSpec(specs))
    with PinnedMaps(dp.instance) as maps:
        text = listing.format_services(reader.read_services(maps))
    for i, s in enumerate(("lblc", "lblcr", "twos")):
        assert f"TCP  {VIPS[0]}:{7000 + i} {s}\n" in text
    dp.apply(TableSpec(()))


# ------------------------------------------------------------------------ twos


def _twos_sample(dp, lab, n):
    """n new connections; each one's connection expires before the next (a sweep with the
    clock moved past SYN_RECV's timeout, well short of ESTABLISHED's), so every pick sees the
    same loads and follows the weights alone."""
    counts = {}
    for i in range(n):
        got, _ = lab.syn(vip=0, client=i % 2)
        counts[got] = counts.get(got, 0) + 1
        dp.sweep(time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 200 * NS)
    return counts


def test_twos_follows_the_weights(dp):
    """twos over idle servers: both random choices tie on load, so the first wins and the
    server at list position i is chosen with probability (w_i + [i == first usable]) /
    (total + 1).  Each count must lie within 6 standard deviations of its binomial mean (a
    false failure has probability below 1e-8 per server); weight 0 and OVERLOAD never win."""
    # config order rs1..rs6: list order rs6..rs1.  rs6 (u_threshold 1) gets a connection first
    # and is OVERLOADed from then on; rs5 has weight 0
    weights = [1, 2, 3, 4, 0, 5]
    lab = Lab(dp, "twos", [0, 0, 0, 0, 0, 5], vips=VIPS[:1], thresholds=[(0, 0)] * 5 + [(1, 0)])
    base = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENTS[0], dst=VIPS[0])
    rc, out = run(dp, "lb_xdp_public", base / TCP(sport=999, dport=lab.port, flags="S"))
    assert rc == XDP_REDIRECT and lab.by_mac[Ether(out).dst] == "198.18.2.6"
    # ... ESTABLISHED (900 s): the sweeps below leave it, so rs6 stays OVERLOADed
    rc, _ = run(dp, "lb_xdp_public", base / TCP(sport=999, dport=lab.port, flags="A", seq=1, ack=1))
    assert rc == XDP_REDIRECT
    spec = ServiceSpec("tcp", lab.vips[0], lab.port, "twos",
                       tuple(RealSpec(a, 80, w, "dr", u, 0) for a, w, u in
                             zip(lab.addrs, weights, [0, 0, 0, 0, 0, 1])))
    dp.apply(TableSpec((spec,)))
    n = 3000
    counts = _twos_sample(dp, lab, n)
    usable = [("198.18.2.4", 4), ("198.18.2.3", 3), ("198.18.2.2", 2), ("198.18.2.1", 1)]
    total = sum(w for _, w in usable) + 1
    assert counts.get("198.18.2.5", 0) == 0          # weight 0
    assert counts.get("198.18.2.6", 0) == 0          # OVERLOAD
    assert counts.get(None, 0) == 0
    for i, (name, w) in enumerate(usable):
        p = (w + (1 if i == 0 else 0)) / total
        mean, sd = n * p, math.sqrt(n * p * (1 - p))
        assert abs(counts.get(name, 0) - mean) <= 6 * sd, (name, counts, mean, sd)


def test_twos_prefers_the_less_loaded_of_two(dp):
    """Two servers, weights 1:1, one with open connections: a pick lands on the busy one only
    when both random choices fall on it, so it gets about a quarter (+ its first-usable share);
    without the load rule it would get half."""
    lab = Lab(dp, "twos", [1, 1], vips=VIPS[:1])
    busy = "198.18.2.2"                               # list order: rs2 rs1
    base = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENTS[0], dst=VIPS[0])
    # give rs2 two ESTABLISHED connections (the sweeps keep them) by quiescing rs1 for a moment
    quiet = ServiceSpec("tcp", lab.vips[0], lab.port, "twos",
                        (RealSpec(lab.addrs[0], 80, 0, "dr"), RealSpec(lab.addrs[1], 80, 1, "dr")))
    dp.apply(TableSpec((quiet,)))
    for sp in (901, 902):
        rc, out = run(dp, "lb_xdp_public", base / TCP(sport=sp, dport=lab.port, flags="S"))
        assert rc == XDP_REDIRECT and lab.by_mac[Ether(out).dst] == busy
        run(dp, "lb_xdp_public", base / TCP(sport=sp, dport=lab.port, flags="A", seq=1, ack=1))
    dp.apply(TableSpec((lab.spec,)))
    n = 1200
    counts = _twos_sample(dp, lab, n)
    # total 3: r in {0, 1} -> rs2 (first), r = 2 -> rs1; rs2 wins only if both choices are rs2
    p = (2 / 3) ** 2
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    assert abs(counts.get(busy, 0) - mean) <= 6 * sd, counts
