"""The control plane at scale: 1,000 virtual services x 64 real servers built and applied by the
XDP data plane (bcc-loaded programs and pinned maps, a fake next-hop resolver: no lab needed),
a one-server change, `lb list -n` on that table, and reading 1M connections for `lb list -c`.

Baselines, measured in the same run:
  apply / change   the same number of bare map writes (BPF_MAP_UPDATE_ELEM from Python, the
                   syscall path the data plane uses), so the ratio is the cost per write of
                   everything around the syscall (diffing, packing, the schedulers' model): a
                   change walks only the services whose spec changed (ServiceTable._unchanged),
                   plus O(services) bookkeeping, so its ratio to a handful of writes stays large;
  lb list -n       `lb list -n` on the same instance with an empty table (process start, imports);
  read conns       the cffi batch path (BPF_MAP_LOOKUP_BATCH) against the pure-Python path
                   (get_next_key + lookup per entry) on the same entries.  The pure path runs on
                   a smaller table (100k at full size) and is extrapolated linearly: said so in
                   the results.  `lb list -c` itself no longer builds rows: it streams lines
                   formatted in C (lb.cli.main.connection_listing), measured against the same baseline.
  sweep            the expiry sweep's pass over those connections (lb run: every 5 s, nothing
                   expired) against the dump of the same tables (its floor); its share of a core
                   is said beside it; and a one-server change asked a tenth of the way into a
                   sweep, until it is applied, against the same change with no sweep running:
                   the sweep's scan without the engine's lock, and held through it (as before);
  restart          the data plane's load of the instance holding those 1M connections, adopting
                   them, against the load of a restart with twice the connections in [tables]
                   (the maps moved into maps of the new size, lb/dataplane/resize.py);
  start            `lb run` in the lab (DR, one service) from the command to READY=1 (lb.sdnotify: the
                   programs attached, the table applied): cold, with an empty compile cache (bcc
                   compiles the programs), as the baseline; warm, the programs in the cache
                   (loaded with bpf(2)), against the target WARM_TARGET_S.

The one-server changes go round (base -> a weight changed -> that server removed -> the same
table again -> the server back -> base), each step timed, so every kind is measured as many
times as there are rounds, against DESIGN.md's 50 ms (quick runs too: the targets are defined at
1,000 x 64).  The rounds apply the same three TableSpec objects again and again, so from the
second round on the unchanged services' specs are known equal by identity (ServiceSpec.same_as);
specs built afresh (a reload's) are compared with == (Python per real server): each round also
times the weight change with a table built afresh (the build not timed), its own row.  The
engine keeps the specs of services nothing changed for (lb.engine.SpecCache): the row "through
the engine" times what a health check's verdict costs, build_table and apply together.
Apply to empty maps (<= 2 s) and `lb list -c` of 1M connections (<= 2 s) are single runs: their
status says so."""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench.common import LB_BIN, REPO, estimate, lab_up, ratio, stop_process, summary, verdict
from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane.nexthop import NextHop
from lb.dataplane.xdp import Sizes, XdpDataplane
from lb.engine import ESTIMATE_INTERVAL, SWEEP_INTERVAL

SIZES = {  # name: (services, reals per service, connections, pure-path connections, runs, CLI list -c,
    # rounds of one-server changes)
    "full": (1000, 64, 1_000_000, 100_000, 3, True, 7),
    "quick": (1000, 64, 100_000, 20_000, 3, True, 5),
    "smoke": (10, 8, 2_000, 1_000, 1, False, 2),
}
NEXTHOP_SERVERS = {"full": 1000, "quick": 1000, "smoke": 20}
# DESIGN.md: apply 1,000 x 64 <= 2 s; a one-server change and an unchanged re-apply <= 50 ms each;
# `lb list -c` with 1M connections <= 2 s
APPLY_TARGET_S, CHANGE_TARGET_S, LIST_TARGET_S = 2.0, 0.05, 2.0
VIP_BASE = int(ipaddress.ip_address("198.18.100.0"))     # 1,000 VIPs: 198.18.100.0 - 198.18.103.231
REAL_BASE = int(ipaddress.ip_address("198.19.0.0"))      # 64,000 real servers in 198.19.0.0/16
CLIENT_BASE = int(ipaddress.ip_address("198.18.128.0"))
MAC = bytes([2, 0, 0, 0, 2, 1])
SRC_MAC = bytes([2, 0, 0, 0, 1, 2])


def _resolver(addr, need_onlink=False):
    return NextHop(7, "priv0", MAC, SRC_MAC, True)


