//! Wiring only: builds each stage from its config section, connects them with channels, and
//! stops them in flow order on SIGINT/SIGTERM.
//!
//! Start order: store (and recovery of what a previous run left), broker and front door, the
//! service link, then intake, workers and outbox; "listening" is printed only once requests can
//! be served. Stop order: draining (new requests get `503`), the front door, the workers (what
//! is queued stays queued in the store), the outbox, retained `offline`, exit 0.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::analytics::pool::Pool;
use crate::analytics::scheduler::Scheduler;
use crate::broker::{BrokerError, EmbeddedBroker};
use crate::config::{BrokerConfig, Config};
use crate::frontdoor::{self, relay, FrontDoor, FrontDoorError, FrontDoorEvent};
use crate::intake::{Intake, IntakeStats};
use crate::mqtt::{self, LinkConfig, LinkError};
use crate::outbox::{DeviceEvent, Outbox};
use crate::status::http::{self, Health, HttpState};
use crate::status::{GatewayStatus, Metrics};
use crate::store::{Store, StoreError};
use crate::wire::topics;
use crate::{recovery, status};

/// How often the watchdog probes the embedded broker, and how long one probe may take.
const HEALTH_PROBE_PERIOD: Duration = Duration::from_secs(3);

/// Why the gateway stopped other than by a clean drain.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// An address in the config could not be bound.
    #[error("cannot listen on {addr} (config key {key}): {source}")]
    Bind {
        /// The config key.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened or failed while serving.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedded broker failed to start.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The embedded broker stopped while serving.
    #[error("the embedded broker stopped; exiting so the supervisor restarts the gateway")]
    BrokerStopped,
    /// The front door could not start (listen address, TLS files, credentials store).
    #[error(transparent)]
    FrontDoor(#[from] FrontDoorError),
    /// The embedded broker stopped answering health probes.
    #[error("{0}; exiting so the supervisor restarts the gateway")]
    BrokerUnhealthy(#[from] frontdoor::watchdog::Unhealthy),
    /// The data directory could not be created.
    #[error("cannot create data_dir {path} (config key gateway.data_dir): {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The service could not connect to the broker.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A stage hit a fatal fault.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl AppError {
    /// The process exit code: 2 for what the operator must fix in the config, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Bind { .. } | AppError::DataDir { .. } => crate::cli::EXIT_CONFIG,
            AppError::FrontDoor(FrontDoorError::Bind { .. } | FrontDoorError::Tls(_)) => {
                crate::cli::EXIT_CONFIG
            }
            _ => 1,
        }
    }
}

