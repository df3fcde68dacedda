"""The C headers are the one source of the maps' layouts and ids: lb/dataplane/layout.py (and
cext/bpfbatch.c, which includes bpf/lb_structs.h) must agree with them field by field.

Two compilers decide: gcc compiles lb_structs.h / lb_consts.h as user space (and cext) sees
them, and bcc compiles bpf/lb.c into the maps the programs use."""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

from lb.config import model as config_model
from lb.dataplane import layout as L
from packets_util import loaded_dataplane

ROOT = Path(__file__).resolve().parents[1]

# structs of lb_structs.h that no Layout describes, and why
NOT_MIRRORED = {
    "lb_svc_dests": "one lb_dest (layout.DEST) per list position: its size is a -D flag",
    "lb_mh_last": "one u32 per list position: its size is a -D flag",
    "lb_sched_scratch": "BPF only (per-CPU scratch)",
    "lb_mh_walk": "BPF only (per-CPU scratch)",
    "lb_icmp_bucket": "BPF only (the too-big answers' token bucket)",
    "lb_clock": "BPF only (per-CPU cache of the coarse clock)",
    "lb_csum_buf": "BPF only (per-CPU buffer: a partial checksum's segment, a chunk at a time)",
    "lb_frag_key4": "BPF only (lb_frags4: IPv4 datagrams in fragments)",
    "lb_frag": "BPF only (lb_frags4, lb_frags6: datagrams in fragments)",
    "lb_frag_key6": "BPF only (lb_frags6: IPv6 datagrams in fragments)",
    "lb_frag6_note": "BPF only (lb_frag6_scratch: an IPv6 fragment's key, built off the stack)",
}

LAYOUTS = {name: v for name, v in vars(L).items() if isinstance(v, L.Layout)}


def _cext_include_dirs() -> list[str]:
    spec = importlib.util.spec_from_file_location("build_bpfbatch", ROOT / "cext" / "build_bpfbatch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.INCLUDE_DIRS


def _c_struct_fields(header: Path) -> dict[str, list[str]]:
    """struct name -> its field names in order, read from the header's text"""
    text = re.sub(r"/\*.*?\*/", " ", header.read_text(), flags=re.S)
    out = {}
    for name, body in re.findall(r"\bstruct\s+(\w+)\s*\{(.*?)\};", text, re.S):
        out[name] = [re.search(r"(\w+)\s*(\[[^\]]*\])?\s*$", d.strip()).group(1)
                     for d in body.split(";") if d.strip()]
    return out


@pytest.fixture(scope="module")
def gcc_view(tmp_path_factory) -> tuple[dict, dict]:
    """What gcc says, with the cext's include path: ({(struct, field or None): (offset, size)},
    {constant: value}) for every Layout field and every constant layout.py read."""
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "lb_structs.h"', "int main(void)", "{"]
    for lay in LAYOUTS.values():
        s = lay.c_name
        lines.append(f'    printf("S {s} - 0 %zu\\n", sizeof(struct {s}));')
        for f, _off, _size in lay.fields:
            lines.append(f'    printf("S {s} {f} %zu %zu\\n", offsetof(struct {s}, {f}), '
                         f'sizeof(((struct {s} *)0)->{f}));')
    for name in L.C:
        lines.append(f'    printf("C {name} %lld\\n", (long long)({name}));')
    lines += ["    return 0;", "}"]
    d = tmp_path_factory.mktemp("layout")
    (d / "layout.c").write_text("\n".join(lines) + "\n")
    inc = [f"-I{p}" for p in _cext_include_dirs()]
    subprocess.run(["gcc", "-Wall", "-Werror", *inc, "-o", str(d / "layout"), str(d / "layout.c")],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(d / "layout")], check=True, capture_output=True, text=True).stdout
    structs, consts = {}, {}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "S":
            s, f, off, size = rest
            structs[(s, None if f == "-" else f)] = (int(off), int(size))
        else:
            consts[rest[0]] = int(rest[1])
    return structs, consts


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_matches_gcc(gcc_view, name):
    structs, _ = gcc_view
    lay = LAYOUTS[name]
    c_fields = _c_struct_fields(L.BPF_DIR / "lb_structs.h")[lay.c_name]
    names = [f for f, _, _ in lay.fields]
    size = structs[(lay.c_name, None)][1]
    if lay.prefix:
        assert names == c_fields[:len(names)]
        assert lay.size <= size
    else:
        assert names == c_fields, f"struct {lay.c_name}: C fields {c_fields}, layout.{name} {names}"
        assert lay.size == size, f"sizeof(struct {lay.c_name}) = {size}, layout.{name}.size = {lay.size}"
    for f, off, fsize in lay.fields:
        assert structs[(lay.c_name, f)] == (off, fsize), f"struct {lay.c_name}.{f}: (offset, size)"


def test_every_struct_has_a_layout_or_a_reason():
    c_structs = set(_c_struct_fields(L.BPF_DIR / "lb_structs.h"))
    mirrored = {lay.c_name for lay in LAYOUTS.values()}
    assert c_structs == mirrored | set(NOT_MIRRORED), "a struct of lb_structs.h without a Layout"
    assert not mirrored & set(NOT_MIRRORED)


