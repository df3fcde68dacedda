"""Heartbeats an attacker on the HA link holds back and lets through late, one channel.

The replay window takes each of them: they come in order, each numbered above the last, never
delivered before.  Let through one every 0.3 s while the active made one every 0.2 s, they build
a backlog; once the active is dead, the backlog kept it "alive" at the backup for as long as it
lasted (60 s of it: 25 s with no director active, deadtime 1 s) -- and an hour of it, most of an
hour.  The header's mono field (the sender's monotonic clock) against the receiver's tells how
late each one comes: more than a deadtime later than the peer's soonest heartbeat (less 1000 ppm
of the time since, for the clocks' rates) is no news, refused as "delayed", counted and logged
at a bounded rate.  Two honest clocks 900 ppm apart for half an hour are never refused."""
from __future__ import annotations

import logging

from lb.ha import heartbeat as hb
from test_ha_unit import Pair


class Stretch(Pair):
    """One channel; while ``attack``, the primary's datagrams are held back and let through to the
    backup one every ``every`` seconds, oldest first (the captured bytes, unchanged)."""

    def __init__(self, tmp_path, every=0.3):
        super().__init__(tmp_path)
        self.held: list[bytes] = []
        self.attack = False
        self.every = every
        self.next_out = 0.0

    def _deliver(self, p, c, typ, state, payload):
        if self.attack and p.node == hb.NODE_PRIMARY and typ != hb.T_SYNC:
            self.held.append(p.encode(c, typ, state, payload))
            return
        super()._deliver(p, c, typ, state, payload)

    def run(self, seconds, step=0.05):
        for _ in range(int(seconds / step)):
            super().run(step, step)
            backup = self.nodes.get(hb.NODE_BACKUP)
            if self.held and self.t >= self.next_out and backup is not None:
                backup._receive(backup.channels[0], "heartbeat", self.held.pop(0))
                self.next_out = self.t + self.every


def test_heartbeats_held_back_and_let_through_late_do_not_keep_a_dead_peer_alive(tmp_path, caplog):
    pair = Stretch(tmp_path)                               # keepalive 0.2 s, deadtime 1 s
    pair.start(hb.NODE_PRIMARY)
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    pair.attack = True
    with caplog.at_level(logging.WARNING, logger="lb.ha"):
        pair.run(60.0)
        assert len(pair.held) > 50                         # a backlog of over 10 s of heartbeats
        del pair.nodes[hb.NODE_PRIMARY]                    # the active dies
        pair.run(3 * pair.ha.deadtime)
        assert backup.role == "active"                     # (held back: "backup" for 25 s more)
        while pair.held:                                   # the rest of the backlog changes nothing
            pair.run(0.3)
            assert backup.role == "active"
    delayed = backup.counters["delayed"]
    assert delayed > 100 and backup.status()["channels"]["public"]["refused"]["delayed"] == delayed
    lines = [r for r in caplog.records if "later than the peer's other heartbeats" in r.getMessage()]
    assert 1 <= len(lines) <= 12 < delayed                 # one line per 10 s at most, the rest counted
    assert any("delayed" in w or "later than" in w for w in backup.warnings())


def test_the_same_stretch_kept_within_a_deadtime_is_heard(tmp_path):
    """Heartbeats let through up to most of a deadtime late (a slow link, a queue) are news: the
    peer is heard, nothing is refused, no role changes."""
    pair = Stretch(tmp_path, every=0.2)                    # as fast as they are made ...
    pair.start(hb.NODE_PRIMARY)
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    pair.attack = True
    pair.run(0.8)                                          # ... after holding them 0.8 s
    pair.run(60.0)
    assert pair.roles() == {0: "active", 1: "backup"} and backup.status()["peer"]["alive"]
    assert backup.counters["delayed"] == 0 and backup.machine.changes == 1


def test_clocks_running_at_different_rates_are_not_taken_for_delays(tmp_path):
    """The primary's monotonic clock 900 ppm slower than the backup's for half an hour: its
    heartbeats come 1.6 s 'later' by the end, more than the 1 s deadtime, and are heard all along."""
    pair = Pair(tmp_path)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    primary.clock = lambda: 1000.0 + (pair.t - 1000.0) * (1 - 900e-6)
    pair.run(1800.0, step=0.2)
    assert pair.roles() == {0: "active", 1: "backup"} and backup.status()["peer"]["alive"]
    assert backup.counters["delayed"] == 0 and primary.counters["delayed"] == 0
    assert backup.machine.changes == 1 and primary.machine.changes == 1
