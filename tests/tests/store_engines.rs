//! The store's contract, run against both engines: SQLite in a temp dir, and PostgreSQL in a
//! throwaway cluster (Debian's server, started as user `postgres` on a free loopback port).
//! Every scenario goes through the store's typed interface only, as the gateway does.

use std::time::Duration;

use gateway::config::{StoreConfig, StoreEngine};
use gateway::store::commands::{Command, Outcome};
use gateway::store::deadletters::{DeadLetter, Requeue};
use gateway::store::devices::{Filter, Seen};
use gateway::store::requests::{Admission, CancelOutcome, Completion, NewRequest, OperatorCancel};
use gateway::store::telemetry::Reading;
use gateway::store::{now_ms, Console, Store, StoreError, PRUNE_CHUNK};
use gateway::wire::{Correlation, DeviceId, RequestId, State};
use roost_tests::postgres::PgCluster;
use roost_tests::proxy::Relay;

fn device(name: &str) -> DeviceId {
    DeviceId::parse(name).expect("valid id")
}

fn corr(text: &str) -> Correlation {
    Correlation(bytes::Bytes::copy_from_slice(text.as_bytes()))
}

fn request(dev: &str, c: &str) -> NewRequest {
    let now = now_ms();
    NewRequest {
        id: RequestId::new(),
        device: device(dev),
        corr: corr(c),
        op: "stats".into(),
        args: vec![0xa0],
        reply_topic: format!("devices/{dev}/reply"),
        envelope: false,
        received_ms: now,
        deadline_ms: now + 60_000,
    }
}

fn completion(of: &NewRequest, payload: &[u8]) -> Completion {
    Completion {
        id: of.id,
        state: State::Done,
        status: 200,
        payload: payload.to_vec(),
        finished_ms: now_ms(),
        expires_ms: now_ms() + 60_000,
        executed: true,
    }
}

/// A request of `dev` admitted and completed: its reply is held, not yet published.
async fn held_reply(store: &Store, dev: &str, c: &str) -> NewRequest {
    let reply = request(dev, c);
    assert!(matches!(
        store.admit(reply.clone(), 0).await.expect("admit"),
        Admission::New
    ));
    assert!(store
        .complete(completion(&reply, b"r"))
        .await
        .expect("complete"));
    reply
}

/// A throwaway PostgreSQL cluster (Debian's server, as user `postgres`, on a free loopback
/// port) with database `name`, its URL, and a directory for the stores' files.
async fn pg_database(name: &str) -> (PgCluster, String, tempfile::TempDir) {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("cluster");
    let url = cluster.create_database(name);
    (cluster, url, tempfile::tempdir().expect("temp dir"))
}

/// A store on a throwaway cluster's database `name`, the cluster, and the store's directory.
async fn pg_store(name: &str) -> (PgCluster, Store, tempfile::TempDir) {
    let (cluster, url, dir) = pg_database(name).await;
    let store = Store::open(&postgres(&url), dir.path())
        .await
        .expect("open");
    (cluster, store, dir)
}

