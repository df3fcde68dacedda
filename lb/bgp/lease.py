"""What lb and its BGP speaker's agent share: routes, the lease and the agent's status file.

lb writes the lease, ``/run/lb/<instance>.bgp-lease.json``: the routes this director can serve,
who asked (lb's pid and its start time, so a reused pid does not count) and until when
(CLOCK_MONOTONIC seconds, the same clock in every process of the host).  lb renews it every
second.  The agent (lb.bgp.agent, a child of ExaBGP) announces the lease's routes while it
holds: once lb's process is gone, or lb has not renewed it in time (hung), it withdraws them.
A lease without an owner (pid 0) holds only until it expires: `lb stop --keep-dataplane` leaves
one ([bgp] lease + 30 s) so that an upgrade does not withdraw the routes while the next `lb run`
starts, which makes it its own at once (lb.bgp.announcer.Announcer.claim_kept).

The agent writes its status, ``/run/lb/<instance>.bgp-status.json``: its BGP sessions, what it
has announced, and why it withdrew (what `lb status` shows).  Both files are written whole
(rename) and are root's (0600).

This module is imported by the agent, which runs under ExaBGP: stdlib only.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

RUN_DIR = "/run/lb"


def lease_path(instance: str, run_dir: str = RUN_DIR) -> str:
    return os.path.join(run_dir, f"{instance}.bgp-lease.json")


def status_path(instance: str, run_dir: str = RUN_DIR) -> str:
    return os.path.join(run_dir, f"{instance}.bgp-status.json")


@dataclass(frozen=True, order=True)
class Route:
    """One announced prefix (a VIP's /32 or /128) with its path attributes."""

    prefix: str
    med: int | None = None
    communities: tuple[str, ...] = ()

    def announce(self) -> str:
        """ExaBGP's text API command announcing it (to every neighbor of its family)."""
        words = [f"announce route {self.prefix} next-hop self"]
        if self.med is not None:
            words.append(f"med {self.med}")
        if self.communities:
            words.append(f"community [{' '.join(self.communities)}]")
        return " ".join(words)

    def withdraw(self) -> str:
        return f"withdraw route {self.prefix} next-hop self"

    def to_json(self) -> dict:
        return {"prefix": self.prefix, "med": self.med, "communities": list(self.communities)}

    @classmethod
    def from_json(cls, d: dict) -> "Route":
        med = d.get("med")
        return cls(str(d["prefix"]), None if med is None else int(med), tuple(str(c) for c in d.get("communities", ())))


@dataclass(frozen=True)
class Lease:
    routes: tuple[Route, ...]
    owner_pid: int               # lb's pid; 0: nobody (held until it expires)
    owner_start: int             # the owner's start time (/proc/PID/stat field 22)
    expires: float               # CLOCK_MONOTONIC seconds


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (None when it is gone or a zombie):
    with the pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def write_json(path: str, doc: dict) -> None:
    """Write ``doc`` to ``path`` whole (a reader sees the old or the new file), mode 0600."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_lease(path: str, routes, owner_pid: int, lease_s: float, now: float | None = None) -> None:
    now = time.monotonic() if now is None else now
    start = process_start(owner_pid) if owner_pid else 0
    write_json(path, {"routes": [r.to_json() for r in sorted(routes)], "owner_pid": owner_pid,
                      "owner_start": start or 0, "expires": now + lease_s})


def read_lease(path: str) -> Lease | None:
    """The lease at ``path``; None when there is none or it cannot be read (nothing is announced)."""
    doc = read_json(path)
    if doc is None:
        return None
    try:
        return Lease(tuple(Route.from_json(r) for r in doc["routes"]), int(doc["owner_pid"]),
                     int(doc["owner_start"]), float(doc["expires"]))
    except (KeyError, TypeError, ValueError):
        return None


def lease_holds(lease: Lease | None, now: float, start_of=process_start) -> str | None:
    """None while ``lease`` holds; else why not (the agent withdraws everything then)."""
    if lease is None:
        return "no lease from lb"
    if lease.owner_pid and start_of(lease.owner_pid) != lease.owner_start:
        return f"lb (pid {lease.owner_pid}) is gone"
    if now > lease.expires:
        return f"lb has not renewed its lease for {now - lease.expires:.1f} s past its term"
    return None
