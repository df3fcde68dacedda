"""A real server whose MAC the kernel cannot be made to ask for -- the director's own output
filter drops the datagram that starts the resolution, so sendto() says EPERM -- is a next hop
that does not answer (NextHopError, naming the server: it gets no new connections until it
answers), not an OSError that fails the whole apply (a reload undone, a start refused, every
later health change refused) without naming the server."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture
def filtered_ns():
    """A namespace with a link whose peer is down (nothing answers, nothing leaves) and an
    nftables output rule that drops the discard-port datagram resolve() sends."""
    name = f"lbnh{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        def sh(*cmd):
            subprocess.run(["nsenter", f"--net=/run/netns/{name}", *cmd], check=True, capture_output=True)
        sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        sh("ip", "link", "set", "v0", "up")
        sh("ip", "addr", "add", "198.18.1.1/24", "dev", "v0")
        sh("nft", "add", "table", "inet", "lbtest")
        sh("nft", "add", "chain", "inet", "lbtest", "out", "{ type filter hook output priority 0; }")
        sh("nft", "add", "rule", "inet", "lbtest", "out", "udp", "dport", "9", "drop")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_resolution_the_output_filter_refuses_is_a_next_hop_error_naming_the_server(filtered_ns):
    code = ("import ipaddress\n"
            "from lb.dataplane.nexthop import NextHopError, resolve\n"
            "try:\n"
            "    resolve(ipaddress.ip_address('198.18.1.12'), timeout=0.5)\n"
            "except NextHopError as e:\n"
            "    print('NextHopError:', e)\n")
    r = subprocess.run(["nsenter", f"--net=/run/netns/{filtered_ns}", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("NextHopError: real server 198.18.1.12: "), r.stdout
    assert "198.18.1.12's MAC on v0: Operation not permitted" in r.stdout
