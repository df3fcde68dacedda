"""What a run holds, recorded across runs (lb/held.py, `/run/lb/<instance>.held`): a restart that
keeps the data plane (`lb stop --keep-dataplane`, systemd's restart, a crash) followed by a start
whose configuration no longer names an interface or an address used to leave the old XDP
program attached and the old addresses up for good.  The next start releases them once its
own attach and addresses are done -- a program only while it is still the one lb left, an
address only one the record names -- whether it adopts the data plane or not.

Real interfaces (veth pairs in the test's own network namespace), real addresses and real XDP
programs (lb decap's shipped instructions, attached in generic mode) stand for the director's;
the data plane is stood in for (tests/test_engine_lifecycle.py's)."""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import subprocess

import pytest

from lb import config as lbconfig
from lb import engine as lbengine
from lb import held
from lb.dataplane import attach as dpattach
from lb.dataplane import bpfsys, decap, ipvs
from lb.ha import announce as ha_announce
from test_engine_lifecycle import StartingDataplane

PUB, PRIV = "hld0", "hld1"

NAT = """
[global]
instance = "{instance}"
public_interface = "{pub}"
private_interface = "{priv}"
network = "nat"
nat_router = "198.19.99.254/24"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
  [[virtual_server.real_server]]
  name = "rs1"
  address = "198.19.99.11"

[[virtual_server]]
name = "old"
address = "198.18.0.20"
port = 80
  [[virtual_server.real_server]]
  name = "rs1"
  address = "198.19.99.11"
"""

DIRECT = """
[global]
instance = "{instance}"
public_interface = "{pub}"
network = "direct"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
  [[virtual_server.real_server]]
  name = "rs1"
  address = "198.19.99.11"
"""


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def xdp_id(dev: str) -> int | None:
    return dpattach.attached_prog_id(dev)


def addrs(dev: str) -> set[str]:
    info = json.loads(ip("-j", "addr", "show", "dev", dev))
    return {f"{a['local']}/{a['prefixlen']}" for i in info for a in i.get("addr_info", []) if a["family"] == "inet"}


@pytest.fixture
def links():
    """Two interfaces (veth pairs: this kernel may have no dummy module) in the test's network
    namespace (conftest's), removed after."""
    for dev in (PUB, PRIV):
        subprocess.run(["ip", "link", "del", dev], capture_output=True)
        ip("link", "add", dev, "type", "veth", "peer", "name", f"{dev}p")
        ip("link", "set", dev, "up")
        ip("link", "set", f"{dev}p", "up")
    yield
    for dev in (PUB, PRIV):
        subprocess.run(["ip", "link", "del", dev], capture_output=True)


def load_program():
    """A real XDP program (lb decap's, loaded from its shipped instructions): (loaded, prog)."""
    return decap.load([ipaddress.ip_address("198.19.99.1")], [ipaddress.ip_address("198.19.99.2")])


class XdpStandIn(StartingDataplane):
    """A data plane whose attach puts a real XDP program on the interface (one program per
    run, as the director's public and private ones are one load each) and which reports it as
    held_programs does."""

    adopted = True

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.loaded, self.prog = load_program()
        self.flags: dict[str, int] = {}

    def attach(self, ifname, side, mode):
        super().attach(ifname, side, mode)
        _name, self.flags[ifname] = dpattach.attach_xdp(ifname, self.prog, "generic")

    def detach_all(self):
        for ifname, flags in self.flags.items():
            dpattach.detach_xdp(ifname, flags)
        self.flags.clear()
        super().detach_all()

    def held_programs(self):
        pid = bpfsys.prog_info(self.prog.fd).id
        return [dpattach.HeldProgram(ifname, socket.if_nametoindex(ifname), "lb_xdp_public", pid, self.flags[ifname])
                for ifname in sorted(self.flags)]

    def close(self):
        super().close()
        self.loaded.close()


