"""Removing a real server drains it: its established connections go on (weight 0, no new
connections) and it leaves the table when the last one ends."""
from __future__ import annotations

import ipaddress
import itertools

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane.maps import PinnedMaps
from packets_util import CLIENT_MAC, PUB_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, age, loaded_dataplane, real_mac, run

ip = ipaddress.ip_address
REALS = [ip("198.18.1.11"), ip("198.18.1.12"), ip("198.18.1.13")]
_sport = itertools.count(30000)


def table(*idx):
    reals = tuple(RealSpec(REALS[i], 80, 1, "dr") for i in idx)
    # tcpfin 1 s: a closed connection expires quickly
    return TableSpec((ServiceSpec("tcp", ip("198.18.0.10"), 80, "rr", reals, "web"),), timeouts=(900, 1, 300))


@pytest.fixture
def dp():
    with loaded_dataplane("drain") as d:
        yield d


def send(dp, sport, flags):
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst="198.18.0.10") / \
        TCP(sport=sport, dport=80, flags=flags)
    rc, out = run(dp, "lb_xdp_public", pkt)
    return rc, {real_mac(a): str(a) for a in REALS}.get(Ether(out).dst)


def listing(dp):
    with PinnedMaps(dp.instance) as maps:
        [svc] = reader.read_services(maps)
    return {str(r.address): (r.weight, r.active, r.inactive) for r in svc.reals}


def test_removed_server_drains_then_leaves(dp):
    dp.apply(table(0, 1, 2))
    sport = next(_sport)
    rc, server = send(dp, sport, "S")
    assert (rc, server) == (XDP_REDIRECT, "198.18.1.13")
    send(dp, sport, "A")                                   # ESTABLISHED: one active connection
    assert listing(dp)["198.18.1.13"] == (1, 1, 0)

    idx = [i for i, a in enumerate(REALS) if str(a) != server]
    dp.apply(table(*idx))                                  # the config drops rs3
    assert listing(dp)["198.18.1.13"] == (0, 1, 0)         # still listed, weight 0, draining
    assert send(dp, sport, "PA") == (XDP_REDIRECT, server)  # its connection goes on
    for _ in range(4):                                     # new connections avoid it
        assert send(dp, next(_sport), "S")[1] in {"198.18.1.11", "198.18.1.12"}
    assert dp.finish_drains() == 0                         # still active: stays

    send(dp, sport, "FA")                                  # the client closes: FIN_WAIT, inactive
    assert dp.finish_drains() == 0                         # a closing connection still drains
    assert send(dp, sport, "A") == (XDP_REDIRECT, server)
    age(dp, 2.2)                                           # FIN_WAIT (1 s here) times out
    dp.sweep()
    assert dp.finish_drains() == 1
    assert "198.18.1.13" not in listing(dp)
    assert send(dp, sport, "A")[0] == XDP_PASS             # no connection any more: the kernel's


def test_readding_a_draining_server_restores_it(dp):
    dp.apply(table(0, 1, 2))
    sport = next(_sport)
    send(dp, sport, "S")
    send(dp, sport, "A")
    dp.apply(table(0, 1))
    assert listing(dp)["198.18.1.13"][0] == 0
    dp.apply(table(0, 1, 2))
    assert listing(dp)["198.18.1.13"] == (1, 1, 0)
    assert dp.draining == set()


def dead_table(*idx, dead=(), expire=False):
    t = table(*idx)
    svc = t.services[0]
    svc = ServiceSpec(svc.protocol, svc.address, svc.port, svc.scheduler, svc.reals, svc.name,
                      dead=tuple((REALS[i], 80) for i in dead))
    return TableSpec((svc,), timeouts=t.timeouts, expire_nodest_conn=expire)


@pytest.mark.parametrize("expire", [False, True])
def test_dead_server_leaves_at_once_and_expire_nodest_conn(dp, expire):
    dp.apply(dead_table(0, 1, 2, expire=expire))
    sport = next(_sport)
    assert send(dp, sport, "S") == (XDP_REDIRECT, "198.18.1.13")
    send(dp, sport, "A")
    dp.apply(dead_table(0, 1, dead=(2,), expire=expire))   # its health check failed
    assert "198.18.1.13" not in listing(dp)                # no draining for a dead server
    assert send(dp, sport, "PA")[0] == XDP_DROP            # its connection's packets drop
    # expire_nodest_conn = 1: that drop also expired the connection, so the client's new SYN
    # on the same ports is scheduled afresh; = 0: the entry stays and keeps dropping
    rc, server = send(dp, sport, "S")
    if expire:
        assert rc == XDP_REDIRECT and server in {"198.18.1.11", "198.18.1.12"}
    else:
        assert rc == XDP_DROP


@pytest.mark.parametrize("sched", ["sh", "dh"])
def test_a_draining_server_gives_its_hash_buckets_to_the_others(dp, sched):
    """sh and dh: the config removes a real server that still has a connection.  It drains
    (its connection goes on), and its share of the 256 buckets goes to the others at once, as
    IPVS's del_dest rebuilds the table: every new client gets a server.  (The buckets stayed
    with the weight-0 server, and the clients hashing there got none for the whole drain.)"""
    def spec(*idx):
        return TableSpec((ServiceSpec("tcp", ip("198.18.0.10"), 80, sched,
                                      tuple(RealSpec(REALS[i], 80, 1, "dr") for i in idx), "web"),))

    def syn(src, sport):
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=src, dst="198.18.0.10") / TCP(sport=sport, dport=80, flags="S")
        rc, out = run(dp, "lb_xdp_public", pkt)
        return rc, {real_mac(a): str(a) for a in REALS}.get(Ether(out).dst)

    dp.apply(spec(0, 1, 2))
    clients = [f"198.18.{4 + i // 250}.{1 + i % 250}" for i in range(300)]
    picks = {c: syn(c, 40000) for c in clients}
    assert all(rc == XDP_REDIRECT for rc, _ in picks.values())
    gone = picks[clients[0]][1]
    send_ack = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=clients[0], dst="198.18.0.10") / \
        TCP(sport=40000, dport=80, flags="A")
    assert run(dp, "lb_xdp_public", send_ack)[0] == XDP_REDIRECT          # established on `gone`
    dp.apply(spec(*[i for i, a in enumerate(REALS) if str(a) != gone]))
    assert listing(dp)[gone][0] == 0                                      # draining: weight 0
    rc, out = run(dp, "lb_xdp_public", send_ack)                         # its connection goes on
    assert rc == XDP_REDIRECT and Ether(out).dst == real_mac(ip(gone))
    others = {str(a) for a in REALS} - {gone}
    for c in clients[1:]:
        rc, server = syn(c, 40001)
        assert rc == XDP_REDIRECT and server in others, (c, rc, server)
    dp.apply(TableSpec(()))
