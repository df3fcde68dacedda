"""`lb`: run the director, list its table like ipvsadm, drive the lab."""
from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import math
import os
import signal
import sys
import time

import lb
from lb import config as lbconfig
from lb import weight as lbweight
from lb.config.model import DEFAULT_TIMEOUTS


def cmd_run(args) -> int:
    # a stop (or a reload) asked for before lb.engine.run takes the signals over -- the engine's
    # import and the config's load, most of a second (Python's own start and this module's
    # import, before this, are not covered) -- is kept for it, which carries it out once
    # started, as one asked for while starting: SIGTERM's default action killed lb there (a
    # `systemctl stop` just after a restart left the data plane the restart kept behind an
    # inactive unit), SIGINT's ended it in KeyboardInterrupt, SIGHUP's killed it too
    early: list[int] = []

    def keep(signum, _frame):
        early.append(signum)
    previous = {sig: signal.signal(sig, keep) for sig in STOP_AND_RELOAD_SIGNALS}
    try:
        return _run(args, early)
    finally:                # a run that ended before lb.engine.run: the handlers it found again
        for sig, handler in previous.items():
            if signal.getsignal(sig) is keep and handler is not None:
                signal.signal(sig, handler)


def _run(args, early: list[int]) -> int:
    from lb import preflight, sdnotify

    sdnotify.setup_logging("debug" if args.verbose else args.log_level)
    # kill -QUIT: every thread's Python stack to the log, and lb goes on (a hung daemon says where)
    faulthandler.register(signal.SIGQUIT, all_threads=True, chain=False)
    # and at systemd's SIGABRT (WatchdogSec=: the loop stopped making turns) before lb ends
    faulthandler.enable(all_threads=True)
    try:
        preflight.check_root()
    except preflight.HostError as e:
        print(f"lb: {e}", file=sys.stderr)
        return 2
    before, after = preflight.raise_open_files_limit()
    if after != before:
        logging.getLogger("lb").debug("open files: limit %d raised to %d", before, after)
    # the file is checked for the data plane that runs it, at the start and (the engine keeps the
    # choice: Engine.run_dataplane) at each reload and edit
    try:
        cfg = lbconfig.load(args.config, dataplane=args.dataplane)
    except lbconfig.ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        if (args.dataplane or cfg.dataplane) == "xdp":     # auto falls back to IPVS without them
            preflight.check_arch()
            preflight.check_bpffs()
    except preflight.HostError as e:
        print(f"lb: {e}", file=sys.stderr)
        return 2
    from lb import engine

    engine.log_warnings(cfg)
    reals = sum(len(vs.real_servers) for vs in cfg.virtual_servers)
    if after < reals + 256:
        logging.getLogger("lb").warning(
            "open files limited to %d (its hard limit) for %d real servers: health checks that find no file "
            "descriptor are not run; raise it (LimitNOFILE= in the unit, ulimit -Hn)", after, reals)

    on_sigterm = args.on_sigterm
    if on_sigterm == "systemd":
        unit = args.unit or sdnotify.own_unit()
        if not unit:
            print("lb: --on-sigterm systemd: no systemd unit runs this process (/proc/self/cgroup): "
                  "name it with --unit", file=sys.stderr)
            return 2
        on_sigterm = f"systemd:{unit}"
    return engine.run(cfg, xdp_mode=args.xdp_mode, dataplane=args.dataplane, on_sigterm=on_sigterm,
                      wait_interfaces=max(0.0, args.wait_interfaces), signals_before=early)


# what `lb run` keeps from its first instant for lb.engine.run (lb.engine.STOP_SIGNALS)
STOP_AND_RELOAD_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)


def cmd_check(args) -> int:
    # `lb check FILE` as `nginx -t`-style habits type it, or `--config FILE` as `lb run` takes it
    if args.file and args.config and args.file != args.config:
        print(f"lb check: two files given ({args.file}, --config {args.config}): check one at a time",
              file=sys.stderr)
        return 2
    args.config = args.config or args.file
    if not args.config:
        print("lb check: which file? lb check FILE (or --config FILE)", file=sys.stderr)
        return 2
    try:
        cfg = lbconfig.load(args.config, dataplane=args.dataplane)     # as `lb run --dataplane` would check it
    except lbconfig.ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    for w in cfg.warnings:
        print(w.as_warning(), file=sys.stderr)
    nv, nr = len(cfg.virtual_servers), sum(len(v.real_servers) for v in cfg.virtual_servers)
    nw = len(cfg.warnings)
    if cfg.ha is not None and os.geteuid() == 0:
        # the daemon (root) reads the key file at start and at each reload: say now what it would refuse
        from lb.ha.heartbeat import read_keys
        try:
            read_keys(cfg.ha.key_file)
        except (OSError, ValueError) as e:
            why = f"HA key file {e.filename}: {e.strerror}" if isinstance(e, OSError) and e.strerror else str(e)
            print(lbconfig.issue_at(args.config, ("ha", "key_file"), f"{why} (lb run and lb reload refuse it)")
                  .as_warning(), file=sys.stderr)
            nw += 1
    if args.instance and args.instance != cfg.instance:
        # lb@web runs /etc/lb/web.toml, lb-web@web and `lb status --instance web` ask for "web":
        # a file that names another instance (or none: "default") is a daemon they never find
        print(lbconfig.issue_at(args.config, ("global", "instance"),
                                f"is {cfg.instance!r}, not {args.instance!r} (the unit's): lb-web@{args.instance} "
                                f"and `lb status --instance {args.instance}` will not find this daemon; set it "
                                f"to {args.instance!r}").as_warning(), file=sys.stderr)
        nw += 1
    print(f"{args.config}: ok ({nv} virtual server{'' if nv == 1 else 's'}, "
          f"{nr} real server{'' if nr == 1 else 's'}" + (f", {nw} warning{'' if nw == 1 else 's'})" if nw else ")"))
    return 0


def cmd_import(args) -> int:
    """Print the native TOML equivalent of a Piranha lvs.cf or a keepalived.conf; the warnings go
    to stderr too."""
    from lb.config import keepalived, lvscf, totoml

    try:
        fmt = lbconfig.format_of(args.file)
        if fmt == "lvscf":
            cfg, extras = lvscf.load_with_extras(args.file)
            text = lvscf.dumps_toml(cfg, extras, source=args.file)
        else:
            cfg = keepalived.load(args.file, config_id=args.config_id) if fmt == "keepalived" \
                else lbconfig.load(args.file)
            text = totoml.dumps(cfg, [f"Converted from {args.file} by `lb import`."] + totoml.warning_lines(cfg))
    except lbconfig.ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    for w in cfg.warnings:
        print(w.as_warning(), file=sys.stderr)
    sys.stdout.write(text)
    return 0


def cmd_export(args) -> int:
    """Print a config (TOML or lvs.cf) as Piranha lvs.cf; refused (nothing printed) when the lvs.cf
    would read back as another configuration."""
    from lb.config import lvscf

    try:
        if lbconfig.format_of(args.config) == "lvscf":
            cfg, extras = lvscf.load_with_extras(args.config)
        else:
            cfg, extras = lbconfig.load(args.config), None
        text = lvscf.export(cfg, extras)    # ConfigError for what lvs.cf cannot hold
    except lbconfig.ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def _instance_name(text: str) -> str:
    """--instance: an instance name as [global] instance takes it (a path is built of it:
    /run/lb/NAME.sock, /sys/fs/bpf/lb/NAME)"""
    from lb.config.toml import INSTANCE_RE

    if not INSTANCE_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an instance name ({INSTANCE_RE.pattern})")
    return text


def _instance_of_file(path: str) -> str:
    """The instance the config file names.  One with errors still names it (`lb stop -c`, `lb
    status -c` must not need a valid file): its instance key read alone, with a note."""
    try:
        return lbconfig.load(path).instance
    except lbconfig.ConfigError as e:
        from lb.config import keepalived, lvscf
        from lb.config import toml as tomlcfg

        fmt = lbconfig.format_of(path)
        try:
            if fmt == "keepalived":
                name = keepalived.instance_only(path)
            else:
                text = tomlcfg.read_text(path, path)
                name = lvscf.instance_only(text) if fmt == "lvscf" else tomlcfg.instance_only(text)
        except lbconfig.ConfigError:
            name = None
        key = {"lvscf": "lb_instance", "keepalived": "global_defs router_id"}.get(fmt, "[global] instance")
        if name is None:
            raise lbconfig.ConfigError(e.issues + [lbconfig.ConfigIssue(
                path, None, "", f"has errors and its {key} cannot be read alone: name the instance with "
                                f"--instance")]) from None
        print(f"lb: note: {path} has errors (`lb check -c {path}`); instance {name!r} read from its {key} alone",
              file=sys.stderr)
        return name


