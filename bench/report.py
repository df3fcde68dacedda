"""Markdown tables and a PNG chart (matplotlib) made from the suites' JSON results.

    python -m bench.report [--size full|quick|smoke] [--dir bench/results]

rebuilds latest[-size].md and latest[-size].png from the newest <date>-<suite>[-size].json."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.common import CONFIDENCE, NOISY

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ("http", "ctl", "pps", "pkt", "failover", "scaleout")
TITLES = {"http": "End-to-end HTTP (wrk, lab namespaces), ratio to direct",
          "ctl": "Control plane, ratio to its baseline",
          "pps": "Packets per second over veth (live frames, trafgen), ratio to a plain redirect",
          "pkt": "Per-packet cost (BPF_PROG_TEST_RUN), ratio to a trivial XDP_TX",
          "failover": "Failover time (HA lab, two directors), ratio to the configured deadtime",
          "scaleout": "Scale-out (active directors behind ECMP), ratio to 1 director / to the BGP hold time"}


def ratio_cell(v, noisy: bool = False) -> str:
    """a ratio; "~" marks one whose runs are too spread to stand on (bench.common.NOISY)"""
    if v is None:
        return "—"
    return f"{'~' if noisy else ''}{v:.2f}x"


def _ns(v) -> str:
    return "" if v is None else f"{v:+.0f}"


def ci_cell(stats: dict | None) -> str:
    """the half-width of the median's confidence interval, relative to it"""
    if not stats or not stats.get("median"):
        return ""
    if "ci_low" not in stats:
        return f"±{stats.get('spread', 0) * 50:.0f}%"
    return f"±{(stats['ci_high'] - stats['ci_low']) / 2 / abs(stats['median']) * 100:.0f}%"


