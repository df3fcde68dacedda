"""[ha] with [bgp] mode = "announce": a clean stop of the active director (Engine._stop_running)
with its real pulse and announcer, and the backup's (tests/test_ha_unit.py's Pair, in memory):
who announces the VIP while the stopping one drains."""
from __future__ import annotations

import asyncio
import types

from lb import engine as lbengine
from lb.bgp import announcer
from lb.bgp.lease import Route, read_lease
from lb.config import loads
from lb.dataplane import TableSpec
from lb.ha import heartbeat as hb
from test_bgp_unit import CFG, svc
from test_ha_unit import Pair

BGP = CFG.replace("lease = 2", 'lease = 2\nsettle = 2\ndrain = 0.5\nmode = "announce"')


def test_the_stopping_active_says_leaving_before_it_drains(monkeypatch, tmp_path) -> None:
    """`lb stop` on the active director: it tells the peer "leaving" first, so the backup takes
    over and announces the VIP while the old active withdraws and drains; its claim on the
    addresses (the HA lease) ends only after the drain.  No moment without the VIP announced.
    (It withdrew, drained 2 s and only then said "leaving": every stop or restart of the active
    left the VIP unrouted for drain + settle.)"""
    monkeypatch.setattr(announcer, "lease_path", lambda inst: str(tmp_path / f"{inst}.lease"))
    monkeypatch.setattr(announcer, "status_path", lambda inst: str(tmp_path / f"{inst}.status"))
    pair = Pair(tmp_path)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    table = TableSpec((svc("198.18.10.10", 80, 1, 1),))
    route = Route("198.18.10.10/32", 20, ("65000:100", "no-export"))
    mine = announcer.Announcer(loads(BGP.replace('instance = "bgpunit"', 'instance = "mine"')))
    peers = announcer.Announcer(loads(BGP.replace('instance = "bgpunit"', 'instance = "peers"')))
    mine.update(table, attached=True, active=True, now=0.0)
    peers.update(table, attached=True, active=False, now=0.0)
    mine.update(now=10.0)
    peers.update(now=10.0)
    assert read_lease(mine.lease_path).routes == (route,) and read_lease(peers.lease_path).routes == ()

    events, samples = [], []
    stub = types.SimpleNamespace(
        _address_watch=types.SimpleNamespace(stop=lambda: None), pulse=primary, bgp=mine, configsync=None,
        _stop="clean", monitors={}, loads={}, _end_lease=lambda: events.append(("lease ended", len(samples))))

    async def blocking(f):
        return f()

    async def the_backup():
        """The backup's daemon: pulse decides every 20 ms, a role change updates its announcer."""
        while True:
            for a in backup.decide():
                if a[0] == "role":
                    peers.update(active=a[1] == hb.S_ACTIVE, now=10.5)
            samples.append((mine.leaving, backup.role, read_lease(mine.lease_path).routes,
                            read_lease(peers.lease_path).routes))
            await asyncio.sleep(0.02)

    async def main():
        watcher = asyncio.create_task(the_backup())
        await asyncio.sleep(0.1)
        await lbengine.Engine._stop_running(stub, blocking, {"pulse": True})
        await asyncio.sleep(0.1)
        watcher.cancel()

    asyncio.run(main())
    draining = [s for s in samples if s[0]]
    assert len(draining) >= 10                                        # 0.5 s of drain, sampled
    assert all(role == "active" and theirs == (route,) and ours == () for _, role, ours, theirs in draining[1:]), \
        draining
    assert all(ours or theirs for _, _, ours, theirs in samples[1:]), samples
    [(_, at)] = events
    assert sum(1 for s in samples[:at] if s[0]) >= 10                  # the lease ends after the drain
