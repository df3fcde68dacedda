"""pulse: which of two directors is active.

RoleMachine is the pure decision logic (a fake clock drives it in the tests); Pulse runs it in the
daemon's event loop: UDP heartbeats on the public and optional private channel, stand-down
messages, link monitoring, connection sync and notify hooks.  The engine owns the addresses and
the data plane; Pulse tells it the role through ``on_role`` and never touches them itself.

Rules (this node = "me", the other director = "peer"; the primary is the preferred node):
  - start in STARTING and listen; a peer heard ACTIVE makes me BACKUP; a peer heard STARTING or
    BACKUP makes the primary ACTIVE at once (the backup waits); nobody heard for deadtime: ACTIVE.
  - BACKUP: no authentic heartbeat for deadtime (on any channel), or a peer in FAULT or LEAVING:
    take over (ACTIVE) and send a stand-down on every channel.
  - a returning primary does not fight: it sees the peer ACTIVE and stays BACKUP, unless
    ``preempt``, then it takes over and sends a stand-down -- once it has been BACKUP for
    ``preempt_delay`` seconds (keepalived's): meanwhile the active peer's connection table is
    synced to it and its own health checks have run, and a primary crash-looping never gets
    there.  The peer going silent, stopping or in FAULT is a takeover as ever, without waiting.
  - two ACTIVEs (a healed partition): the primary stays, the backup steps down on the first
    heartbeat it hears, i.e. within one keepalive; the primary announces again.
  - a stand-down from the peer makes an ACTIVE step down (not a preempting primary: the peer
    steps down instead when it hears it).
  - two ACTIVEs for longer than a deadtime (the peer does not hear us: heartbeats lost one way,
    with preempt or the stand-downs lost): an error in the log every LOG_INTERVAL and a warning
    in status() while it lasts; it ends when the link heals (the backup hears the primary).
  - monitor_links: public link down -> FAULT (step down, never take over) until it is back; then
    BACKUP, and a peer not heard during the fault (its heartbeats came on that link) is taken for
    dead only after a deadtime of listening, as at the start (it may have taken over meanwhile).

Receive path (what an outsider can send cannot decide the role):
  - each channel has a heartbeat port and a sync port; on each, one socket connected to the peer's
    address and port takes only the peer's datagrams (so a flood from elsewhere cannot fill its
    buffer and crowd real heartbeats out, and sync bursts never share a queue with heartbeats),
    and a catch-all socket on the same port takes the rest, read at most STRAY_BUDGET datagrams
    per STRAY_POLL and counted as ``offpath`` (the kernel's drops too), without any crypto;
  - the peer's datagrams pass the header checks of lb.ha.heartbeat.decode (size, magic, version,
    length, sender id, channel, type for the port) before the MAC is computed, then the replay
    guard; every refusal is counted per reason and channel, logged at most once per LOG_INTERVAL
    per channel and reason, and shown in ``status()["warnings"]`` (`lb status`) while the peer is heard but
    refused;
  - a heartbeat carries an echo of the peer's boot id, so a peer whose clock is off by more than
    max_skew is still heard (a fresh boot proves itself by the echo) and reported as skewed,
    instead of being taken for dead (which made both directors active); so is a peer restarted
    with its clock set back (right after being ahead), whose old boot's captures stay refused;
    a boot that has not echoed ours is held to max_skew on every message, not only its first (a
    capture of the dead active replayed to a backup just restarted stops holding it back there);
  - a heartbeat that comes more than a deadtime later than the peer's soonest one, by the two
    monotonic clocks (header mono field), is no news of the peer: refused as ``delayed``
    (_delayed: held back and let through late, a backlog kept a dead active "alive");
  - an ICMP error quoting a connected socket's addresses (port, host or network unreachable,
    admin prohibited, ...; spoofed from anywhere) fails the next send: it is sent again at once
    and counted (``icmp_errors`` per channel), not lost; one a read takes first is counted there;
  - a channel flooded with refused datagrams only loses that channel's heartbeats: the peer stays
    alive through the other channel, and the role does not change.
Every background task runs under lb.tasks.supervise (logged and restarted, never lost), and
notify programs run through lb.programs (ha.script_user, minimal environment, bounded).
"""
from __future__ import annotations

import asyncio
import collections
import errno
import fcntl
import ipaddress
import json
import logging
import socket
import struct
import time

from lb import files, programs
from lb.tasks import RateLimitedLog, TaskStats, cancel_and_wait, spawn, supervise

from . import heartbeat as hb
from . import sync as hsync

log = logging.getLogger("lb.ha")

_IP_FREEBIND = 15
_SO_RCVBUFFORCE = 33
_SO_MEMINFO = 55                 # u32[9]: ..., [8] SK_MEMINFO_DROPS (Linux 4.12)
_MEMINFO = struct.Struct("=9I")
_CLOCK_MONOTONIC_COARSE = 6      # the clock BPF's bpf_ktime_get_coarse_ns reads
ECHO_CANDIDATES = 4              # boots of the peer not proven fresh that we echo in turn
# what an ICMP error quoting a connected UDP socket leaves pending on it (the kernel's
# icmp_err_convert / icmpv6_err_convert: unreachables, admin prohibited, parameter problem, too big)
ICMP_ERRNOS = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOPROTOOPT,
                         errno.EHOSTDOWN, errno.ENONET, errno.EACCES, errno.EPROTO, errno.EMSGSIZE,
                         errno.EOPNOTSUPP))

STARTING, BACKUP, ACTIVE, FAULT, LEAVING = (hb.S_STARTING, hb.S_BACKUP, hb.S_ACTIVE, hb.S_FAULT,
                                           hb.S_LEAVING)
NAMES = hb.STATE_NAMES


