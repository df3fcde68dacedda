"""Each real server reaches the data plane with its own thresholds: the engine builds one RealSpec
per configured (address, port), and the maps of a loaded XDP data plane hold them, as `lb list
--thresholds` reads them back.  Two NAT real servers on one address (different ports) keep
theirs apart; a sorry server gets none, also when it shares an address with a real server."""
from __future__ import annotations

import ipaddress

import pytest

from lb import config as lbconfig
from lb.dataplane import layout as L
from lb.dataplane import reader
from lb.dataplane.maps import PinnedMaps
from lb.engine import build_table, real_key
from packets_util import loaded_dataplane

CONFIG = """
[global]
public_interface = "pub0"
network = "nat"
private_interface = "priv0"
nat_router = "198.18.1.254/24"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
scheduler = "wlc"
sorry_server = "{sorry}"

[[virtual_server.real_server]]
name = "a"
address = "198.18.1.5"
port = 8080
u_threshold = 100

[[virtual_server.real_server]]
name = "b"
address = "198.18.1.5"
port = 8081
u_threshold = 7
l_threshold = 3

[[virtual_server.real_server]]
name = "c"
address = "198.18.1.6"
port = 8080
"""

A = ipaddress.ip_address


def _thresholds(dp) -> dict:
    """(address, port) -> (u_threshold, l_threshold), from lb_reals and from the listing rows."""
    in_maps = {}
    for _, st in dp.services.items():
        for (addr, port), rid in st.dests:
            real = L.Real.unpack(dp.maps["lb_reals"].get(L.U32.pack(rid)))
            in_maps[(str(addr), port)] = (real.u_threshold, real.l_threshold)
    with PinnedMaps(dp.instance) as maps:
        listed = {(str(r.address), r.port): (r.u_threshold, r.l_threshold)
                  for row in reader.read_services(maps) for r in row.reals}
    assert listed == in_maps
    return in_maps


def test_two_servers_on_one_address_keep_their_own_thresholds():
    cfg = lbconfig.loads(CONFIG.format(sorry="198.18.1.9:8080"))
    with loaded_dataplane("thr", table=build_table(cfg)) as dp:
        assert _thresholds(dp) == {("198.18.1.5", 8080): (100, 0), ("198.18.1.5", 8081): (7, 3),
                                   ("198.18.1.6", 8080): (0, 0)}


@pytest.mark.parametrize("sorry", ["198.18.1.9:8080", "198.18.1.5:9000"])
def test_the_sorry_server_gets_no_thresholds_of_another_server(sorry):
    """All real servers down: the sorry server alone, without the thresholds of the real
    servers (on its own address, or on the address it shares with two of them)."""
    cfg = lbconfig.loads(CONFIG.format(sorry=sorry))
    vs = cfg.virtual_servers[0]
    down = {real_key(vs, rs): False for rs in vs.real_servers}
    with loaded_dataplane("thrs", table=build_table(cfg)) as dp:
        dp.apply(build_table(cfg, down))
        addr, port = sorry.split(":")
        assert _thresholds(dp) == {(addr, int(port)): (0, 0)}
