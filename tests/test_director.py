"""`lb run` in the namespace lab, through direct routing and through NAT: what a user sees.

Every test runs once per network (the lab and one `lb run` are shared by a module's tests of
one network). The client only ever talks to the VIP 198.18.0.10:80; the real servers answer
``rsN\\n`` so a reply body names the server that got the connection.
"""

import collections
import re
import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from lab_http import connect, get, lb_counters, request

pytestmark = pytest.mark.parametrize("lab", ["direct", "nat"], indirect=True)

REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
CONFIGS = {"direct": REPO / "configs" / "lab-dr.toml", "nat": REPO / "configs" / "lab-nat.toml"}
FORWARD = {"direct": "Route", "nat": "Masq"}
VIP = "198.18.0.10"
REALS = {"rs1": "198.18.1.11", "rs2": "198.18.1.12", "rs3": "198.18.1.13"}
SERVERS = set(REALS)
HEADER = (
    "IP Virtual Server version 1.2.1 (size=4096)\n"
    "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
)


class Director:
    def __init__(self, lab, network, config, proc):
        self.lab, self.network, self.config, self.proc = lab, network, config, proc
        self.forward = FORWARD[network]


@pytest.fixture(scope="module")
def director(lab, lb_module_runner, tmp_path_factory):
    network = lab.status()["network"]
    assert network in CONFIGS
    config = tmp_path_factory.mktemp("config") / f"lab-{network}.toml"
    shutil.copyfile(CONFIGS[network], config)
    proc = lb_module_runner.start(config)
    return Director(lab, network, config, proc)


# ---- helpers ---------------------------------------------------------------------------------


