"""`lb list --rate`: the daemon's estimator (XdpDataplane.estimate, IPVS ip_vs_est.c) over counters
that packets through the loaded XDP programs (BPF_PROG_TEST_RUN) produce, read back from the pinned
rates maps as `lb list` reads them."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb import listing
from lb.cli.main import main as lb_main
from lb.dataplane import RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane.maps import PinnedMaps
from lb.dataplane.xdp import XdpDataplane

from packets_util import (CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_REDIRECT, XDP_TX, fake_resolver, loaded_dataplane, real_mac,
                          run)

CLIENT = "198.18.0.2"
VIP = "198.18.0.20"
REAL = "198.18.1.11"
ip = ipaddress.ip_address

TABLE = TableSpec((ServiceSpec("tcp", ip(VIP), 80, "rr", (RealSpec(ip(REAL), 8080, 1, "nat"),)),))


@pytest.fixture
def dp():
    with loaded_dataplane("rate", table=TABLE) as d:
        yield d


def _traffic(dp, first_sport: int, conns: int, per_conn: int) -> None:
    """conns new connections, per_conn client packets each (the SYN first), one reply each."""
    for sport in range(first_sport, first_sport + conns):
        for i in range(per_conn):
            pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=CLIENT, dst=VIP) / \
                TCP(sport=sport, dport=80, flags="S" if i == 0 else "A") / (b"x" * 100)
            rc, _ = run(dp, "lb_xdp_public", pkt)
            assert rc == XDP_REDIRECT
        reply = Ether(src=real_mac(REAL), dst=PRIV_MAC) / IP(src=REAL, dst=CLIENT) / \
            TCP(sport=8080, dport=sport, flags="SA") / (b"y" * 40)
        rc, _ = run(dp, "lb_xdp_private", reply)
        assert rc == XDP_TX


class IpvsEstimator:
    """ip_vs_est.c as the kernel computes it, for a 2 s period (the reference)."""

    def __init__(self, counters):
        self.last = list(counters)
        self.avg = [0] * 5

    def tick(self, counters):
        for j, shift in enumerate((9, 9, 9, 4, 4)):        # conns, inpkts, outpkts, inbytes, outbytes
            rate = (counters[j] - self.last[j]) << shift
            self.last[j] = counters[j]
            self.avg[j] += (rate - self.avg[j]) >> 2
        return listing.Stats((self.avg[0] + 0x1FF) >> 10, (self.avg[1] + 0x1FF) >> 10,
                             (self.avg[2] + 0x1FF) >> 10, (self.avg[3] + 0xF) >> 5, (self.avg[4] + 0xF) >> 5)


def _rows(dp):
    with PinnedMaps(dp.instance) as maps:
        return reader.read_services(maps)


def _counters(row):
    s = row.stats
    return (s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes)


def test_rates_follow_the_ipvs_estimator(dp):
    t0 = 1000.0
    dp.estimate(now=t0)                       # the first sample: counters only, no rate yet
    (row,) = _rows(dp)
    assert row.rate == listing.Stats() and row.reals[0].rate == listing.Stats()
    ref = IpvsEstimator(_counters(row))

    _traffic(dp, 50000, conns=20, per_conn=10)     # 200 packets in, 20 out, 20 new connections
    dp.estimate(now=t0 + 2)
    (row,) = _rows(dp)
    c = _counters(row)
    assert c[:3] == (20, 200, 20)
    expected = ref.tick(c)
    # 100 packets/s from zero: avg = (200 << 9) / 4 = 25600, shown (25600 + 0x1FF) >> 10 = 25
    assert (expected.conns, expected.inpkts, expected.outpkts) == (2, 25, 2)
    assert expected.inbytes == 25 * (c[3] // 200)      # a quarter of 100 packets/s, in bytes
    assert row.rate == expected
    assert row.reals[0].rate == expected              # the only real server carries it all

    dp.estimate(now=t0 + 4)                   # an idle period: the averages decay by a quarter
    (row,) = _rows(dp)
    expected = ref.tick(_counters(row))
    assert expected.inpkts == 19 and row.rate == expected == row.reals[0].rate

    _traffic(dp, 51000, conns=20, per_conn=10)
    dp.estimate(now=t0 + 6)
    (row,) = _rows(dp)
    expected = ref.tick(_counters(row))
    assert expected.inpkts == 39 and row.rate == expected == row.reals[0].rate

    out = listing.format_services(_rows(dp), mode="rate", header=False)
    assert out.splitlines() == [
        "%-33s %8s %8s %8s %8s %8s" % ("Prot LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"),
        "  -> RemoteAddress:Port",
        "%-33s%s" % (f"TCP  {VIP}:80", "".join("%9d" % v for v in (
            expected.conns, expected.inpkts, expected.outpkts, expected.inbytes, expected.outbytes))),
        "  -> %-28s %8d %8d %8d%9d%9d" % (f"{REAL}:8080", expected.conns, expected.inpkts, expected.outpkts,
                                           expected.inbytes, expected.outbytes),
    ]


def test_an_idle_server_settled_at_0_is_not_written_and_picks_up_where_it_was(dp):
    """An id whose counters stand still once its rate shows 0 is neither computed nor written
    again (a pass over 1000 x 64 idle servers wrote 65,000 entries every 2 s); when its packets
    come back, its rate is IPVS's over the last period -- the skipped passes moved its clock."""
    t0 = 2000.0
    dp.estimate(now=t0)
    (row,) = _rows(dp)
    ref = IpvsEstimator(_counters(row))
    _traffic(dp, 55000, conns=20, per_conn=10)
    written, t = [], t0
    while len(written) < 40:                 # decays to 0 in tens of passes, then stays there
        t += 2
        written.append(dp.estimate(now=t))
        (row,) = _rows(dp)
        assert row.rate == ref.tick(_counters(row)) == row.reals[0].rate
    assert written[0] == 2 and written[-1] == 0, written   # the service and its server, then none
    settled = written.index(0)
    assert all(n == 0 for n in written[settled:]) and row.rate == listing.Stats()
    _traffic(dp, 56000, conns=4, per_conn=5)
    t += 2
    assert dp.estimate(now=t) == 2
    (row,) = _rows(dp)
    expected = ref.tick(_counters(row))
    assert expected.inpkts == (((20 << 9) >> 2) + 0x1FF) >> 10 == 2
    assert row.rate == expected == row.reals[0].rate


