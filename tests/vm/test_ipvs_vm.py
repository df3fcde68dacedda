"""The kernel IPVS data plane against a real IPVS kernel, and the XDP schedulers against it.

One VM boot for the whole module (harness.py: Debian's kernel under qemu, the host's root
filesystem shared read-only), one pytest process inside it running tests/vm/guest/; each guest
test is reported here as its own test.  The guest also writes kernel IPVS's real server for
every new connection of tests/vm/fidelity.py's cases; the XDP programs replay the same cases
here (BPF_PROG_TEST_RUN) and must pick the same real servers.

Skips (saying why) only when the machine cannot run the VM -- not root, or scripts/setup-vm.sh
not run -- and not even then under `make test` (LB_VM_REQUIRED=1), which installs it.
"""
from __future__ import annotations

import ast
import ipaddress
import json
import os
import shlex
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import harness
from vm import fidelity

GUEST_DIR = Path(__file__).resolve().parent / "guest"
# a bound, not a speed target: the VM runs under software emulation, beside the lab's tests on a
# 2-CPU machine under `make test`, and took 12 min alone there
VM_TIMEOUT_S = float(os.environ.get("LB_VM_TIMEOUT", "2400"))
REQUIRED = os.environ.get("LB_VM_REQUIRED") == "1"


def _guest_tests() -> list[str]:
    """'module::test' for every test function in tests/vm/guest (file order).  The guest's files
    are named vmtest_*.py so that the host's pytest never collects them."""
    out = []
    for f in sorted(GUEST_DIR.glob("vmtest_*.py")):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                out.append(f"{f.stem}::{node.name}")
    return out


class VmRun:
    def __init__(self, rc: int, console: str, wall: float, results: Path):
        self.rc, self.console, self.wall, self.results = rc, console, wall, results
        self.outcomes: dict[str, tuple[str, str]] = {}   # 'module::test' -> (outcome, message)
        junit = results / "junit.xml"
        if junit.exists():
            for tc in ET.parse(junit).getroot().iter("testcase"):
                name = f"{tc.get('classname', '').rsplit('.', 1)[-1]}::{tc.get('name')}"
                outcome, msg = "passed", ""
                for child in tc:
                    if child.tag in ("failure", "error"):
                        outcome, msg = "failed", (child.get("message", "") + "\n" + (child.text or ""))
                        break
                    if child.tag == "skipped":
                        outcome, msg = "skipped", child.get("message", "")
                self.outcomes[name] = (outcome, msg)

    def tail(self, n: int = 80) -> str:
        return "".join(self.console.splitlines(keepends=True)[-n:])


@pytest.fixture(scope="module")
def vm(request):
    try:
        harness.check_prerequisites()
    except harness.VmUnavailable as e:
        if REQUIRED:
            pytest.fail(f"IPVS VM required (LB_VM_REQUIRED=1) but unavailable: {e}")
        pytest.skip(f"IPVS VM unavailable: {e}")
    keep = os.environ.get("LB_VM_RESULTS")
    results = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="lb-vm-"))
    results.mkdir(parents=True, exist_ok=True)
    for f in ("junit.xml", "fidelity-ipvs.json"):
        (results / f).unlink(missing_ok=True)
    py = harness.VENV / "bin" / "python"
    guest = (f"cd {shlex.quote(str(harness.REPO))} && "
             f"PYTHONDONTWRITEBYTECODE=1 LB_VM_GUEST=1 LB_VM_RESULTS={shlex.quote(str(results))} "
             f"{shlex.quote(str(py))} -m pytest -p no:cacheprovider -q -rfEs -o addopts= -o python_files='vmtest_*.py' "
             f"--junitxml={shlex.quote(str(results / 'junit.xml'))} tests/vm/guest")
    rc, console, wall = harness.run(guest, rwdir=str(results), timeout=VM_TIMEOUT_S,
                                    log_path=str(results / "console.log"))
    run = VmRun(rc, console, wall, results)
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(f"\nIPVS VM ({harness.kernel_release()}): boot + in-VM suite took {wall:.0f} s, exit {rc}")
    try:
        yield run
    finally:
        if not keep:
            shutil.rmtree(results, ignore_errors=True)


def test_vm_suite_ran(vm):
    """The VM booted, pytest ran inside, and every guest test reported back."""
    assert vm.outcomes, f"no results from the VM (exit {vm.rc}, {vm.wall:.0f}s):\n{vm.tail()}"
    missing = [t for t in _guest_tests() if t not in vm.outcomes]
    assert not missing, f"guest tests that did not report: {missing}\n{vm.tail()}"
    if vm.rc != 0:
        assert any(o == "failed" for o, _ in vm.outcomes.values()), \
            f"the VM's pytest exited {vm.rc} with no failed test:\n{vm.tail()}"


