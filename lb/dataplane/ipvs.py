"""The kernel IPVS data plane: the fallback for hosts where XDP cannot load or attach.

It programs the kernel's IPVS table over generic netlink (pyroute2's IPVS module, never by
running ipvsadm) with the same interface as XdpDataplane: the engine hands it TableSpecs and
it applies only the difference between the kernel's table and the wanted one.

- Real servers are added in configuration order; the kernel puts each one at the head of the
  service's list, so its list is the reverse of the config, as in XDP mode.
- Removing a real server drains it as the XDP data plane does: weight 0 while connections
  still point at it, removed once they have all ended (IPVS itself would drop their packets at
  once, expire_nodest_conn = 0).
- The kernel table outlives `lb run` (as pinned maps do in XDP mode).  Which services belong
  to an instance is kept in /run/lb/<instance>.ipvs.json, so that a restart adopts them, a
  clean stop removes them, and services that somebody else put into IPVS are never touched.
- Schedulers, connection tracking, expiry and next hops are the kernel's: sweep() and
  refresh_nexthops() have nothing to do.
- Firewall-mark services: IPVS only reads packet marks, so lb marks their port groups itself
  with nftables rules in a table of its own (lb/dataplane/nft.py), replaced atomically when
  the groups change, removed with the services.
- HA connection sync is IPVS's own sync daemon (master on the active director, backup on the
  standby), started and stopped over netlink (IPVS_CMD_NEW_DAEMON / IPVS_CMD_DEL_DAEMON).

- IPv6 services: IPVS_SVC_ATTR_AF = AF_INET6 (firewall-mark services too: the family is the
  VIP's, or the port groups'), and the persistence netmask is a prefix length 1..128 (128:
  none), sent and read back as the kernel keeps it (a host-order u32, as ipvsadm -M 64 sends
  it), so an unchanged IPv6 service compares equal and is not rewritten.

pyroute2 0.9 pitfalls handled here: its command map sends "update" to a delete (so "set" is
used), IPVSService ignores misspelled keyword arguments (the scheduler is sched_name=), and
IPVSDest defaults to fwd_method=3 (DR), so the method is always given.
"""
from __future__ import annotations

import errno
import functools
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass, replace

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, genlmsg, nla
from pyroute2.netlink.exceptions import NetlinkError

from lb.config.model import DEFAULT_LBLC_EXPIRATION, IPVSADM_FORWARD, Defense

from .base import Dataplane
from .errors import ApplyFailed, DataplaneError, TableDoesNotFit
from .nft import MarkRules, NftError, ruleset_text
from .records import ConnRow, RealRow, ServiceRow, Stats, names_service
from .spec import RealSpec, ServiceSpec, TableSpec

log = logging.getLogger("lb.dataplane.ipvs")

