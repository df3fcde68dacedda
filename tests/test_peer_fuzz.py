"""What other machines send lb, fuzzed: real servers' answers to HTTP health checks (through a
127.0.0.1 server started here, as tests/test_health.py does) and to send/expect checks, load
agents' replies, and the peer director's heartbeat and connection-sync datagrams.  Each must give
a verdict with a reason an operator can read (one line, never an exception's bare text) -- a
pass only for an answer that says so -- or be refused as malformed; nothing escapes.  Seeded by
LB_FUZZ_SEED (tests/fuzzseed.py)."""
from __future__ import annotations

import asyncio
import ipaddress
import math
import random
import re

from lb.ha import heartbeat as hb
from lb.ha import sync
from lb.health import LoadMonitorTask, LoadSpec
from lb.health.checks import BODY_LIMIT, INTERIM_MAX, READ_LIMIT, CheckSpec, run_check
from lb.health.load import dynamic_weight, parse_report

from fuzzseed import SEED, named

HOST = "127.0.0.1"
KEY = b"k" * 32
# run_check's last resort names the exception: what a reason must never look like
BARE_EXCEPTION = re.compile(r"^[A-Za-z_.]*(Error|Exception|Overrun)\b")

GOOD_HTTP = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\nmoved",
    b"HTTP/1.1 204 No Content\r\n\r\n",
]
# what broken servers and middleboxes answer: odd digits (latin-1 has superscripts that
# str.isdigit() takes), huge numbers, bad chunk sizes, lengths that lie
NASTY = [b"\xb2", b"\xb9", b"\xb3\xb3", b"9" * 5000, b"-1", b"+5", b"0x10", b"1_0", b"zz", b" ", b"",
         b"\r\n", b"\n", b";", b":", b"\x00", b"\xff" * 3, b"ffffffffffffffffff", b"1e3", b"\xbd",
         # what str.split() takes for whitespace in a latin-1 line, and RFC 9112's own
         b"\x1e", b"\x1c", b"\xa0", b"\x85", b"\t", b"\x0b", b"\x0c", b"\r"]
# what RFC 9112 4 lets a recipient take for the status line's SP
WS = b" \t\x0b\x0c\r"


def _mutate_http(rng: random.Random) -> bytes:
    r = bytearray(rng.choice(GOOD_HTTP))
    for _ in range(rng.randrange(1, 4)):
        op = rng.random()
        if op < 0.3:        # a nasty token over a run of bytes (the status, a length, a chunk size)
            i = rng.randrange(len(r) + 1)
            r[i:i + rng.randrange(0, 6)] = rng.choice(NASTY)
        elif op < 0.45:     # a header of ours
            i = r.find(b"\r\n") + 2
            name = rng.choice([b"Content-Length", b"Transfer-Encoding", b"content-length"])
            r[i:i] = name + b": " + rng.choice(NASTY + [b"chunked", b"5", b"99999"]) + b"\r\n"
        elif op < 0.6:      # cut short
            del r[rng.randrange(len(r) + 1):]
        elif op < 0.75:     # bytes flipped
            for _ in range(rng.randrange(1, 5)):
                if r:
                    r[rng.randrange(len(r))] ^= 1 << rng.randrange(8)
        elif op < 0.85:     # the status code replaced
            r[9:12] = rng.choice(NASTY + [b"2000", b"20", b"abc"])
        elif op < 0.88:     # interim (1xx) responses before it, up to past what a check reads through
            r[:0] = b"HTTP/1.1 100 Continue\r\n\r\n" * rng.randrange(INTERIM_MAX + 3)
        elif op < 0.9:      # a header line around the headers' limit
            i = r.find(b"\r\n") + 2
            r[i:i] = b"X: " + b"a" * (BODY_LIMIT + rng.randrange(-8, 8)) + b"\r\n"
        else:               # random bytes
            r = bytearray(rng.randbytes(rng.randrange(0, 200)))
    return bytes(r)


