"""Failover time (issue #6, suite 5): the HA lab test kills the active director (kill -9 of its
lb, its links down) and times the client's first new HTTP connection that succeeds through the
backup.  This suite runs that test (tests/test_ha_lab.py, the lab under the tests' lock) a few
times and reports the median; the baseline is the configured deadtime, the time the backup must
wait by definition, so the ratio shows what lb adds on top (target: deadtime + 0.5 s)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, ratio, summary

TEST = "tests/test_ha_lab.py::test_failover_keeps_connections_and_primary_returns"
RUNS = {"smoke": 1, "quick": 1, "full": 3}
RUN_TIMEOUT_S = 300


def one_run() -> dict:
    """One run of the HA test; its measurement comes back through LB_FAILOVER_RESULT."""
    with tempfile.TemporaryDirectory(prefix="lb-failover-") as tmp:
        out = Path(tmp) / "failover.json"
        env = dict(os.environ, LB_FAILOVER_RESULT=str(out))
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        if p.returncode != 0 or not out.exists():
            raise RuntimeError(f"the HA failover test failed (rc {p.returncode}):\n{p.stdout[-3000:]}{p.stderr[-2000:]}")
        return json.loads(out.read_text())


def suite(size: str = "full") -> dict:
    runs = [one_run() for _ in range(RUNS[size])]
    deadtime = runs[0]["deadtime_s"]
    times = [r["failover_s"] for r in runs]
    s = summary(times)
    return {"suite": "failover", "results": [
        {"scenario": f"configured deadtime (keepalive {runs[0]['keepalive_s']} s)", "baseline": True,
         "seconds": summary([deadtime]), "ratio": 1.0},
        {"scenario": "failover: active killed -> first new connection through the backup",
         "seconds": s, "runs": times, "connections_kept": min(r["connections_kept"] for r in runs),
         "target_s": deadtime + 0.5, "ratio": ratio(s["median"], deadtime)},
    ]}


def table(res: dict) -> str:
    lines = ["| what | seconds (median) | runs | spread | established connections kept | ratio to deadtime |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in res["results"]:
        s = r["seconds"]
        kept = r.get("connections_kept", "")
        lines.append(f"| {r['scenario']}{' *(baseline)*' if r.get('baseline') else ''} | {s['median']:.3f} | "
                     f"{s['n']} | ±{s['spread'] * 100:.0f}% | {kept} | {r['ratio']:.2f}x |")
    return "\n".join(lines)
