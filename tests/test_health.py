"""lb.health: checks against 127.0.0.1 servers started here, and the nanny state machine."""

import asyncio
import dataclasses
import hashlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lb.health import (CheckResult, CheckSpec, Monitor, NannyPolicy, decode_escapes,
                       program_argv, run_check)

HOST = "127.0.0.1"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


_held: list[socket.socket] = []


def free_port(kind=socket.SOCK_STREAM) -> int:
    """A port that refuses.  TCP: bound and never listening, and kept bound for the rest of the
    run, so no other process can take it between here and the check (a bound, not listening
    socket answers a SYN with RST).  UDP: bound then closed (a bound socket would swallow the
    datagram; the UDP check accepts "no reply" too)."""
    s = socket.socket(socket.AF_INET, kind)
    s.bind((HOST, 0))
    if kind == socket.SOCK_STREAM:
        _held.append(s)
        return s.getsockname()[1]
    with s:
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# decode_escapes

@pytest.mark.parametrize("src, want", [
    (r"a\nb", "a\nb"),
    (r"a\rb", "a\rb"),
    (r"a\tb", "a\tb"),
    (r"a\\b", "a\\b"),
    (r"a\'b", "a'b"),
    (r'a\"b', 'a"b'),
    (r"GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.0\r\n\r\n"),
    (r"a\xb", r"a\xb"),          # unknown escape: left as is
    (r"\d+", r"\d+"),
    ("trailing\\", "trailing\\"),
    (r"\\n", "\\n"),             # escaped backslash, then a plain n
    ("", ""),
])
def test_decode_escapes(src, want):
    assert decode_escapes(src) == want


def test_spec_rejects_unknown_kind():
    with pytest.raises(ValueError):
        CheckSpec("icmp", HOST, 1)


def test_program_argv_substitution():
    spec = CheckSpec("program", "10.0.0.5", 8080, program="check --host=%h -p %p '%h %p' 100%%")
    assert program_argv(spec) == ["check", "--host=10.0.0.5", "-p", "8080", "10.0.0.5 8080", "100%"]


# --------------------------------------------------------------------------------------------
# tcp

def test_tcp_ok_and_refused():
    async def main():
        accepted = []

        async def handle(r, w):
            accepted.append(1)
            w.close()

        srv = await asyncio.start_server(handle, HOST, 0)
        port = srv.sockets[0].getsockname()[1]
        async with srv:
            ok = await run_check(CheckSpec("tcp", HOST, port))
            bad = await run_check(CheckSpec("tcp", HOST, free_port(), connect_timeout=2))
        return ok, bad

    before = time.time()
    ok, bad = run(main())
    # `at` is wall-clock time (the console shows it as a date): taken during the check
    assert ok.ok and ok.detail == "connected" and ok.duration >= 0 and before <= ok.at <= time.time()
    assert not bad.ok and "refused" in bad.detail


# --------------------------------------------------------------------------------------------
# send/expect: a banner + line echo server

async def banner_server(banner=b"220 mail.example ESMTP ready\r\n"):
    async def handle(r, w):
        w.write(banner)
        try:
            while line := await r.readline():
                w.write(b"ECHO " + line)
                await w.drain()
        finally:
            w.close()

    srv = await asyncio.start_server(handle, HOST, 0)
    return srv, srv.sockets[0].getsockname()[1]


def test_send_expect():
    async def main():
        srv, port = await banner_server()
        # a server that never says anything
        async def say_nothing(r, w):
            try:
                await r.read()
            finally:
                w.close()

        silent = await asyncio.start_server(say_nothing, HOST, 0)
        sport = silent.sockets[0].getsockname()[1]
        async with srv, silent:
            return await asyncio.gather(
                run_check(CheckSpec("send_expect", HOST, port, expect="ESMTP")),
                run_check(CheckSpec("send_expect", HOST, port, send=r"hello\tworld\r\n",
                                    expect="ECHO hello\tworld")),
                run_check(CheckSpec("send_expect", HOST, port, send=r"ping 42\n",
                                    expect=r"ECHO ping \d+\r?\n", use_regex=True)),
                run_check(CheckSpec("send_expect", HOST, port)),                    # connect only
                run_check(CheckSpec("send_expect", HOST, port, expect="220 other.example",
                                    connect_timeout=0.5)),
                run_check(CheckSpec("send_expect", HOST, port, send=r"ping x\n",
                                    expect=r"ECHO ping \d+", use_regex=True, connect_timeout=0.5)),
                run_check(CheckSpec("send_expect", HOST, port, expect="(", use_regex=True)),
                run_check(CheckSpec("send_expect", HOST, free_port(), expect="x")),
                silent_checks(sport),
            )

    async def silent_checks(sport):
        # the check's budget is its own connect_timeout: a 0.3 s check of a server that says
        # nothing gives up while a 60 s check of the same server, started first, still waits
        patient = asyncio.create_task(run_check(CheckSpec("send_expect", HOST, sport, expect="x",
                                                          connect_timeout=60)))
        await asyncio.sleep(0)
        res = await run_check(CheckSpec("send_expect", HOST, sport, expect="x", connect_timeout=0.3))
        waiting = not patient.done()
        patient.cancel()
        return res, waiting

    banner, plain, regex, connect, wrong, regex_bad, bad_regex, closed, (silent, patient_waits) = run(main())
    assert banner.ok, banner
    assert plain.ok, plain
    assert regex.ok, regex
    assert connect.ok and connect.detail == "connected"
    # the wrong banner / regex mismatch wait for the timeout or the 4096-byte limit
    assert not wrong.ok and "220 mail.example" in wrong.detail, wrong
    assert not regex_bad.ok and "ECHO ping x" in regex_bad.detail, regex_bad
    assert not bad_regex.ok and "regex" in bad_regex.detail
    assert not closed.ok and "refused" in closed.detail
    assert not silent.ok and silent.detail == "timed out waiting for 'x'; received ''", silent
    assert patient_waits and silent.duration >= 0.3     # its own deadline, not earlier, not another's


def test_send_expect_closed_without_match():
    async def main():
        async def handle(r, w):
            w.write(b"500 go away\r\n")
            w.close()

        srv = await asyncio.start_server(handle, HOST, 0)
        async with srv:
            return await run_check(CheckSpec("send_expect", HOST, srv.sockets[0].getsockname()[1],
                                             expect="220"))

    res = run(main())
    assert not res.ok and "closed" in res.detail and "500 go away" in res.detail


# --------------------------------------------------------------------------------------------
# udp

class UDPEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(b"PONG " + data, addr)


