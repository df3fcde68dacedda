"""A real FTP session through the director, passive mode, DR and NAT: a firewall-mark service
(control port 21 plus the passive range, one mark, persistent) matched in XDP.

The real servers run pyftpdlib (NAT: masquerade_address = the VIP, so PASV names the VIP);
the client is Python's ftplib in the client namespace.  Each server serves a file that names
it, so the transfer shows that the data connection reached the control connection's server.
"""
from __future__ import annotations

import ftplib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pyftpdlib")
pytestmark = pytest.mark.parametrize("lab", ["direct", "nat"], indirect=True)

REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
CONFIG = REPO / "configs" / "ftp-fwmark.toml"
VIP = "198.18.0.10"
PASV = (30000, 30099)
FILE_LINES = 4000            # ~16 KB: many segments on the data connection

SERVER = r"""
import os, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

root, name, masq, lo, hi = sys.argv[1:6]
os.makedirs(root, exist_ok=True)
with open(os.path.join(root, "file.txt"), "w") as f:
    f.write((name + "\n") * int(sys.argv[6]))
auth = DummyAuthorizer()
auth.add_anonymous(root)
FTPHandler.authorizer = auth
FTPHandler.passive_ports = range(int(lo), int(hi) + 1)
if masq != "-":
    FTPHandler.masquerade_address = masq
FTPServer(("0.0.0.0", 21), FTPHandler).serve_forever()
"""


@pytest.fixture
def ftp_servers(lab, tmp_path):
    network = lab.status()["network"]
    procs = []
    try:
        for rs in sorted(lab.REALS):
            log = open(tmp_path / f"ftp-{rs}.log", "wb")
            procs.append((lab.popen(rs, [sys.executable, "-c", SERVER, str(tmp_path / rs), rs,
                                         VIP if network == "nat" else "-", str(PASV[0]), str(PASV[1]),
                                         str(FILE_LINES)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True), log))
        for rs, addr in sorted(lab.REALS.items()):
            _wait_port(lab, addr, 21)
        yield network
    finally:
        for p, log in procs:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            log.close()


def _wait_port(lab, addr, port, timeout=15.0):
    def probe():
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((addr, port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    lab.in_netns("director", probe, timeout=timeout + 5)


def _config(network, tmp_path) -> Path:
    text = CONFIG.read_text()
    if network == "nat":
        text = text.replace('network = "direct"', 'network = "nat"\nnat_router = "198.18.1.254/24"\n'
                                                  'nat_router_device = "priv0"')
    path = tmp_path / "ftp.toml"
    path.write_text(text)
    return path


def ftp_session(files=1):
    """Log in, fetch file.txt `files` times over passive data connections; the bodies."""
    ftp = ftplib.FTP()
    ftp.connect(VIP, 21, timeout=10)
    try:
        ftp.login()
        ftp.set_pasv(True)
        bodies = []
        for _ in range(files):
            buf = bytearray()
            ftp.retrbinary("RETR file.txt", buf.extend)
            bodies.append(bytes(buf))
        # the data port the server offered is in the group's range
        host, port = ftp.makepasv()
        return bodies, host, port
    finally:
        try:
            ftp.quit()
        except (OSError, EOFError, ftplib.Error):
            ftp.close()


def lb_list(*args):
    p = subprocess.run([LB, "list", *args, "--instance", "lab"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_passive_ftp_through_a_fwmark_service(lab, lb_runner, ftp_servers, tmp_path):
    network = ftp_servers
    lb_runner.start(_config(network, tmp_path))
    seen = set()
    for _ in range(4):
        bodies, host, port = lab.in_netns("client", ftp_session, 2, timeout=60)
        assert host == VIP and PASV[0] <= port <= PASV[1]
        names = {b.split(b"\n", 1)[0].decode() for b in bodies}
        assert len(names) == 1, names                     # every transfer from one server
        name = names.pop()
        assert bodies == [(name + "\n").encode() * FILE_LINES] * 2
        seen.add(name)
    # persistence <client, fwmark>: the one client keeps the first server it was given
    assert len(seen) == 1, seen
    out = lb_list("-n")
    assert "FWM  21 rr persistent 300\n" in out
    # -f selects the firewall-mark service; like ipvsadm, one service is listed without the
    # version header line
    assert out.startswith("IP Virtual Server version ")
    assert lb_list("-f", "21") == out.split("\n", 1)[1]
    fwd = "Masq" if network == "nat" else "Route"
    for addr in sorted(lab.REALS.values()):
        assert f"  -> {addr + ':0':<28} {fwd:<7} 1      " in out
    conns = [line for line in lb_list("-c").splitlines()[2:] if line.startswith("TCP")]
    assert len(conns) >= 4 * 3                  # each session: control + two data connections
    assert any(f"{VIP}:21 " in c for c in conns) and any(f"{VIP}:300" in c for c in conns)
    persist = lb_list("--persistent-conn")
    rows = [line.split() for line in persist.splitlines() if line.startswith("  -> 198.")]
    assert sorted(int(r[3]) for r in rows) == [0, 0, 1]      # one template, on the chosen server
