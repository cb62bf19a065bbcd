//! A TCP relay on a free loopback port in front of a server, for tests that lose the server's
//! answers on purpose: [`Relay::mute`] drops whatever the server sends, from then on, on the
//! connections open at that moment (they stay open, and what the client sends still reaches the
//! server); connections opened later pass both ways. So a client can send a request that the
//! server carries out while its answer never arrives.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running relay (its tasks end with the test's runtime).
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    open: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Relay {
    /// Relays connections on a free loopback port to `server`.
    pub async fn start(server: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let registry = open.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(server).await else {
                    continue;
                };
                let muted = Arc::new(AtomicBool::new(false));
                registry.lock().expect("relay").push(muted.clone());
                tokio::spawn(relay(client, upstream, muted));
            }
        });
        Relay { addr, open }
    }

    /// Drops what the server sends from now on, on every connection open now.
    pub fn mute(&self) {
        for muted in self.open.lock().expect("relay").iter() {
            muted.store(true, Ordering::SeqCst);
        }
    }
}

async fn relay(client: TcpStream, upstream: TcpStream, muted: Arc<AtomicBool>) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = upstream.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
        let _ = server_tx.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) if !muted.load(Ordering::SeqCst) => {
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
            }
        }
        let _ = client_tx.shutdown().await;
    };
    tokio::join!(up, down);
}
