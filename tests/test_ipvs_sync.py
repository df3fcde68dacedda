"""HA in IPVS mode: the engine drives the kernel's own sync daemon from pulse's role (master
when active, backup otherwise, on the heartbeat's private channel when there is one); the XDP
data plane is left alone.  The kernel side (netlink, ipvsadm --daemon, synced connections) is
tested in the IPVS VM: tests/vm/guest/vmtest_ipvs_fwmark.py."""
from __future__ import annotations

import asyncio

from lb import config as lbconfig
from lb.dataplane.ipvs import SyncDaemon, sync_id
from lb.dataplane.program import Sizes
from lb.engine import Engine
from lb.ha.pulse import ACTIVE, BACKUP, FAULT, STARTING

BASE = """
[global]
instance = "{instance}"
public_interface = "pub0"
private_interface = "priv0"
network = "direct"
dataplane = "{dataplane}"

[ha]
primary = "198.18.0.1"
backup = "198.18.0.3"
{private}
key_file = "{key}"
{sync}

[[virtual_server]]
name = "ftp"
fwmark = 21
scheduler = "wlc"
port_group = [{{ address = "198.18.0.10", protocol = "tcp", ports = "21" }}]
real_server = [{{ name = "rs1", address = "198.18.1.11" }}]
"""


class Recorder:
    """Records what the engine asks of the data plane's sync (the kernel half is the VM's)."""

    def __init__(self, kind):
        self.kind = kind
        self.calls = []

    def start_sync(self, role, ifname, syncid):
        self.calls.append((role, ifname, syncid))

    def lease(self, seconds):            # the HA lease (bpf/lb_lease.h): not this test's subject
        self.lease_s = seconds

    def lease_left(self):
        return self.lease_s


def engine(tmp_path, monkeypatch, *, dataplane="ipvs", private=True, sync=True, instance="synctest"):
    key = tmp_path / "ha.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    text = BASE.format(instance=instance, dataplane=dataplane, key=key,
                       private='primary_private = "198.18.1.1"\nbackup_private = "198.18.1.3"' if private else "",
                       sync="" if sync else "sync = false")
    eng = Engine(lbconfig.loads(text), dataplane=dataplane)
    eng.dp = Recorder(dataplane)
    for name in ("_take_addresses", "_release_addresses"):
        monkeypatch.setattr(eng, name, lambda *a: None)
    monkeypatch.setattr(eng, "announce", lambda *a: None)
    return eng


def roles(eng, *changes):
    async def go():
        for new, old in changes:
            await eng.on_role(new, old)
    asyncio.run(go())
    return eng.dp.calls


def test_active_is_master_and_standby_is_backup_on_the_private_channel(tmp_path, monkeypatch):
    eng = engine(tmp_path, monkeypatch)
    sid = sync_id(eng.cfg.ha)
    assert roles(eng, (BACKUP, STARTING), (ACTIVE, BACKUP), (FAULT, ACTIVE)) == [
        ("backup", "priv0", sid), ("master", "priv0", sid), ("backup", "priv0", sid)]


def test_public_channel_without_private_heartbeat_and_no_sync_when_disabled(tmp_path, monkeypatch):
    eng = engine(tmp_path, monkeypatch, private=False)
    assert roles(eng, (ACTIVE, STARTING)) == [("master", "pub0", sync_id(eng.cfg.ha))]
    eng = engine(tmp_path, monkeypatch, sync=False)
    assert roles(eng, (ACTIVE, STARTING)) == []


def test_xdp_mode_keeps_its_own_sync(tmp_path, monkeypatch):
    """The XDP data plane has no kernel sync daemon (lb/ha/sync.py carries its connections):
    role changes never reach the kernel's IPVS."""
    from lb.dataplane import ipvs
    from lb.dataplane.xdp import XdpDataplane

    class NoKernel:
        def __init__(self, *a, **kw):
            raise AssertionError("the XDP data plane asked kernel IPVS for a sync daemon")

    monkeypatch.setattr(ipvs, "Kernel", NoKernel)
    eng = engine(tmp_path, monkeypatch, dataplane="xdp")
    eng.dp = XdpDataplane(eng.cfg.instance, Sizes.from_tables(eng.cfg.tables))    # never loaded
    monkeypatch.setattr(eng.dp, "lease", lambda seconds: None)                      # its maps are not there
    monkeypatch.setattr(eng.dp, "lease_left", lambda: 1.0)

    async def go():
        await eng.on_role(ACTIVE, STARTING)
        await eng.on_role(BACKUP, ACTIVE)
    asyncio.run(go())


def test_sync_id_is_the_pairs_and_the_daemon_line_is_ipvsadms():
    from types import SimpleNamespace as Ha
    ids = {sync_id(Ha(primary=f"198.18.{i}.1", backup=f"198.18.{i}.2")) for i in range(20)}
    assert all(1 <= i <= 255 for i in ids) and len(ids) > 15      # pairs differ, most of the time
    pair = Ha(primary="198.18.0.1", backup="198.18.0.3")
    assert sync_id(pair) == sync_id(Ha(primary="198.18.0.1", backup="198.18.0.3"))
    assert SyncDaemon("master", "eth0", 1).line() == "master sync daemon (mcast=eth0, syncid=1)"
    assert SyncDaemon("backup", "priv0", 7, 1472, "224.0.0.81", 8848, 1).line() == \
        "backup sync daemon (mcast=priv0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)"
