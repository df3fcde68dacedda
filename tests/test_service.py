"""lb as a service: the systemd unit (checked by systemd-analyze, its commands run the way systemd
runs them, with this test as the service manager: a NOTIFY_SOCKET, and the job `systemctl
list-jobs` reports), readiness, restart against stop, one daemon per instance, the files under
/run/lb, what a host without bcc, headers, root or pyroute2 is told, the compile cache and the
shipped decap program."""
from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import remove_instance_files
from lab_http import connect, errors, http_get, request, stop_wrk, wait_until, wrk

import lb
from lb import files, instance, preflight
from lb.dataplane import bpfobj, bpfsys, decap
from lb.dataplane import layout as L
from lb.dataplane.program import PROGRAMS, Sizes
from lb.dataplane.xdp import XdpDataplane

REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
PY = str(REPO / ".venv" / "bin" / "python")
UNIT = REPO / "lb" / "systemd" / "lb@.service"
VIP = "198.18.0.10"
NAT_ROUTER = "198.18.1.254"
PIN_DIR = "/sys/fs/bpf/lb/lab"
SERVERS = {"rs1", "rs2", "rs3"}


def run(argv, **kw):
    kw.setdefault("timeout", 120)
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)


# ---- the unit --------------------------------------------------------------------------------

def unit_commands(instance_name: str, config: str) -> dict[str, list[str]]:
    """The unit's Exec*= lines as systemd would run them for lb@<instance_name>.service, with
    /etc/lb/%i.toml -> config and `lb` -> this checkout's."""
    out = {}
    for line in UNIT.read_text().splitlines():
        m = re.match(r"(Exec\w+)=(.*)", line)
        if m:
            text = m.group(2).replace("/etc/lb/%i.toml", config).replace("%n", f"lb@{instance_name}.service")
            argv = shlex.split(text.replace("%i", instance_name))
            assert argv[0] == "lb", line
            out[m.group(1)] = [LB, *argv[1:]]
    return out


def test_version():
    p = run([LB, "--version"])
    assert p.returncode == 0 and p.stdout.strip() == f"lb {lb.__version__} (lvs-director)", p


