"""The way from lb back to plain IPVS: `lb list --save` prints what the kernel's own `ipvsadm -S
-n` prints, and `ipvsadm -R` of it rebuilds the table `lb list -n` showed once lb has stopped;
`lb zero` zeroes the kernel's counters over netlink as ipvsadm -Z does.

lb runs the ipvs data plane with services of every shape -save writes (wrr with thresholds,
sh with flags and a persistence mask, UDP, a firewall mark; IPv6 services through ipvsadm).  The tests of
this module share one `lb run` and run in file order; the last one stops it."""
from __future__ import annotations

import re
import signal
import time

import pytest
from guest_util import ipvs_kernel, ipvsadm, lb_list_cli, start_lb, wait_for  # noqa: F401

from conftest import LB_BIN

LAB_NETWORK = "direct"
VIP, VIP6 = "198.18.0.10", "2001:2::10"
NONE = '\n  [virtual_server.monitor]\n  kind = "none"\n'


def reals(port, weights=(1, 1, 1), extra=("", "", "")):
    """The lab's three real servers (port None: a firewall-mark service's, which take none)."""
    return "".join(f'\n  [[virtual_server.real_server]]\n  name = "rs{i}"\n  address = "198.18.1.1{i}"\n'
                   + (f"  port = {port}\n" if port else "") + f"  weight = {w}\n{x}"
                   for i, w, x in zip((1, 2, 3), weights, extra))


WEB_REALS = reals(80, (1, 2, 3), ("", "  u_threshold = 100\n  l_threshold = 50\n", ""))
CONFIG = f"""\
[global]
instance = "lab"
dataplane = "ipvs"
public_interface = "pub0"
private_interface = "priv0"
network = "direct"

[[virtual_server]]
name = "web"
address = "{VIP}"
port = 80
scheduler = "wrr"
{NONE}{WEB_REALS}
[[virtual_server]]
name = "tls"
address = "{VIP}"
port = 443
scheduler = "sh"
scheduler_flags = ["sh-fallback", "sh-port"]
persistent = 300
pmask = "255.255.255.0"
{NONE}{reals(443)}
[[virtual_server]]
name = "dns"
address = "{VIP}"
port = 53
protocol = "udp"
scheduler = "rr"
{NONE}{reals(53)}
[[virtual_server]]
name = "ftp"
fwmark = 21
scheduler = "lc"
persistent = 600

  [[virtual_server.port_group]]
  address = "{VIP}"
  protocol = "tcp"
  ports = "21"

  [[virtual_server.port_group]]
  address = "{VIP}"
  protocol = "tcp"
  ports = "30000-30009"
{NONE}{reals(None)}
"""
# IPv6 services, handed to the kernel by ipvsadm once lb has stopped (the lab's interfaces carry
# no IPv6: lb could not add the VIP; IPVS takes a service without one)
V6_RULES = f"""\
-A -t [{VIP6}]:80 -s rr -p 60 -M 64
-a -t [{VIP6}]:80 -r [2001:2:0:1::11]:80 -g -w 5
-A -f 22 -6 -s wlc
-a -f 22 -6 -r [2001:2:0:1::12]:0 -g -w 1
"""


@pytest.fixture(scope="module")
def lb_save(lab, lb_module_runner, tmp_path_factory, ipvs_kernel):
    cfg = tmp_path_factory.mktemp("cfg") / "lab-save.toml"
    cfg.write_text(CONFIG)
    p = start_lb(lb_module_runner, cfg)
    p.listing = lb_list_cli(lab, "-n")             # before any traffic: the counts are all 0
    p.rules = lb_list_cli(lab, "--save")
    return p


def test_save_is_what_ipvsadm_saves(lab, lb_save):
    assert lb_save.rules == ipvsadm(lab, "-S", "-n")
    assert len(lb_save.rules.splitlines()) == 4 + 3 * 4
    for line in (f"-A -t {VIP}:80 -s wrr", f"-a -t {VIP}:80 -r 198.18.1.12:80 -g -w 2",
                 f"-A -t {VIP}:443 -s sh -p 300 -M 255.255.255.0 -b sh-fallback,sh-port",
                 f"-A -u {VIP}:53 -s rr", "-A -f 21 -s lc -p 600", "-a -f 21 -r 198.18.1.11:0 -g -w 1"):
        assert line + "\n" in lb_save.rules, line