/// Polls `sql` on database `db` every 20 ms until it answers `expected`; fails with `what`
/// after 10 s.
async fn until_answers(cluster: &PgCluster, db: &str, sql: &str, expected: &str, what: &str) {
    let started = std::time::Instant::now();
    while cluster.query(db, sql) != expected {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A store on database `url` as gateway `id`.
async fn gateway_store(url: &str, dir: &std::path::Path, id: &str) -> Store {
    let mut config = postgres(url);
    config.gateway_id = id.into();
    Store::open(&config, dir).await.expect("open")
}

/// A reading of metric `t`.
fn t(ts: i64, value: f64) -> Reading {
    Reading {
        metric: "t".into(),
        ts,
        value,
    }
}

/// The values of `device`'s readings of `t` with ts in (0, 100], read the way workers read
/// them (a blocking reader off the runtime).
async fn window_t(store: &Store, device_id: &str) -> Vec<f64> {
    let (mut reader, device) = (store.reader(), device(device_id));
    tokio::task::spawn_blocking(move || reader.telemetry_window(&device, "t", 0, 100, 100))
        .await
        .expect("thread")
        .expect("window")
        .values
}

/// (stored, copies) of each telemetry command's outcome.
fn stored_and_copies(outcomes: &[Option<Outcome>]) -> Vec<(usize, usize)> {
    outcomes
        .iter()
        .map(|outcome| match outcome {
            Some(Outcome::Readings { stored, copies }) => (*stored, *copies),
            other => panic!("not a telemetry outcome: {other:?}"),
        })
        .collect()
}

/// Admits `request` alone in a batch, with the device quota `max_pending`.
async fn admit_alone(store: &Store, request: NewRequest, max_pending: usize) -> Admission {
    let command = Command::Admit {
        request,
        dedupe_after_ms: 0,
        max_pending,
    };
    match store.batch(vec![Some(command)]).await.expect("batch").pop() {
        Some(Some(Outcome::Admitted(admission))) => admission,
        other => panic!("not an admission: {other:?}"),
    }
}

fn cancelled(id: RequestId, _envelope: bool, _of: &Correlation) -> Vec<u8> {
    id.as_bytes().to_vec()
}

fn postgres(url: &str) -> StoreConfig {
    StoreConfig {
        engine: StoreEngine::Postgres {
            url: url.to_owned(),
            pool_size: 4,
        },
        ..StoreConfig::default()
    }
}

/// Everything the gateway asks of a store, with the answers the contract fixes.
async fn keeps_the_contract(store: &Store, console: Console) {
    // Admission and exact dedupe: the duplicate gets the original's id.
    let first = request("d1", "a");
    assert!(matches!(
        store.admit(first.clone(), 0).await.expect("admit"),
        Admission::New
    ));
    let mut again = request("d1", "a");
    again.op = "histogram".into();
    match store.admit(again, 0).await.expect("admit") {
        Admission::Existing(existing) => {
            assert_eq!(
                existing.id, first.id,
                "a duplicate is answered as the original"
            );
            assert_eq!(existing.state, State::Queued);
            assert_eq!(existing.op, "stats");
        }
        other => panic!("a duplicate was stored twice: {other:?}"),
    }

    // A batch: outcomes in command order, `None` where a publish had no store work.
    let second = request("d1", "b");
    let outcomes = store
        .batch(vec![
            Some(Command::Admit {
                request: second.clone(),
                dedupe_after_ms: 0,
                max_pending: 0,
            }),
            None,
            Some(Command::Find(device("d1"), corr("a"))),
            Some(Command::Telemetry(
                device("d1"),
                vec![
                    Reading {
                        metric: "t".into(),
                        ts: 30,
                        value: 3.0,
                    },
                    Reading {
                        metric: "t".into(),
                        ts: 10,
                        value: 1.0,
                    },
                    Reading {
                        metric: "h".into(),
                        ts: 20,
                        value: 9.0,
                    },
                ],
            )),
            Some(Command::Find(device("d1"), corr("nope"))),
        ])
        .await
        .expect("batch");
    assert_eq!(outcomes.len(), 5);
    assert!(matches!(
        outcomes[0],
        Some(Outcome::Admitted(Admission::New))
    ));
    assert!(outcomes[1].is_none());
    assert!(matches!(&outcomes[2], Some(Outcome::Found(Some(e))) if e.id == first.id));
    assert!(matches!(
        outcomes[3],
        Some(Outcome::Readings {
            stored: 3,
            copies: 0
        })
    ));
    assert!(matches!(outcomes[4], Some(Outcome::Found(None))));

    // Telemetry windows, read the way workers read them (a blocking reader off the runtime).
    assert_eq!(
        window_t(store, "d1").await,
        vec![1.0, 3.0],
        "this metric, in time order"
    );

    // A reading is stored once: a copy (a QoS 1 publish sent again, or the same publish taken
    // by another gateway), twice in one command or in another, leaves the first as it was.
    let outcomes = store
        .batch(vec![
            Some(Command::Telemetry(
                device("d1"),
                vec![t(10, 7.0), t(10, 8.0)],
            )),
            Some(Command::Telemetry(device("d1"), vec![t(10, 9.0)])),
        ])
        .await
        .expect("copies are not an error");
    assert_eq!(stored_and_copies(&outcomes), vec![(0, 2), (0, 1)]);
    assert_eq!(
        window_t(store, "d1").await,
        vec![1.0, 3.0],
        "the copies were not stored"
    );
    // In one batch, a reading and its copy: the first is stored, the copy counted as one.
    let outcomes = store
        .batch(vec![
            Some(Command::Telemetry(device("d1"), vec![t(40, 4.0)])),
            Some(Command::Telemetry(
                device("d1"),
                vec![t(40, 5.0), t(50, 6.0)],
            )),
        ])
        .await
        .expect("readings and a copy");
    assert_eq!(stored_and_copies(&outcomes), vec![(1, 0), (1, 1)]);
    assert_eq!(
        window_t(store, "d1").await,
        vec![1.0, 3.0, 4.0, 6.0],
        "the first of each"
    );

    // Recovery's view of the queue.
    let (queued, newest) = store.queued_extent().await.expect("extent");
    assert_eq!((queued, newest), (2, Some(second.id)));
    let page = store.queued_after(None, second.id, 1).await.expect("page");
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![first.id]
    );
    let page = store
        .queued_after(Some(first.id), second.id, 10)
        .await
        .expect("page");
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![second.id]
    );

    // Completion is recorded at most once; a cancel after it finds it finished.
    assert!(store
        .complete(completion(&first, b"r1"))
        .await
        .expect("complete"));
    assert!(
        !store
            .complete(completion(&first, b"other"))
            .await
            .expect("complete"),
        "a second completion changes nothing"
    );
    let found = store
        .find(device("d1"), corr("a"))
        .await
        .expect("find")
        .expect("row");
    assert_eq!(
        (found.state, found.reply.as_deref()),
        (State::Done, Some(&b"r1"[..]))
    );
    let cancel = |of: &str| Command::Cancel {
        device: device("d1"),
        of: corr(of),
        now_ms: now_ms(),
        expires_ms: now_ms() + 60_000,
        reply: cancelled,
    };
    let outcomes = store
        .batch(vec![
            Some(cancel("a")),
            Some(cancel("b")),
            Some(cancel("zz")),
        ])
        .await
        .expect("cancels");
    assert!(matches!(
        outcomes[0],
        Some(Outcome::Cancel(CancelOutcome::AlreadyFinished(State::Done)))
    ));
    match &outcomes[1] {
        Some(Outcome::Cancel(CancelOutcome::Cancelled(reply))) => {
            assert_eq!((reply.id, reply.status), (second.id, 410));
            assert_eq!(
                reply.payload,
                second.id.as_bytes().to_vec(),
                "the caller's 410 is stored"
            );
        }
        other => panic!("queued request not cancelled: {other:?}"),
    }
    assert!(matches!(
        outcomes[2],
        Some(Outcome::Cancel(CancelOutcome::NotFound))
    ));
    assert!(
        !store
            .complete(completion(&second, b"late"))
            .await
            .expect("complete"),
        "a worker finishing a cancelled request records nothing"
    );

    // Held replies: unpublished until counted, redelivered on wake, ended by an ack.
    let unpublished = store.unpublished().await.expect("unpublished");
    assert_eq!(unpublished.len(), 2);
    assert!(store
        .held_for(vec![device("d1")], 10, Duration::ZERO)
        .await
        .expect("held")
        .is_empty());
    store.mark_published(first.id, &first.device, &first.corr);
    store.mark_published(second.id, &second.device, &second.corr);
    // Nobody waits for the publish counts: they land with a later commit.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !store.unpublished().await.expect("unpublished").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "publish counts never committed"
        );
        store.ping().await.expect("ping");
    }
    let held = store
        .held_for(vec![device("d1"), device("d2")], 10, Duration::ZERO)
        .await
        .expect("held");
    assert_eq!(
        held.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![first.id, second.id]
    );
    assert_eq!(
        store
            .held_counts(vec![device("d2"), device("d1")])
            .await
            .expect("counts"),
        vec![0, 2]
    );
    let acked = store
        .batch(vec![
            Some(Command::Ack(device("d1"), corr("a"))),
            Some(Command::Ack(device("d1"), corr("a"))),
        ])
        .await
        .expect("acks");
    assert!(matches!(acked[0], Some(Outcome::Acked(Some(id))) if id == first.id));
    assert!(
        matches!(acked[1], Some(Outcome::Acked(None))),
        "an ack ends it once"
    );
    assert_eq!(store.held_total().await.expect("total"), 1);

    // After an ack and the dedupe window, the same correlation is a new request.
    let reused = request("d1", "a");
    assert!(matches!(
        store
            .admit(reused.clone(), now_ms() + 1)
            .await
            .expect("admit"),
        Admission::New
    ));
    assert!(store
        .complete(completion(&reused, b"r2"))
        .await
        .expect("complete"));

    // TTL: an expired held reply becomes exactly one dead letter; an operator can requeue it.
    let letters = store
        .expire_held(now_ms() + 120_000, 100)
        .await
        .expect("expire");
    assert_eq!(letters.len(), 2, "the cancelled one and the reused one");
    assert!(store
        .expire_held(now_ms() + 120_000, 100)
        .await
        .expect("expire")
        .is_empty());
    store
        .batch(vec![Some(Command::Dead(DeadLetter {
            at_ms: now_ms(),
            device: Some("d9".into()),
            request_id: None,
            corr: Some("00".into()),
            op: Some("stats".into()),
            status: 400,
            reason: "bad".into(),
        }))])
        .await
        .expect("dead letter");
    let (console, console_rows) = tokio::task::spawn_blocking(move || {
        let rows = console.dead_letters(10).expect("dead letters");
        let requeued = rows
            .iter()
            .find(|row| row.letter.request_id.is_some())
            .map(|row| console.requeue(row.id, now_ms() + 60_000).expect("requeue"));
        let refused = rows
            .iter()
            .find(|row| row.letter.request_id.is_none())
            .map(|row| console.requeue(row.id, now_ms() + 60_000).expect("requeue"));
        let listed = console.requests(Some("d1"), None, 10).expect("list");
        (console, (rows.len(), requeued, refused, listed))
    })
    .await
    .expect("thread");
    assert_eq!(console_rows.0, 3);
    assert!(matches!(console_rows.1, Some(Requeue::Requeued(_))));
    assert_eq!(console_rows.2, Some(Requeue::NotStored));
    assert_eq!(console_rows.3.len(), 2, "a and b of d1");
    assert!(console_rows.3.iter().all(|r| r.executions <= 1));

    // Operator views: the rows the outbox writes with each device's status, listed in natural
    // order with filters; one device, one request, dead letters, the backlog.
    let seen = |id: &str, awake: bool, last_seen_ms: i64, error: Option<&str>| Seen {
        id: device(id),
        awake_until_ms: if awake { i64::MAX } else { 0 },
        asleep_ms: None,
        last_seen_ms,
        last_error: error.map(|e| (e.to_owned(), 5)),
    };
    let now = store
        .devices_seen(vec![
            seen("d1", true, 1000, None),
            seen("d10", false, 900, Some("bad_request: x")),
            seen("d2", true, 800, None),
        ])
        .await
        .expect("devices seen");
    let now: Vec<_> = now
        .into_iter()
        .map(|d| d.expect("one gateway publishes every status"))
        .collect();
    assert_eq!(
        now.iter().map(|d| d.held).collect::<Vec<_>>(),
        vec![1, 0, 0],
        "the requeued reply of d1 is held"
    );
    assert_eq!(
        now.iter().map(|d| d.awake).collect::<Vec<_>>(),
        vec![true, false, true]
    );
    assert_eq!(now[1].last_error.as_deref(), Some("bad_request: x"));
    // A later status without a new error keeps the stored one; last seen only grows.
    store
        .devices_seen(vec![seen("d10", false, 0, None)])
        .await
        .expect("devices seen");
    let ids = |rows: &[gateway::store::devices::DeviceRow]| {
        rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    };
    let (total, page) = store
        .devices_page(Filter::default(), 0, 10)
        .await
        .expect("devices");
    assert_eq!(
        (total, ids(&page)),
        (3, vec!["d1".into(), "d2".into(), "d10".into()])
    );
    let (total, page) = store
        .devices_page(Filter::default(), 1, 1)
        .await
        .expect("devices");
    assert_eq!((total, ids(&page)), (3, vec!["d2".into()]));
    let filtered =
        |filter: Filter| async move { store.devices_page(filter, 0, 10).await.expect("devices") };
    let search = Filter {
        search: Some("D1".into()),
        ..Filter::default()
    };
    assert_eq!(filtered(search).await.0, 2, "d1 and d10");
    let awake = Filter {
        awake: true,
        ..Filter::default()
    };
    assert_eq!(ids(&filtered(awake).await.1), ["d1", "d2"]);
    let held_only = Filter {
        held: true,
        ..Filter::default()
    };
    assert_eq!(ids(&filtered(held_only).await.1), ["d1"]);
    let errors = Filter {
        errors: true,
        ..Filter::default()
    };
    let (_, with_errors) = filtered(errors).await;
    assert_eq!(ids(&with_errors), ["d10"]);
    assert_eq!(with_errors[0].last_error.as_deref(), Some("bad_request: x"));
    assert_eq!(with_errors[0].last_seen_ms, Some(900));
    let one = store
        .device("d1".into(), 10)
        .await
        .expect("device")
        .expect("known");
    assert!(one.device.awake);
    assert_eq!((one.device.requests, one.device.held), (2, 1));
    assert!(one.device.oldest_held_ms.is_some());
    assert_eq!(one.recent_requests.len(), 2);
    assert_eq!(one.held_replies.len(), 1);
    // Requeued: "held" once published, "done" while its (requeued) reply never went out.
    let requeued = &one.held_replies[0];
    let expected = if requeued.published > 0 {
        "held"
    } else {
        "done"
    };
    assert_eq!(requeued.lifecycle, expected);
    assert_eq!(one.dead_letters_total, 2, "both expired replies were d1's");
    assert!(store
        .device("nobody".into(), 10)
        .await
        .expect("device")
        .is_none());
    let shown = store
        .request(one.held_replies[0].id.clone())
        .await
        .expect("request")
        .expect("stored");
    assert_eq!(shown.summary.device, "d1");
    assert_eq!(shown.args, Some(serde_json::json!({})), "args as JSON");
    assert!(store
        .request("not-a-uuid".into())
        .await
        .expect("request")
        .is_none());
    let (dead, rows) = store
        .dead_letters_page(None, 0, 1)
        .await
        .expect("dead letters");
    assert_eq!((dead, rows.len()), (3, 1));
    assert_eq!(
        store
            .dead_letters_page(Some("d9".into()), 0, 10)
            .await
            .expect("dead letters")
            .0,
        1
    );

    // An operator's cancel by id (the CLI's console): the 410 is held and counted published,
    // so the device's next wake redelivers it.
    let queued = request("d2", "q");
    store.admit(queued.clone(), 0).await.expect("admit");
    let backlog = store.backlog().await.expect("backlog");
    assert_eq!((backlog.queued, backlog.held), (1, 1));
    assert_eq!(backlog.oldest_queued_ms, Some(queued.received_ms));
    assert!(backlog.oldest_held_ms.is_some());
    let id = queued.id.to_string();
    let (cancel, again, unknown, lifecycle, backlog, listed) =
        tokio::task::spawn_blocking(move || {
            let mut console = console;
            let expires = now_ms() + 60_000;
            let cancel = console.cancel_request(&id, now_ms(), expires, cancelled);
            let again = console.cancel_request(&id, now_ms(), expires, cancelled);
            let unknown = console.cancel_request("nope", now_ms(), expires, cancelled);
            let shown = console.request(&id).expect("request").expect("stored");
            let listed = console
                .devices_page(&Filter::default(), 0, 10)
                .expect("devices")
                .0;
            assert!(console.device("d2", 10).expect("device").is_some());
            (
                cancel.expect("cancel"),
                again.expect("cancel"),
                unknown.expect("cancel"),
                shown.summary.lifecycle,
                console.backlog().expect("backlog"),
                listed,
            )
        })
        .await
        .expect("thread");
    assert_eq!(cancel, OperatorCancel::Cancelled);
    assert_eq!(again, OperatorCancel::AlreadyFinished(State::Cancelled));
    assert_eq!(unknown, OperatorCancel::NotFound);
    assert_eq!(lifecycle, "held", "counted published once");
    assert_eq!((backlog.queued, backlog.held), (0, 2));
    assert_eq!(listed, 3);
    let redelivered = store
        .held_for(vec![device("d2")], 10, Duration::ZERO)
        .await
        .expect("held");
    assert_eq!(
        redelivered
            .iter()
            .map(|r| (r.id, r.status))
            .collect::<Vec<_>>(),
        vec![(queued.id, 410)],
        "a wake of d2 redelivers the operator's 410"
    );

    // Pruning forgets acked requests past the window and old telemetry, and holds every
    // device to its newest 100.
    const OVER: usize = 11;
    let over = (0..OVER).map(|d| {
        let readings = (20..121).map(|ts| Reading {
            metric: "cap".into(),
            ts,
            value: 0.0,
        });
        Some(Command::Telemetry(
            device(&format!("over-{d}")),
            readings.collect(),
        ))
    });
    store.batch(over.collect()).await.expect("store");
    let (requests, readings) = store.prune(now_ms() + 1_000, 15, 100).await.expect("prune");
    assert_eq!(
        (requests, readings),
        (1, 1 + OVER),
        "the dead request; the reading at ts 10; the oldest reading of each device over"
    );
}

