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


# guest modules that need another kernel than Debian's 6.1 (their own VM: test_ipvs_twos_vm.py)
OTHER_KERNEL = ("vmtest_ipvs_twos.py",)


def _guest_tests() -> list[str]:
    """'module::test' for every test function in tests/vm/guest (file order).  The guest's files
    are named vmtest_*.py so that the host's pytest never collects them."""
    out = []
    for f in sorted(GUEST_DIR.glob("vmtest_*.py")):
        if f.name in OTHER_KERNEL:
            continue
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
    if keep and os.environ.get("LB_VM_REUSE") == "1" and (results / "junit.xml").exists():
        # development: compare the host's side with a VM run already in LB_VM_RESULTS (no boot)
        yield VmRun(0, "(reused results)", 0.0, results)
        return
    for f in ("junit.xml", "fidelity-ipvs.json", "oracle-ipvs.json"):
        (results / f).unlink(missing_ok=True)
    py = harness.VENV / "bin" / "python"
    guest = (f"cd {shlex.quote(str(harness.REPO))} && "
             f"PYTHONDONTWRITEBYTECODE=1 LB_VM_GUEST=1 LB_VM_RESULTS={shlex.quote(str(results))} "
             f"{shlex.quote(str(py))} -m pytest -p no:cacheprovider -q -rfEs -o addopts= -o python_files='vmtest_*.py' "
             f"--junitxml={shlex.quote(str(results / 'junit.xml'))} "
             + " ".join(f"--ignore=tests/vm/guest/{f}" for f in OTHER_KERNEL) + " tests/vm/guest")
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


@pytest.fixture
def fresh_xdp():
    """A data plane of its own: the kernel played each script on empty tables, and the module's
    `xdp` holds the SYNs of every earlier comparison in its embryonic table (an LRU: its
    eviction, approximate per CPU, once took a script's live SYN_RECV entry)."""
    from packets_util import loaded_dataplane

    with loaded_dataplane("vmscr") as d:
        yield d


def xdp_picks(dp, case: fidelity.Case) -> list[str | None]:
    """The XDP programs' real server for each flow of `case` (BPF_PROG_TEST_RUN, as
    tests/test_sched_bpf.py drives them)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    from packets_util import CLIENT_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, real_mac, run

    for table in case.tables():
        dp.apply(table)
    by_mac = {real_mac(a): a for a in case.reals}
    out = []
    for f in case.flows:
        base = Ether(src=CLIENT_MAC, dst=PUB_MAC) / (IPv6 if case.v6 else IP)(src=f.client, dst=case.vip)
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
    key = model.addr_fold(case.vip if case.sched == "dh" else flow.client)
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
    key = model.addr_fold(case.vip if case.sched == "dh" else flow.client)
    pos = table[hashfn(key)]
    return None if pos is None or weights[pos] <= 0 else order[pos]


@pytest.mark.parametrize("sched", ["dh", "sh"])
def test_kernel_ipvs_hash_is_hash_32(sched, ipvs_picks):
    """Which hash the kernel's dh/sh use, settled on Debian's kernel: hash_32 (as lb's model and
    BPF do), not the reference's (daddr * 2654435761) & 255 -- which would pick another real
    server (or none) for many of the dh cases' VIPs."""
    by_h32 = by_mult = total = 0
    for case in fidelity.cases():
        if case.sched != sched or case.flags or case.then is not None:
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


def model_picks(case: fidelity.Case) -> list[str | None]:
    """lb's scheduler model (lb/sched/model.py) on the case: the servers added in config order
    (list order is the reverse), the `then` weights as edits, and each flow a new TCP connection
    (active from its SYN); dh/sh/mh/lblc hash IPVS's addr_fold of the addresses (an IPv6
    address's four words XORed)."""
    from lb.sched import model

    m = model.Service(case.sched, flags=case.flags, mh_size=4093)
    for a, w in zip(case.reals, case.weights):
        m.add(a, w, address=a, port=80)
    if case.then is not None:
        for a, w in zip(case.reals, case.then):
            m.set_weight(a, w)
    daddr = model.addr_fold(case.vip)
    return [m.schedule(saddr=model.addr_fold(f.client), daddr=daddr, sport=f.sport) for f in case.flows]


@pytest.mark.parametrize("sched", fidelity.SCHEDULERS + fidelity.STATE_SCHEDULERS + fidelity.LOCALITY_SCHEDULERS)
def test_model_picks_what_kernel_ipvs_picks(sched, ipvs_picks):
    """lb/sched/model.py, the XDP programs' oracle, replays every kernel pick of every case of
    the scheduler: fo (ties, weight 0), ovf (activeconns <= weight), sh and mh with their
    flags (sh-port, sh-fallback, mh-port, mh-fallback) and quiesced servers, and IPv6 clients
    and VIPs for sh, dh, mh and lblc."""
    cases = [c for c in fidelity.cases() if c.sched == sched]
    assert cases
    bad = []
    for case in cases:
        got, want = model_picks(case), ipvs_picks[case.id]
        if got != want:
            i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
            bad.append(f"case {case.id} weights {list(case.weights)} then {case.then} flags {case.flags}: "
                       f"first difference at connection #{i} from {case.flows[i].client}:{case.flows[i].sport}: "
                       f"kernel IPVS {want[i]}, model {got[i]}")
    assert not bad, f"{sched}: the model differs from kernel IPVS:\n" + "\n".join(bad)


