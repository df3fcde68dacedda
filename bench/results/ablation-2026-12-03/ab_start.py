import os, sys, tempfile, time, signal, subprocess, statistics
sys.path.insert(0, "/work/wt/integ")
from bench.common import lab_up, stop_process, REPO, LB_BIN
from lb.sdnotify import Listener
def start(lab, variant, cache, logp):
    notify = Listener()
    env = {**os.environ, "LB_CACHE_DIR": cache, **notify.env()}
    try:
        with open(logp, "wb") as log:
            t0 = time.monotonic()
            p = lab.popen("director", ["/work/wt/integ/.venv/bin/python", "-c", PRE % ("old" if variant == "old" else "integ"), "run", "--config", str(REPO / "configs" / "lab-dr.toml")], env=env,
                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            r = notify.wait_for("READY", "1", timeout=300, alive=lambda: p.poll() is None)
        finally:
            stop_process(p, signal.SIGINT, 60)
        return r - t0
    finally:
        notify.close()
PRE = "import sys; sys.meta_path=[f for f in sys.meta_path if 'editable' not in repr(f)]; sys.path.insert(0,'/work/wt/%s'); sys.argv[0]='lb'; from lb.cli.main import main; sys.exit(main())"
res = {"old": [], "new": []}
# old: a17e524 in /work/wt/old, new: /work/wt/integ (the tree under test)
with tempfile.TemporaryDirectory() as tmp, lab_up("direct") as lab:
    for v in ("old", "new"):
        start(lab, v, f"{tmp}/c-{v}", f"{tmp}/w.log")   # fill the caches
    for i in range(int(sys.argv[1])):
        for v in (("old", "new") if i % 2 == 0 else ("new", "old")):
            res[v].append(start(lab, v, f"{tmp}/c-{v}", f"{tmp}/{v}{i}.log"))
    print(open(f"{tmp}/new0.log").read()[-1500:])
for v, xs in res.items():
    print(v, "median %.3f" % statistics.median(xs), " ".join("%.2f" % x for x in xs))
