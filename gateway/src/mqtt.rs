//! The gateway service's own MQTT 5 connection (rumqttc), to the embedded broker or an external
//! one.
//!
//! The event loop task forwards every incoming PUBLISH, in receive order, to intake through a
//! bounded channel, and never waits on SQLite. The channel cannot fill: the broker sends at most
//! its inflight window (100 for rumqttd, our Receive Maximum elsewhere) unacked QoS 1 messages,
//! and intake acks only after commit. [`Publisher`] sends replies and status.
//!
//! **Invariant:** acks are sent in receive order (rumqttd drops a client that acks out of order);
//! intake is the only caller of [`Publisher::ack`] and processes publishes in order.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, oneshot};

use crate::wire::{Correlation, Status};

/// Capacity of the inbox channel (well above any broker's inflight window).
const INBOX: usize = 4096;
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

/// Publishes replies, status and dead letters; acks received messages.
#[derive(Clone, Debug)]
pub struct Publisher {
    client: AsyncClient,
}

impl Publisher {
    /// Publishes a reply with the contract's properties, or with none for an MQTT 3.1.1 device
    /// (`envelope`): rumqttd's v4 writer panics on a forwarded publish that has properties, and
    /// such a device could not read them anyway (its reply carries `corr` in the payload).
    pub async fn reply(
        &self,
        topic: &str,
        payload: Vec<u8>,
        corr: Option<&Correlation>,
        status: Status,
        expiry: Duration,
        envelope: bool,
    ) {
        let properties = (!envelope).then(|| PublishProperties {
            correlation_data: corr.map(|c| c.0.clone()),
            content_type: Some("application/cbor".into()),
            user_properties: vec![("status".into(), status.code().to_string())],
            message_expiry_interval: Some(expiry.as_secs().clamp(1, u64::from(u32::MAX)) as u32),
            ..Default::default()
        });
        self.publish(topic, payload, false, properties).await;
    }

    /// Publishes JSON (status, dead letters), retained or not, without properties: MQTT 3.1.1
    /// operators (e.g. `mosquitto_sub -V 311`) subscribe to these, see [`Publisher::reply`].
    pub async fn json(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.publish(topic, payload, retain, None).await;
    }

    async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        properties: Option<PublishProperties>,
    ) {
        let outcome = match properties {
            Some(properties) => {
                self.client
                    .publish_with_properties(topic, QoS::AtLeastOnce, retain, payload, properties)
                    .await
            }
            None => {
                self.client
                    .publish(topic, QoS::AtLeastOnce, retain, payload)
                    .await
            }
        };
        if let Err(error) = outcome {
            tracing::error!(%error, topic, "publish not handed to the MQTT client");
        }
    }

    /// Acknowledges a received QoS 1 publish. Call in receive order.
    pub async fn ack(&self, publish: &Publish) {
        if let Err(error) = self.client.ack(publish).await {
            tracing::error!(%error, "ack not handed to the MQTT client");
        }
    }
}

/// A connected link.
pub struct Link {
    /// For replies and acks.
    pub publisher: Publisher,
    /// The event loop task; it ends after [`Link::disconnect`].
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Sends DISCONNECT after everything already queued (so the broker does not fire our Will)
    /// and waits, bounded, for the event loop to write it.
    pub async fn disconnect(self) {
        let _ = self.publisher.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Connects, subscribes, and returns once the first subscription is acknowledged, with the
/// stream of every incoming publish in receive order.
pub async fn connect(config: LinkConfig) -> Result<(Link, mpsc::Receiver<Publish>), LinkError> {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(true);
    options.set_manual_acks(true);
    options.set_max_packet_size(Some(config.max_packet_bytes as u32 + 64 * 1024));
    options.set_outgoing_inflight_upper_limit(1024);
    options.set_receive_maximum(Some(1024));
    options.set_request_channel_capacity(REQUESTS);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    if let Some(will) = config.will.clone() {
        options.set_last_will(will);
    }
    let (client, mut eventloop) = AsyncClient::new(options, REQUESTS);
    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let addr = format!("{}:{}", config.host, config.port);
    let sub_client = client.clone();
    let filters = config.filters.clone();
    let task = tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut backoff = Duration::from_millis(50);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if inbox_tx.send(publish).await.is_err() {
                        return; // intake has stopped: shutting down
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(50);
                    for filter in &filters {
                        if let Err(error) =
                            sub_client.try_subscribe(filter.clone(), QoS::AtLeastOnce)
                        {
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
                    if let Some(ready) = ready_tx.take() {
                        let _ = ready.send(Err(error.to_string()));
                        return;
                    }
                    tracing::warn!(%error, "service link lost; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
    let outcome = tokio::time::timeout(Duration::from_secs(15), ready_rx).await;
    match outcome {
        Ok(Ok(Ok(()))) => Ok((
            Link {
                publisher: Publisher { client },
                task,
            },
            inbox_rx,
        )),
        Ok(Ok(Err(reason))) => Err(LinkError::Connect { addr, reason }),
        Ok(Err(_)) => Err(LinkError::Connect {
            addr,
            reason: "event loop ended".into(),
        }),
        Err(_) => Err(LinkError::Connect {
            addr,
            reason: "no SUBACK within 15 s".into(),
        }),
    }
}

/// A Last Will: retained JSON on `topic`.
pub fn retained_will(topic: String, payload: Vec<u8>) -> LastWill {
    LastWill::new(topic, payload, QoS::AtLeastOnce, true, None)
}
