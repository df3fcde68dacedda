"""pulse in the namespace lab: two directors (director = primary, director2 = backup) sharing the
client segment (br-pub) and the real servers' segment (br0).

The lab is built with network "nat": the real servers' default gateway is then the floating
198.18.1.254, which only the active director holds.  The NAT tests need it for the replies to be
un-NATed; the direct-routing test uses the same gateway for the DR replies (the director routes
them to the client like any router): with [ha], lb owns nat_router in direct routing too, so the
real servers' gateway moves with the VIP.  (A lab built with "direct" routes the replies via the
primary's own 198.18.1.1, which dies with the primary: fine for one director, not for HA.)

- the active dies (kill -9 of its lb, then its links go down as if the machine died): the backup
  serves new connections, the client's neighbour entry for the VIP points at the backup's MAC,
  and 50 long-lived connections opened through the old active keep their real servers (how
  fast is bench/failover.py's measurement, against deadtime + 0.5 s: never asserted here);
  then the primary returns and does not fight: exactly one active, no flapping.
- cutting only the public heartbeat channel changes nothing while the private one works.
- forged and replayed heartbeats are ignored and counted.
"""
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from lb import control
from lb.ha import heartbeat as hb
from lb.lab.haconfig import ha_config
from lab_http import errors, kill_wrk, request, stop_wrk, wrk

LAB_NETWORK = "nat"
REPO = Path(__file__).resolve().parents[1]
VIP = "198.18.0.10"
KEEPALIVE, DEADTIME = 0.2, 1.0
SERVERS = {"rs1", "rs2", "rs3"}
KEY = b"lab-shared-secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def no_wrk_left():
    """A test that fails under load leaves no wrk running into the next one."""
    yield
    kill_wrk()


@pytest.fixture
def configs(tmp_path):
    key = tmp_path / "ha.key"
    key.write_bytes(KEY)
    os.chmod(key, 0o600)
    out = {}
    for node, inst in (("director", "lab"), ("director2", "lab2")):
        p = tmp_path / f"{inst}.toml"
        for network in ("nat", "direct"):
            p = tmp_path / f"{inst}-{network}.toml"
            p.write_text(ha_config(inst, key, network, KEEPALIVE, DEADTIME))
            out[node if network == "nat" else f"{node}-dr"] = p
    return out


def status(instance):
    """`lb status --json` of an instance, from its control socket ({} while it does not answer)."""
    try:
        return control.request(instance, "status", timeout=5).get("status", {})
    except (OSError, ValueError, control.NotRunning):
        return {}


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 2):
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def silent_for(instance, channel) -> float:
    """Seconds since the instance last heard its peer on `channel` (inf: never, or no answer)."""
    last = status(instance).get("ha", {}).get("channels", {}).get(channel, {}).get("last_heartbeat_s")
    return float("inf") if last is None else last


def mac_of(lab, node, dev="pub0"):
    return json.loads(lab.run(node, ["ip", "-j", "link", "show", "dev", dev]).stdout)[0]["address"]


def client_neigh_mac(lab):
    out = json.loads(lab.run("client", ["ip", "-j", "neigh", "show", VIP]).stdout or "[]")
    return out[0].get("lladdr") if out else None


def start_pair(ha_runner, configs, suffix=""):
    d1 = ha_runner.start("director", configs["director" + suffix])
    d1.wait_log("role starting -> active", timeout=10)
    d2 = ha_runner.start("director2", configs["director2" + suffix])
    d2.wait_log("role starting -> backup", timeout=10)
    return d1, d2


def roles():
    return status("lab").get("role"), status("lab2").get("role")


