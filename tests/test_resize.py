"""New [tables] for an instance that keeps its data plane (a restart with bigger or smaller
tables): the running instance's maps move into maps of the new sizes (lb/dataplane/resize.py).
Its connections keep their real servers, its templates, counts and statistics carry over, what
its programs make while the new ones load is not lost, and what does not fit is refused before
anything changes.  The old instance's programs stay loaded here, as they stay attached to the
interfaces while the new daemon starts."""
from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import shutil
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lb.dataplane import RealSpec, ServiceSpec, TableSpec, reader
from lb.dataplane import layout as L
from lb.dataplane.errors import DataplaneError
from lb.dataplane.maps import BpfMap, PinnedMaps, pin_dir
from lb.dataplane.resize import old_dir, staging_dir
from lb.dataplane.xdp import Sizes, XdpDataplane
from packets_util import (CLIENT_MAC, PRIV_MAC, PUB_MAC, XDP_PASS, XDP_REDIRECT, XDP_TX, fake_resolver, real_mac,
                          run)

ip = ipaddress.ip_address
VIP = ip("198.18.0.10")
REALS = [ip("198.18.1.11"), ip("198.18.1.12"), ip("198.18.1.13")]
SMALL = Sizes(16, 4096, 16, 4096)
BIG = Sizes(32, 8192, 32, 16384)          # every size bigger, reals_per_service too (a value size)
_sport = itertools.count(41000)


def table(services=("web", "tls", "mh")):
    reals = tuple(RealSpec(a, 80, 1, "dr") for a in REALS)
    all_ = {"web": ServiceSpec("tcp", VIP, 80, "rr", reals, "web"),
            "tls": ServiceSpec("tcp", VIP, 443, "rr", reals, "tls", 300, "255.255.255.0"),
            "mh": ServiceSpec("tcp", VIP, 8080, "mh", reals, "mh")}
    extra = {f"x{i}": ServiceSpec("tcp", VIP, 9000 + i, "rr", reals, f"x{i}") for i in range(8)}
    all_.update(extra)
    return TableSpec(tuple(all_[s] for s in services))


class Client:
    """Sends the client's packets and keeps what `lb list --stats` should say of them:
    {(port, real): [active, inactive, conns, inpkts]}"""

    def __init__(self):
        self.expect: dict[tuple[int, str], list[int]] = {}
        self.flows: dict[tuple[int, int], str] = {}      # (port, sport) -> real server

    def send(self, dp, sport, flags, dport=80):
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst=str(VIP)) / \
            TCP(sport=sport, dport=dport, flags=flags)
        rc, out = run(dp, "lb_xdp_public", pkt)
        assert rc == XDP_REDIRECT, (dport, sport, flags, rc)
        server = {real_mac(a): str(a) for a in REALS}[Ether(out).dst]
        e = self.expect.setdefault((dport, server), [0, 0, 0, 0])
        e[3] += 1
        if flags == "S":                 # SYN_RECV counts as active, as in IPVS
            e[0] += 1
            e[2] += 1
        elif flags == "A":
            self.flows.setdefault((dport, sport), server)
        return server

    def connect(self, dp, dport):
        sport = next(_sport)
        server = self.send(dp, sport, "S", dport)
        assert self.send(dp, sport, "A", dport) == server
        return sport


def rows(dp):
    """{(port, real): [active, inactive, conns, inpkts]} as `lb list --stats` reads them (the
    servers with any), and {(port, real): persist}"""
    with PinnedMaps(dp.instance) as maps:
        services = reader.read_services(maps)
    counts = {(s.port, str(r.address)): [r.active, r.inactive, r.stats.conns, r.stats.inpkts]
              for s in services for r in s.reals}
    return ({k: v for k, v in counts.items() if any(v)},
            {(s.port, str(r.address)): r.persist for s in services for r in s.reals})


def pinned_entries(instance, name):
    m = BpfMap.open_pinned(os.path.join(pin_dir(instance), name))
    try:
        return m.max_entries, m.value_size
    finally:
        m.close()


@pytest.fixture
def instance():
    name = f"resize{os.getpid()}"
    made = []
    yield name, made
    for dp in made:
        dp.close()
    made[0].unpin()                       # the instance's pins
    left = [d for d in (pin_dir(name), staging_dir(pin_dir(name)), old_dir(pin_dir(name))) if os.path.exists(d)]
    for d in left:
        shutil.rmtree(d, ignore_errors=True)
    assert not left, f"a resize left {left}"


def start(instance, sizes):
    name, made = instance
    dp = XdpDataplane(name, sizes, resolver=fake_resolver)
    made.append(dp)
    dp.load()
    return dp


