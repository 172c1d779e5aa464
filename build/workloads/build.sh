#!/usr/bin/env bash
# build.sh [OUTDIR] — builds runlab's tiny test workloads (see README.md here).
#   OUTDIR (default build/cache/workloads) gets: hello, hello-rootfs.tar, vmlinuz,
#   initramfs.cpio, microvm.args, manifest.json; podman gets localhost/runlab-hello:1.
# Idempotent: every artifact is rebuilt only when its inputs changed (content hashes
# in OUTDIR/.stamps), and outputs are only replaced when their bytes change.
# Environment:
#   PODMAN_STORE       directory for a private podman store (root/, tmp/ inside; its runroot is
#                      PODMAN_RUNROOT, default /tmp/runlab-podman-runroot: podman refuses runroots
#                      longer than 50 characters);
#                      unset: podman's default store.
#   RUNLAB_WORKLOADS   which variants to build, default "process podman microvm".
#   RUNLAB_KERNEL_PKG  pin the kernel package (default: what linux-image-cloud-amd64 depends on).
#   RUNLAB_TSC_KHZ     override the host TSC kHz written into the microvm command line.
#   SOURCE_DATE_EPOCH  timestamp stored in the tar/cpio (default 1700000000).
set -euo pipefail
umask 022
export LC_ALL=C
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/../cache/workloads}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
IMAGE=localhost/runlab-hello:1
IMAGE_CMD='["/hello","--port","8080"]'
WORKLOADS=${RUNLAB_WORKLOADS:-process podman microvm}
EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
CFLAGS=(-static -O2 -s -Wall)
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3

log() { echo "build.sh: $*" >&2; }
want() { [[ " $WORKLOADS " == *" $1 "* ]]; }
sha() { sha256sum "$@" | cut -d' ' -f1; }
stamp_ok() { [ -e "$OUT/.stamps/$1" ] && [ "$(cat "$OUT/.stamps/$1")" = "$2" ]; }
stamp() { mkdir -p "$OUT/.stamps"; printf '%s\n' "$2" > "$OUT/.stamps/$1"; }
# install_if_changed TMP DEST: replace DEST by TMP only when the bytes differ.
install_if_changed() {
  if [ -e "$2" ] && cmp -s "$1" "$2"; then rm -f "$1"; return 1; fi
  mv -f "$1" "$2"; return 0
}

exec 9>"$OUT/.lock"
flock 9   # one build per OUTDIR at a time

# ---- Debian packages ------------------------------------------------------------
pkgs=(gcc libc6-dev)
want podman && pkgs+=(podman runc)
want microvm && pkgs+=(busybox-static cpio kmod qemu-system-x86 xz-utils zstd)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages, run as root: apt-get install -y --no-install-recommends ${missing[*]}"; exit 1
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# ---- hello (static binary) ------------------------------------------------------
key="$(sha "$HERE/hello.c") ${CFLAGS[*]} $(gcc --version | head -1)"
if [ -x "$OUT/hello" ] && stamp_ok hello "$key"; then
  log "hello: up to date"
else
  gcc "${CFLAGS[@]}" -o "$OUT/hello.tmp" "$HERE/hello.c"
  install_if_changed "$OUT/hello.tmp" "$OUT/hello" && log "hello: built" || log "hello: unchanged"
  stamp hello "$key"
fi
chmod 0755 "$OUT/hello"

