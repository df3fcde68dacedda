"""pulse without a network: heartbeat codec (HMAC, replay window), the role state machine on a
fake clock, and the connection sync codec/exporter."""
import ipaddress
import os
import random
import time

import pytest

from lb.ha import heartbeat as hb
from lb.ha import sync
from lb.ha.pulse import ACTIVE, BACKUP, FAULT, LEAVING, STARTING, RoleMachine

from fuzzseed import SEED, named

KEY = b"k" * 32


def msg(seq, boot=1, ts=None, **kw):
    d = dict(type=hb.T_HEARTBEAT, state=hb.S_ACTIVE, node=0, channel=0, boot=boot, seq=seq,
             ts_ns=time.time_ns() if ts is None else ts)
    d.update(kw)
    return hb.Message(**d)


def test_codec_roundtrip_and_forgery():
    m = msg(5, payload=hb.echo_payload(77), flags=hb.F_LINK_OK)
    raw = hb.encode(KEY, m)
    assert hb.decode(KEY, raw) == m
    with pytest.raises(hb.DecodeError) as e:
        hb.decode(b"x" * 32, raw)
    assert e.value.reason == "auth"
    flipped = bytearray(raw)
    flipped[10] ^= 1
    with pytest.raises(hb.DecodeError):
        hb.decode(KEY, bytes(flipped))
    with pytest.raises(hb.DecodeError) as e:
        hb.decode(KEY, raw[:20])
    assert e.value.reason == "malformed"


def test_replay_window():
    g = hb.ReplayGuard()
    now = time.time_ns()
    assert g.check(msg(10, ts=now), now) is None
    assert g.check(msg(10, ts=now), now) == "replay"
    assert g.check(msg(12, ts=now), now) is None
    assert g.check(msg(11, ts=now), now) is None          # late but inside the window
    assert g.check(msg(11, ts=now), now) == "replay"
    assert g.check(msg(200, ts=now), now) is None
    assert g.check(msg(100, ts=now), now) == "replay"     # fell out of the window
    # channels are separate streams
    assert g.check(msg(10, ts=now, channel=1), now) is None
    # a new boot: fresh timestamps only, and never an older boot again
    assert g.check(msg(1, boot=2, ts=now - 10**12), now) == "stale"
    assert g.check(msg(1, boot=2, ts=now + 1000), now) is None
    assert g.check(msg(300, boot=1, ts=now), now) == "replay"


def test_read_keys(tmp_path):
    p = tmp_path / "k"
    p.write_bytes(b"short")
    p.chmod(0o600)
    with pytest.raises(ValueError, match="holds 5 bytes; at least 16"):
        hb.read_keys(p)
    p.write_bytes(b"a-long-enough-secret\n")
    assert hb.read_keys(p) == (b"a-long-enough-secret",)
    # a key some tool wrapped over lines (openssl rand -base64 64) is one key, as it always was
    wrapped = b"A" * 64 + b"\n" + b"B" * 24 + b"\n"
    p.write_bytes(wrapped)
    assert hb.read_keys(p) == (wrapped.strip(),)
    # a keyring: its first line says so; a key per line after it, the first signs; blank lines,
    # comments and surrounding spaces ignored
    p.write_bytes(b"# lb keyring: the first signs\n  the-new-key-0123456789  \n\n# the old one:\n"
                  b"\tthe-old-key-0123456789\r\n")
    assert hb.read_keys(p) == (b"the-new-key-0123456789", b"the-old-key-0123456789")
    p.write_bytes(b"# lb keyring\nthe-new-key-0123456789\nshort\n")
    with pytest.raises(ValueError, match=f"HA key file {p} line 3 holds 5 bytes.*wrapped over two lines"):
        hb.read_keys(p)
    p.write_bytes(b"# lb keyring\n" + b"".join(b"key-number-%d-0123456789\n" % i for i in range(hb.MAX_KEYS + 1)))
    with pytest.raises(ValueError, match=f"holds {hb.MAX_KEYS + 1} keys"):
        hb.read_keys(p)
    p.write_bytes(b"# lb keyring\n\n")
    with pytest.raises(ValueError, match="a keyring without a key"):
        hb.read_keys(p)
    # a binary key, newlines and all
    binary = bytes(range(256))[:40] + b"\n" + bytes(range(200, 240))
    p.write_bytes(binary)
    assert hb.read_keys(p) == (binary.strip(),)
    p.chmod(0o644)
    with pytest.raises(ValueError):
        hb.read_keys(p)
    # mode 0600 but another user's: whoever owns it can rewrite the key (as OpenSSH's StrictModes)
    p.chmod(0o600)
    os.chown(p, 65534, -1)
    with pytest.raises(ValueError, match="is owned by uid 65534"):
        hb.read_keys(p)


def test_any_key_of_the_keyring_verifies_and_says_which():
    m = msg(5)
    raw = hb.encode(b"the-old-key-0123456789", m)
    assert hb.decode((b"the-new-key-0123456789", b"the-old-key-0123456789"), raw).keyno == 1
    assert hb.decode((b"the-old-key-0123456789",), raw).keyno == 0
    with pytest.raises(hb.DecodeError, match="auth"):
        hb.decode((b"the-new-key-0123456789",), raw)


def roles_of(acts):
    return [a[1] for a in acts if a[0] == "role"]


def test_primary_alone_becomes_active_after_deadtime():
    m = RoleMachine(True, 0.2, 1.0, now=0.0)
    assert m.tick(0.5) == []
    assert roles_of(m.tick(1.0)) == [ACTIVE]
    assert ("standdown",) in m.tick(1.0) or m.state == ACTIVE


def test_backup_defers_to_the_primary_and_takes_over_when_it_dies():
    b = RoleMachine(False, 0.2, 1.0, now=0.0)
    assert roles_of(b.heard(0.1, STARTING)) == [BACKUP]   # the primary will take it
    p = RoleMachine(True, 0.2, 1.0, now=0.0)
    assert roles_of(p.heard(0.1, BACKUP)) == [ACTIVE]
    t = 0.1
    for _ in range(20):
        t += 0.2
        assert b.heard(t, ACTIVE) == []
    assert b.tick(t + 0.9) == []
    acts = b.tick(t + 1.0)
    assert roles_of(acts) == [ACTIVE] and ("standdown",) in acts