def test_bigger_tables_keep_every_connection_template_count_and_statistic(instance, caplog):
    old = start(instance, SMALL)
    old.apply(table())
    client = Client()
    for port in (80, 443, 8080):
        for _ in range(4):
            client.connect(old, port)
    half = next(_sport)
    first = client.send(old, half, "S")     # a handshake half done when the daemon restarts
    counts, persist = rows(old)
    assert counts == client.expect
    assert sum(persist.values()) == 1      # the client's template (port 443, its /24)

    caplog.set_level(logging.INFO, logger="lb.dataplane")
    new = start(instance, BIG)
    name = instance[0]
    assert ("[tables] changed (connections 4096 -> 16384, connections_ipv6 1024 -> 4096, embryonic 1024 -> 4096, services 16 -> 32, "
            "real_servers 4096 -> 8192, reals_per_service 16 -> 32)") in caplog.text
    assert pinned_entries(name, "lb_conns4") == (16384, L.CONN.size)
    assert pinned_entries(name, "lb_svc") == (32, L.SVC.size)
    assert pinned_entries(name, "lb_svc_dests") == (32, L.DEST.size * 32)
    assert not os.path.exists(staging_dir(pin_dir(name)))
    assert os.path.isdir(old_dir(pin_dir(name)))       # until the new programs are attached
    assert rows(new) == (client.expect, persist)       # counts and statistics, as they were

    # the old programs serve until the new ones are attached: what they do is not lost
    late = [client.connect(old, 80) for _ in range(2)]
    (port, sport), server = next(iter(client.flows.items()))
    assert client.send(old, sport, "PA", port) == server
    new.apply(table())
    # once attached, the new programs hand what their maps do not know yet to the ones they
    # replaced (the attach puts those in lb_progs_prev): nothing is handed to the kernel
    ack = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst=str(VIP)) / \
        TCP(sport=late[0], dport=80, flags="PA")
    assert run(new, "lb_xdp_public", ack)[0] == XDP_PASS
    new.program.prev_progs().set(L.U32.pack(L.PREV_SLOTS["public"]), L.U32.pack(old.fns["lb_xdp_public"].fd))
    assert client.send(new, late[0], "PA") == client.flows[(80, late[0])]
    new.finish_resize()
    assert not os.path.exists(old_dir(pin_dir(name)))
    assert "resize finished: 2 lb_conns4 made meanwhile copied" in caplog.text
    assert rows(new) == (client.expect, persist)

    for (port, sport), server in list(client.flows.items()):
        assert client.send(new, sport, "PA", port) == server
    assert client.send(new, half, "A") == first        # the handshake ends on the new programs
    assert rows(new) == (client.expect, persist)


def test_tables_too_small_for_what_runs_are_refused_before_anything_changes(instance):
    old = start(instance, SMALL)
    old.apply(table(("web", "tls", "mh", "x0", "x1", "x2", "x3", "x4")))
    client = Client()
    sport = client.connect(old, 80)
    name = instance[0]
    pins = sorted(os.listdir(pin_dir(name)))
    for sizes, what in ((Sizes(4, 4096, 16, 4096), "[tables] services = 4 is too small"),
                        (Sizes(16, 4096, 2, 4096), "[tables] reals_per_service = 2 is too small")):
        what += f" for the running instance {pin_dir(name)}"
        dp = XdpDataplane(name, sizes, resolver=fake_resolver)
        with pytest.raises(DataplaneError) as e:
            dp.load()
        dp.close()
        assert what in str(e.value) and "lb stop" in str(e.value), e.value
        assert ("keep services at least 8" if sizes.services == 4 else "keep reals_per_service at least 3") \
            in str(e.value), e.value
        assert sorted(os.listdir(pin_dir(name))) == pins
        assert pinned_entries(name, "lb_svc") == (16, L.SVC.size)
        assert not os.path.exists(staging_dir(pin_dir(name)))
        assert not os.path.exists(old_dir(pin_dir(name)))
    assert client.send(old, sport, "PA") == client.flows[(80, sport)]   # still serving


def test_a_smaller_connection_table_keeps_the_most_recently_used(instance, caplog):
    old = start(instance, SMALL)
    old.apply(table(("web",)))
    client = Client()
    sport = client.connect(old, 80)
    conns = old.maps["lb_conns"]
    [(key, value)] = conns.items()
    # 3,000 more connections of that client, each a nanosecond older than the next
    keys, values = [], []
    last_ns = struct.unpack_from("=Q", value)[0]
    for i in range(3000):
        k = bytearray(key)
        struct.pack_into("!H", k, 32, 1024 + i)          # the client's port (lb_conn_key.sport)
        keys.append(bytes(k))
        values.append(struct.pack("=Q", last_ns - 3000 + i) + value[8:])
    conns.set_many(keys, values)
    assert len(conns.items()) == 3001

    caplog.set_level(logging.INFO, logger="lb.dataplane")
    new = start(instance, Sizes(16, 4096, 16, 1024))
    new.apply(table(("web",)))
    new.finish_resize()
    kept = {k for k, _ in new.maps["lb_conns"].items()}
    assert "lb_conns4: 1977 entries did not fit the new size and were left out" in caplog.text
    assert key in kept                                    # the most recent: the real one
    newest = set(keys[-1023:])
    assert len(kept) > 900 and kept - {key} <= newest     # an LRU may let a few go early
    assert client.send(new, sport, "PA") == client.flows[(80, sport)]


