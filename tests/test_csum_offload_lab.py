"""lb in a lab whose veths keep their tx checksum offload (lb lab up with tx_csum: every other lab
turns it off), so packets carry partial checksums (CHECKSUM_PARTIAL: only the pseudo-header's
sum in the header) as from a real host's stack, the client's included.

A frame that lb's native XDP program forwards out of a veth leaves its skb, and with it the note
that its checksum is partial, behind: lb completes such checksums before forwarding
(bpf/lb_csum.h), or the client's requests and, in NAT, the rewritten replies would arrive with
wrong checksums and be dropped.  Direct routing: the real servers' replies go back through the
director with partial checksums, past lb's XDP programs (which hand them to the kernel's
forwarding untouched) to the client, whose stack must accept them.  NAT: both directions are
lb's."""
from __future__ import annotations

import collections
import shutil
from pathlib import Path

import pytest
from lab_http import lb_counters

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


OFFLOADED = (("client", "c0"), ("rs1", "eth0"), ("rs2", "eth0"), ("rs3", "eth0"), ("director", "priv0"),
             ("director", "pub0"))


def _serve_through_lb(lab, lb_runner, tmp_path, config: str) -> None:
    for node, dev in OFFLOADED:
        assert tx_checksumming(lab, node, dev), (node, dev)
    cfg = tmp_path / config
    shutil.copyfile(REPO / "configs" / config, cfg)
    lb_runner.start(cfg)
    assert collections.Counter(curl(lab, 6)) == {"rs1": 2, "rs2": 2, "rs3": 2}
    # requests with a body of many segments, each answered
    assert sorted(curl(lab, 3, data=bytes(range(32, 127)) * 700)) == ["rs1", "rs2", "rs3"]


def test_dr_with_partial_checksums_both_ways(lab, lb_runner, tmp_path):
    """the client's partial checksums completed by lb; the real servers' replies, partial too,
    routed by the director's kernel"""
    _serve_through_lb(lab, lb_runner, tmp_path, "lab-dr.toml")
    assert lb_counters()["partial_checksum_completed"] > 0


@pytest.mark.parametrize("lab", ["nat"], indirect=True)
def test_nat_with_partial_checksums_both_ways(lab, lb_runner, tmp_path):
    """requests and replies: each completed, then rewritten"""
    _serve_through_lb(lab, lb_runner, tmp_path, "lab-nat.toml")
    assert lb_counters()["partial_checksum_completed"] > 0
