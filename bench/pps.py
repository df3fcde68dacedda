"""Packets per second over veth through the lab's director, as a ratio to a plain redirect
program on the same path, swept over the number of flows, from two packet sources.

    lb-switch                     lb-director                          lb-switch
    injector on the switch port ─► pub0: lb_xdp_public (DR) ─► priv0 ─► the switch port of
    facing pub0 (XDP_TX, live      or the baseline: MAC rewrite       priv0: sink, counts and
    frames, BPF_PROG_TEST_RUN)     + bpf_redirect(priv0)              XDP_DROPs
    or trafgen in lb-client (c0 ─► br-pub ─► sw-pub ─►)

No pktgen here (no kernel modules): the first source is BPF_PROG_TEST_RUN with
BPF_F_TEST_XDP_LIVE_FRAMES running a tiny XDP program with ingress on the switch's end of
pub0's veth; it gives each frame the source port of flow (n mod flows) and returns XDP_TX, so
the frames really cross the veth into the director.  The director forwards them with lb's own
XDP programs (an XdpDataplane with one DR service, VIP 198.18.0.10:80 -> 198.18.1.11, next
hop resolved to the sink's MAC) or with the baseline.  The sink is an XDP program on the
switch's end of priv0's veth (an XDP program there also lets XDP_REDIRECT into priv0 work).
For lb, each flow's SYN is sent first (lb creates the connections), then ACKs are measured.
veth's NAPI runs on the sending CPU, so injector, director and sink share one core: Mpps is
delivered frames / wall time of the sending syscall.

The second source is trafgen (netsniff-ng) in the client's namespace, one process (-P1), TX_RING
on c0, with a config written here: TCP to the VIP from the client's address, the source port
counting through the flows (dinc; trafgen recomputes the checksums of changed fields), 64-byte
frames like the injector's.  Its frames cross the lab's public bridge (a static FDB entry for
pub0's MAC: the port does not flood, and the director's XDP program sends nothing to learn
from).  Mpps is delivered frames / trafgen's own send time.  trafgen reaches only some
hundred kpps here, so it is the bottleneck: its ratio mostly shows that nothing was lost.
Each source gets a fresh lb data plane and opens its own connections (its SYNs first).
Everything runs in the lab (tests' lock) and is torn down at the end."""
from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from bench.common import lab_up, link_info, ratio, summary, switch_port
from lb.lab.flood import live_run
from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane.nexthop import NextHop
from lb.dataplane.attach import XDP_FLAGS_DRV_MODE
from lb.dataplane.xdp import Sizes, XdpDataplane

VIP, RS1, CLIENT = "198.18.0.10", "198.18.1.11", "198.18.0.2"
SPORT0 = 1024

SIZES = {  # name: (runs, packets per run: live frames, trafgen, flow counts)
    "full": (5, 2_000_000, 1_000_000, (1, 1000, 64000)),
    "quick": (3, 400_000, 200_000, (1, 1000, 64000)),
    "smoke": (1, 20_000, 2_000, (1, 100)),
}
TRAFGEN = "trafgen"           # netsniff-ng, installed by scripts/setup.sh
TRAFGEN_MIN_PPS = 20_000      # its timeout: count / this + 10 s (it does ~300k here)
CLIENT_IF = "c0"

PROGS = r"""
#include <linux/if_ether.h>

BPF_PERCPU_ARRAY(inj_ctr, u64, 1);
BPF_ARRAY(inj_cfg, u32, 1);
BPF_PERCPU_ARRAY(sink_cnt, u64, 1);

/* the source: flow n mod flows gets source port SPORT0 + flow; out again through the ingress */
int bench_inject(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    unsigned char *p = data;
    u32 k = 0;
    if (data + 54 > end)
        return XDP_ABORTED;
    u64 *c = inj_ctr.lookup(&k);
    u32 *nf = inj_cfg.lookup(&k);
    if (!c || !nf || *nf == 0)
        return XDP_ABORTED;
    u64 n = *c;
    *c = n + 1;
    u32 port = SPORT0 + (u32)(n % *nf);
    p[34] = port >> 8;
    p[35] = port & 0xff;
    return XDP_TX;
}

/* the sink */
int bench_sink(struct xdp_md *ctx)
{
    u32 k = 0;
    u64 *c = sink_cnt.lookup(&k);
    if (c)
        *c += 1;
    return XDP_DROP;
}

/* the baseline director: what a forwarder must do at least (MAC rewrite, redirect) */
int bench_redirect(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    unsigned char dmac[ETH_ALEN] = {DMAC}, smac[ETH_ALEN] = {SMAC};
    if ((void *)(eth + 1) > end)
        return XDP_DROP;
    __builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, smac, ETH_ALEN);
    return bpf_redirect(OUT_IFINDEX, 0);
}
"""

