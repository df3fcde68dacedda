"""Connection sync records queued at a takeover reach the new active's table.

- Receiver: the active's sync datagrams read by the backup (queued for its data plane) just
  before the active stops; the backup takes over on its "leaving" before its sync task gets to
  them.  They were dropped ("the active's own table wins"), so the connections the old active
  had just made were reset by the new one.  Now what arrives until a deadtime after the
  takeover is installed; later, the active's own table wins (and the records are counted as
  skipped).
- Sender: an active that steps down (the peer took over and sent a stand-down) still had
  entries not synced yet (made since its last scan); it stopped scanning at once and they were
  lost.  Now it sends them in one last scan.
Two in-memory directors (tests/test_ha_unit.py's Pair); the sync tasks run on an event loop."""
from __future__ import annotations

import asyncio
import dataclasses

from lb.ha import heartbeat as hb
from lb.ha import sync as hsync
from lb.ha.pulse import ACTIVE, LEAVING
from test_ha_replay import REC
from test_ha_unit import A, Pair

NEW = (6, A("198.18.0.5"), 41000, A("198.18.0.10"), 80, A("198.18.1.12"), 80, 1, 0, 2_000_000_000, 900,
       b"\x04" * 6)


def _sink(p):
    """The director's table: what its sync_sink installed."""
    table = []
    p.sync_sink = lambda conns, temps, owned_since_ns: (table.extend(conns), (len(conns) + len(temps), 0))[1]
    p.coarse_ns = lambda: 3600 * 10**9                      # up an hour: the records are alive
    return table


async def _until(cond, task_fns, rounds=1000):
    """Run the sync tasks until cond() holds (or rounds of 10 ms are up); cond()'s last value."""
    tasks = [asyncio.create_task(fn()) for fn in task_fns]
    try:
        for _ in range(rounds):
            if cond():
                break
            await asyncio.sleep(0.01)
        return cond()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_a_record_queued_just_before_the_takeover_reaches_the_new_actives_table(tmp_path):
    pair = Pair(tmp_path)                                  # keepalive 0.2 s, deadtime 1 s
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    table = _sink(backup)
    [payload] = hsync.pack_batches([hsync.encode_conn(REC)])
    primary._send(primary.channels[0], hb.T_SYNC, payload=payload)   # read by the backup: queued
    assert backup._sync_queue.qsize() == 1
    del pair.nodes[hb.NODE_PRIMARY]                        # the primary stops: "leaving", then nothing
    primary._send_all(hb.T_HEARTBEAT, LEAVING)
    pair.run(0.1)
    assert backup.role == "active"
    assert asyncio.run(_until(lambda: table, [backup._sync_in]))
    [rec] = table
    assert rec[:9] == REC[:9] and rec[9] == REC[9]          # the connection, its age whole
    assert backup.counters["sync_rx_records"] == 1 and backup.counters["sync_skipped"] == 0


def test_records_arriving_long_after_the_takeover_are_skipped_and_counted(tmp_path):
    """The bound: once a deadtime has passed since the takeover, the active's own table wins."""
    pair = Pair(tmp_path)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    table = _sink(backup)
    [payload] = hsync.pack_batches([hsync.encode_conn(REC), hsync.encode_conn(NEW)])
    primary._send(primary.channels[0], hb.T_SYNC, payload=payload)
    del pair.nodes[hb.NODE_PRIMARY]
    primary._send_all(hb.T_HEARTBEAT, LEAVING)
    pair.run(0.1)
    assert backup.role == "active"
    pair.t += backup.ha.deadtime + 0.1                     # its sync task came to them too late
    assert asyncio.run(_until(lambda: backup._sync_queue.empty(), [backup._sync_in]))
    assert table == [] and backup.counters["sync_skipped"] == 2 and backup.counters["sync_rx_records"] == 0


def test_an_active_that_steps_down_sends_what_it_had_not_synced_yet(tmp_path):
    pair = Pair(tmp_path)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    conns = [(b"old", 1000, REC)]
    primary.sync_source = lambda: (list(conns), [])
    table = _sink(backup)

    async def main():
        assert await _until(lambda: table, [primary._sync_out, backup._sync_in])   # synced as ever
        assert len(table) == 1
        # the primary's heartbeats stop reaching the backup: it takes over and sends a stand-down,
        # which makes the primary (no preempt) step down; a connection made on the primary just
        # before, since its last scan, has not been sent
        conns.append((b"new", 2000, NEW))
        pair.cut.add(hb.NODE_PRIMARY)
        for _ in range(40):
            pair.run(0.05)
            if primary.role == "backup":
                break
        pair.run(0.1)                                      # its decide() takes the step-down on
        assert pair.roles() == {0: "backup", 1: "active"}
        pair.cut.clear()
        assert await _until(lambda: len(table) == 2, [primary._sync_out, backup._sync_in])
        assert table[1][:9] == NEW[:9]
        assert primary.counters["sync_tx_records"] == 2 and backup.counters["sync_rx_records"] == 2
        # once: a director no longer active scans no more
        conns.append((b"newer", 3000, REC[:2] + (40001,) + REC[3:]))
        assert not await _until(lambda: primary.counters["sync_tx_records"] > 2 or len(table) > 2,
                                [primary._sync_out, backup._sync_in], rounds=50)
    asyncio.run(main())


