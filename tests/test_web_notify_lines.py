"""[ha] notify programs whose paths hold a comma survive a save of the Redundancy form: the form
gives one program a line (a textarea), not a comma-separated list that split them.  (A notify
entry is a program's absolute path, run with no shell and no arguments of its own: the loader
refuses one with spaces.)"""
from __future__ import annotations

import html
import os
import re

from lb import config as lbconfig
from test_web import CONFIG, form_of, login, make_console, pwfile, run  # noqa: F401 (pwfile: the fixture)

NOTIFY = ("/usr/local/lib/lb/page-ops,noc", "/usr/local/sbin/lb-role-changed")


def test_saving_the_redundancy_form_unchanged_keeps_notify_programs_with_commas(tmp_path, pwfile):
    key = tmp_path / "ha.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    ha = (f'\n[ha]\nprimary = "198.18.0.1"\nbackup = "198.18.0.2"\nkey_file = "{key}"\n'
          f'notify = [{", ".join(chr(34) + n + chr(34) for n in NOTIFY)}]\n')
    console = make_console(tmp_path, pwfile, CONFIG.format(name="web", weight="3", web=ha))
    path = console.daemon.cfg.path
    assert lbconfig.load(path).ha.notify == NOTIFY

    async def body(client):
        await login(client)
        page = await (await client.get("/redundancy")).text()
        data = {k: html.unescape(v) for k, v in re.findall(r'<input type=text id="[^"]*" name="([^"]*)" value="([^"]*)"',
                                                         page)}
        data.update({k: html.unescape(v) for k, v in re.findall(r'<textarea id="[^"]*" name="([^"]*)" rows=3>(.*?)'
                                                                 r'</textarea>', page, re.S)})
        data.update({k: "on" for k in re.findall(r'<input type=checkbox id="[^"]*" name="([^"]*)" checked>', page)})
        data.update(await form_of(client, "/redundancy"), ha_enabled="on")
        assert "ha.notify" in data
        r = await client.post("/redundancy", data=data, allow_redirects=False)
        assert r.status == 303, re.findall(r'<b>(.*?)</b>', await r.text())   # nothing changed: no restart needed
    run(console, body)
    assert lbconfig.load(path).ha.notify == NOTIFY
