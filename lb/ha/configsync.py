"""Both directors run one configuration: the active one pushes its configuration to its peer.

Piranha's tool left the copy to the operator (scp via rsh_command), and a backup with another
lvs.cf could fail to take over.  Here the active director offers its configuration to the peer
every PUSH_INTERVAL seconds and at once after each change; the peer answers with its own version,
so both show whether they run the same one (`lb status`, the console).

Transport: TCP on the heartbeat addresses and port (each director listens on its own heartbeat
addresses, and takes connections only from its peer's), authenticated with the heartbeat keys
(the first key of the key file signs, any of them verifies: lb.ha.heartbeat.read_keys).
Pulse's heartbeats (and their catch-all socket) and its connection sync ([ha] sync_port) are UDP:
a TCP port of the same number is another port.

    client -> server   b"LBCF1" + client nonce (16 bytes)
    server -> client   server nonce (16 bytes)
    client -> server   length (4 bytes) + JSON push  + HMAC-SHA256(key, "push"  + nonces + JSON)
    server -> client   length (4 bytes) + JSON reply + HMAC-SHA256(key, "reply" + nonces + JSON)

Both nonces go into both MACs, so nothing recorded can be replayed.  The push holds the serial
number (serial_no), the identity (lb.config.store.identity: what the configuration says, not its
instance name, serial, format or [bgp]) and, unless the peer is known to run the same, the document
without the per-director keys and tables ([bgp]: each director's own BGP sessions).  The peer,
when not active itself:

- same identity: nothing to do ("same");
- a lower serial than its own: refused ("older": its configuration was saved later; shown on both);
- else: applied through the daemon's own edit path (lb.confedit: validated as `lb check`, written
  in its own file's format with the previous version kept, reloaded, put back if the reload
  refuses), with its own instance name, its own [bgp] and the pushed serial ("applied"), or
  refused with the validator's or the reload's reason ("refused"), which both directors show.
  The same push again within LOG_EVERY seconds (the active repeats it every PUSH_INTERVAL) gets
  the same refusal without going through the edit path again.
"""
from __future__ import annotations

import asyncio
import hmac
import hashlib
import json
import logging
import os
import struct
import time

from lb.config import store
from lb.ha import heartbeat as hb
from lb.tasks import RateLimitedLog, cancel_and_wait, supervise

log = logging.getLogger("lb.ha.configsync")

MAGIC = b"LBCF1"
NONCE = 16
MAX_MESSAGE = 2 * 1024 * 1024
STEP_TIMEOUT = 10.0
EXCHANGE_TIMEOUT = 20.0   # a push read whole within this, however it trickles
HEAD_TIMEOUT = 2.0        # ... its first bytes (magic and nonce) within this: the peer sends them at once
MAX_READING = 4           # pushes read at once (the peer makes one at a time): a 5th drops the oldest
PUSH_INTERVAL = 3.0
LOG_EVERY = 60.0          # a repeated refusal is logged at most this often


def _mac(key: bytes, label: bytes, nonces: bytes, body: bytes) -> bytes:
    return hmac.new(key, label + nonces + body, hashlib.sha256).digest()


async def _read_message(reader, keys: tuple[bytes, ...], label: bytes, nonces: bytes) -> dict:
    head = await asyncio.wait_for(reader.readexactly(4), STEP_TIMEOUT)
    (n,) = struct.unpack("!I", head)
    if n > MAX_MESSAGE:
        raise ValueError(f"message of {n} bytes (at most {MAX_MESSAGE})")
    body = await asyncio.wait_for(reader.readexactly(n), STEP_TIMEOUT)
    mac = await asyncio.wait_for(reader.readexactly(32), STEP_TIMEOUT)
    if hb.key_verifying(keys, body, mac, label + nonces) is None:     # any key of the keyring
        raise PermissionError("bad MAC (not our peer's key)")
    try:
        msg = json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(msg, dict):
        raise ValueError("not a JSON object")
    return msg


def _message(key: bytes, label: bytes, nonces: bytes, msg: dict) -> bytes:
    body = json.dumps(msg, separators=(",", ":")).encode()
    return struct.pack("!I", len(body)) + body + _mac(key, label, nonces, body)


