"""Packets per second over veth through the lab's director, as a ratio to a plain redirect
program on the same path, swept over the number of flows, from two packet sources.

    lb-switch                     lb-director                          lb-switch
    injector on the switch port ─► pub0: lb_xdp_public (DR) ─► priv0 ─► the switch port of
    facing pub0 (XDP_TX, live      or the baseline: MAC rewrite       priv0: sink, counts and
    frames, BPF_PROG_TEST_RUN)     + bpf_redirect(priv0)              XDP_DROPs
    or trafgen in lb-client (c0 ─► br-pub ─► sw-pub ─►)

Four programs take the director's place in turn, in interleaved rounds (redirect,
redirect_map, stateful, lb; the order rotated each round), so that every ratio pairs runs taken
side by side:

  redirect   MAC rewrite + bpf_redirect(priv0): what any forwarder must do at least
  redirect_map  the same through a devmap (bpf_redirect_map), as lb redirects: without the
             kernel's per-packet ifindex lookup
  stateful   the reference stateful forwarder: an LRU hash lookup on the 5-tuple (16-byte key,
             the size of lb_conns4's; 16-byte value: a minimal connection entry, never written on a hit;
             lb's is 64 bytes), an insert on a miss, then as redirect_map (the way lb leaves); its
             table has lb_conns4's size (lb's IPv4 established table).  The honest baseline for many
             flows: it pays the connection table's cache misses and nothing else
  lb         lb_xdp_public with one DR service

No pktgen here (no kernel modules): the first source is BPF_PROG_TEST_RUN with
BPF_F_TEST_XDP_LIVE_FRAMES running a tiny XDP program with ingress on the switch's end of
pub0's veth; it gives each frame the source port of flow (n mod flows) and returns XDP_TX, so
the frames really cross the veth into the director.  The director forwards them with lb's own
XDP programs (an XdpDataplane with one DR service, VIP 198.18.0.10:80 -> 198.18.1.11, next
hop resolved to the sink's MAC) or with the baseline.  The sink is an XDP program on the
switch's end of priv0's veth (an XDP program there also lets XDP_REDIRECT into priv0 work).
For lb, each flow's handshake is sent first (its SYN, then its ACK, in chunks of PRIME_CHUNK flows
so that a table of embryonic connections smaller than the flow count never evicts one before its
ACK), then ACKs are measured.
veth's NAPI runs on the sending CPU, so injector, director and sink share one core: Mpps is
delivered frames / wall time of the sending syscall.

The second source is trafgen (netsniff-ng) in the client's namespace, one process (-P1), TX_RING
on c0, with a config written here: TCP to the VIP from the client's address, the source port
counting through the flows (dinc; trafgen recomputes the checksums of changed fields), 64-byte
frames like the injector's.  Its frames cross the lab's public bridge (a static FDB entry for
pub0's MAC: the port does not flood, and the director's XDP program sends nothing to learn
from).  Mpps is delivered frames / trafgen's own send time.  trafgen reaches only some
hundred kpps here, so it is the bottleneck: its ratio mostly shows that nothing was lost.
Each source gets a fresh lb data plane and opens its own connections (its SYNs first).  A kernel
that refuses live frames (EPERM in some sandboxes: lb.lab.flood.live_frames_refused) gets trafgen's
rows only, and the report says why the others are missing.
Everything runs in the lab (tests' lock) and is torn down at the end."""
from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from bench.common import estimate, lab_up, link_info, paired, switch_port, verdict
from lb.lab.flood import live_frames_refused, live_run
from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane.nexthop import NextHop
from lb.dataplane.attach import XDP_FLAGS_DRV_MODE
from lb.dataplane.maps import BpfMap
from lb.dataplane.xdp import Sizes, XdpDataplane

VIP, RS1, CLIENT = "198.18.0.10", "198.18.1.11", "198.18.0.2"
SPORT0 = 1024

