"""Typed, immutable configuration model of the director.

The loader (:mod:`lb.config.toml`) is the only place that validates; the
classes here are plain frozen records that the rest of the program can trust
once :func:`lb.config.load` has returned them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network, ip_address
from pathlib import Path

# The configuration's vocabulary, declared once: the loaders (TOML and lvs.cf), the scheduler
# model and the data planes import these names.

# Every scheduler of IPVS (ipvsadm's names); both data planes run all of them.
SCHEDULERS: tuple[str, ...] = ("rr", "wrr", "lc", "wlc", "sed", "nq", "dh", "sh", "mh", "fo", "ovf",
                               "lblc", "lblcr", "twos")
DEFAULT_SCHEDULER = "wlc"  # ipvsadm's default
# ipvsadm's scheduler flags (--sched-flags) and the scheduler each belongs to
SCHEDULER_FLAGS: dict[str, str] = {
    "sh-fallback": "sh", "sh-port": "sh", "mh-fallback": "mh", "mh-port": "mh",
}

PROTOCOLS: tuple[str, ...] = ("tcp", "udp")
DEFAULT_PROTOCOL = "tcp"
NETWORKS: tuple[str, ...] = ("direct", "nat", "tunnel")
DEFAULT_NETWORK = "direct"
# Data planes: "xdp" (default), kernel "ipvs", or "auto" (xdp, falling back to ipvs).
DATAPLANES: tuple[str, ...] = ("xdp", "ipvs", "auto")
DEFAULT_DATAPLANE = "xdp"

IPAddress = IPv4Address | IPv6Address

# Forward modes: the config's network -> the real server's forwarding method (IPVS's
# IP_VS_CONN_F_DROUTE / MASQ / TUNNEL; ipvsadm prints them Route / Masq / Tunnel).
FORWARD_MODES: tuple[str, ...] = ("dr", "nat", "tunnel")
FORWARD_OF_NETWORK: dict[str, str] = {"direct": "dr", "nat": "nat", "tunnel": "tunnel"}
IPVSADM_FORWARD: dict[str, str] = {"dr": "Route", "nat": "Masq", "tunnel": "Tunnel"}

# Defaults named once (the loaders, the data planes and the listing import them).
DEFAULT_MH_SIZE = 4093              # the kernel's CONFIG_IP_VS_MH_TAB_INDEX 12
DEFAULT_LBLC_EXPIRATION = 86400     # IPVS sysctls lblc_expiration / lblcr_expiration, seconds
DEFAULT_TIMEOUTS = (900, 120, 300)  # tcp, tcpfin, udp seconds (ipvsadm --set)
# Check, load-monitor and notify programs run as this user unless the config names another
# (script_user, keepalived's name): the daemon is root, its programs need not be.
DEFAULT_SCRIPT_USER = "nobody"
DEFAULT_HEARTBEAT_PORT = 539        # pulse's


@dataclass(frozen=True, slots=True)
class RealServer:
    """One backend of a virtual server."""

    name: str
    address: IPAddress
    # None means "same port as the virtual server" (the only choice for
    # direct routing, which cannot rewrite the destination port).
    port: int | None = None
    weight: int = 1  # 0..65535; 0 = quiesced (no new connections)
    active: bool = True
    # IPVS connection thresholds: no new connections while active + inactive >= u_threshold,
    # until the total drops below l_threshold (0: below 3/4 of u_threshold); 0 = none
    u_threshold: int = 0
    l_threshold: int = 0

    def effective_port(self, vs: VirtualServer) -> int:
        """The destination port packets are sent to on this real server."""
        return vs.port if self.port is None else self.port


MONITOR_KINDS: tuple[str, ...] = ("tcp", "send_expect", "udp", "http", "https", "program", "none")
REPLY_ENCODINGS: tuple[str, ...] = ("utf-8", "latin-1")


@dataclass(frozen=True, slots=True)
class Monitor:
    """How a virtual server's real servers are checked (Piranha's nanny), and what a failure does.

    The default is nanny's: a TCP connect every 2 s (a UDP service: an empty datagram, failed by
    an ICMP error only); dead after 10 s without success; back after 180 s of success; removed
    from scheduling when dead (quiesce = weight 0 instead)."""

    kind: str = "tcp"  # one of MONITOR_KINDS; "none" = always up
    send: str = ""  # send_expect/udp: sent after connecting (escapes \n \r \t \\ \' \" decoded)
    expect: str = ""  # substring (or regex with use_regex) the reply must contain
    use_regex: bool = False
    reply_encoding: str = "utf-8"  # udp: the reply as text; "latin-1": one character a byte (byte masks)
    path: str = "/"  # http(s)
    host: str | None = None  # http(s) Host header
    status: tuple[int, int] = (200, 399)  # http(s) accepted status range
    body_regex: str | None = None
    digest: str = ""  # http(s): MD5 of the body (16 MiB at most), hex (keepalived's HTTP_GET digest); "" = none
    tls_verify: bool = True
    program: str = ""  # program: argv with %h (address) and %p (port); never run by a shell
    misc_dynamic: bool = False  # program: exit 2-255 is up too (keepalived's misc_dynamic; weight not set)
    port: int | None = None  # check this port instead of the real server's
    interval: float = 2.0
    timeout: float = 10.0  # dead after this long without a successful check
    reentry: float = 180.0  # alive this long before it takes connections again
    connect_timeout: float = 3.0
    quiesce: bool = False  # dead: weight 0 (connections drain) instead of removal
    script_user: str = DEFAULT_SCRIPT_USER  # program: runs as this user (the loader's default: global)


LOAD_MONITOR_KINDS: tuple[str, ...] = ("agent", "program")


@dataclass(frozen=True, slots=True)
class LoadMonitor:
    """Dynamic weight (the seeds' rup/ruptime load monitoring): every ``interval`` seconds each
    real server's load is asked for, by a TCP agent on the real server (``port``; it answers
    one line, as HAProxy's agent-check) or an external ``program`` (argv with %h and %p, never
    run by a shell, killed after ``timeout``).  The reply sets the weight within
    [min_weight, the configured weight]: "75%" (of the configured weight), "weight 3", or a load
    average ("load 0.7", or uptime's "load average: 0.70, ...": weight / (1 + load))."""

    kind: str = "agent"  # one of LOAD_MONITOR_KINDS
    port: int | None = None  # agent: TCP port on the real server
    program: str = ""  # program: argv template
    interval: float = 5.0
    timeout: float = 2.0  # the agent's connection or the program's run, at most
    min_weight: int = 1  # lowest weight the monitor may set (0: it may stop new connections)
    script_user: str = DEFAULT_SCRIPT_USER  # program: runs as this user (the loader's default: global)


@dataclass(frozen=True, slots=True)
class PortGroup:
    """Ports of one VIP and protocol that belong to a firewall-mark service (low..high)."""

    address: IPAddress
    protocol: str = DEFAULT_PROTOCOL
    low: int = 0
    high: int = 0


@dataclass(frozen=True, slots=True)
class VirtualServer:
    """A service: (protocol, VIP, port) plus its scheduler and real servers.

    One address family per service: the VIP (or every port group), the real servers and the
    sorry server are all IPv4 or all IPv6 (the loader checks it), as in IPVS.

    A firewall-mark service (fwmark != 0) is matched by its port groups instead; its address,
    port and protocol are those of the first group (the VIP its director holds, the port its
    health checks use), and its real servers take each connection's own port."""

    name: str
    address: IPAddress
    port: int
    protocol: str = DEFAULT_PROTOCOL  # one of PROTOCOLS
    scheduler: str = DEFAULT_SCHEDULER  # one of SCHEDULERS
    persistent: int = 0  # persistence timeout in seconds; 0 = off
    # persistence granularity, by the family of the service's address(es): a normalised dotted
    # netmask for IPv4 (e.g. "255.255.255.0"), a prefix length 1..128 for IPv6 (e.g. 64);
    # None: not given (one client address: /32 or /128)
    pmask: str | int | None = None
    active: bool = True
    device: str | None = None  # interface holding the VIP; None -> Config.public_interface
    real_servers: tuple[RealServer, ...] = ()
    monitor: Monitor = field(default_factory=Monitor)
    fwmark: int = 0  # firewall-mark service: matched by port_groups (in XDP, no iptables)
    port_groups: tuple[PortGroup, ...] = ()
    scheduler_flags: tuple[str, ...] = ()  # e.g. ("sh-fallback", "sh-port")
    mh_size: int = DEFAULT_MH_SIZE  # mh: Maglev table size, a prime (the kernel's default, CONFIG_IP_VS_MH_TAB_INDEX 12)
    # (address, port or None = the service's port): takes the new connections while no real
    # server of the service is usable (Piranha's sorry_server)
    sorry_server: tuple[IPAddress, int | None] | None = None
    # Piranha's quiesce_server: when a real server joins (added, or back after reentry), the
    # schedulers' connection counts of every server of the service restart from zero, so lc/wlc
    # do not flood the newcomer
    quiesce_server: bool = False
    load_monitor: LoadMonitor | None = None  # dynamic weight; None = the configured weights

    @property
    def key(self) -> tuple:
        """The identity of the service, as IPVS sees it (("fwm", mark, 0) for fwmark services)."""
        if self.fwmark:
            return ("fwm", self.fwmark, 0)
        return (self.protocol, self.address, self.port)

    @property
    def vips(self) -> tuple[IPAddress, ...]:
        """Every VIP the service needs (a firewall-mark service's groups may use several)."""
        if self.fwmark:
            return tuple(dict.fromkeys(g.address for g in self.port_groups))
        return (self.address,)


def endpoint_text(addr, port: int) -> str:
    """ADDR:PORT, IPv6 in brackets (as ipvsadm writes it); addr an address or its text."""
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


# --- the one parser of each text form the configuration, the CLI and the console share -----------

PORT_RANGE: tuple[int, int] = (1, 65535)


def parse_port(text: str) -> int | None:
    """A port 1..65535 written in ASCII digits; None when it is not one."""
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        return None
    port = int(text)
    return port if PORT_RANGE[0] <= port <= PORT_RANGE[1] else None


# Well-known service names, for hosts without /etc/services (a minimal container): the names
# Piranha's documentation and its configuration tool wrote (port = http), with their IANA ports.
SERVICE_PORTS: dict[str, int] = {
    "ftp-data": 20, "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "tftp": 69,
    "http": 80, "www": 80, "www-http": 80, "kerberos": 88, "pop3": 110, "nntp": 119, "ntp": 123,
    "imap": 143, "imap2": 143, "snmp": 161, "ldap": 389, "https": 443, "syslog": 514,
    "submission": 587, "ldaps": 636, "rsync": 873, "imaps": 993, "pop3s": 995, "mysql": 3306,
    "sip": 5060, "postgresql": 5432, "http-alt": 8080, "webcache": 8080,
}


def service_port(name: str, protocol: str = DEFAULT_PROTOCOL) -> int | None:
    """The port of a service name as /etc/services gives it (getservbyname), else SERVICE_PORTS;
    None when neither knows it."""
    import socket

    if not name or not name.isascii() or not name.isprintable() or len(name) > 64:
        return None
    try:
        return socket.getservbyname(name, protocol)
    except OSError:
        return SERVICE_PORTS.get(name.lower())


def split_endpoint(text: str) -> tuple[str, str | None, bool] | None:
    """ADDR, ADDR:PORT or [ADDR]:PORT -> (address text, port text or None, written in brackets);
    None when brackets are not "[ADDR]:PORT".  Text that is an IP address as a whole is all
    address (an IPv6 address without brackets has no port)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        return host, rest[1:], True
    if "]" in text:
        return None
    try:
        ip_address(text)
        return text, None, False
    except ValueError:
        pass
    host, sep, port = text.rpartition(":")
    return (host, port, False) if sep else (text, None, False)


def parse_endpoint(text: str) -> tuple[IPAddress, int | None] | None:
    """ADDR, ADDR:PORT or [IPv6]:PORT -> (address, port or None); None when it is neither."""
    parts = split_endpoint(text)
    if parts is None:
        return None
    host, port_text, _ = parts
    try:
        addr = ip_address(host)
    except ValueError:
        return None
    if port_text is None:
        return addr, None
    port = parse_port(port_text)
    return None if port is None else (addr, port)


def parse_netmask(text: str) -> str | None:
    """An IPv4 netmask, dotted ("255.255.255.0") or as a prefix length ("/24"), in dotted form;
    None when it is not a contiguous one."""
    if text.startswith("/"):
        bits = parse_prefix_length(text, 32, zero=True)
        return None if bits is None else str(IPv4Address((0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF))
    try:
        mask = int(IPv4Address(text))
    except ValueError:
        return None
    host = ~mask & 0xFFFFFFFF
    # contiguous: the host part is 2^k - 1 (all ones after the network's ones)
    return None if host & (host + 1) else str(IPv4Address(mask))


def parse_prefix_length(value: object, bits: int = 128, *, zero: bool = False) -> int | None:
    """A prefix length 1..bits (0..bits with ``zero``): 64, "64" or "/64"; None when it is not one."""
    if isinstance(value, str):
        text = value[1:] if value.startswith("/") else value
        if not (text.isascii() and text.isdigit()) or len(text) > 3:
            return None
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if (0 if zero else 1) <= value <= bits else None


def sorry_text(sorry: tuple[IPAddress, int | None]) -> str:
    """A sorry server as written in the configuration: ADDR, ADDR:PORT or [ADDR6]:PORT."""
    addr, port = sorry
    return str(addr) if port is None else endpoint_text(addr, port)


def ipv6_connections_size(connections: int, connections_ipv6: int = 0) -> int:
    """The IPv6 established table's size: ``[tables] connections_ipv6``, else a quarter of the
    IPv4 one's and at least 1024.  IPv4 and IPv6 connections have tables of their own (an IPv4
    key is 16 bytes, an IPv6 one 40), each preallocated: a quarter keeps a 1M-entry IPv4 table's
    pair within 200 MB; a director whose clients come mostly over IPv6 sets it."""
    return connections_ipv6 or max(1024, connections // 4)


def embryonic_size(connections: int, embryonic: int = 0) -> int:
    """The embryonic tables' size: ``[tables] embryonic``, else a quarter of the connection table
    and at least 1024 (a round trip's worth of new connections is far less; a flood beyond the
    table only churns the embryos)."""
    return embryonic or max(1024, connections // 4)


# Bytes of kernel memory an entry of the XDP data plane's preallocated tables takes (an LRU hash
# element: the kernel's 48-byte header, the key and the value rounded to 8, and its bucket's 16;
# docs/architecture.md, lb_conns): the IPv4 connections (16-byte key), the IPv6 and embryonic
# ones (40), the embryonic persistence templates (40 + 16); and, roughly, a service's arrays (its
# scheduler buckets, rates, list of reals at 12 bytes each) and a real server's, besides the
# statistics each keeps per CPU (40 bytes).
CONN4_ENTRY_BYTES = 144
CONN6_ENTRY_BYTES = 168
PERSIST_EMBRYO_ENTRY_BYTES = 120
SERVICE_BYTES = 1250
REAL_BYTES = 200
STATS_BYTES = 40


def tables_memory(connections: int, connections_ipv6: int, embryonic: int, services: int,
                  real_servers: int, reals_per_service: int, cpus: int = 1) -> int:
    """About how many bytes the XDP data plane's tables of these sizes ([tables]) take at start
    on a machine of ``cpus`` CPUs: the tables it preallocates (the connection tables, their
    embryos, the arrays); persistence and lblc entries come as used, on top."""
    emb = embryonic_size(connections, embryonic)
    return (connections * CONN4_ENTRY_BYTES + ipv6_connections_size(connections, connections_ipv6) * CONN6_ENTRY_BYTES
            + emb * (CONN6_ENTRY_BYTES + PERSIST_EMBRYO_ENTRY_BYTES)
            + services * (SERVICE_BYTES + 12 * reals_per_service + STATS_BYTES * cpus)
            + real_servers * (REAL_BYTES + STATS_BYTES * cpus))


@dataclass(frozen=True, slots=True)
class Tables:
    """Sizes of the BPF maps."""

    connections: int = 65536  # established IPv4 connections (and NAT reverse entries)
    services: int = 256
    real_servers: int = 4096  # total over all services
    reals_per_service: int = 64
    # established IPv6 connections, in a table of their own; 0: a quarter of ``connections``
    # (at least 1024)
    connections_ipv6: int = 0
    # embryonic connections (a SYN not yet answered by its ACK, a UDP flow's first packet) and
    # their persistence templates, in tables of their own so that floods evict only their like;
    # 0: a quarter of ``connections`` (at least 1024)
    embryonic: int = 0

    def embryonic_size(self) -> int:
        return embryonic_size(self.connections, self.embryonic)

    def ipv6_connections_size(self) -> int:
        return ipv6_connections_size(self.connections, self.connections_ipv6)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Connection idle timeouts, in seconds."""

    tcp: int = DEFAULT_TIMEOUTS[0]
    tcpfin: int = DEFAULT_TIMEOUTS[1]
    udp: int = DEFAULT_TIMEOUTS[2]


