"""`lb run` with network = "tunnel" in the namespace lab: the director sends each client
packet inside IPIP, the real servers take it off with `lb decap` and answer the client.
The lab's kernel has no ipip module, so a real server without the decap program gets
nothing: that proves the packets really travel encapsulated."""
from __future__ import annotations

import shutil
import sys
import subprocess
from pathlib import Path

import pytest

LAB_NETWORK = "tunnel"       # lb lab up --network tunnel: the DR lab with `lb decap` on the real servers

REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
VIP = "198.18.0.10"
REALS = {"rs1": "198.18.1.11", "rs2": "198.18.1.12", "rs3": "198.18.1.13"}


@pytest.fixture(scope="module")
def director(lab, lb_module_runner, tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "lab-tunnel.toml"
    shutil.copyfile(REPO / "configs" / "lab-tunnel.toml", config)
    for rs in REALS:          # the lab attached the decap program (XDP on eth0), to its VIPs only
        p = lab.run(rs, ["ip", "-d", "link", "show", "dev", "eth0"], timeout=10)
        assert "prog/xdp" in p.stdout, p.stdout
        p = lab.run(rs, [sys.executable, "-c", "from lb.dataplane import decap; "
                         "print(sorted(map(str, decap.attached_vips('eth0'))))"], timeout=30)
        assert p.stdout.strip() == str(sorted([VIP, "2001:2::10"])), p.stdout + p.stderr
    return lb_module_runner.start(config)


def _curl(lab, timeout=3):
    return lab.run("client", ["curl", "-sS", "--noproxy", "*", "-m", str(timeout), f"http://{VIP}/"],
                   check=False, timeout=timeout + 10)


def _list(*extra):
    p = subprocess.run([LB, "list", "-n", "--instance", "lab", *extra], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_every_real_server_answers_through_the_tunnel(lab, director):
    bodies = []
    for _ in range(6):
        p = _curl(lab)
        assert p.returncode == 0, p.stderr
        bodies.append(p.stdout.strip())
    assert sorted(bodies) == ["rs1", "rs1", "rs2", "rs2", "rs3", "rs3"]
    out = _list()
    for addr in REALS.values():
        assert "  -> %-28s %-7s %-6d " % (f"{addr}:80", "Tunnel", 1) in out
    # ipvsadm -L -n --tun-info: the tunnel type column, ipip as IPVS's default tunnel
    out = _list("--tun-info")
    assert "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn" in out
    for addr in REALS.values():
        assert "  -> %-28s %-7s %-13s %-6d " % (f"{addr}:80", "Tunnel", "ipip", 1) in out


def test_without_decap_a_real_server_gets_nothing(lab, director):
    """rs2 without the decap program: its kernel drops IPIP (no module), so its share fails."""
    p = lab.run("rs2", [LB, "decap", "detach", "eth0"], check=False, timeout=60)
    assert p.returncode == 0, p.stderr
    try:
        results = [_curl(lab, timeout=2) for _ in range(3)]
        ok = sorted(r.stdout.strip() for r in results if r.returncode == 0)
        assert ok == ["rs1", "rs3"] and sum(r.returncode != 0 for r in results) == 1
    finally:
        p = lab.run("rs2", [LB, "decap", "attach", "eth0",
                            *[a for src in lab.topology.decap_sources() for a in ("--from", src)],
                            *[a for vip in lab.topology.decap_vips() for a in ("--vip", vip)]],
                    check=False, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "decap attached to eth0" in p.stdout and REALS["rs2"] in p.stdout
    assert _curl(lab).returncode == 0


def test_status_shows_the_data_path_counters(lab, director):
    p = subprocess.run([LB, "status", "--instance", "lab"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    [line] = [ln for ln in p.stdout.splitlines() if ln.startswith("data path: ")]
    counts = dict(item.rsplit(" ", 1) for item in line[len("data path: "):].split(", "))
    assert set(counts) >= {"no real server", "tcp not syn", "fragment", "tunnel too big"}
    assert counts["tunnel too big"] == "0" and all(v.isdigit() for v in counts.values())
