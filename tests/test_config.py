"""Tests of lb.config: model, TOML loader, validation messages and line locator."""

from __future__ import annotations

import dataclasses
import re
import textwrap
import tomllib
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.config import (
    Config,
    ConfigError,
    ConfigIssue,
    Defense,
    RealServer,
    Tables,
    Timeouts,
    VirtualServer,
    load,
    loads,
)
from lb.config.locate import Locator, locate

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def doc(text: str) -> str:
    """Dedent a test document; line 1 is the first line after the opening quotes."""
    return textwrap.dedent(text)


# --- the shipped configurations ----------------------------------------------------


def _check_lab(cfg: Config) -> VirtualServer:
    assert cfg.instance == "lab"
    assert cfg.public_interface == "pub0"
    assert cfg.private_interface == "priv0"
    assert cfg.tables == Tables()
    assert cfg.timeouts == Timeouts()
    (vs,) = cfg.virtual_servers
    assert vs.name == "web"
    assert vs.key == ("tcp", IPv4Address("198.18.0.10"), 80)
    assert vs.scheduler == "rr"
    assert vs.persistent == 0 and vs.pmask is None and vs.active and vs.device is None
    assert cfg.vip_device(vs) == "pub0"
    assert [(r.name, str(r.address), r.effective_port(vs), r.weight, r.active) for r in vs.real_servers] == [
        ("rs1", "198.18.1.11", 80, 1, True),
        ("rs2", "198.18.1.12", 80, 1, True),
        ("rs3", "198.18.1.13", 80, 1, True),
    ]
    return vs


def test_lab_dr() -> None:
    path = CONFIGS / "lab-dr.toml"
    cfg = load(path)
    assert cfg.path == path
    assert cfg.network == "direct"
    assert cfg.nat_router is None
    _check_lab(cfg)


def test_lab_nat() -> None:
    cfg = load(str(CONFIGS / "lab-nat.toml"))
    assert cfg.network == "nat"
    assert cfg.nat_router == IPv4Interface("198.18.1.254/24")
    assert cfg.nat_router_device == "priv0"
    assert cfg.nat_device == "priv0"
    _check_lab(cfg)


def test_example() -> None:
    cfg = load(CONFIGS / "example.toml")
    assert cfg.instance == "example"
    assert cfg.network == "nat"
    assert cfg.nat_router == IPv4Interface("198.18.1.254/24")
    assert cfg.tables == Tables(connections=65536, services=256, real_servers=4096, reals_per_service=64,
                                embryonic=16384, connections_ipv6=16384)
    assert cfg.tables.embryonic_size() == Tables(connections=65536).embryonic_size() == 16384
    assert cfg.timeouts == Timeouts(tcp=900, tcpfin=120, udp=300)
    assert cfg.defense == Defense()
    web, dns, ftp = cfg.virtual_servers
    assert (ftp.fwmark, ftp.key, ftp.address, ftp.port, ftp.vips) == (
        21, ("fwm", 21, 0), IPv4Address("198.18.0.11"), 21, (IPv4Address("198.18.0.11"),))
    assert [(g.protocol, g.low, g.high) for g in ftp.port_groups] == [("tcp", 21, 21), ("tcp", 10000, 10100)]
    assert ftp.scheduler_flags == ("sh-fallback", "sh-port")
    assert (web.real_servers[0].u_threshold, web.real_servers[0].l_threshold) == (1000, 800)
    assert (web.name, web.scheduler, web.device) == ("web", "wrr", "pub0")
    rs1, rs2 = web.real_servers
    assert (rs1.name, rs1.port, rs1.weight, rs1.effective_port(web)) == ("rs1", 8080, 3, 8080)
    assert (rs2.name, rs2.port, rs2.weight, rs2.effective_port(web)) == ("198.18.1.12", None, 0, 80)
    assert dns.key == ("udp", IPv4Address("198.18.0.10"), 53)
    assert (dns.persistent, dns.pmask) == (300, "255.255.255.0")
    assert [r.active for r in dns.real_servers] == [True, False]


def _tables_of(doc: dict, path: tuple = ()):
    """Every table of a parsed document, as (path without array indexes, its keys)."""
    yield path, set(doc)
    for key, value in doc.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                yield from _tables_of(item, path + (key,))


def test_example_sets_every_key_the_loader_takes() -> None:
    """configs/example.toml documents every key: a key the TOML loader takes (its SCHEMA, the
    list its tables check keys against) fails here until example.toml sets and describes it."""
    from lb.config import toml as loader

    example = tomllib.loads((CONFIGS / "example.toml").read_text())
    written: dict[tuple, set[str]] = {}
    for path, keys in _tables_of(example):
        written.setdefault(path, set()).update(keys)
    missing = {path: sorted(set(keys) - written.get(path, set())) for path, keys in loader.SCHEMA.items()}
    assert {path: keys for path, keys in missing.items() if keys} == {}
    # and the SCHEMA is the loader's: each of its tables is a key of its parent table
    for path in loader.SCHEMA:
        if path:
            assert path[-1] in loader.SCHEMA[path[:-1]], path


def test_example_marks_each_key_the_loader_requires() -> None:
    """example.toml says keys not marked "required" may be left out: each one-line key whose
    removal the loader refuses as a missing required key says "required" (in its comment or the
    one just above it), where the example first sets it."""
    lines = (CONFIGS / "example.toml").read_text().splitlines()
    seen, unmarked = set(), []
    for n, line in enumerate(lines):
        m = re.match(r"\s*(\w+) = ", line)
        if not m or line.rstrip().endswith(("[", "{")):
            continue
        try:
            loads("\n".join(lines[:n] + [""] + lines[n + 1:]))
            continue
        except ConfigError as e:
            missing = {re.sub(r"\[\d+\]", "", i.field) for i in e.issues
                       if i.field.endswith(m.group(1)) and i.message == "required key is missing"} - seen
        seen |= missing
        above = n
        while above > 0 and lines[above - 1].lstrip().startswith("#"):
            above -= 1
        said = [line.partition("#")[2]] + lines[above:n]
        if missing and not any("required" in c.lower() for c in said):
            unmarked.append((n + 1, line.strip()))
    # the walk found the required keys (nothing found, nothing unmarked: it proved nothing)
    assert {"global.public_interface", "virtual_server.name", "virtual_server.real_server.address"} <= seen, seen
    assert unmarked == []


def test_example_control_names_the_group_and_socket_install_makes() -> None:
    """[control]'s example admin_group is the web console's group `make install` creates, and its
    comment names the socket the groups' members use (/run/lb stays root's)."""
    from lb import control

    script = (CONFIGS.parent / "scripts" / "install-director.sh").read_text()
    made = re.search(r"useradd --system --user-group .* (\S+)$", script, re.M)
    assert made and load(CONFIGS / "example.toml").control.admin_group == made.group(1)
    assert control.shared_socket_path("<instance>") in (CONFIGS / "example.toml").read_text()


def test_the_loader_takes_exactly_its_schema() -> None:
    """Every key of SCHEMA is accepted where it stands, and any other key is refused there."""
    text = (CONFIGS / "example.toml").read_text()
    cfg = loads(text)
    assert cfg.web.listen == "127.0.0.1:3636" and cfg.network == "nat"
    for header in ("[global]", "[web]", "[metrics]", "[control]", "[ha]", "[timeouts]", "[tables]", "[virtual_server.monitor]",
                   "[virtual_server.load_monitor]"):
        with pytest.raises(ConfigError) as ei:
            loads(re.sub(rf"^(\s*){re.escape(header)}$", r"\g<0>\n\1no_such_key = 1", text, count=1, flags=re.M))
        assert [i.message.split(" (")[0] for i in ei.value.issues] == ["unknown key 'no_such_key'"], header


def test_metrics_table() -> None:
    from lb.config.model import Metrics

    base = '[global]\npublic_interface = "eth0"\n'
    assert loads(base).metrics == Metrics() and not Metrics().enabled
    assert Metrics().listen == "127.0.0.1:9640"
    cfg = loads(base + '[metrics]\nenabled = true\nlisten = "[::1]:9100"\n')
    assert cfg.metrics.enabled and cfg.metrics.listen == "[::1]:9100"
    assert loads(base + "[metrics]\nenabled = true\n").metrics.listen == "127.0.0.1:9640"
    with pytest.raises(ConfigError) as ei:
        loads(base + '[metrics]\nenabled = "yes"\nlisten = "0.0.0.0:99999"\n', "lb.toml")
    assert [str(i) for i in ei.value.issues] == [
        'lb.toml:4: metrics.enabled: expected a boolean (true or false), got string "yes"',
        'lb.toml:5: metrics.listen: port must be between 1 and 65535, got "99999"']


