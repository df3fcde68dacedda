"""The engine's side of route announcement: which VIPs this director can serve, as a lease.

After each apply the engine hands over the table it applied; a VIP is announced while this
director can serve it: the data plane attached on the public interface, the director active
(always, unless an [ha] pair makes it the backup), and every virtual service of the table on
that address with a usable real server (weight > 0; the engine puts a service's sorry server
in the table when none is usable).  A VIP several services share is withdrawn as soon as one
of them cannot be served: the router cannot route by port, and a director that takes a VIP's
packets must serve all of them.  A VIP is announced once servable with the same usable real
servers for [bgp] ``settle`` seconds -- health checks coming back, not a role change: an [ha]
backup counts them too, so a takeover announces at once.

The routes go into the lease (lb.bgp.lease) that the speaker's agent reads, renewed every
second by ``run()``.  The speaker itself (ExaBGP) is started by ``start()``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import ipaddress
import logging
import os
import threading
import time

from lb.bgp import speaker
from lb.bgp.lease import Route, lease_path, read_json, read_lease, status_path, write_lease
from lb.tasks import RateLimitedLog

log = logging.getLogger("lb.bgp")

RENEW_S = 1.0
AGENT_STALE_S = 5.0   # the agent rewrites its status every second: older means it is not running
# an upgrade's kept routes (`lb stop --keep-dataplane`) hold this long beyond [bgp] lease: the
# next `lb run` must get through its start -- a cold one compiles the programs for seconds, one
# with new [tables] moves the connections -- and it owns them from its first moment (claim_kept)
KEEP_S = 30.0
# ExaBGP gone is started again at once, then (gone again, or its start failed) after 1, 2, 4 ...
# SPEAKER_BACKOFF_MAX s; once it has run SPEAKER_STABLE_S the backoff is back to its start
SPEAKER_BACKOFF_MIN = 1.0
SPEAKER_BACKOFF_MAX = 60.0
SPEAKER_STABLE_S = SPEAKER_BACKOFF_MAX


class BgpError(Exception):
    pass


def stop_leftover(instance: str) -> bool:
    """At the start of a run without [bgp]: an ExaBGP an earlier run of this instance left
    (`lb stop --keep-dataplane`, a restart, a crash) is stopped -- its sessions closing withdraw
    whatever it still announced -- and its lease, status and configuration go.  Nothing else would
    ever stop it: it kept its sessions with the router up, `lb status` no longer showed it, and a
    kept lease's routes stayed announced until their term.  True when there was one."""
    pid = speaker.running_pid(instance)
    if pid is None:
        return False
    log.warning("BGP: [bgp] is no longer configured: stopping the ExaBGP (pid %d) an earlier run left "
                "(its sessions close, which withdraws its routes)", pid)
    speaker.stop(instance)
    for path in (lease_path(instance), status_path(instance), speaker.conf_path(instance)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return True


def reload_problem(old, new) -> str | None:
    """Why a reload from [bgp] ``old`` to ``new`` needs a restart (None: it does not; only the
    [[bgp.vip]] attributes may change live)."""
    if old == new:
        return None
    if old is None or new is None:
        return "adding or removing [bgp] needs a restart"
    if dataclasses.replace(old, vips=()) != dataclasses.replace(new, vips=()):
        return "the [bgp] settings other than [[bgp.vip]] need a restart"
    return None


def route_of(bgp, vip) -> Route:
    v = bgp.vip(vip)
    return Route(f"{vip}/{vip.max_prefixlen}", v.med, v.communities)


def servable(table, attached: bool, active: bool) -> dict:
    """VIP -> None (announce it) or why not, for every VIP of the table's services."""
    out: dict = {}
    for svc in table.services:
        vips = [g.address for g in svc.groups] if svc.fwmark else [svc.address]
        if not attached:
            why = "the data plane is not attached"
        elif not active:
            why = "this director is not the active one ([ha])"
        elif not any(r.weight > 0 for r in svc.reals):
            what = f"FWM {svc.fwmark}" if svc.fwmark else f"{svc.protocol} {svc.address}:{svc.port}"
            why = f"virtual service {f'{svc.name} ({what})' if svc.name else what} has no usable real server"
        else:
            why = None
        for vip in vips:            # one reason per VIP, the first; any reason beats none
            if vip not in out or (why is not None and out[vip] is None):
                out[vip] = why
    return out


def usable_sets(table) -> dict:
    """VIP -> the usable real servers of each of its services: what the directors must agree on."""
    out: dict = {}
    for svc in table.services:
        usable = (svc.key, tuple(sorted((str(r.address), r.port) for r in svc.reals if r.weight > 0)))
        for vip in ([g.address for g in svc.groups] if svc.fwmark else [svc.address]):
            out.setdefault(vip, set()).add(usable)
    return {vip: frozenset(sets) for vip, sets in out.items()}


def local_address_toward(addr) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The source address the kernel picks toward ``addr`` (ip route get)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=str(addr))
        except NetlinkError:
            return None
    for r in routes:
        src = r.get_attr("RTA_PREFSRC")
        if src:
            return ipaddress.ip_address(src)
    return None


