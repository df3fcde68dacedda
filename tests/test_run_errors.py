"""`lb run` / `lb check` / `lb list` when there is nothing to run: bad configs, missing
interfaces, no instance. Run in the host namespace: every config here names interfaces that do
not exist, so even a wrongly accepted one could never attach anything to a host interface.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
PIN_ROOT = "/sys/fs/bpf/lb"

GOOD = """\
[global]
instance = "{instance}"
public_interface = "nosuch0"
private_interface = "nosuch1"
network = "direct"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
protocol = "tcp"
scheduler = "rr"

  [[virtual_server.real_server]]
  name = "rs1"
  address = "198.18.1.11"
  port = 80
  weight = 1

  [[virtual_server.real_server]]
  name = "rs2"
  address = "198.18.1.12"
  port = 80
  weight = 1
"""


def lb(*args):
    return subprocess.run([LB, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def line_of(text, needle, nth=1):
    """1-based line number of the nth line containing needle."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


def xdp_links():
    """Host links that have an XDP program attached (`ip -d link` shows prog/xdp)."""
    out = subprocess.run(["ip", "-d", "-o", "link", "show"], capture_output=True, text=True, timeout=10).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines() if "prog/xdp" in line)


@pytest.fixture
def instance(request):
    name = "lbtest-" + request.node.name.split("[")[0].removeprefix("test_")[:20].replace("_", "-")
    yield name
    assert not os.path.exists(f"{PIN_ROOT}/{name}"), "a failed start left its pin directory"


@pytest.fixture
def bad_config(tmp_path, instance):
    text = GOOD.format(instance=instance)
    text = text.replace('scheduler = "rr"', 'scheduler = "lottery"')
    text = text.replace("  weight = 1", "  weight = 70000", 2).replace("  weight = 70000", "  weight = 1", 1)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    expected = [
        f"{path}:{line_of(text, 'scheduler =')}: virtual_server[0].scheduler: ",
        f"{path}:{line_of(text, 'weight = 70000')}: virtual_server[0].real_server[1].weight: "
        "must be between 0 and 65535, got 70000",
    ]
    return path, expected


def test_run_with_malformed_config_exits_2_and_names_file_line_field(bad_config, instance):
    path, expected = bad_config
    attached = xdp_links()
    p = lb("run", "--config", str(path))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert any(line.startswith(expected[0]) and "lottery" in line for line in lines), p.stderr
    assert expected[1] in lines, p.stderr
    assert not os.path.exists(f"{PIN_ROOT}/{instance}")
    assert not os.path.exists(f"/run/lb/{instance}.pid")
    assert xdp_links() == attached


def test_run_with_missing_interface_exits_2_and_names_it(tmp_path, instance):
    path = tmp_path / "noif.toml"
    path.write_text(GOOD.format(instance=instance))
    assert lb("check", "--config", str(path)).returncode == 0   # the file itself is fine
    attached = xdp_links()
    p = lb("run", "--config", str(path))
    assert p.returncode == 2, p.stderr
    # file:line: field, as the loader's issues: the line that names the interface
    assert f"{path}:3: global.public_interface: interface(s) not found: nosuch0" in p.stderr
    assert "Traceback" not in p.stderr
    assert not os.path.exists(f"{PIN_ROOT}/{instance}")
    assert not os.path.exists(f"/run/lb/{instance}.pid")
    assert xdp_links() == attached


