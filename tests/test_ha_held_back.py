"""Authentic heartbeats an attacker on one segment holds back and replays later, and captures of
a boot the peer has left: neither keeps a dead peer "alive" nor keeps our echo off its live boot.

- Held back: the public channel's heartbeats withheld for two minutes while the private channel
  carried them; once the primary is dead they are replayed, one per keepalive.  Each is new on
  its channel (never delivered there), so the replay window takes it; by the primary's
  monotonic clock (the header's mono field) it is older than what the private channel already
  brought, so it is no news and the backup takes over within its deadtime.
- Echo: the backup's clock is beyond max_skew, so the primary (restarted) proves each of the
  backup's boots fresh only by echoing it.  Replayed captures of the backup's previous boot
  made it echo that boot instead of the live one, which then never accepted the primary:
  a role swap, or two active directors with preempt."""
from __future__ import annotations

import dataclasses

from lb.config.model import HA
from lb.ha import heartbeat as hb
from test_ha_unit import A, Pair


class HeldBack(Pair):
    """Two channels; the primary's public heartbeats are kept by an attacker, not delivered."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.ha = HA(primary=A("198.18.0.1"), backup=A("198.18.0.3"), primary_private=A("198.18.1.1"),
                     backup_private=A("198.18.1.3"), key_file=self.ha.key_file, keepalive=0.2,
                     deadtime=1.0, max_skew=30.0, sync=False)
        self.withheld = []

    def _deliver(self, p, c, typ, state, payload):
        if p.node == hb.NODE_PRIMARY and c.id == hb.CH_PUBLIC and typ == hb.T_HEARTBEAT and p.node in self.nodes:
            self.withheld.append(p.encode(c, typ, state, payload))
            return
        super()._deliver(p, c, typ, state, payload)


def test_heartbeats_held_back_and_replayed_after_the_peers_death_are_no_news(tmp_path):
    pair = HeldBack(tmp_path)
    pair.start(hb.NODE_PRIMARY)
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(120.0)
    assert pair.roles() == {0: "active", 1: "backup"} and len(pair.withheld) > 400
    del pair.nodes[hb.NODE_PRIMARY]                           # the primary dies
    chan = backup.channels[hb.CH_PUBLIC]
    rx = backup.counters["rx"]
    for data in pair.withheld[:25]:                           # 5 s of replays, 2 minutes old
        backup._receive(chan, "heartbeat", data)
        pair.run(0.2)
    assert backup.role == "active"
    # none was news (the first few, from before the backup heard the primary, are not heard at all)
    assert backup.counters["rx"] == rx and backup.counters["late"] >= 20, backup.counters
    assert backup.status()["peer"]["alive"] is False


def test_the_two_channels_in_either_order_keep_the_peer_alive(tmp_path):
    """The same heartbeat round on both channels, the private one read first: the public one is
    late (no news), and the peer stays alive and heard."""
    pair = HeldBack(tmp_path)
    pair._deliver = lambda p, c, typ, state, payload: Pair._deliver(pair, p, c, typ, state, payload)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    for _ in range(20):
        pair.t += 0.2
        pub, priv = (primary.encode(c, hb.T_HEARTBEAT) for c in primary.channels)
        pair.t += 0.001                                     # the private one made a moment later
        priv = primary.encode(primary.channels[1], hb.T_HEARTBEAT)
        backup._receive(backup.channels[1], "heartbeat", priv)
        backup._receive(backup.channels[0], "heartbeat", pub)
        for p in (primary, backup):
            p.decide()
    assert backup.role == "backup" and backup.status()["peer"]["alive"] is True
    assert backup.counters["late"] >= 20


def history(tmp_path, attack: bool, preempt: bool = False):
    pair = Pair(tmp_path, skew_s=120.0)                     # the backup's clock 2 min ahead
    pair.ha = dataclasses.replace(pair.ha, preempt=preempt)
    pair.start(hb.NODE_PRIMARY)
    pair.run(1.5)
    old_backup = pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    captured = [old_backup.encode(c, hb.T_HEARTBEAT) for c in old_backup.channels]
    backup = pair.start(hb.NODE_BACKUP)                     # the backup restarts (an upgrade)
    pair.run(2.0)
    primary = pair.start(hb.NODE_PRIMARY)                   # then the primary: never saw the first
    deliver = pair._deliver

    def with_replays(p, c, typ, state, payload):
        if attack and p is primary:
            for data, ch in zip(captured, primary.channels):
                primary._receive(ch, "heartbeat", data)
        deliver(p, c, typ, state, payload)
    pair._deliver = with_replays
    pair.run(10.0)
    return pair.roles(), backup.status()["peer"]["alive"], primary.status()["peer"]["alive"]


def test_captures_of_the_peers_left_boot_do_not_keep_our_echo_off_its_live_one(tmp_path):
    for i, preempt in enumerate((False, True)):
        (tmp_path / f"{i}a").mkdir()
        (tmp_path / f"{i}b").mkdir()
        quiet = history(tmp_path / f"{i}a", attack=False, preempt=preempt)
        attacked = history(tmp_path / f"{i}b", attack=True, preempt=preempt)
        assert quiet[1] and quiet[2], quiet
        assert attacked == quiet, (preempt, attacked, quiet)
        assert sorted(attacked[0].values()) == ["active", "backup"]


def test_the_mono_field_round_trips_where_version_1_had_padding():
    m = hb.Message(hb.T_HEARTBEAT, hb.S_ACTIVE, 0, 0, 7, 1, 10**18, hb.F_LINK_OK | hb.F_MONO,
                   hb.echo_payload(3), 0xFFFFFFF0)
    raw = hb.encode(b"k" * 32, m)
    assert len(raw) == 40 + 8 + 32 and hb.decode(b"k" * 32, raw) == m
    # a director without the field sent zeros there, and no F_MONO: its order is not judged
    old = hb.encode(b"k" * 32, dataclasses.replace(m, flags=hb.F_LINK_OK, mono=0))
    assert old[10:12] == old[38:40] == b"\0\0" and not hb.decode(b"k" * 32, old).flags & hb.F_MONO
    assert hb.mono_before(0xFFFFFFF0, 5) and not hb.mono_before(5, 0xFFFFFFF0)      # across the wrap
    assert not hb.mono_before(9, 9) and hb.mono_ms(4294967.297) == 1


def test_a_sync_sink_that_fails_is_counted_and_logged_once_a_minute(tmp_path, caplog):
    """The backup's data plane refusing synced records (its public interface re-created): each
    batch logged a traceback (up to five a second) and the lost records were counted nowhere."""
    import asyncio
    import logging
    import socket

    from lb.ha import sync as hsync
    from lb.ha.pulse import BACKUP
    from test_ha_replay import REC
    from test_ha_unit import _pulse

    p = _pulse(tmp_path, ())
    p.machine.state = BACKUP
    p.sync_sink = lambda conns, temps, owned_since_ns: socket.if_nametoindex("pub-gone0")
    [payload] = hsync.pack_batches([hsync.encode_conn(REC)])
    p.coarse_ns = lambda: 1_000_000_000              # REC is alive then

    async def main():
        t = asyncio.create_task(p._sync_in())
        for _ in range(50):
            p._sync_queue.put_nowait(payload)
            await asyncio.sleep(0.005)
        t.cancel()
    with caplog.at_level(logging.ERROR, "lb.ha"):
        asyncio.run(main())
    lines = [r for r in caplog.records if "installing" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info, [r.getMessage() for r in caplog.records]
    assert p.counters["sync_install_failed"] == 50


class PrivateDown(Pair):
    """Two channels, the private link down; the backup's clock two minutes ahead."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path, skew_s=120.0)
        self.ha = HA(primary=A("198.18.0.1"), backup=A("198.18.0.3"), primary_private=A("198.18.1.1"),
                     backup_private=A("198.18.1.3"), key_file=self.ha.key_file, keepalive=0.2,
                     deadtime=1.0, max_skew=30.0, sync=False)

    def _deliver(self, p, c, typ, state, payload):
        if c.id == hb.CH_PRIVATE:
            p.encode(c, typ, state, payload)              # sent into a dead link
            return
        super()._deliver(p, c, typ, state, payload)


