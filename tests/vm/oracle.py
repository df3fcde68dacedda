"""Scripts of packets and waits that kernel IPVS (in the VM: tests/vm/guest/guest_oracle.py,
from vmtest_ipvs_direct.py) and lb's XDP data plane (on the host, tests/vm/test_ipvs_vm.py,
through BPF_PROG_TEST_RUN) both play; what each shows at every observation point -- the connection entries (state,
expire, real server), the persistence templates, each real server's ActiveConn / InActConn /
PersistConn, and which real server each new connection went to -- must be the same.

A script is one direct-routing TCP service (IPVS's INPUT-ONLY state table: the director sees
only the client's half) and a list of steps:

    ("pkt", flow, flags)   one TCP segment of flow `flow` (client, source port) with flags
                           made of S F A R (seq/ack numbers do not matter to IPVS here)
    ("wait", seconds)      time passes (the kernel sleeps; the host ages every entry's
                           timestamp by as much and runs lb's sweep, as its timer would)
    ("observe", label)     record the state

The rules they cover: the TCP state machine and each state's timeout (`ipvsadm -Lnc`), expiry
after each packet sequence with short tcp / tcpfin timeouts, a SYN into a closed entry
(conn_reuse_mode), connection thresholds (OVERLOAD set at the upper threshold, kept while the
connections live, cleared below the lower one or 3/4 of the upper as they expire one at a
time), and persistence (template creation, the netmask, the template's timeout and
PersistConn, a template outliving its timeout while it controls connections).  twos is
random: it is compared by the distribution of many connections (twos_counts).

Addresses: VIPs 198.18.0.40-.49 and real servers 198.18.1.21.. that do not exist (the
connection entry is made before the packet leaves), clients 198.18.40.0/21.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

VIP = "198.18.0.40"
MARKER_VIP, MARKER_PORT = "198.18.0.41", 9     # the guest's barrier service (see the guest)
REAL_BASE = 21


@dataclass(frozen=True)
class Script:
    id: str
    sched: str
    weights: tuple[int, ...]
    port: int
    flows: tuple[tuple[str, int], ...]                 # (client, source port)
    steps: tuple[tuple, ...]
    thresholds: tuple[tuple[int, int], ...] = ()       # (upper, lower) per real, config order
    persistent: int = 0
    pmask: str | None = None
    timeouts: tuple[int, int, int] = (900, 120, 300)   # tcp, tcpfin, udp (ipvsadm --set)

    def own_times(self) -> list[float]:
        """When each step starts on the script's own time line (the sum of the waits before it)"""
        times, t = [], 0.0
        for step in self.steps:
            times.append(t)
            t += step[1] if step[0] == "wait" else 0.0
        return times

    @property
    def reals(self) -> list[str]:
        return [f"198.18.1.{REAL_BASE + i}" for i in range(len(self.weights))]

    def table(self):
        from lb.dataplane import RealSpec, ServiceSpec, TableSpec

        ip = ipaddress.ip_address
        thr = self.thresholds or ((0, 0),) * len(self.weights)
        reals = tuple(RealSpec(ip(a), 80, w, "dr", u_threshold=u, l_threshold=lo)
                      for a, w, (u, lo) in zip(self.reals, self.weights, thr))
        return TableSpec((ServiceSpec("tcp", ip(VIP), self.port, self.sched, reals, self.id, self.persistent,
                                      self.pmask),), timeouts=self.timeouts)


# ---- TCP states (INPUT-ONLY), their timeouts, reuse of a closed entry, expiry --------------

# each packet sequence from a new connection; after each packet the flow's entry is observed
SEQUENCES = {
    "syn": "S", "syn-syn": "S S", "established": "S A", "syn-rst": "S R", "syn-fin": "S F",
    "est-syn": "S A S", "est-fin": "S A F", "fin-ack": "S A F A", "est-rst": "S A R",
    "fin-rst": "S A F R", "synack-flags": "S SA", "rst-syn": "S A R S", "fin-syn": "S F S",
    "finwait-syn": "S A F S", "est-data": "S A PA A",
}


