#!/usr/bin/env bash
# setup-v2.sh — InfluxDB 2.x for runlab: buckets, DBRP mappings, the forever-copy task, least-privilege
# tokens. Safe to run again. Also the init script of deploy/compose.yaml (mounted into
# /docker-entrypoint-initdb.d: the influxdb:2 image runs it once, after its own setup).
#
# Creates, or brings back to this state (names and durations: see the environment below):
#   bucket runlab          30 days   everything the collector writes
#   bucket runlab_results  forever   copies of run_sample and run_summary, made by the task
#   DBRP   runlab/autogen  -> runlab (default)   InfluxQL /query?db=runlab (Grafana, runlab report)
#   DBRP   runlab/results  -> runlab_results     InfluxQL FROM "runlab"."results"."run_summary"
#   task   runlab-keep-results   hourly: run_sample, run_summary of the last 3 days -> runlab_results
#   token  runlab-collector      write runlab                      -> $RUNLAB_COLLECTOR_TOKEN_FILE
#   token  runlab-grafana        read runlab and runlab_results    -> $RUNLAB_GRAFANA_TOKEN_FILE
# A token file that exists is kept (InfluxDB 2.9+ shows a token only once, at creation).
#
# Needs the InfluxDB 2.x `influx` CLI, configured for an operator or all-access token of the org:
#   influx config create --active -n runlab -u http://localhost:8086 -o homelab -t <admin token>
# or INFLUX_HOST / INFLUX_ORG / INFLUX_TOKEN in the environment (the CLI reads them).
#
# Environment (defaults):
#   INFLUX_ORG                    organization (DOCKER_INFLUXDB_INIT_ORG, else homelab)
#   RUNLAB_BUCKET                 runlab       (DOCKER_INFLUXDB_INIT_BUCKET when set)
#   RUNLAB_RESULTS_BUCKET         runlab_results
#   RUNLAB_RETENTION              30d
#   RUNLAB_COLLECTOR_TOKEN_FILE   /etc/runlab/influx.token
#   RUNLAB_GRAFANA_TOKEN_FILE     /etc/runlab/grafana-influx.token
#   RUNLAB_COLLECTOR_TOKEN_OWNER  owner (user[:group]) of the collector's token file (default: who runs this)
#   RUNLAB_GRAFANA_TOKEN_OWNER    owner of Grafana's (e.g. grafana, or 472 for the Grafana container)
set -euo pipefail
umask 077

PROG=setup-v2.sh
die() { echo "$PROG: $*" >&2; exit 1; }
case ${1:-} in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e 's/^# \{0,1\}//' -e '$d'; exit 0 ;;
    "") ;;
    *) die "no arguments, only environment variables (see --help)" ;;
esac

