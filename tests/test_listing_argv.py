"""ipvsadm's command line as `lb list` takes it.

ipvsadm's -t/-u VIP:PORT takes a service name for the port (`-t VIP:http`) and a host name for
the address (parse_service: service_to_port, host_to_addr); lb refused both ("expected
VIP:PORT")."""
import socket
from ipaddress import ip_address as ip

import pytest

from lb.cli import main as cli_main
from lb.cli.main import main as lb_main
from lb.listing import RealRow, ServiceRow


SERVICES = [ServiceRow("TCP", ip("198.18.0.22"), 443, "wlc", reals=[RealRow(ip("198.18.1.16"), 443, "Masq", 1)]),
            ServiceRow("UDP", ip("198.18.0.22"), 53, "rr", reals=[RealRow(ip("198.18.1.17"), 53, "Route", 2)])]


@pytest.mark.parametrize("argv, line", [
    (["-t", "198.18.0.22:https"], "TCP  198.18.0.22:443 wlc\n"),
    (["-u", "198.18.0.22:domain"], "UDP  198.18.0.22:53 rr\n"),
    (["-t", "lb-test-vip:443"], "TCP  198.18.0.22:443 wlc\n"),
])
def test_service_by_name(capsys, monkeypatch, argv, line):
    def resolve(host, *a, **k):     # (no query leaves this host)
        if host != "lb-test-vip":
            raise socket.gaierror(-2, "unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("198.18.0.22", 0))]
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    args = cli_main.build_parser().parse_args(["list", "-n", *argv])
    assert cli_main._print_listing(args, SERVICES, [], (900, 120, 300)) == 0
    out = capsys.readouterr().out
    assert out.splitlines(keepends=True)[2] == line     # after the two title lines, the one service
    assert len(out.splitlines()) == 4


@pytest.mark.parametrize("text, err", [
    ("198.18.0.22:nosuchsvc", "198.18.0.22:nosuchsvc: no tcp service 'nosuchsvc' (/etc/services): give the port number"),
    ("nosuch.invalid:80", "nosuch.invalid:80: 'nosuch.invalid' is neither an address nor a host name this host resolves"),
    ("198.18.0.22:99999", "198.18.0.22:99999: expected VIP:PORT ([VIP]:PORT for IPv6)"),
    ("[nosuch]:80", "[nosuch]:80: expected VIP:PORT ([VIP]:PORT for IPv6)"),
])
def test_bad_service_names(capsys, monkeypatch, text, err):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(socket.gaierror(-2, "unknown")))
    assert lb_main(["-Ln", "-t", text, "--dataplane", "xdp"]) == 2
    assert capsys.readouterr().err == f"lb: {err}\n"


def test_sctp_service(capsys):
    """ipvsadm 1.31's --sctp-service VIP:PORT selects an SCTP service (kernel IPVS may hold one,
    `--dataplane ipvs`); lb said "unrecognized arguments"."""
    sctp = ServiceRow("SCTP", ip("198.18.0.22"), 443, "rr", reals=[RealRow(ip("198.18.1.16"), 443, "Masq", 1)])
    args = cli_main.build_parser().parse_args(["list", "-n", "--sctp-service", "198.18.0.22:443"])
    assert cli_main._print_listing(args, SERVICES + [sctp], [], (900, 120, 300)) == 0
    assert capsys.readouterr().out.splitlines()[2:] == [
        "SCTP 198.18.0.22:443 rr", "  -> 198.18.1.16:443              Masq    1      0          0         "]
