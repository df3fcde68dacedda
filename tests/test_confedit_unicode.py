"""A config-put whose document holds text no file can hold (a lone surrogate, "\\ud800" in the
request's JSON) is refused with a clear error naming the field: the daemon answered with a
UnicodeEncodeError from deep in the checks or the writer instead."""
from __future__ import annotations

import asyncio
import copy
import json

from lb import control
from test_web import DaemonEngine, write_config

S = "\ud800"


def test_a_lone_surrogate_in_an_edit_is_refused_naming_the_field(tmp_path):
    path = write_config(tmp_path / "c.toml", weight="3")
    eng = DaemonEngine(path)
    before = path.read_bytes()
    running = eng.cfg
    edits = (
        (lambda d: d["global"].update(public_interface="e" + S), "global.public_interface"),
        (lambda d: d["virtual_server"][0].update(device="e" + S), "virtual_server[0].device"),
        (lambda d: d["virtual_server"][0].update(monitor={"kind": "program", "program": "/bin/true " + S}),
         "virtual_server[0].monitor.program"),
        (lambda d: d["virtual_server"][0]["real_server"][1].update({"x" + S: 1}),
         "virtual_server[0].real_server[1].x\\ud800"),
    )

    async def go():
        got = await eng("config")
        out = []
        for edit, _ in edits:
            doc = copy.deepcopy(got["document"])
            edit(doc)
            # as the socket delivers it: a JSON request line, "\ud800" escaped in it
            req = control.parse_request(json.dumps({"cmd": "config-put", "document": doc,
                                                    "version": got["config"]["version"]}).encode())
            out.append(await eng.control(req))
        return out

    for reply, (_, field) in zip(asyncio.run(go()), edits):
        assert reply["ok"] is False, reply
        assert reply["error"].startswith(f"{field}: not valid Unicode text"), reply
        assert "nothing was changed" in reply["error"]
        json.dumps(reply).encode()  # the answer itself goes back over the socket
        assert path.read_bytes() == before
        assert eng.cfg is running
