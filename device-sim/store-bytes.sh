#!/usr/bin/env bash
# Bytes on disk per request: runs the gateway on a fresh data dir, sends N acked `stats`
# requests of 16 values with device-sim, stops the gateway cleanly (SIGTERM: the WAL is
# checkpointed into roost.db), and divides the store's growth (roost.db*, the disk reserve not
# counted) by the requests answered. Bytes on disk do not depend on the build profile, so a debug
# build will do.
#
# Usage, from the workspace root:
#   cargo build -p gateway -p device-sim
#   BIN=target/debug device-sim/store-bytes.sh [DEVICES] [REQUESTS_PER_DEVICE] [EXTRA_TOML]
# Every process it starts is stopped by its own PID.
set -euo pipefail

devices=${1:-20}
per_device=${2:-500}
extra=${3:-}
bin=${BIN:-target/release}
out=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$out"; }
trap cleanup EXIT

start() {
    printf '[gateway]\nid = "bytes"\ndata_dir = "%s/data"\n[broker]\nlisten = "127.0.0.1:0"\n[http]\nlisten = ""\n%b\n' \
        "$out" "$extra" > "$out/gateway.toml"
    "$bin/gateway" run --config "$out/gateway.toml" > "$out/stdout" 2> "$out/stderr" &
    pid=$!
    for _ in $(seq 300); do
        grep -q 'listening' "$out/stdout" 2>/dev/null && break
        sleep 0.1
    done
    addr=$(grep -o 'mqtt=[0-9.:]*' "$out/stdout" | cut -d= -f2)
}

stop() {
    kill -TERM "$pid"
    wait "$pid" || true
    pid=
}

start
stop
empty=$(du -cb "$out"/data/roost.db* | tail -1 | cut -f1)
start
"$bin/device-sim" run --broker "$addr" --devices "$devices" --requests "$per_device" \
    --inflight 4 --interval 0ms --values 16 --duration 600s --quiet --json "$out/report.json" > /dev/null
stop
full=$(du -cb "$out"/data/roost.db* | tail -1 | cut -f1)
python3 - "$out/report.json" "$empty" "$full" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
empty, full = int(sys.argv[2]), int(sys.argv[3])
answered = report["replies_ok"]
print(f"requests {report['requests']}, answered {answered}, lost {report['lost']}; "
      f"store {empty} -> {full} bytes: {(full - empty) / max(answered, 1):.0f} bytes per request")
PY
