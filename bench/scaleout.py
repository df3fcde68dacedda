"""Scale-out (issue 19): N active directors behind the router's ECMP, in the scale-out lab
(`lb lab up --scale-out 3`, direct routing, the three real servers).

  new connections/s   wrk with `Connection: close` from the client: its requests/s, one TCP connection
                      each (the directors' own connection counters count fewer: a client port reused
                      while a director's entry for it is still in FIN_WAIT reuses that entry, as IPVS
                      with conn_reuse_mode 1 does)
  established pps     wrk with keep-alive connections; packets through the directors: the sum of
                      the directors' InPkts for the VIP over the run, per second
  with 3, 2 and 1 directors announcing (one at a time leaves by `lb stop`), as ratios to 1
  director in the same run; and each director's share of the packets with 3.

  withdrawal          the time from a director's failure to the router's withdrawal of its route,
                      against the BGP hold time (the baseline: the router must wait that long at
                      most): links down (the hold timer), lb killed -9 (the speaker's watchdog:
                      ExaBGP outlives lb, its agent withdraws) and `lb stop` (an UPDATE at once)

On this lab every node shares the host's CPUs (two here): the client (wrk), the router, nginx and
the directors compete for them, so more directors do not add capacity the way more machines would;
the ratios show what the ECMP spread costs or gains on one host.  The lab is the tests' (same
lock), torn down at the end."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import LB_BIN, lab_lock, ratio, summary
from bench.http import parse_wrk

SIZES = {  # name: (wrk runs per count of directors, wrk seconds, wrk connections, failure runs)
    "full": (3, 5, 64, 3),
    "quick": (2, 3, 32, 2),
    "smoke": (1, 1, 8, 1),
}
TABLES = "\n[tables]\nconnections = 1048576\n"    # short connections sit 120 s in TIME_WAIT


class ScaleOut:
    def __init__(self, lab, size: str):
        from lb.lab import scaleout as so

        self.lab, self.so = lab, so
        self.runs, self.duration, self.conns, self.fail_runs = SIZES[size]
        self.tmp = Path(tempfile.mkdtemp(prefix="lb-bench-scaleout-"))
        self.nodes = so.directors(3)
        self.procs: dict[str, subprocess.Popen] = {}
        self.vip = so.VIPS[0]
        self.prefix = f"{self.vip}/32"

    # ---- directors ----
    def start(self, node: str) -> None:
        conf = self.tmp / f"{node}.toml"
        conf.write_text(self.so.director_config(node, "direct", settle=0.5) + TABLES)
        log = open(self.tmp / f"{node}.log", "ab")
        self.procs[node] = self.lab.popen(node, [LB_BIN, "run", "--config", str(conf)], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def wait_running(self, node: str, timeout: float = 240.0) -> None:
        want = f"lb instance '{self.so.instance(node)}' running"
        deadline = time.monotonic() + timeout
        while want not in (self.tmp / f"{node}.log").read_text(errors="replace"):
            if self.procs[node].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench scaleout: lb run on {node} did not start:\n"
                                   f"{(self.tmp / f'{node}.log').read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def routes(self, nodes, timeout: float = 90.0) -> float:
        return self.so.wait_nexthops(self.prefix, {self.so.pub_addr(n) for n in nodes}, timeout=timeout)

    def stop(self, node: str) -> None:
        subprocess.run([LB_BIN, "stop", "--instance", self.so.instance(node)], capture_output=True, timeout=60)
        p = self.procs.pop(node, None)
        if p is not None:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def cleanup(self) -> None:
        for node in list(self.procs):
            try:
                self.stop(node)
            except Exception:
                pass
        self.so.remove_dataplanes(3)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- measurements ----
    def inpkts(self, node: str) -> tuple[int, int]:
        """(connections, packets in) of the VIP's service on one director, from its pinned maps."""
        from lb.dataplane import reader
        from lb.dataplane.maps import PinnedMaps

        try:
            maps = PinnedMaps(self.so.instance(node))
        except FileNotFoundError:
            return 0, 0
        with maps:
            for row in reader.read_services(maps):
                if str(row.address) == self.vip and row.port == 80:
                    return row.stats.conns, row.stats.inpkts
        return 0, 0

    def wrk(self, close: bool, nodes) -> dict:
        before = {n: self.inpkts(n) for n in nodes}
        argv = ["wrk", "-t2", f"-c{self.conns}", f"-d{self.duration}s", "--timeout", "2s", "--latency"]
        if close:
            argv += ["-H", "Connection: close"]
        t0 = time.monotonic()
        p = self.lab.run("client", argv + [f"http://{self.vip}/"], timeout=self.duration + 30)
        took = time.monotonic() - t0
        r = parse_wrk(p.stdout)
        after = {n: self.inpkts(n) for n in nodes}
        pkts = {n: after[n][1] - before[n][1] for n in nodes}
        conns = {n: after[n][0] - before[n][0] for n in nodes}
        if r["requests"] == 0:
            raise RuntimeError(f"bench scaleout: no request answered:\n{p.stdout}{p.stderr}")
        return {**r, "pps": sum(pkts.values()) / took, "cps": r["rps"] if close else 0.0,
                "director_cps": sum(conns.values()) / took,
                "share": {n: ratio(pkts[n], sum(pkts.values())) for n in nodes}}

    def measure(self, raw: dict, nodes) -> None:
        for _ in range(self.runs):
            raw.setdefault((len(nodes), "close"), []).append(self.wrk(True, nodes))
            raw.setdefault((len(nodes), "keepalive"), []).append(self.wrk(False, nodes))

    def client_sysctls(self) -> None:
        def write():
            for key, val in (("net/ipv4/ip_local_port_range", "1024 65000"), ("net/ipv4/tcp_tw_reuse", "1")):
                with open(f"/proc/sys/{key}", "w") as f:
                    f.write(val + "\n")
        self.lab.in_netns("client", write, timeout=10)

    def run_all(self) -> tuple[dict, dict]:
        raw: dict = {}
        times: dict = {"links down (hold timer)": [], "lb killed -9 (watchdog)": [], "lb stop (UPDATE)": []}
        self.client_sysctls()
        for node in self.nodes:
            self.start(node)
        for node in self.nodes:
            self.wait_running(node)
        self.routes(self.nodes)
        self.measure(raw, self.nodes)
        third = self.nodes[2]
        for _ in range(self.fail_runs):
            t0 = time.monotonic()
            self.so.set_links(third, False)
            self.routes(self.nodes[:2])
            times["links down (hold timer)"].append(time.monotonic() - t0)
            self.so.set_links(third, True)
            self.routes(self.nodes)
        t0 = time.monotonic()
        self.procs[third].send_signal(signal.SIGKILL)
        self.routes(self.nodes[:2])
        times["lb killed -9 (watchdog)"].append(time.monotonic() - t0)
        self.procs.pop(third).wait(10)
        self.cleanup_one(third)
        self.measure(raw, self.nodes[:2])
        t0 = time.monotonic()
        stopper = subprocess.Popen([LB_BIN, "stop", "--instance", self.so.instance(self.nodes[1])])
        self.routes(self.nodes[:1])
        times["lb stop (UPDATE)"].append(time.monotonic() - t0)
        stopper.wait(60)
        self.procs.pop(self.nodes[1]).wait(30)
        self.measure(raw, self.nodes[:1])
        return raw, times

    def cleanup_one(self, node: str) -> None:
        """A director whose lb was killed: its data plane and ExaBGP go (it stays out)."""
        from lb.bgp import speaker

        for dev in ("pub0", "priv0"):
            self.lab.run(node, ["ip", "link", "set", "dev", dev, "xdp", "off"], check=False, timeout=10)
        speaker.stop(self.so.instance(node))


