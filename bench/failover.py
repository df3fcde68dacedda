"""Failover time (issue #6, suite 5): two directors in the namespace lab (NAT network: the real
servers' gateway floats with the VIP), `lb run` with [ha] on each; with long-lived keep-alive
connections open through the active, the active dies (kill -9 of its lb, its links down, as if
the machine died) and the time until the client's first new HTTP connection is served through
the backup is measured; then every long-lived connection must still reach its real server.

The suite runs this itself (its own lab, under the tests' lab lock, its own instance names),
a few times, and reports the median; the baseline is the configured deadtime, the time the
backup must wait by definition, so the ratio shows what lb adds on top (target: deadtime +
0.5 s; tests/test_ha_lab.py asserts the behaviour -- the failover happens and flows survive --
and never a time)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import LB_BIN, lab_up, ratio, remove_run_files, summary
from lb.lab.haconfig import ha_config

RUNS = {"smoke": 1, "quick": 1, "full": 3}
KEEPALIVE, DEADTIME = 0.2, 1.0
LONG_FLOWS = 30
INSTANCES = {"director": "benchfo1", "director2": "benchfo2"}
KEY = b"bench-failover-secret-0123456789abcdef"



def _status(instance: str) -> dict:
    from lb import control

    try:
        return control.request(instance, "status", timeout=5).get("status", {})
    except (OSError, ValueError, control.NotRunning):
        return {}


def _until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench failover: no {what} within {timeout:.0f}s")
        time.sleep(0.05)


def _request(sock) -> str:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    for _ in range(64):
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep and b"content-length:" in head.lower():
            n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(rest) >= n:
                return rest[:n].decode().strip()
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    raise RuntimeError("no complete HTTP reply")


def _cleanup(lab) -> None:
    for inst in INSTANCES.values():
        shutil.rmtree(f"/sys/fs/bpf/lb/{inst}", ignore_errors=True)
        remove_run_files(inst)


def one_run() -> dict:
    with tempfile.TemporaryDirectory(prefix="lb-failover-") as tmp, lab_up("nat") as lab:
        key = Path(tmp) / "ha.key"
        key.write_bytes(KEY)
        os.chmod(key, 0o600)
        procs, logs = {}, {}
        socks = []
        try:
            for node in ("director", "director2"):
                cfg = Path(tmp) / f"{node}.toml"
                cfg.write_text(ha_config(INSTANCES[node], key, "nat", KEEPALIVE, DEADTIME))
                logs[node] = open(Path(tmp) / f"{node}.log", "wb")
                procs[node] = lab.popen(node, [LB_BIN, "run", "--config", str(cfg)], stdin=subprocess.DEVNULL,
                                        stdout=logs[node], stderr=subprocess.STDOUT, start_new_session=True)
                role = "active" if node == "director" else "backup"
                _until(lambda: _status(INSTANCES[node]).get("role") == role, 120, f"{node} {role}")
            for _ in range(LONG_FLOWS):
                s = lab.connect("client", lab.VIP, 80, timeout=3.0)
                socks.append((s, _request(s)))
            _until(lambda: _status(INSTANCES["director2"]).get("ha", {}).get("counters", {})
                   .get("sync_rx_records", 0) >= LONG_FLOWS, 30, "synced connections on the backup")

            t_kill = time.monotonic()
            procs["director"].send_signal(signal.SIGKILL)
            for dev in ("pub0", "priv0"):
                lab.run("director", ["ip", "link", "set", "dev", dev, "down"])
            failover = None
            deadline = t_kill + DEADTIME + 30
            while failover is None and time.monotonic() < deadline:
                try:
                    if lab.http_get("client", lab.VIP, 80, "/", timeout=0.2)[0] == 200:
                        failover = time.monotonic() - t_kill
                except OSError:
                    pass
            if failover is None:
                raise RuntimeError("bench failover: no new connection served through the backup")
            kept = 0
            for s, rs in socks:
                try:
                    kept += _request(s) == rs
                except OSError:
                    pass
            return {"keepalive_s": KEEPALIVE, "deadtime_s": DEADTIME, "failover_s": round(failover, 4),
                    "connections_kept": kept, "connections": len(socks)}
        finally:
            for s, _ in socks:
                s.close()
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(15)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(5)
            for f in logs.values():
                f.close()
            _cleanup(lab)


def suite(size: str = "full") -> dict:
    runs = [one_run() for _ in range(RUNS[size])]
    deadtime = runs[0]["deadtime_s"]
    times = [r["failover_s"] for r in runs]
    s = summary(times)
    return {"suite": "failover", "results": [
        {"scenario": f"configured deadtime (keepalive {runs[0]['keepalive_s']} s)", "baseline": True,
         "seconds": summary([deadtime]), "ratio": 1.0},
        {"scenario": "failover: active killed -> first new connection through the backup",
         "seconds": s, "runs": times, "connections_kept": min(r["connections_kept"] for r in runs),
         "target_s": deadtime + 0.5, "ratio": ratio(s["median"], deadtime)},
    ]}


def table(res: dict) -> str:
    lines = ["| what | seconds (median) | runs | spread | established connections kept | ratio to deadtime |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in res["results"]:
        s = r["seconds"]
        kept = r.get("connections_kept", "")
        lines.append(f"| {r['scenario']}{' *(baseline)*' if r.get('baseline') else ''} | {s['median']:.3f} | "
                     f"{s['n']} | ±{s['spread'] * 100:.0f}% | {kept} | {r['ratio']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(suite("smoke"), indent=1))
