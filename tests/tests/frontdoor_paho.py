"""Drives the front door with Eclipse Paho (MQTT 3.1.1 and 5, Keep Alive 0 included).

Usage: frontdoor_paho.py PORT. Prints one JSON object per client: CONNACK code, SUBACK codes
for [own reply filter, "#"], the topic a reply arrived on, and the code of a denied publish."""

import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PORT = int(sys.argv[1])
VALUES = b"\xa1\x66values\x83\x01\x02\x03"  # {"values": [1, 2, 3]}
ENVELOPE = b"\xa2\x64corr\x41\x01\x64args" + VALUES  # {"corr": h'01', "args": ...}


def run(version, client_id, keepalive):
    done = threading.Event()
    got = {"client": client_id}
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version
    )

    def on_connect(client, userdata, flags, reason, properties):
        got["connack"] = reason.value
        client.subscribe([(f"devices/{client_id}/reply/#", 1), (f"devices/{client_id}/reply", 1), ("#", 1)])

    def on_subscribe(client, userdata, mid, reasons, properties):
        got["suback"] = [r.value for r in reasons]
        topic = f"devices/{client_id}/req/stats"
        if version == mqtt.MQTTv5:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = b"paho-1"
            client.publish(topic, VALUES, qos=1, properties=props)
            denied = client.publish("devices/someone-else/req/stats", VALUES, qos=1, properties=props)
            got["denied_mid"] = denied.mid
        else:
            client.publish(topic, ENVELOPE, qos=1)

    def on_publish(client, userdata, mid, reason, properties):
        if mid == got.get("denied_mid"):
            got["denied_publish"] = reason.value

    def on_message(client, userdata, message):
        got.setdefault("reply_topic", message.topic)
        if version != mqtt.MQTTv5 or "denied_publish" in got:
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    client.connect("127.0.0.1", PORT, keepalive=keepalive)
    client.loop_start()
    done.wait(20)
    client.disconnect()
    client.loop_stop()
    print(json.dumps(got), flush=True)


run(mqtt.MQTTv311, "paho-v4", 30)
run(mqtt.MQTTv5, "paho-v5", 30)
run(mqtt.MQTTv5, "paho-ka0", 0)
