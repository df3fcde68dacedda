"""IPv6 in the configuration: virtual servers, real servers, port groups, sorry servers,
nat_router and the persistence prefix length, in TOML and lvs.cf; and every refusal, with the
file:line: field message the other config tests assert.  Addresses: 2001:2::/48 (RFC 5180)."""

from __future__ import annotations

import dataclasses
import textwrap
from ipaddress import IPv4Address, IPv6Address, IPv6Interface
from pathlib import Path

import pytest

from lb.config import Config, ConfigError, load, loads, lvscf

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs"
CF6 = HERE / "lvscf" / "ipv6.cf"

A = IPv6Address


def doc(text: str) -> str:
    return textwrap.dedent(text)


def nopath(cfg: Config) -> Config:
    return dataclasses.replace(cfg, path=None)


G = '[global]\npublic_interface = "pub0"\n'  # lines 1-2 of many cases


def vs6(extra: str = "", address: str = "2001:2::10", real: str = "2001:2:0:1::11") -> str:
    """A direct-routing IPv6 service; ``extra`` lands on line 7 (after address and port)."""
    return G + doc(f"""\
        [[virtual_server]]
        name = "web6"
        address = "{address}"
        port = 80
        """) + extra + doc(f"""\
        [[virtual_server.real_server]]
        address = "{real}"
        """)


# --- the shipped examples -----------------------------------------------------------


def test_every_shipped_config_loads() -> None:
    files = sorted(CONFIGS.glob("*.toml")) + sorted(CONFIGS.glob("*.cf"))
    assert CONFIGS / "ipv6.toml" in files and CONFIGS / "ipv6-nat.toml" in files
    for f in files:
        assert load(f).path == f


def test_ipv6_dr_example() -> None:
    cfg = load(CONFIGS / "ipv6.toml")
    assert (cfg.network, cfg.nat_router) == ("direct", None)
    web, ftp = cfg.virtual_servers
    assert web.key == ("tcp", A("2001:2::10"), 443)
    assert web.vips == (A("2001:2::10"),)
    assert (web.persistent, web.pmask) == (300, 64)
    assert web.sorry_server == (A("2001:2:0:1::99"), None)
    assert [(r.name, r.address, r.effective_port(web), r.weight) for r in web.real_servers] == [
        ("rs1", A("2001:2:0:1::11"), 443, 1), ("rs2", A("2001:2:0:1::12"), 443, 2)]
    assert (ftp.key, ftp.address, ftp.port, ftp.vips, ftp.pmask) == (
        ("fwm", 621, 0), A("2001:2::11"), 21, (A("2001:2::11"),), 64)
    assert [(g.address, g.protocol, g.low, g.high) for g in ftp.port_groups] == [
        (A("2001:2::11"), "tcp", 21, 21), (A("2001:2::11"), "tcp", 30000, 30099)]
    assert [r.address for r in ftp.real_servers] == [A("2001:2:0:1::21")]


def test_ipv6_nat_example() -> None:
    cfg = load(CONFIGS / "ipv6-nat.toml")
    assert cfg.network == "nat"
    assert cfg.nat_router == IPv6Interface("2001:2:0:1::fffe/64")
    assert cfg.nat_device == "priv0"
    (web,) = cfg.virtual_servers
    assert web.key == ("tcp", A("2001:2::10"), 80) and web.pmask is None
    assert web.sorry_server == (A("2001:2:0:1::99"), 8080)
    assert [(r.address, r.effective_port(web)) for r in web.real_servers] == [
        (A("2001:2:0:1::11"), 8080), (A("2001:2:0:1::12"), 8080)]


def test_the_director_would_own_the_ipv6_vip_and_gateway() -> None:
    """What the active director adds: the VIP as a /128, nat_router with its prefix."""
    from lb.ha.addresses import wanted_addresses

    cfg = load(CONFIGS / "ipv6-nat.toml")
    assert [(a.ifname, a.address) for a in wanted_addresses(cfg)] == [
        ("pub0", IPv6Interface("2001:2::10/128")), ("priv0", IPv6Interface("2001:2:0:1::fffe/64"))]


def test_pmask_reaches_the_data_plane_spec_unchanged() -> None:
    from lb.dataplane.spec import RealSpec, service_spec

    web = load(CONFIGS / "ipv6.toml").virtual_servers[0]
    spec = service_spec(web, [RealSpec(web.real_servers[0].address, 443, 1)])
    assert (spec.address, spec.persistent, spec.pmask) == (A("2001:2::10"), 300, 64)