@pytest.fixture
def host(tmp_path, monkeypatch, links):
    """The engine's run directory in tmp_path, its data plane the stand-in, no announcements."""
    monkeypatch.setattr(lbengine, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(lbengine, "IpvsDataplane", XdpStandIn)
    monkeypatch.setattr(ha_announce, "warm_up_in_background", lambda: None)
    return tmp_path


def engine(tmp_path, text: str, name: str, **kw) -> lbengine.Engine:
    path = tmp_path / name
    path.write_text(text.format(instance="held", pub=PUB, priv=PRIV, **kw))
    return lbengine.Engine(lbconfig.load(str(path)), dataplane="ipvs")


def record(tmp_path) -> dict | None:
    p = tmp_path / "held.held"
    return json.loads(p.read_text()) if p.exists() else None


@pytest.mark.parametrize("adopted", [True, False])
def test_a_kept_restart_releases_the_interface_and_the_addresses_the_new_config_drops(host, adopted, caplog):
    """NAT on hld0/hld1 with two VIPs, stopped keeping its data plane; then a direct-routing
    config on hld0 with one VIP: the program on hld1 is detached, the second VIP and the
    nat_router removed; the VIP still named stays (not removed and added again), and hld0
    carries the new run's program.  The same when the new run does not adopt the data plane
    (the record names them still)."""
    first = engine(host, NAT, "nat.toml")
    first.start()
    assert addrs(PUB) == {"198.18.0.10/32", "198.18.0.20/32"}
    assert "198.19.99.254/24" in addrs(PRIV)
    assert xdp_id(PUB) is not None and xdp_id(PRIV) is not None
    rec = record(host)                                     # current while it runs (a kill -9 leaves it)
    assert {(p["ifname"], p["prog_id"]) for p in rec["xdp"]} == {(PUB, xdp_id(PUB)), (PRIV, xdp_id(PRIV))}
    assert {(a["ifname"], a["address"]) for a in rec["addresses"]} == {
        (PUB, "198.18.0.10/32"), (PUB, "198.18.0.20/32"), (PRIV, "198.19.99.254/24")}
    old = xdp_id(PRIV)
    first.stop(keep_dataplane=True)
    assert xdp_id(PRIV) == old and "198.19.99.254/24" in addrs(PRIV)      # kept for the next run
    assert record(host) == rec | {"pid": os.getpid()}

    XdpStandIn.adopted = adopted
    try:
        second = engine(host, DIRECT, "dr.toml")
        with caplog.at_level(logging.INFO, logger="lb"):
            second.start()
    finally:
        XdpStandIn.adopted = True
    assert xdp_id(PRIV) is None                            # the interface it no longer uses
    assert xdp_id(PUB) not in (None, old)                  # the new run's own program
    assert addrs(PUB) == {"198.18.0.10/32"}
    assert addrs(PRIV) == set()
    assert "added address 198.18.0.10/32" not in caplog.text
    assert "released what the earlier run held and this configuration no longer names: XDP on hld1; " \
           "addresses 198.18.0.20/32 on hld0, 198.19.99.254/24 on hld1" in caplog.text, caplog.text
    rec = record(host)
    assert [(p["ifname"], p["prog_id"]) for p in rec["xdp"]] == [(PUB, xdp_id(PUB))]
    assert [(a["ifname"], a["address"]) for a in rec["addresses"]] == [(PUB, "198.18.0.10/32")]

    second.stop()                                          # a clean stop: nothing left, no record
    assert xdp_id(PUB) is None and addrs(PUB) == set()
    assert record(host) is None


def test_another_program_in_lbs_place_is_left_alone(host, caplog):
    """The program on an interface the new config drops is not the one lb left (an operator
    attached another since): it stays, said once; the addresses go as before."""
    first = engine(host, NAT, "nat.toml")
    first.start()
    first.stop(keep_dataplane=True)
    loaded, prog = load_program()
    try:
        dpattach.detach_xdp(PRIV, dpattach.XDP_FLAGS_SKB_MODE)
        dpattach.attach_xdp(PRIV, prog, "generic")
        theirs = xdp_id(PRIV)
        second = engine(host, DIRECT, "dr.toml")
        with caplog.at_level(logging.INFO, logger="lb"):
            second.start()
        assert xdp_id(PRIV) == theirs
        assert f"hld1 carries another XDP program (id {theirs}) than the lb_xdp_public" in caplog.text, caplog.text
        assert addrs(PRIV) == set()
        second.stop()
    finally:
        loaded.close()
        dpattach.detach_xdp(PRIV, dpattach.XDP_FLAGS_SKB_MODE)


def test_an_address_put_there_by_hand_stays_at_a_stop_and_a_reload_that_drops_it(host, caplog):
    """A single NAT director whose private side already carries the real servers' gateway
    (198.19.99.254/24, hld1's own address, configured by the operator) and a VIP put on hld0 by
    hand: lb finds them there ("already on") and adds only 198.18.0.10.  A reload dropping the
    second VIP, a kept restart and the clean stop remove only what lb added: the gateway and the
    hand's VIP stay (a clean stop took hld1's address away with the rest, and the real servers'
    replies with it), and the record never names them."""
    ip("addr", "add", "198.19.99.254/24", "dev", PRIV)
    ip("addr", "add", "198.18.0.20/32", "dev", PUB)
    first = engine(host, NAT, "nat.toml")
    with caplog.at_level(logging.INFO, logger="lb"):
        first.start()
    assert "address 198.19.99.254/24 already on hld1" in caplog.text
    assert addrs(PUB) == {"198.18.0.10/32", "198.18.0.20/32"}
    assert {a["address"] for a in record(host)["addresses"]} == {"198.18.0.10/32"}
    first.stop(keep_dataplane=True)

    second = engine(host, NAT, "nat.toml")
    second.start()
    assert {a["address"] for a in record(host)["addresses"]} == {"198.18.0.10/32"}
    (host / "nat.toml").write_text(NAT.split("[[virtual_server]]\nname = \"old\"")[0].format(
        instance="held", pub=PUB, priv=PRIV))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lb"):
        second.reload_or_raise()
    assert addrs(PUB) == {"198.18.0.10/32", "198.18.0.20/32"}
    assert "address 198.18.0.20/32 left on hld0: it was there before lb took it" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lb"):
        second.stop()
    assert addrs(PUB) == {"198.18.0.20/32"} and addrs(PRIV) == {"198.19.99.254/24"}
    assert "address 198.19.99.254/24 left on hld1: it was there before lb took it" in caplog.text
    assert record(host) is None


def test_a_step_down_releases_an_address_found_there_and_the_next_takeover_makes_it_lbs(host):
    """With [ha] the role decides: a takeover that finds the VIP put there by hand leaves it the
    operator's, but a step-down releases it all the same (the peer holds the addresses now), and
    the next takeover adds it: lb's from then on, removed at a stop."""
    from lb.ha import addresses

    ip("addr", "add", "198.18.0.10/32", "dev", PUB)
    eng = engine(host, DIRECT, "dr.toml")
    eng.owned = addresses.wanted_addresses(eng.cfg)
    eng.active = True
    eng._take_addresses()
    assert eng._ours(eng.owned) == []
    eng.active = False
    eng._release_addresses()
    assert addrs(PUB) == set()
    eng.active = True
    eng._take_addresses()
    assert addrs(PUB) == {"198.18.0.10/32"} and eng._ours(eng.owned) == eng.owned
    eng._release_ours(eng.owned)
    assert addrs(PUB) == set()


def test_an_interface_gone_since_is_nothing_to_detach(host, caplog):
    """hld1 deleted since the kept stop: its program went with it; said, nothing fails."""
    first = engine(host, NAT, "nat.toml")
    first.start()
    first.stop(keep_dataplane=True)
    ip("link", "del", PRIV)
    second = engine(host, DIRECT, "dr.toml")
    with caplog.at_level(logging.INFO, logger="lb"):
        second.start()
    assert "hld1 (ifindex" in caplog.text and "no longer exists: its lb_xdp_public XDP program went with it" \
        in caplog.text, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    second.stop()


def test_an_interface_made_again_is_found_by_its_name(links):
    """The recorded index names no interface now (hld1 was made again: another index) and the
    program was attached there again (keep_attached does so): found by the name, detached."""
    loaded, prog = load_program()
    try:
        dpattach.attach_xdp(PRIV, prog, "generic")
        pid = xdp_id(PRIV)
        other = dpattach.HeldProgram(PRIV, 99999, "lb_xdp_public", pid + 1000, dpattach.XDP_FLAGS_SKB_MODE)
        what, text = dpattach.detach_held(other)
        assert (what, xdp_id(PRIV)) == ("other", pid), text
        mine = dpattach.HeldProgram(PRIV, 99999, "lb_xdp_public", pid, dpattach.XDP_FLAGS_SKB_MODE)
        assert dpattach.detach_held(mine) == ("detached", f"detached the lb_xdp_public XDP program (id {pid}) "
                                                          f"from {PRIV}")
        assert xdp_id(PRIV) is None
        assert dpattach.detach_held(mine)[0] == "gone"
    finally:
        loaded.close()


@pytest.mark.parametrize("text, why", [
    ("{", "not JSON"),
    ("[]", "not a JSON object"),
    ('{"version": 7}', "version 7, not 1"),
    ('{"version": 1, "xdp": [{"ifname": "x"}]}', "xdp[0]: 'ifindex' is missing or not an integer"),
    ('{"version": 1, "addresses": [{"ifname": "x", "address": "300.1.1.1/32"}]}', "addresses[0]: "),
    ('{"version": 1, "ipvs_sync": [{"state": "both", "ifname": "x", "syncid": 1}]}', "not master or backup"),
])
def test_a_record_that_cannot_be_read_is_said_and_ignored(host, caplog, text, why):
    """A corrupt record: one ERROR line naming the file and what is wrong, no traceback; the
    start goes on (releasing nothing) and writes a good record of its own."""
    path = host / "held.held"
    path.write_text(text)
    path.chmod(0o600)
    eng = engine(host, DIRECT, "dr.toml")
    with caplog.at_level(logging.INFO, logger="lb"):
        eng.start()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and not errors[0].exc_info, caplog.text
    assert errors[0].getMessage().startswith(f"{path}: ignored, what the earlier run held is not known (")
    assert why in errors[0].getMessage()
    assert record(host)["xdp"][0]["ifname"] == PUB
    eng.stop()
    assert record(host) is None


def test_the_record_round_trips():
    h = held.Held((dpattach.HeldProgram("eth0", 2, "lb_xdp_public", 41, 2),),
                  (held.HeldAddress("eth0", ipaddress.ip_interface("2001:db8::10/128")),),
                  (held.HeldSync("master", "eth1", 7),))
    assert held.parse(h.to_json("x")) == h
    assert not held.Held() and h


class SyncStandIn(StartingDataplane):
    calls: list = []

    def release_sync(self, daemons, keep):
        SyncStandIn.calls.append((daemons, keep))
        return []


def test_an_earlier_runs_sync_daemon_is_stopped_or_taken_over(host, monkeypatch):
    """The record names a kernel IPVS sync daemon: a run without [ha] connection sync has the
    data plane stop it (it used to run on for good)."""
    monkeypatch.setattr(lbengine, "IpvsDataplane", SyncStandIn)
    (host / "held.held").write_text(json.dumps({"version": 1, "ipvs_sync": [
        {"state": "master", "ifname": PUB, "syncid": 9}]}))
    (host / "held.held").chmod(0o600)
    SyncStandIn.calls.clear()
    eng = engine(host, DIRECT, "dr.toml")
    eng.start()
    assert SyncStandIn.calls == [([("master", PUB, 9)], False)]
    assert record(host)["ipvs_sync"] == []
    eng.stop()


class FakeKernel:
    """kernel IPVS's sync daemons, stood in for (the netlink half is the IPVS VM's)."""
    running: dict = {}
    stopped: list = []

    def __init__(self, netns=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def daemons(self):
        return list(FakeKernel.running.values())

    def stop_daemon(self, state):
        FakeKernel.stopped.append(state)
        del FakeKernel.running[state]

    def start_daemon(self, state, ifname, syncid):
        FakeKernel.running[state] = ipvs.SyncDaemon(state, ifname, syncid)


@pytest.fixture
def kernel_sync(monkeypatch, tmp_path):
    monkeypatch.setattr(ipvs, "Kernel", FakeKernel)
    monkeypatch.setattr(ipvs, "_proc_net", lambda name: str(tmp_path))       # "ip_vs is there"
    FakeKernel.running = {"master": ipvs.SyncDaemon("master", "pub0", 9),
                          "backup": ipvs.SyncDaemon("backup", "pub0", 4)}      # (someone else's SyncID)
    FakeKernel.stopped = []
    return FakeKernel


def test_ipvs_stops_an_earlier_runs_sync_daemon_only_as_recorded(kernel_sync, tmp_path):
    dp = ipvs.IpvsDataplane("held", run_dir=str(tmp_path))
    assert dp.release_sync([("master", "pub0", 9), ("backup", "pub0", 9)], keep=False) == []
    assert kernel_sync.stopped == ["master"]          # the backup daemon runs another SyncID


def test_ipvs_takes_over_an_earlier_runs_sync_daemon_when_it_syncs_too(kernel_sync, tmp_path):
    """Kept as this run's own: its role's start_sync stops the other role's daemon (the earlier
    run was master, this one comes up as backup), and its clean stop stops them."""
    dp = ipvs.IpvsDataplane("held", run_dir=str(tmp_path))
    del kernel_sync.running["backup"]
    assert dp.release_sync([("master", "pub0", 9)], keep=True) == []
    assert kernel_sync.stopped == [] and dp.held_sync() == [("master", "pub0", 9)]
    dp.start_sync("backup", "pub0", 9)
    assert kernel_sync.stopped == ["master"] and set(kernel_sync.running) == {"backup"}
    dp.stop_sync()
    assert kernel_sync.running == {}


def test_a_failed_start_records_what_it_leaves(host):
    """A start of an adopted data plane that fails once running (pulse's port taken, say): its
    programs serve on, so the record names them, and the VIP it found up; the next start
    releases what its config does not name, as after any kept stop."""
    first = engine(host, NAT, "nat.toml")
    first.start()
    first.stop(keep_dataplane=True)
    second = engine(host, NAT.replace('network = "nat"', 'network = "nat"\n'), "nat2.toml")
    second.start()
    second.stop_failed_start()                          # as lb.engine.run after such a failure
    rec = record(host)
    assert {(p["ifname"], p["prog_id"]) for p in rec["xdp"]} == {(PUB, xdp_id(PUB)), (PRIV, xdp_id(PRIV))}
    assert {a["address"] for a in rec["addresses"]} == {"198.18.0.10/32", "198.18.0.20/32", "198.19.99.254/24"}
    third = engine(host, DIRECT, "dr.toml")
    third.start()
    assert xdp_id(PRIV) is None and addrs(PUB) == {"198.18.0.10/32"} and addrs(PRIV) == set()
    third.stop()
    assert record(host) is None and xdp_id(PUB) is None


def test_an_xdp_data_plane_forgets_an_earlier_runs_sync_daemons_quietly_without_ipvs(monkeypatch, tmp_path, caplog):
    """The record names kernel IPVS sync daemons (an earlier run fell back to IPVS) and this
    kernel has no ip_vs (module not loaded): the XDP data plane's release (base.py's) neither
    loads nor opens IPVS nor logs -- no daemon of it can run -- and nothing stays recorded."""
    from lb.dataplane.xdp import XdpDataplane

    class NoKernel:
        def __init__(self, *_a):
            raise AssertionError("IPVS opened on a kernel without it")

    monkeypatch.setattr(ipvs, "Kernel", NoKernel)
    monkeypatch.setattr(ipvs, "_proc_net", lambda name: str(tmp_path / "no-such" / name))
    caplog.set_level(logging.DEBUG)
    assert XdpDataplane.release_sync(object(), [("master", "pub0", 9)], keep=False) == []
    assert XdpDataplane.release_sync(object(), [("backup", "pub0", 9)], keep=True) == []
    assert caplog.records == []


def test_an_xdp_data_plane_stops_an_earlier_runs_kernel_sync_daemon_even_when_it_syncs(kernel_sync):
    """XDP's connection sync is its own (not the kernel's): a kernel daemon the record names is
    stopped whatever ``keep`` says, and one of another SyncID (someone else's) is left."""
    from lb.dataplane.xdp import XdpDataplane

    assert XdpDataplane.release_sync(object(), [("master", "pub0", 9), ("backup", "pub0", 9)], keep=True) == []
    assert kernel_sync.stopped == ["master"] and set(kernel_sync.running) == {"backup"}
