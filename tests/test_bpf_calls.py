"""What the verifier makes of lb's calls, read in bpftool's dump of the loaded programs.

Two ways of writing a call compile to a slow one that nothing else would notice: a map lookup
whose map the verifier cannot know (clang merged the lookups of two maps into one call) is not
inlined but goes through the generic helper and an indirect call, and a tail call whose slot is
in a register (clang merged calls that differed only in the slot) is an indirect jump, through
a retpoline, where a constant slot is a direct jump.  Each costs 10-30 ns on this kernel, on
every new connection (bench/results/ablation-2026-12-03/calls.txt); the programs' output is the
same either way, so only the instructions show it."""
from __future__ import annotations

import ipaddress
import re
import subprocess

import pytest

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import bpfsys
from lb.dataplane import layout as L
from packets_util import loaded_dataplane

INSN = re.compile(r"^\s*\d+: \(([0-9a-f]{2})\) (.*)$")


@pytest.fixture(scope="module")
def programs():
    """Every program lb loads -- a table with a service of each scheduler loads them all -- as
    {name: [instruction text, ...]} from `bpftool prog dump xlated`."""
    ip = ipaddress.ip_address
    services = tuple(ServiceSpec("tcp", ip("198.18.0.40"), 1000 + i, sched, (RealSpec(ip("198.18.2.1"), 80, 1, "dr"),))
                     for i, sched in enumerate(sorted(L.SCHEDULERS)))
    persistent = ServiceSpec("tcp", ip("198.18.0.41"), 80, "rr", (RealSpec(ip("198.18.2.1"), 80, 1, "dr"),),
                             persistent=300)
    with loaded_dataplane("calls", table=TableSpec(services + (persistent,))) as dp:
        dp.program.ensure_nat()          # NAT's reply programs too (a DR table loads them when asked)
        out = {}
        for name, fn in dp.fns.items():
            dump = subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(bpfsys.prog_info(fn.fd).id)],
                                  capture_output=True, text=True, check=True).stdout
            out[name] = [m.group(2) for m in map(INSN.match, dump.splitlines()) if m]
        return out


def test_every_scheduler_and_entry_program_is_loaded(programs):
    assert {f"lb_sched_{s}" for s in L.SCHEDULERS} | {"lb_xdp_public", "lb_xdp_private", "lb_xdp_persist",
                                                      "lb_xdp_new_conn"} <= set(programs)
    assert all(len(insns) > 10 for insns in programs.values())


def test_every_map_lookup_is_one_the_verifier_could_resolve(programs):
    """the generic helper appears only where the map was not known at the call"""
    generic = {name: sum("call bpf_map_lookup_elem#" in i for i in insns) for name, insns in programs.items()}
    assert {name: n for name, n in generic.items() if n} == {}


def test_every_tail_call_has_a_constant_slot(programs):
    """the slot (r3) set to a constant right before each tail call: the JIT's direct jump"""
    found = 0
    for name, insns in programs.items():
        for at, insn in enumerate(insns):
            if "call bpf_tail_call#" not in insn:
                continue
            found += 1
            before = insns[max(0, at - 3):at]
            assert any(re.fullmatch(r"r3 = \d+", i) for i in before), \
                f"{name}: a tail call whose slot is not a constant: {before + [insn]}"
    # public and persist reach every scheduler, each scheduler reaches new_conn
    assert found >= 2 * len(L.SCHEDULERS) + len(L.SCHEDULERS)