def test_maps_of_another_layout_are_not_moved(instance):
    """A map that differs in more than its size (another version of lb) is refused in the copy,
    before the swap: the running instance's pins stay, the staging directory goes."""
    old = start(instance, SMALL)
    old.apply(table(("web",)))
    name = instance[0]
    path = os.path.join(pin_dir(name), "lb_real_overload")
    os.unlink(path)
    from lb.dataplane import bpfsys
    fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_ARRAY, 4, 8, SMALL.reals, 0, "lb_real_overload")
    try:
        bpfsys.obj_pin(fd, path)
    finally:
        os.close(fd)
    dp = XdpDataplane(name, BIG, resolver=fake_resolver)
    with pytest.raises(DataplaneError) as e:
        dp.load()
    dp.close()
    assert path in str(e.value) and "another version of lb" in str(e.value)
    assert pinned_entries(name, "lb_conns4") == (4096, L.CONN.size)
    assert not os.path.exists(staging_dir(pin_dir(name)))


@pytest.mark.parametrize("died", ["before the swap", "between the swap's renames", "before finishing"])
def test_a_start_that_died_during_a_resize_is_taken_up(instance, died, caplog):
    old = start(instance, SMALL)
    old.apply(table(("web",)))
    client = Client()
    sport = client.connect(old, 80)
    name = instance[0]
    pins, staging, aside = pin_dir(name), staging_dir(pin_dir(name)), old_dir(pin_dir(name))
    dying = XdpDataplane(name, BIG, resolver=fake_resolver)
    instance[1].append(dying)
    dying.load()                                       # swapped: new maps at pins, old aside
    if died == "before the swap":
        os.rename(pins, staging)
        os.rename(aside, pins)
    elif died == "between the swap's renames":
        os.rename(pins, staging)
    late = client.connect(old, 80)                     # the old programs still serve
    dying.close()

    caplog.set_level(logging.INFO, logger="lb.dataplane")
    again = start(instance, BIG)
    again.apply(table(("web",)))
    again.finish_resize()
    assert not os.path.exists(staging) and not os.path.exists(aside)
    assert pinned_entries(name, "lb_conns4") == (16384, L.CONN.size)
    for s in (sport, late):
        assert client.send(again, s, "PA") == client.flows[(80, s)]
    if died == "before finishing":
        assert "was not finished" in caplog.text
        assert "resize finished: 1 lb_conns4 made meanwhile copied" in caplog.text
    else:
        assert "moving the running instance's maps into maps of the new sizes" in caplog.text


def test_an_older_lbs_one_connection_table_moves_into_the_two_family_tables(instance, caplog):
    """lb before the IPv4 table kept every established connection in one lb_conns (40-byte keys,
    both families).  An upgrade's start finds that pin, moves its entries into lb_conns4 and
    lb_conns6 as a resize moves maps, and the connections go on to their real servers."""
    from lb.dataplane import bpfsys

    old = start(instance, SMALL)
    old.apply(table(("web",)))
    client = Client()
    flows = [client.connect(old, 80) for _ in range(6)]
    name = instance[0]
    pins = pin_dir(name)
    # the older layout: one wide table of every established entry, an IPv6 one among them
    # and more IPv6 connections than the new IPv6 table holds (1,024, a quarter of 4,096): the
    # least recently used are left out, counted against that table
    live = old.maps["lb_conns"].items()
    value = live[0][1]
    now = struct.unpack_from("=Q", value)[0]

    def v6(i):
        return L.CONN_KEY.pack(ip(f"2001:2::{i + 1:x}").packed, ip("2001:2::10").packed, b"\x9c\x40", b"\0\x50", 6,
                               L.AF_INET6, 0, 0)
    six = [(v6(i), struct.pack("=Q", now - 1030 + i) + value[8:]) for i in range(1030)]
    entries = live + six
    assert len(live) == 6
    fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_LRU_HASH, L.CONN_KEY.size, L.CONN.size, 4096, 0, "lb_conns")
    try:
        for k, v in entries:
            bpfsys.update(fd, k, v)
        bpfsys.obj_pin(fd, os.path.join(pins, "lb_conns"))
    finally:
        os.close(fd)
    for gone in ("lb_conns4", "lb_conns6"):
        os.unlink(os.path.join(pins, gone))

    caplog.set_level(logging.INFO, logger="lb.dataplane")
    new = start(instance, SMALL)
    assert "an older lb's one connection table of 4096 entries -> IPv4 4096 and IPv6 1024" in caplog.text
    assert ("lb_conns6: 6 entries did not fit the new size and were left out (the least recently used; "
            "[tables] connections_ipv6 sizes it)") in caplog.text
    assert "copied 6 lb_conns4, 1024 lb_conns6" in caplog.text
    new.apply(table(("web",)))
    new.finish_resize()
    assert not os.path.exists(os.path.join(pins, "lb_conns"))
    assert len(new.maps["lb_conns4"].items()) == 6
    assert {k for k, _ in new.maps["lb_conns6"].items()} == {v6(i) for i in range(6, 1030)}
    for s in flows:
        assert client.send(new, s, "PA") == client.flows[(80, s)]


