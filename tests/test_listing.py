"""Tests for lb.listing: byte-exact ``ipvsadm -L -n`` output.

The golden files in tests/golden/listing/ were written by hand from the
ipvsadm 1.31 printf formats (not produced by lb.listing).  They contain
significant trailing spaces (``%-10u`` after InActConn): see
test_golden_files_keep_trailing_spaces.
"""

from __future__ import annotations

import json
import socket
from ipaddress import IPv6Address, ip_address
from pathlib import Path

import pytest

from lb import listing
from lb.listing import (
    ConnRow,
    RealRow,
    ServiceRow,
    Stats,
    format_connections,
    format_save,
    format_services,
    format_timeout,
    largenum,
    to_json,
)

GOLDEN = Path(__file__).parent / "golden" / "listing"


def golden(name: str) -> str:
    # newline="" so nothing (CR, trailing spaces) is translated on read
    with open(GOLDEN / name, encoding="ascii", newline="") as f:
        return f.read()


def ip(s: str):
    return ip_address(s)


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


def main_services() -> list[ServiceRow]:
    """Five services, deliberately out of ipvsadm order (and reals too)."""
    s_tcp = ServiceRow(
        "TCP", ip("192.0.2.10"), 80, "wlc", persistent=360, netmask="255.255.255.0",
        reals=[
            RealRow(ip("198.51.100.3"), 80, "Route", 0, active=0, inactive=1),
            RealRow(ip("198.51.100.2"), 80, "Route", 1, active=3, inactive=12, persist=2),
        ],
    )
    s_udp = ServiceRow(
        "UDP", ip("192.0.2.11"), 53, "sh", sched_flags=("sh-fallback", "sh-port"), ops=True,
        reals=[
            RealRow(ip("198.51.100.5"), 53, "Masq", 1, active=0, inactive=7,
                    u_threshold=1000, l_threshold=800),
        ],
    )
    s_v6 = ServiceRow(
        "TCP", ip("2001:db8::1"), 80, "rr",
        reals=[RealRow(ip("2001:db8::10"), 80, "Masq", 1, active=2, inactive=5)],
    )
    s_fwm = ServiceRow(
        "TCP", None, 0, "wlc", fwmark=80,
        reals=[
            RealRow(ip("198.51.100.8"), 0, "Tunnel", 100, tunnel_info="gue:6080:+c"),
            RealRow(ip("198.51.100.7"), 0, "Tunnel", 100, active=1234567, tunnel_info="ipip"),
        ],
    )
    s_fwm6 = ServiceRow(
        "TCP", None, 0, "wlc", fwmark=80, family=6, persistent=300, netmask=64,
        reals=[RealRow(ip("2001:db8::20"), 0, "Route", 1)],
    )
    return [s_fwm6, s_udp, s_fwm, s_v6, s_tcp]


def stats_services() -> list[ServiceRow]:
    """Counters at every largenum boundary."""
    s_tcp = ServiceRow(
        "TCP", ip("192.0.2.10"), 80, "wlc",
        stats=Stats(99_999_999, 100_000_000, 999_999_999, 1_000_000_000, 99_999_999_999),
        rate=Stats(12, 3400, 0, 123_456_789, 0),
        reals=[
            RealRow(ip("198.51.100.3"), 80, "Route", 1,
                    stats=Stats(16, 125, 0, 10000, 0)),
            RealRow(ip("198.51.100.2"), 80, "Route", 1,
                    stats=Stats(100_000_000_000, 99_999_999_999_999, 100_000_000_000_000,
                                2**64 - 1, 0),
                    rate=Stats(12, 123_456_789, 0, 2_000_000_000, 0)),
        ],
    )
    s_v6 = ServiceRow(
        "UDP", ip("2001:db8:1234:5678:9abc:def0:1234:5678"), 53, "rr",
        stats=Stats(7, 7, 7, 420, 840), rate=Stats(1, 2, 3, 400, 500),
        reals=[
            RealRow(ip("2001:db8:1234:5678:9abc:def0:1234:5679"), 53, "Masq", 1,
                    stats=Stats(7, 7, 7, 420, 840), rate=Stats(1, 2, 3, 400, 500)),
        ],
    )
    s_fwm = ServiceRow("TCP", None, 0, "wlc", fwmark=80)
    return [s_fwm, s_v6, s_tcp]


