"""bench/report.py's header: what run each table of latest.md came from."""
from __future__ import annotations

from bench import report

MACHINE = {"kernel": "6.18", "cpus": 2, "cpu": "EPYC"}


def test_suites_from_separate_runs_each_name_their_own_command_date_and_commit():
    # names outside report.ORDER: the header alone, no tables to build
    res = {"a": {"command": "make bench (--suite a)", "date": "2026-12-04", "git": "1111", "machine": MACHINE},
           "b": {"command": "make bench (--suite b)", "date": "2026-12-06", "git": "2222", "machine": MACHINE}}
    head = report.markdown(res, "make bench (--suite b)").splitlines()[0]
    assert "a: `make bench (--suite a)` 2026-12-04 1111" in head
    assert "b: `make bench (--suite b)` 2026-12-06 2222" in head
    assert "kernel 6.18" in head


def test_one_run_names_its_command_once():
    res = {s: {"command": "make bench", "date": "2026-12-06", "git": "3333", "machine": MACHINE} for s in "ab"}
    head = report.markdown(res, "make bench").splitlines()[0]
    assert head == "Command: `make bench` · 2026-12-06 · kernel 6.18 · 2 × EPYC · commit 3333"
