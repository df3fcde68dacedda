"""The IPVS VM's harness (tests/vm/harness.py) keeps its deadline also when the guest prints
nothing more: reading the console blocked until a line came, so a guest that hung silently held
the whole suite (a CI run stood 30 minutes on it) instead of ending as "did not finish".  The VM
is stood in for by a shell that prints one line and then hangs."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "vm"))
import harness  # noqa: E402


def test_a_guest_that_hangs_silently_is_killed_at_the_deadline(monkeypatch, tmp_path):
    monkeypatch.setattr(harness, "check_prerequisites", lambda *a, **kw: None)
    monkeypatch.setattr(harness, "vng_argv", lambda command, rwdir=None, **kw: ["sh", "-c", "echo booted; sleep 600"])
    rc, out, _wall = harness._run_once("true", None, 2.0, str(tmp_path / "console.log"), False)
    assert rc == 124, out
    assert out.startswith("booted\n") and "[harness] the VM did not finish within 2s: killed" in out, out
    assert (tmp_path / "console.log").read_text() == "booted\n"
