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
#   GATEWAYS="1 3" PARTS=2 device-sim/store_bench.sh     part 2 with one and three gateways only
#   LOOP="--rate 2000" PARTS=2 device-sim/store_bench.sh  offered load instead of closed loops
#   WAITS=1 PARTS=2 device-sim/store_bench.sh           and what the server's backends wait on
#   PEER_ROW=1 GATEWAYS=1 PARTS=2 device-sim/store_bench.sh  one gateway that sees a (fake) peer alive
#   MEMBER_TOML='[limits]\nmax_pending_per_device = 4'  extra TOML for part 2's gateways
#   MEMBER_GATEWAY='workers = 1'                     extra [gateway] keys for part 2's gateways
#   WARMUP=0 device-sim/store_bench.sh                  no 5 s warm-up (with an ANALYZE under
#                                                       load) before each measured run
#   PG_OPTIONS="-c shared_preload_libraries=auto_explain -c auto_explain.log_min_duration=0"
#                                                       extra PostgreSQL server settings
#   PG_TLS=1 device-sim/store_bench.sh                  the gateways reach PostgreSQL over TLS
#                                                       (sslmode=require; a certificate made here)
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

# CPU seconds (user and system, all threads) used so far by the processes whose PIDs are given.
cpu_of() {
    local pid ticks=0 stat
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) }   # the fields after the command name; utime and stime are 12 and 13
        read -r -a f <<< "$stat"
        ticks=$((ticks + f[11] + f[12]))
    done
    echo "$ticks $(getconf CLK_TCK)" | awk '{print $1 / $2}'
}

# CPU seconds the whole machine has been busy (all but idle and I/O wait).
machine_cpu() {
    awk '/^cpu / {print ($2 + $3 + $4 + $7 + $8 + $9) / '"$(getconf CLK_TCK)"'}' /proc/stat
}
# The machine's context switches and interrupts so far, "switches interrupts".
machine_switches() { awk '/^ctxt/ {c = $2} /^intr/ {i = $2} END {print c, i}' /proc/stat; }

# CPU seconds used so far by the PostgreSQL server's processes (its postmaster and children).
pg_cpu() {
    local postmaster
    postmaster=$(head -1 "$out/pg/postmaster.pid")
    # shellcheck disable=SC2046
    cpu_of "$postmaster" $(pgrep -P "$postmaster" || true)
}

# The same load for 5 s before each measured run, unmeasured, with an ANALYZE of PostgreSQL
# database $2 (if any) 4 s into it, as autovacuum would run it under load. A new table's first
# statistics come from autovacuum within a minute of its growth; until then the plans cached
# for the grouped statements were made for a table of a few hundred rows (sequential scans,
# kept as the table grew): a 10 s run on a fresh database would measure that minute, not a
# running cluster. WARMUP=0 leaves the warm-up out.
warm() { # $1 = broker address, $2 = database (empty: SQLite)
    [ "${WARMUP:-}" = 0 ] && return 0
    "$bin/device-sim" load --broker "$1" --devices "$devices" --inflight "$inflight" --closed \
        --duration 5s --quiet > /dev/null 2>&1 &
    local sim=$!
    if [ -n "$2" ]; then
        sleep 4
        psql -h 127.0.0.1 -p "$pg_port" -U postgres -d "$2" -qc "ANALYZE"
    fi
    wait "$sim" || true
}

load() { # $1 = label, $2 = broker address, rest: extra device-sim flags
    local label=$1 broker=$2
    shift 2
    local before after
    before=$(pg_cpu)
    # shellcheck disable=SC2086
    "$bin/device-sim" load --broker "$broker" --devices "$devices" --inflight "$inflight" ${LOOP:---closed} \
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
pg_query=""
if [ -n "${PG_TLS:-}" ]; then
    as_pg openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=127.0.0.1 -keyout "$out/pg/server.key" -out "$out/pg/server.crt" 2>/dev/null
    PG_OPTIONS="-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key ${PG_OPTIONS:-}"
    pg_query="?sslmode=require"
fi
as_pg "$pg_bin/pg_ctl" -D "$out/pg" -l "$out/pg.log" -w \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$out ${STATEMENTS:+-c shared_preload_libraries=pg_stat_statements} ${PG_OPTIONS:-}" start >/dev/null
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
        SELECT calls, round(total_exec_time::numeric) AS ms, rows, shared_blks_hit AS pages,
               left(regexp_replace(query, '\s+', ' ', 'g'), 90)
        FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$1')
        ORDER BY total_exec_time DESC LIMIT ${STATEMENTS}"
    psql -h 127.0.0.1 -p "$pg_port" -U postgres -d "$1" -At -F ' | ' -c "
        SELECT relname, 'seq scans', seq_scan, 'rows read by them', seq_tup_read,
               'index scans', idx_scan, 'updates', n_tup_upd, 'heap-only', n_tup_hot_upd
        FROM pg_stat_user_tables ORDER BY seq_tup_read DESC LIMIT 4"
}

