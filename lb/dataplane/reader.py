"""Read an instance's pinned maps into records (lb/dataplane/records.py): what `lb list` shows,
with no daemon running (as ipvsadm reads the kernel's table)."""
from __future__ import annotations

import os
import time
from typing import Iterator

from . import layout as L
from .maps import BpfMap, LayoutError, MapError, PinnedMaps, _bpfbatch, check_layout
from .records import ConnRow, RealRow, ServiceRow, Stats, names_service


def _sum_stats(values: list[bytes]) -> Stats:
    """every CPU's counters of one entry, summed (a map with no entry: zeros)"""
    if not values:
        return Stats(0, 0, 0, 0, 0)
    return Stats(*map(sum, zip(*map(L.STATS.unpack, values))))


def optional_map(maps: PinnedMaps | dict[str, BpfMap], name: str):
    """A map newer than maps.MAP_NAMES (opened on first use; None when the instance lacks it).
    A loaded data plane's own maps (a dict by name) have every map already."""
    if isinstance(maps, dict):
        return maps.get(name)
    if name not in maps.maps:
        path = os.path.join(maps.dir, name)
        if not os.path.exists(path):
            return None
        m = maps.open(name)
        try:
            check_layout(m, maps.dir)
        except LayoutError:
            m.close()
            raise
        maps.maps[name] = m
    return maps.maps[name]


_NONE: dict = {}


class _Bulk:
    """Entries of some maps read in bulk ahead of their use (BpfMap.get_many_raw: an array a good
    part of which is asked for is read whole, in a few syscalls; else one C loop): read_services'
    rows, where a lookup per entry -- five per real server -- made `lb list -n` of 1,000 x 64
    325,000 syscalls and 1.9 s of Python.  A key not read ahead is looked up as before."""

    def __init__(self, maps):
        self.maps = maps
        self.raw: dict[str, dict[bytes, bytes | None]] = {}

    def read(self, name: str, keys: list[bytes], optional: bool = False) -> None:
        m = optional_map(self.maps, name) if optional else self.maps[name]
        if m is not None and keys:
            self.raw.setdefault(name, {}).update(zip(keys, m.get_many_raw(keys)))

    def _raw(self, name: str, key: bytes) -> bytes | None:
        raw = self.raw.get(name, _NONE).get(key, self)      # self: not read ahead
        return self.maps[name].get_raw(key) if raw is self else raw

    def get(self, name: str, key: bytes) -> bytes | None:
        raw = self._raw(name, key)
        m = self.maps[name]
        return raw[:m.value_size] if raw is not None and m.percpu else raw

    def get_percpu(self, name: str, key: bytes) -> list[bytes]:
        raw, m = self._raw(name, key), self.maps[name]
        if raw is None:
            return []
        return [raw[i * m.slot:i * m.slot + m.value_size] for i in range(m.ncpus)]


def _entry(maps, name: str, key: bytes, what: str, bulk: _Bulk | None = None) -> bytes:
    """The value of ``key`` in map ``name`` (read ahead in ``bulk``, or now); MapError (saying
    ``what`` named it) when there is none."""
    raw = bulk.get(name, key) if bulk is not None else maps[name].get(key)
    if raw is None:
        raise MapError(f"{what} names {name} entry {L.U32.unpack(key)[0] if len(key) == 4 else key.hex()}, "
                       f"which {name} lacks: the maps are not lb's as this version writes them")
    return raw


def _rates(maps: PinnedMaps, name: str, key: bytes, bulk: _Bulk) -> Stats:
    """The estimator's rates (lb_svc_rates / lb_real_rates); zero when the instance lacks them."""
    raw = bulk.get(name, key) if optional_map(maps, name) is not None else None
    return Stats(*L.RATES.unpack(raw)) if raw is not None else Stats()


def _service_row(maps: PinnedMaps, sid: int, key, bulk: _Bulk | None = None) -> ServiceRow:
    bulk = bulk or _Bulk(maps)
    skey = L.U32.pack(sid)
    svc = L.Svc.unpack(_entry(maps, "lb_svc", skey, "lb_services", bulk))
    sched = L.SCHEDULER_NAMES.get(svc.sched, "?")
    if isinstance(key, L.FwmKey):
        row = ServiceRow(protocol="", address=None, port=0, fwmark=key.fwmark, family=svc.addr.version,
                         scheduler=sched)
    else:
        row = ServiceRow(protocol=L.PROTO_NAMES.get(key.proto, str(key.proto)), address=key.addr,
                         port=key.port, scheduler=sched, family=key.addr.version)
    row.sched_flags = L.sched_flag_names(sched, svc.flags)
    row.persistent = svc.persist_timeout or None
    row.netmask = L.unpack_mask(svc.persist_mask, L.family_of(svc.addr)) if svc.persist_timeout else None
    row.stats = _sum_stats(bulk.get_percpu("lb_svc_stats", skey))
    row.rate = _rates(maps, "lb_svc_rates", skey, bulk)
    for rid, weight, _flags in _dests(maps, svc, skey, bulk):
        rkey = L.U32.pack(rid)
        real = L.Real.unpack(_entry(maps, "lb_reals", rkey, "lb_svc_dests", bulk))
        a, i, p = L.real_counts(_entry(maps, "lb_real_conns", rkey, "lb_svc_dests", bulk),
                                _entry(maps, "lb_real_swept", rkey, "lb_svc_dests", bulk))
        row.reals.append(RealRow(address=real.addr, port=real.port,
                                 forward=L.FORWARD_NAMES.get(real.fwd, "?"), weight=weight,
                                 active=a, inactive=i, persist=p,
                                 u_threshold=real.u_threshold, l_threshold=real.l_threshold,
                                 stats=_sum_stats(bulk.get_percpu("lb_real_stats", rkey)),
                                 rate=_rates(maps, "lb_real_rates", rkey, bulk),
                                 # lb tunnels IP in IP (IPv6 in IPv6): IPVS's tunnel type ipip
                                 tunnel_info="ipip" if real.fwd == L.FWD_TUNNEL else "n/a"))
    return row