def test_udp():
    async def main():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(UDPEcho, local_addr=(HOST, 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            return await asyncio.gather(
                run_check(CheckSpec("udp", HOST, port, send=r"ping\n", expect="PONG ping\n")),
                run_check(CheckSpec("udp", HOST, port, send="x", expect=r"^PONG \w$", use_regex=True)),
                run_check(CheckSpec("udp", HOST, port, send="x")),        # any reply
                run_check(CheckSpec("udp", HOST, port, send="é", expect="PONG é")),   # read as UTF-8
                run_check(CheckSpec("udp", HOST, port, send="x", expect="NOPE")),
                run_check(CheckSpec("udp", HOST, free_port(socket.SOCK_DGRAM), send="x",
                                    expect="PONG", connect_timeout=0.5)),
            )
        finally:
            transport.close()

    ok, regex, anyreply, utf8, wrong, closed = run(main())
    assert ok.ok and regex.ok and anyreply.ok and utf8.ok, (ok, regex, anyreply, utf8)
    assert not wrong.ok and "PONG x" in wrong.detail
    # closed port: ICMP port unreachable (refused) on loopback, or at worst no reply
    assert not closed.ok and ("refused" in closed.detail or "no reply" in closed.detail)


def test_udp_without_expect_is_down_on_an_icmp_error_only():
    """keepalived's UDP_CHECK without require_reply: a server that never answers (a DNS server
    drops the empty datagram a UDP service's default monitor sends) is up; a closed port (ICMP
    port unreachable) is down.  example.toml's "dns" service, which has no monitor, gets it."""
    from lb.config import load
    from lb.engine import check_spec

    dns = next(vs for vs in load(Path(__file__).resolve().parents[1] / "configs" / "example.toml").virtual_servers
               if vs.name == "dns")
    spec, _ = check_spec(dns, dns.real_servers[0])
    assert (spec.kind, spec.send, spec.expect) == ("udp", "", "")
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # reads nothing, answers nothing
    silent.bind((HOST, 0))

    async def main():
        return await asyncio.gather(
            run_check(dataclasses.replace(spec, host=HOST, port=silent.getsockname()[1], connect_timeout=0.3)),
            run_check(dataclasses.replace(spec, host=HOST, port=free_port(socket.SOCK_DGRAM), connect_timeout=3)))

    with silent:
        quiet, closed = run(main())
    assert quiet.ok and quiet.detail == "no ICMP error within 0.3s", quiet
    assert not closed.ok and closed.detail == "connection refused", closed


# --------------------------------------------------------------------------------------------
# http / https

async def http_server(ssl_ctx=None):
    seen = []

    async def handle(r, w):
        head = await r.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        path = lines[0].split()[1]
        host = next(l.split(":", 1)[1].strip() for l in lines if l.lower().startswith("host:"))
        seen.append((path, host))
        if path == "/fail":
            body, status = b"oops", "500 Internal Server Error"
        else:
            body, status = b"<html>hello world</html>", "200 OK"
        if path == "/hints":            # interim responses first (RFC 9110 15.2), then the answer
            w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
        if path == "/hints-forever":
            w.write(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 20)
        if path == "/chunked":
            w.write(f"HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            w.write(b"6\r\nhello \r\n5\r\nchunk\r\n0\r\n\r\n")
        elif path == "/keepalive":      # ignores Connection: close; the checker must use Content-Length
            w.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            await w.drain()
            await r.read()              # until the checker closes its end
        else:
            w.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, HOST, 0, ssl=ssl_ctx)
    return srv, srv.sockets[0].getsockname()[1], seen


def test_http():
    async def main():
        srv, port, seen = await http_server()
        async with srv:
            res = await asyncio.gather(
                run_check(CheckSpec("http", HOST, port, path="/")),
                run_check(CheckSpec("http", HOST, port, path="/index", host_header="www.example",
                                    body_regex=r"hello \w+")),
                run_check(CheckSpec("http", HOST, port, path="/chunked", body_regex="hello chunk")),
                run_check(CheckSpec("http", HOST, port, path="/keepalive", body_regex="world",
                                    connect_timeout=2)),
                run_check(CheckSpec("http", HOST, port, path="/fail")),
                run_check(CheckSpec("http", HOST, port, path="/fail", status=(200, 599))),
                run_check(CheckSpec("http", HOST, port, path="/", body_regex="goodbye")),
                run_check(CheckSpec("http", HOST, free_port())),
                run_check(CheckSpec("http", HOST, port, path="/hints", body_regex="hello")),
                run_check(CheckSpec("http", HOST, port, path="/hints-forever")),
            )
        return res, seen, port

    (root, vhost, chunked, keepalive, fail, fail_ok, nomatch, closed, hints, forever), seen, port = run(main())
    # 100 and 103 before the answer: read past, the answer's status and body judged
    assert hints.ok and hints.detail.startswith("status 200"), hints
    assert not forever.ok and forever.detail == "more than 8 interim (1xx) responses", forever
    assert root.ok and root.detail == "status 200"
    assert vhost.ok and "body matched" in vhost.detail
    assert chunked.ok, chunked
    assert keepalive.ok, keepalive
    assert not fail.ok and "500" in fail.detail
    assert fail_ok.ok
    assert not nomatch.ok and "does not match" in nomatch.detail
    assert not closed.ok and "refused" in closed.detail
    hosts = dict(seen)
    assert hosts["/index"] == "www.example"
    assert hosts["/"] == f"{HOST}:{port}"


def test_http_digest():
    """keepalived's HTTP_GET digest: the MD5 of the body, as genhash prints it."""
    good = hashlib.md5(b"<html>hello world</html>").hexdigest()

    async def main():
        srv, port, _ = await http_server()
        async with srv:
            return await asyncio.gather(
                run_check(CheckSpec("http", HOST, port, path="/", digest=good)),
                run_check(CheckSpec("http", HOST, port, path="/chunked", digest=good)),
                run_check(CheckSpec("http", HOST, port, path="/", digest=good, body_regex="goodbye")),
            )

    same, other, both = run(main())
    assert same.ok and same.detail == f"status 200, body digest {good}"
    chunk = hashlib.md5(b"hello chunk").hexdigest()
    assert not other.ok and other.detail == f"status 200, body digest {chunk}, expected {good}"
    assert not both.ok and "does not match 'goodbye'" in both.detail


def test_http_digest_of_a_body_past_64_kib():
    """keepalived's genhash digests a body of any size: lb's digest streams the body through
    the MD5 up to DIGEST_LIMIT (16 MiB) bytes, with a Content-Length, chunked, or up to the close;
    a longer body fails, saying why."""
    from lb.health.checks import DIGEST_LIMIT

    big = bytes(range(256)) * (1 << 12)           # 1 MiB
    huge = b"x" * (DIGEST_LIMIT + 1)

    async def handle(r, w):
        path = (await r.readuntil(b"\r\n\r\n")).split()[1]
        body = huge if path == b"/huge" else big
        if path == b"/chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(body), 100_000):
                part = body[i:i + 100_000]
                w.write(b"%x\r\n%s\r\n" % (len(part), part))
            w.write(b"0\r\n\r\n")
        elif path == b"/close":
            w.write(b"HTTP/1.1 200 OK\r\n\r\n" + body)
        else:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_server(handle, HOST, 0)
        port = srv.sockets[0].getsockname()[1]
        good = hashlib.md5(big).hexdigest()
        async with srv:
            return await asyncio.gather(*(run_check(CheckSpec("http", HOST, port, path=p, digest=good))
                                          for p in ("/", "/chunked", "/close", "/huge")))

    length, chunked, close, huge_res = run(main())
    good = hashlib.md5(big).hexdigest()
    for res in (length, chunked, close):
        assert res.ok and res.detail == f"status 200, body digest {good}", res
    assert not huge_res.ok and huge_res.detail == (f"status 200, body of more than {DIGEST_LIMIT} bytes: "
                                                   f"no digest taken"), huge_res


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl not found (scripts/setup.sh installs it: make setup)")
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=10)
    return crt, key


def test_https(cert, monkeypatch):
    import ssl

    crt, key = cert
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)

    async def main():
        srv, port, seen = await http_server(ctx)
        async with srv:
            insecure = await run_check(CheckSpec("https", HOST, port, tls_verify=False, body_regex="hello"))
            untrusted = await run_check(CheckSpec("https", HOST, port))
            fail = await run_check(CheckSpec("https", HOST, port, path="/fail", tls_verify=False))
            monkeypatch.setenv("SSL_CERT_FILE", str(crt))       # trust the self-signed cert
            trusted = await run_check(CheckSpec("https", HOST, port, body_regex="hello"))
            by_name = await run_check(CheckSpec("https", HOST, port, host_header=f"localhost:{port}"))
            wrong_name = await run_check(CheckSpec("https", HOST, port, host_header="www.example"))
        return insecure, untrusted, fail, trusted, by_name, wrong_name

    insecure, untrusted, fail, trusted, by_name, wrong_name = run(main())
    # a hundred https checks at once load the CA store once, not a hundred times on the loop
    from lb.health import checks as checks_mod

    made = []
    real = ssl.create_default_context
    monkeypatch.setattr(checks_mod.ssl, "create_default_context", lambda *a, **k: made.append(1) or real(*a, **k))
    checks_mod._TLS_CONTEXTS.clear()

    async def many():
        srv, port, _ = await http_server(ctx)
        async with srv:
            return await asyncio.gather(*(run_check(CheckSpec("https", HOST, port, body_regex="hello"))
                                          for _ in range(100)))
    assert all(r.ok for r in run(many())) and len(made) == 1
    assert insecure.ok, insecure
    assert not untrusted.ok and "verif" in untrusted.detail, untrusted
    assert not fail.ok and "500" in fail.detail
    assert trusted.ok, trusted
    assert by_name.ok, by_name
    assert not wrong_name.ok and "verif" in wrong_name.detail, wrong_name


