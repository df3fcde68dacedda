"""lb.bgp without a network: which VIPs a director announces, the lease, the ExaBGP agent (driven
through its real standard input and output, as ExaBGP drives it), the configuration ExaBGP is
given (checked by exabgp itself), and what `lb status` prints."""
from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import sys
import time

import pytest

from lb.bgp import announcer, speaker
from lb.bgp.agent import Agent
from lb.bgp.lease import Route, lease_holds, process_start, read_lease, write_lease
from lb.config import loads
from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane.spec import PortGroup
from fuzzseed import SEED, named

IP = ipaddress.ip_address

CFG = """
[global]
instance = "bgpunit"
public_interface = "pub0"

[[virtual_server]]
name = "web"
address = "198.18.10.10"
port = 80
scheduler = "mh"

[bgp]
local_as = 65001
hold_time = 3
lease = 2
  [[bgp.neighbor]]
  address = "198.18.0.254"
  peer_as = 65000
  [[bgp.neighbor]]
  address = "198.18.0.253"
  peer_as = 65002
  local_address = "198.18.0.9"
  [[bgp.vip]]
  address = "198.18.10.10"
  med = 20
  communities = ["65000:100", "no-export"]
"""


def svc(vip, port, *weights, name="", fwmark=0, groups=()):
    return ServiceSpec("tcp", IP(vip), port, "mh", tuple(RealSpec(IP(f"198.18.1.{11 + i}"), port, w)
                                                          for i, w in enumerate(weights)), name, fwmark=fwmark,
                       groups=groups)


def test_routes_as_exabgp_commands() -> None:
    r = Route("198.18.10.10/32", 20, ("65000:100", "no-export"))
    assert r.announce() == "announce route 198.18.10.10/32 next-hop self med 20 community [65000:100 no-export]"
    assert r.withdraw() == "withdraw route 198.18.10.10/32 next-hop self"
    assert Route("2001:2::10/128").announce() == "announce route 2001:2::10/128 next-hop self"
    assert Route.from_json(json.loads(json.dumps(r.to_json()))) == r
    cfg = loads(CFG)
    assert announcer.route_of(cfg.bgp, IP("198.18.10.10")) == r
    assert announcer.route_of(cfg.bgp, IP("198.18.10.11")) == Route("198.18.10.11/32")


def test_servable_vips() -> None:
    t = TableSpec((svc("198.18.10.10", 80, 1, 0), svc("198.18.10.10", 443, 0, 0, name="tls"),
                   svc("198.18.10.11", 80, 0, 2),
                   svc("198.18.10.0", 0, 1, fwmark=7, groups=(PortGroup("tcp", IP("198.18.10.12"), 21, 21),
                                                            PortGroup("tcp", IP("198.18.10.13"), 21, 21)))))
    got = announcer.servable(t, attached=True, active=True)
    # one service of a VIP without a usable server withdraws the VIP: the router cannot route by port
    assert got == {IP("198.18.10.10"): "virtual service tls (tcp 198.18.10.10:443) has no usable real server",
                   IP("198.18.10.11"): None, IP("198.18.10.12"): None, IP("198.18.10.13"): None}
    assert set(announcer.servable(t, attached=False, active=True).values()) == {"the data plane is not attached"}
    assert set(announcer.servable(t, attached=True, active=False).values()) == {
        "this director is not the active one ([ha])"}


def test_reload_problem() -> None:
    a = loads(CFG).bgp
    b = loads(CFG.replace("med = 20", "med = 5")).bgp
    assert announcer.reload_problem(a, a) is None and announcer.reload_problem(a, b) is None
    assert announcer.reload_problem(a, loads(CFG.replace("hold_time = 3", "hold_time = 9")).bgp) == \
        "the [bgp] settings other than [[bgp.vip]] need a restart"
    assert announcer.reload_problem(a, None) == "adding or removing [bgp] needs a restart"


@pytest.fixture
def files(tmp_path):
    return str(tmp_path / "lease.json"), str(tmp_path / "status.json")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_lease_rules(files) -> None:
    lease_file, _ = files
    me = os.getpid()
    write_lease(lease_file, [Route("198.18.10.10/32")], me, 3.0, now=100.0)
    lease = read_lease(lease_file)
    assert lease.owner_pid == me and lease.owner_start == process_start(me) and lease.expires == 103.0
    assert lease_holds(lease, 102.9) is None
    assert lease_holds(lease, 103.5) == "lb has not renewed its lease for 0.5 s past its term"
    assert lease_holds(lease, 101.0, start_of=lambda pid: 1) == f"lb (pid {me}) is gone"   # pid reused
    assert lease_holds(None, 0) == "no lease from lb"
    write_lease(lease_file, [Route("198.18.10.10/32")], 0, 3.0, now=100.0)      # --keep-dataplane
    assert lease_holds(read_lease(lease_file), 102.0, start_of=lambda pid: None) is None
    with open(lease_file, "w") as f:
        f.write("{not json")
    assert read_lease(lease_file) is None


