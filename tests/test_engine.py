"""build_table: the desired table from a config and the health of its real servers."""
from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address

from lb.config import Config, RealServer, VirtualServer
from lb.config.model import Monitor
from lb.engine import build_table, real_key

SORRY = IPv4Address("10.9.1.99")


def _cfg(quiesce: bool = False, weights=(1, 1), sorry=(SORRY, None), network="direct") -> Config:
    reals = tuple(RealServer(f"r{i}", IPv4Address(f"10.9.1.{i + 1}"), weight=w) for i, w in enumerate(weights))
    vs = VirtualServer(name="web", address=IPv4Address("10.9.0.1"), port=80, real_servers=reals,
                       monitor=Monitor(quiesce=quiesce), sorry_server=sorry)
    return Config(public_interface="eth0", network=network, virtual_servers=(vs,))


def _reals(cfg, health):
    sorry: set = set()
    (svc,) = build_table(cfg, health, sorry).services
    return {(str(r.address), r.port, r.weight, r.forward) for r in svc.reals}, sorry


def _health(cfg, *up):
    vs = cfg.virtual_servers[0]
    return {real_key(vs, rs): ok for rs, ok in zip(vs.real_servers, up)}


def test_all_dead_gives_only_the_sorry_server() -> None:
    cfg = _cfg()
    reals, sorry = _reals(cfg, _health(cfg, False, False))
    assert reals == {("10.9.1.99", 80, 1, "dr")}
    assert sorry == {cfg.virtual_servers[0].key}


def test_one_back_drops_the_sorry_server() -> None:
    cfg = _cfg()
    reals, sorry = _reals(cfg, _health(cfg, False, True))
    assert reals == {("10.9.1.2", 80, 1, "dr")} and sorry == set()
    reals, sorry = _reals(cfg, _health(cfg, True, True))
    assert reals == {("10.9.1.1", 80, 1, "dr"), ("10.9.1.2", 80, 1, "dr")} and sorry == set()


def test_quiesced_dead_servers_count_as_unusable() -> None:
    cfg = _cfg(quiesce=True)
    reals, sorry = _reals(cfg, _health(cfg, False, False))
    assert reals == {("10.9.1.99", 80, 1, "dr")} and sorry
    reals, sorry = _reals(cfg, _health(cfg, False, True))
    assert reals == {("10.9.1.1", 80, 0, "dr"), ("10.9.1.2", 80, 1, "dr")} and not sorry


def test_weight_zero_and_inactive_servers_are_unusable() -> None:
    cfg = _cfg(weights=(0, 0))
    reals, sorry = _reals(cfg, {})
    assert reals == {("10.9.1.99", 80, 1, "dr")} and sorry
    cfg = _cfg(weights=(0, 2))
    assert _reals(cfg, {})[0] == {("10.9.1.1", 80, 0, "dr"), ("10.9.1.2", 80, 2, "dr")}
    vs = cfg.virtual_servers[0]
    inactive = dataclasses.replace(vs, real_servers=tuple(dataclasses.replace(r, active=False)
                                                          for r in vs.real_servers))
    cfg = dataclasses.replace(cfg, virtual_servers=(inactive,))
    assert _reals(cfg, {})[0] == {("10.9.1.99", 80, 1, "dr")}


def test_no_sorry_server_leaves_the_service_empty() -> None:
    cfg = _cfg(sorry=None)
    reals, sorry = _reals(cfg, _health(cfg, False, False))
    assert reals == set() and sorry == set()


def test_sorry_server_port_and_nat_forwarding() -> None:
    cfg = _cfg(sorry=(SORRY, 8080), network="nat")
    reals, _ = _reals(cfg, _health(cfg, False, False))
    assert reals == {("10.9.1.99", 8080, 1, "nat")}