def test_https_check_that_times_out_aborts_its_connection(cert):
    """A server that completes the TLS handshake, then answers nothing -- not the request, not
    the close_notify of an orderly TLS close: the timed-out check aborts its connection, which
    the server sees closed, instead of asyncio holding the socket 30 s (ssl_shutdown_timeout)
    for a close_notify that never comes."""
    import os
    import ssl
    import threading

    crt, key = cert
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    listener = socket.create_server((HOST, 0))
    seen = {}

    def serve():
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:            # the handshake, done
            with socket.socket(fileno=os.dup(tls.fileno())) as raw:     # the TCP stream under it
                raw.settimeout(5)                                       # asyncio's TLS close: 30
                try:
                    while raw.recv(4096):       # the request, a close_notify: read, never answered
                        pass
                    seen["closed"] = "FIN"
                except ConnectionResetError:
                    seen["closed"] = "RST"
                except TimeoutError:
                    seen["closed"] = "still open after 5 s"

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    async def main():
        res = await run_check(CheckSpec("https", HOST, listener.getsockname()[1], tls_verify=False,
                                        connect_timeout=0.5))
        await asyncio.to_thread(server.join, 8)   # the loop runs on meanwhile (a TLS close would)
        return res

    with listener:
        res = run(main())
    assert not res.ok and res.detail == "timed out after 0.5s", res
    assert seen.get("closed") in ("FIN", "RST"), seen


# --------------------------------------------------------------------------------------------
# program

def test_program_ok_and_failures(tmp_path):
    script = tmp_path / "check.sh"
    script.write_text('#!/bin/sh\necho "checking $1 port $2"\n[ "$2" = 80 ]\n')
    script.chmod(0o755)

    async def main():
        return await asyncio.gather(
            run_check(CheckSpec("program", "10.1.2.3", 80, program=f"{script} %h %p")),
            run_check(CheckSpec("program", "10.1.2.3", 80, program=f"{script} %h %p",
                                expect="checking 10.1.2.3 port 80")),
            run_check(CheckSpec("program", "10.1.2.3", 80, program=f"{script} %h %p",
                                expect=r"port \d+$", use_regex=True)),
            run_check(CheckSpec("program", "10.1.2.3", 80, program=f"{script} %h %p", expect="DOWN")),
            run_check(CheckSpec("program", "10.1.2.3", 81, program=f"{script} %h %p")),   # exit 1
            run_check(CheckSpec("program", HOST, 1, program="/bin/false")),
            run_check(CheckSpec("program", HOST, 1, program=f"{tmp_path}/missing")),
            run_check(CheckSpec("program", HOST, 1, program="")),
        )

    ok, expect, regex, lacks, exit1, false, missing, empty = run(main())
    assert ok.ok and "checking 10.1.2.3 port 80" in ok.detail
    assert expect.ok and regex.ok, (expect, regex)
    assert not lacks.ok and "lacks" in lacks.detail
    assert not exit1.ok and "exit status 1" in exit1.detail
    assert not false.ok and "exit status 1" in false.detail
    assert not missing.ok and "No such file" in missing.detail
    assert not empty.ok


