"""NAT replies of an established connection (bpf/lb_reply.h): a real server's ACKs are rewritten
back to the VIP from the reverse entry alone, and the connection still behaves as IPVS's one
entry per flow: replies count in OutPkts, keep the connection's timer, and any reply or client
packet that moves the state (FIN, RST, a SYN) moves it as IPVS's tables say."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane import program
from lb.dataplane import reader
from lb.dataplane.maps import PinnedMaps

from packets_util import (CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_REDIRECT, XDP_TX, age, loaded_dataplane,
                          real_mac, run)

ip = ipaddress.ip_address
CLIENT, VIP, REAL = "198.18.0.2", "198.18.0.20", "198.18.1.11"
CLIENT6, VIP6, REAL6 = "2001:2::2", "2001:2::20", "2001:2:0:1::11"
TABLE = TableSpec((ServiceSpec("tcp", ip(VIP), 80, "rr", (RealSpec(ip(REAL), 8080, 1, "nat"),)),
                   ServiceSpec("tcp", ip(VIP6), 80, "rr", (RealSpec(ip(REAL6), 8080, 1, "nat"),))))
L3 = {4: IP, 6: IPv6}


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("natrep", table=TABLE) as d:
        yield d


def request(d, sport, flags, payload=b"", v=4):
    client, vip = (CLIENT, VIP) if v == 4 else (CLIENT6, VIP6)
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / L3[v](src=client, dst=vip) / \
        TCP(sport=sport, dport=80, flags=flags, seq=1000, ack=0 if flags == "S" else 5001) / payload
    rc, _ = run(d, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT, (flags, rc)


def reply(d, sport, flags, payload=b"", v=4):
    """The real server's reply to client port sport: (XDP action, the frame out)"""
    real, client = (REAL, CLIENT) if v == 4 else (REAL6, CLIENT6)
    pkt = Ether(src=real_mac(real), dst=PRIV_MAC) / L3[v](src=real, dst=client) / \
        TCP(sport=8080, dport=sport, flags=flags, seq=5000, ack=1001) / payload
    return run(d, "lb_xdp_private", pkt)


def handshake(d, sport, v=4):
    request(d, sport, "S", v=v)
    assert reply(d, sport, "SA", v=v)[0] == XDP_TX
    request(d, sport, "A", v=v)


def connection(d, sport):
    """`lb list -c` of the connection from client port sport: (state, expire)"""
    with PinnedMaps(d.instance) as maps:
        [row] = [r for r in reader.read_connections(maps) if r.client[1] == sport]
    return row.state, row.expire


def out_counts(d, vip=VIP):
    """(OutPkts, OutBytes) of the service's real server, as `lb list --stats` reads them"""
    with PinnedMaps(d.instance) as maps:
        [svc] = [r for r in reader.read_services(maps) if str(r.address) == vip]
    [r] = svc.reals
    return r.stats.outpkts, r.stats.outbytes


def entries(d, sport):
    """(connection entry, reverse entry) of the connection from client port sport"""
    fwd = L.ConnKey(ip(CLIENT), ip(VIP), sport, 80, 6).pack()
    rev = L.ConnKey(ip(REAL), ip(CLIENT), 8080, sport, 6, 1).pack()
    return tuple(L.Conn.unpack(d.maps["lb_conns"].get(k)) for k in (fwd, rev))


def test_the_premise_an_established_connections_reply_ack_keeps_its_state():
    """IPVS's OUTPUT table, usual and secure_tcp's: an ACK in ESTABLISHED stays ESTABLISHED (what
    lets a reply skip the connection's entry)"""
    es = L.TCP_S["ESTABLISHED"]
    idx = (1 * 4 + 2) * len(L.TCP_S) + es         # (OUTPUT, ack, ESTABLISHED)
    assert program.TCP_FSM[idx] == es and program.TCP_FSM_SECURE[idx] == es


