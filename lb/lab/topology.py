"""The namespace lab: a client, the director, an L2 switch and three nginx real servers.

    lb-client   c0 198.18.0.2/24 ── sw-c0 ┐
    lb-director pub0 198.18.0.1/24 ─ sw-pub ├ br-pub  lb-switch (the shared client-side segment)
    lb-director2 pub0 198.18.0.3/24 ─ sw-pub2 ┘
    lb-director priv0 198.18.1.1/24 ───────────────────── sw-dir ┐
    lb-director2 priv0 198.18.1.3/24 ──────────────────── sw-dir2 │
    lb-rs1      eth0 198.18.1.11/24 ──────────────────── sw-rs1 ├ br0  lb-switch
    lb-rs2      eth0 198.18.1.12/24 ──────────────────── sw-rs2 │
    lb-rs3      eth0 198.18.1.13/24 ──────────────────── sw-rs3 ┘
    director2 is the HA backup (lb/ha): it holds no VIP until it takes over; the VIP and the
    NAT address move between the two directors over the shared segments.
    rsN: VIP 198.18.0.10/32 on lo (direct routing), arp_ignore=1/arp_announce=2,
         default route via 198.18.1.1 ("direct") or 198.18.1.254 ("nat", the director's
         floating NAT address, which the director software adds itself; the HA tests use the
         "nat" lab for direct routing too, so that the DR replies' gateway floats with the VIP).
         "tunnel": as "direct", and each real server runs lb's decap XDP program on eth0.

Dual stack (up(network, ipv6=True)): beside the IPv4 addresses, 2001:2::/48 (RFC 5180) --
    client 2001:2::2/64, director pub0 2001:2::1/64 and priv0 2001:2:0:1::1/64, director2
    2001:2::3/64 and 2001:2:0:1::3/64, rsN 2001:2:0:1::1N/64 with the VIP 2001:2::10/128 on lo;
    the client routes via 2001:2::1, the real servers via 2001:2:0:1::1 (the IPv6 replies of all
    three networks go back through the director); nginx listens on [::]:80 too.  No DAD, no
    router solicitations or advertisements.  Without it, IPv6 is off in every namespace.
Checksum offload (up(network, tx_csum=True)): the veths keep their tx checksum offload, so the
    packets XDP sees carry partial checksums (CHECKSUM_PARTIAL) as on a real host; by default
    it is off.

Everything (links, addresses, routes, processes) lives inside the lb-* namespaces; nothing is
created in the host's network namespace. Links/addresses/routes go through pyroute2,
ethtool and nginx through subprocess (nsenter), sysctls by writing /proc/sys/net from a
thread that setns()'d into the node.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

from pyroute2 import IPRoute
from pyroute2 import config as pr_config
from pyroute2 import netns as pr_netns

# pyroute2 waits 2 s for the helper process that creates a namespace: too short on a loaded
# machine or in the IPVS VM under software emulation (netns.create timed out there)
pr_config.default_communicate_timeout = max(pr_config.default_communicate_timeout, 60)
from pyroute2.netlink.exceptions import NetlinkError

from .nsutil import ALL_NODES, KNOWN_NODES, SWITCH, http_get, in_netns, netns_path, popen, run

VIP = "198.18.0.10"
CLIENT = "198.18.0.2"
DIRECTOR_PUB = "198.18.0.1"
DIRECTOR_PRIV = "198.18.1.1"
DIRECTOR2_PUB = "198.18.0.3"
DIRECTOR2_PRIV = "198.18.1.3"
DIRECTORS = ("director", "director2")
NAT_ROUTER = "198.18.1.254"
REALS = {"rs1": "198.18.1.11", "rs2": "198.18.1.12", "rs3": "198.18.1.13"}
NETWORKS = ("direct", "nat", "tunnel")

# dual stack (up(..., ipv6=True)): 2001:2::/48 only (RFC 5180)
VIP6 = "2001:2::10"
CLIENT6 = "2001:2::2"
DIRECTOR_PUB6 = "2001:2::1"
DIRECTOR_PRIV6 = "2001:2:0:1::1"
DIRECTOR2_PUB6 = "2001:2::3"
DIRECTOR2_PRIV6 = "2001:2:0:1::3"
REALS6 = {"rs1": "2001:2:0:1::11", "rs2": "2001:2:0:1::12", "rs3": "2001:2:0:1::13"}
ADDRESSES6 = {
    ("client", "c0"): f"{CLIENT6}/64",
    ("director", "pub0"): f"{DIRECTOR_PUB6}/64",
    ("director", "priv0"): f"{DIRECTOR_PRIV6}/64",
    ("director2", "pub0"): f"{DIRECTOR2_PUB6}/64",
    ("director2", "priv0"): f"{DIRECTOR2_PRIV6}/64",
    **{(rs, "eth0"): f"{ip}/64" for rs, ip in REALS6.items()},
    **{(rs, "lo"): f"{VIP6}/128" for rs in REALS6},
}
_IFA_F_NODAD = 0x02       # linux/if_addr.h

# the options of the lab being built (up()), which the steps read; kept in the state file
_options: dict[str, bool] = {"ipv6": False, "tx_csum": False}

RUN_DIR = "/run/lb-lab"
STATE_FILE = f"{RUN_DIR}/state.json"
LOCK_FILE = "/run/lb-lab.lock"  # outside RUN_DIR: down() removes RUN_DIR
# held by a test session (tests/conftest.py lab_exclusive) or a bench run (bench/common.py
# lab_lock) for as long as it uses the lab; `lb lab up`/`down` take it too (lb/lab/cli.py)
TESTS_LOCK = "/run/lb-lab.tests.lock"
NGINX_BIN = "/usr/sbin/nginx"
NGINX_WORKERS = 1

# veth pairs: (node, ifname, peer node, peer ifname)
VETHS = (
    ("client", "c0", SWITCH, "sw-c0"),
    ("director", "pub0", SWITCH, "sw-pub"),
    ("director2", "pub0", SWITCH, "sw-pub2"),
    ("director", "priv0", SWITCH, "sw-dir"),
    ("director2", "priv0", SWITCH, "sw-dir2"),
    ("rs1", "eth0", SWITCH, "sw-rs1"),
    ("rs2", "eth0", SWITCH, "sw-rs2"),
    ("rs3", "eth0", SWITCH, "sw-rs3"),
)
BRIDGE = "br0"             # private segment: directors' priv0 and the real servers
PUB_BRIDGE = "br-pub"      # public segment: the client and both directors' pub0
PUB_PORTS = ("sw-c0", "sw-pub", "sw-pub2")
ADDRESSES = {
    ("client", "c0"): f"{CLIENT}/24",
    ("director", "pub0"): f"{DIRECTOR_PUB}/24",
    ("director", "priv0"): f"{DIRECTOR_PRIV}/24",
    ("director2", "pub0"): f"{DIRECTOR2_PUB}/24",
    ("director2", "priv0"): f"{DIRECTOR2_PRIV}/24",
    **{(rs, "eth0"): f"{ip}/24" for rs, ip in REALS.items()},
    **{(rs, "lo"): f"{VIP}/32" for rs in REALS},
}

_TERM_WAIT_S = 5.0
_KILL_WAIT_S = 3.0
_NGINX_READY_S = 10.0
_LOCK_WAIT_S = 120.0


class LabError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# small helpers


def rs_dir(name: str) -> str:
    if name not in REALS:
        raise ValueError(f"unknown real server {name!r} (expected one of {', '.join(REALS)})")
    return f"{RUN_DIR}/{name}"


def _veth_ends() -> list[tuple[str, str]]:
    ends = []
    for a, ia, b, ib in VETHS:
        ends += [(a, ia), (b, ib)]
    return ends


def _ns_exists(node: str) -> bool:
    return os.path.lexists(netns_path(node))


def _ns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    state = data.rpartition(b")")[2].split()[:1]
    return state not in ([b"Z"], [b"X"])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _is_nginx_with(pid: int, needle: str) -> bool:
    return _comm(pid) == "nginx" and needle in _cmdline(pid)


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _pids_in_namespaces(ns_ids: set[tuple[int, int]]) -> list[int]:
    if not ns_ids:
        return []
    pids = []
    for pid in _all_pids():
        if _ns_id(f"/proc/{pid}/ns/net") in ns_ids:
            pids.append(pid)
    return pids


def _lab_nginx_pids() -> list[int]:
    """nginx masters started with a config under RUN_DIR, plus their children (the workers),
    wherever they are (also if their namespace is already gone)."""
    masters = {pid for pid in _all_pids() if _is_nginx_with(pid, f"{RUN_DIR}/")}
    workers = {pid for pid in _all_pids() if _ppid(pid) in masters}
    return sorted(masters | workers)


def _terminate(pids: list[int]) -> None:
    """SIGTERM, wait (bounded), SIGKILL what is left, wait (bounded)."""
    me = os.getpid()
    _reap()
    pids = [p for p in set(pids) if p not in (me, 1) and _pid_alive(p)]
    for sig, wait_s in ((signal.SIGTERM, _TERM_WAIT_S), (signal.SIGKILL, _KILL_WAIT_S)):
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait_s
        for _ in range(int(wait_s / 0.05) + 1):
            _reap()
            pids = [p for p in pids if _pid_alive(p)]
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not pids:
            return
    if pids:
        raise LabError(f"processes survived SIGKILL: {pids}")


_lock_state = threading.local()
_children: dict[int, subprocess.Popen] = {}  # processes this process started (nginx masters)


def _reap() -> None:
    for pid, p in list(_children.items()):
        if p.poll() is not None:
            del _children[pid]


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialise up/down/start_real/stop_real across processes (flock), re-entrant per thread."""
    if getattr(_lock_state, "depth", 0):
        _lock_state.depth += 1
        try:
            yield
        finally:
            _lock_state.depth -= 1
        return
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        for _ in range(int(_LOCK_WAIT_S / 0.1) + 1):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.1)
        else:
            raise LabError(f"lab lock {LOCK_FILE} still held after {_LOCK_WAIT_S}s")
        _lock_state.depth = 1
        try:
            yield
        finally:
            _lock_state.depth = 0
    finally:
        os.close(fd)  # releases the flock


