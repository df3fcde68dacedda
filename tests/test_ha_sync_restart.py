"""The backup's lb restarts within a deadtime (killed, restarted at once by systemd): the active
never took it for dead, so it did not send it its whole table again -- what it sent while the
backup was down was refused, and a backup that started on a new data plane had nothing; those
connections stayed missing there until their refresh (up to a minute), and broke if it took over
meanwhile.  A new boot of the peer is a full resync, as its return after a deadtime is."""
from __future__ import annotations

import ipaddress

from lb.ha import heartbeat as hb
from test_ha_unit import Pair

A = ipaddress.ip_address
REC = (6, A("198.18.0.2"), 40000, A("198.18.0.10"), 80, A("198.18.1.11"), 80, 1, 0, 5_000_000, 900, b"\x02" * 6)
CONNS = [(b"k%d" % i, 1000, REC) for i in range(5)]


def test_a_backup_restarted_within_a_deadtime_gets_everything_again(tmp_path):
    pair = Pair(tmp_path)                                  # keepalive 0.2 s, deadtime 1 s
    primary = pair.start(hb.NODE_PRIMARY)
    pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    assert len(primary.exporter.select(CONNS, [])) == 5   # sent
    pair.run(0.5)
    assert primary.exporter.select(CONNS, []) == []       # nothing new
    del pair.nodes[hb.NODE_BACKUP]                         # killed: no "leaving" ...
    pair.run(0.3)
    pair.start(hb.NODE_BACKUP)                             # ... and back within the deadtime
    pair.run(1.0)
    assert primary.machine.peer_alive(pair.t) and primary.machine.changes == 1
    assert len(primary.exporter.select(CONNS, [])) == 5   # everything again
    pair.run(1.0)
    assert primary.exporter.select(CONNS, []) == []       # once
