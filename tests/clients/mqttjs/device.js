// A sleepy MQTT 5 device on MQTT.js (npm `mqtt`): a persistent session, subscribe on the first
// wake only, a request, sleep (disconnect), wake, take the final reply, ack it.
// Driven by tests/tests/device_clients.rs; prints one JSON summary line.
//
// usage: node device.js PORT DEVICE_ID
'use strict';
const mqtt = require('mqtt');

const [port, device] = process.argv.slice(2);
const corr = Buffer.from('mqttjs-1');
const statuses = [];

function wake() {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
      clientId: device,
      protocolVersion: 5,
      clean: false,
      keepalive: 20,
      reconnectPeriod: 0,
      properties: { sessionExpiryInterval: 3600 },
    });
    const replies = [];
    let waiting = null;
    client.on('message', (topic, payload, packet) => {
      replies.push(packet);
      if (waiting) waiting();
    });
    client.once('connect', (connack) => resolve({ client, present: connack.sessionPresent, replies,
      next: () => new Promise((r) => { if (replies.length) r(); else waiting = r; }) }));
    client.once('error', reject);
  });
}

async function awaitStatus(wake, want) {
  for (;;) {
    await wake.next();
    const packet = wake.replies.shift();
    const props = packet.properties || {};
    if (!props.correlationData || !corr.equals(props.correlationData)) continue;
    const status = (props.userProperties || {}).status;
    statuses.push(Number(status));
    if (status === want) return;
  }
}

const publish = (client, topic, payload) => new Promise((resolve, reject) => client.publish(
  topic, payload, { qos: 1, properties: { correlationData: corr } },
  (err) => (err ? reject(err) : resolve())));

const sleep = (client) => new Promise((resolve) => client.end(false, {}, resolve));

async function main() {
  const timer = setTimeout(() => { console.error('mqttjs device: timed out'); process.exit(1); }, 60000);
  // Wake 1: subscribe once, request {"values": [1, 2, 3]}, take the 202, sleep.
  const first = await wake();
  if (!first.present) {
    await new Promise((resolve, reject) => first.client.subscribe(
      `devices/${device}/reply/#`, { qos: 1 }, (err) => (err ? reject(err) : resolve())));
  }
  const request = Buffer.concat([Buffer.from([0xa1, 0x66]), Buffer.from('values'), Buffer.from([0x83, 1, 2, 3])]);
  await publish(first.client, `devices/${device}/req/stats`, request);
  await awaitStatus(first, '202');
  await sleep(first.client);
  // Wake 2: the session brings the final reply; ack it (empty payload, its Correlation Data).
  const second = await wake();
  await awaitStatus(second, '200');
  await publish(second.client, `devices/${device}/ack`, Buffer.alloc(0));
  await sleep(second.client);
  clearTimeout(timer);
  console.log(JSON.stringify({ client: 'mqttjs', present: [first.present, second.present], statuses, acked: true }));
}

main().catch((err) => { console.error(err); process.exit(1); });
