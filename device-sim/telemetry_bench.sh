#!/usr/bin/env bash
# Telemetry retention under a fleet at its cap, on loopback: one gateway (embedded broker) whose
# store already holds DEVICES x PER recent readings, every device exactly at
# `max_telemetry_rows_per_device = PER`. Then, for 40 s, the same devices wake every second and
# upload telemetry (`device-sim run --telemetry-every 1`: two readings a wake, so each prune
# finds every device about twenty over), while `device-sim load` measures the 202 latency.
# Prints each prune the gateway logged (readings deleted, elapsed_ms) and the load's latency.
#
# Usage, from the workspace root (python3 for the SQLite fill; Debian's postgresql for
# ENGINE=postgres; run as root or as a user who may run the PostgreSQL server):
#   cargo build --release -p gateway -p device-sim
#   device-sim/telemetry_bench.sh [DEVICES] [PER]       default 100 20000 (2 million readings)
#   ENGINE=postgres device-sim/telemetry_bench.sh       the same on a throwaway PostgreSQL
#   RATE=1500 device-sim/telemetry_bench.sh             the load's requests/s (default 2000 on
#                                                       SQLite, 1000 on PostgreSQL)
#
# Every process it starts is stopped by its own PID; everything lives in $OUT (a temp dir).
set -euo pipefail

devices=${1:-100}
per=${2:-20000}
engine=${ENGINE:-sqlite}
bin=${BIN:-target/release}
out=${OUT:-$(mktemp -d)}
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
mkdir -p "$out"
pids=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ "$engine" = postgres ]; then
        as_pg "$pg_bin/pg_ctl" -D "$out/pg" -m fast -w stop >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

store=""
if [ "$engine" = postgres ]; then
    pg_port=$(free_port)
    [ "$(id -u)" = 0 ] && chown postgres: "$out"
    as_pg "$pg_bin/initdb" -D "$out/pg" -U postgres -A trust -E UTF8 >/dev/null
    as_pg "$pg_bin/pg_ctl" -D "$out/pg" -l "$out/pg.log" -w \
        -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$out" start >/dev/null
    "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres roost
    store="[store]\nengine = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:$pg_port/roost\"\n"
fi
mqtt_port=$(free_port)
printf "[gateway]\ndata_dir = \"%s/data\"\n[broker]\nlisten = \"127.0.0.1:%s\"\n[http]\nlisten = \"\"\n[limits]\nmax_telemetry_rows_per_device = %s\n%b" \
    "$out" "$mqtt_port" "$per" "$store" > "$out/gateway.toml"

# Starts the gateway; sets $gw_pid once it serves.
start() { # $1 = log file
    "$bin/gateway" run --config "$out/gateway.toml" > "$1" 2>&1 &
    gw_pid=$!
    pids+=("$gw_pid")
    for _ in $(seq 600); do grep -q "serving" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "the gateway did not start: $(cat "$1")" >&2
    return 1
}

# A first start creates the store; the readings go in while the gateway is stopped.
start "$out/first.log"
kill "$gw_pid"; wait "$gw_pid" || true
echo "== filling: $devices devices x $per readings ($engine)"
if [ "$engine" = postgres ]; then
    psql -h 127.0.0.1 -p "$pg_port" -U postgres -d roost -qAt -c "
        INSERT INTO telemetry (device, metric, ts, value)
        SELECT 'tel-' || d, 'temp', (extract(epoch from now()) * 1000)::bigint - 3600000 + i * 100 + d, 1.0
        FROM generate_series(0, $per - 1) i, generate_series(0, $devices - 1) d;
        DO \$\$ BEGIN IF to_regclass('telemetry_counts') IS NOT NULL THEN  -- (builds before it)
            INSERT INTO telemetry_counts SELECT device, '', false, COUNT(*) FROM telemetry GROUP BY device;
        END IF; END \$\$;" \
        -c "VACUUM ANALYZE telemetry"
else
    python3 - "$out/data/roost.db" "$devices" "$per" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
devices, per = int(sys.argv[2]), int(sys.argv[3])
now = int(time.time() * 1000)
db.execute("BEGIN")
rows = ((f"tel-{d}", "temp", now - 3_600_000 + i * 100 + d, 1.0) for i in range(per) for d in range(devices))
db.executemany("INSERT INTO telemetry (device, metric, ts, value) VALUES (?,?,?,?)", rows)
if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'telemetry_counts'").fetchone():  # (builds before it)
    db.execute("INSERT INTO telemetry_counts SELECT device, COUNT(*) FROM telemetry GROUP BY device")
db.execute("COMMIT")
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
PY
fi

start "$out/gateway.log"
"$bin/device-sim" run --broker "127.0.0.1:$mqtt_port" --devices "$devices" --id-prefix tel \
    --wake-every 1s --listen 200ms --telemetry-every 1 --duration 45s --quiet \
    --json "$out/fleet.json" > "$out/fleet.log" 2>&1 &
fleet=$!
pids+=("$fleet")
default_rate=2000
[ "$engine" = postgres ] && default_rate=1000
"$bin/device-sim" load --broker "127.0.0.1:$mqtt_port" --devices 50 --rate "${RATE:-$default_rate}" \
    --duration 40s --quiet --json "$out/load.json" > "$out/load.log" 2>&1 || true
wait "$fleet" || true
kill "$gw_pid"; wait "$gw_pid" || true

echo "== prunes (readings deleted, ms):"
grep -o 'readings=[0-9]* elapsed_ms=[0-9]*' "$out/gateway.log" | tr '\n' ' '; echo
python3 - "$out/load.json" "$out/fleet.json" <<'PY'
import json, sys
load, fleet = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
l = load["accept_latency_ms"]
print(f'== load: {load["throughput_rps"]:.0f} req/s, 202 p50 {l["p50"]:.1f} ms, p99 {l["p99"]:.1f} ms, '
      f'max {l["max"]:.1f} ms, lost {load["lost"]}')
print(f'== fleet: telemetry uploads {fleet.get("counts", fleet).get("telemetry", "?")}, lost {fleet["lost"]}')
PY
echo "reports in $out"
