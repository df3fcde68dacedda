"""Stopping, crashing and upgrading `lb run` in the namespace lab.

- kill -9: forwarding goes on (XDP stays attached, maps and tail-call programs stay pinned) and
  the next `lb run` adopts the maps: open connections keep their real server, counters survive.
- SIGTERM: a clean stop takes everything away (XDP, addresses, pins).
- `lb stop --keep-dataplane` + `lb run`: an upgrade during which no request fails; with new
  [tables] too, and with the new daemon killed within the resize's grace.

Each test starts its own `lb run`(s); the lab is shared by the module's tests of one network.
"""

import collections
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from lab_http import connect, get, http_get, request

from lb.dataplane.maps import BpfMap

pytestmark = pytest.mark.parametrize("lab", ["nat", "direct"], indirect=True)

REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
CONFIGS = {"direct": REPO / "configs" / "lab-dr.toml", "nat": REPO / "configs" / "lab-nat.toml"}
VIP = "198.18.0.10"
NAT_ROUTER = "198.18.1.254"
REALS = {"rs1": "198.18.1.11", "rs2": "198.18.1.12", "rs3": "198.18.1.13"}
SERVERS = set(REALS)
PIN_DIR = "/sys/fs/bpf/lb/lab"


@pytest.fixture
def network(lab):
    network = lab.status()["network"]
    assert network in CONFIGS
    return network


# ---- helpers ---------------------------------------------------------------------------------


def lb(*args, timeout=40):
    return subprocess.run([LB, *args], capture_output=True, text=True, timeout=timeout)


def lb_list_n():
    # --instance: other lb instances (benchmarks, packet tests) may share this host's bpffs
    p = lb("list", "-n", "--instance", "lab")
    assert p.returncode == 0, p.stderr
    return p.stdout


def counts(listing):
    """{rsN: (active, inactive)} from a `lb list -n` text."""
    by_addr = {f"{a}:80": rs for rs, a in REALS.items()}
    out = {}
    for line in listing.splitlines():
        f = line.split()
        if len(f) == 6 and f[0] == "->" and f[1] in by_addr:
            out[by_addr[f[1]]] = (int(f[4]), int(f[5]))
    assert set(out) == SERVERS, listing
    return out


def wait_active(total, timeout=5.0):
    """`lb list -n` once the ActiveConn column sums to ``total``."""
    deadline = time.monotonic() + timeout
    while True:
        got = lb_list_n()
        if sum(a for a, _ in counts(got).values()) == total or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sum(a for a, _ in counts(got).values()) == total, got
    return got


def xdp_attached(lab, dev):
    return "prog/xdp" in lab.run("director", ["ip", "-d", "link", "show", "dev", dev]).stdout


def director_addrs(lab):
    info = json.loads(lab.run("director", ["ip", "-j", "-4", "addr", "show"]).stdout)
    return {a["local"] for i in info for a in i.get("addr_info", [])}


def xdp_devs(network):
    return ["pub0", "priv0"] if network == "nat" else ["pub0"]


# ---- tests -----------------------------------------------------------------------------------


def test_kill9_keeps_forwarding_and_the_next_run_adopts(lab, network, lb_runner):
    config = CONFIGS[network]
    first = lb_runner.start(config)
    with connect(lab, VIP, timeout=3.0) as s:
        rs = request(s)
        assert rs in SERVERS
        assert set(get(lab, 3)) == SERVERS

        first.signal(signal.SIGKILL)
        assert first.wait(5) == -signal.SIGKILL

        # no daemon: the pinned data plane forwards on its own
        for dev in xdp_devs(network):
            assert xdp_attached(lab, dev)
        assert request(s) == rs
        assert set(get(lab, 3)) == SERVERS          # new connections: scheduled by the tail calls
        before = wait_active(1)                     # only the keep-alive connection is active
        assert counts(before)[rs][0] == 1
        assert sum(i for _, i in counts(before).values()) == 6

        second = lb_runner.start(config)
        assert "(adopted maps in /sys/fs/bpf/lb/lab)" in second.log()
        assert request(s) == rs                     # the open connection keeps its real server
        assert lb_list_n() == before                # every counter survived the adoption
    assert set(get(lab, 3)) == SERVERS


