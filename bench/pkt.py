"""Per-packet cost of the XDP programs (BPF_PROG_TEST_RUN), as ratios to a trivial program
measured in the same run: one that swaps the MACs and returns XDP_TX.

Every run gets a fresh copy of its packet (repeat=1 per syscall, looped in C by lb._bpfbatch),
because the kernel does not reset a packet between repeats and lb rewrites packets."""
from __future__ import annotations

import ipaddress
import os
import statistics

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb import _bpfbatch
from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane.nexthop import NextHop
from lb.dataplane.xdp import Sizes, XdpDataplane

TRIVIAL = r"""
#include <linux/if_ether.h>

int bench_trivial(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    unsigned char tmp[ETH_ALEN];
    if ((void *)(eth + 1) > end)
        return XDP_DROP;
    __builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
    return XDP_TX;
}
"""
CLIENT_MAC, PUB_MAC = "02:00:00:00:00:02", "02:00:00:00:01:01"
VIP_DR, VIP_NAT, VIP_WLC = "198.18.0.10", "198.18.0.20", "198.18.0.30"


def _resolver(addr, need_onlink=False):
    last = int(ipaddress.ip_address(addr)) & 0xFF
    return NextHop(7, "priv0", bytes([2, 0, 0, 0, 2, last]), bytes([2, 0, 0, 0, 1, 2]), True)


def _frames(dst, dport, flags, nflows, sport0=20000, src_base="198.18.4.0"):
    out = []
    base = int(ipaddress.ip_address(src_base))
    for i in range(nflows):
        src = str(ipaddress.ip_address(base + i // 50000))
        out.append(bytes(Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=src, dst=dst) /
                         TCP(sport=sport0 + i % 50000, dport=dport, flags=flags) / (b"x" * 10)))
    return out


class Bench:
    def __init__(self, conns: int = 1 << 17):
        from bcc import BPF

        self.dp = XdpDataplane(f"bench{os.getpid()}", Sizes(16, 256, 16, conns), resolver=_resolver)
        self.dp.load()
        self.trivial_bpf = None
        try:
            self._setup(BPF)
        except BaseException:
            self.close()
            raise

    def _setup(self, BPF):
        reals16 = tuple(RealSpec(ipaddress.ip_address(f"198.18.2.{i + 1}"), 80, 1 + i % 3, "dr") for i in range(16))
        reals3n = tuple(RealSpec(ipaddress.ip_address(f"198.18.1.{11 + i}"), 8080, 1, "nat") for i in range(3))
        reals3d = tuple(RealSpec(ipaddress.ip_address(f"198.18.1.{11 + i}"), 80, 1, "dr") for i in range(3))
        self.dp.apply(TableSpec((
            ServiceSpec("tcp", ipaddress.ip_address(VIP_DR), 80, "rr", reals3d),
            ServiceSpec("tcp", ipaddress.ip_address(VIP_NAT), 80, "rr", reals3n),
            ServiceSpec("tcp", ipaddress.ip_address(VIP_WLC), 80, "wlc", reals16),
        )))
        self.trivial_bpf = BPF(text=TRIVIAL.encode())
        self.trivial = self.trivial_bpf.load_func(b"bench_trivial", BPF.XDP)

    def close(self):
        self.dp.unpin()
        self.dp.close()
        if self.trivial_bpf is not None:
            self.trivial_bpf.cleanup()

    def run(self, fd: int, frames: list[bytes], iterations: int) -> float:
        """ns per packet (the kernel's own measure of each run)"""
        ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
        size = len(frames[0])
        assert all(len(f) == size for f in frames)
        buf = ffi.from_buffer(b"".join(frames))
        rc = ffi.new("unsigned *")
        total = lib.bb_test_run_loop(fd, buf, size, len(frames), iterations, rc)
        if total < 0:
            raise OSError(-total, os.strerror(-total))
        return total / iterations

    def prime(self, frames):
        """send each flow's SYN so that the measured packets hit established connections"""
        self.run(self.dp.fns["lb_xdp_public"].fd, frames, len(frames))

    def scenarios(self, many: int):
        pub = self.dp.fns["lb_xdp_public"].fd
        priv = self.dp.fns["lb_xdp_private"].fd
        out = []
        one_syn = _frames(VIP_DR, 80, "S", 1)
        self.prime(one_syn)
        out.append(("established TCP flow, DR (1 flow)", pub, _frames(VIP_DR, 80, "A", 1)))
        syns = _frames(VIP_DR, 80, "S", many, sport0=30000)
        self.prime(syns)
        out.append((f"established TCP flow, DR ({many} flows)", pub, _frames(VIP_DR, 80, "A", many, sport0=30000)))
        self.prime(_frames(VIP_NAT, 80, "S", 1))
        out.append(("established NAT request (1 flow)", pub, _frames(VIP_NAT, 80, "A", 1)))
        # the reply of that flow: real server -> client
        real = "198.18.1.13"   # rr's first pick (IPVS list order)
        reply = bytes(Ether(src="02:00:00:00:02:0d", dst="02:00:00:00:01:02") / IP(src=real, dst="198.18.4.0") /
                      TCP(sport=8080, dport=20000, flags="A") / (b"y" * 10))
        out.append(("NAT reply (1 flow)", priv, [reply]))
        out.append(("new connection (SYN), wlc over 16 real servers", pub,
                    _frames(VIP_WLC, 80, "S", many * 4, sport0=1000, src_base="198.18.6.0")))
        out.append(("packet not for a virtual service (XDP_PASS)", pub, _frames("198.18.0.1", 22, "A", 1)))
        return out


SIZES = {  # name: (runs, iterations per run, flows in the many-flow scenarios)
    "full": (7, 200000, 10000),
    "quick": (3, 20000, 2000),
    "smoke": (1, 500, 100),     # make test: proves the suite runs, measures nothing
}


def suite(size: str = "full") -> dict:
    runs, iters, many = SIZES[size]
    b = Bench()
    try:
        results = []
        base = [b.run(b.trivial.fd, _frames(VIP_DR, 80, "A", 1), iters) for _ in range(runs)]
        base_ns = statistics.median(base)
        results.append({"scenario": "baseline: trivial MAC swap + XDP_TX", "ns": base_ns,
                        "runs": base, "ratio": 1.0})
        for name, fd, frames in b.scenarios(many):
            if "new connection" in name:
                # each SYN is a new flow: one pass over distinct flows per run
                n = len(frames) // runs
                vals = [b.run(fd, frames[i * n:(i + 1) * n], n) for i in range(runs)]
            else:
                vals = [b.run(fd, frames, iters) for _ in range(runs)]
            ns = statistics.median(vals)
            results.append({"scenario": name, "ns": ns, "runs": vals, "ratio": ns / base_ns})
        return {"suite": "pkt", "size": size, "iterations": iters, "runs": runs, "results": results}
    finally:
        b.close()