class _NoInstance(Exception):
    """Instance discovery could not tell which instance is meant: the message says why."""


def _running() -> list[str]:
    """The instances whose daemon runs: the pid files of /run/lb that their daemon holds locked
    (lb.instance); for a user who may not read /run/lb (root's, 0700), the shared control
    sockets that answer (a daemon whose [control] names groups).  _NoInstance when neither
    tells anything."""
    from lb import control, instance

    try:
        return instance.running_instances(instance.RUN_DIR)
    except PermissionError:
        found = control.answering(control.SHARED_DIR)
    if not found:
        raise _NoInstance(f"cannot tell which instance runs: {instance.RUN_DIR}: permission denied, and no "
                          f"daemon answers in {control.SHARED_DIR} (where [control]'s groups reach it): run as "
                          f"root, or name the instance with --instance")
    return found


def _pinned(inst: str) -> bool:
    """Whether the instance has pinned maps (its XDP data plane's, its daemon running or not);
    maps.PinAccessError when /sys/fs/bpf cannot be read."""
    from lb.dataplane import maps

    return maps.is_pinned(inst)


def _map_instances() -> tuple[list[str], bool]:
    """The instances `lb list` and `lb zero` may read the maps of: those of the running daemons
    that have pinned maps, and only when no daemon runs, any pinned maps (a data plane whose
    daemon is gone: stopped with --keep-dataplane, or crashed); and whether a daemon runs.
    maps.PinAccessError when /sys/fs/bpf cannot be read."""
    from lb.dataplane import maps

    try:
        running = _running()
    except _NoInstance:
        running = []
    if running:
        return [i for i in running if _pinned(i)], True
    return maps.instances(), False


def _instance(args, maps: bool = False) -> str | None:
    """The instance a command is about: --instance, else the --config's, else the one running
    (maps: the one whose maps `lb list` reads, _map_instances); None when none is.  SystemExit
    (a message) when several are, _NoInstance when this user cannot tell."""
    if getattr(args, "instance", None):
        return args.instance
    if getattr(args, "config", None):
        return _instance_of_file(args.config)
    found, running = _map_instances() if maps else (_running(), True)
    if len(found) > 1:
        what = "are running" if running else "have pinned maps, and no daemon runs"
        raise SystemExit(f"lb: several instances {what} ({', '.join(found)}): pick one with --instance")
    return found[0] if found else None


def _pid_running(pid: int) -> bool:
    """True while pid exists and has not exited: a zombie (exited, not yet reaped by its
    parent, e.g. a supervisor that waits for it later) counts as stopped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[:1]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ([b"Z"], [b"X"])


STOP_WAIT_S = 120.0      # a daemon still compiling (a cold start) stops once it has started


def _signal_instance(args, sig: int, wait: bool, quiet_if_stopped: bool = False) -> int:
    """Signal the instance's daemon -- only a pid that holds the instance's lock (lb.instance) --
    and with wait, until it has exited."""
    from lb import instance

    inst = _instance(args) or "default"
    try:
        pid = instance.running_pid(inst)
    except instance.NotRunning as e:
        if quiet_if_stopped:
            print(f"lb: {e}: nothing to stop", file=sys.stderr)
            return 0
        print(f"lb: {e}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        print(f"lb: instance {inst!r}: process {pid} is gone", file=sys.stderr)
        return 1
    if wait:
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            if not _pid_running(pid):
                return 0
            time.sleep(0.1)
        print(f"lb: instance {inst!r} (pid {pid}) did not stop within {STOP_WAIT_S:.0f} s", file=sys.stderr)
        return 1
    return 0


def cmd_stop(args) -> int:
    """SIGINT: the clean stop (everything goes); SIGUSR2: the data plane stays for the next start.
    --unit (an ExecStop= of a unit of one's own; lb@.service lets the daemon decide at SIGTERM,
    `lb run --on-sigterm systemd`): keep it for a restart or reload job (sdnotify.KEEP_JOBS) or
    none -- a restart keeps every connection; a stop, or a start that timed out, releases the VIPs
    and detaches, as pulse's stop did."""
    keep = args.keep_dataplane
    if args.unit:
        from lb import sdnotify

        job = sdnotify.systemd_job(args.unit)
        keep = keep or job is None or job in sdnotify.KEEP_JOBS
        print(f"lb: systemd job on {args.unit}: {job or 'none known'}: "
              f"{'keeping the data plane for the next start' if keep else 'clean stop'}", file=sys.stderr)
    return _signal_instance(args, signal.SIGUSR2 if keep else signal.SIGINT, True, quiet_if_stopped=bool(args.unit))


def _control_error(inst: str, e: Exception) -> str:
    """The message for what control.request raised."""
    from lb import control

    if isinstance(e, (control.NotRunning, control.BadReply)):
        return f"lb: {e}"
    if isinstance(e, PermissionError):
        return (f"lb: {control.socket_path(inst)}: permission denied (the control socket is root's; "
                f"[control] read_group or admin_group lets a group in)")
    return f"lb: instance {inst!r}: control socket: {e}"


def _control(args, cmd: str, **params) -> dict | None:
    """One request on the instance's control socket; None (after a message) when nothing answers
    or the reply is not one (control.request checks it: control.BadReply)."""
    from lb import control

    inst = _instance(args) or "default"
    try:
        return control.request(inst, cmd, **params)
    except (control.NotRunning, OSError, ValueError) as e:
        print(_control_error(inst, e), file=sys.stderr)
    return None


def _refused(reply: dict, rc: int = 1) -> int:
    """A reply of "ok": false: its error (the daemon's words) on stderr; rc."""
    why = reply.get("error")
    print(f"lb: {why}" if isinstance(why, str) and why.strip() else "lb: the daemon refused the request "
          "(no reason given)", file=sys.stderr)
    return rc


def _fmt_time(t) -> str:
    if not t:
        return "-"
    try:
        return time.strftime("%H:%M:%S", time.localtime(t))
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{t!r} is not a time") from None


def _seconds_arg(text: str) -> float:
    """A number of seconds for --wait: finite, not negative."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"'{text}': a number of seconds, 0 or more") from None
    return value


def _pid_arg(text: str) -> int:
    """A process id for --pid: a positive number (0 and negative ones name process groups)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a process id") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}': a process id, 1 or more") from None
    return value


def _wait_control(args) -> dict | None:
    """`lb status --wait N`: the status once the daemon answers (it answers once ready), asking
    every 0.1 s for at most N s; None (after a message) when it never does, --pid exits, or its
    reply is not one.  Without --instance or --config, the instance is looked for again each
    time (a daemon just started takes its pid file a moment later)."""
    from lb import control

    deadline = time.monotonic() + args.wait
    named = getattr(args, "instance", None) or getattr(args, "config", None)
    inst = _instance(args) if named else None        # a --config is read once (its note said once)
    while True:
        if not named:
            try:
                inst = _instance(args) or "default"
            except _NoInstance as e:
                inst, why = None, e
        if inst is not None:
            try:
                return control.request(inst, "status")
            except control.BadReply as e:       # it answers, with what is not a reply: no use asking again
                print(_control_error(inst, e), file=sys.stderr)
                return None
            except (control.NotRunning, OSError, ValueError) as e:
                why = e
        if args.pid and not _pid_running(args.pid):
            print(f"lb: instance {inst or 'default'!r}: process {args.pid} exited before it was ready", file=sys.stderr)
            return None
        if time.monotonic() > deadline:
            if inst is None:
                print(f"lb: {why}", file=sys.stderr)
            else:
                print(f"lb: instance {inst!r} not ready within {args.wait:g} s: {why}", file=sys.stderr)
            return None
        time.sleep(0.1)