def _gone(pid: int, within: float = 5.0) -> bool:
    """The process exited (or is a zombie) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if (Path("/proc") / str(pid) / "stat").read_text().split()[2] == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("slow_start", [False, True])
def test_program_cancel_kills(tmp_path, monkeypatch, slow_start):
    """A check cancelled (a reload, a stop) kills its program and what the program started in
    the background.  slow_start: asyncio's setting up of the pipes takes a second, as on a
    loaded machine, and the cancel comes meanwhile -- it used to leave `sleep 30` running
    (asyncio's own clean-up kills the program alone), which a loaded CI run caught."""
    pidfile = tmp_path / "pid"
    script = tmp_path / "slow.sh"
    script.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)

    async def main():
        if slow_start:
            loop = asyncio.get_running_loop()
            started = loop.subprocess_exec

            async def slow(*a, **kw):
                out = await started(*a, **kw)
                await asyncio.sleep(1.0)
                return out
            monkeypatch.setattr(loop, "subprocess_exec", slow)
        task = asyncio.ensure_future(run_check(CheckSpec("program", HOST, 1, program=str(script),
                                                         connect_timeout=5)))
        # a loaded 2-core CI machine can take seconds to start the script: wait for it, bounded
        for _ in range(500):
            await asyncio.sleep(0.02)
            if pidfile.exists() and pidfile.read_text().strip():
                break
        assert pidfile.exists(), "the check program never started"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert _gone(int(pidfile.read_text()))


def test_program_timeout_killed(tmp_path):
    # the script's child (sleep) holds stdout open too: the whole process group must be killed
    pidfile = tmp_path / "pid"
    script = tmp_path / "slow.sh"
    script.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)

    async def main():
        return await run_check(CheckSpec("program", HOST, 1, program=str(script), connect_timeout=0.5))

    res = run(main())
    # killed at connect_timeout, not waited out: the script's `sleep 30` and its child are gone
    assert not res.ok and "killed" in res.detail
    assert _gone(int(pidfile.read_text())), "the program's child was not killed"


def test_program_no_shell(tmp_path):
    pwned = tmp_path / "pwned"

    async def main():
        return await run_check(CheckSpec("program", HOST, 80, program=f"/bin/echo %h;touch {pwned}",
                                         expect=f"{HOST};touch {pwned}"))

    res = run(main())
    assert res.ok, res                      # echo received the literal "127.0.0.1;touch" argument
    assert not pwned.exists()
    spec = CheckSpec("program", HOST, 80, program=f"/bin/echo %h;touch {pwned} $(id) `id` | x")
    assert program_argv(spec) == ["/bin/echo", f"{HOST};touch", str(pwned), "$(id)", "`id`", "|", "x"]


# --------------------------------------------------------------------------------------------
# Monitor.observe: the nanny state machine with a fake clock

class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


OK = CheckResult(True, "ok", 0.0, 0.0)
FAIL = CheckResult(False, "connection refused", 0.0, 0.0)


def make(policy=NannyPolicy(interval=2, timeout=10, reentry=30), **kw):
    calls = []
    clock = FakeClock()
    m = Monitor(("vs", "rs"), CheckSpec("tcp", HOST, 80), policy,
                lambda key, up, reason: calls.append((clock.t, key, up, reason)), clock, **kw)
    return m, clock, calls


def feed(m, clock, t, result):
    clock.t = t
    return m.observe(result)


def test_a_slow_success_does_not_put_the_down_a_check_later():
    """A keepalived checker with retry = 1 and delay_loop 0.5 (lb.config.keepalived: timeout =
    (retry + 1) x delay_loop) is down after 2 failed checks.  The silence runs from the start of
    the last success: one that took 20 ms, then failures that take none, used to need 3."""
    m, clock, calls = make(NannyPolicy(interval=0.5, timeout=1.0, reentry=0))
    assert feed(m, clock, 0.02, CheckResult(True, "HTTP 200", 0.02, 0.0)) is None   # started at 0
    assert feed(m, clock, 0.5, CheckResult(False, "HTTP 503", 0.0, 0.0)) is None
    assert feed(m, clock, 1.0, CheckResult(False, "HTTP 503", 0.0, 0.0)) is False
    assert (m.state, m.failures) == ("down", 2)
    assert calls[0][3] == "no successful check for 1.0s (timeout 1s): HTTP 503"


def test_single_failure_stays_up():
    m, clock, calls = make()
    assert m.state == "up" and m.last is None and m.changes == 0
    assert feed(m, clock, 0, OK) is None
    assert feed(m, clock, 2, FAIL) is None
    assert feed(m, clock, 4, OK) is None
    for t in range(6, 14, 2):          # failures for 8 s after the success at 4: still up
        assert feed(m, clock, t, FAIL) is None
    assert m.state == "up" and calls == [] and m.changes == 0
    assert m.last is FAIL