def _mac_init(mac: bytes) -> str:
    return ",".join(f"0x{b:02x}" for b in mac)


def find_trafgen() -> str:
    """trafgen's path; an error (not a skip) without it: scripts/setup.sh installs netsniff-ng."""
    path = shutil.which(TRAFGEN) or shutil.which(TRAFGEN, path="/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError("bench pps: trafgen not found (package netsniff-ng; scripts/setup.sh installs it)")
    return path


def trafgen_version(path: str) -> str:
    out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10).stdout
    return out.splitlines()[0].strip() if out else ""


def trafgen_config(dst_mac: bytes, src_mac: bytes, flows: int, flags: str) -> str:
    """One TCP frame to the virtual service, 64 bytes like the injector's: flow n is source port
    SPORT0 + n (trafgen counts it up per frame and recomputes the checksums it changed)."""
    from lb.lab import check_lab_addr

    src, dst = check_lab_addr(CLIENT), check_lab_addr(VIP)
    if not 1 <= flows <= 65536 - SPORT0:
        raise ValueError(f"bench pps: {flows} flows do not fit in the source ports from {SPORT0}")
    sport = str(SPORT0) if flows == 1 else f"dinc({SPORT0}, {SPORT0 + flows - 1})"
    tcp_flags = {"S": "syn", "A": "ack"}[flags]
    return (f"/* bench/pps.py: TCP {tcp_flags} {src} -> {dst}:80, {flows} flow(s) */\n"
            f"{{\n  eth(da={dst_mac.hex(':')}, sa={src_mac.hex(':')}),\n"
            f"  ipv4(sa={src}, da={dst}, ttl=64, df),\n"
            f"  tcp(sp={sport}, dp=80, seq=1, aseq=1, win=512, {tcp_flags}),\n"
            f"  fill(0x78, 10)\n}}\n")


_TG_TIME = re.compile(r"(\d+) sec, (\d+) usec on CPU\d+ \((\d+) packets\)")
_TG_SENT = re.compile(r"(\d+) packets outgoing")


def trafgen_run(lab, path: str, conf: str, count: int) -> float:
    """Run trafgen in the client's namespace for exactly `count` frames, killed if still running
    after count / TRAFGEN_MIN_PPS + 10 s; returns its own send time in seconds."""
    timeout = count / TRAFGEN_MIN_PPS + 10
    # --no-sock-mem/--notouch-irq: leave the host's socket buffer sysctls and IRQ affinity alone
    argv = [path, "--dev", CLIENT_IF, "--conf", conf, "--num", str(count), "--cpus", "1",
            "--no-sock-mem", "--notouch-irq"]
    try:
        out = lab.run("client", argv, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"bench pps: trafgen still running after {timeout:.0f}s ({count} frames), killed") from None
    sent, times = _TG_SENT.search(out), _TG_TIME.findall(out)
    if not sent or not times:
        raise RuntimeError(f"bench pps: no packet count or send time in trafgen's output:\n{out[-1000:]}")
    if int(sent.group(1)) != count:
        raise RuntimeError(f"bench pps: trafgen sent {sent.group(1)} frames, not {count}")
    return sum(int(s) + int(us) / 1e6 for s, us, _ in times)


