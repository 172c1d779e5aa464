#!/usr/bin/env bash
# keep-results-v1.sh — InfluxDB 1.x: copy run_sample and run_summary from the 30-day policy "raw" into the
# forever policy "results", so experiment results outlive the raw samples. Run it every hour
# (runlab-keep-results.timer). Idempotent: a point copied twice overwrites itself (same series, same time).
#
# Why not a continuous query: a CQ must aggregate (GROUP BY time() with a function), which would not copy
# the points unchanged; a plain SELECT … INTO … GROUP BY * does (tags stay tags, field types are kept).
# It looks back --since (default 3d): agents spool while the broker or the collector is away and deliver
# late, with their original timestamps; a window shorter than the longest outage would miss those points.
#
# Credentials: INFLUX_USERNAME / INFLUX_PASSWORD (the influx CLI reads them), e.g. the keeper user of
# setup-v1.sh (EnvironmentFile=/etc/runlab/influx/keeper.env).
set -euo pipefail

PROG=keep-results-v1.sh
usage() {
    cat <<EOF
Usage: $PROG [--host HOST] [--port PORT] [--ssl] [--db NAME] [--since DURATION]
  defaults: localhost, 8086, http, runlab, 3d (use e.g. --since 30d once, to copy everything raw still has)
EOF
}
die() { echo "$PROG: $*" >&2; exit 1; }

host=localhost
port=8086
ssl=()
db=runlab
since=3d
while (($#)); do
    case $1 in
        --host) (($# >= 2)) || die "--host needs a value"; host=$2; shift 2 ;;
        --port) (($# >= 2)) || die "--port needs a value"; port=$2; shift 2 ;;
        --ssl) ssl=(-ssl); shift ;;
        --db) (($# >= 2)) || die "--db needs a value"; db=$2; shift 2 ;;
        --since) (($# >= 2)) || die "--since needs a value"; since=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $db =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || die "--db: letters, digits, '_', '.', '-' only"
[[ $since =~ ^[0-9]+[mhdw]$ ]] || die "--since: a duration such as 3d, 12h (got '$since')"

query="SELECT * INTO \"$db\".\"results\".:MEASUREMENT FROM \"$db\".\"raw\"./^run_(sample|summary)\$/ \
WHERE time > now() - $since GROUP BY *"
res=$(influx -host "$host" -port "$port" "${ssl[@]}" -format csv -execute "$query" 2>&1) ||
    die "${res%%$'\n'*}"
# CSV: "name,time,written" then one row; print how many points were (re)written.
written=$(awk -F, 'NR == 2 { print $3 }' <<<"$res")
echo "copied ${written:-0} points of run_sample/run_summary from $db.raw to $db.results (last $since)"