def _verify_root(tmp_path, lb_exe: bool = True) -> Path:
    """A root for systemd-analyze: the host's own units, ours, a config, and `lb` on systemd's PATH."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system")
    shutil.copy(UNIT.with_name("lb-web@.service"), root / "etc/systemd/system")
    (root / "etc/lb").mkdir()
    (root / "etc/lb/web.toml").write_text("")
    if lb_exe:
        (root / "usr/local/sbin").mkdir(parents=True)
        exe = root / "usr/local/sbin/lb"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    return root


def test_unit_passes_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    root = _verify_root(tmp_path)
    p = run(["systemd-analyze", "verify", f"--root={root}", "lb@web.service"])
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p
    # the console's own unit (unprivileged, beside the daemon's)
    p = run(["systemd-analyze", "verify", f"--root={root}", "lb-web@web.service"])
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p
    # and it would say so: without lb where systemd looks for it
    shutil.rmtree(tmp_path / "root")
    root = _verify_root(tmp_path, lb_exe=False)
    p = run(["systemd-analyze", "verify", f"--root={root}", "lb@web.service"])
    assert "Command lb is not executable" in p.stderr, p


def test_the_unit_has_a_watchdog_the_run_loop_keeps():
    """WatchdogSec=: the run loop's pings (a quarter of it apart, a turn a second at least) end
    when a step hangs -- without it a hung netlink call held lb, SIGTERM's handling included,
    until systemd's SIGKILL and nothing noticed.  Far above a reload's longest step."""
    m = re.search(r"^WatchdogSec=(\d+)s$", UNIT.read_text(), re.M)
    assert m and int(m.group(1)) >= 60, "lb@.service has no WatchdogSec= (or a short one)"


# ---- /run/lb and its files ---------------------------------------------------------------------

def test_run_dir_is_made_0700_and_checked(tmp_path):
    d = tmp_path / "run"
    files.ensure_private_dir(str(d))
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    d.chmod(0o755)                          # as older versions of lb made it: tightened
    files.ensure_private_dir(str(d))
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    d.chmod(0o777)
    with pytest.raises(files.UnsafePath, match="writable by others"):
        files.ensure_private_dir(str(d))
    d.chmod(0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(files.UnsafePath, match="owned by uid 65534"):
        files.ensure_private_dir(str(d))
    os.chown(d, 0, 0)
    link = tmp_path / "link"
    link.symlink_to(d)
    with pytest.raises(files.UnsafePath, match="a symlink"):
        files.ensure_private_dir(str(link))


def test_files_under_run_lb_are_not_followed(tmp_path, monkeypatch, caplog):
    """A symlink planted at the pid file or the overrides file: the lock refuses it, the
    overrides are not read through it, and writing them replaces the link, not its target."""
    from lb import config as lbconfig
    from lb import engine as lbengine

    secret = tmp_path / "secret"
    secret.write_text('[{"server": ["tcp", "198.18.0.10", 80, "198.18.1.11", 80], "weight": 0}]')
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (run_dir / "t.pid").symlink_to(secret)
    with pytest.raises(OSError) as e:
        instance.InstanceLock("t", str(run_dir)).acquire()
    assert e.value.errno == errno.ELOOP

    monkeypatch.setattr(lbengine, "RUN_DIR", str(run_dir))
    cfg = lbconfig.loads(_CONFIG.format(instance="t"), "t.toml")
    (run_dir / "t.overrides.json").symlink_to(secret)
    eng = lbengine.Engine(cfg, dataplane="ipvs")
    with caplog.at_level("WARNING"):
        eng._restore_overrides()
    assert eng.overrides == {} and "ignoring" in caplog.text
    eng.set_override("web", "rs2", 5)
    assert not (run_dir / "t.overrides.json").is_symlink()
    assert json.loads((run_dir / "t.overrides.json").read_text())[0]["weight"] == 5
    assert json.loads(secret.read_text())[0]["weight"] == 0


_CONFIG = """
[global]
instance = "{instance}"
public_interface = "pub0"
network = "direct"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
  [[virtual_server.real_server]]
  name = "rs1"
  address = "198.18.1.11"
  [[virtual_server.real_server]]
  name = "rs2"
  address = "198.18.1.12"
