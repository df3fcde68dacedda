"""An instance whose maps another version of lb laid out (here: lb_sched_buckets as the hash it
was before it became an array) is not adopted: loading says which map, what it is and what the
programs need, and how to start afresh -- and leaves the running instance's pins as they were."""
from __future__ import annotations

import os
import time

import pytest

from lb.dataplane import bpfsys
from lb.dataplane import layout as L
from lb.dataplane.errors import DataplaneError
from lb.dataplane.maps import pin_dir
from lb.dataplane.xdp import Sizes, XdpDataplane
from packets_util import fake_resolver


def test_maps_of_another_layout_are_refused_with_the_way_out():
    sizes = Sizes(16, 4096, 16, 4096)
    instance = f"oldlayout{os.getpid()}"
    pins = pin_dir(instance)
    os.makedirs(pins)
    path = os.path.join(pins, "lb_sched_buckets")
    fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_HASH, 4, L.SCHED_BUCKETS.size, sizes.services, 1, "lb_sched_buckets")
    dp = XdpDataplane(instance, sizes, resolver=fake_resolver)
    try:
        bpfsys.obj_pin(fd, path)
        with pytest.raises(DataplaneError) as e:
            dp.load()
        msg = str(e.value)
        assert path in msg and "another version of lb" in msg
        assert "lb stop" in msg and f"remove {pins}" in msg
        assert os.path.exists(path)                  # the other instance's map is still pinned
    finally:
        os.close(fd)
        dp.unpin()
        dp.close()
    assert not os.path.exists(pins)


def test_a_killed_compiles_scratch_pins_are_removed_by_the_next_compile():
    """bcc pins its maps into a scratch directory while it compiles (Program._compile); one a
    killed compile left behind holds its maps' memory, and the next compile removes it"""
    import subprocess

    sizes = Sizes(16, 4096, 16, 4096)
    instance = f"scratch{os.getpid()}"
    dead = subprocess.Popen(["true"])
    dead.wait()                                   # a pid no process has now
    bpffs = os.path.dirname(os.path.dirname(pin_dir(instance)))
    stale = os.path.join(bpffs, f"lb-compile-{instance}-{dead.pid}")
    # another instance's, named by a pid as benches and tests name theirs (an LLVM error ends the
    # process before its own cleanup runs): no compile of that instance would come again
    # (an hour old: a younger one may be a compile in another pid namespace that shares bpffs)
    other = os.path.join(bpffs, f"lb-compile-bench{dead.pid}-{dead.pid}")
    young = os.path.join(bpffs, f"lb-compile-other{dead.pid}-{dead.pid}")
    for d in (stale, other, young):
        os.makedirs(d)
        fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_ARRAY, 4, 8, 1024, 0, "lb_conns")
        bpfsys.obj_pin(fd, os.path.join(d, "lb_conns"))
        os.close(fd)
    hour_ago = time.time() - 3700
    os.utime(other, (hour_ago, hour_ago))
    dp = XdpDataplane(instance, sizes, resolver=fake_resolver, keep_bcc=True)   # compiles
    try:
        dp.load()
        assert dp.program.compiled
        assert not os.path.exists(stale) and not os.path.exists(other)
        assert os.path.exists(os.path.join(young, "lb_conns"))
        assert not [d for d in os.listdir(bpffs) if d.startswith(f"lb-compile-{instance}-")]   # its own too
    finally:
        dp.unpin()
        dp.close()
        for d in (stale, other, young):
            if os.path.exists(d):
                for name in os.listdir(d):
                    os.unlink(os.path.join(d, name))
                os.rmdir(d)


def test_a_map_the_kernel_will_not_make_is_an_error_naming_it():
    """No traceback when the kernel refuses a map (too big for this machine's memory): the
    error names the map and its size."""
    from lb.dataplane.bpfobj import MapDef, _open_map

    m = MapDef("lb_conns", bpfsys.BPF_MAP_TYPE_ARRAY, 4, 1 << 30, 64)
    with pytest.raises(DataplaneError) as e:
        _open_map(m, None, {})
    msg = str(e.value)
    assert "lb_conns (64 entries of 4 + 1073741824 bytes)" in msg and "[tables]" in msg, msg
