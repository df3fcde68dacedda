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

from conftest import displace_xdp
from lab_http import wait_until
from lb import control
from lb.lab.haconfig import ha_section
from lb.lab.topology import DIRECTOR_PUB6

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


def _pub0_has(lab, address: str) -> bool:
    info = json.loads(lab.run("director", ["ip", "-j", "addr", "show", "dev", "pub0"]).stdout)
    return any(a.get("local") == address for i in info for a in i.get("addr_info", []))


def _xdp_prog(lab, dev: str = "pub0") -> str | None:
    m = re.search(r"prog/xdp id (\d+)", lab.run("director", ["ip", "-d", "link", "show", "dev", dev]).stdout)
    return m.group(1) if m else None


@pytest.mark.parametrize("lab", ["direct"], indirect=True)
def test_what_an_interface_loses_is_put_back(lab, lb_runner, tmp_path):
    """The director's pub0 goes down and up (a switch port's flap): the kernel drops its IPv6
    addresses, the VIP among them, and before lb watched for it the VIP never came back -- the
    director stopped answering neighbour solicitations for it.  Now lb adds it back (and
    announces it), as it does an address removed by hand and an XDP program taken off the
    interface (not one another tool put in its place); `lb status` counts each, and clients get
    answers again."""
    cfg = tmp_path / "lab6.toml"
    cfg.write_text(config("direct"))
    proc = lb_runner.start(cfg)
    assert sorted(curl6(lab, 3)) == ["rs1", "rs2", "rs3"]

    lab.run("director", ["ip", "link", "set", "pub0", "down"])
    assert not _pub0_has(lab, VIP6)              # the kernel's doing (keep_addr_on_down = 0)
    lab.run("director", ["ip", "link", "set", "pub0", "up"])
    # the director's own address went too: that is its network configuration's to put back (as
    # systemd-networkd does); lb holds the VIP
    assert lab.restore_addresses("director") == [f"{DIRECTOR_PUB6}/64 on pub0"]
    wait_until(lambda: _pub0_has(lab, VIP6), 15, "the IPv6 VIP back on pub0 after the link flap")
    assert sorted(curl6(lab, 3)) == ["rs1", "rs2", "rs3"]
    proc.wait_log(f"address {VIP6}/128 was gone from pub0: added again")

    lab.run("director", ["ip", "-6", "addr", "del", f"{VIP6}/128", "dev", "pub0"])
    wait_until(lambda: _pub0_has(lab, VIP6), 15, "the IPv6 VIP back after ip addr del")

    prog = _xdp_prog(lab)
    lab.run("director", ["ip", "link", "set", "dev", "pub0", "xdp", "off"])
    assert _xdp_prog(lab) is None
    wait_until(lambda: _xdp_prog(lab) == prog, 15, "lb's XDP program back on pub0")
    assert sorted(curl6(lab, 3)) == ["rs1", "rs2", "rs3"]     # DR: only lb's program forwards
    proc.wait_log("the public XDP program was gone from pub0: attached again (native mode)")

    # another tool's program in lb's place is left there (two tools would swap programs forever),
    # said at ERROR; once it is gone, lb's is back
    displace_xdp(lab, "director", "pub0", "198.18.0.3")
    other = _xdp_prog(lab)
    assert other not in (None, prog)
    proc.wait_log(f"another XDP program is attached to pub0 (id {other}, lb_xdp_decap) in place of lb's "
                  "public program: left there")
    assert _xdp_prog(lab) == other
    lab.run("director", [LB, "decap", "detach", "pub0"], timeout=60)
    wait_until(lambda: _xdp_prog(lab) == prog, 15, "lb's XDP program back on pub0 after the other one left")

    def ownership():     # counted just after the attach the wait above saw
        own = control.request("lab", "status", timeout=10)["status"]["ownership"]
        return own if own["xdp_attached"] == 2 else None
    own = wait_until(ownership, 15, "lb status counting the second attach")
    assert (own["addresses_restored"], own["xdp_attached"]) == (2, 2), own
    out = subprocess.run([LB, "status", "--instance", "lab"], capture_output=True, text=True, timeout=60).stdout
    assert re.search(r"^ownership: 2 addresses added back, 2 XDP programs attached again; last \S+: the public "
                     r"XDP program was gone from pub0", out, re.M), out