def service_line_cases() -> list[ServiceRow]:
    return [
        ServiceRow("TCP", ip("192.0.2.10"), 80, "wlc", persistent=360, netmask="255.255.255.0"),
        ServiceRow("TCP", ip("192.0.2.12"), 443, "wlc", persistent=300, netmask="255.255.255.255"),
        ServiceRow("TCP", ip("192.0.2.13"), 443, "lc", persistent=300),
        ServiceRow("TCP", ip("2001:db8::1"), 443, "wlc", persistent=300, netmask=128),
        ServiceRow("TCP", ip("2001:db8::2"), 443, "wlc", persistent=300, netmask=64),
        ServiceRow("UDP", ip("192.0.2.11"), 53, "sh", sched_flags=("sh-fallback", "sh-port"),
                   persistent=60, ops=True),
        ServiceRow("TCP", ip("192.0.2.14"), 80, "mh", sched_flags=("mh-fallback", "mh-port")),
        ServiceRow("SCTP", ip("255.255.255.255"), 65535, "rr", reals=[
            RealRow(ip("255.255.255.255"), 65535, "Masq", 65535,
                    active=4294967295, inactive=4294967295),
        ]),
        ServiceRow("TCP", None, 0, "wlc", fwmark=1, ops=True),
        ServiceRow("TCP", None, 0, "sed", fwmark=4294967295, family=6, persistent=300),
        ServiceRow("UDP", ip("::ffff:192.0.2.1"), 53, "rr"),
        ServiceRow("TCP", None, 0, "wlc", fwmark=2, persistent=300, netmask="255.255.0.0"),
    ]


def conn_rows() -> list[ConnRow]:
    return [
        ConnRow("TCP", 897, "ESTABLISHED", (ip("203.0.113.20"), 55746),
                (ip("192.0.2.10"), 80), (ip("198.51.100.2"), 80)),
        ConnRow("UDP", 300, "UDP", (ip("203.0.113.21"), 40000),
                (ip("192.0.2.11"), 53), (ip("198.51.100.5"), 53)),
        ConnRow("TCP", 5, "TIME_WAIT", (ip("203.0.113.5"), 1024),
                (ip("192.0.2.10"), 80), (ip("198.51.100.3"), 80)),
        ConnRow("TCP", 359, "NONE", (ip("203.0.113.20"), 0),
                (ip("192.0.2.10"), 80), (ip("198.51.100.2"), 80)),
        ConnRow("TCP", 60000, "SYN_RECV", (ip("2001:db8::99"), 40001),
                (ip("2001:db8::1"), 80), (ip("2001:db8::10"), 80)),
    ]


# --------------------------------------------------------------------------
# golden files
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("default.txt", {}),
        ("thresholds.txt", {"mode": "thresholds"}),
        ("persistent.txt", {"mode": "persistent"}),
        ("tun.txt", {"mode": "tun"}),
    ],
)
def test_golden_main_layouts(name, kwargs):
    assert format_services(main_services(), **kwargs) == golden(name)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("stats.txt", {"mode": "stats"}),
        ("exact_stats.txt", {"mode": "stats", "exact": True}),
        ("rate.txt", {"mode": "rate"}),
    ],
)
def test_golden_number_layouts(name, kwargs):
    assert format_services(stats_services(), **kwargs) == golden(name)


def test_golden_service_lines():
    out = format_services(service_line_cases(), sort=False, size=1048576)
    assert out == golden("service_lines.txt")


def test_golden_connections():
    assert format_connections(conn_rows()) == golden("connections.txt")


def test_golden_timeout():
    assert format_timeout(900, 120, 300) == golden("timeout.txt")


def test_golden_save():
    """ipvsadm -S -n: rules in the listing's order (ipvsadm -R reads them; tests/vm round-trips them)."""
    assert format_save(main_services()) == golden("save.txt")
    # service options as ipvsadm writes them: a host mask and /128 are not written, SCTP by name
    lines = [format_save([s]).splitlines()[0] for s in service_line_cases()]
    assert lines[1] == "-A -t 192.0.2.12:443 -s wlc -p 300"
    assert lines[3] == "-A -t [2001:db8::1]:443 -s wlc -p 300"
    assert lines[6] == "-A -t 192.0.2.14:80 -s mh -b mh-fallback,mh-port"
    assert format_save([service_line_cases()[7]]).splitlines()[1] == \
        "-a --sctp-service 255.255.255.255:65535 -r 255.255.255.255:65535 -m -w 65535"
    assert lines[9] == "-A -f 4294967295 -6 -s sed -p 300"
    assert format_save([]) == ""


