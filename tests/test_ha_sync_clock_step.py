"""The active's wall clock stepped back while it runs (it booted an hour ahead, NTP set it
right): its heartbeats are still heard, and so must its connection sync be -- not refused as
replays for as long as the clock had been ahead (every synced connection lost at a failover)."""
from __future__ import annotations

from lb.ha import heartbeat as hb
from lb.ha import sync as hsync
from test_ha_replay import REC
from test_ha_unit import Pair


def test_sync_is_taken_after_the_actives_clock_is_stepped_back(tmp_path):
    pair = Pair(tmp_path)
    pair.skew = {hb.NODE_PRIMARY: int(3600e9), hb.NODE_BACKUP: 0}      # the primary an hour ahead
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    [payload] = hsync.pack_batches([hsync.encode_conn(REC)])

    sent = []

    def sync_once():
        before = backup._sync_queue.qsize()
        sent.append(primary.encode(primary.channels[0], hb.T_SYNC, None, payload))
        backup._receive(backup.channels[0], "sync", sent[-1])
        return backup._sync_queue.qsize() - before
    assert sync_once() == 1
    pair.skew[hb.NODE_PRIMARY] = 0                                       # NTP steps it right
    # at once, before a heartbeat of the stepped clock is heard: a sync datagram numbered above
    # the last one taken was sent after it, so it is fresh whatever its timestamp says
    assert sync_once() == 1
    pair.run(3.0)
    assert pair.roles() == {0: "active", 1: "backup"} and backup.status()["peer"]["alive"]
    assert sync_once() == 1
    assert sync_once() == 1
    replays = backup.counters["replay"]
    for data in sent:                                                    # none taken twice
        backup._receive(backup.channels[0], "sync", data)
    assert backup.counters["replay"] == replays + len(sent)
