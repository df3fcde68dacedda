"""The IPVS lblc, lblcr and twos rules in the reference model (lb.sched.model), case by case
against ip_vs_lblc.c, ip_vs_lblcr.c and ip_vs_twos.c."""
from __future__ import annotations

import itertools

import pytest

from lb.sched import model
from lb.sched.model import Dest, LblcTable, Service, pick_twos


def build(sched, servers, **kw):
    """servers in config order (name, weight): the list is the reverse"""
    s = Service(sched, **kw)
    for name, w in servers:
        s.add(name, w)
    return s


def conns(s, name, active=0, inactive=0):
    d = s.dest(name)
    d.active, d.inactive = active, inactive


# ------------------------------------------------------------------------ lblc


def test_lblc_first_pick_is_wlc_and_cached():
    s = build("lblc", [("a", 1), ("b", 3), ("c", 1)])     # list: c b a
    conns(s, "c", active=1)
    assert s.pick(daddr=7, now=5.0) == s.position("b")    # wlc: b has the least overhead/weight
    en = s.table.entries[7]
    assert en.dest is s.dest("b") and en.lastuse == 5.0
    # another destination address has its own entry
    assert s.pick(daddr=8, now=6.0) == s.position("b")
    assert set(s.table.entries) == {7, 8}


def test_lblc_keeps_its_server_until_overloaded_per_kernel_rule():
    s = build("lblc", [("a", 2), ("b", 2)])               # list: b a
    assert s.schedule(daddr=1) == "b"
    # active <= weight: kept even though a is idle
    assert s.schedule(daddr=1) == "b"
    assert s.schedule(daddr=1) == "b"
    assert s.dest("b").active == 3
    # active 3 > weight 2 and a has 0 * 2 < 2: is_overloaded -> wlc picks a, the entry follows
    assert s.schedule(daddr=1, now=9.0) == "a"
    assert s.table.entries[1].dest is s.dest("a") and s.table.entries[1].lastuse == 9.0


def test_lblc_overloaded_needs_a_server_below_half_its_weight():
    s = build("lblc", [("a", 2), ("b", 2)])
    s.schedule(daddr=1)                                   # b
    conns(s, "b", active=5)
    conns(s, "a", active=1)                               # 1 * 2 < 2 is false: nobody is lightly loaded
    assert s.schedule(daddr=1) == "b"
    assert not model.lblc_is_overloaded(s.dest("a"), s.dests)
    # any server counts, even one with weight 0 (0 * 2 < 0 is false) or OVERLOADed
    s.add("c", 4, overloaded=True)
    assert model.lblc_is_overloaded(s.dest("b"), s.dests)
    # b is not picked by wlc (a has less overhead per weight), and the OVERLOADed c is skipped
    assert s.schedule(daddr=1) == "a"


def test_lblc_cached_overload_flag_is_not_looked_at_but_weight_0_is():
    s = build("lblc", [("a", 1), ("b", 1)])
    assert s.schedule(daddr=3) == "b"
    s.set_overloaded("b")                                 # IP_VS_DEST_F_OVERLOAD: not checked
    assert s.pick(daddr=3) == s.position("b")
    s.set_overloaded("b", False)
    s.set_weight("b", 0)                                  # weight 0: the entry is invalid
    assert s.schedule(daddr=3) == "a"
    assert s.table.entries[3].dest is s.dest("a")


def test_lblc_lookup_refreshes_lastuse_even_when_it_reschedules():
    s = build("lblc", [("a", 1)])
    s.schedule(daddr=3, now=1.0)
    s.set_weight("a", 0)
    assert s.pick(daddr=3, now=2.0) is None               # nothing usable: no pick ...
    assert s.table.entries[3].lastuse == 2.0              # ... but the entry was touched


def test_lblc_removed_server_comes_back_with_its_entries():
    s = build("lblc", [("a", 1), ("b", 1)])
    assert s.schedule(daddr=3) == "b"
    s.close("b", was_active=True)
    s.remove("b")                                         # held by the entry: to the trash
    assert s.pick(daddr=4) == s.position("a")             # not AVAILABLE: wlc without it
    assert s.table.entries[3].dest is s.dest("b")         # entry 3 still holds it
    s.add("b", 1)                                         # ip_vs_trash_get_dest: the same dest
    assert s.pick(daddr=3) == s.position("b")