def test_the_echo_turns_per_round_so_every_channel_carries_every_stale_boot(tmp_path):
    """Captures of both directors' left boots replayed to each after both restarted, with one
    channel down: the echo turned once per datagram, so with two channels each channel echoed
    the same boots for ever and the live one could be never echoed where it was heard (two
    active directors in about one run of four).  It turns once per keepalive round."""
    for run in range(6):
        d = tmp_path / str(run)
        d.mkdir()
        pair = PrivateDown(d)
        old_primary = pair.start(hb.NODE_PRIMARY)
        pair.run(1.5)
        old_backup = pair.start(hb.NODE_BACKUP)
        pair.run(2.0 + 0.05 * run)                        # each run at another phase of the rounds
        cap_b = old_backup.encode(old_backup.channels[0], hb.T_HEARTBEAT)
        cap_p = old_primary.encode(old_primary.channels[0], hb.T_HEARTBEAT)
        pair.start(hb.NODE_PRIMARY)
        pair.run(200.0)                                   # the captures age past max_skew
        backup = pair.start(hb.NODE_BACKUP)
        pair.run(2.0 + 0.05 * run)
        primary = pair.start(hb.NODE_PRIMARY)
        deliver = pair._deliver

        def with_replays(p, c, typ, state, payload):
            primary._receive(primary.channels[0], "heartbeat", cap_b)
            backup._receive(backup.channels[0], "heartbeat", cap_p)
            deliver(p, c, typ, state, payload)
        pair._deliver = with_replays
        pair.run(60.0)
        assert sorted(pair.roles().values()) == ["active", "backup"], (run, pair.roles())
        assert primary.status()["peer"]["alive"] and backup.status()["peer"]["alive"], run


