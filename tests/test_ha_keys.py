"""Changing the HA key with reloads, one director at a time, as docs/architecture.md ("Changing
the HA key") tells: the key file is a keyring, its first key signs and any of its keys is
accepted.  A key used to be read at start only: a new one needed a restart of both directors,
and between the two restarts each refused the other's heartbeats -- the backup took over, and
both were active.  Here the roles never move and no heartbeat is refused at any step; `lb
status` says which key the peer signs with; a reload with a bad key file changes nothing."""
from __future__ import annotations

import dataclasses

import pytest

from lb import config as lbconfig
from lb.engine import ReloadRefused
from lb.ha import heartbeat as hb
from lb.ha.pulse import Pulse
from test_engine_reload import no_addresses  # noqa: F401 - a fixture
from test_ha_reload_role import CONF, VS
from test_ha_unit import Pair
from test_override import make_engine

OLD = b"the-old-key-0123456789abcdef"
NEW = b"the-new-key-0123456789abcdef"


class TwoFiles(Pair):
    """The pair of test_ha_unit with a key file of its own on each director."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.files = {}
        for node in (hb.NODE_PRIMARY, hb.NODE_BACKUP):
            f = tmp_path / f"ha-{node}.key"
            f.write_bytes(OLD + b"\n")
            f.chmod(0o600)
            self.files[node] = f

    def start(self, node):
        shared = self.ha
        self.ha = dataclasses.replace(shared, key_file=self.files[node])
        try:
            return super().start(node)
        finally:
            self.ha = shared

    def reload(self, node, *keys):
        """The operator's edit of one director's key file, then its reload (Engine.reload_or_raise
        reads the file and hands the keyring to pulse)"""
        self.files[node].write_bytes(b"# lb keyring\n" + b"".join(k + b"\n" for k in keys))
        return self.nodes[node].set_keys(hb.read_keys(self.files[node]))


def test_the_keys_change_with_reloads_one_director_at_a_time_and_no_heartbeat_is_refused(tmp_path):
    pair = TwoFiles(tmp_path)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    assert pair.roles() == {hb.NODE_PRIMARY: "active", hb.NODE_BACKUP: "backup"}
    changes = {n: p.machine.changes for n, p in pair.nodes.items()}

    def step(node, *keys, settle=1.0):
        said = pair.reload(node, *keys)
        pair.run(settle)
        return said

    # 1: the new key added after the old one, on each director in turn: both still sign with the old
    assert step(hb.NODE_PRIMARY, OLD, NEW) == f"the HA keys in {pair.files[0]} changed: signing with the same key, 2 accepted"
    step(hb.NODE_BACKUP, OLD, NEW)
    assert primary.status()["keys"] == {"file": str(pair.files[0]), "count": 2, "peer_signs_with": 1}
    # 2: the new key first: the primary signs with it while the backup still signs with the old
    assert step(hb.NODE_PRIMARY, NEW, OLD) == \
        f"the HA keys in {pair.files[0]} changed: signing with a new key, the first of 2"
    assert primary.status()["keys"]["peer_signs_with"] == 2
    assert backup.status()["keys"]["peer_signs_with"] == 2
    assert any("the peer signs with key 2 of the 2" in w for w in primary.status()["warnings"])
    assert f"  keys: 2 in {pair.files[0]}, signing with the first; the peer signs with key 2\n" in status_text(primary)
    step(hb.NODE_BACKUP, NEW, OLD)
    for p in (primary, backup):
        assert p.status()["keys"]["peer_signs_with"] == 1
        assert [w for w in p.status()["warnings"] if "key" in w] == [
            f"{p.ha.key_file} holds 2 keys, each accepted, and both directors sign with the first: a change of "
            f"keys not finished? (the file's other keys still open the HA channel; keep only the first once both "
            f"directors sign with it)"]
    # 3: the old key gone
    step(hb.NODE_PRIMARY, NEW)
    step(hb.NODE_BACKUP, NEW)
    for p in (primary, backup):
        assert not [w for w in p.status()["warnings"] if "key" in w]
    assert {n: p.machine.changes for n, p in pair.nodes.items()} == changes
    assert pair.roles() == {hb.NODE_PRIMARY: "active", hb.NODE_BACKUP: "backup"}
    for p in (primary, backup):
        assert p.counters["bad_auth"] == 0 and p.keys == (NEW,)
        assert p.status()["peer"]["alive"]
    # the old key no longer opens anything: a heartbeat signed with it is refused
    old = hb.Message(hb.T_HEARTBEAT, hb.S_BACKUP, hb.NODE_BACKUP, 0, backup.boot, 10**6, pair.wall0)
    primary._receive(primary.channels[0], "heartbeat", hb.encode(OLD, old))
    assert primary.counters["bad_auth"] == 1


def status_text(pulse) -> str:
    """`lb status` of a daemon whose pulse is this one"""
    import contextlib
    import io
    from types import SimpleNamespace

    from lb.cli import main as cli

    doc = {"instance": "lab", "pid": 1, "role": pulse.role, "dataplane": "xdp", "config": "lb.toml",
           "ha": pulse.status(), "services": []}
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_control", lambda args, cmd: {"ok": True, "status": doc})
        assert cli.cmd_status(SimpleNamespace(wait=0, json=False, pid=None)) == 0
    return out.getvalue()


def test_a_reload_that_would_drop_the_key_the_live_peer_signs_with_is_refused(tmp_path, no_addresses):  # noqa: F811
    """What the steps avoid: the file overwritten with the new key alone while the peer still
    signs with the old one (or a binary old key and a new one concatenated: one key, neither).
    Taken, the peer's heartbeats were refused and both directors went active; now the reload is
    refused, nothing changed, and says why.  With the peer silent (dead) the new key is taken."""
    pair = TwoFiles(tmp_path)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    _key, path = ha_config(tmp_path, key=pair.files[hb.NODE_PRIMARY])
    eng = make_engine(path)
    eng.pulse = primary
    eng.dp.claim = lambda claims: None
    eng.dp.attached = {}
    for bad in (NEW + b"\n", OLD + b"\x00" + NEW):
        pair.files[hb.NODE_PRIMARY].write_bytes(bad)
        with pytest.raises(ReloadRefused, match=f"reload refused, nothing changed: {path}:[0-9]+: ha.key_file: "
                                                f"{pair.files[0]} no longer holds "
                                                f"the key the peer signs with .* both directors would be active"):
            eng.reload_or_raise()
        assert primary.keys == (OLD,)
    pair.run(1.0)
    assert primary.counters["bad_auth"] == 0 and backup.counters["bad_auth"] == 0
    assert pair.roles() == {hb.NODE_PRIMARY: "active", hb.NODE_BACKUP: "backup"}
    # the peer gone: nothing to keep it from
    pair.cut.add(hb.NODE_BACKUP)
    pair.run(2.0)
    pair.files[hb.NODE_PRIMARY].write_bytes(NEW + b"\n")
    assert eng.reload_or_raise() == (f"reloaded {path}; the HA keys in {pair.files[0]} changed: signing with a new "
                                      f"key, the first of 1; the key the peer signs with is no longer among them: it "
                                      f"is refused until it changes too")


def ha_config(tmp_path, key=None):
    """test_ha_reload_role's director with [ha] and one service, instance "keys", key file ``key``
    (a new one with OLD when None)"""
    if key is None:
        key = tmp_path / "ha.key"
        key.write_bytes(OLD + b"\n")
        key.chmod(0o600)
    path = tmp_path / "lb.toml"
    path.write_text(CONF.format(key=key, vips=VS.format(name="web", addr="198.18.0.10"))
                    .replace('instance = "race"', 'instance = "keys"'))
    return key, path


def test_lb_check_says_what_the_daemon_would_refuse_of_the_key_file(tmp_path, capsys):
    from lb.cli.main import main

    key, path = ha_config(tmp_path)
    assert main(["check", "--config", str(path)]) == 0
    assert capsys.readouterr().err == ""
    key.write_bytes(b"# lb keyring\n" + OLD + b"\nshort\n")
    assert main(["check", "--config", str(path)]) == 0
    err = capsys.readouterr().err
    # the warning names the file's line and field, as the loader's do
    line = path.read_text().splitlines().index(f'key_file = "{key}"') + 1
    assert f"{path}:{line}: warning: ha.key_file: HA key file {key} line 3 holds 5 bytes" in err, err
    key.unlink()
    assert main(["check", "--config", str(path)]) == 0
    assert f"{path}:{line}: warning: ha.key_file: HA key file {key}: No such file or directory (lb run and lb " \
           f"reload refuse it)" in capsys.readouterr().err


def test_a_reload_applies_a_new_keyring_and_refuses_a_bad_key_file(tmp_path, no_addresses):  # noqa: F811
    key, path = ha_config(tmp_path)
    eng = make_engine(path)
    eng.pulse = Pulse(eng.cfg.ha, eng.cfg.instance, None, node=hb.NODE_PRIMARY)
    eng.dp.claim = lambda claims: None          # the recording data plane has no lease ...
    eng.dp.attached = {}                        # ... and attaches nothing
    assert eng.reload_or_raise() == f"reloaded {path}"
    key.write_bytes(b"# lb keyring\n" + NEW + b"\n" + OLD + b"\n")
    assert eng.reload_or_raise() == (f"reloaded {path}; the HA keys in {key} changed: signing with a new "
                                      f"key, the first of 2")
    assert eng.pulse.keys == (NEW, OLD)
    assert eng.status()["ha"]["keys"]["count"] == 2
    # a key too short: refused, the running keyring and table as they were
    key.write_bytes(b"# lb keyring\n" + NEW + b"\nshort\n")
    applied = len(eng.dp.applied)
    line = path.read_text().splitlines().index(f'key_file = "{key}"') + 1     # file:line: field
    with pytest.raises(ReloadRefused, match=f"reload refused, nothing changed: {path}:{line}: ha.key_file: HA key "
                                            f"file {key} line 3 holds 5 bytes"):
        eng.reload_or_raise()
    assert eng.pulse.keys == (NEW, OLD) and len(eng.dp.applied) == applied
    key.chmod(0o640)
    with pytest.raises(ReloadRefused, match=f"{path}:{line}: ha.key_file: .*accessible by group or others"):
        eng.reload_or_raise()
    key.rename(key.with_suffix(".gone"))
    with pytest.raises(ReloadRefused, match=f"{path}:{line}: ha.key_file: HA key file {key}: No such file"):
        eng.reload_or_raise()
    key.with_suffix(".gone").rename(key)
    assert eng.pulse.keys == (NEW, OLD)
    assert lbconfig.load(path).ha.key_file == key


def test_lb_run_names_the_field_of_a_key_file_it_cannot_use(tmp_path):
    from lb.engine import Engine, StartupError

    key, path = ha_config(tmp_path)
    key.unlink()
    eng = Engine(lbconfig.load(path), dataplane="ipvs")
    try:
        line = path.read_text().splitlines().index(f'key_file = "{key}"') + 1
        with pytest.raises(StartupError, match=f"^{path}:{line}: ha.key_file: No such file or directory: {key}$"):
            eng.start()
    finally:
        eng.lock.release()        # all the start took before it failed (as lb run's stop_failed_start)
