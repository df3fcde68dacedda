"""Connection sync between two directors' data planes (what lb/ha streams to the backup),
for IPv6 services, persistence templates and firewall-mark services: a connection made on the
active director is forwarded by the backup to the same real server after a failover.  Both
data planes run through BPF_PROG_TEST_RUN; nothing leaves the kernel's test harness."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from lb.dataplane import PortGroup, RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.ha import sync

from packets_util import CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, XDP_TX, loaded_dataplane, real_mac, run

ip = ipaddress.ip_address
REALS6 = ["2001:2:0:1::11", "2001:2:0:1::12", "2001:2:0:1::13"]
REALS4 = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]


def _table(order):
    """The same services on both directors; `order` changes the real servers' config order so
    the two directors' real ids (and rr's first picks) differ, as they may in life."""
    r6 = [REALS6[i] for i in order]
    r4 = [REALS4[i] for i in order]
    return TableSpec((
        ServiceSpec("tcp", ip("2001:2::10"), 80, "rr", tuple(RealSpec(ip(a), 80, 1, "dr") for a in r6)),
        ServiceSpec("tcp", ip("2001:2::20"), 443, "rr", tuple(RealSpec(ip(a), 443, 1, "dr") for a in r6),
                    persistent=300, pmask=64),
        ServiceSpec("tcp", ip("198.18.0.50"), 21, "rr", tuple(RealSpec(ip(a), 0, 1, "dr") for a in r4),
                    fwmark=21, groups=(PortGroup("tcp", ip("198.18.0.50"), 21, 21),
                                       PortGroup("tcp", ip("198.18.0.50"), 30000, 30099)),
                    persistent=300, pmask="255.255.255.0"),
    ))


@pytest.fixture(scope="module")
def pair():
    with loaded_dataplane("synca", table=_table([0, 1, 2])) as a, \
            loaded_dataplane("syncb", table=_table([2, 0, 1])) as b:
        yield a, b


def _pkt(src, dst, sport, dport, flags):
    l3 = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
    return Ether(src=CLIENT_MAC, dst=PUB_MAC) / l3 / TCP(sport=sport, dport=dport, flags=flags)


def _dst(dp, pkt):
    rc, out = run(dp, "lb_xdp_public", pkt)
    assert rc == XDP_REDIRECT
    return Ether(out).dst


FLOWS = [("2001:2:0:9::2", "2001:2::10", 41000, 80), ("2001:2:0:9::3", "2001:2::10", 41001, 80),
         ("2001:2:0:7::5", "2001:2::20", 41002, 443),
         ("198.18.0.2", "198.18.0.50", 41003, 21), ("198.18.0.2", "198.18.0.50", 41004, 30042)]


def _open(dp, flow) -> str:
    """SYN and the client's ACK: an established connection (the SYN alone is embryonic, and
    embryos are not synced); the real server's MAC"""
    mac = _dst(dp, _pkt(*flow, "S"))
    assert _dst(dp, _pkt(*flow, "A")) == mac
    return mac


def test_backup_forwards_synced_connections_to_the_same_real_server(pair):
    a, b = pair
    picked = [_open(a, f) for f in FLOWS]
    # a connection still in its handshake (a flood's SYNs are all such) is not synced
    _dst(a, _pkt("2001:2:0:9::99", "2001:2::10", 41999, 80, "S"))
    conns, temps = a.export_conns()
    assert not any(r[2] == 41999 for _, _, r in conns)
    # through the wire format the HA link uses
    got_c, got_t = [], []
    for batch in sync.pack_batches(sync.Exporter(rate=10**6, interval=1).select(conns, temps)):
        c, t = sync.decode_batch(batch)
        got_c += c
        got_t += t
    done, skipped = b.import_conns(got_c, got_t, ifindex=1, local_mac=bytes.fromhex("020000000101"))
    # every connection and template went over and in: these flows (whatever another test of the
    # module left in `a` besides), the IPv6 /64 template and the fwmark one
    assert sorted(r[2] for r in got_c if r[2] in {f[2] for f in FLOWS}) == sorted(f[2] for f in FLOWS)
    assert len(got_t) == 2
    assert (done, skipped) == (len(got_c) + len(got_t), 0)
    for f, mac in zip(FLOWS, picked):
        assert _dst(b, _pkt(*f, "A")) == mac, f
    # the templates came too: a new connection of the same /64 (and of the fwmark client's /24,
    # on another port of its group) goes to the same server on the backup
    assert _dst(b, _pkt("2001:2:0:7::9", "2001:2::20", 42000, 443, "S")) == picked[2]
    assert _dst(b, _pkt("198.18.0.77", "198.18.0.50", 42001, 30001, "S")) == picked[3]
    assert picked[4] == picked[3]                       # persistence across the port group
    assert picked[2] in {real_mac(r) for r in REALS6}


