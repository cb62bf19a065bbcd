//! A test device: a real rumqttc MQTT 5 client with helpers to send requests and wait for
//! replies. Every wait has a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ciborium::Value;
use gateway::wire::envelope::encode_value;
use gateway::wire::{topics, DeviceId, Reply};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

/// How long a test waits for any one message.
pub const WAIT: Duration = Duration::from_secs(20);

/// A reply as received: payload decoded, plus the properties that matter.
#[derive(Debug, Clone)]
pub struct Received {
    /// The topic it arrived on.
    pub topic: String,
    /// The decoded payload.
    pub reply: Reply,
    /// The raw payload bytes.
    pub payload: Bytes,
    /// Correlation Data property.
    pub corr: Option<Bytes>,
    /// All publish properties.
    pub properties: Option<PublishProperties>,
    /// When the client received it.
    pub at: std::time::Instant,
}

impl Received {
    /// The `status` user property, if present.
    pub fn status_property(&self) -> Option<&str> {
        self.properties.as_ref().and_then(|p| {
            p.user_properties
                .iter()
                .find(|(k, _)| k == "status")
                .map(|(_, v)| v.as_str())
        })
    }
}

/// A connected MQTT 5 device.
pub struct TestDevice {
    /// Its id.
    pub id: DeviceId,
    /// The client.
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(rumqttc::v5::mqttbytes::v5::Publish, std::time::Instant)>,
    task: tokio::task::JoinHandle<()>,
    /// Every PUBACK this client received, in order: `true` for success, `false` for a refusal
    /// (a reason code of 0x80 or above).
    pub pubacks: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
}

/// Client options every test client uses (see RUMQTT-NOTES: nodelay, packet size, inflight).
pub fn options(client_id: &str, addr: SocketAddr) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(Some(1024 * 1024));
    options.set_outgoing_inflight_upper_limit(64);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    options.set_network_options(net);
    options
}

impl TestDevice {
    /// Connects as `id` and subscribes to its replies (`devices/{id}/reply/#`).
    pub async fn connect(addr: SocketAddr, id: &str) -> TestDevice {
        TestDevice::connect_with(options(id, addr), id, true).await
    }

    /// Connects with custom options; subscribes to the reply topics when `subscribe`.
    pub async fn connect_with(options: MqttOptions, id: &str, subscribe: bool) -> TestDevice {
        let parsed = DeviceId::parse(id).expect("valid device id");
        // `devices/{id}/reply/#` also matches `devices/{id}/reply` itself; subscribing to both
        // makes the broker deliver every reply twice (once per matching subscription).
        let filter = subscribe.then(|| topics::reply_filter(&parsed));
        TestDevice::connect_subscribed(options, id, filter.as_deref()).await
    }

    /// Connects as client `id` and subscribes to `filter` (an operator's view, or every reply
    /// on an external broker); returns once the subscription is acknowledged, so nothing
    /// published after this returns is missed.
    pub async fn watch(addr: SocketAddr, id: &str, filter: &str) -> TestDevice {
        TestDevice::connect_subscribed(options(id, addr), id, Some(filter)).await
    }