def test_returning_primary_does_not_fight_unless_preempt():
    p = RoleMachine(True, 0.2, 1.0, now=10.0)
    assert roles_of(p.heard(10.1, ACTIVE)) == [BACKUP]
    for i in range(50):
        assert p.heard(10.2 + i * 0.2, ACTIVE) == []
    q = RoleMachine(True, 0.2, 1.0, preempt=True, now=10.0)
    assert roles_of(q.heard(10.1, ACTIVE)) == [BACKUP]
    assert roles_of(q.tick(10.2)) == [ACTIVE]
    # the peer gets the stand-down and steps down
    b = RoleMachine(False, 0.2, 1.0, now=0.0)
    b.state = ACTIVE
    assert roles_of(b.standdown(10.3)) == [BACKUP]
    assert b.tick(10.4) == []


def test_two_actives_resolve_to_the_primary_at_once():
    p = RoleMachine(True, 0.2, 1.0, now=0.0)
    b = RoleMachine(False, 0.2, 1.0, now=0.0)
    p.state = b.state = ACTIVE
    assert roles_of(b.heard(5.0, ACTIVE)) == [BACKUP]
    assert p.heard(5.0, ACTIVE) == []
    assert ("announce",) in p.heard(5.2, BACKUP)
    for i in range(20):                                   # and stays so: no flapping
        assert b.heard(5.4 + i * 0.2, ACTIVE) == [] and p.heard(5.4 + i * 0.2, BACKUP) == []


def test_link_loss_steps_down_and_peer_fault_or_leaving_hands_over():
    p = RoleMachine(True, 0.2, 1.0, now=0.0)
    p.tick(1.0)
    assert p.state == ACTIVE
    assert roles_of(p.link(1.1, False)) == [FAULT]
    assert p.tick(5.0) == [] and p.state == FAULT
    b = RoleMachine(False, 0.2, 1.0, now=0.0)
    b.heard(0.1, ACTIVE)
    assert roles_of(b.heard(1.2, FAULT)) == [ACTIVE]
    c = RoleMachine(False, 0.2, 1.0, now=0.0)
    c.heard(0.1, ACTIVE)
    assert roles_of(c.heard(0.3, LEAVING)) == [ACTIVE]
    # back: nobody heard while the link was down, so a deadtime of listening first (the peer may
    # have taken over meanwhile), then active: nobody else is there
    assert roles_of(p.link(6.0, True)) == [BACKUP]
    assert p.tick(6.9) == []
    assert roles_of(p.tick(7.0)) == [ACTIVE]


def test_sync_codec_and_exporter():
    A = ipaddress.ip_address
    rec = (6, A("198.18.0.2"), 40000, A("198.18.0.10"), 80, A("198.18.1.11"), 80, 1, 0, 5_000_000, 900,
           b"\x02" * 6)
    tmpl = (6, A("198.18.0.0"), A("198.18.0.10"), 80, 0, A("198.18.1.12"), 80, 7_000_000, 300)
    e = sync.Exporter(rate=1000, interval=0.1)                # budget: 100 records per scan
    conns = [(b"k%d" % i, 1000, rec) for i in range(150)]
    out = e.select(conns, [(b"t", 1000, tmpl)])
    assert len(out) == 100 and e.pending == 51
    out2 = e.select(conns, [(b"t", 1000, tmpl)])
    assert len(out2) == 51 and e.pending == 0
    assert e.select(conns, [(b"t", 1000, tmpl)]) == []        # nothing changed
    changed = rec[:7] + (4,) + rec[8:]                        # state changed: sent again
    assert len(e.select([(b"k0", 1000, changed)], [])) == 1
    e.reset()                                                 # the peer came back: everything again
    assert len(e.select(conns, [(b"t", 1000, tmpl)])) == 100 and e.pending == 51
    batches = sync.pack_batches(out + out2)
    assert all(len(b) <= sync.PAYLOAD_MAX + 2 for b in batches)
    got_c, got_t = [], []
    for b in batches:
        c, t = sync.decode_batch(b)
        got_c += c
        got_t += t
    assert len(got_c) == 150 and got_t == [tmpl]
    assert got_c[0] == rec


def _pulse(tmp_path, notify, script_user="root"):
    from pathlib import Path

    from lb.config.model import HA
    from lb.ha.pulse import Pulse

    key = tmp_path / "ha.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    ha = HA(primary=ipaddress.ip_address("127.0.0.1"), backup=ipaddress.ip_address("127.0.0.2"),
            key_file=Path(key), notify=tuple(notify), script_user=script_user)

    async def on_role(new, old):
        pass

    return Pulse(ha, "inst1", on_role, node=hb.NODE_PRIMARY)


def test_notify_hooks_run_without_a_shell_and_are_killed_after_their_timeout(tmp_path, caplog):
    import asyncio
    import logging
    import os

    out = tmp_path / "args"
    hook = tmp_path / "hook"
    # the arguments are shell metacharacters: a shell would expand or split them; exec does not
    hook.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$#\" \"$@\" > {out}\n")
    hook.chmod(0o755)
    slow = tmp_path / "slow hook"          # a space in the path: fine without a shell
    pidfile = tmp_path / "slow.pid"
    slow.write_text(f"#!/bin/sh\necho $$ > '{pidfile}'\nexec sleep 30\n")
    slow.chmod(0o755)
    p = _pulse(tmp_path, [str(hook), str(slow), str(tmp_path / "missing")])
    p.NOTIFY_TIMEOUT = 0.5

    async def go():
        t0 = time.monotonic()
        await asyncio.gather(*(p._run_hook(prog, "active; touch x", "$HOME") for prog in p.ha.notify))
        return time.monotonic() - t0

    with caplog.at_level(logging.WARNING, logger="lb.ha"):
        took = asyncio.run(go())
    assert out.read_text().splitlines() == ["3", "active; touch x", "$HOME", "inst1"]
    assert not (tmp_path / "x").exists()
    assert took > 0.4, took                # the slow hook was waited for (then killed, below)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)                    # killed and reaped
    text = caplog.text
    assert f"notify hook {slow} killed after 0.5 s" in text
    assert "missing" in text               # a missing program is logged, not raised


# ---- reference encodings: bytes written out from the documented wire format ------------------

