"""Markdown tables and a PNG chart (matplotlib) made from the suites' JSON results.

    python -m bench.report [--size full|quick|smoke] [--dir bench/results]

rebuilds latest[-size].md and latest[-size].png from the newest <date>-<suite>[-size].json."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ("http", "ctl", "pps", "pkt", "failover", "scaleout")
TITLES = {"http": "End-to-end HTTP (wrk, lab namespaces), ratio to direct",
          "ctl": "Control plane, ratio to its baseline",
          "pps": "Packets per second over veth (live frames, trafgen), ratio to a plain redirect",
          "pkt": "Per-packet cost (BPF_PROG_TEST_RUN), ratio to a trivial XDP_TX",
          "failover": "Failover time (HA lab, two directors), ratio to the configured deadtime",
          "scaleout": "Scale-out (active directors behind ECMP), ratio to 1 director / to the BGP hold time"}


def pkt_table(result: dict) -> str:
    lines = ["| scenario | ns/packet | Mpps/core | ratio to trivial |", "|---|---:|---:|---:|"]
    for r in result["results"]:
        mpps = 1000.0 / r["ns"] if r["ns"] else 0.0
        lines.append(f"| {r['scenario']} | {r['ns']:.1f} | {mpps:.2f} | {r['ratio']:.2f}x |")
    return "\n".join(lines)


def table(res: dict) -> str:
    name = res["suite"]
    if name == "pkt":
        return pkt_table(res)
    if name == "http":
        from bench import http
        return http.table(res)
    if name == "ctl":
        from bench import ctl
        return ctl.table_md(res)
    if name == "pps":
        from bench import pps
        return pps.table(res)
    if name == "failover":
        from bench import failover
        return failover.table(res)
    if name == "scaleout":
        from bench import scaleout
        return scaleout.table(res)
    raise ValueError(f"unknown suite {name!r}")


def markdown(results: dict[str, dict], command: str) -> str:
    any_res = next(iter(results.values()), {})
    m = any_res.get("machine", {})
    commits = {name: res["git"] for name, res in results.items() if res.get("git")}
    if len(set(commits.values())) > 1:    # suites from runs at different commits: say which is which
        commit = " · commits " + ", ".join(f"{name} {c}" for name, c in commits.items())
    else:
        commit = f" · commit {next(iter(commits.values()))}" if commits else ""
    md = [f"Command: `{command}` · {any_res.get('date', '')} · kernel {m.get('kernel', '')} · "
          f"{m.get('cpus', '')} × {m.get('cpu', '')}" + commit, ""]
    for name in ORDER:
        if name in results:
            md += [f"#### {TITLES[name]}", "", table(results[name]), ""]
    return "\n".join(md)


def _bars(res: dict) -> tuple[list[str], list[float]]:
    name = res["suite"]
    labels, vals = [], []
    for r in res["results"]:
        if name == "http":
            labels.append(f"{r['scenario'][:34]} ({'ka' if r['mode'] == 'keepalive' else 'close'})")
            vals.append(r["ratio_rps"])
        elif name == "pps":     # two packet sources, each with its own baseline rows
            scen = r["scenario"].replace("MAC rewrite + bpf_redirect", "redirect")
            labels.append(f"{r.get('source', 'live frames')}: {scen}"[:48])
            vals.append(r["ratio"])
        else:
            labels.append(r["scenario"][:48])
            vals.append(r["ratio"])
    return labels, vals


def chart(results: dict[str, dict], path: Path) -> Path | None:
    """one horizontal bar chart per suite (ratio to that suite's baseline); None without matplotlib"""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing (pip install -e '.[bench]'): no chart", file=sys.stderr)
        return None
    names = [n for n in ORDER if n in results]
    if not names:
        return None
    heights = [max(2.0, 0.32 * len(results[n]["results"]) + 1.0) for n in names]
    fig, axes = plt.subplots(len(names), 1, figsize=(10, sum(heights)), gridspec_kw={"height_ratios": heights},
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        labels, vals = _bars(results[name])
        ys = range(len(vals))
        colors = ["#888888" if v == 1.0 else "#3b75af" for v in vals]
        ax.barh(list(ys), vals, color=colors)
        ax.set_yticks(list(ys))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        if name == "ctl":
            ax.set_xscale("log")
        ax.set_title(TITLES[name] + (" (req/s)" if name == "http" else "") + (", log scale" if name == "ctl" else ""),
                     fontsize=9)
        for y, v in zip(ys, vals):
            ax.text(v, y, f" {v:.2f}x", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latest(directory: Path, size: str) -> dict[str, dict]:
    suffix = "" if size == "full" else f"-{size}"
    out = {}
    for name in ORDER:
        files = sorted(p for p in directory.glob(f"*-{name}{suffix}.json")
                       if p.name[:10].replace("-", "").isdigit() and p.stem.endswith(f"-{name}{suffix}"))
        if files:
            out[name] = json.loads(files[-1].read_text())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.report")
    ap.add_argument("--size", default="full", choices=("full", "quick", "smoke"))
    ap.add_argument("--dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    res = latest(args.dir, args.size)
    if not res:
        print(f"bench.report: no {args.size} results in {args.dir}", file=sys.stderr)
        return 1
    suffix = "" if args.size == "full" else f"-{args.size}"
    command = next(iter(res.values())).get("command", "")
    (args.dir / f"latest{suffix}.md").write_text(markdown(res, command) + "\n")
    chart(res, args.dir / f"latest{suffix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
