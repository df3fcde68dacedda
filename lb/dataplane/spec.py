"""What the engine asks a data plane to forward: plain values, no BPF or netlink details."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class RealSpec:
    address: Address
    port: int
    weight: int
    forward: str = "dr"          # "dr" | "nat"
    u_threshold: int = 0         # IPVS connection thresholds (0: none)
    l_threshold: int = 0

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
    mh_size: int = 4093                # mh: Maglev table size (a prime)
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


@dataclass(frozen=True)
class PortGroup:
    """Ports of one VIP and protocol that belong to a firewall-mark service."""
    protocol: str                # "tcp" | "udp"
    address: Address
    low: int
    high: int


@dataclass(frozen=True)
class TableSpec:
    services: tuple[ServiceSpec, ...] = ()
    timeouts: tuple[int, int, int] = (900, 120, 300)   # tcp, tcpfin, udp (ipvsadm --set)
    expire_nodest_conn: bool = False
    lblc_expiration: int = 86400       # seconds (IPVS sysctls lblc_expiration, lblcr_expiration)
    lblcr_expiration: int = 86400
    extra: dict = field(default_factory=dict, compare=False)


def service_spec(vs, reals, dead=()) -> ServiceSpec:
    """The ServiceSpec of a configured virtual server (lb.config.VirtualServer) with the real
    servers the engine chose (RealSpecs): adds what the data plane needs beyond them
    (thresholds, scheduler flags, firewall-mark groups).  A firewall-mark service's real servers
    have port 0: each connection keeps the port it came to (IPVS does the same)."""
    by_addr = {rs.address: rs for rs in vs.real_servers}
    fwmark = getattr(vs, "fwmark", 0)
    out = []
    for r in reals:
        rs = by_addr.get(r.address)
        out.append(RealSpec(r.address, 0 if fwmark else r.port, r.weight, r.forward,
                            getattr(rs, "u_threshold", 0), getattr(rs, "l_threshold", 0)))
    groups = tuple(PortGroup(g.protocol, g.address, g.low, g.high) for g in getattr(vs, "port_groups", ()))
    return ServiceSpec(vs.protocol, vs.address, vs.port, vs.scheduler, tuple(out), vs.name,
                       vs.persistent, vs.pmask, fwmark=fwmark, groups=groups,
                       sched_flags=tuple(getattr(vs, "scheduler_flags", ())),
                       mh_size=getattr(vs, "mh_size", 4093),
                       dead=tuple((a, 0 if fwmark else p) for a, p in dead))
