"""`lb list`, `lb zero`, `lb status` and `lb weight` as an operator uses them, against what
ipvsadm does (/work/shared/reference/ipvs-semantics.md): a firewall-mark connection's
destination port, the family of `-f MARK -6`, IPv6 endpoints in `lb status` that `lb weight`
takes back, the command line's refusals, and -Z after every listing.  XDP counters come from
packets through the loaded programs (BPF_PROG_TEST_RUN); the kernel's IPVS and the daemon are
stood in for where only their answers matter."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import threading
import time
import types
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb import config as lbconfig
from lb import control
from lb.cli import main as cli_main
from lb.cli.main import connection_listing, main as lb_main
from lb.dataplane import PortGroup, RealSpec, ServiceSpec, TableSpec, ipvs, reader
from lb.dataplane.ipvs import IP_VS_SVC_F_HASHED, KService
from lb.dataplane.maps import PinnedMaps, have_batch
from lb.dataplane.records import Stats
from lb.engine import Engine
from packets_util import CLIENT_MAC, PUB_MAC, XDP_REDIRECT, loaded_dataplane, run
import test_override
from test_override import RecordingDataplane

ip = ipaddress.ip_address
REPO = Path(__file__).resolve().parents[1]
FTP_VIP, WEB_VIP = "198.18.0.40", "198.18.0.22"
FTP_REAL = "198.18.1.15"
no_addresses = test_override.no_addresses      # the fixture: no address is added on this host


def ftp_service(mark: int = 21) -> ServiceSpec:
    """NAT firewall-mark service: group tcp 198.18.0.40:21, one real server of port 0."""
    return ServiceSpec("tcp", ip(FTP_VIP), 21, "rr", (RealSpec(ip(FTP_REAL), 0, 1, "nat"),), "ftp",
                       fwmark=mark, groups=(PortGroup("tcp", ip(FTP_VIP), 21, 21),))


def web_service() -> ServiceSpec:
    return ServiceSpec("tcp", ip(WEB_VIP), 443, "rr", (RealSpec(ip("198.18.1.16"), 443, 1, "nat"),), "web")


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("lcli", table=TableSpec((ftp_service(), web_service()))) as d:
        yield d


def connect(dp, vip, dport, sport, client="198.18.0.4"):
    for flags in ("S", "A"):
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=client, dst=vip) / TCP(sport=sport, dport=dport,
                                                                                 flags=flags)
        assert run(dp, "lb_xdp_public", pkt)[0] == XDP_REDIRECT


def cli(capsys, *argv):
    rc = lb_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def xdp(dp):
    return ["--instance", dp.instance, "--dataplane", "xdp"]


def stats(dp) -> dict:
    with PinnedMaps(dp.instance) as maps:
        return {(r.fwmark or str(r.address)): r.stats for r in reader.read_services(maps)}


# ---- 1. a firewall-mark connection's destination port --------------------------------------

@pytest.mark.parametrize("fast", [False, True], ids=["Python", "C"])
def test_fwmark_connection_lists_the_port_it_went_to(dp, fast, capsys):
    """The real server of a firewall-mark service has port 0; its connection went to port 21
    (IPVS: dest->port ?: vport), and `lb list -c` says so: not 198.18.1.15:0."""
    if fast and not have_batch():
        pytest.skip("lb._bpfbatch (cffi) is not built")
    connect(dp, FTP_VIP, 21, 40004)
    with PinnedMaps(dp.instance) as maps:
        text = b"".join(connection_listing(maps, fast=fast)).decode()
    line = next(li for li in text.splitlines() if "198.18.0.4:40004" in li)
    assert line.split()[-2:] == [f"{FTP_VIP}:21", f"{FTP_REAL}:21"], text


def test_fwmark_connection_dest_port_in_json_and_both_paths_alike(dp, capsys):
    connect(dp, FTP_VIP, 21, 40005)
    connect(dp, WEB_VIP, 443, 40006)
    rc, out, _ = cli(capsys, "list", "-c", "--json", *xdp(dp))
    assert rc == 0
    dest = {(c["client"]["port"]): c["dest"] for c in json.loads(out)["connections"]}
    assert dest[40005] == {"address": FTP_REAL, "port": 21}
    assert dest[40006] == {"address": "198.18.1.16", "port": 443}       # a real server's own port stays
    if have_batch():
        now = time.monotonic_ns()       # one clock for both
        with PinnedMaps(dp.instance) as maps:
            assert b"".join(connection_listing(maps, now_ns=now, fast=True)) == \
                b"".join(connection_listing(maps, now_ns=now, fast=False))


# ---- 2. -f MARK -6 names the IPv6 service of the mark, as ipvsadm ----------------------------

def test_zero_fwmark_of_the_other_family_is_no_such_service(dp, capsys, monkeypatch):
    """`lb zero -f 21 -6` with only an IPv4 service of mark 21: "no such service", nothing
    zeroed (it zeroed the IPv4 one) -- with the pinned maps, and through the daemon."""
    connect(dp, FTP_VIP, 21, 40010)
    before = stats(dp)[21]
    assert before.conns > 0
    for argv in (["zero", "-f", "21", "-6"], ["list", "--stats", "-Z", "-f", "21", "-6"]):
        rc, out, err = cli(capsys, *argv, *xdp(dp))
        assert (rc, err) == (1, "lb: no such service\n"), argv
        assert stats(dp)[21] == before, argv

    # a running daemon: the request goes to the engine, which knows the mark alone
    sent = []

    def daemon(inst, cmd, service=None):
        sent.append(service)
        eng = types.SimpleNamespace(dp=dp, _dp_lock=threading.Lock())
        return asyncio.run(Engine._zero_reply(eng, service))

    monkeypatch.setattr(control, "request", daemon)
    rc, _, err = cli(capsys, "zero", "-f", "21", "-6", *xdp(dp))
    assert (rc, err) == (1, "lb: no such service\n") and stats(dp)[21] == before
    rc, _, err = cli(capsys, "zero", "-f", "21", *xdp(dp))
    assert (rc, err) == (0, "") and stats(dp)[21] == Stats()
    assert sent == [["fwmark", "21", 4]]           # the -6 one was refused before asking


_Kernel = ipvs.Kernel


class FakeKernel:
    """The kernel's IPVS over netlink, stood in for: an IPv4 and an IPv6 service of mark 80."""
    zeroed: list = []

    def __init__(self, netns=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def services(self):
        return [KService(6, None, 0, 80, af, "wlc", IP_VS_SVC_F_HASHED, 0, None, [], Stats(1, 2, 3, 4, 5), Stats())
                for af in (socket.AF_INET, socket.AF_INET6)]

    def zero(self, spec=None):
        FakeKernel.zeroed.append(None if spec is None else dict(_Kernel._svc(spec, full=False).dump_key()["attrs"]))


@pytest.fixture
def kernel(monkeypatch):
    FakeKernel.zeroed = []
    monkeypatch.setattr(ipvs, "Kernel", FakeKernel)
    monkeypatch.setattr(ipvs, "ensure_module", lambda: None)
    monkeypatch.setattr(ipvs, "read_info", lambda proc=None: ("1.2.1", 4096))
    return FakeKernel


@pytest.mark.parametrize("argv", [["zero", "-f", "80", "-6"], ["list", "--stats", "-Z", "-f", "80", "-6"]])
def test_ipvs_zero_fwmark_minus_6_zeroes_the_ipv6_service(kernel, argv, capsys):
    rc, out, err = cli(capsys, *argv, "--dataplane", "ipvs")
    assert (rc, err) == (0, "")
    if argv[0] == "list":
        assert [li.split()[:3] for li in out.splitlines()[2:]] == [["FWM", "80", "IPv6"]], out
    assert kernel.zeroed == [{"IPVS_SVC_ATTR_AF": socket.AF_INET6, "IPVS_SVC_ATTR_FWMARK": 80}]
    kernel.zeroed.clear()
    assert cli(capsys, "zero", "-f", "80", "--dataplane", "ipvs")[0] == 0
    assert kernel.zeroed == [{"IPVS_SVC_ATTR_AF": socket.AF_INET, "IPVS_SVC_ATTR_FWMARK": 80}]
    with pytest.raises(LookupError):
        ipvs.zero(("fwmark", 81, 6))


# ---- 3, 4. `lb status` prints endpoints as `lb list` does, and `lb weight` takes them back ----

@pytest.fixture
def eng6(no_addresses):
    eng = Engine(lbconfig.load(REPO / "configs" / "ipv6.toml"), dataplane="ipvs")
    eng.dp = RecordingDataplane()
    eng.apply_health()
    return eng


def test_status_endpoints_are_what_lb_weight_takes(eng6, monkeypatch, capsys):
    monkeypatch.setattr(cli_main, "_control", lambda args, what: {"ok": True, "status": eng6.status()})
    rc, out, _ = cli(capsys, "status")
    assert rc == 0
    lines = out.splitlines()
    assert any(li.startswith("TCP  [2001:2::10]:443 wlc  monitor ") for li in lines), out
    rows = [re.match(r"  -> (\S+) +(\S+) +weight", li) for li in lines]
    reals = [(m.group(1), m.group(2)) for m in rows if m]
    assert reals[:2] == [("rs1", "[2001:2:0:1::11]:443"), ("rs2", "[2001:2:0:1::12]:443")], out
    # the firewall-mark service's real server has port 0, as `lb list` shows it
    assert reals[2][1] == "[2001:2:0:1::21]:0", out
    for (service, (_, server)) in zip(["[2001:2::10]:443", "[2001:2::10]:443", "ftp6"], reals):
        reply = asyncio.run(eng6.control({"cmd": "weight", "service": service, "server": server, "weight": 7}))
        assert reply["ok"], (service, server, reply)
    # and the port its health checks use still names it
    reply = asyncio.run(eng6.control({"cmd": "weight", "service": "ftp6", "server": "[2001:2:0:1::21]:21",
                                      "weight": 3}))
    assert reply["ok"], reply
    reply = asyncio.run(eng6.control({"cmd": "weight", "service": "ftp6", "server": "[2001:2:0:1::22]:0",
                                      "weight": 3}))
    assert not reply["ok"] and "has no real server '[2001:2:0:1::22]:0'" in reply["error"]


@pytest.mark.usefixtures("no_addresses")
def test_status_and_weight_of_an_ipv4_fwmark_real_server(monkeypatch, capsys):
    eng = Engine(lbconfig.load(REPO / "configs" / "ftp-fwmark.toml"), dataplane="ipvs")
    eng.dp = RecordingDataplane()
    eng.apply_health()
    monkeypatch.setattr(cli_main, "_control", lambda args, what: {"ok": True, "status": eng.status()})
    rc, out, _ = cli(capsys, "status")
    assert rc == 0 and "  -> rs1          198.18.1.11:0      weight 1     " in out, out
    reply = asyncio.run(eng.control({"cmd": "weight", "service": "ftp", "server": "198.18.1.12:0", "weight": 2}))
    assert reply["ok"] and reply["message"].startswith("rs2 (198.18.1.12:0) of ftp"), reply


# ---- 5. a malformed service in `lb list` is refused as `lb zero` refuses it -----------------

@pytest.mark.parametrize("opt, text, message", [
    ("-f", "x", "lb: -f x: a firewall mark is a number\n"),
    ("-f", "0", "lb: -f 0: a firewall mark is 1..4294967295\n"),
    ("-t", "198.18.0.22", "lb: 198.18.0.22: expected VIP:PORT ([VIP]:PORT for IPv6)\n"),
    ("-u", "2001:2::10:53", "lb: 2001:2::10:53: expected VIP:PORT ([VIP]:PORT for IPv6)\n"),
    # a host name ipvsadm resolves (host_to_addr): refused only when it does not resolve
    ("-t", "www.invalid:80", "lb: www.invalid:80: 'www.invalid' is neither an address nor a host name this host "
                             "resolves\n"),
    ("-t", "198.18.0.22:nosuchsvc", "lb: 198.18.0.22:nosuchsvc: no tcp service 'nosuchsvc' (/etc/services): give "
                                    "the port number\n"),
])
def test_malformed_service_is_a_usage_error_in_list_and_zero(dp, opt, text, message, capsys, monkeypatch):
    # a host name that does not resolve: answered here, not by a DNS server (no query leaves)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(socket.gaierror(-2, "unknown")))
    for cmd in ("list", "zero"):
        assert cli(capsys, cmd, opt, text, *xdp(dp)) == (2, "", message), cmd


@pytest.mark.parametrize("argv", [["-6"], ["-t", f"{WEB_VIP}:443", "-6"], ["-u", "[2001:2::10]:53", "-6"]])
def test_minus_6_without_f_is_a_usage_error(argv, capsys):
    """ipvsadm refuses -6 but after -f ("-6 used before -f"); lb ignored it: `lb list -6` listed
    every service, `lb zero -t VIP:PORT -6` zeroed the IPv4 one."""
    for cmd in ("list", "zero"):
        assert cli(capsys, cmd, *argv, "--dataplane", "xdp", "--instance", "nowhere") == (
            2, "", "lb: -6 goes with -f MARK (the IPv6 service of that mark), as ipvsadm's\n"), cmd


# ---- 6. -Z after every listing of the XDP data plane -----------------------------------------

def test_list_c_then_zero(dp, capsys):
    connect(dp, WEB_VIP, 443, 40020)
    assert stats(dp)[WEB_VIP].conns > 0
    rc, out, err = cli(capsys, "list", "-c", "-Z", *xdp(dp))
    assert (rc, err) == (0, "") and "198.18.0.4:40020" in out
    assert all(s == Stats() for s in stats(dp).values())
    connect(dp, WEB_VIP, 443, 40021)
    rc, out, err = cli(capsys, "list", "-c", "--json", "-Z", *xdp(dp))
    assert (rc, err) == (0, "") and json.loads(out)["connections"]
    assert all(s == Stats() for s in stats(dp).values())


def test_list_counters_with_zero_is_refused(dp, capsys):
    connect(dp, WEB_VIP, 443, 40022)
    before = stats(dp)
    rc, out, err = cli(capsys, "list", "--counters", "-Z", *xdp(dp))
    assert (rc, out) == (2, "") and err.startswith("lb: -Z zeroes the services' counters (as `lb zero`), not the "
                                                   "data path's that --counters lists")
    assert stats(dp) == before


def test_list_counters_of_kernel_ipvs_is_refused(capsys):
    """--counters lists the XDP data path's counters; with --dataplane ipvs it printed the IPVS
    service table (and {"services": []} with --json), exit 0, as though those were counters."""
    for extra in ((), ("--json",)):
        rc, out, err = cli(capsys, "list", "--counters", "--dataplane", "ipvs", *extra)
        assert (rc, out) == (2, "") and err == ("lb: --counters lists the XDP data path's counters, not kernel "
                                                "IPVS's: lb list --stats, or /proc/net/ip_vs_stats\n")


@pytest.mark.parametrize("argv, message", [
    (["--counters", "-c"], "--counters lists the data path's counters alone, not with -c"),
    (["--counters", "-t", f"{WEB_VIP}:443"], "--counters lists the data path's counters alone, not with -t/-u/-f"),
    (["--counters", "--stats"], "--counters lists the data path's counters alone, not with --stats"),
    (["--json", "--timeout"], "--json lists the services (with -c, the connections), not with --timeout"),
    (["--daemon", "--json"], "--json lists the services (with -c, the connections), not with --daemon"),
])
def test_an_option_a_listing_has_no_place_for_is_refused(dp, argv, message, capsys):
    """`--counters -t VIP:PORT` printed every counter, `--counters -c` no connection, `--json
    --timeout` the services and no timeout: exit 0, the option ignored."""
    assert cli(capsys, "list", *argv, *xdp(dp)) == (2, "", f"lb: {message}\n")
    rc, out, _ = cli(capsys, "list", "--counters", "--json", "--exact", *xdp(dp))
    assert rc == 0 and "counters" in json.loads(out)


# ---- 7. conflicting list options, refused as ipvsadm refuses them ----------------------------

@pytest.mark.parametrize("argv, message", [
    (["-c", "-t", f"{WEB_VIP}:443"],
     "The option 'service-address' conflicts with the 'connection' option in the 'list' command"),
    (["-c", "-f", "21"], "The option 'service-address' conflicts with the 'connection' option in the 'list' command"),
    (["--timeout", "-c"], "The option 'timeout' conflicts with the 'connection' option in the 'list' command"),
    (["--timeout", "-u", f"{WEB_VIP}:53"],
     "The option 'timeout' conflicts with the 'service-address' option in the 'list' command"),
    (["-c", "--stats"], "options conflicts in the list command"),
    (["-c", "--rate"], "options conflicts in the list command"),
    (["--timeout", "--thresholds"], "options conflicts in the list command"),
    (["--timeout", "--persistent-conn"], "options conflicts in the list command"),
])
def test_conflicting_list_options_exit_2(dp, argv, message, capsys):
    assert cli(capsys, "list", *argv, *xdp(dp)) == (2, "", f"lb: {message}\n")
    assert cli(capsys, "-L", "-n", *argv, *xdp(dp)) == (2, "", f"lb: {message}\n")


@pytest.mark.parametrize("opt, name", [
    ("-c", "connection"), ("--timeout", "timeout"), ("--stats", "stats"), ("--rate", "rate"),
    ("--persistent-conn", "persistent-conn"), ("--exact", "exact"), ("--json", "json"), ("--counters", "counters"),
])
def test_save_with_a_listing_option_is_refused(dp, opt, name, capsys):
    """ipvsadm -S takes -n alone.  `lb -S -c` printed the connection listing from pinned maps
    (but the rules from kernel IPVS), `-S --counters` the counters, `-S --stats` or `--json`
    the rules, all exit 0: `lb -S -c > rules` then fed `ipvsadm -R` connection entries."""
    connect(dp, WEB_VIP, 443, 40031)
    for argv in (["list", "--save", opt], ["-S", opt], ["-Sn", opt]):
        assert cli(capsys, *argv, *xdp(dp)) == (2, "", f"lb: Illegal '{name}' option with the 'save' command\n")
    rc, out, _ = cli(capsys, "-S", "-n", "--nosort", "-t", f"{WEB_VIP}:443", *xdp(dp))
    assert rc == 0 and out.startswith(f"-A -t {WEB_VIP}:443 -s rr\n")


def test_options_ipvsadm_combines_still_list(dp, capsys):
    connect(dp, WEB_VIP, 443, 40030)
    rc, out, _ = cli(capsys, "list", "-c", "--persistent-conn", *xdp(dp))     # ipvsadm -Lc --persistent-conn
    assert rc == 0 and out.startswith("IPVS connection entries\n")
    rc, out, _ = cli(capsys, "list", "--stats", "--rate", "-t", f"{WEB_VIP}:443", *xdp(dp))
    assert rc == 0 and f"TCP  {WEB_VIP}:443" in out