"""

BAD_OVERRIDES = [
    {"server": [["tcp"]], "weight": 1},              # unhashable: was a TypeError at start
    {"server": "tcp 198.18.0.10", "weight": 1},
    {"server": ["tcp", "198.18.0.10", "80", "198.18.1.11", 80], "weight": 1},
    {"server": ["tcp", "198.18.0.10", 80, "198.18.1.11", 80], "weight": "heavy"},
    {"server": ["tcp", "198.18.0.10", 80, "198.18.1.11", 80]},
    5, None, "x", [1, 2],
    {"server": ["tcp", "198.18.0.10", 80, "198.18.1.12", 80], "weight": 0},    # the one good entry
]


def test_overrides_of_the_wrong_shape_are_ignored(tmp_path, monkeypatch, caplog):
    from lb import config as lbconfig
    from lb import engine as lbengine

    monkeypatch.setattr(lbengine, "RUN_DIR", str(tmp_path))
    (tmp_path / "t.overrides.json").write_text(json.dumps(BAD_OVERRIDES))
    eng = lbengine.Engine(lbconfig.loads(_CONFIG.format(instance="t"), "t.toml"), dataplane="ipvs")
    with caplog.at_level("WARNING"):
        eng._restore_overrides()
    assert [(k[1].exploded, w) for k, w in eng.overrides.items()] == [("198.18.1.12", 0)]
    assert caplog.text.count("ignoring a malformed entry") == len(BAD_OVERRIDES) - 1


# ---- one daemon per instance, lb stop's pid check ---------------------------------------------

@pytest.fixture
def test_instance():
    name = f"lbsvc{os.getpid()}"
    yield name
    remove_instance_files(name)


def test_lb_stop_signals_only_the_lock_holder(test_instance, tmp_path):
    """A pid file naming a process that is not the instance's lb (a stale file, a reused pid):
    lb stop refuses and the process lives.  Then a lock held by another pid than the file's."""
    files.ensure_private_dir("/run/lb")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        Path(f"/run/lb/{test_instance}.pid").write_text(f"{sleeper.pid}\n")
        p = run([LB, "stop", "--instance", test_instance])
        assert p.returncode == 1 and "no lb holds it: a stale file, nothing signalled" in p.stderr, p
        assert sleeper.poll() is None
        # a process that holds the lock but is not the pid in the file
        holder = subprocess.Popen([PY, "-c", "import fcntl, os, sys, time\n"
                                   f"fd = os.open('/run/lb/{test_instance}.pid', os.O_RDWR)\n"
                                   "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            p = run([LB, "stop", "--instance", test_instance])
            assert p.returncode == 1 and f"names pid {sleeper.pid}, which is not the lb holding it" in p.stderr, p
            assert sleeper.poll() is None and holder.poll() is None
        finally:
            holder.kill()
            holder.wait()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_second_lock_of_an_instance_is_refused(tmp_path):
    first = instance.InstanceLock("t", str(tmp_path / "run")).acquire()
    try:
        with pytest.raises(instance.AlreadyRunning, match=rf"instance 't' is already running \(pid {os.getpid()} "):
            instance.InstanceLock("t", str(tmp_path / "run")).acquire()
        assert instance.running_pid("t", str(tmp_path / "run")) == os.getpid()
    finally:
        first.release()
    assert not (tmp_path / "run" / "t.pid").exists()
    with pytest.raises(instance.NotRunning):
        instance.running_pid("t", str(tmp_path / "run"))


# ---- what a host lacks: one line, no traceback --------------------------------------------------

@pytest.fixture
def scratch_netns():
    """A network namespace of this test's own with a veth pair svc0/svc1 (nothing to forward);
    the `lb run` of instance <name> a test starts there leaves no pins or run files, also when
    the test fails with it killed."""
    name = f"lbsvc{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "svc0", "type", "veth", "peer", "name", "svc1"],
                       check=True, timeout=10)
        for dev in ("svc0", "svc1"):
            subprocess.run(["ip", "-n", name, "link", "set", dev, "up"], check=True, timeout=10)
        yield name
    finally:
        try:
            subprocess.run(["ip", "netns", "del", name], timeout=10)
        finally:
            remove_instance_files(name)


def _scratch_config(tmp_path, name: str) -> Path:
    path = tmp_path / "scratch.toml"
    path.write_text(_CONFIG.format(instance=name).replace('"pub0"', '"svc0"'))
    return path


def _lb_in(netns: str, *argv: str, env: dict | None = None, python_args: tuple = ()) -> subprocess.CompletedProcess:
    cmd = [PY, *python_args, "-c", "import sys\n" + _PRELUDE + "from lb.cli.main import main\nsys.exit(main())", *argv]
    return run(["nsenter", f"--net=/run/netns/{netns}", "--", *cmd], env={**os.environ, **(env or {})}, timeout=300)


_PRELUDE = """
import os
for name in os.environ.get("LB_TEST_HIDE", "").split():     # a host without these modules
    if name == "bcc":
        sys.path[:] = [p for p in sys.path if "debian-bcc" not in p and "dist-packages" not in p]
    else:
        sys.modules[name] = None
"""


def _one_line_error(p, needle: str) -> None:
    assert p.returncode == 2, p
    assert "Traceback" not in p.stderr, p.stderr
    lines = [x for x in p.stderr.splitlines() if needle in x]
    assert len(lines) == 1, p.stderr


def test_no_bcc_and_nothing_cached_says_how_to_get_it(tmp_path, scratch_netns):
    cfg = _scratch_config(tmp_path, scratch_netns)
    p = _lb_in(scratch_netns, "run", "--config", str(cfg),
               env={"LB_TEST_HIDE": "bcc", "LB_CACHE_DIR": str(tmp_path / "cache")})
    _one_line_error(p, "bcc is not installed, and the XDP programs are not in the compile cache: install it "
                       "(Debian/Ubuntu: apt install python3-bpfcc")
    assert not os.path.exists(f"/sys/fs/bpf/lb/{scratch_netns}")


def test_no_kernel_headers_says_how_to_get_them(tmp_path, scratch_netns):
    cfg = _scratch_config(tmp_path, scratch_netns)
    p = _lb_in(scratch_netns, "run", "--config", str(cfg),
               env={"BCC_KERNEL_SOURCE": str(tmp_path / "none"), "LB_CACHE_DIR": str(tmp_path / "cache")})
    _one_line_error(p, f"no kernel headers for {os.uname().release}")
    assert "apt install linux-headers-" in p.stderr


def test_no_pyroute2_says_how_to_get_it(tmp_path, scratch_netns):
    cfg = _scratch_config(tmp_path, scratch_netns)
    p = _lb_in(scratch_netns, "run", "--config", str(cfg), env={"LB_TEST_HIDE": "pyroute2"})
    _one_line_error(p, "lb: the Python module 'pyroute2' is missing: pip install pyroute2")


def test_not_root_says_so(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(_CONFIG.format(instance="nobody"))
    cfg.chmod(0o644)
    tmp_path.chmod(0o755)
    p = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", LB, "run", "--config", str(cfg)])
    _one_line_error(p, "lb run needs root")


def test_bpffs_and_architecture_messages(tmp_path):
    with pytest.raises(preflight.HostError, match=rf"no BPF filesystem on {tmp_path}.*mount -t bpf bpf {tmp_path}"):
        preflight.check_bpffs(str(tmp_path))
    preflight.check_bpffs()                 # this host's is mounted
    with pytest.raises(bpfsys.UnsupportedArchitecture, match=r"bpf\(2\) system call number of this architecture \(sparc64\)"):
        bpfsys._nr_bpf("sparc64")
    assert bpfsys._nr_bpf("x86_64") == 321 and bpfsys._nr_bpf("aarch64") == 280


def test_open_files_limit_is_raised_to_the_hard_one():
    """systemd starts a service with 1024 open files (soft): lb run raises it to the hard limit,
    so a thousand real servers' checks find their sockets (the unit test below sees it done)."""
    import sys
    code = ("import resource; from lb import preflight; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096)); "
            "print(*preflight.raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))")
    p = run([sys.executable, "-c", code])
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1024", "4096", "4096", "4096"]


def test_an_interface_made_later_is_waited_for(tmp_path, scratch_netns):
    """lb@.service's --wait-interfaces: a config naming an interface a later boot step makes (a
    VLAN, a bond).  Without the wait the start fails at once naming it (as before); with it lb
    waits, STATUS= saying for which, and starts once the interface is there (a SIGHUP meanwhile,
    which killed a starting daemon, is a reload once it runs); a stop while it waits ends the start
    with nothing touched (exit 0)."""
    import contextlib

    from lb.sdnotify import Listener

    cfg = tmp_path / "late.toml"
    cfg.write_text(_CONFIG.format(instance=scratch_netns).replace('"pub0"', '"late0"'))
    _one_line_error(_lb_in(scratch_netns, "run", "--config", str(cfg)), "interface(s) not found: late0")

    @contextlib.contextmanager
    def waiting(log_name):
        """lb run --wait-interfaces 60, once it says it waits; killed if the test leaves it running"""
        notify, log = Listener(), open(tmp_path / log_name, "wb")
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{scratch_netns}", "--", LB, "run", "--config",
                                 str(cfg), "--wait-interfaces", "60"], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **notify.env()}, start_new_session=True)
        try:
            notify.wait_for("STATUS", "waiting for interface(s) late0", 60, alive=lambda: proc.poll() is None)
            yield proc, notify
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            notify.close()
            log.close()

    with waiting("stopped.log") as (proc, _):      # a stop while it waits
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    text = (tmp_path / "stopped.log").read_text()
    assert "waiting up to 60 s for interface(s) late0" in text and "stopped while waiting for interface(s) late0" \
        in text and "Traceback" not in text, text
    assert not os.path.exists(f"/sys/fs/bpf/lb/{scratch_netns}")

    with waiting("late.log") as (proc, notify):     # the interface comes: lb starts, and serves it
        proc.send_signal(signal.SIGHUP)     # a reload asked for meanwhile: carried out once running
        subprocess.run(["ip", "-n", scratch_netns, "link", "add", "late0", "type", "veth", "peer", "name", "late1"],
                       check=True, timeout=10)
        for dev in ("late0", "late1"):
            subprocess.run(["ip", "-n", scratch_netns, "link", "set", dev, "up"], check=True, timeout=10)
        notify.wait_for("READY", "1", 180, alive=lambda: proc.poll() is None)
        show = run(["ip", "-n", scratch_netns, "-d", "link", "show", "dev", "late0"]).stdout
        assert "prog/xdp" in show, show
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    text = (tmp_path / "late.log").read_text()
    assert "interface(s) there: starting" in text and "Traceback" not in text, text
    assert text.index("running: 1 virtual services") < text.index(f"reloaded {cfg}"), text
    assert not os.path.exists(f"/sys/fs/bpf/lb/{scratch_netns}")


