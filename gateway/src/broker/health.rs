//! Crash-only health: probes the embedded broker every few seconds with a real MQTT round trip
//! (publish to its own probe topic, receive it back) over one long-lived connection to its MQTT 5
//! listener, and reports why when it stops answering, so `app::run` can exit non-zero and the
//! supervisor (`config/roost-gateway.service`, `Restart=always`) restarts the gateway.
//!
//! The connection is long-lived on purpose: a fresh connection per probe measured rumqttd's
//! accept queue, which under sleepy-device churn (thousands of connects) is seconds long while
//! the broker is perfectly healthy; the watchdog then killed a working gateway. A probe that
//! fails drops the connection, and the next one connects again.
//!
//! Fed by a timer; feeds `app::run` one [`Unhealthy`] when [`FAILURES_TO_DIE`] probes in a row
//! failed. The probe client always waits for its CONNACK, so it cannot leave rumqttd the
//! dangling Will state that poisons a listener.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{Connect, Filter, Packet, Publish, Subscribe};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::relay::{connect_upstream, read_frame};
use crate::wire::topics;

/// Consecutive failed probes after which the broker counts as gone.
pub const FAILURES_TO_DIE: u32 = 3;

/// The broker stopped answering.
#[derive(Debug, thiserror::Error)]
#[error("the embedded broker failed {FAILURES_TO_DIE} health probes in a row; last: {last}")]
pub struct Unhealthy {
    /// Why the last probe failed.
    pub last: String,
}

/// Probes `broker` every `period` (each probe, including a reconnect, bounded by `timeout`)
/// until it fails [`FAILURES_TO_DIE`] times in a row.
pub async fn watch(broker: SocketAddr, period: Duration, timeout: Duration) -> Unhealthy {
    let mut failures = 0;
    let mut ticker = tokio::time::interval(period);
    let mut link: Option<ProbeLink> = None;
    let mut nonce: u64 = 0;
    loop {
        ticker.tick().await;
        nonce += 1;
        let probe = async {
            if link.is_none() {
                link = Some(ProbeLink::open(broker).await?);
            }
            link.as_mut().expect("opened above").round_trip(nonce).await
        };
        match tokio::time::timeout(timeout, probe).await {
            Ok(Ok(())) => failures = 0,
            outcome => {
                link = None; // reconnect on the next probe
                let why = match outcome {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {timeout:?}"),
                };
                failures += 1;
                tracing::warn!(failures, %why, "broker health probe failed");
                if failures >= FAILURES_TO_DIE {
                    return Unhealthy { last: why };
                }
            }
        }
    }
}

/// The watchdog's own connection to the broker, subscribed to its probe topic.
struct ProbeLink {
    rx: OwnedReadHalf,
    tx: OwnedWriteHalf,
    buf: BytesMut,
    out: BytesMut,
    topic: String,
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

impl ProbeLink {
    /// Connects (fresh client id, clean start) and subscribes to the probe topic.
    async fn open(broker: SocketAddr) -> std::io::Result<ProbeLink> {
        let client_id = format!(
            "roost-watchdog-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        );
        let (rx, tx) = connect_upstream(broker).await?.into_split();
        let mut link = ProbeLink {
            rx,
            tx,
            buf: BytesMut::new(),
            out: BytesMut::new(),
            topic: topics::health_probe(&client_id),
        };
        let connect = Connect {
            keep_alive: 60,
            client_id,
            clean_start: true,
            properties: None,
        };
        link.send(Packet::Connect(connect, None, None)).await?;
        let connack = link.next_frame().await?;
        if connack.first() != Some(&0x20) || connack.get(3) != Some(&0) {
            return Err(invalid("CONNECT refused"));
        }
        let filter = Filter::new(link.topic.as_str(), QoS::AtMostOnce);
        link.send(Packet::Subscribe(Subscribe::new(filter, None)))
            .await?;
        while link.next_frame().await?.first() != Some(&0x90) {}
        Ok(link)
    }

    /// Publishes `nonce` to the probe topic and waits until the broker routes it back. The
    /// round trip also serves as the connection's keep-alive.
    async fn round_trip(&mut self, nonce: u64) -> std::io::Result<()> {
        let nonce = nonce.to_be_bytes();
        let publish = Publish::new(self.topic.as_str(), QoS::AtMostOnce, nonce.to_vec(), None);
        self.send(Packet::Publish(publish)).await?;
        loop {
            let frame = self.next_frame().await?;
            if frame.first().is_some_and(|b| b >> 4 == 3) && frame.ends_with(&nonce) {
                return Ok(());
            }
        }
    }

    async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        self.out.clear();
        packet
            .write(&mut self.out, None)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        self.tx.write_all(&self.out).await
    }

    async fn next_frame(&mut self) -> std::io::Result<BytesMut> {
        let len = read_frame(&mut self.rx, &mut self.buf).await?;
        Ok(self.buf.split_to(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_broker_that_is_gone_is_unhealthy_after_three_probes() {
        // Nothing listens on this port once the listener is dropped.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let unhealthy = watch(addr, Duration::from_millis(10), Duration::from_millis(200)).await;
        assert!(!unhealthy.last.is_empty());
    }
}