def handed_over(instance):
    """A resize to BIG after its attach: three connections the old programs made after the copy,
    the old public program in the new programs' lb_progs_prev (as the attach puts it there).
    (the new data plane, the client, the three connections' source ports)"""
    old = start(instance, SMALL)
    old.apply(table(("web",)))
    client = Client()
    new = start(instance, BIG)
    late = [client.connect(old, 80) for _ in range(3)]       # after the copy, by the old programs
    new.apply(table(("web",)))
    new._hand_over("public", old.fns["lb_xdp_public"].fd)
    return new, client, late


def finish_resize_now(dp, instance, monkeypatch):
    """A start that took up a killed daemon's resize finishes it at once (no grace left): no
    resize under way after, and the old maps gone."""
    from lb.dataplane import xdp

    monkeypatch.setattr(xdp, "RESIZE_GRACE", 0.0)
    while dp.finish_resize():
        pass
    assert dp.resize is None and not os.path.exists(old_dir(pin_dir(instance[0])))


def test_a_stop_keeping_the_data_plane_finishes_a_resize_still_in_its_grace(instance, caplog):
    """An upgrade restarted again at once: the programs the attach replaced live in
    lb_progs_prev.  Its stop (keeping the data plane) waits out the
    grace and finishes the resize first, so the connections the old programs made after the
    copy are in the new maps before nothing hands their packets to the old programs any more."""
    new, client, late = handed_over(instance)
    caplog.set_level(logging.INFO, logger="lb.dataplane")
    new.settle_resize()
    assert new.resize is None and not os.path.exists(old_dir(pin_dir(instance[0])))
    assert "resize: 3 lb_conns4 the old programs made since the copy copied" in caplog.text
    assert new.program.prev_progs().get(L.U32.pack(L.PREV_SLOTS["public"])) is None
    for s in late:                                           # the new maps alone serve them
        assert client.send(new, s, "PA") == client.flows[(80, s)]


def test_a_daemon_killed_in_the_grace_leaves_the_old_programs_serving_until_the_next_start(instance, caplog,
                                                                                            monkeypatch):
    """An upgrade's daemon is killed (kill -9) within the grace after its attach: its
    lb_progs_prev, pinned beside the old maps, outlives it, so the attached program still hands
    the connections the old programs made after the copy to them (a program array nobody holds
    is emptied: they would meet the kernel, a reset).  The next start hands the killed daemon's
    programs over in turn and finishes the resize: the new maps alone serve them after."""
    from lb.dataplane.bpfsys import prog_test_run

    new, client, late = handed_over(instance)
    # the interface holds the attached program (here a descriptor of the test's), the daemon dies
    attached = os.dup(new.fns["lb_xdp_public"].fd)
    try:
        new.close()
        instance[1].remove(new)
        ack = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst=str(VIP)) / TCP(sport=late[0], dport=80,
                                                                                          flags="PA")
        rc, out, _ = prog_test_run(attached, bytes(ack))
        assert rc == XDP_REDIRECT and Ether(out).dst == real_mac(ip(client.flows[(80, late[0])]))

        caplog.set_level(logging.INFO, logger="lb.dataplane")
        again = start(instance, BIG)
        assert "the resize of" in caplog.text and "was not finished" in caplog.text
        again.apply(table(("web",)))
        again._hand_over("public", attached)                  # its attach replaces the killed daemon's
        finish_resize_now(again, instance, monkeypatch)
    finally:
        os.close(attached)
    assert "resize: 3 lb_conns4 the old programs made since the copy copied" in caplog.text
    for s in late:                                           # the new maps alone serve them
        assert client.send(again, s, "PA") == client.flows[(80, s)]