def test_agent_follows_the_lease_and_withdraws_when_it_lapses(files) -> None:
    lease_file, status_file = files
    clock = Clock()
    alive = {"lb": True}
    me = os.getpid()
    a = Agent(lease_file, status_file, speaker_pid=4242, clock=clock,
              start_of=lambda pid: process_start(me) if alive["lb"] else None)
    assert a.step() == [] and a.withdrawn_because == "no lease from lb"
    r1, r2 = Route("198.18.10.10/32", 20), Route("198.18.10.11/32")
    write_lease(lease_file, [r1, r2], me, 2.0, now=clock.t)
    assert a.step() == [r1.announce(), r2.announce()]
    assert a.step() == []
    r1b = Route("198.18.10.10/32", 5)
    write_lease(lease_file, [r1b], me, 2.0, now=clock.t)
    assert a.step() == [r2.withdraw(), r1b.announce()]
    clock.t += 2.5                                            # lb hung: not renewed
    assert a.step() == [r1b.withdraw()]
    assert a.withdrawn_because.startswith("lb has not renewed its lease")
    write_lease(lease_file, [r1b], me, 2.0, now=clock.t)      # renewed again
    assert a.step() == [r1b.announce()]
    alive["lb"] = False                                       # kill -9: at once, not at the term
    assert a.step() == [r1b.withdraw()] and a.withdrawn_because == f"lb (pid {me}) is gone"
    a.write_status(force=True)
    doc = json.load(open(status_file))
    assert (doc["speaker_pid"], doc["announced"], doc["withdrawn_because"]) == (4242, [], f"lb (pid {me}) is gone")


def test_agent_events_and_respawn(files) -> None:
    lease_file, status_file = files
    me = os.getpid()
    write_lease(lease_file, [Route("198.18.10.10/32")], me, 60.0)
    a = Agent(lease_file, status_file, speaker_pid=4242)
    a.step()
    for state in ("connected", "up"):
        a.on_line(json.dumps({"exabgp": "4.0.1", "type": "state", "neighbor": {
            "address": {"local": "198.18.0.1", "peer": "198.18.0.254"}, "asn": {"local": 65001, "peer": 65000},
            "state": state}}))
    a.on_line("done")
    a.on_line("error")
    a.on_line("{broken")
    a.on_line(json.dumps({"type": "state", "neighbor": {"address": {"peer": "198.18.0.253"}, "state": "down",
                                                        "reason": "peer reset"}}))
    a.write_status(force=True)
    doc = json.load(open(status_file))
    assert doc["neighbors"]["198.18.0.254"]["state"] == "up" and doc["neighbors"]["198.18.0.254"]["ups"] == 1
    assert doc["neighbors"]["198.18.0.253"] == {**doc["neighbors"]["198.18.0.253"], "state": "down",
                                                "reason": "peer reset"}
    assert doc["errors"] == 1 and doc["announced"] == [Route("198.18.10.10/32").to_json()]
    # respawned under the same ExaBGP: it knows what is announced (nothing to send again) ...
    assert Agent(lease_file, status_file, speaker_pid=4242).step() == []
    # ... under a new ExaBGP (empty RIB) it announces everything
    assert Agent(lease_file, status_file, speaker_pid=4343).step() == [Route("198.18.10.10/32").announce()]



def test_fuzzed_exabgp_lines_leave_the_agent_running_and_its_status_readable(files) -> None:
    """ExaBGP's lines mutated (fields retyped, nested, dropped, huge; JSON cut short or nested too
    deeply; random bytes): the agent never raises, and the status it writes keeps every neighbor's
    state and reason as text, its count of ups a number.  Seeded by LB_FUZZ_SEED."""
    lease_file, status_file = files
    write_lease(lease_file, [Route("198.18.10.10/32")], os.getpid(), 60.0)
    a = Agent(lease_file, status_file, speaker_pid=4242)
    a.step()
    rng = random.Random(SEED)
    nasty = [None, True, 0, -1, 2 ** 70, 1.5, "", "x" * 5000, [], {}, [[[[]]]], {"a": {"b": {}}}, "up", "down",
             "198.18.0.254", "\x00\ud800"]
    event = {"exabgp": "4.0.1", "type": "state", "neighbor": {
        "address": {"local": "198.18.0.1", "peer": "198.18.0.254"}, "asn": {"local": 65001, "peer": 65000},
        "state": "up", "reason": "peer reset"}}
    with named():
        for _ in range(3000):
            e = json.loads(json.dumps(event))
            for _ in range(rng.randint(1, 3)):
                n = e.get("neighbor") if isinstance(e.get("neighbor"), dict) else {}
                where = rng.choice([e, n] + [v for v in (n.get("address"), n.get("asn")) if isinstance(v, dict)])
                k = rng.choice(list(where) + ["extra"])
                if rng.random() < 0.2:
                    where.pop(k, None)
                else:
                    where[k] = json.loads(json.dumps(rng.choice(nasty)))   # a copy: no value shared
            line = json.dumps(e)
            op = rng.random()
            if op < 0.1:
                line = line[:rng.randrange(len(line))]
            elif op < 0.15:
                line = "[" * rng.randrange(1000, 100000)
            elif op < 0.2:
                line = rng.randbytes(rng.randrange(200)).decode("utf-8", "replace")
            a.on_line(line)
        a.write_status(force=True)
        doc = json.load(open(status_file))
        assert doc["neighbors"], doc
        for peer, n in doc["neighbors"].items():
            assert isinstance(peer, str) and isinstance(n["state"], str) and isinstance(n.get("ups", 0), int), n
            assert isinstance(n.get("reason", ""), str) and len(n.get("reason", "")) <= 200, n