def test_entry_stamped_ahead_of_the_coarse_clock_is_fresh(pair):
    """The control plane's clock may run a tick ahead of the coarse one BPF reads: an entry
    stamped so is young, not expired by an unsigned wrap-around (it used to be, and the synced
    connection's next packet then went to the director's own stack)."""
    import time

    a, b = pair
    flow = ("2001:2:0:9::44", "2001:2::10", 43000, 80)
    mac = _open(a, flow)
    conns, temps = a.export_conns()
    rec = next(r for _, _, r in conns if r[2] == 43000)
    ahead = time.monotonic_ns() + 2_000_000_000
    assert b.import_conns([rec], [], ifindex=1, local_mac=bytes(6), now_ns=ahead) == (1, 0)
    assert _dst(b, _pkt(*flow, "A")) == mac


def test_entry_older_than_the_backups_clock_is_installed_forwarded_and_expires_on_time(pair):
    """A synced entry older than the backup's uptime (a long-lived connection, a freshly booted
    backup): its stamp wraps below zero as a u64 (`now - age` once went negative and
    struct.pack raised, dropping the batch half written; then sync.admit capped the age, so
    the backup kept it longer than the primary).  The backup forwards it, shows and exports
    its true age, keeps it through a sweep while its timeout has not run out, and expires it
    when it has -- BPF and the sweep reckoning the same (layout.elapsed_ns)."""
    import time

    a, b = pair
    flow = ("2001:2:0:9::55", "2001:2::10", 43100, 80)
    mac = _open(a, flow)
    conns, _ = a.export_conns()
    rec = next(r for _, _, r in conns if r[2] == 43100)
    now = time.clock_gettime_ns(6)                        # CLOCK_MONOTONIC_COARSE, what BPF reads
    uptime_s = now // 10**9
    age = (uptime_s + 50) * 10**9                         # older than the clock
    rec = rec[:9] + (age,) + (uptime_s + 1000,) + rec[11:]   # 950 s of its timeout left
    c, t = sync.decode_batch(sync.pack_batches([sync.encode_conn(rec)])[0])
    c, t, expired = sync.admit(c, t, now)
    assert expired == 0 and c[0][9] == age
    assert b.import_conns(c, t, ifindex=1, local_mac=bytes(6), now_ns=now) == (1, 0)
    b.sweep()
    got = next(r for _, _, r in b.export_conns()[0] if r[2] == 43100)
    assert age <= got[9] < age + 60 * 10**9              # the age it had on the primary, not capped
    assert _dst(b, _pkt(*flow, "A")) == mac             # (its packet restarts its timer)
    # its timeout run out (aged as long, from the packet's refresh): the sweep expires it, and so
    # does the data path
    key = L.ConnKey(ip(flow[0]), ip(flow[1]), flow[2], flow[3], 6).pack()
    raw = b.maps["lb_conns"].get(key)
    (last,) = struct.unpack_from("=Q", raw)
    b.maps["lb_conns"].set(key, struct.pack("=Q", L.stamp_ago(last, (rec[10] + 1) * 10**9)) + raw[8:])
    b.sweep()
    assert b.maps["lb_conns"].get(key) is None
    late = rec[:9] + ((rec[10] + 1) * 10**9,) + rec[10:]
    assert b.import_conns([late], [], ifindex=1, local_mac=bytes(6)) == (1, 0)
    rc, _ = run(b, "lb_xdp_public", _pkt(*flow, "A"))
    assert rc == XDP_PASS and b.maps["lb_conns"].get(key) is None


