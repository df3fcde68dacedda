"""`make bench` / `make bench-quick`: run the suites, write bench/results/<date>-<suite>.json and
a Markdown table (bench/results/latest.md) made from it.  Every figure is a ratio to a baseline
measured in the same run."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SUITES = ("pkt",)


def machine() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(),
            "python": platform.python_version()}


def table(result: dict) -> str:
    lines = ["| scenario | ns/packet | Mpps/core | ratio to trivial |", "|---|---:|---:|---:|"]
    for r in result["results"]:
        mpps = 1000.0 / r["ns"] if r["ns"] else 0.0
        lines.append(f"| {r['scenario']} | {r['ns']:.1f} | {mpps:.2f} | {r['ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench")
    ap.add_argument("--suite", default="all", choices=("all",) + SUITES)
    ap.add_argument("--quick", action="store_true", help="a small version")
    ap.add_argument("--smoke", action="store_true", help="tiny: proves the suites run (make test)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    suites = SUITES if args.suite == "all" else (args.suite,)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d")
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    cmd = {"smoke": "python -m bench.run --smoke", "quick": "make bench-quick", "full": "make bench"}[size]
    md = [f"Command: `{cmd}` · {stamp} · kernel {machine()['kernel']} · {machine()['cpu']}", ""]
    for name in suites:
        if name == "pkt":
            from bench import pkt
            res = pkt.suite(size)
        res.update({"date": stamp, "machine": machine(), "command": cmd,
                    "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                          text=True, cwd=RESULTS.parent.parent).stdout.strip()})
        suffix = "" if size == "full" else f"-{size}"
        path = args.out / f"{stamp}-{name}{suffix}.json"
        path.write_text(json.dumps(res, indent=2) + "\n")
        md += [f"### {name}", "", table(res), ""]
        print(f"bench: wrote {path}", file=sys.stderr)
    text = "\n".join(md)
    (args.out / f"latest{'' if size == 'full' else '-' + size}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