def cmd_status(args) -> int:
    from lb import control

    if args.pid is not None and args.wait is None:
        # it used to be ignored: the status asked once, whatever became of the process
        args.usage_error("argument --pid: only with --wait (the process to watch while waiting)")
    reply = _wait_control(args) if args.wait or args.pid else _control(args, "status")
    if reply is None:
        return 1
    if not reply["ok"]:
        return _refused(reply)
    try:
        # the fields it prints: one missing, or of another type, is a bad reply (nothing printed)
        text = control.checked(reply, lambda r: _status_text(r["status"], args.json))
    except control.BadReply as e:
        print(f"lb: {e}", file=sys.stderr)
        return 1
    print(text)
    return 0


def _status_text(doc, as_json: bool) -> str:
    if not isinstance(doc, dict):
        raise TypeError("its status is not an object")
    return json.dumps(doc, indent=2) if as_json else "\n".join(_status_lines(doc))


def _status_lines(doc: dict) -> list[str]:
    """What `lb status` prints of the daemon's status document; KeyError, TypeError, ValueError
    when the document lacks what it shows."""
    lines: list[str] = []
    out = lines.append
    out(f"instance {doc['instance']}  pid {doc['pid']}  role {doc['role']}  data plane {doc.get('dataplane')}"
        f"  config {doc['config']}")
    own = doc.get("ownership") or {}
    if own.get("last"):   # Engine.keep_ownership: what an interface lost, put back (or found)
        out(f"ownership: {own['addresses_restored']} addresses added back, {own['xdp_attached']} XDP "
            f"programs attached again; last {_fmt_time(own['at'])}: {own['last']}")
    # what failed and goes on (a run-loop step tried again at each turn, a background task restarted):
    # the log says why, once in a while; here, that it does
    failed = [f"{step} failed {n} times" for step, n in sorted((doc.get("housekeeping_errors") or {}).items()) if n]
    failed += [f"{kind} restarted {n} times" for kind, n in sorted((doc.get("task_restarts") or {}).items()) if n]
    if failed:
        out(f"errors (see the log): {', '.join(failed)}")
    ha = doc.get("ha")
    if ha:  # pulse: peer, channels, sync (lb/ha/pulse.py Pulse.status)
        peer = ha["peer"]
        out(f"ha {ha['node']} node, {ha['role']} for {ha['since_s']:.0f}s, {ha['role_changes']} role changes;"
            f" peer {peer['state']} ({'alive' if peer['alive'] else 'not heard'}"
            + (f", last heard {peer['last_heard_s']:.1f}s ago)" if peer["last_heard_s"] is not None else ")"))
        if ha.get("preempt_in_s") is not None:    # a returning primary waiting out preempt_delay
            out(f"  takes the addresses back in {ha['preempt_in_s']:.0f}s (preempt_delay)")
        for name, ch in ha["channels"].items():
            last = ch["last_heartbeat_s"]
            out(f"  channel {name:<8} {ch['local']} -> {ch['peer']}:{ch['port']}  last heartbeat "
                + ("never" if last is None else f"{last:.1f}s ago") + f"  rx {ch['rx']} tx {ch['tx']}")
        sy, c = ha["sync"], ha["counters"]
        lag = sy["last_tx_s"] if ha["role"] == "active" else sy["last_rx_s"]
        out(f"  sync {'on' if sy['enabled'] else 'off'}: last batch "
            + ("never" if lag is None else f"{lag:.1f}s ago") + f", pending {sy['pending']}, "
            f"sent {c['sync_tx_records']} received {c['sync_rx_records']} skipped {c['sync_skipped']};"
            f" ignored: forged {c['bad_auth']} replayed {c['replay']} stale {c['stale']}"
            f" malformed {c['malformed']} off-path {c.get('offpath', 0)}"
            f" not heard {c.get('unheard', 0)}")
        keys = ha.get("keys")
        if keys:              # the keyring (lb.ha.heartbeat.read_keys): the first key signs
            peer_key = keys["peer_signs_with"]
            out(f"  keys: {keys['count']} in {keys['file']}, signing with the first; the peer signs with "
                + ("(not heard yet)" if peer_key is None else f"key {peer_key}"))
        if "lease_s" in ha:   # the data plane's lease (bpf/lb_lease.h): claims the addresses while it runs
            left = ha["lease_s"]
            if left is None:
                text = "none (this data plane cannot check one: a crashed daemon's addresses stay claimed)" \
                    if ha.get("lease_armed") else "not yet renewed (pulse has not decided the role)"
            else:
                text = f"{left:.1f}s left" if left >= 0 else f"ran out {-left:.1f}s ago: the addresses are not claimed"
            out(f"  lease: {text}")
        for warning in ha.get("warnings", ()):   # a peer heard but refused, a skewed clock (Pulse.warnings)
            out(f"  WARNING: {warning}")
    conf = doc.get("configuration")
    if conf:   # the configuration's version, and the HA peer's (lb.ha.configsync)
        line = f"configuration serial_no {conf.get('serial_no')} ({conf.get('identity')})"
        if conf.get("file_differs"):
            line += "; the file differs: " + (", ".join(conf.get("restart_needed") or []) or "not reloaded") \
                + (" (restart needed)" if conf.get("restart_needed") else "")
        peer = conf.get("peer")
        if peer:
            same = {True: "the same", False: "a DIFFERENT", None: "an unknown"}[peer.get("same")]
            line += f"; peer runs {same} configuration (serial_no {peer.get('peer_serial_no')})"
            if peer.get("last_result") in ("refused", "older"):
                line += f": {peer['last_result']}: {peer.get('last_error')}"
        out(line)
    if doc.get("bgp"):   # lb.bgp: sessions and routes
        from lb.bgp import format_status
        out("\n".join(format_status(doc["bgp"])))
    if doc.get("counters"):
        out("data path: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in doc["counters"].items()))
    d = doc.get("defense")
    if d:
        modes = " ".join(f"{k} {v}" for k, v in d["modes"].items())
        out(f"defense: {modes}; engaged: {', '.join(d['engaged']) or 'none'}; embryonic table "
            f"{d['embryonic_free']} of {d['embryonic_size']} free (amemthresh {d['amemthresh']})"
            + (f"; dropping 1 in {d['drop_rate']} new connections" if d["drop_rate"] else "")
            + (f"; drop_entry deleted {d['drop_entry_deleted']}" if d["drop_entry_deleted"] else ""))
    from lb.listing import addrport

    for s in doc["services"]:
        state = "" if s["active"] else "  (inactive)"
        # endpoints as `lb list` prints them ([v6]:port), so that `lb weight` takes them back
        where = f"FWM {s['fwmark']}" if s.get("fwmark") else \
            f"{s['protocol'].upper():4} {addrport(s['address'], s['port'])}"
        sorry = ""
        if s.get("sorry_server"):
            sorry = f"  sorry server {s['sorry_server']}" + (" (IN USE)" if s.get("on_sorry_server") else "")
        out(f"{where} {s['scheduler']}  monitor {s['monitor']}{sorry}{state}")
        if s.get("waiting"):     # engine.HeldBack: the weights below are wanted, not yet forwarded
            out(f"  WAITING: a health, weight or override change {s['waiting']}; tried again at each "
                f"turn of the loop")
        for r in s["real_servers"]:
            last = r.get("last_check")
            detail = "" if not last else f"  last check {'ok' if last['ok'] else 'FAIL'} {_fmt_time(last['at'])} {last['detail']}"
            w = lbweight.from_status(r)
            # a firewall-mark service's real servers have port 0 in the table, as `lb list` shows:
            # each connection keeps the port it came to (r["port"] is the health checks' port)
            port = 0 if s.get("fwmark") else r["port"]
            dest = addrport(r["address"], port)     # its port padded to 6 columns
            out(f"  -> {r['name']:<12} {dest:<{len(dest) - len(str(port)) + 6}} weight {w.value:<5} "
                f"{r['health']:<11} changes {r['changes']:<3}{detail}")
            if w.source != lbweight.CONFIGURED:
                out(f"     {w.text()}")
            if "dataplane_weight" in r and r["dataplane_weight"] != (w.value if w.in_table else None):
                dw = r["dataplane_weight"]
                out("     waiting: " + ("not in the data plane's table yet" if dw is None
                                       else f"the data plane still has weight {dw}"))
            nh = lbweight.nexthop_text(r)    # the data plane cannot resolve its next hop
            if nh:
                out(f"     {nh}")
            if r.get("reason"):
                out(f"     {'up' if r['health'] == 'up' else 'down'} since {_fmt_time(r['since'])}: {r['reason']}")
            skipped = r.get("last_not_run")
            if r.get("not_run") and skipped:
                out(f"     {r['not_run']} checks not run (the director's own resources), the last "
                    f"{_fmt_time(skipped['at'])}: {skipped['detail']}")
            if r.get("monitor_restarts"):   # a bug in its check: the verdict above may be stale
                out(f"     health monitor restarted {r['monitor_restarts']} times after an error (see the log), "
                    f"the last: {r.get('monitor_error')}")
            load = r.get("load")
            if load and load.get("at"):
                out(f"     load monitor ({load['kind']}) {'ok' if load['ok'] else 'FAIL'} {_fmt_time(load['at'])}: "
                    f"{load['detail']}")
            if load and load.get("restarts"):
                out(f"     load monitor restarted {load['restarts']} times after an error (see the log), "
                    f"the last: {load.get('error')}")
    return lines


def cmd_reload(args) -> int:
    """Over the control socket, so the caller sees a refusal (file, line, field); SIGHUP with --signal."""
    if args.signal:
        return _signal_instance(args, signal.SIGHUP, False)
    reply = _control(args, "reload")
    if reply is None:
        return 1
    if reply["ok"]:
        print(reply.get("message", "reloaded"))
        return 0
    return _refused(reply, 2 if reply.get("issues") else 1)


def cmd_weight(args) -> int:
    """`lb weight`, `lb quiesce` (weight 0), `lb activate` (no override): the operator's weight of
    one real server, held by the running daemon (ipvsadm -e ... -w N)."""
    weight = {"quiesce": 0, "activate": None}.get(args.command, getattr(args, "weight", None))
    reply = _control(args, "weight", service=args.service, server=args.server, weight=weight)
    if reply is None:
        return 1
    if reply["ok"]:
        print(reply.get("message", "done"))
        return 0
    return _refused(reply)


def _weight_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number (0..65535)") from None


def cmd_passwd(args) -> int:
    """Set the web console's password: an scrypt hash in the password file (mode 0600)."""
    import getpass

    from lb.config.model import default_password_file
    from lb.web import password

    if args.file:
        path = args.file
    elif args.config:
        try:
            cfg = lbconfig.load(args.config)
        except lbconfig.ConfigError as e:
            print(e, file=sys.stderr)
            return 2
        path = cfg.web.password_path(cfg.instance)
    else:
        path = default_password_file("default")
    owner = None
    if args.owner:           # resolved before anything is asked or written
        import pwd

        try:
            pw = pwd.getpwnam(args.owner)
        except KeyError:
            print(f"lb: --owner {args.owner}: no such user; nothing changed", file=sys.stderr)
            return 1
        owner = (pw.pw_uid, pw.pw_gid)     # the console (lb web) reads it and changes it
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):       # a mistyped path: said before the password is asked
        print(f"lb: {path}: no such directory: {parent} (create it first); nothing changed", file=sys.stderr)
        return 1
    if args.stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            secret = getpass.getpass(f"new web console password for {path}: ")
            if getpass.getpass("again: ") != secret:
                print("lb: the passwords differ; nothing changed", file=sys.stderr)
                return 1
        except (EOFError, KeyboardInterrupt):
            print("\nlb: nothing changed", file=sys.stderr)
            return 1
    try:
        password.write(path, secret, args.user, owner)
    except ValueError as e:
        print(f"lb: {e}; nothing changed", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"lb: {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"{path}: password set for user {args.user}")
    return 0


def cmd_web(args) -> int:
    """`lb web`: the console, with the [web] settings the running daemon gives it."""
    from lb import sdnotify

    sdnotify.setup_logging("debug" if args.verbose else "info")
    try:
        inst = args.instance or (lbconfig.load(args.config).instance if args.config else "default")
    except lbconfig.ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    from lb.web import main as webmain

    return webmain.run(inst, args.socket_dir)


def _list_dataplane(args) -> str:
    """Which table `lb list` reads: an instance's pinned maps (xdp) or the kernel's IPVS table
    (ipvs; in the current network namespace, as ipvsadm).  --dataplane decides; otherwise pinned
    maps win (those of a running daemon; without one, any: _map_instances), and without any the
    kernel's IPVS table is read when the kernel has IPVS loaded.  maps.PinAccessError when this
    user cannot tell."""
    from lb.dataplane import ipvs

    if getattr(args, "dataplane", None):
        return args.dataplane
    if getattr(args, "instance", None) or getattr(args, "config", None):
        inst = _instance(args)
        if _pinned(inst):
            return "xdp"
        return "ipvs" if ipvs.available() else "xdp"
    return "xdp" if _map_instances()[0] or not ipvs.available() else "ipvs"


def _select_service(services, key):
    """The service of ``key`` (_service_key: -t/-u VIP:PORT, or -f MARK of IPv4, with -6 of IPv6),
    as ipvsadm selects one."""
    if key[0] == "fwmark":
        return [s for s in services if s.fwmark == key[1] and s.family == key[2]]
    return [s for s in services if not s.fwmark and s.protocol.lower() == key[0] and (s.address, s.port) == key[1:]]


# ipvsadm's list options of which one at most is given (its commands_v_options '1'), in its
# option order: (ipvsadm's name, lb's argument)
_LIST_EXCLUSIVE = (("connection", "connection"), ("service-address", "service"), ("timeout", "timeout"),
                   ("daemon", "daemon"))


# what ipvsadm -S refuses (its commands_v_options: -n alone; lb adds -t/-u/-f), and lb's own
# --json and --counters: each would print something else than the rules, as its name, in order
_SAVE_ILLEGAL = (("connection", "connection"), ("timeout", "timeout"), ("daemon", "daemon"), ("stats", "stats"),
                 ("rate", "rate"), ("thresholds", "thresholds"), ("persistent-conn", "persistent_conn"),
                 ("exact", "exact"), ("tun-info", "tun_info"), ("json", "json"), ("counters", "counters"))


# what `lb list` prints instead of the service table, and its selection and columns
_LIST_VIEWS = (("-c", "connection"), ("-t/-u/-f", "service"), ("--timeout", "timeout"), ("--daemon", "daemon"),
               ("--stats", "stats"), ("--rate", "rate"), ("--thresholds", "thresholds"),
               ("--persistent-conn", "persistent_conn"), ("--tun-info", "tun_info"))


def _list_conflict(args) -> str | None:
    """ipvsadm's refusal of list options that conflict (generic_opt_check names the later one
    first, then process_options' own rule), or None."""
    if args.save:
        for name, attr in _SAVE_ILLEGAL:
            if getattr(args, attr):
                return f"Illegal '{name}' option with the 'save' command"
    given = [name for name, attr in _LIST_EXCLUSIVE if getattr(args, attr)]
    if len(given) > 1:
        return f"The option '{given[1]}' conflicts with the '{given[0]}' option in the 'list' command"
    if ((args.connection or args.timeout or args.daemon) and (args.stats or args.rate or args.thresholds)) \
            or ((args.timeout or args.daemon) and args.persistent_conn):
        return "options conflicts in the list command"
    return None


def _print_listing(args, services, conns, timeouts, **header) -> int:
    """The output of `lb list`, whichever table it was read from."""
    from lb import listing

    if args.service:
        services = _select_service(services, _service_key(args))
        if not services:
            print("lb: no such service", file=sys.stderr)
            return 1
    if args.save:
        sys.stdout.write(listing.format_save(services, sort=not args.nosort))
    elif args.json:
        for chunk in listing.json_chunks(services, conns if args.connection else None, sort=not args.nosort):
            sys.stdout.write(chunk)
        sys.stdout.write("\n")
    elif args.timeout:
        sys.stdout.write(listing.format_timeout(*timeouts))
    elif args.connection:
        sys.stdout.write(listing.format_connections(conns, pe=args.persistent_conn))
    else:
        # ipvsadm's precedence (print_title, print_service_entry): stats, rate, thresholds,
        # persistent-conn, tun-info
        mode = ("stats" if args.stats else "rate" if args.rate else "thresholds" if args.thresholds
                else "persistent" if args.persistent_conn else "tun" if args.tun_info else "default")
        # ipvsadm prints its version header only when listing the whole table
        sys.stdout.write(listing.format_services(services, mode=mode, exact=args.exact, sort=not args.nosort,
                                                 header=not args.service, **header))
    return _zero(args) if args.zero else 0


def _list_ipvs(args) -> int:
    """`lb list` of the kernel's IPVS table: the same output as ipvsadm -L -n."""
    from lb.dataplane import ipvs

    try:
        ipvs.ensure_module()
        if args.daemon:          # ipvsadm -L --daemon: the kernel's sync daemons
            sys.stdout.write("".join(d.line() + "\n" for d in ipvs.read_daemons()))
            return 0
        version, size = ipvs.read_info()
        services = ipvs.read_services()
        conns = ipvs.read_connections() if args.connection else []
        timeouts = ipvs.read_timeouts() if args.timeout else DEFAULT_TIMEOUTS
    except ipvs.IpvsError as e:
        print(f"lb: {e}", file=sys.stderr)
        return 1
    return _print_listing(args, services, conns, timeouts, size=size, version=version)


def connection_listing(maps, now_ns: int | None = None, fast: bool | None = None, pe: bool = False):
    """`lb list -c -n` (ipvsadm -L -c -n) of pinned maps as chunks of bytes, header included.
    fast (default: when lb._bpfbatch is built): the lines come formatted from C
    (reader.connection_lines); else lb.listing formats reader.read_connections' records, the
    same bytes."""
    from lb import listing
    from lb.dataplane import reader
    from lb.dataplane.maps import have_batch

    now = time.monotonic_ns() if now_ns is None else now_ns
    if fast is None:
        fast = have_batch()
    if not fast:
        yield listing.format_connections(reader.read_connections(maps, now_ns=now), pe=pe).encode()
        return
    yield listing.format_connections([], pe=pe).encode()
    yield from reader.connection_lines(maps, now)


def _service_key(args) -> tuple | None:
    """-t/-u VIP:PORT or -f MARK [-6] as the data plane names a service: ("tcp", VIP, PORT) or
    ("fwmark", MARK, 4 or 6: IPv6 with -6, as ipvsadm); None without one; ValueError when the
    text is not one."""
    if getattr(args, "ipv6", False) and (not args.service or args.service[0] != "FWM"):
        raise ValueError("-6 goes with -f MARK (the IPv6 service of that mark), as ipvsadm's")
    if not args.service:
        return None
    proto, text = args.service
    if proto == "FWM":
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"-f {text}: a firewall mark is a number")
        if not 0 < int(text) < 1 << 32:
            raise ValueError(f"-f {text}: a firewall mark is 1..4294967295")
        return ("fwmark", int(text), 6 if getattr(args, "ipv6", False) else 4)
    from lb.config.model import parse_endpoint

    where = parse_endpoint(text)
    if where is None or where[1] is None:
        where = _named_endpoint(text, proto.lower())
    return (proto.lower(), where[0], where[1])


