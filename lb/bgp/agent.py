"""The ExaBGP process-API helper: `python -m lb.bgp.agent --lease FILE --status FILE`.

ExaBGP starts it (the `process lb` of the configuration lb.bgp.speaker writes) and reads its
standard output as commands ("announce route ...", "withdraw route ..."); it writes the agent's
standard input with ExaBGP's JSON events (the sessions' state changes) and its answers ("done",
"error").  Every POLL_S the agent reads lb's lease (lb.bgp.lease) and makes ExaBGP's routes
those of the lease while it holds, and none once it does not: the speaker's own watchdog, so a
director whose lb is gone (kill -9, crash) or hung stops attracting traffic even though ExaBGP
outlives lb.

If the agent dies, ExaBGP starts it again (its routes stay; the new agent takes the announced
set from the status file when it finds the same ExaBGP); if it keeps dying, ExaBGP stops
(exabgp.api.terminate), which closes the sessions and so withdraws everything.  If ExaBGP
dies, the agent reads end-of-file and exits; the router drops the closed sessions' routes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import sys
import time

from lb.bgp.lease import Route, lease_holds, process_start, read_json, read_lease, write_json

POLL_S = 0.2          # how often the lease is read: the watchdog's reaction time
STATUS_EVERY_S = 1.0  # the status file is rewritten at least this often (lb sees the agent alive)
MAX_LINE = 1 << 20    # ExaBGP's JSON lines are small; anything longer is dropped
# ExaBGP 4.2 writes a session's "down" event by hand, with the reason as it is: a NOTIFICATION's
# data from the peer (decoded, not escaped) puts control characters, a backslash or a newline in
# it, and the line is no JSON.  The event's peer and state come before the reason.
_STATE_EVENT = re.compile(r'"type"\s*:\s*"state"')
_PEER = re.compile(r'"peer"\s*:\s*"([0-9A-Fa-f.:]{2,45})"')
_STATE = re.compile(r'"state"\s*:\s*"([a-z]{1,20})"')
_REASON = re.compile(r'"reason"\s*:\s*"(.*)')


def printable(text: str, most: int = 200) -> str:
    """``text`` as `lb status` may print it: no control character (a peer's, or ExaBGP's, could
    drive the operator's terminal), at most ``most`` characters."""
    return "".join(c if c.isprintable() else "?" for c in text[:most])


def salvage_state(line: str) -> dict | None:
    """The neighbor, state and reason of a state event ExaBGP wrote as no valid JSON; None when
    ``line`` is not one."""
    if not _STATE_EVENT.search(line):
        return None
    peer, state = _PEER.search(line), _STATE.search(line)
    if peer is None or state is None:
        return None
    n: dict = {"address": {"peer": peer.group(1)}, "state": state.group(1)}
    reason = _REASON.search(line)
    if reason is not None:
        n["reason"] = reason.group(1).rstrip().removesuffix("}").rstrip().removesuffix("}").rstrip() \
            .removesuffix('"')
    return {"type": "state", "neighbor": n}


class Agent:
    """The decisions, without I/O of its own: ``step`` gives the commands for ExaBGP."""

    def __init__(self, lease_path: str, status_path: str, speaker_pid: int, *,
                 clock=time.monotonic, wall=time.time, start_of=process_start):
        self.lease_path = lease_path
        self.status_path = status_path
        self.speaker_pid = speaker_pid
        self.clock, self.wall, self.start_of = clock, wall, start_of
        self.announced: dict[str, Route] = {}
        self.neighbors: dict[str, dict] = {}
        self.withdrawn_because: str | None = None
        self.errors = 0
        self.bad_lines = 0          # lines from ExaBGP that were neither JSON nor an answer
        self.last_bad: str | None = None
        self.dirty = True
        self._last_status = 0.0
        # a respawned agent under the same ExaBGP: what that ExaBGP announces is in the status
        prev = read_json(status_path)
        if prev and prev.get("speaker_pid") == speaker_pid:
            try:
                self.announced = {r.prefix: r for r in map(Route.from_json, prev.get("announced", []))}
                self.neighbors = {str(k): dict(v) for k, v in prev.get("neighbors", {}).items()}
            except (KeyError, TypeError, ValueError, AttributeError):
                self.announced, self.neighbors = {}, {}

    def step(self) -> list[str]:
        """ExaBGP commands that make its routes the lease's (or none when the lease does not hold)."""
        now = self.clock()
        lease = read_lease(self.lease_path)
        why = lease_holds(lease, now, self.start_of)
        want = {} if why is not None or lease is None else {r.prefix: r for r in lease.routes}
        if why != self.withdrawn_because:
            self.withdrawn_because = why
            self.dirty = True
        out = [r.withdraw() for p, r in sorted(self.announced.items()) if p not in want]
        out += [r.announce() for p, r in sorted(want.items()) if self.announced.get(p) != r]
        if out:
            self.announced = want
            self.dirty = True
        return out

    def on_line(self, line: str) -> None:
        """One line from ExaBGP: a JSON event, or the answer to a command."""
        line = line.strip()
        if line in ("done", ""):
            return
        if line == "error":
            self.errors += 1
            self.dirty = True
            return
        try:
            # strict=False: a control character in a string (a peer's NOTIFICATION data in a
            # "down" event's reason) does not lose the event
            msg = json.loads(line, strict=False)
        except (ValueError, RecursionError):     # not JSON, or nested deeper than the parser goes
            msg = salvage_state(line)
            if msg is None:
                self.bad_lines += 1
                self.last_bad = printable(line)
                self.dirty = True
                return
        if not isinstance(msg, dict) or msg.get("type") != "state":
            return
        n = msg.get("neighbor")
        if not isinstance(n, dict):
            return
        addr = n.get("address") if isinstance(n.get("address"), dict) else {}
        asn = n.get("asn") if isinstance(n.get("asn"), dict) else {}
        peer = str(addr.get("peer", "?"))
        state = str(n.get("state", "?"))
        entry = self.neighbors.setdefault(peer, {})
        if entry.get("state") != state:
            entry["since"] = self.wall()
            if state == "up":
                entry["ups"] = entry.get("ups", 0) + 1
        entry.update(state=state, local=addr.get("local"), peer_as=asn.get("peer"), local_as=asn.get("local"))
        if "reason" in n:
            entry["reason"] = printable(str(n["reason"]))
        elif state == "up":
            entry.pop("reason", None)
        self.dirty = True

    def write_status(self, force: bool = False) -> None:
        now = self.clock()
        if not (force or self.dirty or now - self._last_status >= STATUS_EVERY_S):
            return
        write_json(self.status_path, {
            "agent_pid": os.getpid(), "speaker_pid": self.speaker_pid, "updated": self.wall(), "updated_mono": now,
            "neighbors": self.neighbors, "announced": [r.to_json() for _, r in sorted(self.announced.items())],
            "withdrawn_because": self.withdrawn_because, "errors": self.errors,
            "bad_lines": self.bad_lines, "last_bad": self.last_bad})
        self._last_status = now
        self.dirty = False


def run(agent: Agent, stdin, stdout) -> int:
    """The loop: ExaBGP's lines in, commands out, until ExaBGP closes our standard input."""
    buf = b""
    fd = stdin.fileno()
    while True:
        for cmd in agent.step():
            stdout.write(cmd + "\n")
        stdout.flush()
        agent.write_status()
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if not ready:
            continue
        data = os.read(fd, 65536)
        if not data:
            agent.write_status(force=True)
            return 0          # ExaBGP is gone
        buf += data
        *lines, buf = buf.split(b"\n")
        if len(buf) > MAX_LINE:
            buf = b""
        for line in lines:
            agent.on_line(line.decode("utf-8", "replace"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lb.bgp.agent", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lease", required=True)
    ap.add_argument("--status", required=True)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))    # ExaBGP stopping: nothing to undo
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    agent = Agent(args.lease, args.status, os.getppid())
    try:
        return run(agent, sys.stdin, sys.stdout)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main())
