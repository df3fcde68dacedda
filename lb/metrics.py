"""Prometheus metrics of a running director: http://[metrics] listen/metrics, served by `lb run`.

A custom collector reads the live state at scrape time; nothing is mirrored into gauges between
scrapes.  Two sources:

- the engine's status, the document `lb status --json` prints (health, weights and their source,
  HA, reloads), taken on the engine's loop, where building it only copies Python state;
- the data plane's rows, counters and flood defenses (``Dataplane.read_own_services`` /
  ``counters`` / ``defense_status``), read in the scrape's own thread the way `lb list` and `lb
  status` read them (the pinned maps, or the kernel's IPVS table: the instance's services only).

The HTTP server is prometheus_client's WSGI application in a threaded server, so a scrape runs in
its own thread and the engine's loop never waits for one; one scrape is generated at a time
(MAX_SCRAPES: the others wait their turn, so many connections do not crowd the loop's thread out
of the interpreter); at most MAX_CONNECTIONS connections are
served at once (more are closed as they come), one that says nothing for IDLE_TIMEOUT seconds is
closed, and a connection that breaks off is counted, not logged with a traceback: whoever
reaches the port cannot pile up the daemon's threads and file descriptors.  docs/metrics.md lists every metric
(tests/test_metrics.py holds it to what the collector emits); docs/grafana-dashboard.json shows
them.
"""
from __future__ import annotations

import asyncio
import http.client
import ipaddress
import logging
import socket
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
)

from lb import __version__
from lb import weight as lbweight
from lb.config.model import endpoint_text
from lb.tasks import RateLimitedLog, Slots
from lb.web.clients import client_keys

log = logging.getLogger("lb.metrics")

SNAPSHOT_TIMEOUT = 5.0          # the loop answers at once: this bounds a stuck or stopping one
MAX_CONNECTIONS = 32            # connections served at once (Prometheus scrapes with one)
MAX_PER_CLIENT = 4              # ... of them from one client (an address, an IPv6 /64: lb.web.clients) ...
MAX_PER_SITE = 8                # ... and from one IPv6 /48 once half are taken: one client cannot take every slot
IDLE_TIMEOUT = 10.0             # seconds a connection may say nothing
MAX_SCRAPES = 1                 # scrapes generated at once (the others wait): each is CPU under the GIL
REQUEST_DEADLINE = 60.0         # seconds a connection is served at most, however it trickles
LOG_EVERY = 60.0                # a request refused (or a scrape failed) is logged at most this often
MAX_HEAD = 16 * 1024            # bytes of request line and headers read (http.server's own bound: 100 x 64 KiB)

# the labels of a virtual service and of one of its real servers
SERVICE_LABELS = ("service", "protocol", "vip", "vport", "fwmark")
REAL_LABELS = SERVICE_LABELS + ("server", "rip", "rport")

# ipvsadm's five counters (records.Stats fields) and the estimator's rates, as metric name parts
STATS = (("conns", "connections", "connections scheduled"),
         ("inpkts", "incoming_packets", "packets from clients"),
         ("outpkts", "outgoing_packets", "packets to clients (NAT replies; 0 in DR and tunnel)"),
         ("inbytes", "incoming_bytes", "bytes from clients"),
         ("outbytes", "outgoing_bytes", "bytes to clients (NAT replies; 0 in DR and tunnel)"))

HA_ROLES = ("starting", "backup", "active", "fault", "leaving")
PEER_STATES = HA_ROLES + ("unknown",)
# pulse counters that are not refusals (every other one counts messages refused for a reason)
HA_ACCEPTED = {"rx", "standdown_rx", "sync_rx_records", "sync_tx_records", "sync_skipped", "sync_pending"}
# ... nor are these, each a counter of its own: an authentic message not heard in the first half
# deadtime after a start (every restart has some: no alert on refusals should fire for them),
# datagrams the kernel dropped (a full buffer), datagrams from other senders, sync records
HA_OTHER = {
    "unheard": ("lb_ha_heartbeats_unheard_total", "authentic pulse messages not taken in the first half "
                "deadtime after a start (before the peer echoes this director's boot)"),
    "late": ("lb_ha_heartbeats_late_total", "authentic heartbeats older, by the peer's monotonic clock, than one "
             "already heard on another channel (no news: the two channels' order swapped, or a capture held "
             "back and replayed)"),
    "kernel_drops": ("lb_ha_kernel_dropped_datagrams_total", "datagrams of the pulse sockets the kernel dropped "
                     "(receive buffer full)"),
    "offpath": ("lb_ha_offpath_datagrams_total", "datagrams to the pulse ports from other addresses than the peer's"),
    "sync_rejected": ("lb_ha_sync_rejected_datagrams_total", "sync datagrams refused whole (a bad record)"),
    "sync_expired": ("lb_ha_sync_expired_records_total", "synced records already expired when they came"),
    "sync_install_failed": ("lb_ha_sync_install_failed_records_total", "synced records the data plane could not "
                            "install (lost; the log says why, at most once per 10 s)"),
    "sync_scan_failed": ("lb_ha_sync_scan_failures_total", "reads of the connection table for sync that failed "
                         "(the log says why, at most once per 10 s)"),
}
# data-path counters whose names end so are levels (table fill), not counts of events
LEVEL_SUFFIXES = ("_entries", "_max", "_capacity", "_fill", "_ratio")
RELOAD_RESULTS = ("ok", "refused", "failed")