def _dests(maps, svc: L.Svc, skey: bytes, bulk: _Bulk | None = None) -> list[tuple[int, int, int]]:
    """A service's (real id, weight, flags), as lb_svc_dests lists them"""
    return L.unpack_dests(_entry(maps, "lb_svc_dests", skey, "lb_services", bulk),
                          min(svc.nreals, maps["lb_svc_dests"].value_size // L.DEST.size))


def service_key(key) -> tuple:
    """A data-plane service key (SvcKey / FwmKey) as the engine names services:
    ("tcp", address, port) or ("fwmark", mark)."""
    if isinstance(key, L.FwmKey):
        return ("fwmark", key.fwmark)
    return (L.PROTO_NAMES.get(key.proto, str(key.proto)).lower(), key.addr, key.port)


def is_service(key, family: int, service: tuple) -> bool:
    """Whether the data-plane service ``key`` (of address family ``family``, 4 or 6) is
    ``service``: service_key's names, or ("fwmark", mark, 4 or 6) as ipvsadm -f [-6] names
    one.  The mark alone (the daemon's key) is the mark's service whichever its family: lb_fwm_services
    is keyed by the mark."""
    return names_service(service_key(key), family, service)



def stat_ids(maps: PinnedMaps, service: tuple | None = None) -> set[tuple[str, int]]:
    """(stats map, id) of every service (or of ``service``, see is_service) and of its real
    servers, read from the pinned maps; LookupError when ``service`` is not there."""
    found = [(L.SvcKey.unpack(k), v) for k, v in maps["lb_services"].items(batch=False)]
    fwm = optional_map(maps, "lb_fwm_services")
    if fwm is not None:
        found += [(L.FwmKey(L.U32.unpack(k)[0]), v) for k, v in fwm.items(batch=False)]
    ids = set()
    for key, v in found:
        sid = L.U32.unpack(v)[0]
        skey = L.U32.pack(sid)
        svc = L.Svc.unpack(_entry(maps, "lb_svc", skey, "lb_services"))
        # a firewall-mark service's family is its lb_svc entry's (its key has none)
        if service is not None and not is_service(key, svc.addr.version, service):
            continue
        ids.add(("lb_svc_stats", sid))
        ids |= {("lb_real_stats", rid) for rid, _w, _f in _dests(maps, svc, skey)}
    if service is not None and not ids:
        raise LookupError("no such service")
    return ids


def read_services(maps: PinnedMaps) -> list[ServiceRow]:
    found = [(L.U32.unpack(v)[0], L.SvcKey.unpack(k)) for k, v in maps["lb_services"].items(batch=False)]
    fwm = optional_map(maps, "lb_fwm_services")
    if fwm is not None:
        found += [(L.U32.unpack(v)[0], L.FwmKey(L.U32.unpack(k)[0])) for k, v in fwm.items(batch=False)]
    # what the rows read, in bulk: the services' entries, then their real servers'
    bulk = _Bulk(maps)
    skeys = [L.U32.pack(sid) for sid, _ in found]
    for name in ("lb_svc", "lb_svc_dests", "lb_svc_stats"):
        bulk.read(name, skeys)
    bulk.read("lb_svc_rates", skeys, optional=True)
    rkeys = []
    for skey in skeys:
        raw = bulk.get("lb_svc", skey)
        if raw is not None and bulk.get("lb_svc_dests", skey) is not None:
            rkeys += [L.U32.pack(rid) for rid, _w, _f in _dests(maps, L.Svc.unpack(raw), skey, bulk)]
    rkeys = list(dict.fromkeys(rkeys))
    for name in ("lb_reals", "lb_real_conns", "lb_real_swept", "lb_real_stats"):
        bulk.read(name, rkeys)
    bulk.read("lb_real_rates", rkeys, optional=True)
    return [_service_row(maps, sid, key, bulk) for sid, key in found]


def conn_tables(maps: PinnedMaps) -> list:
    """The connection tables: lb_conns, and lb_conns_embryo (the embryonic connections, SYN_RECV
    and first-packet UDP; absent in instances older than it)"""
    embryo = optional_map(maps, "lb_conns_embryo")
    return [maps["lb_conns"]] + ([embryo] if embryo is not None else [])


def read_connections(maps: PinnedMaps, batch: bool | None = None, now_ns: int | None = None) -> list[ConnRow]:
    return list(iter_connections(maps, batch, now_ns))


def iter_connections(maps: PinnedMaps, batch: bool | None = None, now_ns: int | None = None) -> Iterator[ConnRow]:
    """read_connections' records one by one (`lb list -c --json` writes each as it comes)."""
    now = time.monotonic_ns() if now_ns is None else now_ns
    reals: dict[int, L.Real] = {}
    for k, v in (kv for m in conn_tables(maps) for kv in m.items(batch=batch)):
        key = L.ConnKey.unpack(k)
        if key.dir != 0:
            continue                       # NAT reverse entries are not connections of their own
        c = L.Conn.unpack(v)
        # as IPVS prints a timer: the whole seconds left; gone once the age is past the timeout
        # (lb_conn_expired); a stamp ahead of the clock has its whole timeout left
        age = L.elapsed_ns(now, c.last_ns)
        if age > c.timeout * 1_000_000_000:
            continue                       # expired, awaiting the sweep
        left = c.timeout if age <= 0 else (c.timeout * 1_000_000_000 - age) // 1_000_000_000
        real = reals.get(c.real)
        if real is None:
            real = reals[c.real] = L.Real.unpack(_entry(maps, "lb_reals", L.U32.pack(c.real), "a connection"),
                                                 family=L.family_of(key.saddr))
        # a real server of port 0 (a firewall-mark service's) gets each connection on the port it
        # came to, as the data path forwards it (IPVS: dest->port ?: vport)
        yield ConnRow(protocol=L.PROTO_NAMES.get(key.proto, "?"), expire=int(left),
                      state=c.state_name(key.proto), client=(key.saddr, key.sport),
                      virtual=(key.daddr, key.dport), dest=(real.addr, real.port or key.dport))


_CHUNK = 1 << 20


def connection_lines(maps: PinnedMaps, now_ns: int | None = None) -> Iterator[bytes]:
    """The lines of `lb list -c -n` (ipvsadm -L -c -n) after its header, as chunks of bytes:
    lb_conns and lb_reals are dumped into C buffers and every line is decoded and printed in C
    (cext/bpfbatch.c bb_format_conns), so Python touches only 1 MB chunks.  The same bytes as
    lb.listing.format_connections(read_connections(maps)) without its header (the pure-Python
    path, kept as the fallback and the test oracle).  Needs lb._bpfbatch (maps.have_batch())."""
    now = time.monotonic_ns() if now_ns is None else now_ns
    ffi, lib = _bpfbatch.ffi, _bpfbatch.lib
    reals = maps["lb_reals"]
    _rk, rvals, nreals = reals.dump()   # an array: entry i is real id i
    out = ffi.new("char[]", _CHUNK)
    dests = ffi.new("char[]", max(nreals, 1) * 64)   # each real server's "addr:", made once
    for conns in conn_tables(maps):
        if (conns.key_size, conns.value_size, reals.value_size) != (
                lib.bb_sizeof_conn_key(), lib.bb_sizeof_conn(), lib.bb_sizeof_real()):
            raise LayoutError(f"{conns.name}/lb_reals layout differs from cext/bpfbatch.c (lb._bpfbatch): "
                              f"rebuild it (make setup)")
        keys, values, n = conns.dump()
        pos = ffi.new("unsigned long *", 0)
        while pos[0] < n:
            w = lib.bb_format_conns(keys, values, n, rvals, nreals, now, dests, pos, out, _CHUNK)
            if w < 0:
                real = L.CONN.unpack(ffi.buffer(values + pos[0] * conns.value_size, conns.value_size))[1]
                raise MapError(f"{conns.name} entry {pos[0]} names real server id {real}, "
                               f"outside lb_reals ({nreals} entries): the maps are not lb's as this "
                               f"version writes them")
            if w:
                yield bytes(ffi.buffer(out, w))


def read_timeouts(maps: PinnedMaps) -> tuple[int, int, int]:
    def t(i):
        return L.U32.unpack(_entry(maps, "lb_timeouts", L.U32.pack(i), "lb list"))[0]
    return t(L.TCP_S["ESTABLISHED"]), t(L.TCP_S["FIN_WAIT"]), t(L.UDP_S_NORMAL)


def read_counters(maps: PinnedMaps) -> dict[str, int]:
    out = {}
    for i, name in enumerate(L.COUNTER_NAMES):
        vals = maps["lb_counters"].get_percpu(L.U32.pack(i))
        out[name] = sum(L.U64.unpack(v)[0] for v in vals)
    return out


def read_ct_events(maps: PinnedMaps) -> dict[str, int]:
    """The connection tables' tallies (lb_ct_events), summed over CPUs; empty when the instance
    predates them"""
    m = optional_map(maps, "lb_ct_events") if isinstance(maps, PinnedMaps) else maps.get("lb_ct_events")
    if m is None:
        return {}
    return {name: sum(L.U64.unpack(v)[0] for v in m.get_percpu(L.U32.pack(i))) for name, i in L.CT_EVENTS.items()}