def _named_endpoint(text: str, proto: str) -> tuple:
    """ipvsadm's parse_service beyond numbers: the port a service name (``VIP:http``, as
    /etc/services has it for ``proto``), the address a host name (IPv4, as its host_to_addr);
    ValueError saying which part is not one."""
    import ipaddress
    import socket

    from lb.config.model import parse_port, service_port, split_endpoint

    bad = ValueError(f"{text}: expected VIP:PORT ([VIP]:PORT for IPv6)")
    parts = split_endpoint(text)
    if parts is None or parts[1] is None or not parts[0] or not parts[1]:
        raise bad
    host, port_text, bracketed = parts
    port = parse_port(port_text)
    if port is None:
        if port_text.isdigit():
            raise bad
        port = service_port(port_text, proto)
        if port is None:
            raise ValueError(f"{text}: no {proto} service {port_text!r} (/etc/services): give the port number")
    try:
        return ipaddress.ip_address(host), port
    except ValueError:
        if bracketed:
            raise bad from None
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        infos = []
    if not infos:
        raise ValueError(f"{text}: {host!r} is neither an address nor a host name this host resolves")
    return ipaddress.ip_address(infos[0][4][0]), port


def _zero(args) -> int:
    """ipvsadm -Z: through the daemon when it runs (it also restarts its rate estimator), else
    the pinned maps; the kernel's IPVS table over netlink, as ipvsadm."""
    from lb import control
    from lb.dataplane import ipvs
    from lb.dataplane.maps import MapError, PinAccessError

    try:
        service = _service_key(args)
    except ValueError as e:
        print(f"lb: {e}", file=sys.stderr)
        return 2
    try:
        if _list_dataplane(args) == "ipvs":
            ipvs.ensure_module()
            ipvs.zero(service)
            return 0
        inst = _instance(args, maps=True)
        if inst is None:
            print("lb: no lb instance here (nothing under /sys/fs/bpf/lb)", file=sys.stderr)
            return 1
        if service is not None and service[0] == "fwmark":
            # the daemon knows a mark's service by the mark alone (lb's table has one service
            # per mark): its family is checked here, in the maps it zeroes
            from lb.dataplane import reader
            from lb.dataplane.maps import PinnedMaps

            try:
                maps = PinnedMaps(inst)
            except FileNotFoundError:
                maps = None          # none pinned: no XDP table to check (nor to zero without a daemon)
            if maps is not None:
                with maps:
                    maps.check_layout()
                    reader.stat_ids(maps, service)
        wire = None if service is None else [service[0], str(service[1]), *service[2:]]
        try:
            reply = control.request(inst, "zero", service=wire)
        except control.NotRunning:
            from lb.dataplane.xdp import zero_pinned

            zero_pinned(inst, service)
            return 0
        except (control.BadReply, OSError) as e:       # it answers, but not with a reply; not ours to ask
            print(_control_error(inst, e), file=sys.stderr)
            return 1
        return 0 if reply["ok"] else _refused(reply)
    except LookupError:
        print("lb: no such service", file=sys.stderr)
        return 1
    except (PinAccessError, MapError) as e:
        print(f"lb: {e}", file=sys.stderr)
        return 1
    except (OSError, ipvs.IpvsError) as e:
        print(f"lb: {e}", file=sys.stderr)
        return 1