class EngineSource:
    """What the collector reads, from a running Engine."""

    def __init__(self, engine, loop: asyncio.AbstractEventLoop):
        self.engine = engine
        self.loop = loop
        self.lock = threading.Lock()
        self.pending = None             # the status asked of the loop and not yet answered

    def status(self) -> dict:
        """The engine's status without the data path's counters (read in the scrape's thread)
        nor the configuration file's part (no metric reads it; reading and parsing the file
        again took ~0.1 s for 4,000 real servers, in the loop's executor, a takeover's and HA
        sync's): taken on the loop in one go.  A scrape that comes while one is asked for and
        not yet taken shares it (taken after both came): however many connections ask, the
        loop builds one status at a time, and one that gave up (SNAPSHOT_TIMEOUT) leaves no
        work of its own behind."""
        with self.lock:
            fut = self.pending
            if fut is None or fut.done():
                take = self._take()
                try:
                    fut = self.pending = asyncio.run_coroutine_threadsafe(take, self.loop)
                except RuntimeError:        # the loop is closed: no "never awaited" warning
                    take.close()
                    raise
        return fut.result(SNAPSHOT_TIMEOUT)

    async def _take(self) -> dict:
        return self.engine.status(counters=False, configuration=False)

    def services(self) -> list:
        return self.engine.dp.read_own_services()     # (not kernel IPVS's services of others)

    def counters(self) -> dict:
        return self.engine.dp.counters()

    def defense(self) -> dict | None:
        return self.engine.dp.defense_status()


class _Families:
    """Metric families by name, made on first use, yielded in order of first use."""

    def __init__(self):
        self.fams: dict[str, object] = {}

    def _get(self, cls, name: str, doc: str, labels) -> object:
        fam = self.fams.get(name)
        if fam is None:
            fam = self.fams[name] = cls(name, doc, labels=list(labels))
        return fam

    def gauge(self, name: str, doc: str, labels, values, value) -> None:
        if value is not None:
            self._get(GaugeMetricFamily, name, doc, labels).add_metric(list(values), float(value))

    def counter(self, name: str, doc: str, labels, values, value) -> None:
        if value is not None:
            self._get(CounterMetricFamily, name, doc, labels).add_metric(list(values), float(value))

    def info(self, name: str, doc: str, labels, values, info: dict) -> None:
        self._get(InfoMetricFamily, name, doc, labels).add_metric(list(values), info)

    def __iter__(self):
        return iter(self.fams.values())


def _ip(text):
    try:
        return ipaddress.ip_address(text)
    except (TypeError, ValueError):
        return text


def _row_key(row) -> tuple:
    return ("fwmark", row.fwmark) if row.fwmark else (row.protocol.lower(), row.address, row.port)


def _status_key(s: dict) -> tuple:
    return ("fwmark", s["fwmark"]) if s.get("fwmark") else (s["protocol"], _ip(s["address"]), s["port"])


def _sorry_endpoint(s: dict) -> tuple | None:
    """The table entry (address, port) of a service's sorry server while it stands in (the
    status's sorry_real, lb.engine.sorry_endpoint), or None."""
    real = s.get("sorry_real")
    return (_ip(real[0]), real[1]) if real else None


def _service_labels(key: tuple, name: str) -> tuple:
    if key[0] == "fwmark":
        return (name, "", "", "", str(key[1]))
    proto, addr, port = key
    return (name, proto, str(addr), str(port), "0")


def _ago(doc: dict, seconds) -> float | None:
    """A status document's "N seconds ago" as a Unix time."""
    return None if seconds is None else doc["at"] - seconds