def test_logs_under_journald_have_no_time_and_a_priority(tmp_path, scratch_netns):
    """With stderr the journal's (JOURNAL_STREAM names it), lines are "<priority>logger: text":
    journald stamps them and filters by the priority."""
    cfg = _scratch_config(tmp_path, scratch_netns)
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        p = subprocess.run(["nsenter", f"--net=/run/netns/{scratch_netns}", "--", LB, "run", "--config", str(cfg),
                            "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=f, stdin=subprocess.DEVNULL,
                           env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
                                "BCC_KERNEL_SOURCE": str(tmp_path / "none"), "LB_CACHE_DIR": str(tmp_path / "cache")},
                           timeout=120)
    text = err.read_text()
    assert p.returncode == 2, text
    assert re.search(r"^<6>lb\.engine: lb instance '\S+' starting", text, re.M), text
    assert re.search(r"^<3>lb\.engine: no kernel headers for ", text, re.M), text
    assert not re.search(r"\d\d:\d\d:\d\d", text), text


# ---- the compile cache and the shipped decap program --------------------------------------------

SMALL = Sizes(16, 256, 16, 4096)


def _tags(dp) -> dict[str, bytes]:
    return {n: bytes(bpfsys.prog_info(f.fd).tag) for n, f in dp.fns.items()}


