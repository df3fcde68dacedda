"""Choosing the data plane (no VM, no traffic): [global] dataplane, `lb run --dataplane`, and
auto's fallback from XDP to kernel IPVS with a log line, leaving nothing of XDP behind."""
from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import sys

import pytest

from lb import config as lbconfig
from lb import engine
from lb.dataplane import ipvs
from lb.dataplane.errors import DataplaneError, ProgramLoadFailed
from lb.dataplane.xdp import XdpDataplane

BASE = '[global]\ninstance = "sel{pid}"\npublic_interface = "lo"\n{extra}'


def cfg(extra: str = ""):
    return lbconfig.loads(BASE.format(pid=os.getpid(), extra=extra))


def test_config_key_and_default():
    assert cfg().dataplane == "xdp"
    assert cfg('dataplane = "ipvs"\n').dataplane == "ipvs"
    assert cfg('dataplane = "auto"\n').dataplane == "auto"
    with pytest.raises(lbconfig.ConfigError, match="unknown dataplane 'kernel'"):
        cfg('dataplane = "kernel"\n')


def test_engine_picks_the_configured_or_overridden_data_plane():
    assert isinstance(engine.Engine(cfg()).dp, XdpDataplane)
    assert isinstance(engine.Engine(cfg('dataplane = "ipvs"\n')).dp, ipvs.IpvsDataplane)
    assert isinstance(engine.Engine(cfg('dataplane = "ipvs"\n'), dataplane="xdp").dp, XdpDataplane)
    assert isinstance(engine.Engine(cfg(), dataplane="ipvs").dp, ipvs.IpvsDataplane)


class FakeIpvs:
    kind = "ipvs"

    def __init__(self, instance, *a, **kw):
        self.instance, self.calls, self.services = instance, [], {}
        self.draining, self.adopted, self.created = set(), False, True

    def load(self):
        self.calls.append("load")

    def plan(self, table):
        pass

    def apply(self, table, nexthops=None):
        self.calls.append("apply")
        self.services = {s.key: s for s in table.services}

    def attach(self, ifname, side="public", mode="native"):
        self.calls.append(f"attach {ifname} {side}")

    def lease(self, seconds):
        pass

    def claim(self, addrs):
        pass

    def finish_resize(self):
        return False

    def nexthops_ahead(self, table):     # (base.Dataplane's: no next hop of its own)
        return []

    def nexthop_errors(self):
        return {}

    def held_programs(self):         # (base.Dataplane's: kernel IPVS attaches no program)
        return []

    def held_sync(self):
        return []


