"""A real server's side of direct routing and tunneling: `lb realserver check|setup`.

With direct routing (LVS-DR) and tunneling (LVS-TUN) the director hands a client's packet, still
addressed to the VIP, to a real server, which answers the client itself.  So each real server
must:

- accept packets for the VIP: the VIP on lo as a host address (/32, /128), local but on no
  network;
- never answer ARP for it, or the neighbours would send the clients' traffic to this real server
  instead of the director.  Either the sysctls arp_ignore = 1 (answer ARP only for addresses of
  the interface asked) and arp_announce = 2 (never put the VIP in this host's own ARP requests),
  on "all" and the interface (the kernel uses the larger of the two), or -- the Piranha manual's
  way -- arptables rules that drop ARP requests for the VIP and rewrite it out of outgoing ones.
  IPv6 needs neither: a neighbour solicitation is answered only for the interface's own
  addresses;
- tunneling: take the director's IPIP / IPv6-in-IPv6 header off (`lb decap attach DEV`, only for
  inner packets to the VIPs: `--vip`), and let
  the inner packet in although DEV may not be the route back to its client: rp_filter loose (2)
  or off, never strict (1), on DEV (the kernel uses the larger of "all" and DEV).

`check` reports each point as ok or missing with the command that fixes it (exit status 1 when
any is missing, 2 when --dev names no interface); `setup` makes the missing ones so and nothing else (run it again: nothing to
do), keeping what it changed in /run/lb/realserver-<netns>.json, so that `setup --undo` puts it
back: the VIPs it added and their arptables rules, and once no VIP it set up is left, the sysctls'
old values and the decap program (a rule or an interface gone since, or another XDP program in
decap's place, is reported and left; what is not yet undone stays in the file for the next run).
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable

from pyroute2 import IPRoute

from lb.ha import addresses

RUN_DIR = "/run/lb"
MODES = ("dr", "tunnel")
ARP_METHODS = ("sysctl", "arptables")
ARP_IGNORE_OK = (1, 2)       # 1: only for the interface's own addresses; 2: and from its subnet
ARP_ANNOUNCE = 2             # the best local address for the target, never the VIP
RP_FILTER_LOOSE = 2


class RealServerError(Exception):
    """What setup cannot do, in words (nothing further is changed)."""


class NoSuchInterface(RealServerError):
    """--dev names no interface: a usage error (`lb realserver` exits 2), not a missing point."""

    def __init__(self, dev: str):
        super().__init__(f"no such interface: {dev}")


@dataclass
class Point:
    ok: bool
    what: str                          # "198.18.0.10/32 on lo"
    why: str                           # what it is for, or what is wrong
    fix: str                           # the command that makes it so
    make: Callable[[dict], str] | None = None   # setup's action: returns what it did
    refuse: str | None = None          # why setup cannot make it so (refused before any change)
    late: bool = False                 # made after the rest: the VIP goes on lo once ARP for it is off


# ---- the host as it is ---------------------------------------------------------------------

def _sysctl_path(dev: str, key: str) -> str:
    return f"/proc/sys/net/ipv4/conf/{dev}/{key}"


def sysctl(dev: str, key: str) -> int:
    with open(_sysctl_path(dev, key)) as f:
        return int(f.read().split()[0])


def _set_sysctl(state: dict, dev: str, key: str, value: int) -> str:
    path = _sysctl_path(dev, key)
    old = sysctl(dev, key)
    state["sysctl"].setdefault(path, old)          # the value before lb's first change
    with open(path, "w") as f:
        f.write(str(value))
    return f"net.ipv4.conf.{dev}.{key}: {old} -> {value}"


def ipv4_devices() -> list[str]:
    """The interfaces (up, not lo) with a global IPv4 address: where ARP for the VIP may come."""
    with IPRoute() as ipr:
        names = {ln["index"]: ln.get_attr("IFLA_IFNAME") for ln in ipr.get_links()
                 if ln["flags"] & 1 and ln.get_attr("IFLA_IFNAME") != "lo"}
        found = {names[a["index"]] for a in ipr.get_addr(family=2) if a["index"] in names
                 and not ipaddress.ip_address(a.get_attr("IFA_ADDRESS")).is_loopback}
    return sorted(found)


def default_device() -> str:
    """The device of the IPv4 default route, else the one interface with an IPv4 address."""
    with IPRoute() as ipr:
        for r in ipr.get_default_routes(family=2):
            oif = r.get_attr("RTA_OIF")
            if oif:
                return ipr.get_links(oif)[0].get_attr("IFLA_IFNAME")
    devs = ipv4_devices()
    if len(devs) == 1:
        return devs[0]
    raise RealServerError(f"no default route and {len(devs) or 'no'} interfaces with an IPv4 address"
                          f"{': ' + ', '.join(devs) if devs else ''}: name the one facing the director with --dev")


def device_address(dev: str) -> str:
    """DEV's first global IPv4 address (what arptables writes instead of the VIP)."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=dev)
        for a in ipr.get_addr(family=2, index=idx[0]) if idx else ():
            return a.get_attr("IFA_ADDRESS")
    raise RealServerError(f"{dev} has no IPv4 address for arptables to put in place of the VIP")


