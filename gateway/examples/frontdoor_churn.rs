//! Measures the sleepy-device cycle through a running gateway's front door: connect (MQTT 5) →
//! subscribe to the reply topic → request → its `202` → disconnect, by `CONCURRENCY` loops for
//! `SECONDS`, each cycle as a fresh TCP connection with a rotating device id (50 per loop, so
//! each id wakes again every 50 cycles). Final replies that arrive on a later wake are acked
//! and ticked off; after the timed part every id wakes once more to collect what is left, and
//! `finals_missing` counts the requests whose final reply never came.
//!
//! Usage: `cargo run --release --example frontdoor_churn -- ADDR [CONCURRENCY] [SECONDS]`

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{Connect, Filter, Packet, Publish, PublishProperties, Subscribe};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Device ids per loop.
const IDS: u64 = 50;
/// How long the closing sweep may wait for one id's outstanding finals.
const SWEEP_WAIT: Duration = Duration::from_secs(10);

/// Requests sent and not yet answered with a final reply, by device id.
type Pending = HashMap<String, HashSet<u64>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .map_or("127.0.0.1:1883", |a| a.as_str())
        .parse()?;
    let concurrency: usize = args.get(2).map_or(Ok(32), |a| a.parse())?;
    let seconds: u64 = args.get(3).map_or(Ok(10), |a| a.parse())?;
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut latencies = Vec::new();
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (ok, failed) = (ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut cycle = 0u64;
                let mut samples = Vec::new();
                let mut pending = Pending::new();
                while Instant::now() < deadline {
                    let id = format!("churn{}-{worker}-{}", std::process::id(), cycle % IDS);
                    let start = Instant::now();
                    let run = one_cycle(addr, &id, Some(cycle), &mut pending);
                    match tokio::time::timeout(Duration::from_secs(10), run).await {
                        Ok(Ok(())) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            samples.push(start.elapsed());
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    cycle += 1;
                }
                (samples, pending)
            })
        })
        .collect();
    let mut pending = Pending::new();
    for task in tasks {
        let (samples, left) = task.await?;
        latencies.extend(samples);
        pending.extend(left);
    }
    // Every id wakes once more and collects the finals still outstanding.
    let ids: Vec<String> = pending.keys().cloned().collect();
    for id in ids {
        let sweep = one_cycle(addr, &id, None, &mut pending);
        let _ = tokio::time::timeout(SWEEP_WAIT, sweep).await;
    }
    let missing: usize = pending.values().map(HashSet::len).sum();
    for (id, seqs) in pending.iter().filter(|(_, s)| !s.is_empty()) {
        eprintln!("missing finals of {id}: {seqs:?}");
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .copied()
    };
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{{\"concurrency\": {concurrency}, \"seconds\": {seconds}, \"cycles_ok\": {ok}, \
         \"cycles_failed\": {}, \"cycles_per_s\": {:.0}, \"p50_ms\": {:.1}, \"p99_ms\": {:.1}, \
         \"finals_missing\": {missing}}}",
        failed.load(Ordering::Relaxed),
        ok as f64 / seconds as f64,
        pct(0.5).unwrap_or_default().as_secs_f64() * 1e3,
        pct(0.99).unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}

/// One wake of device `id`: connect, subscribe, send request `cycle` (if any), tick off and ack
/// every final reply that arrives, and leave once the `202` came (with no request: once
/// nothing of `id` is pending).
async fn one_cycle(
    addr: SocketAddr,
    id: &str,
    cycle: Option<u64>,
    pending: &mut Pending,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::new();
    let connect = Connect {
        keep_alive: 30,
        client_id: id.into(),
        clean_start: true,
        properties: None,
    };
    Packet::Connect(connect, None, None).write(&mut out, None)?;
    let filter = Filter::new(format!("devices/{id}/reply"), QoS::AtLeastOnce);
    let mut subscribe = Subscribe::new(filter, None);
    subscribe.pkid = 1;
    subscribe.write(&mut out)?;
    if let Some(cycle) = cycle {
        // {"values": [1, 2, 3]}
        let payload = b"\xa1\x66values\x83\x01\x02\x03".to_vec();
        let topic = format!("devices/{id}/req/stats");
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload, Some(corr(cycle)));
        publish.pkid = 2;
        publish.write(&mut out)?;
        pending.entry(id.to_owned()).or_default().insert(cycle);
    }
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let done = match cycle {
            Some(_) => false,
            None => pending.get(id).is_none_or(HashSet::is_empty),
        };
        if done {
            stream.write_all(&[0xE0, 0]).await?;
            return Ok(());
        }
        let packet = match Packet::read(&mut buf, None) {
            Ok(packet) => packet,
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                if stream.read_buf(&mut buf).await? == 0 {
                    anyhow::bail!("closed");
                }
                continue;
            }
            Err(error) => anyhow::bail!("unreadable packet: {error:?}"),
        };
        let publish = match packet {
            Packet::ConnAck(ack)
                if ack.code != rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success =>
            {
                anyhow::bail!("refused {:?}", ack.code)
            }
            Packet::Publish(publish) => publish,
            _ => continue,
        };
        out.clear();
        if publish.qos == QoS::AtLeastOnce {
            out.extend_from_slice(&[0x40, 2]);
            out.extend_from_slice(&publish.pkid.to_be_bytes());
        }
        let properties = publish.properties.unwrap_or_default();
        let status = properties
            .user_properties
            .iter()
            .find(|(k, _)| k == "status")
            .map(|(_, v)| v.as_str());
        let seq = properties
            .correlation_data
            .as_deref()
            .and_then(|c| c.try_into().ok())
            .map(u64::from_be_bytes);
        match (status, seq) {
            (Some("202"), Some(seq)) if Some(seq) == cycle => {
                out.extend_from_slice(&[0xE0, 0]);
                stream.write_all(&out).await?;
                return Ok(());
            }
            (Some("200"), Some(seq)) => {
                if let Some(ids) = pending.get_mut(id) {
                    ids.remove(&seq);
                }
                let ack = Publish::new(
                    format!("devices/{id}/ack"),
                    QoS::AtMostOnce,
                    "",
                    Some(corr(seq)),
                );
                ack.write(&mut out)?;
            }
            _ => {}
        }
        stream.write_all(&out).await?;
    }
}

/// Correlation Data for request `seq`.
fn corr(seq: u64) -> PublishProperties {
    PublishProperties {
        correlation_data: Some(Bytes::from(seq.to_be_bytes().to_vec())),
        ..Default::default()
    }
}