/// One batch of many admissions and acks (PostgreSQL groups each kind into one statement):
/// every piece is decided as it would be alone, in the batch's order, quota and dedupe
/// included (the quota is the store's on a shared store only: one SQLite gateway's scheduler
/// holds it); a request completed twice at once is recorded once.
async fn decides_a_crowded_batch_one_piece_at_a_time(store: &Store, shared: bool) {
    let held = held_reply(store, "g1", "x").await;
    store.mark_published(held.id, &held.device, &held.corr);
    let admit = |request: NewRequest| {
        Some(Command::Admit {
            request,
            dedupe_after_ms: 0,
            max_pending: 2,
        })
    };
    let a = request("g1", "a");
    let outcomes = store
        .batch(vec![
            admit(a.clone()),
            admit(request("g1", "b")),
            admit(request("g1", "a")),
            admit(request("g1", "c")),
            admit(request("g2", "a")),
            Some(Command::Ack(device("g1"), corr("x"))),
            Some(Command::Ack(device("g1"), corr("x"))),
        ])
        .await
        .expect("batch");
    assert!(matches!(
        outcomes[0],
        Some(Outcome::Admitted(Admission::New))
    ));
    assert!(matches!(
        outcomes[1],
        Some(Outcome::Admitted(Admission::New))
    ));
    assert!(
        matches!(&outcomes[2], Some(Outcome::Admitted(Admission::Existing(e))) if e.id == a.id),
        "a duplicate in the same batch is answered as the original: {:?}",
        outcomes[2]
    );
    if shared {
        assert!(
            matches!(outcomes[3], Some(Outcome::Admitted(Admission::OverQuota))),
            "the third pending request of a device in one batch is over its quota of 2: {:?}",
            outcomes[3]
        );
    } else {
        assert!(matches!(
            outcomes[3],
            Some(Outcome::Admitted(Admission::New))
        ));
    }
    assert!(matches!(
        outcomes[4],
        Some(Outcome::Admitted(Admission::New))
    ));
    assert!(
        matches!(outcomes[5], Some(Outcome::Acked(Some(id))) if id == held.id),
        "{:?}",
        outcomes[5]
    );
    assert!(
        matches!(outcomes[6], Some(Outcome::Acked(None))),
        "a second ack of one reply ends nothing: {:?}",
        outcomes[6]
    );
    let (tx, rx) = std::sync::mpsc::channel();
    for payload in [&b"first"[..], b"second"] {
        let tx = tx.clone();
        store.complete_then(completion(&a, payload), move |done| {
            let _ = tx.send(done.expect("complete"));
        });
    }
    let mut recorded = [rx.recv().expect("one"), rx.recv().expect("two")];
    recorded.sort();
    assert_eq!(
        recorded,
        [false, true],
        "one of two completions is recorded"
    );
}

/// A reply published and acked at once: every publish before the ack is counted, whether the
/// count is written before the ack or with it (PostgreSQL holds counts back for the ack to
/// carry); a count that comes after its reply was acked is dropped, not written (on PostgreSQL
/// with several gateways that is most counts, and a row version each cost the server).
async fn counts_every_publish_of_a_reply_acked_at_once(store: &Store) {
    let reply = held_reply(store, "p9", "r").await;
    let published = || async {
        let shown = store
            .request(reply.id.to_string())
            .await
            .expect("request")
            .expect("stored");
        (shown.summary.published, shown.summary.lifecycle)
    };
    let ack = || store.batch(vec![Some(Command::Ack(device("p9"), corr("r")))]);
    store.mark_published(reply.id, &reply.device, &reply.corr);
    store.mark_published(reply.id, &reply.device, &reply.corr);
    let acked = ack().await.expect("ack");
    assert!(matches!(acked[0], Some(Outcome::Acked(Some(id))) if id == reply.id));
    store.ping().await.expect("ping");
    assert_eq!(published().await, (2, "acked"), "counted with the ack");
    // Published again as the ack came in, and that ack repeated: it ends nothing, and the
    // count it picked up is dropped with it; so is a count on its own.
    store.mark_published(reply.id, &reply.device, &reply.corr);
    let acked = ack().await.expect("ack");
    assert!(matches!(acked[0], Some(Outcome::Acked(None))));
    store.mark_published(reply.id, &reply.device, &reply.corr);
    store.ping().await.expect("ping");
    assert_eq!(published().await, (2, "acked"), "not counted after the ack");
}

