"""SYN rows with warm caches under perf (a dev tool, not part of lb): syn_warm.py ROW[,ROW...] from the
repository's root, as root; each row's 273 SYNs run and their entries deleted, over and over for 8 s, while
`perf record -g -p` samples this process (/tmp/perf2-ROW.data)."""
import os, sys, subprocess, time
sys.path.insert(0, os.getcwd())
import bench.pkt as P
keys = sys.argv[1].split(",")
b = P.Bench(P.DEFAULT_TABLE)
try:
    rows, n = b.new_conns(4, 2000)
    by = {r.key: r for r in rows}
    m = b.insert_map
    for key in keys:
        r = by[key]
        fr, ks = r.frames[:n], r.keys[:n]
        for _ in range(20):
            b.run(r.fd, fr, n); m.delete_many(ks)
        perf = subprocess.Popen(["perf", "record", "-q", "-g", "-p", str(os.getpid()), "-o", f"/tmp/perf2-{key}.data"])
        time.sleep(1)
        t = []
        t0 = time.time()
        while time.time() - t0 < 8:
            t.append(b.run(r.fd, fr, n)); m.delete_many(ks)
        perf.send_signal(2); perf.wait()
        t.sort()
        print(key, r.action if hasattr(r, 'action') else '', b.last_action, "n", n, "median ns", round(t[len(t)//2],1), "rounds", len(t))
finally:
    b.close()