FWM_NAT = TableSpec((ServiceSpec("tcp", ip("198.18.0.60"), 21, "rr", (RealSpec(ip("198.18.1.11"), 0, 1, "nat"),),
                                 fwmark=22, groups=(PortGroup("tcp", ip("198.18.0.60"), 21, 21),
                                                    PortGroup("tcp", ip("198.18.0.60"), 30000, 30099))),))


def test_a_synced_nat_connection_of_a_firewall_mark_service_is_answered_through_the_backup():
    """NAT through a firewall-mark service (an FTP data connection to port 30042): its real
    server (port 0) answers from 30042.  After the connection went over to the backup, that
    reply is rewritten back to the VIP there too: the backup's reverse entry is keyed by the
    port the reply comes from (it was keyed by port 0, and the reply went to the backup's own
    stack un-NATed)."""
    client, vip, real = "198.18.0.2", "198.18.0.60", "198.18.1.11"

    def reply(dp):
        pkt = Ether(src=real_mac(real), dst=PRIV_MAC) / IP(src=real, dst=client) / \
            TCP(sport=30042, dport=41600, flags="A", seq=5000, ack=1001)
        return run(dp, "lb_xdp_private", pkt)

    with loaded_dataplane("fwnata", table=FWM_NAT) as a, loaded_dataplane("fwnatb", table=FWM_NAT) as b:
        _open(a, (client, vip, 41600, 30042))
        rc, out = reply(a)
        assert rc == XDP_TX and (Ether(out)[IP].src, Ether(out)[TCP].sport) == (vip, 30042)
        conns, temps = a.export_conns()
        [batch] = sync.pack_batches(sync.Exporter(rate=10**6, interval=1).select(conns, temps))
        c, t = sync.decode_batch(batch)
        assert b.import_conns(c, t, ifindex=1, local_mac=bytes.fromhex(PUB_MAC.replace(":", ""))) == (1, 0)
        rc, out = reply(b)
        assert rc == XDP_TX, rc
        assert (Ether(out)[IP].src, Ether(out)[IP].dst, Ether(out)[TCP].sport) == (vip, client, 30042)


def test_a_full_template_table_on_the_backup_skips_the_template_and_keeps_the_rest_of_the_batch(pair):
    """lb_persist has no eviction: full on the backup (as full as the primary's), a synced
    template does not fit.  It is skipped, counted; the batch's connections are installed and
    counted on their real server, and the records after it are installed too (the full table
    raised out of the import: the rest of the batch was lost, and the counts of the connections
    already written, so ActiveConn was short until the next sweep)."""
    import time

    _a, b = pair
    pm = b.maps["lb_persist"]
    vip, port = ip("2001:2::20"), 443
    raddr = ip(REALS6[1])
    st, rid = b.conns.rid_of(6, vip, port, raddr, port)
    filler = [L.PERSIST_KEY.pack(bytes((0x20, 1, 0, 0x0f)) + i.to_bytes(12, "big"), L.pack_addr(vip),
                                 L.pack_port(port), 6, L.AF_INET6, 0) for i in range(pm.max_entries)]
    value = L.PERSIST.pack(time.clock_gettime_ns(6), rid, 300)
    before = b.table.real_conns(rid)
    try:
        for k in filler:
            try:
                pm.set(k, value)
            except OSError:
                break                        # full (the map's own count)
        conn = (6, ip("2001:2:0:8::1"), 44000, vip, port, raddr, port, L.TCP_S["ESTABLISHED"], L.CONN_F_PERSIST,
                0, 900, bytes(6))
        conn2 = conn[:2] + (44001,) + conn[3:]
        temp = (6, ip("2001:2:0:8::"), vip, port, 0, raddr, port, 0, 300)
        temp2 = (6, ip("2001:2:0:6::"), vip, port, 0, raddr, port, 0, 300)
        assert b.import_conns([conn, conn2], [temp, temp2], ifindex=1, local_mac=bytes(6)) == (2, 2)
        for c in (conn, conn2):
            assert b.maps["lb_conns"].get(L.ConnKey(c[1], vip, c[2], port, 6).pack()) is not None
        # (active, inactive, persist): the two connections counted, the templates left out not
        assert tuple(b.table.real_conns(rid)) == (before[0] + 2, before[1], before[2])
    finally:
        pm.delete_many(filler)
        b.maps["lb_conns"].delete_many([L.ConnKey(ip("2001:2:0:8::1"), vip, p, port, 6).pack() for p in (44000, 44001)])


