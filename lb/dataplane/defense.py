"""IPVS's defenses against floods for the XDP data plane (ip_vs_ctl.c defense_work and
update_defense_level, once a second), and the watch on the data path's drop counters.

The kernel measures its free memory against amemthresh; here the resource a flood exhausts is
the embryonic connection table (bpf/lb_embryo.h): established connections live apart and a flood
cannot evict them, but a flood fast enough to evict embryos within a round trip costs new
clients their handshakes.  So "available memory" is the embryonic table's free entries: the
last census the sweep took (its entries, and lb_ct_events just before its dump) moved on by
what BPF counted since (made - promoted - deleted) and by what the control plane deleted
since (the sweep's expiries after its dump, drop_entry's); LRU evictions are not counted, so
the estimate is capped at the table's size and corrected by the next census, at most 5 s later.

Each strategy's mode is IPVS's: 0 never, 1 automatic (becomes 2 while engaged), 3 always.
- drop_packet: lb_globals[LB_G_DROP_RATE] = amemthresh / (amemthresh - free) while engaged
  (am_droprate in mode 3): BPF drops 1 in that many new connections' first packets.
- secure_tcp: lb_globals[LB_G_DEFENSE] |= LB_DEF_SECURE_TCP: BPF uses tcp_states_dos.
- drop_entry: every second, a random 1/32 of the embryonic table's entries is looked at and
  those IPVS's ip_vs_random_dropentry would drop are deleted (TCP in SYN_RECV or SYNACK, UDP idle
  for 60 s).  IPVS also drops idle ESTABLISHED entries with few packets; established connections
  live in lb_conns here and no defense touches them.

A log line says when a defense (or, with none configured, the pressure itself) begins and ends,
and when the configuration sets one to mode 3 (always on: at the start or a reload);
the drop and refusal counters of the data path are logged when they move, at most once per
LOG_EVERY seconds each."""
from __future__ import annotations

import logging
import random
import time
import zlib

from lb.config.model import Defense

from . import layout as L
from .conntable import ConnTable, ct_events
from .reader import read_counters
from .txn import MapTxn

log = logging.getLogger("lb.dataplane")

STRATEGIES = ("drop_entry", "drop_packet", "secure_tcp")
DROP_ENTRY_SLICES = 32          # IPVS: ip_vs_conn_tab_size >> 5 buckets a second
UDP_IDLE_NS = 60_000_000_000    # IPVS todrop_entry: an entry active in the last 60 s stays
LOG_EVERY = 10.0
# lb_counters that mean a packet was dropped or an insert refused (logged when they move)
WATCHED = ("conn_table_full", "persist_table_full", "drop_packet", "icmp_rate_limited",
           "too_big_unanswered", "real_server_gone", "xmit_failed", "tail_call_failed")


