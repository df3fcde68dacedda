"""pulse without a network: heartbeat codec (HMAC, replay window), the role state machine on a
fake clock, and the connection sync codec/exporter."""
import ipaddress
import time

import pytest

from lb.ha import heartbeat as hb
from lb.ha import sync
from lb.ha.pulse import ACTIVE, BACKUP, FAULT, LEAVING, STARTING, RoleMachine

KEY = b"k" * 32


def msg(seq, boot=1, ts=None, **kw):
    d = dict(type=hb.T_HEARTBEAT, state=hb.S_ACTIVE, node=0, channel=0, boot=boot, seq=seq,
             ts_ns=time.time_ns() if ts is None else ts)
    d.update(kw)
    return hb.Message(**d)


def test_codec_roundtrip_and_forgery():
    m = msg(5, payload=b"abc", flags=hb.F_LINK_OK)
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


def test_read_key(tmp_path):
    p = tmp_path / "k"
    p.write_bytes(b"short")
    p.chmod(0o600)
    with pytest.raises(ValueError):
        hb.read_key(p)
    p.write_bytes(b"a-long-enough-secret\n")
    assert hb.read_key(p) == b"a-long-enough-secret"
    p.chmod(0o644)
    with pytest.raises(ValueError):
        hb.read_key(p)


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
    assert roles_of(p.link(6.0, True)) == [BACKUP, ACTIVE]      # back, and nobody else is there


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
    batches = sync.pack_batches(out + out2)
    assert all(len(b) <= sync.PAYLOAD_MAX + 2 for b in batches)
    got_c, got_t = [], []
    for b in batches:
        c, t = sync.decode_batch(b)
        got_c += c
        got_t += t
    assert len(got_c) == 150 and got_t == [tmpl]
    assert got_c[0] == rec


def _pulse(tmp_path, notify):
    from pathlib import Path

    from lb.config.model import HA
    from lb.ha.pulse import Pulse

    key = tmp_path / "ha.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    ha = HA(primary=ipaddress.ip_address("127.0.0.1"), backup=ipaddress.ip_address("127.0.0.2"),
            key_file=Path(key), notify=tuple(notify))

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
