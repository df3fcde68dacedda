"""Kernel IPVS mode inside the VM: a firewall-mark service whose port groups lb marks with its
own nftables rules (80 and 8180-8181 of the VIP under one mark, persistent), and the kernel's
connection sync daemon started over netlink, master on the lab's director and backup on the
second director (both on the private segment).

The tests of this module share one `lb run` and run in file order; the last one stops it."""
from __future__ import annotations

import re
import signal
import socket
import threading
import time

import pytest
from guest_util import ipvs_kernel, ipvsadm, lb_list_inproc, same_as_ipvsadm, start_lb, wait_for  # noqa: F401

LAB_NETWORK = "direct"
VIP = "198.18.0.10"
MARK = 80
GROUP_PORTS = (8180, 8181)              # the test's own listeners (nginx has 80 and the scale-out lab's 8080)
CLIENT = "198.18.0.2"
CONFIG = f"""\
[global]
instance = "lab"
dataplane = "ipvs"
public_interface = "pub0"
private_interface = "priv0"
network = "direct"

[[virtual_server]]
name = "web-group"
fwmark = {MARK}
scheduler = "rr"
persistent = 300

  [[virtual_server.port_group]]
  address = "{VIP}"
  protocol = "tcp"
  ports = "80"

  [[virtual_server.port_group]]
  address = "{VIP}"
  protocol = "tcp"
  ports = "{GROUP_PORTS[0]}-{GROUP_PORTS[1]}"

  [virtual_server.monitor]
  kind = "none"
""" + "".join(f"""
  [[virtual_server.real_server]]
  name = "rs{i}"
  address = "198.18.1.1{i}"
""" for i in (1, 2, 3))


def _serve(sock: socket.socket, name: str, stop: threading.Event) -> None:
    """Answer every connection with an HTTP response that names the real server."""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            c, _ = sock.accept()
        except (socket.timeout, OSError):
            continue
        with c:
            c.settimeout(5)
            try:
                c.recv(4096)
                c.sendall(f"HTTP/1.0 200 OK\r\nContent-Length: {len(name) + 1}\r\n\r\n{name}\n".encode())
            except OSError:
                pass