def pkt_table(result: dict) -> str:
    lines = ["| scenario | table | ns/packet | ± | Δ trivial ns | Δ empty ns | ratio to trivial | Δ floor ns "
             "| Δ two-table floor ns | target | status |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    two = []
    for r in result["results"]:
        if r.get("kind") == "scaling":
            two.append(r)
            continue
        if r.get("kind") == "baseline" or r.get("table_size") == 0:     # no table (the redirect baseline)
            size = "—"
        else:
            size = f"{r.get('table_size') or result.get('connection_table', 0):,}"
            if r.get("entries"):          # what it held while the row ran
                size += f" ({r['entries']:,} in use)"
        noisy = bool(r.get("noisy")) and r.get("key") != "trivial"     # 1.00x by definition
        if r.get("kind") == "derived":
            ns = f"{r['ns']:.1f} /server"
        else:
            ns = f"{r['ns']:.1f}"
        lines.append(f"| {r['scenario']} | {size} | {ns} | {ci_cell(r.get('stats'))} | {_ns(r.get('delta_trivial_ns'))} "
                     f"| {_ns(r.get('delta_empty_ns'))} | {ratio_cell(r.get('ratio'), noisy)} | {_ns(r.get('delta_floor_ns'))} "
                     f"| {_ns(r.get('delta_floor2_ns'))} "
                     f"| {r.get('target', '')} | {r.get('status', '')} |")
    if two:
        lines += ["", "| two CPUs | table | 1 CPU Mpps | 2 CPUs Mpps | scaling | ± | runs side by side "
                  "| target | status |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in two:
            sc = r["scaling"]
            lines.append(f"| {r['scenario']} | {r['table_size']:,} | {r['one_cpu_mpps']['median']:.2f} "
                         f"| {r['two_cpu_mpps']['median']:.2f} | {ratio_cell(sc['median'], r.get('noisy'))} | {ci_cell(sc)} "
                         f"| {r['min_overlap'] * 100:.0f}% | {r.get('target', '')} | {r.get('status', '')} |")
    notes = list(result.get("notes", []))
    # results since the established table was split by family (lb_conns4: IPv4, a 16-byte key;
    # lb_conns6: IPv6) name those tables; older ones had one lb_conns with 40-byte keys
    split = any(r.get("table") in ("lb_conns4", "lb_conns6") for r in result["results"])
    if any(r.get("key") == "estfloor1" for r in result["results"]):
        if split:
            notes.append("the established rows' Δ floor is over the floor of the same flows: their entry's lookup "
                         "in lb_conns4 (lb's IPv4 table and its 16-byte key, a hit), its timestamp read, the MACs "
                         "swapped, XDP_TX -- what any forwarder keeping lb's table pays, the table's cache and TLB "
                         "misses included; \"in use\": the entries the row's table held while it ran (lb_conns4 "
                         "for IPv4 rows, lb_conns6 for IPv6 ones; each established block adds its flows to the "
                         "blocks' before it)")
        else:
            notes.append("the established rows' Δ floor is over the floor of the same flows: their entry's lookup "
                         "in lb_conns (lb's table and key, a hit), its timestamp read, the MACs swapped, XDP_TX -- "
                         "what any forwarder keeping lb's table pays, the table's cache and TLB misses included; "
                         "\"in use\": the entries lb_conns held while the row ran (each established block adds its "
                         "flows to the blocks' before it)")
    if any(r.get("key") == "key16_1" for r in result["results"]):
        if split:
            notes.append("the bare-lookup rows hold the same flows in two LRU tables of lb_conns4's size and value "
                         "that differ only in the key: lb's IPv4 key (16 bytes, lb_conns4's) or the 40-byte "
                         "lb_conn_key (lb_conns6's, and IPv4's before lb_conns4): what the separate IPv4 table "
                         "saves on the lookup; those two tables are fresh (their entries lie in the order they "
                         "were written), lb_conns4's entries wherever its free list put them")
        else:
            notes.append("the bare-lookup rows hold the same flows in two LRU tables of lb_conns' size and value "
                         "that differ only in the key, lb's 40 bytes or a compact 16-byte IPv4 key: what a separate "
                         "IPv4 table would save on the lookup; those two tables are fresh (their entries lie in the "
                         "order they were written), lb_conns' entries wherever its free list put them")
    if any(r.get("key") == "redirect" for r in result["results"]):
        notes.append("the redirect baseline is the trivial program ending in bpf_redirect() to the real "
                     "servers' interface instead of XDP_TX: what the DR rows pay for leaving by another "
                     "interface, which the one-armed DR row (real servers on the clients' interface) does not")
    if "fill" in result:
        notes.append(f"new-connection rows: the table {result['fill'] * 100:.0f}% full at each round's start, "
                     "each round's entries deleted after it; the floor inserts into that same table")
        if any("delta_floor2_ns" in r for r in result["results"]):
            if split:
                notes.append("the two-table floor adds a miss in lb_conns4, the IPv4 established table (with lb's "
                             "16-byte key), to the floor (new connections wait in an embryonic table of their own, "
                             "so a flood cannot evict established ones): what an IPv4 SYN would pay without the "
                             "established filter, which lets a SYN skip that lookup (a UDP flow's first packet "
                             "still pays it); the targets are judged against the floor")
            else:
                notes.append("the two-table floor adds a miss in lb_conns, the established table, to the floor (new "
                             "connections wait in an embryonic table of their own, so a flood cannot evict established "
                             "ones): what every SYN paid before the established filter let a SYN skip lb_conns (a UDP "
                             "flow's first packet still pays it); the targets are judged against the floor")
        if any(r.get("key") == "mindir" for r in result["results"]):
            notes.append("the minimal director (not lb) adds to the floor only what no director can leave out "
                         "(the service's lookup in lb_services, a hash pick, one atomic count, a devmap redirect): "
                         "its Δ floor is the least any director's SYN lands above the floor here")
        notes.append("ratio and Δ: medians of round-by-round pairs with the baselines; ± is the half-width of "
                     f"the median's {int(CONFIDENCE * 100)}% interval; ~: wider than ±{NOISY * 50:.0f}%, no verdict")
    if notes:
        lines += ["", "Note: " + "; ".join(notes) + "."]
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
    machine = f"kernel {m.get('kernel', '')} · {m.get('cpus', '')} × {m.get('cpu', '')}"
    runs = {(res.get("command", ""), res.get("date", ""), res.get("git", "")) for res in results.values()}
    if len(runs) > 1:
        # suites from separate runs: each with its own command, date and commit (the first
        # suite's alone would date and name the others wrongly)
        per = "; ".join(f"{name}: `{res.get('command', '')}` {res.get('date', '')} {res.get('git', '')}".rstrip()
                        for name, res in results.items())
        md = [f"Suites from separate runs -- {per} · {machine}", ""]
    else:
        commit = f" · commit {any_res['git']}" if any_res.get("git") else ""
        md = [f"Command: `{command}` · {any_res.get('date', '')} · {machine}" + commit, ""]
    for name in ORDER:
        if name in results:
            md += [f"#### {TITLES[name]}", "", table(results[name]), ""]
    return "\n".join(md)


def _short(n: int) -> str:
    """65536 -> 64k, 2097152 -> 2M"""
    return f"{n >> 20}M" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10}k" if n % 1024 == 0 else str(n)


def _bars(res: dict) -> tuple[list[str], list[float]]:
    name = res["suite"]
    labels, vals = [], []
    for r in res["results"]:
        if name == "http":
            if "no_answer" in r:
                continue
            labels.append(f"{r['scenario'][:34]} ({'ka' if r['mode'] == 'keepalive' else 'close'})")
            vals.append(r["ratio_rps"])
        elif name == "pps":     # two packet sources, each with its own baseline rows
            scen = r["scenario"].replace("MAC rewrite + bpf_redirect", "redirect")
            labels.append(f"{r.get('source', 'live frames')}: {scen}"[:48])
            vals.append(r["ratio"])
        elif r.get("ratio") is not None:      # derived rows (pkt's ns per server) have none
            scen = r["scenario"].split(" (table ")[0].replace("new connection (SYN)", "SYN").replace("real servers", "reals")
            if name == "pkt" and r.get("table_size") and r.get("kind") != "baseline":
                labels.append(f"{scen[:42]} [{_short(r['table_size'])}]")
            else:
                labels.append(scen[:48])
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