def test_web_and_metrics_beyond_this_host_are_warned_about() -> None:
    """The console's password and session cookie over plain HTTP on an address beyond this host,
    and the metrics endpoint (no authentication) on every address: warnings naming listen (lb
    check said ok)."""
    base = '[global]\npublic_interface = "eth0"\n'
    both = base + ('[web]\nenabled = true\nlisten = "198.18.0.1:3636"\n'
                   '[metrics]\nenabled = true\nlisten = "[::]:9640"\n')
    got = [(w.line, w.field, w.message) for w in loads(both, "lb.toml").warnings]
    assert got == [
        (5, "web.listen", "the console listens on 198.18.0.1:3636, beyond this host, over plain HTTP: its password "
                          "and session cookie would cross the network in clear; set tls_cert and tls_key, or listen "
                          "on 127.0.0.1 behind a TLS proxy (trusted_proxies)"),
        (8, "metrics.listen", "the endpoint listens on [::]:9640, every address of this host, and has no "
                              "authentication: listen on the management address and open it only to the "
                              "Prometheus server (a firewall rule), or on 127.0.0.1")]
    # the metrics endpoint on a management address of its own: the documented setup, no warning
    assert [w.field for w in loads(both.replace('"[::]:9640"', '"198.18.0.1:9640"')).warnings] == ["web.listen"]
    tls = both.replace('listen = "198.18.0.1:3636"\n', 'listen = "198.18.0.1:3636"\ntls_cert = "w.crt"\n'
                                                      'tls_key = "w.key"\n')
    proxied = both.replace('listen = "198.18.0.1:3636"\n', 'listen = "198.18.0.1:3636"\n'
                                                          'trusted_proxies = ["198.18.0.5"]\n')
    for text in (tls, proxied):
        assert [w.field for w in loads(text).warnings] == ["metrics.listen"]
    local = base + '[web]\nenabled = true\nlisten = "[::1]:3636"\n[metrics]\nenabled = true\nlisten = "127.0.0.2:9640"\n'
    assert loads(local).warnings == ()
    assert loads(both.replace("enabled = true", "enabled = false")).warnings == ()
    # lvs.cf says its own keys
    from lb.config import lvscf

    cf = lvscf.loads("network = direct\nlb_public_interface = eth0\nlb_metrics_enabled = 1\n"
                     "lb_metrics_listen = 0.0.0.0:9640\n", "lvs.cf")
    assert [(w.line, w.field) for w in cf.warnings] == [(4, "lb_metrics_listen")]


def test_example_lists_every_scheduler() -> None:
    from lb.config.model import SCHEDULERS

    line = next(line for line in (CONFIGS / "example.toml").read_text().splitlines()
                if line.startswith("scheduler = ") and "#" in line)
    assert set(line.split("#", 1)[1].replace(";", " ").split()) >= set(SCHEDULERS)


# --- defaults and model behaviour ----------------------------------------------------


def test_minimal_defaults() -> None:
    cfg = loads('[global]\npublic_interface = "eth0"\n')
    assert cfg == Config(path=None, public_interface="eth0")
    assert cfg.instance == "default"
    assert cfg.network == "direct"
    assert cfg.virtual_servers == ()
    assert cfg.nat_device is None


def test_service_defaults_and_no_real_servers() -> None:
    cfg = loads(doc("""\
        [global]
        public_interface = "pub0"
        [[virtual_server]]
        name = "dns"
        address = "198.18.0.53"
        port = 53
        protocol = "udp"
        device = "pub1"
        """))
    (vs,) = cfg.virtual_servers
    assert vs == VirtualServer(
        name="dns", address=IPv4Address("198.18.0.53"), port=53, protocol="udp", device="pub1"
    )
    assert vs.scheduler == "wlc" and vs.persistent == 0 and vs.active
    assert cfg.vip_device(vs) == "pub1"


def test_real_server_defaults_and_nat_port() -> None:
    cfg = loads(doc("""\
        [global]
        public_interface = "pub0"
        private_interface = "priv0"
        network = "nat"
        nat_router = "10.1.0.1/16"
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        persistent = 60
        pmask = "/24"
        [[virtual_server.real_server]]
        address = "10.1.2.3"
        port = 8080
        [[virtual_server.real_server]]
        name = "second"             # the default name (the address) would clash
        address = "10.1.2.3"
        """))
    (vs,) = cfg.virtual_servers
    assert vs.pmask == "255.255.255.0"  # normalised
    a, b = vs.real_servers
    assert a == RealServer(name="10.1.2.3", address=IPv4Address("10.1.2.3"), port=8080)
    assert b == RealServer(name="second", address=IPv4Address("10.1.2.3"), port=None)
    assert (a.effective_port(vs), b.effective_port(vs)) == (8080, 80)
    assert cfg.nat_device == "priv0"  # nat_router_device defaults to private_interface


def test_nat_router_prefixes_down_to_8_and_16_load() -> None:
    """Shorter ones are refused (BAD): the prefix is a connected route on the private interface."""
    for value in ("10.0.1.254/8", "2001:db8::1/16"):
        assert str(loads(G + f'nat_router = "{value}"\n').nat_router) == value


def test_model_is_frozen() -> None:
    cfg = loads('[global]\npublic_interface = "eth0"\n')
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.instance = "x"  # type: ignore[misc]


def test_loads_uses_path_in_messages() -> None:
    with pytest.raises(ConfigError) as ei:
        loads("[global]\n", path="etc/lb.toml")
    assert str(ei.value) == "etc/lb.toml:1: global.public_interface: required key is missing"


# --- malformed configurations ------------------------------------------------------
#
# Each case: document, expected line, expected field path, message fragment.
# Each must produce exactly one issue (no cascading follow-up errors).

G = '[global]\npublic_interface = "pub0"\n'  # lines 1-2 of many cases


def bad(id: str, text: str, line: int | None, field: str, fragment: str) -> object:
    return pytest.param(doc(text), line, field, fragment, id=id)


FWM = """\
[[virtual_server]]
name = "ftp"
fwmark = 21
  [[virtual_server.port_group]]
  address = "198.18.0.10"
  ports = "21"
  [[virtual_server.port_group]]
  address = "198.18.0.10"
  ports = "30000-30099"
"""

VS_AT_10 = '[[virtual_server]]\nname = "web"\naddress = "198.18.0.10"\nport = 80\n'

HA_HEAD = """\
[ha]
primary = "198.18.0.1"
backup = "198.18.0.3"
key_file = "/etc/lb/ha.key"
"""