def test_down_after_timeout(caplog):
    m, clock, calls = make()
    # all failures from the start: the check before the first counts as passed (at -2), so the
    # server goes down at the 5th failed check, as one that passed once and then failed 5 times
    # (test_down_counts_from_last_success); counted from the first check it took a 6th
    for t in range(0, 8, 2):
        assert feed(m, clock, t, FAIL) is None
    with caplog.at_level("INFO", logger="lb.health"):
        assert feed(m, clock, 8, FAIL) is False
    assert m.state == "down" and m.changes == 1 and m.since == 8 and m.failures == 5
    assert len(calls) == 1 and calls[0][:3] == (8, ("vs", "rs"), False)
    assert calls[0][3] == ("no successful check since the first, 5 failed checks in a row (timeout 10s): "
                           "connection refused")
    assert any("up -> down" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert feed(m, clock, 10, FAIL) is None and len(calls) == 1      # no repeat


def test_down_counts_from_last_success():
    m, clock, calls = make()
    feed(m, clock, 0, OK)
    feed(m, clock, 100, OK)
    for t in range(102, 110, 2):
        assert feed(m, clock, t, FAIL) is None
    assert feed(m, clock, 110, FAIL) is False
    assert [c[0] for c in calls] == [110]


def test_reentry_needs_continuous_success():
    m, clock, calls = make(initial_up=False)
    assert m.state == "down"
    assert feed(m, clock, 0, OK) is None            # reentry clock starts at 0
    assert feed(m, clock, 20, OK) is None
    assert feed(m, clock, 22, FAIL) is None         # restarts the reentry clock
    assert feed(m, clock, 24, OK) is None           # ... from 24
    assert feed(m, clock, 40, OK) is None           # 30 s since 0, but only 16 s since 24
    assert feed(m, clock, 52, OK) is None           # 28 s
    assert calls == [] and m.state == "down"
    assert feed(m, clock, 54, OK) is True           # 30 s of continuous success
    assert m.state == "up" and m.changes == 1
    assert len(calls) == 1 and calls[0][:3] == (54, ("vs", "rs"), True)
    assert "checks succeeded for 30.0s" in calls[0][3]
    # back up: the timeout counts from the last success again
    assert feed(m, clock, 56, FAIL) is None
    assert feed(m, clock, 62, FAIL) is None
    assert feed(m, clock, 64, FAIL) is False        # 10 s after the last success at 54
    assert [c[2] for c in calls] == [True, False] and m.changes == 2


def test_full_cycle_transitions_exactly():
    m, clock, calls = make(NannyPolicy(interval=2, timeout=10, reentry=6))
    results = {}
    # up; fail from 2 on -> down at 10 (first observation at 0 succeeded); ok from 20 -> up at 26
    for t in range(0, 40, 2):
        r = OK if t == 0 or t >= 20 else FAIL
        results[t] = feed(m, clock, t, r)
    assert {t: v for t, v in results.items() if v is not None} == {10: False, 26: True}
    assert [(c[0], c[2]) for c in calls] == [(10, False), (26, True)]
    assert m.changes == 2


def test_zero_timeout_and_reentry():
    m, clock, calls = make(NannyPolicy(interval=1, timeout=0, reentry=0))
    assert feed(m, clock, 0, OK) is None
    assert feed(m, clock, 1, FAIL) is False
    assert feed(m, clock, 2, OK) is True
    assert [c[2] for c in calls] == [False, True]


def test_on_change_exception_is_contained():
    def boom(key, up, reason):
        raise RuntimeError("callback bug")

    m = Monitor("k", CheckSpec("tcp", HOST, 80), NannyPolicy(timeout=0), boom, lambda: 0.0)
    assert m.observe(FAIL, 0.0) is False and m.state == "down"


NOT_RUN = CheckResult(False, "not run on this director: Too many open files", 0.0, 0.0, not_run=True)


def test_a_check_not_run_is_no_observation(caplog, monkeypatch):
    """A director out of file descriptors cannot check its servers: that is not the servers'
    failure.  The state stays, the blind time counts neither as silence nor as being alive, and
    it is counted and logged (once a minute for all monitors)."""
    from lb.health import monitor as monitor_mod
    from lb.tasks import RateLimitedLog

    # the once-a-minute line is this test's own (an earlier test in the run may have logged one)
    monkeypatch.setattr(monitor_mod, "_not_run_log", RateLimitedLog(monitor_mod.log, 60.0))
    m, clock, calls = make()
    feed(m, clock, 0, OK)
    feed(m, clock, 2, FAIL)
    with caplog.at_level("WARNING", logger="lb.health"):
        for t in range(4, 100, 2):     # 96 s without a check: far over the 10 s timeout
            assert feed(m, clock, t, NOT_RUN) is None
    assert m.state == "up" and calls == [] and m.not_run == 48 and m.last is FAIL
    assert m.checks == 2 and m.failures == 1 and m.last_not_run is NOT_RUN
    lines = [r.getMessage() for r in caplog.records if "Too many open files" in r.getMessage()]
    assert len(lines) == 1 and "keep their states" in lines[0]
    # silence so far: 0 -> 2 and 98 -> now; down once it reaches 10 s of checks that ran
    assert feed(m, clock, 100, FAIL) is None       # 4 s
    assert feed(m, clock, 104, FAIL) is None       # 8 s
    assert feed(m, clock, 106, FAIL) is False      # 10 s
    assert "no successful check for 10.0s" in calls[0][3]
    # down: the reentry clock does not run while checks cannot
    assert feed(m, clock, 110, OK) is None
    for t in range(112, 200, 2):
        assert feed(m, clock, t, NOT_RUN) is None
    assert feed(m, clock, 226, OK) is None         # 198 -> 226: 28 s alive (110 -> 112 unseen too)
    assert feed(m, clock, 228, OK) is True         # 30 s of successes that ran
    assert "checks succeeded for 30.0s" in calls[1][3]


_LOW_FD_MONITORS = """
import asyncio, json, resource, sys
from lb.health import CheckSpec, Monitor, NannyPolicy
port, n = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
async def main():
    downs = []
    ms = [Monitor(i, CheckSpec("tcp", "127.0.0.1", port, connect_timeout=2), NannyPolicy(interval=0.2, timeout=0,
                  reentry=0), lambda k, up, why: downs.append(why)) for i in range(n)]
    for m in ms:
        m.offset = 0.0      # all at once (their first checks spread otherwise): out of descriptors
    tasks = [m.start() for m in ms]
    await asyncio.sleep(2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"downs": downs, "not_run": sum(m.not_run for m in ms), "checks": sum(m.checks for m in ms),
                      "ok": sum(m.checks - m.failures for m in ms), "up": sum(m.up for m in ms)}))
asyncio.run(main())
"""


def test_monitors_out_of_file_descriptors_keep_their_servers_up():
    """200 monitors in a process allowed 64 file descriptors, checking a server that answers:
    the checks that could not open a socket are not run, not failed -- no server goes down
    (before, every one did, with 'Too many open files' as the server's reason)."""
    import sys
    listener = socket.create_server((HOST, 0), backlog=4096)
    port = listener.getsockname()[1]
    stop = False

    def accept():
        while not stop:
            try:
                c, _ = listener.accept()
            except OSError:
                return
            c.close()

    import threading
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        out = subprocess.run([sys.executable, "-c", _LOW_FD_MONITORS, str(port), "200"], capture_output=True,
                             text=True, timeout=60)
    finally:
        stop = True
        listener.close()
        t.join(5)
    assert out.returncode == 0, out.stderr
    import json
    r = json.loads(out.stdout)
    assert r["not_run"] > 0, r            # the limit was hit (else the test shows nothing)
    assert r["ok"] > 200, r               # and checks that could run did
    assert r["downs"] == [] and r["up"] == 200, r
    assert "Too many open files" in out.stderr and "keep their states" in out.stderr


# --------------------------------------------------------------------------------------------
# Monitor.run against a real server, small intervals

def test_monitor_run():
    async def main():
        healthy = {"v": False}

        async def handle(r, w):
            w.write(b"OK\n" if healthy["v"] else b"SICK\n")
            w.close()

        srv = await asyncio.start_server(handle, HOST, 0)
        port = srv.sockets[0].getsockname()[1]
        events = asyncio.Queue()
        m = Monitor("rs1", CheckSpec("send_expect", HOST, port, expect="OK", connect_timeout=0.5),
                    NannyPolicy(interval=0.02, timeout=0.1, reentry=0.15),
                    lambda key, up, reason: events.put_nowait((key, up, time.monotonic())))
        async with srv:
            task = m.start()
            try:
                t0 = time.monotonic()
                key, up, t_down = await asyncio.wait_for(events.get(), 2)
                # the 5th failed check (the one before the first counting as passed), at 0.08 s
                assert (key, up) == ("rs1", False) and t_down - t0 >= 0.07
                healthy["v"] = True
                t1 = time.monotonic()
                key, up, t_up = await asyncio.wait_for(events.get(), 2)
                assert (key, up) == ("rs1", True) and t_up - t1 >= 0.14
                assert m.state == "up" and m.changes == 2 and m.last.ok
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert events.empty()

    run(main())


# --------------------------------------------------------------------------------------------
# bounded reads: a hostile or broken real server or program cannot grow the daemon

def _peak_rss_kb() -> int:
    import re

    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")     # VmHWM back to the current RSS


HUGE_CHUNK_SERVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
c.recv(4096)
c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % (1 << 40))
sent, block, deadline = 0, b"x" * (1 << 20), time.monotonic() + 20
try:                                # at most 256 MiB and 20 s: what a broken server might send
    while sent < 256 << 20 and time.monotonic() < deadline:
        c.sendall(block)
        sent += len(block)