def _ipr(node: str) -> IPRoute:
    # flags=0: never let pyroute2 create a missing namespace (its default is O_CREAT).
    return IPRoute(netns=netns_path(node), flags=0)


def _write_sysctls(node: str, values: dict[str, Any], optional: bool = False) -> None:
    """Write /proc/sys/<key> = value inside NODE (keys like 'net/ipv4/ip_forward')."""

    def write() -> None:
        for key, val in values.items():
            try:
                with open(f"/proc/sys/{key}", "w") as f:
                    f.write(f"{val}\n")
            except FileNotFoundError:
                if not optional:
                    raise LabError(f"{node}: sysctl {key} does not exist") from None

    in_netns(node, write, timeout=10.0)


def read_sysctl(node: str, key: str) -> str:
    def read() -> str:
        with open(f"/proc/sys/{key}") as f:
            return f.read().strip()

    return in_netns(node, read, timeout=10.0)


# ---------------------------------------------------------------------------------------------
# nginx (the real servers)


def nginx_conf(name: str, ipv6: bool = False) -> str:
    d = rs_dir(name)
    listen6 = "\n        listen [::]:80 default_server;" if ipv6 else ""
    return f"""\
# generated by lb.lab for {name}; runs inside netns lb-{name}
user www-data;
worker_processes {NGINX_WORKERS};
worker_rlimit_nofile 16384;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    keepalive_timeout 65s;
    keepalive_requests 10000;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;

    server {{
        listen 0.0.0.0:80 default_server;{listen6}
        listen 0.0.0.0:8080 default_server;   # the scale-out lab's second service
        server_name _;
        location / {{
            default_type text/plain;
            return 200 "{name}\\n";
        }}
    }}
}}
"""