def test_lblc_periodic_full_check_every_30_ticks():
    s = build("lblc", [("a", 1)], expiration=100)
    s.schedule(daddr=1, now=0.0)
    s.schedule(daddr=2, now=60.0)
    # ticks 1..29 only look at the size (under max_size: nothing goes)
    for i in range(29):
        assert s.tick(200.0 + i) == 0
    assert set(s.table.entries) == {1, 2}
    # the 30th: full check, entries unused for the expiration go (lastuse + 100 <= now)
    assert s.tick(150.0) == 2 - 1
    assert set(s.table.entries) == {2}
    assert s.table.counter == 1
    for i in range(29):
        s.tick(159.0)
    assert s.tick(159.0) == 0                             # 60 + 100 > 159: kept
    for i in range(29):
        s.tick(160.0)
    assert s.tick(160.0) == 1 and not s.table.entries     # not time_before(160, 160): gone


def test_lblc_table_over_max_size_drops_entries_idle_6_minutes():
    t = LblcTable(max_size=4)
    for k in range(10):
        t.entries[k] = model.LblcEntry(Dest("a", 1), lastuse=float(k * 100))
    # entries 0..3 are older than ENTRY_TIMEOUT (360 s) at t = 760; goal = (10 - 4) * 4/3 = 8,
    # capped at max_size / 2 = 2
    assert t.check_expire(760.0, expiration=86400) == 2
    assert set(t.entries) == set(range(2, 10))
    assert t.counter == 1                                 # the counter stands still here
    t.entries = {k: t.entries[k] for k in list(t.entries)[:4]}
    assert t.check_expire(760.0, 86400) == 0 and t.counter == 2


# ------------------------------------------------------------------------ lblcr


def test_lblcr_new_set_then_least_loaded_member():
    s = build("lblcr", [("a", 1), ("b", 1), ("c", 1)])    # list: c b a
    assert s.schedule(daddr=9, now=1.0) == "c"
    en = s.table.entries[9]
    assert [d.name for d in en.members] == ["c"] and en.lastmod == 1.0 and en.lastuse == 1.0
    assert s.schedule(daddr=9, now=2.0) == "c"            # active 1 <= weight 1
    # c: 2 active > 1, and a, b are idle: wlc picks b, which joins at the head
    assert s.schedule(daddr=9, now=3.0) == "b"
    assert [d.name for d in en.members] == ["b", "c"] and en.lastmod == 3.0
    # the set's least loaded member serves now: b (1 active) before c (2)
    assert s.schedule(daddr=9, now=4.0) == "b"
    assert en.lastmod == 3.0                              # no change to the set
    assert en.lastuse == 4.0


def test_lblcr_wlc_pick_already_a_member_leaves_the_set_alone():
    s = build("lblcr", [("a", 1), ("b", 5)])              # list: b a
    assert s.schedule(daddr=9, now=1.0) == "b"
    s.set_overloaded("b")                                 # set_min skips OVERLOAD: no member
    conns(s, "a", active=9)
    # wlc: b is OVERLOADed, a is the only choice and joins
    assert s.schedule(daddr=9, now=2.0) == "a"
    en = s.table.entries[9]
    assert [d.name for d in en.members] == ["a", "b"]
    s.set_overloaded("b", False)
    conns(s, "b", active=20)
    conns(s, "a", active=9)
    # set_min: a (9*256 per 1) vs b (20*256 per 5): b is less loaded; 20 > 5 and a 9*2 < 1? no
    # -> not is_overloaded: b serves
    assert s.schedule(daddr=9, now=3.0) == "b"
    assert en.lastmod == 2.0


def test_lblcr_set_shrinks_after_expiration_by_its_most_loaded_member():
    s = build("lblcr", [("a", 1), ("b", 1), ("c", 1)], expiration=100)
    s.schedule(daddr=9, now=0.0)                          # c
    s.schedule(daddr=9, now=0.0)                          # c (1 active <= 1)
    s.schedule(daddr=9, now=0.0)                          # -> b joins
    en = s.table.entries[9]
    assert [d.name for d in en.members] == ["b", "c"] and en.lastmod == 0.0
    # exactly lastmod + expiration: time_after is strict, nothing happens
    assert s.schedule(daddr=9, now=100.0) == "b"
    assert len(en.members) == 2
    # later: c (3 active) is the most loaded and leaves (lastmod = now); b, the least loaded,
    # was chosen first, but 2 active > weight 1 while a is idle: wlc picks a, which joins
    conns(s, "c", active=3)
    assert s.schedule(daddr=9, now=100.5) == "a"
    assert [d.name for d in en.members] == ["a", "b"] and en.lastmod == 100.5
    # a one-member set never shrinks
    del en.members[1]
    conns(s, "a", active=0)
    assert s.schedule(daddr=9, now=1000.0) == "a"
    assert [d.name for d in en.members] == ["a"]