except OSError:
    pass                            # the checker closed the connection: what it should do
print(sent >> 20, flush=True)
"""


def test_http_chunk_of_2_pow_40_bytes_is_not_buffered(tmp_path):
    """A server announcing a 2^40-byte chunk and streaming it: the check reads BODY_LIMIT bytes,
    decides, and closes; the daemon's peak RSS grows by less than a few MB (it used to buffer all
    the server sent until the timeout)."""
    import subprocess
    import sys

    script = tmp_path / "server.py"
    script.write_text(HUGE_CHUNK_SERVER)
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        _reset_peak_rss()
        before = _peak_rss_kb()
        res = run(run_check(CheckSpec("http", HOST, port, body_regex="never there", connect_timeout=8)))
        growth_mb = (_peak_rss_kb() - before) / 1024
        sent_mb = int(server.stdout.readline() or -1)
    finally:
        server.kill()
        server.wait()
    assert not res.ok and "body does not match" in res.detail, res
    assert growth_mb < 4, (growth_mb, res)
    assert sent_mb < 256, "the checker read on to the server's own limit"


def test_program_printing_without_end_is_cut_and_killed(tmp_path):
    done = tmp_path / "done"
    prog = f"/bin/sh -c 'head -c 300000000 /dev/zero; head -c 300000000 /dev/zero >&2; touch {done}'"
    _reset_peak_rss()
    before = _peak_rss_kb()
    res = run(run_check(CheckSpec("program", HOST, 80, program=prog, connect_timeout=8)))
    growth_mb = (_peak_rss_kb() - before) / 1024
    assert not res.ok and "printed more than 65536 bytes; killed" in res.detail, res
    assert not done.exists(), "the program ran to its end"
    assert growth_mb < 4, growth_mb


def test_program_runs_as_script_user_with_a_minimal_environment(monkeypatch):
    """The daemon is root; a check program runs as script_user (nobody here) with PATH, LANG,
    LB_HOST and LB_PORT only, in /."""
    import os
    import pwd

    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setenv("LB_SECRET_OF_THE_DAEMON", "s3cret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    # env -0 lists exactly the environment it got (NUL-separated), nothing added by a shell
    res = run(run_check(CheckSpec("program", "198.18.1.11", 8080, user="nobody",
                                  program="/usr/bin/env -0")))
    assert res.ok, res
    from lb import programs
    out = run(programs.run(["/usr/bin/env", "-0"], user="nobody", timeout=5,
                           env={"LB_HOST": "198.18.1.11", "LB_PORT": "8080"}))
    env = dict(kv.split("=", 1) for kv in bytes(out.stdout).decode().split("\0") if kv)
    assert env == {"PATH": programs.PATH, "LANG": "C.UTF-8", "LB_HOST": "198.18.1.11", "LB_PORT": "8080"}
    ids = run(programs.run(["/bin/sh", "-c", "id -u; id -g; id -G; pwd"], user="nobody", timeout=5))
    assert bytes(ids.stdout).decode().split() == [str(nobody.pw_uid), str(nobody.pw_gid), str(nobody.pw_gid), "/"]
    # and the check's own detail: what id -u printed
    res = run(run_check(CheckSpec("program", HOST, 1, user="nobody", program="/usr/bin/id -u",
                                  expect=f"^{nobody.pw_uid}$", use_regex=True)))
    assert res.ok, res
    bad = run(run_check(CheckSpec("program", HOST, 1, user="no-such-user-0", program="/bin/true")))
    assert not bad.ok and bad.detail == "no such user 'no-such-user-0' (script_user)"


def test_http_check_refuses_header_injection_from_a_spec():
    """The loader refuses such values; a CheckSpec made otherwise is refused too, before any
    connection."""
    res = run(run_check(CheckSpec("http", HOST, free_port(), path="/x\r\nX-Evil: 1")))
    assert not res.ok and res.detail.startswith("refused: the path"), res
    res = run(run_check(CheckSpec("http", HOST, free_port(), host_header="a\nb")))
    assert not res.ok and res.detail.startswith("refused: the Host header"), res


def test_monitor_task_restarts_after_an_unexpected_error(monkeypatch, caplog):
    """Monitor.start supervises run(): an exception is logged with the monitor and the task goes
    on checking (it used to end silently)."""
    import logging

    from lb.health import monitor as monitor_mod

    calls = {"n": 0}

    async def flaky(spec):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyError("a bug in a check")
        return CheckResult(True, "ok", 0.0, time.time())

    monkeypatch.setattr(monitor_mod, "run_check", flaky)

    async def main():
        m = Monitor("rs1", CheckSpec("tcp", HOST, 80), NannyPolicy(interval=0.01), None)
        task = m.start()
        for _ in range(400):
            await asyncio.sleep(0.01)
            if m.checks >= 3:
                break
        alive = not task.done()
        task.cancel()
        return m, alive

    with caplog.at_level(logging.ERROR, logger="lb.health"):
        m, alive = run(main())
    assert alive and m.checks >= 3 and m.supervision.restarts == 1
    assert "task health 'rs1' (<Monitor 'rs1' tcp 127.0.0.1:80 up>) failed (KeyError: 'a bug in a check')" in caplog.text
    assert "Traceback" in caplog.text


def test_a_check_programs_background_helpers_go_with_it():
    """A program that leaves a helper running in the background and exits 0: the helper is
    killed with the program's process group (it was left running, one more at every check)."""
    from lb import programs
    out = run(programs.run(["/bin/sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!; exit 0"], user=None, timeout=5))
    assert out.returncode == 0 and out.killed is None
    assert _gone(int(bytes(out.stdout).decode())), "the background sleep outlived its check"