@pytest.fixture(scope="module")
def group_servers(lab):
    """Listeners on the group's other ports in each real server's namespace (nginx has 80)."""
    stop = threading.Event()
    socks, threads = [], []

    def listen(port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        return s

    try:
        for rs in sorted(lab.REALS):
            for port in GROUP_PORTS:
                s = lab.in_netns(rs, listen, port)
                socks.append(s)
                t = threading.Thread(target=_serve, args=(s, rs, stop), daemon=True)
                t.start()
                threads.append(t)
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def lb_fwm(lab, lb_module_runner, tmp_path_factory, ipvs_kernel, group_servers):
    cfg = tmp_path_factory.mktemp("cfg") / "lab-fwmark.toml"
    cfg.write_text(CONFIG)
    return start_lb(lb_module_runner, cfg)


def fetch(lab, port: int) -> str:
    """The body of one HTTP GET from the client to VIP:port."""
    def get():
        with socket.socket() as s:
            s.settimeout(10)
            s.connect((VIP, port))
            s.sendall(f"GET / HTTP/1.0\r\nHost: {VIP}\r\n\r\n".encode())
            data = b""
            for _ in range(64):
                b = s.recv(4096)
                if not b:
                    break
                data += b
        head, _, body = data.partition(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n")[0], data
        return body.decode().strip()

    try:
        return lab.in_netns("client", get, timeout=30)
    except OSError as e:       # what the director saw, for the failure message
        state = "\n".join(lab.run("director", argv, check=False).stdout for argv in (
            ["ipvsadm", "-L", "-n", "-c"], ["ipvsadm", "-L", "-n", "--stats"], ["nft", "list", "ruleset"]))
        raise AssertionError(f"{CLIENT} -> {VIP}:{port}: {e}\n{state}") from e


def test_fwmark_service_and_its_marking_rules(lab, lb_fwm):
    table = ipvsadm(lab, "-L", "-n")
    assert f"FWM  {MARK} rr persistent 300" in table
    assert table.count("Route") == 3 and "198.18.1.11:0" in table
    rules = lab.run("director", ["nft", "list", "table", "inet", "lb_lab"]).stdout
    assert "type filter hook prerouting priority mangle; policy accept;" in rules
    assert (f'ip daddr {VIP} tcp dport {{ 80, {GROUP_PORTS[0]}-{GROUP_PORTS[1]} }} meta mark set 0x00000050 '
            f'comment "FWM {MARK}"') in rules
    mine, theirs = same_as_ipvsadm(lab, "-n")
    assert mine == theirs


def test_group_ports_reach_real_servers_with_persistence_across_the_group(lab, lb_fwm):
    """Six connections to the three ports of the group: rr alone would spread them over the
    three real servers; the one persistence template <client, mark> keeps them on one."""
    bodies = [fetch(lab, port) for _ in range(2) for port in (80, *GROUP_PORTS)]
    assert len(set(bodies)) == 1 and bodies[0] in lab.REALS, bodies
    rs = lab.REALS[bodies[0]]
    conns = ipvsadm(lab, "-L", "-n", "-c")
    for port in (80, *GROUP_PORTS):
        assert re.search(rf"{CLIENT}:\d+\s+{VIP}:{port}\s+{rs}:{port}$", conns, re.M), conns
    # the template: the client (any port) and the mark (as an address, as ipvsadm shows it)
    assert re.search(rf"^IP .*{CLIENT}:0\s+0\.0\.0\.{MARK}:0\s+{rs}:0$", conns, re.M), conns

    def fwm_conns():        # IPVS's estimator copies the counters out every 2 s
        stats = ipvsadm(lab, "-L", "-n", "--stats", "--exact")
        return int(next(ln for ln in stats.splitlines() if ln.startswith(f"FWM  {MARK}")).split()[2])

    # a copy may land between the fetches (3 of them counted): wait for all six, then no more
    wait_for(lambda: fwm_conns() >= 6, 10, "the 6 connections in IPVS's statistics")
    assert fwm_conns() == 6                          # 6 connections, all through the FWM service
    mine, theirs = same_as_ipvsadm(lab, "-n")
    assert mine == theirs


def _director_dp(name: str):
    from lb.dataplane.ipvs import IpvsDataplane
    return IpvsDataplane(name, run_dir="/tmp/lb-vm-sync")


def _conns_from(client: str) -> list[str]:
    with open("/proc/thread-self/net/ip_vs_conn") as f:
        want = "%08X" % int.from_bytes(socket.inet_aton(client), "big")
        return [ln for ln in f.read().splitlines()[1:] if ln.split()[1] == want]


def test_sync_daemon_master_backup_and_synced_connections(lab, lb_fwm):
    """IPVS's own sync daemon over netlink: master on the director's priv0, backup on the second
    director's priv0 (the private segment); `ipvsadm -L --daemon` shows each; a connection made
    through the master shows up in the backup's connection table; stop removes the daemons."""
    lab.run("director2", ["modprobe", "ip_vs"], check=False)
    master, backup = _director_dp("syncm"), _director_dp("syncb")
    try:
        lab.in_netns("director", master.start_sync, "master", "priv0", 7, timeout=60)
        lab.in_netns("director2", backup.start_sync, "backup", "priv0", 7, timeout=60)
        line = ipvsadm(lab, "-L", "--daemon")
        assert line.startswith("master sync daemon (mcast=priv0, syncid=7"), line
        assert lb_list_inproc(lab, "--daemon") == line          # `lb list --daemon` as ipvsadm
        line2 = lab.run("director2", ["ipvsadm", "-L", "--daemon"]).stdout
        assert line2.startswith("backup sync daemon (mcast=priv0, syncid=7"), line2

        # switching roles: the director becomes backup (its master daemon stops)
        lab.in_netns("director", master.start_sync, "backup", "priv0", 7, timeout=60)
        assert ipvsadm(lab, "-L", "--daemon").startswith("backup sync daemon (mcast=priv0, syncid=7")
        lab.in_netns("director", master.start_sync, "master", "priv0", 7, timeout=60)
        assert ipvsadm(lab, "-L", "--daemon").startswith("master sync daemon (mcast=priv0, syncid=7")

        body = fetch(lab, GROUP_PORTS[1])
        assert body in lab.REALS
        synced = wait_for(lambda: [ln for ln in lab.in_netns("director2", _conns_from, CLIENT)
                                   if ln.split()[4] == "%04X" % GROUP_PORTS[1]], 30,
                          "the backup to receive the connection by sync")
        vip_hex = "%08X" % int.from_bytes(socket.inet_aton(VIP), "big")
        rs_hex = "%08X" % int.from_bytes(socket.inet_aton(lab.REALS[body]), "big")
        # the connection itself: client -> VIP:8181 -> the real server that answered
        assert any(p[3] == vip_hex and p[4] == "%04X" % GROUP_PORTS[1] and p[5] == rs_hex
                   for p in map(str.split, synced)), synced
    finally:
        lab.in_netns("director", master.stop_sync, timeout=60)
        lab.in_netns("director2", backup.stop_sync, timeout=60)
    assert ipvsadm(lab, "-L", "--daemon") == ""
    assert lab.run("director2", ["ipvsadm", "-L", "--daemon"]).stdout == ""


def test_clean_stop_removes_service_and_marking_rules(lab, lb_fwm):
    lb_fwm.signal(signal.SIGTERM)
    assert lb_fwm.wait(60) == 0
    assert ipvsadm(lab, "-L", "-n").count("\n") == 3     # header and titles only
    tables = lab.run("director", ["nft", "list", "tables"]).stdout
    assert "lb_lab" not in tables, tables
    assert "removed the firewall-mark rules" in lb_fwm.log()
