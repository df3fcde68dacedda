"""A fuzzer of the control socket's requests, through the real socket and Engine.run's loop (over a
recording data plane): 1,000+ mutated requests (keys dropped, retyped, nested, huge, truncated,
random bytes) of every command -- each is answered with one JSON object, applied ({"ok": true}) or
refused with an error; never a traceback; a refused one leaves the configuration file, the running
configuration and the operator's overrides exactly as they were.  Seeded by LB_FUZZ_SEED (a fresh
seed each run otherwise; a failure names it)."""
from __future__ import annotations

import copy
import json
import logging
import random
import socket

from lb import control
from lb.config import store
from fuzzseed import SEED, named
from test_override import RecordingDataplane, no_addresses, running  # noqa: F401  (fixtures)


class TableDataplane(RecordingDataplane):
    """The recording data plane, with the reads the "table" and "status" requests make."""

    def read_services(self):
        return []

    def counters(self):
        return {}

    def sched_base_pending(self):
        return False


NASTY = [None, True, 0, -1, 2 ** 70, 1.5, float("inf"), "", "x" * 70000, "\x00", "web", "rs1", [], {}, [[[[[]]]]],
         {"a": {"b": {"c": {}}}}, ["status"], "198.18.1.11:80", "../../etc/passwd", "é" * 100]


def mutate_value(rng, v):
    op = rng.random()
    if op < 0.5:
        return rng.choice(NASTY)
    if isinstance(v, dict) and v:
        v = dict(v)
        k = rng.choice(list(v))
        if rng.random() < 0.4:
            del v[k]
        else:
            v[k] = mutate_value(rng, v[k])
        return v
    if isinstance(v, list) and v:
        v = list(v)
        i = rng.randrange(len(v))
        v[i] = mutate_value(rng, v[i])
        return v
    return rng.choice(NASTY)


def mutated(rng, req: dict) -> bytes:
    """Bytes of a mutated request line."""
    r = copy.deepcopy(req)
    for _ in range(rng.randint(1, 3)):
        if not r:                       # every key deleted (a request without "cmd": configsync's)
            r["extra"] = rng.choice(NASTY)
            continue
        k = rng.choice(list(r))
        op = rng.random()
        if op < 0.15 and k != "cmd":
            del r[k]
        elif op < 0.75:
            r[k] = mutate_value(rng, r[k])
        else:
            r[rng.choice(["extra", "weight", "document", "version", "restart", "service", "server"])] = rng.choice(NASTY)
    try:
        line = json.dumps(r).encode()
    except (ValueError, OverflowError):
        line = b'{"cmd": "status"}'
    op = rng.random()
    if op < 0.05:
        line = line[: rng.randrange(len(line))]                        # truncated
    elif op < 0.08:
        line = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))   # random bytes
    elif op < 0.1:
        line = b"[" * rng.randrange(100, 70000)                        # deep nesting
    return line.replace(b"\n", b" ") + b"\n"


def ask(path: str, line: bytes) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    try:
        s.sendall(line)
        reply = s.makefile("rb").readline()
    finally:
        s.close()
    doc = json.loads(reply)
    assert isinstance(doc, dict) and isinstance(doc.get("ok"), bool), reply[:300]
    return doc


def test_fuzzed_control_requests_are_answered_and_refusals_change_nothing(running, caplog):
    eng, drive = running
    eng.dp = TableDataplane()
    path = control.socket_path(eng.cfg.instance, str(eng.cfg.path.parent))
    rng = random.Random(SEED)
    counts = {"ok": 0, "refused": 0}

    async def body(call):
        snap = await call(lambda: json.loads(json.dumps(control.request(eng.cfg.instance, "config"))))
        base_doc = snap["document"]
        n = 0
        while n < 1100:
            fresh = await call(lambda: control.request(eng.cfg.instance, "config"))
            valid = [{"cmd": "status"}, {"cmd": "table"}, {"cmd": "web"}, {"cmd": "config"}, {"cmd": "reload"},
                     {"cmd": "weight", "service": "web", "server": "rs1", "weight": 0},
                     {"cmd": "weight", "service": "web", "server": "rs2", "weight": None},
                     {"cmd": "config-put", "document": copy.deepcopy(base_doc), "version": fresh["config"]["version"]}]
            line = mutated(rng, rng.choice(valid))
            before = (eng.cfg.path.read_bytes(), eng.cfg, dict(eng.overrides))
            reply = await call(lambda: ask(path, line))
            if reply["ok"]:
                counts["ok"] += 1
            else:
                counts["refused"] += 1
                assert isinstance(reply.get("error"), str) and reply["error"], reply
                assert (eng.cfg.path.read_bytes(), eng.cfg, dict(eng.overrides)) == before, (line[:300], reply)
            n += 1
            if n % 200 == 0:            # back to the fixture's configuration now and then
                cur = await call(lambda: control.request(eng.cfg.instance, "config"))
                await call(lambda: control.request(eng.cfg.instance, "config-put", document=base_doc,
                                                   version=cur["config"]["version"]))

    with named(), caplog.at_level(logging.WARNING):
        drive(body)
        assert counts["ok"] > 100 and counts["refused"] > 300, counts
        assert not [r for r in caplog.records if r.exc_info and r.name in ("lb.control", "lb.confedit", "lb.engine")]
        assert "Traceback" not in caplog.text
    # what the fuzzer saved is a valid file, its previous version kept
    assert store.read(eng.cfg.path).cfg is not None and store.prev_path(eng.cfg.path).exists()


