"""`lb lab up` / `lb lab down` and a lab in use: a test session or a bench run holds the tests'
lab lock for as long as it uses the lab; the commands used to tear that lab down under it (the
namespaces, nginx, the lb runs all gone mid-test).  They now refuse, changing nothing.  The
lab itself is stood in for: nothing here builds or removes namespaces."""
from __future__ import annotations

import argparse
import fcntl
import os

import pytest

from lb.lab import cli, topology


@pytest.fixture
def lab_cmd(tmp_path, monkeypatch):
    """`lb lab ...` with the lock in tmp_path and topology's up/down recorded, not run."""
    calls = []
    monkeypatch.setattr(topology, "TESTS_LOCK", str(tmp_path / "tests.lock"))
    monkeypatch.setattr(topology, "up", lambda network, scale_out=0: calls.append(("up", network)))
    monkeypatch.setattr(topology, "down", lambda: calls.append(("down",)))
    monkeypatch.setattr(topology, "status", lambda: {"up": True, "network": "direct", "scale_out": 0,
                                                     "namespaces": {}, "nginx": {}, "run_dir": "/run/lb-lab"})
    parser = argparse.ArgumentParser(prog="lb")
    cli.add_cli(parser.add_subparsers(dest="cmd", required=True))

    def run(*argv):
        args = parser.parse_args(["lab", *argv])
        return args.func(args)
    run.calls = calls
    return run


def test_up_and_down_refuse_a_lab_in_use_and_change_nothing(lab_cmd, capsys):
    holder = os.open(topology.TESTS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)    # a test session's
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        for argv in (("down",), ("up", "--network", "nat")):
            assert lab_cmd(*argv) == 1
            err = capsys.readouterr().err
            assert f"lb lab {argv[0]}: the lab is in use by a test session or a bench run" in err, err
            assert topology.TESTS_LOCK in err and "nothing changed" in err, err
        assert lab_cmd.calls == []
    finally:
        os.close(holder)
    # once it has ended, they run (and leave the lock free behind them)
    assert lab_cmd("up", "--network", "nat") == 0
    assert lab_cmd("down") == 0
    assert lab_cmd.calls == [("up", "nat"), ("down",)]
    fd = os.open(topology.TESTS_LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
