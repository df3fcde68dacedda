"""IPv6 through lb in the dual-stack lab (2001:2::/48, RFC 5180): a real client (curl -6) reaches
real servers (nginx listening on [::]:80) through the VIP 2001:2::10 by direct routing, NAT and
tunnel (IPv6-in-IPv6, taken off by lb's decap on the real servers); and an HA takeover is
announced by an unsolicited neighbour advertisement that the client takes (its neighbour
entry for the VIP moves to the new director's MAC)."""
from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from lab_http import wait_until
from lb import control
from lb.lab.haconfig import ha_section

LAB_IPV6 = True
REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
VIP6 = "2001:2::10"
REALS6 = {"rs1": "2001:2:0:1::11", "rs2": "2001:2:0:1::12", "rs3": "2001:2:0:1::13"}

CONFIG = """\
[global]
instance = "{instance}"
public_interface = "pub0"
private_interface = "priv0"
network = "{network}"
{extra}
[[virtual_server]]
name = "web6"
address = "{vip}"
port = 80
scheduler = "rr"
{reals}"""

REAL = """
  [[virtual_server.real_server]]
  name = "{name}"
  address = "{address}"
  port = 80
"""


def config(network: str, instance: str = "lab", extra: str = "") -> str:
    if network == "nat" and not extra:
        extra = 'nat_router = "198.18.1.254/24"\n'
    reals = "".join(REAL.format(name=n, address=a) for n, a in REALS6.items())
    return CONFIG.format(instance=instance, network=network, extra=extra, vip=VIP6, reals=reals)


def curl6(lab, n: int) -> list[str]:
    out = []
    for _ in range(n):
        p = lab.run("client", ["curl", "-6", "-g", "-sS", "--noproxy", "*", "-m", "5", f"http://[{VIP6}]/"],
                    check=False, timeout=15)
        assert p.returncode == 0, p.stderr
        out.append(p.stdout.strip())
    return out


def lb_list(instance: str = "lab") -> str:
    return subprocess.run([LB, "list", "-n", "--instance", instance], capture_output=True, text=True,
                          timeout=60, check=True).stdout


@pytest.mark.parametrize("lab", ["direct", "nat", "tunnel"], indirect=True)
def test_ipv6_clients_reach_every_real_server(lab, lb_runner, tmp_path):
    """curl -6 from the client, six new connections: rr over the three nginx servers, each
    answering over IPv6 (DR: straight back to the client; NAT: through the director, which
    rewrites the source back to the VIP; tunnel: the request inside an outer IPv6 header)."""
    network = lab.status()["network"]
    cfg = tmp_path / "lab6.toml"
    cfg.write_text(config(network))
    lb_runner.start(cfg)
    bodies = curl6(lab, 6)
    assert collections.Counter(bodies) == {"rs1": 2, "rs2": 2, "rs3": 2}, bodies
    listing = lb_list()
    assert f"TCP  [{VIP6}]:80 rr" in listing, listing
    forward = {"direct": "Route", "nat": "Masq", "tunnel": "Tunnel"}[network]
    for a in REALS6.values():
        assert re.search(rf"^  -> \[{re.escape(a)}\]:80 +{forward} +1 ", listing, re.M), listing


def _mac(lab, node: str, dev: str = "pub0") -> str:
    return json.loads(lab.run(node, ["ip", "-j", "link", "show", "dev", dev]).stdout)[0]["address"]


def _client_neigh_mac(lab) -> str | None:
    out = json.loads(lab.run("client", ["ip", "-j", "-6", "neigh", "show", VIP6]).stdout or "[]")
    return out[0].get("lladdr") if out else None


def _role(instance: str) -> str | None:
    try:
        return control.request(instance, "status", timeout=5).get("status", {}).get("role")
    except (OSError, ValueError, control.NotRunning):
        return None




@pytest.mark.parametrize("lab", ["direct"], indirect=True)
def test_takeover_is_announced_by_unsolicited_na(lab, ha_runner, tmp_path):
    """Two directors, an IPv6 VIP: the client talks to it through the primary (its neighbour
    entry for 2001:2::10 holds the primary's MAC); the primary dies (kill -9, links down); the
    backup takes the VIP over and announces it with unsolicited neighbour advertisements
    (override flag set), and the client's entry moves to the backup's MAC."""
    key = tmp_path / "ha.key"
    key.write_bytes(b"lab-ipv6-shared-secret-0123456789")
    os.chmod(key, 0o600)
    cfgs = {}
    for node, inst in (("director", "lab"), ("director2", "lab2")):
        cfgs[node] = tmp_path / f"{inst}.toml"
        cfgs[node].write_text(config("direct", inst, "\n" + ha_section(key)))
    try:
        d1 = ha_runner.start("director", cfgs["director"])
        d1.wait_log("role starting -> active", timeout=30)
        d2 = ha_runner.start("director2", cfgs["director2"])
        d2.wait_log("role starting -> backup", timeout=30)
        mac1, mac2 = _mac(lab, "director"), _mac(lab, "director2")
        assert curl6(lab, 3)
        assert _client_neigh_mac(lab) == mac1

        d1.signal(signal.SIGKILL)
        for dev in ("pub0", "priv0"):
            lab.run("director", ["ip", "link", "set", "dev", dev, "down"])
        wait_until(lambda: _role("lab2") == "active", 60, "director2 active")
        assert VIP6 in lab.run("director2", ["ip", "-6", "addr", "show", "dev", "pub0"]).stdout
        # no traffic from the client meanwhile: only the advertisement can move its entry
        wait_until(lambda: _client_neigh_mac(lab) == mac2, 30, "the client's neighbour entry to move to director2")
    finally:
        for node in ("director", "director2"):
            lab.run(node, ["ip", "-6", "addr", "flush", "dev", "pub0", "to", f"{VIP6}/128"], check=False)
