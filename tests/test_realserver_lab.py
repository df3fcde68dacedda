"""`lb realserver check|setup` inside the lab's real-server namespaces (never on the host), for a
VIP the lab does not configure (198.18.0.20): what check reports on a fresh real server, what
setup changes (and, run again, does not), that an ARP request for the VIP on the real servers'
segment goes unanswered once it is set up (and is answered when arp_ignore is taken back), that
a director then serves the VIP through the real server, and what --undo takes back.  Direct
routing with both ARP methods, and tunneling with lb's decap program."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from lab_http import get

REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
VIP = "198.18.0.20"
ARP_KEYS = ("arp_ignore", "arp_announce")
PROBE = """
import sys
from scapy.all import ARP, Ether, conf, srp
conf.verb = 0
ans, _ = srp(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc="198.18.1.1", pdst=sys.argv[1]),
             iface="priv0", timeout=1.5, retry=1)
print(" ".join(sorted({r.hwsrc for _, r in ans})))
"""


def realserver(lab, node, *args):
    return lab.run(node, [LB, "realserver", *args], check=False, timeout=240)


def sysctl(lab, node, dev, key, value=None):
    path = f"net.ipv4.conf.{dev}.{key}"
    if value is None:
        return int(lab.run(node, ["sysctl", "-n", path]).stdout)
    lab.run(node, ["sysctl", "-qw", f"{path}={value}"])


def mac(lab, node, dev="eth0"):
    return json.loads(lab.run(node, ["ip", "-j", "link", "show", dev]).stdout)[0]["address"]


def arp_answers(lab, addr) -> set[str]:
    """The MACs that answer an ARP request for addr on the real servers' segment (bounded)."""
    out = lab.run("director", [sys.executable, "-c", PROBE, addr], timeout=60).stdout.split()
    return set(out)


@pytest.fixture
def fresh(lab):
    """rs1 and rs2 as a real server is before anyone set it up for DR (the lab's ARP sysctls off);
    the lab's values and addresses come back afterwards, whatever the test did."""
    saved = {(n, d, k): sysctl(lab, n, d, k) for n in ("rs1", "rs2") for d in ("all", "eth0")
             for k in ARP_KEYS + ("rp_filter",)}
    for (n, d, k) in saved:
        if k in ARP_KEYS:
            sysctl(lab, n, d, k, 0)
    yield
    for n in ("rs1", "rs2"):
        realserver(lab, n, "setup", "--undo", "--mode", "dr", VIP)
        lab.run(n, ["ip", "addr", "del", f"{VIP}/32", "dev", "lo"], check=False)
        lab.run(n, ["arptables", "-F"], check=False)
    for (n, d, k), v in saved.items():
        sysctl(lab, n, d, k, v)


def director_config(tmp_path, network, reals=("rs1",)):
    text = f"""[global]
instance = "lab"
public_interface = "pub0"
private_interface = "priv0"
network = "{network}"

[[virtual_server]]
name = "web20"
address = "{VIP}"
port = 80
scheduler = "rr"
""" + "".join(f'\n  [[virtual_server.real_server]]\n  name = "{r}"\n  address = "198.18.1.1{r[-1]}"\n'
              for r in reals)
    path = tmp_path / f"lab-{network}-20.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("lab", ["direct"], indirect=True)
def test_direct_routing_with_sysctls(lab, fresh, lb_runner, tmp_path):
    p = realserver(lab, "rs1", "check", "--mode", "dr", VIP)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stdout.splitlines() == [
        f"real server for direct routing to {VIP} (ARP by sysctl):",
        f"  missing  {VIP}/32 on lo: the real server takes the VIP's packets as its own and answers from the VIP",
        f"           fix: ip addr add {VIP}/32 dev lo",
        "  missing  arp_ignore 1 on eth0 (now 0): ARP requests for the VIP arriving on eth0 go unanswered "
        "(the director answers them)",
        "           fix: sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.eth0.arp_ignore=1",
        "  missing  arp_announce 2 on eth0 (now 0): this host's own ARP requests on eth0 never carry the VIP "
        "as their source",
        "           fix: sysctl -w net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.eth0.arp_announce=2",
        f"3 of 3 missing: `lb realserver setup --mode dr {VIP}` makes them so",
    ]
    p = realserver(lab, "rs1", "setup", "--mode", "dr", VIP)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[:3] == [      # the VIP last: until ARP for it is off, rs1 would answer
        "  net.ipv4.conf.all.arp_ignore: 0 -> 1; net.ipv4.conf.eth0.arp_ignore: 0 -> 1",
        "  net.ipv4.conf.all.arp_announce: 0 -> 2; net.ipv4.conf.eth0.arp_announce: 0 -> 2",
        f"  added {VIP}/32 to lo"]
    assert realserver(lab, "rs1", "check", "--mode", "dr", VIP).returncode == 0
    assert realserver(lab, "rs1", "setup", "--mode", "dr", VIP).stdout.startswith("nothing to do\n")
    assert arp_answers(lab, VIP) == set()            # the VIP is rs1's, yet nobody answers ARP for it
    # the point of arp_ignore: without it rs1 answers, and would take the director's traffic
    for d in ("all", "eth0"):
        sysctl(lab, "rs1", d, "arp_ignore", 0)
    assert arp_answers(lab, VIP) == {mac(lab, "rs1")}
    assert realserver(lab, "rs1", "check", "--mode", "dr", VIP).returncode == 1
    assert realserver(lab, "rs1", "setup", "--mode", "dr", VIP).returncode == 0
    assert arp_answers(lab, VIP) == set()

    lb_runner.start(director_config(tmp_path, "direct"), wait=False).wait_running(timeout=180)
    assert get(lab, 3, VIP) == ["rs1"] * 3

    p = realserver(lab, "rs1", "setup", "--undo", "--mode", "dr", VIP)
    assert p.returncode == 0 and f"  removed {VIP}/32 from lo" in p.stdout.splitlines()
    assert "  net.ipv4.conf.all.arp_ignore: 1 -> 0" in p.stdout.splitlines()
    assert realserver(lab, "rs1", "check", "--mode", "dr", VIP).returncode == 1
    assert sysctl(lab, "rs1", "eth0", "arp_announce") == 0