# IPVS's defense strategy modes (/proc/sys/net/ipv4/vs/drop_entry, drop_packet, secure_tcp)
DEFENSE_MODES = {0: "never", 1: "automatic", 2: "automatic", 3: "always"}


@dataclass(frozen=True, slots=True)
class Defense:
    """IPVS's defenses against floods (ipvs-sysctl: drop_entry, drop_packet, secure_tcp with
    amemthresh and am_droprate), here driven by the embryonic connection table's free entries
    instead of the kernel's free memory; and the rate limit of the tunnel's too-big answers (the
    kernel's icmp_msgs_per_sec / icmp_msgs_burst).  A mode is 0 (never), 1 or 2 (while fewer than
    ``amemthresh`` entries of the embryonic table are free) or 3 (always)."""

    drop_entry: int = 0
    drop_packet: int = 0
    secure_tcp: int = 0
    amemthresh: int = 0  # free embryonic entries below which modes 1 and 2 engage (0: an eighth)
    am_droprate: int = 10  # drop_packet in mode 3: 1 in this many new connections' packets
    icmp_msgs_per_sec: int = 1000  # too-big answers per second (0: none)
    icmp_msgs_burst: int = 50

    def threshold(self, embryonic: int) -> int:
        """amemthresh in entries of an embryonic table of that size"""
        return self.amemthresh or embryonic // 8


