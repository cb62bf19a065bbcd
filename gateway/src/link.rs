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

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, oneshot};

use crate::flow::{Ack, Inbound, OutboundReply, Sent, Sink};

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
}

impl Link {
    /// Sends DISCONNECT on both connections after everything already queued (so the broker does
    /// not fire our Will) and waits, bounded, for the event loops to write it.
    pub async fn disconnect(self) {
        let _ = self.publisher.client.disconnect().await;
        let _ = self.publisher.acks.disconnect().await;
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
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
    let tasks = [
        tokio::spawn(subscriber_loop(
            sub_loop,
            acks.clone(),
            config.filters.clone(),
            inbox_tx,
            sub_ready_tx,
        )),
        tokio::spawn(publisher_loop(pub_loop, pub_ready_tx)),
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
    })
}

/// Waits `backoff` after a lost connection (rumqttc reconnects on the next poll), doubling it.
async fn back_off(backoff: &mut Duration, error: &rumqttc::v5::ConnectionError, which: &str) {
    tracing::warn!(%error, which, "service link lost; reconnecting");
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

async fn subscriber_loop(
    mut eventloop: rumqttc::v5::EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    inbox_tx: mpsc::Sender<Inbound>,
    ready_tx: oneshot::Sender<Result<(), String>>,
) {
    let mut ready_tx = Some(ready_tx);
    let mut backoff = Duration::from_millis(50);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let incoming = Inbound::new(publish, Ack::Broker(client.clone()), None);
                if inbox_tx.send(incoming).await.is_err() {
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
            Err(error) => match ready_tx.take() {
                Some(ready) => {
                    let _ = ready.send(Err(error.to_string()));
                    return;
                }
                None => back_off(&mut backoff, &error, "subscriber").await,
            },
        }
    }
}

async fn publisher_loop(
    mut eventloop: rumqttc::v5::EventLoop,
    ready_tx: oneshot::Sender<Result<(), String>>,
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
            Err(error) => match ready_tx.take() {
                Some(ready) => {
                    let _ = ready.send(Err(error.to_string()));
                    return;
                }
                None => back_off(&mut backoff, &error, "publisher").await,
            },
        }
    }
}
