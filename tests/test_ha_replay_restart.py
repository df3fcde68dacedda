"""A backup whose lb restarts while (or just after) the active primary dies: heartbeats it had
already taken from the primary before its restart, captured and replayed to the new process,
must not pass for a live primary (tests/test_ha_unit.py's Pair)."""
import functools
import json

from lb.ha import heartbeat as hb

from test_ha_unit import Pair


def test_heartbeats_taken_before_a_restart_are_refused_after_it(tmp_path):
    """The backup heard the active primary's heartbeats until it died; its lb restarts half a
    deadtime later.  An eavesdropper who captured what the primary sent replays the newest ones
    to the new process, paced like the originals, from 20 s before its death on, each within max_skew of its
    making.
    Each was taken by the backup's previous process: refused as replays, the backup takes over
    a deadtime after it started.  (Taken anew, they held it BACKUP, with no director active, for
    as long as they lasted -- up to max_skew.)"""
    pair = Pair(tmp_path, keepalive=1.0, deadtime=3.0)
    pair.Pulse = functools.partial(pair.Pulse, guard_file=str(tmp_path / "lab.ha-guard"))
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(5.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    deliver, captured = pair._deliver, []

    def tapped(p, c, typ, state, payload):
        if p is primary and typ == hb.T_HEARTBEAT:
            data = p.encode(c, typ, state, payload)
            captured.append((pair.t, c.id, data))                  # sniffed on its way
            backup._receive(backup.channels[c.id], "heartbeat", data)
            return None
        return deliver(p, c, typ, state, payload)
    pair._deliver = tapped
    pair.run(25.0)
    del pair.nodes[hb.NODE_PRIMARY]                                 # it dies: no "leaving"
    died = pair.t
    pair.run(1.5)
    backup.save_guard()                                             # lb stops on the backup ...
    del pair.nodes[hb.NODE_BACKUP]
    backup = pair.start(hb.NODE_BACKUP)                             # ... and starts again
    started, roles = pair.t, []
    replay = [(started + 2.0 + at - (died - 20), c, data) for at, c, data in captured if died - at < 20]
    while pair.t - started < 25.0:
        while replay and replay[0][0] <= pair.t:
            _, c, data = replay.pop(0)
            backup._receive(backup.channels[c], "heartbeat", data)
        pair.run(0.5)
        roles.append((round(pair.t - started, 1), backup.role))
    active_at = next((t for t, role in roles if role == "active"), None)
    assert active_at is not None and active_at <= pair.ha.deadtime + 1.0, roles
    assert all(role == "active" for t, role in roles if t >= active_at), roles
    assert backup.counters["replay"] >= 10


def test_a_restarted_backup_still_hears_the_live_primary_and_an_unreadable_file_is_only_logged(tmp_path, caplog):
    """The same file over a restart while the primary lives: its heartbeats go on above the
    saved sequence numbers and are heard at once -- nothing refused, no role moves; the snapshot is
    as saved before a crash; a file that is not a snapshot is logged
    and left, the guard starts empty."""
    import logging

    path = tmp_path / "lab.ha-guard"
    pair = Pair(tmp_path)
    pair.Pulse = functools.partial(pair.Pulse, guard_file=str(path))
    pair.start(hb.NODE_PRIMARY)
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    backup.save_guard()
    assert path.stat().st_mode & 0o777 == 0o600
    del pair.nodes[hb.NODE_BACKUP]                                  # a crash: no "leaving"
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    assert pair.roles() == {0: "active", 1: "backup"} and backup.machine.changes == 1
    assert backup.status()["peer"] == {**backup.status()["peer"], "alive": True, "state": "active"}
    assert backup.counters["replay"] == backup.counters["stale"] == 0
    path.write_text('{"version": 1, "heartbeat": {"0/0": [[1, "x"]]}}')
    with caplog.at_level(logging.WARNING, "lb.ha"):
        fresh = pair.Pulse(pair.ha, "lab", None, node=hb.NODE_BACKUP, clock=lambda: pair.t)
    assert fresh.guard.prior == {}
    assert [r for r in caplog.records if "not read" in r.getMessage()]


def test_the_sequence_numbers_taken_survive_a_restore():
    """ReplayGuard.snapshot/restore: a heartbeat of the current boot or of a boot left, numbered
    up to the last one taken, is refused after a restore (one missed before is old news too);
    what comes after is taken."""
    g = hb.ReplayGuard()
    now = 10**18

    def msg(boot, seq, ts=now):
        return hb.Message(hb.T_HEARTBEAT, hb.S_ACTIVE, 0, 0, boot, seq, ts)
    for seq in (1, 2, 4, 5):
        assert g.check(msg(7, seq), now) is None
    assert g.check(msg(8, 1, now + 1), now + 1) is None               # a restart of the peer
    assert g.check(msg(8, 2, now + 2), now + 2) is None
    again = hb.ReplayGuard()
    again.restore(json.loads(json.dumps(g.snapshot())))
    for boot, seq in ((7, 1), (7, 2), (7, 4), (7, 5), (8, 1), (8, 2)):
        assert again.check(msg(boot, seq, now + 3), now + 3) == "replay", (boot, seq)
    assert again.check(msg(7, 3, now + 3), now + 3) == "replay"      # missed: a hole, old news
    assert again.check(msg(8, 3, now + 4), now + 4) is None          # the live boot goes on
    assert again.snapshot()["heartbeat"]["0/0"] == [[7, 5], [8, 3]]


def test_the_snapshot_is_written_each_keepalive_and_at_stop(tmp_path):
    """The daemon's own paths, without sockets: the heartbeat loop writes the file once the
    peer's heartbeats were taken (so a crash loses at most a keepalive of them), stop() writes
    it with all it read; a new process reads it and refuses the peer's heartbeats taken."""
    import asyncio

    path = tmp_path / "lab.ha-guard"
    pair = Pair(tmp_path)
    pair.Pulse = functools.partial(pair.Pulse, guard_file=str(path))
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    sent = [primary.encode(primary.channels[0], hb.T_HEARTBEAT) for _ in range(3)]
    backup._receive(backup.channels[0], "heartbeat", sent[0])

    async def beat_once():
        try:
            await asyncio.wait_for(backup._heartbeats(), 0.05)
        except asyncio.TimeoutError:
            pass
    asyncio.run(beat_once())
    assert json.loads(path.read_text())["heartbeat"]["0/0"] == [[primary.boot, 1]]
    backup._receive(backup.channels[0], "heartbeat", sent[1])
    asyncio.run(backup.stop())
    after = pair.start(hb.NODE_BACKUP)
    for data in sent[0], sent[1]:
        after._receive(after.channels[0], "heartbeat", data)
    assert after.counters["replay"] == 2
    after._receive(after.channels[0], "heartbeat", sent[2])           # the peer goes on: taken
    assert after.counters["replay"] == 2 and after.counters["rx"] + after.counters["unheard"] == 1


def test_an_icmp_error_taken_by_the_reader_is_counted(tmp_path, monkeypatch):
    """An ICMP error pending on the connected heartbeat socket wakes the reader, whose read takes
    it -- usually before any send does.  It is counted as icmp_errors there too (it went
    uncounted: a flood of spoofed unreachables showed nowhere) and the reader goes on to the
    datagrams behind it."""
    import errno

    from lb.ha import pulse as pulse_mod

    pair = Pair(tmp_path)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    c = backup.channels[0]
    good = primary.encode(primary.channels[0], hb.T_HEARTBEAT)
    queue = [OSError(errno.ECONNREFUSED, "refused"), OSError(errno.EHOSTUNREACH, "unreachable"),
             (good, ("198.18.0.1", c.port)), BlockingIOError()]

    def recv(sock):
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item
    monkeypatch.setattr(pulse_mod, "_recv", recv)
    c.hb.connected = True
    backup._readable(c, c.hb)
    assert backup.status()["channels"]["public"]["icmp_errors"] == 2
    assert backup.counters["rx"] + backup.counters["unheard"] == 1 and not queue