def test_a_check_program_that_exits_leaving_a_helper_on_its_output_passes(tmp_path):
    """`sh -c 'sleep 30 & echo ok'`: the program exits 0 at once, but its background sleep holds
    stdout open.  The check is the program's own exit status (it was "timed out; killed" after
    connect_timeout), and the sleep is killed with the program's process group."""
    pidfile = tmp_path / "pid"
    prog = f"/bin/sh -c 'sleep 30 & echo $! > {pidfile}; echo ok'"
    res = run(run_check(CheckSpec("program", HOST, 1, program=prog, connect_timeout=5, expect="ok")))
    assert (res.ok, res.detail) == (True, "exit status 0; stdout 'ok\\n'"), res
    assert _gone(int(pidfile.read_text())), "the background sleep outlived its check"
    failing = f"/bin/sh -c 'sleep 30 & echo $! > {pidfile}; exit 3'"
    res = run(run_check(CheckSpec("program", HOST, 1, program=failing, connect_timeout=5)))
    assert (res.ok, res.detail) == (False, "exit status 3; stdout '', stderr ''"), res
    assert _gone(int(pidfile.read_text())), "the background sleep outlived its check"


def test_a_cancel_while_a_programs_output_is_drained_is_not_swallowed(tmp_path):
    """A check program exited, but a helper it left in a session of its own (a helper that left
    the process group is left running: lb.programs) still holds its output pipe: what it
    printed is read for up to DRAIN s, and a cancel then (a reload replacing the monitor, lb
    stop) must end the task -- it was swallowed, and the old monitor ran on.  (A timed-out
    program's helpers, out of its process group or not, are all killed now.)"""
    from lb import programs
    pidfile = tmp_path / "helper"
    prog = ["/bin/sh", "-c", f"setsid sh -c 'echo $$ > {pidfile}.new; mv {pidfile}.new {pidfile}; exec sleep 30' & "
                             f"until [ -e {pidfile} ]; do sleep 0.01; done; exit 0"]

    async def go():
        task = asyncio.ensure_future(programs.run(prog, user=None, timeout=5))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if pidfile.exists():
                break
        await asyncio.sleep(0.3)                 # the program exited: in the drain's wait now
        task.cancel()
        [res] = await asyncio.gather(task, return_exceptions=True)
        return res
    try:
        assert isinstance(run(go()), asyncio.CancelledError)
    finally:
        subprocess.run(["kill", "-9", pidfile.read_text().strip()])


def test_send_expect_regex_is_not_judged_on_a_reply_cut_short():
    """A reply split across segments: "STATUS: UP" then "GRADING\r\n".  The regex must be
    judged on the whole line, not on the first segment (where "UP$" and "UP\b" match)."""
    async def main():
        def writing(*chunks):
            """A server answering with ``chunks``, 0.1 s apart, then keeping the connection."""
            async def serve(r, w):
                try:
                    await r.read(100)
                    for i, chunk in enumerate(chunks):
                        if i:
                            await asyncio.sleep(0.1)
                        w.write(chunk)
                        await w.drain()
                    await asyncio.sleep(5)
                except (asyncio.CancelledError, ConnectionError):
                    pass
                finally:
                    w.close()
            return serve

        srv = await asyncio.start_server(writing(b"STATUS: UP", b"GRADING\r\n"), HOST, 0)
        # a prompt without a line end, the connection kept
        srv2 = await asyncio.start_server(writing(b"STATUS: UP"), HOST, 0)
        port, port2 = srv.sockets[0].getsockname()[1], srv2.sockets[0].getsockname()[1]
        async with srv, srv2:
            return await asyncio.gather(*[
                run_check(CheckSpec("send_expect", HOST, port, send=r"STATUS\r\n", expect=rx,
                                    use_regex=True, connect_timeout=1))
                for rx in (r"STATUS: UP$", r"STATUS: UP\b", r"STATUS: UP(?!GRADING)", r"STATUS: UP\w*\r?$")
            ], run_check(CheckSpec("send_expect", HOST, port2, send=r"STATUS\r\n", expect=r"STATUS: UP$", use_regex=True,
                                   connect_timeout=0.5)))

    dollar, boundary, lookahead, whole, prompt = run(main())
    assert not dollar.ok, dollar
    assert not boundary.ok, boundary
    assert not lookahead.ok, lookahead
    assert whole.ok, whole
    assert prompt.ok, prompt          # judged at the deadline on what arrived


def test_http_answers_with_bare_lf_line_ends():
    """RFC 9112 2.2: a bare LF ends a line too.  A server that writes its answer with "\\n"
    (printf | nc, a small embedded server) is alive; its chunked body is read whole."""
    answers = {
        "/lf": b"HTTP/1.0 200 OK\nContent-Type: text/plain\n\nOK ready\n",
        "/lf-chunks": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\nOK \n5\nready\n0\n\n",
        "/lf-500": b"HTTP/1.0 500 Oops\n\nOK ready\n",
        "/bad-chunk-end": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nOK xx\r\n0\r\n\r\n",
    }

    async def main():
        async def handle(r, w):
            try:
                request = await r.readuntil(b"\r\n\r\n")
                w.write(answers[request.split()[1].decode()])
                await w.drain()
            finally:
                w.close()

        srv = await asyncio.start_server(handle, HOST, 0)
        port = srv.sockets[0].getsockname()[1]
        async with srv:
            return await asyncio.gather(
                run_check(CheckSpec("http", HOST, port, path="/lf", connect_timeout=2)),
                run_check(CheckSpec("http", HOST, port, path="/lf", body_regex="OK ready", connect_timeout=2)),
                run_check(CheckSpec("http", HOST, port, path="/lf-chunks", body_regex="OK ready", connect_timeout=2)),
                run_check(CheckSpec("http", HOST, port, path="/lf-500", connect_timeout=2)),
                run_check(CheckSpec("http", HOST, port, path="/bad-chunk-end", body_regex="OK", connect_timeout=2)),
            )

    status, body, chunks, error, bad = run(main())
    assert status.ok and status.detail == "status 200", status
    assert body.ok, body
    assert chunks.ok, chunks
    assert not error.ok and "500" in error.detail, error
    assert not bad.ok and "malformed chunked body" in bad.detail, bad


