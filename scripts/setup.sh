#!/usr/bin/env bash
# A developer's (and CI's) machine, idempotently: what a director needs (scripts/install-director.sh
# --deps), the lab's, tests' and benchmarks' tools, and .venv with lb (and its cffi module)
# installed editable, Debian's bcc made visible inside it.  A director is installed by
# `make install` (scripts/install-director.sh) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

log() { printf 'setup: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup: must run as root (XDP, netns, apt)" >&2; exit 1; }

# 1. What a director needs (bcc, kernel headers for it, bpffs): the director install's first
#    part. This is a test machine: Debian's headers are wired for bcc even when they are not the
#    running kernel's series (LB_WIRE_HEADERS=1, with a warning naming both).
LB_WIRE_HEADERS=1 bash scripts/install-director.sh --deps

# 2. The lab's, the tests' and the benchmarks' tools, which a director does not need: nginx
#    (the lab's real servers), curl, wrk, tcpdump, bpftool, haproxy (bench/http's peer),
#    netsniff-ng (trafgen), nftables (the IPVS data plane's firewall marks, tested on the host
#    and in the IPVS VM), exabgp (the BGP speaker `lb run` starts for [bgp]: the scale-out lab and
#    its tests; not in the director install, whose Debian package would enable its own
#    exabgp.service). Installed only; a system nginx or haproxy the package may start is left
#    alone: the lab and bench/ run their own inside their namespaces, with their own config.
PKGS=(ethtool nginx-light curl wrk tcpdump bpftool procps psmisc kmod haproxy netsniff-ng nftables exabgp)
# Lab and tests only (tests, demo, bench; never part of a director's runtime install): bird2 is the
# scale-out lab's router (`lb lab up --scale-out N`: BGP from every director, ECMP into the kernel);
# chromium and chromium-driver are the browser selenium drives in the web console's browser tests
# (tests/test_web_browser.py); openssl makes the HTTPS health check tests' certificate
# (tests/test_health.py); arptables is for the tests of `lb realserver --arp arptables` (a real
# server's tool, not the director's).
LAB_PKGS=(bird2 chromium chromium-driver openssl arptables)
PKGS+=("${LAB_PKGS[@]}")
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 3. The venv: lb editable (builds cext/ through cffi), plus Debian's bcc and nothing else of Debian's.
PYTHON=$PY bash scripts/install-director.sh --venv "$VENV"
stamp="$VENV/.lb-installed"
# the distribution was called "lb" before it became lvs-director: the old one goes (its
# uninstall takes the shared `lb` script with it, so lvs-director is installed again)
if "$VENV/bin/pip" show -q lb >/dev/null 2>&1; then
  log "removing the old distribution name lb from $VENV"
  "$VENV/bin/pip" uninstall -q -y lb
  rm -f "$stamp"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ -n "$(find cext -newer "$stamp" -name '*.[ch]' -o -newer "$stamp" -name '*.py' 2>/dev/null)" ] \
   || [ -n "$(find bpf/lb_structs.h bpf/lb_consts.h -newer "$stamp" 2>/dev/null)" ]; then
  log "installing lb into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e '.[test,bench]'
  touch "$stamp"
fi
"$VENV/bin/python" -c 'import bcc, lb' || { echo "setup: bcc or lb not importable in $VENV" >&2; exit 1; }
log "ready"