SIZES = {  # name: ((rounds, packets per run) of live frames, of trafgen, flow counts)
    "full": ((21, 700_000), (7, 1_000_000), (1, 1000, 64000)),
    "quick": ((9, 200_000), (5, 200_000), (1, 1000, 64000)),
    "smoke": ((2, 20_000), (2, 2_000), (1, 100)),
}
# Live frames in 21 rounds of 700,000 (7 of 2,000,000 until 2026-12-03, about the same work): with
# seven runs a median's 95% interval is the runs' whole range (±8-25% here, no verdict); trafgen
# keeps 7, its runs are seconds long and its rows show no loss more than a ratio.
PRIME_CHUNK = 8192
CONN_TABLE = 1 << 17          # lb_conns4 here (these flows are IPv4), and the stateful reference's table
PROGRAMS = ("redirect", "redirect_map", "stateful", "lb")
# DESIGN.md: live frames, 1-1000 flows >= 0.8x the plain redirect; 64k flows >= 0.9x the stateful
# reference.  (flows at most, baseline, limit)
TARGETS = ((1000, "redirect", 0.8), (65536, "stateful", 0.9))
TRAFGEN = "trafgen"           # netsniff-ng, installed by scripts/setup.sh
TRAFGEN_MIN_PPS = 20_000      # its timeout: count / this + 10 s (it does ~300k here)
CLIENT_IF = "c0"