@pytest.mark.parametrize("name", _guest_tests())
def test_in_vm(vm, name):
    if name not in vm.outcomes:
        pytest.fail(f"{name} did not run in the VM (exit {vm.rc}):\n{vm.tail()}")
    outcome, msg = vm.outcomes[name]
    if outcome == "failed":
        pytest.fail(f"in the IPVS VM: {msg}", pytrace=False)
    if outcome == "skipped":
        # nothing inside the VM may skip: the VM exists to be able to do it
        pytest.fail(f"skipped in the IPVS VM: {msg}", pytrace=False)


# ---- fidelity: XDP (here) against kernel IPVS (the VM's picks) ---------------------------------

@pytest.fixture(scope="module")
def ipvs_picks(vm) -> dict[str, list]:
    path = vm.results / "fidelity-ipvs.json"
    if not path.exists():
        pytest.fail(f"the VM wrote no fidelity results (exit {vm.rc}):\n{vm.tail()}")
    return json.loads(path.read_text())["picks"]


@pytest.fixture(scope="module")
def xdp():
    from packets_util import loaded_dataplane

    # no try/skip: a verifier rejection or a build error is a failure of the comparison, never
    # a skip (this host runs the XDP data plane: the rest of the suite needs it too)
    with loaded_dataplane("vmfid") as d:
        yield d