def test_a_new_active_keeps_what_its_own_data_plane_made_over_the_old_actives_late_records(pair, tmp_path):
    """The old active's records still arriving within a deadtime of the takeover (its last scan,
    its datagrams still in the socket's buffer) are installed -- they name connections it made just
    before -- but they overwrote the entries this director's data plane had made itself since:
    a connection scheduled here to one real server, its ACK then sent to the one the old
    active's record named (the handshake broken), and the same for a persistence template and a
    connection still in its handshake.  Now a record of an entry made or changed here since the
    takeover is skipped (counted), as IPVS's master takes no sync message; the records of
    connections it does not have, or had as copies from before the takeover, go in; and a
    backup still takes every record, also over an entry of its own.  Two directors' Pulses in
    memory (tests/test_ha_unit.py's Pair); the new active's sync sink is a BPF data plane."""
    import asyncio
    import time

    from lb.ha import heartbeat as hb
    from lb.ha.pulse import LEAVING
    from test_ha_sync_takeover import _until
    from test_ha_unit import Pair

    _a, b = pair
    pulses = Pair(tmp_path)                                   # keepalive 0.2 s, deadtime 1 s
    primary, backup = pulses.start(hb.NODE_PRIMARY), pulses.start(hb.NODE_BACKUP)
    pulses.run(2.0)
    assert pulses.roles() == {0: "active", 1: "backup"}
    backup.sync_sink = lambda conns, temps, owned: b.import_conns(conns, temps, ifindex=1, local_mac=bytes(6),
                                                                  owned_since_ns=owned)
    backup.coarse_ns = lambda: time.clock_gettime_ns(6)
    vip, pvip = "2001:2::10", "2001:2::20"
    est = L.TCP_S["ESTABLISHED"]

    def other(mac):
        """a real server of the services other than the one of this MAC"""
        return ip(next(r for r in REALS6 if real_mac(r) != mac))

    def rec(flow, raddr, state=est, flags=0):
        """the old active's record of a connection, its last packet a second ago"""
        return (6, ip(flow[0]), flow[2], ip(flow[1]), flow[3], raddr, flow[3], state, flags, 10**9, 900, bytes(6))

    def deliver(conns, temps=()):
        """the old active's records, read by this director: taken by its sync task (installed or
        skipped, each counted)"""
        n = len(conns) + len(temps) + backup.counters["sync_rx_records"] + backup.counters["sync_skipped"]
        for p in sync.pack_batches([sync.encode_conn(r) for r in conns] + [sync.encode_template(t) for t in temps]):
            backup._sync_queue.put_nowait(p)
        assert asyncio.run(_until(lambda: backup.counters["sync_rx_records"] + backup.counters["sync_skipped"] >= n,
                                  [backup._sync_in]))

    # as backup: the old active's record replaces even an entry this director made itself (a
    # stray packet): the active's table is the one that counts
    stray = ("2001:2:0:9::71", vip, 45000, 80)
    there = other(_open(b, stray))
    copied = ("2001:2:0:9::72", vip, 45001, 80)
    deliver([rec(stray, there), rec(copied, ip(REALS6[0]))])
    assert _dst(b, _pkt(*stray, "A")) == real_mac(there)
    assert backup.counters["sync_rx_records"] == 2 and backup.counters["sync_skipped"] == 0

    del pulses.nodes[hb.NODE_PRIMARY]                         # the old active goes: "leaving"
    primary._send_all(hb.T_HEARTBEAT, LEAVING)
    pulses.run(0.1)
    assert backup.role == "active"
    # the Pulses' clock is the test's; the data plane's is the machine's: from here on pulse reads
    # the machine's coarse clock as it was at the takeover, advanced as the test's clock advances
    base, at = time.clock_gettime_ns(6), backup.machine.since
    backup.coarse_ns = lambda: base + int((pulses.t - at) * 1e9)
    # after the takeover, this director's data plane makes its own: an established connection,
    # one in its handshake, a persistent service's connection and its template
    mine = ("2001:2:0:9::73", vip, 45002, 80)
    mine_mac = _open(b, mine)
    shaking = ("2001:2:0:9::74", vip, 45003, 80)
    shaking_mac = _dst(b, _pkt(*shaking, "S"))
    sticky = ("2001:2:0:5::1", pvip, 45004, 443)
    sticky_mac = _open(b, sticky)
    # the old active's last records, within a deadtime of the takeover: its own picks for the
    # same connections and client, a connection this director has not heard of, and an update of
    # the copy it had before the takeover
    unheard = ("2001:2:0:9::75", vip, 45005, 80)
    pulses.t += 0.3
    deliver([rec(mine, other(mine_mac)), rec(shaking, other(shaking_mac)),
             rec(sticky, other(sticky_mac), flags=L.CONN_F_PERSIST), rec(unheard, ip(REALS6[1])),
             rec(copied, ip(REALS6[0]), state=L.TCP_S["FIN_WAIT"])],
            [(6, ip("2001:2:0:5::"), ip(pvip), 443, 0, other(sticky_mac), 443, 0, 300)])
    assert _dst(b, _pkt(*mine, "A")) == mine_mac               # still to the server it chose
    assert _dst(b, _pkt(*shaking, "A")) == shaking_mac         # its handshake ends where it began
    assert _dst(b, _pkt(*sticky, "A")) == sticky_mac
    assert _dst(b, _pkt("2001:2:0:5::2", pvip, 45006, 443, "S")) == sticky_mac   # the client's template
    assert _dst(b, _pkt(*unheard, "A")) == real_mac(REALS6[1])
    states = {r[2]: r[7] for _, _, r in b.export_conns()[0]}
    assert states[copied[2]] == L.TCP_S["FIN_WAIT"]
    assert backup.counters["sync_skipped"] == 4 and backup.counters["sync_rx_records"] == 2 + 2


