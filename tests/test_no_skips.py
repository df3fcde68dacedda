"""`make test` fails on any skip (LB_NO_SKIPS=1, tests/conftest.py): a skipped test would hide
what it checks.  Played here on a throwaway suite that has the project's conftest and one test
that skips, with and without the switch, on one process and on xdist workers as make test runs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _suite(tmp_path: Path) -> Path:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_one.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    assert 1 + 1 == 2\n\n"
        "def test_skips():\n    pytest.skip('this host lacks the thing')\n")
    return tmp_path


@pytest.mark.parametrize("hidden", ["skip", "xfail"])
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
@pytest.mark.parametrize("no_skips", ["1", ""], ids=["make-test", "by-hand"])
def test_a_skip_fails_make_test_and_is_counted(tmp_path, workers, no_skips, hidden):
    """A failing test marked xfail hides its failure as a skip does: counted and refused alike."""
    suite = _suite(tmp_path)
    if hidden == "xfail":
        (suite / "test_one.py").write_text(
            "import pytest\n\n"
            "def test_runs():\n    assert 1 + 1 == 2\n\n"
            "@pytest.mark.xfail(reason='this host lacks the thing')\n"
            "def test_skips():\n    assert 1 + 1 == 3\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LB_", "PYTEST_"))}
    env["LB_NO_SKIPS"] = no_skips
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, str(suite)],
                       cwd=suite, env=env, capture_output=True, text=True, timeout=120)
    assert "lb: 1 skipped" in p.stdout, p.stdout + p.stderr
    if no_skips:
        assert p.returncode == 1, p.stdout + p.stderr
        assert "test_one.py::test_skips: " in p.stdout and "this host lacks the thing" in p.stdout, p.stdout
    else:
        assert p.returncode == 0, p.stdout + p.stderr
