"""The suite's cleanup guarantees (tests/conftest.py): a SIGTERM to pytest still runs the fixtures'
teardowns (lab.down(), the lb runs' pins and run files), and what a killed `lb run` leaves on
the host -- pins, a dead compile's scratch pins, /run/lb/<instance>.*, the shared control
socket -- is removed by the runners' cleanup.  Nothing here touches the host's real /run/lb or
/sys/fs/bpf: the directories are the test's own."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import LbRunner, remove_instance_files

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

INNER = """
import os
import time

import pytest


def say(what):
    with open(os.environ["SUITE_LOG"], "a") as f:
        f.write(what + "\\n")


@pytest.fixture
def lab_like():
    say("up")
    yield
    say("teardown started")
    time.sleep(1.0)                  # a second SIGTERM arrives meanwhile
    say("teardown done")


def test_killed_midway(lab_like):
    say("running")
    time.sleep(120)
"""


def _wait_for(path: Path, text: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while text not in (path.read_text() if path.exists() else ""):
        assert proc.poll() is None, f"inner pytest exited with {proc.returncode}: {proc.communicate()[0]}"
        assert time.monotonic() < deadline, f"the inner pytest never logged {text!r}"
        time.sleep(0.05)


def test_a_sigterm_to_pytest_still_runs_the_teardowns(tmp_path):
    """pytest killed by SIGTERM (a cancelled job, `timeout`, a worker stopped) used to die at
    once, leaving the lab's namespaces, nginx, lb runs and their pins behind; now it stops as
    at Ctrl-C, running every fixture's teardown, and a second SIGTERM does not cut it short."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER))
    log = tmp_path / "log"
    env = {**os.environ, "SUITE_LOG": str(log), "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}"}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                             "-n0", "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "bt"),
                             str(tmp_path / "test_inner.py")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(log, "running", proc)
        proc.send_signal(signal.SIGTERM)
        _wait_for(log, "teardown started", proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert log.read_text().splitlines() == ["up", "running", "teardown started", "teardown done"], out
    assert proc.returncode == 2, out            # pytest's "interrupted"
    assert "KeyboardInterrupt" in out, out


def _host(tmp_path: Path, pid: int) -> dict:
    bpffs, run, shared = tmp_path / "bpf", tmp_path / "run-lb", tmp_path / "run-lb-control"
    for d in (bpffs / "lb" / "lab" / "lb_conns4", bpffs / "lb" / "lab2", bpffs / "lb-resize-lab",
              bpffs / "lb-resized-lab", bpffs / f"lb-compile-lab-{pid}", bpffs / f"lb-compile-lab-{os.getpid()}",
              run, shared):
        d.mkdir(parents=True, exist_ok=True)
    for f in ("lab.pid", "lab.sock", "lab.held", "lab.overrides.json", "lab.ipvs.json", "lab2.pid", "lab2.sock"):
        (run / f).write_text("x")
    for f in ("lab.sock", "lab2.sock"):
        (shared / f).write_text("x")
    return {"bpffs": str(bpffs), "run_dir": str(run), "shared_dir": str(shared)}


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_what_a_killed_lb_run_leaves_is_removed_and_nothing_else(tmp_path):
    """The lab runners removed the pin directory and the pid and held files only: a killed
    `lb run` left its control sockets (/run/lb/lab.sock, /run/lb-control/lab.sock), its
    overrides and IPVS state, and a dead compile's scratch pins on the host."""
    dead = _dead_pid()
    where = _host(tmp_path, dead)
    remove_instance_files("lab", **where)
    left = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    # another instance's, and the scratch of a compile still running (this process's pid), stay
    assert left == {"bpf", "bpf/lb", f"bpf/lb-compile-lab-{os.getpid()}", "bpf/lb/lab2",
                    "run-lb", "run-lb/lab2.pid", "run-lb/lab2.sock",
                    "run-lb-control", "run-lb-control/lab2.sock"}, sorted(left)


def test_one_lb_run_that_will_not_stop_leaves_no_other_running(tmp_path):
    """LbRunner.cleanup: a close() that fails (an lb that outlives SIGKILL's wait) stopped the
    loop, leaving the runs after it going and their pins behind; now every run is closed, the
    files removed, and the first error raised after."""
    closed, removed = [], []

    class Proc:
        def __init__(self, name, fails):
            self.name, self.fails = name, fails

        def close(self):
            closed.append(self.name)
            if self.fails:
                raise subprocess.TimeoutExpired("lb run", 5)

    r = LbRunner(None, tmp_path, remove=lambda lab: removed.append(lab))
    r.procs = [Proc("first", True), Proc("second", False)]
    try:
        r.cleanup()
    except subprocess.TimeoutExpired:
        pass
    else:
        raise AssertionError("the failed close was not raised")
    assert closed == ["first", "second"] and removed == [None]


def test_a_child_forked_without_exec_still_dies_of_sigterm():
    """pyroute2 runs its netns helper in a child forked from pytest and stops it with SIGTERM.
    With the suite's handler inherited, the child raised KeyboardInterrupt instead, unwound into
    its copy of the test session and ran on, while pytest waited for it for ever (a whole CI run
    hung).  The handler is the pytest process's own: a forked child dies of SIGTERM."""
    pid = os.fork()
    if pid == 0:                                  # the child: nothing but a sleep, then out
        try:
            time.sleep(30)
        finally:
            os._exit(0)
    done = 0
    try:
        time.sleep(0.2)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline, "the forked child outlived SIGTERM"
            time.sleep(0.05)
    finally:
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status


def test_a_bench_removes_what_its_killed_lb_run_leaves(tmp_path):
    """The failover bench kills its active director: its /run/lb/<instance>.held (what the run
    held) stayed behind after every bench run, for a later `lb run` of the name to take as an
    earlier run's.  The benches' cleanup removes every run file of their instances, no other's."""
    from bench.common import remove_run_files

    run, shared = tmp_path / "run", tmp_path / "shared"
    run.mkdir()
    shared.mkdir()
    for name in ("benchfo1.pid", "benchfo1.sock", "benchfo1.held", "benchfo1.overrides", "benchfo10.held",
                 "other.held"):
        (run / name).write_text("x")
    for name in ("benchfo1.sock", "other.sock"):
        (shared / name).write_text("x")
    remove_run_files("benchfo1", str(run), str(shared))
    assert sorted(p.name for p in run.iterdir()) == ["benchfo10.held", "other.held"]
    assert sorted(p.name for p in shared.iterdir()) == ["other.sock"]