def table(nsvc: int, nreal: int, weight0: int = 1, extra: bool = False) -> TableSpec:
    svcs = []
    for s in range(nsvc):
        reals = tuple(RealSpec(ipaddress.ip_address(REAL_BASE + s * nreal + r), 80,
                               weight0 if (s, r) == (0, 0) else 1 + r % 3, "dr") for r in range(nreal))
        if extra and s == 0:
            reals = reals[:-1]
        svcs.append(ServiceSpec("tcp", ipaddress.ip_address(VIP_BASE + s), 80, "wlc", reals, name=f"s{s}"))
    return TableSpec(tuple(svcs))


def config(nsvc: int, nreal: int):
    """table()'s base as a config, for the engine's path (lb.engine.build_table)"""
    from lb.config import Config, RealServer, VirtualServer

    vss = []
    for s in range(nsvc):
        reals = tuple(RealServer(f"r{r}", ipaddress.ip_address(REAL_BASE + s * nreal + r), port=80, weight=1 + r % 3)
                      for r in range(nreal))
        vss.append(VirtualServer(name=f"s{s}", address=ipaddress.ip_address(VIP_BASE + s), port=80, scheduler="wlc",
                                 real_servers=reals))
    return Config(public_interface="pub0", network="direct", virtual_servers=tuple(vss))


