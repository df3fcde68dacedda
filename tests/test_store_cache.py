"""lb.config.store.read keeps what it parsed while the file is unchanged: each status and config
request of the control socket reads the file, on the daemon's event loop, and parsing a large
one (12k real servers) each time stalled the loop that runs the heartbeats and the BGP lease."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lb.config import store
from test_web import DaemonEngine, write_config

KEEPALIVED = Path(__file__).parent / "keepalived"


@pytest.fixture
def parses(monkeypatch):
    """The files store.read parsed, in order; a file just written is trusted at once (no racy window)."""
    monkeypatch.setattr(store, "RACY_NS", -(1 << 62))
    monkeypatch.setattr(store, "_CACHE", {})
    seen: list[str] = []
    real = store.load_bytes

    def counting(data, fmt, path, watch=None, **kw):
        seen.append(os.fspath(path))
        return real(data, fmt, path, watch, **kw)
    monkeypatch.setattr(store, "load_bytes", counting)
    return seen


def test_status_and_config_requests_parse_an_unchanged_file_once(tmp_path, parses):
    path = write_config(tmp_path / "lb.toml")
    eng = DaemonEngine(path)
    parses.clear()
    for _ in range(5):
        info = eng.configs.info()
        assert info["file_differs"] is False and info["serial_no"] == 0
        reply = eng.configs.get()
        assert reply["ok"] and reply["document"]["virtual_server"][0]["real_server"][0]["weight"] == 3
    assert parses == [str(path)]


def test_a_changed_file_is_read_again(tmp_path, parses):
    path = write_config(tmp_path / "lb.toml")
    eng = DaemonEngine(path)
    eng.configs.info()
    parses.clear()
    write_config(path, weight="30")             # in place: same inode, another size
    assert eng.configs.info()["file_differs"] is True
    assert parses == [str(path)]
    # another file put in its place (an editor's save, store.write): same size, another inode
    other = write_config(tmp_path / "new.toml", weight="31")
    os.replace(other, path)
    assert eng.configs.get()["document"]["virtual_server"][0]["real_server"][0]["weight"] == 31
    assert len(parses) == 2
    assert eng.configs.get()["ok"] and len(parses) == 2


def test_a_file_just_written_is_not_kept(tmp_path, monkeypatch):
    """Two writes within the file system's timestamp granularity may leave the same stamp."""
    path = write_config(tmp_path / "lb.toml")
    monkeypatch.setattr(store, "_CACHE", {})
    store.read(path)
    assert store._CACHE == {}


def test_the_identity_of_a_configuration_is_computed_once(tmp_path, monkeypatch):
    cfg = store.read(write_config(tmp_path / "lb.toml")).cfg
    calls = []
    real = store.shared_document
    monkeypatch.setattr(store, "shared_document", lambda c: calls.append(c) or real(c))
    first = store.identity(cfg)
    assert store.identity(cfg) == first and len(calls) == 1


def test_keepalived_includes_are_watched(tmp_path, parses):
    conf = tmp_path / "keepalived.conf"
    shutil.copy(KEEPALIVED / "includes.conf", conf)
    shutil.copytree(KEEPALIVED / "conf.d", tmp_path / "conf.d")
    first = store.read(conf)
    assert store.read(conf) is first and len(parses) == 1
    # an included file changes
    web = tmp_path / "conf.d" / "10-web.conf"
    web.write_text(web.read_text().replace("lb_algo rr", "lb_algo wrr"))
    changed = store.read(conf)
    assert len(parses) == 2 and changed.cfg.virtual_servers[0].scheduler == "wrr"
    assert store.read(conf) is changed and len(parses) == 2
    # a file the include's pattern now matches
    (tmp_path / "conf.d" / "30-more.conf").write_text(
        "virtual_server 192.0.2.91 80 {\n    lb_kind NAT\n    protocol TCP\n"
        "    real_server 10.0.9.31 80 { }\n}\n")
    assert len(store.read(conf).cfg.virtual_servers) == 3 and len(parses) == 3


def test_keepalived_includes_with_a_pattern_for_a_directory_are_not_kept(tmp_path, parses):
    conf = tmp_path / "keepalived.conf"
    conf.write_text((KEEPALIVED / "includes.conf").read_text().replace("include conf.d/*.conf",
                                                                        "include conf.*/*.conf"))
    shutil.copytree(KEEPALIVED / "conf.d", tmp_path / "conf.d")
    assert store.read(conf).cfg is not None
    store.read(conf)
    assert len(parses) == 2


def test_what_the_host_says_of_users_and_a_file_that_does_not_load_are_read_again(tmp_path, parses, monkeypatch):
    """The loader checks script_user against the users: a file read before `useradd` kept its
    "no such user" after it (the console refused edits of a file lb reload took); and a file
    with an error is not kept at all (the operator is fixing it)."""
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\n")
    monkeypatch.setattr(store, "HOST_FILES", (str(passwd),))
    path = write_config(tmp_path / "lb.toml")
    store.read(path)
    store.read(path)
    assert parses == [str(path)]
    passwd.write_text("root:x:0:0::/root:/bin/sh\nlbcheck:x:999:999::/:/bin/false\n")
    store.read(path)
    assert parses == [str(path)] * 2
    bad = tmp_path / "bad.toml"
    bad.write_text(path.read_text().replace('scheduler = "rr"', 'scheduler = "lottery"'))
    assert store.read(bad).cfg is None and store.read(bad).cfg is None
    assert parses[2:] == [str(bad)] * 2


def test_a_hand_edit_of_a_device_alone_is_a_difference(tmp_path):
    """The configuration's identity leaves the interfaces out (each director keeps its own over
    config sync); `lb status` and the console still say the file differs from what runs."""
    path = write_config(tmp_path / "lb.toml")
    eng = DaemonEngine(path)
    assert eng.configs.info()["file_differs"] is False
    path.write_text(path.read_text().replace('port = 80\n', 'port = 80\ndevice = "eth1"\n', 1))
    assert eng.configs.info()["file_differs"] is True