def cmd_zero(args) -> int:
    return _zero(args)


def _print_counters(args, counters: dict[str, int], events: dict[str, int]) -> int:
    if args.json:
        print(json.dumps({"counters": counters, "connection_tables": events}, indent=2))
    else:
        from lb import listing

        sys.stdout.write(listing.format_counters(counters, events, args.exact))
    return 0


def cmd_list(args) -> int:
    from lb.dataplane.maps import MapError, PinAccessError

    try:
        return _list(args)
    except (PinAccessError, MapError) as e:
        # another user's maps, or another lb version's: one line naming them
        print(f"lb: {e}", file=sys.stderr)
        return 1


def _list(args) -> int:
    from lb.dataplane import reader
    from lb.dataplane.maps import PinnedMaps

    # the command line first, as ipvsadm checks it: a malformed service as `lb zero` says it,
    # then conflicting options
    try:
        _service_key(args)
    except ValueError as e:
        print(f"lb: {e}", file=sys.stderr)
        return 2
    conflict = _list_conflict(args)
    if conflict is None and args.zero and args.counters:
        # nothing zeroes the data path's counters: -Z here would zero what was not listed
        conflict = ("-Z zeroes the services' counters (as `lb zero`), not the data path's that "
                    "--counters lists: give one or the other")
    if conflict is None:
        # lb's own listings print one thing: an option they have no place for is refused, not ignored
        for what, whose, options in (("counters", "the data path's counters alone", _LIST_VIEWS),
                                     ("json", "the services (with -c, the connections)", _LIST_VIEWS[2:4])):
            given = [opt for opt, attr in options if getattr(args, attr)]
            if getattr(args, what) and given:
                conflict = f"--{what} lists {whose}, not with {given[0]}"
                break
    if conflict is not None:
        print(f"lb: {conflict}", file=sys.stderr)
        return 2
    if args.counters and args.dataplane == "ipvs":
        print("lb: --counters lists the XDP data path's counters, not kernel IPVS's: lb list --stats, "
              "or /proc/net/ip_vs_stats", file=sys.stderr)
        return 2
    if not args.counters and _list_dataplane(args) == "ipvs":
        return _list_ipvs(args)
    if args.daemon:
        return 0                 # XDP mode syncs in lb's own daemon (lb status), not the kernel's
    inst = _instance(args, maps=True)
    if inst is None:              # no instance: nothing listed, in the layout asked for
        if args.counters:
            return _print_counters(args, {}, {})
        return _print_listing(args, [], [], DEFAULT_TIMEOUTS)
    try:
        maps = PinnedMaps(inst)
    except FileNotFoundError as e:
        print(f"lb: {e}", file=sys.stderr)
        return 1
    with maps:
        maps.check_layout()     # another lb version's maps: said before anything is printed
        if args.counters:
            return _print_counters(args, reader.read_counters(maps), reader.read_ct_events(maps))
        if args.connection and not args.json:
            # the connection listing alone: streamed from C buffers (1M entries in about a second)
            sys.stdout.flush()
            for chunk in connection_listing(maps, pe=args.persistent_conn):
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return _zero(args) if args.zero else 0
        services = reader.read_services(maps)
        if args.connection:
            # --json: each connection written as it is read (a million of them neither held as
            # records nor as one text), while the maps are open
            return _print_listing(args, services, reader.iter_connections(maps), DEFAULT_TIMEOUTS)
        conns: list = []
        timeouts = reader.read_timeouts(maps)
    if args.rate:
        _warn_stale_rates(inst)
    return _print_listing(args, services, conns, timeouts)


