//! Crash-only health: probes the embedded broker every few seconds with a real MQTT round trip
//! (connect, subscribe, publish, receive its own message, disconnect) on its MQTT 5 listener
//! (the one every device reaches, see `translate`), and reports why when it stops answering, so `app::run` can exit non-zero and the
//! supervisor (`config/roost-gateway.service`, `Restart=always`) restarts the gateway.
//!
//! Fed by a timer; feeds `app::run` one [`Unhealthy`] when [`FAILURES_TO_DIE`] probes in a row
//! failed. Each probe uses a fresh client id and always waits for the CONNACK, so a stuck probe
//! cannot leave rumqttd the dangling Will state that poisons a listener.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    Connect, Disconnect, DisconnectReasonCode, Filter, Packet, Publish, Subscribe,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::AsyncWriteExt;

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

static PROBES: AtomicU64 = AtomicU64::new(0);

/// Probes `broker` every `period` (each probe bounded by `timeout`) until it fails
/// [`FAILURES_TO_DIE`] times in a row.
pub async fn watch(broker: SocketAddr, period: Duration, timeout: Duration) -> Unhealthy {
    let mut failures = 0;
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        match tokio::time::timeout(timeout, probe(broker)).await {
            Ok(Ok(())) => failures = 0,
            outcome => {
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

/// One round trip through the broker.
pub async fn probe(broker: SocketAddr) -> std::io::Result<()> {
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    let client_id = format!("roost-watchdog-{}-{n}", std::process::id());
    let topic = topics::health_probe(&client_id);
    let nonce = n.to_be_bytes();
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let encode = |packet: Packet, out: &mut BytesMut| {
        out.clear();
        packet
            .write(out, None)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
    };

    let stream = connect_upstream(broker).await?;
    let (mut rx, mut tx) = stream.into_split();
    let mut out = BytesMut::new();
    let connect = Connect {
        keep_alive: 30,
        client_id: client_id.clone(),
        clean_start: true,
        properties: None,
    };
    encode(Packet::Connect(connect, None, None), &mut out)?;
    tx.write_all(&out).await?;
    let mut buf = BytesMut::new();
    let len = read_frame(&mut rx, &mut buf).await?;
    let connack = buf.split_to(len);
    if connack.first() != Some(&0x20) || connack.get(3) != Some(&0) {
        return Err(invalid("CONNECT refused"));
    }
    let filter = Filter::new(topic.as_str(), QoS::AtMostOnce);
    encode(Packet::Subscribe(Subscribe::new(filter, None)), &mut out)?;
    tx.write_all(&out).await?;
    loop {
        let len = read_frame(&mut rx, &mut buf).await?;
        if buf.split_to(len)[0] == 0x90 {
            break;
        }
    }
    let publish = Publish::new(topic.as_str(), QoS::AtMostOnce, nonce.to_vec(), None);
    encode(Packet::Publish(publish), &mut out)?;
    tx.write_all(&out).await?;
    loop {
        let len = read_frame(&mut rx, &mut buf).await?;
        let frame = buf.split_to(len);
        if frame[0] >> 4 == 3 && frame.ends_with(&nonce) {
            break;
        }
    }
    encode(
        Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)),
        &mut out,
    )?;
    tx.write_all(&out).await?;
    Ok(())
}