def test_a_nat_reply_whose_client_entry_the_copy_missed_goes_to_the_old_programs(instance, monkeypatch):
    """The old programs move a NAT connection's two entries into lb_conns one after the other
    while the copy walks that table: the copy can find the reverse entry (its bucket walked after
    the move) and not the client's (walked before).  A reply then finds its reverse entry in the
    new maps but no connection: it goes to the old programs, whose maps hold both, as a reply the
    new maps know nothing of does -- not to the kernel, which sends it on to the client
    untranslated, every reply of the connection lost until the catch-up (or, the daemon killed
    within its grace, until the next start)."""
    nat = TableSpec((ServiceSpec("tcp", VIP, 80, "rr", (RealSpec(REALS[0], 8080, 1, "nat"),), "web"),))
    old = start(instance, SMALL)
    old.apply(nat)
    sport = next(_sport)
    for flags in ("S", "A"):
        pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src="198.18.0.2", dst=str(VIP)) / \
            TCP(sport=sport, dport=80, flags=flags)
        assert run(old, "lb_xdp_public", pkt)[0] == XDP_REDIRECT
    new = start(instance, BIG)
    new.apply(nat)
    client_key = L.ConnKey(ip("198.18.0.2"), VIP, sport, 80, 6).pack()
    reverse_key = L.ConnKey(REALS[0], ip("198.18.0.2"), 8080, sport, 6, 1).pack()
    assert new.maps["lb_conns"].get(reverse_key) is not None
    assert new.maps["lb_conns"].delete(client_key)           # as that copy leaves the new table
    reply = Ether(src=real_mac(REALS[0]), dst=PRIV_MAC) / IP(src=str(REALS[0]), dst="198.18.0.2") / \
        TCP(sport=8080, dport=sport, flags="PA", seq=5000, ack=1001) / b"reply"
    assert run(new, "lb_xdp_private", reply)[0] == XDP_PASS    # no old programs handed over yet
    new._hand_over("private", old.fns["lb_xdp_private"].fd)
    rc, out = run(new, "lb_xdp_private", reply)
    assert rc in (XDP_TX, XDP_REDIRECT), rc
    back = Ether(out)
    assert (back[IP].src, back[IP].dst, back[TCP].sport, back[TCP].dport) == (str(VIP), "198.18.0.2", 80, sport)
    assert bytes(back[TCP].payload) == b"reply"
    finish_resize_now(new, instance, monkeypatch)            # the catch-up copies the client's entry
    rc, out = run(new, "lb_xdp_private", reply)
    assert rc in (XDP_TX, XDP_REDIRECT) and Ether(out)[IP].src == str(VIP)


def test_a_smaller_table_keeps_or_leaves_out_a_nat_connections_two_entries_together():
    """A NAT connection is two entries (the client's, and the reverse one its replies find): a
    table trimmed to a smaller size keeps the most recently used connections whole"""
    from lb.dataplane import bpfsys
    from lb.dataplane.resize import Resize

    vip, real = ip("198.18.0.10").packed.ljust(16, b"\0"), ip("198.18.1.11").packed.ljust(16, b"\0")
    items = []
    for i in range(5):
        client = ip(f"198.18.0.{100 + i}").packed.ljust(16, b"\0")
        sport = (40000 + i).to_bytes(2, "big")
        fwd = L.CONN_KEY.pack(client, vip, sport, b"\0\x50", 6, L.AF_INET, 0, 0)
        rev = L.CONN_KEY.pack(real, client, b"\0\x50", sport, 6, L.AF_INET, 1, 0)
        # connection 0's client entry is the oldest of all but its reply entry the newest
        t_fwd, t_rev = (1, 100) if i == 0 else (10 + i, 10 + i)
        for k, t, flags in ((fwd, t_fwd, 0), (rev, t_rev, L.CONN_F_OUT)):
            items.append((L.conn_key4(k), L.CONN.pack(t, 1, 0, 900, 1, 1, flags, b"\0\0", bytes(6), bytes(6),
                                                      vip, b"\0\x50", bytes(6))))
    fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_HASH, L.CONN_KEY4.size, L.CONN.size, 6, 0, "rs_pairs")   # no evictions
    dst = BpfMap(fd, "rs_pairs")
    try:
        rs = Resize("/nonexistent")
        assert rs._copy_items("lb_conns4", list(items), dst) == 6
        assert rs.dropped["lb_conns4"] == 4
        kept = {k for k, _ in dst.items()}
        # connections 0 (its reply entry the newest), 4 and 3, each with both entries
        assert kept == {k for k, _ in items[0:2] + items[6:10]}
    finally:
        dst.close()


def listing(maps):
    """[(client port, state, real server)] as `lb list -c` shows the connections of these maps
    (a dict of the maps: the old instance's are no longer at the pins once it is resized), sorted"""
    return sorted((row.client[1], row.state, str(row.dest[0])) for row in reader.read_connections(maps))


def counts(maps):
    """{real server: (ActiveConn, InActConn)} as `lb list` shows them"""
    return {str(r.address): (r.active, r.inactive) for s in reader.read_services(maps) for r in s.reals}


