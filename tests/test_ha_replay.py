"""pulse's replay guard over restarts and clock fixes, the heartbeat socket under ICMP errors, and
the sync backlog's count: two in-memory directors (tests/test_ha_unit.py's Pair) and, for ICMP,
real sockets on 127.0.0.x."""
import errno
import logging
import random
import select
import socket
import time

from lb.ha import heartbeat as hb
from lb.ha import sync as hsync

from fuzzseed import SEED, named
from test_ha_unit import A, KEY, Pair, _loopback_ha, eavesdrop

REC = (6, A("198.18.0.2"), 40000, A("198.18.0.10"), 80, A("198.18.1.11"), 80, 1, 0, 5_000_000_000, 900,
       b"\x02" * 6)


def test_a_primary_restarted_with_its_clock_set_back_is_heard_at_once(tmp_path):
    """The primary's clock was 120 s ahead; NTP sets it right and lb restarts (preempt).  Its new
    boot's heartbeats are all older than its old boot's last one, but they echo the backup's boot
    id (made after the backup started): the backup hears it and stands down -- one active.  (It
    refused them as replays for as long as the clock had been ahead: both active for 120 s.)
    The old boot's heartbeats, captured and replayed, stay refused and move nothing."""
    pair = Pair(tmp_path)
    pair.skew = {hb.NODE_PRIMARY: int(120e9), hb.NODE_BACKUP: 0}       # the primary 120 s ahead
    primary = pair.start(hb.NODE_PRIMARY)
    primary.machine.preempt = True
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    captured = [primary.encode(c, hb.T_HEARTBEAT, hb.S_ACTIVE) for c in primary.channels]
    primary._send_all(hb.T_HEARTBEAT, hb.S_LEAVING)                     # lb stops
    del pair.nodes[hb.NODE_PRIMARY]
    pair.run(0.5)
    assert backup.role == "active"
    pair.skew[hb.NODE_PRIMARY] = 0                                      # NTP fixed it; lb starts again
    primary = pair.start(hb.NODE_PRIMARY)
    primary.machine.preempt = True
    pair.run(10.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    assert backup.status()["peer"]["alive"] and backup.status()["peer"]["state"] == "active"
    changes, replays = backup.machine.changes, backup.counters["replay"]
    for data in captured * 5:                                           # the old boot's, replayed
        backup._receive(backup.channels[0], "heartbeat", data)
    # nor do they turn the backup's echo back to the old boot: what it sends echoes the new one
    assert hb.decode(KEY, backup.encode(backup.channels[0], hb.T_HEARTBEAT)).echo == primary.boot
    pair.run(5.0)
    assert backup.counters["replay"] == replays + 5 * len(captured)
    assert pair.roles() == {0: "active", 1: "backup"} and backup.machine.changes == changes
    assert backup.status()["peer"]["state"] == "active"


def test_a_dead_primarys_heartbeats_replayed_to_a_restarted_backup_do_not_hold_it_back(tmp_path, caplog):
    """The active primary dies; the backup's lb restarts a second later (a new boot, a new replay
    guard).  An attacker replays the primary's last 28 s of heartbeats ("active", rising sequence
    numbers), one every 5 s (below deadtime), oldest first.  The first is within max_skew and
    taken, but the stream never echoes the new boot: every later one must be within max_skew too,
    falls behind it, and is refused as stale -- the backup takes over a deadtime after it started,
    and no log line says they were accepted for echoing our boot id.  (It stayed BACKUP, with no
    active director, for as long as the capture lasted: 66 s here.)"""
    pair = Pair(tmp_path, keepalive=2.0, deadtime=6.0)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(10.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    deliver, captured = pair._deliver, []

    def tapped(p, c, typ, state, payload):
        if p is not primary or typ != hb.T_HEARTBEAT:
            return deliver(p, c, typ, state, payload)
        captured.append(p.encode(c, typ, state, payload))           # what goes out is captured
        backup._receive(backup.channels[c.id], "heartbeat", captured[-1])
    pair._deliver = tapped
    pair.run(28.0)
    del pair.nodes[hb.NODE_PRIMARY]                                 # it dies: no "leaving"
    del pair.nodes[hb.NODE_BACKUP]
    pair.run(1.0)
    backup = pair.start(hb.NODE_BACKUP)                             # lb restarts on the backup
    replay = list(captured)
    assert len(replay) == 14                                        # 2 s apart
    started, roles = pair.t, []
    with caplog.at_level(logging.WARNING, "lb.ha"):
        for i in range(14 * 10):                                    # 70 s, a replayed heartbeat every 5 s
            if i % 10 == 0 and replay:
                backup._receive(backup.channels[0], "heartbeat", replay.pop(0))
            pair.run(0.5)
            roles.append((round(pair.t - started, 1), backup.role))
    # pair.t is the pair's simulated clock: when in the simulation the backup became active
    active_at = next((t for t, role in roles if role == "active"), None)
    assert active_at is not None and active_at <= pair.ha.deadtime + 1.0, roles
    assert all(role == "active" for t, role in roles if t >= active_at)
    assert backup.counters["stale"] >= 10
    logged = [r.getMessage() for r in caplog.records]
    assert not [m for m in logged if "echo our boot id" in m], logged
    assert [m for m in logged if "max_skew" in m and "refused" in m]


def test_a_backup_restarted_with_its_clock_set_back_is_heard_by_the_primary(tmp_path):
    """The same on the other side, without preempt: the backup, 120 s ahead, restarts with its
    clock right; the active primary hears the new boot (it echoes the primary's boot id) and the
    backup stays backup."""
    pair = Pair(tmp_path, skew_s=120.0)
    primary = pair.start(hb.NODE_PRIMARY)
    pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    pair.nodes[hb.NODE_BACKUP]._send_all(hb.T_HEARTBEAT, hb.S_LEAVING)
    del pair.nodes[hb.NODE_BACKUP]
    pair.run(0.5)
    pair.skew[hb.NODE_BACKUP] = 0
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(10.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    assert primary.status()["peer"]["alive"] and primary.status()["peer"]["state"] == "backup"
    assert backup.machine.changes == 1


def _clock_history(tmp_path, seed, attack):
    """Two in-memory directors through restarts (each with or without "leaving", a crash), each
    restart with the director's clock set anew (right, ahead, behind, beyond max_skew or not);
    with ``attack``, an eavesdropper sends each director, now and then, datagrams captured from
    its peer earlier.  The roles, sampled 3 s after each restart."""
    rng, eve = random.Random(seed), random.Random(seed + 1)
    tmp_path.mkdir(parents=True)
    pair = Pair(tmp_path)
    clocks = [0, int(10e9), int(120e9), int(-60e9)]
    pair.skew = {hb.NODE_PRIMARY: rng.choice(clocks), hb.NODE_BACKUP: rng.choice(clocks)}
    eavesdrop(pair, eve, attack)
    preempt = rng.random() < 0.5
    pair.start(hb.NODE_PRIMARY).machine.preempt = preempt
    pair.run(1.5)
    pair.start(hb.NODE_BACKUP)
    seen = []
    for _ in range(3):
        pair.run(3.0)
        seen.append(sorted(pair.roles().items()))
        who = rng.choice([hb.NODE_PRIMARY, hb.NODE_BACKUP])
        if rng.random() < 0.5:
            pair.nodes[who]._send_all(hb.T_HEARTBEAT, hb.S_LEAVING)
        del pair.nodes[who]
        pair.run(0.5)
        pair.skew[who] = rng.choice(clocks)
        pair.start(who).machine.preempt = preempt and who == hb.NODE_PRIMARY
    pair.run(4.0)
    seen.append(sorted(pair.roles().items()))
    return seen


def test_restarts_with_clocks_set_right_or_wrong_leave_one_active(tmp_path):
    """Whatever the clocks did between restarts -- set right after being ahead, set back, set
    beyond max_skew -- and whatever an eavesdropper replays, 3 s after each restart exactly one
    director is active.  (A clock set right after being ahead made both active for as long as
    it had been ahead.)  Seeded by LB_FUZZ_SEED."""
    rng = random.Random(SEED)
    with named():
        for trial in range(10):
            seed = rng.randrange(1 << 32)
            for attack in (False, True):
                seen = _clock_history(tmp_path / f"{trial}{attack}", seed, attack)
                assert all([r for _, r in s].count("active") == 1 for s in seen), (seed, attack, seen)


def test_a_retired_boot_stays_refused_and_comes_back_only_with_new_messages():
    """ReplayGuard: a boot its stream left is refused for every message it had sent up to then,
    whatever its timestamp and echo; a boot with an older timestamp is accepted only when it
    echoes our boot id and was never left."""
    now = time.time_ns()
    g = hb.ReplayGuard()
    me = 0x5EED

    def hbm(seq, boot, ts, echo=0):
        return hb.Message(hb.T_HEARTBEAT, hb.S_ACTIVE, 0, 0, boot, seq, ts, 0, hb.echo_payload(echo))

    assert g.check(hbm(7, boot=1, ts=now + 20 * 10**9), now, me) is None       # the clock 20 s ahead
    assert g.check(hbm(1, boot=2, ts=now), now, me) == "stale"                 # older, no echo yet
    assert g.check(hbm(2, boot=2, ts=now + 1, echo=me), now, me) is None       # older, echoes us
    for seq in (1, 5, 7):                                                      # boot 1's, replayed
        assert g.check(hbm(seq, boot=1, ts=now + 20 * 10**9, echo=me), now, me) == "replay"
    assert g.check(hbm(3, boot=2, ts=now + 2, echo=me), now, me) is None
    assert g.check(hbm(2, boot=2, ts=now + 1, echo=me), now, me) == "replay"   # duplicate


def test_a_sync_datagram_captured_before_the_backup_restarted_is_refused(tmp_path):
    """An authentic sync datagram of the active's current boot, captured and replayed an hour
    later after the backup restarted: refused (counted as a replay), nothing queued; a fresh one
    is taken."""
    pair = Pair(tmp_path)
    primary = pair.start(hb.NODE_PRIMARY)
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    [payload] = hsync.pack_batches([hsync.encode_conn(REC)])
    captured = primary.encode(primary.channels[0], hb.T_SYNC, None, payload)
    backup._receive(backup.channels[0], "sync", captured)
    backup._receive(backup.channels[0], "sync", captured)
    assert backup._sync_queue.qsize() == 1 and backup.counters["replay"] == 1
    pair.cut.add(hb.NODE_BACKUP)
    del pair.nodes[hb.NODE_BACKUP]
    pair.t += 3600.0
    pair.cut.clear()
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    backup._receive(backup.channels[0], "sync", captured)                 # an hour old, replayed
    assert backup._sync_queue.qsize() == 0
    assert backup.counters["replay"] == 1 and backup.status()["channels"]["public"]["refused"] == {"replay": 1}
    backup._receive(backup.channels[0], "sync", primary.encode(primary.channels[0], hb.T_SYNC, None, payload))
    assert backup._sync_queue.qsize() == 1


def test_sync_datagrams_captured_before_the_backup_restarted_stay_refused_inside_the_window(tmp_path):
    """As above, but the restarted backup has taken a fresh sync datagram first: the captures' sequence
    numbers are then inside its window, below the fresh one's, and still an hour old -- refused."""
    pair = Pair(tmp_path)
    primary = pair.start(hb.NODE_PRIMARY)
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    [payload] = hsync.pack_batches([hsync.encode_conn(REC)])
    captured = [primary.encode(primary.channels[0], hb.T_SYNC, None, payload) for _ in range(5)]
    for data in captured:
        backup._receive(backup.channels[0], "sync", data)
    pair.cut.add(hb.NODE_BACKUP)
    del pair.nodes[hb.NODE_BACKUP]
    pair.t += 3600.0
    pair.cut.clear()
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    backup._receive(backup.channels[0], "sync", primary.encode(primary.channels[0], hb.T_SYNC, None, payload))
    assert backup._sync_queue.qsize() == 1
    for data in captured:                                                  # an hour old, replayed
        backup._receive(backup.channels[0], "sync", data)
    assert backup._sync_queue.qsize() == 1 and backup.counters["replay"] == 5


def test_a_full_sync_backlog_counts_the_records_it_skips(tmp_path):
    """The backup's sync queue is full: a datagram of 5 records dropped counts 5 skipped records
    (lb_ha_sync_skipped_records_total), not 1; a payload too short to hold a count counts none."""
    pair = Pair(tmp_path)
    primary = pair.start(hb.NODE_PRIMARY)
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(3.0)
    while not backup._sync_queue.full():
        backup._sync_queue.put_nowait(b"")
    [payload] = hsync.pack_batches([hsync.encode_conn(REC)] * 5)
    backup._receive(backup.channels[0], "sync", primary.encode(primary.channels[0], hb.T_SYNC, None, payload))
    assert backup.status()["counters"]["sync_skipped"] == 5
    backup._receive(backup.channels[0], "sync", primary.encode(primary.channels[0], hb.T_SYNC, None, b"\x00"))
    assert backup.status()["counters"]["sync_skipped"] == 5
    assert backup.counters["rx"] >= 2


def test_a_heartbeat_send_that_meets_an_icmp_error_goes_out_again(tmp_path):
    """The heartbeat socket is connected to the peer, so an ICMP port unreachable quoting its
    addresses (the kernel's own here: the peer's port was closed; a spoofed one from anywhere
    does the same) leaves an error pending that fails the next send with ECONNREFUSED.  That
    heartbeat is sent again at once and arrives; the event is counted as icmp_errors, not as a
    send error."""
    from lb.ha.pulse import Pulse

    ha = _loopback_ha(tmp_path, deadtime=1.0)

    async def on_role(new, old):
        pass

    p = Pulse(ha, "icmp", on_role, node=hb.NODE_PRIMARY)
    for c in p.channels:
        c.open()
    try:
        sock = p.channels[0].hb.sock
        p._send_all(hb.T_HEARTBEAT)                       # nobody listens: port unreachable comes back
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLERR)
        deadline = time.monotonic() + 10
        while not poller.poll(50):                        # the error pending (poll does not take it)
            assert time.monotonic() < deadline, "no ICMP error came back"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.2", ha.heartbeat_port))
            peer.settimeout(5)
            p._send_all(hb.T_HEARTBEAT)
            data = peer.recv(hb.MAX_DATAGRAM)
        m = hb.decode(KEY, data, sender=hb.NODE_PRIMARY, channel=hb.CH_PUBLIC, types=hb.SOCKET_TYPES["heartbeat"])
        assert m.type == hb.T_HEARTBEAT and m.seq == 2
        st = p.status()["channels"]["public"]
        assert st["icmp_errors"] == 1 and st["tx_errors"] == 0 and st["tx"] == 2
    finally:
        for c in p.channels:
            c.close()


# what an ICMP error spoofed from anywhere can leave pending on the heartbeat socket (port, host
# and network unreachable, protocol unreachable, host unknown, ICMPv6 admin prohibited, ...)
SPOOFABLE = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOPROTOOPT, errno.EHOSTDOWN,
             errno.EACCES, errno.EPROTO, errno.EMSGSIZE)


class IcmpBeforeEverySend:
    """The active's heartbeat socket, connected to the peer, on which an off-path attacker gets
    an ICMP error pending before each heartbeat (one spoofed ICMP error a keepalive, i.e. one
    a tick of the pair's clock): a send takes it and sends nothing, as the kernel's does; what
    goes out is delivered."""

    def __init__(self, clock, deliver):
        self.clock, self.deliver, self.errors, self.armed = clock, deliver, list(SPOOFABLE), None

    def send(self, data):
        if self.armed != self.clock():
            self.armed = self.clock()
            e = self.errors.pop(0)
            self.errors.append(e)
            raise OSError(e, errno.errorcode[e])
        self.deliver(data)


def test_an_icmp_error_spoofed_before_every_heartbeat_does_not_make_two_actives(tmp_path):
    """An attacker spoofs an ICMP error quoting the active primary's heartbeat socket after each
    heartbeat, of every kind the kernel reports on a connected UDP socket (host unreachable,
    ICMPv6 admin prohibited, ...).  Each heartbeat is sent again at once and arrives: the backup
    hears the primary all along and stays backup; every error is counted as icmp_errors, none as
    a send error.  (Only a port unreachable was sent again: the others lost every heartbeat, the
    backup took over a deadtime later and both were active.)"""
    from lb.ha.pulse import Pulse

    pair = Pair(tmp_path)
    primary, backup = pair.start(hb.NODE_PRIMARY), pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    primary._send = Pulse._send.__get__(primary)                  # through the endpoint's socket
    for c in primary.channels:
        c.hb.sock = IcmpBeforeEverySend(lambda: pair.t, lambda data, c=c: backup._receive(
            backup.channels[c.id], "heartbeat", data))
        c.hb.connected = True
    changes, rx = backup.machine.changes, backup.counters["rx"]
    roles = set()
    for _ in range(100):                                          # 20 s
        pair.run(0.2)
        roles.add(tuple(sorted(pair.roles().items())))
    assert roles == {((0, "active"), (1, "backup"))} and backup.machine.changes == changes
    st = primary.status()["channels"]["public"]
    assert st["tx_errors"] == 0 and st["icmp_errors"] == st["tx"] >= 75     # a heartbeat every 4-5 steps
    assert backup.counters["rx"] - rx == st["tx"]


def test_a_send_that_fails_again_or_not_for_icmp_is_a_send_error():
    """Sent again once only: a second failure is a send error (tx_errors), and an error no ICMP
    message leaves (ENOBUFS: the queue full) is one at once, not sent again."""
    import ipaddress

    from lb.ha.pulse import Endpoint

    class Failing:
        def __init__(self, *errs):
            self.errs, self.sent = list(errs), []

        def send(self, data):
            if self.errs:
                e = self.errs.pop(0)
                raise OSError(e, errno.errorcode[e])
            self.sent.append(data)

    for errs, sent, icmp, tx_errors in (((errno.EHOSTUNREACH, errno.EHOSTUNREACH), 0, 1, 1),
                                        ((errno.ENOBUFS,), 0, 0, 1),
                                        ((errno.EACCES,), 1, 1, 0)):
        ep = Endpoint("heartbeat", ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2"), 539, 1 << 20)
        ep.sock, ep.connected = Failing(*errs), True
        ep.send(b"heartbeat")
        assert (len(ep.sock.sent), ep.icmp_errors, ep.tx_errors, ep.tx) == (sent, icmp, tx_errors, sent), errs