@pytest.mark.parametrize("v", [4, 6])
def test_established_replies_are_rewritten_to_the_vip_and_counted(dp, v):
    sport = 43000 + v
    client, vip, real = (CLIENT, VIP, REAL) if v == 4 else (CLIENT6, VIP6, REAL6)
    handshake(dp, sport, v)
    pkts0, bytes0 = out_counts(dp, vip)
    for i in range(5):
        rc, out = reply(dp, sport, "PA", b"data%d" % i, v)
        assert rc == XDP_TX
        want = Ether(src=PUB_MAC, dst=CLIENT_MAC) / L3[v](src=vip, dst=client) / \
            TCP(sport=80, dport=sport, flags="PA", seq=5000, ack=1001) / (b"data%d" % i)
        assert out == bytes(want)                     # checksums included: scapy computed them
    sent = len(L3[v](src=real, dst=client) / TCP() / b"data0")
    assert out_counts(dp, vip) == (pkts0 + 5, bytes0 + 5 * sent)
    if v == 4:    # the connection's reverse entry carries the mark from the first of them on
        assert entries(dp, sport)[1].flags & L.CONN_F_EST_REPLY


def test_replies_alone_keep_the_connections_timer(dp):
    """A client quiet for 100 s while its real server replies: the connection's timer runs from
    the replies (IPVS refreshes one entry from both directions), not from the client's last packet"""
    handshake(dp, 43100)
    assert reply(dp, 43100, "PA", b"x")[0] == XDP_TX
    age(dp, 100)
    assert connection(dp, 43100) == ("ESTABLISHED", 800)
    for _ in range(3):
        assert reply(dp, 43100, "PA", b"y")[0] == XDP_TX
    state, left = connection(dp, 43100)
    assert state == "ESTABLISHED" and left >= 899


def test_a_client_packet_then_a_reply_stamp_both_entries(dp):
    """The client's packet stamps the connection; the next reply, its reverse entry LB_TOUCH_NS
    old, stamps both: the replies after it (from the reverse entry alone, for LB_TOUCH_NS) are
    never further than that from the connection's stamp"""
    handshake(dp, 43200)
    assert reply(dp, 43200, "PA", b"x")[0] == XDP_TX
    age(dp, 1.0)
    request(dp, 43200, "PA", b"more")            # the connection's stamp, not the reverse entry's
    fwd, rev = entries(dp, 43200)
    assert fwd.last_ns > rev.last_ns
    assert reply(dp, 43200, "PA", b"z")[0] == XDP_TX
    fwd, rev = entries(dp, 43200)
    assert fwd.last_ns == rev.last_ns


def test_the_real_servers_fin_moves_the_state(dp):
    handshake(dp, 43300)
    assert reply(dp, 43300, "PA", b"x")[0] == XDP_TX      # the mark is set
    assert reply(dp, 43300, "FA")[0] == XDP_TX
    assert connection(dp, 43300)[0] == "FIN_WAIT"          # OUTPUT fin: ESTABLISHED -> FIN_WAIT
    assert not entries(dp, 43300)[1].flags & L.CONN_F_EST_REPLY


def test_after_the_clients_fin_a_reply_follows_the_state_table_again(dp):
    """The client's FIN (ESTABLISHED -> CLOSE_WAIT) takes the mark off at once: its SYN on the
    same port then makes the connection SYN_RECV, and the real server's ACK moves it on to
    ESTABLISHED (OUTPUT ack: SYN_RECV -> ESTABLISHED), as in IPVS"""
    handshake(dp, 43400)
    assert reply(dp, 43400, "PA", b"x")[0] == XDP_TX      # the mark is set
    request(dp, 43400, "FA")
    assert connection(dp, 43400)[0] == "CLOSE_WAIT"
    assert not entries(dp, 43400)[1].flags & L.CONN_F_EST_REPLY
    request(dp, 43400, "S")
    assert connection(dp, 43400)[0] == "SYN_RECV"
    assert reply(dp, 43400, "A")[0] == XDP_TX
    assert connection(dp, 43400)[0] == "ESTABLISHED"