@pytest.mark.parametrize("misc_dynamic", [False, True])
def test_a_program_that_does_not_end_when_killed_is_a_failure_that_says_so(monkeypatch, misc_dynamic):
    """A check program stuck in the kernel (a hung NFS mount) outlives its SIGKILL: lb.programs
    gives no exit status (None).  The check failed as "TypeError: '<' not supported between
    instances of 'NoneType' and 'int'"; now it says what happened."""
    from lb import programs

    async def stuck(argv, **kw):
        return programs.ProgramResult(None, bytearray(b"half"), bytearray())

    monkeypatch.setattr(programs, "run", stuck)
    spec = CheckSpec(kind="program", host="127.0.0.1", port=80, program="/bin/check %h", misc_dynamic=misc_dynamic)
    res = asyncio.run(run_check(spec))
    assert res.ok is False and res.detail == "did not end when killed (stuck in the kernel?); stdout 'half'", res.detail


# --------------------------------------------------------------------------------------------
# the first checks spread over the interval (no thundering herd at start)

def _keys(n):
    return [(("tcp", "198.18.0.10", 80), f"198.18.{1 + i // 250}.{1 + i % 250}", 80) for i in range(n)]


def test_first_checks_of_a_thousand_monitors_spread_over_the_interval():
    """1,000 real servers' monitors started together all checked (a program check: forked) at the
    same moment, every interval.  Their first checks now fall across the interval, about as
    many in each tenth of it, each server at the same place at every start."""
    from lb.health.load import LoadMonitorTask, LoadSpec
    policy = NannyPolicy(interval=2, timeout=10, reentry=30)
    mons = [Monitor(k, CheckSpec("program", k[1], 80, program="/bin/true"), policy, None) for k in _keys(1000)]
    offsets = [m.offset for m in mons]
    assert all(0 <= o < 2 for o in offsets)
    tenths = [0] * 10
    for o in offsets:
        tenths[int(o / 0.2)] += 1
    assert min(tenths) >= 50 and max(tenths) <= 150, tenths
    assert len(set(offsets)) == 1000
    again = Monitor(mons[7].key, mons[7].spec, policy, None)
    assert again.offset == mons[7].offset                       # stable per real server
    loads = [LoadMonitorTask(k, LoadSpec("program", k[1], 80, "/bin/true"), 5.0, 1, 1, None) for k in _keys(1000)]
    assert all(0 <= t.offset < 5 for t in loads) and len({int(t.offset) for t in loads}) == 5


def test_monitor_and_load_monitor_wait_their_offset_before_the_first_check_only(monkeypatch):
    """The order of events with asyncio.sleep recorded (no timing): the offset, then a check, then
    the interval's rest between checks; a restart after an error does not wait again."""
    from lb.health import load as load_mod
    from lb.health import monitor as monitor_mod
    from lb.health.load import LoadMonitorTask, LoadSpec
    events = []
    real_sleep = asyncio.sleep

    async def sleep(d):
        events.append(("sleep", round(d, 3)))
        await real_sleep(0)

    async def check(spec):
        events.append(("check",))
        return OK

    async def ask(spec):
        events.append(("ask",))
        return "50%"

    monkeypatch.setattr(monitor_mod, "run_check", check)
    monkeypatch.setattr(load_mod, "ask", ask)
    key = _keys(1)[0]
    m = Monitor(key, CheckSpec("tcp", key[1], 80), NannyPolicy(interval=100, timeout=10, reentry=30), None)
    lm = LoadMonitorTask(key, LoadSpec("agent", key[1], 10000), 100.0, 4, 1, None)
    assert 0 < m.offset < 100 and m.offset == lm.offset

    async def main(run, n):
        monkeypatch.setattr(asyncio, "sleep", sleep)
        task = asyncio.ensure_future(run())
        while sum(e[0] != "sleep" for e in events) < n:
            await real_sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.setattr(asyncio, "sleep", real_sleep)

    for obj, what in ((m, "check"), (lm, "ask")):
        events.clear()
        asyncio.run(main(obj.run, 2))
        assert events[0] == ("sleep", round(obj.offset, 3)) and events[1] == (what,)
        assert events[2][0] == "sleep" and events[2][1] > 99 and events[3] == (what,)
        events.clear()
        asyncio.run(main(obj.run, 1))               # run again (a supervised restart): no offset
        assert events[0] == (what,)


def _marked(marker: str) -> list[int]:
    """The live (not zombie) processes whose command line holds ``marker``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if marker.encode() in (d / "cmdline").read_bytes() and (d / "stat").read_text().rpartition(")")[2].split()[0] != "Z":
                out.append(int(d.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


@pytest.mark.parametrize("how", ["setsid", "double fork", "output"])
def test_a_timed_out_check_programs_setsid_helpers_are_killed_too(tmp_path, how):
    """A check program that started a helper out of its process group (`setsid sleep 60 &`, a
    daemon's double fork) and then hangs past its connect_timeout: the helper is killed with it.
    Only the process group was: the helper survived every check, one more each interval, until
    the machine ran out of pids.  ("output": killed for printing too much, the same.)"""
    import uuid

    marker = f"lbtest-{uuid.uuid4().hex}"
    sleep = tmp_path / marker                # a sleep whose command line holds the marker
    sleep.symlink_to(shutil.which("sleep"))
    script = tmp_path / "check.sh"

    def started(n):           # the helper, once it runs: its file, then the marked sleep
        return f"sh -c 'touch {tmp_path}/h{n}; exec {sleep} 6{n}'"
    helper = {"setsid": f"setsid {started(1)} &",
              "double fork": f"(setsid {started(1)} &) ; ({started(2)} &)",
              "output": f"setsid {started(1)} &"}[how]
    helpers = 2 if how == "double fork" else 1
    # the check goes on once its helpers run (a helper killed before its setsid proves nothing)
    wait = " ".join(f"[ -e {tmp_path}/h{n} ] &&" for n in range(1, helpers + 1))
    # ("output": it goes on after printing, so that it is killed for the output while it runs --
    # one that printed it all and exited first is a program that ended on its own, whose setsid'd
    # helpers are left, as keepalived leaves them: lb.programs)
    tail = "head -c 200000 /dev/zero; sleep 30" if how == "output" else f"exec {sleep} 30"
    script.write_text(f"#!/bin/sh\n{helper}\nuntil {wait} true; do sleep 0.01; done\n"
                      f"touch {tmp_path}/started\n{tail}\n")
    script.chmod(0o755)
    try:
        res = run(run_check(CheckSpec("program", HOST, 1, program=str(script), connect_timeout=1)))
        assert (tmp_path / "started").exists(), res
        assert not res.ok and "killed" in res.detail, res
        # SIGKILLed, a stopped helper still needs the CPU to end: on a loaded machine it may be
        # there a moment after the check returned (bounded wait; a survivor stays for its 60 s)
        deadline = time.monotonic() + 10
        while _marked(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _marked(marker) == [], f"left running after the check: {_marked(marker)}"
    finally:
        for pid in _marked(marker):
            subprocess.run(["kill", "-9", str(pid)])

