#!/usr/bin/env bash
# Runs the whole test suite. Installs what the interop tests drive, if missing: Debian's
# mosquitto (the broker, for external-broker mode) and mosquitto-clients (mosquitto_rr,
# mosquitto_pub, mosquitto_sub), Python's paho-mqtt, and for the device-client matrix
# (tests/tests/device_clients.rs) Debian's libpaho-mqtt-dev (Eclipse Paho C) and a C compiler,
# nodejs and npm, and MQTT.js from tests/clients/mqttjs/package-lock.json (npm ci).
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
apt_missing=()
[ -f /usr/include/MQTTClient.h ] || apt_missing+=(libpaho-mqtt-dev)
command -v cc >/dev/null 2>&1 || apt_missing+=(gcc libc6-dev)
command -v node >/dev/null 2>&1 || apt_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_missing+=(npm)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${apt_missing[*]}" >&2
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${apt_missing[@]}" >/dev/null
fi
if ! [ -d tests/clients/mqttjs/node_modules/mqtt ]; then
  echo "tests/run.sh: installing MQTT.js (npm ci)" >&2
  (cd tests/clients/mqttjs && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
if ! python3 -c 'import paho.mqtt' >/dev/null 2>&1; then
  echo "tests/run.sh: installing paho-mqtt" >&2
  python3 -m pip install -q 'paho-mqtt>=2,<3' >/dev/null
fi

exec cargo test --workspace "$@"
