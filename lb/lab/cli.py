"""`lb lab ...`: up / down / status / exec for the namespace lab.

Wire-up (argparse):  from lb.lab.cli import add_cli; add_cli(subparsers); args.func(args) -> int
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys

from . import nsutil, topology


def _take_tests_lock(cmd: str) -> int | None:
    """The lock a test session or a bench run holds while it uses the lab (topology.TESTS_LOCK):
    its fd, held while `lb lab up`/`down` change the lab, or None (said on stderr) when another
    holds it -- so that an operator's command never tears down a lab under test."""
    fd = os.open(topology.TESTS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        print(f"lb lab {cmd}: the lab is in use by a test session or a bench run (it holds "
              f"{topology.TESTS_LOCK}): nothing changed; try again once it has ended", file=sys.stderr)
        return None
    return fd


def _cmd_up(args: argparse.Namespace) -> int:
    if args.scale_out and args.network == "nat":
        print("lb lab up: --scale-out takes --network direct or tunnel (NAT replies would not come back "
              "through the director that has the connection)", file=sys.stderr)
        return 2
    fd = _take_tests_lock("up")
    if fd is None:
        return 1
    try:
        topology.up(args.network, scale_out=args.scale_out)
    finally:
        os.close(fd)
    print(f"lab up ({args.network}" + (f", scale-out: {args.scale_out} directors behind a router)" if args.scale_out
                                       else ")"))
    _print_status(topology.status())
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    fd = _take_tests_lock("down")
    if fd is None:
        return 1
    try:
        topology.down()
    finally:
        os.close(fd)
    print("lab down")
    return 0


def _print_status(st: dict) -> None:
    state = "up" if st["up"] else ("partial" if any(st["namespaces"].values()) else "down")
    print(f"lab: {state}" + (f", network {st['network']}" if st["network"] else "")
          + (f", scale-out {st['scale_out']}" if st.get("scale_out") else ""))
    for node, exists in st["namespaces"].items():
        line = f"  {nsutil.netns_name(node):<12} {'present' if exists else 'missing'}"
        if node in st["nginx"]:
            ng = st["nginx"][node]
            line += f"  {topology.REALS[node]:<13} nginx " + (f"pid {ng['pid']}" if ng["alive"] else "stopped")
        print(line)
    if st["up"] and st.get("scale_out"):
        from . import scaleout
        so = scaleout.status(st["scale_out"])
        for d, info in so["directors"].items():
            print(f"  {d:<10} pub0 {info['pub']}  priv0 {info['priv']}  (instance {info['instance']})  "
                  f"BGP {so['sessions'].get(d, 'no session')}")
        for vip, hops in so["routes"].items():
            print(f"  router: {vip} via {', '.join(hops) if hops else '(not announced)'}")
        print(f"  client {scaleout.CLIENT} (sources {scaleout.CLIENT_SOURCES[0]}..{scaleout.CLIENT_SOURCES[-1]})"
              f"  router {scaleout.ROUTER_PUB} AS {scaleout.ROUTER_AS}; a director's config: "
              f"python -m lb.lab.scaleout config NODE [direct|tunnel]")
    elif st["up"]:
        print(f"  VIP {topology.VIP}  client {topology.CLIENT}  director {topology.DIRECTOR_PUB} / {topology.DIRECTOR_PRIV}"
              f"  director2 {topology.DIRECTOR2_PUB} / {topology.DIRECTOR2_PRIV}")


def _cmd_status(args: argparse.Namespace) -> int:
    st = topology.status()
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        _print_status(st)
    return 0 if st["up"] else 1


def _cmd_exec(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("lb lab exec: no command given", file=sys.stderr)
        return 2
    sys.stdout.flush()
    rc = subprocess.call(nsutil.exec_argv(args.node, cmd))
    return 128 + (-rc) if rc < 0 else rc


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("lab", help="the network-namespace lab (client, director, director2, switch, rs1..rs3; "
                                          "with --scale-out N a router and directors 1..N)")
    sub = p.add_subparsers(dest="lab_cmd", metavar="{up,down,status,exec}")
    sub.required = True

    up = sub.add_parser("up", help="(re)build the lab")
    up.add_argument("--network", choices=topology.NETWORKS, default="direct",
                    help="direct: real servers route via 198.18.1.1; nat: via 198.18.1.254; tunnel: as direct, "
                         "with lb's decap program on the real servers (default: direct)")
    up.add_argument("--scale-out", type=int, default=0, metavar="N",
                    help="the scale-out lab instead: a router (BIRD, ECMP) and N directors (1..8) that announce "
                         "the VIPs over BGP; --network direct or tunnel")
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser("down", help="remove the lab")
    down.set_defaults(func=_cmd_down)

    status = sub.add_parser("status", help="show the lab state (exit 1 if not up)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    ex = sub.add_parser("exec", help="run a command inside a node: lab exec NODE -- CMD...")
    ex.add_argument("node", choices=nsutil.KNOWN_NODES)
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    ex.set_defaults(func=_cmd_exec)
    return p


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (python -m lb.lab.cli up ...) until the lead wires add_cli into lb.cli."""
    parser = argparse.ArgumentParser(prog="lb")
    add_cli(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["lab", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
