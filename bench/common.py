"""What the suites share: the machine description, median/spread of raw runs, and exclusive use
of the namespace lab (the same flock the tests take, so a bench run and `make test` take turns)."""
from __future__ import annotations

import contextlib
import fcntl
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Iterator

from lb.lab.flood import link_info  # noqa: F401  (the suites' import)

REPO = Path(__file__).resolve().parents[1]
LB_BIN = str(REPO / ".venv" / "bin" / "lb")
LAB_TESTS_LOCK = "/run/lb-lab.tests.lock"     # tests/conftest.py lab_exclusive
LAB_LOCK_WAIT_S = 3600.0


def machine() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
                break
    except OSError:
        pass
    return {"kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(), "mem_mb": mem,
            "python": platform.python_version()}


def summary(vals: list[float]) -> dict:
    """median, min, max and spread ((max - min) / median) of the raw runs"""
    vals = [float(v) for v in vals]
    if not vals:
        return {"median": 0.0, "min": 0.0, "max": 0.0, "spread": 0.0, "n": 0}
    med = statistics.median(vals)
    return {"median": med, "min": min(vals), "max": max(vals),
            "spread": (max(vals) - min(vals)) / med if med else 0.0, "n": len(vals)}


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def stop_process(p, sig: int, timeout: float) -> None:
    """Signal p (if still running) and reap it; SIGKILL after timeout."""
    import subprocess

    if p.poll() is None:
        p.send_signal(sig)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
# Verdicts (DESIGN.md's targets) and noise.  A row's figure is the median of its runs; the
# distribution-free confidence interval of that median (order statistics: no normality assumed)
# decides whether a target is met.  A row whose interval is wider than NOISY of its median gets
# no verdict ("noisy"): a quick run on a busy machine must not print a ratio as if it were solid.
CONFIDENCE = 0.95
MIN_CONFIDENCE = 0.9       # fewer than 5 runs: no verdict at all
NOISY = 0.10


def median_ci(vals: list[float], conf: float = CONFIDENCE) -> tuple[float, float, float]:
    """(low, high, achieved confidence) of the median of vals: the order statistics x(k) and
    x(n-k+1), k the largest with 2 * P(Binomial(n, 1/2) < k) <= 1 - conf.  Too few runs for conf
    give min..max and the confidence those have (n=5: 94%; n=2: 50%)."""
    xs = sorted(float(v) for v in vals)
    n = len(xs)
    if n == 0:
        return 0.0, 0.0, 0.0
    def tail(k: int) -> float:           # 2 * P(B < k)
        return 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n
    k = 1
    while k < (n + 1) // 2 and tail(k + 1) <= 1 - conf:
        k += 1
    return xs[k - 1], xs[n - k], max(0.0, 1 - tail(k))


def estimate(vals: list[float]) -> dict:
    """summary() of the runs plus the median's confidence interval (ci_low, ci_high, confidence)
    and noisy: that interval is wider than NOISY of the median"""
    s = summary(vals)
    lo, hi, conf = median_ci(vals)
    s.update(ci_low=lo, ci_high=hi, confidence=conf,
             noisy=bool(s["n"] < 2 or (s["median"] and (hi - lo) / abs(s["median"]) > NOISY)))
    return s


def paired(a: list[float], b: list[float], op) -> list[float]:
    """op(a_i, b_i) of runs measured side by side (round i of an interleaved block)"""
    if len(a) != len(b):
        raise ValueError(f"paired runs: {len(a)} against {len(b)}")
    return [op(x, y) for x, y in zip(a, b)]


def verdict(est: dict, limit: float, better: str = "lower") -> str:
    """"met" / "NOT met" / "inconclusive" (the median's interval straddles the limit) for a
    figure that must be <= limit (better="lower") or >= limit ("higher"); "too few runs" when
    they give the interval less than MIN_CONFIDENCE.  A noisy est (bench.common.NOISY) gets
    "noisy" unless its whole interval is on one side of the limit: then "met (noisy)" or
    "NOT met (noisy)" -- the verdict holds, the figure itself is loose."""
    if est.get("confidence", 1.0) < MIN_CONFIDENCE:
        return "too few runs"
    lo, hi = est["ci_low"], est["ci_high"]
    if better == "lower":
        decided = "met" if hi <= limit else "NOT met" if lo > limit else None
    else:
        decided = "met" if lo >= limit else "NOT met" if hi < limit else None
    if est.get("noisy"):
        return f"{decided} (noisy)" if decided else "noisy"
    return decided or "inconclusive"


@contextlib.contextmanager
def lab_lock(wait_s: float = LAB_LOCK_WAIT_S) -> Iterator[None]:
    """The tests' lab lock (fcntl flock on /run/lb-lab.tests.lock), held for the whole block."""
    fd = os.open(LAB_TESTS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bench: {LAB_TESTS_LOCK} still held after {wait_s:.0f}s") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def lab_up(network: str = "direct"):
    """lab lock + lb.lab.up(network); the lab is torn down (processes, links, namespaces) however
    the block ends."""
    from lb import lab

    with lab_lock():
        try:
            lab.up(network)
            yield lab
        finally:
            lab.down()


def switch_port(director_if: str, node: str = "director") -> tuple[str, str]:
    """(node, ifname) at the other end of the director's veth `director_if` (the lab's switch
    in the current topology; the client in older ones)."""
    from lb.lab import topology

    for a, ia, b, ib in topology.VETHS:
        if (a, ia) == (node, director_if):
            return b, ib
        if (b, ib) == (node, director_if):
            return a, ia
    raise RuntimeError(f"lab: no veth {node}/{director_if}")


def remove_run_files(instance: str, run_dir: str = "/run/lb", shared_dir: str = "/run/lb-control") -> None:
    """What a bench's `lb run` of ``instance`` leaves when it is killed (the failover bench kills
    the active): <run_dir>/<instance>.* (pid file, control socket, the record of what it held,
    overrides ...) and its shared control socket; a later `lb run` of the name would take the
    record for an earlier run's."""
    for f in [*Path(run_dir).glob(f"{instance}.*"), Path(shared_dir) / f"{instance}.sock"]:
        f.unlink(missing_ok=True)
