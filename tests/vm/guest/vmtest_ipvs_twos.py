"""twos on kernel IPVS: Debian's 6.1 has no ip_vs_twos (Linux 6.2 added it), so this module runs
in its own VM, booted on Debian's 6.12 (tests/vm/test_ipvs_twos_vm.py; the 6.1 run leaves it
out).  oracle.TWOS_CONNS new connections through the director's IPVS (programmed by lb's IPVS
data plane), and how many each real server got, to $LB_VM_RESULTS/twos-ipvs.json."""
from __future__ import annotations

import json
import os

from guest_util import ipvs_kernel, results_dir  # noqa: F401
from guest_oracle import Player, oracle_director  # noqa: F401

from vm import oracle

LAB_NETWORK = "direct"


def test_kernel_ipvs_spreads_twos_connections(oracle_director, results_dir):
    def in_director():
        p = Player(oracle_director, str(results_dir / "twos-run"))
        try:
            return p.twos()
        finally:
            p.close()

    counts = oracle_director.in_netns("director", in_director, timeout=900)
    (results_dir / "twos-ipvs.json").write_text(json.dumps({"kernel": os.uname().release, "counts": counts}))
    assert sum(counts.values()) == oracle.TWOS_CONNS, counts
