"""A datagram too big for the path, through lb in the NAT lab (dual stack): the client's kernel
sends a 3,072-byte UDP datagram to the VIP in fragments (veth MTU 1500), rs1 gets it whole and
echoes it, in fragments too, and the client gets the echo whole from the VIP (bpf/lb_frag.h).

The fragments after the first carry no ports.  lb used to pass every fragment to the director's
kernel, which holds the VIP: the request was answered "port unreachable" by the director itself,
and a NAT reply's fragments would have gone on with rs1's address as their source.  IPv6's go
through lb_xdp_frag6_*, where a first fragment follows only a connection its flow already has:
the IPv6 flow opens with a short datagram, the IPv4 one with the big one itself."""
from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from lab_http import lb_counters

LAB_NETWORK = "nat"
LAB_IPV6 = True
REPO = Path(__file__).resolve().parents[1]
PORT = 7007
# family: (VIP, rs1, client)
ADDRS = {4: ("198.18.0.10", "198.18.1.11", "198.18.0.2"), 6: ("2001:2::10", "2001:2:0:1::11", "2001:2::2")}
UDP_SERVICE = """
[[virtual_server]]
name = "echo{family}"
address = "{vip}"
port = {port}
protocol = "udp"
scheduler = "rr"
  [virtual_server.monitor]
  kind = "none"                 # no check datagrams to the echo server: it counts what it gets

  [[virtual_server.real_server]]
  name = "rs1"
  address = "{real}"
  port = {port}
"""


@pytest.mark.parametrize("family", [4, 6])
def test_a_datagram_in_fragments_and_its_echo_cross_lb_whole(lab, lb_runner, tmp_path, family):
    vip, real, client_addr = ADDRS[family]
    cfg = tmp_path / "frag.toml"
    cfg.write_text((REPO / "configs" / "lab-nat.toml").read_text() +
                   UDP_SERVICE.format(family=family, vip=vip, real=real, port=PORT))
    lb_runner.start(cfg)
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    server = lab.in_netns("rs1", socket.socket, af, socket.SOCK_DGRAM)
    client = lab.in_netns("client", socket.socket, af, socket.SOCK_DGRAM)
    opening = [] if family == 4 else [b"hello"]
    echoed = []

    def echo():
        try:
            for _ in range(len(opening) + 1):
                data, peer = server.recvfrom(65535)
                echoed.append((len(data), peer[0]))
                server.sendto(data, peer)
        except OSError:
            pass
    try:
        server.bind((real, PORT))
        server.settimeout(10)
        client.settimeout(10)
        t = threading.Thread(target=echo, daemon=True)
        t.start()
        for first in opening:
            client.sendto(first, (vip, PORT))
            assert client.recvfrom(65535)[0] == first
        before = lb_counters().get("fragment_forwarded", 0)
        payload = bytes(range(256)) * 12           # 3,072 bytes: three fragments each way
        client.sendto(payload, (vip, PORT))
        data, peer = client.recvfrom(65535)
        t.join(10)
        # rs1 got it whole, from the client; and the client the echo, from the VIP
        assert echoed == [(len(m), client_addr) for m in opening] + [(len(payload), client_addr)]
        assert data == payload and peer[:2] == (vip, PORT)
        assert lb_counters().get("fragment_forwarded", 0) - before >= 4, lb_counters()
    finally:
        server.close()
        client.close()
