"""/metrics of `lb run` in the namespace lab (direct routing): scraped as Prometheus scrapes it and
parsed with prometheus_client's parser; every per-real-server and per-service counter equals what
`lb list --stats --exact` prints, and health, reloads and the data path show what happened."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from lab_http import METRICS_LISTEN as LISTEN
from lab_http import get, one, scrape

from lb.config.model import Tables

REPO = Path(__file__).resolve().parents[1]
LB = str(REPO / ".venv" / "bin" / "lb")
STAT_NAMES = ("connections", "incoming_packets", "outgoing_packets", "incoming_bytes", "outgoing_bytes")
REALS = {"rs1": "198.18.1.11", "rs2": "198.18.1.12", "rs3": "198.18.1.13"}


def lb_list_stats() -> dict:
    """{("TCP  198.18.0.10:80", None | "198.18.1.11:80"): (conns, inpkts, outpkts, inbytes, outbytes)}"""
    p = subprocess.run([LB, "list", "--stats", "--exact", "--instance", "lab"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    out, service = {}, None
    for line in p.stdout.splitlines()[3:]:
        f = line.split()
        if f[0] == "->":
            out[(service, f[1])] = tuple(int(x) for x in f[2:])
        else:
            service = f"{f[0]} {f[1]}"
            out[(service, None)] = tuple(int(x) for x in f[2:])
    return out


def lb_status_defense() -> dict:
    p = subprocess.run([LB, "status", "--json", "--instance", "lab"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["defense"]


def stable_pair(lab, read=lb_list_stats):
    """A scrape taken between two equal reads of `lb list --stats --exact` (the last packets of a
    closing connection may still be on their way) or of `lb status`'s defenses (a sweep's census
    may correct the embryonic estimate in between); bounded."""
    for _ in range(40):
        before = read()
        samples = scrape(lab)
        if read() == before:
            return before, samples
        time.sleep(0.5)
    raise AssertionError(f"{read.__name__} did not settle")


def test_metrics_equal_lb_list_and_follow_health(lab, lb_runner, tmp_path):
    config = tmp_path / "lab-dr.toml"
    config.write_text((REPO / "configs" / "lab-dr.toml").read_text()
                      + f'\n[metrics]\nenabled = true\nlisten = "{LISTEN}"\n')
    proc = lb_runner.start(config, wait=False).wait_running(timeout=180)   # bcc compiles: slow under load
    proc.wait_log(f"metrics on http://{LISTEN}/metrics")

    # each real server's first check comes at its own point of the first interval (2 s: the
    # checks spread, lb.health.monitor.first_offset); bounded wait for all three
    deadline = time.monotonic() + 30
    while not all(one(scrape(lab), "lb_real_server_health_checks_total", server=n) >= 1 for n in REALS):
        assert time.monotonic() < deadline, "a real server's first health check never came"
        time.sleep(0.25)
    assert len(get(lab, 12)) == 12
    listed, samples = stable_pair(lab)
    assert len(listed) == 4 and listed[("TCP 198.18.0.10:80", None)][0] == 12
    web = dict(service="web", protocol="tcp", vip="198.18.0.10", vport="80", fwmark="0")
    for (service, real), numbers in listed.items():
        if real is None:
            got = tuple(one(samples, f"lb_virtual_server_{n}_total", **web) for n in STAT_NAMES)
        else:
            rip, rport = real.rsplit(":", 1)
            name = next(n for n, a in REALS.items() if a == rip)
            got = tuple(one(samples, f"lb_real_server_{n}_total", server=name, rip=rip, rport=rport, **web)
                        for n in STAT_NAMES)
        assert got == numbers, (service, real)
    for name in REALS:
        assert one(samples, "lb_real_server_up", server=name) == 1
        assert one(samples, "lb_real_server_weight", server=name) == 1
        assert one(samples, "lb_real_server_weight_source", server=name, source="configured") == 1
        assert one(samples, "lb_real_server_health_checks_total", server=name) >= 1
    assert one(samples, "lb_info", lb_instance="lab", dataplane="xdp") == 1
    assert one(samples, "lb_dataplane_up") == 1 and one(samples, "lb_up") == 1
    assert one(samples, "lb_dataplane_events_total", event="no_real_server") == 0

    # the embryonic table's fill and the flood defenses, as `lb status` shows them (calm: none engaged)
    defense, samples = stable_pair(lab, lb_status_defense)
    assert one(samples, "lb_dataplane_embryonic_entries_limit") == defense["embryonic_size"] \
        == Tables().embryonic_size()
    assert one(samples, "lb_dataplane_embryonic_entries") == defense["embryonic_size"] - defense["embryonic_free"]
    assert one(samples, "lb_dataplane_defense_threshold_free_entries") == defense["amemthresh"]
    assert defense["engaged"] == [] and set(defense["modes"]) == {"drop_entry", "drop_packet", "secure_tcp"}
    for strategy, mode in defense["modes"].items():
        assert one(samples, "lb_dataplane_defense_mode", strategy=strategy) == mode
        assert one(samples, "lb_dataplane_defense_engaged", strategy=strategy) == 0
    assert one(samples, "lb_dataplane_defense_drop_packet_ratio") == 0
    assert one(samples, "lb_dataplane_defense_drop_entry_deletions_total") == defense["drop_entry_deleted"] == 0

    # `lb zero` through the running daemon: lb list and the metrics both start again from 0
    subprocess.run([LB, "zero", "--instance", "lab"], check=True, capture_output=True, timeout=60)
    listed, samples = stable_pair(lab)
    assert set(listed.values()) == {(0, 0, 0, 0, 0)}
    assert {v for (n, _ls), v in samples.items()
            if n.startswith(("lb_real_server_", "lb_virtual_server_")) and n.endswith("_total")
            and not n.startswith("lb_real_server_health")} == {0}

    # a reload is counted; a dead real server shows as down, out of rotation, its checks failing
    subprocess.run([LB, "reload", "--instance", "lab"], check=True, capture_output=True, timeout=60)
    assert one(scrape(lab), "lb_config_reloads_total", result="ok") == 1
    lab.stop_real("rs3")
    for _ in range(120):                      # the default monitor: down after 10 s without success
        samples = scrape(lab)
        if one(samples, "lb_real_server_up", server="rs3") == 0:
            break
        time.sleep(0.5)
    assert one(samples, "lb_real_server_up", server="rs3") == 0
    assert one(samples, "lb_real_server_weight_source", server="rs3", source="down") == 1
    assert one(samples, "lb_real_server_health_check_failures_total", server="rs3") >= 1
    assert one(samples, "lb_real_server_health_transitions_total", server="rs3", to="down") == 1
    assert one(samples, "lb_virtual_server_usable_real_servers", **web) == 2
    lab.start_real("rs3")