# --- acceptance -------------------------------------------------------------------------


@pytest.mark.parametrize("written, prefix", [
    ("64", 64), ('"64"', 64), ('"/64"', 64), ("128", 128), ('"/128"', 128), ("1", 1), ('"/48"', 48),
])
def test_ipv6_pmask_forms(written: str, prefix: int) -> None:
    cfg = loads(vs6(f"persistent = 300\npmask = {written}\n"))
    assert cfg.virtual_servers[0].pmask == prefix
    assert isinstance(cfg.virtual_servers[0].pmask, int)


def test_ipv4_pmask_unchanged_next_to_ipv6() -> None:
    text = vs6("pmask = 64\n") + doc("""\
        [[virtual_server]]
        name = "web4"
        address = "198.18.0.10"
        port = 80
        pmask = "/24"
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        """)
    web6, web4 = loads(text).virtual_servers
    assert (web6.pmask, web4.pmask) == (64, "255.255.255.0")


def test_ipv4_and_ipv6_services_on_the_same_port_are_distinct() -> None:
    text = vs6() + doc("""\
        [[virtual_server]]
        name = "web4"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        """)
    keys = [vs.key for vs in loads(text).virtual_servers]
    assert keys == [("tcp", A("2001:2::10"), 80), ("tcp", IPv4Address("198.18.0.10"), 80)]


def test_ipv6_nat_service_with_ports_and_sorry_server() -> None:
    text = doc("""\
        [global]
        public_interface = "pub0"
        private_interface = "priv0"
        network = "nat"
        nat_router = "2001:2:0:1::fffe/64"
        nat_router_device = "priv1"
        [[virtual_server]]
        name = "dns6"
        address = "2001:2::53"
        port = 53
        protocol = "udp"
        sorry_server = "[2001:2:0:1::99]:5353"
        [[virtual_server.real_server]]
        address = "2001:2:0:1::11"
        port = 5353
        """)
    cfg = loads(text)
    assert (cfg.nat_router, cfg.nat_device) == (IPv6Interface("2001:2:0:1::fffe/64"), "priv1")
    (vs,) = cfg.virtual_servers
    assert vs.key == ("udp", A("2001:2::53"), 53)
    assert vs.sorry_server == (A("2001:2:0:1::99"), 5353)
    assert vs.real_servers[0].effective_port(vs) == 5353


def test_nat_services_of_the_family_nat_router_is_not_are_warned_about() -> None:
    """One nat_router, one family: with [ha], the other family's real servers have no gateway
    that moves with the active director (lb check said ok without a word)."""
    text = doc("""\
        [global]
        public_interface = "pub0"
        private_interface = "priv0"
        network = "nat"
        nat_router = "2001:2:0:1::fffe/64"
        [[virtual_server]]
        name = "web4"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        [[virtual_server]]
        name = "web6"
        address = "2001:2::10"
        port = 80
        [[virtual_server.real_server]]
        address = "2001:2:0:1::11"
        [[virtual_server]]
        name = "mark4"
        fwmark = 7
        [[virtual_server.port_group]]
        address = "198.18.0.11"
        protocol = "tcp"
        ports = "80"
        [[virtual_server.real_server]]
        address = "198.18.1.12"
        """)
    # alone, the director's own private IPv4 address is the IPv4 real servers' gateway: no warning
    assert loads(text).warnings == ()
    # with [ha] the gateway must move with the active director: only nat_router does
    key = "/tmp/lb-test-ha.key"
    ha = text + f'[ha]\nprimary = "198.18.0.1"\nbackup = "198.18.0.3"\nkey_file = "{key}"\n'
    cfg = loads(ha)
    got = [(w.line, w.field, w.message) for w in cfg.warnings]
    assert [(line, field) for line, field, _ in got] == [(8, "virtual_server[0].address"),
                                                         (22, "virtual_server[2].port_group[0].address")]
    assert got[0][2] == ("NAT: this IPv4 virtual server's real servers have no gateway that moves with the active "
                         "director: nat_router (2001:2:0:1::fffe/64) is IPv6, and lb owns one nat_router (one "
                         "address family); their replies must reach the active director by a route of their own")
    direct = ha.replace('network = "nat"', 'network = "direct"')
    assert not [w for w in loads(direct).warnings if "NAT" in w.message]