def test_a_zero_request_with_an_infinite_number_is_refused_naming_the_service(running, caplog):
    """`{"cmd": "zero", "service": ["fwmark", 1e400]}` (JSON's 1e400 is infinity) is refused as
    any other bad service is -- the reply says what a service is -- not answered with Python's
    OverflowError and a traceback in the daemon's log."""
    eng, drive = running
    eng.dp = TableDataplane()

    async def body(call):
        replies = []
        for service in (["fwmark", float("inf")], ["tcp", "198.18.0.10", float("inf")],
                        ["fwmark", 21, float("-inf")]):
            replies.append(await call(lambda: control.request(eng.cfg.instance, "zero", service=service)))
        return replies

    with caplog.at_level(logging.WARNING):
        replies = drive(body)
    for reply in replies:
        assert reply["ok"] is False and reply["error"].startswith("service: ["), reply
        assert "is not [protocol, address, port]" in reply["error"], reply
    assert "Traceback" not in caplog.text and "OverflowError" not in caplog.text


def test_many_clients_at_once_some_misbehaving_never_wedge_the_daemon(running, caplog):
    """300 clients, 40 at a time, of six kinds: well-behaved ones, ones that send half a line and
    shut their side, ones that connect and close, that ask and leave without reading, that send
    random bytes, that dribble their request in pieces.  Every client that reads gets one JSON
    object ("busy" past the slots is one), the daemon answers a status afterwards, and nothing in
    the log is a traceback."""
    import concurrent.futures
    import threading
    import time

    eng, drive = running
    eng.dp = TableDataplane()
    inst = eng.cfg.instance
    path = control.socket_path(inst, str(eng.cfg.path.parent))
    rng = random.Random(SEED)
    good = [b'{"cmd": "status"}', b'{"cmd": "table"}', b'{"cmd": "web"}', b'{"cmd": "config"}',
            b'{"cmd": "weight", "service": "web", "server": "rs1", "weight": 3}',
            b'{"cmd": "weight", "service": "web", "server": "rs1", "weight": null}']
    plans = [(rng.choice(["good", "half", "close", "noread", "garbage", "dribble"]), rng.choice(good),
              bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), rng.randrange(1, 6))
             for _ in range(300)]
    lock = threading.Lock()
    kinds: dict = {}

    def client(plan):
        kind, line, junk, pieces = plan
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        try:
            s.connect(path)
            if kind == "close":
                return None
            if kind == "half":
                s.sendall(line[: len(line) // 2])
                s.shutdown(socket.SHUT_WR)
            elif kind == "garbage":
                s.sendall(junk.replace(b"\n", b" ") + b"\n")
            elif kind == "dribble":
                step = max(1, len(line) // pieces)
                for i in range(0, len(line), step):
                    s.sendall(line[i:i + step])
                    time.sleep(0.01)
                s.sendall(b"\n")
            else:
                s.sendall(line + b"\n")
            if kind == "noread":
                return None
            reply = s.makefile("rb").readline()
        except (BrokenPipeError, ConnectionResetError):     # answered "busy" and closed at once
            reply = s.makefile("rb").readline()
        finally:
            s.close()
        doc = json.loads(reply)
        assert isinstance(doc, dict) and isinstance(doc.get("ok"), bool), (kind, reply[:300])
        with lock:
            key = (kind, "busy" if not doc["ok"] and doc["error"].startswith("busy") else doc["ok"])
            kinds[key] = kinds.get(key, 0) + 1
        return doc

    async def body(call):
        def storm():
            with concurrent.futures.ThreadPoolExecutor(40) as pool:
                return list(pool.map(client, plans))
        await call(storm)
        status = await call(lambda: control.request(inst, "status"))
        return status

    with named(), caplog.at_level(logging.WARNING):
        status = drive(body)
        assert status["ok"] is True
        assert ("good", True) in kinds and ("garbage", False) in kinds, kinds
        assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info], caplog.text
