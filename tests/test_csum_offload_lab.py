"""lb in a lab whose veths keep their tx checksum offload (lb lab up with tx_csum: every other lab
turns it off), so packets carry partial checksums (CHECKSUM_PARTIAL: only the pseudo-header's
sum in the header) as from a real host's stack.  Direct routing: the real servers' replies go
back through the director with partial checksums, past lb's XDP programs (which hand them to
the kernel's forwarding untouched) to the client, whose stack must accept them.

One link keeps its offload off: the client's.  A frame that lb's native XDP program redirects
out of a veth leaves its skb and its checksum state behind, so a partial checksum arrives as a
wrong one and the receiver drops it -- the client's requests (lb redirects them) and, in NAT,
the rewritten replies.  That is a limit of XDP on veth (a NIC never hands XDP a partial
checksum); docs/testing.md says so."""
from __future__ import annotations

import collections
import shutil
from pathlib import Path

LAB_NETWORK = "direct"
LAB_TX_CSUM = True
REPO = Path(__file__).resolve().parents[1]


def curl(lab, n: int, data: bytes | None = None) -> list[str]:
    out = []
    for _ in range(n):
        argv = ["curl", "-sS", "--noproxy", "*", "-m", "5", f"http://{lab.VIP}/"]
        if data is not None:
            argv[1:1] = ["--data-binary", "@-"]
        p = lab.run("client", argv, check=False, timeout=15, input=None if data is None else data.decode())
        assert p.returncode == 0, p.stderr
        out.append(p.stdout.strip())
    return out


def tx_checksumming(lab, node: str, dev: str) -> bool:
    return "tx-checksumming: on" in lab.run(node, ["ethtool", "-k", dev]).stdout


def test_dr_replies_with_partial_checksums_reach_the_client(lab, lb_runner, tmp_path):
    for node, dev in (("client", "c0"), ("switch", "sw-c0")):
        lab.run(node, ["ethtool", "-K", dev, "tx", "off"])
    for node, dev in (("rs1", "eth0"), ("rs2", "eth0"), ("rs3", "eth0"), ("director", "priv0"), ("director", "pub0")):
        assert tx_checksumming(lab, node, dev), (node, dev)
    cfg = tmp_path / "lab-dr.toml"
    shutil.copyfile(REPO / "configs" / "lab-dr.toml", cfg)
    lb_runner.start(cfg)
    assert collections.Counter(curl(lab, 6)) == {"rs1": 2, "rs2": 2, "rs3": 2}
    # requests with a body of many segments, each answered
    assert sorted(curl(lab, 3, data=bytes(range(32, 127)) * 700)) == ["rs1", "rs2", "rs3"]