@pytest.mark.parametrize("lab", ["direct"], indirect=True)
def test_direct_routing_with_arptables(lab, fresh):
    rip = "198.18.1.12"
    p = realserver(lab, "rs2", "setup", "--mode", "dr", "--arp", "arptables", VIP)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[:3] == [      # the VIP last, once its ARP is dropped
        f"  arptables -A INPUT -d {VIP} -j DROP",
        f"  arptables -A OUTPUT -s {VIP} -j mangle --mangle-ip-s {rip}",
        f"  added {VIP}/32 to lo"]
    assert sysctl(lab, "rs2", "all", "arp_ignore") == 0          # this method leaves the sysctls alone
    assert arp_answers(lab, VIP) == set()
    assert realserver(lab, "rs2", "check", "--mode", "dr", "--arp", "arptables", VIP).returncode == 0
    # the sysctl method's check says what is missing there
    assert realserver(lab, "rs2", "check", "--mode", "dr", VIP).returncode == 1
    p = realserver(lab, "rs2", "setup", "--undo", "--mode", "dr", VIP)
    assert p.returncode == 0 and f"  arptables -D INPUT -d {VIP} -j DROP" in p.stdout.splitlines()
    assert VIP not in lab.run("rs2", ["arptables", "-L", "-n"]).stdout


@pytest.mark.parametrize("lab", ["tunnel"], indirect=True)
def test_tunneling_with_decap(lab, lb_runner, tmp_path):
    """The tunnel lab's rs1 without its decap program and with a strict rp_filter: setup attaches
    lb decap and loosens rp_filter; a tunnel-mode director then serves the VIP through rs1."""
    lab.run("rs1", [LB, "decap", "detach", "eth0"], timeout=60)
    rp = sysctl(lab, "rs1", "all", "rp_filter")
    sysctl(lab, "rs1", "all", "rp_filter", 1)
    try:
        p = realserver(lab, "rs1", "check", "--mode", "tunnel", VIP)
        assert p.returncode == 1
        missing = [ln for ln in p.stdout.splitlines() if ln.startswith("  missing")]
        assert [m.split(":")[0] for m in missing] == [
            f"  missing  {VIP}/32 on lo", f"  missing  lb decap on eth0 to {VIP}", "  missing  rp_filter not strict on eth0 (now 1)"]
        assert f"           fix: lb decap attach eth0 --from DIRECTOR --vip {VIP}" in p.stdout.splitlines()
        p = realserver(lab, "rs1", "setup", "--mode", "tunnel", VIP)       # decap needs the directors
        assert p.returncode == 1 and "give the directors' addresses with --from" in p.stderr, p.stdout + p.stderr
        p = realserver(lab, "rs1", "setup", "--mode", "tunnel", "--from", lab.topology.DIRECTOR_PRIV, VIP)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "  net.ipv4.conf.all.rp_filter: 1 -> 2" in p.stdout.splitlines()
        assert any(ln.startswith("  lb decap attached to eth0") for ln in p.stdout.splitlines())

        lb_runner.start(director_config(tmp_path, "tunnel"), wait=False).wait_running(timeout=180)
        assert get(lab, 3, VIP) == ["rs1"] * 3

        p = realserver(lab, "rs1", "setup", "--undo", "--mode", "tunnel", VIP)
        assert p.returncode == 0 and "  lb decap detached from eth0" in p.stdout.splitlines()
        assert sysctl(lab, "rs1", "all", "rp_filter") == 1
        p = realserver(lab, "rs1", "check", "--mode", "tunnel", VIP)
        assert p.returncode == 1 and f"  missing  lb decap on eth0 to {VIP}: " in p.stdout
    finally:
        realserver(lab, "rs1", "setup", "--undo", "--mode", "tunnel", VIP)
        sysctl(lab, "rs1", "all", "rp_filter", rp)
        lab.run("rs1", ["ip", "addr", "del", f"{VIP}/32", "dev", "lo"], check=False)
