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
- forged and replayed heartbeats are ignored and counted; from another address they never reach
  the codec (off path), with the peer's address they are refused and `lb status` says so.
- a UDP flood at the rate Python can send on every heartbeat port changes no role, nor does a
  flood spoofing the primary's address on one channel.
- kill -9 of the active's lb with its links up (its XDP programs and addresses stay): once the
  backup has taken over, a broadcast ARP request for the VIP and one for the NAT router address
  each get exactly one answer, the backup's (the lease, bpf/lb_lease.h); the restarted lb
  comes back as backup without a second answer at any moment.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lb import control
from lb.ha import heartbeat as hb
from lb.lab.haconfig import ha_config
from lab_http import connect, errors, http_get, kill_wrk, request, stop_wrk, wrk

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


def synced_to_backup(lab, socks) -> bool:
    """Each of socks' connections ESTABLISHED in the backup's `lb list -n -c`.  The sync counter
    alone is not enough: it also counts a connection's later records (its state moving on), so it
    can reach len(socks) before every connection has arrived, and a connection the backup lacks
    is reset by its kernel after the takeover."""
    out = lab.run("director2", [str(REPO / ".venv/bin/lb"), "list", "-n", "-c", "--instance", "lab2"],
                  check=False).stdout
    held = {f[3].rsplit(":", 1)[1] for f in map(str.split, out.splitlines()) if len(f) >= 5 and f[2] == "ESTABLISHED"}
    return {str(s.getsockname()[1]) for s, _ in socks} <= held


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
    # and in their status, which says "starting" until each change is applied (a moment after
    # the log line): the tests below compare roles() with the pair's
    wait_for(lambda: roles() == ("active", "backup"), 30, "the pair's roles in their status")
    return d1, d2


def roles():
    return status("lab").get("role"), status("lab2").get("role")


def test_failover_keeps_connections_and_primary_returns(lab, ha_runner, configs):
    d1, d2 = start_pair(ha_runner, configs)
    assert http_get(lab, VIP)[0] == 200
    mac1, mac2 = mac_of(lab, "director"), mac_of(lab, "director2")
    assert client_neigh_mac(lab) == mac1

    socks = []
    try:
        for _ in range(50):
            s = connect(lab, VIP, timeout=3.0)
            socks.append((s, request(s)))
        assert {rs for _, rs in socks} == SERVERS
        # the backup has every connection (plus the one of the http_get above)
        wait_for(lambda: status("lab2").get("ha", {}).get("counters", {}).get("sync_rx_records", 0) >= 50,
                 30, "50 synced connections on the backup")
        wait_for(lambda: synced_to_backup(lab, socks), 30, "each long-lived connection on the backup")
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
    # its status says "starting" until the change to backup is applied (pulse.role: addresses
    # released, lease renewed), which follows the log line by a moment, longer under load
    wait_for(lambda: roles() == ("backup", "active"), 30, "the returned primary backup in its status")
    changes = status("lab2")["ha"]["role_changes"]
    time.sleep(2 * DEADTIME)              # an observation window: no flapping during it
    assert roles() == ("backup", "active")
    assert status("lab2")["ha"]["role_changes"] == changes
    assert "-> active" not in d1b.log()
    addrs = lab.run("director", ["ip", "-4", "addr"]).stdout
    assert VIP not in addrs and "198.18.1.254" not in addrs
    assert http_get(lab, VIP)[0] == 200


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
            st, _body = http_get(lab, VIP, timeout=0.5)
            if st == 200:
                return
        except OSError:
            pass
    raise AssertionError(f"no new connection served after the failover:\n{d2.log()}")


def test_failover_keeps_dr_connections(lab, ha_runner, configs):
    """Direct routing: the active director only rewrites the MAC; the real servers answer through
    their gateway 198.18.1.254 (nat_router, owned by the active director with the VIP)."""
    d1, d2 = start_pair(ha_runner, configs, "-dr")
    assert http_get(lab, VIP)[0] == 200
    mac2 = mac_of(lab, "director2")
    addrs = lab.run("director", ["ip", "-4", "addr"]).stdout
    assert "198.18.1.254/24" in addrs, addrs
    assert "198.18.1.254" not in lab.run("director2", ["ip", "-4", "addr"]).stdout

    socks = []
    try:
        for _ in range(50):
            s = connect(lab, VIP, timeout=3.0)
            socks.append((s, request(s)))
        assert {rs for _, rs in socks} == SERVERS
        wait_for(lambda: status("lab2").get("ha", {}).get("counters", {}).get("sync_rx_records", 0) >= 50,
                 30, "50 synced connections on the backup")
        wait_for(lambda: synced_to_backup(lab, socks), 30, "each long-lived connection on the backup")

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
    assert http_get(lab, VIP)[0] == 200


