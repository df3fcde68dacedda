"""Helpers and fixtures of the tests inside the IPVS VM (booted by tests/vm/test_ipvs_vm.py):
lb with kernel IPVS in the namespace lab.  Everything the tests leave for the host goes to
$LB_VM_RESULTS (the VM's only writable host directory).  Test modules import the fixtures they
use from here (no conftest.py: `conftest` is tests/conftest.py for the whole suite)."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import LB_BIN, LbProcess, LbRunner
from vm.fidelity import Case, cases, tcp6_frame, tcp_packet

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def results_dir() -> Path:
    d = Path(os.environ.get("LB_VM_RESULTS", "/tmp/lb-vm-results"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def ipvs_kernel():
    """This kernel must do IPVS: a failure here is a failure, not a skip."""
    p = subprocess.run(["modprobe", "ip_vs"], capture_output=True, text=True)
    assert p.returncode == 0, f"modprobe ip_vs: {p.stderr}"
    assert os.path.exists("/proc/net/ip_vs")


class LbArgsProcess(LbProcess):
    """`lb run --config PATH EXTRA...` in the director namespace."""

    def __init__(self, lab, config, log_path, extra=()):
        super().__init__(lab, config, log_path, extra=extra)


def start_lb(runner: LbRunner, config, extra=(), timeout: float = 240.0) -> LbProcess:
    """Python in the VM is ~10x slower: lb run takes a while to import and start (in one
    run 5 s to "running", then scapy's import before READY, 7 s in an idle VM).  The emulated
    CPU shares the host's two cores with the lab tests beside it: one start passed 120 s."""
    # the log goes where the host can read it after the VM is gone
    log_dir = Path(os.environ.get("LB_VM_RESULTS") or runner.log_dir)
    log_path = log_dir / f"lb-run-{Path(str(config)).stem}-{len(runner.procs)}.log"
    p = LbArgsProcess(runner.lab, config, log_path, extra)
    runner.procs.append(p)
    p.wait_running(timeout=timeout)
    return p


def ipvsadm(lab, *args: str) -> str:
    return lab.run("director", ["ipvsadm", *args], timeout=30).stdout


def lb_list_cli(lab, *args: str) -> str:
    p = lab.run("director", [LB_BIN, "list", *args], timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    return p.stdout


def lb_list_inproc(lab, *args: str) -> str:
    """`lb list ARGS` in this process, in the director's namespace (no 10 s interpreter start)."""
    import contextlib
    import io

    from lb.cli.main import main

    def run():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(["list", *args])
        assert rc == 0
        return buf.getvalue()

    return lab.in_netns("director", run, timeout=60)


def same_as_ipvsadm(lab, *args: str, tries: int = 8) -> tuple[str, str]:
    """lb list ARGS between two ipvsadm -L ARGS: equal to either is equal (counters and the
    connections' expiry timers move while the VM's slow processes run); else retried."""
    for _ in range(tries):
        before = ipvsadm(lab, "-L", *args)
        mine = lb_list_inproc(lab, *args)
        theirs = ipvsadm(lab, "-L", *args)
        if mine == before:
            return mine, before
        if mine == theirs or _timers_between(before, mine, theirs):
            return mine, mine
    return mine, theirs


_TIMER = re.compile(r"^(\S+\s+)(\d\d):(\d\d)(?=\s)")    # pro expire ... of ipvsadm -L -c


def _timers_between(before: str, mine: str, after: str) -> bool:
    """Every line of `mine` equals the same line of `before` or `after`, or differs from them
    only in the -c expire column (mm:ss), with its value between theirs: an emulated VM under
    load can take more than a second per command, so the countdown moves between the three."""
    b, m, a = before.splitlines(), mine.splitlines(), after.splitlines()
    if not len(b) == len(m) == len(a):
        return False
    for lines in zip(b, m, a):
        if lines[1] in (lines[0], lines[2]):
            continue
        found = [_TIMER.match(ln) for ln in lines]
        if not all(found) or len({_TIMER.sub(r"\1", ln) for ln in lines}) != 1:
            return False
        tb, tm, ta = (int(f.group(2)) * 60 + int(f.group(3)) for f in found)
        if not min(tb, ta) <= tm <= max(tb, ta):
            return False
    return True


def dests(listing: str) -> dict[str, int]:
    """'addr:port' -> weight from an ipvsadm -L -n listing."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^  -> (\S+)\s+\S+\s+(\d+)", listing, re.M)}


def wait_stats(lab, vip_port: str, conns: int, timeout: float = 60.0) -> None:
    """Until `ipvsadm -L -n --stats --exact` counts at least `conns` connections for the service
    (the kernel's estimator copies the per-CPU counters there every 2 s)."""
    def counted():
        for ln in ipvsadm(lab, "-L", "-n", "--stats", "--exact").splitlines():
            p = ln.split()
            if len(p) > 2 and p[1] == vip_port:
                return int(p[2]) >= conns
        return False
    wait_for(counted, timeout, f"{conns} connections in the stats of {vip_port}", step=0.2)


def wait_for(cond, timeout: float, what: str, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def lab_config(network: str, dataplane: str | None, monitor: str = "", weights=(1, 1, 1)) -> str:
    """The lab's config (configs/lab-<network>.toml) with a dataplane key and a monitor."""
    text = (REPO / "configs" / f"lab-{'nat' if network == 'nat' else 'dr'}.toml").read_text()
    if dataplane:
        text = text.replace('instance = "lab"\n', f'instance = "lab"\ndataplane = "{dataplane}"\n', 1)
    for i, w in enumerate(weights, 1):
        text = re.sub(rf'(name = "rs{i}"\n(?:.*\n)*?\s*weight = )\d+', rf"\g<1>{w}", text, count=1)
    if monitor:
        text = text.replace('scheduler = "rr"\n', 'scheduler = "rr"\n\n  [virtual_server.monitor]\n' + monitor, 1)
    return text


# ---- scheduler fidelity: kernel IPVS's pick for each new connection of each case ------------

def _send_flows6(case: Case, macs: tuple[bytes, bytes]) -> None:
    """IPv6 flows (SYNs only: the hash schedulers' cases), as Ethernet frames from an AF_PACKET
    socket on the client's c0 straight to the director's pub0 MAC: the client needs no IPv6
    address or route of its own to send the cases' many source addresses."""
    import socket

    os.sched_setaffinity(0, {0})
    src_mac, dst_mac = macs
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind(("c0", 0))
        for f in case.flows:
            assert not f.ack, "IPv6 cases send SYNs only"
            s.send(tcp6_frame(src_mac, dst_mac, f.client, case.vip, f.sport, case.port, "S"))


def _mac(lab, node: str, dev: str) -> bytes:
    import json

    return bytes.fromhex(json.loads(lab.run(node, ["ip", "-j", "link", "show", "dev", dev]).stdout)[0]["address"]
                         .replace(":", ""))


def enable_ipv6(lab) -> None:
    """IPv6 on the director (the lab turns it off): pub0 takes the cases' frames, priv0 reaches
    the (absent) IPv6 real servers 2001:2:0:1::21.. through permanent neighbour entries."""
    keys = [f"net.ipv6.conf.{d}.disable_ipv6=0" for d in ("all", "default", "lo", "pub0", "priv0")]
    keys += [f"net.ipv6.conf.{d}.accept_dad=0" for d in ("all", "default", "pub0", "priv0")]
    lab.run("director", ["sysctl", "-qw", *keys], timeout=30)
    lab.run("director", ["ip", "-6", "address", "add", "2001:2:0:1::1/64", "dev", "priv0", "nodad"], timeout=30)


def _send_flows(case: Case, conn_table) -> None:
    """In the client's namespace: each flow's SYN (and ACK), in order, from one CPU so that the
    director's IPVS sees them in exactly this order.  After an ACK, wait until the director's
    IPVS has the connection ESTABLISHED (conn_table: its /proc ip_vs_conn, opened there): GRO
    on the director's veth may hold a pure ACK back until the end of a NAPI poll, after SYNs of
    later flows -- which would change what lc/wlc see."""
    import ipaddress
    import socket

    os.sched_setaffinity(0, {0})
    vip = int(ipaddress.IPv4Address(case.vip))
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        for f in case.flows:
            s.sendto(tcp_packet(f.client, case.vip, f.sport, case.port, "S"), (case.vip, 0))
            if not f.ack:
                continue
            s.sendto(tcp_packet(f.client, case.vip, f.sport, case.port, "A", seq=1, ack=1), (case.vip, 0))
            needle = f"{int(ipaddress.IPv4Address(f.client)):08X} {f.sport:04X} {vip:08X} {case.port:04X}"
            deadline = time.monotonic() + 5
            while True:
                conn_table.seek(0)
                line = next((ln for ln in conn_table.read().splitlines() if needle in ln), "")
                if not line or "ESTABLISHED" in line:
                    break                     # no line: no real server took it (nothing to wait for)
                if time.monotonic() > deadline:
                    raise AssertionError(f"IPVS did not see the ACK of {f}: {line}")
                time.sleep(0.002)


def _kernel_conns() -> dict[tuple, str]:
    """(client, sport, vip, vport) -> real server address, from this thread's namespace."""
    from lb.dataplane.ipvs import read_connections

    return {(str(c.client[0]), c.client[1], str(c.virtual[0]), c.virtual[1]): str(c.dest[0])
            for c in read_connections() if c.protocol == "TCP"}


def run_fidelity(lab, results_dir: Path) -> tuple[dict[str, list], float]:
    """Every case of tests/vm/fidelity.py through the director's kernel IPVS, programmed by lb's
    IPVS data plane (so real servers are added in config order as lb adds them)."""
    from lb.dataplane.ipvs import IpvsDataplane

    t0 = time.monotonic()
    all_cases = cases()
    vips = sorted({c.vip for c in all_cases})
    nreal = max(len(c.weights) for c in all_cases)
    enable_ipv6(lab)
    batch = [f"address add {v}/{128 if ':' in v else 32} dev lo" + (" nodad" if ":" in v else "") for v in vips]
    for i in range(nreal):
        batch.append(f"neigh replace 198.18.1.{21 + i} lladdr 02:00:00:00:02:{21 + i:02x} dev priv0 nud permanent")
        batch.append(f"neigh replace 2001:2:0:1::{21 + i} lladdr 02:00:00:00:03:{21 + i:02x} dev priv0 nud permanent")
    lab.run("director", ["ip", "-batch", "-"], input="\n".join(batch) + "\n", timeout=60)
    macs = (_mac(lab, "client", "c0"), _mac(lab, "director", "pub0"))
    run_dir = str(results_dir / "fidelity-run")

    def in_director():
        dp = IpvsDataplane("fidelity", run_dir=run_dir)
        dp.load()
        picks: dict[str, list] = {}
        try:
            for c in all_cases:
                for table in c.tables():
                    dp.apply(table)
                if c.v6:
                    lab.in_netns("client", _send_flows6, c, macs, timeout=120)
                else:
                    with open("/proc/thread-self/net/ip_vs_conn") as table:
                        lab.in_netns("client", _send_flows, c, table, timeout=120)
                time.sleep(0.05)
                conns = _kernel_conns()
                # /proc/net/ip_vs_conn is read in chunks by position: entries of earlier cases
                # expiring meanwhile shift it and a line can be skipped, and frames sent from an
                # AF_PACKET socket may still be on their way: look again for the flows not seen
                # (one that no real server took stays missing)
                for _ in range(10):
                    missing = [f for f in c.flows if (f.client, f.sport, c.vip, c.port) not in conns]
                    if not missing:
                        break
                    time.sleep(0.1)
                    conns.update(_kernel_conns())
                picks[c.id] = [conns.get((f.client, f.sport, c.vip, c.port)) for f in c.flows]
        finally:
            dp.detach_all()
            dp.unpin()
        return picks

    picks = lab.in_netns("director", in_director, timeout=900)
    return picks, time.monotonic() - t0