# ---- rootfs tarball + podman image ------------------------------------------------
PODMAN_FLAGS=() MICROVM_ARGS=()
if want podman; then
  stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
  install -m 0755 "$OUT/hello" "$stage/hello"
  touch -d "@$EPOCH" "$stage/hello"
  tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" \
      --format=gnu -cf "$OUT/hello-rootfs.tar.tmp" hello
  rm -rf "$stage"; trap - EXIT
  install_if_changed "$OUT/hello-rootfs.tar.tmp" "$OUT/hello-rootfs.tar" &&
    log "hello-rootfs.tar: built" || log "hello-rootfs.tar: up to date"

  if [ -n "${PODMAN_STORE:-}" ]; then
    mkdir -p "$PODMAN_STORE"
    PODMAN_STORE=$(cd "$PODMAN_STORE" && pwd -P)  # resolved: podman records the path it was created under
    PODMAN_RUNROOT=${PODMAN_RUNROOT:-/tmp/runlab-podman-runroot}
    mkdir -p "$PODMAN_STORE/root" "$PODMAN_RUNROOT" "$PODMAN_STORE/tmp"
    PODMAN_FLAGS=(--root "$PODMAN_STORE/root" --runroot "$PODMAN_RUNROOT"
                  --tmpdir "$PODMAN_STORE/tmp" --storage-driver=vfs)
  fi
  PODMAN_FLAGS+=(--cgroup-manager=cgroupfs --events-backend=none --runtime runc)
  tar_sha=$(sha "$OUT/hello-rootfs.tar")
  have=$(podman "${PODMAN_FLAGS[@]}" image inspect --format '{{index .Labels "runlab.rootfs.sha256"}}' \
           "$IMAGE" 2>/dev/null || true)
  if [ "$have" = "$tar_sha" ]; then
    log "podman image $IMAGE: up to date"
  else
    old=$(podman "${PODMAN_FLAGS[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    podman "${PODMAN_FLAGS[@]}" import --quiet --change "CMD $IMAGE_CMD" \
      --change "LABEL runlab.rootfs.sha256=$tar_sha" "$OUT/hello-rootfs.tar" "$IMAGE" >/dev/null
    # drop the image the tag used to name (ignored if a container still uses it)
    [ -n "$old" ] && podman "${PODMAN_FLAGS[@]}" rmi "$old" >/dev/null 2>&1 || true
    log "podman image $IMAGE: imported"
  fi
  IMAGE_ID=$(podman "${PODMAN_FLAGS[@]}" image inspect --format '{{.Id}}' "$IMAGE")
  IMAGE_SIZE=$(podman "${PODMAN_FLAGS[@]}" image inspect --format '{{.Size}}' "$IMAGE")
  printf -v flags_q '%q ' "${PODMAN_FLAGS[@]}"
  log "podman global flags (repeat as engine_args): ${flags_q% }"
fi

# ---- microvm: kernel + initramfs ----------------------------------------------------
if want microvm; then
  KPKG=${RUNLAB_KERNEL_PKG:-}
  if [ -z "$KPKG" ]; then
    dep() { apt-cache depends --important linux-image-cloud-amd64 2>/dev/null |
              awk '/Depends: linux-image-/{print $2; exit}'; }
    KPKG=$(dep)
    if [ -z "$KPKG" ] && [ "$(id -u)" -eq 0 ]; then apt-get update -qq; KPKG=$(dep); fi
    [ -n "$KPKG" ] || { log "cannot resolve linux-image-cloud-amd64 (apt-get update?)"; exit 1; }
  fi
  KDIR="$OUT/kernel"; mkdir -p "$KDIR"
  if stamp_ok kernel-pkg "$KPKG" && [ -d "$KDIR/root" ] && [ -n "$(ls "$KDIR"/"${KPKG}"_*.deb 2>/dev/null)" ]; then
    log "kernel $KPKG: up to date"
  else
    rm -rf "$KDIR/root" "$KDIR"/*.deb
    (cd "$KDIR" && apt-get download -q -o APT::Sandbox::User=root "$KPKG" >/dev/null)
    dpkg -x "$KDIR"/"${KPKG}"_*.deb "$KDIR/root"
    stamp kernel-pkg "$KPKG"
    log "kernel $KPKG: downloaded"
  fi
  KDEB=$(ls "$KDIR"/"${KPKG}"_*.deb | head -1)
  KPKG_VERSION=$(dpkg-deb -f "$KDEB" Version)
  MODBASE=$(dirname "$(find "$KDIR/root" -maxdepth 4 -type d -path '*/modules/*/kernel' | head -1)")
  KVER=$(basename "$MODBASE")
  cp_if() { cp "$1" "$2.tmp"; install_if_changed "$2.tmp" "$2" || true; }
  cp_if "$KDIR/root/boot/vmlinuz-$KVER" "$OUT/vmlinuz"

  # modules (with their dependencies, dependencies first) that the guest needs
  MODS=()
  declare -A seen=()
  resolve() {
    local name=${1//-/_} f d
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    if grep -qE "/${name}\.ko|/${name//_/-}\.ko" "$MODBASE/modules.builtin" 2>/dev/null; then return 0; fi
    f=$(find "$MODBASE/kernel" \( -name "$name.ko*" -o -name "${name//_/-}.ko*" \) | head -1)
    [ -n "$f" ] || { log "module $name not found in $KVER"; exit 1; }
    for d in $(modinfo -F depends "$f" | tr ',' ' '); do resolve "$d"; done
    MODS+=("$f")
  }
  resolve virtio_mmio; resolve virtio_net

  stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{bin,dev,proc,sys,lib/modules}
  install -m 0755 /bin/busybox "$stage/bin/busybox"
  for a in sh mount insmod ip usleep; do ln -s busybox "$stage/bin/$a"; done
  install -m 0755 "$OUT/hello" "$stage/hello"
  insmods=""
  for f in "${MODS[@]}"; do
    b=$(basename "$f"); n=${b%%.ko*}
    case "$f" in
      *.ko.xz)  xz -dc "$f"   > "$stage/lib/modules/$n.ko" ;;
      *.ko.zst) zstd -qdc "$f" > "$stage/lib/modules/$n.ko" ;;
      *.ko.gz)  gzip -dc "$f" > "$stage/lib/modules/$n.ko" ;;
      *)        cp "$f" "$stage/lib/modules/$n.ko" ;;
    esac
    insmods+="insmod /lib/modules/$n.ko"$'\n'
  done
  cat > "$stage/init" <<EOF
#!/bin/sh
# runlab microvm init (generated by build/workloads/build.sh; kernel $KVER)
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
exec </dev/console >/dev/console 2>&1
${insmods}i=0
while [ ! -e /sys/class/net/eth0 ] && [ \$i -lt 200 ]; do usleep 10000; i=\$((i+1)); done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
# kernel command-line "hello_delay_ms=D" reaches init as an environment variable
echo runlab-guest-ready
exec /hello --port 80 \${hello_delay_ms:+--delay-ms "\$hello_delay_ms"}
EOF
  chmod 0755 "$stage/init"
  find "$stage" -exec touch -h -d "@$EPOCH" {} +
  (cd "$stage" && find . -mindepth 1 | sort |
     cpio -o -H newc --reproducible -R 0:0 --quiet) > "$OUT/initramfs.cpio.tmp"
  rm -rf "$stage"; trap - EXIT
  install_if_changed "$OUT/initramfs.cpio.tmp" "$OUT/initramfs.cpio" &&
    log "initramfs.cpio: built" || log "initramfs.cpio: up to date"

  # host TSC frequency: without tsc_early_khz the guest often hangs calibrating
  TSC_KHZ=${RUNLAB_TSC_KHZ:-}
  if [ -z "$TSC_KHZ" ]; then
    mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -1)
    [ -n "$mhz" ] || mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | tail -1)
    [ -n "$mhz" ] || mhz=$(awk -F: '/^cpu MHz/{gsub(/ /,"",$2); print $2; exit}' /proc/cpuinfo)
    TSC_KHZ=$(awk -v m="$mhz" 'BEGIN{printf "%d", m*1000 + 0.5}')
  fi
  APPEND="console=ttyS0 rdinit=/init panic=-1 quiet mitigations=off cryptomgr.notests tsc_early_khz=$TSC_KHZ"
  MICROVM_ARGS=(qemu-system-x86_64 -M microvm -accel tcg,tb-size=32 -cpu qemu64 -m 96 -smp 1
    -nodefaults -no-user-config -display none -serial stdio -no-reboot
    -kernel "$OUT/vmlinuz" -initrd "$OUT/initramfs.cpio" -append "$APPEND"
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80" -device virtio-net-device,netdev=n0)
  printf '%s\n' "${MICROVM_ARGS[@]}" > "$OUT/microvm.args.tmp"
  install_if_changed "$OUT/microvm.args.tmp" "$OUT/microvm.args" || true
  # microvm-run PORT: the same command line, for experiment files (the TSC value is this host's).
  {
    echo '#!/bin/sh'
    echo '# microvm-run PORT — boot the hello microVM, forwarding 127.0.0.1:PORT to the guest'"'"'s :80.'
    echo '# Generated by build/workloads/build.sh for this host (tsc_early_khz); exec keeps QEMU as this PID.'
    echo 'port=${1:?usage: microvm-run PORT}'
    printf 'exec'
    for a in "${MICROVM_ARGS[@]}"; do
      a=${a//\{port\}/\$port}
      case $a in *'$port'*) printf ' "%s"' "$a" ;; *) printf " '%s'" "$a" ;; esac
    done
    echo
  } > "$OUT/microvm-run.tmp"
  chmod 0755 "$OUT/microvm-run.tmp"
  install_if_changed "$OUT/microvm-run.tmp" "$OUT/microvm-run" || true
  MODNAMES=$(for f in "${MODS[@]}"; do b=$(basename "$f"); echo "${b%%.ko*}"; done)
fi

# ---- manifest.json ----------------------------------------------------------------
export OUT IMAGE IMAGE_CMD WORKLOADS EPOCH
export PODMAN_STORE=${PODMAN_STORE:-}
export PODMAN_FLAGS_NL=$(printf '%s\n' "${PODMAN_FLAGS[@]}")
export IMAGE_ID=${IMAGE_ID:-} IMAGE_SIZE=${IMAGE_SIZE:-}
export KPKG=${KPKG:-} KPKG_VERSION=${KPKG_VERSION:-} KVER=${KVER:-} TSC_KHZ=${TSC_KHZ:-}
export MODNAMES=${MODNAMES:-} MICROVM_NL=$(printf '%s\n' "${MICROVM_ARGS[@]}")
"$PY" - > "$OUT/manifest.json.tmp" <<'EOF'
import hashlib, json, os, shlex
e = os.environ
out = e["OUT"]
lines = lambda k: [x for x in e.get(k, "").split("\n") if x]
def art(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return None
    with open(p, "rb") as f:
        return {"path": p, "size": os.path.getsize(p), "sha256": hashlib.sha256(f.read()).hexdigest()}
wl = e["WORKLOADS"].split()
m = {"outdir": out, "workloads": wl, "source_date_epoch": int(e["EPOCH"]),
     "hello": art("hello"),
     "process": {"command": [os.path.join(out, "hello"), "--port", "{port}"]}}
if "podman" in wl:
    flags = lines("PODMAN_FLAGS_NL")
    m["podman"] = {
        "rootfs_tar": art("hello-rootfs.tar"), "image": e["IMAGE"], "image_id": e["IMAGE_ID"],
        "image_size": int(e["IMAGE_SIZE"] or 0), "image_cmd": json.loads(e["IMAGE_CMD"]),
        "store": e["PODMAN_STORE"] or None, "engine_args": flags, "engine_args_shell": shlex.join(flags),
        "run_args": ["run", "-d", "--name", "runlab-hello-{port}", "--replace", "--network=host",
                     "--log-driver=none", "--no-hosts", "--dns=none",
                     "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
                     e["IMAGE"], "/hello", "--port", "{port}"],
        "stop_args": ["rm", "-f", "-t", "2", "runlab-hello-{port}"],
    }
if "microvm" in wl:
    m["microvm"] = {
        "kernel": art("vmlinuz"), "initramfs": art("initramfs.cpio"),
        "kernel_package": e["KPKG"], "kernel_package_version": e["KPKG_VERSION"],
        "kernel_version": e["KVER"], "modules": lines("MODNAMES"),
        "tsc_khz": int(e["TSC_KHZ"]), "ready_marker": "runlab-guest-ready", "guest_port": 80,
        "command": lines("MICROVM_NL"), "args_file": os.path.join(out, "microvm.args"),
    }
print(json.dumps(m, indent=2))
EOF
install_if_changed "$OUT/manifest.json.tmp" "$OUT/manifest.json" && log "manifest.json: written" ||
  log "manifest.json: up to date"
log "artifacts in $OUT"
