"""ActiveConn/InActConn after LRU eviction: lb_conns and lb_conns_embryo are LRU hashes, and an
entry they evict under pressure is never uncounted.  The sweep recounts both tables and corrects
the counters so `lb list` shows what the tables hold."""
from __future__ import annotations

import ipaddress
import subprocess
from collections import Counter

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from conftest import LB_BIN
from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane.xdp import Sizes
from packets_util import CLIENT_MAC, PUB_MAC, XDP_REDIRECT, conn_items, loaded_dataplane, run

ip = ipaddress.ip_address
REALS = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]
VIP = "198.18.0.10"
TABLE_SIZE = 64
FLOWS = 600


@pytest.fixture
def dp():
    with loaded_dataplane("recon", Sizes(16, 64, 16, TABLE_SIZE, TABLE_SIZE)) as d:
        reals = tuple(RealSpec(ip(a), 80, 1, "dr") for a in REALS)
        d.apply(TableSpec((ServiceSpec("tcp", ip(VIP), 80, "rr", reals, "web"),)))
        yield d


def send(dp, client: str, sport: int, flags: str) -> int:
    pkt = Ether(src=CLIENT_MAC, dst=PUB_MAC) / IP(src=client, dst=VIP) / TCP(sport=sport, dport=80, flags=flags)
    return run(dp, "lb_xdp_public", pkt)[0]


def lb_list_counts(dp) -> dict[str, tuple[int, int]]:
    """ActiveConn, InActConn per real server, as `lb list -n` prints them"""
    out = subprocess.run([LB_BIN, "list", "-n", "--instance", dp.instance], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    counts = {}
    for line in out.splitlines():
        if line.startswith("  -> ") and not line.startswith("  -> RemoteAddress"):
            f = line.split()
            counts[f[1].rsplit(":", 1)[0]] = (int(f[4]), int(f[5]))
    return counts


def table_census(dp) -> dict[str, tuple[int, int]]:
    """client -> VIP entries actually in the connection tables, per real server: (active, inactive)"""
    addr = {rid: str(r.addr) for rid, r in dp.reals.items()}
    c: Counter = Counter()
    for k, v in conn_items(dp.maps):
        if L.ConnKey.unpack(k).dir:
            continue
        conn = L.Conn.unpack(v)
        c[(addr[conn.real], bool(conn.flags & L.CONN_F_INACTIVE))] += 1
    return {a: (c[(a, False)], c[(a, True)]) for a in REALS}


def test_sweep_reconciles_counters_after_lru_eviction(dp):
    for i in range(FLOWS):
        client, sport = f"198.18.{2 + i // 200}.{1 + i % 200}", 20000 + i
        assert send(dp, client, sport, "S") == XDP_REDIRECT
        if i % 2:
            send(dp, client, sport, "A")       # ESTABLISHED: active; the others stay SYN_RECV
    table = table_census(dp)
    in_table = sum(a + i for a, i in table.values())
    assert in_table <= 2 * TABLE_SIZE < FLOWS          # established, embryonic
    before = lb_list_counts(dp)
    # the evicted entries are still counted: the bug this sweep fixes
    assert sum(a + i for a, i in before.values()) > in_table

    dp.sweep()
    after = lb_list_counts(dp)
    assert after == table_census(dp)
    assert sum(a + i for a, i in after.values()) == in_table
    assert any(a for a, _ in after.values())      # both classes are represented

    # a quiet table stays exact across further sweeps, and new connections count on top
    dp.sweep()
    assert lb_list_counts(dp) == table_census(dp)
    assert send(dp, "198.18.9.1", 40000, "S") == XDP_REDIRECT
    dp.sweep()
    assert lb_list_counts(dp) == table_census(dp)


def test_a_sweep_whose_scan_meets_an_import_and_an_apply_counts_each_connection_once(dp):
    """The engine runs the sweep's scan without its lock (lb.engine Engine.sweep), so an HA
    import or an apply may write the real servers' counters after the sweep's S0 and before its
    dump: the imported connections, counted by the import, are in the dump too, and S0 - W would
    count them again (a server added meanwhile starts from zero, which S0 does not know either).
    That sweep removes and uncounts what expired and leaves the recount to the next one."""
    for i in range(FLOWS):                 # the counters off after eviction, as above
        client, sport = f"198.18.{2 + i // 200}.{1 + i % 200}", 20000 + i
        assert send(dp, client, sport, "S") == XDP_REDIRECT
        send(dp, client, sport, "A")
    conns = dp.maps["lb_conns"]
    k, v = next(iter(conns.items()))
    gone = L.Conn.unpack(v)
    gone.last_ns = L.stamp_ago(gone.last_ns, 3600 * 10**9)     # its 900 s run out
    conns.set(k, gone.pack())
    gone_at = str(dp.reals[gone.real].addr)
    before = lb_list_counts(dp)
    assert sum(a + i for a, i in before.values()) > sum(a + i for a, i in table_census(dp).values())

    sp = dp.sweep_begin()
    synced = [(6, ip("198.18.7.1"), 50000 + n, ip(VIP), 80, ip(REALS[2]), 80, L.TCP_S["ESTABLISHED"], 0, 0, 900,
               bytes.fromhex(CLIENT_MAC.replace(":", ""))) for n in range(5)]
    assert dp.import_conns(synced, [], 7, bytes(6)) == (5, 0)
    added = "198.18.1.14"
    dp.apply(TableSpec((ServiceSpec("tcp", ip(VIP), 80, "rr",
                                    tuple(RealSpec(ip(a), 80, 1, "dr") for a in REALS + [added]), "web"),)))
    assert dp.sweep_end(dp.sweep_scan(sp)) == 1
    assert conns.get(k) is None
    want = {**before, added: (0, 0)}
    want[gone_at] = (want[gone_at][0] - 1, want[gone_at][1])
    want[REALS[2]] = (want[REALS[2]][0] + 5, want[REALS[2]][1])
    assert lb_list_counts(dp) == want

    dp.sweep()
    assert {a: c for a, c in lb_list_counts(dp).items() if a != added} == table_census(dp)


def test_sweep_leaves_an_entry_made_again_after_its_dump_read_the_old_one(dp, monkeypatch):
    """The sweep decides from its dump, taken a while before it deletes (the walk of a big table
    takes seconds): an entry it read expired -- a client port's old connection in TIME_WAIT --
    may since have been expired by the data path and made again by the client reusing the port
    (a new SYN and ACK, the same key, established).  That new connection stays: the sweep
    deleted it, and its next packet went to the director's own stack (a reset)."""
    client, sport = "198.18.5.1", 30000
    assert send(dp, client, sport, "S") == XDP_REDIRECT
    assert send(dp, client, sport, "A") == XDP_REDIRECT
    conns = dp.maps["lb_conns"]
    key = L.ConnKey(ip(client), ip(VIP), sport, 80, 6).pack()
    live = conns.get(key)
    old = L.Conn.unpack(live)
    # what the dump read: the port's previous connection, in TIME_WAIT, its timer run out
    old.last_ns = L.stamp_ago(old.last_ns, 600 * 10**9)
    old.state, old.timeout, old.flags = L.TCP_S["TIME_WAIT"], 120, old.flags | L.CONN_F_INACTIVE
    dumped = [(k, old.pack() if k == key else v) for k, v in conns.items()]
    monkeypatch.setattr(conns, "items", lambda batch=None: dumped)
    dp.sweep()
    monkeypatch.undo()
    assert conns.get(key) == live
    assert send(dp, client, sport, "A") == XDP_REDIRECT
    dp.sweep()
    assert lb_list_counts(dp) == table_census(dp)
