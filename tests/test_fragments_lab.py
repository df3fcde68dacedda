"""A datagram too big for the path, through lb in the NAT lab: the client's kernel sends a
3,000-byte UDP datagram to the VIP in fragments (veth MTU 1500), rs1 gets it whole and echoes
it, in fragments too, and the client gets the echo whole from the VIP (bpf/lb_frag.h).

The fragments after the first carry no ports.  lb used to pass every fragment to the director's
kernel, which holds the VIP: the request was answered "port unreachable" by the director itself,
and a NAT reply's fragments would have gone on with rs1's address as their source."""
from __future__ import annotations

import socket
import threading
from pathlib import Path

from lab_http import lb_counters

LAB_NETWORK = "nat"
REPO = Path(__file__).resolve().parents[1]
PORT = 7007
UDP_SERVICE = f"""
[[virtual_server]]
name = "echo"
address = "198.18.0.10"
port = {PORT}
protocol = "udp"
scheduler = "rr"

  [[virtual_server.real_server]]
  name = "rs1"
  address = "198.18.1.11"
  port = {PORT}
"""


def test_a_datagram_in_fragments_and_its_echo_cross_lb_whole(lab, lb_runner, tmp_path):
    cfg = tmp_path / "frag.toml"
    cfg.write_text((REPO / "configs" / "lab-nat.toml").read_text() + UDP_SERVICE)
    lb_runner.start(cfg)
    server = lab.in_netns("rs1", socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    client = lab.in_netns("client", socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    echoed = []

    def echo():
        try:
            data, peer = server.recvfrom(65535)
            echoed.append((len(data), peer[0]))
            server.sendto(data, peer)
        except OSError:
            pass
    try:
        server.bind(("198.18.1.11", PORT))
        server.settimeout(10)
        client.settimeout(10)
        t = threading.Thread(target=echo, daemon=True)
        t.start()
        before = lb_counters().get("fragment_forwarded", 0)
        payload = bytes(range(256)) * 12           # 3,072 bytes: three fragments each way
        client.sendto(payload, ("198.18.0.10", PORT))
        data, peer = client.recvfrom(65535)
        t.join(10)
        assert echoed == [(len(payload), "198.18.0.2")]        # rs1 got it whole, from the client
        assert data == payload and peer == ("198.18.0.10", PORT)   # and the client the echo, from the VIP
        assert lb_counters().get("fragment_forwarded", 0) - before >= 4, lb_counters()
    finally:
        server.close()
        client.close()
