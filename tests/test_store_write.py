"""lb.config.store.write (the console's and the backup's saves): a configuration file that is a
symbolic link (configuration management's checkout) stays one, its target the file replaced; the
file keeps its owner and group (a group that may read it), not only its mode; a refused reload's
restore does the same."""
from __future__ import annotations

import os

import pytest

from lb import config as lbconfig
from lb.config import store
from test_web import write_config


def _weight_changed(snap: store.Snapshot) -> store.Prepared:
    doc = snap.document()
    doc["virtual_server"][0]["real_server"][0]["weight"] = 7
    return store.prepare(snap, doc)


def test_a_symlinked_file_is_written_through_the_link(tmp_path):
    (tmp_path / "managed").mkdir()
    target = write_config(tmp_path / "managed" / "lb.toml")
    link = tmp_path / "etc-lb.toml"
    link.symlink_to(target)
    snap = store.read(link)
    undo = store.write(snap, _weight_changed(snap).data)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert "weight = 7" in target.read_text()
    assert store.prev_path(target).read_bytes() == snap.data
    # the header written into the file names the .prev that exists: beside the target
    assert f"the previous version is {store.prev_path(target).name}." in store.render(
        lbconfig.load(target), store.read(link))
    store.restore(undo)
    assert link.is_symlink() and target.read_bytes() == snap.data


def _other_group() -> int | None:
    mine = os.getegid()
    if os.geteuid() == 0:
        return next(g for g in (4, 1, 2, 3, 65534) if g != mine)
    return next((g for g in os.getgroups() if g != mine), None)


def test_the_file_keeps_its_owner_and_group(tmp_path):
    gid = _other_group()
    if gid is None:
        pytest.skip("needs a second group to give the file")
    path = write_config(tmp_path / "lb.toml")
    os.chown(path, -1, gid)
    path.chmod(0o640)
    snap = store.read(path)
    undo = store.write(snap, _weight_changed(snap).data)
    st = os.stat(path)
    assert (st.st_gid, st.st_mode & 0o7777) == (gid, 0o640)
    assert os.stat(store.prev_path(path)).st_gid == gid
    store.restore(undo)
    assert os.stat(path).st_gid == gid and path.read_bytes() == snap.data
