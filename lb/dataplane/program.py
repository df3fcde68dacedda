"""The XDP programs: bpf/ assembled into one source, compiled with bcc (or taken from the compile
cache: lb/dataplane/bpfobj.py), loaded with bpf(2), their tail calls wired, and the pinned maps
opened -- the maps of a previous run adopted when their sizes and layouts match (Sizes: the
config's [tables], passed to the C code as -D flags)."""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lb.config.model import embryonic_size, ipv6_connections_size

from . import bpfobj
from . import layout as L
from .errors import DataplaneError, ProgramLoadFailed
from .maps import ArrayField, BpfMap, ConnTables

log = logging.getLogger("lb.dataplane")

BPF_DIR = L.BPF_DIR      # one place says where bpf/ is

XDP_PROGRAMS = ("lb_xdp_public", "lb_xdp_public_full", "lb_xdp_private", "lb_xdp_guard", "lb_xdp_new_conn",
                "lb_xdp_persist", "lb_xdp_frag6_public", "lb_xdp_frag6_private", "lb_xdp_icmp_tunnel")
# NAT's replies (the private interface's program and its IPv6 fragments' tail call): half of the
# verifier's work of a load (lb_xdp_private alone 840,000 instructions), which a director without
# NAT never needs -- loaded with the others when the instance says it forwards NAT, else when
# first asked for (Program.fns)
NAT_PROGRAMS = ("lb_xdp_private", "lb_xdp_frag6_private")
# an IPv6 fragment's program on the public side (~216,000 instructions): a table without IPv6
# services never needs it (an IPv6 fragment finding its slot empty is passed to the kernel, as it
# would be: no virtual service is its) -- loaded with the others when the config has IPv6
# services, else by the first apply of a table that has (XdpDataplane.apply, before any write)
IPV6_PROGRAMS = ("lb_xdp_frag6_public",)
BASE_PROGRAMS = tuple(n for n in XDP_PROGRAMS if n not in NAT_PROGRAMS + IPV6_PROGRAMS)
PROGRAMS = (*XDP_PROGRAMS, *(f"lb_sched_{n}" for n in L.SCHEDULERS))


def state_timeouts(tcp: int, tcpfin: int, udp: int) -> list[int]:
    """IPVS's timeouts (s) by connection state (lb_timeouts); the config's tcp / tcpfin / udp
    (ipvsadm --set) set ESTABLISHED, FIN_WAIT and UDP, the others are IPVS's fixed ones."""
    t = [2, 0, 120, 60, 0, 120, 10, 60, 30, 120, 120, 0]
    t[L.TCP_S["ESTABLISHED"]], t[L.TCP_S["FIN_WAIT"]], t[L.UDP_S_NORMAL] = tcp, tcpfin, udp
    return t


# IPVS tcp_states: [table][event][state] for tables INPUT, OUTPUT, INPUT-ONLY and events
# syn, fin, ack, rst (net/netfilter/ipvs/ip_vs_proto_tcp.c)
_S = {"NO": 0, "ES": 1, "SS": 2, "SR": 3, "FW": 4, "TW": 5, "CL": 6, "CW": 7, "LA": 8, "LI": 9, "SA": 10}
_FSM_TEXT = """
SR ES ES SR SR SR SR SR SR SR SR
CL CW SS TW TW TW CL CW LA LI TW
CL ES SS ES FW TW CL CW CL LI ES
CL CL CL SR CL CL CL CL LA LI SR
SS ES SS SR SS SS SS SS SS LI SR
TW FW SS TW FW TW CL TW LA LI TW
ES ES SS ES FW TW CL CW LA ES ES
CL CL SS CL CL TW CL CL CL CL CL
SR ES ES SR SR SR SR SR SR SR SR
CL FW SS TW FW TW CL CW LA LI TW
CL ES SS ES FW TW CL CW CL LI ES
CL CL CL SR CL CL CL CL LA LI CL
"""
TCP_FSM = [_S[t] for t in _FSM_TEXT.split()]   # index (table * 4 + event) * 11 + state
# secure_tcp's tables (IPVS tcp_states_dos): in NAT a connection is established only once the
# real server answered the handshake (its SYN|ACK, then an ACK of its own)
_FSM_SECURE_TEXT = """
SR ES ES SR SR SR SR SR SR SR SA
CL CW SS TW TW TW CL CW LA LI SA
CL ES SS SR FW TW CL CW CL LI SA
CL CL CL SR CL CL CL CL LA LI CL
SS ES SS SA SS SS SS SS SS LI SA
TW FW SS TW FW TW CL TW LA LI TW
ES ES SS ES FW TW CL CW LA ES ES
CL CL SS CL CL TW CL CL CL CL CL
SA ES ES SR SA SA SA SA SA SA SA
CL FW SS TW FW TW CL CW LA LI TW
CL ES SS ES FW TW CL CW CL LI ES
CL CL CL SR CL CL CL CL LA LI CL
"""
TCP_FSM_SECURE = [_S[t] for t in _FSM_SECURE_TEXT.split()]