def test_cached_programs_are_the_compiled_ones(tmp_path, caplog):
    """A warm start loads from the cache exactly what bcc compiles: the kernel's tag (a hash
    of the instructions, map fds left out) of every program is the same."""
    cache = bpfobj.Cache(str(tmp_path / "cache"))
    fresh = XdpDataplane(f"svcfresh{os.getpid()}", SMALL, cache=cache)
    cached = XdpDataplane(f"svccached{os.getpid()}", SMALL, cache=cache)
    try:
        fresh.load()
        assert fresh.program.compiled
        assert len(os.listdir(cache.dir)) == 1
        assert stat.S_IMODE(os.stat(cache.dir).st_mode) == 0o700
        with caplog.at_level("INFO"):
            cached.load()
        assert not cached.program.compiled and "loading the XDP programs from the compile cache" in caplog.text
        for dp in (fresh, cached):          # the schedulers' programs load as a table uses them
            assert not any(n.startswith("lb_sched_") for n in dp.fns)
            dp.program.ensure(L.SCHEDULERS)
            dp.program.ensure_nat()         # and NAT's reply programs when asked for
            dp.program.ensure_ipv6()        # and IPv6 fragments' with a table's IPv6 services
        assert set(_tags(cached)) == set(PROGRAMS)
        assert _tags(cached) == _tags(fresh)
    finally:
        for dp in (fresh, cached):
            dp.unpin()
            dp.close()


