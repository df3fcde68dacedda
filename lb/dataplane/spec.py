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
    pmask: str | None = None           # IPv4 netmask applied to the client address

    @property
    def key(self) -> tuple[str, Address, int]:
        return (self.protocol, self.address, self.port)


@dataclass(frozen=True)
class TableSpec:
    services: tuple[ServiceSpec, ...] = ()
    timeouts: tuple[int, int, int] = (900, 120, 300)   # tcp, tcpfin, udp (ipvsadm --set)
    extra: dict = field(default_factory=dict, compare=False)