def test_heartbeat_reference_encoding():
    """lb.ha.heartbeat's docstring: a 40-byte header, the payload (a heartbeat's: the echo u64),
    HMAC-SHA256 over both."""
    import hashlib
    import hmac

    header = bytes.fromhex(
        "4c424841"            # magic "LBHA"
        "01" "01" "02" "01"   # version 1, type heartbeat, state active, flags link ok
        "00" "01" "0000"      # node primary, channel private, pad
        "0102030405060708"    # boot id
        "0000000000000009"    # seq
        "1122334455667788"    # sender's wall clock, ns
        "0008" "0000")        # payload length, pad
    payload = bytes.fromhex("a1a2a3a4a5a6a7a8")    # echo: the receiver's boot id
    want = header + payload + hmac.new(KEY, header + payload, hashlib.sha256).digest()
    m = hb.Message(hb.T_HEARTBEAT, hb.S_ACTIVE, hb.NODE_PRIMARY, hb.CH_PRIVATE, 0x0102030405060708, 9,
                   0x1122334455667788, hb.F_LINK_OK, hb.echo_payload(0xA1A2A3A4A5A6A7A8))
    assert hb.encode(KEY, m) == want
    got = hb.decode(KEY, want, sender=hb.NODE_PRIMARY, channel=hb.CH_PRIVATE, types=hb.SOCKET_TYPES["heartbeat"])
    assert got == m and got.echo == 0xA1A2A3A4A5A6A7A8


A = ipaddress.ip_address
CONN = (6, A("198.18.0.2"), 40000, A("198.18.0.10"), 80, A("198.18.1.11"), 8080, 1, 0, 1_500_000_000, 900,
        bytes.fromhex("020000000001"))
TEMPLATE = (17, A("2001:2::2"), A("2001:2::10"), 53, 0, A("2001:2:0:1::11"), 53, 0, 300)
CONN_HEX = ("01" "06" "04" "01" "00"                                  # kind conn, TCP, IPv4, ESTABLISHED, flags
            "c6120002" + "00" * 12 + "9c40"                          # client 198.18.0.2:40000
            "c612000a" + "00" * 12 + "0050"                          # VIP 198.18.0.10:80
            "c612010b" + "00" * 12 + "1f90"                          # real server 198.18.1.11:8080
            "000005dc" "00000384"                                    # age 1500 ms, timeout 900 s
            "020000000001")                                          # client MAC
TEMPLATE_HEX = ("02" "11" "06"                                         # kind template, UDP, IPv6
                "20010002000000000000000000000002"                     # client 2001:2::2
                "20010002000000000000000000000010" "0035"              # VIP 2001:2::10 port 53
                "00000000"                                             # fwmark
                "20010002000000010000000000000011" "0035"              # real server 2001:2:0:1::11:53
                "00000000" "0000012c")                                 # age 0 ms, timeout 300 s


def test_sync_record_reference_encoding():
    payload = bytes.fromhex("0002" + CONN_HEX + TEMPLATE_HEX)          # u16 count, then the records
    assert sync.pack_batches([sync.encode_conn(CONN), sync.encode_template(TEMPLATE)]) == [payload]
    assert sync.decode_batch(payload) == ([CONN], [TEMPLATE])


def _sync_datagram(payload, seq=1):
    return hb.encode(KEY, hb.Message(hb.T_SYNC, hb.S_ACTIVE, hb.NODE_PRIMARY, hb.CH_PUBLIC, 5, seq,
                                     time.time_ns(), hb.F_LINK_OK, payload))


def test_every_flipped_byte_of_a_sync_datagram_is_refused():
    payload = bytes.fromhex("0002" + CONN_HEX + TEMPLATE_HEX)
    dgram = _sync_datagram(payload)
    kw = dict(sender=hb.NODE_PRIMARY, channel=hb.CH_PUBLIC, types=hb.SOCKET_TYPES["sync"])
    assert hb.decode(KEY, dgram, **kw).payload == payload
    reasons = {}
    for i in range(len(dgram)):
        for bit in (0x01, 0x80):
            bad = bytearray(dgram)
            bad[i] ^= bit
            with pytest.raises(hb.DecodeError) as e:
                hb.decode(KEY, bytes(bad), **kw)
            reasons[e.value.reason] = reasons.get(e.value.reason, 0) + 1
    # the header's fields fail the cheap checks, the rest (payload, MAC) the MAC
    assert reasons["auth"] >= 2 * (len(payload) + hb.MAC_LEN)
    assert reasons.get("malformed", 0) + reasons.get("wrong_channel", 0) > 0


def test_cheap_checks_come_before_the_mac(monkeypatch):
    computed = []
    real_new = hb.hmac.new
    monkeypatch.setattr(hb.hmac, "new", lambda *a, **k: computed.append(1) or real_new(*a, **k))
    good = hb.encode(b"x" * 32, msg(1))      # a well-formed header, another key
    computed.clear()
    kw = dict(sender=hb.NODE_PRIMARY, channel=hb.CH_PUBLIC, types=hb.SOCKET_TYPES["heartbeat"])
    for junk, reason in ((b"\0" * 100, "malformed"), (b"LBHA" + b"\x02" + good[5:], "malformed"),
                         (good[:-1], "malformed"), (good + b"x" * 2000, "malformed"),
                         (hb.encode(KEY, msg(1, node=1)), "wrong_channel"),            # claims to be us
                         (hb.encode(KEY, msg(1, channel=1)), "wrong_channel"),
                         (_sync_datagram(b"\0\0"), "wrong_channel")):                  # sync on the heartbeat port
        computed.clear()
        with pytest.raises(hb.DecodeError) as e:
            hb.decode(KEY, junk, **kw)
        assert e.value.reason == reason and computed == [], (junk[:12], e.value)
    with pytest.raises(hb.DecodeError) as e:
        hb.decode(KEY, good, **kw)
    assert e.value.reason == "auth" and computed == [1]


