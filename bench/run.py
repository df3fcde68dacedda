"""`make bench` / `make bench-quick` / `python -m bench.run --smoke`: run the suites, write
bench/results/<date>-<suite>[-size].json (every raw run, median and spread, the machine, the
command) and, made from them, latest[-size].md and latest[-size].png.  Every figure is a ratio
to a baseline measured in the same run, except failover's and scale-out's failure times, which
are against the configured deadtime and BGP hold time.

Suites: pkt (per-packet cost, BPF_PROG_TEST_RUN), ctl (control plane at 1,000 x 64), http (wrk
through the lab: direct, lb DR, lb NAT, HAProxy, kernel IPVS where the kernel has it), pps
(packets per second over veth), failover (two directors' failover time in the lab, its own runs, against the
configured deadtime), scaleout (new connections/s and established pps with 1, 2 and 3 active
directors behind ECMP, and the time from a director's failure to the router's withdrawal).
http, pps, failover and scaleout use the namespace lab under the tests' lock and tear it down
afterwards."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import traceback
from pathlib import Path

from bench import report
from bench.common import REPO, machine

RESULTS = Path(__file__).resolve().parent / "results"
SUITES = ("pkt", "ctl", "http", "pps", "failover", "scaleout")
COMMANDS = {"smoke": "python -m bench.run --smoke", "quick": "make bench-quick", "full": "make bench"}


def git_head() -> str:
    """the commit, read from .git (no git command); a worktree's .git is a file naming its git
    directory, whose branch refs live in the common directory it names"""
    try:
        gitdir = REPO / ".git"
        if gitdir.is_file():
            gitdir = (REPO / gitdir.read_text().strip().removeprefix("gitdir:").strip()).resolve()
        common = gitdir
        if (gitdir / "commondir").exists():
            common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
        head = (gitdir / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:10]
        ref = head[5:]
        for d in (gitdir, common):
            if (d / ref).exists():
                return (d / ref).read_text().strip()[:10]
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:10]
    except OSError:
        pass
    return ""


def run_suite(name: str, size: str) -> dict:
    if name == "pkt":
        from bench import pkt
        return pkt.suite(size)
    if name == "ctl":
        from bench import ctl
        return ctl.suite(size)
    if name == "http":
        from bench import http
        return http.suite(size)
    if name == "pps":
        from bench import pps
        return pps.suite(size)
    if name == "failover":
        from bench import failover
        return failover.suite(size)
    if name == "scaleout":
        from bench import scaleout
        return scaleout.suite(size)
    raise ValueError(name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench")
    ap.add_argument("--suite", default="all", help="all, or a comma-separated list of " + ", ".join(SUITES))
    ap.add_argument("--quick", action="store_true", help="a small version")
    ap.add_argument("--smoke", action="store_true", help="tiny: proves the suites run (make test)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    suites = SUITES if args.suite == "all" else tuple(args.suite.split(","))
    bad = [s for s in suites if s not in SUITES]
    if bad:
        ap.error(f"unknown suite(s): {', '.join(bad)}")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d")
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    cmd = COMMANDS[size] + ("" if args.suite == "all" else f" (--suite {args.suite})")
    suffix = "" if size == "full" else f"-{size}"
    mach, head = machine(), git_head()
    failed = []
    for name in suites:
        t0 = time.monotonic()
        try:
            res = run_suite(name, size)
        except Exception:
            traceback.print_exc()
            print(f"bench: suite {name} FAILED", file=sys.stderr)
            failed.append(name)
            continue
        res.update({"date": stamp, "machine": mach, "command": cmd, "git": head,
                    "elapsed_s": round(time.monotonic() - t0, 1)})
        path = args.out / f"{stamp}-{name}{suffix}.json"
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(f"bench: {name} took {res['elapsed_s']} s, wrote {path}", file=sys.stderr)
    # the tables and the chart come from the newest JSON of every suite (this run's where it ran)
    latest = report.latest(args.out, size)
    text = report.markdown(latest, cmd)
    (args.out / f"latest{suffix}.md").write_text(text + "\n")
    png = report.chart(latest, args.out / f"latest{suffix}.png")
    print(text)
    if png:
        print(f"bench: wrote {args.out / f'latest{suffix}.md'} and {png}", file=sys.stderr)
    if failed:
        print(f"bench: failed suites: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
