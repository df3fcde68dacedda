"""twos (power of two choices) against real IPVS: Debian's 6.1 kernel has no ip_vs_twos, so this
boots Debian's 6.12 (scripts/setup-vm.sh fetches it; harness.KERNEL_TWOS) for one guest module,
tests/vm/guest/vmtest_ipvs_twos.py, which sends oracle.TWOS_CONNS new connections through the
kernel's twos; lb's model and its XDP data plane must spread them alike (twos is random: the
comparison is by distribution).  Its own VM, which may run beside the main one (its own xdist
group, tests/conftest.py); skips only where the VM cannot run, and not under `make test`."""
from __future__ import annotations

import ipaddress
import json
import random
import os
import shlex
import shutil
import tempfile
from pathlib import Path

import pytest

import harness
from vm import oracle

REQUIRED = os.environ.get("LB_VM_REQUIRED") == "1"
TIMEOUT_S = float(os.environ.get("LB_VM_TIMEOUT", "2400"))


@pytest.fixture(scope="module")
def ipvs_twos(request) -> dict[str, int]:
    try:
        harness.check_prerequisites(harness.KERNEL_TWOS, "ip_vs_twos")
    except harness.VmUnavailable as e:
        if REQUIRED:
            pytest.fail(f"IPVS VM (6.12, twos) required (LB_VM_REQUIRED=1) but unavailable: {e}")
        pytest.skip(f"IPVS VM (6.12, twos) unavailable: {e}")
    results = Path(tempfile.mkdtemp(prefix="lb-vm-twos-"))
    try:
        py = harness.VENV / "bin" / "python"
        guest = (f"cd {shlex.quote(str(harness.REPO))} && PYTHONDONTWRITEBYTECODE=1 LB_VM_GUEST=1 "
                 f"LB_VM_RESULTS={shlex.quote(str(results))} {shlex.quote(str(py))} -m pytest -p no:cacheprovider "
                 f"-q -rfEs -o addopts= -o python_files='vmtest_*.py' tests/vm/guest/vmtest_ipvs_twos.py")
        rc, console, wall = harness.run(guest, rwdir=str(results), timeout=TIMEOUT_S, kernel=harness.KERNEL_TWOS,
                                        log_path=str(results / "console.log"))
        tr = request.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"\nIPVS VM ({harness.kernel_release(harness.KERNEL_TWOS)}): twos run took {wall:.0f} s, exit {rc}")
        out = results / "twos-ipvs.json"
        assert rc == 0 and out.exists(), f"the twos VM run failed (exit {rc}):\n{console[-4000:]}"
        yield json.loads(out.read_text())["counts"]
    finally:
        shutil.rmtree(results, ignore_errors=True)


@pytest.fixture(scope="module")
def xdp():
    from packets_util import loaded_dataplane

    with loaded_dataplane("vmtwos") as d:     # a load error fails: never a skip
        yield d


def test_twos_distribution_matches_kernel_ipvs(ipvs_twos, xdp):
    """twos draws two random servers per connection: kernel IPVS, lb's model and lb's XDP data
    plane spread oracle.TWOS_CONNS new connections over weights TWOS_WEIGHTS alike -- each
    server's share within 5 standard deviations (over 200 model runs) of the model's mean, and
    the model's mean itself a weighted spread (not round robin, not all on the heaviest)."""
    import statistics

    from lb.sched import model
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    from packets_util import CLIENT_MAC, PUB_MAC, XDP_REDIRECT, real_mac, run
    from lb.dataplane import RealSpec, ServiceSpec, TableSpec

    reals = [f"198.18.1.{oracle.REAL_BASE + i}" for i in range(len(oracle.TWOS_WEIGHTS))]
    runs = []
    for seed in range(200):
        m = model.Service("twos", rng=random.Random(seed))
        for a, w in zip(reals, oracle.TWOS_WEIGHTS):
            m.add(a, w)
        picks = [m.schedule() for _ in range(oracle.TWOS_CONNS)]
        runs.append({a: picks.count(a) for a in reals})
    mean = {a: statistics.mean(r[a] for r in runs) for a in reals}
    sd = {a: max(statistics.pstdev(r[a] for r in runs), 1.0) for a in reals}

    ip = ipaddress.ip_address
    xdp.apply(TableSpec((ServiceSpec("tcp", ip(oracle.VIP), oracle.TWOS_PORT, "twos",
                                     tuple(RealSpec(ip(a), 80, w, "dr") for a, w in zip(reals, oracle.TWOS_WEIGHTS)),
                                     "twos"),)))
    by_mac = {real_mac(a): a for a in reals}
    got: dict[str, int] = {a: 0 for a in reals}
    for client, sport in oracle.twos_flows():
        rc, pkt = run(xdp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=client, dst=oracle.VIP) /
                      TCP(sport=sport, dport=oracle.TWOS_PORT, flags="S"))
        assert rc == XDP_REDIRECT
        got[by_mac[Ether(pkt).dst]] += 1
    kernel = {a: ipvs_twos.get(a, 0) for a in reals}
    lines = [f"{a} weight {w}: model {mean[a]:.1f} ± {sd[a]:.1f}, kernel IPVS {kernel[a]}, XDP {got[a]}"
             for a, w in zip(reals, oracle.TWOS_WEIGHTS)]
    for who, counts in (("kernel IPVS", kernel), ("XDP", got)):
        for a in reals:
            assert abs(counts[a] - mean[a]) <= 5 * sd[a], f"twos: {who} off the model's spread:\n" + "\n".join(lines)
    share = [mean[a] / oracle.TWOS_CONNS for a in reals]
    assert share[0] < share[1] < share[2] and abs(share[2] - 5 / 8) < 0.15, lines