class Collector:
    """The registry's one collector: every metric, read when Prometheus asks."""

    def __init__(self, source):
        self.source = source

    def describe(self):
        return []          # names depend on the live state; nothing to collect at registration

    def collect(self):
        f = _Families()
        try:
            doc = self.source.status()
        except Exception as e:   # a stuck or stopping engine: say so rather than fail the scrape
            log.warning("metrics: no status from the engine: %s", e)
            doc = None
        f.gauge("lb_up", "1 when the engine answered this scrape", (), (), doc is not None)
        rows, counters, defense, dp_ok = [], {}, None, True
        try:
            rows = self.source.services()
            counters = self.source.counters()
            defense = self.source.defense()
        except Exception as e:   # the maps of a stopping daemon, a netlink error
            log.warning("metrics: reading the data plane: %s", e)
            dp_ok = False
        f.gauge("lb_dataplane_up", "1 when the data plane's table and counters were read for this scrape",
                (), (), dp_ok)
        if doc is not None:
            # lb_instance, not instance: Prometheus gives every series of a target its own
            # "instance" (host:port), and renames a scraped one exported_instance (or, under
            # honor_labels, lets it replace the target's, and lb_info no longer joins the rest)
            f.info("lb", "the instance, its data plane and lb's version", ("lb_instance", "dataplane", "version"),
                   (doc["instance"], doc.get("dataplane", ""), __version__), {})
            self._reloads(f, doc)
        self._services(f, doc, rows)
        self._counters(f, counters)
        self._defense(f, defense)
        if doc is not None and doc.get("ha"):
            self._ha(f, doc, doc["ha"])
        if doc is not None and doc.get("bgp"):
            self._bgp(f, doc["bgp"])
        return list(f)

    @staticmethod
    def _bgp(f: _Families, bgp: dict) -> None:
        """[bgp]: the sessions and routes `lb status` shows (lb.bgp.announcer.Announcer.status)."""
        sp = bgp.get("speaker") or {}
        f.gauge("lb_bgp_speaker_up", "1 while ExaBGP runs and its agent reports (lb status: speaker exabgp pid N)",
                (), (), bool(sp.get("pid")) and bool(sp.get("agent")))
        f.counter("lb_bgp_speaker_restarts_total", "times lb started ExaBGP again after it was gone", (), (),
                  sp.get("restarts", 0))
        f.counter("lb_bgp_speaker_refused_commands_total", "route commands ExaBGP answered with an error "
                  "(counted by the current agent)", (), (), sp.get("errors", 0))
        f.counter("lb_bgp_speaker_unreadable_lines_total", "lines from ExaBGP its agent could not read "
                  "(counted by the current agent)", (), (), sp.get("bad_lines", 0))
        f.counter("lb_bgp_lease_renew_failures_total", "renewals of the BGP lease that failed (a full /run)",
                  (), (), bgp.get("renew_failures", 0))
        for n in bgp.get("neighbors") or []:
            f.gauge("lb_bgp_session_up", "1 while the BGP session with the neighbor is established",
                    ("neighbor",), (n["address"],), n.get("state") == "up")
            f.counter("lb_bgp_session_ups_total", "times the session came up (since its ExaBGP started)",
                      ("neighbor",), (n["address"],), n.get("ups", 0))
        announced = set(bgp.get("announced") or ())
        for v in bgp.get("vips") or []:
            f.gauge("lb_bgp_route_servable", "1 while this director can serve the VIP (lb announces it)",
                    ("prefix",), (v["prefix"],), v.get("servable"))
            f.gauge("lb_bgp_route_announced", "1 while the speaker announces the VIP's route",
                    ("prefix",), (v["prefix"],), v["prefix"] in announced)

    # ---- virtual and real servers ----
    def _services(self, f: _Families, doc: dict | None, rows: list) -> None:
        configured = {_status_key(s): s for s in (doc or {}).get("services", [])}
        seen = set()
        for row in rows:
            key = _row_key(row)
            s = configured.get(key)
            seen.add(key)
            labels = _service_labels(key, s["name"] if s else "")
            f.info("lb_virtual_server", "a virtual service (the scheduler as a label)", SERVICE_LABELS, labels,
                   {"scheduler": row.scheduler})
            self._stats(f, "lb_virtual_server", "virtual service", SERVICE_LABELS, labels, row)
            sorry = _sorry_endpoint(s) if s is not None else None
            reals = {}
            if s is not None:
                fw = bool(s.get("fwmark"))
                reals = {(_ip(r["address"]), 0 if fw else r["port"]): r for r in s["real_servers"]}

            def usable(rr) -> bool:
                # ... nor one the data plane has no next hop for (it skips it as at weight 0)
                nh = (reals.get((rr.address, rr.port)) or {}).get("nexthop_error")
                return rr.weight > 0 and (rr.address, rr.port) != sorry and not (nh and not nh.get("kept"))
            # the sorry server standing in is no usable real server: the pool is down (alert on 0)
            f.gauge("lb_virtual_server_usable_real_servers",
                    "real servers of the pool taking new connections (weight > 0, a next hop; not the sorry "
                    "server)", SERVICE_LABELS, labels, sum(1 for rr in row.reals if usable(rr)))
            for rr in row.reals:
                r = reals.pop((rr.address, rr.port), None)
                # a row of no configured server: the sorry server, or one draining after a reload
                name = r["name"] if r else ("sorry_server" if (rr.address, rr.port) == sorry else "")
                rl = labels + (name, str(rr.address), str(rr.port))
                self._stats(f, "lb_real_server", "real server", REAL_LABELS, rl, rr)
                f.gauge("lb_real_server_connections_active",
                        "TCP connections in ESTABLISHED or a half-open state, as IPVS's ActiveConn",
                        REAL_LABELS, rl, rr.active)
                f.gauge("lb_real_server_connections_inactive", "other connections (InActConn)", REAL_LABELS, rl,
                        rr.inactive)
                f.gauge("lb_real_server_persistence_templates", "persistence templates naming it (PersistConn)",
                        REAL_LABELS, rl, rr.persist)
                f.gauge("lb_real_server_dataplane_weight", "the weight the data plane schedules with",
                        REAL_LABELS, rl, rr.weight)
                if r is not None:
                    self._real_status(f, rl, r)
            for (addr, port), r in reals.items():     # configured, not in the table (down, inactive)
                self._real_status(f, labels + (r["name"], str(addr), str(port)), r)
            if s is not None:
                f.gauge("lb_virtual_server_on_sorry_server", "1 while new connections go to the sorry server",
                        SERVICE_LABELS, labels, bool(s.get("on_sorry_server")))
        for key, s in configured.items():             # configured, not in the table (inactive)
            if key in seen:
                continue
            labels = _service_labels(key, s["name"])
            fw = bool(s.get("fwmark"))
            for r in s["real_servers"]:
                self._real_status(f, labels + (r["name"], r["address"], str(0 if fw else r["port"])), r)

    @staticmethod
    def _stats(f: _Families, prefix: str, what: str, labels, values, row) -> None:
        for field, name, doc in STATS:
            f.counter(f"{prefix}_{name}_total", f"{doc} ({what}; ipvsadm --stats)", labels, values,
                      getattr(row.stats, field))
        for field, name, doc in STATS:
            f.gauge(f"{prefix}_{name}_per_second", f"{doc} per second (IPVS's 2 s estimator, smoothed; "
                    f"{what}; ipvsadm --rate)", labels, values, getattr(row.rate, field))

    @staticmethod
    def _real_status(f: _Families, labels, r: dict) -> None:
        f.gauge("lb_real_server_weight", "effective weight (0: out of rotation)", REAL_LABELS, labels, r["weight"])
        f.gauge("lb_real_server_configured_weight", "the weight in the configuration", REAL_LABELS, labels,
                r.get("configured_weight"))
        for source in lbweight.SOURCES:
            f.gauge("lb_real_server_weight_source", "1 for why the server has its weight (lb.weight: configured, "
                    "load_monitor, override, down_quiesced, down, inactive, sorry_server)",
                    REAL_LABELS + ("source",), labels + (source,), r["weight_source"] == source)
        health = r.get("health")
        f.gauge("lb_real_server_up", "1 unless its health check has taken it down", REAL_LABELS, labels,
                health != "down")
        nh = r.get("nexthop_error")
        f.gauge("lb_real_server_nexthop_resolved", "0 while the data plane cannot resolve its next hop (its MAC "
                "or its gateway's: ARP / ND unanswered; `lb status` says why)", REAL_LABELS, labels, not nh)
        f.gauge("lb_real_server_no_nexthop", "1 while it gets no new connections for want of a next hop (none "
                "resolved since it was added)", REAL_LABELS, labels, bool(nh) and not nh.get("kept"))
        f.gauge("lb_real_server_health_checked", "1 when a health check watches it", REAL_LABELS, labels,
                health not in (None, "unmonitored"))
        f.counter("lb_real_server_health_checks_total", "health checks run", REAL_LABELS, labels, r.get("checks"))
        f.counter("lb_real_server_health_check_failures_total", "health checks that failed", REAL_LABELS, labels,
                  r.get("failures"))
        f.counter("lb_real_server_health_checks_not_run_total", "health checks the director could not run (out of "
                  "file descriptors, memory or processes): not counted against the server", REAL_LABELS, labels,
                  r.get("not_run"))
        for to, key in (("down", "downs"), ("up", "ups")):
            f.counter("lb_real_server_health_transitions_total", "times the health check took it down or "
                      "brought it back", REAL_LABELS + ("to",), labels + (to,), r.get(key))
        last = r.get("last_check")
        if last:
            f.gauge("lb_real_server_last_health_check_duration_seconds", "how long the last health check took",
                    REAL_LABELS, labels, last.get("duration"))
            f.gauge("lb_real_server_last_health_check_success", "1 when the last health check passed",
                    REAL_LABELS, labels, bool(last.get("ok")))
            f.gauge("lb_real_server_last_health_check_timestamp_seconds", "when the last health check ended",
                    REAL_LABELS, labels, last.get("at"))

    # ---- the data path, reloads, HA ----
    @staticmethod
    def _counters(f: _Families, counters: dict) -> None:
        for name, value in sorted(counters.items()):
            if name.endswith(LEVEL_SUFFIXES):
                f.gauge(f"lb_dataplane_{name}", f"data path level {name}", (), (), value)
            else:
                f.counter("lb_dataplane_events_total", "packets the data path passed, dropped or answered for a "
                          "reason (lb status: data path)", ("event",), (name,), value)

    @staticmethod
    def _defense(f: _Families, d: dict | None) -> None:
        """The embryonic table's fill and IPVS's defense strategies over it (lb.dataplane.defense;
        None: the IPVS data plane, whose kernel keeps both to itself)."""
        if d is None:
            return
        f.gauge("lb_dataplane_embryonic_entries", "entries in the embryonic connection table (handshakes and "
                "first packets not yet established; the defenses' estimate, corrected by each sweep)", (), (),
                d["embryonic_size"] - d["embryonic_free"])
        f.gauge("lb_dataplane_embryonic_entries_limit", "the embryonic table's size ([tables] embryonic)", (), (),
                d["embryonic_size"])
        f.gauge("lb_dataplane_defense_threshold_free_entries", "amemthresh: automatic defenses engage while "
                "fewer embryonic entries than this are free", (), (), d["amemthresh"])
        for strategy, mode in d["modes"].items():
            f.gauge("lb_dataplane_defense_mode", "IPVS's sysctl value of the strategy (0 never, 1 automatic, "
                    "2 automatic and engaged, 3 always)", ("strategy",), (strategy,), mode)
            f.gauge("lb_dataplane_defense_engaged", "1 while the strategy is engaged (mode 2 or 3)",
                    ("strategy",), (strategy,), strategy in d["engaged"])
        rate = d["drop_rate"]
        f.gauge("lb_dataplane_defense_drop_packet_ratio", "share of new connections drop_packet drops "
                "(1/N of lb status' \"dropping 1 in N\"; 0 when not dropping)", (), (), 1 / rate if rate else 0)
        f.counter("lb_dataplane_defense_drop_entry_deletions_total", "embryonic entries drop_entry deleted "
                  "(since the daemon started)", (), (), d["drop_entry_deleted"])

    @staticmethod
    def _reloads(f: _Families, doc: dict) -> None:
        rel = doc.get("reloads") or {}
        for result in RELOAD_RESULTS:
            f.counter("lb_config_reloads_total", "reloads by result (ok; refused: the file was bad, nothing "
                      "changed; failed: applying it failed)", ("result",), (result,), rel.get(result, 0))
        f.gauge("lb_config_last_reload_successful", "0 when the last reload was refused or failed", (), (),
                rel.get("last_ok", True))
        f.gauge("lb_config_last_reload_success_timestamp_seconds", "when the running config was loaded", (), (),
                rel.get("loaded_at"))
        f.gauge("lb_config_warnings", "warnings of the running config (lb check prints them)", (), (),
                doc.get("config_warnings", 0))
        own = doc.get("ownership") or {}
        f.counter("lb_addresses_restored_total", "addresses of the active director added back after they were "
                  "gone from their interface (a link down and up drops IPv6 addresses)", (), (),
                  own.get("addresses_restored", 0))
        for kind, n in sorted((doc.get("task_restarts") or {}).items()):
            f.counter("lb_task_restarts_total", "background tasks restarted after an unexpected error (logged "
                      "with its traceback), by kind (health, load, pulse-*, bgp-lease, configsync-push)",
                      ("task",), (kind,), n)
        if "housekeeping_errors" in doc:       # every step, at 0 until it fails (`lb status --json`)
            from lb.engine import HOUSEKEEPING
            errors = doc["housekeeping_errors"] or {}
            for step in sorted(set(HOUSEKEEPING) | set(errors)):
                f.counter("lb_housekeeping_errors_total", "the run loop's housekeeping steps that failed (each "
                          "tried again at its next turn; logged at most once a minute), by step", ("step",),
                          (step,), errors.get(step, 0))
        for step, t in sorted((doc.get("housekeeping_seconds") or {}).items()):   # the steps that ran
            f.counter("lb_housekeeping_runs_total", "the run loop's housekeeping steps run (ended, failed or "
                      "not), by step", ("step",), (step,), t.get("runs", 0))
            f.counter("lb_housekeeping_seconds_total", "the time the run loop's housekeeping steps took, "
                      "summed, by step", ("step",), (step,), t.get("seconds", 0.0))
            f.gauge("lb_housekeeping_last_seconds", "the time a housekeeping step's last run took, by step "
                    "(the sweep: its scan of the connection tables included)", ("step",), (step,),
                    t.get("last", 0.0))
        f.counter("lb_dataplane_xdp_attached_again_total", "XDP programs attached again after they were gone "
                  "from their interface (re-created, or the program taken off)", (), (), own.get("xdp_attached", 0))

    @staticmethod
    def _ha(f: _Families, doc: dict, ha: dict) -> None:
        for role in HA_ROLES:
            f.gauge("lb_ha_role", "1 for this director's role", ("role",), (role,), ha["role"] == role)
        f.gauge("lb_ha_primary", "1 on the primary node, 0 on the backup", (), (), ha["node"] == "primary")
        f.counter("lb_ha_role_changes_total", "role changes", (), (), ha.get("role_changes"))
        f.counter("lb_ha_takeovers_total", "times this director became active", (), (), ha.get("takeovers"))
        peer = ha["peer"]
        f.gauge("lb_ha_peer_alive", "1 while the peer's heartbeats arrive within deadtime", (), (), peer["alive"])
        for state in PEER_STATES:
            f.gauge("lb_ha_peer_state", "1 for the peer's last announced state", ("state",), (state,),
                    peer["state"] == state)
        f.gauge("lb_ha_peer_last_heard_timestamp_seconds", "when the peer was last heard", (), (),
                _ago(doc, peer.get("last_heard_s")))
        f.gauge("lb_ha_link_up", "0 while the public link is down (monitor_links)", (), (), ha.get("link_ok", True))
        keys = ha.get("keys") or {}
        f.gauge("lb_ha_keys", "keys in the HA key file (the first signs, any is accepted)", (), (), keys.get("count"))
        f.gauge("lb_ha_peer_key", "which of them the peer's messages are signed with (1: the first, as ours; "
                "0: not heard yet); another while a change of keys is under way", (), (),
                keys.get("peer_signs_with") or 0 if keys else None)
        for name, ch in ha.get("channels", {}).items():
            f.counter("lb_ha_heartbeats_sent_total", "pulse messages sent (heartbeats and stand-downs)",
                      ("channel",), (name,), ch["tx"])
            f.counter("lb_ha_heartbeats_received_total", "authentic pulse messages received",
                      ("channel",), (name,), ch["rx"])
            f.counter("lb_ha_heartbeat_send_errors_total", "pulse messages the socket refused",
                      ("channel",), (name,), ch.get("tx_errors"))
            f.counter("lb_ha_heartbeat_icmp_errors_total", "ICMP errors pending on the socket (a spoofed "
                      "unreachable or prohibited, or the peer's port closed a moment), met by a send (sent again at "
                      "once) or a read",
                      ("channel",), (name,), ch.get("icmp_errors"))
            f.gauge("lb_ha_last_heartbeat_timestamp_seconds", "when the peer's last message came on this channel",
                    ("channel",), (name,), _ago(doc, ch.get("last_heartbeat_s")))
        counters = ha.get("counters", {})
        for key, (name, text) in HA_OTHER.items():
            if key in counters:
                f.counter(name, text, (), (), counters[key])
        for reason, n in sorted(counters.items()):
            if reason not in HA_ACCEPTED and reason not in HA_OTHER:
                f.counter("lb_ha_heartbeats_refused_total", "pulse messages dropped (forged, replayed, stale, "
                          "malformed, wrong channel, ...)", ("reason",), (reason,), n)
        f.counter("lb_ha_standdowns_received_total", "stand-down messages from the peer", (), (),
                  counters.get("standdown_rx"))
        sy = ha.get("sync", {})
        f.gauge("lb_ha_sync_enabled", "1 when connections are synchronised to the peer", (), (), sy.get("enabled"))
        f.gauge("lb_ha_sync_tracked_entries", "connection entries the active has sent and follows", (), (),
                sy.get("tracked"))
        f.gauge("lb_ha_sync_pending_entries", "entries waiting to be sent", (), (), sy.get("pending"))
        lag = sy.get("last_tx_s") if ha["role"] == "active" else sy.get("last_rx_s")
        f.gauge("lb_ha_sync_lag_seconds", "since the last sync batch (sent on the active, received on the "
                "backup)", (), (), lag)
        for key, what in (("last_tx_s", "sent"), ("last_rx_s", "received")):
            f.gauge(f"lb_ha_sync_last_{what}_timestamp_seconds", f"when the last sync batch was {what}", (), (),
                    _ago(doc, sy.get(key)))
        for key, what in (("sync_tx_records", "sent"), ("sync_rx_records", "received"),
                          ("sync_skipped", "skipped")):
            f.counter(f"lb_ha_sync_{what}_records_total", f"connection records {what}", (), (), counters.get(key))


