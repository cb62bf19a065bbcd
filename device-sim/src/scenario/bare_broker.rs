//! `device-sim echo --serve ADDR`: the gateway's own front door and embedded rumqttd, started
//! in-process with no store, no intake and no workers, wired as the gateway wires them: devices
//! come in through the front door (identity, ACL, their sessions terminated there), their
//! publishes arrive on the service inbox and replies go back through the front door's router,
//! as the gateway's intake and outbox do. So the echo measures exactly the message path and
//! nothing else. Uses the gateway library's [`FrontDoor`] and [`EmbeddedBroker`] as they are.

use std::net::SocketAddr;

use gateway::broker::EmbeddedBroker;
use gateway::config::{AuthConfig, Limits};
use gateway::flow::{self, Inbound};
use gateway::frontdoor::devices::router::Router;
use gateway::frontdoor::{FrontDoor, Settings};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A front door + broker serving until [`BareBroker::stop`] is cancelled.
#[derive(Debug)]
pub struct BareBroker {
    /// Where devices connect: the front door.
    pub addr: SocketAddr,
    /// Device publishes, as the gateway's intake gets them.
    pub inbox_rx: mpsc::Receiver<Inbound>,
    /// Where replies for devices go, as the gateway's outbox sends them.
    pub router: Arc<Router>,
    /// Stops the front door and the relay.
    pub stop: CancellationToken,
    /// Holds the (empty) credentials database the front door reads.
    _dir: tempfile::TempDir,
}

/// Starts rumqttd with the gateway's default limits, the front door on `listen` (anonymous
/// devices allowed, as on a fresh loopback install).
pub async fn start(listen: SocketAddr) -> Result<BareBroker, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let limits = Limits::default();
    let settings = Settings {
        listen,
        limits: limits.clone(),
        auth: AuthConfig {
            allow_anonymous: true,
            allow_anonymous_remote: false,
        },
        tls: None,
        db_path: dir.path().join(gateway::store::DB_FILE),
    };
    let front = FrontDoor::bind(settings)
        .await
        .map_err(|e| format!("front door on {listen}: {e}"))?;
    let addr = front
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    // Starting rumqttd probes its listeners synchronously: keep that off the async workers.
    let broker = tokio::task::spawn_blocking(move || EmbeddedBroker::start(&limits))
        .await
        .map_err(|e| format!("broker start task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let router = front.router();
    let (inbox_tx, inbox_rx) = flow::inbox();
    // Presence events matter to the gateway's outbox only; here they are drained and dropped.
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    tokio::spawn(front.run(broker, inbox_tx, events_tx, stop.clone()));
    Ok(BareBroker {
        addr,
        inbox_rx,
        router,
        stop,
        _dir: dir,
    })
}