@pytest.mark.parametrize("value", ["fe80::1/64", "2001:2:0:1::/127", "2001:2:0:1::1/128"])
def test_ipv6_nat_router_forms(value: str) -> None:
    """A link-local gateway is usual in IPv6; /127 (RFC 6164) and /128 have no anycast address."""
    text = G + f'private_interface = "priv0"\nnetwork = "nat"\nnat_router = "{value}"\n'
    assert loads(text).nat_router == IPv6Interface(value)


def test_ipv6_firewall_mark_service() -> None:
    text = G + doc("""\
        [[virtual_server]]
        name = "ftp6"
        fwmark = 621
        persistent = 600
        pmask = "/56"
        sorry_server = "2001:2:0:1::99"
          [[virtual_server.port_group]]
          address = "2001:2::11"
          ports = "21"
          [[virtual_server.port_group]]
          address = "2001:2::12"
          protocol = "udp"
          ports = "30000-30099"
          [[virtual_server.real_server]]
          address = "2001:2:0:1::21"
        """)
    (vs,) = loads(text).virtual_servers
    assert (vs.key, vs.vips, vs.pmask) == (("fwm", 621, 0), (A("2001:2::11"), A("2001:2::12")), 56)
    assert vs.sorry_server == (A("2001:2:0:1::99"), None)
    assert [(g.protocol, g.address) for g in vs.port_groups] == [("tcp", A("2001:2::11")), ("udp", A("2001:2::12"))]


def test_duplicate_ipv6_service_is_named_with_brackets() -> None:
    text = vs6() + doc("""\
        [[virtual_server]]
        name = "again"
        address = "2001:2:0:0::10"
        port = 80
        """)
    with pytest.raises(ConfigError) as ei:
        loads(text, path="v6.toml")
    assert str(ei.value) == ("v6.toml:11: virtual_server[1].address: duplicate virtual server tcp "
                             "[2001:2::10]:80 (already defined by virtual_server[0])")


# --- refusals: one issue each, file:line: field: message -----------------------------------


def bad(id: str, text: str, line: int, field: str, message: str) -> object:
    return pytest.param(text, line, field, message, id=id)


NAT6 = G + 'private_interface = "priv0"\nnetwork = "nat"\n'  # nat_router lands on line 5

FWM6 = G + doc("""\
    [[virtual_server]]
    name = "ftp6"
    fwmark = 621
      [[virtual_server.port_group]]
      address = "2001:2::11"
      ports = "21"
    """)  # lines 3-8; what follows starts on line 9