# ExaBGP 4.2.21's "down" events, as its JSON encoder writes them, for a session the router closed
# with a NOTIFICATION carrying data: the data goes into "reason" decoded, not escaped.
EXABGP_DOWN = ('{ "exabgp": "4.0.1", "time": 1796521169.51, "host" : "vm", "pid" : 4247, "ppid" : 4244, '
               '"counter": %d, "type": "state", "neighbor": { "address": { "local": "198.18.0.1", "peer": '
               '"198.18.0.254" }, "asn": { "local": 65001, "peer": 65000 } , "state": "down", "reason": '
               '"peer reset, message (notification received (%s)) error(%s)" } }')


@pytest.mark.parametrize("code,error,shown", [
    # Cease / Maximum prefixes: the router's limit on the session (AFI, SAFI, limit: binary), and
    # an escape sequence that would clear the operator's screen
    ("6,1", "Cease / Maximum Number of Prefixes Reached / \x00\x01\x01\x00\x00\x00\x05\x1b[2J",
     "Cease / Maximum Number of Prefixes Reached / ????????[2J)"),
    ("2,7", "OPEN message error / Unsupported Capability / \x02\x00", "OPEN message error / Unsupported Capability / ??)"),
    ("6,5", "Cease / Connection Rejected / C:\\ops", "Cease / Connection Rejected / C:\\ops)"),
    ("6,3", "Cease / Peer De-configured / bye\nnow", "Cease / Peer De-configured / bye"),    # two lines
])
def test_a_session_closed_with_odd_notification_data_is_down_in_the_status(files, monkeypatch, caplog,
                                                                          code, error, shown) -> None:
    """The router closes the session with a NOTIFICATION whose data has control characters, a
    backslash or a newline: ExaBGP's "down" line is no JSON.  The agent dropped it without a word,
    and `lb status` showed the session up until it came up again.  Now the session is down with
    the reason (control characters replaced: a peer's bytes never reach the operator's terminal),
    a line that cannot be read at all is counted, and lb logs the count at most once a minute."""
    lease_file, status_file = files
    write_lease(lease_file, [Route("198.18.10.10/32")], os.getpid(), 60.0)
    a = Agent(lease_file, status_file, speaker_pid=4242)
    a.step()
    a.on_line(json.dumps({"type": "state", "neighbor": {"address": {"local": "198.18.0.1", "peer": "198.18.0.254"},
                                                        "asn": {"local": 65001, "peer": 65000}, "state": "up"}}))
    for line in (EXABGP_DOWN % (2, code, error)).split("\n"):     # ExaBGP writes it as it is
        a.on_line(line)
    a.write_status(force=True)
    doc = json.load(open(status_file))
    assert doc["neighbors"]["198.18.0.254"]["state"] == "down"
    assert doc["neighbors"]["198.18.0.254"]["reason"] == f"peer reset, message (notification received ({code})) " \
                                                          f"error({shown}"
    bad = 1 if "\n" in error else 0               # the second half of a line cut in two
    assert doc["bad_lines"] == bad
    monkeypatch.setattr(announcer, "status_path", lambda inst: status_file)
    monkeypatch.setattr(announcer, "lease_path", lambda inst: lease_file)
    lb = announcer.Announcer(loads(CFG))
    caplog.set_level("WARNING", "lb.bgp")
    lb.check_agent()
    for _ in range(3):
        a.on_line("\x1b]0;garbage")
        a.write_status(force=True)
        lb.check_agent()
    logged = [r.getMessage() for r in caplog.records if "could not read" in r.getMessage()]
    last = 'now)" } }' if bad else "?]0;garbage"
    assert logged == [f"BGP: 1 lines from ExaBGP its agent could not read so far (the last: {last!r})"]
    assert lb.status()["speaker"]["bad_lines"] == bad + 3
    assert announcer.format_status(lb.status())[0].endswith(f" ({bad + 3} unreadable lines from ExaBGP)")


