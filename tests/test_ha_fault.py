"""Leaving FAULT (monitor_links: the public link down, then back).  With one heartbeat channel,
on that link, nothing of the peer is heard while the link is down; the peer may have taken over
meanwhile.  A director whose link comes back listens a deadtime before it takes the peer for
dead, as at its start (keepalived: FAULT -> BACKUP, then the master-down timer).  It used to take
over at once: a backup whose link flapped grabbed the VIPs from the active peer (and announced
them) and gave them back a heartbeat later; a primary started while its link was still coming
up took them back from the active backup without preempt."""
from __future__ import annotations

import dataclasses

from lb.ha import heartbeat as hb
from lb.ha import pulse
from lb.ha.pulse import ACTIVE, BACKUP, FAULT, LEAVING, RoleMachine
from test_ha_unit import Pair


def roles_of(acts):
    return [a[1] for a in acts if a[0] == "role"]


def test_a_backup_whose_link_comes_back_does_not_grab_the_addresses():
    b = RoleMachine(False, 0.2, 1.0, now=0.0)
    t = 0.1
    assert roles_of(b.heard(t, ACTIVE)) == [BACKUP]
    while t < 3.0:
        t += 0.2
        assert b.heard(t, ACTIVE) == []
    assert roles_of(b.link(t, False)) == [FAULT]          # the public link: nothing heard now
    t += 10.0
    assert roles_of(b.link(t, True)) == [BACKUP]          # back: listens first
    t += 0.2
    assert b.heard(t, ACTIVE) == [] and b.state == BACKUP  # the primary is active: stays backup
    for _ in range(20):
        t += 0.2
        assert b.heard(t, ACTIVE) == [] and b.state == BACKUP


def test_after_a_fault_the_peer_still_silent_a_deadtime_later_is_dead():
    b = RoleMachine(False, 0.2, 1.0, now=0.0)
    b.heard(0.1, ACTIVE)
    b.link(0.5, False)
    assert roles_of(b.link(5.0, True)) == [BACKUP]
    assert b.tick(5.9) == []
    acts = b.tick(6.0)
    assert roles_of(acts) == [ACTIVE] and ("standdown",) in acts


def test_a_peer_heard_during_the_fault_is_judged_at_once():
    """Two channels: the private one carried the peer's heartbeats while the public link was
    down, so what is known of the peer holds when the link comes back."""
    b = RoleMachine(False, 0.2, 1.0, now=0.0)
    b.heard(0.1, ACTIVE)
    b.link(0.5, False)
    b.heard(2.0, ACTIVE)
    b.heard(2.2, LEAVING)                                 # the primary stops meanwhile
    assert roles_of(b.link(2.5, True)) == [BACKUP, ACTIVE]
    c = RoleMachine(False, 0.2, 1.0, now=0.0)
    c.heard(0.1, ACTIVE)
    c.link(0.5, False)
    c.heard(2.0, ACTIVE)                                  # then dies: silent for a deadtime
    assert roles_of(c.link(3.5, True)) == [BACKUP, ACTIVE]


def test_a_primary_whose_link_comes_up_after_its_start_does_not_preempt(tmp_path, monkeypatch):
    """The backup is active alone; the primary starts with its public link still down (the
    carrier comes up a moment after lb at boot) and preempt = false: it must end as backup, the
    backup active throughout (one role change each)."""
    links = {}
    monkeypatch.setattr(pulse, "link_running", lambda ifname: links.get(ifname, True))
    pair = Pair(tmp_path)                                 # keepalive 0.2 s, deadtime 1 s
    pair.ha = dataclasses.replace(pair.ha, monitor_links=True)
    backup = pair.start(hb.NODE_BACKUP)
    backup.public_interface = "b0"
    pair.run(2.0)
    assert pair.roles() == {1: "active"}
    links["p0"] = False
    primary = pair.start(hb.NODE_PRIMARY)
    primary.public_interface = "p0"
    pair.cut.update({0, 1})                               # its link down: no heartbeat either way
    pair.run(0.3)
    assert primary.role == "fault"
    links["p0"] = True
    pair.cut.clear()
    pair.run(3.0)
    assert pair.roles() == {1: "active", 0: "backup"}
    assert backup.machine.changes == 1
