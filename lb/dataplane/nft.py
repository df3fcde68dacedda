"""Packet-marking rules for firewall-mark services in kernel IPVS mode, with nftables.

IPVS only reads a packet's mark (a fwmark service is looked up by skb->mark at its LOCAL_IN
hook); something has to set it.  In XDP mode the port groups are matched in BPF; in IPVS mode
lb installs one rule per (mark, VIP, protocol) that marks its port groups:

    table inet lb_<instance> {
        chain prerouting {
            type filter hook prerouting priority mangle; policy accept;
            ip daddr 198.18.0.10 tcp dport { 21, 30000-30099 } meta mark set 0x00000015 comment "FWM 21"
        }
    }

- Prerouting at mangle priority (-150): the mark is on the packet before routing and long
  before IPVS's LOCAL_IN hook, as the classic `iptables -t mangle -A PREROUTING ... -j MARK`.
- lb owns that one table and never touches any other: the whole table is replaced in one
  nftables transaction (add + flush + chain + rules in one `nft -j -f`), so no packet ever sees
  a half-written rule set; no table at all when no firewall-mark service needs one.
- It goes through `nft -j` (JSON in and out: the nftables package's own interface, no
  iptables).  Without the nft command only firewall-mark services are impossible.
"""
from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Iterable

from .spec import ServiceSpec

FAMILY = "inet"              # one table for IPv4 and IPv6 VIPs
CHAIN = "prerouting"
PRIORITY = -150              # NF_IP_PRI_MANGLE: the classic place to mark for IPVS


class NftError(Exception):
    pass


def table_name(instance: str) -> str:
    """lb_<instance>, with anything nft would not take as a bare name replaced."""
    return "lb_" + re.sub(r"[^A-Za-z0-9_]", "_", instance)


def _ports(groups: Iterable[tuple[int, int]]):
    """Port ranges as nft stores and prints them back, so that a re-read compares equal:
    sorted; overlapping or touching ranges merged (two touching single ports stay two); one
    port as an int, one range as {"range": [lo, hi]}, more as {"set": [...]}."""
    merged: list[list[int]] = []
    for lo, hi in sorted(groups):
        last = merged[-1] if merged else None
        if last and (lo <= last[1] or (lo == last[1] + 1 and (hi > lo or last[1] > last[0]))):
            last[1] = max(last[1], hi)
        else:
            merged.append([lo, hi])
    elems = [lo if lo == hi else {"range": [lo, hi]} for lo, hi in merged]
    return elems[0] if len(elems) == 1 else {"set": elems}


def mark_rules(services: Iterable[ServiceSpec], instance: str) -> list[dict]:
    """The rules (nft JSON "rule" objects, without handles) that mark the port groups of the
    firewall-mark services in `services`: one per (mark, VIP, protocol), in mark order."""
    by_key: dict[tuple, list[tuple[int, int]]] = {}
    for s in services:
        if not s.fwmark:
            continue
        for g in s.groups:
            addr = ipaddress.ip_address(g.address)
            by_key.setdefault((s.fwmark, addr.version, int(addr), str(addr), g.protocol), []).append((g.low, g.high))
    table = table_name(instance)
    out = []
    for (mark, version, _, addr, proto), ports in sorted(by_key.items()):
        expr = [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip" if version == 4 else "ip6", "field": "daddr"}},
                       "right": addr}},
            {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}},
                       "right": _ports(ports)}},
            {"mangle": {"key": {"meta": {"key": "mark"}}, "value": mark}},
        ]
        out.append({"family": FAMILY, "table": table, "chain": CHAIN, "comment": f"FWM {mark}", "expr": expr})
    return out


def replace_commands(instance: str, rules: list[dict]) -> dict:
    """One transaction that makes lb's table exactly `rules` (none: the table goes away)."""
    t = {"family": FAMILY, "name": table_name(instance)}
    if not rules:
        # add + delete: removes the table whether it existed or not, in one transaction
        return {"nftables": [{"add": {"table": t}}, {"delete": {"table": t}}]}
    cmds = [{"add": {"table": t}}, {"flush": {"table": t}},
            {"add": {"chain": {"family": FAMILY, "table": t["name"], "name": CHAIN, "type": "filter",
                               "hook": "prerouting", "prio": PRIORITY, "policy": "accept"}}}]
    cmds += [{"add": {"rule": r}} for r in rules]
    return {"nftables": cmds}