class RoleMachine:
    """Pure role logic.  Every method takes ``now`` (monotonic seconds) and returns a list of
    actions: ("role", new, old), ("standdown",), ("announce",)."""

    def __init__(self, primary: bool, keepalive: float, deadtime: float, preempt: bool = False,
                 now: float = 0.0, preempt_delay: float = 0.0):
        self.primary = primary
        self.keepalive = keepalive
        self.deadtime = deadtime
        self.preempt = preempt
        self.preempt_delay = preempt_delay
        self.state = STARTING
        self.since = now
        # since when the peer could be heard: the start, or the end of a FAULT in which it was not
        # heard (our link down: its heartbeats did not reach us); a peer not heard since then is
        # taken for dead only a deadtime after it
        self.listen_from = now
        self.peer_state: int | None = None
        self.peer_seen: float | None = None
        self.link_ok = True
        self.changes = 0
        # since when this director and the peer are both active (None: they are not).  Left
        # alone, two actives last no longer than a keepalive (the backup steps down on the first
        # heartbeat it hears, on a stand-down the primary); longer, the peer does not hear us
        self.both_active_since: float | None = None

    def peer_alive(self, now: float) -> bool:
        return (self.peer_seen is not None and now - self.peer_seen < self.deadtime
                and self.peer_state != LEAVING)

    def preempt_at(self, now: float) -> float | None:
        """When this primary, backup with the peer heard active, takes over (preempt after
        preempt_delay as backup); None when it does not wait for that."""
        if not (self.preempt and self.primary and self.state == BACKUP and self.link_ok
                and self.peer_alive(now) and self.peer_state == ACTIVE):
            return None
        return self.since + self.preempt_delay

    def _go(self, new: int, now: float, acts: list) -> None:
        if new == self.state:
            return
        old, self.state, self.since = self.state, new, now
        self.changes += 1
        acts.append(("role", new, old))
        if new == ACTIVE:
            acts.append(("standdown",))

    def heard(self, now: float, peer_state: int) -> list:
        acts: list = []
        was = self.peer_state
        self.peer_state = peer_state
        self.peer_seen = now
        if self.state == ACTIVE and was == ACTIVE and peer_state != ACTIVE:
            acts.append(("announce",))        # the peer stood down: make the neighbours sure
        acts += self.tick(now)
        return acts

    def standdown(self, now: float) -> list:
        """The peer took over and asks me to step down."""
        acts: list = []
        self.peer_state, self.peer_seen = ACTIVE, now
        if self.state == ACTIVE and self.preempt and self.primary and self.link_ok:
            return acts
        if self.state in (ACTIVE, STARTING):
            self._go(BACKUP, now, acts)
        return acts

    def link(self, now: float, ok: bool) -> list:
        self.link_ok = ok
        return self.tick(now)

    def tick(self, now: float) -> list:
        acts = self._tick(now)
        if self.state == ACTIVE and self.peer_alive(now) and self.peer_state == ACTIVE:
            if self.both_active_since is None:
                self.both_active_since = now
        else:
            self.both_active_since = None
        return acts

    def _tick(self, now: float) -> list:
        acts: list = []
        if not self.link_ok:
            self._go(FAULT, now, acts)
            return acts
        if self.state == FAULT:
            if self.peer_seen is None or self.peer_seen <= self.since:
                # nothing heard from the peer while the link was down (one channel, on that
                # link): the peer may have taken over meanwhile; listen a deadtime before
                # taking it for dead, as at the start (keepalived's FAULT -> BACKUP, then the
                # master-down timer).  Taking over at once made a backup whose link came back
                # grab the VIPs from the active peer and give them back a heartbeat later, and
                # a returning primary take them back without preempt
                self.listen_from = now
            self._go(BACKUP, now, acts)
        alive = self.peer_alive(now)
        ps = self.peer_state if alive else None
        if self.state in (STARTING, BACKUP):
            if not alive:
                listened = (now - self.listen_from >= self.deadtime
                            or (self.peer_seen is not None and self.peer_seen >= self.listen_from))
                if listened and (self.state == BACKUP or now - self.since >= self.deadtime):
                    self._go(ACTIVE, now, acts)
            elif ps == ACTIVE:
                if self.state == BACKUP and self.preempt and self.primary:
                    if now - self.since >= self.preempt_delay:
                        self._go(ACTIVE, now, acts)
                else:
                    self._go(BACKUP, now, acts)
            elif ps == FAULT or self.primary:
                self._go(ACTIVE, now, acts)
            else:
                self._go(BACKUP, now, acts)   # the primary is there and will take it
        elif self.state == ACTIVE:
            if alive and ps == ACTIVE and not self.primary:
                self._go(BACKUP, now, acts)   # two actives: the primary wins
        return acts


def link_running(ifname: str) -> bool:
    """IFF_UP and IFF_RUNNING (carrier) of a device in this network namespace."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            raw = fcntl.ioctl(s.fileno(), 0x8913, struct.pack("16sH14x", ifname.encode()[:15], 0))  # SIOCGIFFLAGS
    except OSError:
        return False
    flags = struct.unpack_from("H", raw, 16)[0]
    return bool(flags & 0x1) and bool(flags & 0x40)


def local_addresses() -> set:
    """Every address of this network namespace (for telling primary from backup)."""
    from .addresses import local_addresses as of_this_namespace
    return of_this_namespace()


class Endpoint:
    """One UDP port of one channel: a socket bound to our address and connected to the peer's, so
    the kernel queues only the peer's datagrams on it (a flood from elsewhere never fills its
    buffer), plus a catch-all socket on the same address and port that takes everything else;
    its datagrams are counted and dropped without any crypto.

    connect() needs our address to be present; until it is, the one socket stays unconnected and
    every datagram's source is checked here instead (retried at each keepalive)."""

    STRAY_RCVBUF = 64 * 1024

    def __init__(self, kind: str, local, peer, port: int, rcvbuf: int):
        self.kind = kind                 # "heartbeat" | "sync"
        self.local, self.peer, self.port = local, peer, port
        self.rcvbuf = rcvbuf
        self.sock: socket.socket | None = None
        self.stray: socket.socket | None = None
        self.connected = False
        self.seq = 0
        self.tx = self.tx_errors = 0
        self.icmp_errors = 0             # ICMP errors pending on the socket: met by a send (then sent again) or a read
        self.kernel_drops = 0            # datagrams the kernel dropped: the buffer was full ...
        self.last_drop: float | None = None   # ... the last time that count grew (clock())
        self.stray_drops = 0

    @property
    def peer_addr(self) -> tuple:
        return (str(self.peer), self.port)

    def _socket(self, rcvbuf: int) -> socket.socket:
        fam = socket.AF_INET if self.local.version == 4 else socket.AF_INET6
        s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)       # bind even before the address is up
            try:
                s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)   # above rmem_max (root)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.bind((str(self.local), self.port))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    def open(self) -> None:
        self.sock = self._socket(self.rcvbuf)
        self.connect()

    def connect(self) -> bool:
        """Connect to the peer (and open the catch-all) if not done yet; True once connected."""
        if self.connected or self.sock is None:
            return self.connected
        try:
            self.sock.connect(self.peer_addr)
        except OSError as e:
            log.debug("pulse: %s %s -> %s not connected yet: %s", self.kind, self.local, self.peer_addr, e)
            return False
        self.connected = True
        try:
            self.stray = self._socket(self.STRAY_RCVBUF)
        except OSError as e:
            log.warning("pulse: no catch-all socket on %s:%d (%s): other senders get port unreachable",
                        self.local, self.port, e)
        return True

    def send(self, data: bytes) -> None:
        if self.sock is None:
            return
        try:
            if self.connected:
                try:
                    self.sock.send(data)
                except OSError as e:
                    # an ICMP error quoting our addresses (a port unreachable from the peer while
                    # it restarts, any unreachable or prohibited spoofed from anywhere) was pending
                    # on the connected socket: the failed send took it and sent nothing; send
                    # again, once (a second failure is a send error)
                    if e.errno not in ICMP_ERRNOS:
                        raise
                    self.icmp_errors += 1
                    self.sock.send(data)
            else:
                self.sock.sendto(data, self.peer_addr)
            self.tx += 1
        except OSError:
            self.tx_errors += 1

    def close(self) -> None:
        for s in (self.sock, self.stray):
            if s is not None:
                s.close()
        self.sock = self.stray = None
        self.connected = False


def _recv(sock: socket.socket) -> tuple[bytes, tuple]:
    """One datagram (cut at MAX_DATAGRAM + 1 bytes: longer is malformed anyway) and its source."""
    return sock.recvfrom(hb.MAX_DATAGRAM + 1)


def _drops(sock: socket.socket | None) -> int | None:
    """The datagrams the kernel dropped on ``sock`` so far (its buffer was full), or None."""
    if sock is None:
        return None
    try:
        return _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO.size))[8]
    except (OSError, struct.error):
        return None


class Channel:
    """A heartbeat channel (public or private): its heartbeat port and its sync port."""

    HEARTBEAT_RCVBUF = 1 << 20
    SYNC_RCVBUF = 4 << 20

    def __init__(self, cid: int, local, peer, port: int, sync_port: int | None = None):
        self.id = cid
        self.name = hb.CHANNEL_NAMES[cid]
        self.local, self.peer, self.port = local, peer, port
        self.hb = Endpoint("heartbeat", local, peer, port, self.HEARTBEAT_RCVBUF)
        self.sync = Endpoint("sync", local, peer, port + 1 if sync_port is None else sync_port, self.SYNC_RCVBUF)
        self.endpoints = (self.hb, self.sync)
        self.last_rx: float | None = None        # monotonic: the last accepted message
        self.last_fresh: float | None = None     # ... the last the replay guard took (heard, or late news)
        self.rx = 0
        self.offpath = 0                         # datagrams from other senders, dropped before crypto
        self.refused: dict[str, int] = {}        # the peer's datagrams refused, by reason
        self.last_refused: tuple[float, str, str] | None = None   # (monotonic, reason, detail)

    @property
    def tx(self) -> int:
        return self.hb.tx + self.sync.tx

    @property
    def tx_errors(self) -> int:
        return self.hb.tx_errors + self.sync.tx_errors

    @property
    def icmp_errors(self) -> int:
        return self.hb.icmp_errors + self.sync.icmp_errors

    def open(self) -> None:
        for ep in self.endpoints:
            ep.open()

    def close(self) -> None:
        for ep in self.endpoints:
            ep.close()


