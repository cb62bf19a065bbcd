#!/usr/bin/env bash
# Store-engine and scale-out benchmark, on loopback: the same `device-sim load` against
#   1. one gateway (embedded broker) on SQLite, then on PostgreSQL (a throwaway cluster);
#   2. one, two and three gateways (external mode, one share group) behind Mosquitto, on one
#      PostgreSQL database;
#   3. failover: three gateways with a backlog (one worker each, a slow model), one SIGKILLed:
#      how long until its queued work resumes at the others (the target: lease_ms + 1 s).
#
# Usage, from the workspace root (Debian's postgresql and mosquitto installed; run as root or
# as a user who may run the PostgreSQL server):
#   cargo build --release -p gateway -p device-sim
#   device-sim/store_bench.sh [DURATION] [SHAPE]        e.g. device-sim/store_bench.sh 10s 50x4
#   PARTS=3 device-sim/store_bench.sh                   only part 3 (default PARTS=123)
#   STATEMENTS=8 device-sim/store_bench.sh              and the 8 statements that cost the server most
#   MEMBER_TOML='[limits]\nmax_pending_per_device = 0'  extra TOML for part 2's gateways
#
# Every process it starts is stopped by its own PID; everything lives in $OUT (a temp dir).
set -euo pipefail

duration=${1:-10s}
shape=${2:-50x4}
parts=${PARTS:-123}
devices=${shape%x*}
inflight=${shape#*x}
bin=${BIN:-target/release}
out=${OUT:-$(mktemp -d)}
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
mkdir -p "$out"
pids=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    as_pg "$pg_bin/pg_ctl" -D "$out/pg" -m fast -w stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (at most 60 s) for a line matching $2 in file $1.
wait_for() {
    for _ in $(seq 600); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1" >&2
    return 1
}

summary() { # $1 = label, $2 = report
    python3 - "$1" "$2" <<'PY'
import json, sys
label, r = sys.argv[1], json.load(open(sys.argv[2]))
l = r["latency_ms"]
print(f'{label:<24} {r["throughput_rps"]:>8.0f} req/s  p50 {l["p50"]:6.2f} ms  p99 {l["p99"]:7.2f} ms  '
      f'ok {r["replies_ok"]}  err {r["replies_error"]}  lost {r["lost"]}  dup {r["duplicates"]}')
PY
}

# CPU seconds used so far by the PostgreSQL server's processes (its postmaster and children).
pg_cpu() {
    local pids
    pids=$(pgrep -d, -P "$(head -1 "$out/pg/postmaster.pid")" || true)
    ps -o cputimes= -p "$(head -1 "$out/pg/postmaster.pid")${pids:+,$pids}" 2>/dev/null |
        awk '{s += $1} END {print s + 0}'
}

load() { # $1 = label, $2 = broker address, rest: extra device-sim flags
    local label=$1 broker=$2
    shift 2
    local before after
    before=$(pg_cpu)
    "$bin/device-sim" load --broker "$broker" --devices "$devices" --inflight "$inflight" --closed \
        --duration "$duration" --quiet --json "$out/$label.json" "$@" > "$out/$label.log" 2>&1 || true
    after=$(pg_cpu)
    summary "$label" "$out/$label.json"
    python3 - "$out/$label.json" "$before" "$after" <<'PY'
import json, sys
r, before, after = json.load(open(sys.argv[1])), float(sys.argv[2]), float(sys.argv[3])
n = max(r["replies_ok"] + r["replies_error"], 1)
gw = r.get("gateway_cpu_us_per_request")
print(f'{"":<24} CPU per request: gateway {f"{gw:.0f} us" if gw else "n/a"}, '
      f'PostgreSQL {(after - before) * 1e6 / n:.0f} us, device-sim {r.get("sim_cpu_s") or 0:.1f} s in all')
PY
}

# PostgreSQL: a throwaway cluster (the server refuses root: it runs as postgres, in a dir it owns).
pg_port=$(free_port)
[ "$(id -u)" = 0 ] && chown postgres: "$out"
as_pg "$pg_bin/initdb" -D "$out/pg" -U postgres -A trust -E UTF8 >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$out/pg" -l "$out/pg.log" -w \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$out ${STATEMENTS:+-c shared_preload_libraries=pg_stat_statements}" start >/dev/null
createdb() {
    "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres "$1"
    if [ -n "${STATEMENTS:-}" ]; then
        psql -h 127.0.0.1 -p "$pg_port" -U postgres -d "$1" -qc "CREATE EXTENSION pg_stat_statements"
    fi
}
# With STATEMENTS=1: the statements that took the server's time in database $1, since the last call.
statements() {
    [ -n "${STATEMENTS:-}" ] || return 0
    psql -h 127.0.0.1 -p "$pg_port" -U postgres -d "$1" -At -F ' | ' -c "
        SELECT calls, round(total_exec_time::numeric) AS ms, rows,
               left(regexp_replace(query, '\s+', ' ', 'g'), 90)
        FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$1')
        ORDER BY total_exec_time DESC LIMIT ${STATEMENTS}"
}

gateway() { # $1 = name, $2 = extra TOML, $3 = extra [gateway] keys; sets $gw_pid once listening
    mkdir -p "$out/$1"
    { printf '[gateway]\nid = "%s"\ndata_dir = "%s/%s/data"\n%b\n[http]\nlisten = ""\n' \
          "$1" "$out" "$1" "${3:-}"
      printf '%b\n' "$2"; } > "$out/$1/gateway.toml"
    "$bin/gateway" run --config "$out/$1/gateway.toml" > "$out/$1/out.log" 2> "$out/$1/err.log" &
    gw_pid=$!
    pids+=("$gw_pid")
    wait_for "$out/$1/out.log" "listening"
}
address() { grep -o 'mqtt=[0-9.:]*' "$out/$1/out.log" | head -1 | cut -d= -f2; }

if [[ $parts == *1* ]]; then
echo "== 1. one gateway, embedded broker: SQLite vs PostgreSQL ($shape, $duration)"
gateway sqlite '[broker]\nlisten = "127.0.0.1:0"'
load "sqlite" "$(address sqlite)" --gateway-pid "$gw_pid"
kill "$gw_pid"
createdb single
gateway postgres "[broker]\nlisten = \"127.0.0.1:0\"\n[store]\nengine = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:$pg_port/single\""
load "postgres" "$(address postgres)" --gateway-pid "$gw_pid"
statements single
kill "$gw_pid"
fi

mqtt_port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\n' \
    "$mqtt_port" > "$out/mosquitto.conf"
/usr/sbin/mosquitto -c "$out/mosquitto.conf" > "$out/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && break; sleep 0.1; done
member() { # $1 = name, $2 = database, $3 = lease_ms
    gateway "$1" "[broker]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:$mqtt_port\"\nshare_group = \"roost\"\n[store]\nengine = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:$pg_port/$2\"\nlease_ms = $3\n${MEMBER_TOML:-}"
}
if [[ $parts == *2* ]]; then
echo "== 2. N gateways behind Mosquitto on one PostgreSQL ($shape, $duration)"
for n in 1 2 3; do
    createdb "cluster$n"
    members=()
    for m in $(seq "$n"); do member "c$n-gw$m" "cluster$n" 10000; members+=("$gw_pid"); done
    load "$n-gateways" "127.0.0.1:$mqtt_port"
    statements "cluster$n"
    for pid in "${members[@]}"; do kill "$pid"; done
    for pid in "${members[@]}"; do wait "$pid" 2>/dev/null || true; done
done

fi

if [[ $parts == *3* ]]; then
echo "== 3. failover: three gateways with a backlog, one killed with SIGKILL (lease_ms = 2000)"
createdb failover
psql_fo() { psql -h 127.0.0.1 -p "$pg_port" -U postgres -d failover -At "$@"; }
now_ms() { date +%s%3N; }
slow_model="[models.slow]\npath = \"$PWD/tests/fixtures/models/slow.onnx\""
members=()
for m in 1 2 3; do
    gateway "fo-gw$m" "[broker]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:$mqtt_port\"\nshare_group = \"roost\"\n[store]\nengine = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:$pg_port/failover\"\nlease_ms = 2000\n$slow_model" \
        "workers = 1"
    members+=("$gw_pid")
done
# Offered above what three single workers run, so that every gateway holds queued work.
"$bin/device-sim" load --broker "127.0.0.1:$mqtt_port" --devices 60 --rate 900 --duration 12s \
    --mix infer=1 --infer-model slow --infer-features 128 --quiet --json "$out/failover.json" \
    > "$out/failover.log" 2>&1 &
sim=$!
pids+=("$sim")
sleep 6
kill -KILL "${members[1]}"
killed_ms=$(now_ms)
psql_fo -c "CREATE TABLE victim AS SELECT id FROM requests WHERE owner = 'fo-gw2' AND state = 'queued'" >/dev/null
wait "$sim" || true
for _ in $(seq 600); do
    [ "$(psql_fo -c "SELECT COUNT(*) FROM requests WHERE state = 'queued'")" = 0 ] && break
    sleep 0.1
done
psql_fo -F ' ' -c "SELECT COUNT(*), MIN(r.finished_ms) - $killed_ms, MAX(r.finished_ms) - $killed_ms,
        COUNT(*) FILTER (WHERE r.state = 'queued'), MAX(r.executions)
    FROM victim v JOIN requests r ON r.id = v.id" | {
    read -r n first last left runs
    echo "killed gateway's queued requests: $n; the first finished elsewhere ${first:-?} ms after the kill, the last ${last:-?} ms; still queued: $left; most runs of one request: ${runs:-0}"
}
summary "failover" "$out/failover.json"
for pid in "${members[0]}" "${members[2]}"; do kill "$pid"; done

fi

echo "reports in $out"
