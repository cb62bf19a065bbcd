//! `device-sim echo --serve ADDR`: the gateway's own front door and embedded rumqttd, started
//! in-process with no store, no intake and no workers, so the echo responder measures exactly the
//! message path devices use (front door relay with nodelay/quickack → rumqttd → front door) and
//! nothing else. Uses the gateway library's [`FrontDoor`] and [`EmbeddedBroker`] as they are.

use std::net::SocketAddr;

use gateway::broker::EmbeddedBroker;
use gateway::config::Limits;
use gateway::frontdoor::FrontDoor;
use tokio_util::sync::CancellationToken;

/// A front door + broker serving until its token is cancelled.
#[derive(Debug)]
pub struct BareBroker {
    /// The device-facing address (the front door).
    pub addr: SocketAddr,
    /// Cancels the front door.
    pub stop: CancellationToken,
}

/// Starts rumqttd with the gateway's default limits and binds the front door on `listen`.
pub async fn start(listen: SocketAddr) -> Result<BareBroker, String> {
    let front = FrontDoor::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = front
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    // Starting rumqttd probes its listeners synchronously: keep that off the async workers.
    let broker = tokio::task::spawn_blocking(|| EmbeddedBroker::start(&Limits::default()))
        .await
        .map_err(|e| format!("broker start task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    tokio::spawn(front.run(broker, stop.clone()));
    Ok(BareBroker { addr, stop })
}