def test_lblcr_chosen_member_serves_even_if_it_was_just_erased():
    """ip_vs_lblcr_schedule picks dest = set_min before it erases set_max: with one usable
    member that is also the most loaded, it serves and leaves the set in one step."""
    s = build("lblcr", [("a", 1), ("b", 1)], expiration=10)
    s.schedule(daddr=9, now=0.0)                          # b
    s.schedule(daddr=9, now=0.0)                          # b
    s.schedule(daddr=9, now=0.0)                          # a joins: [a, b]
    en = s.table.entries[9]
    s.set_overloaded("b")                                 # set_min: only a; set_max: b (more load)...
    conns(s, "a", active=5)                               # ... unless a is busier: now a is both
    conns(s, "b", active=1)
    assert s.schedule(daddr=9, now=20.0) == "a"           # a: 5 > 1 but nobody has 2*act < w
    assert [d.name for d in en.members] == ["b"]


def test_lblcr_set_min_max_rules():
    a, b, c = Dest("a", 2, active=1), Dest("b", 0), Dest("c", 1, active=1)
    listed = [a, b, c]
    # min: weight 0 never starts; c (256/1) vs a (256/2): a is less loaded
    assert model.dest_set_min([b, c, a], listed) is a
    # an unavailable member never serves
    assert model.dest_set_min([c, a], [c]) is c
    assert model.dest_set_min([a], []) is None
    # max: weight 0 is ignored; among a (128/weight) and c (256/weight) c is most loaded
    assert model.dest_set_max([b, a, c]) is c
    assert model.dest_set_max([b]) is None
    # ties keep the first
    assert model.dest_set_max([a, Dest("d", 2, active=1)]) is a


def test_lblcr_bounded_set_drops_its_oldest_member():
    s = build("lblcr", [(n, 1) for n in "abcd"], max_set=2)   # list: d c b a
    for _ in range(6):
        s.schedule(daddr=9)
    en = s.table.entries[9]
    assert len(en.members) == 2
    assert [d.name for d in en.members] == ["b", "c"]


# ------------------------------------------------------------------------ twos


def test_twos_random_points_map_to_weights():
    dests = [Dest("c", 1), Dest("b", 2), Dest("zero", 0), Dest("over", 5, overloaded=True), Dest("a", 1)]
    # total = 1 + 2 + 1 + 1 = 5; rweight r % 5: 0, 1 -> c; 2, 3 -> b; 4 -> a (and both choices
    # equal: no load to compare)
    got = [pick_twos(dests, r, r) for r in range(5)]
    assert [dests[p].name for p in got] == ["c", "c", "b", "b", "a"]
    # the random u32 is reduced modulo total + 1
    assert pick_twos(dests, 5 + 2, 2) == 1
    assert pick_twos(dests, 2**32 - 1, 2**32 - 1) == [0, 1, 1, 4, 4][(2**32 - 1) % 5]


def test_twos_never_picks_weight_0_or_overloaded():
    dests = [Dest("zero", 0), Dest("x", 3, active=4), Dest("over", 9, overloaded=True), Dest("y", 1)]
    seen = {dests[pick_twos(dests, r1, r2)].name for r1, r2 in itertools.product(range(5), repeat=2)}
    assert seen == {"x", "y"}
    assert pick_twos([Dest("zero", 0), Dest("over", 1, overloaded=True)], 1, 2) is None
    assert pick_twos([], 0, 0) is None


def test_twos_lower_overhead_per_weight_wins():
    x, y = Dest("x", 2, active=1), Dest("y", 1)           # x: 256 per 2; y: 0
    dests = [x, y]                                        # total 3 + 1: r 0..2 -> x, 3 -> y
    assert pick_twos(dests, 0, 3) == 1                    # choice2 y: 1*256 > 2*0
    assert pick_twos(dests, 3, 0) == 1                    # choice2 x: 2*0 > 1*256 false: y
    y.active = 1                                          # y: 256 per 1 -> x is lighter
    assert pick_twos(dests, 3, 0) == 0
    assert pick_twos(dests, 0, 3) == 0
    y.active, y.inactive, x.active, x.inactive = 0, 2, 0, 4    # equal per weight: choice1
    assert pick_twos(dests, 0, 3) == 0 and pick_twos(dests, 3, 0) == 1


def test_twos_service_uses_rng_or_given_numbers():
    import random
    s = build("twos", [("a", 1), ("b", 1)], rng=random.Random(7))
    assert s.schedule(rand=(0, 0)) == "b"                 # list: b a; r 0 -> b
    picks = {s.schedule() for _ in range(40)}
    assert picks == {"a", "b"}


def test_service_rejects_nothing_new():
    with pytest.raises(ValueError):
        Service("lblcrr")
