"""What a user sees when the CLI's surroundings fail: a stdout that cannot be written, a daemon
whose reply is not one, instances that cannot be told, maps of another lb version.  One line
on stderr and an exit status, never a traceback.  No daemon, no BPF: the failing parts are
stood in for (a stream, a socket server, pid files, fake maps)."""
from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lb.cli.main import main

REPO = Path(__file__).resolve().parents[1]


# ---- stdout --------------------------------------------------------------------------------

class FullStream(io.StringIO):
    """A stdout on a full disk: every write fails with ENOSPC."""

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    @property
    def buffer(self):
        return self


def test_a_full_stdout_is_one_line_exit_1(monkeypatch, capsys):
    """`lb import x.cf > /dev/full`: an OSError traceback; now "lb: stdout: ..." and exit 1."""
    monkeypatch.setattr(sys, "stdout", FullStream())
    rc = main(["import", str(REPO / "configs" / "example-lvs.cf")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.splitlines()[-1] == "lb: stdout: No space left on device"
    assert "Traceback" not in err


def test_dev_full_from_a_shell(tmp_path):
    """The same through a real file descriptor: /dev/full, as the reviewer ran it."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    code = "import sys; from lb.cli.main import main; sys.exit(main())"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for argv in (["import", str(REPO / "configs" / "example-lvs.cf")], ["--version"]):
        with open("/dev/full", "w") as full:
            p = subprocess.run([sys.executable, "-c", code, *argv], stdout=full, stderr=subprocess.PIPE,
                               text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
        assert p.returncode == 1, p.stderr
        assert p.stderr.splitlines()[-1] == "lb: stdout: No space left on device", p.stderr
        assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr
