"""lb.sched.model's mh (ip_vs_mh.c): the hash against the kernel's own test vectors, the
table's construction rules (permutation, gcd and shift of the last weights, turns per visit),
and the lookup with mh-port and mh-fallback."""
from __future__ import annotations

import ipaddress
import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.sched import model
from lb.sched.model import (MH_DEFAULT_SIZE, MH_HASH1, MH_HASH2, Dest, Service, hsiphash, mh_gcd_weight,
                            mh_hashkey, mh_shift_weight, mh_table, pick_mh)

# lib/siphash_kunit.c (64-bit): hsiphash of the bytes 0, 1, ..., i-1 under this key
KUNIT_KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)
KUNIT_HSIPHASH = [
    0x050FC4DC, 0x7D57CA93, 0x4DC7D44D, 0xE7DDF7FB, 0x88D38328, 0x49533B67, 0xC59F22A7, 0x9BB11140,
    0x8D299A8E, 0x6C063DE4, 0x92FF097F, 0xF94DC352, 0x57B4D9A2, 0x1229FFA7, 0xC0F95D34, 0x2A519956,
    0x7D908B66, 0x63DBD80C, 0xB473E63E, 0x8D297D1C, 0xA6CCE040, 0x2B45F844, 0xA320872E, 0xDAE6C123,
    0x67349C8C, 0x705B0979, 0xCA9913A5, 0x4ADE3B35, 0xEF6CD00D, 0x4AB1E1F4, 0x43C5E663, 0x8C21D1BC,
    0x16A7B60D, 0x7A8FF9BF, 0x1F2A753E, 0xBF186B91, 0xADA26206, 0xA3C33057, 0xAE3A36A1, 0x7B108392,
    0x99E41531, 0x3F1AD944, 0xC8138825, 0xC28949A6, 0xFAF8876B, 0x9F042196, 0x68B1D623, 0x8B5114FD,
    0xDF074C46, 0x12CC86B3, 0x0A52098F, 0x9D292F9A, 0xA2F41F12, 0x43A71ED0, 0x73F0BCE6, 0x70A7E980,
    0x243C6D75, 0xFDB71513, 0xA67D8A08, 0xB7E8F148, 0xF7A644EE, 0x0F1837F2, 0x4B6694E0, 0xB7BBB3A8,
]


def test_hsiphash_kernel_test_vectors():
    for i, want in enumerate(KUNIT_HSIPHASH):
        assert hsiphash(bytes(range(i)), KUNIT_KEY) == want, i


def test_hashkey_is_hsiphash_of_offset_plus_port_plus_address():
    addr = ipaddress.ip_address("198.18.1.21")
    v = (7 + 80 + int(addr)) & 0xFFFFFFFF
    assert mh_hashkey(addr, 80, MH_HASH1, 7) == hsiphash(v.to_bytes(4, "little"), (2654435761, 2654435761))
    assert mh_hashkey("198.18.1.21", 80, MH_HASH2) == hsiphash((80 + int(addr)).to_bytes(4, "little"),
                                                               (2654446892, 2654446892))
    # the sum wraps at 32 bits; IPv6 folds its four words by XOR
    assert mh_hashkey(0xFFFFFFFF, 2) == mh_hashkey(0, 1)
    a6 = ipaddress.ip_address("2001:db8::1:2")
    words = [int.from_bytes(a6.packed[i:i + 4], "big") for i in range(0, 16, 4)]
    assert mh_hashkey(a6, 0) == mh_hashkey(words[0] ^ words[1] ^ words[2] ^ words[3], 0)


def test_gcd_and_shift_of_last_weights():
    assert mh_gcd_weight([0, 4, 6, 0]) == 2
    assert mh_gcd_weight([0, 0]) == 0
    # IP_VS_MH_TAB_BITS is 6 for the kernel's 4093: up to 63 turns per visit, no shift
    assert mh_shift_weight([1, 63], 1) == 0
    assert mh_shift_weight([1, 64], 1) == 1            # fls(64) = 7
    assert mh_shift_weight([2, 256], 2) == 2           # 128: fls 8
    assert mh_shift_weight([1, 16], 1, 251) == 1       # 251 (index 8): 4 bits
    assert [model.mh_tab_bits(p) for p in model.MH_PRIMES] == [4, 4, 5, 5, 6, 6, 7, 7, 8, 8]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=12).filter(any))
