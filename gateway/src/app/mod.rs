//! Wiring only: builds each stage from its config section, connects them with channels, and
//! stops them in flow order on SIGINT/SIGTERM.
//!
//! Start order: store (and recovery of what a previous run left), broker and front door, the
//! service link, then intake, workers and outbox; "listening" is printed only once requests can
//! be served. Stop order: draining (new requests get `503`), intake's batches whose lost
//! `COMMIT` answer is being settled (up to 5 s), the front door, the workers (what
//! is queued stays queued in the store), the outbox, the cluster lease given up (a shared store's
//! other gateways take the queued work at once), retained `offline`, exit 0.

mod descriptors;
mod error;
mod http_login;
mod sink;
mod store_wait;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::analytics::pool::Pool;
use crate::analytics::scheduler::Scheduler;
use crate::broker::EmbeddedBroker;
use crate::config::{BrokerConfig, Config};
use crate::flow::{self, Replies};
use crate::frontdoor::{self, FrontDoor};
use crate::intake::Intake;
use crate::link::{self, LinkConfig};
use crate::metrics::{IntakeStats, Metrics};
use crate::outbox::Outbox;
use crate::status::http::{self, Health, HttpState};
use crate::status::GatewayStatus;
use crate::wire::topics;
use crate::{recovery, status};

use error::bind_error;
pub use error::AppError;

/// How often the watchdog probes the embedded broker, and how long one probe may take.
const HEALTH_PROBE_PERIOD: Duration = Duration::from_secs(3);
/// Longest a stop waits for the database to say whether intake batches whose `COMMIT` answer
/// was lost committed, so that their devices get their `202` or `503`: the database is
/// usually back within a second of answering again, and a stop during an outage must still
/// end (each such request, if committed, then runs at the next start or on another gateway).
const SETTLE_AT_STOP: Duration = Duration::from_secs(5);

