"""scripts/install-director.sh writes the units with its BINDIR and CONFDIR: systemd looks a bare
`lb` up only in its own PATH, so a BINDIR outside it gave units that cannot start."""
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def render(tmp_path, bindir, confdir, umask=None):
    script = ROOT / "scripts/install-director.sh"
    # never run the whole installer (packages, /opt/lb) from a test: only its --units mode
    assert '"--units"' in script.read_text(), "install-director.sh has no --units mode"
    units = tmp_path / "units"
    env = dict(os.environ, BINDIR=bindir, CONFDIR=confdir, UNITDIR=str(units))
    subprocess.run(["bash", str(ROOT / "scripts/install-director.sh"), "--units", str(ROOT / "lb/systemd")],
                   env=env, check=True, capture_output=True,
                   preexec_fn=None if umask is None else (lambda: os.umask(umask)))
    return units


def test_units_run_lb_from_bindir_and_read_confdir(tmp_path):
    units = render(tmp_path, "/opt/lb-bin", "/srv/lb")
    for name in ("lb@.service", "lb-web@.service"):
        text = (units / name).read_text()
        execs = re.findall(r"^Exec\w+=(\S+)", text, re.M)
        assert execs and all(e == "/opt/lb-bin/lb" for e in execs), (name, execs)
        assert "/etc/lb" not in text, name
    assert "AssertPathExists=/srv/lb/%i.toml" in (units / "lb@.service").read_text()
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


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert m, value
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_lb_unit_fails_visibly_and_stops_a_config_error_loop():
    """`systemctl enable --now lb@typo` fails (an Assert, where a Condition left the unit inactive
    with nothing said); a config error -- `lb check` in ExecStartPre=, which
    RestartPreventExitStatus= does not cover -- trips the start limit instead of looping
    under Restart=on-failure forever (one cycle: RestartSec= and a second of `lb check`)."""
    d = _directives((ROOT / "lb/systemd/lb@.service").read_text())
    assert d["AssertPathExists"] == ["/etc/lb/%i.toml"] and "ConditionPathExists" not in d
    assert d["Restart"] == ["on-failure"] and d["ExecStartPre"][0].startswith("lb check ")
    burst, interval = int(d["StartLimitBurst"][0]), _seconds(d["StartLimitIntervalSec"][0])
    cycle = _seconds(d["RestartSec"][0]) + 1.0
    assert 0 < interval and burst * cycle < interval, (burst, cycle, interval)


def test_lb_unit_lifts_the_memlock_limit_for_bpf():
    """Before Linux 5.11 BPF maps and programs count against RLIMIT_MEMLOCK: a warm start's raw
    bpf(2) load must not hit EPERM under systemd's 8 MiB default."""
    assert _directives((ROOT / "lb/systemd/lb@.service").read_text())["LimitMEMLOCK"] == ["infinity"]


def test_units_go_where_systemctl_edit_full_does_not_write():
    """The default UNITDIR is the local admin's package directory: `systemctl edit --full` copies
    a unit to /etc/systemd/system, which the next install leaves alone."""
    text = (ROOT / "scripts/install-director.sh").read_text()
    assert "UNITDIR=${UNITDIR:-/usr/local/lib/systemd/system}" in text
    assert "UNITDIR=/usr/local/lib/systemd/system" in (ROOT / "README.md").read_text()


def test_the_install_makes_what_it_makes_world_readable_under_a_tight_umask(tmp_path):
    """root's umask 077 (or 027): the script sets 022 itself, so what it makes (units' directory
    here; /opt/lb, which lb-web@'s user execs, the same way) is 0755."""
    units = render(tmp_path, "/usr/local/sbin", "/etc/lb", umask=0o077)
    assert stat.S_IMODE(units.stat().st_mode) == 0o755
    for unit in units.iterdir():
        assert stat.S_IMODE(unit.stat().st_mode) == 0o644, unit


def _wheel(directory: Path, marker: str) -> Path:
    """An lvs-director 0.1.0 wheel by hand, whose one module says ``marker``: two builds of one
    version, as an upgrade from a wheel meets them (lb's version is not raised at every change)."""
    import base64
    import hashlib
    import zipfile

    directory.mkdir()
    info = "lvs_director-0.1.0.dist-info"
    files = {"lb_install_probe.py": f"MARKER = {marker!r}\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: lvs-director\nVersion: 0.1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for name, text in files.items()] + [f"{info}/RECORD,,"]
    whl = directory / "lvs_director-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return whl


def test_an_upgrade_from_a_wheel_of_the_same_version_installs_it(tmp_path):
    """`LB_SOURCE=new.whl make install` over an install of the same version: pip alone leaves a
    local wheel of the installed version as it is (said only without -q), so the upgrade
    installed nothing and the old code ran on.  The install script's lb step (--lb VENV) puts
    the new wheel in."""
    import sys

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    old, new = _wheel(tmp_path / "old", "old build"), _wheel(tmp_path / "new", "new build")
    # everything pip needs is in the wheel: no index asked
    env = dict(os.environ, PIP_NO_INDEX="1")
    env.pop("VIRTUAL_ENV", None)
    for whl in (old, new):
        p = subprocess.run(["bash", str(ROOT / "scripts/install-director.sh"), "--lb", str(venv)],
                           env=dict(env, LB_SOURCE=str(whl)), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p
    p = subprocess.run([str(venv / "bin/python"), "-c", "import lb_install_probe as m; print(m.MARKER)"],
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "new build", p
