"""A real server a failed health check took out and that passes again gets its id back, and with
it the connections that still point there (IPVS takes the dest back from its trash): they
forward again and `lb list` counts them, instead of dropping until they expire (15 minutes for
an established TCP connection) and then being reset by the director's own kernel."""
from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane.maps import PinnedMaps
from packets_util import CLIENT_MAC, PUB_MAC, XDP_DROP, XDP_REDIRECT, connect, loaded_dataplane, run

ip = ipaddress.ip_address


def real(n: int) -> RealSpec:
    return RealSpec(ip(f"198.18.1.{n}"), 80, 1, "dr")


def table(reals, dead=()) -> TableSpec:
    return TableSpec((ServiceSpec("tcp", ip("198.18.0.10"), 80, "rr", tuple(reals), "web", dead=tuple(dead)),))


def send(dp) -> int:
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst="198.18.0.10") / TCP(sport=40000, dport=80,
                                                                                              flags="PA")
    return run(dp, "lb_xdp_public", pkt)[0]


def active(dp) -> dict[str, int]:
    with PinnedMaps(dp.instance) as m:
        return {str(r.address): r.active for r in reader.read_services(m)[0].reals}


def test_a_server_back_from_a_failed_check_takes_its_connections_back():
    with loaded_dataplane("revive") as dp:
        dp.apply(table([real(11), real(12)]))
        server = connect(dp, sport=40000)
        other = 23 - int(server.split(".")[-1])
        assert send(dp) == XDP_REDIRECT and active(dp)[server] == 1
        dp.apply(table([real(other)], dead=[(ip(server), 80)]))     # its check fails
        assert send(dp) == XDP_DROP                                   # expire_nodest_conn = 0
        dp.apply(table([real(11), real(12)]))                        # and passes again
        assert send(dp) == XDP_REDIRECT
        assert active(dp) == {"198.18.1.11": int(server.endswith(".11")), "198.18.1.12": int(server.endswith(".12"))}