def _stats(lab) -> dict:
    """'TCP  VIP:PORT' or '  -> RIP:PORT' of service S -> the five counters, from ipvsadm."""
    out, svc = {}, None
    for line in ipvsadm(lab, "-L", "-n", "--stats", "--exact").splitlines()[3:]:
        f = line.split()
        if f[0] == "->":
            out[(svc, f[1])] = [int(x) for x in f[2:]]
        else:
            svc = " ".join(f[:2])
            out[(svc, None)] = [int(x) for x in f[2:]]
    return out


def _settled_stats(lab, service: str, conns: int) -> dict:
    """_stats once `service` counts `conns` connections and two reads 2.5 s apart agree: the
    kernel's estimator copies the per-CPU counters to what ipvsadm reads every 2 s (a zero point
    taken before that would see the late packets arrive after it)."""
    def settled():
        first = _stats(lab)
        if first.get((service, None), [0])[0] != conns:
            return None
        time.sleep(2.5)
        return first if _stats(lab) == first else None
    return wait_for(settled, 60, f"{conns} connections, settled, in the stats of {service}", step=0.2)


def test_zero_through_netlink(lab, lb_save):
    for _ in range(6):
        status, _body = lab.http_get("client", VIP, 80, timeout=10)
        assert status == 200
    web = f"TCP {VIP}:80"
    before = _settled_stats(lab, web, 6)
    assert before[(web, None)][1] > 0

    def lb(*args):
        p = lab.run("director", [LB_BIN, *args], timeout=120, check=False)
        assert p.returncode == 0, p.stderr
        return p.stdout

    lb("zero", "-t", f"{VIP}:443")                  # another service: web's counters stay
    assert _stats(lab)[(web, None)] == before[(web, None)]
    out = lb("list", "-n", "--stats", "--exact", "-Z", "-t", f"{VIP}:80")
    assert re.search(rf"^TCP  {re.escape(VIP)}:80\s+6\s", out, re.M)      # listed first, then zeroed
    after = _stats(lab)
    assert all(v == [0, 0, 0, 0, 0] for (svc, _r), v in after.items() if svc == web)
    for _ in range(2):
        lab.http_get("client", VIP, 80, timeout=10)
    _settled_stats(lab, web, 2)
    lb("-Z")                                        # ipvsadm's spelling, every service
    assert all(v == [0, 0, 0, 0, 0] for v in _stats(lab).values())


def _without_conn_counts(listing: str) -> list[list[str]]:
    """`-L -n` lines with a real server's ActiveConn/InActConn left out: a real server removed and
    added back within IPVS's dest trash time is the same ip_vs_dest, with the connections the
    earlier tests left (TIME_WAIT) still counted on it."""
    return [ln.split()[:4] if ln.lstrip().startswith("->") else ln.split() for ln in listing.splitlines()]


def _listings_together(lab) -> tuple[str, str]:
    """(`lb list -n`, `ipvsadm -L -n`) of the kernel's table, lb's read between two of
    ipvsadm's that agree: the counts on a dest back from the trash move while an earlier test's
    TIME_WAIT connection expires (seen once: InActConn 1, then 0, between two reads)."""
    for _ in range(20):
        before = ipvsadm(lab, "-L", "-n")
        ours = lb_list_cli(lab, "-n")
        if ipvsadm(lab, "-L", "-n") == before:
            return ours, before
        time.sleep(0.5)
    raise AssertionError("the kernel's table kept changing between two reads for 20 tries")


def test_ipvsadm_restore_rebuilds_the_table(lab, lb_save):
    """Stop lb (a clean stop removes its services), hand its saved rules to ipvsadm -R: the
    kernel's table is the one `lb list -n` showed, and `lb list -n` reads it back the same."""
    lb_save.signal(signal.SIGTERM)
    assert lb_save.wait(120) == 0
    wait_for(lambda: not re.search(r"^(TCP|UDP|FWM) ", ipvsadm(lab, "-L", "-n"), re.M), 30,
             "lb's services to leave the kernel")
    try:
        lab.run("director", ["ipvsadm", "-R"], input=lb_save.rules, timeout=60)
        ours, restored = _listings_together(lab)
        assert _without_conn_counts(restored) == _without_conn_counts(lb_save.listing)
        assert ours == restored
        assert ipvsadm(lab, "-S", "-n") == lb_save.rules
        # IPv6 services (and an IPv6 firewall mark) read from the kernel: the same rules as ipvsadm's
        lab.run("director", ["ipvsadm", "-R"], input=V6_RULES, timeout=60)
        saved = lb_list_cli(lab, "--save")
        assert saved == ipvsadm(lab, "-S", "-n")
        assert all(line in saved.splitlines() for line in V6_RULES.splitlines())
    finally:
        lab.run("director", ["ipvsadm", "-C"], timeout=60, check=False)