def test_sigterm_stops_cleanly(lab, network, lb_runner):
    proc = lb_runner.start(CONFIGS[network])
    for dev in xdp_devs(network):
        assert xdp_attached(lab, dev)
    assert VIP in director_addrs(lab)
    assert (NAT_ROUTER in director_addrs(lab)) == (network == "nat")
    assert get(lab, 1)[0] in SERVERS

    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0, proc.log()           # a bound on the wait, not a speed target

    for dev in ("pub0", "priv0"):
        assert not xdp_attached(lab, dev)
    addrs = director_addrs(lab)
    assert VIP not in addrs and NAT_ROUTER not in addrs, addrs
    assert not os.path.exists(PIN_DIR)
    assert not os.path.exists("/run/lb/lab.pid")
    with pytest.raises(OSError):
        connect(lab, VIP, timeout=1.5).close()
    # and `lb list` knows the instance is gone
    p = lb("list", "-n", "--instance", "lab")
    assert p.returncode == 1 and "no lb instance 'lab'" in p.stderr, p.stderr


def restart_under_load(lab, network, lb_runner, config, new_config):
    """`lb stop --keep-dataplane` then `lb run --config new_config` while a client makes a new
    connection every ~2.5 ms, keeps asking a few young ones, and holds one open: every request
    answered, the open connection keeping its real server.  Returns the new daemon."""
    old = lb_runner.start(config)

    results = []            # (monotonic time, body or exception)
    stop = threading.Event()

    def load():
        # a new connection every ~2.5 ms: ~1000 across the restart, far from the connection
        # table's size and from reusing a client port whose old connection is still remembered
        deadline = time.monotonic() + 60
        for _ in range(20000):              # bounded in count and time
            if stop.wait(0.002) or time.monotonic() > deadline:
                return
            try:
                status, body = http_get(lab, VIP, timeout=3.0)
                results.append((time.monotonic(), body.strip() if status == 200 else f"HTTP {status}"))
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                results.append((time.monotonic(), e))

    def young():
        # a few keep-alive connections, each a few ms old and asked again as the next are made:
        # one the old programs made just before the new ones took over is asked again just after
        deadline = time.monotonic() + 60
        pool = collections.deque()
        try:
            for _ in range(20000):              # bounded in count and time
                if stop.wait(0.003) or time.monotonic() > deadline:
                    return
                try:
                    pool.append(connect(lab, VIP, timeout=3.0))
                except Exception as e:  # noqa: BLE001 - every failure is reported below
                    results.append((time.monotonic(), e))
                for c in list(pool):
                    try:
                        results.append((time.monotonic(), request(c)))
                    except Exception as e:  # noqa: BLE001
                        results.append((time.monotonic(), e))
                        pool.remove(c)
                        c.close()
                while len(pool) > 4:
                    pool.popleft().close()
        finally:
            for c in pool:
                c.close()

    def wait_results(n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(results) < n and time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.01)
        assert len(results) >= n

    with connect(lab, VIP, timeout=3.0) as s:
        rs = request(s)
        assert rs in SERVERS
        worker = threading.Thread(target=load, name="lb-upgrade-load", daemon=True)
        worker.start()
        kept = threading.Thread(target=young, name="lb-upgrade-young", daemon=True)
        kept.start()
        try:
            wait_results(20)

            p = lb("stop", "--instance", "lab", "--keep-dataplane")
            assert p.returncode == 0, p.stderr
            assert old.wait(5) == 0
            gap_start = time.monotonic()
            # between the two daemons: the data plane is left in place and forwards
            for dev in xdp_devs(network):
                assert xdp_attached(lab, dev)
            assert os.path.isdir(PIN_DIR)
            assert VIP in director_addrs(lab)
            assert request(s) == rs

            new = lb_runner.start(new_config)
            gap_end = time.monotonic()
            assert request(s) == rs
            n = len(results)
            wait_results(n + 20)
        finally:
            stop.set()
            worker.join(10)
            kept.join(10)
        assert not worker.is_alive() and not kept.is_alive()
        assert request(s) == rs

    failures = [r for _, r in results if r not in SERVERS]
    assert not failures, f"{len(failures)} of {len(results)} requests failed, e.g. {failures[:3]}"
    during_gap = [t for t, _ in results if gap_start < t < gap_end]
    assert len(during_gap) >= 10, (len(during_gap), gap_end - gap_start)
    assert {r for _, r in results} == SERVERS
    return new


