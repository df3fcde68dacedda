"""The README's first command: `make demo` runs scripts/demo.sh after the setup.  The script as a
user sees it -- lb run in the lab by NAT, direct routing and tunneling, nine requests each, the
table -- with its exit status, its output, and nothing left behind."""
from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

from conftest import REPO

from bench import common as bench_common
from lb.lab import CLIENT, REALS, VIP


def _wait_for_the_lab():
    """The demo's `lb lab up` refuses a lab another session holds (conftest.lab_exclusive's lock),
    and cannot run under this session's hold (it takes the lock itself): wait until no session
    holds it, then let go.  This session's own lab tests run on this worker (the "lab" group)."""
    with bench_common.lab_lock():
        pass


def test_the_demo_runs_every_forwarding_method_and_cleans_up():
    _wait_for_the_lab()
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    sections = re.split(r"^=+ (\w+): lb run --config \S+ =+$", out, flags=re.M)
    # [before, name, text, name, text, ...]
    runs = dict(zip(sections[1::2], sections[2::2]))
    assert list(runs) == ["nat", "direct", "tunnel"], out[-3000:]
    forward = {"nat": "Masq", "direct": "Route", "tunnel": "Tunnel"}
    for name, text in runs.items():
        answers = re.findall(r"^  request \d -> (\S+)$", text, flags=re.M)
        # rr over three real servers: each answers three of the nine
        assert Counter(answers) == {rs: 3 for rs in REALS}, (name, answers)
        reals = re.findall(rf"^  -> ([\d.]+):80 +{forward[name]} +1 +(\d+) +(\d+) *$", text, flags=re.M)
        assert sorted(r[0] for r in reals) == sorted(REALS.values()), (name, text)
        assert all(int(a) + int(i) == 3 for _, a, i in reals), (name, reals)
        conns = re.findall(rf"^TCP \d\d:\d\d +\w+ +{re.escape(CLIENT)}:\d+ +{re.escape(VIP)}:80 +([\d.]+):80$",
                           text, flags=re.M)
        assert len(conns) == 9 and set(conns) <= set(REALS.values()), (name, text)
    assert out.rstrip().endswith("demo done: lab removed")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [n for n in netns.split() if n.startswith("lb-")], netns
    assert not Path("/sys/fs/bpf/lb/lab").exists()
    assert not subprocess.run(["pgrep", "-f", "lb run --config configs/lab-"], capture_output=True).stdout