def test_what_the_old_programs_did_between_the_copy_and_the_attach_is_not_kept_as_copied(instance, caplog,
                                                                                         monkeypatch):
    """Between the copy and the attach the old programs forward: a connection they reset is
    CLOSE, not ESTABLISHED as copied; one a client's new SYN reused is that new connection
    (its established entry gone); one they made is there.  A connection the new programs
    moved on after the attach from its copy (a FIN: FIN_WAIT) after the old programs' reset is
    CLOSE, as it would be had one program seen both (IPVS's RST, then FIN).
    One the old LRU table evicted (gone without a trace, not ended) stays in the bigger one.
    ActiveConn and InActConn count what the tables hold."""
    from lb.dataplane import xdp

    old = start(instance, SMALL)
    old.apply(table(("web",)))
    client = Client()
    reset, reused, touched, kept, evicted = (client.connect(old, 80) for _ in range(5))
    new = start(instance, BIG)                          # the copy: four ESTABLISHED connections
    assert {s for _, s, _ in listing(new.maps)} == {"ESTABLISHED"}
    client.send(old, reset, "R")
    client.send(old, reused, "R")
    client.send(old, reused, "S")                       # the client's port again, a new connection
    client.send(old, touched, "R")
    made = client.connect(old, 80)
    assert old.maps["lb_conns"].delete(L.ConnKey(ip("198.18.0.2"), VIP, evicted, 80, 6).pack())
    [gone] = [c for c in listing(new.maps) if c[0] == evicted]
    truth = listing(old.maps)                           # what the old programs left
    assert [(p, s) for p, s, _ in truth] == sorted([(reset, "CLOSE"), (reused, "SYN_RECV"), (touched, "CLOSE"),
                                                     (kept, "ESTABLISHED"), (made, "ESTABLISHED")])
    truth_counts = counts(old.maps)

    new.apply(table(("web",)))
    new._hand_over("public", old.fns["lb_xdp_public"].fd)   # the attach
    client.send(new, touched, "F")                      # the new programs' FIN: after the old RST
    [theirs] = [c for c in listing(new.maps) if c[0] == touched]
    assert theirs[1] == "FIN_WAIT"                      # judged from the copy, stamped later
    caplog.set_level(logging.INFO, logger="lb.dataplane")
    monkeypatch.setattr(xdp, "RESIZE_GRACE", 0.0)
    while new.finish_resize():
        pass
    assert not os.path.exists(old_dir(pin_dir(instance[0])))
    with PinnedMaps(instance[0]) as maps:
        got, got_counts = listing(maps), counts(maps)
    assert got == sorted(truth + [gone])
    # every connection counted once, as its entry is: active while ESTABLISHED or SYN_RECV
    want = {str(a): [0, 0] for a in REALS}
    for _, state, server in got:
        want[server][0 if state in ("ESTABLISHED", "SYN_RECV") else 1] += 1
    assert got_counts == {a: tuple(n) for a, n in want.items()}
    assert got_counts == truth_counts                   # (the touched one inactive in either; the evicted
                                                        # one still counted by the old programs)
    assert "resize: 1 lb_conns4, 1 lb_conns_embryo the old programs made since the copy copied" in caplog.text
    assert "2 lb_conns4 changed meanwhile updated, 1 lb_conns4 ended meanwhile removed" in caplog.text


def test_the_catch_up_walks_a_table_a_chunk_at_a_time():
    """bpfsys.chunks (the catch-up's walk: never a whole big table in memory at once) gives
    every entry once, in chunks of about the size asked, by batch and entry by entry alike"""
    from lb.dataplane import bpfsys

    fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_HASH, 8, 16, 1000, 0, "rs_chunks")
    m = BpfMap(fd, "rs_chunks")
    try:
        want = {struct.pack("=Q", i): struct.pack("=QQ", i, 7 * i) for i in range(300)}
        m.set_many(list(want), list(want.values()))
        for walk in (m.chunks(16), bpfsys._chunks_by_key(fd, 8, 16, 16)):
            chunks = list(walk)
            got = [kv for c in chunks for kv in c]
            assert dict(got) == want and len(got) == len(want)
            assert len(chunks) >= 300 // 32 and all(len(c) <= 64 for c in chunks)
    finally:
        m.close()


def idle(dp, seconds):
    """Every connection of dp's tables as if its last packet came that long ago (a packet of
    its own then stamps it anew: lb_conn_touch)"""
    for name in ("lb_conns4", "lb_conns_embryo"):
        m = dp.maps[name]
        items = m.items()
        m.set_many([k for k, _ in items], [struct.pack("=Q", struct.unpack_from("=Q", v)[0] - int(seconds * 1e9)) + v[8:]
                                           for _, v in items])