def test_agent_process_talks_exabgp_api(tmp_path) -> None:
    """`python -m lb.bgp.agent` as ExaBGP runs it: commands on stdout, events on stdin, exits at EOF."""
    lease_file, status_file = str(tmp_path / "l.json"), str(tmp_path / "s.json")
    write_lease(lease_file, [Route("198.18.10.10/32", 7)], os.getpid(), 30.0)
    p = subprocess.Popen([sys.executable, "-m", "lb.bgp.agent", "--lease", lease_file, "--status", status_file],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "announce route 198.18.10.10/32 next-hop self med 7"
        p.stdin.write("done\n" + json.dumps({"type": "state", "neighbor": {
            "address": {"local": "198.18.0.1", "peer": "198.18.0.254"}, "asn": {"local": 65001, "peer": 65000},
            "state": "up"}}) + "\n")
        p.stdin.flush()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            doc = json.load(open(status_file)) if os.path.exists(status_file) else {}
            if doc.get("neighbors", {}).get("198.18.0.254", {}).get("state") == "up":
                break
            time.sleep(0.05)
        assert doc["neighbors"]["198.18.0.254"]["state"] == "up" and doc["agent_pid"] == p.pid
        os.unlink(lease_file)                       # lb's clean stop removes the lease: withdraw
        assert p.stdout.readline().strip() == "withdraw route 198.18.10.10/32 next-hop self"
        p.stdin.close()                             # ExaBGP gone
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.skipif(not os.path.exists(speaker.EXABGP), reason="ExaBGP is not installed (scripts/setup.sh installs it)")
def test_exabgp_accepts_the_configuration(tmp_path) -> None:
    cfg = loads(CFG)
    local = {IP("198.18.0.254"): IP("198.18.0.1"), IP("198.18.0.253"): IP("198.18.0.9")}
    text = speaker.exabgp_config(cfg.bgp, local, IP("198.18.0.1"), "bgpunit")
    assert "local-address 198.18.0.9;" in text and "peer-as 65002;" in text and "hold-time 3;" in text
    assert f"run {sys.executable} -m lb.bgp.agent --lease /run/lb/bgpunit.bgp-lease.json" in text
    path = tmp_path / "exabgp.conf"
    path.write_text(text)
    env = {k: v for k, v in speaker.exabgp_env("bgpunit").items() if not k.startswith("exabgp.daemon")}
    env["exabgp.log.destination"] = "stdout"
    p = subprocess.run([speaker.EXABGP, "--validate", str(path)], env=env, capture_output=True, text=True,
                       timeout=60, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "neighbor 198.18.0.253 {" in p.stdout and "loaded new configuration successfully" in p.stdout
    path.write_text(text.replace("hold-time 3;", "hold-time 2;"))
    p = subprocess.run([speaker.EXABGP, "--validate", str(path)], env=env, capture_output=True, text=True,
                       timeout=60, cwd=str(tmp_path))
    assert p.returncode != 0


def test_status_lines() -> None:
    doc = {"mode": "active-active", "local_as": 65001, "router_id": "198.18.0.1", "hold_time": 3, "lease": 2,
           "drain": 2, "speaker": {"name": "exabgp", "pid": 123, "agent": True, "withdrawn_because": None,
                                   "errors": 0},
           "neighbors": [{"address": "198.18.0.254", "peer_as": 65000, "local_address": "198.18.0.1",
                          "state": "up", "since": None, "reason": None, "ups": 1}],
           "announced": ["198.18.10.10/32"],
           "vips": [{"prefix": "198.18.10.10/32", "servable": True, "reason": None, "med": 20,
                     "communities": ["65000:100"]},
                    {"prefix": "198.18.10.11/32", "servable": False, "med": None, "communities": [],
                     "reason": "virtual service web2 (tcp 198.18.10.11:80) has no usable real server"}]}
    assert announcer.format_status(doc) == [
        "bgp active-active  AS 65001  router id 198.18.0.1  hold 3s  speaker exabgp pid 123",
        "  neighbor 198.18.0.254 AS 65000 from 198.18.0.1: up",
        "  route 198.18.10.10/32 med 20 community 65000:100: announced",
        "  route 198.18.10.11/32: withdrawn: virtual service web2 (tcp 198.18.10.11:80) has no usable real server",
    ]


def test_announcer_settles_writes_the_lease_and_removes_it(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    stopped = []
    monkeypatch.setattr(speaker, "stop", stopped.append)
    a = announcer.Announcer(loads(CFG.replace("lease = 2", "lease = 2\nsettle = 2")))
    route = Route("198.18.10.10/32", 20, ("65000:100", "no-export"))
    a.update(TableSpec((svc("198.18.10.10", 80, 1, 1),)), now=10.0)
    assert read_lease(a.lease_path).routes == ()            # not attached yet
    a.update(attached=True, now=10.0)
    assert read_lease(a.lease_path).routes == ()            # servable: settling
    assert a.status()["vips"][0]["reason"] == "settling: servable with these real servers for 0.0 of 2 s"
    a.update(TableSpec((svc("198.18.10.10", 80, 1, 0),)), now=11.5)    # the set changed: again
    a.update(now=13.0)
    assert read_lease(a.lease_path).routes == ()
    a.update(now=13.6)
    lease = read_lease(a.lease_path)
    assert lease.routes == (route,)
    assert lease.owner_pid == os.getpid() and lease.expires > time.monotonic()
    a.update(TableSpec((svc("198.18.10.10", 80, 1, 1),)), now=13.7)    # announced: changes keep it
    assert read_lease(a.lease_path).routes == (route,)
    a.update(TableSpec((svc("198.18.10.10", 80, 0, 0),)), now=14.0)    # its last real server went
    assert read_lease(a.lease_path).routes == ()
    assert a.status()["vips"][0]["reason"] == "virtual service tcp 198.18.10.10:80 has no usable real server"
    a.update(TableSpec((svc("198.18.10.10", 80, 3, 0),)), now=14.0)
    a.update(now=16.5)
    assert read_lease(a.lease_path).routes == (route,)
    import asyncio
    asyncio.run(a.leave(keep=True))                         # an upgrade: routes held by an ownerless lease
    assert read_lease(a.lease_path).owner_pid == 0 and read_lease(a.lease_path).routes
    a.close(keep=False)
    assert stopped == ["bgpunit"] and not os.path.exists(a.lease_path)


def test_a_vip_removed_and_added_again_settles_again(monkeypatch, tmp_path, caplog) -> None:
    """A VIP that left the table (a reload) is withdrawn, saying so; added back later it waits
    its settle period again, as a new one (its old settling entry made it announced at once)."""
    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    caplog.set_level("INFO", "lb.bgp")
    a = announcer.Announcer(loads(CFG.replace("lease = 2", "lease = 2\nsettle = 30")))
    route = Route("198.18.10.10/32", 20, ("65000:100", "no-export"))
    a.update(TableSpec((svc("198.18.10.10", 80, 1, 1),)), attached=True, now=0.0)
    a.update(now=31.0)
    assert read_lease(a.lease_path).routes == (route,)
    a.update(TableSpec((svc("198.18.10.11", 80, 1),)), now=100.0)
    assert route not in read_lease(a.lease_path).routes
    assert "BGP: withdrawing 198.18.10.10/32: no longer configured" in caplog.text
    a.update(TableSpec((svc("198.18.10.10", 80, 1, 1), svc("198.18.10.11", 80, 1))), now=5000.0)
    assert route not in read_lease(a.lease_path).routes
    assert a.status()["vips"][0]["reason"].startswith("settling: ")
    a.update(now=5031.0)
    assert route in read_lease(a.lease_path).routes


def test_the_next_run_takes_over_the_routes_an_upgrade_kept(monkeypatch, tmp_path) -> None:
    """`lb stop --keep-dataplane` leaves an ownerless lease with the routes; the next `lb run`
    (Engine.start's order: the first apply before the attach, then bgp.start, then the attach's
    update) takes them over as announced: not one moment without them, no settle period (it
    wrote an empty lease at start, and the speaker's agent withdrew every route for [bgp]
    settle seconds).  A VIP the new table no longer has is withdrawn."""
    import asyncio

    from lb.bgp.agent import Agent

    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    monkeypatch.setattr(speaker, "start", lambda inst, text: (os.getpid(), True))      # adopted ExaBGP
    monkeypatch.setattr(announcer, "local_address_toward", lambda a: IP("198.18.0.1"))
    cfg = loads(CFG.replace("lease = 2", "lease = 2\nsettle = 5"))
    both = TableSpec((svc("198.18.10.10", 80, 1, 1), svc("198.18.10.11", 80, 1)))
    old = announcer.Announcer(cfg)
    old.update(both, attached=True, active=True, now=0.0)
    old.update(now=6.0)
    asyncio.run(old.leave(keep=True))
    kept = read_lease(old.lease_path)
    assert kept.owner_pid == 0 and len(kept.routes) == 2
    agent = Agent(old.lease_path, old.status_path, 4242)
    agent.step()
    seen = []
    new = announcer.Announcer(cfg)
    new.update(TableSpec((svc("198.18.10.10", 80, 1, 1),)), attached=False, active=True)   # 10.11 is gone
    seen.append(read_lease(new.lease_path).routes)
    new.start()
    seen.append(read_lease(new.lease_path).routes)
    new.update(attached=True, active=True)
    seen.append(read_lease(new.lease_path).routes)
    route = Route("198.18.10.10/32", 20, ("65000:100", "no-export"))
    assert seen == [kept.routes, (route,), (route,)]
    assert read_lease(new.lease_path).owner_pid == os.getpid()
    assert [c for c in agent.step() if "withdraw route 198.18.10.10" in c] == []
    assert new.status()["vips"][0]["reason"] is None


def test_an_upgrade_keeps_its_routes_through_a_start_longer_than_the_lease(monkeypatch, tmp_path) -> None:
    """`lb stop --keep-dataplane`, then the new version's `lb run`: the kept lease lasted [bgp]
    lease (3 s by default) from the old run's stop, and the new run took it over only after
    loading the data plane -- a cold start (an upgrade: new programs to compile) takes 5.5 s, a
    start with new [tables] 6 s --, so the agent withdrew every route meanwhile and the new run
    announced them again only after settle.  Now the kept routes hold KEEP_S longer, and the new
    run owns them from its first moment: held through a 10 s start, withdrawn at once if that
    start dies."""
    import asyncio

    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    monkeypatch.setattr(speaker, "start", lambda inst, text: (os.getpid(), True))      # adopted ExaBGP
    monkeypatch.setattr(announcer, "local_address_toward", lambda a: IP("198.18.0.1"))
    cfg = loads(CFG.replace("lease = 2", "lease = 3\nsettle = 5"))
    table = TableSpec((svc("198.18.10.10", 80, 1, 1),))
    old = announcer.Announcer(cfg)
    old.update(table, attached=True, active=True, now=0.0)
    old.update(now=6.0)
    asyncio.run(old.leave(keep=True))
    route = Route("198.18.10.10/32", 20, ("65000:100", "no-export"))
    clock = Clock()
    clock.t = time.monotonic()
    alive = {"new": True}
    agent = Agent(old.lease_path, old.status_path, 4242, clock=clock,
                  start_of=lambda pid: process_start(pid) if alive["new"] else None)
    assert agent.step() == [route.announce()]
    new = announcer.Announcer(cfg)           # Engine.start, first thing after the interfaces
    new.claim_kept()
    assert read_lease(new.lease_path).owner_pid == os.getpid()
    clock.t += 10.0                          # the data plane's load: a cold start
    assert agent.step() == [] and agent.withdrawn_because is None
    new.update(table, attached=False, active=True)
    new.start()
    new.update(attached=True, active=True)
    assert read_lease(new.lease_path).routes == (route,) and new.status()["vips"][0]["reason"] is None
    clock.t = time.monotonic()               # (the clock of the renewals from here on)
    assert agent.step() == []
    # the same, but the new run dies while starting: withdrawn at once, not at the term
    asyncio.run(new.leave(keep=True))
    again = announcer.Announcer(cfg)
    again.claim_kept()
    alive["new"] = False
    assert agent.step() == [route.withdraw()] and agent.withdrawn_because.endswith("is gone")


def test_a_renewal_under_way_at_an_upgrade_stop_leaves_the_kept_lease_ownerless(monkeypatch, tmp_path) -> None:
    """The stop cancels the renewal loop, but a renewal it had handed to a worker thread still
    runs: done after leave(keep=True) it wrote the lease back with this process as its owner, and
    the agent withdrew every route the moment the process exited -- the upgrade it was kept for
    began with an outage.  A renewal after the kept lease is written now leaves it as it is."""
    import asyncio

    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    a = announcer.Announcer(loads(CFG.replace("lease = 2", "lease = 2\nsettle = 0")))
    a.update(TableSpec((svc("198.18.10.10", 80, 1, 1),)), attached=True, active=True)
    asyncio.run(a.leave(keep=True))
    a.renew()                                   # the late one
    kept = read_lease(a.lease_path)
    assert kept.owner_pid == 0 and kept.routes
    assert lease_holds(kept, time.monotonic() + 2 + 10, start_of=lambda pid: None) is None


def test_a_stop_that_cannot_write_the_lease_still_withdraws_then_drains(monkeypatch, tmp_path, caplog) -> None:
    """`lb stop` with /run full: the lease that withdraws the routes could not be written, leave()
    raised OSError out of the daemon's stop (a traceback; the drain, the control socket's and the
    monitors' stops skipped), and the agent went on announcing the routes until the lease's term,
    after the data plane had gone.  Now ExaBGP is stopped at once (its sessions closing withdraw
    the routes), then the drain; --keep-dataplane says the routes are not kept."""
    import asyncio

    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    a = announcer.Announcer(loads(CFG.replace("lease = 2", "lease = 2\nsettle = 0\ndrain = 0.1")))
    a.update(TableSpec((svc("198.18.10.10", 80, 1, 1),)), attached=True, active=True)
    assert read_lease(a.lease_path).routes
    events = []
    monkeypatch.setattr(speaker, "stop", lambda inst: events.append(("stop", inst)))
    real_sleep = asyncio.sleep

    async def sleep(s):
        events.append(("drain", s))
        await real_sleep(0)
    monkeypatch.setattr(announcer.asyncio, "sleep", sleep)

    def full(*args, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(announcer, "write_lease", full)
    caplog.set_level("ERROR", "lb.bgp")
    asyncio.run(a.leave(keep=True))
    assert "cannot keep the routes for the next lb run (" in caplog.text and events == []
    asyncio.run(a.leave(keep=False))
    assert events == [("stop", "bgpunit"), ("drain", 0.1)]
    assert "cannot write the lease that withdraws the routes ([Errno 28] No space left on device): " \
           "stopping ExaBGP" in caplog.text


def test_a_run_without_bgp_stops_the_exabgp_an_earlier_run_left(monkeypatch, tmp_path, caplog) -> None:
    """[bgp] removed, then `systemctl restart` (the data plane and ExaBGP kept): nothing stopped
    that ExaBGP -- its sessions stayed up, a kept lease's routes stayed announced until their term,
    and `lb status` no longer showed any of it.  The next run without [bgp] stops it now (Engine.start
    calls stop_leftover) and removes its files; an ExaBGP pid file naming another program's process
    is left alone."""
    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    monkeypatch.setattr(speaker, "conf_path", lambda inst: str(tmp_path / f"{inst}.exabgp.conf"))
    for name in ("bgpunit.lease", "bgpunit.status", "bgpunit.exabgp.conf"):
        (tmp_path / name).write_text("{}")
    running = {"bgpunit": 4321}
    stopped = []
    monkeypatch.setattr(speaker, "running_pid", lambda inst: running.get(inst))
    monkeypatch.setattr(speaker, "stop", stopped.append)
    caplog.set_level("WARNING", "lb.bgp")
    assert announcer.stop_leftover("other") is False and stopped == []
    assert announcer.stop_leftover("bgpunit") is True and stopped == ["bgpunit"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert "[bgp] is no longer configured: stopping the ExaBGP (pid 4321)" in caplog.text
    import inspect

    from lb import engine
    src = inspect.getsource(engine.Engine.start)
    assert src.index("stop_leftover(self.cfg.instance)") < src.index("self._load_dataplane()")


def test_a_speaker_that_died_is_started_again_with_a_backoff(monkeypatch, tmp_path, caplog) -> None:
    """ExaBGP gone (killed; or it gave up its API process after repeated deaths): the lease's
    loop starts it again, says so at ERROR, counts it in `lb status`, and while starting fails
    tries again after 1, 2, 4 ... s -- nothing watched it, and the director stayed silent."""
    import asyncio

    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    monkeypatch.setattr(announcer, "local_address_toward", lambda a: IP("198.18.0.1"))
    alive = {"pid": 4321}
    starts = []

    def start(inst, text):
        starts.append(text)
        if len(starts) in (2, 3):                  # the first two restarts fail
            raise speaker.SpeakerError("ExaBGP did not start (exit 1)")
        alive["pid"] = 4321 + len(starts)
        return alive["pid"], False
    monkeypatch.setattr(speaker, "start", start)
    monkeypatch.setattr(speaker, "running_pid", lambda inst: alive["pid"])
    a = announcer.Announcer(loads(CFG))
    a.start()
    assert len(starts) == 1
    asyncio.run(a.keep_speaker(now=100.0))
    assert len(starts) == 1                        # running: left alone
    alive["pid"] = None                            # killed
    for now, started in ((101.0, 2), (101.5, 2), (102.0, 3), (103.0, 3), (104.0, 4), (105.0, 4)):
        asyncio.run(a.keep_speaker(now=now))
        assert len(starts) == started, (now, len(starts))
    assert a.speaker_pid == 4325 and a.speaker_restarts == 1 and starts[-1] == starts[0]
    assert "BGP: ExaBGP (pid 4322) is not running: starting it again" in caplog.text
    assert "cannot start ExaBGP again: ExaBGP did not start (exit 1) (next try in 2 s)" in caplog.text
    assert "(started again 1 times)" in announcer.format_status(a.status())[0]


def test_the_speakers_backoff_grows_while_it_dies_at_each_start_and_resets_once_it_stayed_up(monkeypatch, tmp_path) -> None:
    """An ExaBGP that starts but dies within seconds each time (its sessions opened and closed
    at each start) is started again after 1, 2, 4 ... 60 s, not every second for good: a start
    that worked used to reset the backoff at once.  Once it has run 60 s (the longest backoff),
    the backoff is back to its start: its next death is answered at once, then after 1 s,
    not after a minute."""
    import asyncio

    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    monkeypatch.setattr(announcer, "local_address_toward", lambda a: IP("198.18.0.1"))
    alive = {"pid": 4321}
    flapping = True
    starts = []

    def start(inst, text):       # ExaBGP starts; while flapping, it is gone again a moment later
        starts.append(now)
        alive["pid"] = None if flapping else 4321 + len(starts)
        return 4321 + len(starts), False
    monkeypatch.setattr(speaker, "start", start)
    monkeypatch.setattr(speaker, "running_pid", lambda inst: alive["pid"])
    a = announcer.Announcer(loads(CFG))
    now = 0.0
    a.start()
    starts.clear()

    def seconds(n):              # the lease loop's seconds
        nonlocal now
        for _ in range(n):
            asyncio.run(a.keep_speaker(now=now))
            now += 1.0

    now = 100.0
    alive["pid"] = None
    seconds(400)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0] + [60.0] * (len(gaps) - 6), starts
    # it starts and stays up: once it has run a minute, the backoff is back to its start
    flapping = False
    seconds(60)
    up = starts[-1]
    seconds(int(up + 60 - now) + 1)
    assert starts[-1] == up and alive["pid"] is not None
    flapping, alive["pid"], died = True, None, now
    seconds(5)
    assert starts[-3:] == [died, died + 1.0, died + 3.0], (died, starts)

def test_under_systemd_exabgp_gets_a_scope_of_its_own(monkeypatch, tmp_path, caplog) -> None:
    """lb@.service's KillMode=mixed kills what is left in the unit's cgroup once lb stopped: on a
    restart (an upgrade, whose kept lease holds the routes) that took ExaBGP and its sessions.
    Under systemd ExaBGP starts in a scope of its own (systemd-run --scope); elsewhere, or when
    that fails, as before."""
    monkeypatch.setattr(speaker.shutil, "which", lambda name: f"/usr/bin/{name}")
    real_isdir = speaker.os.path.isdir
    monkeypatch.setattr(speaker.os.path, "isdir", lambda p: p == "/run/systemd/system" or real_isdir(p))
    assert speaker.launch_argv("so1", "/usr/sbin/exabgp", "/run/lb/so1.exabgp.conf", env={}) == \
        ["/usr/sbin/exabgp", "/run/lb/so1.exabgp.conf"]
    argv = speaker.launch_argv("so1", "/usr/sbin/exabgp", "/run/lb/so1.exabgp.conf", env={"INVOCATION_ID": "ab12"})
    assert argv[:5] == ["/usr/bin/systemd-run", "--scope", "--quiet", "--collect", "--unit=lb-exabgp-so1"]
    assert argv[-2:] == ["/usr/sbin/exabgp", "/run/lb/so1.exabgp.conf"]
    # the scope refused (no D-Bus, say): started the old way, with a warning
    monkeypatch.setattr(speaker, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(speaker, "conf_path", lambda inst: str(tmp_path / f"{inst}.exabgp.conf"))
    monkeypatch.setattr(speaker, "running_pid", lambda inst: None)
    monkeypatch.setattr(speaker.os.path, "exists", lambda p: True)
    monkeypatch.setenv("INVOCATION_ID", "ab12")
    tried = []

    def launch(inst, argv):
        tried.append(argv[0])
        if argv[0].endswith("systemd-run"):
            raise speaker.SpeakerError("ExaBGP did not start (exit 1): Failed to connect to bus")
        return 777, False
    monkeypatch.setattr(speaker, "_launch", launch)
    assert speaker.start("so1", "conf text") == (777, False)
    assert tried == ["/usr/bin/systemd-run", speaker.EXABGP]
    assert "ExaBGP in a systemd scope of its own failed" in caplog.text


def test_local_address_toward() -> None:
    assert announcer.local_address_toward(IP("127.0.0.1")) == IP("127.0.0.1")


def test_scaleout_lab_configs_validate() -> None:
    from lb.lab import scaleout as so

    assert so.directors(3) == ("director", "director2", "director3")
    assert [so.pub_addr(d) for d in so.directors(4)] == ["198.18.0.1", "198.18.0.3", "198.18.0.4", "198.18.0.5"]
    for node in so.directors(3):
        for network in ("direct", "tunnel"):
            cfg = loads(so.director_config(node, network))
            assert (cfg.instance, cfg.network, cfg.bgp.mode) == (so.instance(node), network, "active-active")
            assert [str(vs.address) for vs in cfg.virtual_servers] == list(so.VIPS)
    conf = so.bird_conf(3)
    assert "merge paths on;" in conf and "passive on;" in conf
    assert "protocol bgp director3 from lbdirector { neighbor 198.18.0.4 as 65001; }" in conf
    with pytest.raises(ValueError):
        so.directors(9)


def test_a_lease_that_cannot_be_renewed_is_logged_once_a_minute(monkeypatch, tmp_path, caplog) -> None:
    """/run full: the renewal failed every second, each an ERROR line."""
    import asyncio

    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    a = announcer.Announcer(loads(CFG), renew_s=0.01)
    a.speaker_text = None                              # no ExaBGP to keep here

    def full():
        raise OSError(28, "No space left on device")
    a.renew = full

    async def main():
        t = asyncio.create_task(a.run())
        await asyncio.sleep(0.3)
        t.cancel()
    caplog.set_level("ERROR", "lb.bgp")
    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "cannot renew the lease" in r.getMessage()]
    assert a.renew_failures >= 5 and len(lines) == 1, (a.renew_failures, lines)


def test_the_lease_is_renewed_while_the_loops_worker_threads_are_busy(monkeypatch, tmp_path) -> None:
    """The renewal ran in the event loop's default executor (6 threads on 2 CPUs), behind the
    status requests (~0.3 s each for a large config), `lb list` and reload applies queued there:
    a read-only user asking for `lb status` in a loop could hold it past [bgp] lease, and the
    agent withdrew every route of a director that was not hung.  Now it has its own thread."""
    import asyncio
    import concurrent.futures
    import threading

    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    a = announcer.Announcer(loads(CFG), renew_s=0.01)
    renewed = []
    a.renew = lambda: renewed.append(time.monotonic())

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        release = threading.Event()
        busy = loop.run_in_executor(None, release.wait)          # every worker taken
        t = asyncio.create_task(a.run())
        await asyncio.sleep(0.3)
        release.set()
        await busy
        t.cancel()
    asyncio.run(main())
    a.close(keep=True)
    assert len(renewed) >= 5, renewed


def test_a_takeover_announces_at_once_and_health_coming_back_still_settles(monkeypatch, tmp_path, caplog) -> None:
    """[ha] with mode = "announce": the backup's health checks run all along, so when it takes
    over its VIP is announced at once -- settle is for real servers coming back, not for a role
    change (a takeover waited settle seconds with no director announcing the VIP).  A real
    server that came back 1 s before the takeover still waits out the rest of its settle."""
    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    caplog.set_level("INFO", "lb.bgp")
    a = announcer.Announcer(loads(CFG.replace("lease = 2", 'lease = 2\nsettle = 2\nmode = "announce"')))
    route = Route("198.18.10.10/32", 20, ("65000:100", "no-export"))
    a.update(TableSpec((svc("198.18.10.10", 80, 1, 1),)), attached=True, active=False, now=0.0)
    a.update(now=50.0)
    assert read_lease(a.lease_path).routes == ()
    assert a.status()["vips"][0]["reason"] == "this director is not the active one ([ha])"
    a.update(active=True, now=100.0)                                   # the takeover
    assert read_lease(a.lease_path).routes == (route,)
    assert "BGP: announcing 198.18.10.10/32" in caplog.text
    a.update(active=False, now=110.0)                                  # it stands down: withdrawn
    assert read_lease(a.lease_path).routes == ()
    a.update(TableSpec((svc("198.18.10.10", 80, 1, 0),)), now=119.0)   # a real server changes
    a.update(active=True, now=120.0)                                   # takeover 1 s later
    assert read_lease(a.lease_path).routes == ()
    assert a.status()["vips"][0]["reason"] == "settling: servable with these real servers for 1.0 of 2 s"
    a.update(now=121.0)
    assert read_lease(a.lease_path).routes == (route,)