def xdp_picks(dp, case: fidelity.Case) -> list[str | None]:
    """The XDP programs' real server for each flow of `case` (BPF_PROG_TEST_RUN, as
    tests/test_sched_bpf.py drives them)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    from packets_util import CLIENT_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, real_mac, run

    for table in case.tables():
        dp.apply(table)
    by_mac = {real_mac(a): a for a in case.reals}
    out = []
    for f in case.flows:
        base = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=f.client, dst=case.vip)
        rc, pkt = run(dp, "lb_xdp_public", base / TCP(sport=f.sport, dport=case.port, flags="S"))
        assert rc in (XDP_REDIRECT, XDP_PASS)
        pick = by_mac.get(Ether(pkt).dst) if rc == XDP_REDIRECT else None
        out.append(pick)
        if f.ack and pick is not None:
            rc, _ = run(dp, "lb_xdp_public", base / TCP(sport=f.sport, dport=case.port, flags="A", seq=1, ack=1))
            assert rc == XDP_REDIRECT
    return out


def _explain_hash(case: fidelity.Case, i: int, ipvs_pick, xdp_pick) -> str:
    """For dh/sh: which bucket each hash gives, and which server that bucket holds."""
    from lb.sched import model

    flow = case.flows[i]
    key = int(ipaddress.ip_address(case.vip if case.sched == "dh" else flow.client))
    table = model.dh_table(len(case.weights)) if case.sched == "dh" else model.sh_table(list(case.weights))
    order = list(reversed(case.reals))            # IPVS list order: the config's reverse

    def server(bucket):
        p = table[bucket]
        return None if p is None else order[p]

    h32, hm = fidelity.hash_32(key), fidelity.mult_hash(key)
    return (f"{case.sched} key {ipaddress.ip_address(key)} ({key:#010x}): hash_32 -> bucket {h32} "
            f"({server(h32)}), *2654435761&255 -> bucket {hm} ({server(hm)}); "
            f"kernel IPVS chose {ipvs_pick}, XDP chose {xdp_pick}")


def _compare(cases, ipvs_picks, xdp) -> tuple[list[str], int]:
    report, nconns = [], 0
    for case in cases:
        want = ipvs_picks.get(case.id)
        assert want is not None, f"no kernel IPVS picks for case {case.id}"
        got = xdp_picks(xdp, case)
        nconns += len(got)
        for i, (w, g) in enumerate(zip(want, got)):
            if w != g:
                f = case.flows[i]
                line = (f"case {case.id} weights {list(case.weights)} vip {case.vip}:{case.port} "
                        f"connection #{i} from {f.client}:{f.sport}: kernel IPVS {w}, XDP {g}")
                if case.sched in ("dh", "sh"):
                    line += "\n    " + _explain_hash(case, i, w, g)
                report.append(line)
    return report, nconns


@pytest.mark.parametrize("sched", fidelity.SCHEDULERS + fidelity.LOCALITY_SCHEDULERS)
def test_xdp_picks_what_kernel_ipvs_picks(sched, ipvs_picks, xdp):
    cases = [c for c in fidelity.cases() if c.sched == sched and not fidelity.state_sensitive(c)]
    report, nconns = _compare(cases, ipvs_picks, xdp)
    assert cases and nconns
    assert not report, (f"{sched}: XDP differs from kernel IPVS on {len(report)} of {nconns} connections:\n"
                        + "\n".join(report[:40]))


@pytest.mark.parametrize("sched", ["lc", "wlc", "sed", "nq"])
def test_xdp_counts_half_open_connections_like_kernel_ipvs(sched, ipvs_picks, xdp):
    """Kernel IPVS counts half-open connections (SYN_RECV; also SYN_SENT, SYNACK) in ActiveConn
    (tcp_state_active() in ip_vs_proto_tcp.c, Debian 6.1), and so must lb's XDP data plane: with
    a mix of ACKed and un-ACKed new connections (lc/wlc), and half-open ones (sed/nq), it picks
    the same real servers."""
    cases = [c for c in fidelity.cases() if c.sched == sched and fidelity.state_sensitive(c)]
    report, nconns = _compare(cases, ipvs_picks, xdp)
    assert cases and nconns
    assert not report, (f"{sched}: XDP differs from kernel IPVS on {len(report)} of {nconns} connections:\n"
                        + "\n".join(report[:40]))


@pytest.mark.parametrize("sched", ["lc", "wlc", "sed", "nq"])
def test_kernel_ipvs_counts_half_open_connections_active(sched, ipvs_picks):
    """What the oracle does, pinned down: lb's scheduler model, with its default counting (a
    TCP connection is active from its SYN; the ACK keeps it active), reproduces every kernel
    pick -- and counting a connection inactive until its ACK (only ESTABLISHED active) would
    not: some case tells the two ways of counting apart."""
    from lb.sched import model

    def replay(case, active_from_syn: bool):
        m = model.Service(case.sched)
        for a, w in zip(case.reals, case.weights):
            m.add(a, w)
        out = []
        for f in case.flows:
            saddr, daddr = int(ipaddress.ip_address(f.client)), int(ipaddress.ip_address(case.vip))
            if active_from_syn:
                pick = m.schedule(saddr=saddr, daddr=daddr)          # the model's default
            else:
                pick = m.schedule(saddr=saddr, daddr=daddr, active=False)
                if pick is not None and f.ack:
                    m.establish(pick)                                 # only ESTABLISHED active
            out.append(pick)
        return out

    cases = [c for c in fidelity.cases() if c.sched == sched]
    differ_established_only = 0
    for case in cases:
        assert replay(case, True) == ipvs_picks[case.id], case.id
        differ_established_only += replay(case, False) != ipvs_picks[case.id]
    assert differ_established_only, "no case tells the two ways of counting apart"

def _bucket_pick(case: fidelity.Case, flow: fidelity.Flow, hashfn) -> str | None:
    """dh/sh by their 256-bucket table with a given hash (no scheduler flags: a bucket whose
    server has weight 0 gives no destination)."""
    from lb.sched import model

    weights = list(reversed(case.weights))          # IPVS list order: the config's reverse
    order = list(reversed(case.reals))
    table = model.dh_table(len(weights)) if case.sched == "dh" else model.sh_table(weights)
    key = int(ipaddress.ip_address(case.vip if case.sched == "dh" else flow.client))
    pos = table[hashfn(key)]
    return None if pos is None or weights[pos] <= 0 else order[pos]


@pytest.mark.parametrize("sched", ["dh", "sh"])
def test_kernel_ipvs_hash_is_hash_32(sched, ipvs_picks):
    """Which hash the kernel's dh/sh use, settled on Debian's kernel: hash_32 (as lb's model and
    BPF do), not the reference's (daddr * 2654435761) & 255 -- which would pick another real
    server (or none) for many of the dh cases' VIPs."""
    by_h32 = by_mult = total = 0
    for case in fidelity.cases():
        if case.sched != sched:
            continue
        for flow, want in zip(case.flows, ipvs_picks[case.id]):
            total += 1
            by_h32 += _bucket_pick(case, flow, fidelity.hash_32) == want
            by_mult += _bucket_pick(case, flow, fidelity.mult_hash) == want
    assert by_h32 == total, f"{sched}: hash_32 explains {by_h32} of {total} kernel picks"
    if sched == "dh":
        assert by_mult < total, "the cases do not tell hash_32 from the multiplicative hash"


@pytest.mark.parametrize("sched", fidelity.LOCALITY_SCHEDULERS)
def test_lblc_model_picks_what_kernel_ipvs_picks(sched, ipvs_picks):
    """lb's model of ip_vs_lblc.c / ip_vs_lblcr.c (the XDP programs' oracle) replays the
    kernel's picks: the cached server, is_overloaded, the wlc fallback and the set's growth."""
    from lb.sched import model

    cases = [c for c in fidelity.cases() if c.sched == sched]
    assert cases
    for case in cases:
        m = model.Service(case.sched)
        for a, w in zip(case.reals, case.weights):
            m.add(a, w)
        daddr = int(ipaddress.ip_address(case.vip))
        got = [m.schedule(saddr=int(ipaddress.ip_address(f.client)), daddr=daddr) for f in case.flows]
        assert got == ipvs_picks[case.id], case.id
        assert len(set(got)) > 1, case.id       # the case moves the address off its first server