def test_a_state_the_old_programs_moved_a_copied_connection_to_is_kept_when_the_new_programs_refresh_it(
        instance, caplog, monkeypatch):
    """A client's FIN the old programs saw between the copy and the attach (FIN_WAIT), then its
    next packet on the new programs, which judged it from the copy (ESTABLISHED: an ACK keeps
    it so, and stamps it later than the FIN): the connection is FIN_WAIT afterwards, as without
    the resize -- counted inactive, not active until the established timeout.  Likewise one
    the old programs reset: CLOSE.  Where the new programs moved it further (a reset after the
    old programs' FIN), or a SYN of the client's made it a handshake again (its port reused
    after the old programs' reset), theirs stays."""
    from lb.dataplane import xdp

    old = start(instance, SMALL)
    old.apply(table(("web",)))
    client = Client()
    fin, reset, quiet, late_rst, again = (client.connect(old, 80) for _ in range(5))
    client.send(old, again, "FA")                       # copied as FIN_WAIT
    idle(old, 1.0)
    new = start(instance, BIG)                          # the copy
    for sport, flags in ((fin, "FA"), (reset, "R"), (late_rst, "FA"), (again, "R")):
        client.send(old, sport, flags)
    assert [(p, s) for p, s, _ in listing(old.maps)] == sorted(
        [(fin, "FIN_WAIT"), (reset, "CLOSE"), (quiet, "ESTABLISHED"), (late_rst, "FIN_WAIT"), (again, "CLOSE")])

    new.apply(table(("web",)))
    new._hand_over("public", old.fns["lb_xdp_public"].fd)   # the attach
    # the client's next packets, on the new programs, judged from the copy
    for sport, flags in ((fin, "A"), (reset, "A"), (quiet, "A"), (late_rst, "R"), (again, "S")):
        client.send(new, sport, flags)
    assert [(p, s) for p, s, _ in listing(new.maps)] == sorted(
        [(fin, "ESTABLISHED"), (reset, "ESTABLISHED"), (quiet, "ESTABLISHED"), (late_rst, "CLOSE"),
         (again, "SYN_RECV")])
    monkeypatch.setattr(xdp, "RESIZE_GRACE", 0.0)
    while new.finish_resize():
        pass
    with PinnedMaps(instance[0]) as maps:
        got, got_counts = listing(maps), counts(maps)
        timeouts = {L.ConnKey.unpack(k).sport: L.Conn.unpack(v).timeout for k, v in maps["lb_conns"].items()}
    assert [(p, s) for p, s, _ in got] == sorted(
        [(fin, "FIN_WAIT"), (reset, "CLOSE"), (quiet, "ESTABLISHED"), (late_rst, "CLOSE"), (again, "SYN_RECV")])
    assert {p: r for p, _, r in got} == {p: client.flows[(80, p)] for p in (fin, reset, quiet, late_rst, again)}
    # each with its state's timeout (IPVS's defaults); ActiveConn counts the ESTABLISHED and
    # SYN_RECV ones only
    assert timeouts == {fin: 120, reset: 10, quiet: 900, late_rst: 10, again: 60}
    want = {str(a): [0, 0] for a in REALS}
    for _, state, server in got:
        want[server][0 if state in ("ESTABLISHED", "SYN_RECV") else 1] += 1
    assert got_counts == {a: tuple(n) for a, n in want.items()}


def test_the_state_ranks_follow_ipvs_state_tables():
    """resize.PROGRESS: every move of the state tables but a SYN's keeps or raises a connection's
    rank (the catch-up takes the old programs' state when it ranks above the new programs')"""
    from lb.dataplane.program import TCP_FSM, TCP_FSM_SECURE
    from lb.dataplane.resize import PROGRESS

    n = len(L.TCP_STATES)
    assert set(PROGRESS) == set(range(n))
    for fsm in (TCP_FSM, TCP_FSM_SECURE):
        for table_ in range(3):
            for event in (1, 2, 3):                     # fin, ack, rst (0: syn)
                for state in range(n):
                    nxt = fsm[(table_ * 4 + event) * n + state]
                    assert PROGRESS[nxt] >= PROGRESS[state], (table_, event, L.TCP_STATES[state], L.TCP_STATES[nxt])


