"""Under attack, no established flow is lost: `lb run` in the namespace lab, DR and NAT.

N idle keep-alive connections through the VIP, then a SYN flood from random sources in
198.18.0.0/15 ten times the size of the connection table (`[tables] connections = 1024`, so the
flood is quick), sent through a packet socket (lb.lab.flood.LabFlood) from the switch into the
director's pub0, where `lb run`'s XDP program meets them.  Afterwards every idle
connection still exchanges data with its real server, and a new client is served.  The same for
persistence: a client with a template keeps its real server through a flood of new sources.
What a user checks: HTTP replies naming the real server, `lb list --counters`, `lb status` and
the table fill on /metrics."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from lab_http import METRICS_LISTEN, connect, get, lb_counters, one, request, scrape

from lb.lab import flood

pytestmark = pytest.mark.parametrize("lab", ["direct", "nat"], indirect=True)

REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
CONFIGS = {"direct": REPO / "configs" / "lab-dr.toml", "nat": REPO / "configs" / "lab-nat.toml"}
VIP = "198.18.0.10"
CONNECTIONS = 1024                   # [tables] connections: the flood is ten times this
IDLE = 20                            # idle established connections kept through the flood
TABLES = f"\n[tables]\nconnections = {CONNECTIONS}\nembryonic = 1024\n"


def _config(lab, tmp_path, persistent: int = 0) -> Path:
    network = lab.status()["network"]
    text = CONFIGS[network].read_text() + TABLES + f'\n[metrics]\nenabled = true\nlisten = "{METRICS_LISTEN}"\n'
    if persistent:
        text = text.replace('scheduler = "rr"\n', f'scheduler = "rr"\npersistent = {persistent}\n', 1)
    path = tmp_path / f"lab-{network}-flood.toml"
    path.write_text(text)
    return path


def _flood(lab, n: int) -> int:
    """n spoofed SYNs into pub0; the director's count of embryonic connections it made"""
    before = lb_counters()["embryonic entries made"]
    f = flood.LabFlood(lab, VIP, 80)
    f.send(n)
    assert f.sent() == n
    deadline = time.monotonic() + 10          # the last frames' NAPI work on the director
    made = 0
    while time.monotonic() < deadline:
        made = lb_counters()["embryonic entries made"] - before
        if made >= n * 0.9:
            break
        time.sleep(0.2)
    return made


def _open(lab, n):
    socks, bodies = [], []
    for _ in range(n):
        s = connect(lab, VIP, timeout=5.0)
        socks.append(s)
        bodies.append(request(s))
    return socks, bodies


def test_syn_flood_ten_times_the_table_loses_no_idle_connection(lab, lb_runner, tmp_path):
    lb_runner.start(_config(lab, tmp_path), wait=False).wait_running(timeout=120)
    socks, bodies = _open(lab, IDLE)
    try:
        assert set(bodies) == {"rs1", "rs2", "rs3"}
        made = _flood(lab, 10 * CONNECTIONS)
        # the flood reached the data path: (nearly) every SYN opened an embryonic connection
        assert made >= 9 * CONNECTIONS, made
        for s, body in zip(socks, bodies):
            assert request(s) == body          # the same real server, after the flood
        assert get(lab, 3)                     # and a new client is served
        c = lb_counters()
        assert c["conn_table_full"] == 0
        # `lb status` shows every refusal counter and the defenses' state after the flood
        p = subprocess.run([LB, "status", "--instance", "lab"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        [path] = [ln for ln in p.stdout.splitlines() if ln.startswith("data path: ")]
        counts = dict(item.rsplit(" ", 1) for item in path[len("data path: "):].split(", "))
        assert set(counts) >= {"conn table full", "persist table full", "drop packet", "tcp syn invalid",
                               "icmp rate limited", "too big unanswered"}, path
        assert counts["conn table full"] == "0" and counts["drop packet"] == "0", path
        [defense] = [ln for ln in p.stdout.splitlines() if ln.startswith("defense: ")]
        assert re.search(r"embryonic table \d+ of 1024 free \(amemthresh \d+\)", defense), defense
        # and Prometheus sees the table the flood filled, and no defense engaged (none configured)
        m = scrape(lab)
        assert one(m, "lb_dataplane_embryonic_entries_limit") == 1024, m
        assert 512 <= one(m, "lb_dataplane_embryonic_entries") <= 1024, m
        assert one(m, "lb_dataplane_defense_engaged", strategy="drop_entry") == 0, m
    finally:
        for s in socks:
            s.close()


def test_a_client_keeps_its_template_through_a_flood_of_new_sources(lab, lb_runner, tmp_path):
    lb_runner.start(_config(lab, tmp_path, persistent=300), wait=False).wait_running(timeout=120)
    socks, bodies = _open(lab, 1)
    try:
        first = bodies[0]
        assert get(lab, 2) == [first, first]   # persistence: the client's next connections
        made = _flood(lab, 10 * CONNECTIONS)
        assert made >= 9 * CONNECTIONS, made
        assert request(socks[0]) == first      # its idle connection
        assert get(lab, 3) == [first] * 3      # and its new ones, to the same real server
    finally:
        for s in socks:
            s.close()


def _mac(ifname: str) -> bytes:
    import socket
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        return s.getsockname()[4]


def _send_frame(ifname: str, frame: bytes) -> None:
    import socket
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        s.send(frame)


def test_a_syn_forged_from_the_directors_own_address_makes_no_connection(lab, lb_runner, tmp_path):
    """A SYN to the VIP whose source is the director's own pub0 address -- forged: the director's
    own packets never meet its XDP program -- is passed to the kernel, which drops it as a
    martian: no connection in `lb list -c`, `not_routable` counted (`lb run` read the address
    from the director's interfaces).  The same SYN from the client's address makes one."""
    from lb.lab.topology import CLIENT, DIRECTOR_PUB
    lb_runner.start(_config(lab, tmp_path))
    director_mac, client_mac = lab.in_netns("director", _mac, "pub0"), lab.in_netns("client", _mac, "c0")
    before = lb_counters()["not_routable"]
    for src, sport in ((DIRECTOR_PUB, 45001), (CLIENT, 45002)):     # in this order, on one path
        lab.in_netns("client", _send_frame, "c0", flood.syn_frame(src, VIP, sport, 80, client_mac, director_mac))
    listing = ""
    for _ in range(50):                       # bounded: until the client's SYN is in the table
        p = subprocess.run([LB, "list", "-n", "-c", "--instance", "lab"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        listing = p.stdout
        if f" {CLIENT}:45002 " in listing:
            break
        time.sleep(0.1)
    assert f" {CLIENT}:45002 " in listing, listing
    assert f" {DIRECTOR_PUB}:45001 " not in listing, listing
    assert lb_counters()["not_routable"] > before