fn bind_error(key: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> AppError {
    move |source| AppError::Bind { key, addr, source }
}

/// Runs the gateway until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), AppError> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let limits = config.limits.clone();
    let gateway_id = config.gateway.id.clone();

    // Bind what the operator configured first, so a taken port is a config error (exit 2).
    let front = match &config.broker {
        BrokerConfig::Embedded { listen } => {
            let data_dir = &config.gateway.data_dir;
            std::fs::create_dir_all(data_dir).map_err(|source| AppError::DataDir {
                path: data_dir.clone(),
                source,
            })?;
            Some(
                FrontDoor::bind(frontdoor::Settings {
                    listen: *listen,
                    limits: limits.clone(),
                    auth: config.auth.clone(),
                    tls: config.tls.clone(),
                    db_path: data_dir.join(crate::store::DB_FILE),
                })
                .await?,
            )
        }
        BrokerConfig::External { .. } => None,
    };

    let http_listener = match config.http {
        Some(addr) => Some(
            http::bind(addr)
                .await
                .map_err(bind_error("http.listen", addr))?,
        ),
        None => None,
    };

    let store = Store::open(&config.gateway.data_dir, config.store.sync_full)?;
    let workers = config.gateway.workers.get();
    let scheduler = Arc::new(Scheduler::new(
        limits.queue_capacity,
        limits.max_pending_per_device,
        workers,
    ));
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<String>();
    let recovered = recovery::recover(&store, &scheduler, &limits, &done_tx).await?;

    let (link_host, link_port, broker, filters) = match (&config.broker, front.as_ref()) {
        (BrokerConfig::Embedded { .. }, Some(_)) => {
            let broker = EmbeddedBroker::start(&limits)?;
            let internal = internal_relay(broker.v5, shutdown.child_token()).await?;
            let filters = vec![topics::REQUEST_FILTER.to_owned()];
            (
                internal.ip().to_string(),
                internal.port(),
                Some(broker),
                filters,
            )
        }
        (
            BrokerConfig::External {
                host,
                port,
                share_group,
            },
            _,
        ) => {
            let filters = vec![topics::shared_request_filter(share_group)];
            (host.clone(), *port, None, filters)
        }
        (BrokerConfig::Embedded { .. }, None) => unreachable!("embedded mode binds its front door"),
    };
    let mut filters = filters;
    filters.extend(
        [
            topics::ACK_FILTER,
            topics::PRESENCE_FILTER,
            topics::TELEMETRY_FILTER,
        ]
        .map(String::from),
    );
    let started_at = crate::store::now_ms();
    let metrics = Arc::new(Metrics::default());
    let (link, inbox_rx) = mqtt::connect(LinkConfig {
        host: link_host,
        port: link_port,
        client_id: format!("roost-{gateway_id}"),
        filters,
        will: Some(status::offline_will(&gateway_id, started_at)),
        max_packet_bytes: limits.max_payload_bytes,
    })
    .await?;
    let publisher = link.publisher.clone();

    let draining = Arc::new(AtomicBool::new(false));
    let intake_stats = Arc::new(IntakeStats::default());
    let intake = Intake {
        store: store.clone(),
        publisher: publisher.clone(),
        scheduler: scheduler.clone(),
        limits: limits.clone(),
        gateway_id: gateway_id.clone(),
        replies_tx: done_tx.clone(),
        events_tx: events_tx.clone(),
        draining: draining.clone(),
        stats: intake_stats.clone(),
    };
    let intake_task = tokio::spawn(intake.run(inbox_rx));
    let worker_threads = Pool::new(
        scheduler.clone(),
        store.clone(),
        limits.reply_ttl,
        done_tx.clone(),
        fatal_tx.clone(),
        metrics.clone(),
        limits.max_series_len,
    )
    .start(workers);
    drop(done_tx);
    let outbox_stop = CancellationToken::new();
    let outbox = Outbox {
        publisher: publisher.clone(),
        store: store.clone(),
        scheduler: scheduler.clone(),
        metrics: metrics.clone(),
        gateway_id: gateway_id.clone(),
        limits: limits.clone(),
        presence: Default::default(),
        board: Default::default(),
    };
    let outbox_task = tokio::spawn(outbox.run(done_rx, events_rx, outbox_stop.clone()));
    let gateway_status = GatewayStatus {
        publisher: publisher.clone(),
        store: store.clone(),
        scheduler: scheduler.clone(),
        metrics: metrics.clone(),
        gateway_id: gateway_id.clone(),
        started_at_ms: started_at,
    };
    gateway_status.publish("online").await;
    let status_stop = CancellationToken::new();
    tokio::spawn(gateway_status.clone().run(status_stop.clone()));
    let health = Arc::new(Health::default());
    // The HTTP API serves through the drain (so `/healthz` and `/api/status` show it) until exit.
    let http_stop = CancellationToken::new();
    let _http_stop_on_exit = http_stop.clone().drop_guard();
    let http_addr = match http_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            let state = HttpState::new(
                gateway_status.clone(),
                intake_stats.clone(),
                health.clone(),
                store.path().to_owned(),
            );
            tokio::spawn(http::serve(listener, state, http_stop.clone()));
            addr
        }
        None => None,
    };
    let http_part = http_addr.map(|a| format!(" http={a}")).unwrap_or_default();

    let front_task = match (front, &broker) {
        (Some(front), Some(broker)) => {
            let local = front.local_addr().map_err(bind_error(
                "broker.listen",
                "0.0.0.0:0".parse().expect("addr"),
            ))?;
            let (presence_tx, presence_rx) = mpsc::channel(1024);
            tokio::spawn(bridge_presence(presence_rx, events_tx.clone()));
            println!("roost gateway listening mqtt={local}{http_part}");
            Some(tokio::spawn(front.run(
                broker.clone(),
                presence_tx,
                shutdown.child_token(),
            )))
        }
        _ => {
            println!("roost gateway listening{http_part}");
            None
        }
    };
    tracing::info!(recovered.requeued, recovered.republished, "serving");

    let broker_stopped = async {
        match &broker {
            Some(broker) => broker.stopped().await,
            None => std::future::pending().await,
        }
    };
    let watchdog = async {
        match &broker {
            Some(broker) => {
                frontdoor::watchdog::watch(broker.v5, HEALTH_PROBE_PERIOD, HEALTH_PROBE_PERIOD)
                    .await
            }
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        _ = broker_stopped => Err(AppError::BrokerStopped),
        unhealthy = watchdog => {
            tracing::error!(%unhealthy, "broker unhealthy");
            Err(unhealthy.into())
        }
        fatal = fatal_rx.recv() => Err(AppError::Fatal(fatal.unwrap_or_default())),
        finished = intake_task => Err(match finished {
            Ok(Err(error)) => AppError::Store(error),
            _ => AppError::Fatal("intake stopped".into()),
        }),
    };
    if outcome.is_err() {
        health.broker.store(false, Ordering::Relaxed);
    }
    outcome?;

    // Drain, in flow order.
    tracing::info!("draining");
    draining.store(true, Ordering::Relaxed);
    health.workers.store(false, Ordering::Relaxed);
    status_stop.cancel();
    gateway_status.publish("draining").await;
    shutdown.cancel();
    if let Some(front_task) = front_task {
        let _ = front_task.await;
    }
    scheduler.close();
    let joined = tokio::task::spawn_blocking(move || {
        for worker in worker_threads {
            let _ = worker.join();
        }
    });
    let _ = tokio::time::timeout(limits.op_timeout + Duration::from_secs(1), joined).await;
    outbox_stop.cancel();
    let _ = outbox_task.await;
    gateway_status.publish("offline").await;
    link.disconnect().await;
    tracing::info!("stopped");
    Ok(())
}

