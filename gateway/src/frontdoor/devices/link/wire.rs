//! The wire side of a [`super::Link`]: the writer (subscribes, acks, pings, batched into one
//! write), the reader (SUBACK matched by packet id, PUBLISH acked and handed on), and frame
//! helpers.
//!
//! Fed by `drive` in [`super`]; feeds the broker socket and the session's callback.

use crate::wire::packet::header_len;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{self, Filter, Packet, Subscribe};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use super::{Inflight, OnMessage, Request, KEEP_ALIVE_S};
use crate::broker::socket::rearm_quickack;
use crate::wire::packet::frame_len;

pub(super) async fn write_loop(
    mut tx: OwnedWriteHalf,
    requests_rx: &mut mpsc::UnboundedReceiver<Request>,
    mut control_rx: mpsc::UnboundedReceiver<Bytes>,
    inflight: &Mutex<Inflight>,
) -> io::Result<()> {
    let period = Duration::from_secs(u64::from(KEEP_ALIVE_S) / 2);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        tokio::select! {
            biased;
            control = control_rx.recv() => match control {
                Some(bytes) => out.extend_from_slice(&bytes),
                None => return Err(io::ErrorKind::UnexpectedEof.into()),
            },
            request = requests_rx.recv() => {
                let Some(request) = request else {
                    tx.write_all(&[0xE0, 0]).await.ok();
                    return Ok(());
                };
                apply(request, inflight, &mut out)?;
                // Batch what is already queued into one write.
                for _ in 0..256 {
                    match requests_rx.try_recv() {
                        Ok(request) => apply(request, inflight, &mut out)?,
                        Err(_) => break,
                    }
                }
            }
            _ = ping.tick() => out.extend_from_slice(&crate::wire::packet::outgoing::PINGREQ),
        }
        while let Ok(bytes) = control_rx.try_recv() {
            out.extend_from_slice(&bytes);
        }
        tx.write_all(&out).await?;
        out.clear();
    }
}

fn apply(request: Request, inflight: &Mutex<Inflight>, out: &mut BytesMut) -> io::Result<()> {
    let Request {
        filters,
        granted_tx,
    } = request;
    subscribe(filters, granted_tx, inflight, out)
}

fn subscribe(
    filters: Vec<(String, u8)>,
    granted_tx: oneshot::Sender<Vec<u8>>,
    inflight: &Mutex<Inflight>,
    out: &mut BytesMut,
) -> io::Result<()> {
    let mut table = inflight.lock().unwrap_or_else(|e| e.into_inner());
    let pkid = table
        .pkid()
        .ok_or_else(|| io::Error::other("no free packet id"))?;
    table.subscribes.insert(pkid, granted_tx);
    drop(table);
    let filters = filters.into_iter().map(|(filter, qos)| {
        let qos = if qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        Filter::new(filter, qos)
    });
    let mut packet = Subscribe::new_many(filters, None);
    packet.pkid = pkid;
    encode(Packet::Subscribe(packet), out)
}

pub(super) async fn read_loop(
    mut rx: OwnedReadHalf,
    mut buf: BytesMut,
    max_packet: usize,
    on_message: &mut OnMessage,
    inflight: &Mutex<Inflight>,
    control_tx: mpsc::UnboundedSender<Bytes>,
) -> io::Result<()> {
    loop {
        let frame = next_frame(&mut rx, &mut buf, max_packet).await?;
        let body = &frame[header_len(&frame)..];
        let pkid = || {
            body.get(..2)
                .map_or(0, |id| u16::from_be_bytes([id[0], id[1]]))
        };
        match frame[0] >> 4 {
            3 => {
                if (frame[0] >> 1) & 0b11 > 0 {
                    let topic_len = body
                        .get(..2)
                        .map_or(0, |n| usize::from(u16::from_be_bytes([n[0], n[1]])));
                    let id = body.get(2 + topic_len..4 + topic_len).unwrap_or(&[0, 0]);
                    let _ = control_tx.send(Bytes::from(vec![0x40, 2, id[0], id[1]]));
                }
                on_message(frame);
            }
            9 => {
                let granted_tx = inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .subscribes
                    .remove(&pkid());
                let codes = subscribe_codes(body);
                if let Some(granted_tx) = granted_tx {
                    let _ = granted_tx.send(codes);
                }
            }
            14 => return Err(io::Error::other("broker sent DISCONNECT")),
            _ => {}
        }
    }
}

/// The reason codes of a v5 SUBACK body (after the fixed header).
fn subscribe_codes(body: &[u8]) -> Vec<u8> {
    let Some(rest) = body.get(2..) else {
        return Vec::new();
    };
    let mut props = 0usize;
    let mut used = 0;
    for (i, byte) in rest.iter().take(4).enumerate() {
        props |= usize::from(byte & 0x7F) << (7 * i);
        used = i + 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    rest.get(used + props..).unwrap_or_default().to_vec()
}

/// Reads one whole frame, re-arming `TCP_QUICKACK` after every read.
pub(super) async fn next_frame(
    rx: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    max_packet: usize,
) -> io::Result<Bytes> {
    loop {
        if let Some(len) =
            frame_len(buf, max_packet).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            if buf.len() >= len {
                return Ok(buf.split_to(len).freeze());
            }
            buf.reserve(len - buf.len());
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        if rx.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        rearm_quickack(rx);
    }
}

pub(super) fn encode(packet: Packet, out: &mut BytesMut) -> io::Result<()> {
    packet
        .write(out, None)
        .map(|_| ())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

/// A v5 PUBLISH frame for a Will or a test.
pub fn publish_frame(topic: &str, qos: u8, retain: bool, payload: Bytes) -> Option<Bytes> {
    let qos = match qos {
        0 => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    };
    let mut publish = v5::Publish::new(topic, qos, payload, None);
    publish.retain = retain;
    publish.pkid = u16::from(qos != QoS::AtMostOnce);
    let mut out = BytesMut::new();
    encode(Packet::Publish(publish), &mut out).ok()?;
    Some(out.freeze())
}
