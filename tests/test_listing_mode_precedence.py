"""Given several layout options, ipvsadm 1.31 picks one in print_title's order: --stats, --rate,
--thresholds, --persistent-conn, --tun-info."""
from ipaddress import ip_address as ip

import pytest

from lb.cli import main as cli_main
from lb.listing import RealRow, ServiceRow, format_services

SVCS = [ServiceRow("TCP", ip("192.0.2.10"), 80, "wlc",
                   reals=[RealRow(ip("198.51.100.2"), 80, "Route", 1, active=3, inactive=12, persist=2,
                                  u_threshold=100, l_threshold=50)])]


@pytest.mark.parametrize("argv, mode", [
    (["--thresholds", "--persistent-conn"], "thresholds"),
    (["--persistent-conn", "--thresholds"], "thresholds"),
    (["--persistent-conn", "--tun-info"], "persistent"),
    (["--thresholds", "--tun-info"], "thresholds"),
    (["--rate", "--thresholds"], "rate"),
])
def test_layout_precedence_is_ipvsadms(argv, mode, capsys):
    args = cli_main.build_parser().parse_args(["list", "-n", *argv])
    assert cli_main._print_listing(args, SVCS, [], (900, 120, 300)) == 0
    assert capsys.readouterr().out == format_services(SVCS, mode=mode)
