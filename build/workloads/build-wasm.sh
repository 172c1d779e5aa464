#!/usr/bin/env bash
# build-wasm.sh [OUTDIR] — the WASI HTTP workload (hello-wasi.c) for real WebAssembly runtimes.
#   OUTDIR (default build/cache/wasm) gets
#     hello-wasi.wasm          clang --target=wasm32-wasi: serves on a listener the runtime pre-opens
#                              (wasmtime run -S tcplisten=ADDR, wazero run -listen ADDR)
#     hello-wasmedge.wasm      the same source with -DWASMEDGE: opens its own listener through WasmEdge's
#                              socket extension (wasmedge hello-wasmedge.wasm --port N)
#     hello-wasi.cwasm         `wasmtime compile` of hello-wasi.wasm (AOT; run with --allow-precompiled);
#                              only valid for the wasmtime that compiled it (its version is in the stamp)
#     hello-wasmedge.aot.wasm  `wasmedge compile` of hello-wasmedge.wasm (WasmEdge's AOT "universal" module)
#     hello-wasm-rootfs.tar    rootfs for crun's WasmEdge handler: just /hello-wasmedge.wasm
#   and with PODMAN_STORE set (as in build.sh) podman gets localhost/runlab-hello-wasm:1 (that rootfs,
#   CMD ["/hello-wasmedge.wasm","--port","8080"]); run it with crun and the annotation
#   module.wasm.image/variant=compat.
# The engines come from fetch-runtimes.sh (RUNTIMES, default build/cache/runtimes); without them only the
# .wasm files are built. Installs clang lld wasi-libc libclang-rt-dev-wasm32 when missing and run as root.
# Idempotent: each output is rebuilt only when its inputs changed (OUTDIR/.stamps).
set -euo pipefail
umask 022
export LC_ALL=C
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/../cache/wasm}
RUNTIMES=${RUNTIMES:-$HERE/../cache/runtimes}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
IMAGE=localhost/runlab-hello-wasm:1
CFLAGS=(--target=wasm32-wasi --sysroot=/usr -O2 -s -Wall)
log() { echo "build-wasm.sh: $*" >&2; }
sha() { sha256sum "$@" | cut -d' ' -f1; }
stamp_ok() { [ -e "$OUT/.stamps/$1" ] && [ "$(cat "$OUT/.stamps/$1")" = "$2" ]; }
stamp() { mkdir -p "$OUT/.stamps"; printf '%s\n' "$2" > "$OUT/.stamps/$1"; }

exec 9>"$OUT/.lock"
flock 9

pkgs=(clang lld wasi-libc libclang-rt-dev-wasm32)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { log "missing packages, run as root: apt-get install ${missing[*]}"; exit 1; }
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# ---- the two modules --------------------------------------------------------------------------------
src_key="$(sha "$HERE/hello-wasi.c") ${CFLAGS[*]} $(clang --version | head -1)"
for m in hello-wasi hello-wasmedge; do
  if [ -s "$OUT/$m.wasm" ] && stamp_ok "$m" "$src_key"; then
    log "$m.wasm: up to date"
  else
    def=(); [ "$m" = hello-wasmedge ] && def=(-DWASMEDGE)
    clang "${CFLAGS[@]}" "${def[@]}" -o "$OUT/$m.wasm.tmp" "$HERE/hello-wasi.c"
    mv -f "$OUT/$m.wasm.tmp" "$OUT/$m.wasm"
    stamp "$m" "$src_key"
    log "$m.wasm: built ($(stat -c %s "$OUT/$m.wasm") bytes)"
  fi
done

