"""What only root may change over the control socket: the programs the daemon runs (monitor,
load monitor and HA notify programs, every script_user) and [control].  The web console's user
(admin_group, not root) could set a monitor `program` with script_user = "root" and the daemon,
root, ran it: root for whoever logged in to the console."""
from __future__ import annotations

import asyncio
import copy

from lb import control
from lb.config import store
from test_web import DaemonEngine, write_config


def put(eng, edit, *, root):
    async def go():
        got = await eng("config")
        doc = copy.deepcopy(got["document"])
        edit(doc)
        return await eng.control({"cmd": "config-put", "document": doc, "version": got["config"]["version"],
                                  control.PEER_IS_ROOT: root})
    return asyncio.run(go())


def program_monitor(user):
    def edit(doc):
        doc["virtual_server"][0]["monitor"] = {"kind": "program", "program": "/bin/sh -c 'id > /tmp/x' %h",
                                               "script_user": user}
    return edit


def test_an_editor_who_is_not_root_cannot_change_what_the_daemon_runs(tmp_path):
    path = write_config(tmp_path / "c.toml", weight="3")
    eng = DaemonEngine(path)
    before = path.read_bytes()
    for edit, field in ((program_monitor("root"), "virtual_server 'web' monitor.program / script_user"),
                        (lambda d: d["global"].update(script_user="root"), "global.script_user"),
                        (lambda d: d.update(control={"admin_group": "users"}), "[control]")):
        reply = put(eng, edit, root=False)
        assert reply["ok"] is False and reply["error"].startswith(f"{field}: only root changes these"), reply
        assert path.read_bytes() == before
    # the rest of the file is the console's to edit
    reply = put(eng, lambda d: d["virtual_server"][0]["real_server"][0].update(weight=9), root=False)
    assert reply["ok"] is True, reply
    assert store.read(path).cfg.virtual_servers[0].real_servers[0].weight == 9
    # root may
    reply = put(eng, program_monitor("nobody"), root=True)
    assert reply["ok"] is True, reply
    assert eng.cfg.virtual_servers[0].monitor.program.startswith("/bin/sh")
    # and the console may still edit around a program root set, or take it away
    assert put(eng, lambda d: d["virtual_server"][0]["real_server"][0].update(weight=4), root=False)["ok"] is True
    reply = put(eng, lambda d: d["virtual_server"][0].update(monitor={"kind": "tcp"}), root=False)
    assert reply["ok"] is True, reply


def test_a_file_that_does_not_load_is_no_way_around_it(tmp_path):
    """Root's edit of the file half done (it does not load): the check was skipped, and the
    console's user put a program run as root.  It is checked against what runs then."""
    path = write_config(tmp_path / "c.toml", weight="3")
    eng = DaemonEngine(path)

    async def go():
        got = await eng("config")
        doc = copy.deepcopy(got["document"])
        program_monitor("root")(doc)
        path.write_text(path.read_text().replace('scheduler = "rr"', 'scheduler = "lottery"'))
        got = await eng("config")
        return await eng.control({"cmd": "config-put", "document": doc, "version": got["config"]["version"],
                                  control.PEER_IS_ROOT: False})
    reply = asyncio.run(go())
    assert reply["ok"] is False and "only root changes these" in reply["error"], reply


def test_ha_without_notify_programs_is_the_consoles_to_add(tmp_path):
    """[ha] added or removed, with no notify program, runs nothing: not refused."""
    path = write_config(tmp_path / "c.toml", weight="3")
    key = tmp_path / "ha.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    eng = DaemonEngine(path)
    ha = {"primary": "198.18.0.1", "backup": "198.18.0.3", "key_file": str(key)}
    reply = put(eng, lambda d: d.update(ha=ha), root=False)
    assert "only root" not in str(reply.get("error")), reply
    reply = put(eng, lambda d: d.update(ha={**ha, "notify": ["/usr/local/bin/tell"]}), root=False)
    assert reply["ok"] is False and reply["error"].startswith("[ha] notify / script_user: only root"), reply


def test_what_root_set_running_stays_the_consoles_to_edit_around(tmp_path):
    """The check matched services by name and looked at a program only under kind "program":
    renaming a service whose monitor runs root's program, or switching its kind to tcp and back
    (the program and user as root set them), was refused.  A service is matched by its name or
    its key (protocol, address, port), and the program compared whatever the kind."""
    path = write_config(tmp_path / "c.toml", weight="3")
    eng = DaemonEngine(path)
    assert put(eng, program_monitor("root"), root=True)["ok"] is True
    for edit in (lambda d: d["virtual_server"][0].update(name="renamed"),
                 lambda d: d["virtual_server"][0]["monitor"].update(kind="tcp"),
                 lambda d: d["virtual_server"][0]["monitor"].update(kind="program")):
        reply = put(eng, edit, root=False)
        assert reply["ok"] is True, reply
    vs = store.read(path).cfg.virtual_servers[0]
    assert (vs.name, vs.monitor.kind, vs.monitor.script_user) == ("renamed", "program", "root")
    assert eng.cfg.virtual_servers[0].monitor.program.startswith("/bin/sh")
    # what runs is still root's: another program, under any kind or name, is refused
    before = path.read_bytes()
    for edit in (lambda d: d["virtual_server"][0]["monitor"].update(program="/bin/sh -c 'id > /tmp/y' %h"),
                 lambda d: d["virtual_server"][0]["monitor"].update(kind="tcp", program="/bin/true"),
                 lambda d: d["virtual_server"][0].update(name="web", address="198.18.0.11",
                                                         monitor={"kind": "program", "program": "/bin/true",
                                                                  "script_user": "root"})):
        reply = put(eng, edit, root=False)
        assert reply["ok"] is False and "only root changes these" in reply["error"], reply
        assert path.read_bytes() == before