/// Each device's readings beyond `keep` are pruned: at a store's first prune every device's,
/// after that those of each device that stored readings through the store since its last
/// prune (the only ones that can have gone over), so a device that stores more after a prune
/// is held to `keep` at the next. Call after the store's first prune.
async fn caps_each_devices_readings_at_the_next_prune(store: &Store) {
    let readings = |from: i64, n: i64| {
        let readings = (from..from + n)
            .map(|ts| Reading {
                metric: "cap".into(),
                ts,
                value: ts as f64,
            })
            .collect();
        Some(Command::Telemetry(device("cap-1"), readings))
    };
    // What the scenarios before left, held to 3 too; then no request is old enough (ids
    // before 0 ms), no reading either (before ts 0).
    store.prune(0, 0, 3).await.expect("prune");
    store.batch(vec![readings(10_000, 5)]).await.expect("store");
    assert_eq!(store.prune(0, 0, 3).await.expect("prune"), (0, 2));
    store.batch(vec![readings(20_000, 2)]).await.expect("store");
    assert_eq!(
        store.prune(0, 0, 3).await.expect("prune"),
        (0, 2),
        "the two oldest of the five left go"
    );
    assert_eq!(
        store.prune(0, 0, 3).await.expect("prune"),
        (0, 0),
        "nothing stored since"
    );
    // Far over: in more than one chunk, the oldest first.
    let far = (0..PRUNE_CHUNK as i64 + 10).map(|ts| Reading {
        metric: if ts % 2 == 0 { "even" } else { "odd" }.into(),
        ts,
        value: ts as f64,
    });
    let far = Command::Telemetry(device("cap-2"), far.collect());
    store.batch(vec![Some(far)]).await.expect("store");
    assert_eq!(
        store.prune(0, 0, 3).await.expect("prune"),
        (0, PRUNE_CHUNK + 7)
    );
    let mut reader = store.reader();
    let kept = tokio::task::spawn_blocking(move || {
        let odd = reader.telemetry_window(&device("cap-2"), "odd", -1, i64::MAX, 10)?;
        let even = reader.telemetry_window(&device("cap-2"), "even", -1, i64::MAX, 10)?;
        Ok::<_, StoreError>((odd.ts, even.ts))
    })
    .await
    .expect("thread")
    .expect("windows");
    let newest = PRUNE_CHUNK as u64 + 9;
    assert_eq!(
        kept,
        (Some(vec![newest - 2, newest]), Some(vec![newest - 1])),
        "the newest 3 of the device, whatever their metric"
    );
    // What the age prune deletes comes off the device's count too: a count that still had
    // the old readings would cut the device below its cap.
    let aged = [1, 2, 3, 4, 5, 1_000_000, 1_000_001, 1_000_002].map(|ts| t(ts, 0.0));
    let aged = Command::Telemetry(device("cap-3"), aged.to_vec());
    store.batch(vec![Some(aged)]).await.expect("store");
    assert_eq!(
        store.prune(0, 6, 3).await.expect("prune"),
        (0, 5),
        "the five old readings, and none of the three new"
    );
}

/// A prune deletes in chunks of at most `PRUNE_CHUNK` rows, each committed on its own: part of
/// a large prune is seen done while the rest is not, and a commit asked for meanwhile does not
/// wait for the rest. More than one chunk of finished requests all go too.
async fn prunes_in_chunks_that_commits_go_between(store: &Store) {
    // What the scenarios before left, so that the counts below are this one's.
    store
        .prune(now_ms() + 1_000, i64::MAX, 1_000_000)
        .await
        .expect("prune");
    // Requests past the dedupe window, acked: one and a half chunks and one.
    let requests: Vec<NewRequest> = (0..PRUNE_CHUNK * 3 / 2 + 1)
        .map(|i| request("chunked", &format!("c{i}")))
        .collect();
    let admits = requests.iter().map(|request| {
        Some(Command::Admit {
            request: request.clone(),
            dedupe_after_ms: 0,
            max_pending: 0,
        })
    });
    store.batch(admits.collect()).await.expect("admit");
    let completes = requests.iter().map(|request| {
        let (store, completion) = (store.clone(), completion(request, b"r"));
        tokio::spawn(async move { store.complete(completion).await })
    });
    for completed in futures_join(completes).await {
        assert!(completed.expect("task").expect("complete"));
    }
    let acks = requests
        .iter()
        .map(|r| Some(Command::Ack(r.device.clone(), r.corr.clone())));
    store.batch(acks.collect()).await.expect("ack");
    // Inside the dedupe window nothing goes: a retry is still answered as its original.
    let window_start = requests[0].received_ms;
    let (kept, _) = store
        .prune(window_start, 0, 1_000_000)
        .await
        .expect("prune");
    assert_eq!(
        kept, 0,
        "a prune forgot acked requests inside the dedupe window"
    );
    match store
        .admit(request("chunked", "c0"), 0)
        .await
        .expect("admit")
    {
        Admission::Existing(existing) => assert_eq!(existing.id, requests[0].id),
        other => panic!("a retry inside the window was not a duplicate: {other:?}"),
    }
    // Readings past the retention: forty chunks.
    let total = 40 * PRUNE_CHUNK;
    let old = (1..=total as i64).map(|ts| Reading {
        metric: "old".into(),
        ts,
        value: 0.0,
    });
    let telemetry = Command::Telemetry(device("chunked"), old.collect());
    store.batch(vec![Some(telemetry)]).await.expect("store");
    // The oldest reading left (a prune deletes the first stored first), and whether any is.
    let oldest = || {
        let mut reader = store.reader();
        async move {
            tokio::task::spawn_blocking(move || {
                reader.telemetry_window(&device("chunked"), "old", 0, total as i64, 1)
            })
            .await
            .expect("thread")
            .expect("window")
            .ts
            .and_then(|ts| ts.first().copied())
        }
    };
    assert_eq!(oldest().await, Some(1));

    let pruning = tokio::spawn({
        let store = store.clone();
        async move { store.prune(now_ms() + 1_000, total as i64 + 1, total).await }
    });
    let mut seen = Some(1);
    while seen == Some(1) {
        assert!(!pruning.is_finished(), "the prune ended unseen");
        seen = oldest().await;
    }
    assert!(
        seen.is_some(),
        "the prune deleted its {total} readings in one transaction"
    );
    let reading = Reading {
        metric: "new".into(),
        ts: now_ms(),
        value: 1.0,
    };
    let commit = Command::Telemetry(device("chunked"), vec![reading]);
    store.batch(vec![Some(commit)]).await.expect("commit");
    assert!(
        !pruning.is_finished(),
        "a commit asked for mid-prune waited for the whole prune"
    );
    let pruned = pruning.await.expect("task").expect("prune");
    assert_eq!(pruned, (requests.len(), total), "every old row went");
    assert_eq!(oldest().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_engine_keeps_the_store_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = StoreConfig::default();
    let store = Store::open(&config, dir.path()).await.expect("open");
    let console = Console::open(&config, dir.path(), true).expect("console");
    keeps_the_contract(&store, console).await;
    decides_a_crowded_batch_one_piece_at_a_time(&store, false).await;
    counts_every_publish_of_a_reply_acked_at_once(&store).await;
    caps_each_devices_readings_at_the_next_prune(&store).await;
    prunes_in_chunks_that_commits_go_between(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_engine_keeps_the_store_contract() {
    let (cluster, url, dir) = pg_database("contract").await;
    let config = postgres(&url);
    let store = Store::open(&config, dir.path()).await.expect("open");
    let console = {
        let config = config.clone();
        let path = dir.path().to_owned();
        tokio::task::spawn_blocking(move || Console::open(&config, &path, true))
            .await
            .expect("thread")
            .expect("console")
    };
    keeps_the_contract(&store, console).await;
    decides_a_crowded_batch_one_piece_at_a_time(&store, true).await;
    counts_every_publish_of_a_reply_acked_at_once(&store).await;
    caps_each_devices_readings_at_the_next_prune(&store).await;
    prunes_in_chunks_that_commits_go_between(&store).await;
    drop(store);
    drop(cluster);
}

/// Each transaction leaves a mark (how a lost `COMMIT` answer is settled); the prune forgets
/// the marks older than 10 minutes and keeps the newer ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_prune_forgets_old_commit_marks_only() {
    let (cluster, store, _dir) = pg_store("marks").await;
    let marks = || cluster.query("marks", "SELECT COUNT(*) FROM commit_marks");
    let before: usize = marks().parse().expect("count");
    held_reply(&store, "m1", "c1").await;
    let after: usize = marks().parse().expect("count");
    assert!(
        after > before,
        "each transaction leaves its mark: {before} then {after}"
    );
    let token = |age_ms: i64| {
        let id = RequestId::first_at(now_ms() - age_ms);
        roost_tests::store_view::hex(id.as_bytes())
    };
    cluster.query(
        "marks",
        &format!(
            "INSERT INTO commit_marks VALUES ('\\x{}'), ('\\x{}')",
            token(11 * 60 * 1000),
            token(9 * 60 * 1000)
        ),
    );
    store.prune(0, 0, 1_000).await.expect("prune");
    assert_eq!(
        cluster.query(
            "marks",
            &format!(
                "SELECT COUNT(*) FILTER (WHERE token < '\\x{}'), COUNT(*) FROM commit_marks",
                token(10 * 60 * 1000)
            )
        ),
        format!("0|{}", after + 1),
        "the older mark went, the rest stayed"
    );
}

/// Several gateways starting at once on a fresh database: one migrates, all open, and the
/// schema is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_are_safe_when_gateways_start_at_once() {
    let (cluster, url, dir) = pg_database("race").await;
    let config = postgres(&url);
    let opens = (0..6).map(|_| {
        let (config, path) = (config.clone(), dir.path().to_owned());
        tokio::spawn(async move { Store::open(&config, &path).await })
    });
    for open in futures_join(opens).await {
        open.expect("task").expect("every gateway opens");
    }
    let versions = cluster.query("race", "SELECT COUNT(*), MAX(version) FROM roost_schema");
    assert_eq!(versions, "1|12", "one row, the newest version");
    tokio::time::timeout(Duration::from_secs(30), async {
        Store::open(&config, dir.path())
            .await
            .expect("reopens on a current schema")
    })
    .await
    .expect("bounded");
}

/// Two gateways store one device's readings, a share each: each gateway's prune holds the
/// device to its cap by the readings of both (none of them knows the other's), the two
/// pruning at once delete what is over once, and a prune reads only the readings it deletes
/// (a device at the default cap has 100,000: reading them all every 10 s was the cost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gateways_hold_a_device_to_its_cap_reading_only_what_goes() {
    let (cluster, url, dir) = pg_database("capped").await;
    let open = || async {
        (
            gateway_store(&url, dir.path(), "gw-a").await,
            gateway_store(&url, dir.path(), "gw-b").await,
        )
    };
    // A backend's counters reach the statistics when it exits.
    let close = |stores: (Store, Store)| async {
        drop(stores);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while cluster.query(
            "capped",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'capped'
             AND pid <> pg_backend_pid()",
        ) != "0"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the stores' connections stay open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    const KEEP: usize = 20_000;
    let readings = |from: i64, n: usize| {
        let readings = (from..from + n as i64).map(|ts| Reading {
            metric: "t".into(),
            ts,
            value: 0.0,
        });
        vec![Some(Command::Telemetry(device("full"), readings.collect()))]
    };
    let (a, b) = open().await;
    a.batch(readings(0, KEEP / 2)).await.expect("store");
    b.batch(readings(KEEP as i64 / 2, KEEP / 2))
        .await
        .expect("store");
    assert_eq!(
        a.prune(0, 0, KEEP).await.expect("prune"),
        (0, 0),
        "at the cap"
    );
    close((a, b)).await;
    // Statistics as autovacuum would take them of a grown table; counters from now on.
    cluster.query("capped", "ANALYZE telemetry");
    cluster.query("capped", "SELECT pg_stat_reset()");
    let (a, b) = open().await;
    a.batch(readings(KEEP as i64, 3)).await.expect("store");
    b.batch(readings(KEEP as i64 + 3, 2)).await.expect("store");
    let (pruned_a, pruned_b) = tokio::join!(a.prune(0, 0, KEEP), b.prune(0, 0, KEEP));
    let (pruned_a, pruned_b) = (pruned_a.expect("prune"), pruned_b.expect("prune"));
    assert_eq!(
        pruned_a.1 + pruned_b.1,
        5,
        "the five over, once: {pruned_a:?} {pruned_b:?}"
    );
    close((a, b)).await;
    let read: i64 = cluster
        .query(
            "capped",
            "SELECT COALESCE(SUM(idx_tup_read), 0) + (SELECT COALESCE(seq_tup_read, 0)
                 FROM pg_stat_user_tables WHERE relname = 'telemetry')
             FROM pg_stat_user_indexes WHERE relname = 'telemetry'",
        )
        .parse()
        .expect("count");
    assert!(read < 100, "{read} readings read to delete 5");
    assert_eq!(
        cluster.query("capped", "SELECT COUNT(*), MIN(ts) FROM telemetry"),
        format!("{KEEP}|5"),
        "the newest {KEEP} kept"
    );
}

