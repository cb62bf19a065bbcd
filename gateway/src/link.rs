//! The service link: the gateway service's own MQTT 5 connections (rumqttc) to a broker. In
//! external mode it carries everything (device requests, acks, presence and telemetry in through
//! shared subscriptions; replies, status and dead letters out); in embedded mode only the
//! service's retained status and dead letters go out through it to rumqttd, since device
//! traffic never crosses rumqttd (see `flow::Sink`).
//!
//! One connection subscribes and acks, the other publishes (see [`Link`] for why two). The
//! event loop task forwards every incoming PUBLISH, in receive order, to intake through the
//! bounded inbox (`flow::inbox`), and never waits on the store.
//!
//! **Invariant:** acks are sent in receive order (rumqttd drops a client that acks out of order);
//! intake is the only one to ack (`flow::Inbound::ack`) and handles publishes in order.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::flow::{Ack, Inbound, LinkConnection, LinkConnections, OutboundReply, Sent, Sink};

/// Capacity of rumqttc's request channel (publishes and acks waiting for the event loop).
const REQUESTS: usize = 65_536;

/// Why the link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The first connect + subscribe did not complete.
    #[error("cannot connect to the broker at {addr}: {reason}")]
    Connect {
        /// host:port
        addr: String,
        /// Why.
        reason: String,
    },
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Our client id.
    pub client_id: String,
    /// Filters to subscribe to (again after every reconnect), all at QoS 1.
    pub filters: Vec<String>,
    /// Last Will, e.g. the gateway's retained `offline` status.
    pub will: Option<LastWill>,
    /// Largest packet we accept.
    pub max_packet_bytes: usize,
}

/// Publishes replies, status and dead letters to the broker: the external-mode [`Sink`], and
/// in embedded mode the way out for operator JSON.
#[derive(Clone, Debug)]
pub struct Publisher {
    /// The connection that only publishes.
    client: AsyncClient,
    /// The connection that only subscribes and acks.
    acks: AsyncClient,
}

impl Publisher {
    async fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        properties: Option<PublishProperties>,
    ) {
        let outcome = match properties {
            Some(properties) => {
                self.client
                    .publish_with_properties(&topic, QoS::AtLeastOnce, retain, payload, properties)
                    .await
            }
            None => {
                self.client
                    .publish(&topic, QoS::AtLeastOnce, retain, payload)
                    .await
            }
        };
        if let Err(error) = outcome {
            tracing::error!(%error, topic, "publish not handed to the MQTT client");
        }
    }
}

impl Sink for Publisher {
    /// Publishes a reply with the contract's properties, or with none for an MQTT 3.1.1 device
    /// (`envelope`): such a device could not read them (its reply carries `corr` in the payload).
    fn reply(&self, reply: OutboundReply) -> Sent<'_> {
        Box::pin(async move {
            let properties = (!reply.envelope).then(|| reply.properties());
            self.publish(reply.topic, reply.payload, false, properties)
                .await;
        })
    }

    fn announce(&self, topic: String, payload: Vec<u8>, retain: bool) -> Sent<'_> {
        Box::pin(self.publish(topic, payload, retain, None))
    }
}

/// A connected link: two MQTT connections.
///
/// rumqttc queues manual acks in the same request channel as publishes, and stops reading that
/// channel while its outgoing inflight window is full. On one connection, a burst of publishes
/// (replies, status) would hold our acks back; the broker, its own window to us full of unacked
/// requests, would then stop both sending and acking: a deadlock (seen with 2,000+ devices).
/// So one connection only subscribes and acks (its requests never wait on PUBACKs), and the
/// other only publishes.
pub struct Link {
    /// For replies and acks.
    pub publisher: Publisher,
    /// The two event loop tasks; they end after [`Link::disconnect`].
    tasks: [tokio::task::JoinHandle<()>; 2],
    /// Cancelled by [`Link::disconnect`]: an event loop whose connection is lost then ends
    /// instead of reconnecting.
    closing: CancellationToken,
}

/// How long [`Link::disconnect`] waits for the event loops.
const DISCONNECT_WAIT: Duration = Duration::from_secs(5);