def test_sync_records_are_checked_whole():
    good = bytes.fromhex("0002" + CONN_HEX + TEMPLATE_HEX)
    conn = bytearray(bytes.fromhex(CONN_HEX))
    cases = {
        "truncated": good[:-5],
        "count too high": bytes.fromhex("0003") + good[2:],
        "trailing bytes": good + b"\0",
        "unknown kind": bytes.fromhex("0001") + b"\x07" + bytes(72),
        "protocol": bytes.fromhex("0001") + bytes(conn[:1]) + b"\x01" + bytes(conn[2:]),
        "family": bytes.fromhex("0001") + bytes(conn[:2]) + b"\x05" + bytes(conn[3:]),
        "state": bytes.fromhex("0001") + bytes(conn[:3]) + b"\x40" + bytes(conn[4:]),
        "flags": bytes.fromhex("0001") + bytes(conn[:4]) + b"\x02" + bytes(conn[5:]),      # CONN_F_OUT
        "IPv4 padding": bytes.fromhex("0001") + bytes(conn[:10]) + b"\x01" + bytes(conn[11:]),
        "timeout 0": bytes.fromhex("0001") + bytes(conn[:63]) + bytes(4) + bytes(conn[67:]),
        "garbage": bytes(range(256)) * 4,
    }
    for name, payload in cases.items():
        with pytest.raises(ValueError):
            sync.decode_batch(payload)
    assert sync.decode_batch(good) == ([CONN], [TEMPLATE])


def test_admit_keeps_ages_older_than_the_backups_clock_and_drops_expired():
    old = CONN[:9] + (600 * 10**9,) + CONN[10:]            # 600 s old, timeout 900 s
    expired = CONN[:9] + (901 * 10**9,) + CONN[10:]
    tmpl = TEMPLATE[:7] + (200 * 10**9,) + TEMPLATE[8:]
    now = 5 * 10**9                                        # a backup up for 5 s
    conns, temps, n_expired = sync.admit([old, expired, CONN], [tmpl], now)
    assert n_expired == 1
    assert conns == [old, CONN]                            # older than the backup: kept whole
    assert temps == [tmpl]


def test_sync_receiver_refuses_bad_payloads_writes_nothing_of_them_and_lives_on(tmp_path, caplog):
    import asyncio
    import logging

    written = []
    p = _pulse(tmp_path, [])
    p.sync_sink = lambda conns, temps, owned_since_ns: written.append((conns, temps)) or (len(conns) + len(temps), 0)
    p.coarse_ns = lambda: 5 * 10**9                        # the backup's clock: up for 5 s
    good = bytes.fromhex("0002" + CONN_HEX + TEMPLATE_HEX)
    # an entry 3600 s old (timeout 10000 s): older than the backup's clock
    old = bytes.fromhex("0001" + CONN_HEX[:-28] + "0036ee80" "00002710" + CONN_HEX[-12:])

    async def main():
        task = p._supervise("pulse-sync-in", p._sync_in)
        for payload in (good[:-5], bytes(range(200)), b"\x00", old, good):
            p._sync_queue.put_nowait(payload)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        alive = not task.done()
        task.cancel()
        return alive

    with caplog.at_level(logging.WARNING, logger="lb.ha"):
        alive = asyncio.run(asyncio.wait_for(main(), 10))
    assert alive
    assert p.counters["sync_rejected"] == 3
    assert p.task_stats["pulse-sync-in"].restarts == 0
    # only the good payload and the old entry were installed, the old one with its whole age
    (c1, t1), (c2, t2) = written
    assert c1[0][9] == 3600 * 10**9 and t1 == []
    assert (c2, t2) == ([CONN], [TEMPLATE])
    assert caplog.text.count("refused a sync datagram") == 1     # rate-limited: one line for three


# ---- two directors in memory: fake clocks, the real codec, guard and role machine ---------------

class Pair:
    """A primary and a backup Pulse whose datagrams go straight to each other's receive path
    (no sockets), each with its own wall clock, on one fake monotonic clock."""

    def __init__(self, tmp_path, skew_s=0.0, max_skew=30.0, keepalive=0.2, deadtime=1.0):
        from pathlib import Path

        from lb.config.model import HA
        from lb.ha.pulse import Pulse

        key = tmp_path / "ha.key"
        key.write_bytes(KEY)
        key.chmod(0o600)
        self.ha = HA(primary=A("198.18.0.1"), backup=A("198.18.0.3"), key_file=Path(key), keepalive=keepalive,
                     deadtime=deadtime, max_skew=max_skew, sync=False)
        self.t = 1000.0
        self.wall0 = time.time_ns()
        self.skew = {hb.NODE_PRIMARY: 0, hb.NODE_BACKUP: int(skew_s * 1e9)}
        self.cut = set()                    # nodes whose datagrams are lost
        self.Pulse = Pulse
        self.nodes = {}
        self.next_hb = {}

    def start(self, node):
        async def on_role(new, old):
            pass

        p = self.Pulse(self.ha, "lab", on_role, node=node, clock=lambda: self.t,
                       wall_ns=lambda: self.wall0 + int((self.t - 1000.0) * 1e9) + self.skew[node])
        p._send = lambda c, typ, state=None, payload=None: self._deliver(p, c, typ, state, payload)
        self.nodes[node] = p
        self.next_hb[node] = self.t
        return p

    def _deliver(self, p, c, typ, state, payload):
        data = p.encode(c, typ, state, payload)
        other = self.nodes.get(1 - p.node)
        if other is not None and p.node not in self.cut:
            other._receive(other.channels[c.id], "sync" if typ == hb.T_SYNC else "heartbeat", data)

    def run(self, seconds, step=0.05):
        for _ in range(int(seconds / step)):
            self.t += step
            for node, p in list(self.nodes.items()):
                if self.t >= self.next_hb[node]:
                    p._send_all(hb.T_HEARTBEAT)
                    self.next_hb[node] = self.t + self.ha.keepalive
                for a in p.decide():
                    if a[0] == "role":
                        p._send_all(hb.T_HEARTBEAT)
                    elif a[0] == "standdown":
                        p._send_all(hb.T_STANDDOWN)

    def roles(self):
        return {n: p.role for n, p in self.nodes.items()}


