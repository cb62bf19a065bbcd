#!/usr/bin/env bash
# Login-flood benchmark: a small fleet's request → reply latency alone, then the same fleet while
# `device-sim flood` sends wrong operator passwords, against one release gateway on loopback.
#
# Usage, from the workspace root:
#   cargo build --release -p gateway -p device-sim
#   device-sim/flood_bench.sh [DURATION] [CONNECTIONS] [SOURCES]     e.g. device-sim/flood_bench.sh 15s 32 1
#
# The fleet: 20 connected devices, one `stats` request each every 100 ms (~200 req/s), every reply
# verified. The flood: CONNECTIONS loops over SOURCES loopback addresses (127.0.0.2...), each
# connect → CONNECT (operator "admin", wrong password) → answer → close, for DURATION.
# Extra gateway [limits] lines can be passed in $LIMITS (e.g. LIMITS='max_auth_failures = 1000').
# Prints one line per run, the gateway's front-door counters and CPU, and leaves everything in
# $OUT (default: a temp dir). Every process it starts is stopped by its own PID.
set -euo pipefail

duration=${1:-15s}
connections=${2:-32}
sources=${3:-1}
bin=${BIN:-target/release}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

cat > "$out/gateway.toml" <<TOML
[gateway]
data_dir = "$out/data"
[broker]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[limits]
${LIMITS:-}
TOML
echo "correct-horse-battery" | "$bin/gateway" operator add admin --config "$out/gateway.toml" > /dev/null
"$bin/gateway" run --config "$out/gateway.toml" > "$out/out.log" 2> "$out/err.log" &
gw_pid=$!
pids+=("$gw_pid")
for _ in $(seq 300); do grep -q listening "$out/out.log" 2>/dev/null && break; sleep 0.1; done
addr=$(grep -o 'mqtt=[0-9.:]*' "$out/out.log" | head -1 | cut -d= -f2)
http=$(grep -o 'http=[0-9.:]*' "$out/out.log" | head -1 | cut -d= -f2)

cpu_s() { awk '{print ($14 + $15) / 100}' "/proc/$gw_pid/stat"; }

fleet() { # $1 = label
    "$bin/device-sim" run --broker "$addr" --devices 20 --interval 100ms --duration "$duration" \
        --quiet --json "$out/fleet-$1.json" > "$out/fleet-$1.log" 2>&1 || true
}

summary() { # $1 = label, $2 = gateway CPU seconds during the run
    python3 - "$out/fleet-$1.json" "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_ms"]
print(f'{sys.argv[2]:<6} {r["throughput_rps"]:.0f} req/s  p50 {l["p50"]:.2f} ms  p90 {l["p90"]:.2f} ms  '
      f'p99 {l["p99"]:.2f} ms  max {l["max"]:.1f} ms  ok {r["replies_ok"]}  lost {r["lost"]}  '
      f'mismatched {r["mismatched"]}  gateway CPU {float(sys.argv[3]):.1f} s')
PY
}

before=$(cpu_s); fleet quiet; after=$(cpu_s)
summary quiet "$(awk "BEGIN{print $after - $before}")"

before=$(cpu_s)
"$bin/device-sim" flood --broker "$addr" --user admin --connections "$connections" \
    --sources "$sources" --duration "$duration" --json "$out/flood.json" 2> "$out/flood.log" &
flood_pid=$!
pids+=("$flood_pid")
fleet flood
wait "$flood_pid" || true
after=$(cpu_s)
summary flood "$(awk "BEGIN{print $after - $before}")"
cat "$out/flood.log"
curl -s "http://$http/metrics" | grep -E '^roost_(frontdoor_(auth|throttl|connections_total)|auth)' || true
echo "reports in $out"