class Announcer:
    """One director's announcements: ``update`` after each apply, ``run`` renews the lease."""

    def __init__(self, cfg, *, renew_s: float = RENEW_S):
        self.bgp = cfg.bgp
        self.instance = cfg.instance
        self.renew_s = renew_s
        self.lease_path = lease_path(self.instance)
        self.status_path = status_path(self.instance)
        self.table = None
        self.attached = False
        self.active = True
        self.leaving = False
        self.kept = False               # leave(keep=True) wrote the lease for the next lb run
        self.reasons: dict = {}         # VIP -> None (announced) or why it is not
        self.routes: set[Route] = set()
        self._settling: dict = {}       # VIP -> (its usable real servers, servable with them since)
        # update() runs after applies (worker threads) and every second (the loop): one at a time,
        # so an older view never writes the lease after a newer one
        self._lock = threading.RLock()
        self.speaker_pid: int | None = None
        self.speaker_text: str | None = None    # ExaBGP's configuration, once started
        self.speaker_restarts = 0
        self.renew_failures = 0          # lease renewals that failed (a full /run)
        # the renewals' own thread: in the loop's default executor they waited behind whatever
        # else runs there (status requests, `lb list`, a reload's apply), and a renewal late by
        # [bgp] lease had the agent withdraw every route of a director that was not hung
        self._renewer: concurrent.futures.ThreadPoolExecutor | None = None
        self._renew_log = RateLimitedLog(log, 60.0)
        self._agent_log = RateLimitedLog(log, 60.0)
        self._agent_seen = {"errors": 0, "bad_lines": 0}    # the agent's counts last looked at
        # (not before, the backoff after that) of the next restart; back to (0, MIN) once ExaBGP
        # has run SPEAKER_STABLE_S, since _speaker_since (when keep_speaker first saw it running)
        self._speaker_retry = (0.0, SPEAKER_BACKOFF_MIN)
        self._speaker_since: float | None = None
        self.local: dict = {}
        self.router_id = None

    # ---- what to announce ----
    def update(self, table=None, *, attached: bool | None = None, active: bool | None = None,
               now: float | None = None) -> None:
        """After an apply (``table``), an attach or a role change, and every second: the lease's
        routes.  A VIP that becomes servable is announced once it has stayed servable with the same
        usable real servers for [bgp] settle seconds (counted on the backup too: a takeover alone
        does not wait); an announced one stays while servable."""
        with self._lock:
            self._update(table, attached, active, now)

    def _update(self, table, attached, active, now) -> None:
        if table is not None:
            self.table = table
        if attached is not None:
            self.attached = attached
        if active is not None:
            self.active = active
        now = time.monotonic() if now is None else now
        reasons = {} if self.table is None else servable(self.table, self.attached, self.active)
        # settle is for health coming back, not for the role: a backup's VIPs settle as the
        # active's would (its health checks run all along), so a takeover announces at once
        ready = reasons if self.active or self.table is None else servable(self.table, self.attached, True)
        sets = {} if self.table is None else usable_sets(self.table)
        # a VIP that left the table settles afresh when it comes back
        for vip in [v for v in self._settling if v not in reasons]:
            del self._settling[vip]
        for vip, why in ready.items():
            if why is not None:
                self._settling.pop(vip, None)
                continue
            since = self._settling.get(vip)
            if since is None or since[0] != sets[vip]:
                since = self._settling[vip] = (sets[vip], now)
            if reasons[vip] is None and self.reasons.get(vip, "new") is not None \
                    and now - since[1] < self.bgp.settle:
                reasons[vip] = (f"settling: servable with these real servers for {now - since[1]:.1f} "
                                f"of {self.bgp.settle:g} s")
        if self.leaving:
            reasons = {vip: "lb is stopping" for vip in reasons}
        routes = {route_of(self.bgp, vip) for vip, why in reasons.items() if why is None}
        for vip in sorted(reasons, key=str):
            was, why = self.reasons.get(vip, "new"), reasons[vip]
            if (was is None) != (why is None):
                if why is None:
                    log.info("BGP: announcing %s", route_of(self.bgp, vip).prefix)
                elif was is None:
                    log.warning("BGP: withdrawing %s: %s", route_of(self.bgp, vip).prefix, why)
        for vip in sorted(self.reasons, key=str):
            if vip not in reasons and self.reasons[vip] is None:
                log.warning("BGP: withdrawing %s: no longer configured", route_of(self.bgp, vip).prefix)
        self.reasons = reasons
        if routes != self.routes or not os.path.exists(self.lease_path):
            self.routes = routes
            self.renew()

    def renew(self) -> None:
        with self._lock:
            if self.kept:   # a renewal the cancelled run() had under way: the kept lease stays ownerless
                return
            write_lease(self.lease_path, self.routes, os.getpid(), self.bgp.lease)

    async def run(self) -> None:
        """Renew the lease every second while the daemon's loop runs (the speaker's agent
        withdraws everything when this stops: lb hung, killed or gone)."""
        loop = asyncio.get_running_loop()
        if self._renewer is None:
            self._renewer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bgp-lease")
        while True:
            try:
                self.update()            # settled VIPs get announced
                await loop.run_in_executor(self._renewer, self.renew)
            except OSError as e:         # each second while /run is full: logged once a minute
                self.renew_failures += 1
                self._renew_log.log("renew", logging.ERROR, "BGP: cannot renew the lease %s: %s (%d failed so far)",
                               self.lease_path, e, self.renew_failures)
            await self.keep_speaker()
            self.check_agent()
            await asyncio.sleep(self.renew_s)

    def check_agent(self) -> None:
        """What the agent counted that only its status file holds (ExaBGP's children write to
        /dev/null): lines from ExaBGP it could not read, commands ExaBGP refused.  Each a warning,
        at most once a minute."""
        agent = read_json(self.status_path) or {}
        for key, what in (("bad_lines", "lines from ExaBGP its agent could not read"),
                          ("errors", "commands ExaBGP refused")):
            n = agent.get(key)
            if not isinstance(n, int) or isinstance(n, bool):
                continue
            seen, self._agent_seen[key] = self._agent_seen[key], n
            if n > seen:            # (fewer: a new agent, counting from 0)
                last = agent.get("last_bad") if key == "bad_lines" else None
                self._agent_log.log(key, logging.WARNING, "BGP: %d %s so far%s", n, what,
                                    f" (the last: {last!r})" if isinstance(last, str) else "")

    async def keep_speaker(self, now: float | None = None) -> None:
        """ExaBGP gone (killed, or it gave up on its API process) is started again: nothing else
        would announce this director's VIPs again, and the routes went with its sessions.  At
        once the first time; then, while starting fails or what started dies again, after 1, 2,
        4 ... SPEAKER_BACKOFF_MAX s (an ExaBGP that dies at each start is not restarted -- its
        sessions opened and closed -- every second); and at once again after it has run for
        SPEAKER_STABLE_S (the backoff used to go back to its start at each start that worked,
        so one that died within seconds of each start was restarted every second for good)."""
        if self.speaker_text is None or self.leaving:
            return
        now = time.monotonic() if now is None else now
        loop = asyncio.get_running_loop()
        # looked at every second, in the backoff too: how long it ran is what resets the backoff
        if await loop.run_in_executor(None, speaker.running_pid, self.instance) is not None:
            if self._speaker_since is None:
                self._speaker_since = now
            elif now - self._speaker_since >= SPEAKER_STABLE_S:
                self._speaker_retry = (0.0, SPEAKER_BACKOFF_MIN)
            return
        self._speaker_since = None
        not_before, backoff = self._speaker_retry
        if now < not_before:
            return
        self._speaker_retry = (now + backoff, min(backoff * 2, SPEAKER_BACKOFF_MAX))
        log.error("BGP: ExaBGP (pid %s) is not running: starting it again", self.speaker_pid)
        try:
            self.speaker_pid, _ = await loop.run_in_executor(None, speaker.start, self.instance, self.speaker_text)
        except (speaker.SpeakerError, OSError) as e:
            log.error("BGP: cannot start ExaBGP again: %s (next try in %g s)", e, backoff)
            return
        self.speaker_restarts += 1
        self._speaker_since = now
        log.warning("BGP: ExaBGP started again (pid %d)", self.speaker_pid)

    # ---- the speaker ----
    def start(self) -> None:
        """Resolve our end of each session, write ExaBGP's configuration and start it (or adopt
        the running one).  BgpError when it cannot be."""
        self.local = {}
        for n in self.bgp.neighbors:
            addr = n.local_address or local_address_toward(n.address)
            if addr is None:
                raise BgpError(f"bgp: no route to neighbor {n.address}: cannot tell our address toward it "
                               f"(set local_address)")
            self.local[n.address] = addr
        self.router_id = self.bgp.router_id or next(
            (a for a in self.local.values() if a.version == 4), None)
        if self.router_id is None:
            raise BgpError("bgp: router_id is required when no neighbor is IPv4 (a BGP router id is an "
                           "IPv4 address)")
        self._adopt_kept_routes()
        self.renew()
        text = speaker.exabgp_config(self.bgp, self.local, self.router_id, self.instance)
        try:
            self.speaker_pid, adopted = speaker.start(self.instance, text)
        except (speaker.SpeakerError, OSError) as e:
            raise BgpError(f"bgp: {e}") from None
        self.speaker_text = text
        log.info("BGP: %s ExaBGP (pid %d), mode %s, AS %d, router id %s, neighbors %s", "adopted" if adopted
                 else "started", self.speaker_pid, self.bgp.mode, self.bgp.local_as, self.router_id,
                 ", ".join(f"{n.address} (AS {n.peer_as}) from {self.local[n.address]}" for n in self.bgp.neighbors))

    def claim_kept(self) -> None:
        """First thing at start: the routes an upgrade kept (an ownerless lease that still holds)
        become this process's, with the term they have -- gone at once if this start dies, held
        while it loads the data plane, taken over as announced by start()."""
        with self._lock:
            old = read_lease(self.lease_path)
            now = time.monotonic()
            if old is None or old.owner_pid or now > old.expires or not old.routes:
                return
            try:
                write_lease(self.lease_path, old.routes, os.getpid(), old.expires - now, now=now)
            except OSError as e:         # the ownerless lease holds them until its term all the same
                log.warning("BGP: cannot take over the lease %s: %s", self.lease_path, e)
                return
            log.info("BGP: holding the %d routes the previous lb run kept while this one starts "
                     "(%.0f s left of their term)", len(old.routes), old.expires - now)

    def _adopt_kept_routes(self) -> None:
        """An upgrade (`lb stop --keep-dataplane`, then this start) left a lease without owner
        (or claim_kept made it ours) whose routes still hold: they are taken over as announced --
        no settle period, no withdrawal -- and the first update with the table keeps each VIP
        that is still servable (the data plane forwarded all along).  Started afresh, this start
        wrote an empty lease: the agent withdrew every route for [bgp] settle seconds, an outage
        with one director."""
        with self._lock:
            old = read_lease(self.lease_path)
            if old is None or old.owner_pid not in (0, os.getpid()) or time.monotonic() > old.expires \
                    or not old.routes:
                return
            wanted = {route_of(self.bgp, vip).prefix: vip for vip in self.reasons}
            kept = {r for r in old.routes if r.prefix in wanted}
            for r in kept:
                self.reasons[wanted[r.prefix]] = None
            self.routes = {route_of(self.bgp, wanted[r.prefix]) for r in kept}
            if kept:
                log.info("BGP: took over %d routes kept by the previous lb run: %s", len(kept),
                         ", ".join(sorted(r.prefix for r in kept)))

    async def leave(self, keep: bool) -> None:
        """At the end of the daemon's loop.  A clean stop withdraws every route and keeps
        forwarding for the drain period, so the router has moved the flows to the other
        directors before this one's data plane goes.  An upgrade (--keep-dataplane) leaves a
        lease without owner: the routes stay for its term, for the next `lb run` to take over."""
        if keep:
            try:
                with self._lock:         # after a renew the cancelled run() may still be making
                    write_lease(self.lease_path, self.routes, 0, self.bgp.lease + KEEP_S)
                    self.kept = True     # ... and not before it
            except OSError as e:
                log.error("BGP: cannot keep the routes for the next lb run (%s): ExaBGP's agent "
                          "withdraws them once this process has exited", e)
                return
            log.info("BGP: routes kept for %g s (the lease and %g s for a start) for the next lb run",
                     self.bgp.lease + KEEP_S, KEEP_S)
            return
        self.leaving = True
        had = len(self.routes)
        try:
            self.update()
        except OSError as e:
            # (a full /run) the agent would announce the routes until the lease's term, after
            # the data plane has gone: ExaBGP stopped now closes its sessions, which withdraws
            # them, and the drain still comes before the data plane goes
            log.error("BGP: cannot write the lease that withdraws the routes (%s): stopping ExaBGP, "
                      "whose sessions closing withdraw them", e)
            await asyncio.get_running_loop().run_in_executor(None, speaker.stop, self.instance)
        if had and self.bgp.drain:
            log.info("BGP: withdrew %d routes; forwarding %g s (drain) before stopping", had, self.bgp.drain)
            await asyncio.sleep(self.bgp.drain)

    def close(self, keep: bool) -> None:
        """After the data plane stopped: stop ExaBGP (it closes its sessions) and remove the
        lease, the status and its configuration (its log stays), unless keeping them for an
        upgrade."""
        if self._renewer is not None:
            self._renewer.shutdown(wait=False)
            self._renewer = None
        if keep:
            return
        self.leaving = True
        self.routes = set()
        try:
            self.renew()                 # nothing to announce, whatever happens to ExaBGP next
        except OSError:
            pass
        speaker.stop(self.instance)
        for path in (self.lease_path, self.status_path, speaker.conf_path(self.instance)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # ---- what `lb status` shows ----
    def status(self) -> dict:
        agent = read_json(self.status_path) or {}
        fresh = agent.get("updated_mono") is not None and time.monotonic() - float(agent["updated_mono"]) < AGENT_STALE_S
        pid = speaker.running_pid(self.instance)
        neighbors = []
        for n in self.bgp.neighbors:
            st = (agent.get("neighbors") or {}).get(str(n.address), {}) if fresh else {}
            neighbors.append({"address": str(n.address), "peer_as": n.peer_as,
                              "local_address": str(self.local.get(n.address) or n.local_address or ""),
                              "state": st.get("state", "unknown" if pid else "down"), "since": st.get("since"),
                              "reason": st.get("reason"), "ups": st.get("ups", 0)})
        return {"mode": self.bgp.mode, "local_as": self.bgp.local_as,
                "router_id": None if self.router_id is None else str(self.router_id),
                "hold_time": self.bgp.hold_time, "lease": self.bgp.lease, "drain": self.bgp.drain,
                "renew_failures": self.renew_failures,
                "speaker": {"name": "exabgp", "pid": pid, "agent": fresh, "restarts": self.speaker_restarts,
                            "withdrawn_because": agent.get("withdrawn_because") if fresh else None,
                            "errors": agent.get("errors", 0), "bad_lines": agent.get("bad_lines", 0)},
                "neighbors": neighbors,
                "announced": sorted(r["prefix"] for r in agent.get("announced", [])) if fresh else [],
                "vips": [{"prefix": route_of(self.bgp, vip).prefix, "servable": why is None, "reason": why,
                          "med": self.bgp.vip(vip).med, "communities": list(self.bgp.vip(vip).communities)}
                         for vip, why in sorted(self.reasons.items(), key=lambda kv: str(kv[0]))]}


def format_status(doc: dict) -> list[str]:
    """`lb status`'s lines for the "bgp" part of the status."""
    sp = doc["speaker"]
    head = (f"bgp {doc['mode']}  AS {doc['local_as']}  router id {doc['router_id']}  hold {doc['hold_time']}s"
            f"  speaker exabgp " + (f"pid {sp['pid']}" if sp["pid"] else "NOT RUNNING")
            + ("" if sp["agent"] or not sp["pid"] else " (agent not reporting)")
            + (f" (started again {sp['restarts']} times)" if sp.get("restarts") else "")
            + (f" ({sp['errors']} commands refused)" if sp.get("errors") else "")
            + (f" ({sp['bad_lines']} unreadable lines from ExaBGP)" if sp.get("bad_lines") else ""))
    lines = [head]
    for n in doc["neighbors"]:
        since = "" if not n["since"] else f" since {time.strftime('%H:%M:%S', time.localtime(n['since']))}"
        why = f" ({n['reason']})" if n.get("reason") and n["state"] != "up" else ""
        lines.append(f"  neighbor {n['address']} AS {n['peer_as']} from {n['local_address'] or '?'}: "
                     f"{n['state']}{since}{why}")
    announced = set(doc["announced"])
    for v in doc["vips"]:
        attrs = "".join([f" med {v['med']}" if v["med"] is not None else "",
                         f" community {' '.join(v['communities'])}" if v["communities"] else ""])
        state = "announced" if v["prefix"] in announced else ("to announce" if v["servable"] else "withdrawn")
        why = f": {v['reason']}" if v["reason"] else ""
        lines.append(f"  route {v['prefix']}{attrs}: {state}{why}")
    if sp.get("withdrawn_because") and doc["vips"]:
        lines.append(f"  speaker withdrew everything: {sp['withdrawn_because']}")
    return lines
