"""lb.metrics without a lab: the collector over a fixed engine status and data-plane rows, parsed
as Prometheus parses it; the endpoint over HTTP with an engine whose data plane blocks (the
engine's loop keeps running)."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lb import metrics
from lb.config.model import Metrics
from lb.dataplane.records import RealRow, ServiceRow, Stats

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
IP = ipaddress.ip_address


def real(name, addr, **kw):
    r = {"name": name, "address": addr, "port": 80, "weight": 1, "weight_source": "configured",
         "configured_weight": 1, "health": "up", "checks": 0, "failures": 0, "downs": 0, "ups": 0,
         "last_check": None}
    r.update(kw)
    return r


def status(ha=True):
    doc = {
        "instance": "lab", "dataplane": "xdp", "at": 1000.0, "config_warnings": 2,
        "ownership": {"addresses_restored": 3, "xdp_attached": 1, "last": "pub0: ...", "at": 990.0},
        "reloads": {"ok": 3, "refused": 1, "failed": 0, "last_ok": False, "loaded_at": 900.0},
        "task_restarts": {"bgp-lease": 2, "health": 0}, "housekeeping_errors": {"sweep": 7},
        "housekeeping_seconds": {"sweep": {"runs": 12, "seconds": 6.25, "last": 0.5}},
        "services": [
            {"name": "web", "protocol": "tcp", "address": "198.18.0.10", "port": 80, "fwmark": 0,
             "on_sorry_server": False, "real_servers": [
                 real("rs1", "198.18.1.11", checks=9, failures=2, ups=1, downs=1, not_run=4,
                      last_check={"ok": True, "detail": "ok", "at": 998.5, "duration": 0.0042}),
                 real("rs2", "198.18.1.12", weight=0, weight_source="down", health="down", checks=9, failures=9,
                      downs=1, last_check={"ok": False, "detail": "refused", "at": 999.0, "duration": 3.0})]},
            {"name": "ftp", "protocol": "tcp", "address": None, "port": None, "fwmark": 21,
             "on_sorry_server": False, "real_servers": [
                 real("f1", "198.18.1.13", port=21, weight=2, weight_source="override", configured_weight=1,
                      health="unmonitored")]},
        ],
    }
    if ha:
        doc["ha"] = {
            "node": "backup", "role": "backup", "role_changes": 3, "takeovers": 1, "link_ok": True,
            "keys": {"file": "/etc/lb/ha.key", "count": 2, "peer_signs_with": 2},
            "peer": {"state": "active", "alive": True, "last_heard_s": 0.25},
            "channels": {"public": {"rx": 40, "tx": 41, "tx_errors": 1, "icmp_errors": 3, "last_heartbeat_s": 0.25},
                         "private": {"rx": 39, "tx": 41, "tx_errors": 0, "last_heartbeat_s": None}},
            "sync": {"enabled": True, "tracked": 0, "pending": 0, "last_tx_s": None, "last_rx_s": 1.5},
            "counters": {"rx": 79, "bad_auth": 4, "replay": 1, "stale": 0, "malformed": 2, "wrong_channel": 0,
                         "standdown_rx": 1, "sync_rx_records": 12, "sync_tx_records": 0, "sync_skipped": 3,
                         "sync_pending": 0, "refused_peer": 5, "unheard": 6, "kernel_drops": 2, "offpath": 0,
                         "sync_rejected": 0, "sync_expired": 0},
        }
    return doc


def rows():
    rs1 = RealRow(IP("198.18.1.11"), 80, "Route", 1, active=2, inactive=5, persist=1,
                  stats=Stats(7, 70, 0, 7000, 0), rate=Stats(1, 10, 0, 900, 0))
    sorry = RealRow(IP("198.18.1.99"), 80, "Route", 0, stats=Stats(1, 2, 3, 4, 5))
    web = ServiceRow("TCP", IP("198.18.0.10"), 80, "wrr", reals=[rs1, sorry], stats=Stats(8, 72, 3, 7004, 5),
                     rate=Stats(1, 10, 0, 900, 0))
    f1 = RealRow(IP("198.18.1.13"), 0, "Route", 2, stats=Stats(1, 1, 1, 1, 1))
    ftp = ServiceRow("", None, 0, "rr", fwmark=21, reals=[f1], stats=Stats(1, 1, 1, 1, 1))
    return [web, ftp]


def defense():
    """Defender.status() under a flood: drop_packet engaged automatically, secure_tcp always on."""
    return {"modes": {"drop_entry": 1, "drop_packet": 2, "secure_tcp": 3}, "engaged": ["drop_packet", "secure_tcp"],
            "embryonic_free": 100, "embryonic_size": 16384, "amemthresh": 1024, "drop_rate": 4,
            "drop_entry_deleted": 0}


class Source:
    def __init__(self, doc=None, services=None, counters=None, fail_dp=False, defense=defense):
        self.doc = status() if doc is None else doc
        self.rows = rows() if services is None else services
        self.cnt = {"no_real_server": 3, "tcp_not_syn": 0, "conn_table_entries": 12} if counters is None else counters
        self.fail_dp = fail_dp
        self.dfn = defense() if callable(defense) else defense

    def status(self):
        return self.doc

    def services(self):
        if self.fail_dp:
            raise OSError("no such map")
        return self.rows

    def counters(self):
        return self.cnt

    def defense(self):
        return self.dfn


def scrape(source) -> dict:
    """{(name, frozenset(labels)): value} of one scrape, parsed by prometheus_client's parser."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(metrics.Collector(source))
    return parse(generate_latest(reg).decode())