def _warn_stale_rates(inst: str) -> None:
    """The rates are the daemon's estimates (IPVS's kernel estimator runs on its own): with no
    daemon they stay as it left them while the counters go on -- said on stderr, the listing
    stays ipvsadm's."""
    from lb import instance

    try:
        instance.running_pid(inst)
    except instance.NotRunning:
        print(f"lb: no daemon runs instance {inst!r}: the rates are its last estimates, frozen until "
              f"one runs (the counters, --stats, are live)", file=sys.stderr)


def _add_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--numeric", action="store_true", help="numeric output (always on)")
    p.add_argument("-c", "--connection", action="store_true", help="list connections")
    p.add_argument("--stats", action="store_true", help="packet and byte counters")
    p.add_argument("--counters", action="store_true",
                   help="the data path's drop, refusal and defense counters and the connection tables' "
                        "tallies (xdp data plane)")
    p.add_argument("--rate", action="store_true",
                   help="rates: connections, packets and bytes per second (IPVS's 2 s estimator)")
    p.add_argument("--timeout", action="store_true", help="tcp tcpfin udp timeouts")
    p.add_argument("--daemon", action="store_true", help="the kernel's IPVS sync daemons (ipvs data plane)")
    p.add_argument("--persistent-conn", action="store_true", help="persistence templates per real server")
    p.add_argument("--thresholds", action="store_true", help="upper/lower connection thresholds")
    p.add_argument("--tun-info", action="store_true", help="each real server's tunnel type (ipip for tunneling)")
    p.add_argument("--exact", "-X", action="store_true", help="exact numbers with --stats and --rate")
    p.add_argument("--sort", action="store_true", help="sort (the default)")
    p.add_argument("--nosort", action="store_true", help="keep the table's order")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-S", "--save", action="store_true",
                   help="the table as ipvsadm -S -n rules: `lb list --save | ipvsadm -R` hands it to plain IPVS")
    p.add_argument("-Z", "--zero", action="store_true",
                   help="after listing, zero the counters (of the -t/-u/-f service, or all): lb zero")
    _add_service_args(p)
    p.set_defaults(func=cmd_list)


def _add_service_args(p: argparse.ArgumentParser) -> None:
    """--instance, --dataplane and ipvsadm's one-service selection (-t/-u/-f)."""
    p.add_argument("--instance", type=_instance_name, help="instance name (default: the one whose daemon runs; with no daemon, "
                                        "the only one with pinned maps)")
    p.add_argument("--dataplane", choices=["xdp", "ipvs"], default=None,
                   help="read an instance's pinned maps (xdp) or the kernel's IPVS table (ipvs); "
                        "default: pinned maps if any, else the kernel's IPVS table if loaded")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-t", "--tcp-service", dest="service", type=lambda s: ("TCP", s), metavar="VIP:PORT")
    g.add_argument("-u", "--udp-service", dest="service", type=lambda s: ("UDP", s), metavar="VIP:PORT")
    g.add_argument("-f", "--fwmark-service", dest="service", type=lambda s: ("FWM", s), metavar="MARK")
    # ipvsadm's third protocol: lb's XDP table has none, kernel IPVS's may (--dataplane ipvs)
    g.add_argument("--sctp-service", dest="service", type=lambda s: ("SCTP", s), metavar="VIP:PORT")
    p.add_argument("-6", "--ipv6", action="store_true", help="with -f: the IPv6 service of that mark (as ipvsadm)")


# ipvsadm's commands that edit the table, and what lb does instead: its table is its config's
EDIT_INSTEAD = {
    ("-A", "--add-service"): "add a [[virtual_server]] table to the config",
    ("-E", "--edit-service"): "change the [[virtual_server]] in the config",
    ("-D", "--delete-service"): "remove the [[virtual_server]] from the config (its connections drain)",
    ("-a", "--add-server"): "add a [[virtual_server.real_server]] to its service in the config",
    ("-e", "--edit-server"): "change the real server in the config; for its weight alone, at once and "
                             "without a reload: `lb weight SERVICE SERVER N` (`lb quiesce` for 0, "
                             "`lb activate` to undo)",
    ("-d", "--delete-server"): "remove the real server from the config (its connections drain); to stop "
                               "its new connections at once: `lb quiesce SERVICE SERVER`",
    ("-C", "--clear"): "remove the virtual servers from the config, or `lb stop` (it removes all it added)",
    ("-R", "--restore"): "write the services as [[virtual_server]] tables (configs/example.toml; `lb import` "
                         "converts a Piranha lvs.cf or a keepalived.conf); the way back to plain IPVS is "
                         "`lb list --save > rules`, `lb stop`, `ipvsadm -R < rules`",
    ("--set",): "set tcp, tcpfin and udp in the config's [timeouts]",
    ("--start-daemon", "--stop-daemon"): "set [ha] sync = true: lb syncs connections to the backup itself "
                                         "(the kernel's sync daemon with the ipvs data plane), with the HA role",
}


def ipvsadm_edit(argv: list[str]) -> str | None:
    """The message for ipvsadm's table-editing options in an `lb list` (or `lb -A ...`) command
    line: lb writes its table from the config, never by command."""
    if not argv or not (argv[0] in ("list", "zero") or argv[0].startswith("-")):
        return None
    for arg in argv:
        if arg == "--":
            break
        opt = arg.split("=", 1)[0]
        for opts, instead in EDIT_INSTEAD.items():
            if opt in opts:
                long = opt if opt.startswith("--") else opts[-1]     # -A is --add-service; a long one is itself
                return (f"lb: {opt} is ipvsadm's {long}: lb does not edit its table by command, it "
                        f"forwards what its config says.  Instead {instead}; check the file with `lb check "
                        f"--config FILE` and apply it with `lb reload` (a refused file changes nothing).")
    return None


def _ip_arg(text: str):
    import ipaddress

    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an IP address") from None


def cmd_decap_attach(args) -> int:
    from lb.dataplane import decap

    try:
        mode, addrs = decap.attach(args.dev, args.address, args.mode, args.sources, args.vips)
    except decap.DecapError as e:
        print(f"lb: decap: {e}", file=sys.stderr)
        return 1
    print(f"decap attached to {args.dev} ({mode} mode) for {', '.join(map(str, addrs))} "
          f"from {', '.join(map(str, args.sources))}, to "
          f"{', '.join(map(str, dict.fromkeys(args.vips))) or 'any address (no --vip)'}")
    return 0


def cmd_decap_detach(args) -> int:
    from lb.dataplane import decap

    try:
        detached = decap.detach(args.dev)
    except decap.DecapError as e:
        print(f"lb: decap: {e}", file=sys.stderr)
        return 1
    print(f"decap detached from {args.dev}" if detached else f"no XDP program on {args.dev}: nothing to detach")
    return 0