@pytest.mark.parametrize("dataplane", ["ipvs", "auto"])
def test_run_refuses_active_active_bgp_on_a_command_line_ipvs_data_plane(tmp_path, instance, dataplane):
    """The loader refuses [bgp] mode = "active-active" with the file's dataplane = "ipvs"; `lb run
    --dataplane ipvs` gave the same file kernel IPVS (no sloppy_tcp: flows an ECMP change moves
    here are reset) while it announced the VIPs.  It is refused alike, before anything starts,
    at [bgp] (mode's default is active-active)."""
    text = GOOD.format(instance=instance).replace('scheduler = "rr"', 'scheduler = "mh"').replace(
        'network = "direct"', 'network = "direct"\n\n[bgp]\nlocal_as = 65001\n  [[bgp.neighbor]]\n'
                              '  address = "198.18.0.254"\n  peer_as = 65000\n', 1)
    path = tmp_path / "aa.toml"
    path.write_text(text)
    assert lb("check", "--config", str(path)).returncode == 0
    p = lb("run", "--config", str(path), "--dataplane", dataplane)
    assert p.returncode == 2, p.stderr
    # the loader's issue, as the file's own dataplane gets, naming the command line's
    assert p.stderr.startswith(f'{path}:7: bgp.mode: [bgp] mode = "active-active" needs the XDP data plane'), \
        p.stderr
    assert f"and this is --dataplane {dataplane} (the command line's): use --dataplane xdp" in p.stderr
    assert not os.path.exists(f"{PIN_ROOT}/{instance}")


def test_check_good_config():
    for name, n_real in (("lab-dr.toml", 3), ("lab-nat.toml", 3), ("lab-tunnel.toml", 3)):
        path = REPO / "configs" / name
        p = lb("check", "--config", str(path))
        assert p.returncode == 0, p.stderr
        assert p.stdout == f"{path}: ok (1 virtual server, {n_real} real servers)\n"


def test_check_warns_when_the_file_names_another_instance_than_the_units(tmp_path):
    """lb@web runs `lb check --config /etc/lb/web.toml --instance web` first: a file without
    `instance` (so "default") starts a daemon that lb-web@web and `lb status --instance web`
    never find -- said, not refused (it starts as it did)."""
    path = tmp_path / "web.toml"
    path.write_text(GOOD.format(instance="default").replace('instance = "default"\n', ""))
    p = lb("check", "--config", str(path), "--instance", "web")
    assert p.returncode == 0, p.stderr
    assert f"{path}:1: warning: global.instance: is 'default', not 'web' (the unit's)" in p.stderr  # [global]
    assert p.stdout.endswith(", 1 warning)\n"), p.stdout
    path.write_text(GOOD.format(instance="other"))     # written: its line
    p = lb("check", "--config", str(path), "--instance", "web")
    assert f"{path}:2: warning: global.instance: is 'other', not 'web' (the unit's)" in p.stderr
    path.write_text(GOOD.format(instance="web"))
    p = lb("check", "--config", str(path), "--instance", "web")
    assert p.returncode == 0 and "warning" not in p.stderr and p.stdout.endswith("real servers)\n"), (p.stdout, p.stderr)


def test_check_bad_config(bad_config):
    path, expected = bad_config
    p = lb("check", "--config", str(path))
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert any(line.startswith(expected[0]) and "lottery" in line for line in lines), p.stderr
    assert expected[1] in lines, p.stderr


@pytest.mark.parametrize("command", [["status"], ["stop"], ["reload"], ["weight", "web", "198.18.1.1", "2"],
                                     ["quiesce", "web", "198.18.1.1"]], ids=lambda c: c[0])
def test_every_subcommand_finds_the_instance_of_a_bad_config(bad_config, instance, command):
    """`lb status --config BAD` and its siblings need only the instance the file names: a file with
    errors elsewhere still names it, read alone, with a note (they refused to act, so a broken file
    could not be stopped by it); a file that does not name it readably is the same file:line error
    as `lb check`, not a traceback."""
    path, expected = bad_config
    p = lb(*command, "--config", str(path))
    assert "Traceback" not in p.stderr, p.stderr
    assert (f"lb: note: {path} has errors (`lb check -c {path}`); instance {instance!r} read from its "
            f"[global] instance alone") in p.stderr.splitlines(), p.stderr
    assert p.returncode == 1 and "not running" in p.stderr, p.stderr        # none runs
    path.write_text(path.read_text().replace(f'instance = "{instance}"', f"instance = {instance}"))
    p = lb(*command, "--config", str(path))
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "note:" not in p.stderr, p.stderr
    assert any(line.startswith(f"{path}:2: TOML syntax error") for line in p.stderr.splitlines()), p.stderr
    assert "cannot be read alone: name the instance with --instance" in p.stderr, p.stderr