# ---- AOT forms (need the engines) -----------------------------------------------------------------------
if [ -x "$RUNTIMES/bin/wasmtime" ]; then
  key="$(sha "$OUT/hello-wasi.wasm") $("$RUNTIMES/bin/wasmtime" --version)"
  if [ -s "$OUT/hello-wasi.cwasm" ] && stamp_ok cwasm "$key"; then
    log "hello-wasi.cwasm: up to date"
  else
    "$RUNTIMES/bin/wasmtime" compile -o "$OUT/hello-wasi.cwasm.tmp" "$OUT/hello-wasi.wasm"
    mv -f "$OUT/hello-wasi.cwasm.tmp" "$OUT/hello-wasi.cwasm"
    stamp cwasm "$key"
    log "hello-wasi.cwasm: compiled"
  fi
else
  log "no $RUNTIMES/bin/wasmtime (fetch-runtimes.sh): hello-wasi.cwasm not built"
fi
if [ -x "$RUNTIMES/bin/wasmedge" ]; then
  key="$(sha "$OUT/hello-wasmedge.wasm") $("$RUNTIMES/bin/wasmedge" --version | head -1 | awk '{print $NF}')"
  if [ -s "$OUT/hello-wasmedge.aot.wasm" ] && stamp_ok wasmedge-aot "$key"; then
    log "hello-wasmedge.aot.wasm: up to date"
  else
    "$RUNTIMES/bin/wasmedge" compile "$OUT/hello-wasmedge.wasm" "$OUT/hello-wasmedge.aot.wasm.tmp" >/dev/null 2>&1
    mv -f "$OUT/hello-wasmedge.aot.wasm.tmp" "$OUT/hello-wasmedge.aot.wasm"
    stamp wasmedge-aot "$key"
    log "hello-wasmedge.aot.wasm: compiled"
  fi
fi

# ---- rootfs + podman image for crun's WasmEdge handler ---------------------------------------------------
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
install -m 0755 "$OUT/hello-wasmedge.wasm" "$stage/hello-wasmedge.wasm"
touch -d "@$EPOCH" "$stage/hello-wasmedge.wasm"
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" --format=gnu \
    -cf "$OUT/hello-wasm-rootfs.tar.tmp" hello-wasmedge.wasm
rm -rf "$stage"; trap - EXIT
if cmp -s "$OUT/hello-wasm-rootfs.tar.tmp" "$OUT/hello-wasm-rootfs.tar" 2>/dev/null; then
  rm -f "$OUT/hello-wasm-rootfs.tar.tmp"
else
  mv -f "$OUT/hello-wasm-rootfs.tar.tmp" "$OUT/hello-wasm-rootfs.tar"
fi
if [ -n "${PODMAN_STORE:-}" ] && command -v podman >/dev/null; then
  PODMAN_STORE=$(cd "$PODMAN_STORE" && pwd -P)  # podman keeps the resolved path in its database
  PODMAN_RUNROOT=${PODMAN_RUNROOT:-/tmp/runlab-podman-runroot}
  mkdir -p "$PODMAN_STORE/root" "$PODMAN_STORE/tmp" "$PODMAN_RUNROOT"
  FLAGS=(--root "$PODMAN_STORE/root" --runroot "$PODMAN_RUNROOT" --tmpdir "$PODMAN_STORE/tmp"
         --storage-driver=vfs --cgroup-manager=cgroupfs --events-backend=none --runtime runc)
  sum=$(sha "$OUT/hello-wasm-rootfs.tar")
  have=$(podman "${FLAGS[@]}" image inspect --format '{{index .Labels "runlab.rootfs.sha256"}}' "$IMAGE" \
           2>/dev/null || true)
  if [ "$have" = "$sum" ]; then
    log "podman image $IMAGE: up to date"
  else
    podman "${FLAGS[@]}" import --quiet --change 'CMD ["/hello-wasmedge.wasm","--port","8080"]' \
      --change "LABEL runlab.rootfs.sha256=$sum" \
      --change "LABEL module.wasm.image/variant=compat" "$OUT/hello-wasm-rootfs.tar" "$IMAGE" >/dev/null
    log "podman image $IMAGE: imported"
  fi
fi
log "artifacts in $OUT"
