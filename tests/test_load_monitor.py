"""Load monitors (dynamic weight): reading a report, the weight it gives within its bounds, an
agent and a program asked for real (127.0.0.1, as tests/test_health.py), and the config keys
(TOML, lvs.cf's load_monitor and quiesce_server)."""
from __future__ import annotations

import asyncio
import textwrap

import pytest

from lb.config import ConfigError, loads, lvscf
from lb.config.model import LoadMonitor
from lb.health import LoadMonitorTask, LoadSpec, dynamic_weight, parse_report

HOST = "127.0.0.1"


@pytest.mark.parametrize("text, want", [
    ("75%\n", ("percent", 75.0)),
    ("up 50%\r\n", ("percent", 50.0)),          # HAProxy agents may add a state word
    ("ready,12.5%\n", ("percent", 12.5)),
    ("weight 3\n", ("weight", 3.0)),
    ("load 0.7", ("load", 0.7)),
    (" 13:36:23 up 3 days,  2:01,  1 user,  load average: 0.52, 0.58, 0.59\n", ("load", 0.52)),
    ("rs1  up  3 days,  2:01,  load average: 1.00, 0.50, 0.25\n", ("load", 1.0)),
    ("\n\n 40% \n", ("percent", 40.0)),
])
def test_parse_report(text, want):
    assert parse_report(text) == want


@pytest.mark.parametrize("text", ["", "up weight x", "weight x", "weight 2.5", "load -1", "hello 75",
                                  "load nan", "load NaN", "load inf", "load -inf", "weight inf", "load 1e999"])
def test_parse_report_refuses_what_it_cannot_read(text):
    with pytest.raises(ValueError, match="no load or weight"):
        parse_report(text)


@pytest.mark.parametrize("report, configured, lo, want", [
    (("percent", 50), 4, 1, 2),
    (("percent", 100), 4, 1, 4),
    (("percent", 0), 4, 1, 1),           # never below min_weight
    (("percent", 0), 4, 0, 0),           # min_weight 0: it may stop new connections
    (("percent", 300), 4, 1, 4),         # never above the configured weight
    (("weight", 3), 4, 1, 3),
    (("weight", 9), 4, 1, 4),
    (("weight", 0), 4, 2, 2),
    (("load", 0.0), 10, 1, 10),          # idle: full weight
    (("load", 1.0), 10, 1, 5),           # weight / (1 + load)
    (("load", 4.0), 10, 1, 2),
    (("load", 99.0), 10, 1, 1),
    (("weight", 5), 2, 3, 2),            # min_weight above the configured weight: configured wins
    (("percent", 1e308), 500, 1, 500),   # a percentage that overflows (inf): the configured weight
    (("weight", 1e308), 500, 1, 500),
])
def test_dynamic_weight_stays_within_bounds(report, configured, lo, want):
    assert dynamic_weight(report, configured, lo) == want


@pytest.mark.parametrize("text, weight", [
    ("drain\n", 0), ("DRAIN 99%\n", 0), ("maint\n", 0), ("down#upgrading to 2.4\n", 0),
    ("fail\n", 0), ("stopped\n", 0), ("75% drain", 0), ("up 50%\n", 2), ("ready\n", 4),
    ("UP\r\n", 4), ("READY 100%\n", 4), ("maxconn:30 up", 4), ("ready,12.5%", 1),
])
def test_haproxy_agent_words_set_the_weight(text, weight):
    """HAProxy's agent-check words were ignored and the weight kept: an agent answering
    'drain' (or down, maint, fail, stopped) left its server taking new connections at the last
    weight, 'ready' after a drain did not bring back the configured one.  Now the stop words
    quiesce it (weight 0, below min_weight too: the agent asked for it), up/ready alone restore
    the configured weight, and a number with up/ready is read as before."""
    assert dynamic_weight(parse_report(text), 4, 1) == weight


