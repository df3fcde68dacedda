"""A stand-down queued with a takeover that no longer holds: the partition healed while the
backup's on_role took the addresses, the active primary's heartbeat arrived meanwhile and the
backup stepped down again.  The primary must stay active (one role change on neither side
beyond the backup's own)."""
from __future__ import annotations

import asyncio

from lb.ha import heartbeat as hb
from lb.ha.pulse import NAMES
from test_ha_unit import Pair


def test_a_takeover_undone_during_its_on_role_sends_no_standdown(tmp_path):
    pair = Pair(tmp_path)                                    # keepalive 0.2 s, deadtime 1 s
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    pair.cut.update({0, 1})                                  # a partition
    pair.run(0.5)
    pair.t += 0.6                                            # the backup's deadtime runs out
    seen = []

    async def backup_role(new, old):
        seen.append((NAMES[old], NAMES[new]))
        if new == hb.S_ACTIVE:                               # while the addresses are taken ...
            pair.cut.clear()                                 # ... the partition heals
            primary._send_all(hb.T_HEARTBEAT)
        await asyncio.sleep(0)
    backup.on_role = backup_role

    async def main():
        task = asyncio.create_task(backup._decide())
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())
    assert seen == [("backup", "active"), ("active", "backup")]
    assert [a for a in primary.decide() if a[0] == "role"] == []
    assert pair.roles() == {0: "active", 1: "backup"}


def test_a_lost_leaving_datagram_does_not_leave_the_backup_waiting_a_deadtime(tmp_path):
    """The active primary's lb stops: its "leaving" tells the backup to take over at once.  It
    is sent as many times as a stand-down, so one copy lost on the way (each channel's first)
    still hands over at once; sent once, the backup waited a whole deadtime with no director
    active."""
    pair = Pair(tmp_path, keepalive=0.2, deadtime=3.0)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(4.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    deliver, lost = pair._deliver, set()

    def lossy(p, c, typ, state, payload):
        if p is primary and state == hb.S_LEAVING and c.id not in lost:
            lost.add(c.id)                                   # the first "leaving" of each channel
            return None
        return deliver(p, c, typ, state, payload)
    pair._deliver = lossy
    asyncio.run(primary.stop())
    del pair.nodes[hb.NODE_PRIMARY]
    assert lost == {c.id for c in primary.channels}
    pair.run(0.1)
    assert backup.role == "active"
    assert backup.status()["peer"]["state"] == "leaving"