def _state_script() -> Script:
    flows, steps = [], []
    for i, (name, seq) in enumerate(SEQUENCES.items()):
        flows.append((f"198.18.40.{10 + i}", 30000 + i))
        for k, flags in enumerate(seq.split()):
            steps.append(("pkt", i, flags))
            steps.append(("observe", f"{name}#{k}"))
    # expiry: ESTABLISHED after 8 s (tcp), FIN_WAIT after 4 s (tcpfin), CLOSE after 10 s,
    # SYN_RECV (60 s) and TIME_WAIT (120 s) stay: observed at 6 s and at 12.5 s
    steps += [("wait", 6.0), ("observe", "after 6 s"), ("wait", 6.5), ("observe", "after 12.5 s")]
    return Script("tcp-states", "rr", (1, 1, 1), 2001, tuple(flows), tuple(steps), timeouts=(8, 4, 300))


def _threshold_script() -> Script:
    """rr over rs1 u=4 l=2, rs2 u=4 with no lower threshold (3/4 of the upper), rs3 none.
    Twelve connections, four each: rs1 and rs2 are OVERLOADed at their fourth.  Then one
    connection of rs1 and one of rs2 are reset every 5 s (CLOSE: inactive, still counted, 10 s),
    so the pairs expire one at a time; 2.5 s after each expiry (clear of the next one) three new
    connections (rr: spread over the usable servers) show which of them takes connections
    again.  rs1 must stay OVERLOADed at 3 and 2 connections and take new ones only below l=2
    (not below 3/4 of u); rs2 only below 4*3/4 = 3 (not below u).  (Kernel IPVS in the VM did
    so; a model that clears at 3/4 of u whatever l, or below u, differs from it.)"""
    pairs = ((1, 2), (4, 5), (7, 8), (10, 11))            # rr: flows 1, 2 (mod 3) are rs1's and rs2's
    flows = [(f"198.18.41.{10 + i}", 31000 + i) for i in range(12 + 3 * len(pairs))]
    probes = iter(range(12, len(flows)))
    steps: list[tuple] = []

    def reset(k):
        return [("pkt", pairs[k][0], "R"), ("pkt", pairs[k][1], "R")]

    def probe(left):
        return ([("observe", f"{left} left on rs1 and rs2")] + [("pkt", next(probes), "S") for _ in range(3)] +
                [("observe", f"3 new with {left} left")])

    for i in range(12):
        steps += [("pkt", i, "S"), ("pkt", i, "A")]
    steps.append(("observe", "12 new connections"))
    # pairs reset at 0, 5, 10, 15 s expire at 10, 15, 20, 25 s; observed at 12.5, 17.5, 22.5, 27.5 s
    steps += reset(0) + [("wait", 5.0)] + reset(1) + [("observe", "2 pairs reset")]
    steps += [("wait", 5.0)] + reset(2) + [("wait", 2.5)] + probe(3)
    steps += [("wait", 2.5)] + reset(3) + [("wait", 2.5)] + probe(2)
    steps += [("wait", 5.0)] + probe(1)
    steps += [("wait", 5.0)] + probe(0)
    return Script("thresholds", "rr", (1, 1, 1), 2002, tuple(flows), tuple(steps),
                  thresholds=((4, 2), (4, 0), (0, 0)))


def _persist_script() -> Script:
    """rr, persistent 6 s, netmask 255.255.255.0: two clients of one /24 share a template and
    a real server, a third /24 gets the next one; the connections are reset (CLOSE, 10 s) and
    the templates' 6 s pass while they still control them; after the connections expire a
    client of the first /24 comes back."""
    flows = [("198.18.42.1", 32000), ("198.18.42.77", 32001), ("198.18.43.5", 32002), ("198.18.42.200", 32003),
             ("198.18.43.9", 32004)]
    steps = [("pkt", 0, "S"), ("observe", "first client"), ("pkt", 0, "A"),
             ("pkt", 1, "S"), ("pkt", 1, "A"), ("observe", "same /24"),
             ("pkt", 2, "S"), ("observe", "other /24"),
             ("pkt", 0, "R"), ("pkt", 1, "R"), ("pkt", 2, "R"), ("observe", "reset"),
             ("wait", 8.0), ("observe", "template timeout passed, connections alive"),
             ("wait", 4.5), ("observe", "connections expired"),
             ("pkt", 3, "S"), ("observe", "first /24 returns"),
             ("pkt", 4, "S"), ("observe", "second /24 returns")]
    return Script("persistence", "rr", (1, 1, 1), 2003, tuple(flows), tuple(steps), persistent=6,
                  pmask="255.255.255.0")