/// A database of schema 9 that stored a reading twice (before readings had a key) keeps one
/// copy, the first, once a gateway of schema 10 opens it; the series index is then the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_readings_stored_twice_before_the_key_keep_the_first_copy() {
    let (cluster, url, dir) = pg_database("copies").await;
    let config = postgres(&url);
    drop(Store::open(&config, dir.path()).await.expect("open"));
    cluster.query(
        "copies",
        "DROP INDEX telemetry_series;
         CREATE INDEX telemetry_series ON telemetry (device, metric, ts);
         INSERT INTO telemetry (device, metric, ts, value) VALUES
             ('d', 't', 1, 1), ('d', 't', 1, 2), ('d', 't', 2, 3),
             ('d', 'h', 1, 4), ('e', 't', 1, 5), ('d', 't', 1, 6);
         DROP TABLE telemetry_counts;
         DROP INDEX telemetry_device_age;
         DROP TABLE commit_marks;
         UPDATE roost_schema SET version = 9;",
    );
    drop(Store::open(&config, dir.path()).await.expect("migrates"));
    let readings = cluster.query(
        "copies",
        "SELECT string_agg(device || metric || ts || '=' || value, ' ' ORDER BY id) FROM telemetry",
    );
    assert_eq!(
        readings, "dt1=1 dt2=3 dh1=4 et1=5",
        "the first copy of each"
    );
    let key = cluster.query(
        "copies",
        "SELECT indisunique FROM pg_index WHERE indexrelid = 'telemetry_series'::regclass",
    );
    assert_eq!(key, "t", "the series index is the key");
    let counts = cluster.query(
        "copies",
        "SELECT string_agg(device || '=' || n, ' ' ORDER BY device) FROM telemetry_counts",
    );
    assert_eq!(counts, "d=3 e=1", "each device's readings counted once");
}

/// A batch that reads what came before it (a `status`) runs its commands one at a time, but its
/// readings first and in key order, like any batch's: a transaction that stores copies of the
/// same readings in key order (another gateway's) then never waits for it in a cycle. Here that
/// transaction holds device `o1`'s reading while the batch (`o2`'s reading before `o1`'s)
/// waits for it, then stores `o2`'s: with the batch's order, it would wait for the batch, a
/// deadlock its short `deadlock_timeout` reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_batch_with_a_status_stores_its_readings_in_key_order() {
    let (cluster, store, _dir) = pg_store("order").await;
    let copy = |dev: &str| {
        format!("INSERT INTO telemetry (device, metric, ts, value) VALUES ('{dev}', 't', 1, 9)")
    };
    let open = cluster.hold(
        "order",
        &format!("SET LOCAL deadlock_timeout = '10ms'; {}", copy("o1")),
    );
    let batch = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .batch(vec![
                    Some(Command::Find(device("o2"), corr("x"))),
                    Some(Command::Telemetry(device("o2"), vec![t(1, 1.0)])),
                    Some(Command::Telemetry(device("o1"), vec![t(1, 1.0)])),
                ])
                .await
        }
    });
    until_answers(
        &cluster,
        "order",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'order' AND wait_event_type = 'Lock'",
        "1",
        "the batch waits for o1's reading",
    )
    .await;
    assert!(
        open.commit_after(&copy("o2")),
        "o2's reading stored without a deadlock"
    );
    let outcomes = tokio::time::timeout(Duration::from_secs(10), batch)
        .await
        .expect("the batch ends")
        .expect("task")
        .expect("batch");
    assert!(
        matches!(outcomes[0], Some(Outcome::Found(None))),
        "{outcomes:?}"
    );
    assert_eq!(
        stored_and_copies(&outcomes[1..]),
        [(0, 1), (0, 1)],
        "both were copies of what the other transaction stored"
    );
}

/// Two gateways on one database: `max_pending_per_device` holds for both together (each queued
/// request holds one of its device's slots in the database), a duplicate past the quota is still
/// answered as the original, and a wake seen by both redelivers each held reply once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gateways_share_the_device_quota_and_the_wake_redelivery() {
    let (cluster, url, dir) = pg_database("shared").await;
    let open = |id: &'static str| gateway_store(&url, dir.path(), id);
    let (a, b) = (open("gw-a").await, open("gw-b").await);
    let admit = |store: &Store, request: NewRequest| {
        let store = store.clone();
        async move { admit_alone(&store, request, 2).await }
    };
    let first = request("q1", "p1");
    let id = first.id;
    assert!(matches!(admit(&a, first.clone()).await, Admission::New));
    assert!(matches!(
        admit(&b, request("q1", "p2")).await,
        Admission::New
    ));
    assert!(matches!(
        admit(&a, request("q1", "p3")).await,
        Admission::OverQuota
    ));
    assert!(
        matches!(admit(&b, request("q1", "p3")).await, Admission::OverQuota),
        "the quota counts the other gateway's requests too"
    );
    match admit(&b, request("q1", "p1")).await {
        Admission::Existing(existing) => assert_eq!(existing.id, id),
        other => panic!("a duplicate past the quota is answered as the original: {other:?}"),
    }
    assert!(a
        .complete(completion(&first, b"r1"))
        .await
        .expect("complete"));
    assert!(
        matches!(admit(&b, request("q1", "p3")).await, Admission::New),
        "a finished request frees its slot"
    );

    // Its reply was published while the device slept; both gateways then see the same wake.
    // With the other gateway alive (as the heartbeats tell), the publish count is held back a
    // moment, and the wake's redelivery read commits it first.
    for store in [&a, &b, &a] {
        store.heartbeat().await.expect("heartbeat");
    }
    a.mark_published(id, &first.device, &first.corr);
    let quiet = Duration::from_secs(3600);
    assert!(
        a.held_for(vec![device("q1")], 8, quiet)
            .await
            .expect("held")
            .is_empty(),
        "just published: not again within the quiet period"
    );
    assert_eq!(
        cluster.query("shared", "SELECT published FROM requests WHERE corr = 'p1'"),
        "1",
        "the redelivery read committed the publish count held back before it"
    );
    cluster.query("shared", "UPDATE requests SET sent_ms = 0");
    let (from_a, from_b) = (
        a.held_for(vec![device("q1")], 8, quiet),
        b.held_for(vec![device("q1")], 8, quiet),
    );
    let (from_a, from_b) = (from_a.await.expect("a"), from_b.await.expect("b"));
    assert_eq!(
        from_a.len() + from_b.len(),
        1,
        "one wake seen by two gateways redelivers the reply once"
    );
    drop((a, b));
    drop(cluster);
}