def test_failover_keeps_connections_and_primary_returns(lab, ha_runner, configs):
    d1, d2 = start_pair(ha_runner, configs)
    assert lab.http_get("client", VIP)[0] == 200
    mac1, mac2 = mac_of(lab, "director"), mac_of(lab, "director2")
    assert client_neigh_mac(lab) == mac1

    socks = []
    try:
        for _ in range(50):
            s = lab.connect("client", VIP, 80, timeout=3.0)
            socks.append((s, request(s)))
        assert {rs for _, rs in socks} == SERVERS
        # the backup has every connection (plus the one of the http_get above)
        wait_for(lambda: status("lab2").get("ha", {}).get("counters", {}).get("sync_rx_records", 0) >= 50,
                 30, "50 synced connections on the backup")
        listing = ha_runner.lab.run("director2", [str(REPO / ".venv/bin/lb"), "list", "-n", "-c", "--instance",
                                                  "lab2"], check=False).stdout
        assert listing.count("ESTABLISHED") >= 50, listing

        # the active dies
        kill_active_until_served(lab, d1, d2)
        wait_for(lambda: client_neigh_mac(lab) == mac2, 10, "the client's neighbour entry to move")
        wait_for(lambda: status("lab2").get("role") == "active", 30, "director2 active in its status")

        # every long-lived connection keeps its real server through the new active
        for s, rs in socks:
            assert request(s) == rs
    finally:
        for s, _ in socks:
            s.close()

    # the primary returns: no fight, exactly one active, no flapping
    for dev in ("pub0", "priv0"):
        lab.run("director", ["ip", "link", "set", "dev", dev, "up"])
    d1b = ha_runner.start("director", configs["director"])
    d1b.wait_log("role starting -> backup", timeout=30)
    # the returned primary hears the active's heartbeats and stays backup
    wait_for(lambda: silent_for("lab", "private") < DEADTIME, 30, "the returned primary to hear the active")
    assert roles() == ("backup", "active")
    changes = status("lab2")["ha"]["role_changes"]
    time.sleep(2 * DEADTIME)              # an observation window: no flapping during it
    assert roles() == ("backup", "active")
    assert status("lab2")["ha"]["role_changes"] == changes
    assert "-> active" not in d1b.log()
    addrs = lab.run("director", ["ip", "-4", "addr"]).stdout
    assert VIP not in addrs and "198.18.1.254" not in addrs
    assert lab.http_get("client", VIP)[0] == 200


def kill_active_until_served(lab, d1, d2, bound: float = 60.0) -> None:
    """kill -9 of the primary's lb, its links down (the machine died); returns once a new
    connection from the client is served (through the backup).  `bound` only ends a wait that
    would never succeed: how fast is bench/failover.py's measurement."""
    d1.signal(signal.SIGKILL)
    for dev in ("pub0", "priv0"):
        lab.run("director", ["ip", "link", "set", "dev", dev, "down"])
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            st, _body = lab.http_get("client", VIP, 80, "/", timeout=0.5)
            if st == 200:
                return
        except OSError:
            pass
    raise AssertionError(f"no new connection served after the failover:\n{d2.log()}")


def test_failover_keeps_dr_connections(lab, ha_runner, configs):
    """Direct routing: the active director only rewrites the MAC; the real servers answer through
    their gateway 198.18.1.254 (nat_router, owned by the active director with the VIP)."""
    d1, d2 = start_pair(ha_runner, configs, "-dr")
    assert lab.http_get("client", VIP)[0] == 200
    mac2 = mac_of(lab, "director2")
    addrs = lab.run("director", ["ip", "-4", "addr"]).stdout
    assert "198.18.1.254/24" in addrs, addrs
    assert "198.18.1.254" not in lab.run("director2", ["ip", "-4", "addr"]).stdout

    socks = []
    try:
        for _ in range(50):
            s = lab.connect("client", VIP, 80, timeout=3.0)
            socks.append((s, request(s)))
        assert {rs for _, rs in socks} == SERVERS
        wait_for(lambda: status("lab2").get("ha", {}).get("counters", {}).get("sync_rx_records", 0) >= 50,
                 30, "50 synced connections on the backup")

        kill_active_until_served(lab, d1, d2)
        wait_for(lambda: client_neigh_mac(lab) == mac2, 10, "the client's neighbour entry to move")
        wait_for(lambda: status("lab2").get("role") == "active", 30, "director2 active in its status")
        assert "198.18.1.254/24" in lab.run("director2", ["ip", "-4", "addr"]).stdout

        # every long-lived connection keeps its real server through the new active
        for s, rs in socks:
            assert request(s) == rs
    finally:
        for s, _ in socks:
            s.close()