class EndpointCollector:
    """The endpoint's own: scrapes it dropped, by why -- "busy" (no slot: MAX_CONNECTIONS, or
    MAX_PER_CLIENT from one client, MAX_PER_SITE from one IPv6 /48 past half), "broken" (timed out or broke off), "cut" (past
    REQUEST_DEADLINE), "bad_request" (a request the exposition cannot answer: an Accept header
    it cannot read, or a head longer than MAX_HEAD), "failed" (the scrape raised).  ``before``:
    what the servers a reload of [metrics] stopped dropped, by attribute (MetricsServer.dropped),
    so that the counter goes on rather than back to 0."""

    REASONS = (("busy", "refused"), ("broken", "broken"), ("cut", "cut"), ("bad_request", "bad_request"),
               ("failed", "failed"))

    def __init__(self, server, before: dict | None = None, lock: threading.Lock | None = None):
        self.server = server                # a callable: the serving httpd, or None
        self.before = before if before is not None else {}
        self.lock = lock or threading.Lock()    # MetricsServer.stop moves a server's counts to before

    def describe(self):
        return []

    def collect(self):
        f = _Families()
        with self.lock:
            httpd = self.server()
            counts = {attr: self.before.get(attr, 0) + (getattr(httpd, attr, 0) if httpd is not None else 0)
                      for _reason, attr in self.REASONS}
        for reason, attr in self.REASONS:
            f.counter("lb_metrics_connections_dropped_total", "connections to this endpoint dropped, by "
                      "reason (busy: no slot; broken: timed out or broke off; cut: past the request deadline; "
                      "bad_request: an Accept header it cannot read; failed: the scrape raised)",
                      ("reason",), (reason,), counts[attr])
        return list(f)


