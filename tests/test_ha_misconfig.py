"""Two directors whose [ha] tables differ so that each takes itself for the primary (primary and
backup swapped in one file): each refuses the other's heartbeats and both go active.  What
`lb status` and the log said was "wrong channel, port or sender id (sender is not the peer)" --
of the peer's own address; they now name the cause."""
from __future__ import annotations

import logging

from lb.ha import heartbeat as hb
from test_ha_unit import Pair


def test_two_primaries_are_told_what_is_wrong(tmp_path, caplog):
    pair = Pair(tmp_path)
    a = pair.start(hb.NODE_PRIMARY)
    b = pair.start(hb.NODE_PRIMARY)                       # the other file: it is the primary too
    pair.nodes = {0: a, 1: b}
    pair.next_hb = {0: pair.t, 1: pair.t}
    for p, other in ((a, b), (b, a)):
        p._send = (lambda p, other: lambda c, typ, state=None, payload=None: other._receive(
            other.channels[c.id], "sync" if typ == hb.T_SYNC else "heartbeat", p.encode(c, typ, state, payload)))(p, other)
    with caplog.at_level(logging.WARNING, logger="lb.ha"):
        pair.run(3.0)
    assert pair.roles() == {0: "active", 1: "active"}
    want = "it says it is the primary node, as this director is: do both directors' [ha] tables name the same"
    for p in (a, b):
        assert any(want in w for w in p.status()["warnings"]), p.status()["warnings"]
    assert want in caplog.text
