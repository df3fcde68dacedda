#!/usr/bin/env bash
# What a director needs, and only that, installed idempotently on a Debian (or Ubuntu) host:
#   1. bcc (python3-bpfcc, libbpfcc) and python3-venv from the distribution;
#   2. the kernel's headers, which bcc needs for lb's first compile of its XDP programs (later
#      starts load them from /var/cache/lb): this kernel's own package when there is one; else
#      Debian's headers wired to /lib/modules/$(uname -r)/build only when they are this
#      kernel's series (or LB_WIRE_HEADERS=1), otherwise a warning naming both;
#   3. bpffs on /sys/fs/bpf (systemd mounts it at boot; mounted here when it is not);
#   4. lb in its own venv (PREFIX, default /opt/lb) with Debian's bcc exposed to it, the command
#      linked into BINDIR (/usr/local/sbin) and every systemd unit lb ships into UNITDIR
#      (/usr/local/lib/systemd/system: the local admin's package directory, so an edit's copy in
#      /etc/systemd/system, `systemctl edit --full`, survives the next install), followed by
#      `systemctl daemon-reload` when systemd runs.
# It never stops, disables, restarts, masks or kills anything: a director that also runs nginx
# or HAProxy keeps them running.  Lab, test and benchmark tools are scripts/setup.sh's.
#
#   scripts/install-director.sh            all of it (make install)
#   scripts/install-director.sh --deps     1-3 only (scripts/setup.sh, for a developer's .venv)
#   scripts/install-director.sh --venv DIR a venv with Debian's bcc visible (4's first step)
#   scripts/install-director.sh --lb DIR   LB_SOURCE into the venv DIR (4's second step)
# LB_SOURCE: what pip installs as lb (default: this checkout; a wheel or sdist path works too).
set -euo pipefail
# what it makes is for everyone to read and run whatever root's umask (027, 077): lb-web@'s user
# (lb-web) execs /opt/lb's lb, and a 0750 venv was a 203/EXEC restart loop
umask 022
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/opt/lb}
BINDIR=${BINDIR:-/usr/local/sbin}
UNITDIR=${UNITDIR:-/usr/local/lib/systemd/system}
CONFDIR=${CONFDIR:-/etc/lb}
LB_SOURCE=${LB_SOURCE:-.}
PY=${PYTHON:-python3}
DEPS_ONLY=0
[ "${1:-}" = "--deps" ] && DEPS_ONLY=1

log() { printf 'install: %s\n' "$*"; }
warn() { printf 'install: WARNING: %s\n' "$*" >&2; }

