"""`lb list -c -n` formatted in C (cext/bpfbatch.c bb_format_conns) against the pure-Python
reader + formatter (lb/listing.py, golden-tested against ipvsadm): the same bytes."""
from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
import time

import pytest

from conftest import LB_BIN
from lb.cli.main import connection_listing
from lb.dataplane import layout as L
from lb.dataplane import reader
from lb.dataplane.maps import MapError, PinnedMaps, have_batch
from lb.dataplane.program import Sizes
from lb.listing import format_connections
from packets_util import loaded_dataplane

NOW = 5_000 * 10**9
A = ipaddress.ip_address


def _key(saddr, daddr, sport, dport, proto=6, dir_=0) -> bytes:
    s, d = A(saddr), A(daddr)
    return L.ConnKey(s, d, sport, dport, proto, dir_).pack()


def _conn(real: int, state: int, timeout: int, age_ns: int) -> bytes:
    return L.Conn(NOW - age_ns, real, 0, timeout, 1, state, 0, bytes(6), bytes(6)).pack()


REALS = {  # real id: (address, port, family byte in lb_reals; 0 = a removed real server)
    1: ("198.18.1.1", 80, L.AF_INET),
    2: ("2001:db8::2", 8080, L.AF_INET6),
    3: ("::ffff:198.18.1.3", 443, L.AF_INET6),
    4: ("198.18.1.4", 65535, 0),
    5: ("2001:db8::10", 80, 0),            # a removed IPv6 real server: its address stays IPv6
}

ENTRIES = [
    # (key, value): every column's corner cases
    (_key("198.18.0.10", "198.18.0.100", 40000, 80), _conn(1, 1, 900, 3 * 10**9)),
    (_key("198.18.0.11", "198.18.0.100", 1, 80), _conn(1, 5, 120, 0)),            # TIME_WAIT, just now
    (_key("198.18.0.12", "198.18.0.100", 2, 80), _conn(4, 3, 60, 59 * 10**9 + 1)),  # removed real, 00:00
    (_key("198.18.0.13", "198.18.0.100", 3, 80), _conn(1, 99, 30, 10**9)),         # unknown state: ERR!
    (_key("198.18.0.14", "198.18.0.100", 4, 53, proto=17), _conn(1, L.UDP_S_NORMAL, 300, 7 * 10**9)),
    (_key("198.18.0.15", "198.18.0.100", 5, 80, proto=132), _conn(1, 1, 100, 0)),  # unknown protocol: ?
    (_key("198.18.0.16", "198.18.0.100", 6, 80), _conn(1, 1, 10, 11 * 10**9)),     # expired: not listed
    (_key("198.18.1.1", "198.18.0.16", 80, 6, dir_=1), _conn(1, 1, 900, 0)),      # NAT reverse: not listed
    (_key("198.18.0.17", "198.18.0.100", 7, 80), _conn(1, 1, 900, -2 * 10**9 - 5)),  # clock ahead
    (_key("198.18.0.18", "198.18.0.100", 8, 80), _conn(1, 1, 4_000_000_000, 0)),   # huge timeout
    (_key("2001:db8::10", "2001:db8:0:0:1::100", 65535, 443), _conn(2, 1, 900, 0)),
    (_key("::ffff:198.18.0.19", "fe80::1:0:0:1", 9, 443), _conn(3, 4, 120, 0)),
    (_key("::", "2001:db8:1:2:3:4:5:6", 0, 0), _conn(2, 0, 0, 0)),
]


@pytest.fixture(scope="module")
def dp():
    with loaded_dataplane("clist", Sizes(16, 64, 16, 4096)) as d:
        for rid, (addr, port, fam) in REALS.items():
            d.maps["lb_reals"].set(L.U32.pack(rid), L.Real(A(addr), port, 0, 1, family=fam).pack())
        yield d


def _fill(dp, entries):
    m = dp.maps["lb_conns"]
    for k, _ in m.items():
        m.delete(k)
    for k, v in entries:
        m.set(k, v)


@pytest.mark.skipif(not have_batch(), reason="lb._bpfbatch (cffi) is not built")
def test_c_listing_equals_python_listing(dp):
    _fill(dp, ENTRIES)
    with PinnedMaps(dp.instance) as maps:
        slow = b"".join(connection_listing(maps, now_ns=NOW, fast=False))
        fast = b"".join(connection_listing(maps, now_ns=NOW, fast=True))
        rows = reader.read_connections(maps, now_ns=NOW)
    assert slow == format_connections(rows).encode()
    assert len(rows) == len(ENTRIES) - 2
    assert b"ERR!" in fast and b"[2001:db8::10]:65535" in fast and b"[::ffff:198.18.0.19]:9" in fast
    assert b"198.18.1.4:65535" in fast and b"00:00" in fast and b"?   " in fast
    assert fast == slow