@dataclass(frozen=True, slots=True)
class HA:
    """Two directors, one active (pulse).  Present only when the config has an [ha] table.

    Which node this is comes from the addresses: the one holding ``primary`` (or
    ``primary_private``) is the primary, the one holding ``backup``/``backup_private`` the backup."""

    primary: IPAddress  # public heartbeat address of the primary director
    backup: IPAddress  # public heartbeat address of the backup director
    key_file: Path  # the shared HMAC-SHA256 key (never inline)
    primary_private: IPAddress | None = None  # the optional second channel
    backup_private: IPAddress | None = None
    heartbeat_port: int = DEFAULT_HEARTBEAT_PORT
    sync_port: int | None = None  # connection sync (UDP, its own socket); None: heartbeat_port + 1
    keepalive: float = 2.0  # seconds between heartbeats
    deadtime: float = 6.0  # the peer is dead after this long without an authentic heartbeat
    preempt: bool = False  # a returning primary takes the VIPs back
    preempt_delay: float = 0.0  # ... once it has been backup this long (keepalived's preempt_delay)
    monitor_links: bool = False  # losing the public link makes the active step down
    garp_count: int = 3  # gratuitous ARPs (unsolicited NAs) per address at takeover
    garp_interval: float = 0.1  # seconds between those
    garp_refresh: float = 10.0  # re-announce every N s while active; 0 = never
    sync: bool = True  # stream connection entries to the backup
    sync_interval: float = 0.2  # seconds between sync scans
    sync_rate: int = 20000  # entries per second at most (bounded bandwidth)
    max_skew: float = 30.0  # accepted clock difference for a peer's heartbeats until they echo us (> 0)
    notify: tuple[str, ...] = ()  # programs run (no shell) on role changes: PROG ROLE OLD INSTANCE
    script_user: str = DEFAULT_SCRIPT_USER  # notify programs run as this user (the loader's default: global)

    def __post_init__(self) -> None:
        if self.sync_port is None:
            object.__setattr__(self, "sync_port", self.heartbeat_port + 1)


