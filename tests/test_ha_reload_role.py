"""A reload and a role change at once (the reload's table write in a worker thread, pulse's
on_role on the loop): the addresses follow the role at the end, whichever came first.  The data
plane and lb.ha.addresses are stand-ins: an in-memory interface, no kernel."""
from __future__ import annotations

import asyncio
import threading

import pytest

from lb.ha import addresses
from lb.ha.pulse import ACTIVE, BACKUP
from test_override import make_engine

CONF = """
[global]
instance = "race"
public_interface = "lo"
network = "direct"
[ha]
primary = "198.18.0.1"
backup = "198.18.0.3"
key_file = "{key}"
sync = false
{vips}
"""
VS = """
[[virtual_server]]
name = "{name}"
address = "{addr}"
port = 80
scheduler = "wrr"
  [[virtual_server.real_server]]
  name = "rs1"
  address = "198.18.1.11"
"""


@pytest.mark.parametrize("first, then", [(ACTIVE, BACKUP), (BACKUP, ACTIVE)])
def test_a_role_change_during_a_reload_leaves_the_addresses_with_the_role(tmp_path, monkeypatch, first, then):
    key = tmp_path / "ha.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    path = tmp_path / "lb.toml"

    def write(vips):
        path.write_text(CONF.format(key=key, vips="".join(VS.format(name=n, addr=a) for n, a in vips)))
        return path

    iface: set = set()
    monkeypatch.setattr(addresses, "take", lambda addrs: [iface.add(str(a.address)) or a for a in addrs
                                                          if str(a.address) not in iface])
    monkeypatch.setattr(addresses, "release", lambda addrs: [iface.discard(str(a.address)) for a in addrs])
    monkeypatch.setattr(addresses, "check", lambda addrs: None)
    eng = make_engine(write([("web", "198.18.0.10")]))
    eng.dp.lease = lambda s: None
    eng.dp.lease_left = lambda: 1.0
    eng.dp.claim = lambda a: None
    eng.dp.attached = {}
    eng.announce = lambda *a, **k: None                   # no frames sent
    eng.owned = addresses.wanted_addresses(eng.cfg)
    asyncio.run(eng.on_role(first, 0))

    write([("web", "198.18.0.10"), ("api", "198.18.0.20")])       # a VIP added, `lb reload`
    in_apply, go_on = threading.Event(), threading.Event()
    apply = eng.dp.apply

    def slow_apply(table, nexthops=None):
        in_apply.set()
        go_on.wait(10)
        apply(table, nexthops=nexthops)
    eng.dp.apply = slow_apply
    errors = []
    t = threading.Thread(target=lambda: errors.append(None) if eng.reload_or_raise() else None)
    t.start()
    assert in_apply.wait(10)
    asyncio.run(eng.on_role(then, first))         # pulse changes the role meanwhile
    go_on.set()
    t.join(10)
    assert errors == [None]
    want = {"198.18.0.10/32", "198.18.0.20/32"} if then == ACTIVE else set()
    assert iface == want, (eng.active, iface)
