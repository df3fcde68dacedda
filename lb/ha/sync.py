"""Connection sync: the active director streams new and changed connection entries (and
persistence templates) to the backup, which installs them in its own pinned lb_conns/lb_persist.

What goes on the wire: addresses, not ids (real server ids are local to each director's data
plane), and the entry's age instead of its timestamp (the two directors' monotonic clocks are
unrelated).  Each datagram is one authenticated T_SYNC message (lb.ha.heartbeat) of at most
MAX_DATAGRAM bytes holding up to ~18 records.

When an entry is sent (Exporter):
  - it is new, or its real server, state or flags changed since it was last sent;
  - or it has been used again and half its timeout (capped at REFRESH_MAX_S) has passed since it
    was last sent, so the backup's copy does not expire while the flow lives;
  - everything again when the peer (re)appears, restarts (a new boot id, even within a
    deadtime: lb.ha.pulse) or this node becomes active (full resync).

Bounds: at most ``sync_rate`` records per second (what does not fit waits for the next scan,
new and changed entries first); the exporter remembers one small tuple per live entry (bounded
by the connection table size) and forgets entries that left the table.

At a role change: a director that steps down (a stand-down, its link in FAULT, `lb stop` before
its "leaving") sends what it had not yet -- new and changed entries since its last scan, those
that waited for budget -- in one last scan (one scan's budget, within a deadtime of the step-down;
at a stop, within Pulse.STOP_FLUSH_TIMEOUT), and the director that takes over installs the
records it received before its takeover first, before it takes the addresses (waiting at most
Pulse.SYNC_DRAIN_TIMEOUT), and those that come until a deadtime after it (what was still in its
socket buffer, the old active's last scan: at most the receive queue's 256 datagrams at a
time); after that the active's own table wins and the peer's records are counted as skipped
(two actives).  Both were dropped at the switch, and
the connections made just before a takeover were reset by the new active.  Within that deadtime
the new active takes only what its own data plane has not made or changed since the takeover
(IPVS's master takes no sync message): a record of a connection or template it has, embryonic or
not, stamped since then is skipped and counted; copies from before the takeover are updated
(Pulse.owned_since_ns, ConnTable.import_conns).  It overwrote them: a connection scheduled
here after the takeover had its next packet sent to the real server the old active's record of
the same 5-tuple named.

Loss: UDP, no acknowledgements.  A lost datagram loses its records until their next change or
refresh (new connections: at most REFRESH_MAX_S later, or never if idle); such a connection
breaks at failover exactly as with IPVS's sync daemon (the backup answers its next packet with
RST: a non-SYN packet of an unknown flow is not scheduled).  Backup-side counting: installed
entries count on their real servers' ActiveConn/InActConn at once (as IPVS's backup does), via
lb_real_swept.  Deletions are not synced: the backup's copies expire by their own timeouts.

Wire format (the payload of one T_SYNC message, network order): u16 record count, then the
records, each starting with its kind byte:

    K_CONN (73 bytes):    kind proto family state flags | client addr(16) port(2) |
                          VIP(16) port(2) | real server addr(16) port(2) | age ms(4) timeout s(4) |
                          client MAC(6)
    K_TEMPLATE (67 bytes): kind proto family | client addr(16) | VIP(16) port(2) | fwmark(4) |
                          real server addr(16) port(2) | age ms(4) timeout s(4)

An IPv4 address takes the first 4 of its 16 bytes, the rest zero.  The receiver checks a whole
payload before any of it is installed (:func:`decode_batch`): count, lengths, kinds, protocol
(TCP, UDP; a firewall-mark template 0), family (4, 6, with zero padding), state (below N_STATES), flags (inactive,
persistent only), timeout (1 s .. MAX_TIMEOUT_S); a payload with one bad record is refused whole
(counted, logged at a bounded rate).  :func:`admit` then drops records already older than their
timeout; the others keep their whole age (one older than the backup's uptime gets a stamp that
wraps below the clock's zero, reckoned modulo 2^64: layout.elapsed_ns).
"""
from __future__ import annotations

import ipaddress
import struct

from lb.dataplane.layout import CONN_F_INACTIVE, CONN_F_PERSIST, N_TIMEOUTS, elapsed_ns

from .heartbeat import HEADER, MAC_LEN, MAX_DATAGRAM

