import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lb.dataplane.resize import old_dir, staging_dir


# ---------------------------------------------------------------------------------------------
# The suite's own network namespace.  The unit tests talk over loopback (health checks, the web
# console, metrics, heartbeats between two in-memory directors); in the host's namespace that
# traffic would share 127.0.0.1 with whatever the machine runs, and a test aiming at a config's
# address could reach a real network.  So, as root, the pytest process (and the xdist workers and
# every process it starts, which inherit it) moves at import into a new namespace holding only
# `lo`: nothing a test sends can leave it.  The lab's lb-* namespaces are made from here as
# before (named namespaces do not nest).  What must reach the host's network -- only
# test_install's pip and apt, installing packages -- enters the host's namespace by
# HOST_NETNS (an fd this process keeps open).

HOST_NETNS_ENV = "LB_TESTS_HOST_NETNS"


def _own_network_namespace() -> None:
    import ctypes

    if os.geteuid() != 0 or os.environ.get(HOST_NETNS_ENV):
        return                    # not root (nothing to make it with), or a worker: inherited
    host = os.open("/proc/self/ns/net", os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:        # CLONE_NEWNET
        err = ctypes.get_errno()
        raise RuntimeError(f"tests/conftest.py: unshare(CLONE_NEWNET): {os.strerror(err)}")
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    os.environ[HOST_NETNS_ENV] = f"/proc/{os.getpid()}/fd/{host}"


_own_network_namespace()


def _terminate_as_interrupt() -> None:
    """SIGTERM (a cancelled CI job, `timeout`, systemd stopping the session, a worker killed)
    ends pytest as Ctrl-C does: a KeyboardInterrupt, so the fixtures' teardowns still run --
    lab.down(), the lb runs' pins and run files -- where the default action killed the process
    with them all left behind.  A second SIGTERM meanwhile does not cut that cleanup short.
    Only in this process: a child forked from it without exec (pyroute2's netns helper, which
    its parent stops with SIGTERM) dies of SIGTERM as before -- raised there, the interrupt
    unwound into a copy of the test session that ran on while its parent waited for it."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    seen = []
    owner = os.getpid()

    def handler(signum, _frame) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if not seen:
            seen.append(signum)
            raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, handler)


_terminate_as_interrupt()


def in_host_network(argv: list[str]) -> list[str]:
    """argv run in the host's network namespace (package installs only), or as it is when the
    suite has none of its own (not root)."""
    host = os.environ.get(HOST_NETNS_ENV)
    return ["nsenter", f"--net={host}", "--", *argv] if host else argv


LAB_TESTS_LOCK = "/run/lb-lab.tests.lock"
LAB_TESTS_LOCK_WAIT_S = 3600.0   # other sessions (developers' worktrees) may hold the lab a while

# ---------------------------------------------------------------------------------------------
# Parallel runs (pytest-xdist, `make test` runs -n N --dist loadgroup): the namespace lab is one
# per host, so every test that uses it runs on one worker, in file order, and the IPVS VM suite
# (one qemu boot) on another; the other modules spread over the workers, each module whole and
# in order on one worker (as --dist loadfile).

# modules that use the lab without the `lab` fixture (bench's lab_up takes the same lock), and
# test_install, whose one install (a few minutes) serves its lab test and the others
LAB_MODULES = {"test_bench_smoke", "test_install", "test_demo"}


def _reorder(items: list, how: str) -> None:
    """LB_TEST_ORDER=reverse|shuffle[:SEED]: each module's tests in reverse or shuffled order
    (modules stay whole), to show a test that depends on an earlier one having run."""
    import random

    if not how:
        return
    rng = random.Random(int(how.partition(":")[2] or 0))
    by_module: dict[str, list] = {}
    for it in items:
        by_module.setdefault(str(it.fspath), []).append(it)
    items.clear()
    for group in by_module.values():
        if how == "reverse":
            group.reverse()
        else:
            rng.shuffle(group)
        items.extend(group)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    _reorder(items, os.environ.get("LB_TEST_ORDER", ""))
    group_of = {}
    for item in items:
        path = Path(str(item.fspath))
        if "lab" in getattr(item, "fixturenames", ()) or path.stem in LAB_MODULES:
            group = "lab"
        elif path.parent.name == "vm":
            # the twos VM (Debian's 6.12) is a boot of its own: it may run beside the main one
            group = "vm-twos" if path.stem == "test_ipvs_twos_vm" else "vm"
        else:
            group = path.stem
        item.add_marker(pytest.mark.xdist_group(group))
        group_of[item] = group
    # The long poles first: xdist hands out groups in this order (make test passes
    # --no-loadscope-reorder), so the IPVS VM (one boot, ~20 min under emulation) and the serial
    # lab start at once on workers of their own instead of after the unit modules.
    first = {"vm": 0, "lab": 1, "vm-twos": 2}
    items.sort(key=lambda it: first.get(group_of[it], 3))


# ---------------------------------------------------------------------------------------------
# LB_TEST_TIMELINE=FILE: one line per test phase, "worker start end phase nodeid" (wall clock),
# appended by every worker: where a parallel run's time goes (which group is the long pole).

_TIMELINE = os.environ.get("LB_TEST_TIMELINE")


if _TIMELINE:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(item):
        t0 = time.time()
        yield
        _timeline(item, "setup", t0)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        t0 = time.time()
        yield
        _timeline(item, "call", t0)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(item):
        t0 = time.time()
        yield
        _timeline(item, "teardown", t0)


def _timeline(item, phase: str, t0: float) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(_TIMELINE, "a") as f:
        f.write(f"{worker} {t0:.1f} {time.time():.1f} {phase} {item.nodeid}\n")


# ---------------------------------------------------------------------------------------------
# Skips are counted, and under `make test` (LB_NO_SKIPS=1) any skip fails the run: on the CI
# machine every capability the suite needs is installed by the project, so a skip hides a test.
# A test that failed under an xfail mark is counted with them: it hides a failure as well.

def _skipped(config) -> list:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return []
    return list(reporter.stats.get("skipped", [])) + list(reporter.stats.get("xfailed", []))


# seconds of setup + call + teardown per xdist group and per worker, summed on the controller:
# the long poles `make test` must keep under its bound (printed at the end of the run)
_GROUP_SECONDS: dict[str, float] = {}
_WORKER_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    group = report.nodeid.rpartition("@")[2] if "@" in report.nodeid else "-"
    _GROUP_SECONDS[group] = _GROUP_SECONDS.get(group, 0.0) + report.duration
    node = getattr(report, "node", None)     # set by xdist on the controller
    worker = getattr(getattr(node, "gateway", None), "id", None) or "main"
    _WORKER_SECONDS[worker] = _WORKER_SECONDS.get(worker, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput"):
        return
    if _GROUP_SECONDS:
        longest = sorted(_GROUP_SECONDS.items(), key=lambda kv: -kv[1])[:8]
        terminalreporter.write_line("lb: seconds per group: " + ", ".join(f"{g} {s:.0f}" for g, s in longest))
        terminalreporter.write_line("lb: seconds per worker: " + ", ".join(
            f"{w} {s:.0f}" for w, s in sorted(_WORKER_SECONDS.items())))
    skipped = _skipped(config)
    terminalreporter.write_line(f"lb: {len(skipped)} skipped")
    if skipped and os.environ.get("LB_NO_SKIPS") == "1":
        terminalreporter.write_line("lb: LB_NO_SKIPS=1 (make test): a skipped test fails the run; skipped:", red=True)
        for rep in skipped:
            if getattr(rep, "wasxfail", None) is not None:
                reason = f"xfail, and it failed: {rep.wasxfail or '(no reason given)'}"
            else:
                reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
            terminalreporter.write_line(f"  {rep.nodeid}: {reason}", red=True)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput") or os.environ.get("LB_NO_SKIPS") != "1":
        return
    if _skipped(session.config) and session.exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _no_name_lookups(monkeypatch):
    """No test looks a host name up (an lvs.cf's host names, as Piranha's gethostbyname took them:
    lb.config.lvscf.resolve_host): a name has no address unless the test gives it one."""
    from lb.config import lvscf

    monkeypatch.setattr(lvscf, "resolve_host", lambda name: None)


@pytest.fixture(scope="module")
def lab_exclusive():
    """An exclusive flock held while a module uses the lab: the lab is one per host (lb-*
    namespaces, /run/lb-lab, /sys/fs/bpf/lb/lab), so concurrent pytest sessions take turns
    instead of tearing down each other's lab. Released by close() or by the process dying."""
    import fcntl

    try:
        fd = os.open(LAB_TESTS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield  # not root: the lab fixture skips anyway
        return
    try:
        deadline = time.monotonic() + LAB_TESTS_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session held {LAB_TESTS_LOCK} for {LAB_TESTS_LOCK_WAIT_S:.0f}s")
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def lab(request, lab_exclusive):
    """The namespace lab (lb.lab), up for the whole test module, torn down afterwards.

    Network mode: indirect parametrization (``@pytest.mark.parametrize("lab", ["nat"], indirect=True)``)
    or a module-level ``LAB_NETWORK = "nat"``; default "direct".  Options: LAB_IPV6, LAB_TX_CSUM. Skips unless root with nsenter + nginx.
    """
    if os.geteuid() != 0 or not shutil.which("nsenter") or not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("the namespace lab needs root, nsenter and /usr/sbin/nginx")
    from lb import lab as _lab

    network = getattr(request, "param", None) or getattr(request.module, "LAB_NETWORK", "direct")
    # module-level LAB_IPV6 = True: dual stack (2001:2::/48); LAB_TX_CSUM = True: the veths keep
    # their tx checksum offload (packets reach XDP with partial checksums)
    options = {"ipv6": getattr(request.module, "LAB_IPV6", False),
               "tx_csum": getattr(request.module, "LAB_TX_CSUM", False)}
    try:
        _lab.up(network, **options)
        yield _lab
    finally:
        _lab.down()


# ---------------------------------------------------------------------------------------------
# `lb run` inside the lab's director namespace (tests/test_director.py, tests/test_restart.py)

REPO = Path(__file__).resolve().parents[1]
LB_BIN = str(REPO / ".venv" / "bin" / "lb")

# another tool's XDP program put over whatever dev runs (lb's own included), as a tool that does
# not look would: lb's decap program, loaded from its shipped instructions (`lb decap attach`
# itself refuses to replace another program)
_DISPLACE = ("import sys; from lb.dataplane import decap; from lb.dataplane.attach import attach_xdp; "
             "import ipaddress; dev = sys.argv[1]; "
             "loaded, fn = decap.load(decap.local_addresses(dev), [ipaddress.ip_address(sys.argv[2])]); "
             "print(attach_xdp(dev, fn, 'native')[0]); loaded.close()")


def displace_xdp(lab, node: str, dev: str, source: str) -> None:
    """Another XDP program (lb_xdp_decap, tunnels from `source`) in place of what dev runs on
    node; `lb decap detach dev` takes it off."""
    lab.run(node, [str(REPO / ".venv" / "bin" / "python"), "-c", _DISPLACE, dev, source], timeout=60)
LAB_INSTANCE = "lab"
LAB_PIN_DIR = f"/sys/fs/bpf/lb/{LAB_INSTANCE}"


class LbProcess:
    """One `lb run --config PATH [EXTRA...]` in the director namespace; its stderr goes to a log
    file.  It gets a NOTIFY_SOCKET (lb.sdnotify.Listener, what systemd gives a Type=notify unit):
    wait_running() waits for READY=1, sent once the programs are attached and the table applied."""

    def __init__(self, lab, config: str, log_path: Path, node: str = "director", instance: str = LAB_INSTANCE,
                 extra=(), env: dict | None = None, lb_bin: str | None = None, preexec_fn=None):
        from lb.sdnotify import Listener

        self.lab = lab
        self.config = str(config)
        self.node = node
        self.instance = instance
        self.log_path = Path(log_path)
        self.notify = Listener()
        try:
            self._log = open(self.log_path, "wb")
            try:
                self.proc = lab.popen(node, [lb_bin or LB_BIN, "run", "--config", self.config, *extra],
                                      stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True,
                                      env={**os.environ, **(env or {}), **self.notify.env()}, preexec_fn=preexec_fn)
            except BaseException:
                self._log.close()
                raise
        except BaseException:
            self.notify.close()
            raise
        self.pid = self.proc.pid
        self.ready_at: float | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        """Until ``text`` occurs ``count`` times in the log; fails early if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.log().count(text) >= count:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"lb run exited with {self.proc.returncode} before logging {text!r}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"lb run did not log {text!r} within {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def wait_running(self, timeout: float = 180.0) -> "LbProcess":
        """Until READY=1 (a cold start compiles for seconds, longer under load)."""
        try:
            self.ready_at = self.notify.wait_for("READY", "1", timeout, alive=lambda: self.proc.poll() is None)
        except (TimeoutError, ChildProcessError) as e:
            if self.proc.poll() is None:          # still running: its threads' stacks into the log
                self.proc.send_signal(signal.SIGQUIT)
                time.sleep(2)
            raise AssertionError(f"lb run (pid {self.pid}): {e}; exit {self.proc.poll()}:\n{self.log()}") from None
        return self

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"lb run (pid {self.pid}) still running after {timeout}s:\n{self.log()}") from None

    def close(self) -> None:
        """SIGINT (the clean stop, whatever --on-sigterm says), then SIGKILL; always reaps."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            self._log.close()
            self.notify.close()


def remove_instance_files(instance: str, bpffs: str = "/sys/fs/bpf", run_dir: str = "/run/lb",
                          shared_dir: str = "/run/lb-control") -> None:
    """What a killed or failed `lb run` of ``instance`` leaves on the host: its pins (and a
    resize's staging and old directories, a dead compile's scratch pins) and its run files --
    <run_dir>/<instance>.* (pid file, control socket, held record, overrides, IPVS state, BGP
    lease ...) and the shared control socket <shared_dir>/<instance>.sock."""
    pin = os.path.join(bpffs, "lb", instance)
    for d in (pin, staging_dir(pin), old_dir(pin)):
        shutil.rmtree(d, ignore_errors=True)
    prefix = f"lb-compile-{instance}-"
    for name in os.listdir(bpffs) if os.path.isdir(bpffs) else ():
        pid = name[len(prefix):]
        if name.startswith(prefix) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(bpffs, name), ignore_errors=True)
    for f in [*Path(run_dir).glob(f"{instance}.*"), Path(shared_dir) / f"{instance}.sock"]:
        f.unlink(missing_ok=True)


def remove_lab_dataplane(lab) -> None:
    """Whatever an `lb run` of the lab may have left: XDP on pub0/priv0, pins, run files."""
    if os.path.exists(lab.netns_path("director")):
        for dev in ("pub0", "priv0"):
            for mode in ("xdp", "xdpgeneric", "xdpdrv"):
                lab.run("director", ["ip", "link", "set", "dev", dev, mode, "off"], check=False, timeout=10)
    remove_instance_files(LAB_INSTANCE)


class LbRunner:
    """Starts `lb run` processes for a test (or module) and undoes everything they may leave."""

    def __init__(self, lab, log_dir: Path, remove=remove_lab_dataplane):
        self.lab = lab
        self.log_dir = Path(log_dir)
        self.procs: list[LbProcess] = []
        self._remove = remove

    def start(self, config, wait: bool = True, node: str = "director", instance: str = LAB_INSTANCE) -> LbProcess:
        p = LbProcess(self.lab, config, self.log_dir / f"lb-{node}-{len(self.procs)}.log", node=node,
                      instance=instance)
        self.procs.append(p)
        return p.wait_running() if wait else p

    def cleanup(self) -> None:
        """Every process stopped (one that fails to stop does not leave the others running),
        then what they may have left removed; the first error is raised after."""
        errors = []
        for p in self.procs:
            try:
                p.close()
            except BaseException as e:      # noqa: BLE001 - raised below, once all are stopped
                errors.append(e)
        try:
            self._remove(self.lab)
        finally:
            if errors:
                raise errors[0]


@pytest.fixture
def lb_runner(lab, tmp_path):
    """Function-scoped: start `lb run` in the lab director with ``lb_runner.start(config)``."""
    remove_lab_dataplane(lab)
    r = LbRunner(lab, tmp_path)
    try:
        yield r
    finally:
        r.cleanup()


@pytest.fixture(scope="module")
def lb_module_runner(lab, tmp_path_factory):
    """Module-scoped twin of ``lb_runner`` (one `lb run` shared by a module's tests)."""
    remove_lab_dataplane(lab)
    r = LbRunner(lab, tmp_path_factory.mktemp("lb-run"))
    try:
        yield r
    finally:
        r.cleanup()


# ---------------------------------------------------------------------------------------------
# HA: `lb run` on both lab directors (tests/test_ha_lab.py)

HA_INSTANCES = {"director": "lab", "director2": "lab2"}


def remove_ha_dataplane(lab) -> None:
    """What HA runs may leave on either director: XDP, pins, run files, moved addresses, links down."""
    for node, inst in HA_INSTANCES.items():
        if os.path.exists(lab.netns_path(node)):
            for dev in ("pub0", "priv0"):
                lab.run(node, ["ip", "link", "set", "dev", dev, "up"], check=False, timeout=10)
                for mode in ("xdp", "xdpgeneric", "xdpdrv"):
                    lab.run(node, ["ip", "link", "set", "dev", dev, mode, "off"], check=False, timeout=10)
            lab.restore_addresses(node)     # its IPv6 addresses went with a link taken down
            lab.run(node, ["ip", "addr", "del", "198.18.0.10/32", "dev", "pub0"], check=False, timeout=10)
            lab.run(node, ["ip", "addr", "del", "198.18.1.254/24", "dev", "priv0"], check=False, timeout=10)
            lab.run(node, ["ip", "route", "flush", "type", "blackhole"], check=False, timeout=10)
        remove_instance_files(inst)


class HaRunner(LbRunner):
    """`lb run` processes on director (instance lab) and director2 (instance lab2)."""

    def __init__(self, lab, log_dir: Path):
        super().__init__(lab, log_dir, remove=remove_ha_dataplane)

    def start(self, node: str, config, wait: bool = True) -> LbProcess:
        return super().start(config, wait, node=node, instance=HA_INSTANCES[node])


@pytest.fixture
def ha_runner(lab, tmp_path):
    remove_ha_dataplane(lab)
    r = HaRunner(lab, tmp_path)
    try:
        yield r
    finally:
        r.cleanup()
