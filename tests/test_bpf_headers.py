"""bpf/ headers stand on their own: each compiles (through bcc, as the data plane is built) as the
first and only include of a translation unit, included twice; and every map of lb.c is
declared in lb_maps.h."""
from __future__ import annotations

import os
import re
import shutil

import pytest

from lb.dataplane.layout import BPF_DIR

HEADERS = sorted(p.name for p in BPF_DIR.glob("*.h"))

# bcc pins the maps a header declares while compiling it: small ones, in a directory of our own
# (outside /sys/fs/bpf/lb, where `lb list` looks for instances)
SMALL = ["-DLB_MAX_SERVICES=2", "-DLB_MAX_REALS=2", "-DLB_CONN4_TABLE_SIZE=2", "-DLB_CONN6_TABLE_SIZE=2",
         "-DLB_PERSIST_TABLE_SIZE=2", "-DLB_LBLC_TABLE_SIZE=2"]


@pytest.fixture
def pin_dir():
    path = f"/sys/fs/bpf/lb-test-headers-{os.getpid()}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("header", HEADERS)
def test_header_compiles_alone(header, pin_dir):
    from bcc import BPF

    text = f'#include "{header}"\n#include "{header}"\n'
    try:
        b = BPF(text=text.encode(), cflags=[f"-I{BPF_DIR}", f'-DLB_PIN_DIR="{pin_dir}"', *SMALL])
    except Exception as e:                  # bcc prints the compiler's errors on stderr
        pytest.fail(f"bpf/{header} does not compile on its own: {e}")
    b.cleanup()


def test_headers_are_guarded():
    for h in HEADERS:
        guard = h.upper().replace(".", "_")
        text = (BPF_DIR / h).read_text()
        assert re.search(rf"^#ifndef {guard}\n#define {guard}\n", text, re.M), h
        assert text.rstrip().endswith("#endif"), h


_MAP_DECL = re.compile(r"\bBPF_(?:\w*TABLE\w*|HASH|ARRAY|PERCPU_\w+|PROG_ARRAY|LRU_\w+|QUEUE|STACK)\s*\(")


def test_maps_are_declared_in_lb_maps_h_only():
    """lb_decap.c is its own program (loaded on real servers) with its own two maps"""
    for p in sorted(BPF_DIR.glob("*.[ch]")):
        if p.name in ("lb_maps.h", "lb_decap.c"):
            continue
        text = re.sub(r"/\*.*?\*/", " ", p.read_text(), flags=re.S)
        assert not _MAP_DECL.search(text), f"bpf/{p.name} declares a map outside lb_maps.h"
    assert _MAP_DECL.search((BPF_DIR / "lb_maps.h").read_text())