org=${INFLUX_ORG:-${DOCKER_INFLUXDB_INIT_ORG:-homelab}}
bucket=${RUNLAB_BUCKET:-${DOCKER_INFLUXDB_INIT_BUCKET:-runlab}}
results=${RUNLAB_RESULTS_BUCKET:-runlab_results}
retention=${RUNLAB_RETENTION:-30d}
db=${bucket%%/*}
collector_file=${RUNLAB_COLLECTOR_TOKEN_FILE:-/etc/runlab/influx.token}
grafana_file=${RUNLAB_GRAFANA_TOKEN_FILE:-/etc/runlab/grafana-influx.token}

command -v influx >/dev/null || die "the influx CLI is missing (InfluxDB 2.x: influxdb2-cli)"
if influx -version 2>/dev/null </dev/null | grep -q 'InfluxDB shell'; then
    die "this 'influx' is the 1.x shell, not the InfluxDB 2.x CLI (for InfluxDB 1.x use setup-v1.sh)"
fi
influx version 2>/dev/null </dev/null | grep -q 'Influx CLI' || die "this 'influx' is not the InfluxDB 2.x CLI"

# The ID of a bucket, empty when it does not exist.
bucket_id() {
    influx bucket list --org "$org" --name "$1" --hide-headers 2>/dev/null | cut -f 1 | head -n 1 || true
}

# ensure_bucket NAME RETENTION: exists with this retention (0 = forever); prints its ID.
ensure_bucket() {
    local name=$1 keep=$2 id
    id=$(bucket_id "$name")
    if [[ -z $id ]]; then
        id=$(influx bucket create --org "$org" --name "$name" --retention "$keep" --hide-headers | cut -f 1)
        [[ -n $id ]] || die "could not create bucket $name"
        echo "bucket $name: created, retention ${keep/#0/forever}" >&2
    else
        influx bucket update --id "$id" --retention "$keep" >/dev/null
        echo "bucket $name: exists, retention set to ${keep/#0/forever}" >&2
    fi
    echo "$id"
}

# ensure_dbrp RP BUCKET_ID DEFAULT(yes|no): an explicit mapping database/RP -> bucket.
ensure_dbrp() {
    local rp=$1 id=$2 default=$3 listing
    listing=$(influx v1 dbrp list --org "$org" --db "$db" --rp "$rp" --json 2>/dev/null || true)
    if grep -q "\"bucketID\": \"$id\"" <<<"$listing" && ! grep -q '"virtual": true' <<<"$listing"; then
        echo "dbrp $db/$rp: exists" >&2
        return
    fi
    local flags=(--org "$org" --db "$db" --rp "$rp" --bucket-id "$id") note=""
    if [[ $default == yes ]]; then
        flags+=(--default)
        note=" (default)"
    fi
    influx v1 dbrp create "${flags[@]}" >/dev/null
    echo "dbrp $db/$rp -> bucket $id: created$note" >&2
}

# write_token FILE OWNER DESCRIPTION PERMISSION-FLAGS...: create the token unless FILE already holds one.
write_token() {
    local file=$1 owner=$2 description=$3 token
    shift 3
    if [[ -s $file ]]; then
        echo "token $description: kept ($file exists)" >&2
        return
    fi
    token=$(influx auth create --org "$org" --description "$description" "$@" --json |
            sed -n 's/^ *"token": *"\([^"]*\)".*/\1/p' | head -n 1)
    [[ -n $token ]] || die "influx auth create gave no token for $description"
    mkdir -p "$(dirname "$file")"
    printf '%s' "$token" >"$file.tmp"
    if [[ -n $owner ]]; then
        chown "$owner" "$file.tmp"
    fi
    mv "$file.tmp" "$file"
    echo "token $description: created, in $file" >&2
}

raw_id=$(ensure_bucket "$bucket" "$retention")
results_id=$(ensure_bucket "$results" 0)
ensure_dbrp autogen "$raw_id" yes
ensure_dbrp results "$results_id" no

task_name=runlab-keep-results
if influx task list --org "$org" --hide-headers 2>/dev/null | cut -f 2 | grep -qx "$task_name"; then
    echo "task $task_name: exists" >&2
else
    flux=$(mktemp)
    trap 'rm -f "$flux"' EXIT
    # Look back 3 days: agents spool while the broker or collector is away and deliver late with their
    # original timestamps. A copy written twice overwrites itself (same series, same time).
    cat >"$flux" <<EOF
option task = {name: "$task_name", every: 1h, offset: 1m}

from(bucket: "$bucket")
    |> range(start: -3d)
    |> filter(fn: (r) => r._measurement == "run_sample" or r._measurement == "run_summary")
    |> to(bucket: "$results")
EOF
    influx task create --org "$org" --file "$flux" >/dev/null
    echo "task $task_name: created (hourly copy of run_sample, run_summary into $results)" >&2
fi

write_token "$collector_file" "${RUNLAB_COLLECTOR_TOKEN_OWNER:-}" runlab-collector --write-bucket "$raw_id"
write_token "$grafana_file" "${RUNLAB_GRAFANA_TOKEN_OWNER:-}" runlab-grafana \
    --read-bucket "$raw_id" --read-bucket "$results_id"

cat <<EOF

Done. Next:
  collector.yaml  influx: {api: v2, org: $org, bucket: $bucket, token_file: $collector_file}
                  then: runlab-collector check --config /etc/runlab/collector.yaml
  Grafana         RUNLAB_INFLUX_DATABASE=$db, RUNLAB_INFLUX_TOKEN=<the token in $grafana_file>
  results         run_sample and run_summary older than $retention: FROM "$db"."results"."run_summary"
EOF