def cmd_send_arp(args) -> int:
    """Piranha's send_arp: gratuitous ARP (IPv4) or an unsolicited neighbour advertisement (IPv6)
    for ADDR from DEV's MAC, so that the segment's neighbours send ADDR's traffic to this host."""
    from lb.ha import addresses, announce

    logging.basicConfig(level=logging.WARNING, format="lb: %(message)s", stream=sys.stderr)
    if args.count < 1 or not 0 <= args.interval <= 60:
        print("lb: send-arp: --count is 1 or more, --interval 0 to 60 seconds", file=sys.stderr)
        return 2
    if not addresses.interface_exists(args.dev):
        print(f"lb: send-arp: interface {args.dev} does not exist", file=sys.stderr)
        return 1
    try:
        n = announce.send_arp(args.dev, args.address, args.count, args.interval)
    except PermissionError:
        print("lb: send-arp: sending raw frames needs root (CAP_NET_RAW)", file=sys.stderr)
        return 1
    if not n:
        print(f"lb: send-arp: nothing sent on {args.dev}", file=sys.stderr)
        return 1
    what = "gratuitous ARP" if args.address.version == 4 else "unsolicited neighbour advertisement"
    print(f"{args.address} announced on {args.dev} ({announce._mac(args.dev)}): {n} {what} frame{'s' * (n > 1)}")
    return 0