def test_golden_files_keep_trailing_spaces():
    # If an editor or a git filter strips trailing whitespace the goldens
    # silently stop matching ipvsadm; fail here with a clear message.
    lines = golden("default.txt").split("\n")
    assert lines[4] == "  -> 198.51.100.2:80              Route   1      3          12        "
    assert lines[4].endswith("12" + " " * 8)
    assert golden("persistent.txt").split("\n")[1].endswith("InActConn ")
    assert golden("thresholds.txt").split("\n")[1].endswith("InActConn ")
    for name in ("default.txt", "tun.txt", "thresholds.txt", "persistent.txt"):
        assert "\r" not in golden(name)


# Column layout of the real-server rows: (start, width) of each %-Ns field,
# straight from the printf formats.  Checks the hand-written goldens.
_REAL_COLUMNS = {
    # "  -> %-28s %-7s %-6d %-10u %-10u"
    "default.txt": [(5, 28), (34, 7), (42, 6), (49, 10), (60, 10)],
    # "  -> %-28s %-10u %-10u %-10u %-10u"
    "thresholds.txt": [(5, 28), (34, 10), (45, 10), (56, 10), (67, 10)],
    # "  -> %-28s %-9u %-11u %-10u %-10u"
    "persistent.txt": [(5, 28), (34, 9), (44, 11), (56, 10), (67, 10)],
    # "  -> %-28s %-7s %-13s %-6d %-10u %-10u"
    "tun.txt": [(5, 28), (34, 7), (42, 13), (56, 6), (63, 10), (74, 10)],
}


@pytest.mark.parametrize("name", sorted(_REAL_COLUMNS))
def test_golden_real_rows_follow_printf_columns(name):
    cols = _REAL_COLUMNS[name]
    end = cols[-1][0] + cols[-1][1]
    rows = [l for l in golden(name).split("\n") if l.startswith("  -> ") and "Remote" not in l]
    assert rows
    for row in rows:
        assert len(row) == end, row
        pos = 5
        for start, width in cols:
            assert row[pos:start].strip() == "", row  # single-space separators
            field = row[start:start + width]
            assert field[0] != " " and field == field.rstrip() + " " * (width - len(field.rstrip())), row
            pos = start + width


# --------------------------------------------------------------------------
# largenum
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "        0"),
        (99_999_999, " 99999999"),
        (100_000_000, "  100000K"),
        (999_999_999, "  999999K"),
        (1_000_000_000, "    1000M"),
        (1_999_999, "  1999999"),
        (99_999_999_999, "   99999M"),
        (100_000_000_000, "     100G"),
        (99_999_999_999_999, "   99999G"),
        (100_000_000_000_000, "     100T"),
        (999_999_999_999_999_999, "  999999T"),
        (2**64 - 1, "18446744T"),
    ],
)
def test_largenum_boundaries(n, text):
    assert largenum(n) == text


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "        0"),
        (1, "        1"),
        (12_345_678, " 12345678"),
        (99_999_999, " 99999999"),  # 8 digits: width 9
        (100_000_000, " 100000000"),  # 9 digits: width 10
        (999_999_999, " 999999999"),
        (1_000_000_000, " 1000000000"),
        (2**64 - 1, " 18446744073709551615"),
    ],
)
def test_largenum_exact_widths(n, text):
    assert largenum(n, exact=True) == text
    assert len(text) == max(9, len(str(n)) + 1)


def test_largenum_wraps_like_unsigned_long_long():
    assert largenum(-1) == largenum(2**64 - 1)
    assert largenum(2**64) == largenum(0)


# --------------------------------------------------------------------------
# sorting
# --------------------------------------------------------------------------


def _svc_names(text: str) -> list[str]:
    return [l for l in text.split("\n")[3:] if l and not l.startswith("  -> ")]