def test_public_channel_cut_is_no_failover(lab, ha_runner, configs):
    start_pair(ha_runner, configs)
    lab.run("director", ["ip", "route", "add", "blackhole", "198.18.0.3/32"])
    lab.run("director2", ["ip", "route", "add", "blackhole", "198.18.0.1/32"])
    # until the public channel has been silent for longer than deadtime (and once more that long)
    wait_for(lambda: silent_for("lab2", "public") > 2 * DEADTIME, 30, "the public channel silent for twice the deadtime")
    s1, s2 = status("lab"), status("lab2")
    assert (s1["role"], s2["role"]) == ("active", "backup")
    assert s2["ha"]["role_changes"] == 1 and s1["ha"]["role_changes"] == 1
    ch = s2["ha"]["channels"]
    assert ch["public"]["last_heartbeat_s"] > DEADTIME
    assert ch["private"]["last_heartbeat_s"] < DEADTIME
    assert lab.http_get("client", VIP)[0] == 200


def test_forged_and_replayed_heartbeats_are_counted(lab, ha_runner, configs):
    start_pair(ha_runner, configs)
    wait_for(lambda: status("lab2").get("ha", {}).get("counters"), 30, "the backup's HA counters")
    before = status("lab2")["ha"]["counters"]

    def send(pkts):
        def go():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for p in pkts:
                    s.sendto(p, ("198.18.0.3", 539))
        lab.in_netns("client", go)

    # forged: the wrong key, claiming the primary stepped down
    forged = hb.encode(b"not-the-key-at-all-0123456789", hb.Message(hb.T_STANDDOWN, hb.S_ACTIVE, hb.NODE_PRIMARY,
                                                                    hb.CH_PUBLIC, 7, 1, time.time_ns()))
    # replayed: an authentic message (as if captured) sent again and again
    real = hb.encode(KEY, hb.Message(hb.T_HEARTBEAT, hb.S_ACTIVE, hb.NODE_PRIMARY, hb.CH_PUBLIC, 99, 1,
                                     time.time_ns()))
    send([forged] * 5 + [real] * 4)
    wait_for(lambda: status("lab2")["ha"]["counters"]["bad_auth"] >= before["bad_auth"] + 5, 30, "bad_auth")
    after = status("lab2")["ha"]["counters"]
    assert after["replay"] >= before["replay"] + 3
    time.sleep(2 * DEADTIME)              # an observation window: the forged standdown changes nothing
    assert roles() == ("active", "backup")
    assert status("lab2")["ha"]["role_changes"] == 1


WRK_CONNS = 4


@pytest.mark.parametrize("network", ["nat", "dr"])
def test_failover_under_wrk_load_keeps_every_long_flow(lab, ha_runner, configs, network):
    """NAT and direct routing: 20 long-lived keep-alive connections open through the active and
    wrk loading the VIP with WRK_CONNS connections of its own; the active dies under that load.
    wrk fails no request beyond the ones caught in the deadtime window (at most one per
    connection: the request in flight while no director answered; no wrong reply at all), its
    load goes on through the backup, and every long-lived connection keeps its real server."""
    if not shutil.which("wrk"):
        pytest.skip("wrk is not installed (scripts/setup.sh installs it)")
    d1, d2 = start_pair(ha_runner, configs, "" if network == "nat" else "-dr")
    assert lab.http_get("client", VIP)[0] == 200
    socks = []
    load = None
    try:
        for _ in range(20):
            s = lab.connect("client", VIP, 80, timeout=10.0)
            socks.append((s, request(s)))
        assert {rs for _, rs in socks} == SERVERS
        load = wrk(lab, 120, conns=WRK_CONNS)               # stopped by SIGINT once over
        wait_for(lambda: status("lab2").get("ha", {}).get("counters", {}).get("sync_rx_records", 0)
                 >= 20 + WRK_CONNS, 30, "the long flows and wrk's connections synced to the backup")

        kill_active_until_served(lab, d1, d2)
        wait_for(lambda: status("lab2").get("role") == "active", 30, "director2 active in its status")
        res = stop_wrk(load, after=2.0)                      # 2 s more of load on the new active
        load = None
        assert res["status"] == 0, res["text"]
        assert errors(res) <= WRK_CONNS and res["requests"] > 0, res["text"]
        for s, rs in socks:
            assert request(s) == rs
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        for s, _ in socks:
            s.close()