def test_a_sync_backlog_read_after_the_peers_leaving_does_not_undo_the_takeover(tmp_path):
    """The active primary's sync datagrams (each says "active") sent before it stops, read by the
    backup after its "leaving" heartbeat (sync comes in bursts on the private channel, read 64 at
    a time): the backup took over on "leaving" and stays active -- the late sync messages are older
    news than that heartbeat.  (They made it step down as if two were active, then take over
    again a deadtime later.)"""
    from lb.ha import sync as hsync

    pair = Pair(tmp_path)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    chan = primary.channels[0]
    late = [primary.encode(chan, hb.T_SYNC, None, hsync.COUNT.pack(0)) for _ in range(40)]
    del pair.nodes[hb.NODE_PRIMARY]                       # it stops: "leaving", then nothing
    primary._send_all(hb.T_HEARTBEAT, LEAVING)
    pair.run(0.1)
    assert backup.role == "active"
    changes = backup.machine.changes
    for data in late:
        backup._receive(backup.channels[0], "sync", data)
    pair.run(2.0)
    assert backup.role == "active" and backup.machine.changes == changes
    assert backup.status()["peer"]["state"] == "leaving"


def test_kernel_drops_warn_while_recent_then_stay_only_counted(tmp_path, monkeypatch):
    """A burst of datagrams the kernel dropped (the heartbeat socket's buffer full) is a warning
    in `lb status` for a minute after the last drop, as a refusal is, then only a count: one
    burst long past made every `lb status` warn for the rest of the daemon's life."""
    from lb.ha import pulse as pulse_mod

    pair = Pair(tmp_path)
    primary = pair.start(hb.NODE_PRIMARY)
    drops = {"n": 0}
    monkeypatch.setattr(pulse_mod, "_drops", lambda sock: drops["n"])
    primary.poll_strays()
    assert not [w for w in primary.warnings() if "dropped" in w]
    drops["n"] = 37
    primary.poll_strays()
    pair.t += 10
    [w] = [w for w in primary.warnings() if "dropped" in w]
    assert "the kernel dropped 37 datagrams" in w and "the last 10s ago" in w
    pair.t += primary.REFUSED_WARNING
    primary.poll_strays()                                     # no new drops
    assert not [w for w in primary.warnings() if "dropped" in w]
    assert primary.counters["kernel_drops"] >= 37


def test_the_sync_scan_runs_off_the_event_loop(tmp_path):
    """The active's export: the read of the tables and the exporter's walk of every live entry
    both in an executor thread -- on the loop, a million entries' walk held the heartbeats (and
    the HA lease they refresh) for seconds every sync_interval."""
    import asyncio
    import threading

    pair = Pair(tmp_path)
    primary = pair.start(hb.NODE_PRIMARY)
    pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    rec = (6, A("198.18.0.2"), 40000, A("198.18.0.10"), 80, A("198.18.1.11"), 80, 1, 0, 5_000_000, 900,
           b"\x02" * 6)
    conns = [(b"k%d" % i, 1000, rec) for i in range(10)]
    threads = {}
    primary.sync_source = lambda: (threads.setdefault("source", threading.get_ident()), (conns, []))[1]
    select = primary.exporter.select
    primary.exporter.select = lambda c, t: (threads.setdefault("select", threading.get_ident()), select(c, t))[1]

    async def go():
        threads["loop"] = threading.get_ident()
        task = asyncio.create_task(primary._sync_out())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if primary.counters["sync_tx_records"]:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(go())
    assert primary.counters["sync_tx_records"] == 10
    assert threads["source"] != threads["loop"] and threads["select"] != threads["loop"]