@pytest.mark.parametrize("command", [["check", "--config", str(REPO / "configs" / "example.toml")],
                                     ["import", str(REPO / "configs" / "example-lvs.cf")]], ids=lambda c: c[0])
def test_a_reader_gone_away_is_no_traceback(command):
    """`lb ... | head` once head has left: stdout is a pipe nobody reads.  lb stops quietly with
    the status a shell gives a command SIGPIPE ended (141), as ipvsadm would, not a traceback."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([LB, *command], stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    assert p.returncode == 141, p.stderr
    assert "Traceback" not in p.stderr and "Error" not in p.stderr, p.stderr    # import's warnings may stay


def test_check_missing_file(tmp_path):
    p = lb("check", "--config", str(tmp_path / "missing.toml"))
    assert p.returncode == 2
    assert "missing.toml" in p.stderr and "Traceback" not in p.stderr


def lb_without_instances(*args):
    """`lb ARGS` where no instance exists: in a private mount namespace with a fresh, empty
    bpffs on /sys/fs/bpf and an empty /run (other lb instances may be running on this host
    meanwhile: their pinned maps, and their locked pid files in /run/lb, by which the CLI finds
    a running daemon)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private bpffs")
    script = 'mount -t bpf bpf /sys/fs/bpf && mount -t tmpfs tmpfs /run && test ! -e /sys/fs/bpf/lb && exec "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
                           "sh", LB, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_list_without_instance_prints_the_header():
    p = lb_without_instances("list", "-n")
    assert p.returncode == 0, p.stderr
    assert p.stdout == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
    )
    p = lb_without_instances("-Lnc")
    assert p.returncode == 0, p.stderr
    assert p.stdout == (
        "IPVS connection entries\n"
        "pro expire state       source             virtual            destination\n"
    )
    # ipvsadm -Sn, a habit as common as -Ln: the rules (none here), not a usage error
    p = lb_without_instances("-Sn")
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    # the data path's counters: their header, none listed (not the services' empty table)
    p = lb_without_instances("list", "--counters")
    assert (p.returncode, p.stdout) == (0, "Data path event                    Packets\n"), p.stderr
    p = lb_without_instances("list", "--counters", "--json")
    assert p.returncode == 0 and json.loads(p.stdout) == {"counters": {}, "connection_tables": {}}, p.stderr


@pytest.mark.parametrize("hide", ["umount /sys/fs/bpf", "mount -t tmpfs none /sys/fs/bpf"], ids=["none", "tmpfs-over-it"])
def test_run_without_bpffs_says_how_to_get_it(tmp_path, instance, hide):
    """`lb run` on a host whose /sys/fs/bpf is not a BPF filesystem (not mounted, or another
    filesystem over it): one line saying how to mount it, exit 2, nothing left behind."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    path = tmp_path / "lb.toml"
    path.write_text(GOOD.format(instance=instance))
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                        f'{hide} && exec "$@"', "sh", LB, "run", "--config", str(path)],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 2, p.stderr
    assert p.stderr.splitlines() == ["lb: no BPF filesystem on /sys/fs/bpf (lb pins its maps there): mount -t bpf bpf "
                                     "/sys/fs/bpf (systemd mounts it at boot; `make install` mounts it now)"], p.stderr


def test_status_wait_says_how_long_it_waited():
    """`lb status --wait 0.3` with no daemon: it gives up after the time asked and says that
    time (it printed "0 s")."""
    p = lb_without_instances("status", "--wait", "0.3")
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert "not ready within 0.3 s" in p.stderr, p.stderr
