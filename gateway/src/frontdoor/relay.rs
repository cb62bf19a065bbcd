//! The broker → device direction, and the socket options that keep a request→reply round trip
//! free of Nagle stalls.
//!
//! rumqttd never sets `TCP_NODELAY` on its sockets, so when it writes a PUBACK and then a reply
//! back to back, Nagle's algorithm holds the second write until the peer's delayed ACK (~40 ms).
//! We own the other end of every rumqttd socket: we set `TCP_NODELAY` on all our sockets and
//! re-arm `TCP_QUICKACK` on the broker side after each read, so rumqttd's segments are ACKed at
//! once and Nagle never waits.
//!
//! Fed by the broker socket and by [`Control`] messages from the device → broker side; feeds the
//! device socket. Broker bytes pass through untouched in whole frames, except a SUBACK we must
//! merge our denials into and a PINGRESP answering a PINGREQ we sent ourselves. **Invariant:**
//! packets the front door writes to a device go between whole broker frames, never inside one.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::codec::{frame_len, Version};
use super::outgoing;
use super::translate;
use super::Presence;

/// What the device → broker side asks of this side.
#[derive(Debug)]
pub enum Control {
    /// Write these bytes (a whole packet) to the device.
    Write(Bytes),
    /// Write these bytes to the device, then close it.
    Final(Bytes),
    /// The SUBACK for `pkid` needs our denials merged in and/or announces a reply subscription.
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
    /// Forwarded; `reply` when it is one of the device's reply filters.
    Forwarded {
        /// A reply filter: a grant means held replies can be delivered.
        reply: bool,
    },
}

/// Connects to a broker listener with `TCP_NODELAY` set.
pub async fn connect_upstream(addr: SocketAddr) -> io::Result<TcpStream> {
    let upstream = TcpStream::connect(addr).await?;
    upstream.set_nodelay(true)?;
    Ok(upstream)
}

/// Relays bytes both ways, unchecked, first sending `already_read` upstream: only for the
/// gateway's own service connection (the internal relay in `app`), never for devices.
pub async fn relay(device: TcpStream, upstream: TcpStream, already_read: &[u8]) -> io::Result<()> {
    let (mut device_rx, mut device_tx) = device.into_split();
    let (mut upstream_rx, mut upstream_tx) = upstream.into_split();
    upstream_tx.write_all(already_read).await?;
    let up = tokio::io::copy(&mut device_rx, &mut upstream_tx);
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = upstream_rx.read(&mut buf).await?;
            if n == 0 {
                device_tx.shutdown().await.ok();
                return Ok::<(), io::Error>(());
            }
            rearm_quickack(&upstream_rx);
            device_tx.write_all(&buf[..n]).await?;
        }
    };
    // Whichever direction ends first ends the connection.
    tokio::select! {
        r = up => r.map(|_| ()),
        r = down => r,
    }
}

/// Linux clears `TCP_QUICKACK` after it fires; set it again so the next segment is ACKed at once.
#[cfg(target_os = "linux")]
pub fn rearm_quickack(stream: &OwnedReadHalf) {
    let socket = socket2::SockRef::from(stream.as_ref());
    let _ = socket.set_quickack(true);
}

/// No-op where `TCP_QUICKACK` does not exist.
#[cfg(not(target_os = "linux"))]
pub fn rearm_quickack(_stream: &OwnedReadHalf) {}

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
    /// Where a granted reply subscription is announced, for a device.
    pub presence: Option<Presence>,
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
        presence: Option<Presence>,
    ) -> Self {
        Downstream {
            device_tx,
            buf,
            control_rx,
            version,
            presence,
            watches: HashMap::new(),
            pings_expected: 0,
        }
    }

    /// Relays until the broker or the device side closes.
    pub async fn run(mut self, mut upstream_rx: OwnedReadHalf) -> io::Result<()> {
        loop {
            if let Step::Close = self.forward_frames().await? {
                break;
            }
            tokio::select! {
                biased;
                control = self.control_rx.recv() => match control {
                    Some(control) => {
                        if let Step::Close = self.apply(control).await? {
                            break;
                        }
                    }
                    None => break,
                },
                read = upstream_rx.read_buf(&mut self.buf) => {
                    if read? == 0 {
                        break;
                    }
                    rearm_quickack(&upstream_rx);
                }
            }
        }
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
                Slot::Forwarded { .. } => None,
            })
            .collect();
        // The broker side always speaks MQTT 5.
        let merged = outgoing::merge_suback(Version::V5, frame, &codes)
            .unwrap_or_else(|| Bytes::copy_from_slice(frame));
        // The merged SUBACK's codes line up with the plan: a granted reply filter is < 0x80.
        let codes_start = merged.len() - plan.len();
        let reply_granted = plan
            .iter()
            .zip(&merged[codes_start..])
            .any(|(slot, code)| matches!(slot, Slot::Forwarded { reply: true }) && *code < 0x80);
        if reply_granted {
            if let Some(presence) = &self.presence {
                presence.subscribed().await;
            }
        }
        merged
    }
}

/// Reads from `from` into `buf` until it holds one complete frame; returns its length.
pub async fn read_frame<R: AsyncRead + Unpin>(
    from: &mut R,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    loop {
        if let Some(len) =
            frame_len(buf, usize::MAX).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            if buf.len() >= len {
                return Ok(len);
            }
        }
        if from.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}
