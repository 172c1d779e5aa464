#!/usr/bin/env bash
# deb.sh APP ARCH — build dist/runlab-APP_VERSION_ARCH.deb (APP: agent | collector, ARCH: amd64 | arm64).
#   1. freeze the app (build/freeze.sh): natively when ARCH is this machine's, otherwise inside a cached
#      Debian bookworm chroot of ARCH under qemu-user (binfmt) — PyInstaller must run on the target
#      architecture (it bundles that architecture's interpreter, libraries and bootloader);
#   2. smoke-test the frozen binary (build/smoke.py; foreign ARCH under qemu-user with the chroot's loader);
#   3. stage it with the unit, conffile, maintainer scripts and docs, and package with nfpm.
# VERSION comes from runlab/__init__.py (__version__); packaging/changelog's top entry must match it.
# Environment: RUNLAB_PACKAGING_CACHE (default build/cache/packaging), SMOKE=0 skips step 2.
set -euo pipefail
umask 022
export LC_ALL=C
APP=${1:?usage: deb.sh agent|collector amd64|arm64}
ARCH=${2:-$(dpkg --print-architecture)}
case "$APP" in agent|collector) ;; *) echo "deb.sh: APP must be agent or collector, got '$APP'" >&2; exit 2 ;; esac
case "$ARCH" in amd64|arm64) ;; *) echo "deb.sh: ARCH must be amd64 or arm64, got '$ARCH'" >&2; exit 2 ;; esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${RUNLAB_PACKAGING_CACHE:-$HERE/cache/packaging}
mkdir -p "$CACHE" "$REPO/dist"
CACHE=$(cd "$CACHE" && pwd)
exec 7>"$CACHE/.lock-deb-$ARCH"
flock 7  # one build per architecture at a time (they share the staging and the foreign chroot)
PKG=runlab-$APP
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/runlab/__init__.py")
[ -n "$VERSION" ] || { echo "deb.sh: no __version__ in runlab/__init__.py" >&2; exit 1; }
TOP=$(sed -n '1s/^@PACKAGE@ (\([^)]*\)).*/\1/p' "$REPO/packaging/changelog")
[ "$TOP" = "$VERSION-1" ] || { echo "deb.sh: packaging/changelog: the top entry is $TOP, expected $VERSION-1" \
  "(add an entry for version $VERSION)" >&2; exit 1; }
log() { echo "deb.sh: $*" >&2; }
start=$(date +%s)

# -- 1. freeze ---------------------------------------------------------------------------------------
if [ "$ARCH" = "$(dpkg --print-architecture)" ]; then
  APPDIR=$("$HERE/freeze.sh" "$APP" "$REPO/dist/freeze-$ARCH" 2> >(grep -v '^WARNING: Location' >&2))
  QEMU_ARGS=()
  HELLO=$CACHE/hello-$ARCH
  if [ "$APP" = agent ]; then gcc -static -O2 -s -Wall -o "$HELLO" "$REPO/build/workloads/hello.c"; fi
else
  TARBALL=$("$HERE/rootfs.sh" builder "$ARCH")
  ROOT=$CACHE/chroot-$ARCH
  # The unpacked chroot is kept (its build venv inside saves minutes); re-unpacked when the tarball changes.
  if [ ! -e "$ROOT/.from" ] || [ "$(cat "$ROOT/.from")" != "$(stat -c %Y "$TARBALL")" ]; then
    log "unpacking the $ARCH builder chroot"
    rm -rf "$ROOT" && mkdir -p "$ROOT"
    tar -C "$ROOT" --numeric-owner -xf "$TARBALL"
    stat -c %Y "$TARBALL" > "$ROOT/.from"
  fi
  # Same sources as here: copy what the freeze reads (not bind mounts: build/cache may be a symlink).
  rm -rf "$ROOT/src" && mkdir -p "$ROOT/src/build"
  tar -C "$REPO" -cf - runlab agent collector pyproject.toml requirements.lock | tar -C "$ROOT/src" -xf -
  cp "$HERE"/{freeze.sh,runlab.spec,entry.py,requirements-freeze.txt} "$ROOT/src/build/"
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/runlab-build-ca.crt"  # pip behind this network's TLS
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"
  mounted=()
  cleanup() { for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done; }
  trap cleanup EXIT
  for m in proc sys dev; do
    mountpoint -q "$ROOT/$m" || { mount --rbind "/$m" "$ROOT/$m" && mount --make-rslave "$ROOT/$m"; mounted+=("$ROOT/$m"); }
  done
  log "freezing $PKG in the $ARCH chroot (emulated: ~1 min; the first build also creates its venv)"
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
      PIP_CERT=/etc/runlab-build-ca.crt RUNLAB_PACKAGING_CACHE=/var/cache/runlab-build \
      bash /src/build/freeze.sh "$APP" /out 2> >(grep -v '^WARNING: Location' >&2) >/dev/null
  if [ "$APP" = agent ]; then  # the packaged workload, compiled for ARCH by the chroot's own gcc
    cp "$REPO/build/workloads/hello.c" "$ROOT/src/build/hello.c"
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin gcc -static -O2 -s -Wall \
        -o /out/hello /src/build/hello.c
  fi
  cleanup; trap - EXIT
  rm -rf "$REPO/dist/freeze-$ARCH/$PKG" && mkdir -p "$REPO/dist/freeze-$ARCH"
  cp -a "$ROOT/out/$PKG" "$REPO/dist/freeze-$ARCH/$PKG"
  APPDIR=$REPO/dist/freeze-$ARCH/$PKG
  QEMU_ARGS=(--qemu-prefix "$ROOT")
  HELLO=$ROOT/out/hello