BAD = [
    bad("syntax-error", """\
        [global]
        public_interface = "pub0"
        network =
        """, 3, "", "TOML syntax error: Invalid value"),
    bad("duplicate-key-is-syntax", """\
        [global]
        public_interface = "pub0"
        public_interface = "pub1"
        """, 3, "", "Cannot overwrite a value"),
    bad("unknown-key-suggestion", """\
        [global]
        public_interface = "pub0"

        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80

          [[virtual_server.real_server]]
          address = "198.18.1.11"
          wieght = 2
        """, 11, "virtual_server[0].real_server[0].wieght", "unknown key 'wieght' (did you mean 'weight'?)"),
    bad("unknown-table-suggestion", G + """\
        [[virtual_servers]]
        name = "web"
        """, 3, "virtual_servers", "unknown table 'virtual_servers' (did you mean 'virtual_server'?)"),
    bad("unknown-key-no-suggestion", G + """\
        [tables]
        zzz = 1
        """, 4, "tables.zzz", "unknown key 'zzz' (expected one of: connections, services"),
    bad("real-server-at-top-level", G + """\
        [[real_server]]
        address = "198.18.1.11"
        """, 3, "real_server", "write [[virtual_server.real_server]]"),
    bad("bool-as-int-weight", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        weight = true
        """, 9, "virtual_server[0].real_server[0].weight", "expected an integer, got boolean true"),
    bad("float-port", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80.0
        """, 6, "virtual_server[0].port", "expected an integer, got float 80.0"),
    bad("string-port", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = "80"
        """, 6, "virtual_server[0].port", 'expected an integer, got string "80"'),
    bad("string-bool", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        active = "yes"
        """, 7, "virtual_server[0].active", 'expected a boolean (true or false), got string "yes"'),
    bad("missing-real-address", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80

        [[virtual_server.real_server]]   # line 8: the missing key is reported here
        name = "rs1"
        """, 8, "virtual_server[0].real_server[0].address", "required key is missing"),
    bad("missing-vs-name", G + """\
        [[virtual_server]]
        address = "198.18.0.10"
        port = 80
        """, 3, "virtual_server[0].name", "required key is missing"),
    bad("missing-global", """\
        [tables]
        services = 8
        """, None, "global.public_interface", "required key is missing"),
    bad("bad-ip", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.300"
        port = 80
        """, 5, "virtual_server[0].address", "'198.18.0.300' is not a valid IP address"),
    bad("loopback-real", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        address = "127.0.0.1"
        """, 8, "virtual_server[0].real_server[0].address", "loopback address, not a usable unicast address"),
    bad("port-0", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 0
        """, 6, "virtual_server[0].port", "port 0 (IPVS's persistent service of every port) is not supported"),
    bad("port-70000", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 70000
        """, 6, "virtual_server[0].port", "must be between 1 and 65535, got 70000"),
    bad("weight-negative", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [[virtual_server.real_server]]
          address = "198.18.1.11"
          weight = -1
        """, 9, "virtual_server[0].real_server[0].weight", "must be between 0 and 65535, got -1"),
    bad("persistent-negative", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        persistent = -1
        """, 7, "virtual_server[0].persistent", "must be between 0 and 2147483, got -1"),
    bad("unknown-protocol", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        protocol = "sctp"
        """, 7, "virtual_server[0].protocol", "unknown protocol 'sctp' (expected 'tcp' or 'udp')"),
    bad("unknown-scheduler", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        scheduler = "roundrobin"
        """, 7, "virtual_server[0].scheduler", "unknown scheduler 'roundrobin' (valid: rr, wrr, lc, wlc, sed, nq, dh, sh, mh, fo, ovf, lblc, lblcr, twos)"),
    bad("nat-without-nat-router", """\
        # comment line
        [global]
        public_interface = "pub0"
        private_interface = "priv0"
        network = "nat"
        """, 2, "global.nat_router", 'required when network = "nat"'),
    bad("nat-without-private-interface", """\
        [global]
        public_interface = "pub0"
        network = "nat"
        nat_router = "198.18.1.254/24"
        """, 1, "global.private_interface", 'required when network = "nat"'),
    bad("nat-router-without-prefix", """\
        [global]
        public_interface = "pub0"
        private_interface = "priv0"
        network = "nat"
        nat_router = "198.18.1.254"
        """, 5, "global.nat_router", "'198.18.1.254' must carry a prefix length"),
    bad("nat-router-network-address", """\
        [global]
        public_interface = "pub0"
        private_interface = "priv0"
        network = "nat"
        nat_router = "198.18.1.0/24"
        """, 5, "global.nat_router", "198.18.1.0 is the network address of 198.18.1.0/24"),
    # a connected route to 0.0.0.0/0 on the private interface would take the default route
    bad("nat-router-prefix-0", """\
        [global]
        public_interface = "pub0"
        private_interface = "priv0"
        network = "nat"
        nat_router = "10.0.1.254/0"
        """, 5, "global.nat_router", "prefix length 0 (netmask 0.0.0.0) is shorter than /8: lb would route "
        "0.0.0.0/0 to the private interface; give the real servers' subnet, e.g. '10.0.1.254/24'"),
    bad("nat-router-prefix-7", G + 'nat_router = "10.0.1.254/7"\n', 3, "global.nat_router",
        "prefix length 7 (netmask 254.0.0.0) is shorter than /8"),
    bad("nat-router-ipv6-prefix-15", G + 'nat_router = "2001:db8::1/15"\n', 3, "global.nat_router",
        "prefix length 15 is shorter than /16: lb would route 2000::/15 to the private interface; "
        "give the real servers' subnet, e.g. '2001:db8::1/64'"),
    bad("tunnel-port-change", """\
        [global]
        public_interface = "pub0"
        network = "tunnel"
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        port = 8080
        """, 10, "virtual_server[0].real_server[0].port", "tunneling cannot change the destination port"),
    bad("network-unknown", """\
        [global]
        public_interface = "pub0"
        network = "masq"
        """, 3, "global.network", "unknown network 'masq'"),
    bad("duplicate-vip", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        [[virtual_server]]
        name = "web2"
        address = "198.18.0.10"
        port = 80
        """, 9, "virtual_server[1].address",
        "duplicate virtual server tcp 198.18.0.10:80 (already defined by virtual_server[0])"),
    # one VIP, two interfaces: the director would add and announce it on both links
    bad("vip-on-two-devices", G + VS_AT_10 + '[[virtual_server]]\nname = "dns"\naddress = "198.18.0.10"\n'
        'port = 53\ndevice = "pub1"\n', 11, "virtual_server[1].device",
        "VIP 198.18.0.10 on pub1, but virtual_server[0] puts it on pub0 (public_interface): a VIP is on one "
        "interface (lb would add and announce it on both)"),
    bad("fwmark-vip-on-two-devices", G + VS_AT_10 + 'device = "pub1"\n' + FWM, 8, "virtual_server[1].device", "VIP 198.18.0.10 on pub0 (public_interface), but "
        "virtual_server[0] puts it on pub1"),
    bad("duplicate-vs-name", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 443
        """, 8, "virtual_server[1].name", "duplicate virtual server name 'web'"),
    bad("duplicate-real", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        port = 80
        """, 10, "virtual_server[0].real_server[1].address",
        "duplicate real server 198.18.1.11:80 in virtual server 'web' "
        "(already defined by virtual_server[0].real_server[0])"),
    bad("duplicate-real-name", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        name = "rs1"
        address = "198.18.1.11"
        [[virtual_server.real_server]]
        name = "rs1"
        address = "198.18.1.12"
        """, 11, "virtual_server[0].real_server[1].name", "duplicate real server name 'rs1'"),
    bad("default-names-clash", """\
        [global]
        public_interface = "pub0"
        network = "nat"
        private_interface = "priv0"
        nat_router = "10.1.0.1/16"
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        address = "10.1.2.3"
        port = 8080
        [[virtual_server.real_server]]
        address = "10.1.2.3"
        port = 8081
        """, 13, "virtual_server[0].real_server[1].name",
        "duplicate real server name '10.1.2.3' in virtual server 'web' (already used by "
        "virtual_server[0].real_server[0]); the name defaults to the address"),
    # a firewall-mark service's real servers take each connection's port: the message names the
    # address, not the first port group's port (which read as if the server had one)
    bad("duplicate-real-fwmark", G + FWM + """\
          [[virtual_server.real_server]]
          address = "198.18.1.11"
          [[virtual_server.real_server]]
          address = "198.18.1.11"
        """, 15, "virtual_server[0].real_server[1].address",
        "duplicate real server 198.18.1.11 in virtual server 'ftp' "
        "(already defined by virtual_server[0].real_server[0])"),
    # the director's own addresses are nobody else's: a real server or sorry server at a VIP
    # would have lb send the connections back to itself, a nat_router at a VIP or a real server's
    # address puts one address on two interfaces or two hosts
    bad("real-server-is-a-vip", G + VS_AT_10 + '[[virtual_server]]\nname = "dns"\naddress = "198.18.0.11"\n'
        'port = 53\n[[virtual_server.real_server]]\naddress = "198.18.0.10"\n', 12,
        "virtual_server[1].real_server[0].address", "198.18.0.10 is the VIP of virtual_server[0], an address "
        "of this director: a real server must be another host"),
    bad("sorry-server-is-a-vip", G + VS_AT_10 + 'sorry_server = "198.18.0.10"\n', 7,
        "virtual_server[0].sorry_server", "198.18.0.10 is the VIP of virtual_server[0], an address of this "
        "director: the sorry server must be another host"),
    bad("fwmark-real-server-is-a-vip", G + FWM + '[[virtual_server.real_server]]\naddress = "198.18.0.10"\n', 13,
        "virtual_server[0].real_server[0].address", "198.18.0.10 is the VIP of virtual_server[0]"),
    bad("nat-router-is-a-vip", """\
        [global]
        public_interface = "pub0"
        private_interface = "priv0"
        network = "nat"
        nat_router = "198.18.0.10/24"
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        """, 5, "global.nat_router", "198.18.0.10 is the VIP of virtual_server[0]: the real servers' gateway "
        "needs an address of its own"),
    bad("nat-router-is-a-real-server", """\
        [global]
        public_interface = "pub0"
        private_interface = "priv0"
        network = "nat"
        nat_router = "198.18.1.11/24"
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        """, 5, "global.nat_router", "198.18.1.11 is the address of virtual_server[0].real_server[0]: the "
        "real servers' gateway is the director's"),
    # ipvsadm's port 0 (every port, with persistence) is a firewall-mark service in lb: say so
    bad("port-0-persistent", G + '[[virtual_server]]\nname = "all"\naddress = "198.18.0.10"\nport = 0\npersistent = 300\n',
        6, "virtual_server[0].port", "port 0 (IPVS's persistent service of every port) is not supported: make it "
        "a firewall-mark service"),
    bad("port-false", G + '[[virtual_server]]\nname = "all"\naddress = "198.18.0.10"\nport = false\n',
        6, "virtual_server[0].port", "expected an integer, got boolean false"),
    # ipvsadm takes one fwmark service per family; lb one per mark: the message says why
    bad("fwmark-twice-across-families", G + FWM + FWM.replace('"ftp"', '"ftp6"').replace('198.18.0.10', '2001:2::10'),
        14, "virtual_server[1].fwmark", "duplicate fwmark 21 (already used by virtual_server[0]): IPVS keeps one "
        "service per mark and address family, lb one per mark (the IPv4 and IPv6 services need marks of their own)"),
    # lb_fwm_ranges has tables.services entries, one per (address, protocol) of the port groups:
    # the data plane's plan refused the table at start ("3 (address, protocol) pairs ...") with no line
    bad("fwmark-pairs-beyond-services", G + '[tables]\nservices = 2\n' + FWM + """\
          [[virtual_server.port_group]]
          address = "198.18.0.11"
          ports = "21"
          [[virtual_server.port_group]]
          address = "198.18.0.11"
          protocol = "udp"
          ports = "21"
        """, 18, "virtual_server[0].port_group[3].address", "too many (address, protocol) pairs in the port "
        "groups of firewall-mark services: more than tables.services (2)"),
    bad("pmask-prefix-beyond-32", G + VS_AT_10 + 'persistent = 300\npmask = "/33"\n', 8, "virtual_server[0].pmask",
        "an IPv4 prefix length must be between 0 and 32, got 33"),
    # the header to write has no index: [[virtual_server[0].real_server]] is no TOML
    bad("real-server-as-a-table", G + VS_AT_10 + '[virtual_server.real_server]\naddress = "198.18.1.11"\n', 7,
        "virtual_server[0].real_server", "expected an array of tables ([[virtual_server.real_server]]), got a table"),
    bad("monitor-not-a-table", G + VS_AT_10 + 'monitor = 5\n', 7,
        "virtual_server[0].monitor", "expected a table ([virtual_server.monitor]), got integer 5"),
    # nat_router floats with the active role: a heartbeat address is a director's own
    bad("nat-router-is-a-heartbeat-address", G + 'nat_router = "198.18.0.3/24"\n' + HA_HEAD, 3, "global.nat_router",
        "198.18.0.3 is [ha] backup, a director's own address: nat_router moves to the active director"),
    # a private end at a public address: a director holding primary and backup_private is both
    # roles (pulse finds its role from its addresses), or one address is bound twice
    bad("ha-private-is-a-public-address", G + HA_HEAD + 'primary_private = "198.18.1.1"\nbackup_private = "198.18.0.1"\n',
        8, "ha.backup_private", "198.18.0.1 is already primary: the private channel's ends are other addresses"),
    bad("ha-private-ends-the-same", G + HA_HEAD + 'primary_private = "198.18.1.1"\nbackup_private = "198.18.1.1"\n',
        8, "ha.backup_private", "must differ from primary_private"),
    # ipvsadm's ADDR:PORT habit: the port has its own key
    bad("address-with-port", G + '[[virtual_server]]\nname = "web"\naddress = "198.18.0.10:80"\nport = 80\n', 5,
        "virtual_server[0].address", "'198.18.0.10:80' is not a valid IP address: write the port in its own key "
        "(address = \"198.18.0.10\", port = 80)"),
    bad("real-address-with-port", G + VS_AT_10 + '[[virtual_server.real_server]]\naddress = "[2001:2::1]:8080"\n', 8,
        "virtual_server[0].real_server[0].address", "write the port in its own key (address = \"2001:2::1\", "
        "port = 8080)"),
    bad("address-host-name", G + VS_AT_10 + '[[virtual_server.real_server]]\naddress = "web1.example.com"\n', 8,
        "virtual_server[0].real_server[0].address", "'web1.example.com' is a host name, not an IP address: lb "
        "takes addresses"),
    bad("family-mismatch", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        address = "2001:db8::11"
        """, 8, "virtual_server[0].real_server[0].address",
        "real server address 2001:db8::11 is IPv6 but virtual server 'web' is IPv4"),
    bad("family-mismatch-ipv6-vip", G + """\
        [[virtual_server]]
        name = "web6"
        address = "2001:2::10"
        port = 80
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        """, 8, "virtual_server[0].real_server[0].address",
        "real server address 198.18.1.11 is IPv4 but virtual server 'web6' is IPv6"),
    bad("dr-port-change", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        port = 8080
        """, 9, "virtual_server[0].real_server[0].port", "direct routing cannot change the destination port"),
    bad("too-many-reals-per-service", G + """\
        [tables]
        reals_per_service = 2
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        [[virtual_server.real_server]]
        address = "198.18.1.12"
        [[virtual_server.real_server]]
        address = "198.18.1.13"
        """, 13, "virtual_server[0].real_server[2]",
        "too many real servers in virtual server 'web': 3 defined but tables.reals_per_service is 2"),
    bad("too-many-reals-in-total", G + """\
        [tables]
        real_servers = 3
        [[virtual_server]]
        name = "a"
        address = "198.18.0.10"
        port = 80
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        [[virtual_server.real_server]]
        address = "198.18.1.12"
        [[virtual_server]]
        name = "b"
        address = "198.18.0.10"
        port = 443
        [[virtual_server.real_server]]
        address = "198.18.1.11"
        [[virtual_server.real_server]]
        address = "198.18.1.12"
        """, 19, "virtual_server[1].real_server[1]",
        "too many real servers in total: 4 defined but tables.real_servers is 3"),
    bad("too-many-services", G + """\
        [tables]
        services = 1
        [[virtual_server]]
        name = "a"
        address = "198.18.0.10"
        port = 80
        [[virtual_server]]
        name = "b"
        address = "198.18.0.10"
        port = 443
        """, 9, "virtual_server[1]", "too many virtual servers: 2 defined but tables.services is 1"),
    bad("bad-instance-name", """\
        [global]
        instance = "Lab"
        public_interface = "pub0"
        """, 2, "global.instance", "invalid instance name 'Lab'"),
    bad("bad-interface-name-long", """\
        [global]
        public_interface = "averyveryverylongname"
        """, 2, "global.public_interface", "is longer than 15 characters"),
    bad("bad-interface-name-slash", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        device = "pub0/1"
        """, 7, "virtual_server[0].device", "interface name 'pub0/1' must not contain '/'"),
    bad("bad-pmask", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        persistent = 300
        pmask = "255.0.255.0"
        """, 8, "virtual_server[0].pmask", "'255.0.255.0' is not a contiguous IPv4 netmask"),
    bad("tables-connections-too-small", G + """\
        [tables]
        connections = 100
        """, 4, "tables.connections", "must be between 1024 and 67108864, got 100"),
    bad("unknown-tables-key-suggestion", G + """\
        [tables]
        conections = 100000
        """, 4, "tables.conections", "did you mean 'connections'?"),
    bad("timeout-zero", G + """\
        [timeouts]
        # idle timeouts
        tcp = 0
        """, 5, "timeouts.tcp", "must be between 1 and 2147483, got 0"),
    bad("vs-single-table", G + """\
        [virtual_server]
        name = "web"
        """, 3, "virtual_server", "expected an array of tables ([[virtual_server]]), got a table"),
    # firewall-mark services, thresholds, scheduler flags
    bad("fwmark-with-port", G + FWM.replace("fwmark = 21\n", "fwmark = 21\nport = 21\n"),
        6, "virtual_server[0].port", "matched by its port_group entries"),
    bad("fwmark-without-groups", G + """\
        [[virtual_server]]
        name = "ftp"
        fwmark = 1
        """, 3, "virtual_server[0].port_group", "needs at least one port group"),
    bad("fwmark-bad-range", G + FWM.replace('"30000-30099"', '"30099-30000"'),
        11, "virtual_server[0].port_group[1].ports", "expected a port or a range"),
    bad("fwmark-overlap", G + FWM.replace('"30000-30099"', '"10-21"'),
        11, "virtual_server[0].port_group[1].ports", "overlap virtual_server[0].port_group[0]"),
    bad("fwmark-real-port", G + FWM + """\
          [[virtual_server.real_server]]
          address = "198.18.1.11"
          port = 21
        """, 14, "virtual_server[0].real_server[0].port", "omit port"),
    bad("port-group-without-fwmark", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        port_group = [{address = "198.18.0.10", ports = "81"}]
        """, 7, "virtual_server[0].port_group", "set fwmark"),
    bad("sched-flag-other-scheduler", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        scheduler = "wlc"
        scheduler_flags = ["sh-port"]
        """, 8, "virtual_server[0].scheduler_flags", "belongs to scheduler 'sh'"),
    bad("l-threshold-above-u", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [[virtual_server.real_server]]
          address = "198.18.1.11"
          u_threshold = 10
          l_threshold = 11
        """, 10, "virtual_server[0].real_server[0].l_threshold", "must not be above u_threshold"),
    bad("monitor-digest-not-md5", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.monitor]
          kind = "http"
          digest = "640205b7b0fc66c1ea91c463fac6334"
        """, 9, "virtual_server[0].monitor.digest", "32 hexadecimal digits"),
    # health checks: a CR/LF in the Host header or path would inject headers into the request
    bad("monitor-host-crlf", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.monitor]
          kind = "http"
          host = "www.example.com\\r\\nX-Injected: 1"
        """, 9, "virtual_server[0].monitor.host", "the Host header must not contain '\\r'"),
    bad("monitor-path-lf", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.monitor]
          kind = "http"
          path = "/healthz\\nHost: evil"
        """, 9, "virtual_server[0].monitor.path", "the path must not contain '\\n'"),
    bad("monitor-path-space", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.monitor]
          path = "/a b"
        """, 8, "virtual_server[0].monitor.path", "the path must not contain ' '"),
    bad("monitor-connect-timeout-zero", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.monitor]
          connect_timeout = 0
        """, 8, "virtual_server[0].monitor.connect_timeout", "must be more than 0 seconds"),
    bad("script-user-unknown", """\
        [global]
        public_interface = "pub0"
        script_user = "no-such-user-here"
        """, 3, "global.script_user", "no user 'no-such-user-here' on this machine"),
    bad("monitor-script-user-not-a-name", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.monitor]
          kind = "program"
          program = "/bin/true"
          script_user = "root; rm"
        """, 10, "virtual_server[0].monitor.script_user", "is not a user name"),
    # the checks split the program as a shell would: a quote left open fails here, not at run time
    bad("monitor-program-open-quote", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.monitor]
          kind = "program"
          program = "/usr/local/bin/check-web --host %h --match 'it's up'"
        """, 9, "virtual_server[0].monitor.program", "cannot be split into arguments (shell quoting): "
                                                     "No closing quotation"),
    bad("monitor-program-blank", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.monitor]
          kind = "program"
          program = "   "
        """, 9, "virtual_server[0].monitor.program", "names no program to run"),
    bad("load-monitor-program-trailing-backslash", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.load_monitor]
          kind = "program"
          program = "/usr/local/bin/load %h \\\\"
        """, 9, "virtual_server[0].load_monitor.program", "cannot be split into arguments (shell quoting): "
                                                          "No escaped character"),
    bad("load-monitor-program-blank", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.load_monitor]
          kind = "program"
          program = " "
        """, 9, "virtual_server[0].load_monitor.program", "names no program to run"),
    bad("monitor-interval-tiny", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.monitor]
          interval = 1e-300
        """, 8, "virtual_server[0].monitor.interval", "must be at least 0.01 seconds (checks would run back to back)"),
    bad("load-monitor-interval-tiny", G + """\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.load_monitor]
          kind = "agent"
          port = 3333
          interval = 0.001
        """, 10, "virtual_server[0].load_monitor.interval", "must be at least 0.01 seconds (polls would run back to back)"),
    bad("ha-sync-interval-zero", G + HA_HEAD + "sync_interval = 0\n",
        7, "ha.sync_interval", "must be more than 0 seconds"),
    bad("ha-max-skew-zero", G + HA_HEAD + "max_skew = 0\n", 7, "ha.max_skew", "must be more than 0 seconds"),
    # pulse runs a notify entry as argv[0] in /: arguments or a relative path failed at every role change
    bad("ha-notify-with-arguments", G + HA_HEAD + 'notify = ["/usr/local/bin/a", "/usr/bin/x --flag"]\n', 7,
        "ha.notify", "'/usr/bin/x --flag': expected a program's absolute path without spaces (it runs as PROG "
        "NEW_ROLE OLD_ROLE INSTANCE, no shell): put arguments in a script"),
    bad("ha-notify-relative", G + HA_HEAD + 'notify = "hooks/role"\n', 7, "ha.notify",
        "'hooks/role': expected a program's absolute path"),
    bad("ha-sync-port-is-heartbeat-port", G + HA_HEAD + "sync_port = 539\n",
        7, "ha.sync_port", "must differ from heartbeat_port (539)"),
    bad("ha-sync-port-past-65535", G + HA_HEAD + "heartbeat_port = 65535\n",
        7, "ha.heartbeat_port", "65535 leaves no port for the default sync_port"),
    bad("ha-script-user-unknown", G + HA_HEAD + 'script_user = "nobody-at-all"\n',
        7, "ha.script_user", "no user 'nobody-at-all'"),
    # one channel's two ends in two families never hear each other: both would go active
    bad("ha-backup-of-another-family", G + HA_HEAD.replace('"198.18.0.3"', '"2001:2::3"'),
        5, "ha.backup", "must be of primary's address family (IPv4 198.18.0.1, IPv6 2001:2::3)"),
    bad("vip-is-a-heartbeat-address", G + HA_HEAD.replace('"198.18.0.3"', '"198.18.0.10"') + VS_AT_10,
        9, "virtual_server[0].address", "is [ha] backup, a director's own address"),
    bad("web-hsts-not-a-boolean", G + '[web]\nhsts = "yes"\n', 4, "web.hsts", "expected a boolean"),
    bad("metrics-on-the-consoles-port", G + '[web]\nenabled = true\n[metrics]\nenabled = true\nlisten = "0.0.0.0:3636"\n',
        7, "metrics.listen", "[web] listens on 127.0.0.1:3636 already: give [metrics] another port"),
    bad("ha-private-ends-of-two-families", G + HA_HEAD + 'primary_private = "198.18.1.1"\nbackup_private = "2001:2:1::3"\n',
        8, "ha.backup_private", "must be of primary_private's address family"),
]


def test_nat_router_of_direct_routing_without_ha_is_not_checked() -> None:
    """Direct routing without [ha] ignores nat_router (lb.ha.addresses owns it only for NAT or
    [ha]): an address it shares with a real server is no conflict there."""
    cfg = loads(G + 'nat_router = "198.18.1.11/24"\n' + VS_AT_10 + '[[virtual_server.real_server]]\n'
                'address = "198.18.1.11"\n')
    assert str(cfg.nat_router) == "198.18.1.11/24"


def test_a_real_server_at_a_vip_is_kernel_ipvs_local_node() -> None:
    """Kernel IPVS serves a real server at one of the director's addresses itself (its local
    node): with dataplane = "ipvs" a real server or sorry server at a VIP is taken."""
    text = (G + 'dataplane = "ipvs"\n' + VS_AT_10 + 'sorry_server = "198.18.0.10"\n'
            '[[virtual_server.real_server]]\naddress = "198.18.0.10"\n')
    (vs,) = loads(text).virtual_servers
    assert [str(r.address) for r in vs.real_servers] == ["198.18.0.10"]
    with pytest.raises(ConfigError) as ei:
        loads(text.replace('dataplane = "ipvs"', 'dataplane = "auto"'))    # xdp first
    assert [i.field for i in ei.value.issues] == ["virtual_server[0].sorry_server",
                                                  "virtual_server[0].real_server[0].address"]


def test_fwmark_group_may_not_take_a_service_port() -> None:
    with pytest.raises(ConfigError) as ei:
        loads(G + """
