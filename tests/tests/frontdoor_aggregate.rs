//! The aggregating front door: device sessions are terminated by the gateway and share a few
//! broker connections, so replies must be routed to the right device, a newer connection of a
//! client id takes over the older one, and a device that stops reading delays nobody else.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::frontdoor_support::*;
use bytes::Bytes;
use roost_tests::Gateway;
use tokio::net::TcpSocket;

/// Subscribes `raw` (device `id`) to its replies and checks the grant.
async fn subscribe_replies(raw: &mut Raw, id: &str) {
    raw.send(&subscribe5(1, &[&format!("devices/{id}/reply/#")]))
        .await;
    assert_eq!(suback_codes(&raw.packet().await, true), vec![1]);
}

/// The next PUBLISH on `raw` (PUBACKing it), skipping other packets.
async fn next_publish(raw: &mut Raw) -> Bytes {
    loop {
        let packet = raw.packet().await;
        if packet[0] >> 4 == 3 {
            if (packet[0] >> 1) & 3 == 1 {
                let header = 1 + packet[1..].iter().position(|b| b & 0x80 == 0).expect("len") + 1;
                let topic_len =
                    usize::from(u16::from_be_bytes([packet[header], packet[header + 1]]));
                let at = header + 2 + topic_len;
                raw.send(&[0x40, 2, packet[at], packet[at + 1]]).await;
            }
            return packet;
        }
    }
}

/// Whether a PUBLISH frame carries Correlation Data `corr` (its bytes appear in the frame).
fn carries(packet: &[u8], corr: &[u8]) -> bool {
    packet.windows(corr.len()).any(|window| window == corr)
}

#[tokio::test]
async fn replies_reach_only_their_own_device() {
    let gateway = Gateway::start();
    let mut a = connected5(gateway.mqtt, "route-a").await;
    let mut b = connected5(gateway.mqtt, "route-b").await;
    subscribe_replies(&mut a, "route-a").await;
    subscribe_replies(&mut b, "route-b").await;
    a.send(&request5("route-a", 5, b"corr-of-a")).await;
    let reply = next_publish(&mut a).await;
    assert_eq!(publish_topic(&reply), "devices/route-a/reply");
    assert!(carries(&reply, b"corr-of-a"), "{reply:02x?}");
    // b hears nothing of a's traffic.
    let quiet = tokio::time::timeout(Duration::from_millis(500), b.packet()).await;
    assert!(quiet.is_err(), "b got {quiet:?}");
    b.send(&request5("route-b", 6, b"corr-of-b")).await;
    let reply = next_publish(&mut b).await;
    assert_eq!(publish_topic(&reply), "devices/route-b/reply");
    assert!(carries(&reply, b"corr-of-b"));
}

#[tokio::test]
async fn a_second_connection_of_a_client_id_takes_over() {
    let gateway = Gateway::start();
    let mut old = connected5(gateway.mqtt, "takeover-1").await;
    subscribe_replies(&mut old, "takeover-1").await;
    let mut new = connected5(gateway.mqtt, "takeover-1").await;
    // The old connection is told (v5 DISCONNECT 0x8E, session taken over) and closed.
    let closing = old.closed().await;
    assert_eq!(
        closing.last().map(|p| p.to_vec()),
        Some(vec![0xE0, 1, 0x8E]),
        "{closing:02x?}"
    );
    subscribe_replies(&mut new, "takeover-1").await;
    new.send(&request5("takeover-1", 3, b"after-takeover"))
        .await;
    let reply = next_publish(&mut new).await;
    assert!(carries(&reply, b"after-takeover"));
    assert_served(gateway.mqtt).await;
}

/// A device with a tiny receive buffer that sends many requests and never reads its replies.
async fn stalled_device(addr: SocketAddr) -> Raw {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(2048).expect("rcvbuf");
    let stream = socket.connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut raw = Raw::with_stream(stream);
    raw.send(&connect5("stalled", None, None)).await;
    assert_eq!(connack_code(&raw.packet().await), 0);
    subscribe_replies(&mut raw, "stalled").await;
    raw
}

#[tokio::test]
async fn a_device_that_stops_reading_does_not_delay_another() {
    let gateway = Gateway::start();
    let mut stalled = stalled_device(gateway.mqtt).await;
    // Hundreds of requests: each is answered (202, or 429 past its quota), none read.
    for pkid in 1..=600u16 {
        stalled
            .send(&request5("stalled", pkid, format!("s-{pkid}").as_bytes()))
            .await;
    }
    let mut other = connected5(gateway.mqtt, "unhindered").await;
    subscribe_replies(&mut other, "unhindered").await;
    for n in 1..=20u16 {
        let corr = format!("u-{n}");
        let start = Instant::now();
        other
            .send(&request5("unhindered", n, corr.as_bytes()))
            .await;
        loop {
            let reply = next_publish(&mut other).await;
            if carries(&reply, corr.as_bytes()) {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "round trip {n} took {:?}",
            start.elapsed()
        );
    }
    // Its replies past the inflight window and the queue were dropped, not waited for (the
    // outbox redelivers final replies when it next wakes).
    let http = gateway.http.expect("the test config enables HTTP");
    let metrics = tokio::task::spawn_blocking(move || metrics(http))
        .await
        .expect("join");
    let dropped = metrics
        .lines()
        .find_map(|line| line.strip_prefix("roost_frontdoor_deliveries_dropped_total "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(dropped.is_some_and(|n| n > 0), "{metrics}");
    drop(stalled);
    assert_served(gateway.mqtt).await;
}

/// GET /metrics.
fn metrics(http: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(http).expect("http");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    body
}

#[tokio::test]
async fn mqtt311_device_is_terminated_and_translated() {
    let gateway = Gateway::start();
    let mut v4 = Raw::open(gateway.mqtt).await;
    v4.send(&connect4("agg-v4", None)).await;
    // session_present = 0 always: held replies live in the outbox, not in a broker session.
    assert_eq!(&v4.packet().await[..], &[0x20, 2, 0, 0]);
    v4.send(&subscribe4(
        1,
        &["devices/agg-v4/reply/#", "devices/other/reply"],
    ))
    .await;
    assert_eq!(suback_codes(&v4.packet().await, false), vec![1, 0x80]);
    v4.send(&[0xC0, 0]).await;
    assert_eq!(&v4.packet().await[..], &[0xD0, 0]);
    v4.send(&publish4("devices/agg-v4/req/stats", 2, b"\xa0"))
        .await;
    assert_eq!(&v4.packet().await[..], &[0x40, 2, 0, 2]);
    let reply = v4.packet().await;
    // A 3.1.1 PUBLISH at QoS 1: topic, packet id, CBOR payload, no properties.
    assert_eq!(reply[0], 0x32, "{reply:02x?}");
    assert_eq!(publish_topic(&reply), "devices/agg-v4/reply");
    v4.send(&[0xE0, 0]).await;
    // DISCONNECT ends the session (a final reply may still come first).
    let before = v4.closed().await;
    assert!(before.iter().all(|p| p[0] >> 4 == 3), "{before:02x?}");
}
