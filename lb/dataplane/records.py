"""What a data plane reads back: its services, real servers and connections as plain records
(the same whatever the backend).  `lb list`, `lb status` and the web console format them
(lb/listing.py is the ipvsadm -L formatter); the data plane never formats."""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Union

IPAddress = Union[IPv4Address, IPv6Address]


@dataclass
class Stats:
    """Counters (``--stats``) or rates (``--rate``: conns/s, pkts/s, bytes/s)."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0


@dataclass
class RealRow:
    address: IPAddress
    port: int
    forward: str  # ipvsadm's name: "Masq" | "Local" | "Tunnel" | "Route"
    weight: int
    active: int = 0
    inactive: int = 0
    persist: int = 0  # persistence templates (PersistConn)
    u_threshold: int = 0
    l_threshold: int = 0
    tunnel_info: str = "n/a"
    stats: Stats = field(default_factory=Stats)
    rate: Stats = field(default_factory=Stats)


@dataclass
class ServiceRow:
    protocol: str  # "TCP" | "UDP" | "SCTP" (ignored when fwmark != 0)
    address: IPAddress | None
    port: int
    scheduler: str
    fwmark: int = 0
    sched_flags: tuple[str, ...] = ()
    persistent: int | None = None  # timeout seconds, None = not persistent
    netmask: str | int | None = None  # IPv4 dotted mask, or IPv6 prefix length
    ops: bool = False
    family: int = 4  # 4 or 6 (used for fwmark services)
    reals: list[RealRow] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    rate: Stats = field(default_factory=Stats)


@dataclass
class ConnRow:
    protocol: str  # "TCP" / "UDP"
    expire: int  # seconds left
    state: str  # "ESTABLISHED", "TIME_WAIT", "SYN_RECV", "NONE", ...
    client: tuple[IPAddress, int]
    virtual: tuple[IPAddress, int]
    dest: tuple[IPAddress, int]

def names_service(name: tuple, family: int, service: tuple) -> bool:
    """Whether a service named ``name`` (("tcp", address, port) or ("fwmark", mark)) of address
    family ``family`` (4 or 6) is ``service`` (the same, or ("fwmark", mark, 4 or 6))."""
    if service[0] == "fwmark" and len(service) > 2:
        return name == tuple(service[:2]) and family == service[2]
    return name == tuple(service)
