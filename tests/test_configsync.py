"""lb.ha.configsync between two daemons' configuration requests (real Engines, never started, on
127.0.0.1 and 127.0.0.2): the active's push is applied by the backup with its own instance name
and the pushed serial, then both run "the same"; an older serial is refused and reported; an
invalid configuration is refused with the validator's reason and changes nothing; a push signed
with another key, or from an address that is not the peer's, is never read; fuzzed pushes signed with
the key are applied, refused (changing nothing) or dropped."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import struct

import pytest

from lb.config import store
from lb.ha import configsync
from fuzzseed import SEED, named
from ports import held_port
from test_control_fuzz import mutated
from test_web import DaemonEngine, write_config

KEY = b"a shared key of enough bytes 0123"


def pair(tmp_path, b_text=None, a_extra="", b_extra=""):
    a_path = write_config(tmp_path / "a.toml", weight="7", web=a_extra)
    b_path = tmp_path / "b.toml"
    if b_text is None:
        write_config(b_path, weight="1", web=b_extra)
        b_path.write_text(b_path.read_text().replace('instance = "webtest"', 'instance = "webtest2"'))
    else:
        b_path.write_text(b_text)
    a, b = DaemonEngine(a_path), DaemonEngine(b_path)
    a.role = lambda: "active"
    b.role = lambda: "backup"
    port = held_port()
    sa = configsync.ConfigSync(a, lambda: (KEY,), [("127.0.0.1", "127.0.0.2")], port)
    sb = configsync.ConfigSync(b, lambda: (KEY,), [("127.0.0.2", "127.0.0.1")], port)
    return a, b, sa, sb


def run(sa, sb, body):
    async def go():
        await sa.start()
        await sb.start()
        try:
            return await body()
        finally:
            await sa.stop()
            await sb.stop()
    return asyncio.run(go())


def test_the_backup_applies_the_actives_configuration_then_both_are_the_same(tmp_path):
    a, b, sa, sb = pair(tmp_path)
    a_cfg = a.cfg

    async def body():
        first = await sa.push()
        second = await sa.push()
        return first, second
    first, second = run(sa, sb, body)
    assert first["result"] == "applied" and second["result"] == "same"
    got = store.read(b.cfg.path).cfg
    assert got.instance == "webtest2" and got.serial_no == a_cfg.serial_no
    assert got.virtual_servers[0].real_servers[0].weight == 7 and b.cfg == got
    assert store.identity(got) == store.identity(a_cfg)
    assert sa.status()["same"] is True and sb.status()["same"] is True
    assert store.prev_path(b.cfg.path).exists()


def test_the_push_carries_the_global_keys_and_the_backup_keeps_its_own_data_plane(tmp_path):
    """expire_nodest_conn and the lblc expirations go to the backup with the rest (the pushed
    document left them out, so every push turned them back to their defaults in the backup's file);
    the backup's data plane is its own (its host's), as its instance name is."""
    a, b, sa, sb = pair(tmp_path)
    a.cfg.path.write_text(a.cfg.path.read_text().replace(
        'public_interface = "eth0"\n', 'public_interface = "eth0"\ndataplane = "auto"\nexpire_nodest_conn = true\n'
                                        'lblc_expiration = 600\nlblcr_expiration = 700\n'))
    b.cfg.path.write_text(b.cfg.path.read_text().replace('public_interface = "eth0"\n',
                                                         'public_interface = "eth0"\ndataplane = "xdp"\n'))
    from lb import config as lbconfig
    a.cfg, b.cfg = lbconfig.load(a.cfg.path), lbconfig.load(b.cfg.path)
    reply = run(sa, sb, sa.push)
    assert reply["result"] == "applied", reply
    got = store.read(b.cfg.path).cfg
    assert (got.expire_nodest_conn, got.lblc_expiration, got.lblcr_expiration) == (True, 600, 700)
    assert got.dataplane == "xdp" and got.instance == "webtest2" and b.cfg == got
    assert store.identity(got) == store.identity(a.cfg) and sa.status()["same"] is True


def test_a_listener_that_could_not_bind_at_start_listens_once_it_can(tmp_path, monkeypatch, caplog):
    """The backup's address is taken when it starts (as an IPv6 address still in duplicate
    address detection, or an interface up after lb, refuses the bind): one error line, then
    the bind is tried again at every push interval, and once it succeeds the active's push is
    applied.  (It tried once, and the director's configuration sync stayed deaf until a restart.)"""
    import socket

    monkeypatch.setattr(configsync, "PUSH_INTERVAL", 0.1)
    a, b, sa, sb = pair(tmp_path)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.2", sb.port))
    blocker.listen()

    async def body():
        deaf = not sb.servers
        blocker.close()
        for _ in range(50):
            await asyncio.sleep(0.1)
            if sb.servers:
                break
        return deaf, await sa.push()
    with caplog.at_level(logging.INFO, logger="lb.ha.configsync"):
        deaf, reply = run(sa, sb, body)
    # The active's own push loop (every 0.1 s here) may have got there first: then this push
    # finds the backup "the same", and the backup's log says it applied the earlier one.
    assert deaf and reply["result"] in ("applied", "same"), reply
    assert "configuration from the active peer 127.0.0.1 applied" in caplog.text
    assert store.read(b.cfg.path).cfg.virtual_servers[0].real_servers[0].weight == 7
    assert "cannot listen on 127.0.0.2" in caplog.text and "listening on 127.0.0.2" in caplog.text


def test_an_older_serial_is_refused_and_reported(tmp_path):
    a, b, sa, sb = pair(tmp_path)
    b.cfg.path.write_text(b.cfg.path.read_text().replace('instance = "webtest2"', 'instance = "webtest2"\nserial_no = 9'))
    from lb import config as lbconfig
    b.cfg = lbconfig.load(b.cfg.path)
    before = b.cfg.path.read_bytes()
    reply = run(sa, sb, sa.push)
    assert reply["result"] == "older" and "older than this director's 9" in reply["error"]
    assert b.cfg.path.read_bytes() == before
    assert sa.status()["same"] is False and sa.status()["last_result"] == "older"


def test_an_invalid_configuration_is_refused_with_the_reason(tmp_path):
    a, b, sa, sb = pair(tmp_path)
    before = b.cfg.path.read_bytes()
    bad = store.shared_document(a.cfg)
    bad["virtual_server"][0]["real_server"][0]["weight"] = "heavy"
    reply = run(sa, sb, lambda: sa._exchange({"role": "active", "serial_no": 1, "identity": "0" * 16,
                                              "document": bad}))
    assert reply["result"] == "refused"
    assert 'virtual_server[0].real_server[0].weight: expected an integer, got string "heavy"' in reply["error"]
    assert b.cfg.path.read_bytes() == before


def test_a_refused_push_repeated_every_interval_is_refused_without_the_edit_path_each_time(tmp_path, monkeypatch,
                                                                                           caplog):
    """The active pushes again every PUSH_INTERVAL (3 s) while the two differ.  A document the
    backup refuses went through its edit path at each push: a WARNING line every 3 s for good (and,
    for one the reload refuses, the file written, reloaded and put back every 3 s).  Now the same
    push is answered with the same refusal for LOG_EVERY seconds, without a line or a look at the
    file; after that, or once the push changes, the edit path has it again."""
    a, b, sa, sb = pair(tmp_path)
    before = b.cfg.path.read_bytes()
    bad = store.shared_document(a.cfg)
    bad["virtual_server"][0]["real_server"][0]["weight"] = "heavy"
    reads = []
    real_read = store.read
    monkeypatch.setattr(store, "read", lambda path, **kw: reads.append(path) or real_read(path, **kw))
    push = {"role": "active", "serial_no": 1, "identity": "0" * 16, "document": bad}

    async def body():
        replies = []
        for _ in range(20):                 # a minute of pushes (3 s apart, here at once)
            replies.append(await sa._exchange(push))
        return replies
    with caplog.at_level(logging.WARNING, logger="lb"):
        replies = run(sa, sb, body)
    assert [r["result"] for r in replies] == ["refused"] * 20
    assert all('real_server[0].weight: expected an integer, got string "heavy"' in r["error"] for r in replies)
    assert sb.counters["refused"] == 20
    edits = [r for r in caplog.records if "configuration edit from the active peer" in r.getMessage()]
    assert len(edits) == 1 and len(reads) == 1, [r.getMessage() for r in caplog.records]
    assert b.cfg.path.read_bytes() == before

    what, when, why = sb._refusal           # a minute on: tried again
    sb._refusal = (what, when - configsync.LOG_EVERY, why)
    reply = run(sa, sb, lambda: sa._exchange(push))
    assert 'got string "heavy"' in reply["error"] and len(reads) == 2
    bad["virtual_server"][0]["real_server"][0]["weight"] = "heavier"
    reply = run(sa, sb, lambda: sa._exchange(push))
    assert 'got string "heavier"' in reply["error"] and len(reads) == 3
    reply = run(sa, sb, lambda: sa._exchange(push | {"document": store.shared_document(a.cfg)}))
    assert reply["result"] == "applied"


def test_a_malformed_push_is_counted_and_said_once_a_minute(tmp_path, caplog):
    """A push signed with the key whose fields are not what they must be (serial_no not a number,
    the document not an object): refused and counted, as before, and now said on the backup too,
    at most once a minute however often it comes (it was said nowhere there)."""
    a, b, sa, sb = pair(tmp_path)
    before = b.cfg.path.read_bytes()

    async def body():
        return [await sa._exchange(m) for m in
                [{"serial_no": "7", "identity": "0" * 16}] * 3 + [{"serial_no": 9, "identity": "0" * 16,
                                                                    "document": ["not", "a", "document"]}] * 3]
    with caplog.at_level(logging.WARNING, logger="lb"):
        replies = run(sa, sb, body)
    assert [r["error"] for r in replies] == ["malformed push (serial_no, identity)"] * 3 + [
        "malformed push (document)"] * 3
    assert sb.counters["refused"] == 6 and b.cfg.path.read_bytes() == before
    said = [r.getMessage() for r in caplog.records if "malformed push" in r.getMessage()]
    assert said == ["configuration sync: a malformed push from 127.0.0.1 (serial_no, identity) refused"], said


def test_a_document_the_edit_path_cannot_read_is_refused_not_a_traceback(tmp_path, caplog):
    """Found by the fuzz test above (LB_FUZZ_SEED=3069693235): a virtual server whose name is a
    list made the backup's localize raise TypeError (unhashable) -- out of the server, an asyncio
    "Unhandled exception" traceback, no answer, no counter; so did a document nested deeper than
    copy.deepcopy goes (RecursionError).  Now the validator refuses the first with its reason,
    the second is a malformed push, and the backup's file and configuration stay as they were."""
    a, b, sa, sb = pair(tmp_path)
    before = (b.cfg.path.read_bytes(), b.cfg)
    listed = store.shared_document(a.cfg)
    listed["virtual_server"][0]["name"] = ["web"]
    deep = store.shared_document(a.cfg) | {"deep": json.loads("[" * 600 + "]" * 600)}

    async def body():
        return [await sa._exchange({"serial_no": 9, "identity": "0" * 16, "document": d}) for d in (listed, deep)]
    with caplog.at_level(logging.WARNING):
        first, second = run(sa, sb, body)
    assert first["result"] == "refused" and "virtual_server[0].name" in first["error"], first
    assert second == second | {"result": "refused", "error": "malformed push (document: RecursionError)"}
    assert (b.cfg.path.read_bytes(), b.cfg) == before and sb.counters["refused"] == 2
    assert "Unhandled exception" not in caplog.text and "Traceback" not in caplog.text, caplog.text

    # a backup with [[bgp.vip]] entries looks the pushed virtual servers' addresses up in a set:
    # a list there was TypeError too
    bgp = BGP.format(rid="198.18.0.3") + '  [[bgp.vip]]\n  address = "198.18.0.10"\n  med = 10\n'
    a, b, sa, sb = pair(tmp_path, b_extra=bgp)
    assert b.cfg.bgp.vips
    listed = store.shared_document(a.cfg)
    listed["virtual_server"][0]["address"] = ["198.18.0.10"]
    reply = run(sa, sb, lambda: sa._exchange({"serial_no": 9, "identity": "0" * 16, "document": listed}))
    assert reply["result"] == "refused" and "virtual_server[0].address" in reply["error"], reply


def test_another_key_or_another_address_is_never_read(tmp_path):
    a, b, sa, sb = pair(tmp_path)
    before = b.cfg.path.read_bytes()
    sa.keys = lambda: (b"not the peer's key, same length!",)

    async def body():
        with pytest.raises(asyncio.IncompleteReadError):
            await sa.push()
    run(sa, sb, body)
    assert b.cfg.path.read_bytes() == before and sb.counters["bad_peer"] == 1
    # a push from 127.0.0.3 (not the peer's heartbeat address)
    sa.keys = lambda: (KEY,)
    sa.channels = [("127.0.0.3", "127.0.0.2")]

    async def body2():
        with pytest.raises(asyncio.IncompleteReadError):
            await sa.push()
    run(sa, sb, body2)
    assert b.cfg.path.read_bytes() == before and sb.counters["bad_peer"] == 2


BGP = """
[bgp]
mode = "announce"
local_as = 65001
router_id = "{rid}"
  [[bgp.neighbor]]
  address = "198.18.0.254"
  peer_as = 65000
  local_address = "{rid}"
"""


def test_each_director_keeps_its_own_bgp_sessions(tmp_path):
    """[bgp] is per director (its router id, its end of each session): the push carries the rest,
    the backup keeps its own [bgp], and a different [bgp] does not make the two "different"."""
    a, b, sa, sb = pair(tmp_path, a_extra=BGP.format(rid="198.18.0.2"), b_extra=BGP.format(rid="198.18.0.3"))
    b_path = b.cfg.path

    async def body():
        return await sa.push(), await sa.push()
    first, second = run(sa, sb, body)
    assert first["result"] == "applied", first
    assert second["result"] == "same"
    got = store.read(b_path).cfg
    assert got.virtual_servers[0].real_servers[0].weight == 7 and b.cfg == got
    assert str(got.bgp.router_id) == "198.18.0.3" and str(got.bgp.neighbors[0].local_address) == "198.18.0.3"
    assert 'router_id = "198.18.0.3"' in b_path.read_text()
    assert str(a.cfg.bgp.router_id) == "198.18.0.2"
    assert sa.status()["same"] is True and sb.status()["same"] is True


def test_fuzzed_pushes_from_the_peer_are_answered_or_dropped_and_change_nothing_when_refused(tmp_path, caplog):
    """Pushes signed with the peer's key (a peer running other code, or one whose key leaked), their
    JSON mutated as the control socket's fuzzer mutates requests: each is applied, answered with a
    refusal that leaves the backup's file and configuration as they were, or dropped (not JSON: the
    connection closed, counted); nothing escapes the server (no traceback in the log).  Seeded by
    LB_FUZZ_SEED (tests/fuzzseed.py)."""
    a, b, sa, sb = pair(tmp_path)
    rng = random.Random(SEED)
    doc = store.shared_document(a.cfg)
    valid = [{"serial_no": a.cfg.serial_no, "identity": store.identity(a.cfg), "document": doc},
             {"serial_no": a.cfg.serial_no, "identity": "0" * 16},
             {"serial_no": 1, "identity": "1" * 16, "document": doc}]
    results: dict[str, int] = {}

    async def push_raw(body: bytes):
        reader, writer = await asyncio.open_connection("127.0.0.2", sb.port, local_addr=("127.0.0.1", 0))
        try:
            cn = os.urandom(configsync.NONCE)
            writer.write(configsync.MAGIC + cn)
            await writer.drain()
            sn = await reader.readexactly(configsync.NONCE)
            writer.write(struct.pack("!I", len(body)) + body + configsync._mac(KEY, b"push", cn + sn, body))
            await writer.drain()
            try:
                return await configsync._read_message(reader, KEY, b"reply", cn + sn)
            except asyncio.IncompleteReadError:
                return None                 # dropped: not a JSON object
        finally:
            writer.close()

    async def body():
        await sb.start()
        try:
            for _ in range(400):
                raw = mutated(rng, rng.choice(valid)).rstrip(b"\n")
                before = (b.cfg.path.read_bytes(), b.cfg)
                reply = await push_raw(raw)
                result = "dropped" if reply is None else reply["result"]
                results[result] = results.get(result, 0) + 1
                if result != "applied":
                    assert (b.cfg.path.read_bytes(), b.cfg) == before, (raw[:300], reply)
                if reply is not None:
                    assert set(reply) == {"result", "error", "serial_no", "identity", "role"}, reply
                    if result == "refused":
                        assert isinstance(reply["error"], str) and reply["error"], reply
                else:
                    try:
                        ok = isinstance(json.loads(raw), dict)
                    except (ValueError, RecursionError):
                        ok = False
                    assert not ok, raw[:300]        # only what is no JSON object is dropped
        finally:
            await sb.stop()

    with named(), caplog.at_level(logging.WARNING):
        asyncio.run(body())
        assert results.get("refused", 0) > 20 and results.get("dropped", 0) > 5, results
        assert "Traceback" not in caplog.text and "Unhandled exception" not in caplog.text, caplog.text[-3000:]


def test_each_director_keeps_its_own_interfaces(tmp_path):
    """The interfaces are each host's names (eth0 on one, ens3 on the other): the backup keeps
    its own, takes the rest, and both then run "the same" (a push of the active's names was
    refused at every push as a restart-only change, and a private_interface the backup happened
    to have was taken, the real servers' gateway with it)."""
    from lb import config as lbconfig

    glob = 'public_interface = "eth0"\n'
    b_text = write_config(tmp_path / "b.toml", weight="1").read_text().replace(
        'instance = "webtest"', 'instance = "webtest2"').replace(
        glob, 'public_interface = "ens3"\nprivate_interface = "privB"\n')
    a, b, sa, sb = pair(tmp_path, b_text=b_text)
    a.cfg.path.write_text(a.cfg.path.read_text().replace(glob, glob + 'private_interface = "privA"\n'))
    a.cfg = lbconfig.load(a.cfg.path)

    async def body():
        return await sa.push(), await sa.push()
    first, second = run(sa, sb, body)
    assert first["result"] == "applied" and second["result"] == "same", (first, second)
    got = store.read(b.cfg.path).cfg
    assert (got.public_interface, got.private_interface) == ("ens3", "privB")
    assert got.virtual_servers[0].real_servers[0].weight == 7 and b.cfg == got


def test_each_director_keeps_its_own_virtual_server_devices(tmp_path):
    """A virtual server's `device` is a host's interface name as public_interface is: the
    backup keeps its own for the services it has (the active's eth0.100 was pushed to a backup
    whose VLAN is ens3.100, and its reload refused at every push); a new service takes the
    active's device, or the backup's public interface where the active used its own."""
    from lb import config as lbconfig

    svc2 = '\n[[virtual_server]]\nname = "api"\naddress = "198.18.0.12"\nport = 8080\nscheduler = "rr"\n' \
           '{device}  [[virtual_server.real_server]]\n  address = "198.18.1.13"\n'
    glob = 'public_interface = "eth0"\n'
    b_text = write_config(tmp_path / "b.toml", weight="1").read_text().replace(
        'instance = "webtest"', 'instance = "webtest2"').replace(glob, 'public_interface = "ens3"\n').replace(
        'port = 80\n', 'port = 80\ndevice = "ens3.100"\n', 1)
    a, b, sa, sb = pair(tmp_path, b_text=b_text)
    a.cfg.path.write_text(a.cfg.path.read_text().replace('port = 80\n', 'port = 80\ndevice = "eth0.100"\n', 1)
                          + svc2.format(device='device = "eth0"\n'))
    a.cfg = lbconfig.load(a.cfg.path)

    async def body():
        return await sa.push(), await sa.push()
    first, second = run(sa, sb, body)
    assert first["result"] == "applied" and second["result"] == "same", (first, second)
    got = store.read(b.cfg.path).cfg
    assert [(vs.name, vs.device) for vs in got.virtual_servers] == [("web", "ens3.100"), ("api", None)]
    assert got.virtual_servers[0].real_servers[0].weight == 7 and b.cfg == got
    assert sa.status()["same"] is True


def test_a_renumbered_vip_drops_the_backups_bgp_attributes_for_the_old_one(tmp_path):
    """[bgp] is each director's own (its sessions), but its [[bgp.vip]] attributes follow the
    virtual servers: a VIP the active renumbered loses its entry on the backup (every push was
    refused: "not the address of any virtual_server")."""
    bgp = ('\n[bgp]\nmode = "announce"\nlocal_as = 65001\n[[bgp.neighbor]]\naddress = "198.18.0.1"\n'
           'peer_as = 65000\n[[bgp.vip]]\naddress = "{vip}"\nmed = 10\ncommunities = ["65000:100"]\n')
    from lb import config as lbconfig

    b_text = write_config(tmp_path / "b.toml", weight="1").read_text().replace(
        'instance = "webtest"', 'instance = "webtest2"') + bgp.format(vip="198.18.0.10")
    a, b, sa, sb = pair(tmp_path, b_text=b_text)
    a.cfg.path.write_text(a.cfg.path.read_text().replace("198.18.0.10", "198.18.0.11") + bgp.format(vip="198.18.0.11"))
    a.cfg = lbconfig.load(a.cfg.path)
    reply = run(sa, sb, sa.push)
    assert reply["result"] == "applied", reply
    got = store.read(b.cfg.path).cfg
    assert str(got.virtual_servers[0].address) == "198.18.0.11" and got.bgp.vips == ()
    assert [str(n.address) for n in got.bgp.neighbors] == ["198.18.0.1"]       # its sessions kept


def test_each_director_keeps_its_own_listen_addresses(tmp_path):
    """[metrics] and [web] listen on each host's own address: the push carries the rest (the
    active's address went to the backup, whose metrics endpoint then could not bind)."""
    a, b, sa, sb = pair(tmp_path, a_extra='[metrics]\nenabled = true\nlisten = "198.18.1.1:9640"\n',
                        b_extra='[metrics]\nenabled = true\nlisten = "198.18.1.3:9640"\n')
    reply = run(sa, sb, sa.push)
    assert reply["result"] == "applied", reply
    got = store.read(b.cfg.path).cfg
    assert got.metrics.listen == "198.18.1.3:9640" and got.metrics.enabled and b.cfg == got
    assert sa.status()["same"] is True


def test_silent_connections_from_the_peers_address_do_not_hold_up_a_push(tmp_path):
    """Connections from the peer's address that say nothing (an on-link host spoofing it) used to
    queue for the answering lock without limit, a file descriptor each, and the active's push
    waited behind them.  A few are read at once, the oldest dropped for a new one: the push is
    applied at once and the silent ones are closed."""
    a, b, sa, sb = pair(tmp_path)

    async def body():
        fds = len(os.listdir("/proc/self/fd"))
        held = [(await asyncio.open_connection("127.0.0.2", sb.port, local_addr=("127.0.0.1", 0)))
                for _ in range(40)]
        await asyncio.sleep(0.2)
        reply = await asyncio.wait_for(sa.push(), 5.0)
        async def eof(r):
            try:
                return await asyncio.wait_for(r.read(1), 0.2) == b""
            except asyncio.TimeoutError:
                return False                                    # still being read (the newest few)
        closed = sum([await eof(r) for r, _w in held])          # the server closed them
        open_now = len(os.listdir("/proc/self/fd")) - fds
        for _r, w in held:
            w.close()
        return reply, closed, open_now
    reply, closed, open_now = run(sa, sb, body)
    assert reply["result"] == "applied", reply
    assert closed >= 40 - configsync.MAX_READING and sb.counters["busy"] >= 40 - configsync.MAX_READING
    assert open_now < 40 + 2 * configsync.MAX_READING + 8      # our 40 ends, the server's few


def test_a_push_under_way_is_not_the_one_dropped_for_silent_ones(tmp_path):
    """The active's push half on the wire while four silent connections from the peer's
    address arrive: the oldest read was dropped -- the real push, counted as a bad peer.  The
    one dropped is the read that got least far: a silent one, without its first bytes."""
    from lb.config import store
    a, b, sa, sb = pair(tmp_path)

    async def body():
        r, w = await asyncio.open_connection("127.0.0.2", sb.port, local_addr=("127.0.0.1", 0))
        cn = os.urandom(configsync.NONCE)
        w.write(configsync.MAGIC + cn)
        await w.drain()
        sn = await r.readexactly(configsync.NONCE)
        msg = {"role": "active", "serial_no": a.cfg.serial_no, "identity": store.identity(a.cfg),
               "document": store.shared_document(a.cfg)}
        data = configsync._message(KEY, b"push", cn + sn, msg)
        w.write(data[:10])
        await w.drain()
        held = [await asyncio.open_connection("127.0.0.2", sb.port, local_addr=("127.0.0.1", 0)) for _ in range(4)]
        await asyncio.sleep(0.05)
        w.write(data[10:])
        await w.drain()
        reply = await configsync._read_message(r, KEY, b"reply", cn + sn)
        for _r, hw in held:
            hw.close()
        return reply
    reply = run(sa, sb, body)
    assert reply["result"] == "applied", reply
    assert sb.counters["busy"] == 1, sb.counters           # one silent connection dropped, not the push