def test_a_start_finishing_a_killed_daemons_resize_removes_what_the_old_programs_ended(instance, caplog,
                                                                                       monkeypatch):
    """The daemon that copied is killed within the grace; the next start finishes its resize.
    What the old programs ended between the copy and the finish goes as it does when the daemon
    that copied finishes: a handshake they completed is no longer SYN_RECV in the embryonic
    table beside its ESTABLISHED entry (counted twice), and a connection whose port a client
    reused is not kept as copied -- that stale ESTABLISHED entry would send the new
    connection's ACK to the old connection's real server.  (It tells the copy's entries by the
    copy's end, which the killed daemon pinned: an entry stamped before it that the old tables
    never held -- one the HA sync imported meanwhile -- is not removed for its closing state,
    nor a template.)"""
    old = start(instance, SMALL)
    old.apply(table(("web",)))
    client = Client()
    reused, kept, other = (client.connect(old, 80) for _ in range(3))
    half = next(_sport)
    client.send(old, half, "S")                          # a handshake half done: copied embryonic
    new = start(instance, BIG)                           # the copy
    first = client.flows[(80, reused)]
    client.send(old, reused, "R")
    second = client.send(old, reused, "S")               # the client's port again: a new connection
    assert second != first
    client.send(old, half, "A")                          # the old programs end the handshake
    truth, truth_counts = listing(old.maps), counts(old.maps)
    assert [(p, s) for p, s, _ in truth] == sorted([(reused, "SYN_RECV"), (kept, "ESTABLISHED"),
                                                     (other, "ESTABLISHED"), (half, "ESTABLISHED")])
    new.apply(table(("web",)))
    new._hand_over("public", old.fns["lb_xdp_public"].fd)    # the attach
    attached = os.dup(new.fns["lb_xdp_public"].fd)       # (the interface's hold on it)
    try:
        new.close()                                      # killed
        instance[1].remove(new)
        caplog.set_level(logging.INFO, logger="lb.dataplane")
        again = start(instance, BIG)
        assert "was not finished" in caplog.text
        again.apply(table(("web",)))
        again._hand_over("public", attached)
        # what the HA sync may import meanwhile, stamped before the copy (its age on the peer),
        # which the old tables never held: a closing connection and a template, not removed
        cut = again.resize.copied_at
        assert cut is not None                           # (the killed daemon's swap pinned it)
        assert again.resize.copy_began is not None and L.elapsed_ns(cut, again.resize.copy_began) >= 0
        conns = again.maps["lb_conns"]
        synced = L.ConnKey(ip("198.18.0.3"), VIP, 40999, 80, 6).pack()
        value = bytearray(conns.get(L.ConnKey(ip("198.18.0.2"), VIP, kept, 80, 6).pack()))
        struct.pack_into("=Q", value, 0, cut - 1_000_000_000)             # last_ns
        struct.pack_into("=I", value, 16, 120)                              # timeout
        value[24], value[25] = L.TCP_S["TIME_WAIT"], L.CONN_F_INACTIVE    # state, flags
        conns.set(synced, bytes(value))
        template = L.PERSIST_KEY.pack(ip("198.18.0.3").packed.ljust(16, b"\0"), VIP.packed.ljust(16, b"\0"),
                                      b"\0\x50", 6, L.AF_INET, 0)
        again.maps["lb_persist"].set(template, L.PERSIST.pack(cut - 1_000_000_000, struct.unpack_from("=I", value, 8)[0],
                                                              360))
        finish_resize_now(again, instance, monkeypatch)
    finally:
        os.close(attached)
    with PinnedMaps(instance[0]) as maps:
        assert listing(maps) == sorted(truth + [(40999, "TIME_WAIT", client.flows[(80, kept)])])
        assert maps["lb_persist"].get(template) is not None
        active, inactive = truth_counts[client.flows[(80, kept)]]
        truth_counts[client.flows[(80, kept)]] = (active, inactive + 1)      # the TIME_WAIT one
        assert counts(maps) == truth_counts
    assert "1 lb_conns4, 1 lb_conns_embryo ended meanwhile removed" in caplog.text
    assert client.send(again, reused, "A") == second     # the new connection's handshake ends where it began


def test_a_port_reused_on_the_new_programs_after_a_close_the_copy_holds_is_a_new_connection(instance, monkeypatch):
    """A connection reset (CLOSE) or closed (the client's FIN: FIN_WAIT, DR's for its 120 s)
    before the copy, whose client reuses its port on the new programs after the attach (its SYN
    ends the copied CLOSE entry there or takes the FIN_WAIT one back to a handshake, its ACK
    completes the new connection): the new connection stays ESTABLISHED, active, with the
    established timeout -- the old programs did nothing to it since the copy, so their closing
    entry is not further along than the new programs' (it was the copy's own state), and the
    catch-up leaves the new entry alone."""
    from lb.dataplane import xdp

    old = start(instance, SMALL)
    old.apply(table(("web",)))
    client = Client()
    reset, closed = (client.connect(old, 80) for _ in range(2))
    client.send(old, reset, "R")                        # CLOSE
    client.send(old, closed, "FA")                      # the client's FIN: FIN_WAIT
    assert [(p, s) for p, s, _ in listing(old.maps)] == sorted([(reset, "CLOSE"), (closed, "FIN_WAIT")])
    idle(old, 1.0)                                      # the close a second before the copy
    new = start(instance, BIG)                          # the copy
    new.apply(table(("web",)))
    new._hand_over("public", old.fns["lb_xdp_public"].fd)   # the attach
    for sport in (reset, closed):                       # the client's port again, on the new programs
        client.send(new, sport, "S")
        client.flows.pop((80, sport))
        client.send(new, sport, "A")
    assert [(p, s) for p, s, _ in listing(new.maps)] == sorted([(reset, "ESTABLISHED"), (closed, "ESTABLISHED")])
    monkeypatch.setattr(xdp, "RESIZE_GRACE", 0.0)
    while new.finish_resize():
        pass
    with PinnedMaps(instance[0]) as maps:
        got = listing(maps)
        timeouts = {L.ConnKey.unpack(k).sport: L.Conn.unpack(v).timeout for k, v in maps["lb_conns"].items()}
        got_counts = counts(maps)
    assert got == sorted([(reset, "ESTABLISHED", client.flows[(80, reset)]),
                          (closed, "ESTABLISHED", client.flows[(80, closed)])])
    assert timeouts == {reset: 900, closed: 900}
    want = {str(a): [0, 0] for a in REALS}
    for _, _, server in got:
        want[server][0] += 1
    assert got_counts == {a: tuple(n) for a, n in want.items()}