def test_sort_orders_services_like_ipvsadm():
    svcs = [
        ServiceRow("TCP", None, 0, "wlc", fwmark=10),
        ServiceRow("TCP", None, 0, "wlc", fwmark=9, family=6),
        ServiceRow("TCP", None, 0, "wlc", fwmark=9),
        ServiceRow("SCTP", ip("10.0.0.1"), 80, "rr"),
        ServiceRow("TCP", ip("2001:db8::1"), 80, "rr"),
        ServiceRow("UDP", ip("10.0.0.1"), 53, "rr"),
        ServiceRow("TCP", ip("200.0.0.1"), 80, "rr"),
        ServiceRow("TCP", ip("10.0.0.1"), 8080, "rr"),
        ServiceRow("TCP", ip("10.0.0.1"), 443, "rr"),
        ServiceRow("TCP", ip("9.0.0.10"), 80, "rr"),
        ServiceRow("TCP", ip("10.0.0.1"), 80, "rr"),
    ]
    names = _svc_names(format_services(svcs))
    assert names == [
        # fwmark 0 first; IPv4 (AF_INET) before IPv6; TCP(6) < UDP(17) < SCTP(132);
        # then numeric address, then port
        "TCP  9.0.0.10:80 rr",
        "TCP  10.0.0.1:80 rr",
        "TCP  10.0.0.1:443 rr",
        "TCP  10.0.0.1:8080 rr",
        "TCP  200.0.0.1:80 rr",
        "UDP  10.0.0.1:53 rr",
        "SCTP 10.0.0.1:80 rr",
        "TCP  [2001:db8::1]:80 rr",
        "FWM  9 wlc",
        "FWM  9 IPv6 wlc",
        "FWM  10 wlc",
    ]
    # --nosort keeps the given order
    assert _svc_names(format_services(svcs, sort=False))[:3] == [
        "FWM  10 wlc", "FWM  9 IPv6 wlc", "FWM  9 wlc",
    ]


def test_sort_orders_reals_by_address_then_port():
    reals = [
        RealRow(ip("10.0.0.2"), 8080, "Masq", 1),
        RealRow(ip("10.0.0.10"), 80, "Masq", 1),
        RealRow(ip("10.0.0.2"), 80, "Masq", 1),
        RealRow(ip("9.255.255.255"), 9000, "Masq", 1),
        RealRow(ip("10.0.0.2"), 443, "Masq", 1),
    ]
    svc = ServiceRow("TCP", ip("192.0.2.1"), 80, "rr", reals=reals)
    rows = [l.split()[1] for l in format_services([svc]).split("\n") if l.startswith("  -> 1") or l.startswith("  -> 9")]
    assert rows == ["9.255.255.255:9000", "10.0.0.2:80", "10.0.0.2:443", "10.0.0.2:8080", "10.0.0.10:80"]
    rows = [l.split()[1] for l in format_services([svc], sort=False).split("\n") if l.startswith("  -> 1") or l.startswith("  -> 9")]
    assert rows == ["10.0.0.2:8080", "10.0.0.10:80", "10.0.0.2:80", "9.255.255.255:9000", "10.0.0.2:443"]
    # inputs are not mutated by sorting
    assert [r.port for r in svc.reals] == [8080, 80, 80, 9000, 443]


def test_connections_sort_option():
    out = format_connections(conn_rows(), sort=True).split("\n")[2:-1]
    # TCP(6) before UDP(17); then client address/port; IPv4 before IPv6
    assert [l.split()[3] for l in out] == [
        "203.0.113.5:1024",
        "203.0.113.20:0",
        "203.0.113.20:55746",
        "[2001:db8::99]:40001",
        "203.0.113.21:40000",
    ]


# --------------------------------------------------------------------------
# details
# --------------------------------------------------------------------------


def test_header_switch_and_version():
    out = format_services([], header=False)
    assert out == golden("default.txt").split("\n", 1)[1].split("TCP  ")[0]
    assert format_services([], version="1.2.0", size=1024).startswith(
        "IP Virtual Server version 1.2.0 (size=1024)\n"
    )


def test_unknown_mode_rejected():
    with pytest.raises(ValueError):
        format_services([], mode="bogus")


def test_service_needs_address_or_fwmark():
    with pytest.raises(ValueError):
        format_services([ServiceRow("TCP", None, 80, "rr")])


def test_mask_rules():
    def line(**kw):
        return format_services([ServiceRow("TCP", ip("192.0.2.1"), 80, "wlc", **kw)]).split("\n")[3]

    assert line(persistent=300, netmask="255.255.255.255") == "TCP  192.0.2.1:80 wlc persistent 300"
    assert line(persistent=300, netmask=24) == "TCP  192.0.2.1:80 wlc persistent 300 mask 255.255.255.0"
    assert line(persistent=300, netmask=32) == "TCP  192.0.2.1:80 wlc persistent 300"
    assert line(persistent=0) == "TCP  192.0.2.1:80 wlc persistent 0"
    # mask only shown for persistent services
    assert line(netmask="255.255.255.0") == "TCP  192.0.2.1:80 wlc"


