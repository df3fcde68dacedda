"""The shell scripts' fallbacks, run under their own `set -euo pipefail` with stubbed commands
first on PATH (apt-cache that does not know the package, as apt exits 100): a command
substitution of a failing pipeline must not end the script before the retry and the message
that say what is wrong.  Only the parts named are run (functions and blocks cut out of the
scripts): never apt, /lib/modules or /opt."""
import os
import re
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _function(text: str, name: str) -> str:
    """The definition of shell function `name` (one line, or up to the first `}` at column 0)."""
    m = re.search(rf"^{name}\(\) \{{.*?\}}$", text, re.M) if re.search(rf"^{name}\(\) \{{.*\}}$", text, re.M) \
        else re.search(rf"^{name}\(\) \{{.*?^\}}$", text, re.M | re.S)
    assert m, f"no function {name}"
    return m.group(0)


def _block(text: str, start: str, end: str) -> str:
    return text[text.index(start):text.index(end)]


def _stubs(tmp_path, **scripts) -> dict:
    bindir = tmp_path / "stubs"
    bindir.mkdir()
    for name, body in scripts.items():
        exe = bindir / name.replace("_", "-")
        exe.write_text("#!/bin/sh\n" + body)
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    env.pop("LB_WIRE_HEADERS", None)
    return env


def _bash(script: str, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=30)


UNKNOWN = 'echo "E: No packages found" >&2\nexit 100\n'


def test_setup_vm_updates_and_says_so_when_apt_does_not_know_the_kernel(tmp_path):
    """setup-vm.sh: the meta package unknown (lists never updated, or gone from the archive):
    `apt-get update` and a second try, then "cannot resolve" -- not exit 100 and silence."""
    text = (ROOT / "scripts/setup-vm.sh").read_text()
    calls = tmp_path / "calls"
    env = _stubs(tmp_path, apt_cache=f'echo "apt-cache $*" >> {calls}\n' + UNKNOWN,
                 apt_get=f'echo "apt-get $*" >> {calls}\n')
    script = "\n".join([f"CACHE={tmp_path / 'cache'}", "apt_updated=0", _function(text, "apt_update"),
                        _function(text, "abi"), _function(text, "fetch_kernel"),
                        "fetch_kernel linux-image-6.12-amd64 vmlinuz-twos ip_vs_twos"])
    p = _bash(script, env, tmp_path)
    assert p.returncode == 1, p
    assert "setup-vm: cannot resolve linux-image-6.12-amd64's kernel package" in p.stderr, p
    assert calls.read_text().splitlines() == ["apt-cache depends linux-image-6.12-amd64", "apt-get update -qq",
                                              "apt-cache depends linux-image-6.12-amd64"]


def test_install_director_warns_about_headers_when_apt_does_not_know_the_meta_package(tmp_path):
    """install-director.sh, step 2: no headers for this kernel, none under /usr/src, and apt knows
    no linux-headers-<arch>: the warning that says what to install, and the install goes on."""
    text = (ROOT / "scripts/install-director.sh").read_text()
    env = _stubs(tmp_path, apt_cache=UNKNOWN, uname='echo 6.99.0-t1\n', dpkg='echo amd64\n',
                 ls='exit 2\n')          # nothing under /usr/src/linux-headers-*
    script = "\n".join([_function(text, "log"), _function(text, "warn"),
                        _block(text, "# 2. kernel headers", "# 3. bpffs"), "echo went-on"])
    p = _bash(script, env, tmp_path)
    assert p.returncode == 0, p
    assert "install: WARNING: no headers for the running kernel 6.99.0-t1: not wiring" in p.stderr, p
    assert p.stdout.strip().endswith("went-on"), p


def _confdir_lines(text: str) -> str:
    lines = [line for line in text.splitlines() if '"$CONFDIR"' in line and "install -d" in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_install_director_keeps_the_mode_of_an_existing_confdir(tmp_path):
    """An operator's `chmod 0750 /etc/lb` survives the next `make install`; a missing directory
    is made 0755."""
    line = _confdir_lines((ROOT / "scripts/install-director.sh").read_text())
    env = dict(os.environ)
    tight, fresh = tmp_path / "tight", tmp_path / "fresh"
    tight.mkdir()
    tight.chmod(0o750)
    for d in (tight, fresh):
        p = _bash(f"CONFDIR={d}\n{line}", env, tmp_path)
        assert p.returncode == 0, p
    assert stat.S_IMODE(tight.stat().st_mode) == 0o750
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o755
