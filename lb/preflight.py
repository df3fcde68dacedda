"""What a director host needs, checked before it is used, each missing piece reported in one
line that says how to get it (never a traceback): root, bpffs, the bpf(2) syscall of this
architecture, and -- only when the programs are not in the compile cache -- bcc and the
kernel's headers."""
from __future__ import annotations

import importlib.util
import os


class HostError(Exception):
    """Something the host lacks; the message is one line saying how to get it."""


BPFFS = "/sys/fs/bpf"
BPF_FS_MAGIC = 0xCAFE4A11


def check_root(what: str = "lb run") -> None:
    if os.geteuid() != 0:
        raise HostError(f"{what} needs root (it loads BPF programs, attaches XDP and adds addresses): run it "
                        f"as root, or through the lb@.service unit")


def bpffs_mounted(path: str = BPFFS) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            # the last mount on the path is the one seen there (a tmpfs over a bpffs hides it)
            types = [fields[2] for fields in map(str.split, f) if len(fields) > 2 and fields[1] == path]
        return bool(types) and types[-1] == "bpf"
    except OSError:
        return os.path.isdir(path)


def check_bpffs(path: str = BPFFS) -> None:
    if not bpffs_mounted(path):
        raise HostError(f"no BPF filesystem on {path} (lb pins its maps there): mount -t bpf bpf {path} "
                        f"(systemd mounts it at boot; `make install` mounts it now)")


def check_arch() -> None:
    from lb.dataplane import bpfsys

    try:
        bpfsys._nr_bpf(os.uname().machine)
    except bpfsys.UnsupportedArchitecture as e:
        raise HostError(str(e)) from None


def have_bcc() -> bool:
    try:
        return importlib.util.find_spec("bcc") is not None
    except (ImportError, ValueError):
        return False


def kernel_headers() -> str | None:
    """Where bcc finds this kernel's headers (None: nowhere)."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        return env if os.path.isdir(env) else None
    build = f"/lib/modules/{os.uname().release}/build"
    if os.path.isdir(build):
        return build
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return "/sys/kernel/kheaders.tar.xz"
    return None


def check_compiler() -> None:
    """bcc and the kernel's headers: needed only to compile (a cache miss)."""
    if not have_bcc():
        raise HostError("bcc is not installed, and the XDP programs are not in the compile cache: install it "
                        "(Debian/Ubuntu: apt install python3-bpfcc; lb's install script exposes it to lb's venv)")
    if kernel_headers() is None:
        rel = os.uname().release
        raise HostError(f"no kernel headers for {rel} (/lib/modules/{rel}/build is missing), which bcc needs to "
                        f"compile the XDP programs the first time: apt install linux-headers-{rel}, or load the "
                        f"kheaders module (modprobe kheaders), or set BCC_KERNEL_SOURCE to a headers tree")


def check_director() -> None:
    """Before `lb run` touches anything."""
    check_root()
    check_arch()
    check_bpffs()


def raise_open_files_limit() -> tuple[int, int]:
    """The soft limit on open files raised to the hard one: (before, after).  systemd starts a
    service at 1024 (its hard limit is far higher), and a director checking a thousand real
    servers at once needs more than that -- a check that cannot open a socket is not run (and
    not counted against its server), but it is not done either."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if hard == resource.RLIM_INFINITY:        # the kernel's ceiling: fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open") as f:
                want = int(f.read())
        except (OSError, ValueError):
            want = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return soft, want
        except (ValueError, OSError):
            pass
    return soft, soft