@pytest.mark.parametrize("fail_at", ["load", "attach", "apply"])
def test_auto_falls_back_to_ipvs_with_a_log_line(monkeypatch, caplog, tmp_path, fail_at):
    """XDP's programs do not load, or do not attach, or a scheduler's program (loaded at the
    first apply that uses it) does not load: auto goes on with kernel IPVS."""
    undone = []
    monkeypatch.setattr(engine, "IpvsDataplane", FakeIpvs)
    monkeypatch.setattr(engine, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(engine.addresses, "take", lambda addrs: None)
    monkeypatch.setattr(engine.addresses, "wanted_addresses", lambda c: [])

    def broken(*a, **kw):
        raise DataplaneError("cannot attach XDP to lo: no driver support")

    def scheduler_refused(self, table, nexthops=None):
        raise ProgramLoadFailed("the kernel refused program lb_sched_wlc: the verifier's limit")

    monkeypatch.setattr(XdpDataplane, "load", broken if fail_at == "load" else (lambda self: None))
    monkeypatch.setattr(XdpDataplane, "plan", lambda self, t: None)
    monkeypatch.setattr(XdpDataplane, "apply", scheduler_refused if fail_at == "apply" else (lambda self, t, nexthops=None: 0))
    monkeypatch.setattr(XdpDataplane, "lease", lambda self, s: None)
    monkeypatch.setattr(XdpDataplane, "claim", lambda self, a: None)
    monkeypatch.setattr(XdpDataplane, "attach", broken)
    monkeypatch.setattr(XdpDataplane, "detach_all", lambda self: undone.append("detach"))
    monkeypatch.setattr(XdpDataplane, "unpin", lambda self: undone.append("unpin"))
    monkeypatch.setattr(XdpDataplane, "close", lambda self: undone.append("close"))
    e = engine.Engine(cfg('dataplane = "auto"\n'))
    e.dp.created = True
    with caplog.at_level(logging.INFO, logger="lb.engine"):
        e.start()
    assert isinstance(e.dp, FakeIpvs)
    assert e.dp.calls == ["load", "apply", "attach lo public"]
    why = "the kernel refused program lb_sched_wlc" if fail_at == "apply" else "cannot attach XDP to lo"
    assert f"XDP data plane unavailable, falling back to kernel IPVS: {why}" in caplog.text
    assert "data plane: ipvs" in caplog.text
    assert undone == ["detach", "unpin", "close"]      # nothing of XDP is left behind


def test_xdp_and_ipvs_do_not_fall_back(monkeypatch, tmp_path):
    def broken(*a, **kw):
        raise DataplaneError("boom")

    # the instance lock goes to tmp_path: a failed Engine.start() in this process keeps it held
    # (lb.engine.run releases it), and a later `lb run` of this instance would refuse
    monkeypatch.setattr(engine, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(XdpDataplane, "load", broken)
    e = engine.Engine(cfg())
    with pytest.raises(DataplaneError, match="boom"):
        e.start()
    e.lock.release()


# `lb run` with the kernel's IPVS hidden, for a kernel that has it: /proc/net/ip_vs not found and
# a modprobe on PATH that fails, as on a kernel built without IP_VS
HIDE_IPVS = ("import sys; import lb.dataplane.ipvs as i; i._proc_net = lambda n: '/nonexistent/' + n; "
             "from lb.cli.main import main; sys.argv[0] = 'lb'; sys.exit(main())")


def test_lb_run_dataplane_ipvs_without_kernel_ipvs_says_why(tmp_path):
    """Without kernel IPVS (this machine: no modules at all; elsewhere, IPVS hidden as above)
    `lb run --dataplane ipvs` refuses to start, naming the cause."""
    path = tmp_path / "lb.toml"
    path.write_text(BASE.format(pid=os.getpid(), extra=""))
    args = ["run", "--config", str(path), "--dataplane", "ipvs"]
    env = dict(os.environ)
    if ipvs.available():
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "modprobe").write_text("#!/bin/sh\necho 'modprobe: FATAL: Module ip_vs not found' >&2\nexit 1\n")
        (fake / "modprobe").chmod(0o755)
        env["PATH"] = f"{fake}:{env.get('PATH', '')}"
        cmd = [sys.executable, "-c", HIDE_IPVS, *args]
    else:
        cmd = [os.path.join(os.path.dirname(sys.executable), "lb"), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2, p.stderr
    assert "kernel IPVS is not available" in p.stderr
    assert not os.path.exists(f"/run/lb/sel{os.getpid()}.ipvs.json")


def test_auto_does_not_fall_back_behind_the_previous_runs_xdp(monkeypatch, caplog, tmp_path):
    """A restart (the data plane kept) whose XDP build fails: the previous run's programs, adopted,
    forward still -- IPVS behind them would see no packet, and they would forward from maps
    nothing updates.  auto does not fall back then: the start fails, saying so, and nothing of
    the running XDP data plane is detached."""
    undone = []
    monkeypatch.setattr(engine, "IpvsDataplane", FakeIpvs)
    monkeypatch.setattr(engine, "RUN_DIR", str(tmp_path))

    def adopted_then_broken(self):
        self.adopted = True
        raise DataplaneError("cannot build the XDP programs: clang failed")

    monkeypatch.setattr(XdpDataplane, "load", adopted_then_broken)
    monkeypatch.setattr(XdpDataplane, "detach_all", lambda self: undone.append("detach"))
    monkeypatch.setattr(XdpDataplane, "unpin", lambda self: undone.append("unpin"))
    e = engine.Engine(cfg('dataplane = "auto"\n'))
    with caplog.at_level(logging.INFO, logger="lb.engine"), pytest.raises(DataplaneError, match="clang failed"):
        e.start()
    e.lock.release()
    assert isinstance(e.dp, XdpDataplane) and undone == []
    assert "not falling back to kernel IPVS behind them" in caplog.text


def test_a_scheduler_program_the_kernel_refuses_is_program_load_failed(monkeypatch):
    """Program.ensure (XdpDataplane.apply's first step) says a scheduler's program did not load
    as ProgramLoadFailed, which the engine's auto falls back on (above); nothing is wired."""
    from lb.dataplane import program as lbprogram

    def refused(obj, loaded, names):
        raise DataplaneError(f"the kernel refused program {names[0]}: processed 1000001 insns")

    wired = []
    monkeypatch.setattr(lbprogram.bpfobj, "load_programs", refused)
    p = lbprogram.Program.__new__(lbprogram.Program)
    p.fns, p.obj, p.loaded, p.compiled = {}, object(), object(), True
    p._wire = wired.append
    with pytest.raises(ProgramLoadFailed, match="the kernel refused program lb_sched_wlc: processed"):
        p.ensure({"wlc"})
    assert wired == [] and p.fns == {}


def test_a_failed_start_of_an_adopted_data_plane_leaves_it_with_only_the_previous_addresses(monkeypatch, tmp_path):
    """`lb run` adopts the previous run's data plane, takes the config's addresses (one of them
    new) and fails to apply: the adopted data plane serves on, untouched, and the address this
    start added is removed again (the others were the previous run's)."""
    kept, new = (engine.addresses.OwnedAddress("pub0", ipaddress.ip_interface(a))
                 for a in ("198.18.0.10/32", "198.18.0.11/32"))
    released, undone = [], []
    monkeypatch.setattr(engine, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(engine.signal, "signal", lambda *a: None)      # pytest's own handlers stay
    monkeypatch.setattr(engine.addresses, "wanted_addresses", lambda c: [kept, new])
    monkeypatch.setattr(engine.addresses, "check", lambda addrs: None)
    monkeypatch.setattr(engine.addresses, "take", lambda addrs: [a for a in addrs if a is new])
    monkeypatch.setattr(engine.addresses, "release", lambda addrs: released.append(list(addrs)))

    def adopted(self):
        self.adopted = True

    def refused(self, table, nexthops=None):
        raise DataplaneError("lb_svc_dests: write failed: ENOMEM; the previous table is back")

    monkeypatch.setattr(XdpDataplane, "load", adopted)
    monkeypatch.setattr(XdpDataplane, "plan", lambda self, t: None)
    monkeypatch.setattr(XdpDataplane, "lease", lambda self, s: None)
    monkeypatch.setattr(XdpDataplane, "claim", lambda self, a: None)
    monkeypatch.setattr(XdpDataplane, "apply", refused)
    monkeypatch.setattr(XdpDataplane, "detach_all", lambda self: undone.append("detach"))
    monkeypatch.setattr(XdpDataplane, "unpin", lambda self: undone.append("unpin"))
    monkeypatch.setattr(XdpDataplane, "close", lambda self: None)
    assert engine.run(cfg()) == 2
    assert released == [[new]] and undone == []