class Defender:
    def __init__(self, maps: dict, txn: MapTxn, conns: ConnTable, size: int):
        self.maps = maps
        self.txn = txn
        self.conns = conns
        self.size = size                        # the embryonic table's entries
        self.cfg = Defense()
        self.modes = dict.fromkeys(STRATEGIES, 0)   # as IPVS's sysctls read: 1 <-> 2 when engaged
        self.pressure = False                   # free < amemthresh at the last tick
        self.drop_rate = 0
        self.dropped = 0                        # entries drop_entry deleted (lb status)
        self._base: tuple[int, dict[str, int], int] | None = None   # (entries, events, deleted) without a census
        self._counts: dict[str, int] | None = None
        self._logged: dict[str, tuple[float, int]] = {}       # counter -> (when, value) last logged
        self._rng = random.Random()

    def configure(self, cfg: Defense) -> None:
        """The config's [defense] (at every apply); an automatic mode keeps its state."""
        self.cfg = cfg
        for name in STRATEGIES:
            want = getattr(cfg, name)
            if not (want in (1, 2) and self.modes[name] in (1, 2)):
                if self.engaged(name) and want in (0, 1):
                    log.warning("defense: %s ended: set to %d by the configuration", name, want)
                elif want == 3 and self.modes[name] != 3:
                    # engaged from now on without a transition for tick() to log
                    extra = f", dropping 1 in {cfg.am_droprate} new connections" \
                        if name == "drop_packet" and cfg.am_droprate else ""
                    log.warning("defense: %s always on (mode 3, set by the configuration)%s", name, extra)
                self.modes[name] = want

    def free(self) -> int:
        """The embryonic table's free entries, estimated (see the module docstring)."""
        ev = ct_events(self.maps)
        census = self.conns.embryo_census
        if census is not None:
            entries, ev0, deleted = census[0], census[1], census[3]
        else:
            if self._base is None:          # a fresh start: count once, then follow the tallies
                self._base = (len(self.maps["lb_conns_embryo"].items()), ev, self.conns.embryo_deleted)
            entries, ev0, deleted = self._base
        live = entries + (ev["embryo_new"] - ev0["embryo_new"]) - (ev["embryo_promoted"] - ev0["embryo_promoted"]) \
            - (ev["embryo_gone"] - ev0["embryo_gone"]) - (self.conns.embryo_deleted - deleted)
        return self.size - max(0, min(self.size, live))

    def tick(self, now: float | None = None) -> None:
        """One second of defense_work: the level from the free entries, the data path's switches,
        drop_entry's slice, and the log lines."""
        now = time.monotonic() if now is None else now
        free = self.free()
        thresh = self.cfg.threshold(self.size)
        nomem = free < thresh
        was = {n: self.engaged(n) for n in STRATEGIES}
        for name in STRATEGIES:
            mode = self.modes[name]
            if mode == 1 and nomem:
                self.modes[name] = 2
            elif mode == 2 and not nomem:
                self.modes[name] = 1
        rate = 0
        if self.modes["drop_packet"] == 2:
            rate = thresh // max(1, thresh - free)
        elif self.modes["drop_packet"] == 3:
            rate = self.cfg.am_droprate
        self.drop_rate = rate
        self._set_global(L.G_DROP_RATE, rate)
        self._set_global(L.G_DEFENSE, L.DEF_SECURE_TCP if self.engaged("secure_tcp") else 0)
        if self.engaged("drop_entry"):
            self.drop_entries()
        state = f"the embryonic table has {free} of {self.size} entries free (amemthresh {thresh})"
        for name in STRATEGIES:
            if self.engaged(name) != was[name] and self.modes[name] != 3:
                extra = f", dropping 1 in {rate} new connections" if name == "drop_packet" and rate else ""
                log.warning("defense: %s %s: %s%s", name, "engaged" if self.engaged(name) else "ended", state, extra)
        if nomem != self.pressure:
            self.pressure = nomem
            if not any(self.modes[n] for n in STRATEGIES):
                log.warning("defense: new connections %s: %s; established connections are kept; no "
                            "defense is configured ([defense])", "flooding" if nomem else "back to normal", state)
        self.watch(now)

    def engaged(self, name: str) -> bool:
        return self.modes[name] in (2, 3)

    def _set_global(self, idx: int, value: int) -> None:
        k, v = L.U32.pack(idx), L.U32.pack(value)
        if self.maps["lb_globals"].get(k) != v:
            self.txn.set("lb_globals", k, v)

    def drop_entries(self) -> int:
        """IPVS ip_vs_random_dropentry over a random 1/32 of the embryonic table: TCP entries in
        SYN_RECV or SYNACK, UDP entries idle 60 s (their NAT reverse entries with them, unless
        another connection's by then), each taken off its real server's counters."""
        m = self.maps["lb_conns_embryo"]
        part = self._rng.randrange(DROP_ENTRY_SLICES)
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        swept: dict[int, list[int]] = {}
        n = 0
        for k, v in m.items():
            if zlib.crc32(k) % DROP_ENTRY_SLICES != part:
                continue
            c = L.Conn.unpack(v)
            if c.flags & L.CONN_F_OUT:
                continue
            key = L.ConnKey.unpack(k)
            if key.proto == 6:
                if c.state not in (L.TCP_S["SYN_RECV"], L.TCP_S["SYNACK"]):
                    continue
            elif L.elapsed_ns(now, c.last_ns) < UDP_IDLE_NS:
                continue
            if not m.delete(k):
                continue                        # the data path took it first
            n += 1
            self.conns.embryo_deleted += 1
            swept.setdefault(c.real, [0, 0, 0])[1 if c.flags & L.CONN_F_INACTIVE else 0] += 1
            self.conns.drop_reply_entry(k, c.real)   # only if it is still this connection's
        self.conns.add_swept(swept)
        self.dropped += n
        return n

    def watch(self, now: float) -> None:
        """A log line for each drop or refusal counter that moved, at most once per LOG_EVERY
        seconds per counter, with what it counted since its last line."""
        counts = read_counters(self.maps)
        if self._counts is None:
            self._counts = counts
            self._logged = {k: (now - LOG_EVERY, v) for k, v in counts.items()}
            return
        self._counts = counts
        for name in WATCHED:
            when, value = self._logged.get(name, (now - LOG_EVERY, 0))
            if counts.get(name, 0) != value and now - when >= LOG_EVERY:
                log.warning("data path: %s +%d (%d in all)%s", name, counts[name] - value, counts[name],
                            _MEANING.get(name, ""))
                self._logged[name] = (now, counts[name])

    def status(self) -> dict:
        """For `lb status`: each strategy's mode, the estimate and drop_entry's deletions."""
        return {"modes": dict(self.modes), "engaged": [n for n in STRATEGIES if self.engaged(n)],
                "embryonic_free": self.free(), "embryonic_size": self.size,
                "amemthresh": self.cfg.threshold(self.size), "drop_rate": self.drop_rate,
                "drop_entry_deleted": self.dropped}


_MEANING = {
    "conn_table_full": ": lb_conns refused a connection (size [tables] connections for the "
                       "established IPv4 connections you carry, connections_ipv6 for IPv6)",
    "persist_table_full": ": lb_persist is full; new clients' templates stay embryonic",
    "drop_packet": ": new connections dropped by drop_packet",
    "icmp_rate_limited": ": tunnel too-big answers over icmp_msgs_per_sec, dropped",
}

