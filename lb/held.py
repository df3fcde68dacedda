"""What a run of an instance holds on the host, recorded across runs: `/run/lb/<instance>.held`.

A stop that keeps the data plane (`lb stop --keep-dataplane`, systemd's restart, a crash) leaves
the XDP programs attached and the addresses up for the next run to adopt.  The next run's
configuration may no longer name some of them (`public_interface` changed, a VIP removed, a
nat_router removed, `[ha]` gone): without a record of what the earlier run held, nothing would
take those away.  The engine keeps this record current while it runs (after its start, each
reload and each role change, and at a stop that keeps the data plane) and the next start,
once its own attach and addresses are done, releases what the record names and its own
configuration does not (lb.engine.Engine._release_held): XDP programs only where the one
attached is still the program of the recorded id (lb.dataplane.attach.detach_held), addresses
only those the record names (lb.ha.addresses.release), IPVS sync daemons only when the new run
runs none.  A clean stop removes the file.

This module reads and writes the record; it touches neither addresses nor programs.  A record
that cannot be read (not JSON, not the shape below, not root's) is logged, naming the file, and
taken as no record.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from dataclasses import dataclass

from lb import files
from lb.dataplane.attach import HeldProgram

log = logging.getLogger("lb")

VERSION = 1
LIMIT = 4 << 20          # bytes: a record of thousands of VIPs is some 100 KiB


@dataclass(frozen=True)
class HeldAddress:
    """An address lb holds as the active director (a VIP, the nat_router) on its interface."""
    ifname: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class HeldSync:
    """A kernel IPVS sync daemon lb started: its state (master/backup), interface, SyncID."""
    state: str
    ifname: str
    syncid: int


@dataclass(frozen=True)
class Held:
    programs: tuple[HeldProgram, ...] = ()
    addresses: tuple[HeldAddress, ...] = ()
    sync: tuple[HeldSync, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.programs or self.addresses or self.sync)

    def merged(self, other: "Held") -> "Held":
        """self, and what of other self does not name: a program by its interface (self's own
        attach replaced other's there), an address by interface and address, a daemon by state."""
        ifs = {p.ifname for p in self.programs} | {p.ifindex for p in self.programs if p.ifindex}
        addrs = set(self.addresses)
        states = {d.state for d in self.sync}
        return Held(self.programs + tuple(p for p in other.programs if p.ifname not in ifs and p.ifindex not in ifs),
                    self.addresses + tuple(a for a in other.addresses if a not in addrs),
                    self.sync + tuple(d for d in other.sync if d.state not in states))

    def to_json(self, instance: str) -> str:
        return json.dumps({
            "version": VERSION, "instance": instance, "pid": os.getpid(),
            "xdp": [{"ifname": p.ifname, "ifindex": p.ifindex, "program": p.program, "prog_id": p.prog_id,
                     "flags": p.flags} for p in self.programs],
            "addresses": [{"ifname": a.ifname, "address": str(a.address)} for a in self.addresses],
            "ipvs_sync": [{"state": d.state, "ifname": d.ifname, "syncid": d.syncid} for d in self.sync],
        }, indent=1) + "\n"


class BadRecord(ValueError):
    pass


def _field(entry: dict, key: str, kind: type, where: str):
    v = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(v, kind) or isinstance(v, bool):
        raise BadRecord(f"{where}: {key!r} is missing or not {'a string' if kind is str else 'an integer'}")
    return v


def _list(doc: dict, key: str) -> list:
    v = doc.get(key, [])
    if not isinstance(v, list):
        raise BadRecord(f"{key!r} is not a list")
    return v


def parse(text: str) -> Held:
    """The record's JSON as a Held; BadRecord saying what is wrong."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise BadRecord(f"not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise BadRecord("not a JSON object")
    if doc.get("version") != VERSION:
        raise BadRecord(f"version {doc.get('version')!r}, not {VERSION}")
    programs, addrs, sync = [], [], []
    for i, e in enumerate(_list(doc, "xdp")):
        w = f"xdp[{i}]"
        programs.append(HeldProgram(_field(e, "ifname", str, w), _field(e, "ifindex", int, w),
                                    _field(e, "program", str, w), _field(e, "prog_id", int, w),
                                    _field(e, "flags", int, w)))
    for i, e in enumerate(_list(doc, "addresses")):
        w = f"addresses[{i}]"
        try:
            address = ipaddress.ip_interface(_field(e, "address", str, w))
        except ValueError as err:
            raise BadRecord(f"{w}: {err}") from None
        addrs.append(HeldAddress(_field(e, "ifname", str, w), address))
    for i, e in enumerate(_list(doc, "ipvs_sync")):
        w = f"ipvs_sync[{i}]"
        state = _field(e, "state", str, w)
        if state not in ("master", "backup"):
            raise BadRecord(f"{w}: state {state!r} is not master or backup")
        sync.append(HeldSync(state, _field(e, "ifname", str, w), _field(e, "syncid", int, w)))
    return Held(tuple(programs), tuple(addrs), tuple(sync))


def path(run_dir: str, instance: str) -> str:
    return os.path.join(run_dir, f"{instance}.held")


def read(record: str) -> Held:
    """The record at path ``record``; none there, or one that cannot be read, is an empty Held
    (the latter logged at ERROR, naming the file and what is wrong: nothing it names is
    released, so those may stay behind)."""
    try:
        return parse(files.read_private(record, LIMIT))
    except FileNotFoundError:
        return Held()
    except (OSError, BadRecord) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        log.error("%s: ignored, what the earlier run held is not known (%s): an interface or address "
                  "the configuration no longer names may stay behind (`ip link set dev DEV xdp off`, "
                  "`ip addr del`)", record, why)
        return Held()


def write(record: str, held: Held, instance: str) -> None:
    """The record written (atomically), or removed when there is nothing in it; OSError as is."""
    if not held:
        remove(record)
        return
    files.write_private(record, held.to_json(instance))


def remove(record: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record)
