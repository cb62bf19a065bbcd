//! Property tests for everything a device (or the broker) can make the front door decode:
//! random byte streams and mutated valid packets fed to the packet reader, the checks, the
//! 3.1.1 translation and the SUBACK merge. No panic, no hang (every loop is bounded by input).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use wire::packet::{self as codec, outgoing, translate, PacketReader, Version};

/// Runs a whole stream through the reader as a session would; returns packets accepted.
fn feed(stream: &[u8], chunk: usize) -> usize {
    let mut reader = PacketReader::new(64 * 1024);
    let mut version = None;
    let mut accepted = 0;
    for piece in stream.chunks(chunk.max(1)) {
        reader.buffer_mut().extend_from_slice(piece);
        loop {
            let step = match version {
                None => reader.next_connect().map(|found| {
                    found.map(|(connect, frame)| {
                        version = Some(connect.version);
                        if connect.version == Version::V4 {
                            let _ = translate::connect_up(&frame, 30);
                        }
                    })
                }),
                Some(version) => reader.next(version).map(|found| {
                    found.map(|(packet, frame)| {
                        let mut out = BytesMut::new();
                        if let codec::Inbound::Subscribe(subscription) = packet {
                            let _ = subscription.encode_v5(&[true, false, true]);
                        } else if version == Version::V4 {
                            translate::packet_up(&frame, &mut out);
                        }
                    })
                }),
            };
            match step {
                Ok(Some(())) => accepted += 1,
                Ok(None) | Err(_) => break,
            }
        }
        assert!(
            accepted <= stream.len(),
            "every packet takes at least one byte"
        );
    }
    accepted
}

fn valid_session(v5: bool) -> Vec<u8> {
    use rumqttc::v5::mqttbytes::v5 as mq5;
    use rumqttc::v5::mqttbytes::QoS;
    let mut out = BytesMut::new();
    if v5 {
        let connect = mq5::Connect {
            keep_alive: 30,
            client_id: "fuzz-1".into(),
            clean_start: true,
            properties: None,
        };
        let will = mq5::LastWill::new(
            "devices/fuzz-1/presence",
            "x",
            QoS::AtLeastOnce,
            false,
            None,
        );
        let login = mq5::Login::new("fuzz-1", "secret");
        mq5::Packet::Connect(connect, Some(will), Some(login))
            .write(&mut out, None)
            .expect("encode");
        let mut subscribe = mq5::Subscribe::new_many(
            [
                mq5::Filter::new("devices/fuzz-1/reply/#", QoS::AtLeastOnce),
                mq5::Filter::new("#", QoS::AtMostOnce),
            ],
            None,
        );
        subscribe.pkid = 1;
        subscribe.write(&mut out).expect("encode");
        let mut publish =
            mq5::Publish::new("devices/fuzz-1/req/stats", QoS::AtLeastOnce, "p", None);
        publish.pkid = 2;
        publish.write(&mut out).expect("encode");
        out.extend_from_slice(&[0x40, 2, 0, 3, 0xC0, 0, 0xE0, 1, 0]);
    } else {
        let mut connect = rumqttc::Connect::new("fuzz-1");
        connect.set_login("fuzz-1", "secret");
        connect.write(&mut out).expect("encode");
        let mut subscribe =
            rumqttc::Subscribe::new("devices/fuzz-1/reply", rumqttc::QoS::AtLeastOnce);
        subscribe.pkid = 1;
        subscribe.write(&mut out).expect("encode");
        let mut publish =
            rumqttc::Publish::new("devices/fuzz-1/req/stats", rumqttc::QoS::AtLeastOnce, "p");
        publish.pkid = 2;
        publish.write(&mut out).expect("encode");
        out.extend_from_slice(&[0xA2, 5, 0, 4, 0, 1, b'x', 0xC0, 0, 0xE0, 0]);
    }
    out.to_vec()
}

#[test]
fn valid_sessions_are_accepted_whole() {
    assert_eq!(feed(&valid_session(true), 1), 6);
    assert_eq!(feed(&valid_session(false), 7), 6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_streams(stream in proptest::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..64) {
        feed(&stream, chunk);
    }

    #[test]
    fn random_streams_after_a_valid_connect(
        v5 in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..64,
    ) {
        let mut stream = valid_session(v5);
        let connect_len = codec::frame_len(&stream, usize::MAX).expect("ok").expect("complete");
        stream.truncate(connect_len);
        stream.extend(tail);
        feed(&stream, chunk);
    }

    #[test]
    fn mutated_valid_sessions(
        v5 in any::<bool>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut stream = valid_session(v5);
        for (at, byte) in flips {
            let at = at % stream.len();
            stream[at] = byte;
        }
        stream.truncate(cut % (stream.len() + 1));
        feed(&stream, 5);
    }

    #[test]
    fn broker_frames_and_merges_never_panic(
        frame in proptest::collection::vec(any::<u8>(), 0..256),
        plan in proptest::collection::vec(proptest::option::of(any::<u8>()), 0..8),
    ) {
        let _ = translate::packet_down(&frame);
        let _ = outgoing::merge_suback(Version::V5, &frame, &plan);
        let _ = outgoing::merge_suback(Version::V4, &frame, &plan);
        let _ = codec::check(Version::V5, &Bytes::from(frame.clone()));
        let _ = codec::check(Version::V4, &Bytes::from(frame));
    }
}
