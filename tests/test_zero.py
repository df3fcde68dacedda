"""`lb zero` / `lb list -Z` (ipvsadm -Z) on the XDP data plane, `lb list --save` of a loaded data
plane, and the message for ipvsadm's table-editing options.  Counters come from packets through
the loaded programs (BPF_PROG_TEST_RUN) and are read back as `lb list` reads them."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb.cli.main import EDIT_INSTEAD, main as lb_main
from lb.dataplane import RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane.maps import PinnedMaps
from lb.dataplane.records import Stats
from lb.dataplane.xdp import zero_pinned

from packets_util import CLIENT_MAC, PUB_MAC, XDP_REDIRECT, loaded_dataplane, run

ip = ipaddress.ip_address
CLIENT = "198.18.0.2"
WEB, DNS = "198.18.0.20", "198.18.0.21"
TABLE = TableSpec((
    ServiceSpec("tcp", ip(WEB), 80, "rr", (RealSpec(ip("198.18.1.11"), 80, 1), RealSpec(ip("198.18.1.12"), 80, 3))),
    ServiceSpec("tcp", ip(DNS), 53, "wrr", (RealSpec(ip("198.18.1.13"), 53, 2, u_threshold=100, l_threshold=50),),
                persistent=300, pmask="255.255.255.0"),
))


@pytest.fixture
def dp():
    with loaded_dataplane("zero", table=TABLE) as d:
        yield d


def traffic(dp, vip, port, conns=4, first_sport=40000):
    for sport in range(first_sport, first_sport + conns):
        for flags in ("S", "A", "A"):
            pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=vip) / TCP(sport=sport, dport=port,
                                                                                   flags=flags) / (b"x" * 10)
            assert run(dp, "lb_xdp_public", pkt)[0] == XDP_REDIRECT


def rows(dp) -> dict:
    with PinnedMaps(dp.instance) as maps:
        return {str(r.address): r for r in reader.read_services(maps)}


def test_zero_one_service_then_all(dp, capsys):
    traffic(dp, WEB, 80)
    traffic(dp, DNS, 53)
    dp.estimate(now=100.0)
    traffic(dp, WEB, 80, first_sport=41000)
    dp.estimate(now=102.0)
    before = rows(dp)
    assert before[WEB].stats.conns == 8 and before[WEB].rate.inpkts > 0 and before[DNS].stats.conns == 4
    assert sum(r.stats.inpkts for r in before[WEB].reals) == 24

    assert dp.zero_stats(("tcp", ip(WEB), 80)) == 1
    after = rows(dp)
    assert after[WEB].stats == Stats() and after[WEB].rate == Stats()
    assert all(r.stats == Stats() and r.rate == Stats() for r in after[WEB].reals)
    assert after[DNS].stats == before[DNS].stats               # the other service keeps its counters
    # the estimator starts afresh from zero: no rate from counters that went backwards
    traffic(dp, WEB, 80, conns=2, first_sport=42000)
    dp.estimate(now=104.0)
    assert rows(dp)[WEB].rate == Stats()
    dp.estimate(now=106.0)
    assert rows(dp)[WEB].stats.conns == 2

    with pytest.raises(LookupError):
        dp.zero_stats(("udp", ip(WEB), 80))
    assert dp.zero_stats() == 2
    assert all(r.stats == Stats() for r in rows(dp).values())


def test_zero_pinned_and_the_command_line(dp, capsys):
    """Without a daemon answering, `lb zero` zeroes the pinned maps (a stopped --keep-dataplane
    instance); `lb list -Z` prints first, then zeroes."""
    traffic(dp, WEB, 80)
    traffic(dp, DNS, 53)
    assert zero_pinned(dp.instance, ("tcp", ip(DNS), 53)) == 1
    assert rows(dp)[DNS].stats == Stats() and rows(dp)[WEB].stats.conns == 4
    args = ["--instance", dp.instance, "--dataplane", "xdp"]
    assert lb_main(["list", "--stats", "--exact", "-Z", "-t", f"{WEB}:80", *args]) == 0
    out = capsys.readouterr().out
    assert f"TCP  {WEB}:80".ljust(33) + "%9d" % 4 in out           # listed as it was
    assert rows(dp)[WEB].stats == Stats()                          # then zeroed
    traffic(dp, WEB, 80, conns=1, first_sport=43000)
    assert lb_main(["-Z", "-n", *args]) == 0 and rows(dp)[WEB].stats == Stats()
    assert lb_main(["zero", "-t", "198.18.0.99:80", *args]) == 1
    assert lb_main(["zero", "-f", "x", *args]) == 2
    assert "no such service" in capsys.readouterr().err


def test_save_of_the_data_plane(dp, capsys):
    assert lb_main(["list", "--save", "--instance", dp.instance, "--dataplane", "xdp"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"-A -t {WEB}:80 -s rr",
        f"-a -t {WEB}:80 -r 198.18.1.11:80 -g -w 1",
        f"-a -t {WEB}:80 -r 198.18.1.12:80 -g -w 3",
        f"-A -t {DNS}:53 -s wrr -p 300 -M 255.255.255.0",
        f"-a -t {DNS}:53 -r 198.18.1.13:53 -g -w 2",        # ipvsadm -S writes no thresholds
    ]
    assert lb_main(["-S", "-n", "-t", f"{DNS}:53", "--instance", dp.instance, "--dataplane", "xdp"]) == 0
    assert capsys.readouterr().out.startswith(f"-A -t {DNS}:53 -s wrr")


@pytest.mark.parametrize("opts", [o for opts in EDIT_INSTEAD for o in opts])
def test_ipvsadm_edit_options_say_what_to_do(opts, capsys):
    for argv in (["list", opts, "-t", f"{WEB}:80"], [opts, "-t", f"{WEB}:80", "-s", "rr"],
                 ["list", "-n", f"{opts}=1"]):
        assert lb_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lb: {opts} is ipvsadm's ") and "lb reload" in err and "Traceback" not in err
        if opts.startswith("--"):          # a long option is named as itself (not its neighbour's)
            assert err.startswith(f"lb: {opts} is ipvsadm's {opts}:"), err
    # elsewhere these letters are lb's own: `lb decap attach -d` is not ipvsadm
    assert lb_main(["check", "--config", "/nonexistent.toml"]) == 2
    assert "ipvsadm" not in capsys.readouterr().err