BAD6 = [
    bad("ipv4-real-under-ipv6-vip", vs6(real="198.18.1.11"), 8, "virtual_server[0].real_server[0].address",
        "real server address 198.18.1.11 is IPv4 but virtual server 'web6' is IPv6"),
    bad("ipv6-real-under-ipv4-vip", vs6(address="198.18.0.10"), 8, "virtual_server[0].real_server[0].address",
        "real server address 2001:2:0:1::11 is IPv6 but virtual server 'web6' is IPv4"),
    bad("ipv4-sorry-under-ipv6-vip", vs6('sorry_server = "198.18.1.99"\n'), 7, "virtual_server[0].sorry_server",
        "sorry server address 198.18.1.99 is IPv4 but the virtual server is IPv6"),
    bad("ipv6-sorry-without-brackets-and-port", vs6('sorry_server = "[2001:2:0:1::99]"\n'), 7,
        "virtual_server[0].sorry_server", "'[2001:2:0:1::99]' is not an address, ADDR:PORT or [ADDR6]:PORT"),
    bad("pmask-dotted-on-ipv6", vs6('pmask = "255.255.255.0"\n'), 7, "virtual_server[0].pmask",
        "'255.255.255.0' is an IPv4 netmask but the virtual server is IPv6: give a prefix length 1..128 (e.g. 64)"),
    bad("pmask-decimal", vs6('pmask = "6.4"\n'), 7, "virtual_server[0].pmask",
        'expected an IPv6 prefix length 1..128 (64, "64" or "/64"), got string "6.4"'),
    bad("pmask-zero", vs6("pmask = 0\n"), 7, "virtual_server[0].pmask",
        "an IPv6 prefix length must be between 1 and 128, got 0"),
    bad("pmask-129", vs6("pmask = 129\n"), 7, "virtual_server[0].pmask",
        "an IPv6 prefix length must be between 1 and 128, got 129"),
    bad("pmask-slash-zero", vs6('pmask = "/0"\n'), 7, "virtual_server[0].pmask",
        "an IPv6 prefix length must be between 1 and 128, got 0"),
    bad("pmask-string-200", vs6('pmask = "200"\n'), 7, "virtual_server[0].pmask",
        "an IPv6 prefix length must be between 1 and 128, got 200"),
    bad("pmask-word", vs6('pmask = "wide"\n'), 7, "virtual_server[0].pmask",
        'expected an IPv6 prefix length 1..128 (64, "64" or "/64"), got string "wide"'),
    bad("pmask-boolean", vs6("pmask = true\n"), 7, "virtual_server[0].pmask",
        'expected an IPv6 prefix length 1..128 (64, "64" or "/64"), got boolean true'),
    bad("pmask-integer-on-ipv4", vs6("pmask = 24\n", address="198.18.0.10", real="198.18.1.11"), 7,
        "virtual_server[0].pmask",
        "expected a string (an IPv4 netmask such as '255.255.255.0' or '/24'), got integer 24"),
    bad("vip-link-local", vs6(address="fe80::10"), 5, "virtual_server[0].address",
        "fe80::10 is an IPv6 link-local address, not usable without an interface"),
    bad("vip-with-zone", vs6(address="2001:2::10%pub0"), 5, "virtual_server[0].address",
        "2001:2::10%pub0 carries a zone (%pub0): write the address alone"),
    bad("vip-ipv4-mapped", vs6(address="::ffff:198.18.0.10"), 5, "virtual_server[0].address",
        "::ffff:c612:a is an IPv4-mapped IPv6 address: write the IPv4 address 198.18.0.10"),
    bad("vip-multicast", vs6(address="ff02::1"), 5, "virtual_server[0].address",
        "ff02::1 is a multicast address, not a usable unicast address"),
    bad("vip-unspecified", vs6(address="::"), 5, "virtual_server[0].address",
        ":: is an unspecified address, not a usable unicast address"),
    bad("real-link-local", vs6(real="fe80::11"), 8, "virtual_server[0].real_server[0].address",
        "fe80::11 is an IPv6 link-local address, not usable without an interface"),
    bad("port-groups-of-two-families", FWM6 + doc("""\
          [[virtual_server.port_group]]
          address = "198.18.0.11"
          ports = "30000-30099"
        """), 10, "virtual_server[0].port_group[1].address",
        "port group address 198.18.0.11 is IPv4 but virtual_server[0].port_group[0] (2001:2::11) is IPv6: "
        "the port groups of a firewall-mark service are all one address family"),
    bad("ipv4-real-under-ipv6-port-groups", FWM6 + doc("""\
          [[virtual_server.real_server]]
          address = "198.18.1.21"
        """), 10, "virtual_server[0].real_server[0].address",
        "real server address 198.18.1.21 is IPv4 but virtual server 'ftp6' is IPv6"),
    bad("ipv4-sorry-under-ipv6-port-groups", FWM6.replace('fwmark = 621\n', 'fwmark = 621\nsorry_server = "198.18.1.99"\n'),
        6, "virtual_server[0].sorry_server",
        "sorry server address 198.18.1.99 is IPv4 but the virtual server is IPv6"),
    bad("dotted-pmask-on-ipv6-port-groups", FWM6.replace('fwmark = 621\n', 'fwmark = 621\npmask = "255.255.0.0"\n'),
        6, "virtual_server[0].pmask",
        "'255.255.0.0' is an IPv4 netmask but the virtual server is IPv6: give a prefix length 1..128 (e.g. 64)"),
    bad("nat-router-ipv6-without-prefix", NAT6 + 'nat_router = "2001:2:0:1::fffe"\n', 5, "global.nat_router",
        "'2001:2:0:1::fffe' must carry a prefix length, e.g. '2001:2:0:1::fffe/64'"),
    bad("nat-router-ipv6-anycast", NAT6 + 'nat_router = "2001:2:0:1::/64"\n', 5, "global.nat_router",
        "2001:2:0:1:: is the Subnet-Router anycast address of 2001:2:0:1::/64, not a host address"),
    bad("nat-router-ipv6-prefix-too-long", NAT6 + 'nat_router = "2001:2:0:1::fffe/129"\n', 5, "global.nat_router",
        "'2001:2:0:1::fffe/129' is not a valid interface address (address/prefix)"),
    bad("nat-router-ipv6-multicast", NAT6 + 'nat_router = "ff02::2/64"\n', 5, "global.nat_router",
        "ff02::2 is a multicast address, not a usable unicast address"),
    bad("nat-router-with-zone", NAT6 + 'nat_router = "fe80::1%priv0/64"\n', 5, "global.nat_router",
        "fe80::1%priv0 carries a zone (%priv0): write the address alone"),
]