def _port_text(p) -> str:
    return str(p) if isinstance(p, int) else f"{p['range'][0]}-{p['range'][1]}"


def ruleset_text(rules: list[dict]) -> str:
    """The rules in nft's own syntax (for logs and docs): one line each."""
    lines = []
    for r in rules:
        daddr, dport, mangle = (e.get("match") or e.get("mangle") for e in r["expr"])
        ports = dport["right"]
        ports = ("{ " + ", ".join(map(_port_text, ports["set"])) + " }") if isinstance(ports, dict) and "set" in ports \
            else _port_text(ports)
        lines.append(f"{daddr['left']['payload']['protocol']} daddr {daddr['right']} "
                     f"{dport['left']['payload']['protocol']} dport {ports} "
                     f"meta mark set {mangle['value']:#010x} comment \"{r['comment']}\"")
    return "\n".join(lines)


class Nft:
    """`nft -j` in the current network namespace (or in `netns`, through `ip netns exec`)."""

    def __init__(self, netns: str | None = None):
        self.netns = netns

    @staticmethod
    def available() -> bool:
        return shutil.which("nft") is not None

    def run(self, args: list[str], doc: dict | None = None) -> str:
        if not self.available():
            raise NftError("firewall-mark services in IPVS mode need nftables' nft command "
                           "(Debian package nftables)")
        argv = ["nft", "-j", *args]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        try:
            p = subprocess.run(argv, input=None if doc is None else json.dumps(doc), capture_output=True,
                               text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NftError(f"nft: {e}") from e
        if p.returncode != 0:
            raise NftError(f"nft {' '.join(args)}: {(p.stderr or p.stdout).strip() or f'exit {p.returncode}'}")
        return p.stdout

    def rules(self, instance: str) -> list[dict] | None:
        """lb's table as mark_rules() would write it (handles dropped), or None without it."""
        try:
            out = self.run(["list", "table", FAMILY, table_name(instance)])
        except NftError as e:
            if "No such file or directory" in str(e):
                return None
            raise
        rules = []
        for obj in json.loads(out or '{"nftables": []}').get("nftables", []):
            r = obj.get("rule")
            if r is not None:
                r = {k: v for k, v in r.items() if k != "handle"}
                rules.append(r)
        return rules

    def replace(self, instance: str, rules: list[dict]) -> None:
        self.run(["-f", "-"], replace_commands(instance, rules))


class MarkRules:
    """lb's marking rules for one instance: apply() makes the kernel's table match the
    firewall-mark services of a table, with one atomic replacement when anything differs."""

    def __init__(self, instance: str, netns: str | None = None):
        self.instance = instance
        self.nft = Nft(netns)
        self.rules: list[dict] = []        # what the kernel has (as lb wrote it)
        self.present = False               # lb's table exists

    @property
    def table(self) -> str:
        return f"{FAMILY} {table_name(self.instance)}"

    def load(self) -> None:
        """Learn what an earlier run left (nothing to learn without nft: nothing was left)."""
        if not Nft.available():
            self.rules, self.present = [], False
            return
        rules = self.nft.rules(self.instance)
        self.present = rules is not None
        self.rules = rules or []

    def apply(self, services: Iterable[ServiceSpec]) -> int:
        """Returns the nftables transactions it took (0 or 1).  Compares with what the kernel
        has now (somebody may have flushed the ruleset), not with what lb last wrote."""
        return self.apply_rules(mark_rules(services, self.instance))

    def apply_rules(self, want: list[dict]) -> int:
        """apply() of the rules themselves (those an earlier run left, written back)"""
        if not want and not self.present:
            return 0                # no nft needed at all where no service uses a mark
        have = self.nft.rules(self.instance)
        if (have or []) == want and (have is not None) == bool(want):
            self.rules, self.present = want, bool(want)
            return 0
        self.nft.replace(self.instance, want)
        self.rules, self.present = want, bool(want)
        return 1

    def remove(self) -> int:
        if not self.present:
            return 0
        self.nft.replace(self.instance, [])
        self.rules, self.present = [], False
        return 1


__all__ = ["MarkRules", "Nft", "NftError", "mark_rules", "replace_commands", "ruleset_text", "table_name"]