def test_a_template_its_sweep_found_idle_is_synced_with_its_timeout_in_seconds(pair):
    """The active's sweep marks a template whose connections all ended (LB_PERSIST_F_IDLE, kept
    in its timeout's top bit): the record carries the timeout in seconds, and the backup's copy
    is not idle (the backup's own sweep looks at the connections it controls there: until then,
    past its timeout it is kept, as every template was before the mark) and decides."""
    import time

    a, b = pair
    vip = "2001:2::20"
    flow = ("2001:2:0:3::1", vip, 46000, 443)
    mac = _open(a, flow)
    _dst(a, _pkt(*flow, "R"))                          # CLOSE: 10 s
    a.sweep(now_ns=time.monotonic_ns() + 15 * 10**9)   # the connection gone: the template is idle
    key = L.PERSIST_KEY.pack(L.pack_addr(ip("2001:2:0:3::")), L.pack_addr(ip(vip)), L.pack_port(443), 6,
                             L.AF_INET6, 0)
    assert L.PERSIST.unpack(a.maps["lb_persist"].get(key))[2] == 300 | L.PERSIST_F_IDLE
    [t] = [t for t in a.export_conns()[1] if t[2][1] == ip("2001:2:0:3::")]
    assert t[2][8] == 300
    got = []
    for batch in sync.pack_batches(sync.Exporter(rate=10**6, interval=1).select([], [t])):
        got += sync.decode_batch(batch)[1]
    assert b.import_conns([], got, ifindex=1, local_mac=bytes(6)) == (1, 0)
    assert L.PERSIST.unpack(b.maps["lb_persist"].get(key))[2] == 300
    assert _dst(b, _pkt("2001:2:0:3::2", vip, 46001, 443, "S")) == mac