def _send(lab, node, pkts, src=None, dst=("198.18.0.3", 539)):
    """Datagrams to the backup's public heartbeat port from NODE (from ``src``, e.g. the
    primary's own address and port: a sender that spoofs it)."""
    def go():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            if src is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(src)
            for p in pkts:
                s.sendto(p, dst)
    lab.in_netns(node, go)


def test_forged_and_replayed_heartbeats_are_counted(lab, ha_runner, configs):
    """From another address they are off path: counted, never decoded.  With the primary's own
    address and port (spoofed), the forged one fails the MAC and the replayed one the guard, and
    `lb status` says the peer is heard but refused."""
    start_pair(ha_runner, configs)
    wait_for(lambda: status("lab2").get("ha", {}).get("counters"), 30, "the backup's HA counters")
    before = status("lab2")["ha"]["counters"]

    # forged: the wrong key, claiming the primary stepped down
    forged = hb.encode(b"not-the-key-at-all-0123456789", hb.Message(hb.T_STANDDOWN, hb.S_ACTIVE, hb.NODE_PRIMARY,
                                                                    hb.CH_PUBLIC, 7, 1, time.time_ns()))
    # replayed: an authentic message (as if captured) sent again and again
    real = hb.encode(KEY, hb.Message(hb.T_HEARTBEAT, hb.S_ACTIVE, hb.NODE_PRIMARY, hb.CH_PUBLIC, 99, 1,
                                     time.time_ns()))
    _send(lab, "client", [forged] * 5 + [real] * 4)
    wait_for(lambda: status("lab2")["ha"]["counters"]["offpath"] >= before["offpath"] + 9, 30, "offpath")
    mid = status("lab2")["ha"]["counters"]
    assert (mid["bad_auth"], mid["replay"], mid["stale"]) == (before["bad_auth"], before["replay"], before["stale"])
    _send(lab, "director", [forged] * 5 + [real] * 4, src=("198.18.0.1", 539))
    wait_for(lambda: status("lab2")["ha"]["counters"]["bad_auth"] >= before["bad_auth"] + 5, 30, "bad_auth")
    after = status("lab2")["ha"]
    assert after["counters"]["replay"] + after["counters"]["stale"] >= before["replay"] + before["stale"] + 3
    assert after["channels"]["public"]["refused"]["bad_auth"] >= 5
    # the peer's own heartbeats are accepted meanwhile: someone else sends with its address
    text = ha_runner.lab.run("director2", [str(REPO / ".venv/bin/lb"), "status", "--instance", "lab2"]).stdout
    assert "WARNING: public channel: datagrams with the peer 198.18.0.1's address were refused" in text, text
    assert "bad MAC (another key_file?)" in text or "replayed" in text, text
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
    assert http_get(lab, VIP)[0] == 200
    socks = []
    load = None
    try:
        for _ in range(20):
            s = connect(lab, VIP, timeout=10.0)
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


FLOOD = r"""
import os, socket, sys, time
targets = [(a.split(":")[0], int(a.split(":")[1])) for a in sys.argv[1].split(",")]
seconds, limit, size = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
src = sys.argv[5] if len(sys.argv) > 5 else ""
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if src:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src.split(":")[0], int(src.split(":")[1])))
payload = b"LBHA\x01\x01\x02\x01\x00\x00\x00\x00" + os.urandom(size - 12)
deadline, n, k = time.monotonic() + seconds, 0, len(targets)
while n < limit:                        # bounded in count and in time
    for _ in range(1024):
        try:
            s.sendto(payload, targets[n % k])
        except OSError:
            pass
        n += 1
    if time.monotonic() > deadline:
        break
print(n, flush=True)
"""


def _flood(lab, node, targets, seconds, src=None, size=1400, limit=20_000_000):
    import sys

    argv = [sys.executable, "-c", FLOOD, ",".join(targets), str(seconds), str(limit), str(size)] + ([src] if src else [])
    return lab.popen(node, argv, stdout=subprocess.PIPE, text=True)