def test_an_active_that_stops_sends_what_it_had_not_synced_yet_before_leaving(tmp_path):
    """`lb stop` on the active: its last scan goes out before "leaving" (on which the backup takes
    over at once), and the backup, active by then, installs it."""
    pair = Pair(tmp_path)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.ha = primary.ha = backup.ha = dataclasses.replace(pair.ha, sync=True)
    pair.run(2.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    primary.sync_source = lambda: ([(b"new", 2000, NEW)], [])
    table = _sink(backup)

    async def main():
        await primary.stop()
        del pair.nodes[hb.NODE_PRIMARY]
        pair.run(0.1)
        assert backup.role == "active"
        assert await _until(lambda: table, [backup._sync_in])
    asyncio.run(main())
    assert [r[:9] for r in table] == [NEW[:9]] and primary.counters["sync_tx_records"] == 1


def test_a_takeover_installs_the_queued_records_before_it_takes_the_addresses(tmp_path):
    """The records the backup read before its takeover are in its table when on_role (the engine
    taking the virtual addresses) runs: no packet of those connections reaches it first."""
    pair = Pair(tmp_path)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.ha = primary.ha = backup.ha = dataclasses.replace(pair.ha, sync=True)
    pair.run(2.0)
    table = _sink(backup)
    [payload] = hsync.pack_batches([hsync.encode_conn(REC)])
    primary._send(primary.channels[0], hb.T_SYNC, payload=payload)
    del pair.nodes[hb.NODE_PRIMARY]
    primary._send_all(hb.T_HEARTBEAT, LEAVING)
    at_takeover = []

    async def on_role(new, old):
        at_takeover.append((backup.machine.state, list(table)))
    backup.on_role = on_role
    assert asyncio.run(_until(lambda: at_takeover, [backup._decide]))
    [(state, seen)] = at_takeover
    assert state == ACTIVE and [r[:9] for r in seen] == [REC[:9]]
    assert backup.counters["sync_rx_records"] == 1


def test_the_new_actives_sink_is_told_since_when_its_entries_are_its_own(tmp_path):
    """A backup's sync sink takes every record (owned_since_ns None: the active's table is the
    one that counts); a new active's, in the takeover's handoff (the records installed before it
    takes the addresses and those that come after), is given the moment it became active on the
    data plane's clock, so that its own entries made or changed since are not overwritten by the
    old active's records (the data plane's side: tests/test_sync_dataplane.py)."""
    pair = Pair(tmp_path)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.ha = primary.ha = backup.ha = dataclasses.replace(pair.ha, sync=True)
    pair.run(2.0)
    got = []
    backup.sync_sink = lambda conns, temps, owned_since_ns: got.append(owned_since_ns) or (len(conns), 0)
    backup.coarse_ns = lambda: 3600 * 10**9 + int(pair.t * 1e9)     # the data plane's clock: its own origin
    [payload] = hsync.pack_batches([hsync.encode_conn(REC)])
    primary._send(primary.channels[0], hb.T_SYNC, payload=payload)
    assert asyncio.run(_until(lambda: got, [backup._sync_in]))
    assert got == [None]
    primary._send(primary.channels[0], hb.T_SYNC, payload=payload)   # queued at the takeover
    del pair.nodes[hb.NODE_PRIMARY]
    primary._send_all(hb.T_HEARTBEAT, LEAVING)
    assert asyncio.run(_until(lambda: len(got) == 2, [backup._decide]))
    assert backup.role == "active"
    pair.t += 0.5                                          # within a deadtime: still installed
    backup._sync_queue.put_nowait(payload)
    assert asyncio.run(_until(lambda: len(got) == 3, [backup._sync_in]))
    takeover = 3600 * 10**9 + int(backup.machine.since * 1e9)
    assert all(g is not None and abs(g - takeover) <= 1 for g in got[1:]), (got, takeover)
