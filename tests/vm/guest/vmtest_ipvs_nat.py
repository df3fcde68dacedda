"""lb with the kernel IPVS data plane, NAT, in the namespace lab inside the VM.  The config asks
for xdp; `lb run --dataplane ipvs` overrides it."""
from __future__ import annotations

import signal

import pytest
from guest_util import dests, ipvs_kernel, ipvsadm, lab_config, same_as_ipvsadm, start_lb, wait_stats  # noqa: F401

LAB_NETWORK = "nat"


@pytest.fixture(scope="module")
def lb_nat(lab, lb_module_runner, tmp_path_factory, ipvs_kernel):
    cfg = tmp_path_factory.mktemp("cfg") / "lab-nat.toml"
    cfg.write_text(lab_config("nat", "xdp", 'kind = "none"\n'))
    return start_lb(lb_module_runner, cfg, extra=("--dataplane", "ipvs"))


def test_override_selects_ipvs_with_masquerading(lab, lb_nat):
    assert "data plane: ipvs" in lb_nat.log()
    table = ipvsadm(lab, "-L", "-n")
    assert dests(table) == {"198.18.1.11:80": 1, "198.18.1.12:80": 1, "198.18.1.13:80": 1}
    assert table.count("Masq") == 3
    mine, theirs = same_as_ipvsadm(lab, "-n")
    assert mine == theirs


def test_nat_traffic_reaches_every_real_server(lab, lb_nat):
    bodies = []
    for _ in range(12):
        status, body = lab.http_get("client", lab.VIP, 80, timeout=10)
        assert status == 200
        bodies.append(body.strip())
    assert {b: bodies.count(b) for b in set(bodies)} == {"rs1": 4, "rs2": 4, "rs3": 4}
    # the replies were rewritten by IPVS: every connection is in the kernel's table
    conns = ipvsadm(lab, "-L", "-n", "-c")
    assert conns.count("198.18.0.10:80") >= 12


def test_nat_listings_equal_ipvsadm(lab, lb_nat):
    wait_stats(lab, "198.18.0.10:80", 12)     # the estimator copies the counters every 2 s
    for args in (["-n"], ["-n", "--stats"], ["-n", "--stats", "--exact"], ["-n", "-c"]):
        mine, theirs = same_as_ipvsadm(lab, *args)
        assert mine == theirs, f"lb list {' '.join(args)} differs from ipvsadm"
    stats = ipvsadm(lab, "-L", "-n", "--stats", "--exact")
    assert "198.18.0.10:80" in stats


def test_clean_stop_removes_the_services(lab, lb_nat):
    lb_nat.signal(signal.SIGTERM)
    assert lb_nat.wait(60) == 0
    assert ipvsadm(lab, "-L", "-n").count("\n") == 3     # header and titles only