/// Runs the gateway until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), AppError> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let limits = config.limits.clone();
    let gateway_id = config.gateway.id.clone();
    descriptors::raise(limits.max_connections);

    // Models load, optimise and warm up before anything binds: a bad one is exit 2. Warm-up runs
    // inference, so it runs on a blocking thread, not on an async task.
    let raw_models = config.models.clone();
    let registry = tokio::task::spawn_blocking(move || crate::models::Registry::load(&raw_models))
        .await
        .map_err(|error| AppError::Fatal(format!("loading models: {error}")))??;
    let registry = Arc::new(registry);
    crate::models::install(registry.clone());

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

    // Off loopback the HTTP API needs operator logins; without any operator, refuse to start.
    let http_login = match config.http {
        Some(addr) if !addr.ip().is_loopback() => {
            Some(http_login::open(&config, &limits, front.as_ref(), addr)?)
        }
        _ => None,
    };

    let http_listener = match config.http {
        Some(addr) => Some(
            http::bind(addr)
                .await
                .map_err(bind_error("http.listen", addr))?,
        ),
        None => None,
    };

    let Some(store) = store_wait::open(&config.store, &config.gateway.data_dir, &shutdown).await?
    else {
        return Ok(());
    };
    // A start on a full disk (or a read-only database) serves degraded instead of failing
    // later: one probe write tells.
    if let Err(error) = store.probe().await {
        if !error.degrades() {
            return Err(error.into());
        }
        store.health().degrade(&error.to_string());
    }
    let workers = config.gateway.workers.get();
    let scheduler = Arc::new(Scheduler::new(
        limits.queue_capacity,
        limits.max_pending_per_device,
        workers,
    ));
    for model in registry.iter() {
        let warmup = model.warmup;
        scheduler.seed_cost(model.cost_key, warmup.base_us, warmup.per_element_us);
    }
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<String>();
    let republished = recovery::republish(&store, &done_tx).await?;
    let (backlog, queued) = recovery::Backlog::open(&store, &scheduler, &limits, &done_tx).await?;
    let cluster_done_tx = done_tx.clone();

    let (link_host, link_port, broker, filters) = match (&config.broker, front.as_ref()) {
        (BrokerConfig::Embedded { .. }, Some(_)) => {
            let broker = EmbeddedBroker::start(&limits)?;
            let internal =
                broker
                    .service_relay(shutdown.child_token())
                    .await
                    .map_err(|source| AppError::Bind {
                        key: "(internal relay)",
                        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                        source,
                    })?;
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
    // On a shared store (PostgreSQL) the gateways act as one: acks, presence and telemetry are
    // handled once, by whichever gateway the broker picks. Alone, a gateway needs them all.
    let share_group = match (&config.broker, store.lease()) {
        (BrokerConfig::External { share_group, .. }, Some(_)) => Some(share_group.clone()),
        _ => None,
    };
    filters.extend(
        [
            topics::ACK_FILTER,
            topics::PRESENCE_FILTER,
            topics::TELEMETRY_FILTER,
        ]
        .map(|filter| match &share_group {
            Some(group) => topics::shared(group, filter),
            None => filter.to_owned(),
        }),
    );
    let started_at = crate::store::now_ms();
    let metrics = Arc::new(Metrics::default());
    let (inbox_tx, inbox_rx) = flow::inbox();
    let link = link::connect(
        LinkConfig {
            host: link_host,
            port: link_port,
            client_id: format!("roost-{gateway_id}"),
            filters,
            will: Some(status::offline_will(&gateway_id, started_at)),
            max_packet_bytes: limits.max_payload_bytes,
        },
        inbox_tx.clone(),
    )
    .await?;
    let replies = match front.as_ref() {
        Some(front) => Replies::new(sink::Embedded {
            router: front.router(),
            link: link.publisher.clone(),
        }),
        None => Replies::new(link.publisher.clone()),
    };

    let draining = Arc::new(AtomicBool::new(false));
    let intake_stats = Arc::new(IntakeStats::default());
    let (unsettled_tx, mut unsettled_rx) = tokio::sync::watch::channel(0);
    let intake = Intake {
        store: store.clone(),
        replies: replies.clone(),
        scheduler: scheduler.clone(),
        limits: limits.clone(),
        gateway_id: gateway_id.clone(),
        replies_tx: done_tx.clone(),
        events_tx: events_tx.clone(),
        draining: draining.clone(),
        stats: intake_stats.clone(),
        unsettled: unsettled_tx,
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
        replies: replies.clone(),
        store: store.clone(),
        scheduler: scheduler.clone(),
        metrics: metrics.clone(),
        gateway_id: gateway_id.clone(),
        limits: limits.clone(),
        presence: Default::default(),
        board: Default::default(),
        refill: Default::default(),
    };
    let outbox_task = tokio::spawn(outbox.run(done_rx, events_rx, outbox_stop.clone()));
    let gateway_status = GatewayStatus {
        replies: replies.clone(),
        store: store.clone(),
        scheduler: scheduler.clone(),
        metrics: metrics.clone(),
        gateway_id: gateway_id.clone(),
        started_at_ms: started_at,
        logins: front.as_ref().map(|front| {
            let logins = front.stats().login.clone();
            Arc::new(move || logins.status_json())
                as Arc<dyn Fn() -> serde_json::Value + Send + Sync>
        }),
    };
    gateway_status.publish(gateway_status.serving_state()).await;
    let status_stop = CancellationToken::new();
    let status_task = tokio::spawn(gateway_status.clone().run(status_stop.clone()));
    let health = Arc::new(Health::default());
    // The HTTP API serves through the drain (so `/healthz` and `/api/status` show it) until exit.
    let http_stop = CancellationToken::new();
    let _http_stop_on_exit = http_stop.clone().drop_guard();
    let http_addr = match http_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            let mut state =
                HttpState::new(gateway_status.clone(), intake_stats.clone(), health.clone());
            state.login = http_login;
            if let Some(stats) = front.as_ref().map(FrontDoor::stats) {
                state.extra_metrics = Arc::new(move |out: &mut String| stats.render(out));
            }
            tokio::spawn(http::serve(listener, state, http_stop.clone()));
            addr
        }
        None => None,
    };
    let http_part = http_addr.map(|a| format!(" http={a}")).unwrap_or_default();

    // The front door stops in the drain, once draining (not at the signal): its devices are
    // answered `503` meanwhile, and those whose commit is being settled get their answer.
    let front_stop = CancellationToken::new();
    let _front_stop_on_exit = front_stop.clone().drop_guard();
    let mut front_task = match (front, &broker) {
        (Some(front), Some(broker)) => {
            let local = front.local_addr().map_err(bind_error(
                "broker.listen",
                "0.0.0.0:0".parse().expect("addr"),
            ))?;
            println!("roost gateway listening mqtt={local}{http_part}");
            Some(tokio::spawn(front.run(
                broker.clone(),
                inbox_tx,
                events_tx.clone(),
                front_stop.clone(),
            )))
        }
        _ => {
            println!("roost gateway listening{http_part}");
            None
        }
    };
    tracing::info!(
        recovered.queued = queued,
        recovered.republished = republished,
        "serving"
    );
    tokio::spawn(crate::cluster::run(
        store.clone(),
        scheduler.clone(),
        limits.clone(),
        cluster_done_tx,
        shutdown.child_token(),
    ));
    // The backlog waits out a degraded store and carries on where it stopped; only a closed
    // store (its thread gone) is fatal.
    let backlog_fatal = fatal_tx.clone();
    let backlog_health = store.health().clone();
    tokio::spawn(async move {
        let mut backlog = backlog;
        loop {
            match backlog.run().await {
                Ok(requeued) if requeued > 0 => tracing::info!(requeued, "backlog requeued"),
                Ok(_) => {}
                Err(crate::store::StoreError::Closed) => {
                    let _ = backlog_fatal.send("requeueing the backlog: store is closed".into());
                }
                Err(error) => {
                    tracing::warn!(%error, "requeueing the backlog waits for the store");
                    backlog_health.healthy().await;
                    continue;
                }
            }
            break;
        }
    });
    tokio::spawn(crate::store::health::probe(
        store.clone(),
        shutdown.child_token(),
    ));
    tokio::spawn(crate::store::retention::run(
        store.clone(),
        limits.clone(),
        shutdown.child_token(),
    ));

    let broker_stopped = async {
        match &broker {
            Some(broker) => broker.stopped().await,
            None => std::future::pending().await,
        }
    };
    let watchdog = async {
        match &broker {
            Some(broker) => {
                crate::broker::health::watch(broker.v5, HEALTH_PROBE_PERIOD, HEALTH_PROBE_PERIOD)
                    .await
            }
            None => std::future::pending().await,
        }
    };
    let front_failed = async {
        match front_task.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let mut front_done = false;
    let outcome = tokio::select! {
        biased;
        _ = shutdown.cancelled() => Ok(()),
        finished = front_failed => {
            front_done = true;
            match finished {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(AppError::FrontDoor(error)),
                Err(_) => Err(AppError::Fatal("the front door stopped".into())),
            }
        }
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
    if front_done {
        front_task = None;
    }
    if outcome.is_err() {
        health.broker.store(false, Ordering::Relaxed);
    }
    outcome?;

    // Drain, in flow order.
    tracing::info!("draining");
    draining.store(true, Ordering::Relaxed);
    health.workers.store(false, Ordering::Relaxed);
    // The periodic `online` may be between its count and its publish: let it finish first, so
    // `draining` is never followed by a stale `online`.
    status_stop.cancel();
    let _ = status_task.await;
    gateway_status.publish("draining").await;
    // Before the front door closes, so that those requests' devices can still be answered.
    let batches = *unsettled_rx.borrow();
    if batches > 0 {
        tracing::info!(
            batches,
            "draining: waiting for the database to say whether refused intake batches committed"
        );
        let settled = unsettled_rx.wait_for(|batches| *batches == 0);
        if tokio::time::timeout(SETTLE_AT_STOP, settled).await.is_err() {
            tracing::warn!(
                "stopping with intake batches unsettled: their requests are not answered; any \
                 that committed run at the next start or on another gateway"
            );
        }
    }
    front_stop.cancel();
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
    // Nothing of ours runs any more: on a shared store the others take what is still queued.
    if let Err(error) = store.leave().await {
        tracing::warn!(%error, "cannot give up the cluster lease; the others wait for it to run out");
    }
    gateway_status.publish("offline").await;
    crate::logging::quiet_broker();
    link.disconnect().await;
    tracing::info!("stopped");
    Ok(())
}

async fn signal_shutdown(shutdown: CancellationToken) {
    shutdown_signal().await;
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
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
}
