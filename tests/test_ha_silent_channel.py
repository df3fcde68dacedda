"""Two heartbeat channels, one of which stops carrying the peer's heartbeats (a cable, a route,
a firewall rule on the private network): the peer is still heard on the other, no role moves --
and nothing said so but a number in `lb status`, until the last channel failed too and both
directors went active.  A channel silent for a deadtime while the other carries the heartbeats
is now a warning in the log and in `lb status`, gone when it carries them again."""
from __future__ import annotations

import dataclasses
import ipaddress
import logging

from lb.ha import heartbeat as hb
from test_ha_unit import Pair

SAYS = "private channel: no heartbeat from the peer"


def test_a_silent_channel_is_reported_while_the_other_carries_the_heartbeats(tmp_path, caplog):
    pair = Pair(tmp_path)                                  # keepalive 0.2 s, deadtime 1 s
    pair.ha = dataclasses.replace(pair.ha, primary_private=ipaddress.ip_address("198.18.1.1"),
                                  backup_private=ipaddress.ip_address("198.18.1.3"))
    deliver = pair._deliver
    lost = set()                                           # channel ids whose datagrams are lost

    def lossy(p, c, typ, state, payload):
        if c.id in lost:
            p.encode(c, typ, state, payload)
        else:
            deliver(p, c, typ, state, payload)
    pair._deliver = lossy
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    with caplog.at_level(logging.INFO, logger="lb.ha"):
        pair.run(3.0)
        assert pair.roles() == {0: "active", 1: "backup"}
        assert not [w for w in primary.status()["warnings"] if "channel" in w]
        lost.add(hb.CH_PRIVATE)
        pair.run(0.8)
        assert not [w for w in primary.status()["warnings"] if "channel" in w]     # not a deadtime yet
        pair.run(2.0)
        assert pair.roles() == {0: "active", 1: "backup"}
        for p in (primary, backup):
            assert any(w.startswith(SAYS) and "one channel left" in w for w in p.status()["warnings"]), \
                p.status()["warnings"]
        assert caplog.text.count(SAYS) == 2                # once on each director
        lost.clear()
        pair.run(1.0)
    for p in (primary, backup):
        assert not [w for w in p.status()["warnings"] if "channel" in w]
    assert caplog.text.count("private channel: heartbeats from the peer again") == 2


def test_a_channel_whose_heartbeats_come_late_is_not_silent(tmp_path, caplog):
    """Each of the private channel's heartbeats comes after a newer one on the public channel
    (held back on the way: 'late', no news of the peer's state): the channel still carries the
    peer's heartbeats, so no warning."""
    pair = Pair(tmp_path)
    pair.ha = dataclasses.replace(pair.ha, primary_private=ipaddress.ip_address("198.18.1.1"),
                                  backup_private=ipaddress.ip_address("198.18.1.3"))
    deliver = pair._deliver
    held = []

    def late(p, c, typ, state, payload):
        if c.id == hb.CH_PRIVATE:                          # held back ...
            held.append((p, p.encode(c, typ, state, payload)))
            return
        deliver(p, c, typ, state, payload)
        other = pair.nodes.get(1 - p.node)
        for q, data in [h for h in held if h[0] is p]:     # ... until a newer public one came
            if other is not None:
                other._receive(other.channels[hb.CH_PRIVATE], "heartbeat", data)
        held[:] = [h for h in held if h[0] is not p]
    pair._deliver = late
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    with caplog.at_level(logging.INFO, logger="lb.ha"):
        pair.run(4.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    assert primary.counters["late"] > 5
    for p in (primary, backup):
        assert not [w for w in p.status()["warnings"] if "channel" in w], p.status()["warnings"]
    assert SAYS not in caplog.text
