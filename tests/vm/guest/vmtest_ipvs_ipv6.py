"""IPv6 virtual services on the real kernel IPVS, programmed by lb's IPVS data plane: a
persistent direct-routing TCP service with a /64 persistence prefix, a NAT service with wlc
and thresholds, a UDP service and an IPv6 firewall-mark service with port groups.  ipvsadm
reads the kernel's table and must print exactly what `lb list` prints; applying the same
table again, or after a restart, changes nothing; a weight change is one netlink change.

No traffic at all: the services live in a network namespace of this module's own whose
interfaces are all down and carry no address (IPVS needs none to accept a service).  The
addresses are 2001:2::/48 (RFC 5180's benchmarking range).

The tests of this module share one data plane and run in file order."""
from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import subprocess
import threading

import pytest
from guest_util import ipvs_kernel  # noqa: F401

NETNS = "lbv6ipvs"
NETNS_PATH = f"/run/netns/{NETNS}"
ip = ipaddress.ip_address


def table(dr_weights=(1, 2, 3), prefix=64):
    from lb.dataplane import RealSpec, ServiceSpec, TableSpec
    from lb.dataplane.spec import PortGroup

    dr = ServiceSpec("tcp", ip("2001:2::1"), 80, "rr",
                     tuple(RealSpec(ip(f"2001:2:0:1::1{i}"), 80, w, "dr") for i, w in enumerate(dr_weights, 1)),
                     persistent=360, pmask=prefix)
    nat = ServiceSpec("tcp", ip("2001:2::2"), 8080, "wlc",
                      (RealSpec(ip("2001:2:0:1::21"), 8080, 1, "nat", u_threshold=100, l_threshold=50),
                       RealSpec(ip("2001:2:0:1::22"), 8081, 4, "nat")))
    udp = ServiceSpec("udp", ip("2001:2::1"), 53, "rr",
                      (RealSpec(ip("2001:2:0:1::31"), 53, 1, "dr"), RealSpec(ip("2001:2:0:1::32"), 53, 1, "dr")))
    fwm = ServiceSpec("tcp", ip("2001:2::3"), 0, "wlc",
                      (RealSpec(ip("2001:2:0:1::41"), 0, 1, "dr"), RealSpec(ip("2001:2:0:1::42"), 0, 2, "dr")),
                      persistent=100, fwmark=61,
                      groups=(PortGroup("tcp", ip("2001:2::3"), 443, 443), PortGroup("tcp", ip("2001:2::3"), 8443, 8444)))
    return TableSpec((dr, nat, udp, fwm))


def in_ns(fn, *args, timeout: float = 120.0):
    """fn(*args) in a thread that joined the module's namespace (so do sockets and children)."""
    from lb.lab.nsutil import _setns

    box = {}

    def worker():
        try:
            fd = os.open(NETNS_PATH, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed back
            box["error"] = e

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} still running after {timeout}s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def ipvsadm(*args: str) -> str:
    p = subprocess.run(["nsenter", f"--net={NETNS_PATH}", "--", "ipvsadm", *args], capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return p.stdout


def lb_list(*args: str) -> str:
    """`lb list --dataplane ipvs ARGS`, in this process, in the namespace."""
    from lb.cli.main import main

    def run():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(["list", "--dataplane", "ipvs", *args])
        assert rc == 0
        return buf.getvalue()

    return in_ns(run)


@pytest.fixture(scope="module")
def netns(ipvs_kernel):  # noqa: F811
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NETNS], check=True, capture_output=True)
    try:
        # nothing up, no address: the namespace cannot send or receive a packet
        links = subprocess.run(["ip", "-n", NETNS, "-o", "link", "show", "up"], capture_output=True, text=True,
                               check=True).stdout
        addrs = subprocess.run(["ip", "-n", NETNS, "-o", "addr", "show"], capture_output=True, text=True,
                               check=True).stdout
        assert links == "" and addrs == "", (links, addrs)
        yield NETNS
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


@pytest.fixture(scope="module")
def dp(netns, tmp_path_factory):
    from lb.dataplane.ipvs import IpvsDataplane

    run_dir = str(tmp_path_factory.mktemp("ipvs6-run"))
    d = IpvsDataplane("v6", run_dir=run_dir)
    in_ns(d.load)
    d.run_dir = run_dir
    yield d
    in_ns(d.detach_all)


LISTINGS = (["-n"], ["-n", "--persistent-conn"], ["-n", "--thresholds"], ["-n", "--stats", "--exact"],
            ["-n", "--rate"])


def assert_listings_equal():
    for args in LISTINGS:
        theirs = ipvsadm("-L", *args)
        mine = lb_list(*args)
        assert mine == theirs, f"lb list {' '.join(args)} differs from ipvsadm -L:\n{mine}\n---\n{theirs}"


