"""ipvsadm -L -n -c --persistent-conn (ipvsadm 1.31 list_conn): the title gains "pe name" and
"pe_data" columns; rows without persistence-engine data keep print_conn's six columns."""
from ipaddress import ip_address as ip

from lb.cli import main as cli_main
from lb.listing import ConnRow, format_connections

CONNS = [ConnRow("TCP", 3725, "ESTABLISHED", (ip("203.0.113.20"), 55746), (ip("192.0.2.10"), 80),
                 (ip("198.51.100.2"), 80))]
PE_TITLE = ("IPVS connection entries\n"
            "pro expire state       source             virtual            destination        pe name          pe_data\n")
ROW = "TCP 62:05  ESTABLISHED 203.0.113.20:55746 192.0.2.10:80      198.51.100.2:80\n"


def test_format_connections_pe_title():
    assert format_connections(CONNS, pe=True) == PE_TITLE + ROW


def test_list_c_persistent_conn_prints_pe_title(capsys):
    args = cli_main.build_parser().parse_args(["list", "-n", "-c", "--persistent-conn"])
    assert cli_main._print_listing(args, [], CONNS, (900, 120, 300)) == 0
    assert capsys.readouterr().out == PE_TITLE + ROW
    args = cli_main.build_parser().parse_args(["list", "-n", "-c"])
    assert cli_main._print_listing(args, [], CONNS, (900, 120, 300)) == 0
    assert capsys.readouterr().out == format_connections(CONNS)
