//! The front door: the device-facing MQTT listener on `[broker] listen`.
//!
//! Fed by device TCP connections; feeds the embedded broker's loopback listeners. Each connection
//! is told apart by its CONNECT (protocol level 4 = MQTT 3.1.1, 5 = MQTT 5) and relayed to the
//! matching rumqttd listener. The relay owns both sockets, which is what cures rumqttd's Nagle
//! stalls (see [`relay`]).

pub mod relay;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::EmbeddedBroker;

/// The device-facing listener, bound but not yet serving.
#[derive(Debug)]
pub struct FrontDoor {
    listener: TcpListener,
}

impl FrontDoor {
    /// Binds the device-facing address. A taken port is an error naming the address.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<FrontDoor> {
        let listener = TcpListener::bind(addr).await?;
        Ok(FrontDoor { listener })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts devices until `shutdown`, relaying each to the broker.
    pub async fn run(self, broker: EmbeddedBroker, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(ok) => ok,
                Err(error) => {
                    // Out of file descriptors and the like: transient, keep serving others.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let broker = broker.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    outcome = relay::serve_device(stream, &broker) => {
                        if let Err(error) = outcome {
                            tracing::debug!(%peer, %error, "device connection closed");
                        }
                    }
                }
            });
        }
        tracker.close();
        tracker.wait().await;
    }
}