@pytest.mark.skipif(not have_batch(), reason="lb._bpfbatch (cffi) is not built")
def test_c_listing_many_chunks_and_real_out_of_range(dp, monkeypatch):
    # more lines than one output chunk: nothing lost or doubled at the chunk boundaries
    monkeypatch.setattr(reader, "_CHUNK", 4096)
    many = [(_key(str(A("198.18.0.0") + i), "198.18.0.100", 1000 + i, 80), _conn(1 + i % 3, 1 + i % 10, 900, i * 10**6))
            for i in range(3000)]
    _fill(dp, many)
    with PinnedMaps(dp.instance) as maps:
        chunks = list(connection_listing(maps, now_ns=NOW, fast=True))
        slow = b"".join(connection_listing(maps, now_ns=NOW, fast=False))
        assert len(chunks) > 10
        assert b"".join(chunks) == slow
        assert slow.count(b"\n") == 3002
        dp.maps["lb_conns"].set(_key("198.18.0.99", "198.18.0.100", 9, 80), _conn(60000, 1, 900, 0))
        with pytest.raises(MapError, match="real server id 60000"):
            b"".join(connection_listing(maps, now_ns=NOW, fast=True))


def _mask_expire(text: str) -> list[str]:
    # the CLI reads the clock itself: compare everything but the expire column (the second
    # field, wider than its 6 columns for huge timeouts, so cut by fields, not columns)
    out = []
    for line in text.splitlines():
        f = line.split(None, 2)
        out.append(f"{f[0]} {f[2]}" if len(f) == 3 and f[1][:1].isdigit() and ":" in f[1] else line)
    return out


def test_lb_list_c_cli_prints_the_listing(dp):
    # the CLI reads the clock itself, seconds later on a loaded machine: every entry made just
    # now and live for an hour at least (its expire column is the one thing not compared), so
    # that none expires between the fill and the CLI's read
    now = time.monotonic_ns()
    entries = []
    for k, v in ENTRIES:
        c = L.Conn.unpack(v)
        entries.append((k, dataclasses.replace(c, last_ns=now, timeout=max(c.timeout, 3600)).pack()))
    _fill(dp, entries)
    out = subprocess.run([LB_BIN, "list", "-c", "-n", "--instance", dp.instance], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    with PinnedMaps(dp.instance) as maps:
        want = format_connections(reader.read_connections(maps, now_ns=now))
    assert out.startswith("IPVS connection entries\npro expire state")
    assert _mask_expire(out) == _mask_expire(want)
    # every entry but the NAT reverse one (none has expired at `now`), after the two header lines
    assert "[2001:db8::10]:65535" in out and out.count("\n") == 2 + len(ENTRIES) - 1


@pytest.mark.parametrize("fast", [True, False], ids=["C", "Python"])
def test_expire_is_ipvsadms_whole_seconds_left_and_a_removed_ipv6_real_stays_ipv6(dp, fast):
    """The expire column as ipvsadm prints a connection's timer: the whole seconds left, so 14:59
    half a second after a packet of a 900 s state (15:00 was printed: the age floored instead of
    what is left), 00:00 in the last second, and an entry past its timeout not at all (it was
    listed for up to a second after the data path had let it go).  And a removed IPv6 real
    server (family 0 in lb_reals, its address kept) is printed as IPv6, not as 4 of its bytes."""
    if fast and not have_batch():
        pytest.skip("lb._bpfbatch (cffi) is not built")
    cases = {40: (900, 5 * 10**8, "14:59"), 41: (900, 0, "15:00"), 42: (60, 59 * 10**9 + 1, "00:00"),
             43: (10, 10 * 10**9, "00:00"), 44: (10, 10 * 10**9 + 1, None), 45: (10, 10 * 10**9 + 5 * 10**8, None),
             46: (900, -2 * 10**9, "15:00")}
    _fill(dp, [(_key("198.18.0.20", "198.18.0.100", port, 80), _conn(1, 1, t, age))
               for port, (t, age, _) in cases.items()]
          + [(_key("2001:db8::20", "2001:db8::100", 47, 80), _conn(5, 1, 900, 0))])
    with PinnedMaps(dp.instance) as maps:
        text = b"".join(connection_listing(maps, now_ns=NOW, fast=fast)).decode()
    got = {int(line.split()[3].rsplit(":", 1)[1]): line.split()[1] for line in text.splitlines()[2:]}
    assert got == {**{p: e for p, (_, _, e) in cases.items() if e is not None}, 47: "15:00"}, text
    assert "[2001:db8::10]:80" in text and "32.1.13.184" not in text, text