/// Two gateways on one database each see part of a device's traffic; the device's status is
/// the cluster's: the latest window either opened, closed by an `asleep` newer than anything
/// either saw (and not opened again by a window from before it), the newest last seen and last
/// error, and the pending requests of both (their quota slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gateways_merge_what_each_saw_of_a_device() {
    let (cluster, url, dir) = pg_database("merge").await;
    let open = |id: &'static str| gateway_store(&url, dir.path(), id);
    let (a, b) = (open("gw-a").await, open("gw-b").await);
    let admit = |store: &Store, request: NewRequest| {
        let store = store.clone();
        async move {
            assert!(matches!(
                admit_alone(&store, request, 4).await,
                Admission::New
            ));
        }
    };
    let first = request("m1", "r1");
    admit(&a, first.clone()).await;
    admit(&a, request("m1", "r2")).await;
    admit(&b, request("m1", "r3")).await;
    let t = now_ms();
    let view = |until: i64, asleep: Option<i64>, last_seen: i64, error: Option<(&str, i64)>| {
        vec![Seen {
            id: device("m1"),
            awake_until_ms: until,
            asleep_ms: asleep,
            last_seen_ms: last_seen,
            last_error: error.map(|(e, at)| (e.to_owned(), at)),
        }]
    };
    let publish = |store: &Store, seen: Vec<Seen>| {
        let store = store.clone();
        async move { store.devices_seen(seen).await.expect("seen").remove(0) }
    };
    // No beat yet: neither knows of the other, and each publishes what it writes.
    let seen = |store: &Store, seen: Vec<Seen>| {
        let publish = publish(store, seen);
        async move { publish.await.expect("published") }
    };

    // A saw a publish a moment ago; B nothing yet, and an error.
    let now = seen(&a, view(t + 60_000, None, t - 10, None)).await;
    assert!(now.awake);
    assert_eq!(now.pending, Some(3), "both gateways' queued requests");
    let now = seen(&b, view(0, None, 0, Some(("bad_request: x", t - 5)))).await;
    assert!(now.awake, "A's window, which B did not see");
    assert_eq!(now.last_seen_ms, t - 10, "A's sighting");
    assert_eq!(now.last_error.as_deref(), Some("bad_request: x"));
    let now = seen(
        &a,
        view(t + 60_000, None, t - 10, Some(("too_large: y", t - 50))),
    )
    .await;
    assert_eq!(
        now.last_error.as_deref(),
        Some("bad_request: x"),
        "an older error does not replace a newer one"
    );

    // B sees the device's `asleep`: nothing newer was seen anywhere, so it sleeps.
    let now = seen(&b, view(t, Some(t), 0, None)).await;
    assert!(!now.awake, "the asleep closes A's window");
    // A writes its window again, opened before the asleep: still asleep.
    let now = seen(&a, view(t + 60_000, None, t - 10, None)).await;
    assert!(
        !now.awake,
        "a window from before the asleep does not wake it"
    );
    // A sees it publish again after the asleep: awake.
    let now = seen(&a, view(t + 60_000, None, t + 5, None)).await;
    assert!(now.awake);
    assert_eq!(now.last_seen_ms, t + 5);
    // B's old asleep, written again, is older than A's sighting: it stays awake.
    let now = seen(&b, view(t, Some(t), 0, None)).await;
    assert!(
        now.awake,
        "an asleep older than the last sighting closes nothing"
    );
    assert_eq!(
        cluster.query("merge", "SELECT awake FROM devices WHERE id = 'm1'"),
        "t",
        "the row operators list says the same"
    );

    // A request finishing frees its slot: one fewer pending, whoever asks.
    assert!(a
        .complete(completion(&first, b"done"))
        .await
        .expect("complete"));
    assert_eq!(seen(&b, view(0, None, 0, None)).await.pending, Some(2));

    // Both alive as the beats tell: a status one gateway published less than a second ago is
    // left to that publish by the other, whose sightings still reach the row.
    for store in [&b, &a, &b] {
        store.heartbeat().await.expect("heartbeat");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while publish(&a, view(t + 60_000, None, t + 5, None))
        .await
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "A never publishes the status again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let later = publish(&b, view(0, None, 0, Some(("unknown_op: z", t + 20)))).await;
    assert_eq!(later, None, "A published it a moment ago");
    assert_eq!(
        cluster.query("merge", "SELECT last_error FROM devices WHERE id = 'm1'"),
        "unknown_op: z",
        "B's sighting is in the row all the same"
    );
    drop((a, b));
    drop(cluster);
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut results = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        results.push(handle.await);
    }
    results
}

/// A publish count whose row another transaction holds (typically that reply's ack, through
/// another gateway) is skipped, not waited for (two such waits deadlocked), and lands with a
/// later commit once the row is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_publish_count_skips_a_locked_row_and_lands_later() {
    let (cluster, store, _dir) = pg_store("skip").await;
    let reply = held_reply(&store, "s1", "k").await;
    let published = || cluster.query("skip", "SELECT published FROM requests WHERE corr = 'k'");
    let open = cluster.hold(
        "skip",
        "SELECT id FROM requests WHERE corr = 'k' FOR UPDATE",
    );
    store.mark_published(reply.id, &reply.device, &reply.corr);
    tokio::time::timeout(Duration::from_secs(10), store.ping())
        .await
        .expect("the commit does not wait for the locked row")
        .expect("ping");
    assert_eq!(published(), "0", "skipped while locked");
    open.commit();
    store.ping().await.expect("ping");
    assert_eq!(published(), "1", "counted once the row was free");
}

/// A wake's redelivery claim leaves a reply whose row another transaction holds (its ack, or its
/// publish count, through another gateway) for a later wake instead of waiting for it: the claim
/// runs after its batch's publish counts, which hold their rows, so two gateways' claims
/// waiting for each other's counted rows could deadlock. Once the row is free, a wake sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_redelivery_claim_skips_a_locked_row() {
    let (cluster, store, _dir) = pg_store("claim").await;
    let reply = held_reply(&store, "c1", "k").await;
    store.mark_published(reply.id, &reply.device, &reply.corr);
    store.ping().await.expect("ping");
    let open = cluster.hold(
        "claim",
        "SELECT id FROM requests WHERE corr = 'k' FOR UPDATE",
    );
    let held = tokio::time::timeout(
        Duration::from_secs(10),
        store.held_for(vec![device("c1")], 8, Duration::ZERO),
    )
    .await
    .expect("the claim does not wait for the locked row")
    .expect("held");
    assert!(held.is_empty(), "left for a later wake: {held:?}");
    open.commit();
    let held = store
        .held_for(vec![device("c1")], 8, Duration::ZERO)
        .await
        .expect("held");
    assert_eq!(held.len(), 1, "the next wake sends it");
    assert_eq!(held[0].id, reply.id);
}

/// The device quota is kept by slots, without a lock: a gateway whose admission picked the slot
/// another gateway's uncommitted admission holds waits for that commit, then takes another free
/// slot; once every slot is held, the next admission is over the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_quota_slot_another_gateway_takes_is_not_shared() {
    let (cluster, url, dir) = pg_database("slots").await;
    let store = gateway_store(&url, dir.path(), "gw-a").await;
    let admit = |request: NewRequest| {
        let store = store.clone();
        async move { admit_alone(&store, request, 2).await }
    };
    // Another gateway's admission of device q1 in slot 0, not yet committed.
    let open = cluster.hold("slots", &foreign_admission("q1", "other", 0));
    let first = tokio::spawn(admit(request("q1", "p1")));
    // This gateway, alone, looks from slot 0 first: its insert waits for the other's commit.
    until_answers(
        &cluster,
        "slots",
        "SELECT COUNT(*) FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO requests%'",
        "1",
        "the admission waits for the slot's other holder",
    )
    .await;
    open.commit();
    assert!(
        matches!(first.await.expect("task"), Admission::New),
        "a free slot was left: admitted in it"
    );
    assert_eq!(
        cluster.query(
            "slots",
            "SELECT string_agg(slot::text, ',' ORDER BY slot) FROM requests WHERE device = 'q1'"
        ),
        "0,1",
        "one slot each"
    );
    assert!(
        matches!(admit(request("q1", "p2")).await, Admission::OverQuota),
        "both slots held: over the quota"
    );
}

