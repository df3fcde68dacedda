#!/usr/bin/env bash
# Installs what tests/vm/ needs to boot a real IPVS kernel in a VM, idempotently (quick when done):
#   - Debian packages: qemu-system-x86 (no recommends), busybox-static, udev, kmod, ipvsadm;
#   - virtme-ng (the project's "vm" extra) in the venv;
#   - Debian's current distribution kernel (the ABI linux-image-amd64 depends on): its modules
#     unpacked into /lib/modules/<ver> (+ depmod), its vmlinuz kept under $LB_VM_CACHE.
# The package is unpacked, not installed: installing it would build initramfs images for a
# minute and touch the host's boot setup.  See /work/shared/reference/ipvs-vm.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
CACHE=${LB_VM_CACHE:-/var/cache/lb-vm}

log() { printf 'setup-vm: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup-vm: must run as root (apt, /lib/modules)" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || { echo "setup-vm: no venv at $VENV (run scripts/setup.sh first)" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update() { [ $apt_updated = 1 ] || { apt-get update -qq; apt_updated=1; }; }

# 1. Debian packages (udev: without it vng's command output only reaches the serial console).
PKGS=(qemu-system-x86 busybox-static udev kmod ipvsadm)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt_update
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. virtme-ng in the venv (pyproject's optional extra "vm").
if [ ! -x "$VENV/bin/vng" ]; then
  log "installing virtme-ng into $VENV"
  "$VENV/bin/pip" install -q -e '.[test,vm]'
fi

# 3. The kernels: the ABI that a meta package currently depends on (old ABIs leave the archive,
#    so none is pinned here) -- linux-image-amd64, Debian's distribution kernel, the oracle of
#    tests/vm/; and linux-image-6.12-amd64 (bookworm's newer LTS), whose IPVS has the twos
#    scheduler (Linux 6.2+) that 6.1 lacks: tests/vm/test_ipvs_twos_vm.py boots it.
# a package apt does not know yet (status 100) prints nothing and succeeds: fetch_kernel then
# updates the lists and asks again, and says so when it still cannot resolve it
abi() { apt-cache depends "$1" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1 || true; }
fetch_kernel() {  # META LINK [MODULE]: unpack META's kernel, link $CACHE/LINK to its vmlinuz
  local meta=$1 link=$2 module=${3:-ip_vs} pkg ver tmp src d f
  pkg=$(abi "$meta")
  if [ -z "$pkg" ]; then
    apt_update
    pkg=$(abi "$meta")
  fi
  [ -n "$pkg" ] || { echo "setup-vm: cannot resolve $meta's kernel package" >&2; exit 1; }
  ver=${pkg#linux-image-}
  mkdir -p "$CACHE"
  if [ -s "$CACHE/vmlinuz-$ver" ] && [ -e "/lib/modules/$ver/kernel/net/netfilter/ipvs/$module.ko" ] \
     && [ -s "/lib/modules/$ver/modules.dep" ]; then
    :
  else
    log "fetching kernel $pkg"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1) || { apt_update; (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null); }
    dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/root"
    src=""
    for d in "$tmp/root/lib/modules/$ver" "$tmp/root/usr/lib/modules/$ver"; do
      [ -d "$d" ] && src=$d && break
    done
    [ -n "$src" ] || { echo "setup-vm: $pkg has no lib/modules/$ver" >&2; rm -rf "$tmp"; exit 1; }
    mkdir -p "/lib/modules/$ver"
    # keep what is there (linux-headers' build/source links), add the package's modules
    cp -a "$src"/. "/lib/modules/$ver/"
    depmod "$ver"
    # modules may be compressed (.ko.xz) in newer packages: record what the check above needs
    for m in ip_vs "$module"; do
      if [ ! -e "/lib/modules/$ver/kernel/net/netfilter/ipvs/$m.ko" ]; then
        f=$(ls "/lib/modules/$ver/kernel/net/netfilter/ipvs/"$m.ko* 2>/dev/null | head -n1 || true)
        [ -n "$f" ] || { echo "setup-vm: $pkg carries no $m module" >&2; rm -rf "$tmp"; exit 1; }
        ln -sfn "$(basename "$f")" "/lib/modules/$ver/kernel/net/netfilter/ipvs/$m.ko"
      fi
    done
    cp "$tmp/root/boot/vmlinuz-$ver" "$CACHE/vmlinuz-$ver.tmp"
    mv "$CACHE/vmlinuz-$ver.tmp" "$CACHE/vmlinuz-$ver"
    rm -rf "$tmp"
  fi
  ln -sfn "vmlinuz-$ver" "$CACHE/$link"
  log "ready (kernel $ver, $CACHE/$link)"
}
fetch_kernel linux-image-amd64 vmlinuz
fetch_kernel linux-image-6.12-amd64 vmlinuz-twos ip_vs_twos