def test_ipv4_names_cut_at_33_and_28_ipv6_never():
    # With numeric output an IPv4 name never reaches the cut: the widest fits.
    widest = ServiceRow("SCTP", ip("255.255.255.255"), 65535, "rr")
    assert listing._service_name(widest) == "SCTP 255.255.255.255:65535"
    assert len(listing._service_name(widest)) <= 33
    real = RealRow(ip("255.255.255.255"), 65535, "Masq", 1)
    assert listing._real_name(real) == "255.255.255.255:65535"
    # the cut itself ("name[33] = '\0'") for longer (resolved) names
    assert listing._c_cut("x" * 40, 33) == "x" * 33
    assert listing._c_cut("x" * 40, 28) == "x" * 28
    assert listing._c_cut("short", 28) == "short"
    # IPv6 names are not cut
    v6 = ServiceRow("UDP", ip("2001:db8:1234:5678:9abc:def0:1234:5678"), 65535, "rr")
    assert listing._service_name(v6) == "UDP  [2001:db8:1234:5678:9abc:def0:1234:5678]:65535"
    r6 = RealRow(ip("2001:db8:1234:5678:9abc:def0:1234:5679"), 65535, "Masq", 1)
    assert listing._real_name(r6) == "[2001:db8:1234:5678:9abc:def0:1234:5679]:65535"


@pytest.mark.parametrize(
    "addr",
    [
        "::", "::1", "::2:3", "::1.2.3.4", "::ffff:1.2.3.4", "::ffff:0:0", "1::",
        "2001:db8::1", "2001:db8:0:1:0:0:0:1", "2001:0:0:1:0:0:0:1", "2001:db8:0:0:1:0:0:1",
        "1:0:1:0:1:0:1:0", "fe80::1:0:0:0", "::ffff:1:2", "0:0:0:1::", "64:ff9b::192.0.2.1",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ],
)
def test_ipv6_text_matches_inet_ntop(addr):
    a = IPv6Address(addr)
    mine = listing._inet_ntop6(a)
    assert ip_address(mine) == a
    if hasattr(socket, "inet_ntop"):
        assert mine == socket.inet_ntop(socket.AF_INET6, a.packed)


def test_expire_minutes_seconds():
    def exp(n):
        row = ConnRow("TCP", n, "NONE", (ip("10.0.0.1"), 1), (ip("10.0.0.2"), 2), (ip("10.0.0.3"), 3))
        return format_connections([row]).split("\n")[2][4:11]

    assert exp(0) == "00:00  "
    assert exp(59) == "00:59  "
    assert exp(60) == "01:00  "
    assert exp(5999) == "99:59  "
    assert exp(6000) == "100:00 "
    assert exp(-3) == "00:00  "


def test_empty_connection_list():
    assert format_connections([]) == golden("connections.txt").split("TCP ")[0]


# --------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------


