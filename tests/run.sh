#!/usr/bin/env bash
# Runs the whole test suite. Installs what the interop tests drive, if missing: Debian's
# mosquitto (the broker, for external-broker mode) and mosquitto-clients (mosquitto_rr,
# mosquitto_pub, mosquitto_sub), Debian's postgresql (the server the store's PostgreSQL engine is
# tested against; tests start throwaway clusters as user postgres), chromium and chromium-driver
# (the dashboard's browser test), prometheus (its promtool checks the shipped rules and a live
# scrape), Python's paho-mqtt, and for the device-client matrix (tests/tests/device_clients.rs)
# Debian's libpaho-mqtt-dev (Eclipse Paho C) and a C compiler, nodejs and npm, and MQTT.js from
# tests/clients/mqttjs/package-lock.json (npm ci), and iproute2 (`ip netns`: a test cuts
# PostgreSQL's link in a network namespace of its own).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "tests/run.sh: need root (or sudo) to install: $*" >&2; exit 1; fi; }

if ! command -v mosquitto_rr >/dev/null 2>&1 || ! [ -x /usr/sbin/mosquitto ]; then
  echo "tests/run.sh: installing mosquitto and mosquitto-clients" >&2
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    mosquitto mosquitto-clients >/dev/null
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "tests/run.sh: installing postgresql" >&2
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql >/dev/null
fi
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -f /usr/include/MQTTClient.h ] || missing+=(libpaho-mqtt-dev)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]}" >&2
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
if ! [ -d tests/clients/mqttjs/node_modules/mqtt ]; then
  echo "tests/run.sh: installing MQTT.js (npm ci)" >&2
  (cd tests/clients/mqttjs && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
if ! python3 -c 'import paho.mqtt' >/dev/null 2>&1; then
  echo "tests/run.sh: installing paho-mqtt" >&2
  python3 -m pip install -q 'paho-mqtt>=2,<3' >/dev/null
fi

cargo test --workspace "$@"
# The guarantee tests again with every gateway's state in PostgreSQL (a throwaway cluster each):
# the modules under tests/tests/both_engines/. `--workspace` keeps the first pass's features, so
# nothing is built twice (`-p roost-tests` alone would rebuild every crate for a second binary).
# ARGS go to both passes; a test-name filter among them widens this pass (libtest runs what
# matches any filter): for one module on PostgreSQL, see the README's command.
ROOST_TEST_ENGINE=postgres exec cargo test --workspace --test e2e "$@" -- both_engines::
