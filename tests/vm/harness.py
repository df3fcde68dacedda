"""Boot Debian's distribution kernel (which has IPVS) under qemu with virtme-ng and run one
command inside; the host's root filesystem is shared read-only, so the project's venv works
in the guest.  scripts/setup-vm.sh installs what this needs.

    python tests/vm/harness.py [--rwdir DIR] -- COMMAND...     # e.g. -- ipvsadm -L -n

Measured facts this follows (/work/shared/reference/ipvs-vm.md): --disable-kvm (KVM aborts
here), --force-9p (no virtiofsd), the output is piped (never redirected straight into a file:
qemu opens the same fd several times), the command's exit status comes back.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
CACHE = Path(os.environ.get("LB_VM_CACHE", "/var/cache/lb-vm"))
KERNEL = CACHE / "vmlinuz"
KERNEL_TWOS = CACHE / "vmlinuz-twos"      # Debian's 6.12: IPVS with twos (6.2+), which 6.1 lacks


class VmUnavailable(Exception):
    """What is missing for a VM run, in words (the reason a test skips)."""


def kernel_release(kernel: Path = KERNEL) -> str:
    return os.path.basename(os.path.realpath(kernel)).removeprefix("vmlinuz-")


def check_prerequisites(kernel: Path = KERNEL, module: str = "ip_vs") -> None:
    if os.geteuid() != 0:
        raise VmUnavailable("the IPVS VM needs root")
    vng = VENV / "bin" / "vng"
    if not vng.exists():
        raise VmUnavailable(f"{vng} missing: run scripts/setup-vm.sh (make test does)")
    if not shutil.which("qemu-system-x86_64"):
        raise VmUnavailable("qemu-system-x86_64 missing: run scripts/setup-vm.sh (make test does)")
    if not kernel.exists():
        raise VmUnavailable(f"{kernel} missing: run scripts/setup-vm.sh (make test does)")
    ver = kernel_release(kernel)
    if not any(Path(f"/lib/modules/{ver}/kernel/net/netfilter/ipvs").glob(f"{module}.ko*")):
        raise VmUnavailable(f"/lib/modules/{ver} has no {module} module: run scripts/setup-vm.sh")


def vng_argv(command: str, rwdir: str | None = None, memory: str = "2G", cpus: int = 2,
             kernel: Path = KERNEL) -> list[str]:
    argv = [str(VENV / "bin" / "vng"), "--run", str(kernel), "--disable-kvm", "--force-9p",
            "--memory", memory, "--cpus", str(cpus)]
    if rwdir:
        argv.append(f"--rwdir={rwdir}")
    return argv + ["--exec", command]


def run(command: str, rwdir: str | None = None, timeout: float = 900.0, log_path: str | None = None,
        echo: bool = False, **kw) -> tuple[int, str, float]:
    """Boot, run `command` (a shell command line) in the guest, power off.
    Returns (exit status, console output, wall seconds).  The output goes through a pipe and,
    if log_path is given, is copied there line by line.

    A VM that ends with virtme-ng's 255 ("qemu ended without the command's status": a guest
    panic, qemu dying) before printing anything never ran the command; it is booted once more
    (seen once in a full `make test`, the other VM and the lab running beside it: 10 s, no
    output, and fine when run again).  Anything the command printed, and any other status, is
    returned as it is."""
    rc, out, wall = _run_once(command, rwdir, timeout, log_path, echo, **kw)
    if rc == 255 and not out.strip():
        note = f"[harness] the VM ended with 255 after {wall:.0f} s without any output: booted again\n"
        sys.stderr.write(note)
        rc, out, wall2 = _run_once(command, rwdir, timeout, log_path, echo, **kw)
        out, wall = note + out, wall + wall2
    return rc, out, wall


def _run_once(command: str, rwdir: str | None, timeout: float, log_path: str | None, echo: bool,
              **kw) -> tuple[int, str, float]:
    check_prerequisites(kw.get("kernel", KERNEL))
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    t0 = time.monotonic()
    proc = subprocess.Popen(vng_argv(command, rwdir, **kw), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, cwd=str(REPO), start_new_session=True)
    out: list[str] = []
    log = open(log_path, "w") if log_path else None
    # the deadline holds also for a guest that prints nothing more (hung): reading the console
    # blocks until a line comes, so a timer kills the VM, which ends the read
    overdue = threading.Event()

    def kill_overdue() -> None:
        overdue.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
    watchdog = threading.Timer(timeout, kill_overdue)
    watchdog.daemon = True
    watchdog.start()
    try:
        deadline = t0 + timeout
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            out.append(line)
            if log:
                log.write(line)
                log.flush()
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
            if time.monotonic() > deadline:
                break
        try:
            rc = proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
        if rc is None or time.monotonic() > deadline or overdue.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
            out.append(f"\n[harness] the VM did not finish within {timeout:.0f}s: killed\n")
            rc = 124
    finally:
        watchdog.cancel()
        if log:
            log.close()
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    return rc, "".join(out), time.monotonic() - t0


def main(argv: list[str]) -> int:
    rwdir = None
    if argv[:1] == ["--rwdir"]:
        rwdir, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    try:
        rc, _out, wall = run(shlex.join(argv) if len(argv) > 1 else argv[0], rwdir=rwdir, echo=True)
    except VmUnavailable as e:
        print(f"harness: {e}", file=sys.stderr)
        return 2
    print(f"[harness] exit {rc} after {wall:.1f}s", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
