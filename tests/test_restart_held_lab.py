"""A restart that keeps the data plane, whose new configuration no longer names an interface and
addresses (lb/held.py), in the direct-routing lab.

The first run is direct routing with [ha] (its peer, director2, runs no lb: it becomes active
alone) and a nat_router on priv0, so priv0 carries lb's guard program and 198.18.1.254, and a
second VIP 198.18.0.20 is on pub0.  `lb stop --keep-dataplane` leaves all of it; the next run is
the plain direct-routing lab (no [ha], no nat_router, no second VIP).  It used to leave the
guard attached to priv0 and both addresses up for good; now they go once it has started, and
the connection to the VIP it still serves keeps its real server across the restart."""
from __future__ import annotations

import os
import time

import pytest
from lab_http import connect, get, request
from test_restart import CONFIGS, REALS, SERVERS, VIP, director_addrs, lb, xdp_attached

from lb.lab.haconfig import ha_section

pytestmark = pytest.mark.parametrize("lab", ["direct"], indirect=True)

VIP2 = "198.18.0.20"
NAT_ROUTER = "198.18.1.254"
RECORD = "/run/lb/lab.held"

SECOND_VIP = f"""
[[virtual_server]]
name = "old"
address = "{VIP2}"
port = 80
scheduler = "rr"
  [[virtual_server.real_server]]
  name = "rs1"
  address = "{REALS['rs1']}"
  port = 80
"""


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def test_a_kept_restart_that_drops_an_interface_and_addresses_releases_them(lab, lb_runner, tmp_path):
    key = tmp_path / "ha.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    base = CONFIGS["direct"].read_text()
    old = tmp_path / "old.toml"
    old.write_text(base.replace('network = "direct"\n', f'network = "direct"\nnat_router = "{NAT_ROUTER}/24"\n'
                                                         f'nat_router_device = "priv0"\n\n{ha_section(key)}\n', 1)
                   + SECOND_VIP)
    try:
        first = lb_runner.start(old)
        first.wait_log("role starting -> active", timeout=20)
        wait_for(lambda: {VIP, VIP2, NAT_ROUTER} <= director_addrs(lab), 20, "the active director's addresses")
        assert xdp_attached(lab, "pub0") and xdp_attached(lab, "priv0")     # priv0: the lease's guard
        with connect(lab, VIP, timeout=3.0) as s:
            rs = request(s)
            assert rs in SERVERS

            p = lb("stop", "--instance", "lab", "--keep-dataplane")
            assert p.returncode == 0, p.stderr
            assert first.wait(30) == 0, first.log()
            # left in place for the next run, as before
            assert xdp_attached(lab, "priv0") and {VIP, VIP2, NAT_ROUTER} <= director_addrs(lab)
            assert os.path.exists(RECORD)

            second = lb_runner.start(CONFIGS["direct"])
            assert "(adopted maps in /sys/fs/bpf/lb/lab)" in second.log()
            assert "released what the earlier run held and this configuration no longer names: XDP on priv0; " \
                   f"addresses {VIP2}/32 on pub0, {NAT_ROUTER}/24 on priv0" in second.log(), second.log()
            assert not xdp_attached(lab, "priv0")
            assert xdp_attached(lab, "pub0")
            addrs = director_addrs(lab)
            assert VIP in addrs and VIP2 not in addrs and NAT_ROUTER not in addrs, addrs
            assert request(s) == rs                 # the VIP still served: its connection flows on
        assert set(get(lab, 3)) == SERVERS          # and new ones are scheduled
    finally:
        for addr, dev in ((f"{VIP2}/32", "pub0"), (f"{NAT_ROUTER}/24", "priv0")):
            lab.run("director", ["ip", "addr", "del", addr, "dev", dev], check=False, timeout=10)