def nginx_pid(name: str) -> int | None:
    """Pid of the real server's nginx master if it is running, else None."""
    d = rs_dir(name)
    try:
        with open(f"{d}/nginx.pid") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    if _pid_alive(pid) and _is_nginx_with(pid, f"{d}/nginx.conf"):
        return pid
    return None


def _wait_ready(name: str, timeout: float = _NGINX_READY_S) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | str | None = None
    for _ in range(int(timeout / 0.05) + 1):
        if time.monotonic() > deadline:
            break
        try:
            status, body = http_get(name, REALS[name], 80, "/", timeout=1.0)
            if status == 200 and body == f"{name}\n":
                return
            last = f"HTTP {status} {body!r}"
        except (OSError, ConnectionError) as e:
            last = e
        time.sleep(0.05)
    raise LabError(f"nginx of {name} not answering on {REALS[name]}:80 after {timeout}s (last: {last})")


def _start_nginx(name: str) -> int:
    d = rs_dir(name)
    os.makedirs(f"{d}/tmp", exist_ok=True)
    conf = f"{d}/nginx.conf"
    with open(conf, "w") as f:
        f.write(nginx_conf(name, ipv6=bool(_read_state().get("ipv6", _options["ipv6"]))))
    log_path = f"{d}/startup.log"
    # "daemon off": the master stays our child, so stop_real()/down() can reap it (no zombies
    # left to a PID 1 that may not reap). A new session keeps it out of our process group.
    with open(log_path, "wb") as log:
        p = popen(
            name,
            [NGINX_BIN, "-p", f"{d}/", "-c", conf, "-e", f"{d}/error.log"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[p.pid] = p
    deadline = time.monotonic() + _NGINX_READY_S
    for _ in range(int(_NGINX_READY_S / 0.05) + 1):
        if p.poll() is not None:
            with open(log_path, errors="replace") as f:
                raise LabError(f"nginx of {name} exited with {p.returncode}: {f.read().strip()[-2000:]}")
        if nginx_pid(name) == p.pid or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if nginx_pid(name) != p.pid:
        _terminate([p.pid])
        raise LabError(f"nginx of {name}: pid file {d}/nginx.pid not written within {_NGINX_READY_S}s")
    _wait_ready(name)
    return p.pid


def _stop_nginx(name: str) -> None:
    pids = []
    pid = nginx_pid(name)
    if pid:
        pids = [pid] + [p for p in _all_pids() if _ppid(p) == pid]
    # anything else left over from this server's config (e.g. a stale master)
    conf = f"{rs_dir(name)}/nginx.conf"
    masters = {p for p in _all_pids() if _is_nginx_with(p, conf)}
    pids += list(masters) + [p for p in _all_pids() if _ppid(p) in masters]
    _terminate(pids)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{rs_dir(name)}/nginx.pid")


def start_real(name: str) -> int:
    """Start the HTTP server of real server NAME (no-op if it runs); waits until it answers. Returns the pid."""
    rs_dir(name)
    with _lock():
        if not _ns_exists(name):
            raise LabError(f"lab is not up: {netns_path(name)} missing")
        pid = nginx_pid(name)
        if pid:
            return pid
        return _start_nginx(name)


def stop_real(name: str) -> None:
    """Stop the HTTP server of real server NAME (no error if it is not running); returns when it is gone."""
    rs_dir(name)
    with _lock():
        _stop_nginx(name)


# ---------------------------------------------------------------------------------------------
# the steps of up(); each takes the network mode. Looked up at call time (tests monkeypatch them).


def _prepare_run_dir(network: str, scale_out: int = 0) -> None:
    os.makedirs(RUN_DIR, exist_ok=True)
    _write_state(network, complete=False, scale_out=scale_out)


def _create_namespaces(network: str, scale_out: int = 0) -> None:
    for node in _nodes(scale_out):
        pr_netns.create(netns_path(node))


def _nodes(scale_out: int) -> tuple[str, ...]:
    """The lab's nodes: the classic lab's, or the scale-out lab's with ``scale_out`` directors."""
    if not scale_out:
        return ALL_NODES
    from . import scaleout
    return scaleout.nodes(scale_out)


def _base_sysctls(network: str) -> None:
    # Before any link exists: no IPv6 in the lab (no DAD/RS/MLD chatter hitting XDP programs),
    # deterministic IPv4 defaults even if the host sets devconf_inherit_init_net.  Dual stack:
    # IPv6 on, without DAD (addresses usable at once) and without router discovery.
    for node in ALL_NODES:
        if _options["ipv6"]:
            v6 = {}
            for dev in ("all", "default"):
                v6.update({f"net/ipv6/conf/{dev}/disable_ipv6": 0, f"net/ipv6/conf/{dev}/accept_dad": 0,
                           f"net/ipv6/conf/{dev}/dad_transmits": 0, f"net/ipv6/conf/{dev}/accept_ra": 0,
                           f"net/ipv6/conf/{dev}/router_solicitations": 0,
                           f"net/ipv6/conf/{dev}/forwarding": 1 if node in DIRECTORS else 0})
            _write_sysctls(node, v6)
        else:
            _write_sysctls(
                node,
                {"net/ipv6/conf/all/disable_ipv6": 1, "net/ipv6/conf/default/disable_ipv6": 1},
                optional=True,
            )
        _write_sysctls(
            node,
            {
                "net/ipv4/ip_forward": 1 if node in DIRECTORS else 0,
                "net/ipv4/conf/all/rp_filter": 0,
                "net/ipv4/conf/default/rp_filter": 0,
            },
        )


def _create_links(network: str) -> None:
    for a, ia, b, ib in VETHS:
        with _ipr(a) as ipr:
            ipr.link("add", ifname=ia, kind="veth", peer={"ifname": ib, "net_ns_fd": netns_path(b)})
    with _ipr(SWITCH) as ipr:
        for name in (BRIDGE, PUB_BRIDGE):
            # no STP, no forwarding delay: a port forwards at once (the VIP may move any time)
            ipr.link("add", ifname=name, kind="bridge", br_forward_delay=0, br_stp_state=0)
        br = ipr.link_lookup(ifname=BRIDGE)[0]
        pub = ipr.link_lookup(ifname=PUB_BRIDGE)[0]
        for a, ia, b, ib in VETHS:
            if b == SWITCH:
                ipr.link("set", index=ipr.link_lookup(ifname=ib)[0], master=pub if ib in PUB_PORTS else br)


def _director_ports(network: str) -> None:
    # A NIC drops unicast frames for other MACs before XDP sees them; a veth does not.  So that a
    # director (the HA backup) never receives frames the bridge floods for the other director's
    # MAC (e.g. after that director's link went down), its switch ports get no unknown-unicast
    # flooding. Broadcasts (ARP) still reach them.
    for port in ("sw-pub", "sw-pub2", "sw-dir", "sw-dir2"):
        run(SWITCH, ["bridge", "link", "set", "dev", port, "flood", "off"], timeout=10)


def _ethtool(network: str) -> None:
    # tx off: packets reach XDP with whole checksums, as from a NIC.  up(..., tx_csum=True)
    # leaves tx checksum offload on: packets then carry partial checksums, as from a local
    # stack, which lb completes before forwarding (bpf/lb_csum.h; test_csum_offload_lab.py).
    # gro on: XDP_REDIRECT into a veth silently drops unless the peer has GRO on (or an XDP prog).
    tx = "on" if _options["tx_csum"] else "off"
    for node, ifname in _veth_ends():
        run(node, ["ethtool", "-K", ifname, "tx", tx, "gro", "on"], timeout=10)


def _node_addresses(node: str, ipv6: bool) -> list[tuple[str, str]]:
    """(ifname, cidr) of the lab's own addresses of node"""
    table = list(ADDRESSES.items()) + (list(ADDRESSES6.items()) if ipv6 else [])
    return [(ifname, cidr) for (n, ifname), cidr in table if n == node]


def _add_address(ipr, idx: int, cidr: str) -> None:
    addr, plen = cidr.split("/")
    kw = {"flags": _IFA_F_NODAD} if ":" in addr else {}
    ipr.addr("add", index=idx, address=addr, prefixlen=int(plen), **kw)


def _configure_addresses(network: str) -> None:
    for node in ALL_NODES:
        with _ipr(node) as ipr:
            for ifname, cidr in _node_addresses(node, _options["ipv6"]):
                _add_address(ipr, ipr.link_lookup(ifname=ifname)[0], cidr)
            links = ["lo"] + [i for n, i in _veth_ends() if n == node] + ([BRIDGE, PUB_BRIDGE] if node == SWITCH else [])
            for ifname in links:
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")


def restore_addresses(node: str) -> list[str]:
    """The lab's own addresses of node put back where they are missing, as a host's network
    configuration would: a link taken down and up drops its IPv6 addresses (keep_addr_on_down
    is 0), and tests that flap the directors' links call this after.  Returns those added."""
    added = []
    with _ipr(node) as ipr:
        for ifname, cidr in _node_addresses(node, bool(_read_state().get("ipv6"))):
            idx = ipr.link_lookup(ifname=ifname)
            if not idx or any(a.get_attr("IFA_ADDRESS") == cidr.split("/")[0] for a in ipr.get_addr(index=idx[0])):
                continue
            _add_address(ipr, idx[0], cidr)
            added.append(f"{cidr} on {ifname}")
    return added


def _configure_routes(network: str) -> None:
    with _ipr("client") as ipr:
        ipr.route("add", dst="0.0.0.0/0", gateway=DIRECTOR_PUB)
    gw = NAT_ROUTER if network == "nat" else DIRECTOR_PRIV
    for rs in REALS:
        with _ipr(rs) as ipr:
            ipr.route("add", dst="0.0.0.0/0", gateway=gw)
    if _options["ipv6"]:
        with _ipr("client") as ipr:
            ipr.route("add", dst="::/0", gateway=DIRECTOR_PUB6, family=socket.AF_INET6)
        for rs in REALS:
            with _ipr(rs) as ipr:
                ipr.route("add", dst="::/0", gateway=DIRECTOR_PRIV6, family=socket.AF_INET6)


def _node_sysctls(network: str) -> None:
    d: dict[str, Any] = {}
    for dev in ("all", "default", "lo", "pub0", "priv0"):
        d[f"net/ipv4/conf/{dev}/rp_filter"] = 0
        d[f"net/ipv4/conf/{dev}/send_redirects"] = 0
    # DR: replies of the real servers come back through the director with the VIP (a local
    # address of the director) as source; without accept_local Linux drops them.
    d["net/ipv4/conf/all/accept_local"] = 1
    d["net/ipv4/conf/priv0/accept_local"] = 1
    d["net/ipv4/ip_forward"] = 1
    for director in DIRECTORS:
        _write_sysctls(director, d)
    for rs in REALS:
        _write_sysctls(
            rs,
            {
                "net/ipv4/conf/all/arp_ignore": 1,
                "net/ipv4/conf/eth0/arp_ignore": 1,
                "net/ipv4/conf/all/arp_announce": 2,
                "net/ipv4/conf/eth0/arp_announce": 2,
            },
        )


def _start_reals(network: str) -> None:
    for rs in REALS:
        _start_nginx(rs)


def decap_sources(scale_out: int = 0) -> list[str]:
    """The tunnels' outer sources the real servers accept: every director's private address
    (IPv4 and IPv6 in the classic lab; the scale-out lab's N directors)."""
    if scale_out:
        from . import scaleout

        return [scaleout.priv_addr(d) for d in scaleout.directors(scale_out)]
    return [DIRECTOR_PRIV, DIRECTOR2_PRIV, DIRECTOR_PRIV6, DIRECTOR2_PRIV6]


def decap_vips(scale_out: int = 0) -> list[str]:
    """The inner destinations the real servers let in: the VIPs they hold on lo."""
    if scale_out:
        from . import scaleout

        return list(scaleout.VIPS)
    return [VIP, VIP6]


def _attach_decap(network: str, scale_out: int = 0) -> None:
    """tunnel: the real servers take the director's IPIP header off with lb's XDP decap program
    (this kernel has no ipip module), accepting tunnels from the directors' private addresses
    only, to the VIPs they hold; it goes with their namespaces at down()."""
    if network != "tunnel":
        return
    sources = [a for src in decap_sources(scale_out) for a in ("--from", src)]
    vips = [a for vip in decap_vips(scale_out) for a in ("--vip", vip)]
    for rs in REALS:
        run(rs, [sys.executable, "-m", "lb.cli.main", "decap", "attach", "eth0", *sources, *vips], timeout=120)


def _write_state(network: str, complete: bool = True, scale_out: int = 0) -> None:
    tmp = f"{STATE_FILE}.tmp"
    with open(tmp, "w") as f:
        json.dump({"network": network, "complete": complete, "time": time.time(), "scale_out": scale_out,
                   **_options}, f)
    os.replace(tmp, STATE_FILE)


def _read_state() -> dict:
    try:
        with open(STATE_FILE) as f:
            st = json.load(f)
        return st if isinstance(st, dict) else {}
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------
# public API


def up(network: str = "direct", scale_out: int = 0, ipv6: bool = False, tx_csum: bool = False) -> None:
    """Build the lab (tearing down any existing one first). On any failure, removes what it built.
    ``scale_out`` N (1..8): the scale-out lab instead (lb.lab.scaleout: a router, N directors;
    "direct" or "tunnel"). ipv6: dual stack on 2001:2::/48 (the classic lab); tx_csum: leave the
    veths' tx checksum offload on."""
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, not {network!r}")
    if scale_out:
        from . import scaleout
        if network == "nat":
            raise ValueError("the scale-out lab is direct routing or tunneling: NAT replies would not come "
                             "back through the director that has the connection")
        scaleout.directors(scale_out)
    with _lock():
        _down()
        _options.update(ipv6=bool(ipv6), tx_csum=bool(tx_csum))
        try:
            if scale_out:
                _prepare_run_dir(network, scale_out)
                _create_namespaces(network, scale_out)
                for so_step in scaleout.steps(scale_out):
                    so_step(scale_out)
                _attach_decap(network, scale_out)
                _write_state(network, scale_out=scale_out)
                return
            for step in (
                _prepare_run_dir,
                _create_namespaces,
                _base_sysctls,
                _create_links,
                _director_ports,
                _ethtool,
                _configure_addresses,
                _configure_routes,
                _node_sysctls,
                _start_reals,
                _attach_decap,
                _write_state,
            ):
                step(network)
        except BaseException as exc:
            try:
                _down()
            except Exception as e:  # keep the original error, mention the cleanup one
                exc.add_note(f"lb.lab: cleanup after the failed up() also failed: {e}")
            raise


def down() -> None:
    """Remove everything the lab may have created. No error if nothing exists."""
    with _lock():
        _down()


def _down() -> None:
    errors: list[str] = []
    ns_ids = {i for i in (_ns_id(netns_path(n)) for n in KNOWN_NODES) if i is not None}

    # 1. processes inside the lab namespaces (nginx, whatever was popen()ed there), and any
    #    lab nginx that outlived its namespace. SIGTERM first so e.g. a director can detach.
    try:
        _terminate(_pids_in_namespaces(ns_ids) + _lab_nginx_pids())
    except Exception as e:
        errors.append(f"processes: {e}")

    # 2. links (a veth deletes its peer too). Explicit, so nothing survives if some leaked
    #    socket keeps a namespace alive after its name is gone.
    for node in KNOWN_NODES:
        if _ns_id(netns_path(node)) is None:
            continue
        try:
            with _ipr(node) as ipr:
                for link in ipr.get_links():
                    name = link.get("ifname") or link.get_attr("IFLA_IFNAME")
                    if name == "lo":
                        continue
                    try:
                        ipr.link("del", index=link["index"])
                    except NetlinkError as e:
                        if e.code != errno.ENODEV:
                            raise
        except Exception as e:
            errors.append(f"links in {node}: {e!r}")

    # 3. the namespaces themselves
    for node in KNOWN_NODES:
        path = netns_path(node)
        if not os.path.lexists(path):
            continue
        try:
            pr_netns.remove(path)
        except FileNotFoundError:
            pass
        except Exception as e:
            errors.append(f"netns {path}: {e!r}")

    # 4. the run dir (configs, pid files, logs, state)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    if os.path.exists(RUN_DIR):
        errors.append(f"could not remove {RUN_DIR}")

    if errors:
        raise LabError("lab down incomplete: " + "; ".join(errors))


def status() -> dict:
    """{'up': bool, 'network': 'direct'|'nat'|None, 'scale_out': N (0: the classic lab),
    'namespaces': {node: bool}, 'nginx': {rsN: {'pid': int|None, 'alive': bool}}, 'run_dir': str}"""
    state = _read_state()
    scale_out = state.get("scale_out", 0) if isinstance(state.get("scale_out", 0), int) else 0
    try:
        namespaces = {node: _ns_exists(node) for node in _nodes(scale_out)}
    except ValueError:
        scale_out, namespaces = 0, {node: _ns_exists(node) for node in ALL_NODES}
    nginx = {}
    for rs in REALS:
        pid = nginx_pid(rs)
        nginx[rs] = {"pid": pid, "alive": pid is not None}
    any_ns = any(namespaces.values())
    return {
        "up": all(namespaces.values()) and bool(state.get("complete")),
        "network": state.get("network") if any_ns else None,
        "scale_out": scale_out if any_ns else 0,
        "namespaces": namespaces,
        "nginx": nginx,
        "run_dir": RUN_DIR,
    }


def is_up() -> bool:
    return status()["up"]