/// A heartbeat renews the lease on a connection of its own: a committer stuck in a lock wait
/// with the pool's only connection does not hold it up, so a live gateway never looks dead to
/// the others (who would take its work over and run it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_heartbeat_does_not_wait_for_a_stuck_committer() {
    let (cluster, url, dir) = pg_database("beat").await;
    let config = StoreConfig {
        engine: StoreEngine::Postgres {
            url: url.clone(),
            pool_size: 1,
        },
        ..StoreConfig::default()
    };
    let store = Store::open(&config, dir.path()).await.expect("open");
    let reply = held_reply(&store, "b1", "k").await;
    let open = cluster.hold(
        "beat",
        "SELECT id FROM requests WHERE corr = 'k' FOR UPDATE",
    );
    let ack = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .batch(vec![Some(Command::Ack(device("b1"), corr("k")))])
                .await
        })
    };
    until_answers(
        &cluster,
        "beat",
        "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
        "1",
        "the ack never waited for the row",
    )
    .await;
    tokio::time::timeout(Duration::from_secs(10), store.heartbeat())
        .await
        .expect("the beat does not wait for the committer's connection")
        .expect("heartbeat");
    open.commit();
    let acked = ack.await.expect("task").expect("batch").pop();
    assert!(
        matches!(acked, Some(Some(Outcome::Acked(Some(id)))) if id == reply.id),
        "the ack lands once the row is free: {acked:?}"
    );
}

/// The server carries out a batch's `COMMIT`, but its answer is lost (a relay drops what the
/// server sends on the committer's connection). A lost answer says nothing of the outcome: the
/// store asks the database, on a new connection, whether the transaction committed, and
/// answers the admission as stored. (Answered `503` instead, the device would be told its
/// request was not stored while it is, and runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_commit_whose_answer_is_lost_is_answered_as_it_ended() {
    let (cluster, _, dir) = pg_database("lost").await;
    let server = format!("127.0.0.1:{}", cluster.port).parse().expect("addr");
    let relay = Relay::start(server).await;
    let url = format!("postgres://postgres@{}/lost", relay.addr);
    let store = gateway_store(&url, dir.path(), "gw-lost").await;
    cluster.slow_commits("lost", 2);
    let admission = {
        let store = store.clone();
        tokio::spawn(async move { admit_alone(&store, request("lost-1", "c"), 0).await })
    };
    cluster.until_a_commit_sleeps("lost").await;
    relay.mute();
    let admission = admission.await.expect("task");
    assert!(matches!(admission, Admission::New), "{admission:?}");
    assert_eq!(
        cluster.query(
            "lost",
            "SELECT count(*) FROM requests WHERE device = 'lost-1'"
        ),
        "1"
    );
}

/// A `COMMIT` the server has not carried out when its answer is given up on (it sleeps in a
/// trigger for a minute, as a frozen server would hold it): the store ends that transaction's
/// server process, so the outcome is final, and answers the batch as not committed (`503`).
/// Nothing of it is stored, and the store commits again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_commit_given_up_on_is_ended_and_answered_as_not_stored() {
    let (cluster, url, dir) = pg_database("unread").await;
    let store = gateway_store(&url, dir.path(), "gw-unread").await;
    cluster.slow_commits("unread", 60);
    let command = Command::Admit {
        request: request("unread-1", "c"),
        dedupe_after_ms: 0,
        max_pending: 0,
    };
    let failed = store.batch(vec![Some(command)]).await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    assert_eq!(
        cluster.query(
            "unread",
            "SELECT count(*) FROM requests WHERE device = 'unread-1'"
        ),
        "0"
    );
    assert_eq!(
        cluster.commits_sleeping("unread"),
        "0",
        "the transaction's server process was ended"
    );
    cluster.query("unread", "DROP TRIGGER slow_commit ON requests");
    assert!(matches!(
        admit_alone(&store, request("unread-1", "c"), 0).await,
        Admission::New
    ));
}

/// The SQL of another gateway's admission of `device` (correlation `corr`) in quota `slot`, for
/// [`PgCluster::hold`] to leave uncommitted.
fn foreign_admission(device: &str, corr: &str, slot: i32) -> String {
    let id: String = RequestId::new()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "INSERT INTO requests (id, device, corr, op, args, reply_topic, envelope,
             received_ms, deadline_ms, state, owner, slot)
         VALUES ('\\x{id}', '{device}', '{corr}', 'stats', '', 'devices/{device}/reply', false,
             0, 0, 'queued', 'gw-b', {slot})"
    )
}

/// An admission that loses its slot twice to other gateways' admissions, committed while it
/// waited for each, tries again each time and takes the third slot; the quota then holds. (The
/// batch's grouped insert loses slot 0; the one-at-a-time admission then loses slot 1 and takes
/// slot 2 on its second try: with `SLOT_TRIES` at 1 it answers over quota.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_admission_that_loses_two_slots_takes_the_third() {
    let (cluster, url, dir) = pg_database("slots2").await;
    let store = gateway_store(&url, dir.path(), "gw-a").await;
    let first = cluster.hold("slots2", &foreign_admission("q2", "o1", 0));
    let second = cluster.hold("slots2", &foreign_admission("q2", "o2", 1));
    // Whether this gateway's insert waits for the uncommitted admission of correlation `corr`.
    // Until this gateway's insert waits for the uncommitted admission of correlation `corr`.
    let until = |corr: &'static str| {
        let sql = format!(
            "SELECT COUNT(*) FROM pg_stat_activity w, pg_stat_activity h
             WHERE w.wait_event_type = 'Lock' AND w.query LIKE 'INSERT INTO requests%'
               AND h.pid = ANY(pg_blocking_pids(w.pid)) AND h.query LIKE '%''{corr}''%'"
        );
        let what = format!("the admission never waited for {corr}");
        let cluster = &cluster;
        async move { until_answers(cluster, "slots2", &sql, "1", &what).await }
    };
    let mine = {
        let store = store.clone();
        tokio::spawn(async move { admit_alone(&store, request("q2", "p1"), 3).await })
    };
    until("o1").await;
    first.commit();
    until("o2").await;
    second.commit();
    assert!(
        matches!(mine.await.expect("task"), Admission::New),
        "a third slot was free: admitted in it"
    );
    assert_eq!(
        cluster.query(
            "slots2",
            "SELECT string_agg(slot::text, ',' ORDER BY slot) FROM requests WHERE device = 'q2'"
        ),
        "0,1,2",
        "one slot each"
    );
    assert!(
        matches!(
            admit_alone(&store, request("q2", "p2"), 3).await,
            Admission::OverQuota
        ),
        "every slot held: over the quota"
    );
}

/// With other gateways alive, a gateway counts the cluster's totals again only once each of
/// them had a beat's time to count them (the cluster counts about twice a second whatever its
/// size): its beats in between keep the last count, and after that the count is fresh. The
/// status document's held count is that count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gateways_take_turns_counting_the_cluster_totals() {
    let (_cluster, url, dir) = pg_database("totals").await;
    let lease = Duration::from_secs(1);
    let open = |id: &'static str| {
        let mut config = postgres(&url);
        config.gateway_id = id.into();
        config.lease = lease;
        let path = dir.path().to_owned();
        async move { Store::open(&config, &path).await.expect("open") }
    };
    let (a, b) = (open("gw-a").await, open("gw-b").await);
    for store in [&a, &b, &a] {
        store.heartbeat().await.expect("heartbeat");
    }
    let queued = |store: &Store| {
        let view = store.cluster_view().expect("a view");
        assert_eq!(view.alive(), 2, "both gateways alive");
        view.totals.queued
    };
    assert_eq!(queued(&a), 0);
    let first = request("t1", "c1");
    assert!(matches!(
        a.admit(first.clone(), 0).await.expect("admit"),
        Admission::New
    ));
    a.heartbeat().await.expect("heartbeat");
    assert_eq!(queued(&a), 0, "a beat right after the count keeps it");
    tokio::time::sleep(gateway::store::cluster::beat_every(lease) * 2).await;
    a.heartbeat().await.expect("heartbeat");
    assert_eq!(queued(&a), 1, "two beats' time later, counted again");

    // The status document's held count is the heartbeat's count too.
    assert!(a
        .complete(completion(&first, b"r1"))
        .await
        .expect("complete"));
    b.heartbeat().await.expect("heartbeat");
    tokio::time::sleep(gateway::store::cluster::beat_every(lease) * 2).await;
    a.heartbeat().await.expect("heartbeat");
    assert_eq!(queued(&a), 0);
    assert_eq!(
        a.held_total().await.expect("held total"),
        1,
        "the held count the status document shows"
    );
}

