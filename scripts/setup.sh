#!/usr/bin/env bash
# Installs everything lb needs on a Debian 12 host, idempotently:
# Debian packages, kernel headers wired for bcc, bpffs, the venv with lb (and its cffi module)
# installed editable, and Debian's bcc package made visible inside the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

log() { printf 'setup: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup: must run as root (XDP, netns, apt)" >&2; exit 1; }

# 1. Debian packages. bcc comes from Debian (not on PyPI); nginx is the real servers' HTTP server;
#    haproxy (the HTTP benchmark's peer) and netsniff-ng (trafgen) are for bench/; nftables (nft)
#    marks firewall-mark services' packets in the IPVS data plane (host tests and the IPVS VM);
#    exabgp is the director's BGP speaker ([bgp], lb/bgp/).
PKGS=(python3-bpfcc libbpfcc linux-headers-amd64 iproute2 ethtool nginx-light curl wrk
      tcpdump bpftool procps psmisc kmod haproxy netsniff-ng nftables exabgp)
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
# A system nginx or haproxy (the package may start one) is left alone: lb's lab and bench/ run
# their own inside their namespaces, with their own config and pid files.

# 2. Kernel headers for bcc. Leave real headers alone; otherwise point at Debian's -amd64 set.
KREL=$(uname -r)
MODDIR=/lib/modules/$KREL
if [ ! -e "$MODDIR/build" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
  HDR=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  COMMON=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  [ -n "$HDR" ] && [ -n "$COMMON" ] || { echo "setup: no Debian kernel headers found under /usr/src" >&2; exit 1; }
  log "wiring $MODDIR/build -> $HDR, source -> $COMMON"
  mkdir -p "$MODDIR"
  ln -sfn "$HDR" "$MODDIR/build"
  ln -sfn "$COMMON" "$MODDIR/source"
fi

# 3. bpffs, where lb pins its maps.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  log "mounting bpffs on /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi

# 4. The venv: lb editable (builds cext/ through cffi), plus Debian's bcc and nothing else of Debian's.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$VENV/debian-bcc"
ln -sfn /usr/lib/python3/dist-packages/bcc "$VENV/debian-bcc/bcc"
echo "$(cd "$VENV/debian-bcc" && pwd)" > "$SITE/debian-bcc.pth"
stamp="$VENV/.lb-installed"
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
