//! Event-sourced aggregates: optimistic concurrency, retry on conflict, snapshots, projections,
//! on the in-memory store and on real databases (DESIGN §7).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cqrs_core::prelude::*;
use cqrs_core::{Aggregate, EventStore, MemoryEventStore, Session, Status, Stream};
use serde::{Deserialize, Serialize};
use support::TestDb;

#[derive(Event, Debug, Clone, Serialize, Deserialize)]
#[event(name = "counter.incremented")]
struct Incremented {
    by: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    value: u64,
}

impl Aggregate for Counter {
    const NAME: &'static str = "counter";
    const SNAPSHOT_EVERY: u64 = 100;
    type Event = Incremented;
    fn apply(&mut self, e: &Incremented) {
        self.value += e.by;
    }
}

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = u64)]
struct Increment {
    id: String,
    times: u64,
}

async fn increment(cx: &mut CommandContext, cmd: Increment) -> Result<u64, Error> {
    let mut counter = cx.load::<Counter>(&cmd.id).await?;
    for _ in 0..cmd.times {
        counter.record(Incremented { by: 1 });
    }
    // Let other writers in between load and save, so that clashes really happen.
    tokio::task::yield_now().await;
    cx.save(&mut counter).await?;
    Ok(counter.version())
}

#[command_handler(Increment)]
#[retry(max_attempts = 1000, on = [Conflict])]
struct RetryingIncrement;

impl CommandHandler<Increment> for RetryingIncrement {
    async fn handle(&self, cmd: Increment, cx: &mut CommandContext) -> Result<u64, Error> {
        increment(cx, cmd).await
    }
}

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = u64)]
struct IncrementOnce {
    id: String,
}

#[command_handler(IncrementOnce)]
struct NonRetryingIncrement;

impl CommandHandler<IncrementOnce> for NonRetryingIncrement {
    async fn handle(&self, cmd: IncrementOnce, cx: &mut CommandContext) -> Result<u64, Error> {
        increment(
            cx,
            Increment {
                id: cmd.id,
                times: 1,
            },
        )
        .await
    }
}

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = (u64, u64, usize, Option<u64>))]
struct Inspect {
    id: String,
}

#[command_handler(Inspect)]
struct InspectHandler;

impl CommandHandler<Inspect> for InspectHandler {
    async fn handle(
        &self,
        cmd: Inspect,
        cx: &mut CommandContext,
    ) -> Result<(u64, u64, usize, Option<u64>), Error> {
        let c = cx.load::<Counter>(&cmd.id).await?;
        Ok((c.version(), c.value, c.replayed(), c.snapshot_version()))
    }
}

/// A projection fed by the saved events.
#[event_handler(Incremented)]
struct Total {
    seen: Arc<AtomicUsize>,
}

impl EventHandler<Incremented> for Total {
    async fn handle(&self, e: &Incremented, _cx: &mut EventContext) -> Result<(), Error> {
        self.seen.fetch_add(e.by as usize, Ordering::SeqCst);
        Ok(())
    }
}

fn builder(
    db: Option<&TestDb>,
    seen: &Arc<AtomicUsize>,
    memory: &Arc<MemoryEventStore>,
) -> BusBuilder {
    let b = Bus::builder()
        .discover(false)
        .register::<RetryingIncrement>()
        .register::<NonRetryingIncrement>()
        .register::<InspectHandler>()
        .register::<Total>()
        .provide(seen.clone());
    match db {
        Some(db) => db.attach(b),
        // Shared with the test, which counts what is stored through the `EventStore` trait.
        None => b.event_store(memory.clone()),
    }
}

/// The events stored for counter `id`, counted in the store itself (not through the bus).
async fn stored_events(memory: &MemoryEventStore, db: Option<&TestDb>, id: &str) -> u64 {
    match db {
        Some(db) => {
            db.count(&format!(
                "SELECT COUNT(*) FROM cqrs_events WHERE aggregate_id = '{id}'"
            ))
            .await as u64
        }
        None => {
            let stream = Stream {
                aggregate: Counter::NAME,
                id,
            };
            let events = memory.load(&mut Session::none(), stream, 0).await.unwrap();
            events.len() as u64
        }
    }
}

