#!/usr/bin/env bash
# setup-v1.sh — InfluxDB 1.x for runlab: database, retention policies, users. Safe to run again.
#
# Creates, or brings back to this state:
#   database  runlab
#   RP raw      30 days, DEFAULT  everything the collector writes (host, agent, collector, node_status,
#                                 run_sample, run_summary)
#   RP results  forever           copies of run_sample and run_summary (keep-results-v1.sh, hourly)
#   users     collector  WRITE on runlab   (the collector: influx.api v1, username collector)
#             grafana    READ  on runlab   (Grafana, runlab report)
#             keeper     ALL   on runlab   (keep-results-v1.sh: SELECT … INTO needs read and write)
# Passwords are generated once and kept in --out (default /etc/runlab/influx), one file per user, mode 0600
# root — except collector.password: 0640 root:runlab (--group), so the collector's service user reads it;
# --out itself is 0710 root:runlab, and directories created above it 0755 (/etc/runlab must stay readable:
# the services' configs are there). Every run puts these modes back. keeper.env is the EnvironmentFile of
# runlab-keep-results.service.
#
# Needs the 1.x `influx` CLI (Debian: influxdb-client). With auth on, export INFLUX_USERNAME and
# INFLUX_PASSWORD of an admin (the CLI reads them); on a fresh server with auth on and no user yet,
# --create-admin NAME first creates that admin with INFLUX_PASSWORD. See deploy/influxdb/README.md.
set -euo pipefail
umask 077

PROG=setup-v1.sh
NAME_RE='^[A-Za-z0-9_][A-Za-z0-9_.-]*$'

usage() {
    cat <<EOF
Usage: $PROG [options]

Options:
  --host HOST            InfluxDB host (default localhost)
  --port PORT            its HTTP port (default 8086)
  --ssl                  use https
  --db NAME              database (default runlab)
  --raw-duration DUR     how long raw samples stay (default 30d)
  --out DIR              where user passwords are kept (default /etc/runlab/influx)
  --no-users             database and retention policies only
  --group NAME           group of the collector's service user, may read collector.password (default
                         runlab, made by the runlab-collector package; when it does not exist yet: run
                         this again after installing the package)
  --create-admin NAME    on a fresh server with auth on: create admin NAME (password: \$INFLUX_PASSWORD)
  -h, --help             this text
EOF
}

die() { echo "$PROG: $*" >&2; exit 1; }