def engine_changes(dp, nsvc: int, nreal: int, rounds: int) -> list[float]:
    """The engine's one-server change: a real server's health check fails (or passes again),
    then build_table with the engine's SpecCache and apply, timed together; `rounds` of both."""
    from lb.engine import RealState, SpecCache, build_table, real_key

    cfg = config(nsvc, nreal)
    cache = SpecCache()
    health = RealState(cache)
    dp.apply(build_table(cfg, health, cache=cache))
    vs = cfg.virtual_servers[nsvc // 2]
    key = real_key(vs, vs.real_servers[nreal // 2])
    out = []
    for i in range(2 * rounds):
        health[key] = bool(i % 2)
        t0 = time.perf_counter()
        tab = build_table(cfg, health, cache=cache)
        dp.apply(tab)
        out.append(time.perf_counter() - t0)
        want = nreal - (0 if i % 2 else 1)
        assert len(tab.services[nsvc // 2].reals) == want, (len(tab.services[nsvc // 2].reals), want)
    return out


def change_beside_sweep(dp, tabs: tuple, runs: int, whole: bool, after: float) -> list[float]:
    """A one-server change asked `after` s into an expiry sweep: from the ask to the change applied,
    under the engine's data-plane lock (lb.engine.Engine.sweep's, run on a stand-in holding only
    that lock and the data plane: its scan without the lock), or with `whole` the lock held
    through the whole sweep, as before 2026-12-07.  Alternates the two tables of tabs."""
    import threading
    import types

    from lb.engine import Engine

    out = []
    for i in range(runs):
        eng = types.SimpleNamespace(dp=dp, _dp_lock=threading.Lock())

        def sweep():
            if whole:
                with eng._dp_lock:
                    dp.sweep()
            else:
                Engine.sweep(eng)
        th = threading.Thread(target=sweep)
        th.start()
        time.sleep(after)
        t0 = time.perf_counter()
        with eng._dp_lock:
            dp.apply(tabs[i % 2])
        out.append(time.perf_counter() - t0)
        th.join()
    return out


def _target(limit: float) -> str:
    return f"<= {limit * 1000:g} ms" if limit < 1 else f"<= {limit:g} s"


def judge(est: dict, limit: float) -> dict:
    """target and status of a figure in seconds that must stay <= limit"""
    return {"target": _target(limit), "status": verdict(est, limit)}


def judge_once(secs: float, limit: float) -> dict:
    """the same for a single measurement (an operation too heavy to repeat here): said so"""
    return {"target": _target(limit), "status": f"{'met' if secs <= limit else 'NOT met'} (1 run)"}


def _timed(fn, *a):
    t0 = time.perf_counter()
    r = fn(*a)
    return time.perf_counter() - t0, r


def map_memlock(fd: int) -> int:
    """The kernel's account of a map's memory (fdinfo `memlock`, bytes)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    raise RuntimeError(f"no memlock in /proc/self/fdinfo/{fd}")


class Ctl:
    def __init__(self, nsvc: int, nreal: int, nconn: int):
        conns = 4096
        while conns < 2 * nconn:
            conns *= 2
        self.nsvc, self.nreal = nsvc, nreal
        self.sizes = Sizes(services=max(16, nsvc), reals=nsvc * nreal + 16, svc_reals=64, connections=conns)
        self.instance = f"benchctl{os.getpid()}"
        self.dp = XdpDataplane(self.instance, self.sizes, resolver=_resolver)
        self.filled = 0
        try:
            self.dp.load()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.dp.unpin()
        self.dp.close()

    def bare_writes(self, n: int) -> float:
        """seconds for n BPF_MAP_UPDATE_ELEM from Python on a spare lb_reals slot"""
        m = self.dp.maps["lb_reals"]
        k, v = L.U32.pack(self.sizes.reals - 1), bytes(L.REAL.size)
        t0 = time.perf_counter()
        for _ in range(n):
            m.set(k, v)
        return time.perf_counter() - t0

    def lb_list(self, *args: str, devnull: bool = False) -> tuple[float, int]:
        t0 = time.perf_counter()
        p = subprocess.run([LB_BIN, "list", *args, "--instance", self.instance], timeout=600,
                           stdout=subprocess.DEVNULL if devnull else subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"lb list {' '.join(args)} failed: {p.stderr}")
        return dt, 0 if devnull else p.stdout.count("\n")

    def fill_conns(self, upto: int) -> None:
        """lb_conns4 (the IPv4 established table) gets `upto` established TCP connections
        (BPF_MAP_UPDATE_BATCH, keyed struct lb_conn_key4)."""
        from lb import _bpfbatch

        m = self.dp.maps["lb_conns4"]
        if m.key_size != L.CONN_KEY4.size:
            raise RuntimeError(f"bench ctl: lb_conns4 has {m.key_size}-byte keys, not lb_conn_key4's {L.CONN_KEY4.size}")
        rids = [rid for st in self.dp.services.values() for _, rid in st.dests]
        sids = {st.key.addr: st.id for st in self.dp.services.values()}
        now = time.monotonic_ns()
        es = L.TCP_S["ESTABLISHED"]
        key0 = None
        cache: dict = {}
        for lo in range(self.filled, upto, 65536):
            hi = min(upto, lo + 65536)
            keys, vals = [], []
            for i in range(lo, hi):
                client = (CLIENT_BASE + i // 60000).to_bytes(4, "big")
                s = i % self.nsvc
                vip = ipaddress.ip_address(VIP_BASE + s)
                keys.append(L.CONN_KEY4.pack(client, vip.packed, (1024 + i % 60000).to_bytes(2, "big"),
                                             (80).to_bytes(2, "big"), 6, 0, b"\0\0"))
                ck = (rids[i % len(rids)], sids[vip])
                v = cache.get(ck)
                if v is None:
                    v = cache[ck] = L.Conn(now, ck[0], ck[1], 900, 0, es, 0, MAC, SRC_MAC).pack()
                vals.append(v)
            if key0 is None and lo == 0:
                key0 = keys[0]
                want = L.ConnKey(ipaddress.ip_address(CLIENT_BASE), ipaddress.ip_address(VIP_BASE), 1024, 80, 6).pack()
                assert key0 == L.conn_key4(want) and L.conn_key_of4(key0) == want, (key0, want)
            ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
            kb, vb = b"".join(keys), b"".join(vals)
            n = lib.bb_update(m.fd, m.key_size, m.value_size, ffi.from_buffer(kb), ffi.from_buffer(vb), len(keys))
            if n < 0:
                raise OSError(-n, os.strerror(-n))
        self.filled = max(self.filled, upto)

    def read_conns(self, batch: bool) -> tuple[float, int]:
        from lb.dataplane import reader
        from lb.dataplane.maps import PinnedMaps

        with PinnedMaps(self.instance) as maps:
            dt, rows = _timed(reader.read_connections, maps, batch)
        return dt, len(rows)

    def list_conns_c(self) -> tuple[float, int]:
        """`lb list -c` on the cffi path (lb.cli.main.connection_listing): dump + lines formatted in C"""
        from lb.cli.main import connection_listing
        from lb.dataplane.maps import PinnedMaps

        with PinnedMaps(self.instance) as maps:
            t0 = time.perf_counter()
            lines = sum(chunk.count(b"\n") for chunk in connection_listing(maps, fast=True))
            return time.perf_counter() - t0, lines - 2


def restart_rows(c: Ctl, conns: int) -> tuple[list[dict], str]:
    """A restart's data-plane load with the instance's maps holding `conns` connections:
    adopting them as they are (the baseline), then with twice the connections in [tables] (the
    maps moved into maps of the new size: checked, copied, swapped; lb/dataplane/resize.py).
    Both load their programs from the compile cache (the new size's compiled beforehand, not
    timed).  Returns the rows and a note (finish_resize's last copy, timed apart)."""
    import dataclasses

    bigger = dataclasses.replace(c.sizes, connections=2 * c.sizes.connections)
    warm = XdpDataplane(f"benchwarm{os.getpid()}", bigger, resolver=_resolver)
    try:
        warm.load()                                   # the new size's programs into the cache
    finally:
        warm.unpin()
        warm.close()
    same = XdpDataplane(c.instance, c.sizes, resolver=_resolver)
    try:
        t_adopt, _ = _timed(same.load)
        assert same.adopted and same.resize is None
    finally:
        same.close()
    moved = XdpDataplane(c.instance, bigger, resolver=_resolver)
    try:
        t_move, _ = _timed(moved.load)
        copied = sum(moved.resize.copied.get(n, 0) for n in ("lb_conns4", "lb_conns6"))
        assert copied == conns, (copied, conns)
        t_finish, _ = _timed(moved.finish_resize)
    finally:
        moved.close()
    rows = [{"scenario": f"restart, the same [tables]: the data plane's load adopting {conns} connections",
             "baseline": True, "seconds": summary([t_adopt]), "ratio": 1.0},
            {"scenario": f"restart, twice the connections in [tables] (IPv4 {c.sizes.connections} -> "
                         f"{bigger.connections}, IPv6 {c.sizes.connections6} -> {bigger.connections6}): the load "
                         f"moving {copied} connections into maps of the new size",
             "seconds": summary([t_move]), "ratio": ratio(t_move, t_adopt)}]
    return rows, (f"restart with new [tables]: the old programs forward during the move; the last copy after "
                  f"the attach (finish_resize, nothing new here) {t_finish:.2f} s")


START_RUNS = {"full": (2, 5), "quick": (1, 3), "smoke": (1, 1)}    # (cold, warm) starts
WARM_TARGET_S = 3.0


def start_to_ready(lab, cache_dir: str, log_path: str) -> float:
    """Seconds from `lb run` (spawned in the director namespace) to its READY=1; then a clean stop."""
    from lb.sdnotify import Listener

    notify = Listener()
    env = {**os.environ, "LB_CACHE_DIR": cache_dir, **notify.env()}
    try:
        with open(log_path, "wb") as log:
            t0 = time.monotonic()
            p = lab.popen("director", [LB_BIN, "run", "--config", str(REPO / "configs" / "lab-dr.toml")], env=env,
                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ready = notify.wait_for("READY", "1", timeout=600, alive=lambda: p.poll() is None)
        except (TimeoutError, ChildProcessError) as e:
            raise RuntimeError(f"bench ctl: lb run did not get ready ({e}):\n{open(log_path).read()}") from None
        finally:
            stop_process(p, signal.SIGINT, 60)
            # a daemon that had to be killed left its pins (a clean stop removes them)
            shutil.rmtree("/sys/fs/bpf/lb/lab", ignore_errors=True)
        return ready - t0
    finally:
        notify.close()


def start_suite(size: str) -> list[dict]:
    """cold (empty compile cache) and warm (cached programs) `lb run` to READY=1, in the lab"""
    ncold, nwarm = START_RUNS[size]
    with tempfile.TemporaryDirectory(prefix="lb-bench-start-") as tmp, lab_up("direct") as lab:
        cold = [start_to_ready(lab, os.path.join(tmp, f"cache-cold{i}"), os.path.join(tmp, f"cold{i}.log"))
                for i in range(ncold)]
        warm = [start_to_ready(lab, os.path.join(tmp, "cache-cold0"), os.path.join(tmp, f"warm{i}.log"))
                for i in range(nwarm)]
        load = os.getloadavg()[0]         # the machine is shared: its load is part of the figure
    cs, ws = estimate(cold), estimate(warm)
    return [{"scenario": "lb run to READY=1, cold: empty compile cache (bcc compiles)", "baseline": True,
             "seconds": cs, "runs": cold, "ratio": 1.0, "loadavg": load},
            {"scenario": "lb run to READY=1, warm: programs in the compile cache",
             "seconds": ws, "runs": warm, "ratio": ratio(ws["median"], cs["median"]), "target_s": WARM_TARGET_S,
             **judge(ws, WARM_TARGET_S), "loadavg": load}]


def estimator_rows(c: Ctl, runs: int) -> list[dict]:
    """IPVS's rate estimator (`lb run` runs it every lb.engine.ESTIMATE_INTERVAL s, in a worker
    thread) over the applied table's services and real servers: a pass while every server is idle
    (its rates settled at 0), and a pass after every counter moved (the per-CPU stats written
    between passes, as traffic would), against the read of the same stats arrays alone (the
    floor of any estimator)."""
    dp = c.dp
    by_map = {name: [L.U32.pack(i) for i in idl] for name, idl in dp.table.stat_id_lists().items()}
    ids = [k for keys in by_map.values() for k in keys]
    key_bytes = {name: b"".join(keys) for name, keys in by_map.items()}
    t = [1000.0]

    def one_pass() -> int:
        t[0] += ESTIMATE_INTERVAL
        return dp.estimate(now=t[0])
    for _ in range(3):                       # new ids, then their rates shown at 0: settled
        one_pass()
    # the read as the estimator does it (BpfMap.values_raw: the values in one buffer)
    reads = [_timed(lambda: [dp.maps[n].values_raw(kb, len(kb) // 4) for n, kb in key_bytes.items()])[0]
             for _ in range(runs)]
    idle = [_timed(one_pass) for _ in range(runs)]
    assert all(n == 0 for _, n in idle), idle            # settled at 0: nothing computed or written
    moved = []
    for r in range(runs):
        for name, keys in by_map.items():  # every counter of every id moves (not timed)
            v = L.STATS.pack(r + 1, 10 * (r + 1), 10 * (r + 1), 1000 * (r + 1), 1000 * (r + 1))
            dp.maps[name].set_many(keys, [v] * len(keys))
        moved.append(_timed(one_pass))
    assert all(n == len(ids) for _, n in moved), (moved, len(ids))
    rs, i_s, ms = summary(reads), summary([x for x, _ in idle]), summary([x for x, _ in moved])
    label = f"{len(ids)} services and real servers"
    return [
        {"scenario": f"read of lb_svc_stats + lb_real_stats for {label} (the estimator's floor)", "baseline": True,
         "seconds": rs, "runs": reads, "ratio": 1.0},
        {"scenario": f"rate estimator pass, {label} idle (every {ESTIMATE_INTERVAL:g} s in lb run: "
                     f"{i_s['median'] / ESTIMATE_INTERVAL:.0%} of a core)", "seconds": i_s,
         "runs": [x for x, _ in idle], "ratio": ratio(i_s["median"], rs["median"]),
         "share_of_a_core": i_s["median"] / ESTIMATE_INTERVAL},
        {"scenario": f"rate estimator pass, {label}, every counter moved ({ms['median'] / ESTIMATE_INTERVAL:.0%} "
                     f"of a core)", "seconds": ms, "runs": [x for x, _ in moved], "writes": len(ids),
         "ratio": ratio(ms["median"], rs["median"]), "share_of_a_core": ms["median"] / ESTIMATE_INTERVAL},
    ]


NEXTHOP_PROBE = r"""
import ipaddress, json, sys, time
from pyroute2 import IPRoute
from lb.dataplane import nexthop
n, sample, runs = (int(x) for x in sys.argv[1:4])
addrs = [ipaddress.ip_address(f"198.18.{1 + i // 250}.{1 + i % 250}") for i in range(n)]
out = {"floor": [], "session": [], "alone": []}
for _ in range(runs):
    with IPRoute() as ipr:
        t0 = time.perf_counter()
        for a in addrs:
            ipr.route("get", dst=str(a))
        out["floor"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with nexthop.session():
        hops = [nexthop.resolve(a, need_onlink=True) for a in addrs]
    out["session"].append(time.perf_counter() - t0)
    assert all(h.mac == bytes([2, 0, 0, 0, i >> 8, i & 255]) for i, h in enumerate(hops))
    t0 = time.perf_counter()
    for a in addrs[:sample]:
        nexthop.resolve(a, need_onlink=True)
    out["alone"].append((time.perf_counter() - t0) * n / sample)
print(json.dumps(out))
"""


def nexthop_rows(n: int, runs: int) -> list[dict]:
    """Next-hop resolution through the kernel (lb.dataplane.nexthop) of n real servers on one link
    whose neighbour table holds them (a namespace of its own, permanent entries: no packet
    leaves): in one session (what an apply and the refresh do: one read of the neighbour
    table), and each resolve() alone (a read of the table each: every resolve before 3ce9e0a,
    measured on a sample and scaled), against n `ip route get`s through one socket (what any
    resolver asks the kernel, its floor)."""
    ns = f"lbbnh{os.getpid()}"
    sample = min(n, 50)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def sh(*cmd, **kw):
            subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *cmd], check=True, capture_output=True, **kw)
        sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        sh("ip", "addr", "add", "198.18.0.1/16", "dev", "v0")
        sh("ip", "link", "set", "v0", "up")
        sh("ip", "link", "set", "v1", "up")
        sh("ip", "-batch", "-", text=True, input="".join(
            f"neigh add 198.18.{1 + i // 250}.{1 + i % 250} lladdr 02:00:00:00:{i >> 8:02x}:{i & 255:02x} dev v0 "
            f"nud permanent\n" for i in range(n)))
        p = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", NEXTHOP_PROBE, str(n),
                            str(sample), str(runs)], capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"next-hop probe failed: {p.stderr}")
        got = json.loads(p.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    fl, se, al = summary(got["floor"]), summary(got["session"]), summary(got["alone"])
    return [
        {"scenario": f"{n} `ip route get`s through one netlink socket (next-hop resolution's floor)", "baseline": True,
         "seconds": fl, "runs": got["floor"], "ratio": 1.0},
        {"scenario": f"next hops of {n} real servers, one session (an apply, a refresh turn), {n} neighbours on "
                     f"the link", "seconds": se, "runs": got["session"], "ratio": ratio(se["median"], fl["median"])},
        {"scenario": f"next hops of {n} real servers, each resolve() alone (a neighbour table read each; "
                     f"measured on {sample}, x{n / sample:.0f})", "seconds": al, "runs": got["alone"],
         "extrapolated": sample != n, "ratio": ratio(al["median"], fl["median"])},
    ]


def suite(size: str = "full") -> dict:
    nsvc, nreal, nconn, npure, runs, cli_c, change_runs = SIZES[size]
    c = Ctl(nsvc, nreal, nconn)
    results = []
    notes = []
    try:
        # lb list -n on the empty table: the CLI's fixed cost (baseline of the listings)
        empty = [c.lb_list("-n")[0] for _ in range(runs)]
        t_build, tab = _timed(table, nsvc, nreal)
        t_apply, writes = _timed(c.dp.apply, tab)
        bare = c.bare_writes(writes)
        results.append({"scenario": f"bare map writes from Python (x{writes})", "baseline": True,
                        "seconds": summary([bare]), "writes": writes, "per_write_us": bare / writes * 1e6, "ratio": 1.0})
        results.append({"scenario": f"build TableSpec {nsvc} services x {nreal} real servers", "seconds": summary([t_build]),
                        "ratio": ratio(t_build, bare)})
        results.append({"scenario": f"apply {nsvc} x {nreal} to empty maps", "seconds": summary([t_apply]), "writes": writes,
                        "per_write_us": t_apply / writes * 1e6, "ratio": ratio(t_apply, bare),
                        **(judge_once(t_apply, APPLY_TARGET_S) if (nsvc, nreal) == (1000, 64) else {})})
        # one-server changes, round after round: base -> weight -> remove -> unchanged -> add -> base
        tabs = {"base": tab, "weight": table(nsvc, nreal, weight0=5), "removed": table(nsvc, nreal, weight0=5, extra=True)}
        steps = (("weight", "weight", "one-server change (weight)"), ("removed", "remove", "one-server change (remove)"),
                 ("removed", "unchanged", "unchanged table re-applied"), ("weight", "add", "one-server change (add)"),
                 ("base", "weight", None))
        changes: dict[str, list[tuple[float, int]]] = {}
        for _ in range(change_runs):
            for tab_name, kind, _label in steps:
                changes.setdefault(kind, []).append(_timed(c.dp.apply, tabs[tab_name]))
            # the same weight change, every spec built afresh (not timed): apply's == path
            fresh = table(nsvc, nreal, weight0=5)
            changes.setdefault("fresh", []).append(_timed(c.dp.apply, fresh))
            c.dp.apply(tabs["base"])
        rows = [(kind, label) for _tab, kind, label in steps[:4]]
        rows.append(("fresh", "one-server change (weight), every spec built afresh"))
        for kind, label in rows:
            secs = [t for t, _ in changes[kind]]
            w = max(n for _, n in changes[kind])
            b = c.bare_writes(max(w, 1))
            est = estimate(secs)
            results.append({"scenario": label, "seconds": est, "runs": secs, "writes": w, "bare_seconds": b,
                            "ratio": ratio(est["median"], b),
                            **(judge(est, CHANGE_TARGET_S) if (nsvc, nreal) == (1000, 64) else {})})
        # the whole path of a health check's verdict: the engine's build (cached specs) + apply
        eng = engine_changes(c.dp, nsvc, nreal, change_runs)
        est = estimate(eng)
        b = c.bare_writes(3)         # a weight: lb_svc_dests, lb_svc, lb_sched_state
        results.append({"scenario": "one-server change through the engine (a health check fails or passes: "
                                    "build_table + apply)", "seconds": est, "runs": eng, "bare_seconds": b,
                        "ratio": ratio(est["median"], b),
                        **(judge(est, CHANGE_TARGET_S) if (nsvc, nreal) == (1000, 64) else {})})
        big = [c.lb_list("-n") for _ in range(runs)]
        lines = big[0][1]
        results.append({"scenario": "lb list -n, empty table (process start, imports)", "baseline": True,
                        "seconds": summary(empty), "runs": empty, "ratio": 1.0})
        results.append({"scenario": f"lb list -n, {nsvc} x {nreal} ({lines} lines)", "seconds": summary([b[0] for b in big]),
                        "runs": [b[0] for b in big], "ratio": ratio(summary([b[0] for b in big])["median"], summary(empty)["median"])})
        # connections: the pure path on npure entries, both paths there, then the batch path on nconn
        c.fill_conns(npure)
        pure = [c.read_conns(False) for _ in range(1 if size == "full" else runs)]
        batch_small = [c.read_conns(True) for _ in range(runs)]
        assert pure[0][1] == batch_small[0][1] == npure, (pure[0][1], batch_small[0][1], npure)
        c.fill_conns(nconn)
        batch = [c.read_conns(True) for _ in range(runs)]
        got = batch[0][1]
        bs = summary([b[0] for b in batch])
        results.append({"scenario": f"read_connections, cffi batch path, {got} conns", "baseline": True,
                        "seconds": bs, "runs": [b[0] for b in batch], "rows": got, "ratio": 1.0})
        ps = summary([p[0] for p in pure])
        scale = got / npure
        results.append({"scenario": f"read_connections, pure-Python path, {got} conns"
                                    + (f" (measured on {npure}, x{scale:.0f})" if scale != 1 else ""),
                        "seconds": {k: (v * scale if k != "spread" and k != "n" else v) for k, v in ps.items()},
                        "measured_rows": npure, "extrapolated": scale != 1, "runs": [p[0] for p in pure],
                        "ratio": ratio(ps["median"] * scale, bs["median"])})
        # the expiry sweep (`lb run` runs it every lb.engine.SWEEP_INTERVAL s, in a worker thread):
        # its pass over the same live connections, nothing expired (the first after the fill
        # recounts every real server: not timed), against the dump of those tables alone (two
        # BPF_MAP_LOOKUP_BATCH walks, the floor of any sweep)
        c.dp.sweep()
        dumps = [_timed(c.dp.maps["lb_conns"].dump)[0] for _ in range(runs)]
        swept = [_timed(c.dp.sweep) for _ in range(runs)]
        assert all(n == 0 for _, n in swept), swept          # (a timeout of 900 s: none expired)
        ds, ss = summary(dumps), summary([t for t, _ in swept])
        results.append({"scenario": f"dump of lb_conns4 + lb_conns6 ({got} conns: the sweep's floor)", "baseline": True,
                        "seconds": ds, "runs": dumps, "ratio": 1.0})
        results.append({"scenario": f"expiry sweep over {got} live conns (every {SWEEP_INTERVAL:g} s in lb run: "
                                    f"{ss['median'] / SWEEP_INTERVAL:.0%} of a core)",
                        "seconds": ss, "runs": [t for t, _ in swept], "ratio": ratio(ss["median"], ds["median"]),
                        "share_of_a_core": ss["median"] / SWEEP_INTERVAL})
        # a one-server change asked while the sweep runs (a tenth of the way in), the scan without
        # the lock against the lock held through the sweep (before 2026-12-07), beside the change
        # alone: what a health check's verdict waits for at this table's size
        pair = (tabs["weight"], tabs["base"])
        alone = [_timed(c.dp.apply, pair[i % 2])[0] for i in range(2 * runs)]
        beside = change_beside_sweep(c.dp, pair, 2 * runs, False, ss["median"] / 10)
        held = change_beside_sweep(c.dp, pair, 2 * runs, True, ss["median"] / 10)
        c.dp.apply(tabs["base"])
        est_alone = estimate(alone)
        results.append({"scenario": "one-server change (weight), no sweep running", "baseline": True,
                        "seconds": est_alone, "runs": alone, "ratio": 1.0})
        for label, secs in (("its scan without the lock", beside), ("the lock held through it (before)", held)):
            est = estimate(secs)
            results.append({"scenario": f"one-server change (weight) asked during the expiry sweep over {got} conns, "
                                        + label, "seconds": est, "runs": secs,
                            "ratio": ratio(est["median"], est_alone["median"]),
                            **(judge(est, CHANGE_TARGET_S) if (nsvc, nreal) == (1000, 64) else {})})
        results += estimator_rows(c, runs)
        results += nexthop_rows(NEXTHOP_SERVERS[size], runs)
        bss = summary([b[0] for b in batch_small])
        results.append({"scenario": f"read_connections, cffi batch path, {npure} conns", "seconds": bss,
                        "runs": [b[0] for b in batch_small], "ratio": ratio(bss["median"] * scale, bs["median"])})
        clist = [c.list_conns_c() for _ in range(runs)]
        assert clist[0][1] == got, (clist[0][1], got)
        cs = summary([x[0] for x in clist])
        results.append({"scenario": f"connection listing formatted in C (lb list -c path), {got} conns", "seconds": cs,
                        "runs": [x[0] for x in clist], "ratio": ratio(cs["median"], bs["median"])})
        if scale != 1:
            notes.append(f"the pure-Python read of {got} connections is extrapolated linearly from {npure}")
        # memory: what the kernel charges for each established table (lb_conns4: IPv4, which the
        # connections above fill; lb_conns6: IPv6), against its raw key + value bytes
        memory = {}
        for name, fam in (("lb_conns4", "IPv4"), ("lb_conns6", "IPv6")):
            m = c.dp.maps[name]
            memlock = map_memlock(m.fd)
            raw = m.max_entries * (m.key_size + m.value_size)
            memory[name] = {"map": name, "family": fam, "max_entries": m.max_entries, "key_size": m.key_size,
                            "value_size": m.value_size, "memlock_bytes": memlock, "raw_bytes": raw,
                            "per_1m_entries_mb": memlock / m.max_entries,  # bytes per entry = MB per 1M entries
                            "ratio_to_raw": ratio(memlock, raw)}
        notes.append("memory: " + ", ".join(
            f"{name} ({x['family']}: {x['max_entries']} entries, {x['key_size']} + {x['value_size']} bytes each) "
            f"holds {x['memlock_bytes'] / 1e6:.0f} MB of map memory (fdinfo memlock), {x['per_1m_entries_mb']:.0f} MB "
            f"per 1M entries, {x['ratio_to_raw']:.2f}x its raw key + value bytes" for name, x in memory.items()))
        if cli_c:
            t, _ = c.lb_list("-c", "-n", devnull=True)
            results.append({"scenario": f"lb list -c -n, {got} conns (one run, output to /dev/null)",
                            "seconds": summary([t]), "ratio": ratio(t, bs["median"]),
                            **(judge_once(t, LIST_TARGET_S) if got >= 1_000_000 else {})})
        rows, note = restart_rows(c, got)
        results += rows
        notes.append(note)
    finally:
        c.close()
    start = start_suite(size)
    results += start
    notes.append(f"start: `lb run` of configs/lab-dr.toml in the lab to READY=1, cold {start[0]['seconds']['median']:.2f} s "
                 f"(bcc compiles), warm {start[1]['seconds']['median']:.2f} s (compile cache; target <= "
                 f"{WARM_TARGET_S:.0f} s: {start[1]['status']}; 1-minute load average "
                 f"{start[1]['loadavg']:.1f} on {os.cpu_count()} CPUs)")
    return {"suite": "ctl", "size": size, "services": nsvc, "reals_per_service": nreal, "connections": nconn,
            "tables": ({**vars(c.sizes), "connections6": c.sizes.connections6} if hasattr(c.sizes, "__dict__")
                       else str(c.sizes)),
            "note": "; ".join(notes), "memory": memory, "results": results}


def table_md(res: dict) -> str:
    from bench.report import ci_cell

    lines = ["| operation | seconds (median) | map writes | ± | ratio to its baseline | target | status |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in res["results"]:
        s = r["seconds"]
        lines.append(f"| {r['scenario']}{' *(baseline)*' if r.get('baseline') else ''} | {s['median']:.4f} | "
                     f"{r.get('writes', '')} | {ci_cell(s)} | {r['ratio']:.2f}x | {r.get('target', '')} "
                     f"| {r.get('status', '')} |")
    if res.get("note"):
        lines += ["", f"Note: {res['note']}."]
    return "\n".join(lines)
