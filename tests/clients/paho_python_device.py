"""A sleepy MQTT 5 device on Eclipse Paho Python (paho-mqtt 2): a persistent session, subscribe
on the first wake only, a request, sleep (disconnect), wake, take the final reply, ack it.
Driven by tests/tests/device_clients.rs; prints one JSON summary line.

usage: paho_python_device.py PORT DEVICE_ID
"""
import json
import queue
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port, device = int(sys.argv[1]), sys.argv[2]
corr = b"paho-py-1"
statuses = []


def props(**values):
    p = Properties(PacketTypes.PUBLISH if "CorrelationData" in values else PacketTypes.CONNECT)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def wake():
    connected, replies = queue.Queue(), queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, u, flags, rc, p: connected.put(flags.session_present)
    client.on_message = lambda c, u, m: replies.put(m)
    client.connect("127.0.0.1", port, keepalive=20, clean_start=False,
                   properties=props(SessionExpiryInterval=3600))
    client.loop_start()
    return client, connected.get(timeout=20), replies


def await_status(replies, want):
    while True:
        message = replies.get(timeout=20)
        if getattr(message.properties, "CorrelationData", None) != corr:
            continue
        status = dict(getattr(message.properties, "UserProperty", [])).get("status")
        statuses.append(int(status))
        if status == want:
            return


def sleep(client):
    client.disconnect()
    client.loop_stop()


# Wake 1: subscribe once, request {"values": [1, 2, 3]}, take the 202, sleep.
client, first, replies = wake()
if not first:
    client.subscribe(f"devices/{device}/reply/#", qos=1)
request = bytes([0xA1, 0x66]) + b"values" + bytes([0x83, 1, 2, 3])
client.publish(f"devices/{device}/req/stats", request, qos=1,
               properties=props(CorrelationData=corr)).wait_for_publish(20)
await_status(replies, "202")
sleep(client)
# Wake 2: the session brings the final reply; ack it (empty payload, its Correlation Data).
client, second, replies = wake()
await_status(replies, "200")
client.publish(f"devices/{device}/ack", b"", qos=1,
               properties=props(CorrelationData=corr)).wait_for_publish(20)
sleep(client)
print(json.dumps({"client": "paho-python", "present": [bool(first), bool(second)],
                  "statuses": statuses, "acked": True}), flush=True)
