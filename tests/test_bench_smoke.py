"""bench/ must not rot: every suite runs at a tiny size (no timing is asserted).  These are the
suites that use the namespace lab (ctl's start rows, http, pps, failover, scaleout: a few
seconds each, under the lab lock the lab tests take); the packet suite, which does not, runs
beside the lab tests (tests/test_bench_smoke_pkt.py).  pps runs both its packet sources, live
frames where the kernel runs them (else the report says why not), and trafgen: without trafgen
(scripts/setup.sh installs it) the suite fails, so this test fails too."""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics

import pytest

from bench import http as bench_http
from bench import run
from bench.failover import LONG_FLOWS
from lb.lab.flood import live_frames_refused

NEEDS = ("wrk", "haproxy", "nsenter")
# the lab suites' instances, named without a pid
LAB_INSTANCES = ("benchhttp", "benchfo1", "benchfo2", "so1", "so2", "so3", "lab")


def _load(tmp_path, suite):
    files = [f for f in os.listdir(tmp_path) if f.endswith(f"-{suite}-smoke.json")]
    assert len(files) == 1, files
    return json.loads((tmp_path / files[0]).read_text())


def test_bench_suites_run(tmp_path):
    """the suites that use the namespace lab (ctl's start-time rows too): the packet suite runs
    beside the lab in tests/test_bench_smoke_pkt.py"""
    if os.geteuid() != 0 or any(shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}") for t in NEEDS):
        pytest.skip("the bench suites need root, wrk, haproxy and nsenter (scripts/setup.sh installs them)")
    pins_before = set(os.listdir("/sys/fs/bpf/lb")) if os.path.isdir("/sys/fs/bpf/lb") else set()
    assert run.main(["--smoke", "--suite", "ctl,http,pps,failover,scaleout", "--out", str(tmp_path)]) == 0

    ctl = _load(tmp_path, "ctl")
    assert all(r["seconds"]["median"] >= 0 and r["ratio"] >= 0 for r in ctl["results"])
    # the memory figure of both established tables: IPv4's 16-byte keys, IPv6's 40
    assert [(m["map"], m["key_size"], m["value_size"]) for m in ctl["memory"].values()] == \
        [("lb_conns4", 16, 64), ("lb_conns6", 40, 64)]
    assert all(m["per_1m_entries_mb"] > 0 for m in ctl["memory"].values())
    apply = next(r for r in ctl["results"] if r["scenario"].startswith("apply"))
    change = next(r for r in ctl["results"] if r["scenario"].startswith("one-server change (weight)"))
    assert apply["writes"] > change["writes"] > 0
    # every kind of change measured once per round (smoke: two rounds; the weight goes there and back)
    kinds = {r["scenario"]: r for r in ctl["results"] if ("change" in r["scenario"] or "unchanged" in r["scenario"])
             and "sweep" not in r["scenario"]}
    fresh = "one-server change (weight), every spec built afresh"
    engine = "one-server change through the engine (a health check fails or passes: build_table + apply)"
    assert set(kinds) == {"one-server change (weight)", "one-server change (remove)", "one-server change (add)",
                          "unchanged table re-applied", fresh, engine}
    assert [len(r["runs"]) for r in kinds.values()] == [4, 2, 2, 2, 2, 4] and kinds["unchanged table re-applied"]["writes"] == 0
    assert kinds[fresh]["writes"] == kinds["one-server change (weight)"]["writes"]
    # a one-server change asked during the sweep, its scan without the lock and the lock held
    # through it, against the change with no sweep running (smoke: one run, the change there and back)
    beside = [r for r in ctl["results"] if "sweep" in r["scenario"] and "one-server change" in r["scenario"]]
    assert [r["scenario"].rsplit(", ", 1)[-1] for r in beside] == [
        "no sweep running", "its scan without the lock", "the lock held through it (before)"], beside
    assert beside[0]["baseline"] and all(len(r["runs"]) == 2 and r["ratio"] > 0 for r in beside)
    # the rate estimator: idle and every counter moved (each pass wrote every id), against its floor
    idle = [r for r in ctl["results"] if r["scenario"].startswith("rate estimator pass") and " idle " in r["scenario"]]
    moved = [r for r in ctl["results"] if r["scenario"].startswith("rate estimator pass") and "moved" in r["scenario"]]
    assert len(idle) == len(moved) == 1 and moved[0]["writes"] == 10 + 10 * 8      # smoke: 10 x 8
    assert idle[0]["share_of_a_core"] > 0 and moved[0]["share_of_a_core"] > 0
    assert any(r["scenario"].endswith("(the estimator's floor)") and r["baseline"] for r in ctl["results"])
    # next hops through the kernel (smoke: 20 servers): in a session, alone, and their floor
    nh = [r for r in ctl["results"] if "next hops of 20 real servers" in r["scenario"]
          or r["scenario"].startswith("20 `ip route get`s")]
    assert len(nh) == 3 and nh[0]["baseline"] and all(len(r["runs"]) == 1 and r["ratio"] > 0 for r in nh)

    http = _load(tmp_path, "http")
    base = [r for r in http["results"] if r.get("baseline")]
    assert base and all(r["ratio_rps"] == 1.0 for r in base)
    assert {r["scenario"] for r in http["results"]} >= {"lb DR (XDP)", "lb NAT (XDP)"}
    # lb DR and lb NAT each against the direct runs taken between its own, one each (NAT's from
    # the client's second address: from its own, one could be answered translated, or not at all)
    for name in ("lb DR (XDP)", "lb NAT (XDP)"):
        (lb,) = [r for r in http["results"] if r["scenario"] == name]
        (paired,) = [r for r in http["results"] if r["scenario"] == lb["against"]]
        assert paired["baseline"] and paired["scenario"] == bench_http.PAIRED[name]
        assert len(paired["runs"]) == len(lb["runs"]) >= 1 and lb["paired"]
        # the median of the run-by-run ratios
        assert lb["ratio_rps"] == statistics.median(a["rps"] / b["rps"] for a, b in zip(lb["runs"], paired["runs"]))
    assert all(r["rps"]["median"] > 0 and r["errors"] == 0 for r in http["results"])

    # both packet sources (trafgen missing fails the suite, it is not skipped), each with its
    # baselines: the plain redirect and the stateful reference; live frames only where the kernel
    # runs them, and the report says why not elsewhere
    pps = _load(tmp_path, "pps")
    refused = live_frames_refused()
    sources = ("trafgen",) if refused else ("live frames", "trafgen")
    assert {(r["source"], r["program"]) for r in pps["results"]} == {
        (src, p) for src in sources for p in ("redirect", "redirect_map", "stateful", "lb")}
    assert pps["not_measured"] == ({"live frames": refused} if refused else {})
    for r in pps["results"]:
        assert r["mpps"]["median"] > 0 and len(r["runs"]) == 2
        assert min(r["delivered"]) == r["sent"]        # everything sent crossed the director
    for r in pps["results"]:
        if r["program"] == "lb":
            assert r["connections"] >= r["flows"]      # this source's handshakes opened lb's connections
            assert r["ratio_redirect"] > 0 and r["ratio_redirect_map"] > 0 and r["ratio_stateful"] > 0
            assert bool(r.get("target")) == (r["source"] == "live frames")
    md = (tmp_path / "latest-smoke.md").read_text()
    assert "| trafgen | lb DR, established, 100 flows | 100 |" in md
    assert (f"Not measured: live frames: {refused};" in md) == bool(refused)

    fo = _load(tmp_path, "failover")
    base, took = fo["results"]
    assert base.get("baseline") and base["ratio"] == 1.0
    assert took["seconds"]["median"] > 0 and took["connections_kept"] == LONG_FLOWS      # every open connection survived
    assert "Failover time" in md

    so = _load(tmp_path, "scaleout")
    rows = {r["scenario"].split(":")[0]: r for r in so["results"] if r["unit"] in ("conn/s", "pkt/s")}
    assert {r["ratio"] for r in so["results"] if r.get("baseline")} == {1.0}
    assert all(r["value"]["median"] > 0 and r["errors"] == 0 for r in so["results"] if r["unit"] != "s")
    assert set(rows) == {"1 director", "2 directors", "3 directors"}
    withdrawals = [r for r in so["results"] if r["scenario"].startswith("failure")]
    assert len(withdrawals) == 3 and all(r["value"]["median"] > 0 for r in withdrawals)
    assert "Scale-out" in md
    assert not {"so1", "so2", "so3"} & set(os.listdir("/sys/fs/bpf/lb"))

    for f in ("latest-smoke.md", "latest-smoke.png"):
        assert (tmp_path / f).stat().st_size > 0
    # no pinned maps left behind by any suite's instance (benchctl, benchwarm, benchpps: this
    # process's pid after the name; benchhttp, benchfo1/2, so1-3, the lab's own "lab"); other
    # tests running beside this one (the packet suite's included) pin instances of their own
    pins_after = set(os.listdir("/sys/fs/bpf/lb")) if os.path.isdir("/sys/fs/bpf/lb") else set()
    left = {p for p in pins_after - pins_before
            if p in LAB_INSTANCES or re.fullmatch(rf"bench[a-z]+{os.getpid()}", p)}
    assert not left, left


def test_pps_without_trafgen_fails_loudly(monkeypatch):
    """a machine without trafgen gets an error naming the package, before the lab is touched"""
    from bench import pps

    monkeypatch.setattr(pps, "TRAFGEN", "trafgen-not-installed-here")
    with pytest.raises(RuntimeError, match="trafgen not found .*netsniff-ng.*scripts/setup.sh"):
        pps.suite("smoke")