class _HeadLimit:
    """The request's input, whose lines (the request line and the headers) may add up to
    MAX_HEAD bytes: past that, http.client.LineTooLong (answered 431 when in the headers).
    http.server alone reads 100 header lines of 64 KiB, 6.5 MB a connection held for as long as
    the client trickles (REQUEST_DEADLINE), 200 MB for the 32 connections anyone may open."""

    def __init__(self, raw, on_overflow):
        self.raw, self.on_overflow, self.used = raw, on_overflow, 0

    def readline(self, size=-1):
        left = MAX_HEAD - self.used
        line = self.raw.readline(left + 1 if size is None or size < 0 else min(size, left + 1))
        self.used += len(line)
        if self.used > MAX_HEAD:
            self.on_overflow()
            raise http.client.LineTooLong(f"request line and headers longer than {MAX_HEAD} bytes")
        return line

    def __getattr__(self, name):
        return getattr(self.raw, name)


class _Handler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT          # the socket's: a silent client's read ends in TimeoutError

    def setup(self):
        super().setup()
        self.rfile = _HeadLimit(self.rfile, self._too_large)

    def handle(self):
        try:
            super().handle()
        except http.client.LineTooLong:
            # the request line itself (parse_request answers 431 for a header): 414, as
            # http.server answers a request line past its own bound, not a dropped connection
            # counted "broken" as well as "bad_request"
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414)

    def _too_large(self):
        with self.server.lock:
            self.server.bad_request += 1
        self.server.ratelog.log("too_large", logging.WARNING, "metrics: refused a request from %s: request line "
                                "and headers longer than %d bytes", self.client_address[0], MAX_HEAD)

    def log_message(self, format, *args):   # noqa: A002 - the base class's name
        pass                        # no line per request on stderr


