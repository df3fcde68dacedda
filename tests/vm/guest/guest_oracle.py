"""Kernel IPVS plays tests/vm/oracle.py's scripts (TCP states and timeouts, expiry, thresholds,
persistence) (and, booted on the 6.12 kernel, twos's distribution: vmtest_ipvs_twos.py); what it shows goes to $LB_VM_RESULTS/oracle-ipvs.json,
which the host compares with lb's model and its XDP data plane (tests/vm/test_ipvs_vm.py).

The director's IPVS is programmed by lb's IPVS data plane (instance "oracle").  Packets are
raw IPv4 segments from a socket of the client's namespace; after each one a barrier -- a SYN to
a marker service on another VIP, whose entry appears once IPVS has handled every packet sent
before it -- says the step is done (GRO is off on the path for this, so segments are not held
back and reordered).  Nothing of this module waits by sleeping except the scripts' own
("wait", s) steps, which are the timers under test."""
from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import os
import socket
import time

import pytest

from vm import oracle
from vm.fidelity import tcp_packet

MARKER_CLIENT = "198.18.47.1"


def _gro(lab, on: bool) -> None:
    state = "on" if on else "off"
    lab.run("switch", ["ethtool", "-K", "sw-c0", "gro", state], timeout=30)
    lab.run("director", ["ethtool", "-K", "pub0", "gro", state], timeout=30)


@pytest.fixture(scope="module")
def oracle_director(lab, ipvs_kernel):
    batch = [f"address add {oracle.VIP}/32 dev lo", f"address add {oracle.MARKER_VIP}/32 dev lo"]
    for i in range(4):
        batch.append(f"neigh replace 198.18.1.{oracle.REAL_BASE + i} lladdr 02:00:00:00:02:{oracle.REAL_BASE + i:02x} "
                     "dev priv0 nud permanent")
    lab.run("director", ["ip", "-batch", "-"], input="\n".join(batch) + "\n", timeout=60)
    _gro(lab, False)
    try:
        yield lab
    finally:
        _gro(lab, True)


