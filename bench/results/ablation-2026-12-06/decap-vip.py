"""What `lb decap --vip` costs a real server per tunnel packet: the shipped decap program with
and without its VIP check (lb_decap_vip), and the program before the check (32baf92's shipped
instructions, from git), beside the pkt suite's trivial XDP_TX program, each run as the pkt suite runs its rows (bb_test_run_loop: one BPF_PROG_TEST_RUN a
packet, repeat=1, each run on a fresh copy: the decap rewrites the frame), rounds interleaved.
IPIP frames from a director to a real server, the inner packet a TCP SYN to the VIP; 256
distinct client ports.  Run from a tree, as root (no packet leaves the kernel's test run):
  .venv/bin/python bench/results/ablation-2026-12-06/decap-vip.py [ROUNDS [PACKETS]]"""
import ipaddress
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.getcwd())
from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from bench import pkt as P  # noqa: E402
from lb.dataplane import decap  # noqa: E402
from lb.dataplane import bpfobj  # noqa: E402
from lb.dataplane.maps import BpfMap  # noqa: E402

ip = ipaddress.ip_address
REAL, DIRECTOR, VIP = "198.18.5.11", "198.18.1.1", "198.18.0.40"
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
packets = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000

frames = [bytes(Ether(src="02:00:00:00:01:01", dst="02:00:00:00:05:11") /
                IP(src=DIRECTOR, dst=REAL, proto=4) /
                IP(src="198.18.0.2", dst=VIP) / TCP(sport=40000 + i, dport=80, flags="S"))
          for i in range(256)]

b = P.Bench(P.DEFAULT_TABLE)          # for its trivial baseline and its run loop
loaded = []
try:
    any_obj, any_fn = decap.load([ip(REAL)], [ip(DIRECTOR)])
    vip_obj, vip_fn = decap.load([ip(REAL)], [ip(DIRECTOR)], [ip(VIP)])
    old = bpfobj.load(bpfobj.Object.from_json(subprocess.run(
        ["git", "show", "32baf92:lb/dataplane/objects/lb_decap.json"], capture_output=True, text=True,
        check=True).stdout))
    for name, a in (("lb_decap_dst", REAL), ("lb_decap_src", DIRECTOR)):
        BpfMap(old.map_fds[name], name, owned=False).set(decap._key(ip(a)), (1).to_bytes(4, sys.byteorder))
    loaded = [any_obj, vip_obj, old]
    rows = {"trivial XDP_TX": b.trivial.fd, "decap before --vip (32baf92)": old.progs[decap.PROGRAM].fd,
            "decap, any inner destination": any_fn.fd, "decap, --vip (one VIP)": vip_fn.fd}
    res = {k: [] for k in rows}
    names = list(rows)
    for rnd in range(rounds):
        k0 = rnd % len(names)
        for name in names[k0:] + names[:k0]:
            ns = b.run(rows[name], frames, packets)
            if name != "trivial XDP_TX" and b.last_action != "XDP_PASS":
                raise RuntimeError(f"{name}: {b.last_action}, not XDP_PASS (decapsulated)")
            res[name].append(ns)
    print(f"# {packets} packets a run, median of {rounds} interleaved rounds (ns per packet)")
    base = statistics.median(res["trivial XDP_TX"])
    for name, v in res.items():
        md = statistics.median(v)
        print(f"{name:32s} {md:6.1f} ns  {md / base:5.2f}x trivial  +{md - base:5.1f} ns  "
              f"runs {' '.join(f'{x:.0f}' for x in v)}")
    print(f"# counters, --vip: {decap.counters(vip_obj)}")
finally:
    for o in loaded:
        o.close()
    b.close()
