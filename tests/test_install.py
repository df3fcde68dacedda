"""lb as an operator installs it: a wheel built from this checkout, installed by the director
install script (`make install`) into a fresh venv in a temporary directory outside the checkout,
with nginx and HAProxy running on the host -- which it must leave running (a director often
runs them) -- and `lb run` from that install forwarding through the lab's VIP."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import in_host_network
from lab_http import http_get

from lb.lab import VIP

REPO = Path(__file__).resolve().parents[1]
SERVERS = {"rs1", "rs2", "rs3"}

NGINX_CONF = """\
daemon on;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:8080;
        location / {{ default_type text/plain; return 200 "nginx\\n"; }}
    }}
}}
"""
HAPROXY_CONF = """\
global
    pidfile {d}/haproxy.pid
    daemon
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend web
    bind 127.0.0.1:8081
    default_backend nginx
backend nginx
    server n1 127.0.0.1:8080
"""
# what the install must never run (fakes on its PATH record any call)
WATCHED = ("systemctl", "service", "invoke-rc.d", "pkill", "killall")


def run(argv, **kw):
    kw.setdefault("timeout", 600)
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)


@pytest.fixture(scope="module")
def host_services(tmp_path_factory):
    """nginx and HAProxy (HAProxy in front of nginx), on 127.0.0.1 of a namespace of our own."""
    for exe in ("/usr/sbin/nginx", "/usr/sbin/haproxy"):
        if not os.path.exists(exe):
            pytest.skip(f"{exe} is not installed (scripts/setup.sh installs it)")
    d = tmp_path_factory.mktemp("services")
    ns = f"lbinst{os.getpid()}"
    run(["ip", "netns", "add", ns], check=True)
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        (d / "nginx.conf").write_text(NGINX_CONF.format(d=d))
        (d / "haproxy.cfg").write_text(HAPROXY_CONF.format(d=d))
        nsexec = ["nsenter", f"--net=/run/netns/{ns}", "--"]
        p = run([*nsexec, "/usr/sbin/nginx", "-c", str(d / "nginx.conf")])
        assert p.returncode == 0, p
        p = run([*nsexec, "/usr/sbin/haproxy", "-f", str(d / "haproxy.cfg")])
        assert p.returncode == 0, p
        pids = {name: int((d / f"{name}.pid").read_text().split()[0]) for name in ("nginx", "haproxy")}

        def answer() -> str:
            return run([*nsexec, "curl", "-s", "--max-time", "3", "http://127.0.0.1:8081/"], timeout=10).stdout

        assert answer() == "nginx\n"
        yield pids, answer
    finally:
        for name in ("haproxy", "nginx"):
            try:
                os.kill(int((d / f"{name}.pid").read_text().split()[0]), 15)
            except (OSError, ValueError):
                pass
        run(["ip", "netns", "del", ns])


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """python -m build: the sdist from this checkout, then the wheel from the sdist (as a
    package index's user would build it)."""
    out = tmp_path_factory.mktemp("dist")
    # from a copy: a build writes build/ and *.egg-info into its source directory
    src = out / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "results", "*.so"))
    # the build's own environment comes from the package index: the host's network
    p = run(in_host_network([sys.executable, "-m", "build", "--outdir", str(out), str(src)]), cwd=out, timeout=900)
    assert p.returncode == 0, p
    return out


@pytest.fixture(scope="module")
def wheel(dist) -> Path:
    (whl,) = dist.glob("lvs_director-*.whl")
    return whl


def test_the_sdist_carries_what_the_wheel_is_built_from(dist):
    import tarfile

    (sdist,) = dist.glob("lvs_director-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for want in ("bpf/lb.c", "bpf/lb_structs.h", "cext/bpfbatch.c", "cext/build_bpfbatch.py", "setup.py",
                 "lb/systemd/lb@.service", "lb/dataplane/objects/lb_decap.json"):
        assert want in names, want


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel, host_services):
    """scripts/install-director.sh, as `make install` runs it, into a temporary prefix, from the
    wheel; its calls of service managers and killers recorded by fakes on its PATH."""
    root = tmp_path_factory.mktemp("director")
    fakes, calls = root / "fakes", root / "calls"
    fakes.mkdir()
    for name in WATCHED:
        exe = fakes / name
        exe.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit 0\n')
        exe.chmod(0o755)
    env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}", "PREFIX": str(root / "opt"),
           "BINDIR": str(root / "bin"), "UNITDIR": str(root / "units"), "CONFDIR": str(root / "etc"),
           "LB_SOURCE": str(wheel)}
    env.pop("VIRTUAL_ENV", None)
    # pip and apt fetch packages: the host's network
    p = run(in_host_network(["bash", str(REPO / "scripts" / "install-director.sh")]), env=env, cwd=root, timeout=900)
    assert p.returncode == 0, p
    return root, p, calls


def test_the_wheel_carries_the_programs_units_and_cffi_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for want in ("lb/bpf/lb.c", "lb/bpf/lb_maps.h", "lb/bpf/lb_decap.c", "lb/systemd/lb@.service",
                 "lb/dataplane/objects/lb_decap.json", "lb/cli/main.py"):
        assert want in names, want
    assert any(n.startswith("lb/_bpfbatch") and n.endswith(".so") for n in names), names


def test_the_director_install_leaves_nginx_and_haproxy_running(installed, host_services):
    root, p, calls = installed
    pids, answer = host_services
    for name, pid in pids.items():
        assert os.path.exists(f"/proc/{pid}"), f"{name} (pid {pid}) is gone after the install"
    assert answer() == "nginx\n"
    called = calls.read_text().splitlines() if calls.exists() else []
    assert not called, f"the install ran {called}"


def test_the_install_outside_the_checkout(installed):
    root, _, _ = installed
    lb_bin = root / "bin" / "lb"
    p = run([str(lb_bin), "--version"], cwd=root)
    assert p.returncode == 0 and p.stdout.startswith("lb "), p
    # the package's own bpf/ and units, not the checkout's
    p = run([str(root / "opt" / "bin" / "python"), "-c",
             "from lb.dataplane import layout, maps; print(layout.BPF_DIR); print(maps.have_batch())"], cwd=root)
    bpf_dir, batch = p.stdout.split()
    assert bpf_dir.startswith(str(root / "opt")) and batch == "True", p
    # the package's unit, with this install's BINDIR and CONFDIR written in (systemd looks a bare
    # `lb` up only in its own PATH)
    want = re.sub(r"^(Exec\w*=[-@+!:]*)lb ", rf"\g<1>{root / 'bin'}/lb ",
                  (REPO / "lb" / "systemd" / "lb@.service").read_text(), flags=re.M)
    want = re.sub(r"/etc/lb\b", str(root / "etc"), want)
    assert (root / "units" / "lb@.service").read_text() == want
    assert (root / "etc").is_dir()


@pytest.mark.parametrize("lab", ["nat"], indirect=True)
def test_lb_run_from_the_install_forwards_in_the_lab(installed, lab, lb_runner, tmp_path):
    from conftest import LbProcess

    root, _, _ = installed
    proc = LbProcess(lab, REPO / "configs" / "lab-nat.toml", tmp_path / "lb.log",
                     lb_bin=str(root / "bin" / "lb"))
    lb_runner.procs.append(proc)
    proc.wait_running()
    status, body = http_get(lab, VIP, timeout=3.0)
    assert status == 200 and body.strip() in SERVERS
    assert Path(f"/proc/{proc.pid}/cmdline").read_text().startswith(f"{root}/opt/bin/python")
