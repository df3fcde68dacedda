"""bench/ must not rot: every suite runs at a tiny size (no timing is asserted).  The http and
pps suites use the namespace lab (a few seconds, under the lab lock the lab tests take).  pps
runs both its packet sources, trafgen included: without trafgen (scripts/setup.sh installs it)
the suite fails, so this test fails too."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from bench import report, run
from bench.failover import LONG_FLOWS
from lb.config.model import embryonic_size

NEEDS = ("wrk", "haproxy", "nsenter")


def _load(tmp_path, suite):
    files = [f for f in os.listdir(tmp_path) if f.endswith(f"-{suite}-smoke.json")]
    assert len(files) == 1, files
    return json.loads((tmp_path / files[0]).read_text())


def test_bench_suites_run(tmp_path):
    if os.geteuid() != 0 or any(shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}") for t in NEEDS):
        pytest.skip("the bench suites need root, wrk, haproxy and nsenter (scripts/setup.sh installs them)")
    pins_before = set(os.listdir("/sys/fs/bpf/lb")) if os.path.isdir("/sys/fs/bpf/lb") else set()
    assert run.main(["--smoke", "--out", str(tmp_path)]) == 0

    pkt = _load(tmp_path, "pkt")
    rows = pkt["results"]
    assert rows[0]["scenario"].startswith("baseline: trivial") and rows[1]["scenario"].startswith("baseline: empty")
    measured = [r for r in rows if r["kind"] in ("baseline", "reference", "lb")]
    assert all(r["ns"] > 0 and r["ratio"] > 0 and "delta_trivial_ns" in r and "delta_empty_ns" in r for r in measured)
    # every row names its table; SYN rows at the default size and at the big one, each block with its floor
    assert all(r["table_size"] for r in rows if r["kind"] != "baseline")
    syn = [r for r in rows if "new connection (SYN)" in r["scenario"] and r["kind"] == "lb"]
    # a SYN goes to the embryonic table (bpf/lb_embryo.h): a quarter of the connection table
    embryo = {embryonic_size(65536), embryonic_size(1 << 17)}
    assert {r["table_size"] for r in syn} == embryo
    assert all("delta_floor_ns" in r and f"(table {r['table_size']:,})" in r["scenario"] for r in syn)
    floors = [r for r in rows if r["key"] == "floor"]
    assert sorted(r["table_size"] for r in floors) == sorted(embryo)
    # ... and the floor of lb's two tables (a miss in lb_conns4 first), with each SYN row's Δ over it
    floors2 = [r for r in rows if r["key"] == "floor2"]
    assert {r["kind"] for r in floors2} == {"reference"} and sorted(r["table_size"] for r in floors2) == sorted(embryo)
    assert all("delta_floor2_ns" in r for r in syn)
    # the established tables, one per family: IPv4 rows measure lb_conns4 (its floor too), IPv6 lb_conns6
    by = {r["key"]: r for r in rows}
    assert pkt["tables"]["default"]["lb_conns4"] == 65536 and pkt["tables"]["default"]["lb_conns6"] == 16384
    assert {by[k]["table"] for k in ("dr1", "drmany", "estfloor1", "estfloormany", "natmany")} == {"lb_conns4"}
    assert by["dr1"]["table_size"] == by["estfloor1"]["table_size"] == 65536
    assert by["dr6many"]["table"] == "lb_conns6" and by["dr6many"]["table_size"] == 16384
    # each established row says how many entries its table held while it ran: the DR block only its
    # own flows (1 + 100 DR, a UDP flow, one-armed, a NAT flow's two, the firewall-mark flow), the
    # later blocks what they added (the NAT block's to lb_conns4, the IPv6 block's to lb_conns6)
    assert by["drmany"]["entries"] == by["dr1"]["entries"] == by["estfloormany"]["entries"] == 106
    # the UDP flow's datagrams were forwarded from its lb_conns4 entry
    assert by["udp1"]["table"] == "lb_conns4" and by["udp1"]["action"] == "XDP_REDIRECT"
    assert by["drmany"]["entries"] < by["natmany"]["entries"] == by["drmanyfull"]["entries"] == \
        by["estfloormanyfull"]["entries"]
    assert by["dr6many"]["entries"] == 100
    # ... and the recycled block only the DR flows' (its floor found every one: XDP_TX)
    assert by["drmanylived"]["entries"] == by["estfloormanylived"]["entries"] == 100
    assert by["estfloormanylived"]["action"] == "XDP_TX" and "delta_floor_ns" in by["drmanylived"]
    assert "in use)" in next(line for line in report.pkt_table(pkt).splitlines() if line.startswith("| established TCP flow, DR (1"))
    # targets carry a status; two runs support no verdict
    assert {r["status"] for r in rows if r.get("target")} == {"too few runs"}
    assert len([r for r in rows if r["key"] == "slope"]) == 2
    if len(os.sched_getaffinity(0)) >= 2:
        two = [r for r in rows if r["kind"] == "scaling"]
        assert {r["key"] for r in two} == {"cpu2_est", "cpu2_rr", "cpu2_mh", "cpu2_wlc", "cpu2_nat"}
        assert all(r["one_cpu_mpps"]["median"] > 0 and r["two_cpu_mpps"]["median"] > 0 for r in two)
        # the NAT row's packets were forwarded (requests redirected, replies sent back), not passed
        assert next(r for r in two if r["key"] == "cpu2_nat")["action"] in ("XDP_TX", "XDP_REDIRECT")

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
    kinds = {r["scenario"]: r for r in ctl["results"] if "change" in r["scenario"] or "unchanged" in r["scenario"]}
    fresh = "one-server change (weight), every spec built afresh"
    engine = "one-server change through the engine (a health check fails or passes: build_table + apply)"
    assert set(kinds) == {"one-server change (weight)", "one-server change (remove)", "one-server change (add)",
                          "unchanged table re-applied", fresh, engine}
    assert [len(r["runs"]) for r in kinds.values()] == [4, 2, 2, 2, 2, 4] and kinds["unchanged table re-applied"]["writes"] == 0
    assert kinds[fresh]["writes"] == kinds["one-server change (weight)"]["writes"]

    http = _load(tmp_path, "http")
    base = [r for r in http["results"] if r.get("baseline")]
    assert base and all(r["ratio_rps"] == 1.0 for r in base)
    assert {r["scenario"] for r in http["results"]} >= {"lb DR (XDP)"}
    assert all(r["rps"]["median"] > 0 and r["errors"] == 0 for r in http["results"])

    # both packet sources (trafgen missing fails the suite, it is not skipped), each with its
    # baselines: the plain redirect and the stateful reference
    pps = _load(tmp_path, "pps")
    assert {(r["source"], r["program"]) for r in pps["results"]} == {
        (src, p) for src in ("live frames", "trafgen") for p in ("redirect", "redirect_map", "stateful", "lb")}
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
    # no pinned maps left behind by any suite's instance (bench, benchctl, benchwarm, benchpps,
    # benchhttp, benchfo1/2, so1-3, the lab's own "lab"); other tests running beside this one
    # pin instances of their own meanwhile
    pins_after = set(os.listdir("/sys/fs/bpf/lb")) if os.path.isdir("/sys/fs/bpf/lb") else set()
    left = {p for p in pins_after - pins_before if p.startswith("bench") or p in ("so1", "so2", "so3", "lab")}
    assert not left, left


def test_pps_without_trafgen_fails_loudly(monkeypatch):
    """a machine without trafgen gets an error naming the package, before the lab is touched"""
    from bench import pps

    monkeypatch.setattr(pps, "TRAFGEN", "trafgen-not-installed-here")
    with pytest.raises(RuntimeError, match="trafgen not found .*netsniff-ng.*scripts/setup.sh"):
        pps.suite("smoke")