    /// Connects; when `filter` is given, subscribes to it at QoS 1 and waits for its SUBACK.
    async fn connect_subscribed(
        options: MqttOptions,
        id: &str,
        filter: Option<&str>,
    ) -> TestDevice {
        let id = DeviceId::parse(id).expect("valid device id");
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let expect_subacks = usize::from(filter.is_some());
        let pubacks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let pubacks_seen = pubacks.clone();
        if let Some(filter) = filter {
            client
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .expect("subscribe");
        }
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut subacks = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) if expect_subacks == 0 => {
                        if let Some(ready) = ready_tx.take() {
                            let _ = ready.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks == expect_subacks {
                            if let Some(ready) = ready_tx.take() {
                                let _ = ready.send(Ok(()));
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        if tx.send((publish, std::time::Instant::now())).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        use rumqttc::v5::mqttbytes::v5::PubAckReason;
                        let success = matches!(
                            ack.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        );
                        pubacks_seen.lock().expect("puback log").push(success);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        // rumqttc keeps, unreturned, what it read in the same batch as the
                        // error (a server DISCONNECT, the end of the connection): a reply
                        // written just before a gateway's DISCONNECT was lost that way.
                        while let Some(event) = eventloop.state.events.pop_front() {
                            if let Event::Incoming(Packet::Publish(publish)) = event {
                                let _ = tx.send((publish, std::time::Instant::now()));
                            }
                        }
                        if let Some(ready) = ready_tx.take() {
                            let _ = ready.send(Err(error.to_string()));
                        }
                        return;
                    }
                }
            }
        });
        tokio::time::timeout(WAIT, ready_rx)
            .await
            .expect("connected in time")
            .expect("event loop alive")
            .expect("connect succeeded");
        TestDevice {
            id,
            client,
            rx,
            task,
            pubacks,
        }
    }

    /// Publishes a request with Correlation Data `corr` (and optional Response Topic).
    pub async fn request(&self, op: &str, args: &Value, corr: &[u8], response_topic: Option<&str>) {
        let properties = PublishProperties {
            correlation_data: Some(Bytes::copy_from_slice(corr)),
            response_topic: response_topic.map(str::to_owned),
            ..Default::default()
        };
        self.publish_raw(
            &topics::request(&self.id, op),
            encode_value(args),
            Some(properties),
        )
        .await;
    }

    /// Publishes any payload to any topic at QoS 1.
    pub async fn publish_raw(
        &self,
        topic: &str,
        payload: Vec<u8>,
        properties: Option<PublishProperties>,
    ) {
        match properties {
            Some(p) => self
                .client
                .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, p)
                .await
                .expect("publish"),
            None => self
                .client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish"),
        }
    }

    /// Acknowledges the reply with correlation `corr`.
    pub async fn ack(&self, corr: &[u8]) {
        let properties = PublishProperties {
            correlation_data: Some(Bytes::copy_from_slice(corr)),
            ..Default::default()
        };
        self.publish_raw(&topics::ack(&self.id), Vec::new(), Some(properties))
            .await;
    }

    /// Waits for the next message on any subscribed topic.
    pub async fn next(&mut self) -> Received {
        self.next_within(WAIT)
            .await
            .expect("a reply arrived in time")
    }

    /// Waits up to `wait` for the next message.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        let (publish, at) = tokio::time::timeout(wait, self.rx.recv()).await.ok()??;
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let reply = Reply::decode(&publish.payload).expect("reply is valid CBOR");
        Some(Received {
            topic,
            corr: publish
                .properties
                .as_ref()
                .and_then(|p| p.correlation_data.clone()),
            reply,
            payload: publish.payload,
            properties: publish.properties,
            at,
        })
    }

    /// Waits for the next reply whose correlation is `corr`, skipping others.
    pub async fn reply_for(&mut self, corr: &[u8]) -> Received {
        loop {
            let received = self.next().await;
            if received.corr.as_deref() == Some(corr) {
                return received;
            }
        }
    }

    /// Disconnects cleanly and stops the event loop.
    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// `{"values": [...]}` for `stats`.
pub fn values(xs: &[f64]) -> Value {
    Value::Map(vec![(
        Value::Text("values".into()),
        Value::Array(xs.iter().map(|x| Value::Float(*x)).collect()),
    )])
}

/// Reads a float field of a result map.
pub fn field(result: &Value, key: &str) -> f64 {
    let Value::Map(entries) = result else {
        panic!("result is not a map: {result:?}")
    };
    let value =
        gateway::wire::envelope::map_get(entries, key).unwrap_or_else(|| panic!("no {key}"));
    gateway::analytics::ops::as_finite(value).unwrap_or_else(|| panic!("{key} not a number"))
}

/// A CBOR presence payload: `{"state": "awake"}` or `{"state": "asleep"}`.
pub fn presence(awake: bool) -> Vec<u8> {
    gateway::wire::envelope::encode_value(&Value::Map(vec![(
        Value::Text("state".into()),
        Value::Text(if awake { "awake" } else { "asleep" }.into()),
    )]))
}

impl TestDevice {
    /// Wakes: connects, subscribes to its replies and announces presence.
    pub async fn wake(addr: SocketAddr, id: &str) -> TestDevice {
        let device = TestDevice::connect(addr, id).await;
        let topic = topics::presence(&device.id);
        device.publish_raw(&topic, presence(true), None).await;
        device
    }

