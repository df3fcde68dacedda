"""What the engine asks a data plane to forward: plain values, no BPF or netlink details."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from functools import cached_property
from operator import attrgetter

from lb.config.model import DEFAULT_LBLC_EXPIRATION, DEFAULT_MH_SIZE, DEFAULT_TIMEOUTS, Defense

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class RealSpec:
    """One real server of one service, as the engine wants it forwarded: the one record a data
    plane is given, built once by the engine (lb.engine.build_table), keyed by (address, port).
    The weight is the effective one; weight_source and configured_weight say why (lb.weight)."""
    address: Address
    port: int                    # 0 in a firewall-mark service: a connection keeps its port
    weight: int                  # the effective weight the schedulers use
    forward: str = "dr"          # lb.config.model.FORWARD_MODES: "dr" | "nat" | "tunnel"
    u_threshold: int = 0         # IPVS connection thresholds (0: none)
    l_threshold: int = 0
    weight_source: str = "configured"  # lb.weight.SOURCES: configured, override, load_monitor, ...
    configured_weight: int | None = None   # the config's weight (None: not from the config)

    @property
    def key(self) -> tuple[Address, int]:
        return (self.address, self.port)


@dataclass(frozen=True)
class ServiceSpec:
    protocol: str                # "tcp" | "udp"
    address: Address
    port: int
    scheduler: str
    reals: tuple[RealSpec, ...] = ()   # in configuration order (IPVS keeps the reverse)
    name: str = ""
    persistent: int = 0                # template timeout in seconds; 0 = no persistence
    pmask: str | int | None = None     # the client mask: IPv4 dotted netmask, IPv6 prefix length
                                       # (None: the whole address)
    fwmark: int = 0                    # firewall-mark service: protocol/address/port unused
    groups: tuple[PortGroup, ...] = ()  # ... its ports instead (matched in XDP)
    sched_flags: tuple[str, ...] = ()  # "sh-fallback", "sh-port", "mh-fallback", "mh-port"
    mh_size: int = DEFAULT_MH_SIZE     # mh: Maglev table size (a prime)
    # (address, port) of real servers left out because their health check failed: they leave
    # at once (their connections then follow expire_nodest_conn) instead of draining, which is
    # for servers the configuration removes
    dead: tuple[tuple[Address, int], ...] = ()
    # active-active scale-out ([bgp]): a TCP packet without a connection entry (an ECMP change
    # moved its flow here) is scheduled and tracked, not only a SYN (IPVS's sloppy_tcp)
    sloppy: bool = False

    @classmethod
    def from_config(cls, vs, reals, dead=()) -> "ServiceSpec":
        """See service_spec()."""
        return service_spec(vs, reals, dead)

    @property
    def key(self) -> tuple:
        if self.fwmark:
            return ("fwmark", self.fwmark)
        return (self.protocol, self.address, self.port)

    @cached_property
    def digest(self) -> tuple:
        """A value equal for two specs exactly when the specs are (==), compared in C.  Each
        real server is a tuple of plain values (its address as version, integer and, for IPv6,
        scope), read in C by attrgetter; the service's other fields are kept as they are (few).
        Made once per spec (cached in the instance), and shared by equal specs (same_as)."""
        reals = tuple(map(_real_digest, self.reals))
        if 6 in set(map(_addr_version, self.reals)):
            reals += (tuple(getattr(r.address, "_scope_id", None) for r in self.reals),)
        return (reals, *(getattr(self, name) for name in _SVC_OTHER_FIELDS))

    def same_as(self, other: "ServiceSpec") -> bool:
        """self == other, as cheaply as it can be known: the data plane's apply asks it of every
        service, the last applied spec against the new one.  Specs found equal share one digest
        object, so comparing them again is an identity test; two specs with digests compare
        those (in C).  A spec without one (the engine builds every spec afresh) is compared
        with == (dataclass __eq__: Python code per real server, cheaper than making the digest)
        and, when equal, takes the other's digest."""
        if self is other:
            return True
        cache_a, cache_b = self.__dict__, other.__dict__      # where cached_property keeps digest
        a, b = cache_a.get("digest"), cache_b.get("digest")
        if a is not None and b is not None:
            if a is b:
                return True
            if a != b:
                return False
        elif self != other:
            return False
        cache_a["digest"] = cache_b["digest"] = a if a is not None else b if b is not None else self.digest
        return True


@dataclass(frozen=True)
class PortGroup:
    """Ports of one VIP and protocol that belong to a firewall-mark service."""
    protocol: str                # "tcp" | "udp"
    address: Address
    low: int
    high: int


# ServiceSpec.digest's parts: every field of a RealSpec, its address as plain values (what
# ipaddress's __eq__ compares, read in C by attrgetter); every other field of a ServiceSpec
_real_digest = attrgetter("address._version", "address._ip", "port", "weight", "forward", "u_threshold",
                          "l_threshold", "weight_source", "configured_weight")
_addr_version = attrgetter("address._version")
assert [f.name for f in fields(RealSpec)] == ["address", "port", "weight", "forward", "u_threshold", "l_threshold",
                                              "weight_source", "configured_weight"], "update _real_digest"
_SVC_OTHER_FIELDS = tuple(f.name for f in fields(ServiceSpec) if f.name != "reals")


@dataclass(frozen=True)
class TableSpec:
    services: tuple[ServiceSpec, ...] = ()
    timeouts: tuple[int, int, int] = DEFAULT_TIMEOUTS   # tcp, tcpfin, udp (ipvsadm --set)
    expire_nodest_conn: bool = False
    lblc_expiration: int = DEFAULT_LBLC_EXPIRATION   # seconds (IPVS sysctls lblc_expiration, lblcr_expiration)
    lblcr_expiration: int = DEFAULT_LBLC_EXPIRATION
    defense: Defense = Defense()       # IPVS's defense strategies, the too-big answers' rate limit
    # the director's own addresses (its interfaces'): no new connection from one is scheduled (a
    # forged source, a martian the kernel drops before IPVS sees it; the XDP data plane's filter)
    local_addrs: frozenset = frozenset()
    extra: dict = field(default_factory=dict, compare=False)


def service_spec(vs, reals, dead=()) -> ServiceSpec:
    """The ServiceSpec of a configured virtual server (lb.config.VirtualServer) with the real
    servers the engine built (RealSpecs, complete: thresholds and all) and the (address, port)
    of those left out dead: adds the service's own settings (scheduler flags, persistence,
    firewall-mark groups, mh size)."""
    groups = tuple(PortGroup(g.protocol, g.address, g.low, g.high) for g in vs.port_groups)
    return ServiceSpec(vs.protocol, vs.address, vs.port, vs.scheduler, tuple(reals), vs.name,
                       vs.persistent, vs.pmask, fwmark=vs.fwmark, groups=groups,
                       sched_flags=tuple(vs.scheduler_flags), mh_size=vs.mh_size, dead=tuple(dead))
