#!/usr/bin/env bash
# What pruning costs a cluster: three gateways (external mode, one share group) on one
# throwaway PostgreSQL with `pg_stat_statements`, and Mosquitto, all on loopback, no traffic.
# `telemetry_counts` is seeded with DEVICES devices (an intake and a prune row per gateway each),
# so each prune's telemetry-cap listing reads what a fleet of that size costs it. After SECONDS
# (from a statistics reset), prints that listing's calls, total and mean ms, then the time of
# every statement together.
#
# Usage, from the workspace root, as root (the server runs as user postgres) with Debian's
# postgresql and mosquitto:
#   cargo build --release -p gateway
#   device-sim/prune_bench.sh [SECONDS] [DEVICES]       default 60 10000
set -euo pipefail
SECS=${1:-60}
DEVICES=${2:-10000}
BIN=${GATEWAY:-target/release/gateway}
[ -x "$BIN" ] || { echo "build the gateway first: cargo build --release -p gateway" >&2; exit 1; }
D=$(mktemp -d /tmp/prune-bench.XXXX)
chown postgres: "$D"
PGB=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGP=$(free_port)
MP=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  runuser -u postgres -- "$PGB/pg_ctl" -D "$D/pg" -m fast -w stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

runuser -u postgres -- "$PGB/initdb" -D "$D/pg" -U postgres -A trust >/dev/null
runuser -u postgres -- "$PGB/pg_ctl" -D "$D/pg" -l "$D/pg.log" -w -o "-p $PGP \
  -c listen_addresses=127.0.0.1 -c unix_socket_directories=$D \
  -c shared_preload_libraries=pg_stat_statements" start >/dev/null
psql() { "$PGB/psql" -h 127.0.0.1 -p "$PGP" -U postgres -qAt "$@"; }
psql -c "CREATE DATABASE roost"
psql -d roost -c "CREATE EXTENSION pg_stat_statements"
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$MP" > "$D/mosquitto.conf"
/usr/sbin/mosquitto -c "$D/mosquitto.conf" > "$D/mosquitto.log" 2>&1 &
pids+=($!)

gateway() {
  cat > "$D/gw-$1.toml" <<TOML
[gateway]
id = "gw-$1"
data_dir = "$D/gw-$1"
[broker]
mode = "external"
url = "mqtt://127.0.0.1:$MP"
share_group = "roost"
[http]
listen = ""
[store]
engine = "postgres"
url = "postgres://postgres@127.0.0.1:$PGP/roost"
TOML
  "$BIN" run --config "$D/gw-$1.toml" > /dev/null 2> "$D/gw-$1.log" &
  pids+=($!)
}
gateway 1
for _ in $(seq 1 100); do grep -q serving "$D/gw-1.log" && break; sleep 0.1; done
psql -d roost -c "INSERT INTO telemetry_counts (device, gateway, pruned, n)
  SELECT 'd' || i, 'gw-' || g, p, 10 FROM generate_series(1, $DEVICES) i,
    generate_series(1, 3) g, (VALUES (false), (true)) v(p)"
gateway 2
gateway 3
for n in 2 3; do
  for _ in $(seq 1 100); do grep -q serving "$D/gw-$n.log" && break; sleep 0.1; done
done
psql -d roost -c "SELECT pg_stat_statements_reset()" >/dev/null
sleep "$SECS"
echo "telemetry cap listing: calls | total ms | mean ms"
psql -d roost -c "SELECT calls, round(total_exec_time), round(mean_exec_time::numeric, 1)
  FROM pg_stat_statements WHERE query LIKE 'SELECT device, SUM(n)%'"
echo -n "every statement, ms: "
psql -d roost -c "SELECT round(sum(total_exec_time)) FROM pg_stat_statements"