def test_a_pass_that_fails_leaves_the_next_ones_right(dp, monkeypatch):
    """A pass that fails part-way (a map read the kernel refuses) raises, and the estimator starts
    afresh at the next: no rate from two intervals' deltas over one."""
    from lb.dataplane.maps import BpfMap

    dp.estimate(now=3000.0)
    _traffic(dp, 57000, conns=20, per_conn=10)
    real = BpfMap.values_raw
    calls = []

    def refuse_the_second(self, keys, n):
        calls.append(self.name)
        if len(calls) == 2:
            raise OSError(12, "Cannot allocate memory")
        return real(self, keys, n)
    monkeypatch.setattr(BpfMap, "values_raw", refuse_the_second)
    with pytest.raises(OSError):
        dp.estimate(now=3002.0)
    assert len(calls) == 2
    monkeypatch.setattr(BpfMap, "values_raw", real)
    assert dp.estimate(now=3004.0) == 0       # afresh: the counters taken, no rate yet
    (row,) = _rows(dp)
    ref = IpvsEstimator(_counters(row))
    _traffic(dp, 58000, conns=20, per_conn=10)
    assert dp.estimate(now=3006.0) == 2
    (row,) = _rows(dp)
    assert row.rate == ref.tick(_counters(row)) == row.reals[0].rate
    assert row.rate.inpkts == 25


def test_lb_list_rate_command(dp, capsys):
    dp.estimate(now=10.0)
    _traffic(dp, 52000, conns=4, per_conn=5)
    dp.estimate(now=12.0)
    assert lb_main(["list", "--rate", "--instance", dp.instance, "--dataplane", "xdp"]) == 0
    out, err = capsys.readouterr()
    # no daemon estimates here (the test does): the listing is ipvsadm's, the warning on stderr
    assert f"lb: no daemon runs instance {dp.instance!r}: the rates are its last estimates" in err
    (row,) = _rows(dp)
    assert row.rate.inpkts == (((20 << 9) >> 2) + 0x1FF) >> 10 == 2
    assert "CPS    InPPS   OutPPS    InBPS   OutBPS" in out
    assert "%-33s%s" % (f"TCP  {VIP}:80", "".join("%9d" % v for v in (
        row.rate.conns, row.rate.inpkts, row.rate.outpkts, row.rate.inbytes, row.rate.outbytes))) in out


def test_measured_interval_and_ids_leaving(dp):
    dp.estimate(now=0.0)
    _traffic(dp, 53000, conns=10, per_conn=10)    # 100 packets over 4 s: 25/s, a quarter shown
    dp.estimate(now=4.0)
    (row,) = _rows(dp)
    assert row.rate.inpkts == (((100 << 10) // 4 >> 2) + 0x1FF) >> 10 == 6
    dp.apply(TableSpec(()))                   # the service goes: its rates are cleared
    dp.estimate(now=6.0)
    assert _rows(dp) == []
    assert not dp.rates.held()


def test_a_restart_keeping_the_data_plane_carries_on_from_the_pinned_rates(dp):
    """`lb stop --keep-dataplane` then `lb run` (an upgrade): the new daemon's estimator starts
    from the rates the old one left pinned, as `lb list --rate` showed them, so they decay
    from there -- not from zero, which read as a service gone idle at every restart."""
    dp.estimate(now=1000.0)
    _traffic(dp, 54000, conns=20, per_conn=10)
    dp.estimate(now=1002.0)
    (row,) = _rows(dp)
    assert row.rate.inpkts == 25
    shown = row.rate
    again = XdpDataplane(dp.instance, dp.sizes, resolver=fake_resolver)
    again.load()
    try:
        assert again.adopted
        again.apply(TABLE)
        again.estimate(now=5000.0)          # its first pass: the counters taken, the rates left
        (row,) = _rows(again)
        assert row.rate == shown and row.reals[0].rate == shown
        again.estimate(now=5002.0)          # an idle period: a quarter off what was shown
        (row,) = _rows(again)
        ref = IpvsEstimator(_counters(row))
        ref.avg = [shown.conns << 10, shown.inpkts << 10, shown.outpkts << 10, shown.inbytes << 5,
                   shown.outbytes << 5]
        expected = ref.tick(_counters(row))
        assert expected.inpkts == 19 and row.rate == expected == row.reals[0].rate
    finally:
        again.close()
