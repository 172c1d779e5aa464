#!/usr/bin/env bash
# A Debian 12 root with systemd (and python3, dnsmasq-base) for booting with systemd-nspawn, so that the
# systemd runtime can be tested for real on machines where systemd is not PID 1. Idempotent: does nothing
# when DIR exists. ~100 s (debootstrap --variant=minbase from the Debian mirror), ~290 MB.
#   tests/standins/systemd-root.sh build/cache/systemd-nspawn/bookworm
set -euo pipefail
dir=${1:?usage: systemd-root.sh DIR}
[ -x "$dir/usr/lib/systemd/systemd" ] && exit 0
if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
  echo "installing debootstrap and systemd-container" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap systemd-container >/dev/null
fi
mkdir -p "$(dirname "$dir")"
tmp="$dir.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,python3,libsqlite3-0,dnsmasq-base \
  bookworm "$tmp" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$tmp.log" 2>&1 || {
  tail -20 "$tmp.log" >&2; rm -f "$tmp.log"; exit 1; }
rm -f "$tmp.log"
mv "$tmp" "$dir"
