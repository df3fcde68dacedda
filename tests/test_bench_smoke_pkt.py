"""bench/ must not rot: the packet suite (BPF_PROG_TEST_RUN against lb's programs, no namespace
lab) at its tiny size, beside the lab tests (tests/test_bench_smoke.py runs the suites that use
the lab).  No timing is asserted: what each row is, the tables it ran against, and that every
row was measured."""
from __future__ import annotations

import json
import os
import re

import pytest

from bench import report, run
from lb.config.model import embryonic_size


def test_packet_suite_runs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the packet suite loads XDP programs: it needs root")
    pins_before = set(os.listdir("/sys/fs/bpf/lb")) if os.path.isdir("/sys/fs/bpf/lb") else set()
    assert run.main(["--smoke", "--suite", "pkt", "--out", str(tmp_path)]) == 0

    files = [f for f in os.listdir(tmp_path) if f.endswith("-pkt-smoke.json")]
    assert len(files) == 1, files
    pkt = json.loads((tmp_path / files[0]).read_text())
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
    # ... and the minimal director, in both blocks: it forwarded every SYN (a devmap redirect) and
    # says how far above the floor it lands
    mindir = [r for r in rows if r["key"] == "mindir"]
    assert sorted(r["table_size"] for r in mindir) == sorted(embryo)
    assert all(r["kind"] == "reference" and r["action"] == "XDP_REDIRECT" and "delta_floor_ns" in r for r in mindir)
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

    assert (tmp_path / "latest-smoke.md").stat().st_size > 0
    # no pinned maps left behind by its instances (bench, benchflood: this process's pid after
    # the name); tests running beside this one pin instances of their own
    pins_after = set(os.listdir("/sys/fs/bpf/lb")) if os.path.isdir("/sys/fs/bpf/lb") else set()
    left = {p for p in pins_after - pins_before if re.fullmatch(rf"bench[a-z]*{os.getpid()}", p)}
    assert not left, left