PROGS = r"""
#include <linux/if_ether.h>

#include <linux/ip.h>
#include <linux/tcp.h>

BPF_PERCPU_ARRAY(inj_ctr, u64, 1);
BPF_ARRAY(inj_cfg, u32, 2);          /* [0] flows, [1] the first flow */
BPF_PERCPU_ARRAY(sink_cnt, u64, 1);

/* the source: flow first + n mod flows gets source port SPORT0 + that; out again through the
 * ingress */
int bench_inject(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    unsigned char *p = data;
    u32 k = 0, k1 = 1;
    if (data + 54 > end)
        return XDP_ABORTED;
    u64 *c = inj_ctr.lookup(&k);
    u32 *nf = inj_cfg.lookup(&k);
    u32 *first = inj_cfg.lookup(&k1);
    if (!c || !nf || !first || *nf == 0)
        return XDP_ABORTED;
    u64 n = *c;
    *c = n + 1;
    u32 port = SPORT0 + *first + (u32)(n % *nf);
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

static __always_inline void rewrite(struct ethhdr *eth)
{
    unsigned char dmac[ETH_ALEN] = {DMAC}, smac[ETH_ALEN] = {SMAC};
    __builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, smac, ETH_ALEN);
}

/* the baseline director: what a forwarder must do at least (MAC rewrite, redirect) */
int bench_redirect(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return XDP_DROP;
    rewrite(eth);
    return bpf_redirect(OUT_IFINDEX, 0);
}

/* the same through a devmap (bpf_redirect_map), as lb redirects: the device at once, where
 * bpf_redirect() has the kernel look the ifindex up per packet */
BPF_DEVMAP(bench_tx_ports, 1);

int bench_redirect_map(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return XDP_DROP;
    rewrite(eth);
    return bench_tx_ports.redirect_map(0, 0);
}

/* the reference stateful forwarder: a connection table as small as one can be (5-tuple key,
 * 16-byte entry), looked up on every packet, inserted on a miss, never written on a hit */
struct ref_key { __be32 saddr, daddr; __be16 sport, dport; __u8 proto, pad[3]; };
struct ref_val { __u64 first_ns; __u32 real; __u32 pad; };
BPF_TABLE("lru_hash", struct ref_key, struct ref_val, ref_conns, REF_TABLE_SIZE);

int bench_stateful(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_TCP)
        return XDP_PASS;
    struct tcphdr *th = (void *)(ip + 1);
    if ((void *)(th + 1) > end)
        return XDP_PASS;
    struct ref_key k = {.saddr = ip->saddr, .daddr = ip->daddr, .sport = th->source, .dport = th->dest,
                        .proto = IPPROTO_TCP};
    if (!ref_conns.lookup(&k)) {
        struct ref_val v = {.first_ns = bpf_ktime_get_coarse_ns()};
        ref_conns.update(&k, &v);
    }
    rewrite(eth);
    return bench_tx_ports.redirect_map(0, 0);     /* as lb and redirect_map do */
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


def trafgen_config(dst_mac: bytes, src_mac: bytes, flows: int, flags: str, first: int = 0) -> str:
    """One TCP frame to the virtual service, 64 bytes like the injector's: flow n is source port
    SPORT0 + first + n (trafgen counts it up per frame and recomputes the checksums it changed)."""
    from lb.lab import check_lab_addr

    src, dst = check_lab_addr(CLIENT), check_lab_addr(VIP)
    lo = SPORT0 + first
    if flows < 1 or first < 0 or lo + flows > 65536:
        raise ValueError(f"bench pps: flows {first}..{first + flows - 1} do not fit in the source ports from {SPORT0}")
    sport = str(lo) if flows == 1 else f"dinc({lo}, {lo + flows - 1})"
    tcp_flags = {"S": "syn", "A": "ack"}[flags]
    return (f"/* bench/pps.py: TCP {tcp_flags} {src} -> {dst}:80, {flows} flow(s) from port {lo} */\n"
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
        self.attached: dict[tuple[str, str], object] = {}      # (node, ifname): the program there
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
            f"-DSPORT0={SPORT0}", f"-DOUT_IFINDEX={self.priv_ifindex}", f"-DREF_TABLE_SIZE={CONN_TABLE}",
            f"-DDMAC={_mac_init(self.sink_mac)}", f"-DSMAC={_mac_init(self.priv_mac)}"])
        self.inject = self.bpf.load_func(b"bench_inject", BPF.XDP)
        self.sink = self.bpf.load_func(b"bench_sink", BPF.XDP)
        self.progs = {"redirect": self.bpf.load_func(b"bench_redirect", BPF.XDP),
                      "redirect_map": self.bpf.load_func(b"bench_redirect_map", BPF.XDP),
                      "stateful": self.bpf.load_func(b"bench_stateful", BPF.XDP)}
        tx_ports = self.bpf[b"bench_tx_ports"]

        def map_priv0():          # a devmap entry names a device of the writer's namespace
            tx_ports[ctypes.c_int(0)] = ctypes.c_int(self.priv_ifindex)
        lab.in_netns("director", map_priv0, timeout=10)
        self.ref_conns = BpfMap(self.bpf[b"ref_conns"].map_fd, "ref_conns", owned=False)
        self.attach(self.sink_node, self.sink_if, self.sink)

    def frame(self, flags: str) -> bytes:
        return bytes(Ether(dst=self.pub_mac.hex(":"), src=self.src_mac.hex(":")) / IP(src=CLIENT, dst=VIP) /
                     TCP(sport=SPORT0, dport=80, flags=flags) / (b"x" * 10))

    def attach(self, node: str, ifname: str, fn) -> None:
        """fn on ifname (it replaces the program there, if any), over rtnetlink as lb attaches: lb's
        programs are the compile cache's (lb.dataplane.bpfobj), not bcc Functions"""
        from lb.dataplane.attach import attach_xdp

        self.lab.in_netns(node, attach_xdp, ifname, fn, "native", timeout=20)
        self.attached[node, ifname] = fn

    def detach(self, node: str, ifname: str) -> None:
        from lb.dataplane.attach import detach_xdp

        self.lab.in_netns(node, detach_xdp, ifname, XDP_FLAGS_DRV_MODE, timeout=20)
        del self.attached[node, ifname]

    def director(self, prog: str) -> None:
        """the director's pub0 runs prog ("redirect", "stateful" or "lb")"""
        fn = self.dp.fns["lb_xdp_public"] if prog == "lb" else self.progs[prog]
        if self.attached.get(("director", "pub0")) is not fn:
            self.attach("director", "pub0", fn)

    def load_lb(self) -> None:
        """a fresh lb data plane (and an empty reference table): each source opens its own flows"""
        def resolver(addr, need_onlink=False):
            return NextHop(self.priv_ifindex, "priv0", self.sink_mac, self.priv_mac, True)

        self.ref_conns.delete_many([k for k, _ in self.ref_conns.items()])
        self.dp = XdpDataplane(f"benchpps{os.getpid()}", Sizes(16, 256, 16, CONN_TABLE), resolver=resolver)
        self.dp.load()
        self.dp.apply(TableSpec((ServiceSpec("tcp", ipaddress.ip_address(VIP), 80, "rr",
                                             (RealSpec(ipaddress.ip_address(RS1), 80, 1, "dr"),)),)))
        # lb redirects through lb_tx_ports, which `lb run` fills in its namespace (the director's):
        # from here, the resolver's priv0 is not this namespace's, so it is filled there
        self.lab.in_netns("director", self.dp.map_tx_port, "priv0", self.priv_ifindex, timeout=10)
        if self.priv_ifindex not in self.dp.tx_mapped:
            raise RuntimeError("bench pps: priv0 could not go into lb_tx_ports")

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

    def send(self, source: str, flags: str, flows: int, count: int, first: int = 0) -> tuple[float, int]:
        """`count` TCP frames (flags "S" or "A") over flows first .. first + flows - 1 from
        `source`: (seconds, frames that reached the sink)"""
        before = self.delivered()
        if source == "trafgen":
            conf = os.path.join(self.workdir, f"{flags}-{flows}-{first}.cfg")
            if not os.path.exists(conf):
                with open(conf, "w") as f:
                    f.write(trafgen_config(self.pub_mac, self.client_mac, flows, flags, first))
            dt = trafgen_run(self.lab, self.trafgen, conf, count)
        else:
            cfg = self.bpf[b"inj_cfg"]
            cfg[ctypes.c_int(0)] = ctypes.c_uint(flows)
            cfg[ctypes.c_int(1)] = ctypes.c_uint(first)
            dt = self.lab.in_netns(self.src_node, live_run, self.inject.fd, self.frames[flags], self.src_ifindex,
                                   count, timeout=120)
        time.sleep(0.05)         # the last batch's NAPI work (normally already done in the send)
        return dt, self.delivered() - before

    def measure(self, source: str, flows: int, count: int, runs: int) -> dict[str, list[tuple[float, int]]]:
        """rounds of the PROGRAMS side by side (the order rotated each round), each
        run after a warm-up of its own (every flow at least once: the reference's table fills)"""
        out: dict[str, list] = {p: [] for p in PROGRAMS}
        warm = max(flows, count // 10)
        for rnd in range(runs):
            k = rnd % len(PROGRAMS)
            for prog in PROGRAMS[k:] + PROGRAMS[:k]:
                self.director(prog)
                self.send(source, "A", flows, warm)
                out[prog].append(self.send(source, "A", flows, count))
        return out

    def prime(self, source: str, flows: int) -> int:
        """each flow's handshake, PRIME_CHUNK flows at a time (their SYNs, then their ACKs), so
        that lb holds them all as established connections (a lost frame is sent again)"""
        self.director("lb")
        for _ in range(3):
            for lo in range(0, flows, PRIME_CHUNK):
                n = min(PRIME_CHUNK, flows - lo)
                self.send(source, "S", n, n, lo)
                self.send(source, "A", n, n, lo)
            if self.conns() >= flows:
                break
        return self.conns()

    def conns(self) -> int:
        """lb's established connections (these flows are IPv4: lb_conns4's)"""
        return len(self.dp.maps["lb_conns4"].items())


SOURCES = ("live frames", "trafgen")
NAMES = {"redirect": "baseline: MAC rewrite + bpf_redirect",
         "redirect_map": "baseline: MAC rewrite + bpf_redirect_map (a devmap, as lb)",
         "stateful": "reference: stateful forwarder (LRU lookup, insert on miss, devmap redirect)",
         "lb": "lb DR, established"}


def _target(source: str, flows: int) -> tuple[str, float] | None:
    if source != "live frames":
        return None          # trafgen is the bottleneck of its rows
    return next(((base, limit) for most, base, limit in TARGETS if flows <= most), None)


def suite(size: str = "full") -> dict:
    live, tg, flow_counts = SIZES[size]
    trafgen = find_trafgen()
    count = {"live frames": live[1], "trafgen": tg[1]}
    rounds = {"live frames": live[0], "trafgen": tg[0]}
    raw: dict[tuple[str, int], dict] = {}
    primed: dict[tuple[str, int], int] = {}
    # a kernel that refuses live frames (EPERM in some sandboxes) leaves trafgen's rows alone:
    # said in the report, never a row with no frames behind it
    refused = live_frames_refused()
    if refused:
        print(f"bench: pps: live frames not measured: {refused}", file=sys.stderr)
    sources = [s for s in SOURCES if not (s == "live frames" and refused)]
    with lab_up("direct") as lab, tempfile.TemporaryDirectory(prefix="lb-bench-pps-") as tmp:
        p = Pps(lab, trafgen, tmp)
        try:
            for src in sources:
                p.load_lb()
                opened = p.prime(src, max(flow_counts))      # the fewer flows are the first of them
                primed.update({(src, flows): opened for flows in flow_counts})
                for flows in flow_counts:
                    raw[src, flows] = p.measure(src, flows, count[src], rounds[src])
                p.unload_lb()
        finally:
            p.close()
    results = []
    for src in sources:
        for flows in flow_counts:
            r = raw[src, flows]
            mpps = {prog: [d / t / 1e6 for t, d in r[prog]] for prog in PROGRAMS}
            tgt = _target(src, flows)
            for prog in PROGRAMS:
                est = estimate(mpps[prog])
                row = {"source": src, "scenario": f"{NAMES[prog]}, {flows} flows", "program": prog,
                       "flows": flows, "mpps": est, "runs": mpps[prog], "sent": count[src],
                       "delivered": [d for _, d in r[prog]], "noisy": est["noisy"],
                       "table_size": CONN_TABLE if prog != "redirect" else None}
                if prog in ("redirect", "redirect_map"):
                    row["baseline"] = True
                for base in ("redirect", "redirect_map", "stateful"):
                    if base == prog or prog == "redirect" or (prog == "redirect_map" and base == "stateful"):
                        continue
                    rat = estimate(paired(mpps[prog], mpps[base], lambda a, b: a / b if b else 0.0))
                    row[f"ratio_{base}"] = rat["median"]
                    row[f"ratio_{base}_ci"] = [rat["ci_low"], rat["ci_high"]]
                    if prog == "lb" and tgt and tgt[0] == base:
                        row["target"] = f">= {tgt[1]:g}x {base}"
                        row["status"] = verdict(dict(rat, noisy=est["noisy"] or rat["noisy"]), tgt[1], "higher")
                row["ratio"] = row.get("ratio_redirect", 1.0)
                if prog == "lb":
                    row["connections"] = primed[src, flows]
                results.append(row)
    return {"suite": "pps", "size": size, "runs": rounds, "packets_per_run": count, "frame_bytes": 64,
            "connection_table": CONN_TABLE,
            "sources": {"live frames": "BPF_PROG_TEST_RUN live frames (XDP_TX) on the switch end of pub0's veth",
                        "trafgen": f"{trafgen_version(trafgen)}: -P1 TX_RING on lb-client's c0, through the "
                                   "public bridge; Mpps from its own send time"},
            "note": "source, director and sink share one core (veth NAPI runs on the sending CPU); "
                    "redirect, redirect_map, stateful and lb runs interleaved, ratios paired by round; "
                    "trafgen is the bottleneck of its rows (its ratio mostly shows no loss)",
            "not_measured": {"live frames": refused} if refused else {},
            "results": results}


def table(res: dict) -> str:
    from bench.report import ci_cell, ratio_cell

    lines = ["| source | scenario | flows | Mpps (median) | ± | delivered/sent | ratio to redirect "
             "| ratio to devmap redirect | ratio to stateful | target | status |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in res["results"]:
        deliv = min(r["delivered"]) / r["sent"] if r["sent"] else 0
        noisy = r.get("noisy", False) and not r.get("baseline")
        stateful = ratio_cell(r["ratio_stateful"], noisy) if "ratio_stateful" in r else ""
        devmap = ratio_cell(r["ratio_redirect_map"], noisy) if "ratio_redirect_map" in r else ""
        lines.append(f"| {r.get('source', SOURCES[0])} | {r['scenario']} | {r['flows']} | {r['mpps']['median']:.3f} | "
                     f"{ci_cell(r['mpps'])} | {deliv:.3f} | {ratio_cell(r['ratio'], noisy)} | {devmap} | {stateful} "
                     f"| {r.get('target', '')} | {r.get('status', '')} |")
    if res.get("note"):
        lines += ["", f"Note: {res['note']}."]
    for src, why in res.get("not_measured", {}).items():
        lines += ["", f"Not measured: {src}: {why}; its rows and targets wait for a kernel that runs them."]
    return "\n".join(lines)
