"""Firewall-mark services in IPVS mode: the nftables rules that mark their port groups
(lb/dataplane/nft.py).  The generated rules from a config, then the rules in a real kernel
(this host's nf_tables) inside a network namespace this test creates: installed, re-read equal,
replaced atomically, removed, never touching another table, and marking real packets."""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from lb import config as lbconfig
from lb.dataplane.nft import MarkRules, Nft, _ports, mark_rules, replace_commands, ruleset_text, table_name
from lb.dataplane.spec import PortGroup, RealSpec, ServiceSpec
from lb.engine import build_table

REPO = Path(__file__).resolve().parents[1]
ip = ipaddress.ip_address


def fwm(mark: int, *groups: tuple[str, str, int, int]) -> ServiceSpec:
    return ServiceSpec("tcp", ip(groups[0][0]), 0, "rr", (RealSpec(ip("198.18.1.11"), 0, 1),), fwmark=mark,
                       groups=tuple(PortGroup(p, ip(a), lo, hi) for a, p, lo, hi in groups))


# ---- the generated rules ----------------------------------------------------------------------

def test_ftp_config_gives_one_rule_for_control_and_passive_ports():
    cfg = lbconfig.load(str(REPO / "configs" / "ftp-fwmark.toml"))
    rules = mark_rules(build_table(cfg).services, cfg.instance)
    assert ruleset_text(rules) == ('ip daddr 198.18.0.10 tcp dport { 21, 30000-30099 } '
                                   'meta mark set 0x00000015 comment "FWM 21"')
    assert rules[0]["table"] == "lb_lab" and rules[0]["family"] == "inet" and rules[0]["chain"] == "prerouting"


def test_rules_per_mark_vip_and_protocol_and_plain_services_ignored():
    plain = ServiceSpec("tcp", ip("198.18.0.10"), 80, "rr")
    svcs = [fwm(443, ("198.18.0.11", "tcp", 443, 443), ("198.18.0.11", "tcp", 80, 80),
                ("198.18.0.11", "udp", 443, 443)),
            plain,
            fwm(7, ("198.18.0.12", "tcp", 8000, 8009), ("198.18.0.10", "tcp", 1000, 1000))]
    assert ruleset_text(mark_rules(svcs, "web-1")).splitlines() == [
        'ip daddr 198.18.0.10 tcp dport 1000 meta mark set 0x00000007 comment "FWM 7"',
        'ip daddr 198.18.0.12 tcp dport 8000-8009 meta mark set 0x00000007 comment "FWM 7"',
        'ip daddr 198.18.0.11 tcp dport { 80, 443 } meta mark set 0x000001bb comment "FWM 443"',
        'ip daddr 198.18.0.11 udp dport 443 meta mark set 0x000001bb comment "FWM 443"',
    ]
    assert mark_rules([plain], "x") == []
    assert table_name("web-1") == "lb_web_1"


def test_ports_are_written_as_nft_reads_them_back():
    assert _ports([(443, 443), (80, 80)]) == {"set": [80, 443]}
    assert _ports([(21, 21)]) == 21
    assert _ports([(21, 21), (22, 30)]) == {"range": [21, 30]}         # touching: one interval
    assert _ports([(1, 5), (3, 9), (20, 20)]) == {"set": [{"range": [1, 9]}, 20]}
    assert _ports([(79, 79), (80, 80)]) == {"set": [79, 80]}          # two single ports stay two


def test_replacement_is_one_transaction_and_empty_removes_the_table():
    rules = mark_rules([fwm(21, ("198.18.0.10", "tcp", 21, 21))], "lab")
    cmds = replace_commands("lab", rules)["nftables"]
    assert [next(iter(c)) for c in cmds] == ["add", "flush", "add", "add"]
    assert cmds[2]["add"]["chain"] == {"family": "inet", "table": "lb_lab", "name": "prerouting", "type": "filter",
                                       "hook": "prerouting", "prio": -150, "policy": "accept"}
    assert replace_commands("lab", [])["nftables"] == [{"add": {"table": {"family": "inet", "name": "lb_lab"}}},
                                                       {"delete": {"table": {"family": "inet", "name": "lb_lab"}}}]


# ---- in the kernel (a namespace of this test's own) ---------------------------------------------

def _nft_usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not Nft.available():
        return "no nft command (scripts/setup.sh installs nftables)"
    return None


@pytest.fixture
def netns():
    why = _nft_usable()
    if why:
        pytest.skip(why)
    name = f"lb-nft-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        p = subprocess.run(["ip", "netns", "exec", name, "nft", "list", "tables"], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"this kernel has no usable nf_tables: {p.stderr.strip()}")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft_text(ns: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True)