def _server_class(family: int):
    from prometheus_client.exposition import ThreadingWSGIServer

    class Server(ThreadingWSGIServer):
        """A thread a connection, at most MAX_CONNECTIONS of them; the rest closed at once."""
        address_family = family
        request_queue_size = 2 * MAX_CONNECTIONS    # the listen backlog (socketserver's is 5)

        def server_activate(self):
            # connections being served, by client (each address of a /64 is the same client's) and by /48
            self.slots = Slots(MAX_CONNECTIONS, MAX_PER_CLIENT)
            self.sites = Slots(MAX_CONNECTIONS, MAX_PER_SITE)
            self.lock = threading.Lock()
            self.refused = 0            # connections closed for want of a slot
            self.broken = 0             # connections that timed out or broke off
            self.cut = 0                # connections cut at REQUEST_DEADLINE
            self.bad_request = 0        # requests the exposition could not read (an Accept header)
            self.failed = 0             # scrapes that raised
            self.stopping = False       # MetricsServer.stop: scrapes waiting their turn are not generated
            self.ratelog = RateLimitedLog(log, LOG_EVERY)
            super().server_activate()

        def _take(self, addr: str) -> bool:
            client, *site = client_keys(addr)
            with self.lock:
                # a /48's cap only once half the slots are taken: one host of a site holding it
                # does not lock the site's Prometheus (another /64) out while there is room
                pressed = self.slots.open >= MAX_CONNECTIONS // 2
                if self.slots.take(client) is not None:
                    return False
                if site and self.sites.take(site[0], capped=pressed) is not None:
                    self.slots.give(client)
                    return False
                return True

        def _give(self, addr: str) -> None:
            client, *site = client_keys(addr)
            with self.lock:
                self.slots.give(client)
                if site:
                    self.sites.give(site[0])

        def process_request(self, request, client_address):
            if not self._take(client_address[0]):
                self.refused += 1
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self._give(client_address[0])
                raise

        def _cut(self, request) -> None:
            """A client that trickles a byte now and then never meets IDLE_TIMEOUT: at the
            deadline its socket is shut, which ends the handler's blocked read."""
            self.cut += 1
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def process_request_thread(self, request, client_address):
            timer = threading.Timer(REQUEST_DEADLINE, self._cut, (request,))
            timer.daemon = True
            timer.start()
            try:
                super().process_request_thread(request, client_address)
            finally:
                timer.cancel()
                self._give(client_address[0])

        def handle_error(self, request, client_address):
            self.broken += 1            # socketserver would print a traceback to stderr

    return Server


