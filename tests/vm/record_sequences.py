"""Record kernel IPVS's pick sequences that tests/test_sched_bpf.py holds the XDP schedulers to
(tests/golden/ipvs_sequences.json): rr over 1:1:1, wrr 3:2:1, wlc 2000:1000:1000, each a run of
new connections to three real servers added in config order, as Debian's IPVS kernel (in the
VM, tests/vm/harness.py) picks them.  Each pick is the real server's index in config order.

    .venv/bin/python tests/vm/record_sequences.py            # boots the VM (a few minutes)
    .venv/bin/python tests/vm/record_sequences.py --from DIR # from a VM run's results
                                                             # (LB_VM_RESULTS=DIR make test)

tests/vm/test_ipvs_vm.py checks on every VM run that the file still holds what the kernel
picks; this script is how it was made."""
from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import harness  # noqa: E402
from vm import fidelity  # noqa: E402

GOLDEN = HERE.parent / "golden" / "ipvs_sequences.json"
CASES = ("rr-equal", "wrr-321", "wlc-2000")


def sequences(results: dict) -> dict:
    by_id = {c.id: c for c in fidelity.cases()}
    out = {}
    for cid in CASES:
        case = by_id[cid]
        out[cid] = {"scheduler": case.sched, "weights": list(case.weights),
                    "picks": [case.reals.index(a) for a in results["picks"][cid]]}
    return {"kernel": results["kernel"], "recorded_by": "tests/vm/record_sequences.py", "sequences": out}


def boot_and_run(results_dir: Path) -> None:
    py = harness.VENV / "bin" / "python"
    guest = (f"cd {shlex.quote(str(harness.REPO))} && PYTHONDONTWRITEBYTECODE=1 LB_VM_GUEST=1 "
             f"LB_VM_RESULTS={shlex.quote(str(results_dir))} {shlex.quote(str(py))} -m pytest -p no:cacheprovider "
             f"-q -o addopts= -o python_files='vmtest_*.py' "
             f"tests/vm/guest/vmtest_ipvs_direct.py::test_scheduler_fidelity_picks")
    rc, out, _ = harness.run(guest, rwdir=str(results_dir), timeout=1800)
    if rc != 0:
        raise SystemExit(f"the VM run failed (exit {rc}):\n{out[-3000:]}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--from"]:
        results_dir = Path(argv[1])
    else:
        results_dir = Path(tempfile.mkdtemp(prefix="lb-vm-seq-"))
        boot_and_run(results_dir)
    data = json.loads((results_dir / "fidelity-ipvs.json").read_text())
    GOLDEN.write_text(json.dumps(sequences(data), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