@dataclass(frozen=True)
class Sizes:
    services: int = 256
    reals: int = 4096
    svc_reals: int = 64
    connections: int = 65536     # lb_conns4: established IPv4 connections
    embryonic: int = 0           # 0: lb.config.model.embryonic_size's default
    connections_ipv6: int = 0    # lb_conns6; 0: lb.config.model.ipv6_connections_size's default

    @classmethod
    def from_tables(cls, t) -> "Sizes":
        return cls(t.services, t.real_servers, t.reals_per_service, t.connections, t.embryonic or 0,
                   t.connections_ipv6 or 0)

    @property
    def connections6(self) -> int:
        """established IPv6 connections: the config's [tables] connections_ipv6, else a quarter
        of the IPv4 table"""
        return ipv6_connections_size(self.connections, self.connections_ipv6)

    @property
    def embryo(self) -> int:
        """embryonic connections (and their templates): the config's [tables] embryonic, else a
        quarter of the connection table (lb_embryo.h)"""
        return embryonic_size(self.connections, self.embryonic)

    @property
    def persist(self) -> int:
        """persistence templates: a quarter of the connection table (allocated as used)"""
        return max(1024, self.connections // 4)

    @property
    def est_filter_bits(self) -> int:
        """bits of each lb_est_filter bitmap: 8 per lb_conns entry, both families' (a full
        table's census then sends about one new SYN in eight to the lookup it would have made
        anyway), 2^16 to 2^25 (the three bitmaps interleaved: 32 bytes per 64 bits, 16 MB at most)"""
        return min(25, max(16, ((self.connections + self.connections6) * 8 - 1).bit_length()))

    @property
    def lblc(self) -> int:
        """lblc / lblcr entries, all services together: as many as persistence templates"""
        return self.persist

    def cflags(self, pin: str) -> list[str]:
        return [f"-DLB_MAX_SERVICES={self.services}", f"-DLB_MAX_REALS={self.reals}",
                f"-DLB_PERSIST_TABLE_SIZE={self.persist}",
                f"-DLB_MAX_SVC_REALS={self.svc_reals}", f"-DLB_CONN4_TABLE_SIZE={self.connections}",
                f"-DLB_CONN6_TABLE_SIZE={self.connections6}",
                f"-DLB_LBLC_TABLE_SIZE={self.lblc}", f"-DLB_LBLCR_SET_SIZE={L.LBLCR_SET_SIZE}",
                f"-DLB_EMBRYO_TABLE_SIZE={self.embryo}",
                f"-DLB_EST_FILTER_BITS={self.est_filter_bits}",
                f'-DLB_PIN_DIR="{pin}"']

    def expected(self) -> dict[str, tuple[int, int]]:
        """map name -> (max_entries, value_size) as the programs will create them"""
        return {
            "lb_services": (self.services, 4),
            "lb_svc": (self.services, L.SVC.size),
            "lb_sched_state": (self.services, L.SCHED_STATE.size),
            "lb_svc_dests": (self.services, L.DEST.size * self.svc_reals),
            "lb_sched_buckets": (self.services, L.SCHED_BUCKETS.size),
            "lb_mh_tables": (self.services, 4),
            "lb_mh_last": (self.services, 4 * self.svc_reals),
            "lb_reals": (self.reals, L.REAL.size),
            "lb_real_conns": (self.reals, L.REAL_CONNS.size),
            "lb_real_swept": (self.reals, L.REAL_COUNTS.size),
            "lb_real_base": (self.reals, L.REAL_COUNTS.size),
            "lb_real_overload": (self.reals, 4),
            "lb_conns4": (self.connections, L.CONN.size),
            "lb_conns6": (self.connections6, L.CONN.size),
            "lb_conns_embryo": (self.embryo, L.CONN.size),
            "lb_persist": (self.persist, L.PERSIST.size),
            "lb_persist_embryo": (self.embryo, L.PERSIST.size),
            "lb_counters": (L.N_COUNTERS, 8),
            "lb_ct_events": (L.N_CT_EVENTS, 8),
            "lb_vip_filter": (1, L.VIP_FILTER.size),
            "lb_vip_addrs": (2 * self.services, 4),            # LB_VIP_ADDRS
            "lb_local_filter": (1, L.VIP_FILTER.size),
            "lb_local_addrs": (L.LOCAL_ADDRS, 4),
            "lb_est_filter": ((1 << self.est_filter_bits) // 64, L.EST_WORD.size),
            "lb_svc_stats": (self.services, L.STATS.size),
            "lb_fwm_ranges": (self.services, L.PORT_RANGES.size),
            "lb_fwm_services": (self.services, 4),
            "lb_globals": (L.N_GLOBALS, 4),
            "lb_real_stats": (self.reals, L.STATS.size),
            "lb_svc_rates": (self.services, L.RATES.size),
            "lb_real_rates": (self.reals, L.RATES.size),
            "lb_lblc": (self.lblc, L.LBLC.size),
            "lb_lblcr": (self.lblc, L.LBLCR.size),
            "lb_lease": (1, L.LEASE.size),
            "lb_lease_addrs": (2 * self.services + 1, 4),      # LB_LEASE_ADDRS
        }


def bpf_source(path: Path = BPF_DIR / "lb.c") -> str:
    """lb.c with its local headers inlined: bcc rewrites map calls (map.lookup()) only in the
    main file, so the headers must become part of it."""
    seen: set[Path] = set()

    def expand(p: Path) -> str:
        out = []
        for line in p.read_text().splitlines(keepends=True):
            m = re.match(r'\s*#include "([^"]+)"', line)
            if m:
                inc = (p.parent / m.group(1)).resolve()
                if inc not in seen:
                    seen.add(inc)
                    out.append(f"/* ---- {m.group(1)} ---- */\n")
                    out.append(expand(inc))
                continue
            out.append(line)
        return "".join(out)

    return expand(path)


def _pin_flag(flag: str) -> bool:
    return flag.startswith("-DLB_PIN_DIR=")


# a compile takes seconds: another instance's scratch this old was left by a killed compile
STALE_COMPILE_S = 3600.0


def _older_than(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > seconds
    except OSError:
        return False


def _alive(pid: str) -> bool:
    """a process of this pid exists (a number that is not a pid: no)"""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class LoadedPrograms(dict):
    """Program.fns: the loaded programs by name.  A NAT or IPv6 program (NAT_PROGRAMS,
    IPV6_PROGRAMS) not loaded yet is loaded when first asked for -- by the private interface's
    attach, a test or a bench -- so every way to it finds it; `in` and iteration see only what
    is loaded."""

    def __init__(self, program: "Program"):
        super().__init__()
        self._program = program

    def __missing__(self, name: str):
        p = self._program
        if not ((name in NAT_PROGRAMS and p.ensure_nat()) or (name in IPV6_PROGRAMS and p.ensure_ipv6())):
            raise KeyError(name)
        return dict.__getitem__(self, name)


class Program:
    """The loaded programs of one instance (fns by name) and its pinned maps (maps by name,
    one dict shared with the parts of the data plane that read and write them).

    The programs come from the compile cache when it holds them for this source, these flags
    (the pin directory aside: it names pins, not code), this kernel, its headers and this bcc;
    otherwise bcc compiles them (seconds) and the cache keeps the result.  Either way they are
    loaded by bpfobj.load, so a cached start and a compiling one load the same instructions.

    load() loads the programs every packet of the public side may meet (and, with nat, the
    private side's; with ipv6, IPv6 fragments'); a scheduler's program is loaded by ensure()
    when a table first uses it (XdpDataplane.apply), the IPv6 fragments' by ensure_ipv6() when a
    table first has IPv6 services, NAT's replies' by ensure_nat() when first asked for: the
    kernel's verifier takes most of a load, and the schedulers with the longest loops (mh, lblc,
    lblcr) and lb_xdp_private take most of that."""

    def __init__(self, sizes: Sizes, pin: str, cache: "bpfobj.Cache | None | bool" = True,
                 keep_bcc: bool = False, status=None, nat: bool = False, ipv6: bool = False):
        self.sizes = sizes
        self.pin = pin
        self.cache = bpfobj.Cache() if cache is True else (cache or None)
        self.keep_bcc = keep_bcc         # keep bcc's module (tests read its tables' C types)
        self.status = status or (lambda text: None)   # progress for the service manager (STATUS=)
        self.bpf = None                  # bcc's module when this load compiled and keep_bcc
        self.loaded: bpfobj.Loaded | None = None
        self.obj: bpfobj.Object | None = None
        self._key = ""
        self._cflags: list[str] = []
        self.compiled = False            # this load compiled (the cache did not have the programs)
        self.nat = nat                   # NAT_PROGRAMS loaded with the others (the instance forwards NAT)
        self.ipv6 = ipv6                 # IPV6_PROGRAMS loaded with the others (it has IPv6 services)
        self.fns: dict[str, bpfobj.Prog] = LoadedPrograms(self)
        self.maps: dict[str, BpfMap] = {}

    def check_pins(self) -> tuple[bool, dict[str, tuple[int, int]]]:
        """(pinned maps exist: a running or crashed instance to adopt, {name: (max_entries,
        value_size) pinned} of those whose size differs from what these sizes need: other
        [tables], which lb.dataplane.resize moves into maps of the new sizes)."""
        if not os.path.isdir(self.pin):
            return False, {}
        from . import bpfsys

        def pinned(name: str):
            path = os.path.join(self.pin, name)
            if not os.path.exists(path):
                return None
            fd = bpfsys.obj_get(path)
            try:
                return bpfsys.map_info(fd)
            finally:
                os.close(fd)

        found, differ = False, {}
        for name, (entries, vsize) in self.sizes.expected().items():
            info = pinned(name)
            if info is None:
                continue
            found = True
            if info.max_entries != entries or info.value_size != vsize:
                differ[name] = (info.max_entries, info.value_size)
        # an older lb's one established table (both families; now lb_conns4 and lb_conns6): moved
        # into the two as a resize moves maps into new sizes
        info = pinned("lb_conns")
        if info is not None:
            found, differ["lb_conns"] = True, (info.max_entries, info.value_size)
        return found, differ

    def _compile(self, source: str, cflags: list[str]) -> bpfobj.Object:
        from lb import preflight

        try:
            preflight.check_compiler()
        except preflight.HostError as e:
            raise DataplaneError(str(e)) from None
        log.info("compiling the XDP programs with bcc (not in the compile cache for this kernel and "
                 "these [tables]; the next start loads them from the cache)")
        self.status("compiling the XDP programs (bcc)")
        # bcc pins its maps where LB_PIN_DIR says and reuses a pin it finds there, whatever its
        # type: compiled against the instance's pins, an object would take a running instance's
        # maps for the declaration (and the cache would keep that).  So the compile pins into a
        # scratch directory of its own; bpfobj.load then checks the instance's pins against
        # what the source declares.  The scratch sits beside the instances' root (bpffs names
        # take no dots), so it is never taken for an instance.
        bpffs, prefix = os.path.dirname(os.path.dirname(self.pin)), f"lb-compile-{os.path.basename(self.pin)}-"
        scratch = os.path.join(bpffs, f"{prefix}{os.getpid()}")
        try:
            # a killed compile's (its maps' memory): this instance's, or another's an hour old (a
            # bench's or a test's instance is named by its pid, so no compile of its own comes
            # again; the age spares a compile running in another pid namespace that shares bpffs)
            for stale in os.listdir(bpffs):
                path = os.path.join(bpffs, stale)
                if stale.startswith("lb-compile-") and not _alive(stale.rpartition("-")[2]) and (
                        stale.startswith(prefix) or _older_than(path, STALE_COMPILE_S)):
                    shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
            os.makedirs(scratch)
        except OSError as e:
            raise DataplaneError(f"cannot make the compile's scratch pin directory {scratch}: {e}") from None
        try:
            obj, self.bpf = bpfobj.compile_bcc(source, [f for f in cflags if not _pin_flag(f)] +
                                               [f'-DLB_PIN_DIR="{scratch}"'], PROGRAMS, scratch,
                                               keep=self.keep_bcc)
        except DataplaneError:
            raise
        except Exception as e:  # bcc raises plain Exceptions (compile errors, missing headers)
            raise DataplaneError(f"cannot build the XDP programs: {e}") from e
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self.compiled = True
        return obj

    def load(self, adopted: bool, pin_dir: str | None = None) -> None:
        """Compile (or take from the cache) and load the programs every packet may meet (bcc or
        bpfobj creates the maps, or reuses the pinned ones), wire their tail calls, open the
        maps by pin and write the TCP state table.  pin_dir: pin the maps there instead of the
        instance's directory (a resize's staging directory, renamed to it once filled)."""
        pin = pin_dir or self.pin
        os.makedirs(pin, exist_ok=True)
        t0 = time.monotonic()
        source = bpf_source()
        self._cflags = self.sizes.cflags(self.pin) + ["-Wno-macro-redefined"]
        self._key = bpfobj.cache_key(source, [f for f in self._cflags if not _pin_flag(f)], PROGRAMS)
        self.obj = self.cache.get(self._key) if self.cache is not None and not self.keep_bcc else None
        if self.obj is not None:
            log.info("loading the XDP programs from the compile cache (%s)", self.cache._path(self._key))
            self.status("loading the XDP programs (compile cache)")
        else:
            self.obj = self._compile(source, self._cflags)
        names = BASE_PROGRAMS + (NAT_PROGRAMS if self.nat else ()) + (IPV6_PROGRAMS if self.ipv6 else ())
        try:
            self.loaded = bpfobj.load(self.obj, pin, names)
        except DataplaneError as e:
            if self.compiled:
                raise
            self._recompile(e)
            self.loaded = bpfobj.load(self.obj, pin, names)
        if self.compiled and self.cache is not None:
            self.cache.put(self._key, self.obj)
        self.fns.update(self.loaded.progs)
        log.info("%s %d XDP programs in %.2f s (%s maps in %s)",
                 "compiled and loaded" if self.compiled else "loaded the cached", len(names),
                 time.monotonic() - t0, "adopted" if adopted and not pin_dir else "new", pin)
        for name in self.sizes.expected().keys() | {"lb_tcp_fsm", "lb_tcp_fsm_secure", "lb_timeouts"}:
            self.maps[name] = BpfMap.open_pinned(os.path.join(pin, name))
        # lb_conns: the two established tables as one (lb/dataplane/maps.py)
        self.maps["lb_conns"] = ConnTables(self.maps["lb_conns4"], self.maps["lb_conns6"])
        # the schedulers' offsets, which the control plane writes in place beside BPF's counts
        self.maps["lb_real_sched_off"] = ArrayField(self.maps["lb_real_conns"], "lb_real_sched_off",
                                                    L.REAL_SCHED_OFF, L.REAL_COUNTS.size)
        self._wire({L.PROG_NEW_CONN: "lb_xdp_new_conn", L.PROG_PERSIST: "lb_xdp_persist"})
        self._wire({slot: name for name, slot in L.FRAG6_SLOTS.items() if name in self.fns}, "lb_frag6_progs")
        self._wire({L.ICMP_TUNNEL_SLOT: "lb_xdp_icmp_tunnel"}, "lb_icmp_progs")
        self._wire({L.PUBLIC_FULL_SLOT: "lb_xdp_public_full"}, "lb_public_progs")
        for mapname, table in (("lb_tcp_fsm", TCP_FSM), ("lb_tcp_fsm_secure", TCP_FSM_SECURE)):
            for i, v in enumerate(table):
                self.maps[mapname].set(L.U32.pack(i), L.U32.pack(v))

    def _recompile(self, err: Exception) -> None:
        """A cached object this kernel refuses (rebuilt under the same release): compile afresh."""
        log.warning("the cached XDP programs do not load (%s): compiling them again", err)
        self.cache.drop(self._key)
        self.obj = self._compile(bpf_source(), self._cflags)

    def ensure(self, schedulers) -> None:
        """The programs of these schedulers loaded and in lb_progs (each once per daemon)."""
        names = [f"lb_sched_{s}" for s in sorted(set(schedulers)) if f"lb_sched_{s}" not in self.fns]
        if not names:
            return
        t0 = time.monotonic()
        self._load_more(names)
        self._wire({L.PROG_SCHED_BASE + L.SCHEDULERS[n.removeprefix("lb_sched_")]: n for n in names})
        log.info("loaded the scheduler program%s %s in %.2f s", "s" if len(names) > 1 else "",
                 ", ".join(names), time.monotonic() - t0)

    def ensure_nat(self) -> bool:
        """NAT's replies' programs (NAT_PROGRAMS) loaded, lb_xdp_frag6_private in lb_frag6_progs
        (once per load).  False when nothing is loaded to add them to (closed)."""
        return self._ensure_more(NAT_PROGRAMS, "NAT's reply programs")

    def ensure_ipv6(self) -> bool:
        """The IPv6 fragments' program (IPV6_PROGRAMS) loaded and in lb_frag6_progs, as ensure_nat."""
        return self._ensure_more(IPV6_PROGRAMS, "the IPv6 fragments' program")

    def _ensure_more(self, group: tuple[str, ...], what: str) -> bool:
        if self.loaded is None:
            return False
        names = [n for n in group if n not in self.fns]
        if names:
            t0 = time.monotonic()
            self._load_more(names)
            self._wire({L.FRAG6_SLOTS[n]: n for n in names if n in L.FRAG6_SLOTS}, "lb_frag6_progs")
            log.info("loaded %s %s in %.2f s", what, ", ".join(names), time.monotonic() - t0)
        return True

    def _load_more(self, names: list[str]) -> None:
        """More of the object's programs loaded into this load (ProgramLoadFailed if refused)."""
        try:
            try:
                bpfobj.load_programs(self.obj, self.loaded, names)
            except DataplaneError as e:
                if self.compiled:
                    raise
                self._recompile(e)
                bpfobj.load_programs(self.obj, self.loaded, [n for n in names if n not in self.loaded.progs])
                self.cache.put(self._key, self.obj)
        except DataplaneError as e:     # before any map write: `auto` may still choose kernel IPVS
            raise ProgramLoadFailed(str(e)) from None
        self.fns.update(self.loaded.progs)

    def _wire(self, slots: dict[int, str], array: str = "lb_progs") -> None:
        """array[slot] = program: the data path's tail calls (lb_progs, lb_frag6_progs, lb_icmp_progs or
        lb_public_progs)."""
        # the loaded programs' own array (a resize loads them against a staging directory)
        progs = BpfMap(self.loaded.map_fds[array], array, owned=False)
        for slot, name in slots.items():
            progs.set(L.U32.pack(slot), L.U32.pack(self.fns[name].fd))

    def prev_progs(self) -> BpfMap:
        """lb_progs_prev of the loaded programs (pinned only during a resize: XdpDataplane._hand_over)"""
        return BpfMap(self.loaded.map_fds["lb_progs_prev"], "lb_progs_prev", owned=False)

    def tx_ports(self) -> BpfMap:
        """lb_tx_ports of the loaded programs (not pinned: filled by this process's attaches)"""
        return BpfMap(self.loaded.map_fds["lb_tx_ports"], "lb_tx_ports", owned=False)

    def close_maps(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps.clear()

    def unpin(self) -> None:
        self.close_maps()
        shutil.rmtree(self.pin, ignore_errors=True)
        log.info("removed pinned maps %s", self.pin)

    def close(self) -> None:
        self.close_maps()
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None
        self.fns.clear()
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