def _guarded(app, server):
    """``app`` (prometheus_client's WSGI application), whose exceptions are answered, counted and
    logged at a bounded rate here: wsgiref would print each one's traceback to stderr, at the rate
    anyone who reaches the port likes (``Accept: text/plain; version=x`` makes prometheus_client's
    choose_encoder compare a str with an int).  At most MAX_SCRAPES are generated at once, the
    others wait their turn: a scrape is CPU under the GIL (~1.5 s for 4,000 real servers), and
    each connection generating its own shared the interpreter out among as many threads as
    connections, the engine's loop -- heartbeats, health checks -- one among them."""
    from prometheus_client.exposition import choose_encoder

    turn = threading.BoundedSemaphore(MAX_SCRAPES)

    def guarded(environ, start_response):
        httpd = server()
        try:
            choose_encoder(environ.get("HTTP_ACCEPT"))
        except Exception as e:
            if httpd is not None:
                httpd.bad_request += 1
                httpd.ratelog.log("bad_request", logging.WARNING, "metrics: refused a request from %s: "
                                  "unreadable Accept header %.100r (%s)", environ.get("REMOTE_ADDR"),
                                  environ.get("HTTP_ACCEPT"), e)
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"unreadable Accept header\n"]
        if not turn.acquire(timeout=REQUEST_DEADLINE):    # its connection was cut meanwhile
            start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"busy\n"]
        if httpd is None or httpd.stopping:
            # stopped while it waited its turn: the data plane may be closing (Engine.run stops
            # the endpoint first), the engine's loop gone
            turn.release()
            start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"stopped\n"]
        try:
            return app(environ, start_response)
        except Exception as e:
            if httpd is not None:
                httpd.failed += 1
                httpd.ratelog.log("failed", logging.ERROR, "metrics: a scrape failed: %s: %s", type(e).__name__, e)
            start_response("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")],
                           sys.exc_info())
            return [b"scrape failed\n"]
        finally:
            turn.release()

    return guarded


