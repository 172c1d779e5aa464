#!/usr/bin/env bash
# freeze.sh APP [DISTDIR] — freeze runlab-APP (agent | collector) with PyInstaller into DISTDIR/runlab-APP/
# (onedir; default DISTDIR dist/freeze-ARCH). Runs on the architecture it builds for: natively for amd64,
# inside the arm64 builder chroot (build/deb.sh sets that up) for arm64.
# The build venv uses Debian's /usr/bin/python3 (3.11, bookworm glibc: the bundle then runs on any
# bookworm, Raspberry Pi OS included) and lives under build/cache/packaging, rebuilt only when
# requirements.lock or build/requirements-freeze.txt change.
set -euo pipefail
umask 022
export LC_ALL=C PYTHONDONTWRITEBYTECODE=1
APP=${1:?usage: freeze.sh agent|collector [DISTDIR]}
case "$APP" in agent|collector) ;; *) echo "freeze.sh: APP must be agent or collector, got '$APP'" >&2; exit 2 ;; esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ARCH=$(dpkg --print-architecture)
CACHE=${RUNLAB_PACKAGING_CACHE:-$HERE/cache/packaging}
mkdir -p "$CACHE"
VENV=$CACHE/freeze-venv-$ARCH
DIST=${2:-$REPO/dist/freeze-$ARCH}
PY=/usr/bin/python3
[ -x "$PY" ] || { echo "freeze.sh: $PY is missing (apt-get install python3 python3-venv libpython3.11 binutils)" >&2; exit 1; }

exec 8>"$CACHE/.lock-freeze-$ARCH"
flock 8  # the build venv and PyInstaller's work directory are shared by concurrent builds
# Tools run as "python -m": a venv made through another path to this cache (a git worktree's symlinked
# build/cache) has console scripts whose #! names that path, which may be gone.
key=$(cat "$REPO/requirements.lock" "$HERE/requirements-freeze.txt" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$key" ]; then
  echo "freeze.sh: creating the build venv $VENV" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$HERE/requirements-freeze.txt"
  echo "$key" > "$VENV/.stamp"
fi

WORK=$CACHE/work-$ARCH-$APP
mkdir -p "$DIST"
cd "$REPO"
RUNLAB_APP=$APP RUNLAB_FREEZE_WORK=$WORK "$VENV/bin/python" -X no_debug_ranges -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath "$DIST" --workpath "$WORK" "$HERE/runlab.spec" >&2
echo "$DIST/runlab-$APP"