/// On one database one gateway prunes for all: the first alive by id as of its last heartbeat
/// (every gateway before its first). Once it left, the next one does, from its next beat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_gateway_prunes_for_all() {
    let (_cluster, url, dir) = pg_database("pruner").await;
    let b = gateway_store(&url, dir.path(), "gw-b").await;
    let a = gateway_store(&url, dir.path(), "gw-a").await;
    assert!(a.prunes() && b.prunes(), "before a heartbeat, each prunes");
    for store in [&a, &b] {
        store.heartbeat().await.expect("heartbeat");
    }
    assert_eq!(
        (a.prunes(), b.prunes()),
        (true, false),
        "gw-a prunes for both"
    );
    a.leave().await.expect("leave");
    b.heartbeat().await.expect("heartbeat");
    assert!(b.prunes(), "gw-b prunes once gw-a left");
}

/// A wake's redelivery skips replies sent within the quiet period only while another gateway
/// is alive, as the database says when the redelivery is claimed, not as this gateway last
/// heard: alone, every held reply goes again; once another gateway joined (even before this one
/// beat again and saw it), a reply just sent is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_quiet_period_holds_while_another_gateway_is_alive() {
    let (_cluster, url, dir) = pg_database("quiet").await;
    let open = |id: &'static str| gateway_store(&url, dir.path(), id);
    let a = open("gw-a").await;
    let reply = held_reply(&a, "w1", "q").await;
    a.mark_published(reply.id, &reply.device, &reply.corr);
    let quiet = Duration::from_secs(3600);
    let held = a
        .held_for(vec![device("w1")], 8, quiet)
        .await
        .expect("held");
    assert_eq!(held.len(), 1, "alone: the reply goes again on a wake");
    let _b = open("gw-b").await;
    assert!(
        a.held_for(vec![device("w1")], 8, quiet)
            .await
            .expect("held")
            .is_empty(),
        "another gateway alive: not again within the quiet period"
    );
}

/// Rows found by their key are found through the key's index whatever the statistics say.
/// After an `ANALYZE` taken when nothing was queued or held, the partial indexes of queued and
/// held rows look empty, and a statement naming their predicate beside its key was planned as a
/// whole scan of one of them (they end in `id`): 7-15 k pages per publish count in a benchmark.
/// Here the partial indexes hold 20,000 dead entries, the statistics say nothing is queued or
/// held, every plan is generic (as the store's prepared statements become), and a request goes
/// through admission, completion, its publish count, a redelivery claim and its ack on a
/// gateway with another alive, then another is cancelled, and the held counts, the
/// unpublished replies, a device's and a request's views are read: the partial indexes are
/// read for a handful of entries, not whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_found_by_key_do_not_scan_the_partial_indexes() {
    let (cluster, url, dir) = pg_database("plans").await;
    cluster.query(
        "plans",
        "ALTER DATABASE plans SET plan_cache_mode = force_generic_plan",
    );
    let (a, b) = (
        gateway_store(&url, dir.path(), "gw-a").await,
        gateway_store(&url, dir.path(), "gw-b").await,
    );
    // Both alive as `a` sees it, so its acks take the cluster's path; no beat after this one
    // (a beat's cluster count reads those indexes whole, on purpose).
    for store in [&b, &a] {
        store.heartbeat().await.expect("heartbeat");
    }
    // 20,000 requests of a gone gateway, each queued and held once: dead entries in every
    // partial index, and statistics taken once they all ended.
    for sql in [
        "ALTER TABLE requests SET (autovacuum_enabled = false)",
        "INSERT INTO requests (id, device, corr, op, args, reply_topic, envelope, received_ms,
             deadline_ms, state, delivery, owner)
         SELECT uuid_send(gen_random_uuid()), 'old-' || (i % 50), int4send(i), 'stats', '',
             'r', false, 0, 0, 'queued', NULL, 'gw-old' FROM generate_series(1, 20000) i",
        "UPDATE requests SET state = 'done', delivery = 'held' WHERE owner = 'gw-old'",
        "UPDATE requests SET delivery = 'acked' WHERE owner = 'gw-old'",
        "ANALYZE requests",
        "SELECT pg_stat_reset()",
    ] {
        cluster.query("plans", sql);
    }
    let reply = held_reply(&a, "k1", "c").await;
    a.mark_published(reply.id, &reply.device, &reply.corr);
    a.ping().await.expect("ping");
    let claimed = a
        .held_for(vec![device("k1")], 8, Duration::ZERO)
        .await
        .expect("held");
    assert_eq!(claimed.len(), 1, "redelivered on a wake");
    let acked = a
        .batch(vec![Some(Command::Ack(device("k1"), corr("c")))])
        .await
        .expect("ack");
    assert!(matches!(acked[0], Some(Outcome::Acked(Some(id))) if id == reply.id));
    // A cancel of a queued request, and the reads operators, device status and a restart make.
    let queued = request("k1", "q");
    assert!(matches!(
        a.admit(queued.clone(), 0).await.expect("admit"),
        Admission::New
    ));
    let cancelled_now = a
        .batch(vec![Some(Command::Cancel {
            device: device("k1"),
            of: corr("q"),
            now_ms: now_ms(),
            expires_ms: now_ms() + 60_000,
            reply: cancelled,
        })])
        .await
        .expect("cancel");
    assert!(matches!(
        cancelled_now[0],
        Some(Outcome::Cancel(CancelOutcome::Cancelled(_)))
    ));
    assert_eq!(
        a.held_counts(vec![device("k1")]).await.expect("counts"),
        vec![1],
        "the cancel's 410 is held"
    );
    let status = a
        .devices_seen(vec![Seen {
            id: device("k1"),
            awake_until_ms: now_ms() + 60_000,
            asleep_ms: None,
            last_seen_ms: now_ms(),
            last_error: None,
        }])
        .await
        .expect("device status");
    assert_eq!(
        status[0].as_ref().map(|s| s.held),
        Some(1),
        "the device status counts the held 410"
    );
    assert_eq!(a.unpublished().await.expect("unpublished").len(), 1);
    a.device("k1".into(), 10)
        .await
        .expect("device")
        .expect("known");
    a.request(queued.id.to_string())
        .await
        .expect("request")
        .expect("stored");
    // A backend's counters reach the statistics when it exits.
    drop((a, b));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cluster.query(
        "plans",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'plans' AND pid <> pg_backend_pid()",
    ) != "0"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stores' connections stay open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read = cluster.query(
        "plans",
        "SELECT string_agg(indexrelname || '=' || idx_tup_read, ' ' ORDER BY indexrelname)
         FROM pg_stat_user_indexes
         WHERE relname = 'requests' AND indexrelname IN ('requests_queued',
             'requests_owner_queued', 'requests_held', 'requests_held_owner')",
    );
    for entry in read.split(' ') {
        let (index, n) = entry.split_once('=').expect("index=n");
        let n: u64 = n.parse().expect("a count");
        assert!(n < 1000, "{index} read {n} entries: scanned whole ({read})");
    }
}

/// An operator's `deadletters requeue` whose `COMMIT` the server carries out but whose answer
/// is lost (a relay drops it): the CLI cannot know whether the dead letter was requeued, and
/// says so, naming the command that tells, instead of failing as if nothing happened. The
/// requeue did land, and the command run again says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_requeue_whose_commit_answer_is_lost_is_said_undecided() {
    let (cluster, url, dir) = pg_database("requeue").await;
    let store = gateway_store(&url, dir.path(), "gw-requeue").await;
    held_reply(&store, "rq-1", "c").await;
    let expired = store
        .expire_held(now_ms() + 120_000, 100)
        .await
        .expect("expire");
    assert_eq!(expired.len(), 1);
    let server = format!("127.0.0.1:{}", cluster.port).parse().expect("addr");
    let relay = Relay::start(server).await;
    let relayed = postgres(&format!("postgres://postgres@{}/requeue", relay.addr));
    let console = {
        let path = dir.path().to_owned();
        tokio::task::spawn_blocking(move || Console::open(&relayed, &path, true))
            .await
            .expect("thread")
            .expect("console")
    };
    let id: i64 = cluster
        .query("requeue", "SELECT id FROM dead_letters")
        .parse()
        .expect("dead letter id");
    cluster.slow_commits_of("requeue", "UPDATE ON dead_letters", 2);
    let requeue = tokio::task::spawn_blocking(move || console.requeue(id, now_ms() + 60_000));
    cluster.until_a_commit_sleeps("requeue").await;
    relay.mute();
    let said = requeue.await.expect("thread");
    match &said {
        Err(StoreError::Unavailable(message)) => assert!(
            message.contains("may or may not have been requeued")
                && message.contains(&format!("gateway deadletters requeue {id}")),
            "{message}"
        ),
        other => panic!("not said undecided: {other:?}"),
    }
    until_answers(
        &cluster,
        "requeue",
        "SELECT requeued FROM dead_letters",
        "t",
        "the requeue committed",
    )
    .await;
    let direct = postgres(&url);
    let path = dir.path().to_owned();
    let again = tokio::task::spawn_blocking(move || {
        Console::open(&direct, &path, true)
            .expect("console")
            .requeue(id, now_ms() + 60_000)
    })
    .await
    .expect("thread");
    assert_eq!(again.expect("requeue"), Requeue::AlreadyRequeued);
}