# The shared heartbeat key when a configuration read from Piranha's lvs.cf or keepalived.conf names
# none (neither format has one: lb's heartbeats are signed, pulse's and VRRP's were not, or weakly)
DEFAULT_HA_KEY_FILE = Path("/etc/lb/ha.key")


def key_file_warning(key: str) -> str:
    """The warning of a configuration that names no heartbeat key (``key`` would name it)."""
    return (f"{key} not given: the heartbeat key is {DEFAULT_HA_KEY_FILE} (lb's heartbeats are signed "
            f"with a key both directors share: e.g. `head -c 32 /dev/urandom > {DEFAULT_HA_KEY_FILE}; "
            f"chmod 600 {DEFAULT_HA_KEY_FILE}` on one, copied to the other)")


# [bgp] (scale-out): how this director uses its BGP speaker.
#   "active-active": N directors behind a router's ECMP all forward; flows keep their real server
#                    when directors come and go (hash schedulers only, sloppy TCP, DR or tunnel)
#   "announce":      only announce the VIPs this director can serve (one director, or the
#                    active one of an [ha] pair); scheduling is unchanged
BGP_MODES: tuple[str, ...] = ("active-active", "announce")
DEFAULT_BGP_MODE = "active-active"
# schedulers whose pick is a pure function of the packet and the real server set, so that every
# director of an active-active group picks the same real server for a flow
HASH_SCHEDULERS: tuple[str, ...] = ("mh", "sh", "dh")
# BGP well-known communities (RFC 1997) accepted by name
BGP_WELL_KNOWN_COMMUNITIES: tuple[str, ...] = ("no-export", "no-advertise", "no-export-subconfed")