def test_cases_cover_every_rule_named():
    """The fidelity cases exercise what docs/testing.md says they do (a case list that lost one
    would silently check less)."""
    cs = fidelity.cases()
    assert {c.sched for c in cs} >= set(fidelity.SCHEDULERS + fidelity.STATE_SCHEDULERS + fidelity.LOCALITY_SCHEDULERS)
    flags = {fl for c in cs for fl in c.flags}
    assert flags == {"sh-port", "sh-fallback", "mh-port", "mh-fallback"}
    assert {c.sched for c in cs if c.v6} >= {"sh", "dh", "mh", "lblc"}
    assert {c.sched for c in cs if c.then is not None} >= {"sh", "mh", "fo"}


# ---- the oracle's scripts: states, timeouts, expiry, thresholds, persistence; twos ------------

from vm import oracle  # noqa: E402

# Both sides run the kernel's time line (the seconds at which each step started in the VM), so
# their timers agree but for rounding (ipvsadm floors the kernel's jiffies, lb floors elapsed
# seconds) and the moments between a step's start and its packet or reading: EXPIRE_SLACK_S.
# An entry that one side still has and the other no longer does is a difference unless it had
# at most BOUNDARY_S left (it expired in that slack); the counters of such an observation, or of
# one where the kernel lists an entry with 0 s left (its timer firing: the kernel may have
# uncounted it already) or lists one key twice (Observation.dying), are then not compared (they
# hold that entry or not).
EXPIRE_SLACK_S = 2
BOUNDARY_S = 1


@pytest.fixture(scope="module")
def ipvs_oracle(vm) -> dict:
    path = vm.results / "oracle-ipvs.json"
    if not path.exists():
        pytest.fail(f"the VM wrote no oracle results (exit {vm.rc}):\n{vm.tail()}")
    return json.loads(path.read_text())["results"]


def _xdp_observe(dp, label: str, port: int) -> dict:
    import time as _time

    from lb.dataplane import layout as L
    from lb.dataplane import reader
    from lb.dataplane.maps import PinnedMaps

    obs = oracle.Observation(label)
    now = _time.monotonic_ns()
    with PinnedMaps(dp.instance) as maps:
        for c in reader.read_connections(maps, now_ns=now):
            if str(c.virtual[0]) == oracle.VIP and c.virtual[1] == port:
                obs.conns[f"{c.client[0]}:{c.client[1]}"] = [c.state, c.expire, str(c.dest[0])]
        for row in reader.read_services(maps):
            if str(row.address) == oracle.VIP and row.port == port:
                obs.counts = {str(r.address): [r.active, r.inactive, r.persist] for r in row.reals}
    # a template is in lb_persist_embryo until its connection is established (bpf/lb_embryo.h),
    # then in lb_persist: IPVS has one table of both
    for k, v in [kv for name in ("lb_persist", "lb_persist_embryo") for kv in dp.maps[name].items()]:
        caddr, vaddr, vport, _proto, family, _fwm = L.PERSIST_KEY.unpack(k)
        if str(L.unpack_addr(vaddr, family)) != oracle.VIP or L.unpack_port(vport) != port:
            continue
        last, real, timeout = L.PERSIST.unpack(v)
        timeout &= L.PERSIST_TIMEOUT              # seconds, without LB_PERSIST_F_IDLE
        left = timeout - (now - last) // 1_000_000_000
        if left >= 0:
            raddr = L.Real.unpack(dp.maps["lb_reals"].get(L.U32.pack(real))).addr
            obs.templates[str(L.unpack_addr(caddr, family))] = [str(raddr), int(left)]
    return obs.as_json()


def xdp_play(dp, script: oracle.Script, times: list[float]) -> list[dict]:
    """The script through the XDP programs on the kernel's time line: before each step, every
    entry is aged so that, counting the time this replay itself took, exactly as much time has
    passed for them as had passed in the VM when the step started (lb's sweep runs then)."""
    import time as _time

    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    from packets_util import CLIENT_MAC, PUB_MAC, age, run

    dp.apply(script.table())
    out = []
    t0, aged = _time.monotonic(), 0.0
    for i, step in enumerate(script.steps):
        if i:
            shift = times[i] - (_time.monotonic() - t0) - aged     # may be < 0: the host was slower
            age(dp, shift)
            aged += shift
            dp.sweep()
        if step[0] == "pkt":
            client, sport = script.flows[step[1]]
            run(dp, "lb_xdp_public", Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=client, dst=oracle.VIP) /
                TCP(sport=sport, dport=script.port, flags=step[2], seq=1, ack=1))
        elif step[0] == "observe":
            out.append(_xdp_observe(dp, step[1], script.port))
    return out


