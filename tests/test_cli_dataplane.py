"""`lb run --dataplane` (and `lb check --dataplane`) over a file whose [global] dataplane names
another: the file is checked for the data plane that runs it -- the errors only the XDP data
plane has (a real server at a VIP, [tables] against memory, [bgp] active-active under IPVS) and
the warnings only kernel IPVS has (keys without effect) follow the command line, at the start
and at each reload (the daemon's later loads of the same file)."""
from __future__ import annotations

import faulthandler
import logging

import pytest

from lb import engine
from lb.cli.main import main
from lb.config import toml as tomlcfg

# a real server at a VIP: the XDP data plane would send the connections back to itself; kernel
# IPVS serves them on the director (its local node)
LOCAL_NODE = """\
[global]
public_interface = "pub0"
{dataplane}
[tables]
connections = 67108864

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
  [[virtual_server.real_server]]
  address = "198.18.1.11"

[[virtual_server]]
name = "local"
address = "198.18.0.11"
port = 8080
  [[virtual_server.real_server]]
  address = "198.18.0.10"
"""

ACTIVE_ACTIVE = """\
[global]
public_interface = "pub0"
{dataplane}
[[virtual_server]]
name = "web"
address = "198.18.10.10"
port = 80
scheduler = "mh"
  [[virtual_server.real_server]]
  address = "198.18.1.11"

[bgp]
local_as = 65001
mode = "active-active"
  [[bgp.neighbor]]
  address = "198.18.0.254"
  peer_as = 65000
"""


@pytest.fixture
def small_machine(monkeypatch):
    """8 GiB: [tables] connections = 64M (some 16 GiB of XDP tables) does not fit."""
    monkeypatch.setattr(tomlcfg, "mem_total", lambda: 8 << 30)
    monkeypatch.setattr(tomlcfg, "cgroup_memory_limit", lambda: None)


@pytest.fixture
def runs(monkeypatch):
    """`lb run` up to the engine: what it was handed (the engine itself is not started)."""
    from lb import engine, preflight, sdnotify

    handed: list = []
    monkeypatch.setattr(sdnotify, "setup_logging", lambda *a, **k: None)   # keep pytest's handlers
    monkeypatch.setattr(faulthandler, "register", lambda *a, **k: None)
    monkeypatch.setattr(faulthandler, "enable", lambda *a, **k: None)
    monkeypatch.setattr(preflight, "check_arch", lambda: None)
    monkeypatch.setattr(preflight, "check_bpffs", lambda: None)
    monkeypatch.setattr(engine, "run", lambda cfg, **kw: handed.append((cfg, kw["dataplane"])) or 0)
    return handed


def _file(tmp_path, text: str, dataplane: str | None) -> str:
    path = tmp_path / "lb.toml"
    path.write_text(text.format(dataplane=f'dataplane = "{dataplane}"\n' if dataplane else ""))
    return str(path)


def test_run_dataplane_ipvs_over_an_xdp_file_gets_the_ipvs_checks(tmp_path, small_machine, runs, capsys,
                                                                   caplog) -> None:
    path = _file(tmp_path, LOCAL_NODE, None)          # the default: xdp
    # as the file says: the XDP data plane's errors
    assert main(["check", path]) == 2
    err = capsys.readouterr().err
    assert "lb.toml:5: tables.connections: the [tables] sizes need about 16.1 GiB" in err
    assert "lb.toml:19: virtual_server[1].real_server[0].address: 198.18.0.10 is the VIP of virtual_server[0]" in err
    # lb run --dataplane ipvs: kernel IPVS's rules, its warnings, and the run goes on
    with caplog.at_level(logging.WARNING, logger="lb"):
        assert main(["run", "--config", path, "--dataplane", "ipvs"]) == 0
    (cfg, dataplane), = runs
    assert dataplane == "ipvs"
    assert cfg.dataplane == "xdp"         # the file's, as an edit writes it back
    assert [(w.line, w.field) for w in cfg.warnings] == [(5, "tables.connections")]
    assert cfg.warnings[0].message.startswith("no effect with --dataplane ipvs (the command line's): kernel IPVS "
                                              "sizes its own connection table")
    assert "config: " + cfg.warnings[0].as_warning() in caplog.messages
    # the daemon's later loads of the file (each reload, the console's edits) check it alike: the
    # engine `lb run` hands the choice to keeps it (as the file says, xdp, both would refuse it)
    eng = engine.Engine(cfg, dataplane=dataplane)      # (the constructor touches nothing in the kernel)
    assert eng.reload_config().warnings == cfg.warnings
    console = eng.configs.get()
    assert console["ok"] and "issues" not in console and console["config"]["file_differs"] is False, console
    # lb check --dataplane ipvs says what lb run --dataplane ipvs will
    assert main(["check", path, "--dataplane", "ipvs"]) == 0
    assert "lb.toml:5: warning: tables.connections: no effect with --dataplane ipvs" in capsys.readouterr().err