@dataclass(frozen=True, slots=True)
class BgpNeighbor:
    """A BGP peer (the router) of this director's speaker."""

    address: IPAddress
    peer_as: int
    # our end of the session; None: the source address the kernel picks toward ``address``
    local_address: IPAddress | None = None


@dataclass(frozen=True, slots=True)
class BgpVip:
    """Path attributes of one VIP's route (a /32 or /128)."""

    address: IPAddress
    med: int | None = None  # MULTI_EXIT_DISC; None: not sent
    communities: tuple[str, ...] = ()  # "ASN:VALUE" (16-bit each) or a well-known name


@dataclass(frozen=True, slots=True)
class Bgp:
    """Route announcement through ExaBGP (lb.bgp); present only when the config has [bgp].

    A VIP is announced while this director can serve it: the data plane attached and every
    active virtual server on that address with a usable real server (or its sorry server)."""

    local_as: int
    neighbors: tuple[BgpNeighbor, ...]
    mode: str = DEFAULT_BGP_MODE  # one of BGP_MODES
    router_id: IPv4Address | None = None  # None: our IPv4 address toward the first IPv4 neighbor
    hold_time: int = 9  # seconds, 3..65535 (keepalives every hold_time / 3)
    lease: float = 3.0  # the speaker withdraws lb's routes when lb has not renewed them this long
    drain: float = 2.0  # a clean stop withdraws the routes this long before the data plane stops
    # a VIP is announced once servable with the same usable real servers this long: a director
    # whose health checks are still coming back (after a link failure, say) does not take flows
    # the others send to a real server it has not yet readmitted
    settle: float = 2.0
    vips: tuple[BgpVip, ...] = ()

    @property
    def active_active(self) -> bool:
        return self.mode == "active-active"

    def vip(self, address) -> BgpVip:
        """The attributes of ``address``'s route (none configured: no MED, no community)."""
        for v in self.vips:
            if v.address == address:
                return v
        return BgpVip(address)