def test_heartbeats_of_a_boot_another_channel_saw_leave_are_no_news(tmp_path):
    """The primary's public heartbeats held back for a minute; it restarts (an upgrade: its new
    boot takes over again, preempt) and then dies.  The first boot's held-back heartbeats,
    replayed on the public channel, where the backup had no stream yet, were taken as a new
    boot's and kept the dead primary alive: the private channel saw that boot leave."""
    from lb.ha.pulse import LEAVING

    pair = HeldBack(tmp_path)
    pair.ha = dataclasses.replace(pair.ha, preempt=True)
    pair._deliver = lambda p, c, typ, state, payload: (
        pair.withheld.append(p.encode(c, typ, state, payload))
        if p.node == hb.NODE_PRIMARY and c.id == hb.CH_PUBLIC and p.node in pair.nodes
        else Pair._deliver(pair, p, c, typ, state, payload))
    p0, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(60.0)
    old = list(pair.withheld)
    p0._send_all(hb.T_HEARTBEAT, LEAVING)
    pair.start(hb.NODE_PRIMARY)
    pair.run(10.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    del pair.nodes[hb.NODE_PRIMARY]                      # the new boot dies
    chan = backup.channels[hb.CH_PUBLIC]
    for data in old[:25]:
        backup._receive(chan, "heartbeat", data)
        pair.run(0.2)
    assert backup.role == "active" and backup.status()["peer"]["alive"] is False


def test_a_partition_of_weeks_heals(tmp_path):
    """After 26 days apart (past half the mono field's range) the peer's heartbeats were all
    "late" for as long again: both stayed active once the link came back."""
    pair = Pair(tmp_path)
    pair.start(hb.NODE_PRIMARY)
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    pair.cut = {0, 1}
    pair.run(3.0)
    assert pair.roles() == {0: "active", 1: "active"}
    pair.t += 26 * 86400
    for n in pair.next_hb:
        pair.next_hb[n] = pair.t
    pair.run(1.0)
    pair.cut = set()
    pair.run(10.0)
    assert sorted(pair.roles().values()) == ["active", "backup"] and backup.counters["late"] == 0