def test_json_shape():
    doc = to_json(main_services(), conn_rows())
    assert json.loads(json.dumps(doc)) == doc  # plain JSON types only
    assert doc["schema"] == 1
    assert [s["name"] for s in doc["services"]] == [
        "TCP  192.0.2.10:80", "UDP  192.0.2.11:53", "TCP  [2001:db8::1]:80", "FWM  80", "FWM  80 IPv6",
    ]
    tcp = doc["services"][0]
    assert tcp == {
        "kind": "addr",
        "protocol": "TCP",
        "address": "192.0.2.10",
        "port": 80,
        "fwmark": 0,
        "family": 4,
        "name": "TCP  192.0.2.10:80",
        "scheduler": "wlc",
        "sched_flags": [],
        "persistent": 360,
        "netmask": "255.255.255.0",
        "ops": False,
        "stats": {"conns": 0, "inpkts": 0, "outpkts": 0, "inbytes": 0, "outbytes": 0},
        "rate": {"cps": 0, "inpps": 0, "outpps": 0, "inbps": 0, "outbps": 0},
        "reals": tcp["reals"],
    }
    assert [r["address"] for r in tcp["reals"]] == ["198.51.100.2", "198.51.100.3"]
    assert tcp["reals"][0] == {
        "address": "198.51.100.2", "port": 80, "family": 4, "forward": "Route", "weight": 1,
        "active": 3, "inactive": 12, "persist": 2, "u_threshold": 0, "l_threshold": 0,
        "tunnel_info": "n/a",
        "stats": {"conns": 0, "inpkts": 0, "outpkts": 0, "inbytes": 0, "outbytes": 0},
        "rate": {"cps": 0, "inpps": 0, "outpps": 0, "inbps": 0, "outbps": 0},
    }
    udp = doc["services"][1]
    assert udp["sched_flags"] == ["sh-fallback", "sh-port"] and udp["ops"] is True
    assert udp["persistent"] is None and udp["netmask"] is None
    fwm6 = doc["services"][4]
    assert (fwm6["kind"], fwm6["protocol"], fwm6["address"], fwm6["port"]) == ("fwmark", None, None, None)
    assert (fwm6["fwmark"], fwm6["family"], fwm6["netmask"]) == (80, 6, 64)
    assert doc["services"][2]["address"] == "2001:db8::1"
    assert doc["services"][2]["reals"][0]["family"] == 6
    # connections keep the given order
    assert doc["connections"][0] == {
        "protocol": "TCP", "expire": 897, "state": "ESTABLISHED",
        "client": {"address": "203.0.113.20", "port": 55746},
        "virtual": {"address": "192.0.2.10", "port": 80},
        "dest": {"address": "198.51.100.2", "port": 80},
    }
    assert doc["connections"][4]["client"] == {"address": "2001:db8::99", "port": 40001}


def test_json_without_connections_and_nosort():
    doc = to_json(main_services())
    assert "connections" not in doc
    doc = to_json(main_services(), sort=False)
    assert [s["name"] for s in doc["services"]][0] == "FWM  80 IPv6"
    assert to_json([]) == {"schema": 1, "services": []}


def test_json_big_counters_are_exact():
    doc = to_json(stats_services())
    real = doc["services"][0]["reals"][0]
    assert real["stats"]["inbytes"] == 2**64 - 1
    assert real["rate"]["inpps"] == 123_456_789


def test_tunnel_info_of_kernel_destinations():
    """--tun-info's column from IPVS's destination attributes (IPVS_DEST_ATTR_TUN_*): ipip when
    the kernel names no type (before Linux 5.3, or type 0), gue with its port (sent in network
    order, read by pyroute2 in host order) and checksum flag, gre; n/a when not tunneling."""
    import socket

    from lb.dataplane import ipvs

    T = ipvs.IP_VS_CONN_F_TUNNEL
    assert ipvs.tunnel_info(T, None, None, None) == "ipip"
    assert ipvs.tunnel_info(T, 0, 0, 0) == "ipip"
    assert ipvs.tunnel_info(T, 1, socket.htons(6080), 1) == "gue:6080:+c"
    assert ipvs.tunnel_info(T, 1, socket.htons(6080), 0) == "gue:6080:-c"
    assert ipvs.tunnel_info(T, 1, socket.htons(6080), 2) == "gue:6080:r+c"
    assert ipvs.tunnel_info(T, 2, None, 1) == "gre:+c"
    assert ipvs.tunnel_info(ipvs.IP_VS_CONN_F_DROUTE, None, None, None) == "n/a"


def test_f_selects_the_ipv4_service_of_a_mark_and_6_the_ipv6_one():
    """ipvsadm -L -f MARK lists the IPv4 service of that mark, -f MARK -6 the IPv6 one (a kernel
    table may hold both); lb listed both, and refused -6."""
    from lb.cli.main import _select_service, _service_key, build_parser
    from lb.dataplane.records import ServiceRow

    v4 = ServiceRow(protocol="", address=None, port=0, scheduler="rr", fwmark=80, family=4)
    v6 = ServiceRow(protocol="", address=None, port=0, scheduler="rr", fwmark=80, family=6)
    key4 = _service_key(build_parser().parse_args(["list", "-n", "-f", "80"]))
    args = build_parser().parse_args(["list", "-n", "-f", "80", "-6"])
    assert args.service == ("FWM", "80") and args.ipv6
    assert _select_service([v4, v6], key4) == [v4]
    assert _select_service([v4, v6], _service_key(args)) == [v6]