def test_a_damaged_cache_entry_is_compiled_again(tmp_path, caplog):
    cache = bpfobj.Cache(str(tmp_path / "cache"))
    dp = XdpDataplane(f"svcdamaged{os.getpid()}", SMALL, cache=cache)
    try:
        files.ensure_private_dir(cache.dir)
        key = bpfobj.cache_key(*_key_parts(dp))
        Path(cache._path(key)).write_text('{"format": 1, "maps": [], "progs": [{"name": 1}]}')
        with caplog.at_level("WARNING"):
            dp.load()
        assert dp.program.compiled and "compiling afresh" in caplog.text
        assert bpfobj.Object.from_json(Path(cache._path(key)).read_text()).progs.keys() == set(PROGRAMS)
    finally:
        dp.unpin()
        dp.close()


def _key_parts(dp):
    from lb.dataplane.program import _pin_flag, bpf_source

    flags = dp.sizes.cflags(dp.pin) + ["-Wno-macro-redefined"]
    return bpf_source(), [f for f in flags if not _pin_flag(f)], PROGRAMS


def test_shipped_decap_program_is_a_fresh_compile():
    """lb/dataplane/objects/lb_decap.json (what real servers load, without a compiler) is what
    bcc makes of bpf/lb_decap.c: `python -m lb.dataplane.decap --build` writes it again."""
    shipped, fresh = decap.shipped_object(), decap.compile_object()
    assert shipped.maps == fresh.maps
    assert shipped.progs == fresh.progs, "bpf/lb_decap.c changed: python -m lb.dataplane.decap --build"


def test_decap_loads_without_bcc(tmp_path, scratch_netns):
    """`lb decap attach` on a host without bcc: the shipped program attaches."""
    p = run(["nsenter", f"--net=/run/netns/{scratch_netns}", "--", PY, "-c",
             "import sys\n" + _PRELUDE + "from lb.cli.main import main\nsys.exit(main())",
             "decap", "attach", "svc0", "--mode", "generic", "--address", "198.18.1.11",
             "--from", "198.18.1.1"],
            env={**os.environ, "LB_TEST_HIDE": "bcc"})
    assert p.returncode == 0 and "decap attached to svc0 (generic mode) for 198.18.1.11 from 198.18.1.1" in p.stdout, p
    link = run(["ip", "-n", scratch_netns, "-d", "link", "show", "svc0"]).stdout
    assert "prog/xdp" in link and "name lb_xdp_decap" in link, link


# ---- in the lab: readiness, restart and stop the unit's way, a second lb run -------------------

CONFIGS = {"nat": REPO / "configs" / "lab-nat.toml", "direct": REPO / "configs" / "lab-dr.toml"}


def fake_systemctl(tmp_path, n: int = 0) -> tuple[dict, Path]:
    """An environment whose PATH has a `systemctl` that lists, on lb@lab.service, the job written
    in the file returned (none while it is empty), as systemd does while it stops the unit for
    that job (PID 1 here is not systemd)."""
    d = tmp_path / f"systemctl-{n}"
    d.mkdir()
    job = d / "job"
    job.write_text("")
    exe = d / "systemctl"
    exe.write_text(f'#!/bin/sh\n[ "$1" = list-jobs ] && [ -s {job} ] && '
                   f'echo "4711 lb@lab.service $(cat {job}) running"\nexit 0\n')
    exe.chmod(0o755)
    return {"PATH": f"{d}:{os.environ['PATH']}"}, job


def unit_start(lb_runner, tmp_path, network: str, n: int = 0):
    """ExecStartPre, then ExecStart in the director namespace with a NOTIFY_SOCKET (not yet ready)."""
    cmds = unit_commands("lab", str(CONFIGS[network]))
    p = run(cmds["ExecStartPre"])
    assert p.returncode == 0, p
    argv = cmds["ExecStart"]
    assert argv[1:4] == ["run", "--config", str(CONFIGS[network])], argv
    from conftest import LbProcess

    def systemds_limits():
        """a service's open files as systemd sets them: 1024 soft, the hard limit high"""
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    env, proc_job = fake_systemctl(tmp_path, n)
    proc = LbProcess(lb_runner.lab, CONFIGS[network], tmp_path / f"lb-unit-{n}.log", extra=argv[4:],
                     env=env, preexec_fn=systemds_limits)
    proc.job = proc_job
    lb_runner.procs.append(proc)
    return proc, cmds