def test_table_counts_follow_turns(last):
    """ip_vs_mh_populate visits the list round and round, each destination taking `turns`
    slots a visit until the table is full: counts are exact."""
    dests = [(f"198.18.2.{i + 1}", 80, w) for i, w in enumerate(last)]
    table = mh_table(dests, 251)
    assert None not in table
    g = mh_gcd_weight(last)
    r = max(max(last) // g, 1).bit_length() - 4
    turns = [((w // g) >> max(r, 0)) or (1 if w else 0) for w in last]
    rounds, rem = divmod(251, sum(turns))
    before = 0
    want = []
    for t in turns:
        want.append(t * rounds + min(t, max(0, rem - before)))
        before += t
    got = Counter(table)
    assert [got.get(i, 0) for i in range(len(last))] == want


def test_table_first_slot_is_the_first_destinations_offset():
    dests = [("198.18.2.1", 80, 1), ("198.18.2.2", 80, 1)]
    table = mh_table(dests)
    off0 = mh_hashkey("198.18.2.1", 80, MH_HASH1) % MH_DEFAULT_SIZE
    off1 = mh_hashkey("198.18.2.2", 80, MH_HASH1) % MH_DEFAULT_SIZE
    assert table[off0] == 0
    if off1 != off0:
        assert table[off1] == 1
    # then each walks its permutation: offset + k * skip
    skip0 = mh_hashkey("198.18.2.1", 80, MH_HASH2) % (MH_DEFAULT_SIZE - 1) + 1
    mine = [(off0 + k * skip0) % MH_DEFAULT_SIZE for k in range(50)]
    assert sum(table[c] == 0 for c in mine) >= 20      # most of its early preferences are its own


def test_empty_table_without_positive_weight():
    assert mh_table([("198.18.2.1", 80, 0)]) == [None] * MH_DEFAULT_SIZE
    assert mh_table([]) == [None] * MH_DEFAULT_SIZE
    with pytest.raises(ValueError):
        mh_table([("198.18.2.1", 80, 1)], 4000)          # not a prime
    with pytest.raises(ValueError):
        mh_table([(f"10.0.0.{i}", 80, 1) for i in range(1, 253)], 251)   # no room


def _svc(weights, flags=(), size=MH_DEFAULT_SIZE):
    s = Service("mh", flags, mh_size=size)
    for i, w in enumerate(weights):                    # config order: the list is the reverse
        s.add(f"198.18.2.{i + 1}", w, port=80)
    return s


def test_quiesced_server_keeps_its_slots():
    """Weight 0 by an edit keeps the last weight: the table does not change, the server's
    clients get no destination, unless mh-fallback (which finds another one)."""
    s = _svc([1, 1, 1])
    before = s.mh_table
    s.set_weight("198.18.2.2", 0)
    assert s.mh_table == before
    pos = s.position("198.18.2.2")
    clients = [0x0A000000 + 7919 * i for i in range(300)]
    mine = [c for c in clients if before[mh_hashkey(c, 0) % MH_DEFAULT_SIZE] == pos]
    others = [c for c in clients if c not in mine]
    assert mine and all(s.pick(saddr=c) is None for c in mine)
    picks_before = {c: _svc([1, 1, 1]).pick(saddr=c) for c in others[:40]}
    assert all(s.pick(saddr=c) == p for c, p in picks_before.items())      # nobody else moves
    fb = _svc([1, 1, 1], ("mh-fallback",))
    fb.set_weight("198.18.2.2", 0)
    assert all(fb.pick(saddr=c) not in (None, pos) for c in mine)
    # a weight change to a non-zero value rebuilds from it
    s.set_weight("198.18.2.2", 5)
    assert Counter(s.mh_table)[pos] > Counter(before)[pos]


def test_added_at_weight_zero_takes_no_slot():
    s = _svc([1, 0, 1])
    assert s.position("198.18.2.2") not in s.mh_table
    s.set_overloaded("198.18.2.1")
    assert {s.pick(saddr=c) for c in range(0, 4000, 37)} == {s.position("198.18.2.3"), None}


def test_mh_port_spreads_one_client():
    plain = _svc([1, 1, 1, 1])
    port = _svc([1, 1, 1, 1], ("mh-port",))
    client = int(ipaddress.ip_address("203.0.113.9"))
    assert len({plain.pick(saddr=client, sport=p) for p in range(1000, 1100)}) == 1
    assert len({port.pick(saddr=client, sport=p) for p in range(1000, 1100)}) == 4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 8), min_size=1, max_size=8), st.lists(st.booleans(), min_size=8, max_size=8),
       st.integers(0, 2**32 - 1), st.integers(0, 65535))
def test_fallback_agrees_with_plain_and_probes(weights, overloaded, saddr, port):
    ds = [Dest(f"d{i}", w, o) for i, (w, o) in enumerate(zip(weights, overloaded))]
    table = mh_table([(f"198.18.2.{i + 1}", 80, w) for i, w in enumerate(weights)], 251)
    plain = pick_mh(ds, table, saddr, port)
    fb = pick_mh(ds, table, saddr, port, fallback=True)
    if plain is not None:
        assert fb == plain
    ihash = mh_hashkey(saddr, port) % 251
    probed = [table[model.mh_probe(saddr, port, 251, ihash, k)] for k in range(251)]
    usable = [p for p in probed if p is not None and ds[p].usable]
    if plain is None:
        assert fb == (usable[0] if usable else None)


def test_removal_moves_mostly_the_removed_servers_clients():
    """Maglev's point: removing one of ten servers keeps most other slots where they were."""
    names = [f"198.18.2.{i + 1}" for i in range(10)]
    s = _svc([1] * 10)
    before = [None if p is None else s.names[p] for p in s.mh_table]
    s.remove(names[3])
    after = [None if p is None else s.names[p] for p in s.mh_table]
    moved = sum(1 for a, b in zip(before, after) if a != b and a != names[3])
    assert Counter(before)[names[3]] > 350
    assert moved < MH_DEFAULT_SIZE * 0.1
    assert math.isclose(Counter(after)[names[0]], MH_DEFAULT_SIZE / 9, rel_tol=0.05)