class Player:
    """Runs in a thread of the director's namespace (lab.in_netns): the IPVS data plane, the
    connection table (/proc, this namespace's), and a raw socket of the client's namespace."""

    def __init__(self, lab, run_dir: str):
        from lb.dataplane.ipvs import IpvsDataplane

        self.dp = IpvsDataplane("oracle", run_dir=run_dir)
        self.dp.load()
        self.sock = lab.socket_in("client", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.conn_table = open("/proc/thread-self/net/ip_vs_conn")
        self.marker_ports = itertools.count(40000)
        os.sched_setaffinity(0, {0})          # one CPU: IPVS sees the segments in sending order

    def close(self):
        from lb.dataplane import TableSpec

        try:
            self.dp.apply(TableSpec(()))
        finally:
            self.dp.detach_all()
            self.dp.unpin()
            self.sock.close()
            self.conn_table.close()

    def apply(self, script: oracle.Script | None, table=None):
        from lb.dataplane import RealSpec, ServiceSpec, TableSpec

        ip = ipaddress.ip_address
        marker = ServiceSpec("tcp", ip(oracle.MARKER_VIP), oracle.MARKER_PORT, "rr",
                             (RealSpec(ip("198.18.1.24"), 80, 1, "dr"),), "marker")
        t = table or script.table()
        self.dp.apply(TableSpec((marker, *t.services), timeouts=t.timeouts))

    def lines(self) -> list[list[str]]:
        self.conn_table.seek(0)
        return [ln.split() for ln in self.conn_table.read().splitlines()[1:]]

    def send(self, client: str, sport: int, vip: str, port: int, flags: str) -> None:
        self.sock.sendto(tcp_packet(client, vip, sport, port, flags, seq=1, ack=1), (vip, 0))

    def barrier(self) -> None:
        """A SYN to the marker service; returns once its entry is in the table."""
        sport = next(self.marker_ports)
        self.send(MARKER_CLIENT, sport, oracle.MARKER_VIP, oracle.MARKER_PORT, "S")
        needle = f"{int(ipaddress.IPv4Address(MARKER_CLIENT)):08X} {sport:04X}"
        deadline = time.monotonic() + 30
        while not any(needle == f"{p[1]} {p[2]}" for p in self.lines()):
            if time.monotonic() > deadline:
                raise AssertionError("IPVS did not handle the barrier SYN within 30 s")
            time.sleep(0.002)

    def observe(self, label: str, port: int) -> dict:
        from lb.dataplane.ipvs import _hex_addr, read_services

        vip = f"{int(ipaddress.IPv4Address(oracle.VIP)):08X}"
        obs = oracle.Observation(label)
        for p in self.lines():
            if len(p) < 9 or p[3] != vip or int(p[4], 16) != port:
                continue
            client, cport, real, state, expire = str(_hex_addr(p[1])), int(p[2], 16), str(_hex_addr(p[5])), p[7], int(p[8])
            table, key, entry = ((obs.templates, client, [real, expire]) if cport == 0 else
                                 (obs.conns, f"{client}:{cport}", [state, expire, real]))
            if key in table:
                # two entries of one key: the older one's timer is firing (expire_now) while
                # the new one lives; which is listed last depends on that timer, so keep the
                # live one and say the other is still there (and still counted)
                old = table[key]
                old_expire = old[-1] if cport == 0 else old[1]
                if old_expire > expire:
                    entry = old
                obs.dying += 1
            table[key] = entry
        for row in read_services():
            if str(row.address) == oracle.VIP and row.port == port:
                obs.counts = {str(r.address): [r.active, r.inactive, r.persist] for r in row.reals}
        return obs.as_json()

    def play(self, script: oracle.Script) -> dict:
        """The script's observations, and the time line: when (seconds from the first step)
        each step started -- the host replays the same time line (entries aged by as much), so
        that the timers of both run alike however slow this emulated VM is.  A wait ends at
        the script's own time line (the sum of the waits so far), not `seconds` after a late
        step: slow packets and observations here would otherwise add up and carry a step from
        the middle of the margin a script leaves it (2.5 s) toward a timer's expiry, where the
        kernel's own timer slack decides.  A recording that lost an entry its own timers kept
        (oracle.vanished: the emulated VM's hiccup, not IPVS) is played again, up to twice, on
        another port each time (IPVS has no way to flush connections: the earlier play's
        entries, counts and templates stay with the earlier port's service); the replays'
        reasons go with the result."""
        replays: list[str] = []
        for attempt in range(3):
            rec = self._play_once(dataclasses.replace(script, port=script.port + 100 * attempt))
            lost = oracle.vanished(script, rec)
            if not lost:
                break
            replays += lost
            print(f"{script.id}: played again: " + "; ".join(lost[:3]), flush=True)
        rec["replays"] = replays
        return rec

    def _play_once(self, script: oracle.Script) -> dict:
        self.apply(script)
        out, times = [], []
        t0, due = time.monotonic(), 0.0
        for step in script.steps:
            times.append(time.monotonic() - t0)
            if step[0] == "pkt":
                client, sport = script.flows[step[1]]
                self.send(client, sport, oracle.VIP, script.port, step[2])
                self.barrier()
            elif step[0] == "wait":
                due += step[1]                # the timers under test run meanwhile
                time.sleep(max(0.0, due - (time.monotonic() - t0)))
            else:
                out.append(self.observe(step[1], script.port))
        return {"times": times, "observations": out}

    def twos(self) -> dict[str, int]:
        from lb.dataplane import RealSpec, ServiceSpec, TableSpec

        ip = ipaddress.ip_address
        reals = tuple(RealSpec(ip(f"198.18.1.{oracle.REAL_BASE + i}"), 80, w, "dr")
                      for i, w in enumerate(oracle.TWOS_WEIGHTS))
        self.apply(None, TableSpec((ServiceSpec("tcp", ip(oracle.VIP), oracle.TWOS_PORT, "twos", reals, "twos"),)))
        for client, sport in oracle.twos_flows():
            self.send(client, sport, oracle.VIP, oracle.TWOS_PORT, "S")
        self.barrier()
        obs = self.observe("twos", oracle.TWOS_PORT)
        counts: dict[str, int] = {}
        for _state, _expire, real in obs["conns"].values():
            counts[real] = counts.get(real, 0) + 1
        return counts