RUN_DIR = "/run/lb"
SYSCTL_DIR = "/proc/sys/net/ipv4/vs"      # IPVS's sysctls (of the reader's network namespace)
# the forwarding switch of each family that IPVS NAT needs for the replies: (path, sysctl name)
IP_FORWARD = {4: ("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
              6: ("/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding")}


def _proc_net(name: str) -> str:
    """/proc/thread-self/net/NAME: the calling thread's network namespace (/proc/net follows
    the process's main thread, which differs in a thread that entered another namespace)."""
    path = f"/proc/thread-self/net/{name}"
    return path if os.path.exists("/proc/thread-self") else f"/proc/net/{name}"

# linux/ip_vs.h
IP_VS_CONN_F_MASQ = 0
IP_VS_CONN_F_LOCALNODE = 1
IP_VS_CONN_F_TUNNEL = 2
IP_VS_CONN_F_DROUTE = 3
# the kernel's method of each forward mode (lb.config.model.FORWARD_MODES, plus "local", which
# lb never configures but may find in the kernel's table), and back
FWD_METHODS = {"nat": IP_VS_CONN_F_MASQ, "dr": IP_VS_CONN_F_DROUTE, "tunnel": IP_VS_CONN_F_TUNNEL,
               "local": IP_VS_CONN_F_LOCALNODE}
FORWARD_MODE = {fwd: mode for mode, fwd in FWD_METHODS.items()}
# ipvsadm's names of the methods (the listing's Forward column)
FORWARD_NAMES = {FWD_METHODS[mode]: name for mode, name in IPVSADM_FORWARD.items()} | {IP_VS_CONN_F_LOCALNODE: "Local"}
IP_VS_SVC_F_PERSISTENT = 0x0001
IP_VS_SVC_F_HASHED = 0x0002
IP_VS_SVC_F_ONEPACKET = 0x0004
IP_VS_SVC_F_SCHED1 = 0x0008
IP_VS_SVC_F_SCHED2 = 0x0010
IP_VS_SVC_F_SCHED3 = 0x0020
IPVS_CMD_NEW_DAEMON = 9
IPVS_CMD_DEL_DAEMON = 10
IPVS_CMD_GET_DAEMON = 11
IPVS_CMD_SET_CONFIG = 12
IPVS_CMD_GET_CONFIG = 13
IPVS_CMD_ZERO = 16
IP_VS_STATE_MASTER = 1
IP_VS_STATE_BACKUP = 2
SYNC_STATES = {"master": IP_VS_STATE_MASTER, "backup": IP_VS_STATE_BACKUP}
PROTO_NUMBERS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
PROTO_NAMES = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP", 132: "SCTP"}
HOST_MASK = "255.255.255.255"
HOST_PLEN6 = 128

# ipvsadm's names for the scheduler flags (print_sched_flags); for sh and mh it names no third
# flag (ipvsadm 1.31 leaves it out, and the parentheses with it when it is the only one)
_SCHED_FLAG_NAMES = {
    "sh": ("sh-fallback", "sh-port", None),
    "mh": ("mh-fallback", "mh-port", None),
}


class IpvsError(DataplaneError):
    pass


_FLAG_BITS = {"sh-fallback": IP_VS_SVC_F_SCHED1, "mh-fallback": IP_VS_SVC_F_SCHED1,
              "sh-port": IP_VS_SVC_F_SCHED2, "mh-port": IP_VS_SVC_F_SCHED2}


def _svc_flags(spec: ServiceSpec) -> int:
    flags = IP_VS_SVC_F_PERSISTENT if spec.persistent else 0
    for name in spec.sched_flags:
        flags |= _FLAG_BITS.get(name, 0)
    return flags


IPV6_CONF = "/proc/sys/net/ipv6/conf"


def _warn_accept_ra(conf_dir: str = IPV6_CONF) -> list[str]:
    """With IPv6 forwarding on, Linux ignores router advertisements where accept_ra is 1: a
    director that takes its IPv6 default route or address from them would lose it when they
    expire.  Warn, naming each such interface (accept_ra = 2 keeps them); returns their names."""
    names = []
    try:
        devs = sorted(os.listdir(conf_dir))
    except OSError:
        return names
    for dev in devs:
        if dev in ("all", "default"):
            continue
        try:
            with open(os.path.join(conf_dir, dev, "accept_ra")) as f:
                if f.read().strip() == "1":
                    names.append(dev)
        except OSError:
            continue
    if names:
        log.warning("IPVS NAT: with IPv6 forwarding on, router advertisements are ignored on %s "
                    "(accept_ra = 1); set net.ipv6.conf.<interface>.accept_ra = 2 where the director "
                    "takes its IPv6 route or address from them", ", ".join(names))
    return names


def _is_v6(spec: ServiceSpec) -> bool:
    """An IPv6 service: its VIP is IPv6 (a firewall-mark service without one: its port
    groups' addresses are)."""
    if spec.address is not None:
        return spec.address.version == 6
    return any(g.address.version == 6 for g in spec.groups)


def _af(spec: ServiceSpec) -> int:
    return socket.AF_INET6 if _is_v6(spec) else socket.AF_INET


def _mask(pmask, v6: bool) -> str | int:
    """The persistence netmask as lb compares it: a dotted IPv4 netmask, or an IPv6 prefix
    length (int); None (or a bare prefix length for IPv4) normalised, so that equal masks
    compare equal."""
    if v6:
        plen = HOST_PLEN6 if pmask is None else int(pmask)
        if not 1 <= plen <= 128:
            raise IpvsError(f"IPv6 persistence prefix length {pmask!r} is out of range 1..128")
        return plen
    if pmask is None:
        return HOST_MASK
    if isinstance(pmask, int):
        if not 0 <= pmask <= 32:
            raise IpvsError(f"IPv4 persistence prefix length {pmask!r} is out of range 0..32")
        return str(ipaddress.IPv4Network(f"0.0.0.0/{pmask}").netmask)
    return str(ipaddress.IPv4Address(str(pmask)))


def _netmask_attr(mask: str | int) -> str:
    """IPVS_SVC_ATTR_NETMASK as pyroute2 writes it (an "ip4addr": four raw bytes).  The kernel
    keeps the attribute's bytes in svc->netmask: for IPv4 a netmask in network order, for IPv6
    the prefix length 1..128 as a host-order u32 (ip_vs_ctl.c checks `(__u32) u->netmask`;
    ipvsadm -M 64 sends nla_put_u32(64)), which pyroute2 reads as "64.0.0.0" on x86."""
    if isinstance(mask, int):
        return socket.inet_ntoa(struct.pack("=I", mask))
    return mask


def _netmask_value(text, af: int) -> str | int | None:
    """IPVS_SVC_ATTR_NETMASK read back: the dotted netmask (IPv4) or the prefix length (IPv6)."""
    if text is None:
        return None
    if af == socket.AF_INET6:
        return struct.unpack("=I", socket.inet_aton(str(text)))[0]
    return str(text)


def _sched_flag_names(sched: str, flags: int) -> tuple[str, ...]:
    names = _SCHED_FLAG_NAMES.get(sched, ("flag-1", "flag-2", "flag-3"))
    return tuple(n for bit, n in zip((IP_VS_SVC_F_SCHED1, IP_VS_SVC_F_SCHED2, IP_VS_SVC_F_SCHED3), names)
                 if flags & bit and n)


# ---- the kernel's table as plain values ------------------------------------------------------

def tunnel_info(fwd: int, tun_type, tun_port, tun_flags) -> str:
    """ipvsadm --tun-info's TunnelInfo of a destination: its tunnel type (IPVS_DEST_ATTR_TUN_*,
    Linux 5.3; absent before, where every tunnel is ipip), "n/a" when it does not tunnel."""
    if fwd != IP_VS_CONN_F_TUNNEL:
        return "n/a"
    if not tun_type:
        return "ipip"
    # ipvsadm's names of the flags: none, IP_VS_TUNNEL_ENCAP_FLAG_CSUM, _REMCSUM
    csum = {0: "-c", 1: "+c", 2: "r+c"}.get(tun_flags or 0, "?")
    if tun_type == 1:                     # the kernel sends the port in network order; pyroute2 reads host order
        return f"gue:{socket.ntohs(tun_port or 0)}:{csum}"
    return f"gre:{csum}" if tun_type == 2 else "?"


@dataclass
class KDest:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    fwd: int
    weight: int
    active: int = 0
    inactive: int = 0
    persist: int = 0
    u_thresh: int = 0
    l_thresh: int = 0
    stats: Stats | None = None
    rate: Stats | None = None
    tunnel: str = "n/a"                   # ipvsadm --tun-info's column (tunnel_info below)
    tun_type: int = 0                     # IPVS_DEST_ATTR_TUN_TYPE (0: ipip, the only one lb writes)

    @property
    def key(self):
        return (self.address, self.port)

    def spec(self, weight: int | None = None) -> RealSpec:
        """This destination as a RealSpec (for the kernel's writes), at `weight` if given."""
        return RealSpec(self.address, self.port, self.weight if weight is None else weight,
                        FORWARD_MODE.get(self.fwd, "dr"), self.u_thresh, self.l_thresh)


@dataclass
class KService:
    protocol: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    port: int
    fwmark: int
    af: int
    sched: str
    flags: int
    timeout: int
    netmask: str | int | None        # IPv4: dotted netmask; IPv6: prefix length
    dests: list[KDest]
    stats: Stats | None = None
    rate: Stats | None = None

    @property
    def key(self):
        if self.fwmark:
            return ("fwmark", self.fwmark)
        return (PROTO_NAMES.get(self.protocol, str(self.protocol)).lower(), self.address, self.port)


def _stats(nla) -> tuple[Stats, Stats]:
    """(counters, rates) from an IPVS_*_ATTR_STATS64 (or the 32-bit STATS) attribute."""
    if nla is None:
        return Stats(), Stats()
    g = nla.get_attr

    def v(name):
        return int(g(name) or 0)

    return (Stats(v("IPVS_STATS_ATTR_CONNS"), v("IPVS_STATS_ATTR_INPKTS"), v("IPVS_STATS_ATTR_OUTPKTS"),
                  v("IPVS_STATS_ATTR_INBYTES"), v("IPVS_STATS_ATTR_OUTBYTES")),
            Stats(v("IPVS_STATS_ATTR_CPS"), v("IPVS_STATS_ATTR_INPPS"), v("IPVS_STATS_ATTR_OUTPPS"),
                  v("IPVS_STATS_ATTR_INBPS"), v("IPVS_STATS_ATTR_OUTBPS")))


def _ip(text, af: int):
    if text is None:
        return None
    return ipaddress.ip_address(text)


class _CmdMsg(genlmsg):
    """IPVS commands that pyroute2's ipvsmsg cannot write: SET_CONFIG with the timeouts as the
    u32 they are, and NEW/DEL_DAEMON with the sync daemon's nested attributes (ipvsmsg has
    both as hex blobs; linux/ip_vs.h IPVS_CMD_ATTR_*, IPVS_DAEMON_ATTR_*).  Replies are parsed
    by the socket's ipvsmsg, hence _hex_u32 and _daemon_attrs."""
    prefix = "IPVS_CMD_ATTR_"
    nla_map = (
        ("IPVS_CMD_ATTR_UNSPEC", "none"),
        ("IPVS_CMD_ATTR_SERVICE", "hex"),
        ("IPVS_CMD_ATTR_DEST", "hex"),
        ("IPVS_CMD_ATTR_DAEMON", "daemon"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_UDP", "uint32"),
    )

    class daemon(nla):
        prefix = "IPVS_DAEMON_ATTR_"
        nla_map = (
            ("IPVS_DAEMON_ATTR_UNSPEC", "none"),
            ("IPVS_DAEMON_ATTR_STATE", "uint32"),
            ("IPVS_DAEMON_ATTR_MCAST_IFN", "asciiz"),
            ("IPVS_DAEMON_ATTR_SYNC_ID", "uint32"),
            ("IPVS_DAEMON_ATTR_SYNC_MAXLEN", "uint16"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP", "ip4addr"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP6", "ip6addr"),
            ("IPVS_DAEMON_ATTR_MCAST_PORT", "uint16"),     # host order (ip_vs.h says be16; 6.1 sends u16)
            ("IPVS_DAEMON_ATTR_MCAST_TTL", "uint8"),
        )


@dataclass(frozen=True)
class SyncDaemon:
    """One of the kernel's IPVS sync daemons (ipvsadm --start-daemon)."""
    state: str                   # "master" | "backup"
    ifname: str                  # the multicast interface
    syncid: int
    # what the kernel reports besides (0/None: not reported; the kernel picks its defaults)
    maxlen: int = 0
    group: str | None = None
    port: int = 0
    ttl: int = 0

    def line(self) -> str:
        """As ipvsadm -L --daemon prints it (1.31 adds what the kernel reports)."""
        extra = "".join(f", {k}={v}" for k, v in (("maxlen", self.maxlen), ("group", self.group),
                                                   ("port", self.port), ("ttl", self.ttl)) if v)
        return f"{self.state} sync daemon (mcast={self.ifname}, syncid={self.syncid}{extra})"

    def same(self, other: "SyncDaemon") -> bool:
        return (self.state, self.ifname, self.syncid) == (other.state, other.ifname, other.syncid)


def _daemon_attrs(value) -> dict:
    """The nested IPVS_DAEMON_ATTR_* of a daemon attribute that pyroute2 gave as hex."""
    raw = value if isinstance(value, bytes) else bytes.fromhex(str(value).replace(":", ""))
    names = _CmdMsg.daemon.nla_map
    out, off = {}, 0
    while off + 4 <= len(raw):
        length, typ = struct.unpack_from("=HH", raw, off)
        if length < 4:
            break
        data = raw[off + 4:off + length]
        typ &= 0x3FFF                    # NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if 0 < typ < len(names):
            name, kind = names[typ]
            if kind == "asciiz":
                out[name] = data.split(b"\0", 1)[0].decode()
            elif kind == "ip4addr":
                out[name] = str(ipaddress.IPv4Address(data[:4]))
            elif kind == "ip6addr":
                out[name] = str(ipaddress.IPv6Address(data[:16]))
            else:                          # host-order integers
                out[name] = int.from_bytes(data, sys.byteorder)
        off += (length + 3) & ~3
    return out


def _hex_u32(value) -> int:
    """pyroute2's 'hex' attribute ("84:03:00:00") as a host-order u32."""
    if isinstance(value, int):
        return value
    raw = bytes.fromhex(str(value).replace(":", ""))
    return int.from_bytes(raw[:4], "little")


def _netlink_read(what: str):
    """A read of the kernel's IPVS whose NetlinkError (EPERM without CAP_NET_ADMIN: every IPVS
    command is an admin one) is an IpvsError, which the CLI prints, not a traceback."""
    def wrap(fn):
        @functools.wraps(fn)
        def read(*args, **kw):
            try:
                return fn(*args, **kw)
            except NetlinkError as e:
                raise IpvsError(f"cannot read {what} of kernel IPVS: {os.strerror(e.code) if e.code else e}"
                                + (" (it needs root: CAP_NET_ADMIN)" if e.code == errno.EPERM else "")) from e
        return read
    return wrap


class Kernel:
    """One generic netlink conversation with the kernel's IPVS (in the current network
    namespace, or in `netns`).  Opened per operation, as lb opens IPRoute sockets: a socket
    never crosses the engine's worker threads."""

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self.sock = None

    def __enter__(self) -> "Kernel":
        from pyroute2 import IPVS

        try:
            self.sock = IPVS(netns=self.netns) if self.netns else IPVS()
        except Exception as e:  # NetlinkError(ENOENT/ENOTSUP): no IPVS generic netlink family
            raise IpvsError(f"kernel IPVS is not available: {e}") from e
        return self

    def __exit__(self, *exc) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # ---- reads ----
    @_netlink_read("the services")
    def services(self) -> list[KService]:
        from pyroute2 import IPVSService

        out = []
        for msg in self.sock.service("dump"):
            s = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
            g = s.get_attr
            af = g("IPVS_SVC_ATTR_AF") or socket.AF_INET
            fwmark = g("IPVS_SVC_ATTR_FWMARK") or 0
            flags = g("IPVS_SVC_ATTR_FLAGS")
            flags = flags["flags"] if flags is not None else 0
            stats, rate = _stats(g("IPVS_SVC_ATTR_STATS64") or g("IPVS_SVC_ATTR_STATS"))
            ks = KService(protocol=g("IPVS_SVC_ATTR_PROTOCOL") or 0,
                          address=None if fwmark else _ip(g("IPVS_SVC_ATTR_ADDR"), af),
                          port=0 if fwmark else (g("IPVS_SVC_ATTR_PORT") or 0), fwmark=fwmark, af=af,
                          sched=g("IPVS_SVC_ATTR_SCHED_NAME") or "", flags=flags,
                          timeout=g("IPVS_SVC_ATTR_TIMEOUT") or 0,
                          netmask=_netmask_value(g("IPVS_SVC_ATTR_NETMASK"), af),
                          dests=[], stats=stats, rate=rate)
            key = IPVSService.from_message(msg)
            for dmsg in self.sock.dest("dump", service=key):
                d = dmsg.get_attr("IPVS_CMD_ATTR_DEST")
                dg = d.get_attr
                dstats, drate = _stats(dg("IPVS_DEST_ATTR_STATS64") or dg("IPVS_DEST_ATTR_STATS"))
                ks.dests.append(KDest(address=_ip(dg("IPVS_DEST_ATTR_ADDR"), dg("IPVS_DEST_ATTR_ADDR_FAMILY") or af),
                                      port=dg("IPVS_DEST_ATTR_PORT") or 0,
                                      fwd=(dg("IPVS_DEST_ATTR_FWD_METHOD") or 0) & 7,
                                      weight=dg("IPVS_DEST_ATTR_WEIGHT") or 0,
                                      active=dg("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0,
                                      inactive=dg("IPVS_DEST_ATTR_INACT_CONNS") or 0,
                                      persist=dg("IPVS_DEST_ATTR_PERSIST_CONNS") or 0,
                                      u_thresh=dg("IPVS_DEST_ATTR_U_THRESH") or 0,
                                      l_thresh=dg("IPVS_DEST_ATTR_L_THRESH") or 0,
                                      tunnel=tunnel_info((dg("IPVS_DEST_ATTR_FWD_METHOD") or 0) & 7,
                                                         dg("IPVS_DEST_ATTR_TUN_TYPE"), dg("IPVS_DEST_ATTR_TUN_PORT"),
                                                         dg("IPVS_DEST_ATTR_TUN_FLAGS")),
                                      tun_type=dg("IPVS_DEST_ATTR_TUN_TYPE") or 0,
                                      stats=dstats, rate=drate))
            out.append(ks)
        return out

    @_netlink_read("the timeouts")
    def timeouts(self) -> tuple[int, int, int]:
        msg = _CmdMsg()
        msg["cmd"] = IPVS_CMD_GET_CONFIG
        msg["version"] = 1
        (reply,) = self.sock.nlm_request(msg, msg_type=self.sock.prid, msg_flags=NLM_F_REQUEST)
        return tuple(_hex_u32(reply.get_attr(f"IPVS_CMD_ATTR_TIMEOUT_{n}") or 0)
                     for n in ("TCP", "TCP_FIN", "UDP"))

    # ---- writes ----
    @staticmethod
    def _svc(spec: ServiceSpec, full: bool = True):
        from pyroute2 import IPVSService

        v6 = _is_v6(spec)
        af = socket.AF_INET6 if v6 else socket.AF_INET
        if spec.fwmark:
            kw = dict(af=af, fwmark=spec.fwmark)
        else:
            kw = dict(af=af, addr=str(spec.address), port=spec.port, protocol=PROTO_NUMBERS[spec.protocol])
        if not v6:
            kw["netmask"] = HOST_MASK
        if full:
            persist = bool(spec.persistent)
            kw.update(sched_name=spec.scheduler,
                      flags={"flags": _svc_flags(spec), "mask": 0xFFFF},
                      timeout=spec.persistent if persist else 0,
                      netmask=_netmask_attr(_mask(spec.pmask if persist else None, v6)))
        return IPVSService(**kw)

    @staticmethod
    def _dest(r: RealSpec):
        from pyroute2 import IPVSDest

        return IPVSDest(addr=str(r.address), port=r.port, fwd_method=FWD_METHODS[r.forward],
                        weight=r.weight, u_thresh=r.u_threshold, l_thresh=_l_thresh(r))

    def _do(self, what: str, fn, *args, **kw) -> None:
        try:
            fn(*args, **kw)
        except NetlinkError as e:
            hint = ""
            if what.endswith("service") and e.code == errno.ENOENT and what.startswith(("add", "set")):
                hint = " (is the scheduler's module ip_vs_<name> available?)"
            raise IpvsError(f"kernel IPVS refused to {what}: {os.strerror(e.code) if e.code else e}{hint}") from e

    def add_service(self, spec: ServiceSpec) -> None:
        self._do(f"add service {_svc_name(spec.key)}", self.sock.service, "add", service=self._svc(spec))

    def set_service(self, spec: ServiceSpec) -> None:
        self._do(f"set service {_svc_name(spec.key)}", self.sock.service, "set", service=self._svc(spec))

    def del_service(self, spec: ServiceSpec) -> None:
        self._do(f"delete service {_svc_name(spec.key)}", self.sock.service, "del",
                 service=self._svc(spec, full=False))

    def add_dest(self, spec: ServiceSpec, r: RealSpec) -> None:
        self._do(f"add real server {r.address}:{r.port} to {_svc_name(spec.key)}", self.sock.dest, "add",
                 service=self._svc(spec, full=False), dest=self._dest(r))

    def set_dest(self, spec: ServiceSpec, r: RealSpec) -> None:
        self._do(f"set real server {r.address}:{r.port} of {_svc_name(spec.key)}", self.sock.dest, "set",
                 service=self._svc(spec, full=False), dest=self._dest(r))

    def del_dest(self, spec: ServiceSpec, r: RealSpec) -> None:
        self._do(f"delete real server {r.address}:{r.port} of {_svc_name(spec.key)}", self.sock.dest, "del",
                 service=self._svc(spec, full=False), dest=self._dest(r))

    def set_timeouts(self, tcp: int, tcpfin: int, udp: int) -> None:
        msg = _CmdMsg()
        msg["cmd"] = IPVS_CMD_SET_CONFIG
        msg["version"] = 1
        msg["attrs"] = [("IPVS_CMD_ATTR_TIMEOUT_TCP", tcp), ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", tcpfin),
                        ("IPVS_CMD_ATTR_TIMEOUT_UDP", udp)]
        tuple(self.sock.nlm_request(msg, msg_type=self.sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK))

    def zero(self, spec: ServiceSpec | None = None) -> None:
        """ipvsadm -Z: the counters and rate estimators of one service (and its real servers), or
        of every service (IPVS_CMD_ZERO without a service)."""
        from pyroute2.netlink.generic.ipvs import ipvsmsg

        msg = ipvsmsg()
        msg["cmd"] = IPVS_CMD_ZERO
        msg["version"] = 1
        if spec is not None:
            msg["attrs"] = [("IPVS_CMD_ATTR_SERVICE", self._svc(spec, full=False).dump_key())]
        self._request("zero the counters" + (f" of {_svc_name(spec.key)}" if spec else ""), msg)

    # ---- the sync daemons ----
    @_netlink_read("the sync daemons")
    def daemons(self) -> list[SyncDaemon]:
        msg = _CmdMsg()
        msg["cmd"] = IPVS_CMD_GET_DAEMON
        msg["version"] = 1
        out = []
        for reply in self.sock.nlm_request(msg, msg_type=self.sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_DUMP):
            # replies are parsed by the socket's own ipvsmsg, which keeps this attribute as hex
            raw = reply.get_attr("IPVS_CMD_ATTR_DAEMON")
            if raw is None:
                continue
            d = _daemon_attrs(raw)
            state = {v: k for k, v in SYNC_STATES.items()}.get(d.get("IPVS_DAEMON_ATTR_STATE"))
            if state:
                g = d.get
                out.append(SyncDaemon(state, g("IPVS_DAEMON_ATTR_MCAST_IFN") or "", g("IPVS_DAEMON_ATTR_SYNC_ID") or 0,
                                      maxlen=g("IPVS_DAEMON_ATTR_SYNC_MAXLEN") or 0,
                                      group=g("IPVS_DAEMON_ATTR_MCAST_GROUP6") or g("IPVS_DAEMON_ATTR_MCAST_GROUP"),
                                      port=g("IPVS_DAEMON_ATTR_MCAST_PORT") or 0,
                                      ttl=g("IPVS_DAEMON_ATTR_MCAST_TTL") or 0))
        return sorted(out, key=lambda x: SYNC_STATES[x.state])        # master first, as ipvsadm

    def start_daemon(self, state: str, ifname: str, syncid: int) -> None:
        msg = _CmdMsg()
        msg["cmd"] = IPVS_CMD_NEW_DAEMON
        msg["version"] = 1
        msg["attrs"] = [("IPVS_CMD_ATTR_DAEMON", {"attrs": [
            ("IPVS_DAEMON_ATTR_STATE", SYNC_STATES[state]), ("IPVS_DAEMON_ATTR_MCAST_IFN", ifname),
            ("IPVS_DAEMON_ATTR_SYNC_ID", syncid)]})]
        self._request(f"start the {state} sync daemon on {ifname}", msg)

    def stop_daemon(self, state: str) -> None:
        msg = _CmdMsg()
        msg["cmd"] = IPVS_CMD_DEL_DAEMON
        msg["version"] = 1
        msg["attrs"] = [("IPVS_CMD_ATTR_DAEMON", {"attrs": [("IPVS_DAEMON_ATTR_STATE", SYNC_STATES[state])]})]
        self._request(f"stop the {state} sync daemon", msg)

    def _request(self, what: str, msg) -> None:
        self._do(what, lambda: tuple(self.sock.nlm_request(msg, msg_type=self.sock.prid,
                                                           msg_flags=NLM_F_REQUEST | NLM_F_ACK)))


_SCHED_OK: set[str] = set()


def _sched_missing(sched: str) -> str | None:
    """Why the kernel cannot schedule with `sched` (None: it can): its module is loaded or
    built in, or modprobe loads it now (the kernel would, at the first service using it)."""
    if sched in _SCHED_OK or os.path.isdir(f"/sys/module/ip_vs_{sched}"):
        _SCHED_OK.add(sched)
        return None
    try:
        p = subprocess.run(["modprobe", "-q", f"ip_vs_{sched}"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"modprobe: {e}"
    if p.returncode != 0 and not os.path.isdir(f"/sys/module/ip_vs_{sched}"):
        return f"modprobe ip_vs_{sched} failed{': ' + p.stderr.strip() if p.stderr.strip() else ''}"
    _SCHED_OK.add(sched)
    return None


def sync_id(ha) -> int:
    """The SyncID of a director pair's sync messages (1-255), from what both directors' [ha]
    share (the primary's and the backup's addresses), so different pairs on one network differ
    most of the time; a backup drops messages of another SyncID."""
    import zlib

    return zlib.crc32(f"{ha.primary} {ha.backup}".encode()) % 255 + 1


def stop_recorded_sync(daemons: list[tuple[str, str, int]], netns: str | None = None) -> list[tuple[str, str, int]]:
    """The sync daemons an earlier run of the instance started ((state, interface, SyncID), from
    its record: lb/held.py) stopped, each only while the kernel runs it as recorded (one of
    another interface or SyncID is someone else's now).  Returns those that could not be."""
    if not daemons or (netns is None and not os.path.exists(_proc_net("ip_vs"))):
        return []                       # no IPVS in this kernel now: no daemon of it runs
    left = []
    try:
        with Kernel(netns) as k:
            running = {d.state: d for d in k.daemons()}
            for state, ifname, syncid in daemons:
                want = SyncDaemon(state, ifname, syncid)
                cur = running.get(state)
                if cur is None or not cur.same(want):
                    continue
                try:
                    k.stop_daemon(state)
                except IpvsError as e:
                    log.warning("stopping the %s an earlier run left: %s", want.line(), e)
                    left.append((state, ifname, syncid))
                    continue
                log.info("stopped the %s an earlier run left (this configuration runs none)", want.line())
    except IpvsError as e:
        log.warning("stopping the IPVS sync daemons an earlier run left: %s", e)
        return list(daemons)
    return left


def ensure_module() -> None:
    """Load ip_vs if its generic netlink family is missing (a no-op where it is built in or
    loaded); raises IpvsError with the reason when the kernel cannot do IPVS."""
    if os.path.exists(_proc_net("ip_vs")):
        return
    try:
        p = subprocess.run(["modprobe", "ip_vs"], capture_output=True, text=True, timeout=30)
        detail = (p.stderr or p.stdout).strip()
        ok = p.returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, detail = False, str(e)
    if not ok and not os.path.exists(_proc_net("ip_vs")):
        raise IpvsError(f"kernel IPVS is not available (modprobe ip_vs: {detail or 'failed'})")


def available() -> bool:
    return os.path.exists(_proc_net("ip_vs"))


def _spec_of(ks: KService) -> ServiceSpec:
    """A kernel service as a ServiceSpec (for comparisons and deletes)."""
    persist = ks.flags & IP_VS_SVC_F_PERSISTENT
    v6 = ks.af == socket.AF_INET6
    host = HOST_PLEN6 if v6 else HOST_MASK
    address = ks.address
    if address is None:          # a firewall-mark service: the unspecified address carries its family
        address = ipaddress.IPv6Address(0) if v6 else ipaddress.IPv4Address(0)
    return ServiceSpec(PROTO_NAMES.get(ks.protocol, "?").lower(), address, ks.port, ks.sched,
                       tuple(d.spec() for d in ks.dests),
                       persistent=ks.timeout if persist else 0,
                       pmask=(ks.netmask if ks.netmask not in (None, host) else None) if persist else None,
                       fwmark=ks.fwmark, sched_flags=_sched_flag_names(ks.sched, ks.flags))


class IpvsDataplane(Dataplane):
    """Kernel IPVS behind the Dataplane interface (lb/dataplane/base.py)."""

    kind = "ipvs"

    def __init__(self, instance: str, netns: str | None = None, run_dir: str = RUN_DIR):
        self.instance = instance
        self.netns = netns
        self.state_path = os.path.join(run_dir, f"{instance}.ipvs.json")
        self.services: dict[tuple, ServiceSpec] = {}    # what this instance asked for, by key
        self.owned: set[tuple] = set()                  # service keys this instance made or adopted
        self.draining: set[tuple] = set()               # (service key, (addr, port))
        self.last_table: TableSpec | None = None
        # the nftables rules that go with last_table when it is not one of this run's (adopted
        # services carry no port groups to make them from); None: made from its services
        self.last_marks: list | None = None
        self.adopted = False
        self.created = False
        self.writes = 0
        self.attached: dict[str, str] = {}
        self.marks = MarkRules(instance, netns)         # nftables rules of the fwmark services
        self.syncing: dict[str, SyncDaemon] = {}         # sync daemons this instance started
        # the address family of each firewall-mark service the state file names (an adoption's)
        self.fwmark_af: dict[tuple, int] = {}

    # ---- loading ----
    def load(self) -> None:
        ensure_module()
        owned = self._read_state()
        with Kernel(self.netns) as k:
            present = self._present(k.services())
            timeouts = k.timeouts() if owned else None     # only an adoption needs them
        self.owned = {key for key in owned if key in present}
        self.adopted = bool(self.owned)
        self.created = not os.path.exists(self.state_path)
        for key in self.owned:
            self.services[key] = _spec_of(present[key])
        try:
            self.marks.load()
        except NftError as e:      # matters only once a firewall-mark service needs rules
            log.warning("cannot read the firewall-mark rules (table %s): %s", self.marks.table, e)
        if self.adopted:
            # what the previous run left is this run's "previous table": a first apply the kernel
            # refuses part-way writes it back instead of leaving half of each (the daemon exits
            # and a failed start leaves an adopted data plane in place)
            self.last_table = self._adopted_table(timeouts)
            self.last_marks = list(self.marks.rules)
        self._write_state()
        log.info("kernel IPVS ready (%s): %d services of instance %r %s", self._where(), len(self.owned),
                 self.instance, "adopted" if self.adopted else "")

    def _adopted_table(self, timeouts) -> TableSpec:
        """The kernel's state of the adopted services as a TableSpec: their services and real
        servers as the kernel has them, and IPVS's timeouts and sysctls as they are now.  (A real
        server that a refused apply removed from a service it kept comes back at the head of the
        service's list, as any real server added again does in IPVS; one it added that has
        connections already drains at weight 0, as any removal does, until the next start settles
        it: removed, its connections' packets would be dropped.)"""
        def sysctl(name: str, default: int) -> int:
            try:
                with open(os.path.join(SYSCTL_DIR, name)) as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                return default

        d = Defense()
        # a spec lists its real servers in the order they are added, and the kernel puts each one
        # it adds at the head of its list (which sh and mh hash over): the kernel's order reversed
        services = tuple(replace(self.services[key], reals=tuple(reversed(self.services[key].reals)))
                         for key in sorted(self.owned, key=str))
        return TableSpec(services, tuple(timeouts),
                         expire_nodest_conn=bool(sysctl("expire_nodest_conn", 0)),
                         lblc_expiration=sysctl("lblc_expiration", DEFAULT_LBLC_EXPIRATION),
                         lblcr_expiration=sysctl("lblcr_expiration", DEFAULT_LBLC_EXPIRATION),
                         defense=Defense(drop_entry=sysctl("drop_entry", d.drop_entry),
                                         drop_packet=sysctl("drop_packet", d.drop_packet),
                                         secure_tcp=sysctl("secure_tcp", d.secure_tcp),
                                         am_droprate=sysctl("am_droprate", d.am_droprate)))

    def _where(self) -> str:
        return f"netns {self.netns}" if self.netns else "this network namespace"

    def _read_state(self) -> set[tuple]:
        from lb import files

        try:
            doc = json.loads(files.read_private(self.state_path))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, files.UnsafePath) as e:
            log.warning("ignoring %s: %s", self.state_path, e)
            return set()
        if not isinstance(doc, dict):
            return set()
        out = set()
        for k in doc.get("services", []):
            if k[0] == "fwmark":
                out.add(("fwmark", int(k[1])))
                if len(k) > 2:           # its family (the kernel may have the mark in both)
                    self.fwmark_af[("fwmark", int(k[1]))] = int(k[2])
            else:
                out.add((k[0], ipaddress.ip_address(k[1]), int(k[2])))
        return out

    def _family(self, key, want: dict | None = None) -> int | None:
        """The address family of this instance's service `key`: of the one it applied or
        adopted, else of the wanted one (`want`), else the state file's; None: not known."""
        spec = self.services.get(key) or (want or {}).get(key)
        return _af(spec) if spec is not None else self.fwmark_af.get(key)

    def _present(self, kservices, want: dict | None = None) -> dict:
        """The kernel's services by key.  A firewall mark may name two, an IPv4 and an IPv6 one
        (IPVS keys them by family and mark; KService.key leaves the family out): the key then
        stands for the one of this instance's family (_family): one of the other family is
        somebody else's, never taken for this instance's, written or removed."""
        out: dict = {}
        for ks in kservices:
            family = self._family(ks.key, want) if ks.fwmark else None
            if family is None or ks.af == family:
                out[ks.key] = ks
        return out

    def _write_state(self) -> None:
        from lb import files

        files.ensure_private_dir(os.path.dirname(self.state_path))
        files.write_private(self.state_path, json.dumps({
            "instance": self.instance, "dataplane": "ipvs",
            "services": sorted([str(x) for x in k] + ([str(self._family(k))] if k[0] == "fwmark" and self._family(k)
                                                      else []) for k in self.owned)}))

    # ---- attach: IPVS hooks netfilter by itself; NAT needs forwarding for the replies ----
    def attach(self, ifname: str, side: str = "public", mode: str = "native") -> str:
        if side == "guard":              # the lease needs XDP (lease() below)
            return "none"
        self.attached[ifname] = side
        if side == "private":
            self._nat_forwarding()
        log.info("IPVS data plane serves %s (%s side)", ifname, side)
        return "ipvs"

    def _nat_forwarding(self) -> None:
        """IPVS NAT: the real servers' replies are addressed to the clients, so the kernel forwards
        them (IPVS rewrites them at its FORWARD hook): IPv4 forwarding on, and IPv6 forwarding too
        once an IPv6 service is in the table (ip6_forward drops every packet without it, so its
        replies never reached IPVS).  Only with a private side attached (network = "nat")."""
        if "private" not in self.attached.values():
            return
        families = [4] + ([6] if any(_is_v6(s) for s in self.services.values()) else [])
        for family in families:
            path, name = IP_FORWARD[family]
            try:
                with open(path) as f:
                    on = f.read().strip() == "1"
                if not on:
                    with open(path, "w") as f:
                        f.write("1\n")
                    log.info("IPVS NAT: enabled %s (replies are forwarded)", name)
                    if family == 6:
                        _warn_accept_ra()
            except OSError as e:
                log.warning("IPVS NAT needs %s = 1: %s", name, e)

    def detach_all(self) -> None:
        """Stop forwarding: remove this instance's services from the kernel (the XDP data plane
        detaches its programs)."""
        left = set()
        if self.owned:
            try:
                with Kernel(self.netns) as k:
                    present = self._present(k.services())
                    for key in sorted(self.owned, key=str):
                        if key not in present:
                            continue
                        try:            # each one tried: one refusal leaves the others' removal
                            k.del_service(_spec_of(present[key]))
                        except IpvsError as e:
                            left.add(key)
                            log.warning("removing virtual service %s from kernel IPVS: %s", _svc_name(key), e)
                            continue
                        self.writes += 1
                        log.info("removed virtual service %s from kernel IPVS", _svc_name(key))
            except IpvsError as e:
                left = set(self.owned)
                log.warning("removing services from kernel IPVS: %s", e)
        try:
            if self.marks.remove():
                log.info("removed the firewall-mark rules (nftables table %s)", self.marks.table)
        except NftError as e:
            log.warning("removing the firewall-mark rules: %s", e)
        self.stop_sync()
        # what could not be removed stays this instance's (its state file too: unpin keeps it),
        # so that the next run knows it and removes it
        self.owned = {k for k in self.owned if k in left}
        self.services.clear()
        self.draining.clear()
        self.attached.clear()

    def unpin(self) -> None:
        if self.owned:                  # services the kernel would not remove: still ours
            self._write_state()
            return
        try:
            os.unlink(self.state_path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        pass

    # ---- housekeeping the kernel does by itself ----
    def sweep(self, now_ns: int | None = None) -> int:
        return 0

    def refresh_nexthops(self, resolved: dict | None = None) -> int:
        return 0

    def estimate(self, now: float | None = None) -> int:
        return 0                    # the kernel's own estimator fills the rates

    def restart_sched_counts(self, spec: ServiceSpec) -> int:
        """quiesce_server: kernel IPVS has no way to zero a destination's activeconns or
        inactconns (ipvsadm -Z zeroes only the packet and byte statistics), so lc/wlc go on
        counting the old connections; said once."""
        if not getattr(self, "_said_quiesce_server", False):
            self._said_quiesce_server = True
            log.warning("quiesce_server: kernel IPVS cannot restart its connection counts; with the "
                        "ipvs data plane lc/wlc keep counting existing connections")
        return 0

    def sched_base_pending(self) -> bool:
        return False

    def refresh_sched_base(self, rids=None) -> int:
        return 0

    # ---- reading: the kernel's table, as ipvsadm reads it ----
    def read_services(self) -> list:
        return read_services(self.netns)

    def read_own_services(self) -> list:
        """Kernel IPVS holds somebody else's services too (ipvsadm's, another lb instance's):
        only those this instance made or adopted (a mark's of its own family)."""
        out = []
        for row in self.read_services():
            key = ("fwmark", row.fwmark) if row.fwmark else (row.protocol.lower(), row.address, row.port)
            if key not in self.owned:
                continue
            family = self._family(key) if row.fwmark else None
            if family is None or row.family == (6 if family == socket.AF_INET6 else 4):
                out.append(row)
        return out

    def read_connections(self) -> list:
        return read_connections()

    def counters(self) -> dict[str, int]:
        return {}                   # the kernel keeps no per-reason drop counters for IPVS

    def zero_stats(self, service: tuple | None = None) -> int:
        return zero(service, self.netns)

    # ---- HA connection sync: IPVS's own sync daemon (lb/ha/sync.py is for XDP) ----
    def start_sync(self, role: str, ifname: str, syncid: int) -> None:
        """Run the kernel's `role` ("master": send, "backup": receive) sync daemon on ifname,
        and not the other one that this instance may have started."""
        want = SyncDaemon(role, ifname, syncid)
        with Kernel(self.netns) as k:
            running = {d.state: d for d in k.daemons()}
            for state in sorted(set(self.syncing) - {role}):
                if state in running:
                    k.stop_daemon(state)
                    log.info("IPVS %s sync daemon stopped", state)
                self.syncing.pop(state, None)
            cur = running.get(role)
            if cur is not None and cur.same(want):
                self.syncing[role] = want
                return
            if cur is not None:          # another interface or SyncID: the kernel cannot change one
                k.stop_daemon(role)
            k.start_daemon(role, ifname, syncid)
        self.syncing[role] = want
        log.info("IPVS %s", want.line())

    def stop_sync(self) -> None:
        """Stop the sync daemons this instance started (none other)."""
        if not self.syncing:
            return
        try:
            with Kernel(self.netns) as k:
                running = {d.state for d in k.daemons()}
                for state in sorted(self.syncing):
                    if state in running:
                        k.stop_daemon(state)
                        log.info("IPVS %s sync daemon stopped", state)
        except IpvsError as e:
            log.warning("stopping the IPVS sync daemons: %s", e)
        self.syncing.clear()

    def held_sync(self) -> list[tuple[str, str, int]]:
        return [(d.state, d.ifname, d.syncid) for _, d in sorted(self.syncing.items())]

    def release_sync(self, daemons: list[tuple[str, str, int]], keep: bool) -> list[tuple[str, str, int]]:
        if not keep:
            return stop_recorded_sync(daemons, self.netns)
        if not daemons:
            return []
        try:
            with Kernel(self.netns) as k:
                running = {d.state: d for d in k.daemons()}
        except IpvsError as e:
            log.warning("reading the IPVS sync daemons an earlier run left: %s", e)
            return []
        for state, ifname, syncid in daemons:
            want = SyncDaemon(state, ifname, syncid)
            cur = running.get(state)
            if cur is not None and cur.same(want) and state not in self.syncing:
                self.syncing[state] = want
        return []

    def lease(self, seconds: float | None) -> None:
        """No lease: kernel IPVS cannot check one (a crashed daemon's addresses stay claimed)."""

    def lease_left(self) -> float | None:
        return None

    def claim(self, addrs: dict) -> None:
        pass

    def export_conns(self, now_ns: int | None = None) -> tuple[list, list]:
        return [], []

    def import_conns(self, conns: list, temps: list, ifindex: int = 0, local_mac: bytes = b"",
                     now_ns: int | None = None, owned_since_ns: int | None = None) -> tuple[int, int]:
        return 0, len(conns) + len(temps)

    # ---- apply ----
    def plan(self, table: TableSpec) -> None:
        """What the kernel could refuse, checked before anything is written: persistence masks,
        each scheduler's module, nft for firewall-mark services; and a service somebody else put
        into kernel IPVS with a key the table wants (lb would take it over, rewrite it and delete
        it at its stop).  The kernel's table has no fixed size."""
        problems = []
        try:
            with Kernel(self.netns) as k:
                kservices = k.services()
            mine = self._present(kservices)
            # (key, family) of somebody else's services (a mark's service of the other family too)
            foreign = {(ks.key, ks.af) for ks in kservices if not (ks.key in self.owned and mine.get(ks.key) is ks)}
        except IpvsError:
            foreign = set()             # apply says what the kernel refuses
        for spec in table.services:
            if (spec.key, _af(spec)) in foreign:
                name = _svc_name(spec.key) + (" IPv6" if spec.fwmark and _is_v6(spec) else "")
                problems.append(f"virtual service {name} exists in kernel IPVS and is not "
                                f"instance {self.instance}'s (ipvsadm's, or another lb's): it is left alone; "
                                f"remove it (ipvsadm -D) or choose another address")
        for spec in table.services:
            try:
                _mask(spec.pmask if spec.persistent else None, _is_v6(spec))
            except IpvsError as e:
                problems.append(f"virtual service {_svc_name(spec.key)}: {e}")
        for sched in sorted({s.scheduler for s in table.services}):
            why = _sched_missing(sched)
            if why:
                problems.append(f"scheduler {sched}: the kernel has no ip_vs_{sched} ({why})")
        if any(s.fwmark for s in table.services) and shutil.which("nft") is None:
            problems.append("firewall-mark services need nftables' nft command (Debian package nftables)")
        if problems:
            raise TableDoesNotFit("\n".join(problems))

    def apply(self, table: TableSpec, nexthops: dict | None = None) -> int:
        """Make the kernel's table forward `table`; returns the netlink changes it took (the
        kernel resolves the next hops: ``nexthops`` is always empty here).  When
        the kernel refuses a change part-way, the previous table of this run (before the first:
        what the previous run left, when this one adopted it) is applied again (the kernel has
        no transactions: services and real servers removed before the failure come back with
        their counters from zero, their connections gone)."""
        prev, prev_marks = self.last_table, self.last_marks
        try:
            return self._apply(table)
        except Exception as e:
            what = str(e) if isinstance(e, DataplaneError) else f"{type(e).__name__}: {e}"
            if prev is None:
                raise ApplyFailed(f"{what}; no previous table of this run to write back", restored=False) from e
            which = "the previous run's table" if prev_marks is not None else "the previous table"
            try:
                self._apply(prev, prev_marks)
            except Exception as e2:
                raise ApplyFailed(f"{what}; writing {which} back failed too ({e2})", restored=False) from e
            log.error("applying the table failed (%s): %s is back", what, which)
            raise ApplyFailed(f"{what}; {which} is back", restored=True) from e

    def _apply(self, table: TableSpec, marks: list | None = None) -> int:
        """apply's writes; ``marks``: the nftables rules to restore instead of those of the
        table's port groups (the adopted table's)"""
        before = self.writes
        self.last_table, self.last_marks = table, marks
        want = {s.key: s for s in table.services}
        with Kernel(self.netns) as k:
            present = self._present(k.services(), want)
            for key in sorted(self.owned - want.keys(), key=str):
                if key in present:
                    k.del_service(_spec_of(present[key]))
                    self.writes += 1
                    log.info("removed virtual service %s", _svc_name(key))
                self.owned.discard(key)
                self.services.pop(key, None)
            self.draining = {d for d in self.draining if d[0] in want}
            for key, spec in want.items():
                if key not in self.owned:
                    self.owned.add(key)
                    self._write_state()
                self._apply_service(k, spec, present.get(key))
                self.services[key] = spec
            self._apply_timeouts(k, table.timeouts)
            self._apply_expire_nodest(table.expire_nodest_conn)
            self._apply_defense(table.defense)
            self._apply_lblc_expiration(table, every=marks is not None)
        self._apply_marks(table.services, marks)
        self._nat_forwarding()           # a reload's first IPv6 service, in NAT
        self._write_state()
        n = self.writes - before
        log.info("applied %d services: %d netlink changes", len(want), n)
        return n

    def _apply_service(self, k: Kernel, spec: ServiceSpec, ks: KService | None) -> None:
        name = _svc_name(spec.key)
        if ks is not None and ks.af != (socket.AF_INET6 if _is_v6(spec) else socket.AF_INET):
            # a firewall-mark service whose port groups moved to the other family: IPVS keys it by
            # (family, mark), so no write of the new family finds the old one; it is replaced
            k.del_service(_spec_of(ks))
            self.writes += 1
            self.draining = {d for d in self.draining if d[0] != spec.key}
            log.info("removed virtual service %s of the other address family", name)
            ks = None
        if ks is None:
            k.add_service(spec)
            self.writes += 1
            log.info("adding virtual service %s %s", name, spec.scheduler)
            for r in spec.reals:           # config order: the kernel puts each at the head
                k.add_dest(spec, r)
                self.writes += 1
                log.info("added real server %s:%d to %s (%s, weight %d)", r.address, r.port, name,
                         FORWARD_NAMES[FWD_METHODS[r.forward]], r.weight)
            return
        v6 = _is_v6(spec)
        cur_mask = _mask(ks.netmask if ks.flags & IP_VS_SVC_F_PERSISTENT else None, v6)
        want_mask = _mask(spec.pmask if spec.persistent else None, v6)
        cur_timeout = ks.timeout if ks.flags & IP_VS_SVC_F_PERSISTENT else 0
        if (ks.sched, cur_timeout, cur_mask) != (spec.scheduler, spec.persistent, want_mask) \
                or ks.flags & ~IP_VS_SVC_F_HASHED != _svc_flags(spec):
            k.set_service(spec)
            self.writes += 1
            log.info("virtual service %s: scheduler %s, persistence %d s mask %s", name, spec.scheduler,
                     spec.persistent, want_mask)
        wanted = {r.key: r for r in spec.reals}
        have = {d.key: d for d in ks.dests}
        # removals drain: weight 0 until the connections pointing at the server have ended
        for rkey, d in have.items():
            if rkey in wanted:
                self.draining.discard((spec.key, rkey))
                continue
            if d.active + d.inactive and rkey not in set(spec.dead):   # dead servers leave at once
                if (spec.key, rkey) not in self.draining:
                    log.info("draining real server %s:%d of %s: weight 0 until its %d connections end",
                             rkey[0], rkey[1], name, d.active + d.inactive)
                    self.draining.add((spec.key, rkey))
                if d.weight != 0:
                    k.set_dest(spec, d.spec(weight=0))
                    self.writes += 1
                continue
            self.draining.discard((spec.key, rkey))
            k.del_dest(spec, d.spec())
            self.writes += 1
            log.info("removed real server %s:%d from %s", rkey[0], rkey[1], name)
        # updates
        for rkey, d in have.items():
            r = wanted.get(rkey)
            if r is None:
                continue
            # a tunnel is ipip (_dest sends tun_type 0): one the kernel has as gue or gre is rewritten
            tun_type = d.tun_type if d.fwd == IP_VS_CONN_F_TUNNEL else 0
            if (d.weight, d.fwd, d.u_thresh, d.l_thresh, tun_type) != (r.weight, FWD_METHODS[r.forward], r.u_threshold,
                                                                       _l_thresh(r), 0):
                k.set_dest(spec, r)
                self.writes += 1
                log.info("real server %s:%d of %s: weight %d -> %d, %s", rkey[0], rkey[1], name, d.weight,
                         r.weight, FORWARD_NAMES[FWD_METHODS[r.forward]])
        # additions, in config order
        for r in spec.reals:
            if r.key in have:
                continue
            k.add_dest(spec, r)
            self.writes += 1
            log.info("added real server %s:%d to %s (%s, weight %d)", r.address, r.port, name,
                     FORWARD_NAMES[FWD_METHODS[r.forward]], r.weight)

    def _apply_marks(self, services, rules: list | None = None) -> None:
        """nftables rules that mark the firewall-mark services' port groups (the services are
        in the kernel first, so a marked packet always finds its service); ``rules``: these
        rules instead (those an earlier run left, written back)."""
        try:
            n = self.marks.apply(services) if rules is None else self.marks.apply_rules(rules)
        except NftError as e:
            raise IpvsError(f"firewall-mark rules (nftables table {self.marks.table}): {e}") from e
        if n:
            self.writes += n
            text = ruleset_text(self.marks.rules)
            log.info("firewall-mark rules (nftables table %s): %s", self.marks.table,
                     ("\n  " + text.replace("\n", "\n  ")) if text else "none, table removed")

    @staticmethod
    def _set_sysctl(name: str, want: str, same=lambda have, want: have == want) -> None:
        """/proc/sys/net/ipv4/vs/<name> = want, written (and logged) only when it differs"""
        path = os.path.join(SYSCTL_DIR, name)
        try:
            with open(path) as f:
                if same(f.read().strip(), want):
                    return
            with open(path, "w") as f:
                f.write(want)
            log.info("IPVS %s = %s", name, want)
        except OSError as e:
            log.warning("cannot set %s: %s", path, e)

    def _apply_expire_nodest(self, on: bool) -> None:
        """IPVS's own sysctl: the kernel drops (0) or expires (1) connections of removed servers."""
        self._set_sysctl("expire_nodest_conn", str(int(on)))

    def _apply_defense(self, defense) -> None:
        """IPVS's defense strategies, its own sysctls (the kernel engages them by its free memory
        against its amemthresh, which stays the kernel's: lb's amemthresh counts entries of the
        XDP data plane's embryonic table).  An automatic mode reads 2 while engaged: 1 and 2 are
        the same setting."""
        def same(have: str, want: str) -> bool:
            return have == want or {have, want} == {"1", "2"}

        for name in ("drop_entry", "drop_packet", "secure_tcp"):
            self._set_sysctl(name, str(getattr(defense, name)), same)
        self._set_sysctl("am_droprate", str(defense.am_droprate))

    def _apply_lblc_expiration(self, table, every: bool = False) -> None:
        """The lblc / lblcr modules' sysctls (seconds; they exist once a service loaded the
        module), written only when a service uses the scheduler; ``every``: also where they
        exist (the adopted table, whose values were read from them, written back)."""
        for sched in ("lblc", "lblcr"):
            if any(s.scheduler == sched for s in table.services) or \
                    every and os.path.exists(os.path.join(SYSCTL_DIR, f"{sched}_expiration")):
                self._set_sysctl(f"{sched}_expiration", str(getattr(table, f"{sched}_expiration")))

    def _apply_timeouts(self, k: Kernel, timeouts) -> None:
        want = tuple(int(t) for t in timeouts)
        if k.timeouts() != want:
            k.set_timeouts(*want)
            self.writes += 1
            log.info("IPVS timeouts (tcp tcpfin udp): %d %d %d", *want)

    def finish_drains(self) -> int:
        """Remove draining real servers whose connections have all ended or expired."""
        if not self.draining:
            return 0
        done = 0
        with Kernel(self.netns) as k:
            present = self._present(k.services())
            for skey, rkey in list(self.draining):
                ks = present.get(skey)
                d = next((d for d in ks.dests if d.key == rkey), None) if ks else None
                if d is not None and d.active + d.inactive:
                    continue
                self.draining.discard((skey, rkey))
                done += 1
                if d is not None:
                    k.del_dest(_spec_of(ks), d.spec())
                    self.writes += 1
                    log.info("drained real server %s:%d removed from %s", rkey[0], rkey[1], _svc_name(skey))
        return done


def _l_thresh(r: RealSpec) -> int:
    """The lower threshold kernel IPVS gets: none without an upper one (ip_vs_add_dest refuses
    l_threshold > u_threshold with ERANGE even when u_threshold is 0, "no limit"; the lower one
    acts only on a server the upper one overloaded, so it means nothing there)."""
    return r.l_threshold if r.u_threshold else 0


def _svc_name(key) -> str:
    if key[0] == "fwmark":
        return f"FWM {key[1]}"
    proto, addr, port = key
    if getattr(addr, "version", 4) == 6:
        return f"{proto.upper()} [{addr}]:{port}"
    return f"{proto.upper()} {addr}:{port}"


# ---- `lb list` in IPVS mode: the kernel's table, as ipvsadm reads it -------------------------

def read_info(proc: str | None = None) -> tuple[str, int]:
    """(version, connection table size) as ipvsadm prints them in its header."""
    proc = proc or _proc_net("ip_vs")
    with open(proc) as f:
        first = f.readline()
    m = re.match(r"IP Virtual Server version (\d+\.\d+\.\d+) \(size=(\d+)\)", first)
    if not m:
        raise IpvsError(f"unexpected {proc} header: {first!r}")
    return m.group(1), int(m.group(2))


def read_services(netns: str | None = None) -> list[ServiceRow]:
    rows = []
    with Kernel(netns) as k:
        kservices = k.services()
    for ks in kservices:
        persist = bool(ks.flags & IP_VS_SVC_F_PERSISTENT)
        row = ServiceRow(protocol=PROTO_NAMES.get(ks.protocol, str(ks.protocol)), address=ks.address,
                         port=ks.port, scheduler=ks.sched, fwmark=ks.fwmark,
                         sched_flags=_sched_flag_names(ks.sched, ks.flags),
                         persistent=ks.timeout if persist else None,
                         netmask=(ks.netmask or (HOST_PLEN6 if ks.af == socket.AF_INET6 else HOST_MASK))
                         if persist else None,
                         ops=bool(ks.flags & IP_VS_SVC_F_ONEPACKET),
                         family=6 if ks.af == socket.AF_INET6 else 4,
                         stats=ks.stats or Stats(), rate=ks.rate or Stats())
        for d in ks.dests:
            row.reals.append(RealRow(address=d.address, port=d.port, forward=FORWARD_NAMES.get(d.fwd, "?"),
                                     weight=d.weight, active=d.active, inactive=d.inactive, persist=d.persist,
                                     u_threshold=d.u_thresh, l_threshold=d.l_thresh, tunnel_info=d.tunnel,
                                     stats=d.stats or Stats(), rate=d.rate or Stats()))
        rows.append(row)
    return rows


def is_service(ks: KService, service: tuple) -> bool:
    """Whether ks is ``service``: ("tcp", address, port), ("fwmark", mark, 4 or 6) as ipvsadm -f
    [-6] names one, or ("fwmark", mark) of either family (the daemon's key: lb's table has one
    service per mark).  KService.key leaves the family out: it is the identity the table's
    writes compare with ServiceSpec.key."""
    return names_service(ks.key, 6 if ks.af == socket.AF_INET6 else 4, service)


def zero(service: tuple | None = None, netns: str | None = None) -> int:
    """`lb zero` / ipvsadm -Z of the kernel's table: one service (is_service) or all; returns the
    services zeroed (LookupError: no such service)."""
    with Kernel(netns) as k:
        if service is None:
            k.zero()
            return len(k.services())
        found = [ks for ks in k.services() if is_service(ks, service)]
        if not found:
            raise LookupError("no such service")
        k.zero(_spec_of(found[0]))
        return 1


def read_timeouts(netns: str | None = None) -> tuple[int, int, int]:
    with Kernel(netns) as k:
        return k.timeouts()


def read_daemons(netns: str | None = None) -> list[SyncDaemon]:
    with Kernel(netns) as k:
        return k.daemons()


def _hex_addr(text: str):
    if len(text) == 8:
        return ipaddress.IPv4Address(int(text, 16))
    return ipaddress.IPv6Address(int(text.replace(":", ""), 16))


def read_connections(proc: str | None = None) -> list[ConnRow]:
    """The kernel's connection entries, in the kernel's order (as ipvsadm -Lnc prints them)."""
    proc = proc or _proc_net("ip_vs_conn")
    out = []
    try:
        with open(proc) as f:
            lines = f.read().splitlines()[1:]
    except FileNotFoundError:
        return out
    for line in lines:
        p = line.split()
        if len(p) < 9:
            continue
        proto, fa, fp, ta, tp, da, dp, state, expire = p[:9]
        out.append(ConnRow(protocol=proto, expire=int(expire), state=state,
                           client=(_hex_addr(fa), int(fp, 16)), virtual=(_hex_addr(ta), int(tp, 16)),
                           dest=(_hex_addr(da), int(dp, 16))))
    return out


__all__ = ["IpvsDataplane", "IpvsError", "Kernel", "SyncDaemon", "available", "ensure_module", "read_connections",
           "read_daemons", "read_info", "read_services", "read_timeouts", "sync_id", "zero"]