/// A loopback listener relaying the service link to rumqttd with the front door's socket care
/// (no Nagle stalls), unchecked: only this process connects to it.
async fn internal_relay(
    upstream: SocketAddr,
    shutdown: CancellationToken,
) -> Result<SocketAddr, AppError> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let listener = TcpListener::bind(loopback)
        .await
        .map_err(bind_error("(internal relay)", loopback))?;
    let addr = listener
        .local_addr()
        .map_err(bind_error("(internal relay)", loopback))?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                if let Ok(upstream) = relay::connect_upstream(upstream).await {
                    let _ = relay::relay(stream, upstream, &[]).await;
                }
            });
        }
    });
    Ok(addr)
}

/// Turns the front door's per-connection presence into the outbox's per-device events: a
/// device is connected once one of its connections has a granted reply subscription, and
/// disconnected when its last connection ends (a reconnect can overtake the old one's end).
async fn bridge_presence(
    mut presence_rx: mpsc::Receiver<FrontDoorEvent>,
    events_tx: mpsc::UnboundedSender<DeviceEvent>,
) {
    let mut live: std::collections::HashMap<crate::wire::DeviceId, Vec<u64>> = Default::default();
    while let Some(event) = presence_rx.recv().await {
        let forward = match event {
            FrontDoorEvent::Connected {
                device, connection, ..
            } => {
                live.entry(device).or_default().push(connection);
                None
            }
            FrontDoorEvent::Subscribed { device, .. } => Some(DeviceEvent::Connected(device)),
            FrontDoorEvent::Disconnected { device, connection } => {
                let connections = live.entry(device.clone()).or_default();
                connections.retain(|c| *c != connection);
                if connections.is_empty() {
                    live.remove(&device);
                    Some(DeviceEvent::Disconnected(device))
                } else {
                    None
                }
            }
        };
        if let Some(event) = forward {
            if events_tx.send(event).is_err() {
                return;
            }
        }
    }
}

async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail in a fresh process");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