def test_udp_flood_on_the_heartbeat_ports_changes_no_role(lab, ha_runner, configs):
    """Python floods every heartbeat port of both directors, on both channels, from the client and a
    real server (3 x deadtime, bounded), with heartbeat-sized datagrams: the roles do not move, the
    floods are counted as off path.  Then a flood spoofing the primary's address and port on the
    public channel: the backup refuses it (counted, shown), hears the peer on the private channel,
    and stays backup."""
    start_pair(ha_runner, configs)
    wait_for(lambda: all(status(i).get("ha", {}).get("channels") for i in ("lab", "lab2")), 30, "both HA statuses")
    before = {i: status(i)["ha"] for i in ("lab", "lab2")}
    assert roles() == ("active", "backup")
    floods = [_flood(lab, "client", ["198.18.0.1:539", "198.18.0.3:539"], 3 * DEADTIME),
              _flood(lab, "rs1", ["198.18.1.1:539", "198.18.1.3:539"], 3 * DEADTIME)]
    seen = set()
    try:
        for _ in range(200):
            seen.add(roles())
            if all(f.poll() is not None for f in floods):
                break
            time.sleep(0.05)
        sent = [int(f.communicate(timeout=30)[0] or 0) for f in floods]
    finally:
        for f in floods:
            if f.poll() is None:
                f.kill()
                f.wait()
    time.sleep(2 * DEADTIME)
    seen.add(roles())
    after = {i: status(i)["ha"] for i in ("lab", "lab2")}
    assert seen == {("active", "backup")}, (seen, sent)
    assert [after[i]["role_changes"] for i in after] == [before[i]["role_changes"] for i in before]
    for i in ("lab", "lab2"):
        for ch in ("public", "private"):
            assert after[i]["channels"][ch]["offpath"] > before[i]["channels"][ch]["offpath"] + 1000, (i, ch, sent)
        assert after[i]["counters"]["bad_auth"] == before[i]["counters"]["bad_auth"]   # no flood reached the codec

    spoof = _flood(lab, "director", ["198.18.0.3:539"], 3 * DEADTIME, src="198.18.0.1:539", size=200)
    try:
        seen = set()
        for _ in range(200):
            seen.add(roles())
            if spoof.poll() is not None:
                break
            time.sleep(0.05)
        spoof.communicate(timeout=30)
    finally:
        if spoof.poll() is None:
            spoof.kill()
            spoof.wait()
    st = status("lab2")["ha"]
    assert seen == {("active", "backup")} and st["role_changes"] == before["lab2"]["role_changes"], seen
    refused = st["channels"]["public"]["refused"]
    assert refused.get("malformed", 0) + st["channels"]["public"]["kernel_drops"] > 1000, st["channels"]
    assert st["channels"]["private"]["last_heartbeat_s"] < DEADTIME


ROUTER = "198.18.1.254"


def arp_answers(lab, node, iface, src_ip, target, wait=0.3):
    """One broadcast ARP request from NODE's IFACE (scapy builds and reads the frames, a raw
    socket of that namespace sends and receives them): the MACs that answered it."""
    from scapy.layers.l2 import ARP, Ether

    def go():
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as s:
            s.bind((iface, 0x0806))
            mac = s.getsockname()[4].hex(":")
            s.send(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=src_ip, pdst=target)))
            out, deadline = [], time.monotonic() + wait
            for _ in range(1000):                      # bounded: frames, and time below
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                s.settimeout(left)
                try:
                    frame = Ether(s.recv(2048))
                except socket.timeout:
                    break
                a = frame.getlayer(ARP)
                if a is not None and a.op == 2 and a.psrc == target and a.pdst == src_ip:
                    out.append(a.hwsrc)
            return out
    return lab.in_netns(node, go)


def neighbours_answering(lab):
    """(answers to an ARP request for the VIP from the client, for the NAT router address from a
    real server)"""
    return (arp_answers(lab, "client", "c0", "198.18.0.2", VIP),
            arp_answers(lab, "rs1", "eth0", "198.18.1.11", ROUTER))


