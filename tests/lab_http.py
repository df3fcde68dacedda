"""HTTP through the lab's VIP, as the namespace tests use it (one copy for all of them)."""
from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from pathlib import Path

from lb.lab import VIP

LB = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "lb")

# The client's test connections take their ports from this cycle, below the kernel's ephemeral
# range (32768-60999), never one a live director entry still holds.  In DR the director sees
# only the client's half: a finished connection waits in FIN_WAIT for tcpfin (120 s), and a SYN
# from its port lands on that entry and its real server (IPVS's conn_reuse_mode 1 reschedules
# TIME_WAIT and CLOSE only).  The kernel picks ports at random, so with ~100 such entries about
# one connection in 140 would reuse one and break a test's round-robin order or counts.
_CLIENT_PORTS = itertools.cycle(range(20000, 32768))


def client_port() -> int:
    return next(_CLIENT_PORTS)


def connect(lab, vip=VIP, timeout=3.0, port=80):
    """A TCP connection from the client to vip:port, from a port no earlier one used."""
    return lab.connect("client", vip, port, timeout, sport=client_port())


def http_get(lab, vip=VIP, timeout=3.0, path="/"):
    """(status, body) of one HTTP/1.0 request from the client, from a port no earlier one used."""
    return lab.http_get("client", vip, 80, path, timeout, sport=client_port())


def get(lab, n=1, vip=VIP):
    """n HTTP/1.0 requests, each on a new connection to the VIP; the reply bodies, in order."""
    bodies = []
    for _ in range(n):
        status, body = http_get(lab, vip)
        assert status == 200
        bodies.append(body.strip())
    return bodies


def request(sock):
    """One HTTP/1.1 keep-alive request on an open socket; the body of the reply."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    for _ in range(64):  # bounded; each recv is bounded by the socket timeout
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?im)^content-length:\s*(\d+)\r?$", head)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert m, head
            if len(rest) >= int(m.group(1)):
                return rest[: int(m.group(1))].decode().strip()
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed by peer after {buf!r}")
        buf += chunk
    raise AssertionError(f"no complete HTTP reply: {buf!r}")


# ---- wrk from the client namespace (bounded in time), its report parsed ------------------------

WRK_TOTALS = re.compile(r"(\d+) requests in ")
WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


_started: list[subprocess.Popen] = []


def wrk(lab, seconds: int, conns: int = 3, host: str | None = None) -> subprocess.Popen:
    """wrk from the client namespace against the VIP, for `seconds` (bounded); kill_wrk() ends
    whatever a failed test left running."""
    p = lab.popen("client", ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "2s",
                             f"http://{host or lab.VIP}/"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _started.append(p)
    return p


def kill_wrk() -> None:
    while _started:
        p = _started.pop()
        if p.poll() is None:
            p.kill()
        p.communicate()


def wrk_result(p: subprocess.Popen, timeout: float) -> dict:
    """requests, and errors by kind (connect, read, write, timeout, status), from wrk's report."""
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError("wrk did not finish in time") from None
    assert p.returncode == 0, out
    m = WRK_TOTALS.search(out)
    assert m, out
    res = {"requests": int(m.group(1)), "connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0,
           "text": out}
    m = WRK_SOCKET.search(out)
    if m:
        res.update(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    m = WRK_NON2XX.search(out)
    if m:
        res["status"] = int(m.group(1))
    return res


def stop_wrk(p: subprocess.Popen, after: float) -> dict:
    """wrk's report once it has gone on `after` more seconds of load (the event under test is
    over; a server wrongly left in the table would fail a third of the reconnects meanwhile);
    wrk must still be running then, else its load did not span the event."""
    time.sleep(after)                     # load time after the event, not a wait for a state
    assert p.poll() is None, "wrk ended before the event was over: its load did not span it"
    p.send_signal(signal.SIGINT)          # wrk stops and prints its report
    return wrk_result(p, 30)


def errors(res: dict) -> int:
    return sum(res[k] for k in ("connect", "read", "write", "timeout", "status"))


def wait_until(pred, timeout: float, what: str):
    """pred()'s first truthy value, polled every 50 ms; fails after `timeout` s (a bound on a
    wait for a state, never a speed target)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# ---- /metrics of lb run in the director's namespace -------------------------------------------

METRICS_LISTEN = "127.0.0.1:9640"     # the [metrics] listen address the lab tests give lb run


def scrape(lab, listen: str = METRICS_LISTEN) -> dict:
    """{(name, frozenset(labels)): value}, scraped from inside the director's namespace and parsed
    with prometheus_client's parser, as Prometheus reads it."""
    from prometheus_client.parser import text_string_to_metric_families

    text = lab.run("director", ["curl", "-sf", "--max-time", "20", f"http://{listen}/metrics"], timeout=30).stdout
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def one(samples: dict, name: str, **labels):
    """The value of the one sample of `name` whose labels include `labels`."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def lb_counters(instance: str = "lab") -> dict[str, int]:
    """`lb list --counters --exact` of the lab's director: {data path event or table tally: count}"""
    p = subprocess.run([LB, "list", "--counters", "--exact", "--instance", instance], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    out = {}
    for line in p.stdout.splitlines():
        m = re.match(r"^(.{33})\s*(\d+)$", line)
        if m:
            out[m.group(1).strip()] = int(m.group(2))
    return out
