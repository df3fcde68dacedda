"""At start, an XDP program already on the interface that is not this instance's -- another
tool's, or another lb instance's on the same interface -- is not replaced without a word (and
taken away again at this instance's stop): the start is refused, naming it.  This instance's
own, left by its previous process (an upgrade, kill -9), uses the maps pinned under its pin
directory and is replaced as before.  (The kernel is stood in for: which program is attached,
which maps it uses, which maps are pinned.)"""
from __future__ import annotations

import os
import types

import pytest

from lb.dataplane import bpfsys, xdp
from lb.dataplane.errors import DataplaneError


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    pin = tmp_path / "bpf" / "inst"          # a resize moves it aside to tmp_path / "lb-resized-inst"
    (pin / "sub").mkdir(parents=True)
    k = types.SimpleNamespace(attached=None, uses={}, pinned={"lb_services": 11, "sub/lb_conns": 12},
                              fds={})
    for name in k.pinned:
        (pin / name).write_text("")
    (pin / "lb_progs_prev").write_text("")            # a pinned program array: not a map id here

    def obj_get(path):
        rel = os.path.relpath(path, pin)
        fd = os.open(os.devnull, os.O_RDONLY)
        k.fds[fd] = rel
        return fd

    def map_info(fd):
        rel = k.fds[fd]
        if rel not in k.pinned:
            raise OSError(22, "not a map")
        return types.SimpleNamespace(id=k.pinned[rel])
    monkeypatch.setattr(xdp, "attached_prog_id", lambda ifname: k.attached)
    monkeypatch.setattr(bpfsys, "obj_get", obj_get)
    monkeypatch.setattr(bpfsys, "map_info", map_info)
    monkeypatch.setattr(bpfsys, "prog_map_ids", lambda pid: k.uses[pid])
    monkeypatch.setattr(bpfsys, "prog_name", lambda pid: {7: "lb_xdp_public", 9: "xdp_dispatcher"}[pid])
    k.dp = types.SimpleNamespace(pin=str(pin))
    return k


def test_the_previous_process_s_program_on_maps_a_resize_moved_aside_is_this_instance_s(kernel, tmp_path):
    """A restart with bigger [tables]: the resize moves the instance's directory aside
    (lb-resized-<instance>) and pins new maps; the previous process's guard program on another
    interface uses only the old ones.  It was refused as another instance's, and every restart
    failed the same way."""
    from lb.dataplane.resize import old_dir
    aside = old_dir(kernel.dp.pin)
    os.makedirs(aside)
    open(os.path.join(aside, "lb_services"), "w").close()
    kernel.pinned[os.path.relpath(os.path.join(aside, "lb_services"), kernel.dp.pin)] = 31
    kernel.attached, kernel.uses[7] = 7, [31, 32]
    refuse(kernel)


def refuse(k, ifname="pub0"):
    return xdp.XdpDataplane._refuse_foreign(k.dp, ifname)


def test_an_interface_without_a_program_or_with_this_instances_own_is_taken(kernel):
    refuse(kernel)                                      # nothing attached
    kernel.attached, kernel.uses[7] = 7, [3, 12, 40]     # the previous process's: its maps are ours
    refuse(kernel)


@pytest.mark.parametrize("prog, uses, name", [(9, [50, 51], "xdp_dispatcher"),      # another tool
                                              (7, [60, 61], "lb_xdp_public")])      # another lb instance
def test_another_program_is_not_replaced(kernel, prog, uses, name):
    kernel.attached, kernel.uses[prog] = prog, uses
    with pytest.raises(DataplaneError) as e:
        refuse(kernel)
    assert str(e.value) == (f"another XDP program is attached to pub0 (id {prog}, {name}), not this instance's "
                            f"(another lb instance's, or another tool's): lb does not replace it; "
                            f"`ip link set dev pub0 xdp off` removes it")