impl Link {
    /// Sends DISCONNECT on both connections after everything already queued (so the broker does
    /// not fire our Will) and waits, bounded, for the event loops to write it. A connection that
    /// is down (the broker gone) is not waited for: nothing more can go out on it (a broker that
    /// saw it drop publishes our Will). Returns whether both event loops ended.
    pub async fn disconnect(self) -> bool {
        let _ = self.publisher.client.disconnect().await;
        let _ = self.publisher.acks.disconnect().await;
        self.closing.cancel();
        let ended = tokio::time::timeout(DISCONNECT_WAIT, join_all(self.tasks))
            .await
            .is_ok();
        if !ended {
            tracing::warn!("the service link did not close in time; left as it is");
        }
        ended
    }
}

fn options(config: &LinkConfig, client_id: String) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, &config.host, config.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(true);
    options.set_max_packet_size(Some(config.max_packet_bytes as u32 + 64 * 1024));
    options.set_outgoing_inflight_upper_limit(1024);
    options.set_receive_maximum(Some(1024));
    options.set_request_channel_capacity(REQUESTS);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    options
}

/// Connects both connections, subscribes, and returns once the first subscription is
/// acknowledged; every incoming publish goes to `inbox_tx` in receive order.
pub async fn connect(
    config: LinkConfig,
    inbox_tx: mpsc::Sender<Inbound>,
) -> Result<Link, LinkError> {
    let addr = format!("{}:{}", config.host, config.port);
    let mut sub_options = options(&config, config.client_id.clone());
    sub_options.set_manual_acks(true);
    let mut pub_options = options(&config, format!("{}-pub", config.client_id));
    if let Some(will) = config.will.clone() {
        pub_options.set_last_will(will);
    }
    let (acks, sub_loop) = AsyncClient::new(sub_options, REQUESTS);
    let (client, pub_loop) = AsyncClient::new(pub_options, REQUESTS);
    let (sub_ready_tx, sub_ready_rx) = oneshot::channel::<Result<(), String>>();
    let (pub_ready_tx, pub_ready_rx) = oneshot::channel::<Result<(), String>>();
    let closing = CancellationToken::new();
    let tasks = [
        tokio::spawn(subscriber_loop(
            sub_loop,
            acks.clone(),
            config.filters.clone(),
            inbox_tx,
            sub_ready_tx,
            closing.clone(),
        )),
        tokio::spawn(publisher_loop(pub_loop, pub_ready_tx, closing.clone())),
    ];
    for ready in [pub_ready_rx, sub_ready_rx] {
        let reason = match tokio::time::timeout(Duration::from_secs(15), ready).await {
            Ok(Ok(Ok(()))) => continue,
            Ok(Ok(Err(reason))) => reason,
            Ok(Err(_)) => "event loop ended".into(),
            Err(_) => "not connected and subscribed within 15 s".into(),
        };
        return Err(LinkError::Connect { addr, reason });
    }
    Ok(Link {
        publisher: Publisher { client, acks },
        tasks,
        closing,
    })
}

