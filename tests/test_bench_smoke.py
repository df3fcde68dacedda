"""bench/ must not rot: every suite runs at a tiny size (no timing is asserted)."""
from __future__ import annotations

import json
import os

from bench import run


def test_bench_suites_run(tmp_path):
    assert run.main(["--smoke", "--out", str(tmp_path)]) == 0
    files = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    assert files
    res = json.loads((tmp_path / files[0]).read_text())
    names = [r["scenario"] for r in res["results"]]
    assert names[0].startswith("baseline") and len(names) >= 6
    assert all(r["ns"] > 0 and r["ratio"] > 0 for r in res["results"])
    assert not [d for d in os.listdir("/sys/fs/bpf/lb") if d.startswith("bench")]
