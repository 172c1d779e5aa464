#!/usr/bin/env bash
# rootfs.sh KIND ARCH — a cached Debian bookworm tree for packaging, printed as its path on stdout.
#   KIND=builder: what freezing the agent needs (python3, libpython3.11, binutils, venv, gcc); used for arm64
#                 under qemu-user (binfmt), where PyInstaller must run on the target architecture.
#   KIND=boot:    a minbase system with systemd as init, for the `systemd-nspawn -b` install test.
# Both are built once with debootstrap and kept as a tarball under build/cache/packaging (the slow part:
# ~7 min for arm64 under emulation, ~40 s for amd64); later calls only unpack the tarball (a few seconds),
# so every build and every test starts from the same pristine tree.
# Environment: RUNLAB_DEBIAN_MIRROR (default: the first deb.debian.org-style URI of this machine's apt
# sources), RUNLAB_PACKAGING_CACHE (default build/cache/packaging).
set -euo pipefail
umask 022
export LC_ALL=C
KIND=${1:?usage: rootfs.sh builder|boot ARCH}
ARCH=${2:-amd64}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${RUNLAB_PACKAGING_CACHE:-$HERE/cache/packaging}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
log() { echo "rootfs.sh: $*" >&2; }

case "$KIND" in
  # gcc, libc6-dev: the agent package's workload (build/workloads/hello.c, static) is compiled there too.
  builder) INCLUDE=python3,python3-venv,libpython3.11,binutils,ca-certificates,gcc,libc6-dev; VARIANT=minbase ;;
  # libsqlite3-0: a dependency of the agent .deb that minbase lacks (apt would pull it; the test uses dpkg -i).
  boot) INCLUDE=systemd,systemd-sysv,dbus,adduser,init-system-helpers,procps,libsqlite3-0; VARIANT=minbase ;;
  *) echo "rootfs.sh: unknown kind '$KIND' (expected builder or boot)" >&2; exit 2 ;;
esac
case "$ARCH" in amd64|arm64) ;; *) echo "rootfs.sh: unknown ARCH '$ARCH' (expected amd64 or arm64)" >&2; exit 2 ;; esac

mirror() {
  if [ -n "${RUNLAB_DEBIAN_MIRROR:-}" ]; then echo "$RUNLAB_DEBIAN_MIRROR"; return; fi
  # deb822 (URIs: ...) or one-line (deb URI suite ...) sources; the first URI that serves bookworm main.
  local u
  u=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        2>/dev/null | grep -v -e security -e nodesource -e google | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' \
        | awk '{print $1}' | head -1)
  echo "${u:-http://deb.debian.org/debian}"
}

foreign_ok() {
  [ "$ARCH" = "$(dpkg --print-architecture)" ] && return 0
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || {
    echo "rootfs.sh: cannot run arm64 binaries here: binfmt_misc qemu-aarch64 is not enabled" \
         "(apt-get install qemu-user-static binfmt-support; update-binfmts --enable qemu-aarch64)" >&2; exit 1; }
}

# The package list is part of the name: changing it builds a new tree instead of reusing a stale one.
TARBALL=$CACHE/bookworm-$KIND-$ARCH-$(echo "$VARIANT $INCLUDE" | sha256sum | cut -c1-8).tar
exec 9>"$CACHE/.lock-rootfs-$KIND-$ARCH"
flock 9  # two builds (or test runs from two worktrees) create it once
if [ ! -s "$TARBALL" ]; then
  foreign_ok
  TMP=$CACHE/.debootstrap-$KIND-$ARCH
  rm -rf "$TMP"
  M=$(mirror)
  log "creating $KIND rootfs for $ARCH from $M (first time only; cached as $TARBALL)"
  start=$(date +%s)
  if [ "$ARCH" = "$(dpkg --print-architecture)" ]; then
    debootstrap --variant=$VARIANT --include="$INCLUDE" bookworm "$TMP" "$M" >&2
  else
    debootstrap --arch="$ARCH" --foreign --variant=$VARIANT --include="$INCLUDE" bookworm "$TMP" "$M" >&2
    chroot "$TMP" /debootstrap/debootstrap --second-stage >&2
  fi
  chroot "$TMP" apt-get clean
  rm -rf "$TMP"/var/lib/apt/lists/* "$TMP"/var/cache/apt/*.bin
  tar -C "$TMP" --numeric-owner -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$TMP"
  log "$KIND rootfs for $ARCH ready in $(( $(date +%s) - start )) s"
fi
echo "$TARBALL"