def test_rules_installed_reread_replaced_and_removed(netns):
    # somebody else's table: lb must never touch it
    other = "table inet other {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n" \
            "\t\ttcp dport 22 counter packets 0 bytes 0\n\t}\n}"
    p = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=other, text=True, capture_output=True)
    assert p.returncode == 0, p.stderr
    before_other = nft_text(netns, "list", "table", "inet", "other").stdout

    m = MarkRules("lab", netns=netns)
    m.load()
    assert not m.present
    svcs = [fwm(21, ("198.18.0.10", "tcp", 21, 21), ("198.18.0.10", "tcp", 30000, 30099)),
            fwm(80, ("198.18.0.10", "tcp", 80, 80), ("198.18.0.10", "tcp", 443, 443),
                ("198.18.0.11", "udp", 5000, 5000), ("198.18.0.11", "udp", 5001, 5010))]
    assert m.apply(svcs) == 1
    text = nft_text(netns, "list", "table", "inet", "lb_lab").stdout
    assert "type filter hook prerouting priority mangle; policy accept;" in text
    assert 'ip daddr 198.18.0.10 tcp dport { 21, 30000-30099 } meta mark set 0x00000015 comment "FWM 21"' in text
    assert 'ip daddr 198.18.0.10 tcp dport { 80, 443 } meta mark set 0x00000050 comment "FWM 80"' in text
    assert 'ip daddr 198.18.0.11 udp dport 5000-5010 meta mark set 0x00000050 comment "FWM 80"' in text

    # what nft reads back is exactly what lb wrote: a second apply (or a restarted lb) does nothing
    assert m.apply(svcs) == 0
    again = MarkRules("lab", netns=netns)
    again.load()
    assert again.present and again.rules == m.rules
    assert again.apply(svcs) == 0

    # somebody flushed the ruleset: the next apply puts the rules back
    assert nft_text(netns, "delete", "table", "inet", "lb_lab").returncode == 0
    assert m.apply(svcs) == 1
    assert again.apply(svcs) == 0

    # a change replaces the table in one transaction
    assert m.apply(svcs[:1]) == 1
    text = nft_text(netns, "list", "table", "inet", "lb_lab").stdout
    assert "FWM 21" in text and "FWM 80" not in text

    # no firewall-mark service left: the table goes away; the other table is as it was
    assert m.apply([ServiceSpec("tcp", ip("198.18.0.10"), 80, "rr")]) == 1
    assert nft_text(netns, "list", "table", "inet", "lb_lab").returncode != 0
    assert m.apply([]) == 0
    assert m.apply(svcs) == 1
    assert m.remove() == 1
    assert nft_text(netns, "list", "table", "inet", "lb_lab").returncode != 0
    assert nft_text(netns, "list", "table", "inet", "other").stdout == before_other


def test_rules_mark_the_port_groups_packets(netns):
    """Real packets: SYNs to the VIP's grouped ports arrive (at an input-hook counter of another
    table) with the mark; a SYN to another port of the VIP without one."""
    setup = ["link set lo up", "address add 198.18.0.10/32 dev lo"]
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(setup) + "\n", text=True, check=True)
    probe = ("table inet probe {\n chain input {\n  type filter hook input priority filter; policy accept;\n"
             "  ip daddr 198.18.0.10 tcp dport 21 meta mark 21 counter\n"
             "  ip daddr 198.18.0.10 tcp dport 30050 meta mark 21 counter\n"
             "  ip daddr 198.18.0.10 tcp dport 22 meta mark 0 counter\n }\n}\n")
    p = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=probe, text=True, capture_output=True)
    assert p.returncode == 0, p.stderr
    m = MarkRules("marks", netns=netns)
    m.load()
    assert m.apply([fwm(21, ("198.18.0.10", "tcp", 21, 21), ("198.18.0.10", "tcp", 30000, 30099))]) == 1
    try:
        # nothing listens: each connect is one SYN (refused), through lo: prerouting, then input
        code = ("import socket\nfor port in (21, 30050, 22):\n s = socket.socket()\n s.settimeout(2)\n"
                " try: s.connect(('198.18.0.10', port))\n except OSError: pass\n s.close()\n")
        subprocess.run(["ip", "netns", "exec", netns, shutil.which("python3") or "python3", "-c", code],
                       check=True, timeout=30)
        counters = [line.split("packets ")[1].split()[0]
                    for line in nft_text(netns, "list", "table", "inet", "probe").stdout.splitlines()
                    if "counter packets" in line]
        assert counters == ["1", "1", "1"], nft_text(netns, "list", "ruleset").stdout
    finally:
        m.remove()