def lb_list(*args):
    # --instance: other lb instances (benchmarks, packet tests) may share this host's bpffs
    p = subprocess.run([LB, "list", *args, "--instance", "lab"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def real_line(addr, fwd, weight, active, inactive):
    return "  -> %-28s %-7s %-6d %-10u %-10u\n" % (f"{addr}:80", fwd, weight, active, inactive)


def expected_listing(sched, fwd, weights, counts):
    """The whole `lb list -n` text; counts: {rsN: (active, inactive)}; reals in address order."""
    text = HEADER + f"TCP  {VIP}:80 {sched}\n"
    for rs in sorted(REALS, key=lambda r: REALS[r]):
        text += real_line(REALS[rs], fwd, weights[rs], *counts[rs])
    return text


def parse_counts(listing):
    """{rsN: (active, inactive)} from a `lb list -n` text."""
    by_addr = {f"{a}:80": rs for rs, a in REALS.items()}
    out = {}
    for line in listing.splitlines():
        f = line.split()
        if len(f) == 6 and f[0] == "->" and f[1] in by_addr:
            out[by_addr[f[1]]] = (int(f[4]), int(f[5]))
    assert set(out) == SERVERS, listing
    return out


def wait_listing(expected, timeout=5.0):
    """Poll `lb list -n` until it prints exactly ``expected`` (connection states settle
    asynchronously: a FIN is forwarded a moment after the client's close() returns)."""
    deadline = time.monotonic() + timeout
    while True:
        got = lb_list("-n")
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got == expected
    return got


def wait_no_active(timeout=5.0):
    """The counts once no connection is active any more (earlier tests' sockets are closed)."""
    deadline = time.monotonic() + timeout
    while True:
        got = lb_list("-n")
        counts = parse_counts(got)
        if all(a == 0 for a, _ in counts.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert all(a == 0 for a, _ in counts.values()), got
    return counts


CONFIGS_TEXT_CACHE: dict[str, str] = {}  # config path -> its original text


def write_config(path, scheduler, weights):
    """The lab config with another scheduler and per-server weights."""
    text = CONFIGS_TEXT_CACHE.setdefault(str(path), Path(path).read_text())
    text = re.sub(r'scheduler = "\w+"', f'scheduler = "{scheduler}"', text)
    text = re.sub(r'(name = "(rs\d)"[^\[]*?weight = )\d+', lambda m: m.group(1) + str(weights[m.group(2)]), text)
    doc = tomllib.loads(text)
    vs = doc["virtual_server"][0]
    assert vs["scheduler"] == scheduler
    assert {r["name"]: r["weight"] for r in vs["real_server"]} == weights
    Path(path).write_text(text)


def reload(director):
    n = director.proc.log().count(f"reloaded {director.config}")
    director.proc.signal(signal.SIGHUP)
    director.proc.wait_log(f"reloaded {director.config}", count=n + 1, timeout=10)


# ---- tests -----------------------------------------------------------------------------------


def test_curl_reaches_every_real_server(director):
    bodies = []
    for _ in range(3):
        p = director.lab.run("client", ["curl", "-sS", "--noproxy", "*", "-m", "3", f"http://{VIP}/"],
                             check=False, timeout=10)
        assert p.returncode == 0, p.stderr
        bodies.append(p.stdout.strip())
    assert set(bodies) == SERVERS


def test_packets_leave_through_the_attached_interfaces_devmap(director):
    """lb sends requests to the real servers' interface (and, in NAT, replies to the client's)
    through lb_tx_ports, the devmap its attaches and next-hop resolutions fill, not with
    bpf_redirect's per-packet ifindex lookup: after requests both ways, `lb list --counters`
    shows none sent without it (in DR lb is not attached to priv0: its next hops put it there)"""
    assert collections.Counter(get(director.lab, 6)) == {"rs1": 2, "rs2": 2, "rs3": 2}
    counters = lb_counters()
    assert "redirect_unmapped" in counters and counters["redirect_unmapped"] == 0, counters


def test_rr_splits_new_connections_evenly(director):
    counts = collections.Counter(get(director.lab, 30))
    assert counts == {"rs1": 10, "rs2": 10, "rs3": 10}


def test_wrr_weights_3_2_1(director):
    write_config(director.config, "wrr", {"rs1": 3, "rs2": 2, "rs3": 1})
    try:
        reload(director)
        listing = lb_list("-n")
        assert listing.startswith(HEADER + f"TCP  {VIP}:80 wrr\n"), listing
        for rs, w in (("rs1", 3), ("rs2", 2), ("rs3", 1)):
            prefix = "  -> %-28s %-7s %-6d " % (f"{REALS[rs]}:80", director.forward, w)
            assert any(line.startswith(prefix) for line in listing.splitlines(True)), listing

        bodies = get(director.lab, 60)
        # ip_vs_wrr: list rs3 rs2 rs1 (each add goes to the front), cw starts at 0
        assert bodies[:6] == ["rs3", "rs2", "rs1", "rs1", "rs2", "rs1"]
        assert collections.Counter(bodies) == {"rs1": 30, "rs2": 20, "rs3": 10}
    finally:
        write_config(director.config, "rr", {"rs1": 1, "rs2": 1, "rs3": 1})
        reload(director)
    assert lb_list("-n").startswith(HEADER + f"TCP  {VIP}:80 rr\n")


def test_established_connection_keeps_its_real_server(director):
    lab = director.lab
    with connect(lab, VIP, timeout=3.0) as s:
        first = request(s)
        assert first in SERVERS
        others = get(lab, 5)
        # rr: the next two new connections go to the two other servers
        assert set(others[:2]) == SERVERS - {first}
        for _ in range(3):
            assert request(s) == first
            get(lab, 1)
        assert request(s) == first


def test_list_n_counts_match_the_traffic(director):
    lab, fwd = director.lab, director.forward
    ones = {rs: 1 for rs in REALS}
    base = wait_no_active()
    assert lb_list("-n") == expected_listing("rr", fwd, ones, base)

    # completed connections end as inactive ones (rr: 2 per server)
    assert collections.Counter(get(lab, 6)) == {"rs1": 2, "rs2": 2, "rs3": 2}
    after = {rs: (0, i + 2) for rs, (_, i) in base.items()}
    wait_listing(expected_listing("rr", fwd, ones, after))

    # one open keep-alive connection: exactly one ActiveConn, on the server that answered it
    with connect(lab, VIP, timeout=3.0) as s:
        rs = request(s)
        assert rs in SERVERS
        with_open = dict(after)
        with_open[rs] = (1, after[rs][1])
        wait_listing(expected_listing("rr", fwd, ones, with_open))
        # the ipvsadm habit spells the same thing
        p = subprocess.run([LB, "-Ln", "--instance", "lab"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and p.stdout == expected_listing("rr", fwd, ones, with_open)
    closed = dict(after)
    closed[rs] = (0, after[rs][1] + 1)
    wait_listing(expected_listing("rr", fwd, ones, closed))


def test_list_c_shows_each_connection_and_its_real_server(director):
    lab = director.lab
    socks = []
    try:
        seen = {}  # client port -> rsN
        for _ in range(3):
            s = connect(lab, VIP, timeout=3.0)
            socks.append(s)
            seen[s.getsockname()[1]] = request(s)
        assert set(seen.values()) == SERVERS

        out = lb_list("-n", "-c")
        lines = out.splitlines()
        assert lines[:2] == ["IPVS connection entries",
                             "pro expire state       source             virtual            destination"]
        rows = {}
        for line in lines[2:]:
            f = line.split()
            assert len(f) == 6, line
            rows[f[3]] = f
        for port, rs in seen.items():
            row = rows.get(f"198.18.0.2:{port}")
            assert row is not None, f"no entry for client port {port}:\n{out}"
            proto, expire, state, _src, virtual, dest = row
            assert (proto, state, virtual, dest) == ("TCP", "ESTABLISHED", f"{VIP}:80", f"{REALS[rs]}:80"), out
            assert re.fullmatch(r"1[45]:\d\d", expire), out  # tcp timeout 900 s, just refreshed
    finally:
        for s in socks:
            s.close()
