#!/usr/bin/env bash
# Scaling out on one machine: PostgreSQL, Mosquitto and three gateways acting as one.
# Debian packages: postgresql, mosquitto. Everything lives in $DIR (default ./scale-out) and
# listens on loopback only; Ctrl-C stops it all. Devices connect to Mosquitto (MQTT_PORT).
#   config/examples/scale-out.sh            # then: device-sim run --broker 127.0.0.1:11883 ...
set -euo pipefail
DIR=${DIR:-$PWD/scale-out}
PG_PORT=${PG_PORT:-55432}
MQTT_PORT=${MQTT_PORT:-11883}
if [ -z "${GATEWAY:-}" ]; then  # the release build when there is one
  for GATEWAY in target/release/gateway target/debug/gateway; do [ -x "$GATEWAY" ] && break; done
fi
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$GATEWAY" ] || { echo "build the gateway first: cargo build --release -p gateway" >&2; exit 1; }
mkdir -p "$DIR"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
gateways=()
broker=
# In flow order: the gateways drain (their last status goes out through the broker), then the
# broker stops, then the database.
cleanup() {
  for pid in "${gateways[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${gateways[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$broker" ] && { kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; }
  as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg" -m fast -w stop >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

# 1. PostgreSQL (the server refuses root: it runs as user postgres, in a dir it owns).
if [ ! -d "$DIR/pg" ]; then
  [ "$(id -u)" = 0 ] && chown postgres: "$DIR"
  as_pg "$PG_BIN/initdb" -D "$DIR/pg" -U postgres -A trust -E UTF8 >/dev/null
fi
as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg" -l "$DIR/pg.log" -w \
  -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$DIR" start >/dev/null
"$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname = 'roost'" | grep -q 1 ||
  "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres roost

# 2. Mosquitto, an MQTT 5 broker with shared subscriptions.
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n' "$MQTT_PORT" \
  > "$DIR/mosquitto.conf"
# In a session of its own, so that Ctrl-C reaches it only after the gateways drained.
setsid /usr/sbin/mosquitto -c "$DIR/mosquitto.conf" > "$DIR/mosquitto.log" 2>&1 &
broker=$!

# 3. Three gateways: same share group, same database, their own id and HTTP port.
for n in 1 2 3; do
  cat > "$DIR/gw-$n.toml" <<TOML
[gateway]
id = "gw-$n"
data_dir = "$DIR/gw-$n"
[broker]
mode = "external"
url = "mqtt://127.0.0.1:$MQTT_PORT"
share_group = "roost"
[http]
listen = "127.0.0.1:$((18080 + n))"
[store]
engine = "postgres"
url = "postgres://postgres@127.0.0.1:$PG_PORT/roost"
lease_ms = 5000
TOML
  "$GATEWAY" run --config "$DIR/gw-$n.toml" > "$DIR/gw-$n.out" 2> "$DIR/gw-$n.log" &
  gateways+=($!)
done
echo "devices: mqtt://127.0.0.1:$MQTT_PORT  operators: http://127.0.0.1:18081..18083/api/status"
echo "logs and data in $DIR; Ctrl-C stops everything"
wait