def _on_lo(vip) -> addresses.OwnedAddress:
    return addresses.OwnedAddress("lo", ipaddress.ip_interface(f"{vip}/{32 if vip.version == 4 else 128}"))


def lo_has(vip) -> bool:
    a = _on_lo(vip)
    with IPRoute() as ipr:
        return addresses._has(ipr, ipr.link_lookup(ifname="lo")[0], a.address)


def lo_wider(vip) -> list[int]:
    """The prefix lengths shorter than a host's (/24, /8, an IPv6 /64) under which vip is on lo."""
    host = 32 if vip.version == 4 else 128
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        return sorted({a["prefixlen"] for a in ipr.get_addr(family=2 if vip.version == 4 else 10, index=idx)
                       if ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) == vip and a["prefixlen"] < host})


def arptables_rules() -> dict[str, list[list[str]]]:
    """Chain -> its rules as tokens (`arptables -L -n`, legacy and nft variants alike)."""
    p = subprocess.run(["arptables", "-L", "-n"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise RealServerError(f"arptables -L -n: {(p.stderr or p.stdout).strip()}")
    chains: dict[str, list[list[str]]] = {}
    chain = None
    for line in p.stdout.splitlines():
        if line.startswith("Chain "):
            chain = chains.setdefault(line.split()[1], [])
        elif chain is not None and line.strip().startswith("-"):
            chain.append(line.split())
    return chains


def _has_rule(rules: list[list[str]], *pairs: tuple[str, str]) -> bool:
    def value(tokens, opt):
        return tokens[tokens.index(opt) + 1].split("/")[0] if opt in tokens[:-1] else None
    return any(all(value(t, o) == v for o, v in pairs) for t in rules)


def _drop_rule(vip) -> list[str]:
    return ["INPUT", "-d", str(vip), "-j", "DROP"]


def _mangle_rule(vip, rip: str) -> list[str]:
    return ["OUTPUT", "-s", str(vip), "-j", "mangle", "--mangle-ip-s", rip]


def _arptables(op: str, rule: list[str]) -> None:
    p = subprocess.run(["arptables", op, *rule], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise RealServerError(f"arptables {op} {' '.join(rule)}: {(p.stderr or p.stdout).strip()}")


# ---- the points ------------------------------------------------------------------------------

def points(mode: str, vips: list, arp: str = "sysctl", dev: str | None = None, sources=()) -> list[Point]:
    """What a real server of `mode` for `vips` needs, each as it is now; NoSuchInterface when
    ``dev`` is not an interface."""
    if dev is not None and not addresses.interface_exists(dev):
        raise NoSuchInterface(dev)
    out = []
    v4 = [v for v in vips if v.version == 4]
    if (mode == "tunnel" or (v4 and arp == "arptables")) and dev is None:
        dev = default_device()
    for vip in vips:
        a = _on_lo(vip)
        for plen in lo_wider(vip):
            # `ifconfig lo:0 VIP` without a netmask, say: all of the VIP's network is this host's own
            net = ipaddress.ip_interface(f"{vip}/{plen}").network
            out.append(Point(False, f"{vip}/{plen} on lo", f"every address of {net} is taken as this host's own: "
                             f"the real server cannot reach them (clients among them get no answer); the VIP "
                             f"belongs on lo as {a.address} alone", f"ip addr del {vip}/{plen} dev lo",
                             refuse=f"{vip}/{plen} on lo makes every address of {net} this host's own: "
                                    f"remove it (ip addr del {vip}/{plen} dev lo) and run setup again"))
        out.append(Point(lo_has(vip), f"{a.address} on lo", "the real server takes the VIP's packets as its own "
                         "and answers from the VIP", f"ip addr add {a.address} dev lo", _add_vip(vip), late=True))
    if v4 and arp == "sysctl":
        # every interface ARP may arrive on ("all" alone when there is none yet)
        for d in sorted(set(ipv4_devices()) | ({dev} if dev else set())) or ["all"]:
            ign = max(sysctl("all", "arp_ignore"), sysctl(d, "arp_ignore"))
            out.append(Point(ign in ARP_IGNORE_OK, f"arp_ignore 1 on {d} (now {ign})",
                             f"ARP requests for the VIP arriving on {d} go unanswered (the director answers them)",
                             _sysctl_fix(d, "arp_ignore", 1), _set_arp(d, "arp_ignore", 1, ARP_IGNORE_OK)))
            ann = max(sysctl("all", "arp_announce"), sysctl(d, "arp_announce"))
            out.append(Point(ann == ARP_ANNOUNCE, f"arp_announce 2 on {d} (now {ann})",
                             f"this host's own ARP requests on {d} never carry the VIP as their source",
                             _sysctl_fix(d, "arp_announce", ARP_ANNOUNCE),
                             _set_arp(d, "arp_announce", ARP_ANNOUNCE, (ARP_ANNOUNCE,))))
    elif v4:
        if shutil.which("arptables") is None:
            out.append(Point(False, "arptables installed", "the arptables method needs the arptables command",
                             "apt-get install arptables (or use the default --arp sysctl)"))
        else:
            rules = arptables_rules()
            rip = device_address(dev)
            for vip in v4:
                drop, mangle = _drop_rule(vip), _mangle_rule(vip, rip)
                out.append(Point(_has_rule(rules.get("INPUT", []), ("-d", str(vip)), ("-j", "DROP")),
                                 f"arptables drops ARP requests for {vip}",
                                 "the director answers them, not this real server",
                                 "arptables -A " + " ".join(drop), _add_rule(vip, drop)))
                out.append(Point(_has_rule(rules.get("OUTPUT", []), ("-s", str(vip)), ("--mangle-ip-s", rip)),
                                 f"arptables writes {rip} for {vip} in outgoing ARP",
                                 "this host's own ARP requests never carry the VIP as their source",
                                 "arptables -A " + " ".join(mangle), _add_rule(vip, mangle)))
    if mode == "tunnel":
        from lb.dataplane import decap

        prog = decap.attached(dev)
        refuse = None
        if prog not in (None, decap.PROGRAM):
            # another XDP program (the director's own, say) is never replaced
            refuse = f"{dev} runs another XDP program ({prog}): not replaced (lb decap needs {dev}'s XDP hook)"
        elif prog is None and not sources:
            refuse = ("tunnel: give the directors' addresses with --from ADDR (lb decap accepts "
                      "tunnels from them only)")
        elif prog is None and not decap.local_addresses(dev):
            # else found by decap.attach, after the VIP and the sysctls, naming an option setup lacks
            refuse = (f"{dev} has no address to receive tunnels on: attach lb decap yourself "
                      f"(lb decap attach {dev} --address ADDR --from DIRECTOR), then run setup again")
        # lb decap there already, from other directors than --from names (one added or moved):
        # the tunnels of those missing would be dropped; or to other VIPs than these (a VIP's
        # packets dropped), or to any address (an lb decap of before --vip)
        have = decap.attached_sources(dev) if prog == decap.PROGRAM and sources else None
        stale = have is not None and have != set(sources)
        have_vips = decap.attached_vips(dev) if prog == decap.PROGRAM else None
        stale_vips = have_vips is not None and have_vips != set(vips)
        now = f" (now from {', '.join(map(str, sorted(have, key=_addr_order)))})" if stale else \
            f" (now {prog})" if prog and prog != decap.PROGRAM else ""
        if stale_vips:
            now += " (now to any address)" if decap.ANY in have_vips else \
                f" (now to {', '.join(map(str, sorted(have_vips, key=_addr_order)))})"
        # attached again for these VIPs: from the directors it accepts now when --from names none
        froms = list(sources) or (sorted(decap.attached_sources(dev) or (), key=_addr_order) if stale_vips else [])
        out.append(Point(prog == decap.PROGRAM and not stale and not stale_vips,
                         f"lb decap on {dev}" + (f" from {', '.join(map(str, sources))}" if sources else "") +
                         f" to {', '.join(map(str, vips))}" + now,
                         "the director's tunnel headers come off before the stack sees the packet, for "
                         "packets to these VIPs only",
                         f"lb decap attach {dev} " + (" ".join(f"--from {a}" for a in froms) or "--from DIRECTOR")
                         + "".join(f" --vip {v}" for v in vips),
                         _attach_decap(dev, froms, prog is None, vips), refuse))
        if v4:
            rp = max(sysctl("all", "rp_filter"), sysctl(dev, "rp_filter"))
            out.append(Point(rp != 1, f"rp_filter not strict on {dev} (now {rp})",
                             "a client's packet is kept although the route back to the client may be another "
                             "interface's", _sysctl_fix(dev, "rp_filter", RP_FILTER_LOOSE), _loosen_rp_filter(dev)))
    return out


def _addr_order(a) -> tuple:
    return (a.version, a)


def _sysctl_fix(dev: str, key: str, value: int) -> str:
    """The sysctl command for "all" and dev (the kernel takes the larger of the two)."""
    return "sysctl -w " + " ".join(f"net.ipv4.conf.{d}.{key}={value}" for d in dict.fromkeys(("all", dev)))


def _add_vip(vip):
    def make(state):
        if addresses.take([_on_lo(vip)]):
            state["vips"][str(vip)]["added_address"] = True
        return f"added {_on_lo(vip).address} to lo"
    return make


def _set_arp(dev: str, key: str, value: int, good: tuple):
    def make(state):
        done = [_set_sysctl(state, d, key, value) for d in dict.fromkeys(("all", dev)) if sysctl(d, key) not in good]
        return "; ".join(done)
    return make


def _add_rule(vip, rule: list[str]):
    def make(state):
        _arptables("-A", rule)
        state["vips"][str(vip)]["arptables"].append(rule)
        return "arptables -A " + " ".join(rule)
    return make


def _attach_decap(dev: str, sources=(), new: bool = True, vips=()):
    # run only where setup found no program on dev, or lb decap from other directors or to other
    # VIPs, and --from given (points() refuses the rest); undo detaches only one setup attached (new)
    def make(state):
        from lb.dataplane import decap

        mode, addrs = decap.attach(dev, sources=sources, vips=vips)
        if new and dev not in state["decap"]:
            state["decap"].append(dev)
        return f"lb decap attached to {dev} ({mode} mode) for {', '.join(map(str, addrs))}"
    return make


def _loosen_rp_filter(dev: str):
    def make(state):
        return "; ".join(_set_sysctl(state, d, "rp_filter", RP_FILTER_LOOSE) for d in dict.fromkeys(("all", dev))
                         if sysctl(d, "rp_filter") == 1)
    return make


# ---- what setup changed: kept per network namespace ------------------------------------------

def state_path() -> str:
    return os.path.join(RUN_DIR, f"realserver-{os.stat('/proc/thread-self/ns/net').st_ino}.json")


def load_state() -> dict:
    path = state_path()
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        doc = {}
    except json.JSONDecodeError as e:
        raise RealServerError(f"{path}:{e.lineno}:{e.colno}: damaged ({e.msg}): check what it says setup "
                              f"changed (VIPs on lo, arptables rules, sysctls, decap), put that back by hand, "
                              f"then remove {path}") from None
    if not isinstance(doc, dict):
        raise RealServerError(f"{path}:1:1: damaged (not a JSON object): check what setup changed, put that "
                              f"back by hand, then remove {path}")
    return {"vips": doc.get("vips", {}), "sysctl": doc.get("sysctl", {}), "decap": doc.get("decap", [])}


def save_state(state: dict) -> None:
    path = state_path()
    if not (state["vips"] or state["sysctl"] or state["decap"]):
        if os.path.exists(path):
            os.unlink(path)
        return
    os.makedirs(RUN_DIR, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(state, f, indent=1)
    os.replace(path + ".tmp", path)


# ---- the commands ----------------------------------------------------------------------------

def _title(mode: str, vips: list, arp: str) -> str:
    how = "direct routing" if mode == "dr" else "tunneling"
    extra = f" (ARP by {arp})" if any(v.version == 4 for v in vips) else ""
    return f"real server for {how} to {', '.join(map(str, vips))}{extra}:"


def report(pts: list[Point], write) -> int:
    for p in pts:
        if p.ok:
            write(f"  ok       {p.what}\n")
        else:
            write(f"  missing  {p.what}: {p.why}\n           fix: {p.fix}\n")
    return 0 if all(p.ok for p in pts) else 1


def check(mode: str, vips: list, arp: str, dev: str | None, write, sources=()) -> int:
    pts = points(mode, vips, arp, dev, sources)      # before the title: its errors alone
    write(_title(mode, vips, arp) + "\n")
    rc = report(pts, write)
    missing = sum(not p.ok for p in pts)
    if missing:
        # tunnel: setup's decap needs the directors' addresses
        need_from = mode == "tunnel" and any(not p.ok and p.what.startswith("lb decap") for p in pts)
        froms = "".join(f" --from {a}" for a in sources) or (" --from DIRECTOR" if need_from else "")
        write(f"{missing} of {len(pts)} missing: `lb realserver setup --mode {mode}"
              f"{' --arp arptables' if arp == 'arptables' else ''}{f' --dev {dev}' if dev else ''}{froms} "
              f"{' '.join(map(str, vips))}` makes them so\n")
    return rc


def setup(mode: str, vips: list, arp: str, dev: str | None, write, sources=()) -> int:
    pts = points(mode, vips, arp, dev, sources)
    for p in pts:
        if not p.ok and (p.refuse or p.make is None):    # refused before anything is changed
            raise RealServerError(p.refuse or f"{p.why}: {p.fix}")
    state = load_state()
    for v in vips:                   # set up by lb from now on (undo looks for them)
        state["vips"].setdefault(str(v), {"added_address": False, "arptables": []})
    done = []
    try:
        for p in sorted(pts, key=lambda p: p.late):    # the VIP last: never on lo while ARP answers it
            if not p.ok:
                done.append(p.make(state))
                write(f"  {done[-1]}\n")
    finally:
        save_state(state)
    if not done:
        write("nothing to do\n")
    write(_title(mode, vips, arp) + "\n")
    return report(points(mode, vips, arp, dev, sources), write)


def _rule_gone(rule: list[str]) -> bool:
    """True when `arptables -L` no longer shows rule (flushed by hand, say): nothing left to delete."""
    chain, opts = rule[0], list(zip(rule[1::2], rule[2::2]))
    # as check matches them: the listing may spell the mangle target otherwise
    pairs = [(o, v) for o, v in opts if o != "-j" or v == "DROP"]
    return not _has_rule(arptables_rules().get(chain, []), *pairs)


def undo(vips: list, write) -> int:
    """Take back what setup did for `vips`; the sysctls and the decap program once none is left.
    Each thing is dropped from the state only once undone, so a failed undo can be run again."""
    state = load_state()
    try:
        for vip in vips:
            entry = state["vips"].get(str(vip))
            if entry is None:
                write(f"  {vip}: not set up by `lb realserver setup`: left as it is\n")
                continue
            # the VIP off lo first: its ARP rules go only once nothing is left to answer ARP for
            if entry.get("added_address"):
                addresses.release([_on_lo(vip)])
                entry["added_address"] = False
                write(f"  removed {_on_lo(vip).address} from lo\n")
            rules = entry.setdefault("arptables", [])
            while rules:
                rule = rules[0]
                try:
                    _arptables("-D", rule)
                    write(f"  arptables -D {' '.join(rule)}\n")
                except RealServerError:
                    if not _rule_gone(rule):
                        raise
                    write(f"  arptables {' '.join(rule)}: already gone\n")
                rules.pop(0)
            del state["vips"][str(vip)]
        if not state["vips"]:
            for path, old in sorted(state["sysctl"].items()):
                try:
                    with open(path) as f:
                        now = f.read().strip()
                    with open(path, "w") as f:
                        f.write(str(old))
                    write(f"  {path.removeprefix('/proc/sys/').replace('/', '.')}: {now} -> {old}\n")
                except FileNotFoundError:
                    # the interface is gone, and its settings with it
                    write(f"  {path.removeprefix('/proc/sys/').replace('/', '.')}: the interface is gone: "
                          f"skipped\n")
                del state["sysctl"][path]
            if state["decap"]:
                from lb.dataplane import decap

                for dev in list(state["decap"]):
                    try:
                        if decap.detach(dev):
                            write(f"  lb decap detached from {dev}\n")
                        else:
                            write(f"  lb decap already gone from {dev}\n")
                    except decap.DecapError as e:
                        # gone, or another program is there now: not ours to remove
                        write(f"  {e}: left as it is\n")
                    state["decap"].remove(dev)
    finally:
        save_state(state)
    return 0