REFRESH_MAX_S = 60.0
REFRESH_MIN_S = 1.0

K_CONN, K_TEMPLATE = 1, 2
# kind, proto, family, state, flags | caddr cport vaddr vport raddr rport | age_ms timeout | client mac
CONN_REC = struct.Struct("!BBBBB16sH16sH16sHII6s")
TEMPLATE_REC = struct.Struct("!BBB16s16sHI16sHII")
PAYLOAD_MAX = MAX_DATAGRAM - HEADER.size - MAC_LEN - 2
COUNT = struct.Struct("!H")
PROTOS = (6, 17)
N_STATES = N_TIMEOUTS            # IPVS's TCP states and UDP's: the lb_timeouts slots
SYNC_FLAGS = CONN_F_INACTIVE | CONN_F_PERSIST
MAX_TIMEOUT_S = 2147483           # IPVS's and the config's longest timeout
_RECORDS = {K_CONN: CONN_REC, K_TEMPLATE: TEMPLATE_REC}


def _pa(a) -> bytes:
    return a.packed.ljust(16, b"\0")


def encode_conn(r) -> bytes:
    proto, caddr, cport, vaddr, vport, raddr, rport, state, flags, age, timeout, cmac = r
    return CONN_REC.pack(K_CONN, proto, caddr.version, state, flags, _pa(caddr), cport, _pa(vaddr), vport,
                         _pa(raddr), rport, min(age // 1_000_000, 0xFFFFFFFF), timeout, cmac)


def encode_template(r) -> bytes:
    proto, caddr, vaddr, vport, fwmark, raddr, rport, age, timeout = r
    return TEMPLATE_REC.pack(K_TEMPLATE, proto, caddr.version, _pa(caddr), _pa(vaddr), vport, fwmark,
                             _pa(raddr), rport, min(age // 1_000_000, 0xFFFFFFFF), timeout)


def pack_batches(records: list[bytes]) -> list[bytes]:
    """Records -> payloads: u16 count, then the records, each payload within one datagram."""
    out, cur = [], []
    size = 0
    for rec in records:
        if cur and size + len(rec) > PAYLOAD_MAX:
            out.append(COUNT.pack(len(cur)) + b"".join(cur))
            cur, size = [], 0
        cur.append(rec)
        size += len(rec)
    if cur:
        out.append(COUNT.pack(len(cur)) + b"".join(cur))
    return out


def record_count(payload: bytes) -> int:
    """The records a payload says it holds (its u16 count), at most as many as its length can
    hold; 0 for one too short for a count.  For counting a payload that is dropped unread."""
    if len(payload) < COUNT.size:
        return 0
    return min(COUNT.unpack_from(payload)[0], (len(payload) - COUNT.size) // TEMPLATE_REC.size)


def _addr(raw: bytes, fam: int):
    if fam == 4:
        if any(raw[4:]):
            raise ValueError("IPv4 address with non-zero padding")
        return ipaddress.IPv4Address(raw[:4])
    return ipaddress.IPv6Address(raw)


def _common(proto: int, fam: int, timeout: int, protos=PROTOS) -> None:
    if proto not in protos:
        raise ValueError(f"protocol {proto}")
    if fam not in (4, 6):
        raise ValueError(f"address family {fam}")
    if not 1 <= timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout {timeout}")


def decode_batch(payload: bytes) -> tuple[list, list]:
    """Payload -> (connection records, template records) as XdpDataplane.import_conns takes them;
    ValueError (naming the first bad record) unless every record of it is well formed."""
    if len(payload) < COUNT.size:
        raise ValueError("short sync payload")
    (n,) = COUNT.unpack_from(payload)
    off = COUNT.size
    conns, temps = [], []
    for i in range(n):
        if off >= len(payload):
            raise ValueError(f"truncated sync payload: {i} of {n} records")
        kind = payload[off]
        rec = _RECORDS.get(kind)
        if rec is None:
            raise ValueError(f"record {i}: unknown kind {kind}")
        if off + rec.size > len(payload):
            raise ValueError(f"record {i}: truncated ({len(payload) - off} of {rec.size} bytes)")
        try:
            if kind == K_CONN:
                (_, proto, fam, state, flags, ca, cp, va, vp, ra, rp, age_ms, timeout,
                 cmac) = CONN_REC.unpack_from(payload, off)
                _common(proto, fam, timeout)
                if state >= N_STATES:
                    raise ValueError(f"state {state}")
                if flags & ~SYNC_FLAGS:
                    raise ValueError(f"flags {flags:#x}")
                conns.append((proto, _addr(ca, fam), cp, _addr(va, fam), vp, _addr(ra, fam), rp, state, flags,
                              age_ms * 1_000_000, timeout, cmac))
            else:
                (_, proto, fam, ca, va, vp, fwmark, ra, rp, age_ms, timeout) = TEMPLATE_REC.unpack_from(payload, off)
                # a firewall-mark service's template is keyed by its mark, protocol 0 (as IPVS's)
                _common(proto, fam, timeout, PROTOS + (0,) if fwmark else PROTOS)
                temps.append((proto, _addr(ca, fam), _addr(va, fam), vp, fwmark, _addr(ra, fam), rp,
                              age_ms * 1_000_000, timeout))
        except ValueError as e:
            raise ValueError(f"record {i}: {e}") from None
        off += rec.size
    if off != len(payload):
        raise ValueError(f"{len(payload) - off} trailing bytes in sync payload")
    return conns, temps


def admit(conns: list, temps: list, now_ns: int) -> tuple[list, list, int]:
    """The records to install at ``now_ns`` (the backup's monotonic clock): those already older
    than their timeout are dropped (counted in the third value); the others keep their ages
    whole, also one older than the backup's uptime (a long-lived connection, a backup just
    booted): its stamp wraps below zero as a u64, which the data path and the sweep reckon
    modulo 2^64 (layout.elapsed_ns), so it expires on the backup when it would on the primary.
    The age is field 9 of a connection record and field 7 of a template record (from 0); the
    timeout follows it."""
    out_c, out_t, expired = [], [], 0
    for out, items, at in ((out_c, conns, 9), (out_t, temps, 7)):
        for r in items:
            age, timeout = r[at], r[at + 1]
            if age > timeout * 1_000_000_000:
                expired += 1
                continue
            out.append(r)
    return out_c, out_t, expired


class Exporter:
    """Decides which entries to send; pure (no sockets, no maps), so it is unit-testable.
    select() runs in an executor thread (pulse's _sync_scan), reset() on the event loop."""

    def __init__(self, rate: int, interval: float):
        self.budget = max(1, int(rate * interval))
        self.sent: dict[bytes, tuple] = {}     # raw key -> (digest, last_ns when sent)
        self.pending = 0                       # records that waited for budget in the last scan
        self.total = 0
        self._forget = False                   # reset() asked: the next select() sends everything

    def reset(self) -> None:
        # a flag, not sent.clear(): a select() in its thread may be walking sent right now
        self._forget = True

    def select(self, conns: list, temps: list) -> list[bytes]:
        """Encoded records to send now (at most the budget); remembers them as sent."""
        if self._forget:
            self._forget = False
            self.sent.clear()
        urgent, refresh, live = [], [], set()
        for kind, items in ((K_CONN, conns), (K_TEMPLATE, temps)):
            for k, last_ns, rec in items:
                tag = (kind, k)
                live.add(tag)
                if kind == K_CONN:
                    digest = (rec[5], rec[6], rec[7], rec[8])
                    timeout = rec[10]
                else:
                    digest = (rec[5], rec[6])
                    timeout = rec[8]
                prev = self.sent.get(tag)
                if prev is None or prev[0] != digest:
                    urgent.append((tag, digest, last_ns, kind, rec))
                else:
                    period = min(max(timeout / 2, REFRESH_MIN_S), REFRESH_MAX_S) * 1e9
                    # the data path's stamps, modulo 2^64: a synced entry older than this node's
                    # uptime was stamped below the clock's zero (layout.elapsed_ns)
                    if elapsed_ns(last_ns, prev[1]) >= period:
                        refresh.append((tag, digest, last_ns, kind, rec))
        for tag in [t for t in self.sent if t not in live]:
            del self.sent[tag]
        chosen = (urgent + refresh)[: self.budget]
        self.pending = len(urgent) + len(refresh) - len(chosen)
        out = []
        for tag, digest, last_ns, kind, rec in chosen:
            self.sent[tag] = (digest, last_ns)
            out.append(encode_conn(rec) if kind == K_CONN else encode_template(rec))
        self.total += len(out)
        return out
