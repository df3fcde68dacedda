"""SYN floods from spoofed sources, for the tests and bench/ (never anything else): every source
is a random address of 198.18.2.0 - 198.19.255.255 (the lab's benchmarking range, less the two
/24s its nodes live in), every count bounded.

Two ways to send them:
- frames(): the flood as bytes, for BPF_PROG_TEST_RUN of a loaded data plane (run_frames(), in
  C through lb._bpfbatch: nothing leaves the kernel's test harness);
- LiveFlood: in the lab, an XDP program run with BPF_F_TEST_XDP_LIVE_FRAMES on the switch's end
  of the director's pub0 veth, which gives each frame a random source and port (checksums
  recomputed) and sends it with XDP_TX into pub0, where the director's own XDP program (`lb run`)
  meets it as it would meet a flood from the Internet.
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import random
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


# frames per live test run: the kernel's own batch.  The frames go into the director's veth ring
# (256 entries), which its NAPI empties between two runs; a longer run overflows it and the veth
# drops the rest before the director's XDP program sees them.
LIVE_BATCH = 64


def _send_batches(prog_fd: int, frame: bytes, ifindex: int, count: int, batch: int) -> float:
    dt, left = 0.0, count
    while left:
        n = min(batch, left)
        dt += live_run(prog_fd, frame, ifindex, n)
        left -= n
    return dt


INJECT = r"""
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>

BPF_PERCPU_ARRAY(flood_sent, u64, 1);

static __always_inline u16 fold(u32 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (u16)~s;
}

/* each frame: a random source of the flood range and a random port, checksums recomputed */
int lab_flood_inject(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct iphdr *ip = data + sizeof(struct ethhdr);
    struct tcphdr *th = (void *)(ip + 1);
    u8 *tail = (u8 *)(th + 1) + PAYLOAD_LEN;
    if ((void *)tail > end)
        return XDP_ABORTED;
    u32 r = bpf_get_prandom_u32();
    ip->saddr = bpf_htonl(FLOOD_FIRST + r % FLOOD_COUNT);
    th->source = bpf_htons(1024 + bpf_get_prandom_u32() % 64512);
    ip->check = 0;
    u16 *w = (u16 *)ip;
    u32 s = 0;
#pragma unroll
    for (int i = 0; i < 10; i++)
        s += w[i];
    ip->check = fold(s);
    th->check = 0;
    s = (ip->saddr & 0xffff) + (ip->saddr >> 16) + (ip->daddr & 0xffff) + (ip->daddr >> 16) +
        bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(*th) + PAYLOAD_LEN);
    w = (u16 *)th;
#pragma unroll
    for (int i = 0; i < (sizeof(*th) + PAYLOAD_LEN) / 2; i++)
        s += w[i];
    th->check = fold(s);
    u32 k = 0;
    u64 *c = flood_sent.lookup(&k);
    if (c)
        *c += 1;
    return XDP_TX;
}
"""


class LiveFlood:
    """The lab's flood source: the injector loaded (in this process), run from the switch's end of
    the director's pub0 veth (its ingress) so every frame crosses into pub0."""

    def __init__(self, lab, dst: str, dport: int = 80):
        from bcc import BPF

        from lb.lab import check_lab_addr
        from lb.lab.topology import VETHS

        self.lab = lab
        self.node, self.ifname = next((b, ib) for a, ia, b, ib in VETHS if (a, ia) == ("director", "pub0"))
        self.ifindex, src_mac = link_info(lab, self.node, self.ifname)
        _, dst_mac = link_info(lab, "director", "pub0")
        self.frame = syn_frame("198.18.2.1", check_lab_addr(dst), 1024, dport, src_mac, dst_mac)
        self.bpf = BPF(text=INJECT.encode(), cflags=[f"-DFLOOD_FIRST={FLOOD_FIRST}U",
                                                     f"-DFLOOD_COUNT={FLOOD_COUNT}U",
                                                     f"-DPAYLOAD_LEN={len(PAYLOAD)}"])
        self.fn = self.bpf.load_func(b"lab_flood_inject", BPF.XDP)

    def sent(self) -> int:
        t = self.bpf[b"flood_sent"]
        return int(sum(t.getvalue(t.Key(0))))

    def send(self, count: int, batch: int = LIVE_BATCH) -> float:
        """count SYNs (bounded: at most 10 million), `batch` per test run; the seconds it took"""
        if not 0 < count <= 10_000_000:
            raise ValueError(f"a flood of {count} frames: 1 .. 10,000,000")
        return self.lab.in_netns(self.node, _send_batches, self.fn.fd, self.frame, self.ifindex, count, batch,
                                 timeout=max(120.0, count / 20_000))

    def close(self) -> None:
        self.bpf.cleanup()


def link_info(lab, node: str, ifname: str) -> tuple[int, bytes]:
    """(ifindex, MAC) of a link inside a lab node."""
    import json

    d = json.loads(lab.run(node, ["ip", "-j", "link", "show", "dev", ifname], timeout=10).stdout)[0]
    return int(d["ifindex"]), bytes.fromhex(d["address"].replace(":", ""))