def cmd_realserver(args) -> int:
    """`lb realserver check|setup`: a real server's side of direct routing and tunneling."""
    from lb import realserver

    logging.basicConfig(level=logging.WARNING, format="lb: %(message)s", stream=sys.stderr)
    write = sys.stdout.write
    try:
        if args.rs_command == "check":
            return realserver.check(args.mode, args.vips, args.arp, args.dev, write, args.sources)
        if args.undo:
            return realserver.undo(args.vips, write)
        return realserver.setup(args.mode, args.vips, args.arp, args.dev, write, args.sources)
    except realserver.NoSuchInterface as e:     # the command line's mistake, not a missing point
        print(f"lb: realserver: --dev: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"lb: realserver: {e.filename or e}: permission denied (run it as root)", file=sys.stderr)
    except (realserver.RealServerError, OSError, ValueError) as e:
        print(f"lb: realserver: {e}", file=sys.stderr)
    except Exception as e:       # decap's own errors (DecapError) and netlink's, in words
        print(f"lb: realserver: {type(e).__name__}: {e}", file=sys.stderr)
    return 1


# --instance and --config of the commands that ask a running daemon (stop, status, reload, weight)
_INSTANCE_HELP = "the daemon's instance (default: the one running, else default)"
_CONFIG_HELP = ("a config file, read only for the instance it names; the daemon keeps the file it was "
                "started with (lb reload re-reads that one)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lb", description="Linux Virtual Server director with an XDP data plane")
    ap.add_argument("--version", action="version", version=f"lb {lb.__version__} (lvs-director)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the director (the lvs daemon)")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="the least severe messages logged (to stderr; journald's format under systemd)")
    p.add_argument("--on-sigterm", choices=["clean", "keep", "systemd"], default="clean",
                   help="what SIGTERM does: a clean stop (the default); keep the data plane, maps and "
                        "addresses for the next start; or (lb@.service) keep them only when systemd is "
                        "restarting the unit, else a clean stop")
    p.add_argument("--unit", metavar="UNIT",
                   help="with --on-sigterm systemd: the unit whose job decides (default: this process's, "
                        "from /proc/self/cgroup)")
    p.add_argument("--xdp-mode", choices=["native", "generic"], default="native",
                   help="native (driver) XDP, falling back to generic; or generic only")
    p.add_argument("--dataplane", choices=["xdp", "ipvs", "auto"], default=None,
                   help="override the config's [global] dataplane: xdp, kernel ipvs, or auto "
                        "(xdp, falling back to ipvs when XDP cannot be loaded or attached); the file "
                        "is checked for this one, at the start and at each reload")
    p.add_argument("--wait-interfaces", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for interfaces the config names that do not exist yet (a VLAN or "
                        "bond made later at boot); 0, the default, refuses to start at once (lb@.service: 120)")
    p.add_argument("-v", "--verbose", action="store_true", help="--log-level debug")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a config file")
    p.add_argument("file", nargs="?", metavar="FILE", help="the config file (or --config)")
    p.add_argument("--config", "-c")
    p.add_argument("--instance", type=_instance_name, metavar="NAME",
                   help="warn unless the file's [global] instance is NAME (lb@.service passes its own)")
    p.add_argument("--dataplane", choices=["xdp", "ipvs", "auto"], default=None,
                   help="check for this data plane instead of the config's [global] dataplane (as "
                        "`lb run --dataplane` runs it)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("import", help="print a Piranha lvs.cf or a keepalived.conf as lb TOML")
    p.add_argument("file", metavar="FILE", help="lvs.cf or keepalived.conf (told apart by name and content)")
    p.add_argument("--config-id", default=None,
                   help="keepalived.conf: the config id its @ID lines are matched against "
                        "(keepalived's -i; default: the host name's first label)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="print a config as Piranha lvs.cf")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("stop", help="stop a running instance")
    p.add_argument("--instance", type=_instance_name, help=_INSTANCE_HELP)
    p.add_argument("--config", help=_CONFIG_HELP)
    p.add_argument("--keep-dataplane", action="store_true",
                   help="leave XDP attached, maps pinned and addresses up (for an upgrade: the next "
                        "`lb run` adopts them without dropping a packet)")
    p.add_argument("--unit", metavar="UNIT",
                   help="(an ExecStop= of a unit of one's own) keep the data plane unless systemd is "
                        "stopping UNIT rather than restarting it; nothing running is not an error")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("status", help="services, real servers and their health checks")
    p.add_argument("--instance", type=_instance_name, help=_INSTANCE_HELP)
    p.add_argument("--config", help=_CONFIG_HELP)
    p.add_argument("--json", action="store_true")
    p.add_argument("--wait", type=_seconds_arg, metavar="SECONDS",
                   help="wait until the daemon is ready (its control socket answers), at most SECONDS")
    p.add_argument("--pid", type=_pid_arg, help="only with --wait: give up as soon as this process has exited")
    p.set_defaults(func=cmd_status, usage_error=p.error)

    p = sub.add_parser("reload", help="re-read the config of a running instance; a bad file is refused "
                                      "with its errors and changes nothing")
    p.add_argument("--instance", type=_instance_name, help=_INSTANCE_HELP)
    p.add_argument("--config", help=_CONFIG_HELP)
    p.add_argument("--signal", action="store_true",
                   help="send SIGHUP instead of asking on the control socket (errors go to the daemon's log)")
    p.set_defaults(func=cmd_reload)

    for name, text in (("weight", "set a real server's weight in the running daemon (an override of the "
                                  "file's and the load monitor's; it survives reloads and restarts of lb, not a reboot)"),
                       ("quiesce", "weight 0 for a real server (open connections go on, no new ones): "
                                   "lb weight SERVICE SERVER 0"),
                       ("activate", "clear a real server's override (lb weight/quiesce): back to its "
                                    "configured or load monitor's weight")):
        p = sub.add_parser(name, help=text)
        p.add_argument("service", metavar="SERVICE", help="virtual server name (or VIP:PORT)")
        p.add_argument("server", metavar="SERVER", help="real server name, ADDR or ADDR:PORT")
        if name == "weight":
            p.add_argument("weight", metavar="N", type=_weight_arg, help="0..65535; 0 quiesces")
        p.add_argument("--instance", type=_instance_name, help=_INSTANCE_HELP)
        p.add_argument("--config", help=_CONFIG_HELP)
        p.set_defaults(func=cmd_weight)

    _add_list_args(sub.add_parser("list", help="list the table like ipvsadm -L"))

    p = sub.add_parser("zero", help="zero the packet, byte and connection counters and the rates, of one "
                                    "service (-t/-u/-f) or all (ipvsadm -Z)")
    _add_service_args(p)
    p.set_defaults(func=cmd_zero)

    p = sub.add_parser("decap", help="on a real server of a tunnel-mode service: take the director's "
                                     "tunnel headers off in XDP (no ipip module needed)")
    dsub = p.add_subparsers(dest="decap_command", required=True)
    d = dsub.add_parser("attach", help="attach the decap program to DEV (it stays after this command)")
    d.add_argument("dev")
    d.add_argument("--address", action="append", default=[], type=_ip_arg,
                   help="an address tunnels arrive for (repeatable; default: DEV's global addresses)")
    d.add_argument("--from", dest="sources", action="append", required=True, type=_ip_arg, metavar="ADDR",
                   help="a director's address, the tunnels' outer source (repeatable, IPv4 and IPv6; "
                        "tunnels from any other source are dropped)")
    d.add_argument("--vip", dest="vips", action="append", default=[], type=_ip_arg, metavar="ADDR",
                   help="a VIP of this real server: only inner packets to one are let in (repeatable; "
                        "without it, to any address -- a forged director source could then relay "
                        "packets to any address through this host)")
    d.add_argument("--mode", choices=["native", "generic"], default="native")
    d.set_defaults(func=cmd_decap_attach)
    d = dsub.add_parser("detach", help="remove the decap program from DEV")
    d.add_argument("dev")
    d.set_defaults(func=cmd_decap_detach)

    p = sub.add_parser("send-arp", help="announce ADDR on DEV: gratuitous ARP / unsolicited neighbour "
                                        "advertisement (Piranha's send_arp)")
    p.add_argument("address", metavar="ADDR", type=_ip_arg, help="the IPv4 or IPv6 address to announce")
    p.add_argument("dev", metavar="DEV", help="the interface whose MAC the neighbours are to use")
    p.add_argument("--count", type=int, default=1, help="frames to send (default 1)")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between them (default 0.1)")
    p.set_defaults(func=cmd_send_arp)

    p = sub.add_parser("realserver", help="on a real server: check or set up what direct routing or "
                                          "tunneling needs (VIP on lo, no ARP for it, decap)")
    rsub = p.add_subparsers(dest="rs_command", required=True)
    for name, text in (("check", "report each point as ok or missing, with the command that fixes it "
                                 "(exit status 1 when any is missing)"),
                       ("setup", "make the missing points so (again: nothing to do); --undo takes back "
                                 "what setup did")):
        r = rsub.add_parser(name, help=text)
        r.add_argument("--mode", choices=["dr", "tunnel"], required=True,
                       help="the virtual services' network: dr (direct routing) or tunnel")
        r.add_argument("--arp", choices=["sysctl", "arptables"], default="sysctl",
                       help="keep the real server from answering ARP for the VIP by arp_ignore=1 / "
                            "arp_announce=2 (default) or by arptables rules (the Piranha manual's way)")
        r.add_argument("--dev", help="the interface facing the director (default: the default route's)")
        r.add_argument("--from", dest="sources", action="append", default=[], type=_ip_arg, metavar="ADDR",
                       help="tunnel: a director's address, the only accepted tunnel source (repeatable; "
                            "setup's decap needs at least one)")
        if name == "setup":
            r.add_argument("--undo", action="store_true", help="remove what setup added for these VIPs")
        r.add_argument("vips", nargs="+", metavar="VIP", type=_ip_arg, help="the virtual IP addresses")
        r.set_defaults(func=cmd_realserver)

    p = sub.add_parser("passwd", help="set the web console's password (a salted scrypt hash, mode 0600)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", "-c", help="the config whose [web] password_file to write "
                                          "(default /etc/lb/<instance>.passwd)")
    g.add_argument("--file", help="the password file to write (default /etc/lb/default.passwd)")
    p.add_argument("--stdin", action="store_true", help="read the password from one line of stdin "
                                                        "instead of prompting twice")
    p.add_argument("--user", default="admin", help="the user name the console asks for (default admin)")
    p.add_argument("--owner", help="give the file to this user (the one `lb web` runs as, e.g. lb-web), "
                                   "so the console can change the password")
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser("web", help="run the web console (the Piranha Configuration Tool's successor) as its own "
                                   "process; it talks to the daemon over its control socket only")
    p.add_argument("--instance", type=_instance_name, help="the daemon's instance (default: the --config's, else default)")
    p.add_argument("--config", "-c", help="a config file, only to tell the instance")
    p.add_argument("--socket-dir", default="/run/lb-control", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_web)

    from lb.lab.cli import add_cli

    add_cli(sub)
    return ap


class _StdoutError(BaseException):
    """A write to stdout failed (other than EPIPE): the OSError is its cause.  A BaseException,
    as KeyboardInterrupt: no command's `except Exception` takes it for one of its own errors."""


class _Guarded:
    """sys.stdout (and its .buffer) as main() runs a command: a failed write or flush raises
    _StdoutError, told apart from the command's own OSErrors; EPIPE stays BrokenPipeError."""

    def __init__(self, stream):
        self._stream = stream

    def _call(self, name, *args):
        try:
            return getattr(self._stream, name)(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise _StdoutError(e.strerror or str(e)) from e

    def write(self, data):
        return self._call("write", data)

    def writelines(self, lines):
        return self._call("writelines", lines)

    def flush(self):
        return self._call("flush")

    @property
    def buffer(self):
        return _Guarded(self._stream.buffer)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    stdout = sys.stdout
    # the daemons (lb run, lb web) log to stderr, and a stdout error inside one of their tasks
    # must not be a BaseException that stops its event loop: only the commands that print and
    # exit are guarded
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    if stdout is not None and (not words or words[0] not in ("run", "web")):   # None: fd 1 closed
        sys.stdout = _Guarded(stdout)
    try:
        rc = _main(argv)
        if sys.stdout is not None:
            sys.stdout.flush()     # a write error shows here, not in the interpreter's last flush
        return rc
    except ModuleNotFoundError as e:
        # a host without a dependency gets a sentence, not a traceback
        name = (e.name or str(e)).split(".")[0]
        how = {"bcc": "apt install python3-bpfcc (lb's install script exposes it to lb's venv)",
               "pyroute2": "pip install pyroute2 in lb's environment (or reinstall lvs-director)"}.get(
            name, f"pip install {name} in lb's environment (or reinstall lvs-director)")
        print(f"lb: the Python module {name!r} is missing: {how}", file=sys.stderr)
        return 2
    except lbconfig.ConfigError as e:
        # any subcommand given --config (status, stop, reload, list, ...) names file:line: field
        print(e, file=sys.stderr)
        return 2
    except _NoInstance as e:
        print(f"lb: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (`lb list -c | head`): quiet, as ipvsadm dies of SIGPIPE; stdout
        # goes to /dev/null so that the interpreter's last flush does not complain either
        _stdout_to_devnull(stdout)
        return 128 + signal.SIGPIPE
    except _StdoutError as e:
        # a full disk, a quota, /dev/full: one line, not a traceback
        print(f"lb: stdout: {e}", file=sys.stderr)
        _stdout_to_devnull(stdout)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C while a command waits (`lb status --wait`, `lb stop`) or prints (`lb list -c`):
        # quiet, as ipvsadm dies of SIGINT (`lb run` handles SIGINT itself: a clean stop)
        return 128 + signal.SIGINT
    finally:
        sys.stdout = stdout


def _stdout_to_devnull(stdout) -> None:
    """What is left in stdout's buffer is dropped: the interpreter's last flush is quiet."""
    try:
        fd = stdout.fileno()
    except (OSError, ValueError, AttributeError):     # not a file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    edit = ipvsadm_edit(argv)
    if edit is not None:
        print(edit, file=sys.stderr)
        return 2
    # ipvsadm habits: `lb -L -n`, `lb -Ln`, `lb -Lnc`, `lb -S -n`, `lb -Z`
    if argv and argv[0][:2] in ("-L", "-l") and argv[0] not in ("--list",):
        argv = ["list"] + [f"-{c}" for c in argv[0][2:]] + argv[1:]
    elif argv and argv[0] == "--list":
        argv[0] = "list"
    elif argv and (argv[0] in ("-S", "--save") or argv[0] == "-Sn"):
        argv = ["list", "--save"] + (["-n"] if argv[0] == "-Sn" else []) + argv[1:]
    elif argv and argv[0] in ("-Z", "--zero", "-Zn"):
        argv = ["zero"] + [a for a in argv[1:] if a not in ("-n", "--numeric")]
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