def unit_stop(proc, job: str) -> None:
    """What systemd does to stop the unit for `job` ("stop", "restart"): the job is listed, and
    the main process gets SIGTERM (there is no ExecStop)."""
    proc.job.write_text(job)
    os.kill(proc.pid, signal.SIGTERM)


def xdp_prog(lab, dev) -> str | None:
    m = re.search(r"prog/xdp id (\d+)", lab.run("director", ["ip", "-d", "link", "show", "dev", dev]).stdout)
    return m.group(1) if m else None


def director_addrs(lab):
    info = json.loads(lab.run("director", ["ip", "-j", "-4", "addr", "show"]).stdout)
    return {a["local"] for i in info for a in i.get("addr_info", [])}


class Prober:
    """A new HTTP connection through the VIP every 50 ms from the client (bounded: 60 s), each
    recorded as (time sent, body or the exception)."""

    def __init__(self, lab):
        self.lab, self.results, self.stop = lab, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        deadline = time.monotonic() + 60
        while not self.stop.wait(0.05) and time.monotonic() < deadline:
            t = time.monotonic()
            try:
                status, body = http_get(self.lab, VIP, timeout=1.0)
                self.results.append((t, body.strip() if status == 200 else f"HTTP {status}"))
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.results.append((t, e))

    def close(self):
        self.stop.set()
        self.thread.join(10)


@pytest.mark.parametrize("lab", ["nat"], indirect=True)
def test_ready_only_once_forwarding_and_a_second_run_refuses(lab, lb_runner, tmp_path):
    """READY=1 comes once the VIP answers: frozen (SIGSTOP) the moment READY arrives, the
    daemon does nothing more, and a new connection through the VIP is answered; no request sent
    after READY fails.  An overrides file of the wrong shape does not stop the start.  A second
    `lb run` of the instance refuses and touches nothing.  Then the unit's stop: all gone."""
    Path("/run/lb/lab.overrides.json").write_text(json.dumps(BAD_OVERRIDES))
    prober = Prober(lab)
    proc = None
    try:
        proc, cmds = unit_start(lb_runner, tmp_path, "nat")
        ready = proc.notify.wait_for("READY", "1", 180, alive=lambda: proc.proc.poll() is None)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            status, body = http_get(lab, VIP, timeout=3.0)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert status == 200 and body.strip() in SERVERS
        # started with systemd's 1024 open files, it took the hard limit
        import resource
        limits = re.search(r"Max open files\s+(\d+)\s+(\d+)", Path(f"/proc/{proc.pid}/limits").read_text())
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        assert limits and int(limits.group(1)) == int(limits.group(2)) == hard > 1024, limits
        statuses = proc.notify.statuses()
        assert statuses[:3] == ["loading the data plane", "loading the XDP programs (compile cache)",
                                "applying the table"] or statuses[:3] == [
            "loading the data plane", "compiling the XDP programs (bcc)", "applying the table"], statuses
        assert statuses[3] == "attaching XDP" and statuses[4].startswith("running: 1 virtual services"), statuses
        def after_ready():
            return [r for t, r in prober.results if t > ready]
        wait_until(lambda: len(after_ready()) >= 5 or not prober.thread.is_alive(), 30,
                   "5 requests through the VIP sent after READY")
        prober.close()
        after = after_ready()
        assert len(after) >= 5 and all(r in SERVERS for r in after), after
        assert "ignoring a malformed entry" in proc.log()

        # a second lb run of the instance: refused, nothing touched
        prog = xdp_prog(lab, "pub0")
        pid_text = Path("/run/lb/lab.pid").read_text()
        second = lab.run("director", [LB, "run", "--config", str(CONFIGS["nat"])], check=False, timeout=120)
        assert second.returncode == 2, second
        assert f"instance 'lab' is already running (pid {proc.pid} holds /run/lb/lab.pid)" in second.stderr
        assert "attached" not in second.stderr and "Traceback" not in second.stderr, second.stderr
        assert Path("/run/lb/lab.pid").read_text() == pid_text and xdp_prog(lab, "pub0") == prog
        assert http_get(lab, VIP, timeout=3.0)[0] == 200

        # systemctl reload: ExecReload, RELOADING=1 then READY=1 again
        n = len(proc.notify.messages)
        p = run(cmds["ExecReload"])
        assert p.returncode == 0 and "reloaded" in p.stdout, p
        proc.notify.poll(0.5)
        later = [f for _, f in proc.notify.messages[n:]]
        assert later[0].get("RELOADING") == "1" and any(f.get("READY") == "1" for f in later[1:]), later

        # systemctl stop: SIGTERM during a "stop" job: the clean stop
        unit_stop(proc, "stop")
        assert proc.wait(30) == 0
        assert "systemd job on lb@lab.service: stop: a clean stop" in proc.log()
        assert xdp_prog(lab, "pub0") is None and xdp_prog(lab, "priv0") is None
        assert not {VIP, NAT_ROUTER} & director_addrs(lab)
        assert not os.path.exists(PIN_DIR) and not os.path.exists("/run/lb/lab.pid")
        proc.notify.poll(0.5)
        assert any(f.get("STOPPING") == "1" for _, f in proc.notify.messages)
    finally:
        prober.close()
        Path("/run/lb/lab.overrides.json").unlink(missing_ok=True)