def parse(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, key
            out[key] = s.value
    return out


def value(samples, name, **labels):
    matches = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


WEB = dict(service="web", protocol="tcp", vip="198.18.0.10", vport="80", fwmark="0")


def test_real_server_counters_and_status():
    s = scrape(Source())
    rs1 = dict(WEB, server="rs1", rip="198.18.1.11", rport="80")
    assert [value(s, f"lb_real_server_{n}_total", **rs1) for n in
            ("connections", "incoming_packets", "outgoing_packets", "incoming_bytes", "outgoing_bytes")] == [7, 70, 0, 7000, 0]
    assert value(s, "lb_real_server_incoming_bytes_per_second", **rs1) == 900
    assert (value(s, "lb_real_server_connections_active", **rs1), value(s, "lb_real_server_connections_inactive", **rs1),
            value(s, "lb_real_server_persistence_templates", **rs1)) == (2, 5, 1)
    assert value(s, "lb_real_server_health_checks_total", **rs1) == 9
    assert value(s, "lb_real_server_health_check_failures_total", **rs1) == 2
    assert value(s, "lb_real_server_health_checks_not_run_total", **rs1) == 4
    assert value(s, "lb_real_server_health_transitions_total", to="down", **rs1) == 1
    assert value(s, "lb_real_server_last_health_check_duration_seconds", **rs1) == 0.0042
    assert value(s, "lb_real_server_last_health_check_timestamp_seconds", **rs1) == 998.5
    assert value(s, "lb_real_server_up", **rs1) == 1
    assert value(s, "lb_real_server_weight_source", source="configured", **rs1) == 1
    assert value(s, "lb_real_server_weight_source", source="override", **rs1) == 0
    # down: out of the table, so only what the engine knows
    rs2 = dict(WEB, server="rs2", rip="198.18.1.12", rport="80")
    assert value(s, "lb_real_server_up", **rs2) == 0
    assert value(s, "lb_real_server_weight", **rs2) == 0
    assert value(s, "lb_real_server_weight_source", source="down", **rs2) == 1
    assert value(s, "lb_real_server_last_health_check_success", **rs2) == 0
    assert not [k for k in s if k[0] == "lb_real_server_connections_total" and ("server", "rs2") in k[1]]
    # in the table, not in the config: the data plane's numbers with an empty server name
    assert value(s, "lb_real_server_outgoing_bytes_total", rip="198.18.1.99", server="") == 5
    # a firewall-mark service: its real servers' port is 0, as `lb list` shows it
    f1 = dict(service="ftp", protocol="", vip="", vport="", fwmark="21", server="f1", rip="198.18.1.13", rport="0")
    assert value(s, "lb_real_server_connections_total", **f1) == 1
    assert value(s, "lb_real_server_weight", **f1) == 2
    assert value(s, "lb_real_server_weight_source", source="override", **f1) == 1
    assert value(s, "lb_real_server_health_checked", **f1) == 0


def test_a_real_server_whose_next_hop_does_not_resolve():
    """rs1's next hop does not resolve and none was before (no new connections); f1's does not
    either but the one resolved before is kept; rs2 (down, not in the table) has nothing to say."""
    doc = status()
    rs1, _, f1 = doc["services"][0]["real_servers"] + doc["services"][1]["real_servers"]
    rs1["nexthop_error"] = {"reason": "real server 198.18.1.11: no ARP/ND answer from 198.18.1.11 on priv0",
                            "kept": False}
    f1["nexthop_error"] = {"reason": "real server 198.18.1.13: no ARP/ND answer", "kept": True}
    s = scrape(Source(doc=doc))
    web = dict(WEB, rport="80")
    fwm = dict(service="ftp", protocol="", vip="", vport="", fwmark="21", server="f1", rip="198.18.1.13", rport="0")
    assert (value(s, "lb_real_server_nexthop_resolved", server="rs1", rip="198.18.1.11", **web),
            value(s, "lb_real_server_no_nexthop", server="rs1", rip="198.18.1.11", **web)) == (0, 1)
    assert (value(s, "lb_real_server_nexthop_resolved", **fwm), value(s, "lb_real_server_no_nexthop", **fwm)) == (0, 0)
    assert (value(s, "lb_real_server_nexthop_resolved", server="rs2", rip="198.18.1.12", **web),
            value(s, "lb_real_server_no_nexthop", server="rs2", rip="198.18.1.12", **web)) == (1, 0)
    # rs1 takes no new connections: the pool has no usable real server (rs2 is down); f1 still is
    assert value(scrape(Source()), "lb_virtual_server_usable_real_servers", **WEB) == 1
    assert value(s, "lb_virtual_server_usable_real_servers", **WEB) == 0
    assert value(s, "lb_virtual_server_usable_real_servers", service="ftp", protocol="", vip="", vport="",
                 fwmark="21") == 1


def test_service_dataplane_reload_and_ha():
    s = scrape(Source())
    assert value(s, "lb_virtual_server_info", scheduler="wrr", **WEB) == 1
    assert value(s, "lb_virtual_server_connections_total", **WEB) == 8
    assert value(s, "lb_virtual_server_usable_real_servers", **WEB) == 1
    assert value(s, "lb_dataplane_events_total", event="no_real_server") == 3
    assert value(s, "lb_dataplane_conn_table_entries") == 12
    assert value(s, "lb_config_reloads_total", result="refused") == 1
    assert value(s, "lb_config_last_reload_successful") == 0
    assert value(s, "lb_config_warnings") == 2
    assert value(s, "lb_addresses_restored_total") == 3 and value(s, "lb_dataplane_xdp_attached_again_total") == 1
    assert value(s, "lb_task_restarts_total", task="bgp-lease") == 2 and value(s, "lb_task_restarts_total", task="health") == 0
    # a step failing at every turn (the sweep, say) was only in the log and `lb status --json`
    assert value(s, "lb_housekeeping_errors_total", step="sweep") == 7
    assert value(s, "lb_housekeeping_errors_total", step="refresh_nexthops") == 0
    # what the steps take (the sweep at 1M connections: half a second, every 5 s)
    assert value(s, "lb_housekeeping_runs_total", step="sweep") == 12
    assert value(s, "lb_housekeeping_seconds_total", step="sweep") == 6.25
    assert value(s, "lb_housekeeping_last_seconds", step="sweep") == 0.5
    assert value(s, "lb_info", lb_instance="lab", dataplane="xdp") == 1
    assert value(s, "lb_ha_role", role="backup") == 1 and value(s, "lb_ha_role", role="active") == 0
    assert value(s, "lb_ha_peer_state", state="active") == 1
    assert value(s, "lb_ha_takeovers_total") == 1
    assert value(s, "lb_ha_keys") == 2 and value(s, "lb_ha_peer_key") == 2     # a change of keys under way
    assert value(s, "lb_ha_heartbeats_sent_total", channel="public") == 41
    assert value(s, "lb_ha_heartbeat_send_errors_total", channel="public") == 1
    assert value(s, "lb_ha_heartbeat_icmp_errors_total", channel="public") == 3
    assert value(s, "lb_ha_last_heartbeat_timestamp_seconds", channel="public") == 999.75
    # every pulse counter that is not an accepted message nor one of its own is a refusal, new
    # ones included; an unheard message (a restart's first half deadtime) is not
    assert value(s, "lb_ha_heartbeats_unheard_total") == 6
    assert value(s, "lb_ha_kernel_dropped_datagrams_total") == 2
    refused = {dict(ls)["reason"]: v for (n, ls), v in s.items() if n == "lb_ha_heartbeats_refused_total"}
    assert refused == {"bad_auth": 4, "replay": 1, "stale": 0, "malformed": 2, "wrong_channel": 0, "refused_peer": 5}
    assert value(s, "lb_ha_sync_lag_seconds") == 1.5         # a backup: since the last batch received
    assert value(s, "lb_ha_sync_received_records_total") == 12
    assert value(s, "lb_up") == 1 and value(s, "lb_dataplane_up") == 1


def test_without_ha_or_dataplane():
    s = scrape(Source(doc=status(ha=False), fail_dp=True))
    assert not [k for k in s if k[0].startswith("lb_ha_")]
    assert value(s, "lb_dataplane_up") == 0
    assert not [k for k in s if k[0] == "lb_real_server_connections_total"]
    assert value(s, "lb_real_server_up", server="rs2") == 0      # what the engine knows is still there


def test_embryonic_table_fill_and_defenses():
    s = scrape(Source())
    assert value(s, "lb_dataplane_embryonic_entries") == 16384 - 100
    assert value(s, "lb_dataplane_embryonic_entries_limit") == 16384
    assert value(s, "lb_dataplane_defense_threshold_free_entries") == 1024
    assert {dict(ls)["strategy"]: v for (n, ls), v in s.items() if n == "lb_dataplane_defense_engaged"} == \
        {"drop_entry": 0, "drop_packet": 1, "secure_tcp": 1}
    assert {dict(ls)["strategy"]: v for (n, ls), v in s.items() if n == "lb_dataplane_defense_mode"} == \
        {"drop_entry": 1, "drop_packet": 2, "secure_tcp": 3}
    assert value(s, "lb_dataplane_defense_drop_packet_ratio") == 0.25        # 1 in 4
    assert value(s, "lb_dataplane_defense_drop_entry_deletions_total") == 0
    # calm: nothing engaged, nothing dropped; drop_entry's deletions stay counted
    calm = dict(defense(), modes={"drop_entry": 1, "drop_packet": 1, "secure_tcp": 0}, engaged=[],
                embryonic_free=16380, drop_rate=0, drop_entry_deleted=37)
    s = scrape(Source(defense=calm))
    assert value(s, "lb_dataplane_embryonic_entries") == 4
    assert {v for (n, _ls), v in s.items() if n == "lb_dataplane_defense_engaged"} == {0}
    assert value(s, "lb_dataplane_defense_drop_packet_ratio") == 0
    assert value(s, "lb_dataplane_defense_drop_entry_deletions_total") == 37


def test_ipvs_dataplane_has_no_defense_metrics():
    """The kernel keeps IPVS's defenses and its table to itself (defense_status() is None)."""
    s = scrape(Source(defense=None))
    assert not [k for k in s if k[0].startswith(("lb_dataplane_defense_", "lb_dataplane_embryonic_"))]
    assert value(s, "lb_dataplane_up") == 1


def bgp_status() -> dict:
    """[bgp]'s part of `lb status --json`: one session up, one down; one VIP announced, one
    settling, one servable and not announced"""
    return {
        "mode": "active-active", "local_as": 65001, "router_id": "198.18.0.1", "hold_time": 3, "lease": 3,
        "drain": 2, "renew_failures": 4,
        "speaker": {"name": "exabgp", "pid": 123, "agent": True, "restarts": 1, "withdrawn_because": None,
                    "errors": 2, "bad_lines": 5},
        "neighbors": [{"address": "198.18.0.254", "peer_as": 65000, "local_address": "198.18.0.1", "state": "up",
                       "since": None, "reason": None, "ups": 3},
                      {"address": "198.18.0.253", "peer_as": 65000, "local_address": "198.18.0.1",
                       "state": "down", "since": None, "reason": "peer reset", "ups": 0}],
        "announced": ["198.18.0.10/32"],
        "vips": [{"prefix": "198.18.0.10/32", "servable": True, "reason": None, "med": None, "communities": []},
                 {"prefix": "198.18.0.11/32", "servable": False, "reason": "settling", "med": None,
                  "communities": []},
                 # servable, and the speaker has not announced it (yet, or a refused command)
                 {"prefix": "198.18.0.12/32", "servable": True, "reason": None, "med": None, "communities": []}]}


def test_bgp_sessions_and_routes():
    """[bgp]: the sessions and routes `lb status` shows, and the counters of what went wrong on
    the way to the router (none were exported: a director out of the ECMP group was seen only by
    someone running `lb status`)."""
    from lb.bgp.announcer import format_status

    doc = status(ha=False)
    doc["bgp"] = bgp_status()
    format_status(doc["bgp"])                  # the document is one `lb status` prints
    s = scrape(Source(doc=doc))
    assert value(s, "lb_bgp_speaker_up") == 1 and value(s, "lb_bgp_speaker_restarts_total") == 1
    assert value(s, "lb_bgp_speaker_refused_commands_total") == 2
    assert value(s, "lb_bgp_speaker_unreadable_lines_total") == 5
    assert value(s, "lb_bgp_lease_renew_failures_total") == 4
    assert value(s, "lb_bgp_session_up", neighbor="198.18.0.254") == 1
    assert value(s, "lb_bgp_session_up", neighbor="198.18.0.253") == 0
    assert value(s, "lb_bgp_session_ups_total", neighbor="198.18.0.254") == 3
    assert value(s, "lb_bgp_route_announced", prefix="198.18.0.10/32") == 1
    assert value(s, "lb_bgp_route_servable", prefix="198.18.0.11/32") == 0
    assert value(s, "lb_bgp_route_announced", prefix="198.18.0.11/32") == 0
    doc["bgp"]["speaker"].update(pid=None, agent=False)
    assert value(scrape(Source(doc=doc)), "lb_bgp_speaker_up") == 0
    assert not [k for k in scrape(Source()) if k[0].startswith("lb_bgp_")]     # no [bgp], no series


def documented() -> set[str]:
    """The metric names docs/metrics.md lists."""
    text = DOCS.read_text()
    names = set(re.findall(r"`(lb_[a-z_]+)`", text))
    # "`_incoming_packets_total`"-style suffixes in a row stand for the row's first name's prefix
    for row in text.splitlines():
        prefixes = re.findall(r"`(lb_[a-z_]+?)_(?:connections|incoming|outgoing|sync)", row)
        for suffix in re.findall(r"`(_[a-z_]+)`", row):
            names |= {n + suffix for n in prefixes}
    return names


def test_names_follow_prometheus_conventions_and_are_documented():
    reg = CollectorRegistry(auto_describe=False)
    reg.register(metrics.Collector(Source()))
    reg.register(metrics.EndpointCollector(lambda: None))
    docs = documented()
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        assert fam.name.startswith("lb_"), fam.name
        if fam.type == "counter":
            assert all(s.name.endswith("_total") for s in fam.samples), fam.name
        name = fam.name + ("_total" if fam.type == "counter" else "")
        if name.startswith("lb_dataplane_") and name.endswith(metrics.LEVEL_SUFFIXES):
            continue                       # documented as lb_dataplane_<name>
        if fam.type == "info":
            name = fam.name + "_info"
        assert name in docs or fam.name in docs, name


def test_every_documented_metric_is_exported():
    """The other way round: docs/metrics.md lists no metric the collector does not emit (given a
    status that has every part: a sync batch sent, every pulse counter)."""
    doc = status()
    doc["ha"]["sync"]["last_tx_s"] = 2.0
    doc["ha"]["counters"].update({key: 0 for key in metrics.HA_OTHER})
    doc["bgp"] = bgp_status()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(metrics.Collector(Source(doc=doc)))
    reg.register(metrics.EndpointCollector(lambda: None))
    emitted = set()
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        emitted |= {fam.name, fam.name + {"counter": "_total", "info": "_info"}.get(fam.type, "")}
    missing = documented() - {"lb_instance"} - emitted       # (lb_info's label)
    assert not missing, sorted(missing)


def test_no_label_is_one_prometheus_gives_every_target():
    """lb_info's label "instance" (lb's instance name) is the one Prometheus sets on every series
    of a target (host:port): scraped, it became exported_instance, not the documented
    instance -- and under honor_labels it replaced the target's, so that lb_info (the
    dashboard's $instance variable) no longer matched any other series of the director."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(metrics.Collector(Source()))
    reg.register(metrics.EndpointCollector(lambda: None))
    labels = {k for fam in text_string_to_metric_families(generate_latest(reg).decode())
              for smp in fam.samples for k in smp.labels}
    assert "lb_instance" in labels
    assert not labels & {"instance", "job"}, labels & {"instance", "job"}
    assert "`lb_instance`" in DOCS.read_text()


def test_the_grafana_dashboard_uses_only_documented_metrics():
    import json

    dash = json.loads((DOCS.parent / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    used = {n for e in exprs for n in re.findall(r"\b(lb_[a-z_]+)", e)}
    assert used and used <= documented(), used - documented()


# ---- the endpoint ----------------------------------------------------------------------------

class BlockingDataplane:
    kind = "xdp"

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    reads = 0

    def read_services(self):
        self.reads += 1
        self.entered.set()
        assert self.release.wait(30)
        return rows()

    def read_own_services(self):
        return self.read_services()

    def counters(self):
        return {"no_real_server": 1}

    def defense_status(self):
        return defense()


class FakeEngine:
    def __init__(self):
        # port 0: the server binds a port the kernel picks and holds it (server.port), no
        # check-then-use race with other processes
        self.cfg = SimpleNamespace(metrics=Metrics(enabled=True, port=0))
        self.dp = BlockingDataplane()
        self.status_calls = []

    def status(self, counters=True, configuration=True):
        assert not counters, "the scrape reads the data path's counters in its own thread"
        assert not configuration, "no metric reads the configuration file's part"
        self.status_calls.append(threading.current_thread())
        return status(ha=False)


def test_endpoint_serves_while_the_loop_runs():
    """A scrape whose data-plane read blocks holds only its own thread: the engine's loop goes on
    (and built the status itself, on the loop's thread)."""
    async def main():
        eng = FakeEngine()
        server = await metrics.start(eng)
        loop = asyncio.get_running_loop()
        try:
            assert server.port
            url = f"http://127.0.0.1:{server.port}/metrics"
            fetch = loop.run_in_executor(None, lambda: urllib.request.urlopen(url, timeout=30).read().decode())
            assert await loop.run_in_executor(None, eng.dp.entered.wait, 30)
            ticks = 0
            for _ in range(5):             # the loop is free while the scrape waits on the data plane
                await asyncio.sleep(0)
                ticks += 1
            assert ticks == 5 and not fetch.done()
            eng.dp.release.set()
            text = await fetch
        finally:
            await loop.run_in_executor(None, server.stop)
        assert eng.status_calls == [threading.main_thread()]
        s = parse(text)
        assert value(s, "lb_real_server_connections_total", server="rs1") == 7
        assert value(s, "lb_dataplane_events_total", event="no_real_server") == 1
        assert value(s, "lb_dataplane_defense_engaged", strategy="drop_packet") == 1
        assert any(n.startswith("process_") for n, _ in s)
        # stopped: nothing listens any more
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=5)

    asyncio.run(main())


def test_endpoint_off_and_unbindable(caplog):
    caplog.set_level(logging.INFO, "lb.metrics")

    async def main():
        eng = FakeEngine()
        eng.cfg.metrics = Metrics()                    # off: nothing served
        server = await metrics.start(eng)
        assert server.httpd is None
        import socket

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = Metrics(enabled=True, port=busy.getsockname()[1])
            assert not server.start(taken)             # logged, not raised: forwarding goes on
        assert server.httpd is None
        server.reconfigure(Metrics(enabled=True, port=0))   # a port the kernel picks, held by the server
        try:
            assert server.port
            url = f"http://127.0.0.1:{server.port}/metrics"
            eng.dp.release.set()
            text = await asyncio.get_running_loop().run_in_executor(   # the loop answers the status
                None, lambda: urllib.request.urlopen(url, timeout=30).read().decode())
            assert value(parse(text), "lb_up") == 1
        finally:
            server.stop()
        assert server.port is None
        return url

    url = asyncio.run(main())
    assert "metrics: cannot listen on 127.0.0.1:" in caplog.text
    assert f"metrics on {url}" in caplog.text                   # the bound port, not 0


def test_endpoint_bounds_what_a_client_can_hold(monkeypatch, capfd):
    """Whoever reaches the port: connections over MAX_CONNECTIONS are closed at once, a silent one
    after IDLE_TIMEOUT, a request cut off is counted -- never a traceback on stderr -- and a
    scrape is answered once they are gone."""
    import socket
    import time

    # long enough that the held are still open while the refused are waited for under load
    monkeypatch.setattr(metrics._Handler, "timeout", 5.0)

    async def main():
        eng = FakeEngine()
        eng.dp.release.set()
        server = await metrics.start(eng)
        loop = asyncio.get_running_loop()

        def hold():
            # each from an address of its own (one address may hold only MAX_PER_CLIENT)
            held = [socket.create_connection(("127.0.0.1", server.port), timeout=5,
                                             source_address=(f"127.0.1.{i + 1}", 0))
                    for i in range(metrics.MAX_CONNECTIONS + 8)]
            closed = []

            def still_open(s, wait):
                if wait:
                    s.settimeout(wait)
                else:
                    s.setblocking(False)
                try:
                    s.recv(1)              # b"": closed (nothing is ever sent before a request)
                    return False
                except (BlockingIOError, TimeoutError):
                    return True
                except OSError:            # a reset
                    return False

            # the server takes them in the order they came and closes the refused at once: wait
            # for each of those (bounded: under load the accepts lag), then look at the held
            deadline = time.monotonic() + 3.0
            refused_open = [still_open(s, max(0.01, deadline - time.monotonic()))
                            for s in held[metrics.MAX_CONNECTIONS:]]
            open_then = [still_open(s, 0) for s in held[:metrics.MAX_CONNECTIONS]] + refused_open
            for s in held[metrics.MAX_CONNECTIONS:] + held[:metrics.MAX_CONNECTIONS]:
                s.settimeout(10)
                try:
                    closed.append(s.recv(1))
                except OSError as e:       # a reset is a close too
                    closed.append(type(e).__name__)
                s.close()
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")     # and no end of headers
                s.shutdown(socket.SHUT_WR)
                s.recv(100)
            return closed, open_then

        try:
            closed, open_then = await loop.run_in_executor(None, hold)
            text = await loop.run_in_executor(None, lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{server.port}/metrics", timeout=30).read().decode())
            refused, broken = server.httpd.refused, server.httpd.broken
        finally:
            await loop.run_in_executor(None, server.stop)
        return closed, open_then, text, refused, broken

    closed, open_then, text, refused, broken = asyncio.run(main())
    assert all(c in (b"", "ConnectionResetError") for c in closed), closed
    # the last 8 closed at once, the first MAX_CONNECTIONS held (until the idle timeout closed them)
    assert open_then == [True] * metrics.MAX_CONNECTIONS + [False] * 8, open_then
    assert refused == 8 and broken >= metrics.MAX_CONNECTIONS, (refused, broken)
    assert value(parse(text), "lb_up") == 1
    # ... and the scrape says so
    assert value(parse(text), "lb_metrics_connections_dropped_total", reason="busy") == 8
    assert value(parse(text), "lb_metrics_connections_dropped_total", reason="broken") >= metrics.MAX_CONNECTIONS
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err


def test_one_client_cannot_hold_the_endpoint_by_trickling_or_by_numbers(monkeypatch, capfd):
    """A client that sends a byte of a header every now and then never meets IDLE_TIMEOUT: it is
    cut at REQUEST_DEADLINE.  And one address holds at most MAX_PER_CLIENT connections, so a
    scrape from another is answered while it holds them (32 trickling connections from one host
    kept Prometheus out for as long as they liked)."""
    import socket
    import time

    monkeypatch.setattr(metrics, "REQUEST_DEADLINE", 1.5)

    async def main():
        eng = FakeEngine()
        eng.dp.release.set()
        server = await metrics.start(eng)
        loop = asyncio.get_running_loop()

        def attack():
            held = [socket.create_connection(("127.0.0.1", server.port), timeout=5,
                                             source_address=("127.0.2.1", 0)) for _ in range(metrics.MAX_CONNECTIONS)]
            for s in held:
                s.sendall(b"GET /metrics HTTP/1.1\r\n")
            time.sleep(0.3)
            # another host scrapes meanwhile: answered
            answer = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read().decode()
            t0, ended = time.monotonic(), {}
            while len(ended) < metrics.MAX_PER_CLIENT and time.monotonic() - t0 < 10:
                for i, s in enumerate(held[:metrics.MAX_PER_CLIENT]):
                    if i in ended:
                        continue
                    try:
                        s.sendall(b"X")                     # one byte of an endless header line
                        s.settimeout(0.05)
                        if s.recv(1) == b"":
                            ended[i] = time.monotonic() - t0
                    except socket.timeout:
                        pass
                    except OSError:
                        ended[i] = time.monotonic() - t0
                time.sleep(0.2)
            for s in held:
                s.close()
            return answer, ended

        try:
            answer, ended = await loop.run_in_executor(None, attack)
            refused, cut = server.httpd.refused, server.httpd.cut
        finally:
            await loop.run_in_executor(None, server.stop)
        return answer, ended, refused, cut

    answer, ended, refused, cut = asyncio.run(main())
    assert value(parse(answer), "lb_up") == 1
    assert refused == metrics.MAX_CONNECTIONS - metrics.MAX_PER_CLIENT, refused
    # the four it served, trickling all along, were cut at the deadline
    assert len(ended) == metrics.MAX_PER_CLIENT and cut >= metrics.MAX_PER_CLIENT, (ended, cut)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


def test_a_client_is_an_ipv6_64_and_a_48_not_each_address():
    """The per-client cap counts an IPv6 /64 as one client (32 of its addresses took every slot)
    and a /48 at most MAX_PER_SITE once half the slots are taken (before, one host of a /48
    holding MAX_PER_SITE locked the site's Prometheus out with 24 free); an IPv4 client reaching
    [::] is its IPv4 address."""
    import socket

    httpd = metrics._server_class(socket.AF_INET)(("127.0.0.1", 0), metrics._Handler)
    try:
        one_64 = [httpd._take(f"2001:db8:1:2::{i + 1:x}") for i in range(metrics.MAX_CONNECTIONS)]
        assert one_64.count(True) == metrics.MAX_PER_CLIENT
        one_48 = [httpd._take(f"2001:db8:1:{i + 16:x}::1") for i in range(metrics.MAX_CONNECTIONS)]
        assert one_48.count(True) == metrics.MAX_CONNECTIONS // 2 - metrics.MAX_PER_CLIENT
        assert httpd._take("2001:db8:2::1")                    # another site
        mapped = [httpd._take("::ffff:198.18.0.1") for _ in range(metrics.MAX_PER_CLIENT)]
        assert all(mapped) and not httpd._take("198.18.0.1")
        for i in range(metrics.MAX_PER_CLIENT):
            httpd._give(f"2001:db8:1:2::{i + 1:x}")
        assert not httpd._take("2001:db8:1:2::ffff")           # the /48 holds more than its cap still
        for i, took in enumerate(one_48):
            if took:
                httpd._give(f"2001:db8:1:{i + 16:x}::1")
        assert httpd._take("2001:db8:1:2::ffff")               # given back: the /64 has room again
    finally:
        httpd.server_close()
    httpd = metrics._server_class(socket.AF_INET)(("127.0.0.1", 0), metrics._Handler)
    try:
        neighbour = [httpd._take(f"2001:db8:1:{i // 4:x}::{i % 4 + 1:x}") for i in range(metrics.MAX_PER_SITE)]
        assert all(neighbour) and httpd._take("2001:db8:1:100::10")     # the site's Prometheus
    finally:
        httpd.server_close()


def test_an_unreadable_accept_header_is_refused_and_counted_not_a_traceback(capfd):
    """`Accept: text/plain; version=x` (anyone who reaches the port can send it) made
    prometheus_client compare a str with an int: wsgiref printed a traceback on stderr for each
    such request.  It is answered 400, counted, and a scrape goes on."""
    import socket

    async def main():
        eng = FakeEngine()
        eng.dp.release.set()
        server = await metrics.start(eng)
        loop = asyncio.get_running_loop()

        def hit():
            out = []
            for accept in (b"text/plain; version=x", b"application/openmetrics-text; version=1.x") * 3:
                with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: " + accept + b"\r\n\r\n")
                    out.append(s.recv(100).split(b"\r\n")[0])
            return out

        try:
            lines = await loop.run_in_executor(None, hit)
            text = await loop.run_in_executor(None, lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{server.port}/metrics", timeout=30).read().decode())
        finally:
            await loop.run_in_executor(None, server.stop)
        return lines, text

    lines, text = asyncio.run(main())
    assert all(b" 400 " in line for line in lines), lines
    assert value(parse(text), "lb_metrics_connections_dropped_total", reason="bad_request") == 6
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


def test_a_client_cannot_make_the_endpoint_hold_megabytes_of_headers(capfd):
    """http.server reads 100 header lines of 64 KiB each: 6.5 MB a connection, held while the
    client trickles.  A request line and headers past MAX_HEAD bytes are refused (431) and counted."""
    import socket

    async def main():
        eng = FakeEngine()
        eng.dp.release.set()
        server = await metrics.start(eng)
        loop = asyncio.get_running_loop()

        def hit(head: bytes, lines: int):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.sendall(head)
                try:
                    for _ in range(lines):
                        s.sendall(b"X-A: " + b"a" * 1000 + b"\r\n")
                except OSError:                 # refused before it was all sent
                    pass
                return s.recv(100).split(b"\r\n")[0]

        try:
            line = await loop.run_in_executor(None, hit, b"GET /metrics HTTP/1.1\r\nHost: x\r\n", 99)
            # the request line alone past MAX_HEAD: answered too (414), counted once
            long = await loop.run_in_executor(None, hit, b"GET /metrics?" + b"a" * 20000 + b" HTTP/1.1\r\n", 0)
            text = await loop.run_in_executor(None, lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{server.port}/metrics", timeout=30).read().decode())
        finally:
            await loop.run_in_executor(None, server.stop)
        return line, long, text

    line, long, text = asyncio.run(main())
    assert b" 431 " in line, line
    assert b" 414 " in long, long
    assert value(parse(text), "lb_metrics_connections_dropped_total", reason="bad_request") == 2
    assert "Traceback" not in capfd.readouterr().err


def test_a_supervised_task_s_restarts_are_counted_by_kind():
    """bgp-lease and configsync-push restarted after an error were only logged; every supervised
    task's restarts now reach lb_task_restarts_total by kind (the name up to its first space)."""
    import asyncio
    from lb import tasks

    runs = []

    async def flaky():
        runs.append(1)
        if len(runs) < 3:
            raise OSError("no route to the peer")

    async def main():
        before = dict(tasks.RESTARTS)
        await tasks.supervise("test-kind 198.18.1.11:80", flaky, min_backoff=0.01)
        return before
    before = asyncio.run(main())
    assert len(runs) == 3
    assert tasks.RESTARTS["test-kind"] == before.get("test-kind", 0) + 2
    doc = status()
    doc["task_restarts"] = dict(tasks.RESTARTS)
    assert value(scrape(Source(doc)), "lb_task_restarts_total", task="test-kind") == tasks.RESTARTS["test-kind"]


def test_a_service_on_its_sorry_server_has_no_usable_real_server_and_a_draining_one_no_name():
    """Every real server of web down, its sorry server standing in at weight 1 (lb.engine), rs1
    and a server removed by a reload draining at weight 0: the documented alert (usable == 0)
    fires, and only the sorry server's row is labelled sorry_server."""
    doc = status(ha=False)
    web = doc["services"][0]
    web.update(on_sorry_server=True, sorry_server="198.18.1.99:8080", sorry_real=["198.18.1.99", 8080])
    rs1 = RealRow(IP("198.18.1.11"), 80, "Route", 0, active=2)
    gone = RealRow(IP("198.18.1.50"), 80, "Route", 0, active=7)
    sorry = RealRow(IP("198.18.1.99"), 8080, "Route", 1, active=1)
    row = ServiceRow("TCP", IP("198.18.0.10"), 80, "wrr", reals=[rs1, gone, sorry])
    s = scrape(Source(doc=doc, services=[row]))
    assert value(s, "lb_virtual_server_usable_real_servers", **WEB) == 0
    assert value(s, "lb_virtual_server_on_sorry_server", **WEB) == 1
    assert value(s, "lb_real_server_connections_active", **WEB, rip="198.18.1.99", rport="8080",
                 server="sorry_server") == 1
    assert value(s, "lb_real_server_connections_active", **WEB, rip="198.18.1.50", rport="80", server="") == 7
    assert value(s, "lb_real_server_connections_active", **WEB, rip="198.18.1.11", rport="80", server="rs1") == 2


CONFIG = """
[global]
instance = "scrape"
public_interface = "lo"
network = "direct"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
real_server = [{ name = "rs1", address = "198.18.1.11" }]
"""


def test_a_scrape_does_not_read_the_config_file_nor_queue_work_in_the_engine_s_executor(tmp_path, monkeypatch):
    """Each scrape had the engine read and parse its configuration file again
    (Engine.status_off_the_loop's configs.info, ~0.1 s of CPU for 4,000 real servers) in the
    loop's default executor -- the one a takeover's address claims and HA sync run in -- for a
    "configuration" section no metric reads; each of many connections scraping at once queued
    its own, and one that gave up after SNAPSHOT_TIMEOUT left its job queued: whoever reaches
    the port could hold up a failover.  Now the status is taken on the loop alone, and scrapes
    that come while it is asked for share it."""
    import concurrent.futures
    import sys

    from lb import config as lbconfig
    from lb.engine import Engine

    path = tmp_path / "lb.toml"
    path.write_text(CONFIG)
    eng = Engine(lbconfig.load(path), dataplane="ipvs")       # the constructor touches nothing in the kernel
    eng.dp = SimpleNamespace(kind="ipvs", read_own_services=lambda: [], counters=lambda: {},
                             defense_status=lambda: None, nexthop_errors=lambda: {})
    read = []
    monkeypatch.setattr(eng.configs, "info", lambda *a: read.append(1) or {})
    built = []
    status = eng.status
    monkeypatch.setattr(eng, "status", lambda *a, **kw: built.append(1) or status(*a, **kw))

    class Executor(concurrent.futures.ThreadPoolExecutor):
        submitted = 0

        def submit(self, *a, **kw):
            Executor.submitted += 1
            return super().submit(*a, **kw)

    scrapes = 8

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(Executor(max_workers=2))
        source = metrics.EngineSource(eng, loop)
        out = []
        threads = [threading.Thread(target=lambda: out.append(scrape(source))) for _ in range(scrapes)]
        for t in threads:
            t.start()
        # the loop held (nothing runs on it) until every scrape waits for the status
        waiting = lambda t: (f := sys._current_frames().get(t.ident)) is not None and \
            f.f_code.co_name == "wait" and f.f_code.co_filename == threading.__file__   # noqa: E731
        deadline = time.monotonic() + 30             # (a stuck wait fails below, not hangs)
        while not all(waiting(t) for t in threads) and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        while any(t.is_alive() for t in threads):
            await asyncio.sleep(0.01)
        return out

    out = asyncio.run(main())
    assert [value(s, "lb_up") for s in out] == [1] * scrapes
    assert [value(s, "lb_real_server_weight", server="rs1") for s in out] == [1] * scrapes
    assert read == [] and Executor.submitted == 0, (read, Executor.submitted)
    assert built == [1]             # one status for the scrapes that came while it was asked for


def _handler_states() -> list[str]:
    """What each of the endpoint's connection threads is doing: "reading" the data plane,
    "waiting" (for a semaphore: its turn), or "other"."""
    import sys

    out = []
    for frame in sys._current_frames().values():
        names, f = [], frame
        while f is not None:
            names.append(f.f_code.co_name)
            f = f.f_back
        if "process_request_thread" not in names:
            continue
        out.append("reading" if "read_services" in names else
                   "waiting" if names[:2] == ["wait", "acquire"] else "other")
    return out


def test_many_connections_generate_one_scrape_at_a_time():
    """A scrape is CPU under the GIL (~1.5 s, 20 MB of text, for 4,000 real servers): each
    connection generated its own at once, so 32 connections -- anyone who reaches the port may
    open them -- shared the interpreter out 33 ways, the engine's loop (heartbeats, health
    checks) one of them.  They are generated one at a time, the others wait their turn, and
    every one is answered."""
    scrapes = 4

    async def main():
        eng = FakeEngine()
        server = await metrics.start(eng)
        loop = asyncio.get_running_loop()

        def get(i):
            # each from an address of its own (not the per-client cap)
            import socket

            with socket.create_connection(("127.0.0.1", server.port), timeout=30,
                                          source_address=(f"127.0.3.{i + 1}", 0)) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            return data.split(b"\r\n\r\n", 1)[1].decode()

        try:
            fetches = [loop.run_in_executor(None, get, i) for i in range(scrapes)]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:    # every connection reads the data plane or waits
                states = await loop.run_in_executor(None, _handler_states)
                if len(states) == scrapes and "other" not in states:
                    break
                await asyncio.sleep(0.02)
            eng.dp.release.set()
            texts = await asyncio.gather(*fetches)
        finally:
            await loop.run_in_executor(None, server.stop)
        return states, texts

    states, texts = asyncio.run(main())
    assert sorted(states) == ["reading"] + ["waiting"] * (scrapes - 1), states
    assert [value(parse(t), "lb_up") for t in texts] == [1] * scrapes


def test_a_scrape_waiting_its_turn_when_the_endpoint_stops_is_not_generated():
    """Engine.run stops the endpoint before it closes the data plane and leaves its loop; a
    scrape that waited its turn meanwhile went on after stop() returned: reading the closed
    data plane and asking a loop that is gone.  It is answered 503 instead."""
    async def main():
        eng = FakeEngine()
        server = await metrics.start(eng)
        loop = asyncio.get_running_loop()

        def get(i):
            import socket

            with socket.create_connection(("127.0.0.1", server.port), timeout=30,
                                          source_address=(f"127.0.4.{i + 1}", 0)) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            return data.split(b"\r\n")[0]

        fetches = [loop.run_in_executor(None, get, i) for i in range(2)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = await loop.run_in_executor(None, _handler_states)
            if sorted(states) == ["reading", "waiting"]:
                break
            await asyncio.sleep(0.02)
        assert sorted(states) == ["reading", "waiting"], states
        await loop.run_in_executor(None, server.stop)
        eng.dp.release.set()
        return sorted(await asyncio.gather(*fetches)), eng.dp.reads, eng.status_calls

    lines, reads, calls = asyncio.run(main())
    assert [line.split(b" ")[1] for line in lines] == [b"200", b"503"], lines
    assert reads == 1 and len(calls) == 1, (reads, calls)


def _alerts() -> dict[str, str]:
    """The alerts docs/metrics.md suggests: name -> expr."""
    text = DOCS.read_text().split("## Alerts worth having", 1)[1]
    return {name: re.sub(r"\s+#.*", "", expr) for name, expr in re.findall(r"- alert: (\w+).*\n\s+expr: (.+)", text)}


def _promql(expr: str, samples: dict) -> list[float]:
    """The values an instant PromQL expression of the documented alerts' kind gives over one
    scrape: a selector, an aggregation (by labels) of one, and a comparison with a number."""
    expr = expr.strip()
    m = re.fullmatch(r"(.+?)\s*(==|!=|>|<)\s*([0-9.]+)", expr)
    if m:
        ops = {"==": float.__eq__, "!=": float.__ne__, ">": float.__gt__, "<": float.__lt__}
        return [v for v in _promql(m[1], samples) if ops[m[2]](float(v), float(m[3]))]
    m = re.fullmatch(r"(\w+(?:\{[^}]*\})?)\s*-\s*(\w+(?:\{[^}]*\})?)", expr)
    if m:       # one vector less another: the samples whose label sets match
        right = {frozenset(labels.items()): v for labels, v in _vector(m[2], samples)}
        return [v - right[frozenset(labels.items())] for labels, v in _vector(m[1], samples)
                if frozenset(labels.items()) in right]
    m = re.fullmatch(r"(max|min|sum|count)(?:\s+by\s*\(([^)]*)\))?\s*\((.+)\)", expr)
    if m:
        groups: dict = {}
        for labels, v in _vector(m[3], samples):
            key = tuple(labels.get(k.strip(), "") for k in (m[2] or "").split(",") if k.strip())
            groups.setdefault(key, []).append(v)
        agg = {"max": max, "min": min, "sum": sum, "count": len}[m[1]]
        return [float(agg(vs)) for vs in groups.values()]
    return [v for _, v in _vector(expr, samples)]


def _vector(expr: str, samples: dict) -> list[tuple[dict, float]]:
    m = re.fullmatch(r"(\w+)(?:\{(.*)\})?", expr.strip())
    assert m, f"not a selector: {expr}"
    want = dict(re.findall(r'(\w+)="([^"]*)"', m[2] or ""))
    return [(dict(ls), v) for (n, ls), v in samples.items() if n == m[1] and set(want.items()) <= ls]


def test_the_documented_alerts_fire_when_they_say():
    """LbFloodDefenseEngaged was `max by (instance) (lb_dataplane_defense_mode) == 2`: with one
    strategy always on (mode 3, secure_tcp = 3) the maximum is 3 whatever the others do, and
    drop_packet engaged by a flood (mode 2) raised no alert."""
    alerts = {name: expr for name, expr in _alerts().items() if "[" not in expr}    # instant ones
    doc = status()
    doc["bgp"] = bgp_status()
    flood = scrape(Source(doc=doc))
    fired = {name for name, expr in alerts.items() if _promql(expr, flood)}
    # drop_packet engaged automatically, secure_tcp always on; rs2 down; the last reload refused;
    # [bgp]: a session down, a VIP servable and not announced
    assert {"LbFloodDefenseEngaged", "LbRealServerDown", "LbReloadFailed", "LbBgpSessionDown",
            "LbBgpRouteNotAnnounced"} <= fired, fired
    assert "LbPeerLost" not in fired and "LbNoUsableRealServer" not in fired, fired
    calm = dict(defense(), modes={"drop_entry": 1, "drop_packet": 1, "secure_tcp": 3}, engaged=["secure_tcp"],
                drop_rate=0)
    assert not _promql(alerts["LbFloodDefenseEngaged"], scrape(Source(defense=calm)))


def test_the_endpoint_s_dropped_counts_go_on_when_a_reload_restarts_it():
    """A reload that changes [metrics] restarts the endpoint: lb_metrics_connections_dropped_total
    fell back to 0 with it (a counter going backwards, for the same target when only the bind
    address changed); the stopped server's counts are carried over."""
    import socket

    async def main():
        eng = FakeEngine()
        eng.dp.release.set()
        server = await metrics.start(eng)
        loop = asyncio.get_running_loop()

        def bad_request(port, host):
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain; version=x\r\n\r\n")
                return s.recv(100).split(b"\r\n")[0]

        def scrape_at(port, host):
            return parse(urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30).read().decode())

        try:
            first = await loop.run_in_executor(None, bad_request, server.port, "127.0.0.1")
            # another bind address: the endpoint restarts
            await loop.run_in_executor(None, server.reconfigure, Metrics(enabled=True, address=IP("127.0.0.2"),
                                                                          port=0))
            second = await loop.run_in_executor(None, bad_request, server.port, "127.0.0.2")
            s = await loop.run_in_executor(None, scrape_at, server.port, "127.0.0.2")
        finally:
            await loop.run_in_executor(None, server.stop)
        return first, second, s

    first, second, s = asyncio.run(main())
    assert b" 400 " in first and b" 400 " in second, (first, second)
    assert value(s, "lb_metrics_connections_dropped_total", reason="bad_request") == 2


def test_the_ipvs_data_plane_exports_the_instance_s_services_not_others_in_kernel_ipvs(tmp_path, monkeypatch):
    """Kernel IPVS holds somebody else's services beside the instance's (ipvsadm's, another lb
    instance's: plan leaves them alone): the scrape exported them all, unnamed -- another
    instance's traffic counted twice on a dashboard, and LbNoUsableRealServer firing for a
    service lb does not run.  A firewall mark's service of the other family is not ours either."""
    import socket

    from lb.dataplane import ipvs
    from lb.dataplane.spec import ServiceSpec

    dp = ipvs.IpvsDataplane("lab", run_dir=str(tmp_path))
    web, ftp = ("tcp", IP("198.18.0.10"), 80), ("fwmark", 21)
    dp.owned = {web, ftp}
    dp.services[ftp] = ServiceSpec("tcp", IP("198.18.0.0"), 0, "rr", fwmark=21)    # an IPv4 mark service
    own_web, own_ftp = rows()
    others = [ServiceRow("TCP", IP("198.18.0.99"), 80, "rr", reals=[RealRow(IP("198.18.1.50"), 80, "Route", 0)],
                         stats=Stats(5, 5, 5, 5, 5)),
              ServiceRow("", None, 0, "rr", fwmark=21, family=6, stats=Stats(9, 9, 9, 9, 9),
                         reals=[RealRow(IP("2001:2::50"), 0, "Route", 1)])]
    monkeypatch.setattr(ipvs, "read_services", lambda netns=None: [own_web, others[0], own_ftp, others[1]])
    assert socket.AF_INET == dp._family(ftp)
    source = metrics.EngineSource(SimpleNamespace(dp=dp), None)
    s = scrape(Source(doc=status(ha=False), services=source.services(), defense=None))
    assert value(s, "lb_virtual_server_connections_total", **WEB) == 8
    assert value(s, "lb_virtual_server_connections_total", service="ftp") == 1
    assert {dict(ls)["service"] for (n, ls) in s if n == "lb_virtual_server_info"} == {"web", "ftp"}
    assert not [k for k in s if ("vip", "198.18.0.99") in k[1] or ("rip", "2001:2::50") in k[1]]