fi

# -- 2. smoke test of the frozen binary --------------------------------------------------------------
if [ "${SMOKE:-1}" != 0 ]; then
  /usr/bin/python3 "$HERE/smoke.py" "${QEMU_ARGS[@]}" "$APPDIR/$PKG" >&2
fi

# -- 3. stage and package ----------------------------------------------------------------------------
STAGE=$CACHE/stage-$APP-$ARCH
rm -rf "$STAGE" && mkdir -p "$STAGE"/{scripts,doc}
cp -a "$APPDIR" "$STAGE/app"
find "$STAGE/app" -type d -exec chmod 0755 {} +
find "$STAGE/app" -type f -name '*.so*' -exec chmod 0644 {} +   # lintian: shared-library-is-executable
cp -r "$REPO/packaging" "$STAGE/packaging"
cp -r "$REPO/deploy/systemd" "$STAGE/systemd"
# The first experiment (both packages: the agent runs it locally, the operator pushes it).
mkdir -p "$STAGE/experiments"
cp "$REPO/packaging/experiments/"*.yaml "$STAGE/experiments/"
EXTRA="  - src: experiments/\n    dst: /usr/share/$PKG/experiments/\n    type: tree"
if [ "$APP" = agent ]; then
  # The workload the first experiment starts: a static binary, so it runs on any node without a build.
  mkdir -p "$STAGE/workloads"
  install -m 0755 "$HELLO" "$STAGE/workloads/hello"
  EXTRA+="\n  - src: workloads/hello\n    dst: /usr/lib/runlab/workloads/hello\n    file_info: {mode: 0755}"
  CONF=agent.yaml STATE=spool LINKS="$EXTRA" PAGES="runlab-agent"
  SUMMARY="runlab agent: measures this machine and what deployment runtimes cost"
  DESC="Samples the host every second and ships every sample over MQTT, kept in a\n  durable outbox until the broker acknowledged it. Runs experiments comparing\n  the same workload as a process, container, microVM or WASM module."
else
  CONF=collector.yaml STATE="quarantine.jsonl quarantine.jsonl.1"
  LINKS="  - src: ../lib/$PKG/$PKG\n    dst: /usr/bin/runlab\n    type: symlink\n$EXTRA" PAGES="runlab-collector runlab"
  SUMMARY="runlab collector and operator CLI: MQTT samples to InfluxDB"
  DESC="Subscribes to the samples of every runlab agent and writes them to InfluxDB,\n  acknowledging a message to the broker only once it is stored. Includes the\n  runlab operator command."
fi
for s in postinst prerm postrm; do
  sed -e "s|@PACKAGE@|$PKG|g" -e "s|@CONF@|$CONF|g" -e "s|@STATE@|$STATE|g" "$REPO/packaging/scripts/$s" > "$STAGE/scripts/$s"
  chmod 0755 "$STAGE/scripts/$s"
done
sed "s|@PACKAGE@|$PKG|g" "$REPO/packaging/changelog" | gzip -9n > "$STAGE/doc/changelog.Debian.gz"
MANPAGES=""
for page in $PAGES; do
  gzip -9n < "$REPO/packaging/man/$page.1" > "$STAGE/doc/$page.1.gz"
  MANPAGES+="  - src: doc/$page.1.gz\n    dst: /usr/share/man/man1/$page.1.gz\n    file_info: {mode: 0644}\n"
done
sed -e "s|@PACKAGE@|$PKG|g" -e "s|@ARCH@|$ARCH|g" -e "s|@VERSION@|$VERSION|g" -e "s|@CONF@|$CONF|g" \
    -e "s|@SUMMARY@|$SUMMARY|" -e "s|@DESCRIPTION@|$DESC|" -e "s|@EXTRA_LINKS@|$LINKS|" -e "s|@MANPAGES@|${MANPAGES%\\n}|" \
    "$REPO/packaging/nfpm.yaml" > "$STAGE/nfpm.yaml"

TOOLS=$CACHE/tools-venv
key=$(sha256sum < "$HERE/requirements-package.txt" | cut -d' ' -f1)
if [ "$(cat "$TOOLS/.stamp" 2>/dev/null)" != "$key" ]; then
  rm -rf "$TOOLS" && /usr/bin/python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements-package.txt" 2> >(grep -v '^WARNING: Location' >&2)
  echo "$key" > "$TOOLS/.stamp"
fi
OUT=$REPO/dist/${PKG}_${VERSION}_${ARCH}.deb
rm -f "$OUT"
(cd "$STAGE" && SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(date +%s)} "$TOOLS/bin/nfpm" package --config nfpm.yaml \
   --packager deb --target "$OUT" >/dev/null)
log "built $OUT ($(du -h "$OUT" | cut -f1)) in $(( $(date +%s) - start )) s"
echo "$OUT"
