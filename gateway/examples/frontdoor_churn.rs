//! Measures the sleepy-device cycle through a running gateway's front door: connect (MQTT 5) →
//! subscribe to the reply topic → request → `202` reply → disconnect, by `CONCURRENCY` loops
//! for `SECONDS`, each cycle as a fresh TCP connection with a rotating device id.
//!
//! Usage: `cargo run --release --example frontdoor_churn -- ADDR [CONCURRENCY] [SECONDS]`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{Connect, Filter, Packet, Publish, PublishProperties, Subscribe};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
                while Instant::now() < deadline {
                    let id = format!("churn-{worker}-{}", cycle % 50);
                    let start = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(10), one_cycle(addr, &id, cycle))
                        .await
                    {
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
                samples
            })
        })
        .collect();
    for task in tasks {
        latencies.extend(task.await?);
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
         \"cycles_failed\": {}, \"cycles_per_s\": {:.0}, \"p50_ms\": {:.1}, \"p99_ms\": {:.1}}}",
        failed.load(Ordering::Relaxed),
        ok as f64 / seconds as f64,
        pct(0.5).unwrap_or_default().as_secs_f64() * 1e3,
        pct(0.99).unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}

async fn one_cycle(addr: SocketAddr, id: &str, cycle: u64) -> anyhow::Result<()> {
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
    let properties = PublishProperties {
        correlation_data: Some(Bytes::from(cycle.to_be_bytes().to_vec())),
        ..Default::default()
    };
    // {"values": [1, 2, 3]}
    let payload = b"\xa1\x66values\x83\x01\x02\x03".to_vec();
    let topic = format!("devices/{id}/req/stats");
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload, Some(properties));
    publish.pkid = 2;
    publish.write(&mut out)?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(len) = frame_len(&buf) {
            if buf.len() >= len {
                let frame = buf.split_to(len);
                if frame[0] == 0x20 && frame[3] != 0 {
                    anyhow::bail!("refused {:#x}", frame[3]);
                }
                if frame[0] >> 4 == 3 {
                    // The reply (202): ack it if QoS 1, then leave.
                    if frame[0] & 0b0110 != 0 {
                        let at = 1 + frame[1..].iter().position(|b| b & 0x80 == 0).unwrap_or(0) + 1;
                        let topic_len = usize::from(u16::from_be_bytes([frame[at], frame[at + 1]]));
                        let pkid = &frame[at + 2 + topic_len..at + 4 + topic_len];
                        stream.write_all(&[0x40, 2, pkid[0], pkid[1]]).await?;
                    }
                    stream.write_all(&[0xE0, 0]).await?;
                    return Ok(());
                }
                continue;
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("closed");
        }
    }
}

fn frame_len(buf: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(2 + i + remaining);
        }
    }
    None
}