def scripts() -> list[Script]:
    return [_state_script(), _threshold_script(), _persist_script()]


# ---- twos: random, compared by distribution --------------------------------------------------

TWOS_WEIGHTS = (1, 2, 5)
TWOS_PORT = 2010
TWOS_CONNS = 400


def twos_flows() -> list[tuple[str, int]]:
    return [("198.18.44.1", 33000 + i) for i in range(TWOS_CONNS)]


# ---- what an observation holds ---------------------------------------------------------------

@dataclass
class Observation:
    label: str
    conns: dict = field(default_factory=dict)      # "client:sport" -> [state, expire, real]
    templates: dict = field(default_factory=dict)  # "client/mask" -> [real, expire]
    counts: dict = field(default_factory=dict)     # real -> [active, inactive, persist]
    # entries the kernel listed beside a newer one of the same key, their timer firing (a SYN
    # into a CLOSE entry: ip_vs_conn_expire_now, then a new entry): still counted on their real
    dying: int = 0

    def as_json(self) -> dict:
        return {"label": self.label, "conns": self.conns, "templates": self.templates, "counts": self.counts,
                "dying": self.dying}


def tcp_flag_bits(flags: str) -> int:
    bits = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}
    return sum(bits[c] for c in flags)


# An entry goes away only when its timer runs out (or a packet of its flow ends it), so a
# recording in which one vanished with more than this left on the kernel's own clock did not
# see IPVS's behaviour but a hiccup of the emulated VM (once in some ten runs at the end of a
# quiet wait: every entry of tcp-states gone, SYN_RECV and TIME_WAIT too); the guest plays
# such a script again (guest_oracle.Player.play).
VANISH_SLACK_S = 3


def vanished(script: Script, recording: dict) -> list[str]:
    """Connections a recording (`times`, `observations`) lists at one observation and no longer
    at the next although no packet of their flow came in between and their expire had more than
    VANISH_SLACK_S left after the time that passed: one line each."""
    keys = {f: f"{c}:{p}" for f, (c, p) in enumerate(script.flows)}
    obs = iter(recording["observations"])
    out, prev, touched = [], None, set()
    for step, t in zip(script.steps, recording["times"]):
        if step[0] == "pkt":
            touched.add(keys[step[1]])
        elif step[0] == "observe":
            o = next(obs)
            if prev is not None:
                p, tp = prev
                for key, (state, expire, _real) in p["conns"].items():
                    left = expire - (t - tp)
                    if key not in o["conns"] and key not in touched and left > VANISH_SLACK_S:
                        out.append(f"{o['label']!r}: {key} ({state}) gone with {left:.1f} s left")
            prev, touched = (o, t), set()
    return out

# ---- the model's side: lb/sched/model.py's schedulers, driven as IPVS drives them ------------

