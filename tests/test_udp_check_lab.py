"""A UDP virtual server whose monitor is send/expect is checked over UDP (datagrams), not TCP.

Before the fix, engine.check_spec turned only the "tcp" kind into "udp" for a UDP service, so a
send/expect monitor (what lvs.cf's send/expect give) connected over TCP and every real server was
marked down.  Here the real servers answer on UDP only (a small responder started in their
namespaces by the test): their checks succeed and the service answers through the VIP.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lb.config import loads
from lb.engine import check_spec

LAB_NETWORK = "nat"
REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
PORT = 5300
REALS = {"rs1": "198.18.1.11", "rs2": "198.18.1.12", "rs3": "198.18.1.13"}

# the lab's NAT director ([global] of configs/lab-nat.toml) with one UDP service
CONFIG = (REPO / "configs" / "lab-nat.toml").read_text().split("[[virtual_server]]")[0] + f"""
[[virtual_server]]
name = "echo"
address = "198.18.0.10"
port = {PORT}
protocol = "udp"
scheduler = "rr"
  [virtual_server.monitor]
  kind = "send_expect"
  send = "ping\\n"
  expect = "pong"
  interval = 0.2
  timeout = 1.0
  reentry = 0.5
  connect_timeout = 1.0
""" + "".join(f"""
  [[virtual_server.real_server]]
  name = "{name}"
  address = "{addr}"
""" for name, addr in REALS.items())

# answers every datagram with "pong NAME" (bounded: it exits after 10 minutes at most)
RESPONDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(1.0)
end = time.monotonic() + 600
while time.monotonic() < end:
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    s.sendto(b"pong " + sys.argv[3].encode() + b"\\n", peer)
"""


def test_send_expect_of_a_udp_service_is_a_udp_check() -> None:
    cfg = loads(CONFIG)
    vs = cfg.virtual_servers[0]
    spec, _ = check_spec(vs, vs.real_servers[0])
    assert (spec.kind, spec.send, spec.expect, spec.port) == ("udp", "ping\n", "pong", PORT)
    # a TCP service keeps its TCP send/expect
    tcp = loads(CONFIG.replace('protocol = "udp"', 'protocol = "tcp"')).virtual_servers[0]
    assert check_spec(tcp, tcp.real_servers[0])[0].kind == "send_expect"


@pytest.fixture
def responders(lab):
    procs = [lab.popen(name, [sys.executable, "-c", RESPONDER, addr, str(PORT), name],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, addr in REALS.items()]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def status() -> dict:
    p = subprocess.run([LB, "status", "--json", "--instance", "lab"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def udp_ask(lab) -> str:
    s = lab.socket_in("client", socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(2.0)
        s.sendto(b"ping\n", (lab.VIP, PORT))
        return s.recvfrom(2048)[0].decode().strip()
    finally:
        s.close()


def test_udp_send_expect_keeps_real_servers_up(lab, lb_runner, responders, tmp_path) -> None:
    path = tmp_path / "udp.toml"
    path.write_text(CONFIG)
    lb_runner.start(path)
    # every real server has been checked at least once (bounded wait), over UDP, successfully
    deadline = time.monotonic() + 30
    while True:
        reals = status()["services"][0]["real_servers"]
        if all(r.get("last_check") for r in reals):
            break
        assert time.monotonic() < deadline, reals
        time.sleep(0.1)
    for r in reals:
        assert r["last_check"]["ok"], r
        assert "pong" in r["last_check"]["detail"], r
        assert r["health"] == "up" and r["changes"] == 0, r
    # and the service answers through the VIP, from every real server in turn (rr)
    answers = {udp_ask(lab) for _ in range(6)}
    assert answers == {f"pong {name}" for name in REALS}, answers
    # a few more rounds of checks later, still up (no transition at all)
    for r in status()["services"][0]["real_servers"]:
        assert r["health"] == "up" and r["changes"] == 0, r
