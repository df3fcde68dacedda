"""A send_expect monitor's send string with line breaks (TOML decodes "\\r\\n" in a basic string)
survives a save of its Monitoring form by a browser: a one-line <input type=text> cannot hold a
line break (the browser strips them from its value), so the form shows the escapes the check
decodes again (lb.health.decode_escapes)."""
from __future__ import annotations

import html
import re

from lb import config as lbconfig
from lb.health import decode_escapes
from lb.web import forms
from test_web import CONFIG, form_of, login, make_console, pwfile, run  # noqa: F401 (pwfile: the fixture)

SEND = "GET / HTTP/1.0\r\n\r\n"
MONITOR = '''
[virtual_server.monitor]
kind = "send_expect"
send = "GET / HTTP/1.0\\r\\n\\r\\n"
expect = "HTTP/1."
'''


def browser_value(page: str, name: str) -> str:
    """The value a browser submits for a text input: its attribute with line breaks stripped."""
    m = re.search(r'<input type=text id="[^"]*" name="%s" value="([^"]*)"' % re.escape(name), page)
    assert m, name
    return html.unescape(m.group(1)).replace("\r", "").replace("\n", "")


def test_send_is_shown_with_escapes_not_line_breaks():
    f = next(f for f in forms.MONITOR if f.key == "send")
    text = forms.text_of(f, SEND)
    assert "\n" not in text and "\r" not in text
    assert decode_escapes(text) == SEND


def test_a_browser_save_of_the_monitoring_form_keeps_the_send_strings_line_breaks(tmp_path, pwfile):
    console = make_console(tmp_path, pwfile, CONFIG.format(name="web", weight="3", web="") + MONITOR)
    path = console.daemon.cfg.path
    assert lbconfig.load(path).virtual_servers[0].monitor.send == SEND

    async def body(client):
        await login(client)
        page = await (await client.get("/virtual/monitor?vs=web")).text()
        data = {**await form_of(client, "/virtual/monitor?vs=web"), "vs": "web", "monitor.kind": "send_expect",
                "monitor.send": browser_value(page, "monitor.send"),
                "monitor.expect": browser_value(page, "monitor.expect"), "monitor.interval": "7",
                "load.kind": "none"}
        r = await client.post("/virtual/monitor", data=data, allow_redirects=False)
        assert r.status == 303, await r.text()
    run(console, body)
    m = lbconfig.load(path).virtual_servers[0].monitor
    assert m.interval == 7
    assert decode_escapes(m.send) == SEND
