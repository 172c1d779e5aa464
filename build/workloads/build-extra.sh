#!/usr/bin/env bash
# build-extra.sh [OUTDIR] — the inter-service phase's ping-pong peer, beside (never inside) build.sh's outputs.
#   OUTDIR (default build/cache/extra) gets: pingpong (static); with PODMAN_STORE set (same meaning as in
#   build.sh), podman gets localhost/runlab-pingpong:1 (just /pingpong). Idempotent: rebuilt only when
#   pingpong.c or the compiler changed; one build per OUTDIR at a time.
set -euo pipefail
umask 022
export LC_ALL=C
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/../cache/extra}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
IMAGE=localhost/runlab-pingpong:1
EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
log() { echo "build-extra.sh: $*" >&2; }
exec 9>"$OUT/.lock"
flock 9

key="$(sha256sum "$HERE/pingpong.c" | cut -d' ' -f1) $(gcc --version | head -1)"
if [ -x "$OUT/pingpong" ] && [ "$(cat "$OUT/pingpong.stamp" 2>/dev/null)" = "$key" ]; then
  log "pingpong: up to date"
else
  gcc -static -O2 -s -Wall -o "$OUT/pingpong.tmp" "$HERE/pingpong.c" 2>&1 | grep -v getaddrinfo >&2 || true
  mv -f "$OUT/pingpong.tmp" "$OUT/pingpong"
  printf '%s\n' "$key" > "$OUT/pingpong.stamp"
  log "pingpong: built"
fi

if [ -n "${PODMAN_STORE:-}" ]; then
  PODMAN_STORE=$(cd "$PODMAN_STORE" && pwd -P)  # podman keeps the resolved path in its database
  PODMAN_RUNROOT=${PODMAN_RUNROOT:-/tmp/runlab-podman-runroot}
  FLAGS=(--root "$PODMAN_STORE/root" --runroot "$PODMAN_RUNROOT" --tmpdir "$PODMAN_STORE/tmp"
         --storage-driver=vfs --cgroup-manager=cgroupfs --events-backend=none --runtime runc)
  sum=$(sha256sum "$OUT/pingpong" | cut -d' ' -f1)
  have=$(podman "${FLAGS[@]}" image inspect --format '{{index .Labels "runlab.pingpong.sha256"}}' "$IMAGE" \
           2>/dev/null || true)
  if [ "$have" = "$sum" ]; then
    log "podman image $IMAGE: up to date"
  else
    stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
    install -m 0755 "$OUT/pingpong" "$stage/pingpong"
    touch -d "@$EPOCH" "$stage/pingpong"
    tar -C "$stage" --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" -cf "$stage/rootfs.tar" pingpong
    podman "${FLAGS[@]}" import --quiet --change 'CMD ["/pingpong"]' \
      --change "LABEL runlab.pingpong.sha256=$sum" "$stage/rootfs.tar" "$IMAGE" >/dev/null
    log "podman image $IMAGE: imported"
  fi
fi