class ConfigSync:
    """One per daemon with [ha]: the server (always) and the pusher (while active)."""

    def __init__(self, engine, keys, channels, port: int):
        """keys() -> the keyring (lb.ha.heartbeat.read_keys; pulse's, which a reload replaces):
        the first key signs, any verifies."""
        self.engine = engine
        self.keys = keys
        self.channels = channels            # [(local address, peer address)], private first
        self.port = port
        self.servers: list[asyncio.AbstractServer] = []
        self._listening: set = set()             # the local addresses a server listens on ...
        self._listen_failed: set = set()         # ... and those it could not yet
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Event()
        self._busy = asyncio.Lock()
        self.peer: dict = {}                # what the peer last said of itself
        self.last_exchange: float | None = None
        self.last_result: str | None = None
        self.last_error: str | None = None
        self.counters = {"pushes": 0, "applied": 0, "refused": 0, "older": 0, "failed": 0, "bad_peer": 0,
                         "busy": 0}
        self._reading: dict = {}            # connection (writer) -> (its head read, when its read began)
        self._dropped: set = set()          # connections dropped for a newer one, not yet ended
        self._ratelog = RateLimitedLog(log, LOG_EVERY)
        # the last push refused by the edit path: (what it was, when, why), answered again from
        # here for LOG_EVERY seconds (_answer)
        self._refusal: tuple | None = None

    # ---- status ----
    def status(self) -> dict:
        cfg = self.engine.cfg
        mine = store.identity(cfg)
        ident = self.peer.get("identity")
        return {"peer_identity": ident, "peer_serial_no": self.peer.get("serial_no"),
                "same": None if ident is None else ident == mine,
                "last_exchange_s": None if self.last_exchange is None else round(time.monotonic() - self.last_exchange, 1),
                "last_result": self.last_result, "last_error": self.last_error, "counters": dict(self.counters)}

    def changed(self) -> None:
        """The configuration was applied here: push it now (when active)."""
        self._changed.set()

    def _log(self, what: str, msg: str, *args) -> None:
        self._ratelog.log(what, logging.WARNING, msg, *args)

    # ---- lifecycle ----
    async def start(self) -> None:
        await self._listen()
        # restarted if it raises (lb.tasks): a pusher that stopped would leave the peer behind
        self._task = supervise("configsync-push", self._pusher, logger=log,
                               context=f"instance {self.engine.cfg.instance}")

    async def _listen(self) -> None:
        """A server on each channel's local address not listened on yet: at start, then again at
        every push interval -- an address that comes later (an IPv6 one still in duplicate
        address detection at boot, a private interface up after lb) is listened on once it is
        there, as pulse's own sockets bind to it once it is."""
        for local, _peer in self.channels:
            if local in self._listening:
                continue
            try:
                self.servers.append(await asyncio.start_server(self._serve, str(local), self.port,
                                                               reuse_address=True))
            except OSError as e:
                self._listen_failed.add(local)
                self._ratelog.log(f"listen-{local}", logging.ERROR, "configuration sync: cannot listen on %s:%d/tcp "
                                  "(tried again every %g s): %s", local, self.port, PUSH_INTERVAL, e.strerror or e)
                continue
            if local in self._listen_failed:
                log.warning("configuration sync: listening on %s:%d/tcp now", local, self.port)
            self._listening.add(local)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for s in self.servers:
            s.close()
            await s.wait_closed()
        self.servers, self._listening = [], set()

    # ---- the active's side ----
    async def _pusher(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), PUSH_INTERVAL)
            except asyncio.TimeoutError:
                pass
            self._changed.clear()
            await self._listen()
            if self.engine.role() != "active":
                continue
            try:
                await self.push()
            except asyncio.CancelledError:
                raise
            except Exception as e:   # the pusher goes on; the status says what failed
                self.counters["failed"] += 1
                self.last_error = f"{type(e).__name__}: {e}"
                self._log("push", "configuration push to the peer failed: %s", self.last_error)

    async def push(self) -> dict:
        """Offer this director's configuration to the peer (with the document unless the peer is
        known to run the same); the peer's answer."""
        cfg = self.engine.cfg
        mine = store.identity(cfg)
        send_doc = self.peer.get("identity") != mine
        reply = await self._exchange({"role": "active", "serial_no": cfg.serial_no, "identity": mine,
                                      "document": store.shared_document(cfg) if send_doc else None})
        if reply.get("result") == "need":
            reply = await self._exchange({"role": "active", "serial_no": cfg.serial_no, "identity": mine,
                                          "document": store.shared_document(cfg)})
        self.counters["pushes"] += 1
        self._note(reply)
        if reply.get("result") in ("refused", "older"):
            self._log(f"peer-{reply.get('result')}", "the peer did not take this director's configuration "
                      "(serial_no %d): %s: %s", cfg.serial_no, reply.get("result"), reply.get("error"))
        return reply

    def _note(self, reply: dict) -> None:
        self.peer = {"identity": reply.get("identity"), "serial_no": reply.get("serial_no")}
        self.last_exchange = time.monotonic()
        self.last_result = reply.get("result")
        self.last_error = reply.get("error")
        if self.last_result in self.counters:
            self.counters[self.last_result] += 1

    async def _exchange(self, msg: dict) -> dict:
        last: Exception | None = None
        for local, peer in self.channels:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(str(peer), self.port, local_addr=(str(local), 0)), STEP_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as e:
                last = e
                continue
            try:
                cn = os.urandom(NONCE)
                writer.write(MAGIC + cn)
                await writer.drain()
                sn = await asyncio.wait_for(reader.readexactly(NONCE), STEP_TIMEOUT)
                keys = self.keys()
                writer.write(_message(keys[0], b"push", cn + sn, msg))
                await writer.drain()
                return await _read_message(reader, keys, b"reply", cn + sn)
            finally:
                writer.close()
        raise ConnectionError(f"no channel reaches the peer ({last})")

    # ---- the peer's side ----
    async def _serve(self, reader, writer) -> None:
        peername = writer.get_extra_info("peername") or ("?",)
        try:
            if not any(str(peer) == peername[0] for _l, peer in self.channels):
                self.counters["bad_peer"] += 1
                self._log("source", "configuration sync: refused a connection from %s (not the peer)", peername[0])
                return
            # Connections from the peer's address (or one spoofing it on the segment) are read
            # outside the lock that serialises the answers, a few at a time, each within one
            # deadline (its head within HEAD_TIMEOUT: the peer sends it at once); for a new one
            # the read that got least far is dropped -- one without its head first, then the
            # oldest.  Silent ones used to queue for the lock without limit, a file descriptor
            # each, and the real push waited behind them.
            if len(self._reading) >= MAX_READING:
                least = min(self._reading, key=self._reading.get)
                self._reading.pop(least)
                self._dropped.add(least)
                least.transport.abort()
                self.counters["busy"] += 1
                self._log("busy", "configuration sync: dropped one of %d pushes being read (the one that got "
                          "least far) for a new connection from %s", MAX_READING, peername[0])
            self._reading[writer] = (False, time.monotonic())
            try:
                async with asyncio.timeout(EXCHANGE_TIMEOUT):
                    head = await asyncio.wait_for(reader.readexactly(len(MAGIC) + NONCE), HEAD_TIMEOUT)
                    if head[: len(MAGIC)] != MAGIC:
                        raise ValueError("not a configuration push")
                    if writer in self._reading:
                        self._reading[writer] = (True, self._reading[writer][1])
                    cn, sn = head[len(MAGIC):], os.urandom(NONCE)
                    writer.write(sn)
                    await writer.drain()
                    msg = await _read_message(reader, self.keys(), b"push", cn + sn)
                self._reading.pop(writer, None)
                async with self._busy:
                    reply = await self._answer(msg, peername[0])
                writer.write(_message(self.keys()[0], b"reply", cn + sn, reply))
                await asyncio.wait_for(writer.drain(), STEP_TIMEOUT)
            finally:
                self._reading.pop(writer, None)
        except (OSError, ValueError, PermissionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            if writer in self._dropped:          # counted as busy when it was dropped
                return
            self.counters["bad_peer"] += 1
            self._log("serve", "configuration sync: a push from %s failed: %s", peername[0], repr(e) if
                      isinstance(e, asyncio.TimeoutError) else e)
        finally:
            self._dropped.discard(writer)
            writer.close()

    async def _answer(self, msg: dict, source: str) -> dict:
        cfg = self.engine.cfg
        mine = store.identity(cfg)
        serial, ident, doc = msg.get("serial_no"), msg.get("identity"), msg.get("document")
        self.peer = {"identity": ident, "serial_no": serial}
        self.last_exchange = time.monotonic()

        def answer(result: str, error: str | None = None) -> dict:
            cfg_now = self.engine.cfg
            self.last_result, self.last_error = result, error
            if result in self.counters:
                self.counters[result] += 1
            return {"result": result, "error": error, "serial_no": cfg_now.serial_no,
                    "identity": store.identity(cfg_now), "role": self.engine.role()}

        if not isinstance(serial, int) or isinstance(serial, bool) or not isinstance(ident, str):
            self._log("malformed", "configuration sync: a malformed push from %s (serial_no, identity) refused",
                      source)
            return answer("refused", "malformed push (serial_no, identity)")
        if ident == mine:
            return answer("same")
        if self.engine.role() == "active":
            return answer("refused", "this director is active too: it keeps its own configuration")
        if serial < cfg.serial_no:
            self._log("older", "configuration from the active peer %s refused: its serial_no %d is older than "
                      "this director's %d", source, serial, cfg.serial_no)
            return answer("older", f"serial_no {serial} is older than this director's {cfg.serial_no}")
        if doc is None:
            return answer("need")
        if not isinstance(doc, dict):
            self._log("malformed", "configuration sync: a malformed push from %s (document) refused", source)
            return answer("refused", "malformed push (document)")
        # The active pushes again every PUSH_INTERVAL while the two differ: the same document,
        # refused a moment ago, is refused again from here for LOG_EVERY seconds instead of
        # going through the edit path each time (a WARNING every 3 s, and for one the reload
        # refuses the file written, reloaded and put back every 3 s).  Tried again after that,
        # or at once when this director's configuration or the push changes.
        try:
            what = (serial, ident, mine, cfg.serial_no,
                    hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).digest())
        except (ValueError, TypeError, RecursionError):
            what = None                          # not remembered: the edit path says what is wrong
        now = time.monotonic()
        if what is not None and self._refusal is not None and self._refusal[0] == what \
                and now - self._refusal[1] < LOG_EVERY:
            return answer("refused", self._refusal[2])
        self._refusal = None
        try:
            reply = await self.engine.configs.put(store.localize(doc, cfg), None, serial=serial, from_peer=True,
                                                  who=f"the active peer {source}")
        except (TypeError, ValueError, AttributeError, RecursionError) as e:
            # a document the edit path could not even read (nested deeper than its copies go, a
            # value of a type nothing expects there): refused, counted and said like any other
            # malformed push -- it escaped the server, an asyncio traceback and no answer
            self._log("malformed", "configuration sync: a malformed push from %s (document: %s) refused", source,
                      type(e).__name__)
            return answer("refused", f"malformed push (document: {type(e).__name__})")
        if reply.get("ok") and reply.get("applied"):
            log.info("configuration from the active peer %s applied: serial_no %d", source, serial)
            return answer("applied")
        error = reply.get("error") or reply.get("message")
        issues = "; ".join(f"{i.get('field')}: {i.get('message')}" for i in reply.get("issues") or [])
        if issues:
            error = f"{error}: {issues}"
        self._log("refused", "configuration from the active peer %s refused: %s", source, error)
        self._refusal = (what, now, error)
        return answer("refused", error)


async def start(engine) -> ConfigSync | None:
    """The configuration sync of an engine with [ha] and pulse started (None without)."""
    pulse = engine.pulse
    if pulse is None:
        return None
    chans = sorted(pulse.channels, key=lambda c: c.name != "private")
    sync = ConfigSync(engine, lambda: pulse.keys, [(c.local, c.peer) for c in chans], engine.cfg.ha.heartbeat_port)
    engine.configs.on_applied.append(sync.changed)
    await sync.start()
    return sync