def test_ipv6_services_in_kernel_ipvs_as_ipvsadm_lists_them(dp):
    n = in_ns(dp.apply, table())
    assert n >= 4 + 9
    listing = ipvsadm("-L", "-n")
    for line in ("TCP  [2001:2::1]:80 rr persistent 360 mask 64\n",
                 "TCP  [2001:2::2]:8080 wlc\n",
                 "UDP  [2001:2::1]:53 rr\n",
                 "FWM  61 IPv6 wlc persistent 100\n",
                 "  -> [2001:2:0:1::13]:80          Route   3      0          0         \n",
                 "  -> [2001:2:0:1::22]:8081        Masq    4      0          0         \n",
                 "  -> [2001:2:0:1::42]:0           Route   2      0          0         \n"):
        assert line in listing, f"{line!r} not in\n{listing}"
    assert "  -> [2001:2:0:1::21]:8080        100        50         0          0" in ipvsadm("-L", "-n", "--thresholds")
    rules = subprocess.run(["nsenter", f"--net={NETNS_PATH}", "--", "nft", "list", "table", "inet", "lb_v6"],
                           capture_output=True, text=True, check=True).stdout
    assert "ip6 daddr 2001:2::3 tcp dport { 443, 8443-8444 } meta mark set 0x0000003d" in rules, rules
    assert_listings_equal()


def test_same_table_again_changes_nothing(dp):
    """The kernel's table read back equals the wanted one: the /64 prefix, the host prefix
    /128 of the other services and the IPv6 firewall-mark service are not rewritten."""
    before = ipvsadm("-L", "-n")
    assert in_ns(dp.apply, table()) == 0
    assert ipvsadm("-L", "-n") == before


def test_restart_adopts_ipv6_services_unchanged(dp):
    from lb.dataplane.ipvs import IpvsDataplane

    again = IpvsDataplane("v6", run_dir=dp.run_dir)
    in_ns(again.load)
    assert again.adopted and len(again.owned) == 4
    assert in_ns(again.apply, table()) == 0


def test_a_refused_first_apply_after_a_restart_writes_the_previous_runs_table_back(dp):
    """A restart adopts the services; its first apply removes the UDP service, changes a weight
    and adds a service the kernel refuses (a scheduler it has no module for): the kernel's
    table (each service's real servers in the kernel's order, which sh and mh hash over) and the
    firewall-mark rules are again what the previous run left, as it said."""
    from lb.dataplane import RealSpec, ServiceSpec, TableSpec
    from lb.dataplane.errors import ApplyFailed
    from lb.dataplane.ipvs import IpvsDataplane

    def rules():
        return subprocess.run(["nsenter", f"--net={NETNS_PATH}", "--", "nft", "list", "table", "inet", "lb_v6"],
                              capture_output=True, text=True, check=True).stdout

    before, rules_before = ipvsadm("-L", "-n", "--nosort"), rules()
    again = IpvsDataplane("v6", run_dir=dp.run_dir)
    in_ns(again.load)
    dr, nat, _udp, fwm = table(dr_weights=(1, 7, 3)).services
    refused = ServiceSpec("tcp", ip("2001:2::9"), 80, "nosuch", (RealSpec(ip("2001:2:0:1::91"), 80, 1, "dr"),))
    with pytest.raises(ApplyFailed, match="the previous run's table is back") as exc:
        in_ns(again.apply, TableSpec((dr, nat, fwm, refused)))
    assert exc.value.restored
    assert ipvsadm("-L", "-n", "--nosort") == before
    assert rules() == rules_before


def test_weight_change_is_one_netlink_change(dp):
    before = ipvsadm("-L", "-n")
    assert in_ns(dp.apply, table(dr_weights=(1, 5, 3))) == 1
    after = ipvsadm("-L", "-n")
    changed = [(b, a) for b, a in zip(before.splitlines(), after.splitlines()) if b != a]
    assert changed == [("  -> [2001:2:0:1::12]:80          Route   2      0          0         ",
                        "  -> [2001:2:0:1::12]:80          Route   5      0          0         ")], changed
    assert_listings_equal()


def test_prefix_change_is_one_netlink_change(dp):
    assert in_ns(dp.apply, table(dr_weights=(1, 5, 3), prefix=48)) == 1
    assert "TCP  [2001:2::1]:80 rr persistent 360 mask 48\n" in ipvsadm("-L", "-n")
    assert in_ns(dp.apply, table(dr_weights=(1, 5, 3), prefix=48)) == 0
    assert_listings_equal()


def test_detach_removes_the_ipv6_services(dp):
    in_ns(dp.detach_all)
    assert ipvsadm("-L", "-n").count("\n") == 3          # header and titles only
    p = subprocess.run(["nsenter", f"--net={NETNS_PATH}", "--", "nft", "list", "table", "inet", "lb_v6"],
                       capture_output=True, text=True)
    assert p.returncode != 0
