"""`lb run --config keepalived.conf` in the namespace lab: keepalived.conf files written for the lab
(configs/keepalived-lab-dr.conf: LVS-DR with HTTP_GET checks, one director; keepalived-lab-nat.conf:
LVS-NAT behind a VRRP pair, which becomes lb's [ha]) serve HTTP through the VIP.

The NAT file's backup (director2) is not started: the primary, hearing no peer for deadtime,
becomes active and takes the VIP and the real servers' gateway 198.18.1.254, as a lone VRRP
master would.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from lab_http import get

pytestmark = pytest.mark.parametrize("lab", ["direct", "nat"], indirect=True)

REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
CONFIGS = {"direct": REPO / "configs" / "keepalived-lab-dr.conf", "nat": REPO / "configs" / "keepalived-lab-nat.conf"}
FORWARD = {"direct": "Route", "nat": "Masq"}
REALS = {"rs1": "198.18.1.11", "rs2": "198.18.1.12", "rs3": "198.18.1.13"}


def lb(*args: str) -> str:
    p = subprocess.run([LB, *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_keepalived_conf_serves_through_the_vip(lab, lb_runner, tmp_path) -> None:
    network = lab.status()["network"]
    conf = tmp_path / "keepalived.conf"
    text = CONFIGS[network].read_text()
    if network == "nat":  # [ha]: the heartbeat key in a file of the test's own
        key = tmp_path / "ha.key"
        key.write_bytes(os.urandom(32).hex().encode())
        key.chmod(0o600)
        text = text.replace("global_defs {\n", f"global_defs {{\n    lb_ha_key_file {key}\n", 1)
    conf.write_text(text)
    assert lb("check", "--config", str(conf)).startswith(f"{conf}: ok (1 virtual server, 3 real servers")

    proc = lb_runner.start(conf)
    if network == "nat":
        proc.wait_log("-> active", timeout=30)  # no peer heard for deadtime: the primary takes over
    listing = lb("list", "-n", "--instance", "lab")
    assert "TCP  198.18.0.10:80 rr\n" in listing, listing
    for addr in REALS.values():
        assert f"  -> {addr}:80" in listing and FORWARD[network] in listing, listing

    bodies = get(lab, 6)
    assert sorted(bodies) == sorted(["rs1", "rs2", "rs3"] * 2), bodies

    status = json.loads(lb("status", "--json", "--instance", "lab"))
    [svc] = status["services"]
    assert {r["name"]: r["health"] for r in svc["real_servers"]} == {a: "up" for a in REALS.values()}
    if network == "nat":
        assert status["role"] == "active" and status["ha"]["node"] == "primary", status.get("ha")
        # the config's warnings are logged at start and again at each reload
        line = text.split("\n").index("vrrp_instance VI_PUB {") + 1
        mapped = f"config: {conf}:{line}: warning: vrrp_instance[VI_PUB]: mapped to [ha]"
        assert proc.log().count(mapped) == 1, proc.log()
        assert lb("reload", "--instance", "lab") == f"reloaded {conf}\n"
        assert proc.log().count(mapped) == 2, proc.log()
        assert sorted(get(lab, 3)) == ["rs1", "rs2", "rs3"]  # still serving, round robin
