"""lb with the kernel IPVS data plane, direct routing, in the namespace lab inside the VM; and
the scheduler fidelity run (kernel IPVS is the oracle: its picks go to the host, which replays
the same cases through the XDP programs).

The tests of this module share one `lb run` and run in file order: the health check test comes
before any traffic (a server with connections would drain at weight 0 instead of leaving)."""
from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from vm import oracle
from guest_oracle import Player, oracle_director  # noqa: F401
from guest_util import (dests, ipvs_kernel, ipvsadm, lab_config, lb_list_cli, results_dir, run_fidelity,  # noqa: F401
                        same_as_ipvsadm, start_lb, wait_for, wait_stats)

LAB_NETWORK = "direct"
MONITOR = 'interval = 0.5\ntimeout = 1.5\nreentry = 2.0\nconnect_timeout = 0.5\n'


@pytest.fixture(scope="module")
def lb_dr(lab, lb_module_runner, tmp_path_factory, ipvs_kernel):
    cfg = tmp_path_factory.mktemp("cfg") / "lab-dr-ipvs.toml"
    cfg.write_text(lab_config("direct", "ipvs", MONITOR))
    p = start_lb(lb_module_runner, cfg)
    p.cfg_path = cfg
    return p


def test_started_on_kernel_ipvs(lab, lb_dr):
    log = lb_dr.log()
    assert "data plane: ipvs" in log
    table = ipvsadm(lab, "-L", "-n")
    assert "TCP  198.18.0.10:80 rr" in table
    assert dests(table) == {"198.18.1.11:80": 1, "198.18.1.12:80": 1, "198.18.1.13:80": 1}
    assert table.count("Route") == 3


def test_lb_list_cli_equals_ipvsadm(lab, lb_dr):
    """The command itself, in its own process (no traffic yet: nothing moves between reads)."""
    assert lb_list_cli(lab, "-n") == ipvsadm(lab, "-L", "-n")


def test_failed_check_removes_server_and_reentry_restores_it(lab, lb_dr):
    lab.stop_real("rs1")
    try:
        wait_for(lambda: "198.18.1.11:80" not in dests(ipvsadm(lab, "-L", "-n")), 60,
                 "rs1 to leave the kernel table")
        assert re.search(r"real server 198\.18\.1\.11:80 .* is down", lb_dr.log())
        mine, theirs = same_as_ipvsadm(lab, "-n")
        assert mine == theirs
    finally:
        lab.start_real("rs1")
    wait_for(lambda: "198.18.1.11:80" in dests(ipvsadm(lab, "-L", "-n")), 60, "rs1 to come back")
    assert dests(ipvsadm(lab, "-L", "-n")) == {"198.18.1.11:80": 1, "198.18.1.12:80": 1, "198.18.1.13:80": 1}


def _bodies(lab, n: int) -> list[str]:
    out = []
    for _ in range(n):
        status, body = lab.http_get("client", lab.VIP, 80, timeout=10)
        assert status == 200
        out.append(body.strip())
    return out


def test_dr_traffic_reaches_every_real_server(lab, lb_dr):
    bodies = _bodies(lab, 12)
    assert sorted(set(bodies)) == ["rs1", "rs2", "rs3"]
    assert {b: bodies.count(b) for b in set(bodies)} == {"rs1": 4, "rs2": 4, "rs3": 4}


def test_listings_equal_ipvsadm_after_traffic(lab, lb_dr):
    wait_stats(lab, "198.18.0.10:80", 12)     # the estimator copies the counters every 2 s
    for args in (["-n"], ["-n", "--stats"], ["-n", "--stats", "--exact"], ["-n", "--persistent-conn"],
                 ["-n", "--thresholds"], ["-n", "-c"], ["--timeout"], ["-n", "-t", "198.18.0.10:80"]):
        mine, theirs = same_as_ipvsadm(lab, *args)
        assert mine == theirs, f"lb list {' '.join(args)} differs from ipvsadm"
    assert re.search(r"InActConn|ActiveConn", ipvsadm(lab, "-L", "-n"))


