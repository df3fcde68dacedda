"""A send_expect monitor's send and expect strings with line breaks (TOML decodes "\\r\\n" in a
basic string) or a NUL survive a save of its Monitoring form by a browser as they were: a one-line
<input type=text> cannot hold a line break (the browser strips them from its value) nor a NUL
(U+FFFD), so the form shows them as escapes (those of lb.health.decode_escapes, and \\uXXXX) and
reads them back.  expect was shown raw (its CR LF lost at every save) and send's NUL became
U+FFFD."""
from __future__ import annotations

import html
import re

import pytest

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
    """The value a browser submits for a text input: its attribute with line breaks stripped, a
    NUL as U+FFFD."""
    m = re.search(r'<input type=text id="[^"]*" name="%s" value="([^"]*)"' % re.escape(name), page)
    assert m, name
    return html.unescape(m.group(1)).replace("\r", "").replace("\n", "").replace("\0", "\ufffd")


def save_as_a_browser(console, more=None):
    """The Monitoring form of "web" posted as a browser would, send and expect untouched, interval 7."""
    async def body(client):
        await login(client)
        page = await (await client.get("/virtual/monitor?vs=web")).text()
        data = {**await form_of(client, "/virtual/monitor?vs=web"), "vs": "web", "monitor.kind": "send_expect",
                "monitor.send": browser_value(page, "monitor.send"),
                "monitor.expect": browser_value(page, "monitor.expect"), "monitor.interval": "7",
                "load.kind": "none", **(more or {})}
        r = await client.post("/virtual/monitor", data=data, allow_redirects=False)
        assert r.status == 303, await r.text()
    run(console, body)


def test_send_is_shown_with_escapes_not_line_breaks():
    f = next(f for f in forms.MONITOR if f.key == "send")
    text = forms.text_of(f, SEND)
    assert "\n" not in text and "\r" not in text
    assert decode_escapes(text) == SEND


@pytest.mark.parametrize("key", ["send", "expect"])
@pytest.mark.parametrize("value", [SEND, "PING\0\r\n", "HTTP/1\\.[01] \\d+\r\n", "C:\\\\n\\", "\x1b[0m\x7f\t"],
                         ids=["crlf", "nul", "regex", "backslashes", "controls"])
def test_send_and_expect_read_back_as_they_were_shown(key, value):
    f = next(f for f in forms.MONITOR if f.key == key)
    text = forms.text_of(f, value)
    assert not set(text) & {"\r", "\n", "\0"}
    assert forms.value_of(f, text) == (True, value)


def test_a_browser_save_of_the_monitoring_form_keeps_the_send_strings_line_breaks(tmp_path, pwfile):
    console = make_console(tmp_path, pwfile, CONFIG.format(name="web", weight="3", web="") + MONITOR)
    path = console.daemon.cfg.path
    assert lbconfig.load(path).virtual_servers[0].monitor.send == SEND

    save_as_a_browser(console)
    m = lbconfig.load(path).virtual_servers[0].monitor
    assert m.interval == 7
    assert decode_escapes(m.send) == SEND


def test_an_untouched_monitoring_form_saves_send_and_expect_byte_for_byte(tmp_path, pwfile):
    monitor = MONITOR.replace('GET / HTTP/1.0', 'PING\\u0000').replace('"HTTP/1."', '"^\\\\+OK\\r\\n"') + \
        "use_regex = true\n"
    console = make_console(tmp_path, pwfile, CONFIG.format(name="web", weight="3", web="") + monitor)
    eng = console.daemon
    path = eng.cfg.path
    was = lbconfig.load(path).virtual_servers[0].monitor
    assert (was.send, was.expect) == ("PING\0\r\n\r\n", "^\\+OK\r\n")

    save_as_a_browser(console, {"monitor.use_regex": "on"})
    saved = lbconfig.load(path).virtual_servers[0].monitor
    assert (saved.send, saved.expect, saved.interval) == (was.send, was.expect, 7)
    assert eng.cfg.virtual_servers[0].monitor == saved           # and the daemon runs that


@pytest.mark.parametrize("value", [5e-05, 1e-05, 0.0001, 2.5, 0.1 + 0.2, 86399.99999, 1e-10])
def test_a_number_field_reads_back_what_it_shows(value):
    """A float of the file that Python writes with an exponent (reentry = 0.00005 is "5e-05") was
    shown so, and the form read "5e-05" back as text, not a number: the untouched Monitoring
    form was refused ("expected a number of seconds").  Shown without an exponent now."""
    f = next(f for f in forms.MONITOR if f.key == "reentry")
    text = forms.text_of(f, value)
    assert "e" not in text
    assert forms.value_of(f, text) == (True, value)
