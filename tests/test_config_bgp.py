"""[bgp] (scale-out): the TOML table and its lvs.cf keys, the active-active rules and their
messages (file, line, field)."""
from __future__ import annotations

from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from lb.config import ConfigError, load, loads, lvscf
from lb.config.model import Bgp, BgpNeighbor, BgpVip

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

BASE = """\
[global]
public_interface = "pub0"
private_interface = "priv0"
network = "{network}"

[[virtual_server]]
name = "web"
address = "198.18.10.10"
port = 80
scheduler = "{scheduler}"
  [[virtual_server.real_server]]
  address = "198.18.1.11"

[[virtual_server]]
name = "web2"
address = "198.18.10.11"
port = 443
scheduler = "mh"
  [[virtual_server.real_server]]
  address = "198.18.1.12"
"""

BGP = """
[bgp]
local_as = 65001
{extra}
  [[bgp.neighbor]]
  address = "198.18.0.254"
  peer_as = 65000
"""


def text(extra: str = "", network: str = "direct", scheduler: str = "mh", tail: str = "") -> str:
    return BASE.format(network=network, scheduler=scheduler) + BGP.format(extra=extra) + tail


def issues(src: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as ei:
        loads(src)
    return [(i.line, i.field, i.message) for i in ei.value.issues]


def test_defaults_and_values() -> None:
    cfg = loads(text())
    assert cfg.bgp == Bgp(local_as=65001, neighbors=(BgpNeighbor(IPv4Address("198.18.0.254"), 65000),))
    assert (cfg.bgp.mode, cfg.bgp.hold_time, cfg.bgp.lease, cfg.bgp.drain, cfg.bgp.settle, cfg.bgp.router_id) == (
        "active-active", 9, 3.0, 2.0, 2.0, None)
    assert cfg.bgp.active_active
    assert cfg.bgp.vip(ip_address("198.18.10.10")) == BgpVip(ip_address("198.18.10.10"))
    cfg = loads(text('mode = "active-active"\nrouter_id = "198.18.0.1"\nhold_time = 3\nlease = 2.5\ndrain = 0',
                     network="tunnel", tail="""
  [[bgp.neighbor]]
  address = "198.18.2.254"
  peer_as = 4200000000
  local_address = "198.18.2.1"
  [[bgp.vip]]
  address = "198.18.10.11"
  med = 0
  communities = ["65000:100", "no-export", "65000:100"]
"""))
    b = cfg.bgp
    assert (b.router_id, b.hold_time, b.lease, b.drain) == (IPv4Address("198.18.0.1"), 3, 2.5, 0.0)
    assert b.neighbors[1] == BgpNeighbor(ip_address("198.18.2.254"), 4200000000, ip_address("198.18.2.1"))
    assert b.vip(ip_address("198.18.10.11")) == BgpVip(ip_address("198.18.10.11"), 0, ("65000:100", "no-export"))
    assert loads(BASE.format(network="direct", scheduler="wlc")).bgp is None


def test_active_active_refuses_what_breaks_flows_with_reasons() -> None:
    src = text(network="nat", scheduler="wlc").replace(
        'network = "nat"', 'network = "nat"\nnat_router = "198.18.1.254/24"\ndataplane = "ipvs"')
    src += '\n[ha]\nprimary = "198.18.0.1"\nbackup = "198.18.0.3"\nkey_file = "/etc/lb/ha.key"\n'
    got = issues(src)
    fields = [f for _, f, _ in got]
    assert fields == ["global.network", "global.dataplane", "virtual_server[0].scheduler", "bgp.mode"]
    msgs = dict((f, m) for _, f, m in got)
    assert "a real server's replies go to its one gateway" in msgs["global.network"]
    assert "sloppy_tcp" in msgs["global.dataplane"]
    assert "scheduler 'wlc'" in msgs["virtual_server[0].scheduler"] and "use mh" in msgs["virtual_server[0].scheduler"]
    assert "[ha]" in msgs["bgp.mode"] and 'mode = "announce"' in msgs["bgp.mode"]
    lines = {f: line for line, f, _ in got}
    assert lines["global.network"] == 4 and lines["virtual_server[0].scheduler"] == 12
    # every hash scheduler passes; "auto" would fall back to IPVS
    for sched in ("mh", "sh", "dh"):
        assert loads(text(scheduler=sched)).bgp.active_active
    assert [f for _, f, _ in issues(text().replace('network = "direct"', 'network = "direct"\ndataplane = "auto"'))] \
        == ["global.dataplane"]


def test_announce_mode_keeps_the_rest_as_it_is() -> None:
    src = text('mode = "announce"', network="nat", scheduler="wlc").replace(
        'network = "nat"', 'network = "nat"\nnat_router = "198.18.1.254/24"')
    src += '\n[ha]\nprimary = "198.18.0.1"\nbackup = "198.18.0.3"\nkey_file = "/etc/lb/ha.key"\n'
    cfg = loads(src)
    assert cfg.bgp.mode == "announce" and not cfg.bgp.active_active and cfg.ha is not None


@pytest.mark.parametrize("extra,tail,field,message", [
    ('mode = "scale"', "", "bgp.mode", "unknown mode 'scale' (expected one of: active-active, announce)"),
    ("hold_time = 2", "", "bgp.hold_time", "must be between 3 and 65535, got 2"),
    ("lease = 1", "", "bgp.lease", "must be between 2 and 3600 seconds, got 1"),
    ("drain = 30", "", "bgp.drain", "must be between 0 and 20 seconds, got 30"),
    ("settle = 601", "", "bgp.settle", "must be between 0 and 600 seconds, got 601"),
    # beyond any number of seconds lb takes, or not a number: still the key's own range
    ("lease = 100000", "", "bgp.lease", "must be between 2 and 3600 seconds, got 100000"),
    ("lease = nan", "", "bgp.lease", "must be between 2 and 3600 seconds, got nan"),
    ("drain = -inf", "", "bgp.drain", "must be between 0 and 20 seconds, got -inf"),
    ("settle = 1e9", "", "bgp.settle", "must be between 0 and 600 seconds, got 1e+09"),
    ('lease = "3s"', "", "bgp.lease", 'expected a number of seconds, got string "3s"'),
    ('router_id = "2001:2::1"', "", "bgp.router_id", "a BGP router id is a dotted IPv4 address, got 2001:2::1"),
    ("", '  [[bgp.neighbor]]\n  address = "198.18.0.254"\n  peer_as = 65000\n', "bgp.neighbor[1].address",
     "neighbor 198.18.0.254 is listed twice (also neighbor[0])"),
    ("", '  [[bgp.neighbor]]\n  address = "198.18.0.253"\n  peer_as = 0\n', "bgp.neighbor[1].peer_as",
     "must be between 1 and 4294967295, got 0"),
    ("", '  [[bgp.neighbor]]\n  address = "198.18.0.253"\n  peer_as = 1\n  local_address = "2001:2::1"\n',
     "bgp.neighbor[1].local_address", "2001:2::1 is IPv6 but the neighbor 198.18.0.253 is IPv4"),
    ("", '  [[bgp.vip]]\n  address = "198.18.10.99"\n', "bgp.vip[0].address",
     "198.18.10.99 is not the address of any virtual_server (VIPs: 198.18.10.10, 198.18.10.11)"),
    ("", '  [[bgp.vip]]\n  address = "198.18.10.10"\n  communities = ["65536:1"]\n', "bgp.vip[0].communities",
     "'65536:1' is not a BGP community: ASN:VALUE with both 0..65535 (e.g. \"65000:100\"), or one of "
     "no-export, no-advertise, no-export-subconfed"),
    ("", '  [[bgp.vip]]\n  address = "198.18.10.10"\n  med = -1\n', "bgp.vip[0].med",
     "must be between 0 and 4294967295, got -1"),
    ("", '  [[bgp.vip]]\n  address = "198.18.10.10"\n  [[bgp.vip]]\n  address = "198.18.10.10"\n',
     "bgp.vip[1].address", "VIP 198.18.10.10 is listed twice (also vip[0])"),
    ("", '  [[bgp.vip]]\n  address = "198.18.10.10"\n  next_hop = "self"\n', "bgp.vip[0].next_hop",
     "unknown key 'next_hop' (expected one of: address, med, communities)"),
])
def test_bad_values_name_line_and_field(extra, tail, field, message) -> None:
    src = text(extra, tail=tail)
    got = issues(src)
    assert [(f, m) for _, f, m in got] == [(field, message)]
    line = got[0][0]
    key = field.rsplit(".", 1)[-1].split("[")[0]
    assert key in src.splitlines()[line - 1] or key == "address", (line, src.splitlines()[line - 1])


def test_a_vip_of_a_family_no_neighbor_has_is_refused() -> None:
    """Each session carries its own address family: an IPv6 VIP with IPv4 neighbors only would be
    shown "announced" while no router hears of it.  An IPv6 neighbor beside makes it good."""
    v6 = '\n[[virtual_server]]\nname = "web6"\naddress = "2001:2::10"\nport = 80\nscheduler = "mh"\n' \
         '  [[virtual_server.real_server]]\n  address = "2001:2:0:1::11"\n'
    src = text(tail=v6)
    [(line, field, message)] = issues(src)
    assert field == "virtual_server[2].address" and src.splitlines()[line - 1] == 'address = "2001:2::10"'
    assert message == ("VIP 2001:2::10 is IPv6 and no [[bgp.neighbor]] is: add an IPv6 neighbor (each BGP "
                       "session carries its own address family)")
    both = src + '  [[bgp.neighbor]]\n  address = "2001:2::fe"\n  peer_as = 65000\n'
    assert len(loads(both).bgp.neighbors) == 2


def test_router_id_is_required_without_an_ipv4_neighbor() -> None:
    """The router id defaults to our address toward an IPv4 neighbor: with IPv6 ones only, `lb
    check` said ok and `lb run` stopped at start."""
    v6 = BASE.format(network="direct", scheduler="mh").replace("198.18.10.10", "2001:2::10").replace(
        "198.18.10.11", "2001:2::11").replace("198.18.1.1", "2001:2:0:1::1")
    src = v6 + BGP.format(extra="").replace("198.18.0.254", "2001:2::fe")
    [(line, field, message)] = issues(src)
    assert field == "bgp.router_id" and src.splitlines()[line - 1] == "[bgp]"
    assert message.startswith("required when no [[bgp.neighbor]] is IPv4")
    assert loads(src.replace("local_as = 65001", 'local_as = 65001\nrouter_id = "198.18.0.1"')).bgp.router_id == \
        IPv4Address("198.18.0.1")


def test_neighbor_is_required() -> None:
    src = BASE.format(network="direct", scheduler="mh") + "\n[bgp]\nlocal_as = 65001\n"
    assert [(f, m) for _, f, m in issues(src)] == [
        ("bgp.neighbor", "at least one [[bgp.neighbor]] is required (the router: address, peer_as)")]
    assert [(f, m) for _, f, m in issues(src.replace("local_as = 65001", ""))][0] == (
        "bgp.local_as", "required key is missing")


LVSCF = """\
network = tunnel
lb_instance = so1
lb_public_interface = pub0
lb_bgp_local_as = 65001
lb_bgp_hold_time = 3
lb_bgp_lease = 2.5
lb_bgp_drain = 1
lb_bgp_settle = 0.5
lb_bgp_neighbors = "198.18.0.254 as 65000 local 198.18.0.1, 198.18.0.253 as 65000"
lb_bgp_vips = "198.18.10.10 med 10 community 65000:100 community no-export"

virtual web {
     address = 198.18.10.10 pub0
     port = 80
     scheduler = mh
     server rs1 {
          address = 198.18.1.11
     }
}
"""


def test_lvscf_keys_read_write_and_import() -> None:
    cfg = lvscf.loads(LVSCF)
    b = cfg.bgp
    assert (b.mode, b.local_as, b.hold_time, b.lease, b.drain, b.settle) == ("active-active", 65001, 3, 2.5, 1.0, 0.5)
    assert b.neighbors == (BgpNeighbor(ip_address("198.18.0.254"), 65000, ip_address("198.18.0.1")),
                           BgpNeighbor(ip_address("198.18.0.253"), 65000))
    assert b.vips == (BgpVip(ip_address("198.18.10.10"), 10, ("65000:100", "no-export")),)
    assert lvscf.loads(lvscf.dumps(cfg)) == cfg
    assert loads(lvscf.dumps_toml(cfg)).bgp == b            # lb import
    assert 'lb_bgp_neighbors = "198.18.0.254 as 65000 local 198.18.0.1, 198.18.0.253 as 65000"' in lvscf.dumps(cfg)


def test_lvscf_errors_name_the_lvscf_key_and_line() -> None:
    bad = (LVSCF.replace("lb_bgp_hold_time = 3", "lb_bgp_hold_time = 1")
           .replace("198.18.0.253 as 65000\"", "198.18.0.253 at 65000\"")
           .replace("scheduler = mh", "scheduler = wrr"))
    with pytest.raises(ConfigError) as ei:
        lvscf.loads(bad, "lvs.cf")
    got = [(i.line, i.field, i.message) for i in ei.value.issues]
    assert got == [
        (5, "lb_bgp_hold_time", "must be between 3 and 65535, got 1"),
        (9, "lb_bgp_neighbors", "unknown word 'at' in '198.18.0.253 at 65000' "
                                "(expected 'ADDRESS as AS [local ADDRESS]')"),
        (15, "virtual[web].scheduler", got[2][2]),
    ]
    assert "scheduler 'wrr'" in got[2][2]


def test_example_documents_bgp() -> None:
    cfg = load(CONFIGS / "example.toml")
    assert cfg.bgp.mode == "announce" and cfg.ha is not None and cfg.network == "nat"
    assert cfg.bgp.vip(ip_address("198.18.0.10")).communities == ("65000:100", "no-export")
