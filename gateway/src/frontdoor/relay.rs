//! Byte relay between a device socket and a broker socket, with the socket options that keep a
//! request→reply round trip free of Nagle stalls.
//!
//! rumqttd never sets `TCP_NODELAY` on its sockets, so when it writes a PUBACK and then a reply
//! back to back, Nagle's algorithm holds the second write until the peer's delayed ACK (~40 ms).
//! We own the other end of every rumqttd socket: we set `TCP_NODELAY` on all our sockets and
//! re-arm `TCP_QUICKACK` on the broker side after each read, so rumqttd's segments are ACKed at
//! once and Nagle never waits.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::broker::EmbeddedBroker;

const BUF: usize = 16 * 1024;

/// Reads a device's CONNECT header, picks the broker listener for its protocol version, and
/// relays until either side closes.
pub async fn serve_device(device: TcpStream, broker: &EmbeddedBroker) -> io::Result<()> {
    device.set_nodelay(true)?;
    let mut device = device;
    let mut head = Vec::with_capacity(64);
    let level = loop {
        if let Some(level) = connect_protocol_level(&head)? {
            break level;
        }
        if head.len() > 64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "no CONNECT"));
        }
        let mut byte = [0u8; 64];
        let n = device.read(&mut byte).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&byte[..n]);
    };
    let upstream_addr = match level {
        5 => broker.v5,
        _ => broker.v4,
    };
    let upstream = connect_upstream(upstream_addr).await?;
    relay(device, upstream, &head).await
}

/// Connects to a broker listener with `TCP_NODELAY` set.
pub async fn connect_upstream(addr: SocketAddr) -> io::Result<TcpStream> {
    let upstream = TcpStream::connect(addr).await?;
    upstream.set_nodelay(true)?;
    Ok(upstream)
}

/// Relays bytes both ways, first sending `already_read` upstream.
pub async fn relay(device: TcpStream, upstream: TcpStream, already_read: &[u8]) -> io::Result<()> {
    let (device_rx, device_tx) = device.into_split();
    let (upstream_rx, mut upstream_tx) = upstream.into_split();
    upstream_tx.write_all(already_read).await?;
    let up = pump(device_rx, upstream_tx, false);
    let down = pump(upstream_rx, device_tx, true);
    // Whichever direction ends first ends the connection.
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, quickack: bool) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await.ok();
            return Ok(());
        }
        if quickack {
            rearm_quickack(&from);
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Linux clears `TCP_QUICKACK` after it fires; set it again so the next segment is ACKed at once.
#[cfg(target_os = "linux")]
fn rearm_quickack(stream: &OwnedReadHalf) {
    let socket = socket2::SockRef::from(stream.as_ref());
    let _ = socket.set_quickack(true);
}

#[cfg(not(target_os = "linux"))]
fn rearm_quickack(_stream: &OwnedReadHalf) {}

/// The protocol level of a CONNECT at the start of `head`, once enough bytes are there.
fn connect_protocol_level(head: &[u8]) -> io::Result<Option<u8>> {
    let Some(&first) = head.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "first packet is not CONNECT",
        ));
    }
    // Remaining length: 1 to 4 bytes.
    let mut i = 1;
    loop {
        let Some(&b) = head.get(i) else {
            return Ok(None);
        };
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad remaining length",
            ));
        }
    }
    // Protocol name: 2-byte length then the name, then the level byte.
    let (Some(&hi), Some(&lo)) = (head.get(i), head.get(i + 1)) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    if name_len > 6 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad protocol name",
        ));
    }
    Ok(head.get(i + 2 + name_len).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_protocol_level() {
        let v5 = [0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02];
        assert_eq!(connect_protocol_level(&v5).expect("valid"), Some(5));
        let v4 = [0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04];
        assert_eq!(connect_protocol_level(&v4).expect("valid"), Some(4));
        assert_eq!(connect_protocol_level(&v5[..5]).expect("partial"), None);
        assert!(connect_protocol_level(&[0x30, 0x00]).is_err());
    }
}