def test_an_agent_that_drains_then_is_ready_again():
    replies = [b"up 75%\n", b"drain\n", b"drain 75%\n", b"ready\n"]

    async def main():
        async def agent(reader, writer):
            writer.write(replies.pop(0))
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(agent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        seen = []
        task = LoadMonitorTask("k", LoadSpec("agent", HOST, port), 1.0, 4, 1, lambda k, w, d: seen.append((w, d)))
        for _ in range(4):
            await task.poll()
        server.close()
        await server.wait_closed()
        return task, seen

    task, seen = asyncio.run(asyncio.wait_for(main(), 10))
    assert seen == [(3, "up 75%"), (0, "drain"), (4, "ready")]
    assert task.weight == 4 and task.ok is True


def _poll(spec, configured=4, min_weight=1):
    seen = []
    task = LoadMonitorTask("k", spec, 1.0, configured, min_weight, lambda k, w, d: seen.append((w, d)))
    asyncio.run(asyncio.wait_for(task.poll(), 10))
    return task, seen


def test_agent_reply_sets_the_weight():
    replies = [b"50%\n", b"weight 3\n"]

    async def main():
        async def agent(reader, writer):
            writer.write(replies.pop(0))
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(agent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        seen = []
        task = LoadMonitorTask("k", LoadSpec("agent", HOST, port), 1.0, 4, 1, lambda k, w, d: seen.append((w, d)))
        await task.poll()
        await task.poll()
        server.close()
        await server.wait_closed()
        await task.poll()                                    # nobody listens now: weight kept
        return task, seen

    task, seen = asyncio.run(asyncio.wait_for(main(), 10))
    assert seen == [(2, "50%"), (3, "weight 3")]
    assert task.weight == 3 and task.ok is False and "connection refused; weight kept" in task.detail


def test_program_gets_h_and_p_without_a_shell():
    task, seen = _poll(LoadSpec("program", HOST, 8080, "/bin/echo load 1.0 %h:%p;reboot"))
    assert seen == [(2, "load 1.0 127.0.0.1:8080;reboot")]   # one argument, never a shell command
    assert task.ok is True


def test_program_killed_after_timeout_keeps_the_weight():
    task, seen = _poll(LoadSpec("program", HOST, 80, "/bin/sleep 30", timeout=0.3))
    assert seen == [] and task.weight is None and task.ok is False
    assert "no answer within 0.3s" in task.detail


def test_program_that_exits_leaving_a_helper_on_its_output_sets_the_weight(tmp_path):
    """The program prints its load and exits, leaving a background sleep that holds stdout: the
    weight is set from what it printed (it was "no answer within 2s"), and the sleep is killed
    with the program's process group."""
    from test_health import _gone

    pidfile = tmp_path / "pid"
    task, seen = _poll(LoadSpec("program", HOST, 80, f"/bin/sh -c 'sleep 30 & echo $! > {pidfile}; echo load 1.0'"))
    assert seen == [(2, "load 1.0")] and task.ok is True, task.detail
    assert _gone(int(pidfile.read_text())), "the background sleep outlived its load monitor"


def test_failing_program_and_unreadable_reply_keep_the_weight():
    task, seen = _poll(LoadSpec("program", HOST, 80, "/bin/false"))
    assert seen == [] and "exited with status 1" in task.detail
    task, seen = _poll(LoadSpec("program", HOST, 80, "/bin/echo busy"))
    assert seen == [] and "no load or weight" in task.detail


def test_agent_answering_nan_keeps_the_weight_and_the_monitor(caplog):
    """`load nan` (a broken agent) keeps the last weight; the monitor asks on (int(nan) used to
    raise out of poll() and end the monitor's task)."""
    replies = [b"weight 3\n", b"load nan\n", b"load inf\n", b"weight 1e400\n", b"50%\n"]

    async def main():
        async def agent(reader, writer):
            writer.write(replies.pop(0) if replies else b"50%\n")
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(agent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        seen = []
        task = LoadMonitorTask("k", LoadSpec("agent", HOST, port), 0.02, 4, 1, lambda k, w, d: seen.append(w))
        running = task.start()
        details = []
        for _ in range(500):
            await asyncio.sleep(0.01)
            if task.detail not in details:
                details.append(task.detail)
            if not replies and seen[-1:] == [2]:
                break
        alive = not running.done()
        running.cancel()
        server.close()
        await server.wait_closed()
        return task, seen, details, alive

    task, seen, details, alive = asyncio.run(asyncio.wait_for(main(), 10))
    assert alive and task.supervision.restarts == 0
    assert seen == [3, 2]                                   # nan, inf, 1e400: the weight stayed 3
    assert any("no load or weight in 'load nan" in (d or "") and d.endswith("weight kept") for d in details), details
    assert task.weight == 2 and task.ok


def test_load_program_printing_without_end_is_killed(tmp_path):
    done = tmp_path / "done"
    task, seen = _poll(LoadSpec("program", HOST, 80, f"/bin/sh -c 'yes load 0.5 | head -c 50000000; touch {done}'",
                                timeout=8))
    assert seen == [] and task.ok is False and "printed more than 4096 bytes; killed" in task.detail
    assert not done.exists()


# ---- configuration ----------------------------------------------------------------------------

TOML = """
[global]
public_interface = "eth0"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
quiesce_server = true
{load}
  [[virtual_server.real_server]]
  address = "198.18.1.11"
  weight = 4
"""


def test_toml_load_monitor_and_quiesce_server():
    cfg = loads(TOML.format(load='  [virtual_server.load_monitor]\n  kind = "agent"\n  port = 10000\n'
                                 '  interval = 1.5\n  min_weight = 0\n'))
    vs = cfg.virtual_servers[0]
    assert vs.quiesce_server is True
    assert vs.load_monitor == LoadMonitor(kind="agent", port=10000, interval=1.5, min_weight=0)
    assert loads(TOML.format(load="")).virtual_servers[0].load_monitor is None


@pytest.mark.parametrize("body, field, message", [
    ('kind = "agent"', "load_monitor.port", "needs `port`"),
    ('kind = "program"', "load_monitor.program", "needs `program`"),
    ('kind = "rup"', "load_monitor.kind", "unknown load monitor kind 'rup'"),
    ('kind = "agent"\n  port = 1\n  interval = 0', "load_monitor.interval", "more than 0"),
    ('kind = "agent"\n  port = 1\n  min_weight = -1', "load_monitor.min_weight", "between 0 and 65535"),
    ('kind = "agent"\n  port = 1\n  weight = 3', "load_monitor", "unknown key 'weight'"),
])
def test_toml_load_monitor_errors_name_line_and_field(body, field, message):
    text = TOML.format(load=f"  [virtual_server.load_monitor]\n  {body}\n")
    with pytest.raises(ConfigError) as e:
        loads(text, "lb.toml")
    (issue,) = e.value.issues
    assert issue.path == "lb.toml" and issue.field.startswith(f"virtual_server[0].{field}"), issue
    assert message in issue.message and issue.line is not None


CF = textwrap.dedent("""\
    network = direct
    rsh_command = {rsh}
    virtual web {{
         address = 198.18.0.10 eth0
         port = 80
         {extra}
         server rs1 {{
              address = 198.18.1.11
              weight = 4
         }}
    }}
""")


@pytest.mark.parametrize("word, rsh, program", [("uptime", "ssh", "ssh %h uptime"), ("uptime", "rsh", "rsh %h uptime"),
                                                ("rup", "rsh", "rup %h")])
def test_lvscf_load_monitor_words_run_piranhas_commands(word, rsh, program):
    text = CF.format(rsh=rsh, extra=f"load_monitor = {word}\n     quiesce_server = 1")
    cfg = lvscf.loads(text)
    vs = cfg.virtual_servers[0]
    assert vs.load_monitor == LoadMonitor(kind="program", program=program) and vs.quiesce_server
    out = lvscf.dumps(cfg, {"global": {"rsh_command": rsh}})
    assert f"load_monitor = {word}" in out and "quiesce_server = 1" in out
    assert lvscf.loads(out) == cfg


def test_lvscf_ruptime_is_a_warning_with_the_alternatives():
    cfg = lvscf.loads(CF.format(rsh="rsh", extra="load_monitor = ruptime"), "lvs.cf")
    assert cfg.virtual_servers[0].load_monitor is None  # the configured weights stay
    (issue,) = [w for w in cfg.warnings if w.field == "virtual[web].load_monitor"]
    assert issue.line == 6 and issue.message.startswith("ruptime has no effect")
    assert "rwhod" in issue.message and "uptime" in issue.message and "agent" in issue.message


def test_lvscf_none_is_no_load_monitor_and_lb_keys_round_trip():
    assert lvscf.loads(CF.format(rsh="rsh", extra="load_monitor = none")).virtual_servers[0].load_monitor is None
    cfg = loads(TOML.format(load='  [virtual_server.load_monitor]\n  kind = "agent"\n  port = 10000\n'
                                 '  interval = 0.5\n  timeout = 1\n  min_weight = 0\n'))
    out = lvscf.dumps(cfg)
    assert "lb_load_monitor_kind = agent" in out and "lb_load_monitor_port = 10000" in out
    assert lvscf.loads(out) == cfg
    assert loads(lvscf.dumps_toml(cfg)) == cfg
    with pytest.raises(ConfigError) as e:
        lvscf.loads(out.replace("lb_load_monitor_port = 10000", "lb_load_monitor_port = x"), "lvs.cf")
    assert e.value.issues[0].field == "virtual[web].lb_load_monitor_port"


def test_load_program_runs_as_script_user_with_a_minimal_environment(monkeypatch):
    """A load monitor's program, like a check's, runs as script_user (nobody by default), not as
    the root daemon, and without the daemon's environment."""
    import os
    import pwd

    from lb.config.model import DEFAULT_SCRIPT_USER
    from lb.health.load import ask

    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    assert LoadMonitor(kind="program", program="/bin/true").script_user == DEFAULT_SCRIPT_USER == "nobody"
    monkeypatch.setenv("LB_SECRET_OF_THE_DAEMON", "s3cret")
    out = asyncio.run(ask(LoadSpec("program", HOST, 8080, "/bin/sh -c 'id -u; id -g; env'", user="nobody")))
    nobody = pwd.getpwnam("nobody")
    lines = out.splitlines()
    assert lines[:2] == [str(nobody.pw_uid), str(nobody.pw_gid)], out
    env = dict(line.split("=", 1) for line in lines[2:] if "=" in line)
    assert (env.get("LB_HOST"), env.get("LB_PORT")) == (HOST, "8080") and "LB_SECRET_OF_THE_DAEMON" not in env, out


def test_an_agents_escape_sequences_reach_lb_status_escaped():
    """A real server's agent answering its weight with terminal escape sequences (clear the
    screen, set the window title): `lb status` printed them raw to the operator's terminal
    (the load monitor's detail); now they are written escaped, and the weight is still set."""
    reply = b"weight 3 \x1b]0;owned\x07\x1b[2J\xc2\x9b31m\r\n"     # \xc2\x9b: U+009B, the C1 CSI

    async def main():
        async def agent(reader, writer):
            writer.write(reply)
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(agent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        seen = []
        task = LoadMonitorTask("k", LoadSpec("agent", HOST, port), 1.0, 4, 1, lambda k, w, d: seen.append((w, d)))
        await task.poll()
        server.close()
        await server.wait_closed()
        return task, seen

    task, seen = asyncio.run(asyncio.wait_for(main(), 10))
    assert seen == [(3, task.detail)] and task.ok is True
    assert task.detail == "weight 3 \\x1b]0;owned\\x07\\x1b[2J\\x9b31m", task.detail
    assert all(c.isprintable() for c in task.detail)


@pytest.mark.parametrize("program, words", [
    ("/usr/local/bin/check %h | grep OK", "'|'"),
    ("/usr/bin/curl -sf http://%h:%p/ >/dev/null 2>&1", "'>/dev/null', '2>&1'"),
    ("/usr/bin/rup %h && echo up", "'&&'"),
])
def test_a_program_written_for_a_shell_is_a_warning(program, words):
    """lb runs check and load programs without a shell: a pipe or a redirection written in one
    reached the program as arguments without a word (the check was its first command's exit
    status alone).  Now the config says so, at the monitor's and the load monitor's program."""
    cfg = loads(TOML.format(load=f'  [virtual_server.monitor]\n  kind = "program"\n  program = "{program}"\n'
                                 f'  [virtual_server.load_monitor]\n  kind = "program"\n  program = "{program}"\n'))
    msgs = {w.field: w.message for w in cfg.warnings}
    for field in ("virtual_server[0].monitor.program", "virtual_server[0].load_monitor.program"):
        assert field in msgs, msgs
        assert msgs[field].startswith(f"{words} reach the program as arguments: lb runs programs without a shell")
    plain = loads(TOML.format(load='  [virtual_server.monitor]\n  kind = "program"\n'
                                   '  program = "/bin/sh -c \'check %h | grep OK\'"\n'))
    assert [w for w in plain.warnings if "shell" in w.message] == []