def _differences(kernel: list[dict], mine: list[dict], who: str) -> list[str]:
    """Where `mine` differs from the kernel's observations: a connection's state or real
    server, a template's real server, an expire further than EXPIRE_SLACK_S from the kernel's,
    an entry one side has and the other not (unless at its last BOUNDARY_S), a counter."""
    out = []
    assert [o["label"] for o in kernel] == [o["label"] for o in mine]
    for k, m in zip(kernel, mine):
        at = f"after {k['label']!r}"
        boundary = bool(k.get("dying"))
        for kind in ("conns", "templates"):
            at_expire = -2 if kind == "conns" else -1
            for key in sorted(k[kind].keys() | m[kind].keys()):
                kv, mv = list(k[kind].get(key) or []), list(m[kind].get(key) or [])
                if not kv or not mv:
                    if (kv or mv)[at_expire] <= BOUNDARY_S:
                        boundary = True
                    else:
                        out.append(f"{at}: {kind[:-1]} {key}: kernel IPVS {kv or None}, {who} {mv or None}")
                    continue
                ke, me = kv.pop(at_expire), mv.pop(at_expire)
                if ke <= 0:
                    boundary = True       # the kernel's timer is firing: the entry may be uncounted
                if kv != mv or abs(ke - me) > EXPIRE_SLACK_S:
                    out.append(f"{at}: {kind[:-1]} {key}: kernel IPVS {kv} expire {ke}, {who} {mv} expire {me}")
        if k["counts"] != m["counts"] and not boundary:
            out.append(f"{at}: [active, inactive, persist] per real: kernel IPVS {k['counts']}, {who} {m['counts']}")
    return out


@pytest.mark.parametrize("script", oracle.scripts(), ids=lambda s: s.id)
def test_xdp_plays_the_scripts_as_kernel_ipvs(script, ipvs_oracle, fresh_xdp):
    """TCP states and each state's timeout after every packet (DR, INPUT-ONLY), expiry with
    short timeouts, a SYN into a closed entry, thresholds (OVERLOAD set and cleared),
    persistence (templates, netmask, timeout, PersistConn): lb's XDP data plane shows what
    kernel IPVS shows at every observation of the script."""
    rec = ipvs_oracle[script.id]
    diff = _differences(rec["observations"], xdp_play(fresh_xdp, script, rec["times"]), "XDP")
    assert not diff, f"{script.id}: XDP differs from kernel IPVS:\n" + "\n".join(diff[:40])


@pytest.mark.parametrize("script", oracle.scripts(), ids=lambda s: s.id)
def test_model_plays_the_scripts_as_kernel_ipvs(script, ipvs_oracle):
    """The same scripts through lb's scheduler model driven as IPVS drives it (the state table
    and timeouts lb writes into the data plane, thresholds, persistence templates):
    tests/vm/oracle.py ModelDirector."""
    rec = ipvs_oracle[script.id]
    diff = _differences(rec["observations"], oracle.ModelDirector(script).play(rec["times"]), "model")
    assert not diff, f"{script.id}: the model differs from kernel IPVS:\n" + "\n".join(diff[:40])


def test_a_recording_that_lost_live_entries_is_told_apart():
    """The guest plays a script again when its recording lost entries with time left on their
    timers (oracle.vanished): a sound recording (the model's, on the script's own time line)
    has none; one whose "after 6 s" lists no connection, as the VM once did, names every
    entry that had more than VANISH_SLACK_S left (not the 8 s ESTABLISHED ones: 2 s left)."""
    script = next(s for s in oracle.scripts() if s.id == "tcp-states")
    times = script.own_times()
    observations = oracle.ModelDirector(script).play(times)
    assert oracle.vanished(script, {"times": times, "observations": observations}) == []
    after6 = next(o for o in observations if o["label"] == "after 6 s")
    before = observations[observations.index(after6) - 1]
    kept = dict(after6["conns"])
    after6["conns"] = {}
    lost = oracle.vanished(script, {"times": times, "observations": observations})
    assert lost and all(ln.startswith("'after 6 s': ") for ln in lost)
    assert {ln.split()[3] for ln in lost} == {k for k, v in kept.items() if v[1] > oracle.VANISH_SLACK_S}
    assert {ln.split()[3] for ln in lost} <= set(before["conns"])


def test_recorded_kernel_sequences_are_what_the_kernel_picks(ipvs_picks):
    """tests/golden/ipvs_sequences.json (tests/test_sched_bpf.py's kernel sequences, written by
    tests/vm/record_sequences.py) holds what this kernel picks now."""
    import record_sequences

    recorded = json.loads(record_sequences.GOLDEN.read_text())["sequences"]
    live = record_sequences.sequences({"kernel": "", "picks": ipvs_picks})["sequences"]
    assert recorded == live
