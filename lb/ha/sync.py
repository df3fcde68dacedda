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
  - everything again when the peer (re)appears or this node becomes active (full resync).

Bounds: at most ``sync_rate`` records per second (what does not fit waits for the next scan,
new and changed entries first); the exporter remembers one small tuple per live entry (bounded
by the connection table size) and forgets entries that left the table.

Loss: UDP, no acknowledgements.  A lost datagram loses its records until their next change or
refresh (new connections: at most REFRESH_MAX_S later, or never if idle); such a connection
breaks at failover exactly as with IPVS's sync daemon (the backup answers its next packet with
RST: a non-SYN packet of an unknown flow is not scheduled).  Backup-side counting: installed
entries count on their real servers' ActiveConn/InActConn at once (as IPVS's backup does), via
lb_real_swept.  Deletions are not synced: the backup's copies expire by their own timeouts.
"""
from __future__ import annotations

import ipaddress
import struct

from .heartbeat import HEADER, MAC_LEN, MAX_DATAGRAM

REFRESH_MAX_S = 60.0
REFRESH_MIN_S = 1.0

K_CONN, K_TEMPLATE = 1, 2
# kind, proto, family, state, flags | caddr cport vaddr vport raddr rport | age_ms timeout | client mac
CONN_REC = struct.Struct("!BBBBB16sH16sH16sHII6s")
TEMPLATE_REC = struct.Struct("!BBB16s16sHI16sHII")
PAYLOAD_MAX = MAX_DATAGRAM - HEADER.size - MAC_LEN - 2


def _pa(a) -> bytes:
    return a.packed.ljust(16, b"\0")


def _ua(raw: bytes, fam: int):
    return ipaddress.IPv4Address(raw[:4]) if fam == 4 else ipaddress.IPv6Address(raw)


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
            out.append(struct.pack("!H", len(cur)) + b"".join(cur))
            cur, size = [], 0
        cur.append(rec)
        size += len(rec)
    if cur:
        out.append(struct.pack("!H", len(cur)) + b"".join(cur))
    return out


def decode_batch(payload: bytes) -> tuple[list, list]:
    """Payload -> (connection records, template records) as XdpDataplane.import_conns takes them."""
    if len(payload) < 2:
        raise ValueError("short sync payload")
    (n,) = struct.unpack_from("!H", payload)
    off = 2
    conns, temps = [], []
    for _ in range(n):
        if off >= len(payload):
            raise ValueError("truncated sync payload")
        kind = payload[off]
        if kind == K_CONN:
            (_, proto, fam, state, flags, ca, cp, va, vp, ra, rp, age_ms, timeout,
             cmac) = CONN_REC.unpack_from(payload, off)
            off += CONN_REC.size
            conns.append((proto, _ua(ca, fam), cp, _ua(va, fam), vp, _ua(ra, fam), rp, state, flags,
                          age_ms * 1_000_000, timeout, cmac))
        elif kind == K_TEMPLATE:
            (_, proto, fam, ca, va, vp, fwmark, ra, rp, age_ms, timeout) = TEMPLATE_REC.unpack_from(payload, off)
            off += TEMPLATE_REC.size
            temps.append((proto, _ua(ca, fam), _ua(va, fam), vp, fwmark, _ua(ra, fam), rp, age_ms * 1_000_000,
                          timeout))
        else:
            raise ValueError(f"unknown sync record kind {kind}")
    if off != len(payload):
        raise ValueError("trailing bytes in sync payload")
    return conns, temps


class Exporter:
    """Decides which entries to send; pure (no sockets, no maps), so it is unit-testable."""

    def __init__(self, rate: int, interval: float):
        self.budget = max(1, int(rate * interval))
        self.sent: dict[bytes, tuple] = {}     # raw key -> (digest, last_ns when sent)
        self.pending = 0                       # records that waited for budget in the last scan
        self.total = 0

    def reset(self) -> None:
        self.sent.clear()

    def select(self, conns: list, temps: list) -> list[bytes]:
        """Encoded records to send now (at most the budget); remembers them as sent."""
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
                    if last_ns - prev[1] >= period:
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
