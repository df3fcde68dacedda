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
    ``preempt``, then it takes over and sends a stand-down.
  - two ACTIVEs (a healed partition): the primary stays, the backup steps down on the first
    heartbeat it hears, i.e. within one keepalive; the primary announces again.
  - a stand-down from the peer makes an ACTIVE step down (not a preempting primary: the peer
    steps down instead when it hears it).
  - monitor_links: public link down -> FAULT (step down, never take over) until it is back.
"""
from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import time

from . import heartbeat as hb
from . import sync as hsync

log = logging.getLogger("lb.ha")

STARTING, BACKUP, ACTIVE, FAULT, LEAVING = (hb.S_STARTING, hb.S_BACKUP, hb.S_ACTIVE, hb.S_FAULT,
                                           hb.S_LEAVING)
NAMES = hb.STATE_NAMES


class RoleMachine:
    """Pure role logic.  Every method takes ``now`` (monotonic seconds) and returns a list of
    actions: ("role", new, old), ("standdown",), ("announce",)."""

    def __init__(self, primary: bool, keepalive: float, deadtime: float, preempt: bool = False,
                 now: float = 0.0):
        self.primary = primary
        self.keepalive = keepalive
        self.deadtime = deadtime
        self.preempt = preempt
        self.state = STARTING
        self.since = now
        self.peer_state: int | None = None
        self.peer_seen: float | None = None
        self.link_ok = True
        self.changes = 0

    def peer_alive(self, now: float) -> bool:
        return (self.peer_seen is not None and now - self.peer_seen < self.deadtime
                and self.peer_state != LEAVING)

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
        acts: list = []
        if not self.link_ok:
            self._go(FAULT, now, acts)
            return acts
        if self.state == FAULT:
            self._go(BACKUP, now, acts)
        alive = self.peer_alive(now)
        ps = self.peer_state if alive else None
        if self.state in (STARTING, BACKUP):
            if not alive:
                if self.state == BACKUP or now - self.since >= self.deadtime:
                    self._go(ACTIVE, now, acts)
            elif ps == ACTIVE:
                if self.state == BACKUP and self.preempt and self.primary:
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
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()}


class Channel:
    def __init__(self, cid: int, local, peer, port: int):
        self.id = cid
        self.name = hb.CHANNEL_NAMES[cid]
        self.local, self.peer, self.port = local, peer, port
        self.sock: socket.socket | None = None
        self.seq = 0
        self.last_rx: float | None = None        # monotonic
        self.rx = self.tx = self.tx_errors = 0

    def open(self) -> None:
        fam = socket.AF_INET if self.local.version == 4 else socket.AF_INET6
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_IP, 15, 1)       # IP_FREEBIND: bind even before the link is up
        s.bind((str(self.local), self.port))
        s.setblocking(False)
        self.sock = s


class Pulse:
    NOTIFY_TIMEOUT = 30.0    # seconds a notify hook may run before it is killed

    def __init__(self, ha, instance: str, on_role, *, sync_source=None, sync_sink=None,
                 announce=None, public_interface: str | None = None, node: int | None = None):
        """on_role(new, old) -> awaitable; sync_source() -> (conns, temps) (blocking, the
        active's data plane); sync_sink(conns, temps) (blocking, the backup's); announce()
        (blocking)."""
        self.ha = ha
        self.instance = instance
        self.on_role = on_role
        self.sync_source = sync_source
        self.sync_sink = sync_sink
        self.announce_fn = announce
        self.public_interface = public_interface
        self.key = hb.read_key(ha.key_file)
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
        me_primary = node == hb.NODE_PRIMARY
        pick = (lambda p, b: (p, b)) if me_primary else (lambda p, b: (b, p))
        self.channels = [Channel(hb.CH_PUBLIC, *pick(ha.primary, ha.backup), ha.heartbeat_port)]
        if ha.primary_private is not None:
            self.channels.append(Channel(hb.CH_PRIVATE, *pick(ha.primary_private, ha.backup_private),
                                         ha.heartbeat_port))
        self.machine = RoleMachine(me_primary, ha.keepalive, ha.deadtime, ha.preempt, time.monotonic())
        self.guard = hb.ReplayGuard(int(ha.max_skew * 1e9))
        self.counters = {"rx": 0, "bad_auth": 0, "replay": 0, "stale": 0, "malformed": 0,
                         "wrong_channel": 0, "standdown_rx": 0, "sync_rx_records": 0,
                         "sync_tx_records": 0, "sync_skipped": 0, "sync_pending": 0}
        self.exporter = hsync.Exporter(ha.sync_rate, ha.sync_interval)
        self.last_sync_rx: float | None = None
        self.last_sync_tx: float | None = None
        self.role_log: list[tuple[float, str, str]] = []
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()
        self._actions: asyncio.Queue = asyncio.Queue()
        self._closing = False
        self._peer_was_alive = False
        self._sync_queue: asyncio.Queue = asyncio.Queue(maxsize=256)   # bounded backup-side backlog

    # ---- status ----
    @property
    def role(self) -> str:
        return NAMES[self.machine.state]

    def status(self) -> dict:
        now = time.monotonic()
        m = self.machine
        return {
            "node": "primary" if self.node == hb.NODE_PRIMARY else "backup",
            "role": self.role, "since_s": round(now - m.since, 3), "role_changes": m.changes,
            "peer": {"state": NAMES.get(m.peer_state, "unknown") if m.peer_state is not None else "unknown",
                     "alive": m.peer_alive(now),
                     "last_heard_s": None if m.peer_seen is None else round(now - m.peer_seen, 3)},
            "link_ok": m.link_ok,
            "channels": {c.name: {"local": str(c.local), "peer": str(c.peer), "port": c.port, "rx": c.rx,
                                  "tx": c.tx, "tx_errors": c.tx_errors,
                                  "last_heartbeat_s": None if c.last_rx is None else round(now - c.last_rx, 3)}
                         for c in self.channels},
            "sync": {"enabled": self.ha.sync, "tracked": len(self.exporter.sent),
                     "pending": self.exporter.pending,
                     "last_tx_s": None if self.last_sync_tx is None else round(now - self.last_sync_tx, 3),
                     "last_rx_s": None if self.last_sync_rx is None else round(now - self.last_sync_rx, 3)},
            "counters": dict(self.counters),
        }

    # ---- lifecycle ----
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.machine.since = time.monotonic()     # listen a full deadtime from now
        for c in self.channels:
            c.open()
            loop.add_reader(c.sock.fileno(), self._readable, c)
        self._tasks = [asyncio.create_task(self._heartbeats(), name="pulse-heartbeats"),
                       asyncio.create_task(self._decide(), name="pulse-decide")]
        if self.ha.sync and self.sync_source is not None:
            self._tasks.append(asyncio.create_task(self._sync_out(), name="pulse-sync-out"))
        if self.ha.sync and self.sync_sink is not None:
            self._tasks.append(asyncio.create_task(self._sync_in(), name="pulse-sync-in"))
        if self.ha.garp_refresh > 0:
            self._tasks.append(asyncio.create_task(self._refresh(), name="pulse-garp-refresh"))
        log.info("pulse: %s node, heartbeats every %gs on %s, deadtime %gs", self.role_node_name(),
                 self.ha.keepalive, ", ".join(f"{c.name} {c.local}->{c.peer}:{c.port}" for c in self.channels),
                 self.ha.deadtime)

    def role_node_name(self) -> str:
        return "primary" if self.node == hb.NODE_PRIMARY else "backup"

    async def stop(self) -> None:
        """Tell the peer we leave (it takes over at once if we were active), close the sockets."""
        self._closing = True
        self._send_all(hb.T_HEARTBEAT, LEAVING)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for c in self.channels:
            if c.sock is not None:
                loop.remove_reader(c.sock.fileno())
                c.sock.close()
                c.sock = None

    # ---- sending ----
    def _flags(self) -> int:
        return hb.F_LINK_OK if self.machine.link_ok else 0

    def _send(self, c: Channel, typ: int, state: int | None = None, payload: bytes = b"") -> None:
        if c.sock is None:
            return
        c.seq += 1
        m = hb.Message(typ, self.machine.state if state is None else state, self.node, c.id, self.boot, c.seq,
                       time.time_ns(), self._flags(), payload)
        try:
            c.sock.sendto(hb.encode(self.key, m), (str(c.peer), c.port))
            c.tx += 1
        except OSError:
            c.tx_errors += 1

    def _send_all(self, typ: int, state: int | None = None) -> None:
        for c in self.channels:
            self._send(c, typ, state)

    def _sync_channel(self) -> Channel:
        """Sync goes over the private channel when there is one and it is alive."""
        now = time.monotonic()
        for c in reversed(self.channels):
            if c.last_rx is not None and now - c.last_rx < self.ha.deadtime:
                return c
        return self.channels[-1]

    async def _heartbeats(self) -> None:
        while True:
            self._send_all(hb.T_HEARTBEAT)
            await asyncio.sleep(self.ha.keepalive)

    # ---- receiving ----
    def _readable(self, c: Channel) -> None:
        for _ in range(64):                       # bounded per wake-up
            try:
                data, _addr = c.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._receive(c, data)

    def _receive(self, c: Channel, data: bytes) -> None:
        try:
            m = hb.decode(self.key, data)
        except hb.DecodeError as e:
            self.counters["bad_auth" if e.reason == "auth" else "malformed"] += 1
            return
        if m.channel != c.id or m.node == self.node:
            self.counters["wrong_channel"] += 1
            return
        why = self.guard.check(m, time.time_ns())
        if why is not None:
            self.counters[why] += 1
            return
        self.counters["rx"] += 1
        c.rx += 1
        now = time.monotonic()
        c.last_rx = now
        if m.type == hb.T_SYNC:
            self.last_sync_rx = now
            try:
                self._sync_queue.put_nowait(m.payload)
            except asyncio.QueueFull:
                self.counters["sync_skipped"] += 1
            self._act(self.machine.heard(now, m.state) if m.state != self.machine.peer_state else [])
            return
        if m.type == hb.T_STANDDOWN:
            self.counters["standdown_rx"] += 1
            self._act(self.machine.standdown(now))
            return
        self._act(self.machine.heard(now, m.state))

    # ---- deciding and acting ----
    def _act(self, acts: list) -> None:
        for a in acts:
            self._actions.put_nowait(a)

    async def _decide(self) -> None:
        tick = min(self.ha.keepalive / 2, 0.05)
        loop = asyncio.get_running_loop()
        last_link = 0.0
        while True:
            now = time.monotonic()
            if self.ha.monitor_links and self.public_interface and now - last_link >= min(self.ha.keepalive, 0.2):
                last_link = now
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
            while not self._actions.empty():
                a = self._actions.get_nowait()
                if a[0] == "role":
                    _, new, old = a
                    log.warning("pulse: role %s -> %s (peer %s)", NAMES[old], NAMES[new],
                                NAMES.get(self.machine.peer_state, "unheard") if alive else "not heard")
                    self.role_log.append((time.time(), NAMES[old], NAMES[new]))
                    if new == ACTIVE:
                        self.exporter.reset()
                    try:
                        await self.on_role(new, old)
                    except Exception:
                        log.exception("pulse: role change to %s failed", NAMES[new])
                    self._send_all(hb.T_HEARTBEAT)       # tell the peer at once
                    self._notify(NAMES[new], NAMES[old])
                elif a[0] == "standdown":
                    for _ in range(2):
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
        for prog in self.ha.notify:
            asyncio.get_running_loop().create_task(self._run_hook(prog, new, old))

    async def _run_hook(self, prog: str, new: str, old: str) -> None:
        try:
            p = await asyncio.create_subprocess_exec(prog, new, old, self.instance, stdin=asyncio.subprocess.DEVNULL,
                                                     stdout=asyncio.subprocess.DEVNULL,
                                                     stderr=asyncio.subprocess.PIPE)
            try:
                _, err = await asyncio.wait_for(p.communicate(), timeout=self.NOTIFY_TIMEOUT)
            except asyncio.TimeoutError:
                p.kill()
                await p.wait()
                log.warning("pulse: notify hook %s killed after %g s", prog, self.NOTIFY_TIMEOUT)
                return
            if p.returncode:
                log.warning("pulse: notify hook %s exited %d: %s", prog, p.returncode,
                            err.decode(errors="replace").strip()[-500:])
        except OSError as e:
            log.warning("pulse: notify hook %s: %s", prog, e)

    # ---- connection sync ----
    async def _sync_out(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ha.sync_interval)
            if self.machine.state != ACTIVE or not self.machine.peer_alive(time.monotonic()):
                continue
            try:
                conns, temps = await loop.run_in_executor(None, self.sync_source)
            except Exception:
                log.exception("pulse: reading connections for sync failed")
                continue
            records = self.exporter.select(conns, temps)
            self.counters["sync_pending"] = self.exporter.pending
            if not records:
                continue
            c = self._sync_channel()
            for payload in hsync.pack_batches(records):
                self._send(c, hb.T_SYNC, payload=payload)
            self.counters["sync_tx_records"] += len(records)
            self.last_sync_tx = time.monotonic()

    async def _sync_in(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            payload = await self._sync_queue.get()
            batch = [payload]
            while not self._sync_queue.empty() and len(batch) < 64:
                batch.append(self._sync_queue.get_nowait())
            if self.machine.state == ACTIVE:
                continue                          # the active's own table wins
            conns, temps = [], []
            for p in batch:
                try:
                    c, t = hsync.decode_batch(p)
                except ValueError:
                    self.counters["malformed"] += 1
                    continue
                conns += c
                temps += t
            try:
                done, skipped = await loop.run_in_executor(None, self.sync_sink, conns, temps)
            except Exception:
                log.exception("pulse: installing synced connections failed")
                continue
            self.counters["sync_rx_records"] += done
            self.counters["sync_skipped"] += skipped