[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 30050
""" + FWM.replace('name = "ftp"', 'name = "ftp2"'))
    assert "port 30050 of tcp 198.18.0.10 is already a virtual server of its own" in str(ei.value)


@pytest.mark.parametrize("text, line, field, fragment", BAD)
def test_bad_config(text: str, line: int | None, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as ei:
        loads(text)
    err = ei.value
    assert len(err.issues) == 1, str(err)
    (issue,) = err.issues
    assert issue.line == line, str(err)
    assert issue.field == field, str(err)
    assert fragment in issue.message, str(err)
    where = "<string>" if line is None else f"<string>:{line}"
    expected = f"{where}: {field}: {issue.message}" if field else f"{where}: {issue.message}"
    assert str(err) == expected


def test_check_refuses_a_program_the_checks_cannot_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lb.cli.main import main

    p = tmp_path / "p.toml"
    p.write_text(G + doc("""\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.monitor]
          kind = "program"
          interval = 5
          program = "/usr/local/bin/check-web --host %h --match 'it's up'"
        """))
    assert main(["check", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert err == (f"{p}:10: virtual_server[0].monitor.program: cannot be split into arguments (shell quoting): "
                   f"No closing quotation\n")


def test_check_takes_the_file_as_an_argument_too(capsys: pytest.CaptureFixture[str]) -> None:
    """`lb check FILE` (as nginx -t / keepalived -t habits type it) was a usage error: only
    --config was taken.  Either works; both naming different files, or none, is refused."""
    from lb.cli.main import main

    path = str(CONFIGS / "lab-nat.toml")
    assert main(["check", path]) == 0
    assert main(["check", "--config", path]) == 0
    assert main(["check", path, "--config", path]) == 0
    assert capsys.readouterr().out == f"{path}: ok (1 virtual server, 3 real servers)\n" * 3
    other = str(CONFIGS / "lab-dr.toml")
    assert main(["check", path, "-c", other]) == 2
    assert capsys.readouterr().err == (f"lb check: two files given ({path}, --config {other}): "
                                       f"check one at a time\n")
    assert main(["check"]) == 2
    assert capsys.readouterr().err == "lb check: which file? lb check FILE (or --config FILE)\n"


def test_many_bad_configs() -> None:
    assert len(BAD) >= 20


def test_all_errors_reported_at_once() -> None:
    text = doc("""\
        [global]
        instance = "Bad Name"
        public_interface = "pub0"
        network = "nat"

        [tables]
        connections = 1

        [[virtual_server]]
        name = "web"
        address = "198.18.0.999"
        port = 0
        scheduler = "fastest"

          [[virtual_server.real_server]]
          address = "198.18.1.11"
          weight = 70000
          colour = "blue"
        """)
    with pytest.raises(ConfigError) as ei:
        loads(text, path="multi.toml")
    got = [(i.line, i.field) for i in ei.value.issues]
    assert got == [
        (1, "global.private_interface"),
        (1, "global.nat_router"),
        (2, "global.instance"),
        (7, "tables.connections"),
        (11, "virtual_server[0].address"),
        (12, "virtual_server[0].port"),
        (13, "virtual_server[0].scheduler"),
        (17, "virtual_server[0].real_server[0].weight"),
        (18, "virtual_server[0].real_server[0].colour"),
    ]
    lines = str(ei.value).splitlines()
    assert len(lines) == len(got)
    assert lines[0] == 'multi.toml:1: global.private_interface: required when network = "nat"'
    assert lines[-1].startswith("multi.toml:18: virtual_server[0].real_server[0].colour: unknown key 'colour'")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as ei:
        load(missing)
    (issue,) = ei.value.issues
    assert issue == ConfigIssue(str(missing), None, "", "cannot read file: No such file or directory")
    assert str(ei.value) == f"{missing}: cannot read file: No such file or directory"


def test_file_errors_carry_the_file_path(tmp_path: Path) -> None:
    f = tmp_path / "lb.toml"
    f.write_text('[global]\npublic_interface = "pub0"\nnetwork = "masq"\n')
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert str(ei.value).startswith(f"{f}:3: global.network: ")


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "lb.toml"
    f.write_bytes(b'[global]\npublic_interface = "\xff"\n')
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert str(ei.value) == f"{f}:2: file is not valid UTF-8"


def test_issue_str() -> None:
    assert str(ConfigIssue("a.toml", 3, "x.y", "bad")) == "a.toml:3: x.y: bad"
    assert str(ConfigIssue("a.toml", None, "x.y", "bad")) == "a.toml: x.y: bad"


# --- locator -------------------------------------------------------------------------

LOCATOR_DOC = doc('''\
    # leading comment
    [global]                      # a comment after a header
    public_interface = "pub0"
    "private_interface" = 'priv0' # quoted key
    note = """
    [not_a_header]
    x = 1
    """
    list = [
      "a", # [also not a header]
      "b",
    ]

    [[virtual_server]]
    name = "a"

      [[virtual_server.real_server]]
      address = "198.18.1.11"
      [[virtual_server.real_server]]
      weight = 2

    [[virtual_server]]
    name = "b"
    inline = { port = 1, weight = 2 }
    [[virtual_server.real_server]]
    address = "198.18.1.21"
    dotted.key = 3

    [tables]
    services = 1
    ''')


@pytest.mark.parametrize(
    "path, line",
    [
        (("global",), 2),
        (("global", "public_interface"), 3),
        (("global", "private_interface"), 4),
        (("global", "note"), 5),
        (("global", "x"), 2),  # inside the multi-line string: not a key
        (("not_a_header",), None),
        (("global", "list"), 9),
        (("also",), None),
        (("virtual_server", 0), 14),
        (("virtual_server", 0, "name"), 15),
        (("virtual_server", 0, "real_server", 0), 17),
        (("virtual_server", 0, "real_server", 0, "address"), 18),
        (("virtual_server", 0, "real_server", 1, "weight"), 20),
        (("virtual_server", 0, "real_server", 1, "address"), 19),  # absent -> its header
        (("virtual_server", 1), 22),
        (("virtual_server", 1, "name"), 23),
        (("virtual_server", 1, "inline", "weight"), 24),  # inline table -> the key's line
        (("virtual_server", 1, "real_server", 0), 25),
        (("virtual_server", 1, "real_server", 0, "address"), 26),
        (("virtual_server", 1, "real_server", 0, "dotted", "key"), 27),
        (("virtual_server", 1, "real_server", 1, "address"), 25),  # no such element -> nearest ancestor
        (("tables", "services"), 30),
        (("tables", "connections"), 29),
        (("timeouts", "tcp"), None),
    ],
)
def test_locate(path: tuple[str | int, ...], line: int | None) -> None:
    assert locate(LOCATOR_DOC, path) == line


def test_an_issue_in_a_multi_line_array_names_its_elements_line() -> None:
    """real_server = [ {...},\n {...} ]: each element's issue names the element's own line (all of
    them named the array's first line), a key of a nested inline table its own line."""
    text = ('[global]\npublic_interface = "eth0"\n\n[[virtual_server]]\nname = "a"\naddress = "198.18.0.1"\n'
            'port = 80\nreal_server = [\n  { address = "198.18.1.1", weight = 70000 },\n'
            '  # a comment\n\n  { address = "198.18.1.2", port = 0 },\n]\n'
            'monitor = { kind = "http", status = [200, 999] }\n')
    with pytest.raises(ConfigError) as ei:
        loads(text)
    assert sorted((i.line, i.field) for i in ei.value.issues) == [
        (9, "virtual_server[0].real_server[0].weight"), (12, "virtual_server[0].real_server[1].port"),
        (14, "virtual_server[0].monitor.status")]


def test_locate_tolerates_malformed_text() -> None:
    # Invalid TOML never reaches the locator in practice, but it must not crash.
    assert locate("[[a.b]]\nx = 1\n[broken\ny = 2\n", ("a", "b", 0, "x")) == 2


# Property: in generated documents (random blank lines, comments, indentation
# and quoting), every key is located on the line where it was written.

_filler = st.lists(st.sampled_from(["", "# comment", "   # [[virtual_server]] in a comment"]), max_size=2)


@st.composite
def _documents(draw: st.DrawFn) -> tuple[str, dict[tuple[str | int, ...], int]]:
    lines: list[str] = []
    expect: dict[tuple[str | int, ...], int] = {}

    def emit(text: str, path: tuple[str | int, ...] | None = None) -> None:
        lines.extend(draw(_filler))
        indent = draw(st.sampled_from(["", "  "]))
        if path is not None:
            # The entry starts on the line after everything emitted so far
            # (entries may span several lines).
            expect[path] = sum(entry.count("\n") + 1 for entry in lines) + 1
        lines.append(indent + text)

    def key(k: str) -> str:
        quoted: str = draw(st.sampled_from([k, f'"{k}"', f"'{k}'"]))
        return quoted

    emit("[global]", ("global",))
    emit(f'{key("public_interface")} = "pub0"  # trailing', ("global", "public_interface"))
    for i in range(draw(st.integers(0, 3))):
        emit("[[virtual_server]]", ("virtual_server", i))
        emit(f'{key("name")} = "vs{i}"', ("virtual_server", i, "name"))
        emit('note = """\n[[virtual_server]]\nport = 1\n"""', ("virtual_server", i, "note"))
        emit(f"{key('port')} = [\n  1, # ]\n  2,\n]", ("virtual_server", i, "port"))
        for j in range(draw(st.integers(0, 3))):
            emit("[[virtual_server.real_server]]", ("virtual_server", i, "real_server", j))
            emit(f"{key('weight')} = {j}", ("virtual_server", i, "real_server", j, "weight"))
    emit("[tables]", ("tables",))
    emit(f"{key('services')} = 4", ("tables", "services"))
    return "\n".join(lines) + "\n", expect


@settings(max_examples=200, deadline=None)
@given(_documents())
def test_locate_generated(case: tuple[str, dict[tuple[str | int, ...], int]]) -> None:
    text, expect = case
    loc = Locator(text)
    for path, line in expect.items():
        assert loc.line(path) == line, (path, text)


# --- sorry server --------------------------------------------------------------------------


def _sorry_doc(value: str, network: str = "direct", address: str = "198.18.0.10") -> str:
    return (f'[global]\npublic_interface = "eth0"\nnetwork = "{network}"\n'
            + ('private_interface = "eth1"\nnat_router = "198.18.1.254/24"\n' if network == "nat" else "")
            + f'\n[[virtual_server]]\nname = "web"\naddress = "{address}"\nport = 80\n'
            + f'sorry_server = "{value}"\n\n  [[virtual_server.real_server]]\n  address = "198.18.1.11"\n')


@pytest.mark.parametrize("value, expected", [
    ("198.18.1.99", (IPv4Address("198.18.1.99"), None)),
    ("198.18.1.99:80", (IPv4Address("198.18.1.99"), 80)),
])
def test_sorry_server_direct(value: str, expected: tuple) -> None:
    assert loads(_sorry_doc(value)).virtual_servers[0].sorry_server == expected


def test_sorry_server_nat_may_change_port() -> None:
    cfg = loads(_sorry_doc("198.18.1.99:8080", network="nat"))
    assert cfg.virtual_servers[0].sorry_server == (IPv4Address("198.18.1.99"), 8080)


@pytest.mark.parametrize("value, network, message", [
    ("nonsense", "direct", "'nonsense' is not a valid IP address"),
    ("198.18.1.999", "direct", "is not a valid IP address"),
    ("198.18.1.99:0", "direct", "port must be between 1 and 65535"),
    ("198.18.1.99:70000", "direct", "port must be between 1 and 65535"),
    ("198.18.1.99:x", "direct", "port must be between 1 and 65535"),
    ("2001:db8::1", "direct", "is IPv6 but the virtual server is IPv4"),
    ("[2001:db8::1]:80", "nat", "is IPv6 but the virtual server is IPv4"),
    ("198.18.1.99:8080", "direct", "direct routing cannot change the destination port"),
    ("198.18.1.99:8080", "tunnel", "tunneling cannot change the destination port"),
])
def test_sorry_server_errors(value: str, network: str, message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        loads(_sorry_doc(value, network=network))
    issues = ei.value.issues
    assert len(issues) == 1, issues
    assert issues[0].field == "virtual_server[0].sorry_server"
    text = _sorry_doc(value, network=network)
    assert issues[0].line == text.splitlines().index(f'sorry_server = "{value}"') + 1
    assert message in issues[0].message


def test_sorry_server_must_be_a_string() -> None:
    text = _sorry_doc("x").replace('sorry_server = "x"', "sorry_server = 5")
    with pytest.raises(ConfigError) as ei:
        loads(text)
    assert ei.value.issues[0].field == "virtual_server[0].sorry_server"


def test_keys_that_change_nothing_are_warned_about_with_their_line():
    """A persistence netmask without persistence, or l_threshold without u_threshold, is
    accepted (as ipvsadm takes -M without -p) but changes nothing: `lb check` says so, with the
    line, as it does for lvs.cf's and keepalived.conf's keys without effect."""
    cfg = loads(doc("""\
        [global]
        public_interface = "pub0"

        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        pmask = "/24"
          [[virtual_server.real_server]]
          address = "198.18.1.11"
          l_threshold = 5
        """), "w.toml")
    assert [(w.path, w.line, w.field, w.message) for w in cfg.warnings] == [
        ("w.toml", 8, "virtual_server[0].pmask", "no effect without persistent (the persistence timeout)"),
        ("w.toml", 11, "virtual_server[0].real_server[0].l_threshold",
         "no effect without u_threshold (the server is never overloaded)"),
    ]
    # with persistence and an upper threshold: no warning
    fine = loads(doc("""\
        [global]
        public_interface = "pub0"

        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        persistent = 300
        pmask = "/24"
          [[virtual_server.real_server]]
          address = "198.18.1.11"
          u_threshold = 10
          l_threshold = 5
        """), "w.toml")
    assert fine.warnings == ()


def test_load_monitor_keys_its_kind_ignores_are_warned_about():
    """An agent load monitor never runs `program`, a program one never asks `port`: accepted in
    silence, the weights an operator meant to come from the program stayed the agent's."""
    cfg = loads(doc("""\
        [global]
        public_interface = "pub0"

        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.load_monitor]
          kind = "agent"
          port = 10000
          program = "/usr/local/bin/load-of %h"
        [[virtual_server]]
        name = "web2"
        address = "198.18.0.10"
        port = 81
          [virtual_server.load_monitor]
          kind = "program"
          port = 10000
          program = "/usr/local/bin/load-of %h"
          script_user = "nobody"
        """), "w.toml")
    assert [(w.line, w.field, w.message) for w in cfg.warnings] == [
        (11, "virtual_server[0].load_monitor.program", "no effect with kind \"agent\" (used by: program)"),
        (18, "virtual_server[1].load_monitor.port", "no effect with kind \"program\" (used by: agent)"),
    ]
    # left at their defaults (example.toml lists every key), they are not
    assert load(CONFIGS / "example.toml").virtual_servers[0].load_monitor.kind == "agent"
    assert not [w for w in load(CONFIGS / "example.toml").warnings if "load_monitor" in w.field]


@pytest.mark.parametrize("keys, line, field", [
    ('timeout = 5\n  connect_timeout = 8', 11, "connect_timeout"),
    ('timeout = 2', 10, "timeout"),                        # connect_timeout's default 3
])
def test_a_check_that_may_outlast_the_timeout_is_a_warning(keys, line, field):
    """A check's verdict comes at its end: with connect_timeout 8 and timeout 5, a real server
    that hangs went down 8 s after its check began, and nothing said so."""
    text = doc("""\
        [global]
        public_interface = "pub0"

        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.monitor]
          kind = "tcp"
          KEYS
          [[virtual_server.real_server]]
          address = "198.18.1.11"
        """).replace("KEYS", keys)
    cfg = loads(text, "w.toml")
    [w] = cfg.warnings
    assert (w.path, w.line, w.field) == ("w.toml", line, f"virtual_server[0].monitor.{field}")
    assert "longer than timeout" in w.message and "make connect_timeout at most timeout" in w.message
    m = cfg.virtual_servers[0].monitor
    assert w.message.startswith(f"connect_timeout {m.connect_timeout:g} s is longer than timeout {m.timeout:g} s")
    assert loads(text.replace(keys, "timeout = 3\n  connect_timeout = 3"), "w.toml").warnings == ()
    # timeout 0: down at the first failed check, which ends at connect_timeout by definition
    assert loads(text.replace(keys, "timeout = 0\n  connect_timeout = 8"), "w.toml").warnings == ()


def test_monitor_keys_its_kind_ignores_are_warned_about():
    """A tcp monitor never sends `send`, an http one never runs `program`: a key set to other
    than its default that the monitor's kind does not read is accepted but warned about, with
    its line (as keepalived's unused keywords are); left at its default (example.toml lists
    every key) it is not."""
    cfg = loads(doc("""\
        [global]
        public_interface = "pub0"

        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
          [virtual_server.monitor]
          kind = "tcp"
          send = "PING\\\\r\\\\n"
          path = "/healthz"
          tls_verify = true
          [[virtual_server.real_server]]
          address = "198.18.1.11"
        """), "w.toml")
    assert [(w.line, w.field, w.message) for w in cfg.warnings] == [
        (10, "virtual_server[0].monitor.send", "no effect with kind \"tcp\" (used by: send_expect, udp)"),
        (11, "virtual_server[0].monitor.path", "no effect with kind \"tcp\" (used by: http, https)"),
    ]
    assert cfg.virtual_servers[0].monitor.send == "PING\\r\\n"     # kept as written
    https = loads(doc("""\
        [global]
        public_interface = "pub0"

        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 443
          [virtual_server.monitor]
          kind = "https"
          path = "/healthz"
          tls_verify = false
          [[virtual_server.real_server]]
          address = "198.18.1.11"
        """), "w.toml")
    assert https.warnings == ()
    # a UDP service's tcp monitor (the default) sends and expects in datagrams: nothing to warn of
    udp = loads(doc("""\
        [global]
        public_interface = "pub0"

        [[virtual_server]]
        name = "dns"
        address = "198.18.0.10"
        port = 53
        protocol = "udp"
          [virtual_server.monitor]
          send = "ping"
          expect = "pong"
          [[virtual_server.real_server]]
          address = "198.18.1.11"
        """), "w.toml")
    assert udp.warnings == ()


def test_a_sorry_server_with_a_full_list_of_real_servers_is_warned_about():
    """The sorry server takes a slot of the service's list while its dead real servers drain: a
    list already at tables.reals_per_service cannot switch to it (the data plane refuses the
    table until one has drained), so lb check says so, on the sorry_server line."""
    text = G + """\
[tables]
reals_per_service = 2
[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
sorry_server = "198.18.1.99"
[[virtual_server.real_server]]
address = "198.18.1.11"
[[virtual_server.real_server]]
address = "198.18.1.12"
"""
    cfg = loads(text, "s.toml")
    assert [(w.line, w.field) for w in cfg.warnings] == [(9, "virtual_server[0].sorry_server")]
    assert "needs a slot more" in cfg.warnings[0].message
    # a slot to spare, or no sorry server: no warning
    assert loads(text.replace("reals_per_service = 2", "reals_per_service = 3")).warnings == ()
    assert loads(text.replace('sorry_server = "198.18.1.99"\n', "")).warnings == ()


# --- [tables] against this machine's memory ------------------------------------------


def test_tables_that_do_not_fit_memory_are_an_error_at_their_line(monkeypatch) -> None:
    """The XDP data plane preallocates its connection tables (144 bytes an IPv4 entry, 168 an IPv6
    or embryonic one, 120 an embryonic template): sizes beyond this machine's memory stopped
    `lb run` at map creation, after the compile, naming no line; `lb check` now says it."""
    from lb.config import toml as tomlcfg

    monkeypatch.setattr(tomlcfg, "mem_total", lambda: 8 << 30)
    monkeypatch.setattr(tomlcfg, "cgroup_memory_limit", lambda: None)    # the machine's memory only
    text = G + "[tables]\nconnections = 67108864\n"
    with pytest.raises(ConfigError) as ei:
        loads(text, path="big.toml")
    (issue,) = ei.value.issues
    assert (issue.line, issue.field) == (4, "tables.connections")
    # 64M x 144 + 16M x 168 (IPv6) + 16M x (168 + 120) (embryos) + the arrays
    assert issue.message.startswith("the [tables] sizes need about 16.1 GiB of memory for the data plane's "
                                    "tables, more than this machine has (8.0 GiB): lower connections")
    # the key that asks for the most is the one named
    with pytest.raises(ConfigError) as ei:
        loads(G + "[tables]\nconnections = 1048576\nembryonic = 67108864\n")
    assert [(i.line, i.field) for i in ei.value.issues] == [(5, "tables.embryonic")]
    # "auto" falls back to kernel IPVS when XDP cannot start: a warning
    (w,) = loads(G + 'dataplane = "auto"\n' + "[tables]\nconnections = 67108864\n").warnings
    assert (w.line, w.field) == (5, "tables.connections")
    assert 'more than this machine has (8.0 GiB): dataplane "auto" will run kernel IPVS' in w.message
    # kernel IPVS has no such tables (the key is only said to have no effect)
    (w,) = loads(G + 'dataplane = "ipvs"\n' + "[tables]\nconnections = 67108864\n").warnings
    assert w.message.startswith('no effect with dataplane = "ipvs"')


def test_tables_past_half_of_memory_are_a_warning(monkeypatch) -> None:
    from lb.config import toml as tomlcfg

    monkeypatch.setattr(tomlcfg, "mem_total", lambda: 24 << 30)
    monkeypatch.setattr(tomlcfg, "cgroup_memory_limit", lambda: None)
    (w,) = loads(G + "[tables]\nconnections = 67108864\n").warnings
    assert (w.line, w.field) == (4, "tables.connections")
    assert "more than half of this machine's 24.0 GiB: a restart that changes [tables] holds the old" in w.message
    assert loads(G + "[tables]\nconnections = 16777216\n").warnings == ()
    monkeypatch.setattr(tomlcfg, "mem_total", lambda: None)   # /proc/meminfo unreadable: no check
    assert loads(G + "[tables]\nconnections = 67108864\n").warnings == ()


def test_tables_memory_estimate_matches_the_kernels_entries() -> None:
    from lb.config.model import tables_memory

    # the defaults: 64K IPv4, 16K IPv6, 16K embryos, 256 services of 64, 4096 reals; 4 CPUs
    assert tables_memory(65536, 0, 0, 256, 4096, 64, 4) == (65536 * 144 + 16384 * 168 + 16384 * 288
                                                            + 256 * (1250 + 12 * 64 + 4 * 40) + 4096 * (200 + 4 * 40))
    # a million real servers' statistics, per CPU, are no small part on a large machine
    assert tables_memory(1024, 0, 0, 1, 1 << 20, 1, 128) > 5 << 30


def test_keys_only_the_xdp_data_plane_reads_are_warned_of_with_kernel_ipvs() -> None:
    """dataplane = "ipvs": [tables], amemthresh, the too-big answers' rate, mh_size and
    quiesce_server change nothing (kernel IPVS has its own); each written one is a warning with
    its line, as other keys without effect are.  "auto" may run XDP: nothing is said."""
    text = G + """dataplane = "ipvs"
[tables]
connections = 131072
[defense]
drop_entry = 1
amemthresh = 100
icmp_msgs_burst = 5
[[virtual_server]]
name = "dns"
address = "198.18.0.10"
port = 53
scheduler = "mh"
mh_size = 251
quiesce_server = true
"""
    cfg = loads(text)
    assert [(w.line, w.field, w.message.split(":")[0]) for w in cfg.warnings] == [
        (5, "tables.connections", 'no effect with dataplane = "ipvs"'),
        (8, "defense.amemthresh", 'no effect with dataplane = "ipvs"'),
        (9, "defense.icmp_msgs_burst", 'no effect with dataplane = "ipvs"'),
        (15, "virtual_server[0].mh_size", 'no effect with dataplane = "ipvs"'),
        (16, "virtual_server[0].quiesce_server", 'no effect with dataplane = "ipvs"'),
    ]
    assert loads(text.replace('"ipvs"', '"auto"')).warnings == ()


def test_a_nat_router_that_is_never_added_is_warned_of() -> None:
    """lb adds nat_router for NAT, or with [ha] (lb.ha.addresses): direct routing or tunneling
    alone ignore it, and nat_router_device without nat_router names nothing -- said, with the
    line, as other keys without effect are."""
    (w,) = loads(G + 'nat_router = "198.18.1.254/24"\n').warnings
    assert (w.line, w.field) == (3, "global.nat_router")
    assert w.message.startswith('no effect with network = "direct" without [ha]')
    (w,) = loads(G + 'network = "tunnel"\nnat_router_device = "priv0"\n').warnings
    assert (w.line, w.field, w.message) == (4, "global.nat_router_device", "no effect without nat_router")
    # with [ha] it is the real servers' gateway through the active director: no warning
    assert loads(G + 'nat_router = "198.18.1.254/24"\n' + HA_HEAD).warnings == ()


def test_sh_weights_beyond_its_buckets_are_warned_of() -> None:
    """sh's 256 buckets go to the real servers in turn, `weight` each (ip_vs_sh_reassign): weights
    of 200 and 100 give the second 56 buckets, not a third of them -- said, at the scheduler."""
    text = G + VS_AT_10 + 'scheduler = "sh"\n' + "".join(
        f'[[virtual_server.real_server]]\naddress = "198.18.1.{i}"\nweight = {w}\n' for i, w in ((11, 200), (12, 100)))
    (w,) = loads(text).warnings
    assert (w.line, w.field) == (7, "virtual_server[0].scheduler")
    assert "the weights sum to 300, so the servers last in its list get fewer buckets" in w.message
    assert loads(text.replace("weight = 200", "weight = 2").replace("weight = 100", "weight = 1")).warnings == ()
    # a server out of the list (active = false) takes no bucket
    assert loads(text.replace("weight = 100", "weight = 100\nactive = false")).warnings == ()


def test_every_shipped_config_passes_lb_check(capsys) -> None:
    """Every file in configs/ -- TOML, lvs.cf and keepalived.conf -- is one `lb check` takes
    (exit 0, "ok"); its warnings, if any, name a line."""
    from lb.cli.main import main

    files = sorted(p for p in CONFIGS.iterdir() if p.suffix in (".toml", ".cf", ".conf"))
    assert {p.suffix for p in files} == {".toml", ".cf", ".conf"}
    for f in files:
        assert main(["check", "--config", str(f)]) == 0, capsys.readouterr().err
        out, err = capsys.readouterr()
        assert out.startswith(f"{f}: ok ("), out
        for line in err.splitlines():
            # the key file's warning is the machine's (no /etc/lb/ha.key here), not the file's
            assert re.match(rf"{re.escape(str(f))}:\d+: warning: ", line) or "key_file" in line, line


@pytest.mark.parametrize("name", ["lab-nat.toml", "example-lvs.cf", "keepalived-lab-dr.conf"])
def test_a_byte_order_mark_first_is_not_part_of_the_file(tmp_path, name) -> None:
    """Windows Notepad saves UTF-8 with a BOM first: every format took it for part of the first
    line (TOML: "Invalid statement (at line 1, column 1)"; a keepalived.conf was not even
    recognised).  It is dropped; the file loads as without it, and lines count as before."""
    from lb.config import format_of, store

    src = CONFIGS / name
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + src.read_bytes())
    assert format_of(path) == format_of(src)
    assert dataclasses.replace(load(path), path=None) == dataclasses.replace(load(src), path=None)
    assert [w.line for w in load(path).warnings] == [w.line for w in load(src).warnings]
    assert store.read(path).cfg is not None
    bad = tmp_path / "bad.toml"                 # and a mistake's line is its own
    bad.write_bytes(b'\xef\xbb\xbf[global]\npublic_interface = "pub0"\nnetwork = "masq"\n')
    with pytest.raises(ConfigError) as ei:
        load(bad)
    assert [(i.line, i.field) for i in ei.value.issues] == [(3, "global.network")]


def test_a_deadtime_under_three_keepalives_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """deadtime = 2 x keepalive was taken silently: one heartbeat lost plus a little jitter and
    the backup takes over from a live active (keepalived waits 3 advert intervals).  Still
    accepted (a fast failover on a quiet link), but `lb check` warns at deadtime's line; 3 x
    keepalive (the default 2 and 6, keepalived's import, 0.1 and 0.3) or more says nothing."""
    from lb.cli.main import main

    key = tmp_path / "ha.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    head = G + HA_HEAD.replace("/etc/lb/ha.key", str(key))
    p = tmp_path / "ha.toml"
    p.write_text(head + "keepalive = 2\ndeadtime = 4\n")
    cfg = load(p)
    assert cfg.ha is not None and (cfg.ha.keepalive, cfg.ha.deadtime) == (2, 4)
    assert [(w.line, w.field) for w in cfg.warnings] == [(8, "ha.deadtime")]
    assert cfg.warnings[0].message.startswith("4 s is less than 3 x keepalive (6 s)")
    assert main(["check", str(p)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"{p}:8: warning: ha.deadtime: 4 s is less than 3 x keepalive (6 s): ")
    for timing in ("", "keepalive = 2\ndeadtime = 6\n", "keepalive = 0.1\ndeadtime = 0.3\n",
                   "keepalive = 1\ndeadtime = 10\n"):
        assert loads(head + timing).warnings == (), timing


# --- ... and against the memory cgroup's limit (a container, MemoryMax=) ------------------


def _cgroups(tmp_path, monkeypatch, own: str, limits: dict[str, str]) -> str:
    """A fake /proc/self/cgroup (``own``: its lines) and cgroup tree (``limits``: a file under
    the root -> its text), for lb.config.toml to read instead of the real ones."""
    from lb.config import toml as tomlcfg

    tmp_path.mkdir(exist_ok=True)
    proc = tmp_path / "cgroup"
    proc.write_text(own)
    root = tmp_path / "fs"
    root.mkdir()
    for rel, text in limits.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.setattr(tomlcfg, "PROC_CGROUP", str(proc))
    monkeypatch.setattr(tomlcfg, "CGROUP_ROOT", str(root))
    return str(root)


def test_tables_that_do_not_fit_the_memory_cgroup_are_an_error(tmp_path, monkeypatch) -> None:
    """In a container (or a unit with MemoryMax=) the maps are charged to its memory cgroup: tables
    that fit the host's 64 GiB but not the 8 GiB of memory.max were accepted, and the OOM killer
    ended lb as they filled.  The smaller limit is the one checked, and named."""
    from lb.config import toml as tomlcfg

    monkeypatch.setattr(tomlcfg, "mem_total", lambda: 64 << 30)
    root = _cgroups(tmp_path, monkeypatch, "0::/system.slice/lb@web.service\n", {
        "system.slice/lb@web.service/memory.max": "max\n",       # the unit's own: none
        "system.slice/memory.max": str(8 << 30) + "\n",           # its parent's
        "memory.max": str(16 << 30) + "\n"})
    text = G + "[tables]\nconnections = 67108864\n"
    with pytest.raises(ConfigError) as ei:
        loads(text, path="big.toml")
    (issue,) = ei.value.issues
    assert (issue.line, issue.field) == (4, "tables.connections")
    assert issue.message == (f"the [tables] sizes need about 16.1 GiB of memory for the data plane's tables, more "
                             f"than this process's memory cgroup allows (8.0 GiB: {root}/system.slice/memory.max): "
                             f"lower connections (connections_ipv6 and embryonic default to a quarter of "
                             f"connections)")
    # past half of it: the warning names it too
    (w,) = loads(G + "[tables]\nconnections = 16777216\n").warnings
    assert f"more than half of the 8.0 GiB this process's memory cgroup allows ({root}/system.slice/memory.max)" \
        in w.message
    # a limit above the machine's memory changes nothing: the machine's is named
    monkeypatch.setattr(tomlcfg, "mem_total", lambda: 4 << 30)
    with pytest.raises(ConfigError) as ei:
        loads(text)
    assert "more than this machine has (4.0 GiB)" in ei.value.issues[0].message
    # no limit anywhere ("max"): the host's memory alone, which holds them
    monkeypatch.setattr(tomlcfg, "mem_total", lambda: 64 << 30)
    _cgroups(tmp_path / "none", monkeypatch, "0::/system.slice/lb@web.service\n",
             {"system.slice/memory.max": "max\n"})
    assert loads(text).warnings == ()


@pytest.mark.parametrize("own, limits, expected", [
    # a container in its own cgroup namespace: its cgroup is the root it sees
    ("0::/\n", {"memory.max": "1073741824\n"}, (1 << 30, "memory.max")),
    # without one: its path is the host's, missing here; the root it sees is its own cgroup
    ("0::/docker/abc\n", {"memory.max": "1073741824\n"}, (1 << 30, "memory.max")),
    # the child's limit below the parent's
    ("0::/a/b\n", {"a/memory.max": "3000000000\n", "a/b/memory.max": "2000000000\n"},
     (2000000000, "a/b/memory.max")),
    # cgroup v1 (and hybrid): the memory controller's hierarchy
    ("12:pids:/x\n4:memory:/docker/abc\n0::/\n", {"memory/docker/abc/memory.limit_in_bytes": "536870912\n",
                                                  "memory/memory.limit_in_bytes": "9223372036854771712\n"},
     (1 << 29, "memory/docker/abc/memory.limit_in_bytes")),
    # v1 without a limit: the page counter's maximum
    ("4:memory:/\n", {"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None),
    # v2 without a limit, or no memory controller at all
    ("0::/a\n", {"a/memory.max": "max\n"}, None),
    ("0::/a\n", {}, None),
    ("garbage\n", {"memory.max": "1073741824\n"}, None),
])
def test_cgroup_memory_limit(tmp_path, monkeypatch, own, limits, expected) -> None:
    from lb.config import toml as tomlcfg

    root = _cgroups(tmp_path, monkeypatch, own, limits)
    got = tomlcfg.cgroup_memory_limit()
    assert got == (expected if expected is None else (expected[0], f"{root}/{expected[1]}"))


def test_cgroup_memory_limit_without_proc_cgroup(tmp_path) -> None:
    from lb.config import toml as tomlcfg

    assert tomlcfg.cgroup_memory_limit(str(tmp_path / "absent"), str(tmp_path)) is None