@pytest.mark.parametrize("text, line, field, message", BAD6)
def test_refused(text: str, line: int, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        loads(text, path="v6.toml")
    assert str(ei.value) == f"v6.toml:{line}: {field}: {message}"


def test_refusal_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "lb.toml"
    f.write_text(vs6('pmask = "255.255.255.0"\n'))
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert str(ei.value).startswith(f"{f}:7: virtual_server[0].pmask: '255.255.255.0' is an IPv4 netmask")


def test_pmask_that_no_family_takes_is_reported_next_to_a_bad_address() -> None:
    with pytest.raises(ConfigError) as ei:
        loads(vs6('pmask = "wide"\n', address="2001:2::zz"), path="v6.toml")
    assert str(ei.value).splitlines() == [
        "v6.toml:5: virtual_server[0].address: '2001:2::zz' is not a valid IP address",
        "v6.toml:7: virtual_server[0].pmask: expected an IPv4 netmask (e.g. '255.255.255.0') or an IPv6 "
        "prefix length (e.g. 64), got string \"wide\"",
    ]


def test_address_error_does_not_cascade_into_pmask() -> None:
    """A pmask either family takes is not reported while the family is unknown."""
    with pytest.raises(ConfigError) as ei:
        loads(vs6("pmask = 64\n", address="2001:2::zz"))
    assert [(i.line, i.field) for i in ei.value.issues] == [(5, "virtual_server[0].address")]


# --- lvs.cf -----------------------------------------------------------------------------------


def test_lvscf_with_ipv6() -> None:
    cfg = load(CF6)
    assert cfg.nat_router == IPv6Interface("2001:2:0:1::fffe/64")
    assert (cfg.public_interface, cfg.nat_device, cfg.private_interface) == ("eth0", "eth1", "eth1")
    web6, ftp6, web4 = cfg.virtual_servers
    assert (web6.key, web6.pmask, web6.sorry_server) == (
        ("tcp", A("2001:2::10"), 80), 64, (A("2001:2:0:1::99"), 8080))
    assert [(r.address, r.port) for r in web6.real_servers] == [(A("2001:2:0:1::11"), 8080)]
    assert (ftp6.vips, ftp6.pmask) == ((A("2001:2::11"),), 56)
    assert [(g.low, g.high) for g in ftp6.port_groups] == [(21, 21), (30000, 30099)]
    assert web4.pmask == "255.255.255.0"


def test_lvscf_ipv6_round_trips() -> None:
    cfg = nopath(load(CF6))
    text = lvscf.dumps(cfg)
    assert "nat_router = 2001:2:0:1::fffe eth1" in text.splitlines()
    assert "nat_nmask = 64" in text.splitlines()
    assert "     pmask = 64" in text.splitlines() and "     pmask = 56" in text.splitlines()
    assert lvscf.loads(text) == cfg
    assert loads(lvscf.dumps_toml(cfg)) == cfg
    for name in ("ipv6.toml", "ipv6-nat.toml"):
        toml_cfg = nopath(load(CONFIGS / name))
        back = lvscf.loads(lvscf.dumps(toml_cfg))
        if toml_cfg.nat_router is not None and toml_cfg.nat_router_device is None:
            # lvs.cf's nat_router always names its device (as in test_lvscf)
            toml_cfg = dataclasses.replace(toml_cfg, nat_router_device=toml_cfg.private_interface)
        assert back == toml_cfg


def _cf_issue(text: str) -> str:
    with pytest.raises(ConfigError) as ei:
        lvscf.loads(text, path="lvs.cf")
    return str(ei.value)


CF_HEAD = "network = nat\nnat_router = 2001:2:0:1::fffe eth1\nnat_nmask = 64\n"
CF_VIRTUAL = doc("""\
    virtual web6 {
         address = 2001:2::10 eth0
         port = 80
         pmask = 64
         server rs1 {
              address = 2001:2:0:1::11
         }
    }
    """)  # lines 4-11 after CF_HEAD


def test_lvscf_head_is_good() -> None:
    assert lvscf.loads(CF_HEAD + CF_VIRTUAL).virtual_servers[0].pmask == 64


@pytest.mark.parametrize("value", ["64", "/64"])
def test_lvscf_ipv6_vip_nmask_is_a_prefix_length(value: str) -> None:
    """vip_nmask has no effect (lb adds the VIP as a host address): an IPv6 virtual's is a prefix
    length, as its pmask and nat_nmask; it was refused as "not a contiguous IPv4 netmask"."""
    text = CF_HEAD + CF_VIRTUAL.replace("port = 80", f"port = 80\n     vip_nmask = {value}")
    cfg = lvscf.loads(text, path="lvs.cf")
    assert [(w.line, w.field, w.message) for w in cfg.warnings if w.field.endswith("vip_nmask")] == [
        (7, "virtual[web6].vip_nmask", "no effect: lb adds the VIP as a host address (/128), not with prefix "
                                       "length 64")]
    assert "     vip_nmask = 64" in lvscf.dumps(cfg, lvscf.loads_with_extras(text)[1]).splitlines()
    host = lvscf.loads(text.replace(f"vip_nmask = {value}", "vip_nmask = 128"))
    assert not [w for w in host.warnings if w.field.endswith("vip_nmask")]
    # an IPv4 netmask (a block copied from an IPv4 one, as Piranha's files carry it in every
    # virtual) has no effect either: warned about and kept, never a refusal of the file
    ipv4 = text.replace(f"vip_nmask = {value}", "vip_nmask = 255.255.255.255")
    cfg = lvscf.loads(ipv4, path="lvs.cf")
    assert [(w.line, w.message) for w in cfg.warnings if w.field.endswith("vip_nmask")] == [
        (7, "no effect: an IPv4 netmask (255.255.255.255) on an IPv6 virtual server; lb adds the VIP as a host "
            "address (/128)")]
    assert "     vip_nmask = 255.255.255.255" in lvscf.dumps(cfg, lvscf.loads_with_extras(ipv4)[1]).splitlines()
    assert _cf_issue(text.replace(f"vip_nmask = {value}", "vip_nmask = 255.0.255.0")) == (
        "lvs.cf:7: virtual[web6].vip_nmask: expected an IPv6 prefix length 1..128 (64 or /64), got '255.0.255.0'")


@pytest.mark.parametrize("text, expected", [
    (CF_HEAD.replace("nat_nmask = 64\n", "") + CF_VIRTUAL,
     "lvs.cf:2: nat_nmask: an IPv6 nat_router needs nat_nmask = PREFIX LENGTH (e.g. nat_nmask = 64): "
     "Piranha's default 255.255.255.0 is an IPv4 netmask"),
    (CF_HEAD.replace("nat_nmask = 64", "nat_nmask = 255.255.255.0") + CF_VIRTUAL,
     "lvs.cf:3: nat_nmask: '255.255.255.0' is an IPv4 netmask but nat_router is IPv6: give a prefix "
     "length 1..128 (e.g. 64)"),
    (CF_HEAD.replace("nat_nmask = 64", "nat_nmask = 0") + CF_VIRTUAL,
     "lvs.cf:3: nat_nmask: expected an IPv6 prefix length 1..128 (64 or /64), got '0'"),
    (CF_HEAD + CF_VIRTUAL.replace("pmask = 64", "pmask = 255.255.255.0"),
     "lvs.cf:7: virtual[web6].pmask: '255.255.255.0' is an IPv4 netmask but the virtual server is IPv6: "
     "give a prefix length 1..128 (e.g. 64)"),
    (CF_HEAD + CF_VIRTUAL.replace("pmask = 64", "pmask = 129"),
     "lvs.cf:7: virtual[web6].pmask: an IPv6 prefix length must be between 1 and 128, got 129"),
    (CF_HEAD + CF_VIRTUAL.replace("address = 2001:2:0:1::11", "address = 198.18.1.11"),
     "lvs.cf:9: virtual[web6].server[rs1].address: real server address 198.18.1.11 is IPv4 but "
     "virtual server 'web6' is IPv6"),
], ids=["nat-nmask-missing", "nat-nmask-dotted", "nat-nmask-zero", "pmask-dotted", "pmask-129", "family"])
def test_lvscf_ipv6_refusals(text: str, expected: str) -> None:
    assert _cf_issue(text) == expected