    /// Announces sleep and disconnects.
    pub async fn sleep(self) {
        let topic = topics::presence(&self.id);
        self.publish_raw(&topic, presence(false), None).await;
        self.disconnect().await;
    }
}

impl TestDevice {
    /// Waits for the next message and parses it as JSON (status and dead-letter topics).
    pub async fn next_json(&mut self) -> serde_json::Value {
        self.next_json_within(WAIT)
            .await
            .expect("a message in time")
    }

    /// Waits up to `wait` for the next message and parses it as JSON.
    pub async fn next_json_within(&mut self, wait: Duration) -> Option<serde_json::Value> {
        let (publish, _) = tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()?
            .expect("event loop alive");
        Some(serde_json::from_slice(&publish.payload).expect("JSON payload"))
    }
}

/// Waits until `devices/{device}/status` shows nothing pending and nothing held: every request
/// of the device has finished and every final reply has been acked (or dead-lettered).
pub async fn wait_settled(addr: SocketAddr, device: &str) {
    let watcher_id = format!("settle-{device}");
    let mut watcher =
        TestDevice::connect_with(options(&watcher_id, addr), &watcher_id, false).await;
    watcher
        .client
        .subscribe(format!("devices/{device}/status"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        let status = watcher.next_json().await;
        if status["held"] == 0 && status["pending"] == 0 {
            break;
        }
    }
    watcher.disconnect().await;
}

/// A one-connection MQTT 5 server on loopback that accepts a client, then writes a QoS 0
/// reply and its DISCONNECT (0x8B, as a stopping gateway sends) in one segment, as a stopping
/// front door can: to check that a client hands over the publish read with the DISCONNECT.
/// Its address, and its task (done once written).
pub async fn publish_then_disconnect() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use bytes::BytesMut;
    use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet, Publish,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut connect = [0u8; 1024];
        let _ = stream.read(&mut connect).await.expect("CONNECT");
        let mut out = BytesMut::new();
        let connack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
            properties: None,
        };
        Packet::ConnAck(connack)
            .write(&mut out, None)
            .expect("encode");
        stream.write_all(&out).await.expect("CONNACK");
        // Once the client has its CONNACK (it sends nothing more without a subscription):
        // what it reads next comes in one segment.
        tokio::task::yield_now().await;
        out.clear();
        let reply = Reply::new(
            gateway::wire::Status::Accepted,
            gateway::wire::State::Accepted,
        );
        let publish = Publish::new("devices/x/reply", QoS::AtMostOnce, reply.encode(), None);
        Packet::Publish(publish)
            .write(&mut out, None)
            .expect("encode");
        Packet::Disconnect(Disconnect::new(DisconnectReasonCode::ServerShuttingDown))
            .write(&mut out, None)
            .expect("encode");
        stream
            .write_all(&out)
            .await
            .expect("PUBLISH and DISCONNECT");
    });
    (addr, server)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that writes a publish and its DISCONNECT in one go (as a stopping front door
    /// can): the client still hands the publish over (rumqttc alone lost it).
    #[tokio::test]
    async fn a_publish_read_with_the_servers_disconnect_is_handed_over() {
        let (addr, server) = publish_then_disconnect().await;
        let mut device = TestDevice::connect_with(options("x", addr), "x", false).await;
        let got = device.next_within(Duration::from_secs(10)).await;
        server.await.expect("server");
        assert!(
            got.is_some(),
            "the publish before the DISCONNECT was handed over"
        );
    }

    /// The same for the device simulator's sleepy devices, which do not reconnect.
    #[tokio::test]
    async fn device_sim_hands_over_a_publish_read_with_the_servers_disconnect() {
        use device_sim::connection::{Link, LinkEvent, LinkOptions};
        let (addr, server) = publish_then_disconnect().await;
        let mut options = LinkOptions::new("127.0.0.1", addr.port(), "x".into());
        options.reconnect = false;
        let mut link = Link::open(&options);
        let mut messages = 0;
        let within = Duration::from_secs(10);
        while let Ok(Some(event)) = tokio::time::timeout(within, link.events.recv()).await {
            match event {
                LinkEvent::Message(_) => messages += 1,
                LinkEvent::Closed => break,
                _ => {}
            }
        }
        server.await.expect("server");
        assert_eq!(
            messages, 1,
            "the publish before the DISCONNECT was handed over"
        );
    }
}
