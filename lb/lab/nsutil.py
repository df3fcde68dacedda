"""Running commands and Python code inside the lab's network namespaces.

Never uses ``ip netns exec``: it remounts /sys inside a private mount namespace and so hides
the host's bpffs (/sys/fs/bpf). Commands go through ``nsenter --net=PATH`` (network namespace
only), Python code through a short-lived worker thread that calls setns(2) for itself.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import subprocess
import threading
import time
from typing import Any, Callable

PREFIX = "lb-"
NETNS_DIR = "/run/netns"
NODES = ("client", "director", "rs1", "rs2", "rs3", "director2")
SWITCH = "switch"
ALL_NODES = NODES + (SWITCH,)
# the scale-out lab's other nodes (lb.lab.scaleout): the router, and directors 3..8
SCALEOUT_MAX = 8
SCALEOUT_NODES = ("router",) + tuple(f"director{i}" for i in range(3, SCALEOUT_MAX + 1))
KNOWN_NODES = ALL_NODES + SCALEOUT_NODES

# The hard network rule: the lab only ever talks to addresses in this block.
LAB_NET = ipaddress.ip_network("198.18.0.0/15")
LAB_NET6 = ipaddress.ip_network("2001:2::/48")     # RFC 5180, the dual-stack lab's

CLONE_NEWNET = 0x40000000
NSENTER = "nsenter"


class LabCommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the command's stderr."""

    def __str__(self) -> str:
        msg = super().__str__()
        err = self.stderr
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        if err:
            msg += "\nstderr: " + err.strip()[-2000:]
        return msg


def check_node(node: str) -> str:
    if node not in KNOWN_NODES:
        raise ValueError(f"unknown lab node {node!r} (expected one of {', '.join(KNOWN_NODES)})")
    return node


def netns_name(node: str) -> str:
    return PREFIX + check_node(node)


def netns_path(node: str) -> str:
    """/run/netns/lb-NODE"""
    return f"{NETNS_DIR}/{netns_name(node)}"


def exec_argv(node: str, argv: list[str]) -> list[str]:
    """argv prefixed so that it runs inside NODE's network namespace (and nothing else)."""
    return [NSENTER, f"--net={netns_path(node)}", "--", *[str(a) for a in argv]]


def run(node: str, argv: list[str], check: bool = True, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess:
    """subprocess.run inside NODE; output captured as text unless stdout/stderr are given."""
    if "stdout" not in kw and "stderr" not in kw and "capture_output" not in kw:
        kw["capture_output"] = True
    kw.setdefault("text", True)
    if "input" not in kw and "stdin" not in kw:
        kw["stdin"] = subprocess.DEVNULL
    proc = subprocess.run(exec_argv(node, argv), timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise LabCommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def popen(node: str, argv: list[str], **kw: Any) -> subprocess.Popen:
    """subprocess.Popen inside NODE. nsenter exec()s the command, so .pid is the command's pid.

    Returns once the child has joined NODE's namespace (or exited; bounded to ~2 s), so that
    e.g. a down() right afterwards finds it there.
    """
    target = os.stat(netns_path(node))
    p = subprocess.Popen(exec_argv(node, argv), **kw)
    for _ in range(200):
        if p.poll() is not None:
            break
        try:
            st = os.stat(f"/proc/{p.pid}/ns/net")
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                break
        except OSError:
            break
        time.sleep(0.01)
    return p


_libc = None


def _setns(fd: int) -> None:
    global _libc
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(node: str, fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Any:
    """Run fn(*args) in a worker thread that has joined NODE's network namespace.

    Returns fn's result or re-raises its exception. Sockets created by fn stay in that namespace.
    Raises TimeoutError if fn has not finished after ``timeout`` seconds (the daemon thread is left).
    """
    fd = os.open(netns_path(node), os.O_RDONLY | os.O_CLOEXEC)
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            box["error"] = e

    t = threading.Thread(target=worker, name=f"lab-netns-{node}", daemon=True)
    try:
        t.start()
    except BaseException:
        os.close(fd)
        raise
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"in_netns({node!r}, {getattr(fn, '__name__', fn)!r}) still running after {timeout}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def check_lab_addr(host: str) -> str:
    """Refuse any address outside 198.18.0.0/15 and 2001:2::/48 (the lab's hard network rule)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"lab: {host!r} is not an IP address (the lab uses 198.18.0.0/15 and "
                         "2001:2::/48 literals only)") from None
    if addr not in (LAB_NET if addr.version == 4 else LAB_NET6):
        raise ValueError(f"lab: refusing to talk to {host}: not in {LAB_NET} or {LAB_NET6}")
    return str(addr)


def socket_in(node: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    """A new (unconnected) socket that lives in NODE's network namespace."""
    return in_netns(node, socket.socket, family, type, proto, timeout=10.0)


def connect(node: str, host: str, port: int, timeout: float = 5.0, sport: int = 0) -> socket.socket:
    """A TCP socket created inside NODE and connected to host:port (host must be in 198.18.0.0/15).

    ``sport``: the client port (0: the kernel's choice).  The returned socket keeps ``timeout``
    as its timeout. Connection errors propagate (ConnectionRefusedError, TimeoutError/socket.timeout, ...).
    """
    host = check_lab_addr(host)
    sock = socket_in(node, socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.settimeout(timeout)
        if sport:  # a port the caller reuses may still be in TIME_WAIT here
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::" if ":" in host else "0.0.0.0", int(sport)))
        sock.connect((host, int(port)))
    except BaseException:
        sock.close()
        raise
    return sock


def http_get(node: str, host: str, port: int = 80, path: str = "/", timeout: float = 3.0,
             sport: int = 0) -> tuple[int, str]:
    """Minimal HTTP/1.0 GET from inside NODE. Returns (status, body). Bounded by ``timeout`` per socket op."""
    with connect(node, host, port, timeout, sport) as s:
        name = f"[{host}]" if ":" in host else host
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        chunks: list[bytes] = []
        total = 0
        for _ in range(1024):  # bounded: at most 1024 reads / 1 MiB
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if total > 1 << 20:
                break
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"bad HTTP response from {host}:{port}: {raw[:200]!r}") from None
    return status, body.decode(errors="replace")
