"""Announcements in the namespace lab, seen where they matter: the client's neighbour table.

The client holds a stale entry with a wrong MAC for each address (as after another host owned
it); only a gratuitous ARP from the director can correct it, since the client sends nothing to
those addresses meanwhile.  A single director (no [ha]) announces its VIP at start and a VIP a
reload adds; `lb send-arp ADDR DEV` announces any address.  198.18.0.0/15 only."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
WRONG = "02:00:00:00:99:99"
VIP, NEW_VIP, OTHER = "198.18.0.10", "198.18.0.11", "198.18.0.12"


def director_mac(lab) -> str:
    return json.loads(lab.run("director", ["ip", "-j", "link", "show", "pub0"]).stdout)[0]["address"]


def plant(lab, addr: str) -> None:
    """A stale entry for addr pointing at a MAC nobody has."""
    lab.run("client", ["ip", "neigh", "replace", addr, "lladdr", WRONG, "dev", "c0", "nud", "stale"])


def client_mac(lab, addr: str) -> str | None:
    out = json.loads(lab.run("client", ["ip", "-j", "neigh", "show", addr, "dev", "c0"]).stdout or "[]")
    return out[0].get("lladdr") if out else None


def wait_mac(lab, addr: str, mac: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client_mac(lab, addr) != mac:
        assert time.monotonic() < deadline, f"the client still has {client_mac(lab, addr)} for {addr}, not {mac}"
        time.sleep(0.2)


def test_single_director_announces_at_start_and_on_reload(lab, lb_runner, tmp_path):
    mac = director_mac(lab)
    for addr in (VIP, NEW_VIP):
        plant(lab, addr)
    assert client_mac(lab, VIP) == WRONG
    config = tmp_path / "lab-dr.toml"
    base = (REPO / "configs" / "lab-dr.toml").read_text()
    config.write_text(base)
    proc = lb_runner.start(config, wait=False).wait_running(timeout=180)   # bcc compiles: slow under load
    wait_mac(lab, VIP, mac)
    proc.wait_log("announced 1 addresses")
    assert client_mac(lab, NEW_VIP) == WRONG            # not announced: not the director's yet

    config.write_text(base + f'\n[[virtual_server]]\nname = "web2"\naddress = "{NEW_VIP}"\nport = 80\n'
                             f'  [[virtual_server.real_server]]\n  name = "rs1"\n  address = "198.18.1.11"\n')
    p = subprocess.run([LB, "reload", "--instance", "lab"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    wait_mac(lab, NEW_VIP, mac)
    lab.run("client", ["ip", "neigh", "del", NEW_VIP, "dev", "c0"], check=False)
    lab.run("client", ["ip", "neigh", "del", VIP, "dev", "c0"], check=False)


def test_an_announcement_leaves_the_interface_out_of_promiscuous_mode(lab, monkeypatch):
    """The frames reach the client (its stale entry corrected) and the socket that sent them
    never put pub0 into promiscuous mode (scapy's default for its layer-2 sockets: every
    announcement and garp_refresh toggled it, a kernel log line each)."""
    import ipaddress

    import scapy.arch.linux as scapy_linux

    from lb.ha import announce
    from lb.ha.addresses import OwnedAddress

    calls = []
    real = scapy_linux.set_promisc
    monkeypatch.setattr(scapy_linux, "set_promisc", lambda s, iff, val=1: (calls.append((iff, val)), real(s, iff, val)))
    mac = director_mac(lab)
    plant(lab, OTHER)
    owned = [OwnedAddress("pub0", ipaddress.ip_interface(f"{OTHER}/32"))]
    assert lab.in_netns("director", announce.announce, owned, 2, 0.05) == 2
    wait_mac(lab, OTHER, mac)
    assert calls == []
    lab.run("client", ["ip", "neigh", "del", OTHER, "dev", "c0"], check=False)


def test_send_arp(lab):
    mac = director_mac(lab)
    plant(lab, OTHER)
    p = lab.run("director", [LB, "send-arp", OTHER, "pub0", "--count", "2"], check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"{OTHER} announced on pub0 ({mac}): 2 gratuitous ARP frames"
    wait_mac(lab, OTHER, mac)
    lab.run("client", ["ip", "neigh", "del", OTHER, "dev", "c0"], check=False)
    p = lab.run("director", [LB, "send-arp", OTHER, "nope0"], check=False)
    assert p.returncode == 1 and p.stderr.strip() == "lb: send-arp: interface nope0 does not exist"
