"""scripts/install-director.sh writes the units with its BINDIR and CONFDIR: systemd looks a bare
`lb` up only in its own PATH, so a BINDIR outside it gave units that cannot start."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def render(tmp_path, bindir, confdir):
    script = ROOT / "scripts/install-director.sh"
    # never run the whole installer (packages, /opt/lb) from a test: only its --units mode
    assert '"--units"' in script.read_text(), "install-director.sh has no --units mode"
    units = tmp_path / "units"
    env = dict(os.environ, BINDIR=bindir, CONFDIR=confdir, UNITDIR=str(units))
    subprocess.run(["bash", str(ROOT / "scripts/install-director.sh"), "--units", str(ROOT / "lb/systemd")],
                   env=env, check=True, capture_output=True)
    return units


def test_units_run_lb_from_bindir_and_read_confdir(tmp_path):
    units = render(tmp_path, "/opt/lb-bin", "/srv/lb")
    for name in ("lb@.service", "lb-web@.service"):
        text = (units / name).read_text()
        execs = re.findall(r"^Exec\w+=(\S+)", text, re.M)
        assert execs and all(e == "/opt/lb-bin/lb" for e in execs), (name, execs)
        assert "/etc/lb" not in text, name
    assert "ConditionPathExists=/srv/lb/%i.toml" in (units / "lb@.service").read_text()
    assert "ReadWritePaths=-/srv/lb" in (units / "lb-web@.service").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_verify_with_lb_outside_systemds_path(tmp_path):
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "opt/lb-bin").mkdir(parents=True)
    (root / "opt/lb-bin/lb").write_text("#!/bin/sh\n")
    (root / "opt/lb-bin/lb").chmod(0o755)
    (root / "etc/lb").mkdir(parents=True)
    (root / "etc/lb/t.toml").write_text("")
    units = render(tmp_path, "/opt/lb-bin", "/etc/lb")
    shutil.copytree(units, root / "etc/systemd/system")
    p = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no", "lb@t.service",
                        "lb-web@t.service"], capture_output=True, text=True)
    assert p.returncode == 0 and "not executable" not in p.stderr, p.stderr