# the units name `lb` and /etc/lb: written with this install's BINDIR and CONFDIR (systemd looks a
# bare command up in its own PATH only, /usr/local/sbin:...:/bin: a BINDIR elsewhere failed)
install_units() {
  local src=$1 unit
  mkdir -p "$UNITDIR"
  for unit in "$src"/*.service; do
    [ -e "$unit" ] || continue
    sed -e "s|^\(Exec[A-Za-z]*=[-@+!:]*\)lb |\1$BINDIR/lb |" -e "s|/etc/lb\b|$CONFDIR|g" "$unit" \
      > "$UNITDIR/$(basename "$unit")"
    chmod 0644 "$UNITDIR/$(basename "$unit")"
    log "unit $UNITDIR/$(basename "$unit")"
    # an install before UNITDIR's move wrote /etc/systemd/system's copy: it overrides this one
    [ "$UNITDIR" = /etc/systemd/system ] || [ ! -e "/etc/systemd/system/$(basename "$unit")" ] \
      || warn "/etc/systemd/system/$(basename "$unit") (an earlier install's, or a \`systemctl edit --full\`) overrides $UNITDIR's: remove it to run the new one"
  done
}
# --units DIR: only the units of DIR into UNITDIR (tests; no root needed)
if [ "${1:-}" = "--units" ]; then
  install_units "${2:?--units DIR}"
  exit 0
fi

# --venv DIR: a venv at DIR (made if missing) that sees Debian's bcc package and nothing else of
# Debian's (bcc is not on PyPI); lb's own install and a developer's .venv (setup.sh) both use it
if [ "${1:-}" = "--venv" ]; then
  VENV=${2:?--venv DIR}
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    "$PY" -m venv "$VENV"
  fi
  SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$VENV/debian-bcc"
  ln -sfn /usr/lib/python3/dist-packages/bcc "$VENV/debian-bcc/bcc"
  echo "$(cd "$VENV/debian-bcc" && pwd)" > "$SITE/debian-bcc.pth"
  exit 0
fi

# lb from LB_SOURCE into the venv $1.  pip leaves a local wheel whose version is the installed one
# alone ("already installed with the same version", said only without -q), and lb's version is
# not raised at every change: an upgrade from a wheel installed nothing.  A wheel is installed
# again by force -- lb alone (--no-deps): the first call brought what it depends on.  A checkout
# or an sdist pip installs again by itself.
install_lb() {
  "$1/bin/pip" install -q --disable-pip-version-check "$LB_SOURCE"
  case "$LB_SOURCE" in
    *.whl) "$1/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$LB_SOURCE" ;;
  esac
}
# --lb VENV: only that (tests; no root needed)
if [ "${1:-}" = "--lb" ]; then
  install_lb "${2:?--lb VENV}"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "install: must run as root (packages, bpffs, /opt, units)" >&2; exit 1; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
apt_updated=0
apt_install() {
  local missing=() p
  for p in "$@"; do installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  export NEEDRESTART_SUSPEND=1             # Ubuntu's needrestart restarts no service after it
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  # --no-install-recommends and never a service's restart: packages only
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# 1. bcc (not on PyPI) and what lb's venv is made with; gcc and Python's headers build lb's cffi
#    module (cext/: the connection tables' batch calls) when pip installs lb
apt_install python3-bpfcc libbpfcc python3-venv iproute2 gcc python3-dev

# 2. kernel headers, for bcc's first compile
KREL=$(uname -r)
series() { echo "$1" | grep -oE '^[0-9]+\.[0-9]+'; }
if [ -e "/lib/modules/$KREL/build" ] || [ -e /sys/kernel/kheaders.tar.xz ]; then
  :
elif apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
  apt_install "linux-headers-$KREL"                 # the package wires /lib/modules/$KREL/build
else
  ARCH=$(dpkg --print-architecture)
  HDR=$(ls -d /usr/src/linux-headers-*-"$ARCH" 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$HDR" ]; then
    # a package apt does not know (status 100) is no candidate: the warning below, not set -e's exit
    CAND=$(apt-cache depends "linux-headers-$ARCH" 2>/dev/null | sed -n 's/.*Depends: linux-headers-\([0-9][^ ]*\)/\1/p' | head -n1 || true)
    if [ -n "$CAND" ] && { [ "$(series "$CAND")" = "$(series "$KREL")" ] || [ "${LB_WIRE_HEADERS:-0}" = 1 ]; }; then
      apt_install "linux-headers-$ARCH"
      HDR=$(ls -d /usr/src/linux-headers-*-"$ARCH" 2>/dev/null | sort -V | tail -n1 || true)
    fi
  fi
  COMMON=${HDR%-"$ARCH"}-common
  HVER=${HDR#/usr/src/linux-headers-}
  if [ -n "$HDR" ] && [ -d "$COMMON" ] && { [ "$(series "$HVER")" = "$(series "$KREL")" ] || [ "${LB_WIRE_HEADERS:-0}" = 1 ]; }; then
    [ "$(series "$HVER")" = "$(series "$KREL")" ] \
      || warn "the running kernel is $KREL but the headers are $HVER (another series): wiring them anyway (LB_WIRE_HEADERS=1); lb's programs use only UAPI headers"
    log "wiring /lib/modules/$KREL/build -> $HDR, source -> $COMMON"
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$HDR" "/lib/modules/$KREL/build"
    ln -sfn "$COMMON" "/lib/modules/$KREL/source"
  else
    other=""
    [ -n "$HVER" ] && other=" (the Debian headers here are $HVER, series $(series "$HVER"), not $(series "$KREL"))"
    warn "no headers for the running kernel $KREL$other: not wiring /lib/modules/$KREL/build. lb needs headers only to compile its programs once (then /var/cache/lb): install linux-headers-$KREL, load the kheaders module, or set BCC_KERNEL_SOURCE (LB_WIRE_HEADERS=1 wires Debian's headers of another series anyway)"
  fi
fi

# 3. bpffs, where lb pins its maps
if ! awk '$2 == "/sys/fs/bpf" && $3 == "bpf" { found = 1 } END { exit !found }' /proc/self/mounts; then
  log "mounting bpffs on /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi

[ "$DEPS_ONLY" = 1 ] && { log "director dependencies ready"; exit 0; }

# 4. lb: a venv of its own, Debian's bcc (and nothing else of Debian's) visible in it
bash scripts/install-director.sh --venv "$PREFIX"
log "installing lb ($LB_SOURCE) into $PREFIX"
install_lb "$PREFIX"
"$PREFIX/bin/python" -c 'import lb, lb.dataplane.maps as m; assert m.have_batch(), "lb._bpfbatch not built"' \
  || { echo "install: lb is not importable in $PREFIX" >&2; exit 1; }
mkdir -p "$BINDIR"
ln -sfn "$PREFIX/bin/lb" "$BINDIR/lb"

UNITS=$("$PREFIX/bin/python" -c 'import lb, pathlib; print(pathlib.Path(lb.__file__).parent / "systemd")')
install_units "$UNITS"
# made when missing, never reset: a mode the operator tightened (0750) stays
[ -d "$CONFDIR" ] || install -d -m 0755 "$CONFDIR"
install -d -m 0700 /var/cache/lb
# the web console's unit (lb-web@.service) runs as this system user, never as root
if ! getent passwd lb-web >/dev/null; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin lb-web
  log "system user lb-web (the web console's)"
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload                  # reads the new units; starts or stops nothing
fi
log "lb $("$BINDIR/lb" --version | awk '{print $2}') installed: put a config in $CONFDIR/NAME.toml (lb check --config ...), then systemctl enable --now lb@NAME"