def test_a_killed_actives_addresses_are_answered_by_the_backup_alone(lab, ha_runner, configs):
    """kill -9 of the active's lb, machine and links up: its XDP programs and addresses stay, but
    its lease (refreshed with every heartbeat) runs out no later than the backup takes over, and
    from then on its programs drop ARP requests for the VIP and the NAT router address: each
    request gets exactly one answer, the backup's.  Restarted, the crashed director releases the
    addresses at once and comes back as backup, without a second answer at any moment."""
    d1, d2 = start_pair(ha_runner, configs)
    pub = (mac_of(lab, "director"), mac_of(lab, "director2"))
    priv = (mac_of(lab, "director", "priv0"), mac_of(lab, "director2", "priv0"))
    assert neighbours_answering(lab) == ([pub[0]], [priv[0]])
    # the active's lease runs at most deadtime past its last heartbeat (renewed just before each
    # one), and the backup takes over only after deadtime without one: the crashed active's
    # programs have gone quiet by the time the backup answers (a bound by construction, read
    # from the map here; how fast the takeover is stays bench/failover.py's)
    assert 0 < status("lab")["ha"]["lease_s"] <= DEADTIME

    d1.signal(signal.SIGKILL)
    d1.wait(10)
    wait_for(lambda: status("lab2").get("role") == "active", DEADTIME + 5, "director2 active")
    # poll until the state holds (bounded), then it holds
    wait_for(lambda: neighbours_answering(lab) == ([pub[1]], [priv[1]]), 10,
             "one answer, the backup's, for the VIP and the NAT router address")
    for _ in range(3):
        assert neighbours_answering(lab) == ([pub[1]], [priv[1]])
    addrs = lab.run("director", ["ip", "-4", "addr"]).stdout
    assert VIP in addrs and ROUTER in addrs          # still there: only the lease keeps them quiet
    assert http_get(lab, VIP)[0] == 200

    d1b = ha_runner.start("director", configs["director"], wait=False)
    probes = 0
    for _ in range(600):                               # bounded: the restart compiles (10-30 s)
        assert neighbours_answering(lab) == ([pub[1]], [priv[1]])
        probes += 1
        if "role starting -> backup" in d1b.log():
            break
        assert d1b.proc.poll() is None, d1b.log()
    else:
        raise AssertionError(f"the restarted lb did not become backup:\n{d1b.log()}")
    assert probes > 1
    for _ in range(3):
        assert neighbours_answering(lab) == ([pub[1]], [priv[1]])
    wait_for(lambda: roles() == ("backup", "active"), 30, "the restarted primary backup in its status")
    addrs = lab.run("director", ["ip", "-4", "addr"]).stdout
    assert VIP not in addrs and ROUTER not in addrs
    assert "releasing its addresses until pulse decides the role" in d1b.log()
    assert status("lab")["ha"]["lease_s"] > 0           # refreshed again, as a backup


def test_the_key_changes_with_lb_reload_and_no_role_moves(lab, ha_runner, tmp_path):
    """Each director with a key file of its own; the README's three steps, each an edit of the
    file and `lb reload` on one director, then the other.  No heartbeat is refused, no role
    moves, and `lb status` follows which key the peer signs with; a reload that would drop the
    key the peer still signs with is refused and changes nothing."""
    new = b"lab-new-secret-0123456789abcdefgh"
    files, cfgs = {}, {}
    for node, inst in (("director", "lab"), ("director2", "lab2")):
        files[inst] = tmp_path / f"{inst}.key"
        files[inst].write_bytes(KEY + b"\n")
        os.chmod(files[inst], 0o600)
        cfgs[node] = tmp_path / f"{inst}.toml"
        cfgs[node].write_text(ha_config(inst, files[inst], "nat", KEEPALIVE, DEADTIME))
    start_pair(ha_runner, cfgs)
    changes = {inst: status(inst)["ha"]["role_changes"] for inst in ("lab", "lab2")}

    def reload(inst, *keys):
        files[inst].write_bytes(b"# lb keyring\n" + b"".join(k + b"\n" for k in keys))
        return control.request(inst, "reload", timeout=30)

    def peer_key(inst):
        return status(inst)["ha"]["keys"]["peer_signs_with"]

    for keys in ((KEY, new), (new, KEY)):          # 1: the new key accepted; 2: it signs
        for inst in ("lab", "lab2"):
            reply = reload(inst, *keys)
            assert reply["ok"], reply
            if keys[0] == new and inst == "lab":
                # the primary signs with the new key, the backup still with the old one
                wait_for(lambda: peer_key("lab") == 2 and peer_key("lab2") == 2, 10, "each side hears the other's key")
                refused = reload("lab", new)         # the old key dropped too early: refused
                assert not refused["ok"] and "no longer holds the key the peer signs with" in refused["error"], refused
                assert reload("lab", *keys)["ok"]    # the file as the step left it (nothing changed)
    wait_for(lambda: peer_key("lab") == 1 and peer_key("lab2") == 1, 10, "both sign with the new key")
    for inst in ("lab", "lab2"):                    # 3: the old key gone
        files[inst].write_bytes(new + b"\n")
        assert control.request(inst, "reload", timeout=30)["ok"]
    time.sleep(3 * DEADTIME)
    assert roles() == ("active", "backup")
    for inst in ("lab", "lab2"):
        s = status(inst)
        assert s["ha"]["role_changes"] == changes[inst] and s["ha"]["counters"]["bad_auth"] == 0, s["ha"]
        assert s["ha"]["keys"] == {"file": str(files[inst]), "count": 1, "peer_signs_with": 1}
    assert http_get(lab, VIP)[0] == 200