def suite(size: str = "full") -> dict:
    from lb import lab

    load = [os.getloadavg()[0]]
    with lab_lock():
        try:
            lab.up("direct", scale_out=3)
            s = ScaleOut(lab, size)
            try:
                raw, times = s.run_all()
            finally:
                s.cleanup()
        finally:
            lab.down()
    load.append(os.getloadavg()[0])
    from lb.lab import scaleout as so

    results = []
    for mode, what, key, unit in (("close", "new connections/s (wrk, Connection: close)", "cps", "conn/s"),
                                  ("keepalive", "established packets/s (wrk keep-alive)", "pps", "pkt/s")):
        base = summary([r[key] for r in raw[(1, mode)]])
        for n in (1, 2, 3):
            vals = raw[(n, mode)]
            s_ = summary([r[key] for r in vals])
            row = {"scenario": f"{n} director{'s' if n > 1 else ''}: {what}", "unit": unit, "value": s_,
                   "rps": summary([r["rps"] for r in vals]), "errors": sum(r["errors"] for r in vals),
                   "ratio": ratio(s_["median"], base["median"])}
            if n == 1:
                row["baseline"] = True
            if n == 3:
                row["share"] = {d: round(sum(r["share"][d] for r in vals) / len(vals), 3) for d in vals[0]["share"]}
            results.append(row)
    results.append({"scenario": f"BGP hold time (the router's longest wait), {so.HOLD_TIME} s", "baseline": True,
                    "unit": "s", "value": summary([so.HOLD_TIME]), "ratio": 1.0})
    for what, vals in times.items():
        s_ = summary(vals)
        results.append({"scenario": f"failure -> router's withdrawal: {what}", "unit": "s", "value": s_,
                        "runs": [round(v, 3) for v in vals], "ratio": ratio(s_["median"], so.HOLD_TIME)})
    return {"suite": "scaleout", "size": size, "wrk": {"threads": 2, "connections": SIZES[size][2],
                                                       "duration_s": SIZES[size][1]},
            "note": f"scale-out lab, direct routing, 3 real servers; every node shares the host's CPUs "
                    f"(load average {load[0]:.1f} before, {load[1]:.1f} after)",
            "results": results}


def table(res: dict) -> str:
    lines = ["| scenario | median | unit | runs | spread | ratio |", "|---|---:|---|---:|---:|---:|"]
    for r in res["results"]:
        v = r["value"]
        extra = ""
        if r.get("share"):
            extra = " (shares " + ", ".join(f"{d} {s * 100:.0f}%" for d, s in r["share"].items()) + ")"
        med = f"{v['median']:.3f}" if r["unit"] == "s" else f"{v['median']:.0f}"
        lines.append(f"| {r['scenario']}{' *(baseline)*' if r.get('baseline') else ''}{extra} | {med} | "
                     f"{r['unit']} | {v['n']} | ±{v['spread'] * 100:.0f}% | {r['ratio']:.2f}x |")
    if res.get("note"):
        lines += ["", f"Note: {res['note']}."]
    return "\n".join(lines)