host=localhost
port=8086
ssl=()
db=runlab
raw_duration=30d
out=/etc/runlab/influx
users=1
group=runlab
create_admin=
while (($#)); do
    case $1 in
        --host) (($# >= 2)) || die "--host needs a value"; host=$2; shift 2 ;;
        --port) (($# >= 2)) || die "--port needs a value"; port=$2; shift 2 ;;
        --ssl) ssl=(-ssl); shift ;;
        --db) (($# >= 2)) || die "--db needs a value"; db=$2; shift 2 ;;
        --raw-duration) (($# >= 2)) || die "--raw-duration needs a value"; raw_duration=$2; shift 2 ;;
        --out) (($# >= 2)) || die "--out needs a value"; out=$2; shift 2 ;;
        --no-users) users=0; shift ;;
        --group) (($# >= 2)) || die "--group needs a value"; group=$2; shift 2 ;;
        --create-admin) (($# >= 2)) || die "--create-admin needs a value"; create_admin=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $db =~ $NAME_RE ]] || die "--db: letters, digits, '_', '.', '-' only (got '$db')"
[[ $raw_duration =~ ^[0-9]+[mhdw]$ ]] || die "--raw-duration: a duration such as 30d, 720h, 4w (got '$raw_duration')"

command -v influx >/dev/null || die "the influx CLI is missing (Debian: apt-get install influxdb-client)"
influx -version 2>/dev/null | grep -q 'InfluxDB shell' ||
    die "this 'influx' is not the InfluxDB 1.x CLI (for InfluxDB 2.x use setup-v2.sh)"

cli=(influx -host "$host" -port "$port" "${ssl[@]}")

# Run InfluxQL; on failure show the server's words and stop.
q() {
    local err
    if ! err=$("${cli[@]}" -execute "$1" 2>&1 >/dev/null); then
        die "$1: ${err%%$'\n'*}"
    fi
}
# Run InfluxQL, CSV on stdout.
qcsv() {
    local res
    res=$("${cli[@]}" -format csv -execute "$1" 2>&1) || die "$1: ${res%%$'\n'*}"
    printf '%s\n' "$res"
}

# Auth on and no user at all: only "CREATE USER … WITH ALL PRIVILEGES" is accepted.
probe=$("${cli[@]}" -format csv -execute 'SHOW USERS' 2>&1) || {
    if [[ $probe == *"create admin user first"* ]]; then
        [[ -n $create_admin ]] || die "auth is on and there is no admin yet: run again with --create-admin NAME and \
the admin's password in INFLUX_PASSWORD (or: influx -execute \"CREATE USER admin WITH PASSWORD '…' WITH ALL PRIVILEGES\")"
        [[ $create_admin =~ $NAME_RE ]] || die "--create-admin: letters, digits, '_', '.', '-' only"
        [[ -n ${INFLUX_PASSWORD:-} ]] || die "--create-admin needs the new admin's password in INFLUX_PASSWORD"
        [[ $INFLUX_PASSWORD != *"'"* && $INFLUX_PASSWORD != *"\\"* ]] || die "INFLUX_PASSWORD: no ' or \\ please"
        q "CREATE USER \"$create_admin\" WITH PASSWORD '$INFLUX_PASSWORD' WITH ALL PRIVILEGES"
        export INFLUX_USERNAME=$create_admin
        echo "created admin $create_admin"
    else
        die "cannot query $host:$port: ${probe%%$'\n'*}"
    fi
}

# ---- database and retention policies ----------------------------------------------------------------
if qcsv 'SHOW DATABASES' | awk -F, -v db="$db" 'NR > 1 && $2 == db { found = 1 } END { exit !found }'; then
    echo "database $db: exists"
else
    # Created with raw as its only (default) policy: no infinite "autogen" to fill by mistake.
    q "CREATE DATABASE \"$db\" WITH DURATION $raw_duration REPLICATION 1 NAME \"raw\""
    echo "database $db: created"
fi

rps=$(qcsv "SHOW RETENTION POLICIES ON \"$db\"")
has_rp() { awk -F, -v rp="$1" 'NR > 1 && $1 == rp { found = 1 } END { exit !found }' <<<"$rps"; }
if has_rp raw; then
    q "ALTER RETENTION POLICY \"raw\" ON \"$db\" DURATION $raw_duration DEFAULT"
else
    q "CREATE RETENTION POLICY \"raw\" ON \"$db\" DURATION $raw_duration REPLICATION 1 DEFAULT"
fi
if has_rp results; then
    q "ALTER RETENTION POLICY \"results\" ON \"$db\" DURATION INF"
else
    q "CREATE RETENTION POLICY \"results\" ON \"$db\" DURATION INF REPLICATION 1"
fi
echo "retention policies on $db: raw $raw_duration (default), results forever"
if has_rp autogen; then
    echo "note: $db still has the infinite policy autogen (new writes go to raw); when it holds nothing you" \
         "need: INFLUX_USERNAME=${INFLUX_USERNAME:-admin} INFLUX_PASSWORD='…' influx -host $host -port $port" \
         "-execute 'DROP RETENTION POLICY \"autogen\" ON \"$db\"'" >&2
fi

# ---- users ----------------------------------------------------------------------------------------------
if ((users)); then
    # umask 077 would make /etc/runlab itself 0700, and the collector could not read its own config.
    (umask 022 && mkdir -p "$(dirname "$out")")
    mkdir -p "$out"
    if getent group "$group" >/dev/null; then
        chgrp "$group" "$out" && chmod 0710 "$out"
    else
        chmod 0700 "$out"
        echo "note: group $group does not exist yet (the runlab-collector package makes it): the collector's" \
             "service user cannot read $out/collector.password until you run this again after installing it" >&2
        group=
    fi
    existing=$(qcsv 'SHOW USERS')
    # ensure_user NAME PRIVILEGE: the user exists, has the password in $out/NAME.password, and PRIVILEGE on $db.
    ensure_user() {
        local name=$1 privilege=$2 file=$out/$1.password pw
        if [[ -s $file ]]; then
            pw=$(head -n1 "$file")
        else
            pw=$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')
            printf '%s\n' "$pw" >"$file.tmp" && mv "$file.tmp" "$file"
        fi
        if awk -F, -v u="$name" 'NR > 1 && $1 == u { found = 1 } END { exit !found }' <<<"$existing"; then
            q "SET PASSWORD FOR \"$name\" = '$pw'"
        else
            q "CREATE USER \"$name\" WITH PASSWORD '$pw'"
        fi
        # GRANT replaces the user's privilege on the database: a rerun also takes back anything broader.
        q "GRANT $privilege ON \"$db\" TO \"$name\""
        echo "user $name: $privilege on $db, password in $file"
    }
    ensure_user collector WRITE
    ensure_user grafana READ
    ensure_user keeper ALL
    chmod 0600 "$out"/*.password
    if [[ -n $group ]]; then chgrp "$group" "$out/collector.password" && chmod 0640 "$out/collector.password"; fi
    printf 'INFLUX_USERNAME=keeper\nINFLUX_PASSWORD=%s\n' "$(head -n1 "$out/keeper.password")" >"$out/keeper.env"
fi

scheme=http
((${#ssl[@]})) && scheme=https
cat <<EOF

Done. Next:
  collector.yaml   influx: {url: $scheme://$host:$port, api: v1, database: $db,
                            username: collector, password_file: $out/collector.password}
                   then: runlab-collector check --config /etc/runlab/collector.yaml
  Grafana          RUNLAB_INFLUX_DATABASE=$db, RUNLAB_INFLUX_TOKEN=grafana:<$out/grafana.password>
                   (token auth needs InfluxDB 1.8+; see docs/grafana.md)
  forever copies   install runlab-keep-results.service and .timer (deploy/influxdb/README.md): every hour
                   keep-results-v1.sh copies run_sample and run_summary from raw into results
EOF
