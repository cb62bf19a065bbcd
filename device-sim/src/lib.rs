//! device-sim: simulates fleets of sleepy MQTT devices against a Roost gateway.