def test_constants_are_the_compilers(gcc_view):
    _, consts = gcc_view
    assert consts == L.C
    # and the names layout.py exports are those values
    assert L.SCHEDULERS == {k.removeprefix("LB_SCHED_").lower(): v for k, v in L.ENUMS["lb_sched_id"].items()}
    assert [L.TCP_S[s] for s in L.TCP_STATES] == list(range(consts["LB_TCP_S_LAST"]))
    assert len(L.COUNTER_NAMES) == consts["LB_CNT_MAX"]
    assert (L.REAL_F_OVERLOAD, L.REAL_F_NO_NEXTHOP, L.REAL_F_DRAINING) == (
        consts["LB_REAL_F_OVERLOAD"], consts["LB_REAL_F_NO_NEXTHOP"], consts["LB_REAL_F_DRAINING"])
    assert (L.G_FWM_KEYS, L.G_EXPIRE_NODEST, L.G_LBLCR_EXPIRATION, L.N_GLOBALS) == (
        consts["LB_G_FWM_KEYS"], consts["LB_G_EXPIRE_NODEST"], consts["LB_G_LBLCR_EXPIRATION"], consts["LB_GLOBALS"])
    globals_ = [L.G_FWM_KEYS, L.G_EXPIRE_NODEST, L.G_LBLCR_EXPIRATION, L.G_DEFENSE, L.G_DROP_RATE,
                L.G_ICMP_INTERVAL, L.G_ICMP_BURST]
    assert len(set(globals_)) == len(globals_) and max(globals_) < L.N_GLOBALS
    assert len(L.CT_EVENTS) <= L.N_CT_EVENTS and L.N_COUNTERS >= len(L.COUNTER_NAMES)


def test_scheduler_ids_cover_the_configs_schedulers():
    assert set(L.SCHEDULERS) == set(config_model.SCHEDULERS)


def test_the_programs_defaults_are_the_configs():
    """A default written in bpf/ and in the config model must be the same number: the program's
    applies when the map slot is 0 (nothing written yet), the model's everywhere else."""
    assert L.C["LB_LBLCR_EXPIRATION_DEFAULT"] == config_model.DEFAULT_LBLC_EXPIRATION
    defense = config_model.Defense()
    assert L.C["LB_ICMP_BURST_DEFAULT"] == defense.icmp_msgs_burst
    assert L.C["LB_ICMP_INTERVAL_DEFAULT"] == 1_000_000_000 // defense.icmp_msgs_per_sec


def test_read_consts_reads_defaults_enums_and_expressions(tmp_path):
    h = tmp_path / "x.h"
    h.write_text("#ifndef X_H\n#define X_H\n#ifndef N\n#define N 4 /* default */\n#endif\n"
                 "#define M (N * 2 + 1)\n#define F 0x10U  // flag\n#define S \"text\"\n"
                 "#define G(x) (x)\nenum e { A = M, B, C = 1 << 3 };\n#endif\n")
    consts, enums = L.read_consts(h)
    assert consts == {"N": 4, "M": 9, "F": 16, "A": 9, "B": 10, "C": 8}
    assert enums == {"e": {"A": 9, "B": 10, "C": 8}}


# ---- the maps as bcc compiled them ----

@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("layout", keep_bcc=True) as d:
        yield d


def _table_names(bpf) -> list[str]:
    from bcc.libbcc import lib
    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return [lib.bpf_table_name(bpf.module, i).decode() for i in range(lib.bpf_num_tables(bpf.module))]


def _same(ct, lay, what: str) -> None:
    """a ctypes type bcc made from the C struct against a layout: size, and every field"""
    assert ctypes.sizeof(ct) == lay.size, what
    if not isinstance(lay, L.Layout):
        return
    c_fields = [(f[0], getattr(ct, f[0]).offset, getattr(ct, f[0]).size) for f in ct._fields_]
    assert c_fields == list(lay.fields), f"{what}: struct {lay.c_name}"


def test_every_map_matches_its_layout(dp):
    names = _table_names(dp.bpf)
    assert len(names) > 20
    for name in names:
        t = dp.bpf[name.encode()]
        if name in L.MAPS:
            key, value = L.MAPS[name]
            _same(t.Key, key, f"{name} key")
            _same(getattr(t, "sLeaf", t.Leaf), value, f"{name} value")   # sLeaf: a per-CPU map's one value
        elif name in L.LIST_MAPS:
            elem = L.LIST_MAPS[name]
            _same(t.Key, L.U32, f"{name} key")
            assert ctypes.sizeof(t.Leaf) == elem.size * dp.sizes.svc_reals, name
            arr = t.Leaf._fields_[0][1]
            _same(arr._type_, elem, f"{name} entry")
        else:
            assert name in L.BPF_ONLY_MAPS, f"map {name} has no layout in lb/dataplane/layout.py"


def test_every_map_is_pinned(dp):
    """lb_maps.h: every map is pinned (a restarted daemon adopts it), but the mh inner map's
    type template, lb_progs_prev (a resize's replaced programs) and lb_tx_ports (the interfaces
    its daemon attached to): held by its daemon only"""
    names = set(_table_names(dp.bpf))
    assert set(os.listdir(dp.pin)) == names - {"lb_mh_inner", "lb_progs_prev", "lb_tx_ports"}