def test_reload_changes_only_what_changed(lab, lb_dr):
    before = ipvsadm(lab, "-L", "-n", "--stats", "--exact")
    n = lb_dr.log().count("reloaded ")
    start = len(lb_dr.log())
    lb_dr.cfg_path.write_text(lab_config("direct", "ipvs", MONITOR, weights=(1, 3, 1)))
    lb_dr.signal(signal.SIGHUP)
    lb_dr.wait_log("reloaded ", count=n + 1, timeout=60)
    tail = lb_dr.log()[start:]
    assert "applied 1 services: 1 netlink changes" in tail, tail
    assert "198.18.1.12:80" in tail and "weight 1 -> 3" in tail
    assert dests(ipvsadm(lab, "-L", "-n")) == {"198.18.1.11:80": 1, "198.18.1.12:80": 3, "198.18.1.13:80": 1}
    # the service and the other real servers were not recreated: their counters go on
    after = ipvsadm(lab, "-L", "-n", "--stats", "--exact")
    assert [ln for ln in before.splitlines() if "198.18.1.12" not in ln] == \
           [ln for ln in after.splitlines() if "198.18.1.12" not in ln]
    assert "198.18.1.12:80" in after


def test_scheduler_fidelity_picks(lab, results_dir, ipvs_kernel):
    """Kernel IPVS's real server for each new connection of every fidelity case (the host
    compares them with the XDP programs' picks).  Runs beside the lb instance: its services use
    other VIPs/ports and another instance name."""
    picks, elapsed = run_fidelity(lab, results_dir)
    out = results_dir / "fidelity-ipvs.json"
    out.write_text(json.dumps({"kernel": os.uname().release, "seconds": elapsed, "picks": picks}, indent=1))
    # the reference's observations on a real IPVS (6.1): the harness itself is sound
    r = {i: f"198.18.1.{21 + i}" for i in range(3)}
    assert picks["rr-equal"] == [r[2], r[1], r[0]] * 3
    assert picks["wrr-321"] == [r[2], r[1], r[0], r[0], r[1], r[0]] * 2
    assert picks["wlc-2000"] == [r[2], r[1], r[0], r[0]] * 3
    sticky = picks["sh-sticky"]          # 20 connections from 5 clients: each client sticks
    assert sticky == sticky[:5] * 4


def test_ipvs_dataplane_sets_lblc_expirations(lab, results_dir, ipvs_kernel):
    """lblc / lblcr services on kernel IPVS: lb's IPVS data plane sets the modules' sysctls
    lblc_expiration / lblcr_expiration (seconds) from the configuration."""
    import ipaddress

    from lb.dataplane import RealSpec, ServiceSpec, TableSpec
    from lb.dataplane.ipvs import IpvsDataplane

    ip = ipaddress.ip_address
    run_dir = str(results_dir / "lblc-run")

    def in_director():
        dp = IpvsDataplane("lblcexp", run_dir=run_dir)
        dp.load()
        try:
            specs = tuple(ServiceSpec("tcp", ip("198.18.0.60"), port, sched, (RealSpec(ip("198.18.1.21"), 80, 1, "dr"),))
                          for port, sched in ((81, "lblc"), (82, "lblcr")))
            dp.apply(TableSpec(specs, lblc_expiration=600, lblcr_expiration=1200))
            out = []
            for sched in ("lblc", "lblcr"):
                with open(f"/proc/sys/net/ipv4/vs/{sched}_expiration") as f:
                    out.append(f.read().strip())
            return out
        finally:
            dp.apply(TableSpec(()))
            dp.detach_all()
            dp.unpin()

    assert lab.in_netns("director", in_director, timeout=120) == ["600", "1200"]


def test_kernel_ipvs_plays_the_oracle_scripts(oracle_director, results_dir):
    """tests/vm/oracle.py's scripts played by kernel IPVS (guest_oracle.Player, beside this
    module's lb instance: another VIP, another instance name): every script's observations and
    its time line, for the host to compare.  Asserted here is only that the player is sound:
    every packet was handled (the barrier), and a SYN made a SYN_RECV entry."""
    run_dir = str(results_dir / "oracle-run")

    def in_director():
        p = Player(oracle_director, run_dir)
        try:
            return {s.id: p.play(s) for s in oracle.scripts()}
        finally:
            p.close()

    t0 = time.monotonic()
    res = oracle_director.in_netns("director", in_director, timeout=900)
    (results_dir / "oracle-ipvs.json").write_text(json.dumps(
        {"kernel": os.uname().release, "seconds": time.monotonic() - t0, "results": res}, indent=1))
    first = res["tcp-states"]["observations"][0]
    assert first["label"] == "syn#0" and [v[0] for v in first["conns"].values()] == ["SYN_RECV"], first