class ModelDirector:
    """IPVS's connection handling around lb's scheduler model (lb.sched.model.Service): each
    connection's state through the INPUT-ONLY table lb writes into the data plane
    (lb.dataplane.program.TCP_FSM) and its timeout (state_timeouts); a pure SYN into a CLOSE or
    TIME_WAIT entry that no template controls expires it and is scheduled afresh
    (conn_reuse_mode 1); connections expire when their timer runs out (unbinding their real
    server: thresholds); persistence templates (client & netmask, VIP, port) are made by a new
    connection of a new client network, refreshed by every new connection through them, count
    in PersistConn, and when their timer runs out while they still control connections they
    get 60 s more (ip_vs_conn_expire's expire_later), and 60 s stays their timeout (a new
    connection through one re-arms it for 60 s, not the service's timeout)."""

    TEMPLATE_LATER_S = 60

    def __init__(self, script: Script):
        from lb.dataplane import layout as L
        from lb.dataplane.program import TCP_FSM, state_timeouts
        from lb.sched import model

        global bind_overload
        bind_overload = model.bind_overload
        self.s = script
        self.L, self.fsm = L, TCP_FSM
        self.timeouts = state_timeouts(*script.timeouts)
        self.svc = model.Service(script.sched)
        thr = script.thresholds or ((0, 0),) * len(script.weights)
        for a, w, (u, lo) in zip(script.reals, script.weights, thr):
            self.svc.add(a, w, u_threshold=u, l_threshold=lo)
        self.t = 0.0
        self.conns: dict[int, list] = {}          # flow -> [state, real, expires_at, template key]
        self.templates: dict[str, list] = {}      # masked client -> [real, expires_at, n_control, timeout]
        self.names = {v: k for k, v in L.TCP_S.items()}
        self.active_states = {L.TCP_S[n] for n in ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "SYNACK")}

    def _event(self, flags: str) -> int:
        return 3 if "R" in flags else 0 if "S" in flags else 1 if "F" in flags else 2

    def _next(self, state: int, flags: str) -> int:
        return self.fsm[(2 * 4 + self._event(flags)) * 11 + state]      # table 2: INPUT-ONLY

    def _tkey(self, client: str) -> str:
        net = ipaddress.ip_network(f"{client}/{self.s.pmask or '255.255.255.255'}", strict=False)
        return str(net.network_address)

    def _expire_conn(self, flow: int) -> None:
        state, real, _, tkey = self.conns.pop(flow)
        self.svc.close(real, was_active=state in self.active_states)
        if tkey is not None and tkey in self.templates:
            self.templates[tkey][2] -= 1

    def pkt(self, flow: int, flags: str) -> None:
        client, _sport = self.s.flows[flow]
        e = self.conns.get(flow)
        pure_syn = flags == "S"
        if e is not None and pure_syn and e[3] is None and \
                e[0] in (self.L.TCP_S["TIME_WAIT"], self.L.TCP_S["CLOSE"]):
            self._expire_conn(flow)
            e = None
        if e is None:
            if "S" not in flags or "R" in flags:
                return                                  # no entry without a SYN
            tkey = self._tkey(client) if self.s.persistent else None
            tpl = self.templates.get(tkey) if tkey is not None else None
            if tpl is not None:                         # the template names the real server
                real = tpl[0]
                d = self.svc.dest(real)
                d.active += 1                           # counted as schedule() counts
                bind_overload(d)
            else:
                real = self.svc.schedule(saddr=int(ipaddress.ip_address(client)))
                if real is None:
                    return
                if tkey is not None:
                    tpl = self.templates[tkey] = [real, 0.0, 0, self.s.persistent]
            if tpl is not None:                         # made or used: its timer starts again
                tpl[1] = self.t + tpl[3]
                tpl[2] += 1
            state = self._next(0, flags)
            self.conns[flow] = [state, real, self.t + self.timeouts[state], tkey]
            return
        old, new = e[0], self._next(e[0], flags)
        if (old in self.active_states) != (new in self.active_states):
            (self.svc.establish if new in self.active_states else self.svc.deactivate)(e[1])
        e[0], e[2] = new, self.t + self.timeouts[new]

    def wait(self, seconds: float) -> None:
        end = self.t + seconds
        while True:
            events = [(e[2], "c", f) for f, e in self.conns.items()] + \
                     [(tpl[1], "t", k) for k, tpl in self.templates.items()]
            due = [ev for ev in events if ev[0] <= end]
            if not due:
                break
            at, kind, key = min(due)
            self.t = at
            if kind == "c":
                self._expire_conn(key)
            elif self.templates[key][2] > 0:
                # expire_later: 60 s more, and 60 s becomes the template's timeout for good
                self.templates[key][1] = at + self.TEMPLATE_LATER_S
                self.templates[key][3] = self.TEMPLATE_LATER_S
            else:
                del self.templates[key]
        self.t = end

    def observe(self, label: str) -> dict:
        obs = Observation(label)
        for f, (state, real, at, _t) in self.conns.items():
            client, sport = self.s.flows[f]
            obs.conns[f"{client}:{sport}"] = [self.names[state], int(at - self.t), real]
        for k, (real, at, _n, _timeout) in self.templates.items():
            obs.templates[k] = [real, int(at - self.t)]
        for d in self.svc.dests:
            obs.counts[d.name] = [d.active, d.inactive, sum(1 for t in self.templates.values() if t[0] == d.name)]
        return obs.as_json()

    def play(self, times: list[float] | None = None) -> list[dict]:
        """The script's observations; on the kernel's time line (each step's start, seconds)
        when given, else on the script's own (its waits)."""
        if times is None:
            times = self.s.own_times()
        out = []
        for i, step in enumerate(self.s.steps):
            if i:
                self.wait(times[i] - times[i - 1])
            if step[0] == "pkt":
                self.pkt(step[1], step[2])
            elif step[0] == "observe":
                out.append(self.observe(step[1]))
        return out
