//! An operator's connection, broker → operator direction (`TCP_QUICKACK` re-armed after each
//! read, see `broker::socket`).
//!
//! Fed by the broker socket and by [`Control`] messages from the device → broker side; feeds the
//! device socket. Broker bytes pass through untouched in whole frames, except a SUBACK we must
//! merge our denials into and a PINGRESP answering a PINGREQ we sent ourselves. **Invariant:**
//! packets the front door writes to a device go between whole broker frames, never inside one.

use std::collections::HashMap;
use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;

use crate::broker::socket::rearm_quickack;

use crate::wire::packet::outgoing;
use crate::wire::packet::translate;
use crate::wire::packet::{frame_len, Version};

/// What the device → broker side asks of this side.
#[derive(Debug)]
pub enum Control {
    /// Write these bytes (a whole packet) to the device.
    Write(Bytes),
    /// Write these bytes to the device, then close it.
    Final(Bytes),
    /// The SUBACK for `pkid` needs our denials merged in.
    Watch {
        /// The SUBSCRIBE's packet id.
        pkid: u16,
        /// One slot per filter the device sent.
        plan: Vec<Slot>,
    },
    /// We sent a PINGREQ upstream; swallow its PINGRESP.
    ExpectPingResp,
}

/// One filter of a watched SUBSCRIBE.
#[derive(Debug, Clone, Copy)]
pub enum Slot {
    /// Denied by us with this code (not forwarded).
    Denied(u8),
    /// Forwarded to the broker, which answers for it.
    Forwarded,
}

/// State of the broker → device pump.
pub struct Downstream<W> {
    /// The device's write half.
    pub device_tx: W,
    /// Broker bytes read but not yet forwarded (a partial frame).
    pub buf: BytesMut,
    /// Requests from the device → broker side.
    pub control_rx: mpsc::Receiver<Control>,
    /// The device's protocol version (the broker side is always MQTT 5).
    pub version: Version,
    watches: HashMap<u16, Vec<Slot>>,
    pings_expected: u32,
}

enum Step {
    Go,
    Close,
}

impl<W: AsyncWrite + Unpin> Downstream<W> {
    /// A pump over `device_tx`, starting with `buf` (bytes already read after the CONNACK).
    pub fn new(
        device_tx: W,
        buf: BytesMut,
        control_rx: mpsc::Receiver<Control>,
        version: Version,
    ) -> Self {
        Downstream {
            device_tx,
            buf,
            control_rx,
            version,
            watches: HashMap::new(),
            pings_expected: 0,
        }
    }

    /// Relays until the broker or the device side closes.
    pub async fn run(mut self, mut upstream_rx: OwnedReadHalf) -> io::Result<()> {
        let ended = loop {
            if let Step::Close = self.forward_frames().await? {
                break "a final packet";
            }
            tokio::select! {
                biased;
                control = self.control_rx.recv() => match control {
                    Some(control) => {
                        if let Step::Close = self.apply(control).await? {
                            break "a final packet";
                        }
                    }
                    None => break "the client side",
                },
                read = upstream_rx.read_buf(&mut self.buf) => {
                    if read? == 0 {
                        break "the broker";
                    }
                    rearm_quickack(&upstream_rx);
                }
            }
        };
        tracing::debug!(ended, "operator relay: closing the client's socket");
        self.device_tx.shutdown().await.ok();
        Ok(())
    }

    async fn apply(&mut self, control: Control) -> io::Result<Step> {
        match control {
            Control::Write(bytes) => self.device_tx.write_all(&bytes).await?,
            Control::Final(bytes) => {
                self.device_tx.write_all(&bytes).await?;
                return Ok(Step::Close);
            }
            Control::Watch { pkid, plan } => {
                self.watches.insert(pkid, plan);
            }
            Control::ExpectPingResp => self.pings_expected += 1,
        }
        Ok(Step::Go)
    }

    /// Everything the device side sent before the broker's packet we are looking at.
    async fn drain_control(&mut self) -> io::Result<Step> {
        while let Ok(control) = self.control_rx.try_recv() {
            if let Step::Close = self.apply(control).await? {
                return Ok(Step::Close);
            }
        }
        Ok(Step::Go)
    }

    /// Writes every complete frame in the buffer, intercepting SUBACK and PINGRESP.
    async fn forward_frames(&mut self) -> io::Result<Step> {
        let (mut start, mut pos) = (0, 0);
        while let Some(len) = frame_len(&self.buf[pos..], usize::MAX)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            if pos + len > self.buf.len() {
                break;
            }
            let first = self.buf[pos];
            // A 3.1.1 device gets every frame translated; a v5 device only the two we watch.
            if self.version == Version::V4 || first == 0x90 || first == 0xD0 {
                self.device_tx.write_all(&self.buf[start..pos]).await?;
                start = pos + len;
                // Control sent before the device's packet went upstream is already queued.
                if let Step::Close = self.drain_control().await? {
                    return Ok(Step::Close);
                }
                let frame = Bytes::copy_from_slice(&self.buf[pos..pos + len]);
                let frame = if first == 0xD0 && self.pings_expected > 0 {
                    self.pings_expected -= 1;
                    None
                } else if first == 0x90 {
                    Some(self.suback(&frame).await)
                } else {
                    Some(frame)
                };
                let frame = match self.version {
                    Version::V5 => frame,
                    Version::V4 => frame.and_then(|frame| translate::packet_down(&frame)),
                };
                if let Some(frame) = frame {
                    self.device_tx.write_all(&frame).await?;
                }
            }
            pos += len;
        }
        self.device_tx.write_all(&self.buf[start..pos]).await?;
        self.buf.advance(pos);
        Ok(Step::Go)
    }

    async fn suback(&mut self, frame: &[u8]) -> Bytes {
        let pkid = frame
            .get(2..4)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .unwrap_or(0);
        let Some(plan) = self.watches.remove(&pkid) else {
            return Bytes::copy_from_slice(frame);
        };
        let codes: Vec<Option<u8>> = plan
            .iter()
            .map(|slot| match slot {
                Slot::Denied(code) => Some(*code),
                Slot::Forwarded => None,
            })
            .collect();
        // The broker side always speaks MQTT 5.
        outgoing::merge_suback(Version::V5, frame, &codes)
            .unwrap_or_else(|| Bytes::copy_from_slice(frame))
    }
}
