#!/usr/bin/env bash
# Request-reply benchmark: device-sim `load` against the echo yardstick (the gateway's front door
# with a trivial responder behind it) and against the real gateway, on loopback.
#
# Usage, from the workspace root:
#   cargo build --release -p gateway -p device-sim
#   device-sim/bench.sh [DURATION] [SHAPES...]       e.g. device-sim/bench.sh 10s 10x4 100x4
#
# Prints one line per run and leaves the JSON reports in $OUT (default: a temp dir). The "server"
# figures are the echo process (front door + responder on its inbox, as the gateway's service) or
# the gateway process.
# Every process it starts is stopped by its own PID.
set -euo pipefail

duration=${1:-10s}
shift || true
shapes=("$@")
[ ${#shapes[@]} -eq 0 ] && shapes=(10x4 100x4)
bin=${BIN:-target/release}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# Waits (at most 30 s) for a line matching $2 in file $1 and prints its mqtt= address.
wait_addr() {
    for _ in $(seq 300); do
        if grep -q "$2" "$1" 2>/dev/null; then
            grep -o 'mqtt=[0-9.:]*' "$1" | head -1 | cut -d= -f2
            return 0
        fi
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1" >&2
    return 1
}

summary() {
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s, l = r["settings"], r["latency_ms"]
rss, cpu, sim = r.get("gateway_peak_rss_kib"), r.get("gateway_cpu_us_per_request"), r.get("sim_cpu_s")
extra = f"  server: peak RSS {rss/1024:.0f} MiB, {cpu:.0f} us CPU/req" if rss else ""
extra += f"  device-sim CPU {sim:.1f} s" if sim is not None else ""
print(f'{s["devices"]}x{s["inflight"]}: {r["throughput_rps"]:.0f} req/s  p50 {l["p50"]:.2f} ms  '
      f'p99 {l["p99"]:.2f} ms  max {l["max"]:.1f} ms  ok {r["replies_ok"]}  err {r["replies_error"]}  '
      f'lost {r["lost"]}  dup {r["duplicates"]}  mismatched {r["mismatched"]}{extra}')
PY
}

load() { # $1 = label, $2 = broker, $3 = shape, rest = extra flags
    local label=$1 broker=$2 shape=$3
    shift 3
    local devices=${shape%x*} inflight=${shape#*x}
    local json="$out/$label-$shape.json"
    "$bin/device-sim" load --broker "$broker" --devices "$devices" --inflight "$inflight" --closed \
        --duration "$duration" --quiet --json "$json" "$@" > "${json%.json}.log" 2>&1 || true
    printf '%-8s ' "$label"
    summary "$json"
}

# 1. The yardstick: echo on the gateway's own front door, nothing behind it but a responder.
"$bin/gateway" echo --listen 127.0.0.1:0 > "$out/echo.log" 2>&1 &
pids+=($!)
echo_pid=${pids[0]}
echo_addr=$(wait_addr "$out/echo.log" "echo listening")
for shape in "${shapes[@]}"; do
    load echo "$echo_addr" "$shape" --expect-202 false --gateway-pid "$echo_pid"
done
kill "${pids[0]}"

# 2. The real gateway: intake, SQLite (synchronous = full), workers, outbox.
mkdir -p "$out/gw"
cat > "$out/gw/gateway.toml" <<TOML
[gateway]
data_dir = "$out/gw/data"
[broker]
listen = "127.0.0.1:0"
[http]
listen = ""
TOML
"$bin/gateway" run --config "$out/gw/gateway.toml" > "$out/gw/out.log" 2> "$out/gw/err.log" &
gw_pid=$!
pids+=("$gw_pid")
gw_addr=$(wait_addr "$out/gw/out.log" "listening")
for shape in "${shapes[@]}"; do load gateway "$gw_addr" "$shape" --gateway-pid "$gw_pid"; done

# 3. The table: gateway / echo per shape, and the store's bytes on disk per request (database +
# WAL after every run above, over every request the gateway stored).
python3 - "$out" "$(du -cb "$out"/gw/data/roost.db* | tail -1 | cut -f1)" "${shapes[@]}" <<'PY'
import json, sys
out, disk, shapes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print(f"\n{'shape':>7}  {'echo req/s':>10}  {'gateway req/s':>13}  {'gateway/echo':>12}  {'gw p50 ms':>9}  {'gw p99 ms':>9}  {'gw RSS MiB':>10}")
stored = 0
for shape in shapes:
    e = json.load(open(f"{out}/echo-{shape}.json"))
    g = json.load(open(f"{out}/gateway-{shape}.json"))
    stored += g["requests"]
    rss = (g.get("gateway_peak_rss_kib") or 0) / 1024
    print(f"{shape:>7}  {e['throughput_rps']:>10.0f}  {g['throughput_rps']:>13.0f}  {g['throughput_rps'] / e['throughput_rps']:>11.0%}  "
          f"{g['latency_ms']['p50']:>9.2f}  {g['latency_ms']['p99']:>9.2f}  {rss:>10.0f}")
print(f"store on disk: {disk / 1e6:.1f} MB for {stored} requests = {disk / max(stored, 1):.0f} bytes per request")
PY
echo "reports in $out"
