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

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L

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
