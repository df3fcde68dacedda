"""The BPF schedulers pick the same real server as the pure-Python IPVS model (lb.sched.model),
new connection by new connection, through BPF_PROG_TEST_RUN."""
from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.sched import model
from packets_util import CLIENT_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, make_dataplane, real_mac, run

VIP = ipaddress.ip_address("198.18.0.30")
_ports = itertools.count(1000)
_sports = itertools.count(10000)


@pytest.fixture(scope="module")
def dp():
    d = make_dataplane("sched")
    try:
        yield d
    finally:
        d.unpin()
        d.close()


def _reals(n):
    return [ipaddress.ip_address(f"198.18.2.{i + 1}") for i in range(n)]


def check_against_model(dp, sched, weights, count):
    """Program a fresh service (new port) with `weights` in config order, send `count` SYNs,
    and compare each pick with the model's."""
    port = next(_ports)
    addrs = _reals(len(weights))
    spec = ServiceSpec("tcp", VIP, port, sched, tuple(RealSpec(a, 80, w, "dr") for a, w in zip(addrs, weights)))
    dp.apply(TableSpec((spec,)))
    m = model.Service(sched)
    for a, w in zip(addrs, weights):          # the lvs daemon adds them in config order
        m.add(str(a), w)
    mac_to_addr = {real_mac(a): str(a) for a in addrs}
    got, want = [], []
    for _ in range(count):
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst=str(VIP)) / \
            TCP(sport=next(_sports) % 65536 or 1, dport=port, flags="S")
        rc, out = run(dp, "lb_xdp_public", pkt)
        got.append(mac_to_addr.get(Ether(out).dst) if rc == XDP_REDIRECT else None)
        assert rc in (XDP_REDIRECT, XDP_PASS)
        want.append(m.schedule())
    assert got == want


def test_rr_kernel_order(dp):
    check_against_model(dp, "rr", [1, 1, 1], 9)


def test_wrr_kernel_sequence(dp):
    # observed on kernel IPVS: 3:2:1 added in config order -> rs3 rs2 rs1 rs1 rs2 rs1, repeating
    check_against_model(dp, "wrr", [3, 2, 1], 12)


def test_wlc_kernel_sequence(dp):
    check_against_model(dp, "wlc", [2000, 1000, 1000], 12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sched=st.sampled_from(["rr", "wrr", "wlc"]),
       weights=st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=10))
def test_bpf_matches_model(dp, sched, weights):
    check_against_model(dp, sched, weights, 3 * len(weights) + 5)