# With WAITS=1: what the server's backends of database $1 are doing, sampled every 20 ms
# (pg_stat_activity: running, or the wait event they wait on), until killed.
waits() {
    printf 'SELECT coalesce(wait_event_type || \x27:\x27 || wait_event, \x27running\x27), count(*)
        FROM pg_stat_activity WHERE datname = \x27%s\x27 AND state = \x27active\x27
        AND pid <> pg_backend_pid() GROUP BY 1 UNION ALL SELECT \x27-\x27, 0 \\watch 0.02\n' "$1" |
        psql -h 127.0.0.1 -p "$pg_port" -U postgres -d "$1" -At -F ' ' > "$out/waits.txt" 2>/dev/null
}
# Mean number of backends in each state over the samples of waits().
waits_summary() {
    python3 - "$out/waits.txt" <<'PY'
import collections, sys
lines = open(sys.argv[1]).read().split("\n")
samples = max(lines.count("- 0"), 1)
counts = collections.Counter()
for l in lines:
    if " " in l and l != "- 0":
        state, n = l.rsplit(" ", 1)
        if n.isdigit():
            counts[state] += int(n)
print(f'{"":<24} backends per sample ({samples}): ' +
      ", ".join(f"{s} {c / samples:.2f}" for s, c in counts.most_common(8)))
PY
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
warm "$(address sqlite)" ""
load "sqlite" "$(address sqlite)" --gateway-pid "$gw_pid"
kill "$gw_pid"
createdb single
gateway postgres "[broker]\nlisten = \"127.0.0.1:0\"\n[store]\nengine = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:$pg_port/single$pg_query\""
warm "$(address postgres)" single
[ -n "${STATEMENTS:-}" ] && psql -h 127.0.0.1 -p "$pg_port" -U postgres -d single -qAtc "SELECT pg_stat_statements_reset(); SELECT pg_stat_reset()" > /dev/null
load "postgres" "$(address postgres)" --gateway-pid "$gw_pid"
statements single
kill "$gw_pid"
fi

mqtt_port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\n' \
    "$mqtt_port" > "$out/mosquitto.conf"
/usr/sbin/mosquitto -c "$out/mosquitto.conf" > "$out/mosquitto.log" 2>&1 &
mosquitto_pid=$!
pids+=("$mosquitto_pid")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && break; sleep 0.1; done
member() { # $1 = name, $2 = database, $3 = lease_ms
    gateway "$1" "[broker]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:$mqtt_port\"\nshare_group = \"roost\"\n[store]\nengine = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:$pg_port/$2$pg_query\"\nlease_ms = $3\n${MEMBER_TOML:-}" "${MEMBER_GATEWAY:-}"
}
if [[ $parts == *2* ]]; then
echo "== 2. N gateways behind Mosquitto on one PostgreSQL ($shape, $duration)"
for n in ${GATEWAYS:-1 2 3}; do
    createdb "cluster$n"
    members=()
    for m in $(seq "$n"); do member "c$n-gw$m" "cluster$n" 10000; members+=("$gw_pid"); done
    # PEER_ROW=1: a peer gateway's row, alive for ever and owning nothing, so that part 2's
    # gateways run as they do with others alive (BENCHMARKS.md, session 18's control 2).
    [ -n "${PEER_ROW:-}" ] && psql -h 127.0.0.1 -p "$pg_port" -U postgres -d "cluster$n" -qAtc \
        "INSERT INTO gateways (id, started_ms, seen_ms, lease_until_ms) VALUES ('zz-peer', 0, 0, 9000000000000)"
    warm "127.0.0.1:$mqtt_port" "cluster$n"
    [ -n "${STATEMENTS:-}" ] && psql -h 127.0.0.1 -p "$pg_port" -U postgres -d "cluster$n" -qAtc "SELECT pg_stat_statements_reset(); SELECT pg_stat_reset()" > /dev/null
    before=$(cpu_of "${members[@]}"); mq_before=$(cpu_of "$mosquitto_pid"); m_before=$(machine_cpu)
    sw_before=$(machine_switches)
    [ -n "${WAITS:-}" ] && { waits "cluster$n" & sampler=$!; }
    load "$n-gateways" "127.0.0.1:$mqtt_port"
    [ -n "${WAITS:-}" ] && { kill "$sampler"; wait "$sampler" 2>/dev/null || true; waits_summary; }
    after=$(cpu_of "${members[@]}"); mq_after=$(cpu_of "$mosquitto_pid"); m_after=$(machine_cpu)
    sw_after=$(machine_switches)
    python3 - "$out/$n-gateways.json" "$before" "$after" "$mq_before" "$mq_after" "$m_before" "$m_after" \
        $sw_before $sw_after <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
gw0, gw1, mq0, mq1, m0, m1, cs0, ir0, cs1, ir1 = map(float, sys.argv[2:])
n = max(r["replies_ok"] + r["replies_error"], 1)
print(f'{"":<24} CPU per request: gateways together {(gw1 - gw0) * 1e6 / n:.0f} us, '
      f'Mosquitto {(mq1 - mq0) * 1e6 / n:.0f} us, the whole machine {(m1 - m0) * 1e6 / n:.0f} us')
print(f'{"":<24} per request, the whole machine: {(cs1 - cs0) / n:.2f} context switches, '
      f'{(ir1 - ir0) / n:.2f} interrupts')
PY
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
    gateway "fo-gw$m" "[broker]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:$mqtt_port\"\nshare_group = \"roost\"\n[store]\nengine = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:$pg_port/failover$pg_query\"\nlease_ms = 2000\n$slow_model" \
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