def test_run_dataplane_xdp_over_an_ipvs_file_gets_the_xdp_checks(tmp_path, small_machine, runs, capsys) -> None:
    path = _file(tmp_path, LOCAL_NODE, "ipvs")
    assert main(["check", path]) == 0       # kernel IPVS: the local node, no tables to fit
    capsys.readouterr()
    assert main(["run", "--config", path, "--dataplane", "xdp"]) == 2
    assert runs == []
    err = capsys.readouterr().err
    assert ("lb.toml:6: tables.connections: the [tables] sizes need about 16.1 GiB of memory for the data plane's "
            "tables, more than this machine has (8.0 GiB)") in err
    assert ("lb.toml:20: virtual_server[1].real_server[0].address: 198.18.0.10 is the VIP of virtual_server[0], an "
            "address of this director: a real server must be another host (the XDP data plane would send the "
            "connections back to itself; kernel IPVS's local node: --dataplane ipvs only, and this is "
            "--dataplane xdp (the command line's))") in err
    # --dataplane auto: XDP's rules, but a table too big for the machine falls back to kernel IPVS
    assert main(["run", "--config", path, "--dataplane", "auto"]) == 2
    err = capsys.readouterr().err
    assert "tables.connections" not in err and "virtual_server[1].real_server[0].address" in err


def test_run_dataplane_auto_over_an_xdp_file_warns_of_the_fallback(tmp_path, small_machine, runs) -> None:
    text = LOCAL_NODE[:LOCAL_NODE.rindex("198.18.0.10")] + '198.18.1.12"\n'    # no local node
    path = _file(tmp_path, text, None)
    assert main(["run", "--config", path, "--dataplane", "auto"]) == 0
    (cfg, _), = runs
    (w,) = cfg.warnings
    assert (w.line, w.field) == (5, "tables.connections")
    assert "more than this machine has (8.0 GiB): --dataplane auto (the command line's) will run kernel IPVS" \
        in w.message


def test_run_dataplane_and_bgp_active_active(tmp_path, runs, capsys) -> None:
    """active-active needs the XDP data plane: the command line's ipvs is refused at the mode's
    line (the file's dataplane is not what to fix), its xdp accepted over an ipvs file."""
    path = _file(tmp_path, ACTIVE_ACTIVE, None)
    assert main(["run", "--config", path, "--dataplane", "ipvs"]) == 2
    assert capsys.readouterr().err == (
        f'{path}:14: bgp.mode: [bgp] mode = "active-active" needs the XDP data plane (it schedules mid-flow '
        f"packets after an ECMP change, as IPVS's sloppy_tcp, which lb does not set for kernel IPVS), and this "
        f"is --dataplane ipvs (the command line's): use --dataplane xdp, or mode = \"announce\"\n")
    path = _file(tmp_path, ACTIVE_ACTIVE, "ipvs")
    assert main(["check", path]) == 2
    assert f"{path}:3: global.dataplane: [bgp]" in capsys.readouterr().err
    assert main(["run", "--config", path, "--dataplane", "xdp"]) == 0
    (cfg, dataplane), = runs
    assert (cfg.dataplane, dataplane, cfg.bgp.mode) == ("ipvs", "xdp", "active-active")


def test_run_dataplane_console_saves_and_peer_pushes_are_checked_for_it(tmp_path, small_machine, runs) -> None:
    """The console's save and the HA peer's push (lb.confedit's edit path: lb.ha.configsync hands
    the active's document to it) of a file `lb run --dataplane ipvs` runs but the file's xdp would
    refuse (a local node, [tables] past memory): each is checked, rendered, read back and reloaded
    for ipvs, and written -- checked for the file's xdp, each would be refused, nothing written."""
    import asyncio

    from lb.config import store

    path = _file(tmp_path, LOCAL_NODE.replace("[global]\n", "[global]\nserial_no = 5\n"), None)   # xdp
    assert main(["run", "--config", path, "--dataplane", "ipvs"]) == 0
    (cfg, dataplane), = runs
    eng = engine.Engine(cfg, dataplane=dataplane)      # (the constructor touches nothing in the kernel)

    async def reload(req):          # the daemon's reload, its load of the file only
        new = eng.reload_config()
        return {"ok": True, "message": f"reloaded: weight {new.virtual_servers[0].real_servers[0].weight}"}
    eng.control = reload

    async def edits():
        replies = []
        for weight, peer in ((3, False), (4, True)):
            got = eng.configs.get()
            assert got["ok"] and "issues" not in got, got
            doc = got["document"]
            doc["virtual_server"][0]["real_server"][0]["weight"] = weight
            if peer:                # as lb.ha.configsync's push: no version, the active's serial_no
                replies.append(await eng.configs.put(store.localize(doc, eng.cfg), None, serial=10,
                                                     from_peer=True, who="the active peer"))
            else:
                replies.append(await eng.configs.put(doc, got["config"]["version"], who="console"))
        return replies

    console, peer = asyncio.run(edits())
    assert console["ok"] and console["applied"] and console["message"].endswith("reloaded: weight 3"), console
    assert console["serial_no"] == 6, console         # the file's, read for ipvs, + 1
    assert peer["ok"] and peer["applied"] and peer["message"].endswith("reloaded: weight 4"), peer
    saved = store.read(path, dataplane="ipvs").cfg
    assert (saved.serial_no, saved.virtual_servers[0].real_servers[0].weight) == (10, 4)
    assert store.read(path).cfg is None            # the file's own xdp still refuses it
