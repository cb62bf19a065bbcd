//! Sockets to rumqttd, and the options that keep a request→reply round trip free of Nagle
//! stalls.
//!
//! rumqttd never sets `TCP_NODELAY` on its sockets, so when it writes a PUBACK and then a reply
//! back to back, Nagle's algorithm holds the second write until the peer's delayed ACK (~40 ms).
//! We own the other end of every rumqttd socket (operators' relayed connections, devices' side
//! links, the service link through `relay`, the health probe): we set `TCP_NODELAY` on all of
//! them and re-arm `TCP_QUICKACK` after each read, so rumqttd's segments are ACKed at once and
//! Nagle never waits.

use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

use crate::wire::packet::frame_len;

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
