"""The namespace lab (lb.lab): topology, real servers, idempotent up/down, cleanup on failure.

Needs root (skipped otherwise through the `lab` fixture). All traffic stays in the lb-*
namespaces on 198.18.0.0/15.
"""

import argparse
import json
import os
import socket
import subprocess

import pytest

LAB_NETWORK = "direct"


def _live_lab_nginx():
    """Non-zombie nginx processes started from the lab's run dir."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{p}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if comm == "nginx" and state != b"Z" and ("/run/lb-lab/" in cmd or "worker process" in cmd):
            # workers: only count those whose parent is a lab master
            if "worker process" in cmd and "/run/lb-lab/" not in cmd:
                try:
                    with open(f"/proc/{p}/stat", "rb") as f:
                        ppid = int(f.read().rpartition(b")")[2].split()[1])
                    with open(f"/proc/{ppid}/cmdline", "rb") as f:
                        if b"/run/lb-lab/" not in f.read():
                            continue
                except (OSError, ValueError, IndexError):
                    continue
            out.append(int(p))
    return out


def _assert_nothing_left(lab):
    names = [lab.netns_name(n) for n in lab.ALL_NODES]
    present = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not [n for n in present if n in names], present
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert not [line for line in listed.splitlines() if line.split()[0] in names], listed
    assert not os.path.exists(lab.RUN_DIR)
    assert _live_lab_nginx() == []
    st = lab.status()
    assert not st["up"] and not any(st["namespaces"].values()) and st["network"] is None


def _ensure(lab, network):
    st = lab.status()
    if not (st["up"] and st["network"] == network and all(v["alive"] for v in st["nginx"].values())):
        lab.up(network)


@pytest.fixture
def direct(lab):
    """The lab in "direct" mode with all real servers running (re-built if a test changed it)."""
    _ensure(lab, "direct")
    return lab


def _default_gw(lab, node):
    routes = json.loads(lab.run(node, ["ip", "-j", "-4", "route", "show", "default"]).stdout)
    assert len(routes) == 1, routes
    return routes[0]["gateway"], routes[0]["dev"]


def _addrs(lab, node, dev):
    info = json.loads(lab.run(node, ["ip", "-j", "-4", "addr", "show", "dev", dev]).stdout)
    return {f"{a['local']}/{a['prefixlen']}" for i in info for a in i["addr_info"]}


# --------------------------------------------------------------------------- direct mode


@pytest.mark.parametrize("rs", ["rs1", "rs2", "rs3"])
def test_real_servers_answer_from_director(direct, rs):
    out = direct.run("director", ["curl", "-s", "--max-time", "3", f"http://{direct.REALS[rs]}/"], timeout=10)
    assert out.stdout == f"{rs}\n"


def test_http_get_from_client_side_helper(direct):
    # the socket helper, from the director's namespace, against rs3 (same L2 segment)
    assert direct.http_get("director", direct.REALS["rs3"], 80, "/any/path") == (200, "rs3\n")


def test_client_reaches_director_at_l3(direct):
    # refused (the director's stack answered with RST), not timed out: the path works both ways
    with pytest.raises(ConnectionRefusedError):
        direct.connect("client", direct.DIRECTOR_PUB, 22, timeout=10)


def test_client_cannot_reach_vip_without_director(direct):
    # nobody owns the VIP on the public side yet: ARP for 198.18.0.10 goes unanswered
    with pytest.raises(OSError):  # TimeoutError or EHOSTUNREACH, bounded by the timeout
        direct.connect("client", direct.VIP, 80, timeout=1.0)


def test_addresses_and_routes_direct(direct):
    assert _addrs(direct, "client", "c0") == {"198.18.0.2/24"}
    assert _addrs(direct, "director", "pub0") == {"198.18.0.1/24"}
    assert _addrs(direct, "director", "priv0") == {"198.18.1.1/24"}
    assert _default_gw(direct, "client") == ("198.18.0.1", "c0")
    for rs, ip in direct.REALS.items():
        assert _addrs(direct, rs, "eth0") == {f"{ip}/24"}
        assert "198.18.0.10/32" in _addrs(direct, rs, "lo")
        assert _default_gw(direct, rs) == ("198.18.1.1", "eth0")
    links = json.loads(direct.run("switch", ["ip", "-j", "link", "show", "master", "br0"]).stdout)
    assert sorted(link["ifname"] for link in links) == ["sw-dir", "sw-dir2", "sw-rs1", "sw-rs2", "sw-rs3"]
    for node in direct.ALL_NODES:
        lo = json.loads(direct.run(node, ["ip", "-j", "link", "show", "dev", "lo"]).stdout)[0]
        assert "UP" in lo["flags"], node


def test_sysctls(direct):
    rd = direct.read_sysctl
    assert rd("director", "net/ipv4/ip_forward") == "1"
    for dev in ("all", "default", "pub0", "priv0"):
        assert rd("director", f"net/ipv4/conf/{dev}/rp_filter") == "0"
        assert rd("director", f"net/ipv4/conf/{dev}/send_redirects") == "0"
    assert rd("director", "net/ipv4/conf/all/accept_local") == "1"
    assert rd("director", "net/ipv4/conf/priv0/accept_local") == "1"
    for rs in direct.REALS:
        for dev in ("all", "eth0"):
            assert rd(rs, f"net/ipv4/conf/{dev}/arp_ignore") == "1"
            assert rd(rs, f"net/ipv4/conf/{dev}/arp_announce") == "2"
        assert rd(rs, "net/ipv4/ip_forward") == "0"


def test_dr_reply_path_through_director(direct):
    """A real server's reply with the VIP as source is forwarded by the director to the client,
    even once the director owns the VIP itself (accept_local=1, rp_filter=0)."""
    direct.run("director", ["ip", "addr", "add", f"{direct.VIP}/32", "dev", "pub0"])
    try:
        rx = direct.in_netns("client", socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        tx = direct.in_netns("rs1", socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        with rx, tx:
            rx.bind((direct.CLIENT, 40000))
            rx.settimeout(2.0)
            tx.bind((direct.VIP, 80))
            tx.sendto(b"reply", (direct.CLIENT, 40000))
            data, src = rx.recvfrom(100)
        assert (data, src) == (b"reply", (direct.VIP, 80))
    finally:
        direct.run("director", ["ip", "addr", "del", f"{direct.VIP}/32", "dev", "pub0"], check=False)


def test_veth_offloads(direct):
    ends = [("client", "c0"), ("director", "pub0"), ("director", "priv0"), ("switch", "sw-dir")]
    ends += [(rs, "eth0") for rs in direct.REALS] + [("switch", f"sw-{rs}") for rs in direct.REALS]
    for node, dev in ends:
        feats = dict(
            line.strip().split(": ", 1)
            for line in direct.run(node, ["ethtool", "-k", dev]).stdout.splitlines()
            if ": " in line
        )
        assert feats["tx-checksumming"].startswith("off"), (node, dev)
        assert feats["generic-receive-offload"].startswith("on"), (node, dev)


def test_in_netns_and_sockets_live_in_the_node(direct):
    ino = os.stat(direct.netns_path("rs2")).st_ino
    assert direct.in_netns("rs2", lambda: os.stat("/proc/thread-self/ns/net").st_ino) == ino
    # the caller's thread is untouched
    assert os.stat("/proc/thread-self/ns/net").st_ino != ino
    with direct.connect("rs2", direct.REALS["rs2"], 80, timeout=2) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"rs2\n" in s.recv(4096)
    with pytest.raises(ZeroDivisionError):
        direct.in_netns("client", lambda: 1 / 0)


def test_hard_network_rule_and_node_names(direct):
    for bad in ("127.0.0.1", "10.0.0.1", "198.20.0.1", "localhost"):
        with pytest.raises(ValueError):
            direct.connect("client", bad, 80, timeout=1)
    with pytest.raises(ValueError):
        direct.netns_path("host")
    assert direct.exec_argv("rs1", ["ip", "a"]) == ["nsenter", "--net=/run/netns/lb-rs1", "--", "ip", "a"]


def test_run_and_popen(direct):
    with pytest.raises(direct.LabCommandError) as ei:
        direct.run("client", ["sh", "-c", "echo oops >&2; exit 3"])
    assert ei.value.returncode == 3 and "oops" in str(ei.value)
    assert direct.run("client", ["false"], check=False).returncode == 1
    p = direct.popen("rs1", ["cat", "/proc/self/net/dev"], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=10)
    assert "eth0" in out and "c0" not in out


def test_status(direct):
    st = direct.status()
    assert st["up"] and st["network"] == "direct" and direct.is_up()
    assert all(st["namespaces"].values()) and set(st["namespaces"]) == set(direct.ALL_NODES)
    for rs in direct.REALS:
        assert st["nginx"][rs]["alive"] and st["nginx"][rs]["pid"] == direct.nginx_pid(rs)


def test_stop_start_real(direct):
    old = direct.nginx_pid("rs2")
    direct.stop_real("rs2")
    assert direct.status()["nginx"]["rs2"] == {"pid": None, "alive": False}
    with pytest.raises(ConnectionRefusedError):
        direct.connect("director", direct.REALS["rs2"], 80, timeout=2)
    direct.stop_real("rs2")  # no error when already stopped
    assert direct.run("director", ["curl", "-s", "--max-time", "3", "http://198.18.1.11/"]).stdout == "rs1\n"
    pid = direct.start_real("rs2")
    assert pid != old and direct.nginx_pid("rs2") == pid
    assert direct.start_real("rs2") == pid  # no-op when running
    assert direct.http_get("director", direct.REALS["rs2"]) == (200, "rs2\n")
    with pytest.raises(ValueError):
        direct.stop_real("rs9")


def test_cli(direct, capfd):
    from lb.lab.cli import add_cli

    parser = argparse.ArgumentParser(prog="lb")
    add_cli(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["lab", "exec", "rs3", "--", "cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore"])
    assert args.func(args) == 0
    args = parser.parse_args(["lab", "exec", "client", "sh", "-c", "exit 5"])
    assert args.func(args) == 5
    args = parser.parse_args(["lab", "status"])
    assert args.func(args) == 0
    out = capfd.readouterr().out
    assert out.startswith("1\n")
    assert "lab: up, network direct" in out and "lb-rs3" in out
    args = parser.parse_args(["lab", "status", "--json"])
    assert args.func(args) == 0
    assert json.loads(capfd.readouterr().out)["network"] == "direct"
    with pytest.raises(SystemExit):
        parser.parse_args(["lab", "up", "--network", "bogus"])


# --------------------------------------------------------------------------- changing the lab


def test_up_nat(lab):
    lab.up("nat")
    st = lab.status()
    assert st["up"] and st["network"] == "nat"
    for rs in lab.REALS:
        assert _default_gw(lab, rs) == ("198.18.1.254", "eth0")
    assert lab.run("director", ["curl", "-s", "--max-time", "3", "http://198.18.1.13/"]).stdout == "rs3\n"


def test_up_twice_down_twice(lab):
    lab.up("direct")
    first = {rs: lab.nginx_pid(rs) for rs in lab.REALS}
    lab.up("direct")
    assert lab.is_up()
    second = {rs: lab.nginx_pid(rs) for rs in lab.REALS}
    assert all(second.values()) and not set(first.values()) & set(second.values())
    for rs, ip in lab.REALS.items():
        assert lab.http_get("director", ip) == (200, f"{rs}\n")
    lab.down()
    _assert_nothing_left(lab)
    lab.down()
    _assert_nothing_left(lab)


@pytest.mark.parametrize("step", ["_create_namespaces", "_create_links", "_configure_routes", "_start_reals"])
def test_failure_during_up_leaves_nothing(lab, monkeypatch, step):
    from lb.lab import topology

    original = getattr(topology, step)

    def broken(network):
        original(network)  # do the step's work (namespaces, links, nginx...), then fail
        raise RuntimeError(f"injected failure after {step}")

    monkeypatch.setattr(topology, step, broken)
    with pytest.raises(RuntimeError, match="injected failure"):
        lab.up("direct")
    _assert_nothing_left(lab)


def test_down_on_half_built_lab(lab):
    from pyroute2 import netns

    lab.down()
    netns.create(lab.netns_path("client"))
    os.makedirs(lab.RUN_DIR, exist_ok=True)
    p = lab.popen("client", ["sleep", "60"])
    try:
        assert lab.status()["namespaces"]["client"] and not lab.is_up()
        lab.down()
        assert p.wait(timeout=5) is not None
        _assert_nothing_left(lab)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=5)


def test_rebuild_after_teardown(lab):
    # what the `direct` fixture does for a test after one that tore the lab down (any order)
    lab.down()
    assert not lab.is_up()
    _ensure(lab, "direct")
    assert lab.is_up()
    assert lab.http_get("director", lab.REALS["rs1"]) == (200, "rs1\n")