REFUSED_TEXT = {
    "bad_auth": "bad MAC (another key_file?)",
    "malformed": "malformed",
    "wrong_channel": "wrong channel, port or sender id",
    "replay": "replayed or duplicate",
    "stale": "clock beyond max_skew, or behind its previous boot's, and no echo of our boot id yet",
    "delayed": "came more than a deadtime later than the peer's other heartbeats (held back and let through late?)",
}


class KeyFileError(ValueError):
    """[ha] key_file cannot be used: ``reason`` says why (the message: "key_file: REASON")."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"key_file: {reason}")
        self.reason = reason


class Pulse:
    NOTIFY_TIMEOUT = 30.0    # seconds a notify hook may run before it is killed
    READ_BUDGET = 64         # datagrams read per socket and wake-up: other sockets get their turn
    STRAY_POLL = 0.1         # seconds between two reads of the catch-all sockets...
    STRAY_BUDGET = 256       # ... of at most this many datagrams each (the kernel drops the rest)
    LOG_INTERVAL = 10.0      # seconds between two log lines of one kind of refusal
    REFUSED_WARNING = 60.0   # seconds a refusal stays in status()["warnings"]
    # copies sent of a datagram the peer must not miss (a stand-down, our "leaving"): one lost
    # would leave two actives, or the peer waiting a deadtime, until the next heartbeat or deadtime
    URGENT_REPEAT = 2
    # how much faster our monotonic clock may run than the peer's (s/s) before a heartbeat's lag
    # counts (_delayed): 1000 ppm, twice what NTP's kernel discipline (ntpd, timesyncd) can set
    DELAY_DRIFT = 1e-3
    SYNC_DRAIN_TIMEOUT = 0.5  # seconds a takeover waits for the synced records queued to be installed
    STOP_FLUSH_TIMEOUT = 1.0  # seconds an active's stop waits for its last sync scan before "leaving"

    def __init__(self, ha, instance: str, on_role, *, sync_source=None, sync_sink=None,
                 announce=None, public_interface: str | None = None, node: int | None = None,
                 clock=time.monotonic, wall_ns=time.time_ns, on_heartbeat=None, guard_file: str | None = None):
        """on_role(new, old) -> awaitable; sync_source() -> (conns, temps) (blocking, the
        active's data plane); sync_sink(conns, temps, owned_since_ns) (blocking, the backup's, or
        the new active's in its takeover's handoff: owned_since_ns is then when it became active,
        on the data plane's clock, else None -- _sync_install); announce()
        (blocking); on_heartbeat() (quick, on the loop) just before each heartbeat goes out:
        the engine's lease, which so never outlives the last heartbeat by more than deadtime.
        ``clock`` (monotonic seconds) and ``wall_ns`` (the wall clock) are the tests' to replace.
        ``guard_file``: where the replay guard's last sequence numbers of the peer's heartbeats are kept over
        a restart (save_guard; the engine's /run/lb/<instance>.ha-guard)."""
        self.ha = ha
        self.on_heartbeat = on_heartbeat
        self.instance = instance
        self.on_role = on_role
        self.sync_source = sync_source
        self.sync_sink = sync_sink
        self.announce_fn = announce
        self.public_interface = public_interface
        self.clock, self.wall_ns = clock, wall_ns
        # the data plane's clock (synced entries are stamped on it): BPF's coarse monotonic one
        self.coarse_ns = lambda: time.clock_gettime_ns(_CLOCK_MONOTONIC_COARSE)
        try:
            self.keys = hb.read_keys(ha.key_file)    # the keyring: the first signs (set_keys at a reload)
        except OSError as e:
            raise KeyFileError(f"{e.strerror or e}: {ha.key_file}") from None
        except ValueError as e:
            raise KeyFileError(str(e)) from None
        self.peer_keyno: int | None = None       # which of them the peer's newest accepted message was signed with
        self.boot = hb.new_boot_id()
        if node is None:
            mine = local_addresses()
            if ha.primary in mine or (ha.primary_private is not None and ha.primary_private in mine):
                node = hb.NODE_PRIMARY
            elif ha.backup in mine or (ha.backup_private is not None and ha.backup_private in mine):
                node = hb.NODE_BACKUP
            else:
                raise ValueError(f"this director holds neither the primary ({ha.primary}) nor the backup "
                                 f"({ha.backup}) heartbeat address")
        self.node = node
        self.peer_node = hb.NODE_BACKUP if node == hb.NODE_PRIMARY else hb.NODE_PRIMARY
        me_primary = node == hb.NODE_PRIMARY
        pick = (lambda p, b: (p, b)) if me_primary else (lambda p, b: (b, p))
        self.channels = [Channel(hb.CH_PUBLIC, *pick(ha.primary, ha.backup), ha.heartbeat_port, ha.sync_port)]
        if ha.primary_private is not None:
            self.channels.append(Channel(hb.CH_PRIVATE, *pick(ha.primary_private, ha.backup_private),
                                         ha.heartbeat_port, ha.sync_port))
        self.machine = RoleMachine(me_primary, ha.keepalive, ha.deadtime, ha.preempt, clock(),
                                   preempt_delay=ha.preempt_delay)
        # a sync datagram may be made up to a deadtime before the first heartbeat we take from its
        # boot (lost heartbeats; the active sends to a peer heard within deadtime), not earlier; a
        # peer's boot that echoes us is replaced by one that does not only after half a deadtime
        # of silence (or its "leaving"), before we would take it for dead
        self.guard = hb.ReplayGuard(int(ha.max_skew * 1e9), sync_grace_ns=int(ha.deadtime * 1e9),
                                    quiet_ns=int(ha.deadtime * 1e9 / 2))
        self.guard_file = guard_file
        self._guard_saved: str | None = None     # what save_guard wrote last
        if guard_file is not None:
            self._load_guard()
        self.peer_boot = 0                       # the peer's boot id as last accepted: our echo
        self.peer_echoed = 0                     # the peer's boot id whose heartbeats echo ours
        self._peer_said = (0, 0)                 # (boot, ts_ns) of the newest heartbeat heard from the peer
        self._peer_mono = (0, 0, 0.0)            # (boot, mono, our clock) of the newest heartbeat heard (F_MONO)
        # (boot, mono, our clock) of the peer's heartbeat that came soonest after its making, as
        # the two monotonic clocks tell (less DELAY_DRIFT since): what _delayed measures against
        self._mono_ref = (0, 0, 0.0)
        # boots of authentic heartbeats not proven fresh ("stale") -> when last seen: echoed in
        # turn while no accepted boot of the peer is heard, so that a capture of an old boot
        # cannot keep our echo off the live one (which needs it to accept us)
        self._echo_candidates: dict[int, float] = {}
        self._started = clock()                  # until half a deadtime after: only echoing messages are heard
        self.peer_skew: float | None = None      # peer's clock - ours (s), from its last heartbeat
        self.counters = {"rx": 0, "bad_auth": 0, "replay": 0, "stale": 0, "unheard": 0, "late": 0, "malformed": 0,
                         "wrong_channel": 0, "offpath": 0, "kernel_drops": 0, "standdown_rx": 0,
                         "sync_rx_records": 0, "sync_tx_records": 0, "sync_skipped": 0, "sync_pending": 0,
                         "sync_rejected": 0, "sync_expired": 0, "sync_install_failed": 0, "sync_scan_failed": 0,
                         "delayed": 0}
        self.exporter = hsync.Exporter(ha.sync_rate, ha.sync_interval)
        self.last_sync_rx: float | None = None
        self.last_sync_tx: float | None = None
        self.role_log: collections.deque = collections.deque(maxlen=64)   # (time, old, new): the last changes
        self.task_stats: dict[str, TaskStats] = {}
        self._tasks: list[asyncio.Task] = []
        self._actions: asyncio.Queue = asyncio.Queue()
        self._closing = False
        self._switching_from: int | None = None   # the old role while on_role applies a change
        self._notify_last: dict[str, asyncio.Task] = {}   # notify program -> its latest run (_notify)
        self._peer_was_alive = False
        self._sync_queue: asyncio.Queue = asyncio.Queue(maxsize=256)   # bounded backup-side backlog
        # a step-down from active asks _sync_out for one last scan (_sync_flush); one scan at a
        # time walks the exporter (its select() is not for two threads at once)
        self._sync_flush = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._sync_in_lock = asyncio.Lock()        # one batch at a time is installed (_sync_in, _sync_drain)
        self._ratelog = RateLimitedLog(log, self.LOG_INTERVAL, clock)

    # ---- the replay guard over a restart ----
    def _load_guard(self) -> None:
        """What an earlier `lb run` of ours saved: the peer's heartbeats up to the last it took stay
        refused (a capture of them, replayed to this process, would pass for a live peer for up
        to max_skew -- a dead active's, a backup held back from taking over).  A missing file is
        a first start; an unreadable one is logged and left (the guard starts empty, as before)."""
        try:
            self.guard.restore(json.loads(files.read_private(self.guard_file, 1 << 20)))
        except FileNotFoundError:
            return
        except (OSError, ValueError, RecursionError) as e:
            log.warning("pulse: %s not read (%s): heartbeats the previous run took are not known", self.guard_file, e)

    def save_guard(self) -> None:
        """Write the replay guard's snapshot to guard_file when it changed (each keepalive, and
        at stop); a failure is logged at a bounded rate and tried again next time."""
        if self.guard_file is None:
            return
        text = json.dumps(self.guard.snapshot(), separators=(",", ":"))
        if text == self._guard_saved:
            return
        try:
            files.write_private(self.guard_file, text)
        except OSError as e:
            self._ratelog.log("guard-file", logging.WARNING, "pulse: cannot write %s: %s", self.guard_file, e)
            return
        self._guard_saved = text

    # ---- status ----
    @property
    def role(self) -> str:
        """The role as applied: while a change's on_role runs (addresses taken or given up), the
        one before it, so a director reported active holds its addresses"""
        return NAMES[self._switching_from if self._switching_from is not None else self.machine.state]

    def reload_keys(self, path) -> tuple[bytes, ...]:
        """The keyring a reload would take from ``path`` (read_keys), for set_keys once the rest of
        the reload is applied.  ValueError (OSError) when the file is not a good keyring, or no
        longer holds the key the peer, alive, signs with: its heartbeats would be refused from the
        next one on, it would take us for dead, and both directors would be active.  A key
        replaced outright (the file overwritten with the new one, or a binary key concatenated
        with a new one: one key) is the usual way there."""
        keys = hb.read_keys(path)
        if self.peer_keyno is None or self.peer_keyno >= len(self.keys) or not self.machine.peer_alive(self.clock()):
            return keys
        if self.keys[self.peer_keyno] in keys:
            return keys
        raise ValueError(f"{self.ha.key_file} no longer holds the key the peer signs with (key {self.peer_keyno + 1} "
                         f"of the file as this daemon read it last): the peer's heartbeats would be refused and both "
                         f"directors would be active; keep it in the file, after the new key, until the peer signs "
                         f"with the new one (docs/architecture.md, \"Changing the HA key\")")

    def set_keys(self, keys: tuple[bytes, ...]) -> str | None:
        """A reload's keyring (read_keys of key_file): signs from the next datagram on, heartbeats
        and configuration pushes alike.  What changed, for the reload's answer (None: nothing)."""
        if keys == self.keys:
            return None
        old, self.keys = self.keys, keys
        if keys[0] != old[0]:
            what = f"signing with a new key, the first of {len(keys)}"
        else:
            what = f"signing with the same key, {len(keys)} accepted"
        if self.peer_keyno is not None:
            # the peer's key, in the new keyring's order (None: no longer accepted)
            peer_key = old[self.peer_keyno] if self.peer_keyno < len(old) else None
            self.peer_keyno = keys.index(peer_key) if peer_key in keys else None
            if self.peer_keyno is None:
                what += "; the key the peer signs with is no longer among them: it is refused until it changes too"
        log.info("pulse: the HA keys in %s changed: %s", self.ha.key_file, what)
        return f"the HA keys in {self.ha.key_file} changed: {what}"

    def warnings(self) -> list[str]:
        """What an operator must look at: a peer heard but refused, a skewed clock, heartbeats
        the kernel dropped, a key file changed since the start."""
        now = self.clock()
        out = []
        if len(self.keys) > 1 and self.peer_keyno == 0:
            out.append(f"{self.ha.key_file} holds {len(self.keys)} keys, each accepted, and both directors sign "
                       f"with the first: a change of keys not finished? (the file's other keys still open the "
                       f"HA channel; keep only the first once both directors sign with it)")
        if self.peer_keyno:
            out.append(f"the peer signs with key {self.peer_keyno + 1} of the {len(self.keys)} in "
                       f"{self.ha.key_file}, ours the first: a change of keys is under way (docs/architecture.md, "
                       f"\"Changing the HA key\"); finish it on both directors")
        for c in self.channels:
            if c.last_refused is None or now - c.last_refused[0] >= self.REFUSED_WARNING:
                continue
            at, why, detail = c.last_refused
            why = f"{REFUSED_TEXT.get(why, why)}{': ' + detail if detail else ''}"
            so_far = ", ".join(f"{k} {v}" for k, v in sorted(c.refused.items()))
            if c.last_rx is None or c.last_rx < at:      # the peer itself is not understood
                out.append(f"{c.name} channel: datagrams from the peer {c.peer} are refused ({why}); "
                           f"refused so far: {so_far}")
            else:                                         # the peer is, so someone else uses its address
                out.append(f"{c.name} channel: datagrams with the peer {c.peer}'s address were refused "
                           f"{now - at:.0f}s ago ({why}) while its own are accepted: forged or corrupted; "
                           f"refused so far: {so_far}")
        for c in self.silent_channels(now):
            out.append(f"{c.name} channel: no heartbeat from the peer {c.peer} "
                       + ("yet" if c.last_fresh is None else f"for {now - c.last_fresh:.0f}s")
                       + " while the other channel carries them: one channel left, whose failure makes "
                         "both directors active (a link, route or firewall on this one?)")
        both = self.both_active_for(now)
        if both is not None:
            out.append(f"both directors have been active for {both:.0f}s: the peer does not hear this "
                       f"director's heartbeats (a link or firewall that drops them one way?), or does not "
                       f"step down; both hold the virtual addresses")
        if self.peer_skew is not None and abs(self.peer_skew) > self.ha.max_skew:
            out.append(f"the peer's clock differs from ours by {self.peer_skew:+.1f}s (max_skew "
                       f"{self.ha.max_skew:g}s): heard anyway (its heartbeats echo our boot id); fix the time (NTP)")
        for c in self.channels:
            # a warning while the drops are recent, as a refusal's (a burst long past is only counted)
            if c.hb.last_drop is not None and now - c.hb.last_drop < self.REFUSED_WARNING:
                out.append(f"{c.name} channel: the kernel dropped {c.hb.kernel_drops} datagrams of the peer's "
                           f"heartbeat socket, the last {now - c.hb.last_drop:.0f}s ago (receive buffer full: "
                           f"a flood with the peer's address?)")
        return out

    def status(self) -> dict:
        now = self.clock()
        m = self.machine
        return {
            "node": "primary" if self.node == hb.NODE_PRIMARY else "backup",
            "role": self.role, "since_s": round(now - m.since, 3), "role_changes": m.changes,
            "peer": {"state": NAMES.get(m.peer_state, "unknown") if m.peer_state is not None else "unknown",
                     "alive": m.peer_alive(now),
                     "last_heard_s": None if m.peer_seen is None else round(now - m.peer_seen, 3),
                     "clock_skew_s": None if self.peer_skew is None else round(self.peer_skew, 3)},
            "link_ok": m.link_ok,
            # a primary back as backup with preempt: seconds left of preempt_delay (None: not waiting)
            "preempt_in_s": (None if (at := m.preempt_at(now)) is None else round(max(at - now, 0.0), 3)),
            # the keyring (never a key): how many keys, and which the peer's messages are signed with
            "keys": {"file": str(self.ha.key_file), "count": len(self.keys),
                     "peer_signs_with": None if self.peer_keyno is None else self.peer_keyno + 1},
            "channels": {c.name: {"local": str(c.local), "peer": str(c.peer), "port": c.port,
                                  "sync_port": c.sync.port, "rx": c.rx, "tx": c.tx, "tx_errors": c.tx_errors,
                                  "icmp_errors": c.icmp_errors,
                                  "connected": c.hb.connected, "offpath": c.offpath,
                                  "kernel_drops": c.hb.kernel_drops + c.sync.kernel_drops,
                                  "refused": dict(c.refused),
                                  "last_heartbeat_s": None if c.last_rx is None else round(now - c.last_rx, 3)}
                         for c in self.channels},
            "sync": {"enabled": self.ha.sync, "tracked": len(self.exporter.sent),
                     "pending": self.exporter.pending,
                     "last_tx_s": None if self.last_sync_tx is None else round(now - self.last_sync_tx, 3),
                     "last_rx_s": None if self.last_sync_rx is None else round(now - self.last_sync_rx, 3)},
            "counters": dict(self.counters),
            "tasks": {name: {"restarts": st.restarts, "last_error": st.last_error}
                      for name, st in self.task_stats.items() if st.restarts},
            "warnings": self.warnings(),
        }

    # ---- lifecycle ----
    def _supervise(self, name: str, run) -> asyncio.Task:
        stats = self.task_stats.setdefault(name, TaskStats())
        return supervise(name, run, logger=log, stats=stats, context=f"pulse {self.role_node_name()} node")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.machine.since = self.machine.listen_from = self._started = self.clock()   # listen a full deadtime from now
        for c in self.channels:
            c.open()
            for ep in c.endpoints:
                loop.add_reader(ep.sock.fileno(), self._readable, c, ep)
        self._tasks = [self._supervise("pulse-heartbeats", self._heartbeats),
                       self._supervise("pulse-decide", self._decide),
                       self._supervise("pulse-strays", self._strays)]
        if self.ha.sync and self.sync_source is not None:
            self._tasks.append(self._supervise("pulse-sync-out", self._sync_out))
        if self.ha.sync and self.sync_sink is not None:
            self._tasks.append(self._supervise("pulse-sync-in", self._sync_in))
        if self.ha.garp_refresh > 0:
            self._tasks.append(self._supervise("pulse-garp-refresh", self._refresh))
        log.info("pulse: %s node, heartbeats every %gs on %s, deadtime %gs", self.role_node_name(),
                 self.ha.keepalive, ", ".join(f"{c.name} {c.local}->{c.peer}:{c.port} (sync :{c.sync.port})"
                                              for c in self.channels),
                 self.ha.deadtime)

    def role_node_name(self) -> str:
        return "primary" if self.node == hb.NODE_PRIMARY else "backup"

    async def stop(self) -> None:
        """Tell the peer we leave (it takes over at once if we were active), close the sockets.
        "leaving" is sent URGENT_REPEAT times on each channel, as a stand-down is: it is the last
        datagram, and one lost left the backup waiting a whole deadtime with no director active."""
        self._closing = True
        if self.machine.state == ACTIVE and self.ha.sync and self.sync_source is not None \
                and self.machine.peer_alive(self.clock()):
            # what was not synced yet goes before "leaving" (the peer takes over on it); bounded
            # by STOP_FLUSH_TIMEOUT (a scan of a huge table, one already running)
            try:
                await asyncio.wait_for(self._sync_send_scan(flush=True), self.STOP_FLUSH_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("pulse: the last connection sync before leaving took over %gs: left unsent",
                            self.STOP_FLUSH_TIMEOUT)
        for _ in range(self.URGENT_REPEAT):
            self._send_all(hb.T_HEARTBEAT, LEAVING)
        await cancel_and_wait(*self._tasks)
        loop = asyncio.get_running_loop()
        for c in self.channels:
            for ep in c.endpoints:
                if ep.sock is not None:
                    loop.remove_reader(ep.sock.fileno())
            c.close()
        self.save_guard()                        # with every heartbeat read until the sockets closed

    # ---- sending ----
    def _flags(self) -> int:
        return (hb.F_LINK_OK if self.machine.link_ok else 0) | hb.F_MONO

    def _echo(self) -> int:
        """The boot id our next heartbeat echoes: the peer's accepted one, or, while none is
        heard, each boot that asked for it (stale) within a deadtime in turn."""
        now = self.clock()
        for boot, seen in list(self._echo_candidates.items()):
            if now - seen >= self.ha.deadtime:
                del self._echo_candidates[boot]
        if not self._echo_candidates:
            return self.peer_boot
        boots = sorted(self._echo_candidates)
        # one boot a keepalive round, the same on every channel: a turn per datagram gave each
        # channel the same boots for ever (two channels, an even count), and with one channel
        # down the live boot could be never echoed where it would hear it
        return boots[int(now / self.ha.keepalive) % len(boots)]

    def encode(self, c: Channel, typ: int, state: int | None = None, payload: bytes | None = None) -> bytes:
        """The next datagram of ``typ`` on channel ``c`` (heartbeats and stand-downs carry our echo
        of the peer's boot id)."""
        ep = c.sync if typ == hb.T_SYNC else c.hb
        ep.seq += 1
        if payload is None:
            payload = hb.echo_payload(self._echo())
        m = hb.Message(typ, self.machine.state if state is None else state, self.node, c.id, self.boot, ep.seq,
                       self.wall_ns(), self._flags(), payload, hb.mono_ms(self.clock()))
        return hb.encode(self.keys[0], m)

    def _send(self, c: Channel, typ: int, state: int | None = None, payload: bytes | None = None) -> None:
        ep = c.sync if typ == hb.T_SYNC else c.hb
        if ep.sock is not None:
            ep.send(self.encode(c, typ, state, payload))

    def _send_all(self, typ: int, state: int | None = None) -> None:
        for c in self.channels:
            self._send(c, typ, state)

    def _sync_channel(self) -> Channel:
        """Sync goes over the private channel when there is one and it is alive."""
        now = self.clock()
        for c in reversed(self.channels):
            if c.last_rx is not None and now - c.last_rx < self.ha.deadtime:
                return c
        return self.channels[-1]

    async def _heartbeats(self) -> None:
        while True:
            for c in self.channels:
                for ep in c.endpoints:
                    ep.connect()                 # our address may have come up since
            if self.on_heartbeat is not None:
                self.on_heartbeat()
            self._send_all(hb.T_HEARTBEAT)
            self.save_guard()
            await asyncio.sleep(self.ha.keepalive)

    # ---- receiving ----
    def _readable(self, c: Channel, ep: Endpoint) -> None:
        for _ in range(self.READ_BUDGET):         # bounded per wake-up
            try:
                data, addr = _recv(ep.sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # a connected socket's ICMP error (the peer's port closed for a moment, or one
                # spoofed from anywhere): taken here instead of by the next send; counted as that
                if e.errno in ICMP_ERRNOS:
                    ep.icmp_errors += 1
                continue
            if not ep.connected and (ipaddress.ip_address(addr[0].split("%")[0]) != ep.peer or addr[1] != ep.port):
                self._offpath(c, 1)
                continue
            self._receive(c, ep.kind, data)

    def _offpath(self, c: Channel, n: int) -> None:
        c.offpath += n
        self.counters["offpath"] += n

    async def _strays(self) -> None:
        """Drain the catch-all sockets now and then: count what other senders sent, keep the
        peer's own datagrams (they land there while a socket is being connected); and take the
        kernel's drop counts (a full buffer) of every socket."""
        while True:
            await asyncio.sleep(self.STRAY_POLL)
            self.poll_strays()

    def poll_strays(self) -> None:
        for c in self.channels:
            for ep in c.endpoints:
                if ep.stray is not None:
                    self._drain_stray(c, ep)
                    drops = _drops(ep.stray)
                    if drops is not None and drops != ep.stray_drops:
                        self._offpath(c, (drops - ep.stray_drops) & 0xFFFFFFFF)   # dropped unread: a flood
                        ep.stray_drops = drops
                drops = _drops(ep.sock)
                if drops is not None and drops != ep.kernel_drops:
                    self.counters["kernel_drops"] += (drops - ep.kernel_drops) & 0xFFFFFFFF
                    ep.kernel_drops, ep.last_drop = drops, self.clock()

    def _drain_stray(self, c: Channel, ep: Endpoint) -> None:
        for _ in range(self.STRAY_BUDGET):
            try:
                data, addr = _recv(ep.stray)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if ipaddress.ip_address(addr[0].split("%")[0]) == ep.peer and addr[1] == ep.port:
                self._receive(c, ep.kind, data)
            else:
                self._offpath(c, 1)

    def _refuse(self, c: Channel, reason: str, detail: str = "") -> None:
        """A datagram with the peer's address and port that is not an acceptable message."""
        self.counters[reason] += 1
        c.refused[reason] = c.refused.get(reason, 0) + 1
        c.last_refused = (self.clock(), reason, detail)
        self._ratelog.log((c.id, reason), logging.WARNING, "pulse: %s channel: refused a datagram from the peer "
                          "%s: %s%s", c.name, c.peer, REFUSED_TEXT.get(reason, reason),
                          f" ({detail})" if detail else "")

    def _receive(self, c: Channel, kind: str, data: bytes) -> None:
        try:
            m = hb.decode(self.keys, data, sender=self.peer_node, channel=c.id, types=hb.SOCKET_TYPES[kind])
        except hb.DecodeError as e:
            self._refuse(c, "bad_auth" if e.reason == "auth" else e.reason, e.detail)
            return
        wall = self.wall_ns()
        why = self.guard.check(m, wall, self.boot)
        if m.type != hb.T_SYNC and why is None and m.boot != self.peer_boot:
            self.peer_boot = m.boot              # accepted: our echo from now on
            self._echo_candidates.clear()
            # a new lb process of the peer: it missed what was sent while it was down (refused,
            # port unreachable), or starts on a new data plane -- send it everything again, as
            # when it comes back after a deadtime (a restart within one went unnoticed there)
            self.exporter.reset()
        elif m.type != hb.T_SYNC and why == "stale" and m.boot != self.peer_boot \
                and not self.guard.live(m.node, self.peer_boot, wall):
            # authentic, but a new boot not proven fresh (its clock beyond max_skew, or behind the
            # peer's boot before it): echoed back, that boot's proof of freshness (it is accepted
            # once it hears its own boot id echoed) -- in turn with any other such boot, as one of
            # them may be a capture of a boot the peer has left, and never while a boot of the
            # peer we accepted is still heard.  A replay -- a duplicate, or a boot the peer has
            # left -- is not echoed: the new boot would never be accepted, and would take over as
            # if we were dead.
            self._echo_candidates[m.boot] = self.clock()
            while len(self._echo_candidates) > ECHO_CANDIDATES:
                del self._echo_candidates[min(self._echo_candidates, key=self._echo_candidates.get)]
        if why is not None:
            detail = ""
            if why == "stale" and abs(m.ts_ns - wall) > self.ha.max_skew * 1e9:
                detail = f"its clock differs from ours by {(m.ts_ns - wall) / 1e9:+.1f}s, max_skew {self.ha.max_skew:g}s"
            elif why == "stale":
                detail = "a new boot whose clock is behind its previous boot's (set back?), taken once it echoes ours"
            self._refuse(c, why, detail)
            return
        c.last_fresh = self.clock()              # the channel carries the peer's messages (silent_channels)
        # What the peer is now, the role machine hears only from its newest message: one that
        # moved its stream's sequence number up (a late one, inside the window, is older news --
        # or a capture of what we missed, replayed).  And a director that just started has no
        # stream to compare the peer's first message with: the guard takes any authentic one up
        # to max_skew old, whose state the peer may have left (a "backup" that makes a returning
        # primary take over).  Until the peer's heartbeats echo our boot id (random per process,
        # so made after we started; one keepalive after it hears us), its state is not heard for
        # the first half deadtime -- after that it is, echo or not, so a peer that cannot hear us
        # (a one-way link) is still heard before we would take it for dead.  Not heard, the
        # message still counts as authentic (the echo above follows it), and a sync message's
        # records are taken as before.  A peer too old to echo (empty payload) is heard at once.
        if m.type != hb.T_SYNC and (len(m.payload) != hb.ECHO.size or m.echo == self.boot):
            self.peer_echoed = m.boot
        heard = self.guard.newest(m) and (m.boot == self.peer_echoed
                                         or self.clock() - self._started >= self.ha.deadtime / 2)
        if not heard and m.type != hb.T_SYNC:
            self.counters["unheard"] += 1
            return
        if m.type != hb.T_SYNC and m.flags & hb.F_MONO:
            # Older, by the peer's monotonic clock, than a message of its boot already heard on
            # another channel: no news of the peer (each channel's window takes it, as it never
            # came there).  A capture held back on one segment while the other carried the
            # heartbeats, replayed once the peer is dead, would keep it "alive" for as long as
            # the capture lasts.  (Compared only within a quarter of the field's range of what
            # we last heard: after a silence that long -- weeks of partition -- the order is
            # unknown, and the message is news.)
            boot, mono, heard_at = self._peer_mono
            if m.boot == boot and self.clock() - heard_at < hb.MONO_ORDERED_S and hb.mono_before(m.mono, mono):
                self.counters["late"] += 1
                return
            lag = self._delayed(m)
            if lag is not None:
                self._refuse(c, "delayed", f"{lag:.1f}s later, by the two monotonic clocks, than the peer's "
                                           f"soonest heartbeat; deadtime {self.ha.deadtime:g}s")
                return
            self._peer_mono = (m.boot, m.mono, self.clock())
        self.counters["rx"] += 1
        c.rx += 1
        now = self.clock()
        c.last_rx = now
        if m.keyno != self.peer_keyno:
            if self.peer_keyno is not None:      # the peer changed keys (it cannot be forged: authentic)
                log.info("pulse: the peer now signs with key %d of the %d in %s", m.keyno + 1, len(self.keys),
                         self.ha.key_file)
            self.peer_keyno = m.keyno
        if m.type == hb.T_SYNC:
            self.last_sync_rx = now
            try:
                self._sync_queue.put_nowait(m.payload)
            except asyncio.QueueFull:
                self.counters["sync_skipped"] += hsync.record_count(m.payload)   # records, as documented
            # A sync message's state is news only when it is newer than the peer's last heartbeat:
            # the two are separate streams, and a backlog of sync datagrams read after the peer's
            # "leaving" (sync travels on the private channel, in bursts) must not make it active again.
            said = self._peer_said
            if heard and m.state != self.machine.peer_state and m.boot == said[0] and m.ts_ns > said[1]:
                self._act(self.machine.heard(now, m.state))
            return
        self._peer_said = (m.boot, m.ts_ns)
        self.peer_skew = (m.ts_ns - wall) / 1e9
        if abs(self.peer_skew) > self.ha.max_skew:
            self._ratelog.log("skew", logging.WARNING, "pulse: the peer's clock differs from ours by %+.1fs "
                              "(max_skew %gs); its heartbeats are accepted because they echo our boot id: "
                              "fix the time (NTP)", self.peer_skew, self.ha.max_skew)
        if m.type == hb.T_STANDDOWN:
            self.counters["standdown_rx"] += 1
            if m.state == ACTIVE:
                self._act(self.machine.standdown(now))
            else:                             # sent by a peer no longer active: only its state is news
                self._act(self.machine.heard(now, m.state))
            return
        self._act(self.machine.heard(now, m.state))

    def _delayed(self, m: hb.Message) -> float | None:
        """How much later than the peer's soonest heartbeat (of its boot) ``m`` came, by the two
        monotonic clocks, less DELAY_DRIFT of the time since that one -- when that is more than a
        deadtime; else None.

        A heartbeat is news of the peer only as fresh as it is: one made a deadtime and more
        before it came says nothing of the peer now.  The replay window cannot tell: an attacker
        on the HA link who holds the peer's heartbeats back and lets them through one by one,
        each in order and within a deadtime of the last but slower than they were made, builds
        a backlog that, once the peer is dead, kept it "alive" for as long as the backlog lasted
        (no director active: 60 s of it gave 25 s with a 1 s deadtime).  The wall clocks cannot
        either (the peer's may be off by more than max_skew, heard by its echo).  The peer's
        monotonic clock (F_MONO) against ours can: the reference is the heartbeat that came
        soonest after its making, and one that comes sooner still (or within DELAY_DRIFT of its
        time since: the clocks' rates differ a little) is the new one.  A backlog is cut to a
        deadtime plus DELAY_DRIFT of the time it was built in."""
        now = self.clock()
        boot, mono, at = self._mono_ref
        if boot != m.boot or now - at >= hb.MONO_ORDERED_S:
            self._mono_ref = (m.boot, m.mono, now)        # a new boot, or too long ago to compare
            return None
        half = hb.MONO_MOD // 2
        made = ((m.mono - mono + half) % hb.MONO_MOD - half) / 1000    # after the reference, by its clock
        lag = (now - at) - made - (now - at) * self.DELAY_DRIFT
        if lag <= 0:
            self._mono_ref = (m.boot, m.mono, now)        # as soon as the reference (drift allowed): the new one
            return None
        return lag if lag > self.ha.deadtime else None

    # ---- deciding and acting ----
    def _act(self, acts: list) -> None:
        for a in acts:
            self._actions.put_nowait(a)

    def decide(self) -> list:
        """One step of the role machine at clock(): the link check (monitor_links), the tick, and
        every action queued since (by received messages too), taken off the queue."""
        now = self.clock()
        if self.ha.monitor_links and self.public_interface and now - self._last_link >= min(self.ha.keepalive, 0.2):
            self._last_link = now
            ok = link_running(self.public_interface)
            if ok != self.machine.link_ok:
                log.warning("pulse: public link %s is %s", self.public_interface, "up" if ok else "down")
            self._act(self.machine.link(now, ok))
        else:
            self._act(self.machine.tick(now))
        alive = self.machine.peer_alive(now)
        if alive and not self._peer_was_alive:
            self.exporter.reset()             # the peer (re)appeared: send it everything
        self._peer_was_alive = alive
        self._both_active(now)
        silent = {c.name for c in self.silent_channels(now)}
        for name in silent - self._silent:
            log.warning("pulse: %s channel: no heartbeat from the peer for %gs while the other channel carries "
                        "them: one channel left", name, self.ha.deadtime)
        if alive:
            for name in self._silent - silent:
                log.info("pulse: %s channel: heartbeats from the peer again", name)
        self._silent = silent
        acts = []
        while not self._actions.empty():
            acts.append(self._actions.get_nowait())
        if any(a[0] == "role" and a[2] == ACTIVE and a[1] != ACTIVE for a in acts):
            self._sync_flush.set()            # stepping down: _sync_out sends what it had not yet
        return acts

    _last_link = float("-inf")

    def silent_channels(self, now: float) -> list:
        """Channels the peer has not been heard on for a deadtime while it is heard on another
        (after our first deadtime): the redundancy a second channel gives is gone."""
        if len(self.channels) < 2 or now - self._started < self.ha.deadtime or not self.machine.peer_alive(now):
            return []
        return [c for c in self.channels if c.last_fresh is None or now - c.last_fresh >= self.ha.deadtime]

    def both_active_for(self, now: float) -> float | None:
        """Seconds both directors have been active, once it is more than a deadtime (None
        before, or when they are not): the peer does not hear us -- a one-way link, a firewall
        dropping our heartbeats one way --, or does not step down (preempt, a stand-down lost)."""
        since = self.machine.both_active_since
        if since is None or now - since < self.ha.deadtime:
            return None
        return now - since

    def _both_active(self, now: float) -> None:
        """Two actives lasting past a deadtime: an error in the log, again every LOG_INTERVAL
        while it lasts, and a line when it ends (and a warning in status() meanwhile)."""
        both = self.both_active_for(now)
        if both is not None:
            if self._both_logged is None or now - self._both_logged >= self.LOG_INTERVAL:
                log.error("pulse: both directors have been active for %.0fs: the peer's heartbeats say "
                          "\"active\" and it does not step down -- it does not hear this director's "
                          "heartbeats (a link or firewall that drops them one way?); both hold the "
                          "virtual addresses until it does", both)
                self._both_logged = now
        elif self._both_logged is not None:
            self._both_logged = None
            log.warning("pulse: one director active again (this one %s, the peer %s)", self.role,
                        NAMES.get(self.machine.peer_state, "unknown") if self.machine.peer_alive(now)
                        else "not heard")

    _both_logged: float | None = None
    _silent: set = frozenset()                # names of the channels silent_channels() gave last

    async def _decide(self) -> None:
        tick = min(self.ha.keepalive / 2, 0.05)
        loop = asyncio.get_running_loop()
        while True:
            for a in self.decide():
                if a[0] == "role":
                    _, new, old = a
                    alive = self.machine.peer_alive(self.clock())
                    log.warning("pulse: role %s -> %s (peer %s)", NAMES[old], NAMES[new],
                                NAMES.get(self.machine.peer_state, "unheard") if alive else "not heard")
                    self.role_log.append((time.time(), NAMES[old], NAMES[new]))
                    if new == ACTIVE:
                        self.exporter.reset()
                        if self.ha.sync and self.sync_sink is not None:
                            try:
                                await asyncio.wait_for(self._sync_drain(), self.SYNC_DRAIN_TIMEOUT)
                            except asyncio.TimeoutError:
                                log.warning("pulse: installing the synced connections received before the "
                                            "takeover took over %gs: the rest follows it", self.SYNC_DRAIN_TIMEOUT)
                    self._switching_from = old
                    try:
                        await self.on_role(new, old)
                    except Exception:
                        log.exception("pulse: role change to %s failed", NAMES[new])
                    finally:
                        self._switching_from = None
                    self._send_all(hb.T_HEARTBEAT)       # tell the peer at once
                    self._notify(NAMES[new], NAMES[old])
                    at = self.machine.preempt_at(self.clock())
                    if at is not None and self.machine.preempt_delay > 0:
                        log.info("pulse: the peer is active; this primary takes the addresses back in %.0fs "
                                 "(preempt_delay)", max(at - self.clock(), 0.0))
                elif a[0] == "standdown":
                    # only while still active: the peer may have been heard active meanwhile (a
                    # partition healed during the takeover's on_role) and this node stepped down
                    if self.machine.state == ACTIVE:
                        for _ in range(self.URGENT_REPEAT):
                            self._send_all(hb.T_STANDDOWN)
                elif a[0] == "announce" and self.announce_fn is not None:
                    await loop.run_in_executor(None, self.announce_fn, False)
            await asyncio.sleep(tick)

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ha.garp_refresh)
            if self.machine.state == ACTIVE and self.announce_fn is not None:
                await loop.run_in_executor(None, self.announce_fn, False)

    def _notify(self, new: str, old: str) -> None:
        """Each notify program, for this role change, once its run for the change before is
        done: one at a time and in order, so what the last run did is what the role is now.
        (Started at once, a slow "active" run of a takeover undone a moment later could finish
        after the "backup" run and leave its work -- a service started, a route -- on the backup.)"""
        for prog in self.ha.notify:
            prev = self._notify_last.get(prog)
            self._notify_last[prog] = spawn(f"notify {prog}", self._run_hook_after(prev, prog, new, old), logger=log)

    async def _run_hook_after(self, prev: asyncio.Task | None, prog: str, new: str, old: str) -> None:
        if prev is not None and not prev.done():
            await asyncio.wait([prev])
        await self._run_hook(prog, new, old)

    async def _run_hook(self, prog: str, new: str, old: str) -> None:
        """One notify program: PROG NEW OLD INSTANCE, as ha.script_user, with LB_ROLE, LB_OLD_ROLE and
        LB_INSTANCE in a minimal environment (lb.programs)."""
        try:
            res = await programs.run([prog, new, old, self.instance], user=self.ha.script_user,
                                     timeout=self.NOTIFY_TIMEOUT,
                                     env={"LB_ROLE": new, "LB_OLD_ROLE": old, "LB_INSTANCE": self.instance})
        except (OSError, programs.ProgramError) as e:
            log.warning("pulse: notify hook %s: %s", prog, e)
            return
        err = bytes(res.stderr).decode(errors="replace").strip()[-500:]
        if res.killed == "timeout":
            log.warning("pulse: notify hook %s killed after %g s", prog, self.NOTIFY_TIMEOUT)
        elif res.killed == "output":
            log.warning("pulse: notify hook %s killed: more than %d bytes of output", prog, programs.OUTPUT_LIMIT)
        elif res.returncode:
            log.warning("pulse: notify hook %s exited %d: %s", prog, res.returncode, err)

    # ---- connection sync ----
    def sync_handoff(self) -> float:
        """Seconds around a role change in which what was queued for sync at the switch still
        goes through: a director that stepped down sends its last scan (_sync_flush) and one
        that took over installs what the old active sent (received before the switch, read or
        still arriving during it); a deadtime, so at most a deadtime of the old active's
        datagrams, at most the receive queue's 256 of them."""
        return self.ha.deadtime

    async def _sync_out(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._sync_flush.wait(), self.ha.sync_interval)
            except asyncio.TimeoutError:
                pass
            flush = self._sync_flush.is_set()
            self._sync_flush.clear()
            now = self.clock()
            if self.machine.state != ACTIVE:
                # a director that has just stepped down sends what it had not sent yet (new and
                # changed entries since its last scan, those that waited for budget) once, with
                # one scan's budget: the peer taking over knows those connections
                if not (flush and now - self.machine.since <= self.sync_handoff()):
                    continue
            if not self.machine.peer_alive(now):
                continue
            await self._sync_send_scan(flush=self.machine.state != ACTIVE)

    async def _sync_send_scan(self, flush: bool = False) -> int:
        """One scan of the table and its records sent (the records sent; one scan at a time)."""
        loop = asyncio.get_running_loop()
        async with self._sync_lock:
            try:
                # the read and the scan both in the executor: select() walks every live entry,
                # a second and more of a million-entry table that the loop's heartbeats (and
                # the HA lease they refresh) must not wait for
                records = await loop.run_in_executor(None, self._sync_scan)
            except Exception as e:       # counted, logged at most once per 10 s with its traceback
                self.counters["sync_scan_failed"] += 1
                self._ratelog.log("sync-scan", logging.ERROR, "pulse: reading connections for sync failed: %s", e,
                                  exc_info=True)
                return 0
            self.counters["sync_pending"] = self.exporter.pending
            if not records:
                return 0
            c = self._sync_channel()
            for payload in hsync.pack_batches(records):
                self._send(c, hb.T_SYNC, payload=payload)
            self.counters["sync_tx_records"] += len(records)
            self.last_sync_tx = self.clock()
        if flush:
            log.info("pulse: stepping down: sent the peer %d connection records not synced yet%s", len(records),
                     f" ({self.exporter.pending} left unsent: sync_rate)" if self.exporter.pending else "")
        return len(records)

    def _sync_scan(self) -> list[bytes]:
        conns, temps = self.sync_source()
        return self.exporter.select(conns, temps)

    def admit_sync(self, payloads: list[bytes], now_ns: int) -> tuple[list, list]:
        """Synced payloads -> the records to install at ``now_ns`` (the data plane's clock): each
        payload checked whole (a bad one is refused, counted and logged, none of it kept), expired
        records dropped (sync.admit)."""
        conns, temps = [], []
        for p in payloads:
            try:
                c, t = hsync.decode_batch(p)
            except ValueError as e:
                self.counters["sync_rejected"] += 1
                self._ratelog.log("sync", logging.WARNING, "pulse: refused a sync datagram from the peer: %s", e)
                continue
            conns += c
            temps += t
        conns, temps, expired = hsync.admit(conns, temps, now_ns)
        self.counters["sync_expired"] += expired
        return conns, temps

    def _sync_batch(self) -> list[bytes]:
        """Up to 64 queued sync payloads, taken off the queue."""
        batch = []
        while not self._sync_queue.empty() and len(batch) < 64:
            batch.append(self._sync_queue.get_nowait())
        return batch

    def owned_since_ns(self) -> int | None:
        """When this director became active, on the data plane's clock (coarse_ns); None when
        it is not active.  Reckoned back from machine.since, not stamped in _decide: the machine
        turns ACTIVE (a "leaving" read) before _decide takes the role change on, and a batch may
        be installed in between; both clocks are monotonic (the coarse one a tick behind)."""
        if self.machine.state != ACTIVE:
            return None
        return self.coarse_ns() - int((self.clock() - self.machine.since) * 1e9)

    async def _sync_install(self, batch: list[bytes]) -> None:
        """Install a batch of the peer's sync payloads (admit_sync, then sync_sink off the loop).
        An active director (the takeover's handoff: _sync_in, _sync_drain) installs them as
        IPVS's master would take none: the old active's record of a connection or template its
        own data plane has made or changed since the takeover does not replace that entry
        (owned_since_ns); those it does not have, or had only as copies from before, go in."""
        conns, temps = self.admit_sync(batch, self.coarse_ns())
        if not conns and not temps:
            return
        loop = asyncio.get_running_loop()
        try:
            done, skipped = await loop.run_in_executor(None, self.sync_sink, conns, temps, self.owned_since_ns())
        except Exception as e:       # the records are lost: counted, logged at most once per 10 s
            self.counters["sync_install_failed"] += len(conns) + len(temps)
            self._ratelog.log("sync-install", logging.ERROR, "pulse: installing %d synced records failed: %s",
                              len(conns) + len(temps), e, exc_info=True)
            return
        self.counters["sync_rx_records"] += done
        self.counters["sync_skipped"] += skipped

    async def _sync_in(self) -> None:
        while True:
            payload = await self._sync_queue.get()
            async with self._sync_in_lock:
                batch = [payload] + self._sync_batch()
                if self.machine.state == ACTIVE and self.clock() - self.machine.since > self.sync_handoff():
                    # the active's own table wins -- once its takeover is past: what the old active
                    # sent until then (queued here at the switch, or still in the socket's buffer)
                    # is installed, or the connections it had just made would be reset here --
                    # but not over the entries this one's data plane made since (_sync_install)
                    self.counters["sync_skipped"] += sum(hsync.record_count(p) for p in batch)
                    continue
                await self._sync_install(batch)

    async def _sync_drain(self) -> None:
        """At a takeover, before on_role takes the addresses: what the peer sent and the queue
        still holds is installed first (after the batch _sync_in may be installing), so the
        connections it names are known before their next packet reaches this director."""
        async with self._sync_in_lock:
            while batch := self._sync_batch():
                # shielded: a drain that runs out of time leaves this batch to finish
                await asyncio.shield(self._sync_install(batch))
