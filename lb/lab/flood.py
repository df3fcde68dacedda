"""SYN floods from spoofed sources, for the tests and bench/ (never anything else): every source
is a random address of 198.18.2.0 - 198.19.255.255 (the lab's benchmarking range, less the two
/24s its nodes live in), every count bounded.

Two ways to send them:
- frames(): the flood as bytes, for BPF_PROG_TEST_RUN of a loaded data plane (run_frames(), in
  C through lb._bpfbatch: nothing leaves the kernel's test harness);
- LabFlood: in the lab, frames() sent through a packet socket on the switch's end of the
  director's pub0 veth, where the director's own XDP program (`lb run`) meets them as it would
  meet a flood from the Internet.  A packet socket works on every kernel: live frames
  (BPF_F_TEST_XDP_LIVE_FRAMES, live_run(), which bench/pps.py uses for its rates) are refused by
  some (EPERM where the sandbox withholds it: live_frames_refused() says so).
"""
from __future__ import annotations

import ctypes
import errno
import functools
import ipaddress
import os
import random
import socket
import struct
import time

FLOOD_FIRST = int(ipaddress.IPv4Address("198.18.2.0"))
FLOOD_COUNT = int(ipaddress.IPv4Address("198.19.255.255")) - FLOOD_FIRST + 1
PAYLOAD = b"f" * 10

BPF_PROG_TEST_RUN = 10
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
_NR_BPF = 321
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def internet_checksum(data: bytes) -> int:
    """RFC 1071's one's complement checksum of data"""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn_frame(src: str, dst: str, sport: int, dport: int, src_mac: bytes, dst_mac: bytes) -> bytes:
    """One pure SYN frame (64 bytes: Ethernet, IPv4, TCP, 10 bytes of payload), checksums right."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 512, 0, 0) + PAYLOAD
    tsum = internet_checksum(s + d + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", tsum) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + tcp


def frames(dst: str, dport: int, n: int, seed: int, src_mac: bytes = bytes.fromhex("020000000002"),
           dst_mac: bytes = bytes.fromhex("020000000101")) -> tuple[bytes, int]:
    """n flood SYNs to dst:dport from random sources and ports: (frames back to back, frame size)"""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        src = str(ipaddress.IPv4Address(FLOOD_FIRST + rng.randrange(FLOOD_COUNT)))
        out.append(syn_frame(src, dst, rng.randrange(1024, 65536), dport, src_mac, dst_mac))
    return b"".join(out), len(out[0])


def run_frames(prog_fd: int, blob: bytes, size: int) -> float:
    """BPF_PROG_TEST_RUN of each frame of blob once (lb._bpfbatch, a fresh copy each run): the
    summed in-kernel time, in ns"""
    from lb import _bpfbatch

    ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
    if size <= 0 or len(blob) < size:
        # (a module built before bb_test_run_loop refused 0 packets died of SIGFPE on them)
        raise ValueError(f"no frames to run ({len(blob)} bytes of {size}-byte frames)")
    n = len(blob) // size
    rc = ffi.new("unsigned *")
    total = lib.bb_test_run_loop(prog_fd, ffi.from_buffer(blob), size, n, n, rc)
    if total < 0:
        raise OSError(-total, os.strerror(-total))
    return float(total)


def live_run(prog_fd: int, frame: bytes, ifindex: int, repeat: int) -> float:
    """BPF_PROG_TEST_RUN in live-frames mode with ingress `ifindex` (in the calling thread's
    network namespace); returns the wall time of the syscall in seconds."""
    data = ctypes.create_string_buffer(frame, len(frame))
    ctx = ctypes.create_string_buffer(struct.pack("=6I", 0, len(frame), 0, ifindex, 0, 0), 24)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIIIQQIIIIQQIII", attr, 0, prog_fd, 0, len(frame), 0, ctypes.addressof(data), 0,
                     repeat, 0, 24, 0, ctypes.addressof(ctx), 0, BPF_F_TEST_XDP_LIVE_FRAMES, 0, 0)
    t0 = time.perf_counter()
    rc = _libc.syscall(_NR_BPF, BPF_PROG_TEST_RUN, attr, 128)
    dt = time.perf_counter() - t0
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN (live frames): {os.strerror(err)}")
    return dt


class LabFlood:
    """The lab's flood source: `count` spoofed SYNs (frames(): random sources and ports, right
    checksums) written to a packet socket on the switch's end of the director's pub0 veth, so
    every frame crosses into pub0.  veth hands each to the director's XDP program in the
    sender's own softirq: one frame a send never overflows the director's veth ring."""

    def __init__(self, lab, dst: str, dport: int = 80, seed: int = 1):
        from lb.lab import check_lab_addr
        from lb.lab.topology import VETHS

        self.lab = lab
        self.node, self.ifname = next((b, ib) for a, ia, b, ib in VETHS if (a, ia) == ("director", "pub0"))
        _, self.src_mac = link_info(lab, self.node, self.ifname)
        _, self.dst_mac = link_info(lab, "director", "pub0")
        self.dst, self.dport, self.seed = check_lab_addr(dst), dport, seed
        self._sent = 0

    def sent(self) -> int:
        """frames the socket took so far"""
        return self._sent

    def send(self, count: int) -> float:
        """count SYNs (bounded: at most 1 million); the seconds it took"""
        if not 0 < count <= 1_000_000:
            raise ValueError(f"a flood of {count} frames: 1 .. 1,000,000")
        blob, size = frames(self.dst, self.dport, count, self.seed + self._sent, self.src_mac, self.dst_mac)
        sent, dt = self.lab.in_netns(self.node, _send_socket, self.ifname, blob, size,
                                     timeout=max(120.0, count / 5_000))
        self._sent += sent
        return dt


def _send_socket(ifname: str, blob: bytes, size: int) -> tuple[int, float]:
    sent = 0
    t0 = time.perf_counter()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        view = memoryview(blob)
        for off in range(0, len(blob) - size + 1, size):
            sent += s.send(view[off:off + size]) == size
    return sent, time.perf_counter() - t0


@functools.cache
def live_frames_refused() -> str | None:
    """Why this kernel refuses BPF_PROG_TEST_RUN with live frames, or None where it runs them:
    one run of an XDP_DROP program (nothing is sent) with ingress lo, asked once a process."""
    from bcc import BPF

    b = BPF(text=b"int lb_live_probe(struct xdp_md *ctx) { return XDP_DROP; }")
    try:
        fn = b.load_func(b"lb_live_probe", BPF.XDP)
        try:
            live_run(fn.fd, bytes(64), socket.if_nametoindex("lo"), 1)
        except OSError as e:
            return (f"this kernel refuses BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES "
                    f"({errno.errorcode.get(e.errno, e.errno)}: {os.strerror(e.errno)})")
        return None
    finally:
        b.cleanup()


def link_info(lab, node: str, ifname: str) -> tuple[int, bytes]:
    """(ifindex, MAC) of a link inside a lab node."""
    import json

    d = json.loads(lab.run(node, ["ip", "-j", "link", "show", "dev", ifname], timeout=10).stdout)[0]
    return int(d["ifindex"]), bytes.fromhex(d["address"].replace(":", ""))
