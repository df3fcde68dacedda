"""One-shot health checks (the probes Piranha's nanny ran), as asyncio coroutines.

:func:`run_check` runs one :class:`CheckSpec` and never raises (except for task cancellation):
every error becomes ``CheckResult(ok=False, detail=...)``.  An error of the director's own
resources (LOCAL_ERRNOS: out of file descriptors, of memory, of processes) says nothing of the
real server: its result is ``not_run``, which lb.health.monitor does not count against the server.

``CheckSpec.connect_timeout`` bounds the *whole* check (connect, send, reading the reply, or the
program's run time), not only the TCP handshake.  Reads are bounded in bytes too: send/expect
reads READ_LIMIT bytes, HTTP(S) at most BODY_LIMIT bytes of headers and of body whatever a
Content-Length or chunk size announces (a chunk of 2^40 bytes is read BODY_LIMIT bytes far, then
the connection is closed) -- with a digest, DIGEST_LIMIT bytes of body pass through the MD5,
BODY_LIMIT of them kept for body_regex -- and a program at most lb.programs.OUTPUT_LIMIT bytes
of output (it is killed when it prints more).

A "program" check runs through lb.programs (no shell, as ``CheckSpec.user``, minimal
environment) with ``LB_HOST`` and ``LB_PORT`` set to the real server's address and port (what
%h and %p give in its arguments).  Timed out (``connect_timeout``) or printing too much, it is
killed with every process below it, those it moved out of its process group (``setsid``) too;
what a program that exits on its own moved out of it is left running (lb.programs).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import shlex
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable

from lb import programs

__all__ = ["KINDS", "LOCAL_ERRNOS", "CheckSpec", "CheckResult", "decode_escapes", "program_argv", "run_check"]

KINDS = ("tcp", "send_expect", "udp", "http", "https", "program")

READ_LIMIT = 4096        # send_expect: bytes read while looking for `expect`
BODY_LIMIT = 64 * 1024   # http(s): body bytes matched against body_regex; also the header limit
DIGEST_LIMIT = 16 << 20  # http(s) digest: body bytes taken into the MD5 (streamed, not kept)
SNIP = 120               # characters of a reply quoted in a detail

# A check that fails with one of these never reached the real server: the director is out of
# file descriptors (its own or the system's), socket buffers, memory, or processes (fork)
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN})

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", '"': '"'}
_SUBST = re.compile(r"%([hp%])")


@dataclass(frozen=True)
class CheckSpec:
    kind: str                 # one of KINDS
    host: str
    port: int
    send: str = ""            # send_expect/udp payload; escapes decoded by decode_escapes()
    expect: str = ""          # plain substring, or a regex (re.search) when use_regex
    use_regex: bool = False
    reply_encoding: str = "utf-8"   # udp: how a reply becomes text; "latin-1" keeps one character a byte
    path: str = "/"
    host_header: str | None = None   # default: host[:port]; also the TLS SNI/verify name for https
    status: tuple[int, int] = (200, 399)   # inclusive range of good HTTP status codes
    body_regex: str | None = None
    digest: str = ""          # http(s): MD5 of the body, lowercase hex (keepalived's genhash); "" none
    tls_verify: bool = True
    program: str = ""         # argv template (shlex-split); %h -> host, %p -> port, %% -> %
    misc_dynamic: bool = False   # program: exit 2-255 passes too (keepalived: up, weight status - 2)
    connect_timeout: float = 3.0   # budget for the whole check
    user: str | None = None   # program: run as this user (None: the daemon's own)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown health check kind {self.kind!r} (expected one of {', '.join(KINDS)})")
        lo, hi = self.status
        object.__setattr__(self, "status", (int(lo), int(hi)))


@dataclass
class CheckResult:
    ok: bool
    detail: str
    duration: float           # seconds the check took
    at: float                 # time.time() when the check finished
    not_run: bool = False     # the director could not run it (LOCAL_ERRNOS): nothing of the server


def decode_escapes(s: str) -> str:
    r"""Decode the backslash escapes \n \r \t \\ \' \" in `s`; any other backslash is kept as is."""
    out = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in _ESCAPES:
            out.append(_ESCAPES[s[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def program_argv(spec: CheckSpec) -> list[str]:
    """The argv of a "program" check: shlex-split, then %h/%p/%% substituted inside each argument."""
    subst = {"h": spec.host, "p": str(spec.port), "%": "%"}
    return [_SUBST.sub(lambda m: subst[m.group(1)], arg) for arg in shlex.split(spec.program)]


def _snip(data: bytes | str) -> str:
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    return repr(data[:SNIP] + ("..." if len(data) > SNIP else ""))


def _matches(pattern: str, use_regex: bool, text: str) -> bool:
    if use_regex:
        return re.search(pattern, text) is not None
    return pattern in text


def _close(writer: asyncio.StreamWriter, abort: bool = False) -> None:
    """Close the connection; ``abort``: at once, without TLS's close_notify exchange (a server
    that never answers it would hold the socket for asyncio's ssl_shutdown_timeout, 30 s)."""
    try:
        if abort:
            writer.transport.abort()
        else:
            writer.close()
    except Exception:
        pass


def _deadline(spec: CheckSpec) -> float:
    return asyncio.get_running_loop().time() + spec.connect_timeout


async def _check_tcp(spec: CheckSpec) -> tuple[bool, str]:
    async with asyncio.timeout_at(_deadline(spec)):
        _, writer = await asyncio.open_connection(spec.host, spec.port)
    _close(writer)
    return True, "connected"


async def _check_send_expect(spec: CheckSpec) -> tuple[bool, str]:
    deadline = _deadline(spec)
    async with asyncio.timeout_at(deadline):
        reader, writer = await asyncio.open_connection(spec.host, spec.port)
    buf = b""
    try:
        try:
            async with asyncio.timeout_at(deadline):
                if spec.send:
                    writer.write(decode_escapes(spec.send).encode("utf-8"))
                    await writer.drain()
                if not spec.expect:
                    return True, "connected" + (", sent" if spec.send else "")
                while len(buf) < READ_LIMIT:
                    chunk = await reader.read(READ_LIMIT - len(buf))
                    if not chunk:
                        break
                    buf += chunk
                    # a regex is judged on whole lines only: against a reply cut short by a
                    # segment boundary, "UP$" or "UP\b" would match the "UP" of "UPGRADING"
                    if (not spec.use_regex or buf.endswith(b"\n")) and \
                            _matches(spec.expect, spec.use_regex, buf.decode("utf-8", errors="replace")):
                        return True, f"matched {spec.expect!r}"
        except TimeoutError:
            # the reply as it stands at the deadline (a regex waiting for the end of a line)
            if spec.use_regex and buf and _matches(spec.expect, True, buf.decode("utf-8", errors="replace")):
                return True, f"matched {spec.expect!r}"
            return False, f"timed out waiting for {spec.expect!r}; received {_snip(buf)}"
        # closed, or READ_LIMIT read: the reply is complete as it is
        if spec.use_regex and _matches(spec.expect, True, buf.decode("utf-8", errors="replace")):
            return True, f"matched {spec.expect!r}"
        why = "connection closed" if len(buf) < READ_LIMIT else f"{READ_LIMIT} bytes read"
        return False, f"{why} without {spec.expect!r}; received {_snip(buf)}"
    finally:
        _close(writer)


class _UDPReply(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future):
        self.fut = fut

    def datagram_received(self, data, addr):
        if not self.fut.done():
            self.fut.set_result(data)

    def error_received(self, exc):   # ICMP port unreachable -> ConnectionRefusedError
        if not self.fut.done():
            self.fut.set_exception(exc)

    def connection_lost(self, exc):
        if not self.fut.done():
            self.fut.set_exception(exc or ConnectionError("socket closed"))


async def _check_udp(spec: CheckSpec) -> tuple[bool, str]:
    deadline = _deadline(spec)
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    # a socket of our own: asyncio's sendto() drops an empty datagram without a word
    sock = socket.socket(socket.AF_INET6 if _is_ipv6(spec.host) else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect((spec.host, spec.port))      # sends nothing; the peer's ICMP errors come to it
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDPReply(fut), sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        sock.send(decode_escapes(spec.send).encode("utf-8"))
        try:
            async with asyncio.timeout_at(deadline):
                data = await fut
        except TimeoutError:
            if not spec.expect:
                # keepalived's UDP_CHECK without require_reply: only an ICMP error (raised by
                # the connected socket, above) fails; a DNS server drops an empty datagram
                return True, f"no ICMP error within {spec.connect_timeout:g}s"
            return False, f"no reply within {spec.connect_timeout:g}s"
    finally:
        transport.close()
    if not spec.expect:
        return True, f"reply {_snip(data)}"
    if _matches(spec.expect, spec.use_regex, data.decode(spec.reply_encoding, errors="replace")):
        return True, f"matched {spec.expect!r}"
    return False, f"reply without {spec.expect!r}: {_snip(data)}"


def _is_ipv6(host: str) -> bool:
    return ":" in host


def _default_host_header(spec: CheckSpec, default_port: int) -> str:
    h = f"[{spec.host}]" if _is_ipv6(spec.host) else spec.host
    return h if spec.port == default_port else f"{h}:{spec.port}"


def _strip_port(host_header: str) -> str:
    if host_header.startswith("["):                      # [v6]:port
        return host_header[1:].split("]", 1)[0]
    if host_header.count(":") == 1:                     # name:port
        return host_header.split(":", 1)[0]
    return host_header


CHUNK_SIZE_DIGITS = 16   # hex digits of a chunk size (2^64): a longer one is not HTTP
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,%d}" % CHUNK_SIZE_DIGITS)
_STATUS_CODE = re.compile(r"[0-9]{3}")            # RFC 9112: exactly three ASCII digits
# RFC 9112 4: the whitespace a recipient may take for the status line's SP -- not the rest of
# what str.split() takes (\x1c-\x1f, \x85, \xa0 of a latin-1 line: "HTTP/1.1\x1e200" passed)
_STATUS_WS = " \t\x0b\x0c\r"
_STATUS_SEP = re.compile(f"[{_STATUS_WS}]+")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")      # ASCII digits (str.isdigit() takes '²'), < 2^63


async def _read_chunked(reader: asyncio.StreamReader, limit: int, feed: Callable[[bytes], None]) -> int:
    """Feed a chunked body's first ``limit`` bytes to ``feed``, piece by piece; never more is
    read, whatever the chunk sizes say (the caller closes the connection on the rest).  Returns
    the number of bytes fed."""
    got = 0
    try:
        while got < limit:
            line = await reader.readline()
            if not line:
                break
            token = line.split(b";", 1)[0].strip() or b"0"
            if not _CHUNK_SIZE.fullmatch(token):
                raise ValueError(f"chunk size {_snip(token)} is not a chunk size")
            size = int(token, 16)
            if size == 0:
                break
            while size and got < limit:
                part = await reader.read(min(size, limit - got, BODY_LIMIT))
                if not part:
                    return got
                feed(part)
                got += len(part)
                size -= len(part)
            if size:
                break                   # the limit fell inside this chunk
            end = await reader.readline()          # CRLF, or a bare LF (RFC 9112 2.2)
            if not end:
                break
            if end.rstrip(b"\r\n"):
                raise ValueError(f"chunk data followed by {_snip(end)}, not a line end")
    except asyncio.IncompleteReadError as e:
        part = e.partial[: max(0, limit - got)]
        feed(part)
        got += len(part)
    return got


async def _read_head(reader: asyncio.StreamReader) -> list[str]:
    """One response's status line and header lines, without their line ends.  A line ends with
    CRLF or a bare LF (RFC 9112 2.2: a recipient may take a bare LF; curl, http.client and
    keepalived read such answers).  IncompleteReadError when the connection closes first,
    LimitOverrunError past BODY_LIMIT bytes."""
    raw = bytearray()
    lines: list[str] = []
    while True:
        try:
            line = await reader.readline()
        except ValueError:                  # one line past the reader's limit (BODY_LIMIT)
            raise asyncio.LimitOverrunError("response headers too long", len(raw)) from None
        raw += line
        if len(raw) > BODY_LIMIT:
            raise asyncio.LimitOverrunError("response headers too long", len(raw))
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(bytes(raw), None)
        text = line[:-1].removesuffix(b"\r").decode("latin-1")
        if not text:
            if lines:
                return lines
            continue                        # an empty line before the status line
        lines.append(text)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], limit: int,
                     feed: Callable[[bytes], None]) -> int:
    """Feed the body's first ``limit`` bytes to ``feed`` as they come (BODY_LIMIT at most at a
    time); the number of bytes fed."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, limit, feed)
    length = headers.get("content-length", "")
    if _CONTENT_LENGTH.fullmatch(length):
        limit = min(int(length), limit)
    got = 0
    while got < limit:
        part = await reader.read(min(limit - got, BODY_LIMIT))
        if not part:
            break
        feed(part)
        got += len(part)
    return got


def _header_problem(what: str, value: str) -> str | None:
    """A Host header or path with a control character or a space would split the request: refused
    here too (the config loader already refuses such values)."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return f"refused: the {what} {value!r} holds a space or control character"
    return None


_TLS_CONTEXTS: dict[tuple, tuple[float, ssl.SSLContext]] = {}
TLS_CONTEXT_TTL = 300.0  # seconds a context (and the CA store it loaded) serves before it is made again
INTERIM_MAX = 8          # 1xx responses an http check reads past before its answer


def _tls_context(verify: bool) -> ssl.SSLContext:
    """A context shared by the https checks (one per verify mode and CA location): making one
    loads the system's CA store, ~20 ms here on the event loop, and a thousand checks made
    theirs at the same moment -- long enough for healthy servers' checks to time out.  Made
    again after TLS_CONTEXT_TTL, so an updated CA store is read without a restart."""
    key = (verify, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    now = time.monotonic()
    got = _TLS_CONTEXTS.get(key)
    if got is not None and now - got[0] < TLS_CONTEXT_TTL:
        return got[1]
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    _TLS_CONTEXTS[key] = (now, ctx)
    return ctx


async def _check_http(spec: CheckSpec) -> tuple[bool, str]:
    tls = spec.kind == "https"
    host_header = spec.host_header or _default_host_header(spec, 443 if tls else 80)
    ctx = server_hostname = None
    if tls:
        ctx = _tls_context(spec.tls_verify)
        server_hostname = _strip_port(spec.host_header) if spec.host_header else spec.host
    path = spec.path or "/"
    if not path.startswith("/"):
        path = "/" + path
    problem = _header_problem("path", path) or _header_problem("Host header", host_header)
    if problem:
        return False, problem
    request = (f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: lb-health\r\n"
               f"Accept: */*\r\nConnection: close\r\n\r\n").encode("utf-8")
    # a TLS close after a full answer waits for the server's close_notify no longer than a check
    shutdown = {"ssl_shutdown_timeout": spec.connect_timeout} if tls else {}
    async with asyncio.timeout_at(_deadline(spec)):
        reader, writer = await asyncio.open_connection(spec.host, spec.port, ssl=ctx,
                                                       server_hostname=server_hostname,
                                                       limit=BODY_LIMIT, **shutdown)
        answered = False        # else (a failure, the timeout) the connection is aborted
        try:
            writer.write(request)
            await writer.drain()
            for _ in range(INTERIM_MAX + 1):
                try:
                    lines = await _read_head(reader)
                except asyncio.IncompleteReadError as e:
                    return False, f"connection closed before the response headers; received {_snip(e.partial)}"
                except asyncio.LimitOverrunError:
                    return False, f"response headers longer than {BODY_LIMIT} bytes"
                parts = _STATUS_SEP.split(lines[0].strip(_STATUS_WS), 2)
                if len(parts) < 2 or not parts[0].startswith("HTTP/") or not _STATUS_CODE.fullmatch(parts[1]):
                    return False, f"malformed status line {_snip(lines[0])}"
                code = int(parts[1])
                # an interim response (103 Early Hints, an unasked-for 100 Continue) comes before
                # the answer: RFC 9110 15.2 has a client read on (101 would switch protocols)
                if not 100 <= code < 200 or code == 101:
                    break
            else:
                return False, f"more than {INTERIM_MAX} interim (1xx) responses"
            lo, hi = spec.status
            if not lo <= code <= hi:
                return False, f"status {code} not in {lo}-{hi}"
            if spec.body_regex is None and not spec.digest:
                answered = True
                return True, f"status {code}"
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            # the digest is taken as the body streams by (keepalived's genhash digests any
            # size: DIGEST_LIMIT bytes here, within the check's time); body_regex reads its start
            kept = bytearray()
            md5 = hashlib.md5(usedforsecurity=False)

            def feed(part: bytes) -> None:
                md5.update(part)
                kept.extend(part[:BODY_LIMIT - len(kept)])

            limit = DIGEST_LIMIT + 1 if spec.digest else BODY_LIMIT
            try:
                size = 0 if code in (204, 304) else await _read_body(reader, headers, limit, feed)
            except ValueError as e:             # a chunk size that is none
                return False, f"status {code}, malformed chunked body: {e}"
            answered = True
        finally:
            _close(writer, abort=not answered)
    body = bytes(kept)
    if spec.digest:
        if size > DIGEST_LIMIT:
            return False, f"status {code}, body of more than {DIGEST_LIMIT} bytes: no digest taken"
        got = md5.hexdigest()
        if got != spec.digest:
            return False, f"status {code}, body digest {got}, expected {spec.digest}"
        if spec.body_regex is None:
            return True, f"status {code}, body digest {got}"
    if re.search(spec.body_regex, body.decode("utf-8", errors="replace")):
        return True, f"status {code}, body matched {spec.body_regex!r}"
    return False, f"status {code}, body does not match {spec.body_regex!r}: {_snip(body)}"


async def _check_program(spec: CheckSpec) -> tuple[bool, str]:
    try:
        argv = program_argv(spec)
    except ValueError as e:
        return False, f"bad program {spec.program!r}: {e}"
    if not argv:
        return False, "no program given"
    try:
        res = await programs.run(argv, user=spec.user, timeout=spec.connect_timeout,
                                 env={"LB_HOST": spec.host, "LB_PORT": str(spec.port)})
    except programs.ProgramError as e:
        return False, str(e)
    out, err = bytes(res.stdout), bytes(res.stderr)
    if res.killed == "timeout":
        return False, f"timed out after {spec.connect_timeout:g}s; killed; stdout {_snip(out)}"
    if res.killed == "output":
        return False, f"printed more than {programs.OUTPUT_LIMIT} bytes; killed; stdout {_snip(out)}"
    text = out.decode("utf-8", errors="replace")
    rc = res.returncode
    if rc is None:          # SIGKILL did not end it: uninterruptible (a hung NFS mount, say)
        return False, f"did not end when killed (stuck in the kernel?); stdout {_snip(out)}"
    # keepalived's misc_dynamic reads 2-255 as up with weight rc - 2: up here, at the configured weight
    if rc != 0 and not (spec.misc_dynamic and rc >= 2):
        how = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        return False, f"{how}; stdout {_snip(out)}, stderr {_snip(err)}"
    if spec.expect and not _matches(spec.expect, spec.use_regex, text):
        return False, f"exit status {rc} but stdout lacks {spec.expect!r}: {_snip(out)}"
    return True, f"exit status {rc}" + (" (misc_dynamic: up)" if rc else "") + f"; stdout {_snip(out)}"


_CHECKS = {
    "tcp": _check_tcp,
    "send_expect": _check_send_expect,
    "udp": _check_udp,
    "http": _check_http,
    "https": _check_http,
    "program": _check_program,
}


async def run_check(spec: CheckSpec) -> CheckResult:
    """Run one check. Never raises (other than CancelledError): failures are ok=False with a detail."""
    t0 = time.monotonic()
    not_run = False
    try:
        fn = _CHECKS.get(spec.kind)
        if fn is None:
            ok, detail = False, f"unknown check kind {spec.kind!r}"
        else:
            ok, detail = await fn(spec)
    except TimeoutError:
        ok, detail = False, f"timed out after {spec.connect_timeout:g}s"
    except re.error as e:
        ok, detail = False, f"invalid regex: {e}"
    except ssl.SSLCertVerificationError as e:
        ok, detail = False, f"TLS certificate verification failed: {e.verify_message or e}"
    except ssl.SSLError as e:
        ok, detail = False, f"TLS error: {e.reason or e}"
    except ConnectionRefusedError:
        ok, detail = False, "connection refused"
    except OSError as e:
        msg = e.strerror or str(e) or type(e).__name__
        ok, detail = False, f"{msg}: {e.filename}" if e.filename else msg
        if e.errno in LOCAL_ERRNOS:
            not_run, detail = True, f"not run on this director: {detail}"
    except Exception as e:
        # (a bug's message can quote the whole answer: one line, bounded, as the others)
        ok, detail = False, f"{type(e).__name__}: {_snip(str(e))}"
    return CheckResult(ok=ok, detail=detail, duration=time.monotonic() - t0, at=time.time(), not_run=not_run)