WEB_PASSWORD_DIR = Path("/etc/lb")


@dataclass(frozen=True, slots=True)
class Web:
    """The web console (`lb web`, lb.web): off unless enabled; listens on localhost:3636 (Piranha's
    port) by default, with TLS when given a certificate and its key.

    ``password_file`` holds the console's user name and password as an scrypt hash (written by
    `lb passwd`); None means the instance's default, /etc/lb/<instance>.passwd.  A request is
    answered only for a Host of ``allowed_hosts`` (besides the listen address and localhost: no
    DNS rebinding); X-Forwarded-For/-Proto/-Host are believed only from ``trusted_proxies``.
    A session ends ``session_lifetime`` seconds after its login, however busy.  ``hsts``: answers
    over HTTPS carry Strict-Transport-Security, which browsers apply to the whole host name (every
    port: a plain-HTTP metrics endpoint or console on the same name too), hence off by default."""

    enabled: bool = False
    address: IPAddress = IPv4Address("127.0.0.1")
    port: int = 3636
    password_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    session_lifetime: float = 8 * 3600.0
    hsts: bool = False

    @property
    def listen(self) -> str:
        """ADDRESS:PORT as written in the configuration ([ADDRESS]:PORT for IPv6)."""
        return f"[{self.address}]:{self.port}" if self.address.version == 6 else f"{self.address}:{self.port}"

    def password_path(self, instance: str) -> Path:
        return self.password_file if self.password_file is not None else default_password_file(instance)


def default_password_file(instance: str) -> Path:
    return WEB_PASSWORD_DIR / f"{instance}.passwd"


DEFAULT_METRICS_PORT = 9640