@pytest.mark.parametrize("lab", ["direct"], indirect=True)
def test_a_stop_while_the_unit_starts_is_a_clean_stop(lab, lb_runner, tmp_path):
    """`systemctl stop` of a unit still starting (a cold start compiles for seconds) or reloading:
    systemd runs no ExecStop then, only SIGTERM.  The daemon asks which job it is: "stop", so the
    start is finished and undone -- no VIP, no XDP program, no pins left forwarding behind an
    inactive unit (with ExecStop deciding, SIGTERM kept them)."""
    proc, _ = unit_start(lb_runner, tmp_path, "direct")
    proc.notify.wait_for("STATUS", "loading the data plane", 120, alive=lambda: proc.proc.poll() is None)
    unit_stop(proc, "stop")
    assert proc.wait(120) == 0, proc.log()
    assert "systemd job on lb@lab.service: stop: a clean stop" in proc.log()
    assert xdp_prog(lab, "pub0") is None and VIP not in director_addrs(lab)
    assert not os.path.exists(PIN_DIR) and not os.path.exists("/run/lb/lab.pid")


@pytest.mark.parametrize("lab", ["nat", "direct"], indirect=True)
def test_restart_the_units_way_keeps_every_connection(lab, lb_runner, tmp_path):
    """systemctl restart = ExecStop during a "restart" job, then ExecStartPre and ExecStart:
    under wrk's keep-alive connections no request fails and an open connection keeps its real
    server; the new daemon adopts the maps."""
    network = lab.status()["network"]
    old, cmds = unit_start(lb_runner, tmp_path, network, 0)
    old.wait_running()
    load = wrk(lab, 60, conns=4)          # stopped a second after the restart (stop_wrk)
    try:
        with connect(lab, VIP, timeout=3.0) as s:
            rs = request(s)
            time.sleep(1.0)                # load before the restart, not a wait for a state
            unit_stop(old, "restart")
            assert old.wait(30) == 0
            assert "systemd job on lb@lab.service: restart: keeping the data plane" in old.log()
            assert xdp_prog(lab, "pub0") is not None and os.path.isdir(PIN_DIR) and VIP in director_addrs(lab)
            new, _ = unit_start(lb_runner, tmp_path, network, 1)
            new.wait_running()
            assert "(adopted maps in /sys/fs/bpf/lb/lab)" in new.log()
            assert request(s) == rs
        res = stop_wrk(load, after=1.0)    # wrk's load spanned the whole restart
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert res["requests"] > 100 and errors(res) == 0, res["text"]