/// After a lost connection: false when the event loop should end instead, because its first
/// connection failed (said through `ready_tx`) or the link is closing; otherwise waits
/// `backoff` (rumqttc reconnects on the next poll) and doubles it.
async fn reconnect(
    ready_tx: &mut Option<oneshot::Sender<Result<(), String>>>,
    backoff: &mut Duration,
    error: &rumqttc::v5::ConnectionError,
    which: &str,
    closing: &CancellationToken,
) -> bool {
    if let Some(ready) = ready_tx.take() {
        let _ = ready.send(Err(error.to_string()));
        return false;
    }
    if closing.is_cancelled() {
        tracing::debug!(%error, which, "service link lost while closing");
        return false;
    }
    tracing::warn!(%error, which, "service link lost; reconnecting");
    tokio::select! {
        () = tokio::time::sleep(*backoff) => {}
        () = closing.cancelled() => return false,
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    true
}

async fn subscriber_loop(
    mut eventloop: rumqttc::v5::EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    inbox_tx: mpsc::Sender<Inbound>,
    ready_tx: oneshot::Sender<Result<(), String>>,
    closing: CancellationToken,
) {
    let mut ready_tx = Some(ready_tx);
    let mut backoff = Duration::from_millis(50);
    let connection = Arc::new(LinkConnections::default());
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let from = connection.now();
                if !hand_over(&inbox_tx, &client, publish, from).await {
                    return; // intake has stopped: shutting down
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(50);
                for filter in &filters {
                    if let Err(error) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                        tracing::error!(%error, filter, "subscribe failed");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(ready) = ready_tx.take() {
                    let _ = ready.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(_))) => {
                tracing::warn!("broker disconnected the service link");
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => {
                // What rumqttc read in the same batch as the error is handled like the rest of
                // that connection's publishes (rumqttc would return it after the reconnect);
                // none of them is acked from now on: see `flow::LinkConnection`.
                let ended = connection.now();
                connection.end(|| eventloop.clean()).await;
                while let Some(event) = eventloop.state.events.pop_front() {
                    if let Event::Incoming(Packet::Publish(publish)) = event {
                        if !hand_over(&inbox_tx, &client, publish, ended.clone()).await {
                            return;
                        }
                    }
                }
                let which = "subscriber";
                if !reconnect(&mut ready_tx, &mut backoff, &error, which, &closing).await {
                    return;
                }
            }
        }
    }
}

/// Hands a publish that came in on connection `from` to intake; false once intake has stopped.
async fn hand_over(
    inbox_tx: &mpsc::Sender<Inbound>,
    client: &AsyncClient,
    publish: rumqttc::v5::mqttbytes::v5::Publish,
    from: LinkConnection,
) -> bool {
    let ack = Ack::Broker(client.clone(), from);
    inbox_tx
        .send(Inbound::new(publish, ack, None))
        .await
        .is_ok()
}

async fn publisher_loop(
    mut eventloop: rumqttc::v5::EventLoop,
    ready_tx: oneshot::Sender<Result<(), String>>,
    closing: CancellationToken,
) {
    let mut ready_tx = Some(ready_tx);
    let mut backoff = Duration::from_millis(50);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(50);
                if let Some(ready) = ready_tx.take() {
                    let _ = ready.send(Ok(()));
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => {
                let which = "publisher";
                if !reconnect(&mut ready_tx, &mut backoff, &error, which, &closing).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Publish, SubAck, SubscribeReasonCode,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// The next whole packet from `stream` (`None` at its end).
    async fn next(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Packet> {
        loop {
            match Packet::read(buf, None) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(error) => panic!("a packet the broker cannot read: {error:?}"),
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn write(stream: &mut TcpStream, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).expect("encode");
        stream.write_all(&out).await.expect("write");
    }

    /// A link as `gw` to a broker on loopback `port`, subscribing to `t`.
    fn test_config(port: u16) -> LinkConfig {
        LinkConfig {
            host: "127.0.0.1".into(),
            port,
            client_id: "gw".into(),
            filters: vec!["t".into()],
            will: None,
            max_packet_bytes: 1024,
        }
    }

    /// Accepts a connection and answers its CONNECT; returns it, what was read past the
    /// CONNECT, and its client id.
    async fn accept(listener: &TcpListener) -> (TcpStream, BytesMut, String) {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = BytesMut::new();
        let Some(Packet::Connect(connect, ..)) = next(&mut stream, &mut buf).await else {
            panic!("no CONNECT");
        };
        let connack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
            properties: None,
        };
        write(&mut stream, Packet::ConnAck(connack)).await;
        (stream, buf, connect.client_id)
    }

    /// Reads a SUBSCRIBE and grants it.
    async fn subscribed(stream: &mut TcpStream, buf: &mut BytesMut) {
        let Some(Packet::Subscribe(subscribe)) = next(stream, buf).await else {
            panic!("no SUBSCRIBE");
        };
        let suback = SubAck {
            pkid: subscribe.pkid,
            return_codes: vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            properties: None,
        };
        write(stream, Packet::SubAck(suback)).await;
    }

    /// A broker for the link's two connections. The subscriber's first connection gets, once
    /// `go` is notified, a publish with packet id 5 and is then closed; its second gets one with
    /// packet id 1, and the packet ids it acknowledges there go to `acked`.
    async fn broker(
        listener: TcpListener,
        go: Arc<tokio::sync::Notify>,
        acked: mpsc::UnboundedSender<u16>,
    ) {
        let mut subscriber_connections = 0;
        loop {
            let (mut stream, mut buf, client_id) = accept(&listener).await;
            if client_id.ends_with("-pub") {
                tokio::spawn(async move { while next(&mut stream, &mut buf).await.is_some() {} });
                continue;
            }
            subscriber_connections += 1;
            let first = subscriber_connections == 1;
            let (acked, go) = (acked.clone(), go.clone());
            tokio::spawn(async move {
                subscribed(&mut stream, &mut buf).await;
                if first {
                    go.notified().await;
                }
                let (pkid, payload) = if first { (5, "A") } else { (1, "B") };
                let mut publish = Publish::new("t", QoS::AtLeastOnce, payload, None);
                publish.pkid = pkid;
                write(&mut stream, Packet::Publish(publish)).await;
                if first {
                    return; // the connection ends, its publish not acked
                }
                while let Some(packet) = next(&mut stream, &mut buf).await {
                    if let Packet::PubAck(ack) = packet {
                        let _ = acked.send(ack.pkid);
                    }
                }
            });
        }
    }

    /// A broker that serves the link's two connections until `gone` is notified, then closes
    /// them and, from then on, closes every new connection before its CONNACK; the client id of
    /// each such connection goes to `tried`.
    async fn vanishing_broker(
        listener: TcpListener,
        gone: Arc<tokio::sync::Notify>,
        tried: mpsc::UnboundedSender<String>,
    ) {
        let mut served = Vec::new();
        while served.len() < 2 {
            let (mut stream, mut buf, client_id) = accept(&listener).await;
            if !client_id.ends_with("-pub") {
                subscribed(&mut stream, &mut buf).await;
            }
            served.push(stream);
        }
        gone.notified().await;
        drop(served);
        loop {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = BytesMut::new();
            if let Some(Packet::Connect(connect, ..)) = next(&mut stream, &mut buf).await {
                let _ = tried.send(connect.client_id);
            }
        }
    }

    /// A stop while the broker is gone does not wait for it: both event loops, reconnecting in
    /// vain, end at once instead of being abandoned after their bound (the broker has the
    /// link's Will, should it come back).
    #[tokio::test]
    async fn a_link_whose_broker_is_gone_closes_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let gone = Arc::new(tokio::sync::Notify::new());
        let (tried_tx, mut tried) = mpsc::unbounded_channel();
        tokio::spawn(vanishing_broker(listener, gone.clone(), tried_tx));
        let (inbox_tx, _inbox) = crate::flow::inbox();
        let link = connect(test_config(port), inbox_tx).await.expect("link");
        gone.notify_one();
        // Both connections lost, and each tried again at least once.
        let mut reconnecting = std::collections::HashSet::new();
        while reconnecting.len() < 2 {
            let id = tokio::time::timeout(Duration::from_secs(10), tried.recv())
                .await
                .expect("a reconnect")
                .expect("the broker runs");
            reconnecting.insert(id);
        }
        assert!(link.disconnect().await, "both event loops ended");
    }

    /// A publish whose link connection has ended is not acked on the next one: its packet id
    /// there would name another publish (the link reconnects with a clean start).
    #[tokio::test]
    async fn a_publish_from_an_ended_connection_is_not_acked_on_the_next() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (acked_tx, mut acked) = mpsc::unbounded_channel();
        let go = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(broker(listener, go.clone(), acked_tx));
        let (inbox_tx, mut inbox) = crate::flow::inbox();
        let _link = connect(test_config(port), inbox_tx).await.expect("link");
        go.notify_one();
        let within = Duration::from_secs(10);
        let a = tokio::time::timeout(within, inbox.recv()).await.expect("A");
        let b = tokio::time::timeout(within, inbox.recv()).await.expect("B");
        let (a, b) = (a.expect("A"), b.expect("B"));
        assert_eq!(
            (&a.publish.payload[..], &b.publish.payload[..]),
            (&b"A"[..], &b"B"[..])
        );
        a.ack().await;
        b.ack().await;
        let first = tokio::time::timeout(within, acked.recv())
            .await
            .expect("an ack");
        assert_eq!(
            first,
            Some(1),
            "the first PUBACK on the new connection is B's, not the old connection's id 5"
        );
    }
}
