"""lb/dataplane/layout.py mirrors bpf/lb_structs.h: sizes and field offsets as bcc compiled them."""
from __future__ import annotations

import ctypes

import pytest

from lb.dataplane import layout as L
from packets_util import loaded_dataplane


@pytest.fixture(scope="module")
def bpf():
    with loaded_dataplane("layout") as d:
        yield d.bpf


@pytest.mark.parametrize("table, part, struct, offsets", [
    ("lb_services", "Key", L.SVC_KEY, {"port": 16, "proto": 18, "family": 19}),
    ("lb_svc", "Leaf", L.SVC, {"sched": 20, "nreals": 24, "flags": 28, "wrr_mw": 32, "wrr_di": 36,
                               "persist_timeout": 40, "fwmark": 44, "mh_size": 48, "persist_mask": 52}),
    ("lb_sched_state", "Leaf", L.SCHED_STATE, {"cw": 4}),
    ("lb_reals", "Leaf", L.REAL, {"port": 16, "family": 18, "fwd": 19, "weight": 20, "flags": 24,
                                  "ifindex": 28, "mac": 32, "src_mac": 38, "svc": 44,
                                  "u_threshold": 48, "l_threshold": 52, "pos": 56}),
    ("lb_real_conns", "Leaf", L.REAL_CONNS, {"inactive": 4}),
    ("lb_conns", "Key", L.CONN_KEY, {"daddr": 16, "sport": 32, "dport": 34, "proto": 36, "family": 37, "dir": 38}),
    ("lb_conns", "Leaf", L.CONN, {"real": 8, "svc": 12, "timeout": 16, "client_ifindex": 20, "state": 24,
                                  "flags": 25, "client_mac": 28, "local_mac": 34, "vaddr": 40, "vport": 56}),
    ("lb_fwm_ranges", "Leaf", L.PORT_RANGES, {"r": 8}),
    ("lb_svc_stats", "Leaf", L.STATS, {"inpkts": 8, "outbytes": 32}),
    ("lb_svc_rates", "Leaf", L.RATES, {"inpps": 8, "outpps": 16, "inbps": 24, "outbps": 32}),
    ("lb_real_rates", "Leaf", L.RATES, {"cps": 0, "outbps": 32}),
    ("lb_lblc", "Key", L.LBLC_KEY, {"svc": 0, "family": 4, "addr": 8}),
    ("lb_lblc", "Leaf", L.LBLC, {"lastuse_ns": 0, "real": 8}),
    ("lb_lblcr", "Leaf", L.LBLCR, {"lastuse_ns": 0, "lastmod_ns": 8, "n": 16, "real": 24}),
])
def test_struct_matches_c(bpf, table, part, struct, offsets):
    ct = getattr(bpf[table.encode()], part)
    if issubclass(ct, ctypes.Array):          # per-CPU values come as one struct per CPU
        ct = ct._type_
    assert ctypes.sizeof(ct) == struct.size
    for name, off in offsets.items():
        assert getattr(ct, name).offset == off, name


def test_dests_value_is_one_array_per_service(bpf):
    ct = bpf[b"lb_svc_dests"].Leaf
    assert ctypes.sizeof(ct) == L.DEST.size * 16     # loaded_dataplane: 16 real servers per service