class Pps:
    def __init__(self, lab, trafgen: str, workdir: str):
        from bcc import BPF

        self.BPF = BPF
        self.lab = lab
        self.trafgen, self.workdir = trafgen, workdir
        self.attached: list[tuple[str, str]] = []      # (node, ifname)
        self.dp: XdpDataplane | None = None
        self.bpf = None
        self.src_node, self.src_if = switch_port("pub0")
        self.sink_node, self.sink_if = switch_port("priv0")
        self.src_ifindex, self.src_mac = link_info(lab, self.src_node, self.src_if)
        _, self.pub_mac = link_info(lab, "director", "pub0")
        self.priv_ifindex, self.priv_mac = link_info(lab, "director", "priv0")
        _, self.sink_mac = link_info(lab, self.sink_node, self.sink_if)
        _, self.client_mac = link_info(lab, "client", CLIENT_IF)
        # trafgen's frames cross the public bridge, whose director ports do not flood unknown
        # unicast; XDP on pub0 answers nothing the bridge could learn pub0's MAC from.
        lab.run(self.src_node, ["bridge", "fdb", "replace", self.pub_mac.hex(":"), "dev", self.src_if,
                                "master", "static"], timeout=10)
        self.frames = {f: self.frame(f) for f in ("S", "A")}
        self.bpf = BPF(text=PROGS.encode(), cflags=[
            f"-DSPORT0={SPORT0}", f"-DOUT_IFINDEX={self.priv_ifindex}",
            f"-DDMAC={_mac_init(self.sink_mac)}", f"-DSMAC={_mac_init(self.priv_mac)}"])
        self.inject = self.bpf.load_func(b"bench_inject", BPF.XDP)
        self.sink = self.bpf.load_func(b"bench_sink", BPF.XDP)
        self.redirect = self.bpf.load_func(b"bench_redirect", BPF.XDP)
        self.attach(self.sink_node, self.sink_if, self.sink)

    def frame(self, flags: str) -> bytes:
        return bytes(Ether(dst=self.pub_mac.hex(":"), src=self.src_mac.hex(":")) / IP(src=CLIENT, dst=VIP) /
                     TCP(sport=SPORT0, dport=80, flags=flags) / (b"x" * 10))

    def attach(self, node: str, ifname: str, fn) -> None:
        self.lab.in_netns(node, self.BPF.attach_xdp, ifname.encode(), fn, XDP_FLAGS_DRV_MODE, timeout=20)
        self.attached.append((node, ifname))

    def detach(self, node: str, ifname: str) -> None:
        self.lab.in_netns(node, self.BPF.remove_xdp, ifname.encode(), XDP_FLAGS_DRV_MODE, timeout=20)
        self.attached.remove((node, ifname))

    def load_lb(self) -> None:
        def resolver(addr, need_onlink=False):
            return NextHop(self.priv_ifindex, "priv0", self.sink_mac, self.priv_mac, True)

        self.dp = XdpDataplane(f"benchpps{os.getpid()}", Sizes(16, 256, 16, 1 << 17), resolver=resolver)
        self.dp.load()
        self.dp.apply(TableSpec((ServiceSpec("tcp", ipaddress.ip_address(VIP), 80, "rr",
                                             (RealSpec(ipaddress.ip_address(RS1), 80, 1, "dr"),)),)))
        self.lab.in_netns("director", self.dp.attach, "pub0", "public", "native", timeout=20)
        self.attached.append(("director", "pub0"))

    def unload_lb(self) -> None:
        if self.dp is None:
            return
        try:
            if ("director", "pub0") in self.attached:
                self.detach("director", "pub0")
        finally:
            self.dp.unpin()
            self.dp.close()
            self.dp = None

    def close(self) -> None:
        for node, ifname in list(self.attached):
            try:
                self.detach(node, ifname)
            except Exception:
                pass
        if self.dp is not None:
            self.dp.unpin()
            self.dp.close()
        if self.bpf is not None:
            self.bpf.cleanup()

    def delivered(self) -> int:
        t = self.bpf[b"sink_cnt"]
        return int(sum(t.getvalue(t.Key(0))))

    def send(self, source: str, flags: str, flows: int, count: int) -> tuple[float, int]:
        """`count` TCP frames (flags "S" or "A") over `flows` flows from `source`:
        (seconds, frames that reached the sink)"""
        before = self.delivered()
        if source == "trafgen":
            conf = os.path.join(self.workdir, f"{flags}-{flows}.cfg")
            if not os.path.exists(conf):
                with open(conf, "w") as f:
                    f.write(trafgen_config(self.pub_mac, self.client_mac, flows, flags))
            dt = trafgen_run(self.lab, self.trafgen, conf, count)
        else:
            self.bpf[b"inj_cfg"][ctypes.c_int(0)] = ctypes.c_uint(flows)
            dt = self.lab.in_netns(self.src_node, live_run, self.inject.fd, self.frames[flags], self.src_ifindex,
                                   count, timeout=120)
        time.sleep(0.05)         # the last batch's NAPI work (normally already done in the send)
        return dt, self.delivered() - before

    def measure(self, source: str, flows: int, count: int, runs: int) -> list[tuple[float, int]]:
        self.send(source, "A", flows, max(count // 4, min(count, 10000)))     # warm-up, not recorded
        return [self.send(source, "A", flows, count) for _ in range(runs)]

    def prime(self, source: str, flows: int) -> int:
        """each flow's SYN, so that lb opens the connections (a lost one is sent again)"""
        for _ in range(3):
            self.send(source, "S", flows, flows)
            if self.conns() >= flows:
                break
        return self.conns()

    def conns(self) -> int:
        return len(self.dp.maps["lb_conns"].items())


SOURCES = ("live frames", "trafgen")


def suite(size: str = "full") -> dict:
    runs, n_live, n_trafgen, flow_counts = SIZES[size]
    trafgen = find_trafgen()
    count = {"live frames": n_live, "trafgen": n_trafgen}
    base: dict[tuple[str, int], list] = {}
    lbr: dict[tuple[str, int], list] = {}
    primed: dict[tuple[str, int], int] = {}
    with lab_up("direct") as lab, tempfile.TemporaryDirectory(prefix="lb-bench-pps-") as tmp:
        p = Pps(lab, trafgen, tmp)
        try:
            p.attach("director", "pub0", p.redirect)
            for src in SOURCES:
                for flows in flow_counts:
                    base[src, flows] = p.measure(src, flows, count[src], runs)
            p.detach("director", "pub0")
            for src in SOURCES:
                p.load_lb()         # a fresh connection table: each source opens its own flows
                for flows in flow_counts:
                    primed[src, flows] = p.prime(src, flows)
                    lbr[src, flows] = p.measure(src, flows, count[src], runs)
                p.unload_lb()
        finally:
            p.close()
    results = []
    for src in SOURCES:
        for flows in flow_counts:
            b_mpps = [d / t / 1e6 for t, d in base[src, flows]]
            l_mpps = [d / t / 1e6 for t, d in lbr[src, flows]]
            bs, ls = summary(b_mpps), summary(l_mpps)
            results.append({"source": src, "scenario": f"baseline: MAC rewrite + bpf_redirect, {flows} flows",
                            "baseline": True, "flows": flows, "mpps": bs, "runs": b_mpps, "sent": count[src],
                            "delivered": [d for _, d in base[src, flows]], "ratio": 1.0})
            results.append({"source": src, "scenario": f"lb DR, established, {flows} flows", "flows": flows,
                            "mpps": ls, "runs": l_mpps, "sent": count[src],
                            "delivered": [d for _, d in lbr[src, flows]], "connections": primed[src, flows],
                            "ratio": ratio(ls["median"], bs["median"])})
    return {"suite": "pps", "size": size, "runs": runs, "packets_per_run": count, "frame_bytes": 64,
            "sources": {"live frames": "BPF_PROG_TEST_RUN live frames (XDP_TX) on the switch end of pub0's veth",
                        "trafgen": f"{trafgen_version(trafgen)}: -P1 TX_RING on lb-client's c0, through the "
                                   "public bridge; Mpps from its own send time"},
            "note": "source, director and sink share one core (veth NAPI runs on the sending CPU); "
                    "trafgen is the bottleneck of its rows (its ratio mostly shows no loss)",
            "results": results}


def table(res: dict) -> str:
    lines = ["| source | scenario | flows | Mpps (median) | spread | delivered/sent | ratio to redirect |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in res["results"]:
        deliv = min(r["delivered"]) / r["sent"] if r["sent"] else 0
        lines.append(f"| {r.get('source', SOURCES[0])} | {r['scenario']} | {r['flows']} | {r['mpps']['median']:.3f} | "
                     f"±{r['mpps']['spread'] * 50:.0f}% | {deliv:.3f} | {r['ratio']:.2f}x |")
    return "\n".join(lines)