class MetricsServer:
    """The /metrics endpoint of one engine: started by Engine.run, restarted when a reload
    changes [metrics], stopped before the data plane closes."""

    def __init__(self, engine, loop: asyncio.AbstractEventLoop):
        self.engine = engine
        self.loop = loop
        self.settings = None
        self.httpd = None
        self.thread = None
        self.dropped: dict[str, int] = {}   # what the servers stop() ended dropped (EndpointCollector)
        self.lock = threading.Lock()        # ... moved there with self.httpd set to None at once

    def start(self, settings) -> bool:
        """Serve on settings.listen; False (after an error line) when the address cannot be bound."""
        from prometheus_client import make_wsgi_app
        from prometheus_client.gc_collector import GCCollector
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        self.settings = settings
        if not settings.enabled:
            return True
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(EngineSource(self.engine, self.loop)))
        registry.register(EndpointCollector(lambda: self.httpd, self.dropped, self.lock))
        for extra in (ProcessCollector, PlatformCollector, GCCollector):
            extra(registry=registry)
        try:
            family = socket.AF_INET6 if settings.address.version == 6 else socket.AF_INET
            self.httpd = make_server(str(settings.address), settings.port,
                                     _guarded(make_wsgi_app(registry), lambda: self.httpd),
                                     _server_class(family), handler_class=_Handler)
        except OSError as e:     # forwarding goes on; only the metrics are missing
            log.error("metrics: cannot listen on %s: %s", settings.listen, e)
            return False
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)
        self.thread.start()
        log.info("metrics on http://%s/metrics", endpoint_text(settings.address, self.port))
        return True

    @property
    def port(self) -> int | None:
        """The port served (the kernel's choice when settings.port is 0); None when not serving."""
        return None if self.httpd is None else self.httpd.server_address[1]

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.stopping = True
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)
            with self.lock:
                for _reason, attr in EndpointCollector.REASONS:
                    self.dropped[attr] = self.dropped.get(attr, 0) + getattr(self.httpd, attr)
                self.httpd = self.thread = None

    def reconfigure(self, settings) -> None:
        """After a reload: restart on new settings, nothing when they are the same."""
        if settings == self.settings:
            return
        self.stop()
        self.start(settings)


async def start(engine):
    """A MetricsServer for engine (running only when its config enables it)."""
    server = MetricsServer(engine, asyncio.get_running_loop())
    await asyncio.get_running_loop().run_in_executor(None, server.start, engine.cfg.metrics)
    return server


__all__ = ["Collector", "EngineSource", "MetricsServer", "start"]
