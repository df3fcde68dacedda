"""A persistence template that runs out while a connection it controls is still there lives 60 s
more (IPVS ip_vs_conn_expire looks at n_control when the template's timer fires).  lb's sweep runs
every few seconds: what counts is whether such a connection was there when the template ran out,
not whether it still is when the sweep comes."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from packets_util import CLIENT_MAC, PUB_MAC, XDP_REDIRECT, age, loaded_dataplane, real_mac, run, template_items

from lb.dataplane import RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane import layout as L
from lb.dataplane.maps import PinnedMaps

ip = ipaddress.ip_address
VIP, CLIENT = "198.18.0.10", "198.18.0.2"
REALS = ("198.18.1.11", "198.18.1.12")
SVC = ServiceSpec("tcp", ip(VIP), 80, "rr", tuple(RealSpec(ip(a), 80, 1, "dr") for a in REALS), persistent=300)


@pytest.fixture
def dp():
    with loaded_dataplane("pwindow", table=TableSpec((SVC,))) as d:
        yield d


def send(dp, sport, flags):
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags=flags)
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    return {real_mac(a): a for a in REALS}[Ether(out).dst]


def test_a_connection_that_ended_after_the_template_ran_out_still_extends_it(dp):
    send(dp, 46000, "S")
    first = send(dp, 46000, "A")
    age(dp, 292)
    send(dp, 46000, "R")            # CLOSE: the connection runs out at 302 s, the template at 300 s
    age(dp, 12)
    dp.sweep()                      # at 304 s
    assert len(template_items(dp.maps)) == 1
    age(dp, 1)
    assert send(dp, 46001, "S") == first


def test_without_a_connection_at_its_end_the_template_goes(dp):
    send(dp, 47000, "S")
    send(dp, 47000, "A")
    age(dp, 280)
    send(dp, 47000, "R")            # runs out at 290 s, before the template (300 s)
    age(dp, 24)
    dp.sweep()
    assert template_items(dp.maps) == []


def test_extended_only_while_controlled(dp):
    send(dp, 48000, "S")
    send(dp, 48000, "A")
    age(dp, 292)
    send(dp, 48000, "R")            # runs out at 302 s: the template to 360 s, then gone
    age(dp, 69)
    dp.sweep()                      # at 361 s
    assert template_items(dp.maps) == []


def test_a_template_met_after_it_ran_out_still_decides_while_it_controls_a_connection(dp):
    """Before lb's sweep comes: a client's new connection meets its template after the timeout,
    while a connection the template made still lives.  IPVS kept it when its timer ran out (60 s
    more, 60 s its timeout from then on), so the connection goes to the template's server and
    re-arms it for 60 s.  The data path cannot count a template's connections, so it does not take
    an expired template for absent (which would send this client elsewhere); re-arming one, it
    gives it IPVS's 60 s, which the sweep then keeps or ends as it would have."""
    send(dp, 49000, "S")
    first = send(dp, 49000, "A")    # ESTABLISHED: lives 900 s
    age(dp, 301)                    # the template ran out at 300 s; no sweep since
    assert send(dp, 49001, "S") == first
    [(_k, v)] = template_items(dp.maps)
    assert L.PERSIST.unpack(v)[2] == 60          # its timeout: IPVS's 60 s, not the service's 300
    dp.sweep()
    [(_k, v)] = template_items(dp.maps)
    assert L.PERSIST.unpack(v)[2] == 60
    assert send(dp, 49002, "S") == first


# ---- a template the sweep found controlling nothing live (LB_PERSIST_F_IDLE): past its timeout
# IPVS has freed it, so the data path does not wait for the next sweep to take it for absent ----

def persist_counts(dp) -> dict[str, int]:
    """PersistConn per real server, as `lb list --persistent-conn` shows it"""
    with PinnedMaps(dp.instance) as maps:
        [svc] = reader.read_services(maps)
    return {str(r.address): r.persist for r in svc.reals}


def templates(dp) -> list[tuple[str, str, int]]:
    """(table, real server, timeout in seconds) of every template"""
    out = []
    for name in ("lb_persist", "lb_persist_embryo"):
        for _k, v in dp.maps[name].items(batch=False):
            _last, real, timeout = L.PERSIST.unpack(v)
            addr = L.Real.unpack(dp.maps["lb_reals"].get(L.U32.pack(real))).addr
            out.append((name, str(addr), timeout & L.PERSIST_TIMEOUT))
    return out


def test_a_template_that_ran_out_controlling_nothing_is_gone_before_the_sweep(dp):
    """The client's only connection ended and the sweep removed it; the template (300 s) runs out
    with no sweep since.  IPVS freed it then (nothing it controlled was left), so the client's
    next connection is scheduled afresh -- rr's next server, not the one the stale template
    named -- and a new template names that one; PersistConn moves with it."""
    first = send(dp, 50000, "S")
    send(dp, 50000, "A")
    send(dp, 50000, "R")            # CLOSE: 10 s
    age(dp, 20)
    dp.sweep()                      # removes it; the template has 280 s left and controls nothing
    assert templates(dp) == [("lb_persist", first, 300)]
    assert persist_counts(dp)[first] == 1
    age(dp, 281)                    # the template ran out at 300 s; no sweep since
    [other] = [a for a in REALS if a != first]
    assert send(dp, 50001, "S") == other
    assert templates(dp) == [("lb_persist_embryo", other, 300)]
    assert persist_counts(dp) == {first: 0, other: 1}
    assert send(dp, 50002, "S") == other           # the new template decides
    dp.sweep()
    assert persist_counts(dp) == {first: 0, other: 1}


def test_a_template_that_ran_out_controlling_a_live_connection_stays_after_a_sweep(dp):
    """A sweep while the template's connection lives leaves it controlling: when it runs out
    before the next sweep, the client's new connection still goes to its server, and the
    template is re-armed for 60 s (IPVS kept it), its PersistConn unchanged."""
    send(dp, 51000, "S")
    first = send(dp, 51000, "A")    # ESTABLISHED: lives 900 s
    age(dp, 200)
    dp.sweep()
    age(dp, 101)                    # the template ran out at 300 s; no sweep since
    assert send(dp, 51001, "S") == first
    assert templates(dp) == [("lb_persist", first, 60)]
    assert persist_counts(dp)[first] == 1 and sum(persist_counts(dp).values()) == 1


def test_a_connection_through_a_template_since_the_sweep_keeps_it_controlling(dp):
    """The sweep found the template controlling nothing (its connection ended), then the client
    came back before it ran out: that new connection is one it controls, so when it runs out
    (before any sweep) the client still keeps its server, as in IPVS."""
    send(dp, 52000, "S")
    first = send(dp, 52000, "A")
    send(dp, 52000, "R")
    age(dp, 20)
    dp.sweep()                      # the connection is gone: the template controls nothing
    age(dp, 100)
    assert send(dp, 52001, "S") == first           # through the template, re-armed for 300 s
    send(dp, 52001, "A")            # ESTABLISHED: lives 900 s
    age(dp, 301)                    # the template ran out; no sweep since
    assert send(dp, 52002, "S") == first
    assert templates(dp) == [("lb_persist", first, 60)]
    assert sum(persist_counts(dp).values()) == 1
