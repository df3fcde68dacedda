"""Heartbeat and control messages between the two directors: the wire codec, HMAC-SHA256
authentication and the replay guard.

Every datagram (heartbeat, stand-down, connection sync) is

    header (40 bytes, network order)         payload            HMAC-SHA256(key, header+payload)
    magic "LBHA" | version | type | state | flags | node | channel | mono (high u16)
    boot id (u64) | seq (u64) | sender wall clock ns (u64) | payload length (u16) | mono (low u16)

at most MAX_DATAGRAM bytes.  ``boot`` is random per `lb run` process, ``seq`` counts up per
channel and socket (heartbeats and stand-downs on the heartbeat port, sync on the sync port).
``mono`` (with flag F_MONO) is the sender's monotonic clock in milliseconds, modulo 2^32: it
orders one boot's messages across channels whatever its wall clock does (lb.ha.pulse: a
heartbeat older than one already heard on another channel is no news -- a capture held back on
one segment and replayed once the sender is dead), and, against the receiver's own monotonic
clock, how late each heartbeat comes (one more than a deadtime later than the sender's soonest
is no news: held back and let through late, lb.ha.pulse's ``delayed``).  It sits where version 1
had padding, so a director without it ignores it.
A heartbeat's or stand-down's payload is empty or ``echo`` (u64): the boot id of the last
authentic message its sender heard from the receiver (0: none yet).  A sync payload is
lb.ha.sync's.

:func:`decode` does the cheap checks first -- size, magic, version, payload length, field
ranges, the sender is the peer (not us), the channel and the message type belong to the socket
it came in on -- and computes the MAC only for what passed them.  The receiver then accepts a
message only if (boot, seq) is new (:class:`ReplayGuard`): the same boot with a sequence number
above the highest seen, or inside the 64-message window and not seen yet.  A heartbeat from a
new boot needs either a timestamp within ``max_skew`` of the receiver's clock, or the receiver's
own current boot id as its echo -- proof that it was made after the receiver started, whatever
the two clocks say, so a peer with a wrong clock is still heard (and reported) instead of being
taken for dead.  It also needs a timestamp later than the last accepted one of that stream (a
replay of an older boot's traffic is refused), unless it echoes the receiver's boot id and is no
boot a stream of the peer has left: a peer whose clock was ahead, set right and restarted, is
heard at once, not only once its clock has passed the old one.  A boot a stream has left is
refused (up to the last message taken from it, whatever its timestamp), and a boot that echoes
the receiver and is still heard is not replaced by one that does not.  Until a boot echoes the
receiver's boot id, every heartbeat of it needs a timestamp within ``max_skew``, not only its
first: a capture of a dead boot, replayed a message at a time to a receiver just restarted, is
refused once it falls max_skew behind (it held the receiver in BACKUP for as long as the
capture lasted).  And the highest sequence number taken of each of the peer's boots survives the
receiver's restart (:meth:`ReplayGuard.snapshot`, kept in a file by lb.ha.pulse): nothing up to
it is taken after the restart (a capture, replayed, passed for a live peer for up to max_skew).  A sync message is
accepted only from a boot whose heartbeats were accepted, never from a boot its stream has left,
and, for a new sync stream, not when older than the first heartbeat accepted from its boot (less
a grace): a receiver just restarted would take an old capture of the active's current boot again.
The key file holds one key, or a keyring (:func:`read_keys`) whose first key signs and any of
whose keys verifies, so the two directors change keys with reloads, one at a time, and never
refuse each other (docs/architecture.md, "Changing the HA key").
The receiver (lb.ha.pulse) acts on
the peer's state only from its newest message, and in its first half deadtime only from one made
after the peer heard from it (echoing its boot id).  Forged, replayed and malformed messages are
dropped and counted; none of them can start or stop a failover.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
from dataclasses import dataclass, field

MAGIC = b"LBHA"
VERSION = 1
HEADER = struct.Struct("!4sBBBBBBHQQQHH")
MAC_LEN = 32
MAX_DATAGRAM = 1400          # stays below any sane MTU: no IP fragments

# message types
T_HEARTBEAT, T_STANDDOWN, T_SYNC = 1, 2, 3
TYPE_NAMES = {T_HEARTBEAT: "heartbeat", T_STANDDOWN: "standdown", T_SYNC: "sync"}

# node roles/states as carried in the header
S_STARTING, S_BACKUP, S_ACTIVE, S_FAULT, S_LEAVING = 0, 1, 2, 3, 4
STATE_NAMES = {S_STARTING: "starting", S_BACKUP: "backup", S_ACTIVE: "active", S_FAULT: "fault",
               S_LEAVING: "leaving"}

F_LINK_OK = 0x1
F_MONO = 0x2                 # the header's mono field holds the sender's monotonic milliseconds
MONO_MOD = 1 << 32
MONO_ORDERED_S = (1 << 30) / 1000   # two readings this close (s, a quarter of the range) are ordered

NODE_PRIMARY, NODE_BACKUP = 0, 1
CH_PUBLIC, CH_PRIVATE = 0, 1
CHANNEL_NAMES = {CH_PUBLIC: "public", CH_PRIVATE: "private"}

WINDOW = 64


ECHO = struct.Struct("!Q")    # a heartbeat's or stand-down's payload
SOCKET_TYPES = {"heartbeat": (T_HEARTBEAT, T_STANDDOWN), "sync": (T_SYNC,)}


class DecodeError(Exception):
    """reason in .reason: 'malformed', 'wrong_channel' (not from the peer, or on the wrong channel
    or socket) or 'auth' (bad MAC)"""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Message:
    type: int
    state: int
    node: int
    channel: int
    boot: int
    seq: int
    ts_ns: int
    flags: int = 0
    payload: bytes = b""
    mono: int = 0          # with F_MONO: the sender's monotonic clock, ms modulo 2^32
    keyno: int = 0         # decoded: the receiver's key (its place in the keyring) that verified it

    @property
    def echo(self) -> int:
        """A heartbeat's or stand-down's echo (0 when it carries none)."""
        return ECHO.unpack(self.payload)[0] if self.type != T_SYNC and len(self.payload) == ECHO.size else 0


MAX_KEYS = 4                 # keys in a keyring: a forged datagram costs one MAC per key
KEYRING = b"# lb keyring"    # a key file's first line that makes it a keyring (read_keys)


def read_keys(path) -> tuple[bytes, ...]:
    """The shared keys, the first of which signs what this director sends; a message signed with
    any of them is authentic.  A file whose first line starts with KEYRING ("# lb keyring") is
    a keyring: a key on each line after it (at most MAX_KEYS; blank lines, lines starting with
    "#" and surrounding whitespace ignored), as `base64` or `openssl rand -hex` write them on
    one line.  Any other file is one key, all its bytes with surrounding whitespace removed, as
    before keyrings: a key that a tool wrapped over several lines means what it meant.  Each key
    16 bytes or more.  The file must not be readable by group or others, and must be ours
    (root's): whoever owns it can rewrite it, and a key lets its holder forge heartbeats and
    push configurations.  ValueError names the file (and the line) of what is wrong."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.geteuid():
            raise ValueError(f"HA key file {path} is owned by uid {st.st_uid}, not {os.geteuid()} "
                             f"(chown it to the user lb runs as)")
        if st.st_mode & 0o077:
            raise ValueError(f"HA key file {path} is accessible by group or others (chmod 600 it)")
        data = f.read(1 << 16)
    lines = data.split(b"\n")
    if lines[0].startswith(KEYRING):
        keys = [(n, line.strip()) for n, line in enumerate(lines[1:], 2)
                if line.strip() and not line.strip().startswith(b"#")]
        if not keys:
            raise ValueError(f"HA key file {path} is a keyring without a key: a key on each line after the first")
    else:
        keys = [(0, data.strip())]
    if len(keys) > MAX_KEYS:
        raise ValueError(f"HA key file {path} holds {len(keys)} keys; at most {MAX_KEYS}: the first signs, "
                         f"the others are accepted while the peer changes keys")
    for n, key in keys:
        if len(key) < 16:
            where = f" line {n}" if n else ""
            raise ValueError(f"HA key file {path}{where} holds {len(key)} bytes; at least 16 are needed"
                             + (" (a key wrapped over two lines?)" if n else ""))
    return tuple(key for _n, key in keys)


def new_boot_id() -> int:
    return secrets.randbits(64) or 1


def encode(key: bytes, m: Message) -> bytes:
    if len(m.payload) > 0xFFFF:
        raise ValueError("payload too large")
    mono = m.mono % MONO_MOD
    head = HEADER.pack(MAGIC, VERSION, m.type, m.state, m.flags, m.node, m.channel, mono >> 16, m.boot, m.seq,
                       m.ts_ns, len(m.payload), mono & 0xFFFF)
    body = head + m.payload
    return body + hmac.new(key, body, hashlib.sha256).digest()


def echo_payload(boot: int) -> bytes:
    return ECHO.pack(boot)


def decode(keys: tuple[bytes, ...] | bytes, data: bytes, *, sender: int | None = None, channel: int | None = None,
           types: tuple[int, ...] | None = None) -> Message:
    """The message in ``data``, or DecodeError.  ``keys``: the keyring (read_keys), or one key;
    the message's keyno says which of them verified it.  ``sender``/``channel``/``types``: what this socket
    takes (the peer's node id, its channel, the message types of its port); checked with the
    header, before the MAC."""
    if not HEADER.size + MAC_LEN <= len(data) <= MAX_DATAGRAM:
        raise DecodeError("malformed", f"{len(data)} bytes")
    magic, ver, typ, state, flags, node, chan, mono_hi, boot, seq, ts, plen, mono_lo = HEADER.unpack_from(data)
    if magic != MAGIC or ver != VERSION:
        raise DecodeError("malformed", "magic/version")
    if plen != len(data) - HEADER.size - MAC_LEN:
        raise DecodeError("malformed", "payload length")
    if typ not in TYPE_NAMES or state not in STATE_NAMES or node not in (0, 1) or chan not in (0, 1):
        raise DecodeError("malformed", "field out of range")
    if typ != T_SYNC and plen not in (0, ECHO.size):
        raise DecodeError("malformed", "heartbeat payload")
    if sender is not None and node != sender:
        # (node is 0 or 1: the receiver's own) two directors that each take themselves for the
        # same node -- [ha] primary/backup not the same in their files -- refuse each other and
        # both go active: say so (not authenticated yet: a forgery reads the same)
        me = "primary" if node == NODE_PRIMARY else "backup"
        raise DecodeError("wrong_channel", f"it says it is the {me} node, as this director is: do both "
                                           f"directors' [ha] tables name the same primary and backup?")
    if channel is not None and chan != channel:
        raise DecodeError("wrong_channel", f"{CHANNEL_NAMES[chan]} message on the {CHANNEL_NAMES[channel]} channel")
    if types is not None and typ not in types:
        raise DecodeError("wrong_channel", f"{TYPE_NAMES[typ]} message on the wrong port")
    body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    keyno = key_verifying(keys, body, mac)
    if keyno is None:
        raise DecodeError("auth", "bad HMAC")
    return Message(typ, state, node, chan, boot, seq, ts, flags, body[HEADER.size:], mono_hi << 16 | mono_lo, keyno)


def key_verifying(keys: tuple[bytes, ...] | bytes, body: bytes, mac: bytes, label: bytes = b"") -> int | None:
    """The place in ``keys`` (a keyring, or one key) of the key whose HMAC-SHA256 of label + body
    is ``mac`` (None: none)."""
    for n, key in enumerate((keys,) if isinstance(keys, bytes) else keys):
        if hmac.compare_digest(hmac.new(key, label + body, hashlib.sha256).digest(), mac):
            return n
    return None


def mono_ms(seconds: float) -> int:
    """A monotonic clock's reading as the header's mono field carries it."""
    return int(seconds * 1000) % MONO_MOD


def mono_before(a: int, b: int) -> bool:
    """Whether mono ``a`` is earlier than ``b`` (serial number arithmetic, RFC 1982: right for
    readings less than 24 days apart)."""
    return 0 < (b - a) % MONO_MOD < MONO_MOD // 2


@dataclass
class _Stream:
    boot: int = 0
    top: int = -1          # highest sequence number accepted
    bits: int = 0          # bit i set: top - i was accepted
    ts_ns: int = 0         # timestamp of the last accepted message
    first_ts_ns: int = 0   # timestamp of the first message accepted from this boot
    heard_ns: int = 0      # our wall clock when a message of it was last accepted
    echoed: bool = False   # a heartbeat of it echoed our boot id: it runs now
    leaving: bool = False  # it said it stops
    floor_ns: int = 0      # a sync stream: no message of it older than this (its boot's first heartbeat, less a grace)


PRIOR_BOOTS = 16             # boots of a heartbeat stream whose last sequence number a restart keeps (snapshot)
RETIRED_BOOTS = 16           # boots a sync stream remembers having left
LEFT_BOOTS = 1024            # boots a heartbeat stream remembers having left (a restart each)


@dataclass
class ReplayGuard:
    """Per (sender node, channel, heartbeat or sync): refuses anything already accepted or older
    than the window; see the module docstring for a new boot.

    A heartbeat stream remembers the last LEFT_BOOTS boots it left with their windows, so a
    captured old heartbeat stays refused even when its timestamp is later than the new boot's
    (the peer's clock was ahead and has been set right).  One of them comes back only with a
    message after the last taken of it (a peer's boot never really comes back: this undoes a
    switch that a replay caused).  A new boot older by its timestamps than the stream's is taken
    when it echoes our boot id and no stream of the peer has left it: made after we started, by
    a boot not seen ending (a restart with the clock set right is heard at once, not only once
    its clock passes the old one's); until it echoes us it is 'stale', echoed back as a boot
    beyond max_skew is.  And while the stream's boot has echoed our boot id (it runs now) and is
    still heard (within ``quiet_ns``, and it has not said it leaves), another boot that does not
    echo ours does not replace it: an older boot's capture from before we started, whose clock
    was ahead of the live one's (a peer just restarted echoes us from its second heartbeat on).

    A sync stream remembers the boots it left and never takes one of them again: otherwise a
    replayed sync datagram of a boot whose heartbeats another channel still held could move it
    back and be accepted a second time, installing its connections again.  Every sync message
    also needs a timestamp no older than the first heartbeat accepted from its boot, less
    ``sync_grace_ns`` (the stream's floor): the receiver just restarted has no window for the
    active's boot, and an hour-old capture of it would be installed again -- as the stream's
    first message, or later, its sequence number inside the window below a fresh one's."""

    max_skew_ns: int = 30_000_000_000
    sync_grace_ns: int = 1_000_000_000
    quiet_ns: int = 1_000_000_000
    streams: dict = field(default_factory=dict)
    left: dict = field(default_factory=dict)      # sync stream key -> the boots it left, oldest first
    retired: dict = field(default_factory=dict)   # heartbeat stream key -> {boot: its _Stream}, oldest first
    # heartbeat stream key -> {boot: the highest sequence number taken}: what an earlier process
    # of ours had (restore()); nothing up to it is news after a restart
    prior: dict = field(default_factory=dict)

    def check(self, m: Message, now_wall_ns: int, my_boot: int = 0) -> str | None:
        """None if fresh (and records it), else the reason: 'replay' or 'stale' (a new boot not
        proven fresh -- its clock off by more than max_skew, or its timestamp older than the
        stream's boot's -- that does not echo ``my_boot``: echoed, it would be taken)."""
        sync = m.type == T_SYNC
        key = (m.node, m.channel, sync)
        if not sync and m.seq <= self.prior.get(key, {}).get(m.boot, -1):
            # made before the last one our process took before a restart: a capture of what it
            # heard (or missed: old news either way), replayed to the new one.  The peer's own
            # messages go on above it
            return "replay"
        st = self.streams.get(key)
        if st is None or st.boot != m.boot:
            if sync:
                why = self._new_sync_boot(key, st, m)
                if why is not None:
                    return why
                if st is not None:
                    left = self.left.setdefault(key, [])
                    left.append(st.boot)
                    del left[:-RETIRED_BOOTS]
                self.streams[key] = _Stream(m.boot, m.seq, 1, m.ts_ns, m.ts_ns, floor_ns=self._sync_floor(m))
                return None
            why = self._new_heartbeat_boot(key, st, m, now_wall_ns, my_boot)
            if why is not None:
                return why
            retired = self.retired.setdefault(key, {})
            back = retired.pop(m.boot, None)
            if st is not None:
                retired[st.boot] = st
                while len(retired) > LEFT_BOOTS:
                    del retired[next(iter(retired))]
            if back is None:
                st = self.streams[key] = _Stream(m.boot, m.seq, 1, m.ts_ns, m.ts_ns)
                self._heard(st, m, now_wall_ns, my_boot)
                return None
            self.streams[key] = st = back       # its window as it was: nothing it had is taken again
        elif not sync and not st.echoed and len(m.payload) == ECHO.size \
                and not (my_boot and m.echo == my_boot) and abs(now_wall_ns - m.ts_ns) > self.max_skew_ns:
            # a boot that never echoed us is fresh by its clock alone, so on every message, not
            # only its first: a capture of a dead boot's heartbeats replayed one at a time to a
            # receiver just restarted (each within deadtime) falls behind max_skew and stops there.
            # (A peer too old to echo is taken as before.)
            return "stale"
        elif sync and m.seq <= st.top and m.ts_ns < min(st.floor_ns, self._sync_floor(m) or st.floor_ns):
            # inside the window, but made before its boot's first heartbeat we accepted: a
            # capture from before we started, refused as a new stream's first one would be
            # (the floor follows the boot's heartbeats down when its clock was stepped back).
            # One numbered above the stream's top was sent after a message already taken, so
            # after we started, whatever its clock says: the clock stepped back since
            return "replay"
        if m.seq > st.top:
            if not sync and m.ts_ns < st.first_ts_ns:
                # a newer message of the same boot made earlier by its clock: the sender's clock
                # was stepped back (NTP).  Its sync messages are as early: their floor follows
                st.first_ts_ns = m.ts_ns
            shift = m.seq - st.top
            st.bits = ((st.bits << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            st.top = m.seq
        else:
            off = st.top - m.seq
            if off >= WINDOW or st.bits & (1 << off):
                return "replay"
            st.bits |= 1 << off
        st.ts_ns = max(st.ts_ns, m.ts_ns)
        if not sync:
            self._heard(st, m, now_wall_ns, my_boot)
        return None

    @staticmethod
    def _heard(st: _Stream, m: Message, now_wall_ns: int, my_boot: int) -> None:
        st.heard_ns = now_wall_ns
        st.echoed = st.echoed or bool(my_boot and m.echo == my_boot)
        st.leaving = st.leaving or m.state == S_LEAVING

    def _new_heartbeat_boot(self, key, st: _Stream | None, m: Message, now_wall_ns: int, my_boot: int) -> str | None:
        gone = self.retired.get(key, {}).get(m.boot)
        if gone is not None and (m.seq <= gone.top or m.ts_ns <= gone.ts_ns):
            return "replay"      # a boot this stream left: only what it sent after the last taken of it
        echoed = bool(my_boot) and m.echo == my_boot
        if not (echoed or abs(now_wall_ns - m.ts_ns) <= self.max_skew_ns):
            return "stale"
        if st is None:
            # a channel's first stream: not a boot another channel has seen the peer leave (its
            # heartbeats held back on this segment, replayed once its successor is dead too)
            if any(k[0] == m.node and m.boot in r for k, r in self.retired.items()):
                return "replay"
            return None
        if st.echoed and not echoed and self._still_heard(st, now_wall_ns):
            return "replay"      # the live boot knows us, this one does not (yet)
        if m.ts_ns <= st.ts_ns:
            # older than the boot it would replace: an older boot's message replayed, or a restart
            # with the clock set back -- taken once it echoes us (made after we started) if it is a
            # boot no stream of the peer has left, or this stream's, back with new messages, and
            # the one it would replace never echoed us (a capture that pushed it out while it had
            # not yet heard us).  Until then 'stale': it needs our echo as a skewed boot does
            if not echoed:
                return "stale"
            if gone is not None:
                if st.echoed:
                    return "replay"
            elif any(k[0] == m.node and m.boot in r for k, r in self.retired.items()):
                return "replay"
        return None

    def _still_heard(self, st: _Stream, now_wall_ns: int) -> bool:
        """A stream still heard: a message of it accepted within quiet_ns, and no "leaving"."""
        return not st.leaving and 0 <= now_wall_ns - st.heard_ns < self.quiet_ns

    def live(self, node: int, boot: int, now_wall_ns: int) -> bool:
        """Whether a heartbeat stream of ``node``'s ``boot`` is still heard."""
        return any(k[0] == node and not k[2] and s.boot == boot and self._still_heard(s, now_wall_ns)
                   for k, s in self.streams.items())

    def _sync_floor(self, m: Message) -> int | None:
        """The oldest timestamp a sync message of m's boot may carry: the first heartbeat we
        accepted from that boot, less sync_grace_ns (None: no heartbeat of it accepted)."""
        first = [s.first_ts_ns for k, s in self.streams.items() if k[0] == m.node and not k[2] and s.boot == m.boot]
        return min(first) - self.sync_grace_ns if first else None

    def _new_sync_boot(self, key, st: _Stream | None, m: Message) -> str | None:
        if m.boot in self.left.get(key, ()):
            return "replay"      # a boot this stream has left
        floor = self._sync_floor(m)
        if floor is None:
            return "stale"       # not a boot whose heartbeats we accepted
        if m.ts_ns < floor:
            return "replay"      # made before its boot's first heartbeat we accepted: a capture
        return None

    def snapshot(self) -> dict:
        """What restore() takes, JSON-able: per heartbeat stream, the highest sequence number
        taken of its boot and of the last PRIOR_BOOTS boots it left (and of those an earlier
        process had)."""
        out = {}
        for key in {k for k in self.streams if not k[2]} | set(self.retired) | set(self.prior):
            tops = dict(self.prior.get(key, {}))
            streams = list(self.retired.get(key, {}).values())[-PRIOR_BOOTS:]
            if key in self.streams:
                streams.append(self.streams[key])
            for st in streams:
                top = max(st.top, tops.pop(st.boot, -1))
                tops[st.boot] = top              # the newest go last
            out[f"{key[0]}/{key[1]}"] = [[boot, top] for boot, top in list(tops.items())[-PRIOR_BOOTS:]]
        return {"version": 1, "heartbeat": out}

    def restore(self, data: dict) -> None:
        """The sequence numbers of snapshot(), from an earlier process of ours: a heartbeat of
        one of those boots numbered up to it is refused as a replay.  ValueError for what is
        not a snapshot."""
        try:
            if data.get("version") != 1:
                raise ValueError(f"version {data.get('version')!r}")
            prior = {}
            for name, tops in data["heartbeat"].items():
                node, chan = (int(x) for x in name.split("/"))
                if node not in (0, 1) or chan not in (0, 1):
                    raise ValueError(f"stream {name}")
                prior[(node, chan, False)] = {int(boot): int(top) for boot, top in tops[-PRIOR_BOOTS:]}
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a replay guard snapshot: {e}") from None
        self.prior = prior

    def newest(self, m: Message) -> bool:
        """Whether m, just accepted by check(), moved its stream's sequence number up (a late one
        inside the window is older news)"""
        st = self.streams.get((m.node, m.channel, m.type == T_SYNC))
        return st is not None and st.boot == m.boot and st.top == m.seq
