"""An instance whose maps another version of lb laid out (here: lb_sched_buckets as the hash it
was before it became an array) is not adopted: loading says which map, what it is and what the
programs need, and how to start afresh -- and leaves the running instance's pins as they were."""
from __future__ import annotations

import os

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