@dataclass(frozen=True, slots=True)
class Metrics:
    """The Prometheus endpoint the daemon serves (lb.metrics): off unless enabled; localhost
    by default (it has no authentication: widen it only behind a firewall or a proxy)."""

    enabled: bool = False
    address: IPAddress = IPv4Address("127.0.0.1")
    port: int = DEFAULT_METRICS_PORT

    @property
    def listen(self) -> str:
        """ADDRESS:PORT as written in the configuration ([ADDRESS]:PORT for IPv6)."""
        return endpoint_text(self.address, self.port)


@dataclass(frozen=True, slots=True)
class Control:
    """Who may use the control socket (/run/lb/<instance>.sock) besides root: members of
    ``admin_group`` everything (reload, weights, configuration edits: the web console's user),
    members of ``read_group`` status and the configuration only.  Neither: root alone (0600)."""

    admin_group: str | None = None
    read_group: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole director configuration."""

    path: Path | None = None  # file it was loaded from; None for loads()
    instance: str = "default"
    # the configuration's version number (lvs.cf's serial_no): each save of the web console adds
    # one; the active director pushes its configuration to the backup, which takes a newer one
    serial_no: int = 0
    public_interface: str
    private_interface: str | None = None
    network: str = DEFAULT_NETWORK  # one of NETWORKS
    dataplane: str = DEFAULT_DATAPLANE  # one of DATAPLANES
    # IPVS expire_nodest_conn: a packet of a connection whose real server has left the service
    # is dropped (False, the default) or its connection expires at once so that the client's
    # next attempt is scheduled afresh (True)
    expire_nodest_conn: bool = False
    # IPVS lblc_expiration / lblcr_expiration (seconds): an lblc entry (destination address ->
    # real server) unused this long goes at the periodic full check; an lblcr server set with
    # more than one member unchanged this long loses its most loaded member
    lblc_expiration: int = DEFAULT_LBLC_EXPIRATION
    lblcr_expiration: int = DEFAULT_LBLC_EXPIRATION
    # the user check, load-monitor and notify programs run as, unless their table names another
    script_user: str = DEFAULT_SCRIPT_USER
    # the real servers' floating gateway, e.g. 198.18.1.254/24 or 2001:2:0:1::fffe/64: owned by the
    # (active) director in NAT, and in direct routing with [ha] (replies routed through the
    # director); else ignored
    nat_router: IPv4Interface | IPv6Interface | None = None
    nat_router_device: str | None = None  # None -> private_interface
    tables: Tables = field(default_factory=Tables)
    timeouts: Timeouts = field(default_factory=Timeouts)
    defense: Defense = field(default_factory=Defense)
    virtual_servers: tuple[VirtualServer, ...] = ()
    ha: HA | None = None  # None: a single director, always active
    web: Web = field(default_factory=Web)  # the web console ([web])
    metrics: Metrics = field(default_factory=Metrics)  # the Prometheus endpoint ([metrics])
    control: Control = field(default_factory=Control)  # the control socket's access ([control])
    bgp: Bgp | None = None  # None: no route announcement ([bgp], lb.bgp)
    # what the loader accepted but could not carry out as written (a key with no effect, a
    # mapping that differs from the source format's): `lb check` prints them, `lb run` logs them
    # at start and at each reload; not part of the configuration's value (compare=False)
    warnings: tuple[ConfigIssue, ...] = field(default=(), compare=False)

    def vip_device(self, vs: VirtualServer) -> str:
        """The interface that carries the VIP of ``vs``."""
        return vs.device or self.public_interface

    @property
    def nat_device(self) -> str | None:
        """The interface that carries nat_router (nat_router_device or private_interface)."""
        return self.nat_router_device or self.private_interface


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in a configuration file."""

    path: str  # file name as given (or "<string>")
    line: int | None  # 1-based; None when unknown
    field: str  # e.g. "virtual_server[1].real_server[0].weight"; "" for file-level problems
    message: str

    def __str__(self) -> str:
        if self.field:
            return f"{self.where}: {self.field}: {self.message}"
        return f"{self.where}: {self.message}"

    @property
    def where(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"

    def as_warning(self) -> str:
        """file:line: warning: field: message (a compiler's layout)."""
        return f"{self.where}: warning: " + (f"{self.field}: {self.message}" if self.field else self.message)


class ConfigError(Exception):
    """A configuration could not be loaded; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)