def test_skewed_clocks_one_active_and_a_clear_status(tmp_path):
    pair = Pair(tmp_path, skew_s=120.0)                  # the backup's clock is two minutes ahead
    primary = pair.start(hb.NODE_PRIMARY)
    pair.run(1.5)
    assert pair.roles() == {0: "active"}
    backup = pair.start(hb.NODE_BACKUP)                  # a restart of the backup: a new boot
    pair.run(5.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    assert backup.machine.changes == 1 and primary.machine.changes == 1   # no second active, no flapping
    st = backup.status()
    assert st["peer"]["alive"] and st["peer"]["state"] == "active"
    assert abs(st["peer"]["clock_skew_s"] + 120.0) < 0.5
    assert any("clock differs from ours by -120.0s (max_skew 30s)" in w for w in st["warnings"]), st["warnings"]
    assert any("+120.0s" in w for w in primary.status()["warnings"])
    # the primary restarts too (the backup takes over meanwhile), then comes back: one active
    pair.cut.add(hb.NODE_PRIMARY)
    del pair.nodes[hb.NODE_PRIMARY]
    pair.run(1.5)
    assert pair.roles() == {1: "active"}
    pair.cut.clear()
    pair.start(hb.NODE_PRIMARY)
    pair.run(5.0)
    assert pair.roles() == {0: "backup", 1: "active"}



def test_replays_of_the_peers_old_heartbeats_do_not_spoil_our_echo(tmp_path):
    """With the clocks further apart than max_skew, a director's new boot is accepted by its peer
    only through the echo: the peer's heartbeats echo the boot it last heard from.  Replays of the
    restarted director's heartbeats from before its restart (captured on the wire, sent to the
    peer with its address) must not turn that echo back to the old boot: the restarted backup
    would never accept the active primary, and would become active too."""
    pair = Pair(tmp_path, skew_s=120.0)
    primary = pair.start(hb.NODE_PRIMARY)
    pair.run(1.5)
    old_backup = pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    captured = [old_backup.encode(c, hb.T_HEARTBEAT) for c in old_backup.channels]
    backup = pair.start(hb.NODE_BACKUP)                  # the backup restarts: a new boot
    deliver = pair._deliver

    def with_replays(p, c, typ, state, payload):       # before each of the primary's datagrams,
        if p is primary:                                # the old boot's heartbeats reach it again
            for data, ch in zip(captured, primary.channels):
                primary._receive(ch, "heartbeat", data)
        deliver(p, c, typ, state, payload)
    pair._deliver = with_replays
    pair.run(5.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    assert backup.machine.changes == 1 and primary.machine.changes == 1
    assert backup.status()["peer"]["alive"]



def test_a_peer_that_cannot_hear_us_is_still_heard(tmp_path):
    """A one-way link: the backup starts and hears the active primary, whose heartbeats never echo
    the backup's boot (the backup's do not reach it).  After half a deadtime they are heard all the
    same: the backup stays backup, as it did before heartbeats were heard only once echoing."""
    pair = Pair(tmp_path)
    primary = pair.start(hb.NODE_PRIMARY)
    pair.run(1.5)
    pair.cut.add(hb.NODE_BACKUP)
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(5.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    assert backup.machine.changes == 1 and primary.machine.changes == 1
    assert backup.counters["unheard"] > 0 and backup.status()["peer"]["alive"]

def eavesdrop(pair, rng, attack: bool) -> None:
    """Every datagram delivered, and kept by sender; with ``attack``, now and then (at each
    datagram a director sends), up to three of those captured from its peer sent to it (the
    peer's address and port spoofed), as an eavesdropper on the wire would -- also while that
    peer is gone or cut off, when the replays alone speak for it."""
    captured = {hb.NODE_PRIMARY: [], hb.NODE_BACKUP: []}

    def tapped(p, c, typ, state, payload):
        peer = 1 - p.node
        if attack and captured[peer] and rng.random() < 0.5:
            for ch, k, old in rng.sample(captured[peer], min(3, len(captured[peer]))):
                p._receive(p.channels[ch], k, old)
        data = p.encode(c, typ, state, payload)
        other = pair.nodes.get(peer)
        if other is None or p.node in pair.cut:
            return
        kind = "sync" if typ == hb.T_SYNC else "heartbeat"
        other._receive(other.channels[c.id], kind, data)
        captured[p.node].append((c.id, kind, data))
    pair._deliver = tapped


def _history(tmp_path, rng_seed, skew, restarts, attack):
    """Two in-memory directors through a history of restarts, every datagram delivered; with
    ``attack``, an eavesdropper also sends each director, now and then, datagrams captured from
    its peer earlier (the peer's address and port spoofed).  The roles over time, sampled."""
    rng = random.Random(rng_seed)
    tmp_path.mkdir(parents=True)
    pair = Pair(tmp_path, skew_s=skew)
    eavesdrop(pair, rng, attack)
    pair.start(hb.NODE_PRIMARY)
    pair.run(1.5)
    pair.start(hb.NODE_BACKUP)
    seen = []
    for who in restarts:
        pair.run(2.0)
        seen.append(sorted(pair.roles().items()))
        if who == hb.NODE_PRIMARY:                 # gone for a while, then back
            pair.cut.add(who)
            del pair.nodes[who]
            pair.run(1.5)
            seen.append(sorted(pair.roles().items()))
            pair.cut.clear()
        pair.start(who)
    pair.run(3.0)
    seen.append(sorted(pair.roles().items()))
    return seen, {n: p.machine.changes for n, p in pair.nodes.items()}


def test_replayed_datagrams_never_change_a_role(tmp_path):
    """Histories of restarts, the clocks together or apart (beyond max_skew too): replaying any
    authentic datagram captured earlier, at any time, changes no role -- the roles over time and
    the role changes are those of the same history without the eavesdropper.  Seeded by
    LB_FUZZ_SEED."""
    rng = random.Random(SEED)
    with named():
        for trial in range(8):
            skew = rng.choice([0.0, 10.0, 120.0])
            restarts = [rng.choice([hb.NODE_PRIMARY, hb.NODE_BACKUP]) for _ in range(rng.randint(1, 3))]
            plain = _history(tmp_path / f"{trial}a", trial, skew, restarts, False)
            attacked = _history(tmp_path / f"{trial}b", trial, skew, restarts, True)
            assert attacked == plain, (skew, restarts, plain, attacked)

def test_peer_with_another_key_is_reported_as_heard_but_refused(tmp_path, caplog):
    import logging

    pair = Pair(tmp_path)
    primary = pair.start(hb.NODE_PRIMARY)
    backup = pair.start(hb.NODE_BACKUP)
    backup.keys = (b"another-key-entirely-0123456789",)
    with caplog.at_level(logging.WARNING, logger="lb.ha"):
        pair.run(3.0)
    st = primary.status()
    assert st["counters"]["bad_auth"] >= 10
    assert st["channels"]["public"]["refused"]["bad_auth"] == st["counters"]["bad_auth"]
    assert any("datagrams from the peer 198.18.0.3 are refused (bad MAC (another key_file?)" in w
               for w in st["warnings"]), st["warnings"]
    # logged, at a bounded rate: one line per 10 s for each director, not one per datagram
    assert caplog.text.count("refused a datagram from the peer") == 2


# ---- two directors over loopback: real sockets, floods from elsewhere and with the peer's address ----

def _free_udp_pair() -> int:
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                    b.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free pair of UDP ports")


def _loopback_ha(tmp_path, deadtime: float):
    """[ha] for a primary on 127.0.0.1 and a backup on 127.0.0.2, a free port pair, no sync"""
    from pathlib import Path

    from lb.config.model import HA

    key = tmp_path / "ha.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    return HA(primary=A("127.0.0.1"), backup=A("127.0.0.2"), key_file=Path(key),
              heartbeat_port=_free_udp_pair(), keepalive=0.1, deadtime=deadtime, sync=False)


def test_floods_are_dropped_before_the_mac_and_roles_hold(tmp_path, monkeypatch):
    """Primary 127.0.0.1 and backup 127.0.0.2 over loopback.  20000 datagrams from 127.0.0.3
    to the backup's heartbeat port are counted as offpath and never reach the codec; 20000 with
    the primary's own address and port (spoofed) are refused by the header checks (no MAC) or,
    with a well-formed header, by the MAC; the roles do not move."""
    import asyncio
    import socket
    import threading

    from lab_http import wait_until
    from lb.ha.pulse import Pulse

    ha = _loopback_ha(tmp_path, deadtime=1.0)
    port = ha.heartbeat_port
    macs = []
    real_compare = hb.hmac.compare_digest
    monkeypatch.setattr(hb.hmac, "compare_digest", lambda a, b: macs.append(1) or real_compare(a, b))

    async def on_role(new, old):
        pass

    def flood(src, payloads, n):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(src)
            for i in range(n):
                try:
                    s.sendto(payloads[i % len(payloads)], ("127.0.0.2", port))
                except OSError:
                    pass

    forged = hb.encode(b"not-the-key-at-all-0123456789",
                       hb.Message(hb.T_STANDDOWN, hb.S_ACTIVE, hb.NODE_PRIMARY, hb.CH_PUBLIC, 7, 1, time.time_ns()))
    junk = [b"x" * 60, b"LBHA" + bytes(80), forged]

    async def main():
        p = Pulse(ha, "a", on_role, node=hb.NODE_PRIMARY)
        b = Pulse(ha, "b", on_role, node=hb.NODE_BACKUP)
        await p.start()
        await asyncio.sleep(0.3)
        await b.start()
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                if (p.role, b.role) == ("active", "backup"):
                    break
            assert (p.role, b.role) == ("active", "backup")
            changes = (p.machine.changes, b.machine.changes)
            macs.clear()
            rx_before = b.counters["rx"]
            await asyncio.to_thread(flood, ("127.0.0.3", 0), junk, 20000)        # off path
            # until the last of them is counted (read, or its kernel drop reported)
            await asyncio.to_thread(wait_until, lambda: b.counters["offpath"] >= 20000, 20,
                                    "the 20000 off-path datagrams to be counted")
            offpath = b.counters["offpath"]
            offpath_macs = len(macs)
            rx_offpath = b.counters["rx"] - rx_before
            macs.clear()
            spoof = threading.Thread(target=flood, args=(("127.0.0.1", port), junk, 20000))
            spoof.start()
            while spoof.is_alive():
                await asyncio.sleep(0.05)
            await asyncio.sleep(2 * ha.deadtime)                                # the peer must stay alive
            return p, b, changes, offpath, offpath_macs, rx_offpath
        finally:
            await b.stop()
            await p.stop()

    p, b, changes, offpath, offpath_macs, rx_offpath = asyncio.run(asyncio.wait_for(main(), 60))
    assert (p.role, b.role) == ("active", "backup") and (p.machine.changes, b.machine.changes) == changes
    # off path: every datagram counted (read, or dropped by the kernel from the catch-all's
    # small buffer), no MAC beyond the real heartbeats' (2 x 10 per second while the flood lands)
    assert offpath == 20000, b.status()["channels"]
    assert offpath_macs < 100 and rx_offpath > 0
    c = b.counters
    refused = c["malformed"] + c["bad_auth"] + c["kernel_drops"]
    assert refused >= 20000 * 0.9, c            # read and refused, or dropped by the kernel: counted
    # MACs computed: the forged third of the flood and the real heartbeats (both ways, 10/s, a few s)
    assert c["bad_auth"] <= 20000 // 3 + 1 and len(macs) <= c["bad_auth"] + 200
    assert c["malformed"] >= c["bad_auth"]      # two thirds of the flood never got to the MAC
    st = b.status()
    assert any("datagrams with the peer 127.0.0.1's address were refused" in w and "while its own are accepted" in w
               for w in st["warnings"]), st["warnings"]


def test_notify_programs_run_as_script_user_with_a_minimal_environment(tmp_path, monkeypatch):
    import asyncio
    import os
    import pwd
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setenv("LB_SECRET_OF_THE_DAEMON", "s3cret")
    shared = tempfile.mkdtemp(prefix="lb-notify-")        # nobody must reach the hook and its output
    try:
        os.chmod(shared, 0o1777)
        hook = os.path.join(shared, "hook")
        out = os.path.join(shared, "out")
        with open(hook, "w") as f:
            f.write(f"#!/bin/sh\n{{ id -u; pwd; /usr/bin/env; }} > {out}\n")
        os.chmod(hook, 0o755)
        p = _pulse(tmp_path, [hook], script_user="nobody")
        asyncio.run(asyncio.wait_for(p._run_hook(hook, "active", "backup"), 10))
        lines = open(out).read().splitlines()
    finally:
        shutil.rmtree(shared)
    assert lines[:2] == [str(nobody.pw_uid), "/"]
    env = dict(line.split("=", 1) for line in lines[2:])
    env.pop("PWD", None)                                  # sh's own
    assert sorted(env) == ["LANG", "LB_INSTANCE", "LB_OLD_ROLE", "LB_ROLE", "PATH"], env
    assert (env["LB_ROLE"], env["LB_OLD_ROLE"], env["LB_INSTANCE"]) == ("active", "backup", "inst1")


def test_a_director_is_reported_active_only_once_its_takeover_is_done(tmp_path):
    """`lb status` says active only when the takeover (on_role: addresses claimed, announced)
    has run; while it runs, the role before it.  (A lab test once read "active" and found the
    VIP not yet on the interface.)"""
    import asyncio

    from lb.ha.pulse import Pulse

    ha = _loopback_ha(tmp_path, deadtime=0.5)
    seen = []

    async def on_role(new, old):
        seen.append(("during", pulse.role))
        await asyncio.sleep(0.3)                  # a takeover that takes a while
        seen.append(("at its end", pulse.role))

    pulse = Pulse(ha, "alone", on_role, node=hb.NODE_PRIMARY)

    async def main():
        await pulse.start()
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                if len(seen) == 2:
                    break
            await asyncio.sleep(0.05)
            return pulse.role
        finally:
            await pulse.stop()

    role = asyncio.run(asyncio.wait_for(main(), 30))
    assert seen == [("during", "starting"), ("at its end", "starting")]
    assert role == "active"


_WATCH = """
import ipaddress, subprocess, sys, time
from lb.ha import addresses
w = addresses.Watch()
told = []
w.on_own_change = lambda: told.append(time.monotonic())
w.start()

def own_changed_within(s):
    deadline = time.monotonic() + s
    while not w.own_changed():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True

try:
    assert w.due(0.0), "the first look"
    assert not w.due(0.5), "nothing told since"
    time.sleep(0.5)
    assert not w.own_changed() and not told, "no address came or went"
    subprocess.run(["ip", "addr", "add", "198.18.0.77/32", "dev", "w0"], check=True)
    # the director's own addresses: an address added is told at once (the engine reads them then)
    assert own_changed_within(10), "rtnetlink told nothing of the address added"
    assert told and not w.own_changed(), "told once, then cleared"
    time.sleep(1)
    assert not w.due(1.0), "an address added is no reason to look"
    subprocess.run(["ip", "addr", "del", "198.18.0.77/32", "dev", "w0"], check=True)
    deadline = time.monotonic() + 10
    while not w.due(2.0):
        assert time.monotonic() < deadline, "rtnetlink told nothing of the address removed"
        time.sleep(0.05)
    assert own_changed_within(10), "... nor, for the director's own addresses, of the removal"
    assert not w.due(3.0) and w.due(2.0 + addresses.Watch.FULL_CHECK), "a look every FULL_CHECK seconds"
    # a burst of notifications (a thousand addresses added at once), then one removal: it is
    # heard at once, not behind the burst's backlog (a CI run's VIP stayed gone 15 s so)
    subprocess.run(["ip", "-batch", "-"], check=True, text=True,
                   input="".join(f"addr add 198.18.{1 + i // 250}.{1 + i % 250}/32 dev w0\\n" for i in range(1000)))
    time.sleep(1)
    w.due(40.0)
    subprocess.run(["ip", "addr", "del", "198.18.1.1/32", "dev", "w0"], check=True)
    deadline = time.monotonic() + 10
    while not w.due(41.0):
        assert time.monotonic() < deadline, "the removal after a burst was not told (it waited behind the burst)"
        time.sleep(0.05)
    # links: an XDP program attached, then removed by hand, each told (the engine looks for its
    # programs then); an address is no link change
    assert w.links_due(50.0), "the first look at the links"
    assert not w.links_due(50.5), "no link changed since"
    subprocess.run(["ip", "addr", "add", "198.18.0.79/32", "dev", "w0"], check=True)
    time.sleep(1)
    assert not w.links_due(51.0), "an address added is no link change"
    from bcc import BPF
    b = BPF(text="int lbw_pass(struct xdp_md *ctx) { return XDP_PASS; }")
    b.attach_xdp("w0", b.load_func("lbw_pass", BPF.XDP), 0)

    def links_due_within(s, at):
        deadline = time.monotonic() + s
        while not w.links_due(at):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True
    assert links_due_within(10, 52.0), "rtnetlink told nothing of the XDP program attached"
    time.sleep(0.5)
    w.links_due(52.5)                   # (the attach's notifications, however many)
    assert not w.links_due(52.6)
    subprocess.run(["ip", "link", "set", "dev", "w0", "xdp", "off"], check=True)
    assert links_due_within(10, 53.0), "rtnetlink told nothing of `ip link set dev w0 xdp off`"
    time.sleep(0.5)
    w.links_due(53.5)
    assert not w.links_due(54.0) and w.links_due(53.5 + addresses.Watch.FULL_CHECK), "a look every FULL_CHECK s"
    w.links_again()
    assert w.links_due(90.0), "links_again: the next check looks"
    owned = [addresses.OwnedAddress("w0", ipaddress.ip_interface("198.18.0.77/32")),
             addresses.OwnedAddress("w0", ipaddress.ip_interface("2001:2::77/128")),
             addresses.OwnedAddress("w1", ipaddress.ip_interface("198.18.0.78/32"))]
    back, errors = addresses.restore(owned)
    assert back == owned[:2] and errors == [], (back, errors)   # w1 is down: left for later
    assert addresses.restore(owned) == ([], [])
finally:
    w.stop()
print("ok")
"""


def test_lost_addresses_are_looked_for_when_rtnetlink_tells(tmp_path):
    """addresses.Watch hears of an address removed (rtnetlink's notifications) and then says to
    look; restore() adds back the addresses gone from interfaces that are up, in one dump of each
    interface's addresses.  It hears of an XDP program attached or removed too (links_due: the
    engine looks for its programs then).  In a namespace of the test's own."""
    import os
    import subprocess
    import sys

    name = f"lbwatch{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "w0", "type", "veth", "peer", "name", "w1"], check=True,
                       timeout=10)
        subprocess.run(["ip", "-n", name, "link", "set", "w0", "up"], check=True, timeout=10)
        p = subprocess.run(["nsenter", f"--net=/run/netns/{name}", "--", sys.executable, "-c", _WATCH],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)


_WATCH_HIGH_FD = """
import os, resource, subprocess, threading, time
from lb.ha import addresses
died = []
threading.excepthook = lambda args: died.append(args.exc_value)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
# the health checks' sockets hold the low descriptors: the watch's socket gets one past 1023
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
w = addresses.Watch()
w.start()
time.sleep(0.5)
for fd in held:
    os.close(fd)
try:
    assert w.due(0.0), "the first look"
    subprocess.run(["ip", "addr", "add", "198.18.0.77/32", "dev", "w0"], check=True)
    subprocess.run(["ip", "addr", "del", "198.18.0.77/32", "dev", "w0"], check=True)
    deadline = time.monotonic() + 10
    while not w.due(1.0):
        assert not died, died
        assert time.monotonic() < deadline, "rtnetlink told nothing of the address removed"
        time.sleep(0.05)
finally:
    w.stop()
assert not died, died
print("ok")
"""


def test_the_address_watch_hears_removals_with_a_descriptor_past_1023():
    """lb raises its open-file limit (a descriptor per health check in flight): the watch's
    netlink socket, opened once the checks run, could be past 1023, where select() refuses it
    (ValueError): the watch's thread died with a traceback, and a VIP a link flap took away was
    looked for only every 30 s.  In a namespace of the test's own."""
    import os
    import subprocess
    import sys

    name = f"lbwatchfd{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "w0", "type", "veth", "peer", "name", "w1"], check=True,
                       timeout=10)
        subprocess.run(["ip", "-n", name, "link", "set", "w0", "up"], check=True, timeout=10)
        p = subprocess.run(["nsenter", f"--net=/run/netns/{name}", "--", sys.executable, "-c", _WATCH_HIGH_FD],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)


def test_exporter_refreshes_an_entry_stamped_below_the_clocks_zero():
    """A connection synced to this node when it had been up less long than the connection
    (a backup just booted) has a stamp that wrapped below zero as a u64.  Active since, this
    node sends it at the full resync with that stamp, and its packets then stamp it with the
    clock's small values: the refresh is still due every half timeout (it was never due again:
    the peer's copy expired while the connection lived, and the next failover lost it)."""
    A = ipaddress.ip_address
    rec = (6, A("198.18.0.2"), 40000, A("198.18.0.10"), 80, A("198.18.1.11"), 80, 1, 0, 5_000_000, 900,
           b"\x02" * 6)
    e = sync.Exporter(rate=1000, interval=0.1)
    wrapped = (1 << 64) - 30 * 10**9                 # 30 s before the clock's zero
    assert len(e.select([(b"k", wrapped, rec)], [])) == 1
    assert e.select([(b"k", 10 * 10**9, rec)], []) == []          # 40 s on: not yet
    assert len(e.select([(b"k", 70 * 10**9, rec)], [])) == 1      # 100 s on: refreshed