async fn eight_writers_with_retry(db: Option<&TestDb>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let memory = Arc::new(MemoryEventStore::new());
    let bus = builder(db, &seen, &memory).build().unwrap();
    if db.is_some() {
        bus.migrate().await.unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut attempts = 0;
            for _ in 0..50 {
                let r = bus
                    .send_with_report(Increment {
                        id: "c1".into(),
                        times: 1,
                    })
                    .await
                    .unwrap();
                attempts += r.attempts;
            }
            attempts
        }));
    }
    let mut attempts = 0;
    for t in tasks {
        attempts += t.await.unwrap();
    }
    let (version, value, _, _) = bus.send(Inspect { id: "c1".into() }).await.unwrap();
    assert_eq!((version, value), (400, 400));
    assert_eq!(
        stored_events(&memory, db, "c1").await,
        400,
        "none lost, none duplicated"
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        400,
        "every saved event reached the projection once"
    );
    assert!(attempts >= 400, "attempts {attempts}");
}

async fn eight_writers_without_retry(db: Option<&TestDb>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let memory = Arc::new(MemoryEventStore::new());
    let bus = builder(db, &seen, &memory).build().unwrap();
    if db.is_some() {
        bus.migrate().await.unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut conflicts) = (0u64, 0u64);
            for _ in 0..50 {
                match bus.send(IncrementOnce { id: "c2".into() }).await {
                    Ok(_) => ok += 1,
                    Err(e) if e.status() == Status::Conflict => conflicts += 1,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            (ok, conflicts)
        }));
    }
    let (mut ok, mut conflicts) = (0, 0);
    for t in tasks {
        let (o, c) = t.await.unwrap();
        ok += o;
        conflicts += c;
    }
    assert_eq!(ok + conflicts, 400);
    assert!(conflicts > 0, "concurrent writers without retry clash");
    let (version, value, _, _) = bus.send(Inspect { id: "c2".into() }).await.unwrap();
    assert_eq!(
        (version, value),
        (ok, ok),
        "every success is stored, every clash stores nothing"
    );
    assert_eq!(stored_events(&memory, db, "c2").await, ok);
    assert_eq!(seen.load(Ordering::SeqCst) as u64, ok);
}