def test_fuzzed_http_answers_get_a_verdict_and_a_readable_reason():
    rng = random.Random(SEED)
    answers = [_mutate_http(rng) for _ in range(2000)]
    specs = [CheckSpec("http", HOST, 0, body_regex="hel+o", connect_timeout=5),
             CheckSpec("http", HOST, 0, digest="5d41402abc4b2a76b9719d911017c592", connect_timeout=5),
             CheckSpec("http", HOST, 0, connect_timeout=5)]
    served: list[bytes] = []

    async def answer(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(served[-1])
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(answer, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        outcomes = {True: 0, False: 0}
        try:
            for i, a in enumerate(answers):
                served.append(a)
                s = specs[i % len(specs)]
                res = await run_check(CheckSpec(s.kind, HOST, port, body_regex=s.body_regex, digest=s.digest,
                                                connect_timeout=s.connect_timeout))
                outcomes[res.ok] += 1
                assert res.detail and not BARE_EXCEPTION.match(res.detail), (a[:200], res.detail)
                assert "timed out" not in res.detail, (a[:200], res.detail)
                assert "\n" not in res.detail and "\r" not in res.detail and len(res.detail) <= 1000, \
                    (a[:200], res.detail[:300])
                if res.ok:      # a status in the range (200-399), on a status line the answer holds
                    code = int(re.match(r"status ([0-9]{3})", res.detail).group(1))
                    assert 200 <= code <= 399 and re.search(rb"HTTP/[^%s]*[%s]+%d(?![0-9])" % (WS, WS, code), a), \
                        (a[:200], res.detail)
                if res.ok and s.body_regex:
                    assert b"hel" in a, (a[:200], res.detail)
        finally:
            server.close()
            await server.wait_closed()
        return outcomes

    with named():
        outcomes = asyncio.run(main())
        assert outcomes[True] > 60 and outcomes[False] > 600, outcomes


def test_fuzzed_load_reports_give_a_bounded_weight_or_a_refusal():
    rng = random.Random(SEED)
    words = ["load", "weight", "average:", "averages:", "%", "75%", "1e400", "9" * 400, "nan", "inf",
             "-3", "0.5", ",", ";", "\n", " ", "1" + "0" * 310 + "%", "9" * 400 + "%", "\xb2%", "3.0"]
    seen: dict[str, int] = {}
    with named():
        for _ in range(20000):
            text = "".join(rng.choice(words) + rng.choice(["", " ", ", "]) for _ in range(rng.randrange(1, 8)))
            if rng.random() < 0.1:
                text = rng.randbytes(rng.randrange(100)).decode("utf-8", errors="replace")
            try:
                kind, value = parse_report(text)
            except ValueError as e:
                assert str(e).startswith("no load or weight in") or "out of range" in str(e), (text, e)
                refusal = "out of range" if "out of range" in str(e) else "none"
                seen[refusal] = seen.get(refusal, 0) + 1
                continue
            assert kind in ("percent", "weight", "load") and math.isfinite(value) and value >= 0, (text, value)
            seen[kind] = seen.get(kind, 0) + 1
            configured, floor = rng.randrange(0, 1000), rng.randrange(0, 10)
            w = dynamic_weight((kind, value), configured, floor)
            assert min(floor, configured) <= w <= configured, (text, kind, value, configured, floor, w)
        # every kind of report was read (a weight is bounded only if one is): a parser refusing
        # them all passed untouched; each is ~0.2% (weight) to ~9% (percent) of the texts
        assert all(seen.get(k, 0) > 5 for k in ("percent", "weight", "load", "out of range", "none")), seen


class _Sent:
    """A connection's sending half, for standing_in: takes the request, closes."""

    class _Transport:
        def abort(self):
            pass

    def __init__(self):
        self.transport = self._Transport()

    def write(self, data):
        pass

    async def drain(self):
        pass

    def close(self):
        pass


def standing_in(monkeypatch, rng: random.Random, answer: list[bytes]) -> None:
    """asyncio.open_connection stood in for (no packet sent): its reader gets answer[0], set
    before each check, in segments of 1 to 2,048 bytes (one size a connection) with the loop
    turning between them -- the boundaries a socket may put anywhere -- then the end of the stream"""
    feeding = set()

    async def open_connection(host, port, limit=2 ** 16, **kw):
        reader, data = asyncio.StreamReader(limit=limit), answer[0]

        async def deliver():
            step = rng.choice((1, 2, 3, 5, 16, 256, 2048))
            for i in range(0, len(data), step):
                reader.feed_data(data[i:i + step])
                await asyncio.sleep(0)
            reader.feed_eof()
        task = asyncio.get_running_loop().create_task(deliver())
        feeding.add(task)
        task.add_done_callback(feeding.discard)
        return reader, _Sent()
    monkeypatch.setattr(asyncio, "open_connection", open_connection)


EXPECT_ANSWERS = [b"OK\n", b"+OK POP3 ready\r\n", b"220 mail ESMTP\r\n", b"UP\n", b"STATUS: UPGRADING\n", b""]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    r = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        i = rng.randrange(len(r) + 1)
        op = rng.random()
        if op < 0.4:
            r[i:i] = rng.choice(NASTY + [b"OK", b"UP", b"\xe2\x80", b"\x1b[2J", b"\x1b]0;title\x07", b"weight ",
                                         b"load ", b"100%", b"nan", b"1e999", b"#", b"drain", b"\xd9\xa3"])
        elif op < 0.6:
            del r[i:i + rng.randrange(1, 16)]
        elif op < 0.75:
            r[i:i] = r[i:i + rng.randrange(1, 64)] * rng.randrange(2, 80)
        elif op < 0.85 and r:
            r[min(i, len(r) - 1)] = rng.randrange(256)
        else:
            r[i:i] = rng.randbytes(rng.randrange(1, 40))
    return bytes(r)


def test_fuzzed_send_expect_answers_pass_exactly_when_they_hold_what_is_expected(monkeypatch):
    """A send/expect check passes exactly when the answer's first READ_LIMIT bytes hold the
    expected text (a regex: on the lines there), wherever the segments end"""
    rng = random.Random(SEED ^ 0x5E)
    answer = [b""]
    standing_in(monkeypatch, rng, answer)
    plain = CheckSpec("send_expect", "198.18.0.2", 25, send=r"HELO\r\n", expect="OK", connect_timeout=5)
    regex = CheckSpec("send_expect", "198.18.0.2", 25, send=r"PING\n", expect=r"(?m)^UP\r?$", use_regex=True,
                      connect_timeout=5)

    async def main():
        passed = 0
        for _ in range(1500):
            answer[0] = a = _mutate(rng, rng.choice(EXPECT_ANSWERS))
            head = a[:READ_LIMIT]
            for spec, want in ((plain, b"OK" in head),
                               (regex, re.search(regex.expect, head.decode("utf-8", errors="replace")) is not None)):
                res = await run_check(spec)
                assert res.ok == want and not BARE_EXCEPTION.match(res.detail), (spec.expect, a[:200], res.detail)
                assert "\n" not in res.detail and len(res.detail) <= 1000, (a[:200], res.detail[:300])
                passed += res.ok
        return passed

    with named():
        assert asyncio.run(asyncio.wait_for(main(), 120)) > 100


def test_a_load_monitor_fed_fuzzed_answers_keeps_a_bounded_weight(monkeypatch):
    """The load monitor's whole ask, an agent's fuzzed answers: after one it reads, the weight is 0
    (an agent's drain or down) or within [min_weight, configured]; after one it cannot, the last
    weight is kept and it says why; what `lb status` shows of the answer is printable."""
    rng = random.Random(SEED ^ 0x10AD)
    answer = [b""]
    standing_in(monkeypatch, rng, answer)
    replies = [b"75%\n", b"up 50%\r\n", b"weight 3\n", b"load 0.7\n", b"drain\n", b"ready\n",
               b"down#maintenance window\n", b" 13:36:23 up 3 days,  2:01,  load average: 0.52, 0.58, 0.59\n"]

    async def main():
        readable = 0
        for configured, min_weight in ((4, 1), (100, 0), (1, 5)):
            task = LoadMonitorTask("rs", LoadSpec("agent", "198.18.0.2", 4444), 1.0, configured, min_weight, None)
            for _ in range(600):
                answer[0] = a = _mutate(rng, rng.choice(replies))
                before = task.weight
                await task.poll()
                where = (configured, min_weight, a[:200], task.detail[:300], before, task.weight)
                assert task.detail.isprintable() and len(task.detail) <= 1000, where
                if task.ok:
                    readable += 1
                    assert task.weight == 0 or min(min_weight, configured) <= task.weight <= configured, where
                else:
                    assert task.weight == before and task.detail.endswith("; weight kept"), where
        return readable

    with named():
        assert asyncio.run(asyncio.wait_for(main(), 120)) > 200


def _sync_payload(rng: random.Random) -> bytes:
    v4, v6 = ipaddress.ip_address("198.18.0.10"), ipaddress.ip_address("2001:2::10")
    recs = []
    for _ in range(rng.randrange(1, 8)):
        a = rng.choice([v4, v6])
        if rng.random() < 0.7:
            recs.append(sync.encode_conn((6, a + 1, 40000, a, 80, a + 2, 80, rng.randrange(sync.N_STATES),
                                          rng.choice([0, sync.SYNC_FLAGS]), rng.randrange(10**12),
                                          rng.randrange(1, 900), rng.randbytes(6))))
        else:
            recs.append(sync.encode_template((rng.choice([6, 17]), a + 1, a, 80, 0, a + 2, 80,
                                              rng.randrange(10**12), rng.randrange(1, 900))))
    return sync.pack_batches(recs)[0]


def test_fuzzed_sync_payloads_are_refused_whole_or_read_exactly():
    """A payload decodes only when every record is well formed, and then into records that encode
    back to the very bytes received: nothing of a record is lost or guessed."""
    rng = random.Random(SEED)
    with named():
        for _ in range(10000):
            p = bytearray(_sync_payload(rng))
            op = rng.random()
            if op < 0.4:
                for _ in range(rng.randrange(1, 4)):
                    p[rng.randrange(len(p))] = rng.randrange(256)
            elif op < 0.55:
                del p[rng.randrange(len(p)):]
            elif op < 0.7:
                p += rng.randbytes(rng.randrange(1, 80))
            elif op < 0.8:
                p = bytearray(rng.randbytes(rng.randrange(0, 300)))
            try:
                conns, temps = sync.decode_batch(bytes(p))
            except ValueError as e:
                assert str(e), bytes(p)
                # what the peer sent unchanged (a fifth of them) is read, never refused
                assert op < 0.8, (f"a well-formed payload refused: {e}", bytes(p).hex())
                continue
            again = [sync.encode_conn(c) for c in conns] + [sync.encode_template(t) for t in temps]
            assert sorted(again) == sorted(_records(bytes(p))), bytes(p).hex()


def _records(payload: bytes) -> list[bytes]:
    """the records of a well-formed payload, as sent"""
    out, off = [], sync.COUNT.size
    for _ in range(sync.COUNT.unpack_from(payload)[0]):
        size = (sync.CONN_REC if payload[off] == sync.K_CONN else sync.TEMPLATE_REC).size
        out.append(payload[off:off + size])
        off += size
    return out


def test_fuzzed_datagrams_are_refused_unless_they_are_the_peers_own():
    """Heartbeat and sync datagrams with bytes changed, cut or added, and random ones: each is
    refused with its reason; only an unchanged one decodes."""
    rng = random.Random(SEED)
    reasons: dict[str, int] = {}
    with named():
        for i in range(10000):
            sync_port = rng.random() < 0.5
            m = hb.Message(hb.T_SYNC if sync_port else rng.choice([hb.T_HEARTBEAT, hb.T_STANDDOWN]),
                           hb.S_ACTIVE, hb.NODE_PRIMARY, hb.CH_PUBLIC, rng.randrange(1, 1 << 64), i, 10**18,
                           hb.F_LINK_OK, _sync_payload(rng) if sync_port else hb.echo_payload(rng.randrange(1 << 64)))
            good = hb.encode(KEY, m)
            d = bytearray(good)
            op = rng.random()
            if op < 0.5:
                for _ in range(rng.randrange(1, 4)):
                    d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
            elif op < 0.65:
                del d[rng.randrange(len(d)):]
            elif op < 0.8:
                d += rng.randbytes(rng.randrange(1, 64))
            else:
                d = bytearray(rng.randbytes(rng.randrange(0, 1500)))
            kw = dict(sender=hb.NODE_PRIMARY, channel=hb.CH_PUBLIC,
                      types=hb.SOCKET_TYPES["sync" if sync_port else "heartbeat"])
            try:
                got = hb.decode(KEY, bytes(d), **kw)
            except hb.DecodeError as e:
                assert e.reason in ("malformed", "wrong_channel", "auth"), e
                reasons[e.reason] = reasons.get(e.reason, 0) + 1
                continue
            assert bytes(d) == good and got == m, bytes(d).hex()
        assert reasons.get("malformed", 0) > 1000 and reasons.get("auth", 0) > 1000, reasons


def _http_answer(answer: bytes, **kw) -> str:
    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(serve, HOST, 0)
        try:
            res = await run_check(CheckSpec("http", HOST, server.sockets[0].getsockname()[1], **kw))
        finally:
            server.close()
            await server.wait_closed()
        return res

    res = asyncio.run(main())
    return f"{res.ok} {res.detail}"


def test_what_the_fuzzer_found_in_answers():
    """latin-1's superscripts pass str.isdigit() and fail int(); separators str.split() takes and
    RFC 9112 does not; a chunk size of letters; a load of 311 digits overflows a float (inf),
    whose weight int() refuses"""
    assert _http_answer(b"HTTP/1.1 \xb200 OK\r\n\r\n") == "False malformed status line 'HTTP/1.1 ²00 OK'"
    # the status line's words apart: by what RFC 9112 lets a recipient take for SP (a tab), not
    # by all str.split() takes (a latin-1 line's \x1e, \xa0: such a status line passed)
    assert _http_answer(b"HTTP/1.1\t200 OK\r\n\r\n") == "True status 200"
    assert _http_answer(b"HTTP/1.1\x1e200 OK\r\n\r\n") == "False malformed status line 'HTTP/1.1\\x1e200 OK'"
    assert _http_answer(b"HTTP/1.1\xa0200 OK\r\n\r\n") == "False malformed status line 'HTTP/1.1\\xa0200 OK'"
    assert _http_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                        body_regex="hello") == \
        "False status 200, malformed chunked body: chunk size 'zz' is not a chunk size"
    # a Content-Length that is no length: the body is read to the end, as without one
    assert _http_answer(b"HTTP/1.1 200 OK\r\nContent-Length: \xb9\r\n\r\nhello", body_regex="hello") == \
        "True status 200, body matched 'hello'"
    for report in ("1" + "0" * 310 + "%", "load average: " + "9" * 400):
        try:
            parse_report(report)
            raise AssertionError(report)
        except ValueError as e:
            assert str(e).endswith("...' out of range"), e


def test_the_peers_datagrams_in_any_order_with_replays_are_accepted_at_most_once():
    """The peer's authentic messages over its restarts (boots one after another, each stream's
    sequence numbers and timestamps rising), delivered in a random order with every one of them
    possibly replayed: ReplayGuard accepts each (channel, kind, boot, sequence number) at most
    once -- a replayed sync datagram would install its connections again."""
    rng = random.Random(SEED)
    t0 = 10**18
    with named():
        for _ in range(300):
            msgs, ts = [], t0
            for _boot in range(rng.randint(2, 4)):
                boot = rng.randrange(1, 1 << 64)
                seqs = {}
                for _ in range(rng.randint(4, 40)):
                    ts += rng.randrange(1, 10**9)
                    typ = rng.choice([hb.T_HEARTBEAT, hb.T_HEARTBEAT, hb.T_SYNC])
                    chan = rng.choice([hb.CH_PUBLIC, hb.CH_PRIVATE])
                    seq = seqs[(typ, chan)] = seqs.get((typ, chan), 0) + 1
                    msgs.append(hb.Message(typ, hb.S_ACTIVE, hb.NODE_PRIMARY, chan, boot, seq, ts, 0, b""))
            guard, accepted = hb.ReplayGuard(), set()
            now = ts
            order = msgs + [rng.choice(msgs) for _ in range(len(msgs))]
            # mostly in order (as sent), some late, some replayed
            order.sort(key=lambda m: m.ts_ns + rng.randrange(0, 5 * 10**9))
            for m in order:
                if guard.check(m, now) is None:
                    key = (m.channel, m.type == hb.T_SYNC, m.boot, m.seq)
                    assert key not in accepted, (key, [(x.channel, x.type, x.boot % 1000, x.seq) for x in order])
                    accepted.add(key)
