"""An MQTT 3.1.1 device written with Eclipse Paho: sends one envelope request
{"corr": bstr, "args": map} and prints every reply payload it gets (as hex, one per line) until
the final one, then acks it with {"corr": bstr}. Driven by tests/tests/mqtt311_device.rs.

usage: paho_311_device.py PORT DEVICE_ID CORR REQUEST_HEX
"""
import queue
import sys

import paho.mqtt.client as mqtt

port, device, corr, request_hex = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode(), sys.argv[4]
replies = queue.Queue()
subscribed = queue.Queue()

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"devices/{device}/reply", qos=1)
client.on_subscribe = lambda *a: subscribed.put(True)
client.on_message = lambda c, u, m: replies.put(m.payload)
client.connect("127.0.0.1", port, keepalive=30)
client.loop_start()
subscribed.get(timeout=20)
client.publish(f"devices/{device}/req/stats", bytes.fromhex(request_hex), qos=1).wait_for_publish(20)
for _ in range(2):  # 202, then the final reply
    print(replies.get(timeout=20).hex(), flush=True)
# {"corr": corr} as CBOR: map(1), text(4) "corr", bytes(len) corr
ack = bytes([0xA1, 0x64]) + b"corr" + bytes([0x40 + len(corr)]) + corr
client.publish(f"devices/{device}/ack", ack, qos=1).wait_for_publish(20)
client.disconnect()
client.loop_stop()
