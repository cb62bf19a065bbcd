//! One MQTT 5 connection: the client options every device-sim connection uses, and a task that
//! drives rumqttc's event loop and forwards what matters over a channel.
//!
//! Fed by a [`Link`]'s owner through [`rumqttc::v5::AsyncClient`]; feeds that owner with
//! [`LinkEvent`]s. The event loop runs in its own task so the owner can await a publish without
//! ever starving the loop that would drain it. Options follow the project's rumqtt notes:
//! `tcp_nodelay`, a bounded outgoing in-flight table, a max packet size, no topic aliases.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{NetworkOptions, Outgoing};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Largest packet accepted from the broker: the contract's default `max_payload_bytes` plus room
/// for the header and properties.
pub const MAX_PACKET_BYTES: u32 = 262_144 + 4096;

/// How to connect.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id (the device id).
    pub client_id: String,
    /// MQTT 5 Clean Start.
    pub clean_start: bool,
    /// MQTT 5 Session Expiry Interval, seconds.
    pub session_expiry_s: Option<u32>,
    /// Outgoing QoS 1 packets in flight before the client waits for PUBACKs.
    pub inflight: u16,
    /// Reconnect after a dropped connection (else the link ends on the first error).
    pub reconnect: bool,
    /// Keep Alive.
    pub keep_alive: Duration,
}

impl LinkOptions {
    /// Defaults for a device connection to `host:port`.
    pub fn new(host: &str, port: u16, client_id: String) -> LinkOptions {
        LinkOptions {
            host: host.to_owned(),
            port,
            client_id,
            clean_start: true,
            session_expiry_s: None,
            inflight: 16,
            reconnect: true,
            keep_alive: Duration::from_secs(30),
        }
    }

    fn mqtt_options(&self) -> MqttOptions {
        let mut options = MqttOptions::new(&self.client_id, &self.host, self.port);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(10);
        options
            .set_network_options(network)
            .set_keep_alive(self.keep_alive)
            .set_clean_start(self.clean_start)
            .set_session_expiry_interval(self.session_expiry_s)
            .set_max_packet_size(Some(MAX_PACKET_BYTES))
            .set_outgoing_inflight_upper_limit(self.inflight.max(1))
            .set_request_channel_capacity(usize::from(self.inflight) + 16);
        options
    }
}

/// What the event loop reports.
#[derive(Debug)]
pub enum LinkEvent {
    /// CONNACK received.
    Connected {
        /// Whether the broker resumed a session.
        session_present: bool,
    },
    /// A SUBACK arrived; `granted` is false when any filter was refused.
    Subscribed {
        /// Whether every filter was granted.
        granted: bool,
    },
    /// An application message (already acknowledged in receive order by rumqttc).
    Message(Publish),
    /// The connection failed or dropped.
    Error(String),
    /// The link has ended (after a DISCONNECT, or an error without reconnecting).
    Closed,
}

/// A connection's client half and its events.
#[derive(Debug)]
pub struct Link {
    /// Publish, subscribe, disconnect.
    pub client: AsyncClient,
    /// What the event loop saw.
    pub events: mpsc::UnboundedReceiver<LinkEvent>,
    task: JoinHandle<()>,
}

impl Link {
    /// Starts connecting in the background.
    pub fn open(options: &LinkOptions) -> Link {
        let mqtt = options.mqtt_options();
        let capacity = mqtt.request_channel_capacity();
        let (client, eventloop) = AsyncClient::new(mqtt, capacity);
        let (events_tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(eventloop, events_tx, options.reconnect));
        Link {
            client,
            events,
            task,
        }
    }

    /// Sends DISCONNECT after everything queued before it, waits up to `timeout` for the event
    /// loop to flush it, then stops the loop either way.
    pub async fn close(mut self, timeout: Duration) {
        if self.client.try_disconnect().is_ok() {
            let until_closed = async {
                while let Some(event) = self.events.recv().await {
                    if matches!(event, LinkEvent::Closed) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(timeout, until_closed).await;
        }
        self.task.abort();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Drives the event loop until DISCONNECT is flushed, the owner goes away, or (without
/// reconnecting) the first error. Reconnects back off from 50 ms to 2 s.
async fn drive(
    mut eventloop: EventLoop,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    reconnect: bool,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => LinkEvent::Message(publish),
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(50);
                LinkEvent::Connected {
                    session_present: ack.session_present,
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => LinkEvent::Subscribed {
                granted: ack.return_codes.iter().all(|code| {
                    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as Code;
                    matches!(code, Code::Success(_))
                }),
            },
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => continue,
            Err(error) => {
                // rumqttc keeps, unreturned, what it read in the same batch as the error (the
                // server's DISCONNECT, the end of the connection): a reply written just before
                // a stopping gateway's DISCONNECT would be lost to a device that does not
                // reconnect.
                while let Some(event) = eventloop.state.events.pop_front() {
                    if let Event::Incoming(Packet::Publish(publish)) = event {
                        let _ = events_tx.send(LinkEvent::Message(publish));
                    }
                }
                if events_tx.send(LinkEvent::Error(error.to_string())).is_err() || !reconnect {
                    break;
                }
                // Reconnect pacing: bounded backoff between attempts, not synchronisation.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if events_tx.send(event).is_err() {
            return;
        }
    }
    let _ = events_tx.send(LinkEvent::Closed);
}