def test_upgrade_with_keep_dataplane_loses_nothing(lab, network, lb_runner):
    new = restart_under_load(lab, network, lb_runner, CONFIGS[network], CONFIGS[network])
    assert "(adopted maps in /sys/fs/bpf/lb/lab)" in new.log()


def test_a_restart_with_bigger_tables_loses_nothing(lab, network, lb_runner, tmp_path):
    """[tables] cannot change in a reload; a restart with new sizes (systemctl restart) moves
    the running maps into maps of the new sizes while the old programs forward."""
    bigger = tmp_path / "bigger.toml"
    bigger.write_text(CONFIGS[network].read_text() + "\n[tables]\nconnections = 131072\nservices = 512\n")
    new = restart_under_load(lab, network, lb_runner, CONFIGS[network], bigger)
    new.wait_log("resize finished")           # the old programs let go after a grace period
    log = new.log()
    assert ("[tables] changed (connections 65536 -> 131072, connections_ipv6 16384 -> 32768, "
            "embryonic 16384 -> 32768, services 256 -> 512)") \
        in log, log
    if network == "nat":         # the replies' side first: no reply meets the old maps' program
        assert log.index("attached private XDP program") < log.index("attached public XDP program"), log
    for name, entries in (("lb_conns4", 131072), ("lb_conns6", 32768), ("lb_svc", 512)):
        m = BpfMap.open_pinned(os.path.join(PIN_DIR, name))
        try:
            assert m.max_entries == entries
        finally:
            m.close()
    # this instance's staging and old directories (other tests' resizes may run meanwhile)
    inst = os.path.basename(PIN_DIR)
    assert not {f"lb-resize-{inst}", f"lb-resized-{inst}"} & set(os.listdir("/sys/fs/bpf"))


def test_a_daemon_killed_in_a_resizes_grace_loses_no_connection(lab, network, lb_runner, tmp_path):
    """A restart with bigger tables whose new daemon is killed (kill -9) as soon as it is ready,
    within the grace in which the programs it replaced serve what only the old maps know: every
    connection made while it started -- those the old programs made after the copy among them --
    is answered after the kill, and after the next start, which finishes the resize."""
    bigger = tmp_path / "bigger.toml"
    bigger.write_text(CONFIGS[network].read_text() + "\n[tables]\nconnections = 131072\n")
    old = lb_runner.start(CONFIGS[network])
    p = lb("stop", "--instance", "lab", "--keep-dataplane")
    assert p.returncode == 0, p.stderr
    assert old.wait(5) == 0

    conns, stop = [], threading.Event()

    def open_connections():
        # a new keep-alive connection every ~3 ms while the new daemon starts, all kept open
        deadline = time.monotonic() + 60
        for _ in range(5000):              # bounded in count and time
            if stop.wait(0.003) or time.monotonic() > deadline:
                return
            try:
                conns.append(connect(lab, VIP, timeout=3.0))
            except Exception as e:  # noqa: BLE001 - reported below
                conns.append(e)

    opener = threading.Thread(target=open_connections, name="lb-resize-kill", daemon=True)
    opener.start()
    try:
        try:
            new = lb_runner.start(bigger)
            new.signal(signal.SIGKILL)
            assert new.wait(5) == -signal.SIGKILL
        finally:
            stop.set()
            opener.join(10)
        assert not opener.is_alive()
        assert "resize finished" not in new.log()        # killed within its grace
        errors = [c for c in conns if isinstance(c, Exception)]
        assert not errors, errors[:3]
        answers = [request(c) for c in conns]             # the killed daemon's programs serve
        assert set(answers) <= SERVERS

        third = lb_runner.start(bigger)
        third.wait_log("resize finished")
        log = third.log()
        assert "was not finished" in log and "the old programs made since the copy copied" in log, log
        assert [request(c) for c in conns] == answers      # each keeps its real server
    finally:
        for c in conns:
            if not isinstance(c, Exception):
                c.close()
    inst = os.path.basename(PIN_DIR)
    assert not {f"lb-resize-{inst}", f"lb-resized-{inst}"} & set(os.listdir("/sys/fs/bpf"))