async fn snapshots_bound_replay(db: Option<&TestDb>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let memory = Arc::new(MemoryEventStore::new());
    let bus = builder(db, &seen, &memory).build().unwrap();
    if db.is_some() {
        bus.migrate().await.unwrap();
    }
    // 10,000 events, 100 per command, then 57 more.
    for _ in 0..100 {
        bus.send(Increment {
            id: "big".into(),
            times: 100,
        })
        .await
        .unwrap();
    }
    bus.send(Increment {
        id: "big".into(),
        times: 57,
    })
    .await
    .unwrap();
    let (version, value, replayed, snapshot) =
        bus.send(Inspect { id: "big".into() }).await.unwrap();
    assert_eq!((version, value), (10_057, 10_057));
    assert_eq!(snapshot, Some(10_000));
    assert_eq!(
        replayed, 57,
        "loading replays only the events after the snapshot"
    );
    assert!(replayed <= 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_eight_writers_with_retry() {
    eight_writers_with_retry(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_eight_writers_without_retry() {
    eight_writers_without_retry(None).await;
}

#[tokio::test]
async fn memory_snapshots_bound_replay() {
    snapshots_bound_replay(None).await;
}

async fn on_db_with_retry(db: &TestDb) {
    eight_writers_with_retry(Some(db)).await;
}
async fn on_db_without_retry(db: &TestDb) {
    eight_writers_without_retry(Some(db)).await;
}
async fn on_db_snapshots(db: &TestDb) {
    snapshots_bound_replay(Some(db)).await;
}
on_both!(
    sqlite_eight_writers_with_retry,
    postgres_eight_writers_with_retry,
    on_db_with_retry
);
on_both!(
    sqlite_eight_writers_without_retry,
    postgres_eight_writers_without_retry,
    on_db_without_retry
);
on_both!(
    sqlite_snapshots_bound_replay,
    postgres_snapshots_bound_replay,
    on_db_snapshots
);

/// An event-sourced handler inside a transaction: its events, its SQL and its outbox rows
/// commit together or not at all.
#[derive(Command, Debug, Clone, Serialize, Deserialize)]
struct IncrementAndFail {
    id: String,
}

#[command_handler(IncrementAndFail)]
#[transactional]
struct IncrementAndFailHandler;

impl CommandHandler<IncrementAndFail> for IncrementAndFailHandler {
    async fn handle(&self, cmd: IncrementAndFail, cx: &mut CommandContext) -> Result<(), Error> {
        let mut c = cx.load::<Counter>(&cmd.id).await?;
        c.record(Incremented { by: 1 });
        cx.save(&mut c).await?;
        Err(Error::unavailable("the payment service is down"))
    }
}

async fn transactional_save_rolls_back(db: &TestDb) {
    let seen = Arc::new(AtomicUsize::new(0));
    let bus = builder(Some(db), &seen, &Arc::default())
        .register::<IncrementAndFailHandler>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus.send(Increment {
        id: "t".into(),
        times: 2,
    })
    .await
    .unwrap();
    let err = bus
        .send(IncrementAndFail { id: "t".into() })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Unavailable);
    let (version, ..) = bus.send(Inspect { id: "t".into() }).await.unwrap();
    assert_eq!(
        version, 2,
        "the saved event was rolled back with the transaction"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM cqrs_outbox").await, 2);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}
on_both!(
    sqlite_transactional_save_rolls_back,
    postgres_transactional_save_rolls_back,
    transactional_save_rolls_back
);

/// Projections see which aggregate and version an event belongs to, inline and from the outbox.
#[event_handler(Incremented)]
struct Versions {
    seen: Arc<std::sync::Mutex<Vec<cqrs_core::AggregateVersion>>>,
}

impl EventHandler<Incremented> for Versions {
    async fn handle(&self, _e: &Incremented, cx: &mut EventContext) -> Result<(), Error> {
        let origin = cx
            .aggregate()
            .cloned()
            .ok_or_else(|| Error::internal("no aggregate"))?;
        self.seen.lock().unwrap().push(origin);
        Ok(())
    }
}

async fn events_carry_their_aggregate_version(db: &TestDb) {
    let seen: Arc<std::sync::Mutex<Vec<cqrs_core::AggregateVersion>>> = Arc::default();
    for inline in [true, false] {
        let bus = db
            .attach(Bus::builder().discover(false))
            .register::<RetryingIncrement>()
            .register::<Versions>()
            .provide(seen.clone())
            .outbox_inline_delivery(inline)
            .outbox_relay(false)
            .build()
            .unwrap();
        bus.migrate().await.unwrap();
        bus.send(Increment {
            id: format!("v-{inline}"),
            times: 2,
        })
        .await
        .unwrap();
        if !inline {
            assert_eq!(bus.relay_outbox().await.unwrap(), 2);
        }
    }
    let seen = seen.lock().unwrap().clone();
    let got: Vec<(String, u64)> = seen.iter().map(|v| (v.id.clone(), v.version)).collect();
    assert_eq!(
        got,
        [
            ("v-true".into(), 1),
            ("v-true".into(), 2),
            ("v-false".into(), 1),
            ("v-false".into(), 2)
        ]
    );
    assert!(seen.iter().all(|v| v.aggregate == "counter"));
}
on_both!(
    sqlite_events_carry_their_aggregate_version,
    postgres_events_carry_their_aggregate_version,
    events_carry_their_aggregate_version
);
