"""Two active directors that stay so: the peer does not hear this director (heartbeats lost one
way only) and goes on saying "active".  With preempt the primary keeps the role (as keepalived's
master does), so both hold the virtual addresses for as long as the link is broken one way: that
must be loud -- an error in the log, repeated while it lasts, a warning in `lb status` -- and end
with one active once the link heals.  It was silent on the primary: no log line, no warning."""
from __future__ import annotations

import dataclasses
import logging

from lb.ha import heartbeat as hb
from test_ha_unit import Pair

SAYS = "both directors have been active"


def test_a_one_way_link_with_preempt_is_reported_and_heals(tmp_path, caplog):
    pair = Pair(tmp_path)                                  # keepalive 0.2 s, deadtime 1 s
    pair.ha = dataclasses.replace(pair.ha, preempt=True)
    primary = pair.start(hb.NODE_PRIMARY)
    pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    with caplog.at_level(logging.WARNING, logger="lb.ha"):
        pair.cut.add(hb.NODE_PRIMARY)                      # the primary's heartbeats are lost
        pair.run(12.0)
        assert pair.roles() == {0: "active", 1: "active"}
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and SAYS in r.getMessage()]
        assert len(errors) == 2, errors                    # at once, then every 10 s
        assert any(SAYS in w for w in primary.status()["warnings"]), primary.status()["warnings"]
        pair.cut.clear()                                   # healed: the backup steps down
        pair.run(1.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    assert not any(SAYS in w for w in primary.status()["warnings"])
    assert "one director active again (this one active, the peer backup)" in caplog.text


def test_two_actives_that_resolve_at_once_are_not_reported(tmp_path, caplog):
    """A healed partition, and a preempting primary's return: one keepalive of two actives."""
    pair = Pair(tmp_path)
    pair.ha = dataclasses.replace(pair.ha, preempt=True)
    primary = pair.start(hb.NODE_PRIMARY)
    backup = pair.start(hb.NODE_BACKUP)
    with caplog.at_level(logging.WARNING, logger="lb.ha"):
        pair.run(2.0)
        pair.cut.update({0, 1})                            # a partition: the backup takes over
        pair.run(3.0)
        assert pair.roles() == {0: "active", 1: "active"}
        pair.cut.clear()
        pair.run(3.0)
        assert pair.roles() == {0: "active", 1: "backup"}
        del pair.nodes[hb.NODE_PRIMARY]                    # the primary goes, comes back, preempts
        pair.run(3.0)
        primary = pair.start(hb.NODE_PRIMARY)
        pair.run(3.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    assert SAYS not in caplog.text
    assert not any(SAYS in w for p in (primary, backup) for w in p.status()["warnings"])
