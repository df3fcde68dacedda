"""Scale-out in the lab (`lb lab up --scale-out 3`): three active directors behind the router's
ECMP, each announcing the VIPs over BGP through ExaBGP; in direct routing and in tunnel mode.

300 long-lived HTTP keep-alive connections from 64 client addresses spread over the three
directors (each director's `lb list -c` shows some).  One director is removed abruptly (its links
go down: the router withdraws its routes when the BGP hold timer, 3 s here, expires) and
gracefully (`lb stop`: withdrawn at once, then the drain period), and added back each time: new
connections never fail once the router has withdrawn, and >= 99% of the long-lived connections --
those that were on the removed director too -- keep exchanging data with the same real server.
A director that loses its last live real server for a VIP withdraws that VIP while the others keep
it.  The time from the failure to the router's withdrawal is written to LB_SCALEOUT_RESULT when
set (bench/scaleout.py); nothing here asserts a duration."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import LB_BIN, LbRunner, displace_xdp

N_FLOWS = 300
SURVIVE = 0.99
ROUND_S = 25.0           # a round waits this long: a flow through a dead director waits for the
                         # hold timer, then for its next TCP retransmission
ROUTE_S = 60.0           # announcements: an lb start (compile), settle, the BGP session


def _needs() -> str | None:
    if os.geteuid() != 0 or not shutil.which("nsenter") or not os.path.exists("/usr/sbin/nginx"):
        return "the namespace lab needs root, nsenter and /usr/sbin/nginx"
    for path, pkg in (("/usr/sbin/bird", "bird2"), ("/usr/sbin/exabgp", "exabgp")):
        if not os.path.exists(path):
            return f"the scale-out lab needs {path} (Debian package {pkg}, installed by scripts/setup.sh)"
    return None


@pytest.fixture(scope="module", params=["direct", "tunnel"])
def lab(request, lab_exclusive):
    """The scale-out lab with 3 directors (this module's own `lab`: the lab group of the suite)."""
    why = _needs()
    if why:
        pytest.skip(why)
    from lb import lab as _lab

    try:
        _lab.up(request.param, scale_out=3)
        yield _lab
    finally:
        _lab.down()


def _remove_dataplanes(lab) -> None:
    from lb.lab import scaleout

    scaleout.remove_dataplanes(3)


class Group:
    """`lb run` on each director of the lab, and what the tests ask of them."""

    def __init__(self, lab, tmp: Path):
        from lb.lab import scaleout as so

        self.so, self.lab, self.tmp = so, lab, tmp
        self.network = lab.status()["network"]
        self.nodes = so.directors(3)
        self.runner = LbRunner(lab, tmp, remove=_remove_dataplanes)
        self.procs = {}
        self.vip = so.VIPS[0]
        self.prefix = f"{self.vip}/32"

    def config(self, node) -> Path:
        path = self.tmp / f"{node}.toml"
        path.write_text(self.so.director_config(node, self.network))
        return path

    def start(self, node, wait=True):
        p = self.runner.start(self.config(node), wait=False, node=node, instance=self.so.instance(node))
        self.procs[node] = p
        if wait:
            p.wait_running(timeout=180)
        return p

    def addrs(self, nodes) -> set[str]:
        return {self.so.pub_addr(n) for n in nodes}

    def wait_routes(self, nodes, prefix=None) -> float:
        return self.so.wait_nexthops(prefix or self.prefix, self.addrs(nodes), timeout=ROUTE_S)

    def conns(self, node) -> set[tuple[str, int]]:
        """Client (address, port) of the connections to the VIP in the director's `lb list -nc`."""
        out = subprocess.run([LB_BIN, "list", "-nc", "--instance", self.so.instance(node)], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        got = set()
        for line in out.splitlines():
            w = line.split()
            if len(w) == 6 and w[0] == "TCP" and w[4] == f"{self.vip}:80":
                addr, _, port = w[3].rpartition(":")
                got.add((addr, int(port)))
        return got

    def status(self, node) -> dict:
        out = self.lab.run(node, [LB_BIN, "status", "--json", "--instance", self.so.instance(node)], timeout=30)
        return json.loads(out.stdout)

    def new_connections(self, count=40) -> dict:
        from lb.lab.flows import new_connections

        return new_connections("client", self.vip, 80, self.so.CLIENT_SOURCES[::-1], count)


@pytest.fixture(scope="module")
def group(lab, tmp_path_factory):
    _remove_dataplanes(lab)
    g = Group(lab, tmp_path_factory.mktemp("scaleout"))
    try:
        for node in g.nodes:              # compiled side by side
            g.start(node, wait=False)
        for node in g.nodes:
            g.procs[node].wait_running(timeout=180)
        g.wait_routes(g.nodes)
        g.wait_routes(g.nodes, f"{g.so.VIPS[1]}/32")
        yield g
    finally:
        g.runner.cleanup()


def _record(key: str, value: float, g: Group) -> None:
    path = os.environ.get("LB_SCALEOUT_RESULT")
    if not path:
        return
    doc = json.loads(Path(path).read_text()) if os.path.exists(path) else {}
    doc.setdefault(g.network, {})[key] = round(value, 3)
    Path(path).write_text(json.dumps(doc))


def _check_round(flows, owner, result, where: str, of_interest=()) -> None:
    same = [i for i in owner if result.get(i) == owner[i]]
    lost = {i: result.get(i) for i in owner if result.get(i) != owner[i]}
    assert len(same) >= SURVIVE * len(owner), (
        f"{where}: {len(same)}/{len(owner)} connections kept their real server; lost: "
        f"{dict(list(lost.items())[:10])}")
    if of_interest:
        kept = [i for i in of_interest if result.get(i) == owner[i]]
        assert len(kept) >= SURVIVE * len(of_interest), (
            f"{where}: {len(kept)}/{len(of_interest)} of the removed director's connections kept their real "
            f"server; lost: {[(flows.clients[i], result.get(i)) for i in of_interest if i not in kept][:10]}")


def _round_during(flows, action) -> dict:
    """A round of requests sent right after ``action()`` (they are in flight while the router
    still sends the removed director's flows to it)."""
    import threading

    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", flows.round(ROUND_S)))
    action()
    t.start()
    return box, t


def test_flows_spread_survive_removal_and_return(group, lab):
    from lb.lab.flows import Flows

    g, so = group, group.so
    with Flows("client", g.vip, 80, N_FLOWS, so.CLIENT_SOURCES) as flows:
        first = flows.round(ROUND_S)
        owner = {i: r for i, r in first.items() if isinstance(r, str)}
        assert len(owner) == N_FLOWS, {i: r for i, r in first.items() if not isinstance(r, str)}
        assert set(owner.values()) == {"rs1", "rs2", "rs3"}
        # spread over all three: each director's `lb list -c` shows some of them
        ours = {(a, p): i for i, (a, p) in enumerate(flows.clients)}
        on = {node: {ours[c] for c in g.conns(node) if c in ours} for node in g.nodes}
        assert all(on[node] for node in g.nodes), {n: len(v) for n, v in on.items()}
        assert set().union(*on.values()) == set(range(N_FLOWS))

        # abruptly: director3's links go down; the router withdraws it when the hold timer expires
        victim = g.nodes[2]
        t0 = time.monotonic()
        box, t = _round_during(flows, lambda: so.set_links(victim, False))
        g.wait_routes(g.nodes[:2])
        _record("abrupt_withdrawal_s", time.monotonic() - t0, g)
        fresh = g.new_connections()
        assert fresh["failed"] == [] and fresh["ok"] == 40, fresh
        t.join(ROUND_S + 10)
        _check_round(flows, owner, box["r"], "abrupt removal", on[victim])
        # the others took its flows mid-flow (sloppy): they are in their tables now
        adopted = on[victim] & {ours[c] for node in g.nodes[:2] for c in g.conns(node) if c in ours}
        assert len(adopted) >= SURVIVE * len(on[victim]), (len(adopted), len(on[victim]))
        _check_round(flows, owner, flows.round(ROUND_S), "after the abrupt removal")

        # back: its sessions come up again, its real servers are readmitted, it settles, announces
        so.set_links(victim, True)
        t0 = time.monotonic()
        g.wait_routes(g.nodes)
        _record("return_s", time.monotonic() - t0, g)
        _check_round(flows, owner, flows.round(ROUND_S), "director3 back")
        assert g.new_connections()["failed"] == []

        # gracefully: `lb stop` withdraws at once, forwards for the drain, then stops
        victim = g.nodes[1]
        moved = {ours[c] for c in g.conns(victim) if c in ours}
        t0 = time.monotonic()
        stop = subprocess.Popen([LB_BIN, "stop", "--instance", so.instance(victim)])
        box, t = _round_during(flows, lambda: None)
        g.wait_routes([g.nodes[0], g.nodes[2]])
        _record("graceful_withdrawal_s", time.monotonic() - t0, g)
        assert stop.wait(60) == 0
        fresh = g.new_connections()
        assert fresh["failed"] == [] and fresh["ok"] == 40, fresh
        t.join(ROUND_S + 10)
        _check_round(flows, owner, box["r"], "graceful removal", moved)
        assert not os.path.exists(f"/sys/fs/bpf/lb/{so.instance(victim)}")
        assert g.procs[victim].wait(30) == 0

        # and back: a fresh lb run (no connection entries) takes its share sloppily
        g.start(victim)
        g.wait_routes(g.nodes)
        _check_round(flows, owner, flows.round(ROUND_S), "director2 back")
        _check_round(flows, owner, flows.round(ROUND_S), "director2 back, again")
        assert g.new_connections()["failed"] == []
        st = g.status(victim)["bgp"]
        assert st["neighbors"][0]["state"] == "up" and f"{g.vip}/32" in st["announced"]


NFT_BLOCK = """table inet lbtest {
    chain out {
        type filter hook output priority 0; policy accept;
        ip daddr %s tcp dport %d drop
    }
}
"""


def test_a_director_without_a_live_real_server_withdraws_that_vip(group, lab):
    """director3 alone loses rs3:8080, the only real server of VIPS[1] (its health checks are
    dropped on their way out): it withdraws that VIP, the others keep it, VIPS[0] stays on all."""
    g, so = group, group.so
    node = g.nodes[2]
    vip2 = f"{so.VIPS[1]}/32"
    g.wait_routes(g.nodes)
    g.wait_routes(g.nodes, vip2)
    lab.run(node, ["nft", "-f", "-"], input=NFT_BLOCK % (lab.REALS["rs3"], so.SOLO_PORT), timeout=10)
    try:
        g.wait_routes(g.nodes[:2], vip2)
        assert so.nexthops(g.prefix) == g.addrs(g.nodes)
        text = lab.run(node, [LB_BIN, "status", "--instance", so.instance(node)], timeout=30).stdout
        assert f"neighbor {so.ROUTER_PUB} AS {so.ROUTER_AS} from {so.pub_addr(node)}: up" in text, text
        assert f"route {g.prefix} med 10 community {so.DIRECTOR_AS}:100: announced" in text, text
        assert f"route {vip2}: withdrawn: virtual service solo (tcp {vip2[:-3]}:{so.SOLO_PORT}) has no usable " \
               f"real server" in text, text
        vips = {v["prefix"]: v for v in g.status(node)["bgp"]["vips"]}
        assert not vips[vip2]["servable"] and "has no usable real server" in vips[vip2]["reason"]
        assert vips[g.prefix]["servable"]
        res = __import__("lb.lab.flows", fromlist=["new_connections"]).new_connections(
            "client", so.VIPS[1], so.SOLO_PORT, so.CLIENT_SOURCES, 20)
        assert res["failed"] == [] and res["servers"] == {"rs3": 20}
    finally:
        lab.run(node, ["nft", "delete", "table", "inet", "lbtest"], check=False, timeout=10)
    g.wait_routes(g.nodes, vip2)


def test_a_director_whose_program_is_displaced_withdraws_until_it_is_back(group, lab):
    """Another XDP program takes director2's pub0 (lb leaves it there, as two tools would swap
    programs forever): nothing of lb forwards there, so director2 withdraws its VIPs while the
    others keep them; once the other program is gone, lb's is attached again and the routes
    come back.  (The VIPs stayed announced: the ECMP share sent to a director that dropped it.)"""
    g, so = group, group.so
    node = g.nodes[1]
    g.wait_routes(g.nodes)
    displace_xdp(lab, node, "pub0", "198.18.0.254")
    try:
        g.wait_routes([g.nodes[0], g.nodes[2]])
        vips = {v["prefix"]: v for v in g.status(node)["bgp"]["vips"]}
        assert not vips[g.prefix]["servable"] and vips[g.prefix]["reason"] == "the data plane is not attached"
        assert g.new_connections()["failed"] == []
    finally:
        lab.run(node, [LB_BIN, "decap", "detach", "pub0"], check=False, timeout=60)
    g.wait_routes(g.nodes)


def test_kill_9_withdraws_through_the_speakers_watchdog(group, lab):
    """lb killed -9 leaves ExaBGP (and the data plane) running: the agent sees lb's process gone
    and withdraws; the next lb run adopts ExaBGP and announces again."""
    g, so = group, group.so
    node = g.nodes[0]
    from lb.bgp import speaker

    exabgp = speaker.running_pid(so.instance(node))
    assert exabgp is not None
    t0 = time.monotonic()
    g.procs[node].signal(signal.SIGKILL)
    g.procs[node].wait(10)
    g.wait_routes(g.nodes[1:])
    _record("kill9_withdrawal_s", time.monotonic() - t0, g)
    assert speaker.running_pid(so.instance(node)) == exabgp       # the speaker outlived lb
    assert g.new_connections()["failed"] == []
    g.start(node)                                                 # adopts the pins and ExaBGP
    g.wait_routes(g.nodes)
    assert speaker.running_pid(so.instance(node)) == exabgp
    assert "adopted ExaBGP" in g.procs[node].log()
