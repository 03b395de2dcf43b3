//! Timeouts (DESIGN §5, layer 3): `timeout = ".."` on the handler attribute or `#[timeout("..")]`
//! is an overall deadline, retries included; the envelope's deadline applies too, whichever is
//! sooner. When it passes the handler's future is dropped and the caller gets `Timeout`.
//! Children a handler sends inherit the deadline; the events a command emits do not.
//! All on tokio's paused clock: nothing here really waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cqrs_core::prelude::*;

/// Counts what happened to the handlers' futures.
#[derive(Default)]
struct Fate {
    started: AtomicUsize,
    finished: AtomicUsize,
    dropped: AtomicUsize,
}

impl Fate {
    fn counts(&self) -> (usize, usize, usize) {
        (
            self.started.load(Ordering::SeqCst),
            self.finished.load(Ordering::SeqCst),
            self.dropped.load(Ordering::SeqCst),
        )
    }
}

/// Counts a drop of the future holding it before that future finished.
struct DropGuard {
    fate: Arc<Fate>,
    done: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.done {
            self.fate.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn work(fate: &Arc<Fate>, secs: u64) -> u64 {
    fate.started.fetch_add(1, Ordering::SeqCst);
    let mut guard = DropGuard {
        fate: fate.clone(),
        done: false,
    };
    tokio::time::sleep(Duration::from_secs(secs)).await;
    guard.done = true;
    fate.finished.fetch_add(1, Ordering::SeqCst);
    secs
}

/// How many `ExportStarted` events were handled.
#[derive(Default)]
struct Exports(AtomicUsize);

/// How many times `Reconnect` ran.
#[derive(Default)]
struct Attempts(AtomicUsize);

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct Export {
    secs: u64,
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ExportStarted;

#[command_handler(Export, timeout = "2s")]
struct ExportHandler {
    fate: Arc<Fate>,
}

impl CommandHandler<Export> for ExportHandler {
    async fn handle(&self, cmd: Export, cx: &mut CommandContext) -> Result<u64, Error> {
        cx.emit(ExportStarted);
        Ok(work(&self.fate, cmd.secs).await)
    }
}

#[event_handler(ExportStarted)]
struct CountExports {
    exports: Arc<Exports>,
}

impl EventHandler<ExportStarted> for CountExports {
    async fn handle(&self, _e: &ExportStarted, _cx: &mut EventContext) -> Result<(), Error> {
        self.exports.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = u64)]
struct Summary {
    secs: u64,
}

#[query_handler(Summary)]
#[timeout("2s")]
#[cached_query(ttl = "1h")]
struct SummaryHandler {
    fate: Arc<Fate>,
}

impl QueryHandler<Summary> for SummaryHandler {
    async fn handle(&self, q: Summary, _cx: &QueryContext) -> Result<u64, Error> {
        // Slow the first time only.
        let secs = if self.fate.started.load(Ordering::SeqCst) == 0 {
            q.secs
        } else {
            0
        };
        Ok(work(&self.fate, secs).await + q.secs)
    }
}

/// The timeout given as an option of the query handler attribute.
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = u64)]
struct Forecast {
    secs: u64,
}

#[query_handler(Forecast, timeout = "1s")]
struct ForecastHandler {
    fate: Arc<Fate>,
}

impl QueryHandler<Forecast> for ForecastHandler {
    async fn handle(&self, q: Forecast, _cx: &QueryContext) -> Result<u64, Error> {
        Ok(work(&self.fate, q.secs).await)
    }
}

/// Always unavailable; retried every second for ever, but within 2.5 seconds in all.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Reconnect;

#[command_handler(Reconnect)]
#[timeout("2500ms")]
#[retry(max_attempts = 10, delay = "1s", backoff = 1.0, jitter = false, on = [Unavailable])]
struct ReconnectHandler {
    attempts: Arc<Attempts>,
}

impl CommandHandler<Reconnect> for ReconnectHandler {
    async fn handle(&self, _cmd: Reconnect, _cx: &mut CommandContext) -> Result<(), Error> {
        self.attempts.0.fetch_add(1, Ordering::SeqCst);
        Err(Error::unavailable("the upstream is down"))
    }
}

/// No timeout of its own.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct Import {
    secs: u64,
}

#[command_handler(Import)]
struct ImportHandler {
    fate: Arc<Fate>,
    deadlines: Arc<Mutex<Vec<Option<Instant>>>>,
}

impl CommandHandler<Import> for ImportHandler {
    async fn handle(&self, cmd: Import, cx: &mut CommandContext) -> Result<u64, Error> {
        self.deadlines
            .lock()
            .unwrap()
            .push(cx.metadata().deadline());
        Ok(work(&self.fate, cmd.secs).await)
    }
}

/// Sends `Import` as a child.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct ImportAll;

#[command_handler(ImportAll)]
struct ImportAllHandler;

impl CommandHandler<ImportAll> for ImportAllHandler {
    async fn handle(&self, _cmd: ImportAll, cx: &mut CommandContext) -> Result<u64, Error> {
        cx.send(Import { secs: 0 }).await
    }
}

struct World {
    bus: Bus,
    fate: Arc<Fate>,
    exports: Arc<Exports>,
    attempts: Arc<Attempts>,
    deadlines: Arc<Mutex<Vec<Option<Instant>>>>,
}

fn world() -> World {
    let fate = Arc::new(Fate::default());
    let exports = Arc::new(Exports::default());
    let attempts = Arc::new(Attempts::default());
    let deadlines = Arc::new(Mutex::new(Vec::new()));
    let bus = Bus::builder()
        .discover(false)
        .register::<ExportHandler>()
        .register::<CountExports>()
        .register::<SummaryHandler>()
        .register::<ForecastHandler>()
        .register::<ReconnectHandler>()
        .register::<ImportHandler>()
        .register::<ImportAllHandler>()
        .provide(fate.clone())
        .provide(exports.clone())
        .provide(attempts.clone())
        .provide(deadlines.clone())
        .build()
        .unwrap();
    World {
        bus,
        fate,
        exports,
        attempts,
        deadlines,
    }
}

#[tokio::test(start_paused = true)]
async fn a_handler_within_its_timeout_answers() {
    let w = world();
    assert_eq!(w.bus.send(Export { secs: 1 }).await.unwrap(), 1);
    assert_eq!(w.fate.counts(), (1, 1, 0), "started, finished, dropped");
    assert_eq!(w.exports.0.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn past_its_timeout_the_handler_is_dropped_and_the_caller_gets_timeout() {
    let w = world();
    let err = w.bus.send(Export { secs: 10 }).await.unwrap_err();
    assert_eq!(err.status(), Status::Timeout);
    assert_eq!(
        err.message(),
        "`Export` did not finish within its timeout of 2s"
    );
    assert_eq!(
        w.fate.counts(),
        (1, 0, 1),
        "the handler's future was dropped unfinished"
    );
    assert_eq!(
        w.exports.0.load(Ordering::SeqCst),
        0,
        "what the handler emitted was not published"
    );

    // The bus keeps serving.
    assert_eq!(w.bus.send(Export { secs: 0 }).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_decorator_applies_to_a_query_and_a_timed_out_answer_is_not_cached() {
    let w = world();
    let err = w.bus.query(Summary { secs: 5 }).await.unwrap_err();
    assert_eq!(err.status(), Status::Timeout);
    assert_eq!(
        err.message(),
        "`Summary` did not finish within its timeout of 2s"
    );
    assert_eq!(w.fate.counts(), (1, 0, 1));

    let report = w.bus.query_with_report(Summary { secs: 5 }).await.unwrap();
    assert_eq!(report.output, 5);
    assert!(!report.cache_hit, "the timeout cached nothing");
    assert_eq!(w.fate.counts(), (2, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_query_handler_attributes_timeout_option_applies() {
    let w = world();
    assert_eq!(w.bus.query(Forecast { secs: 0 }).await.unwrap(), 0);
    let err = w.bus.query(Forecast { secs: 3 }).await.unwrap_err();
    assert_eq!(err.status(), Status::Timeout);
    assert_eq!(
        err.message(),
        "`Forecast` did not finish within its timeout of 1s"
    );
    assert_eq!(
        w.fate.counts(),
        (2, 1, 1),
        "the second handler's future was dropped unfinished"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_covers_every_retry() {
    let w = world();
    let err = w.bus.send(Reconnect).await.unwrap_err();
    assert_eq!(
        err.status(),
        Status::Timeout,
        "not the handler's Unavailable"
    );
    assert_eq!(
        err.message(),
        "`Reconnect` did not finish within its timeout of 2500ms"
    );
    // Attempts at 0s, 1s and 2s; the deadline at 2.5s stopped the fourth.
    assert_eq!(w.attempts.0.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn the_callers_deadline_wins_when_it_is_sooner() {
    let w = world();
    let err = w
        .bus
        .send(Envelope::new(Export { secs: 1 }).timeout(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Timeout);
    assert_eq!(
        err.message(),
        "`Export` did not finish before the caller's deadline"
    );
    assert_eq!(w.fate.counts(), (1, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn the_handlers_timeout_wins_when_it_is_sooner() {
    let w = world();
    let err = w
        .bus
        .send(Envelope::new(Export { secs: 10 }).timeout(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "`Export` did not finish within its timeout of 2s"
    );
}

#[tokio::test(start_paused = true)]
async fn an_envelope_timeout_counts_from_tokios_now() {
    let w = world();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let out = w
        .bus
        .send(Envelope::new(Export { secs: 1 }).timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(out, 1);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_applies_to_a_handler_without_a_timeout() {
    let w = world();
    let err = w
        .bus
        .send(Envelope::new(Import { secs: 30 }).deadline(Instant::now() + Duration::from_secs(3)))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Timeout);
    assert_eq!(
        err.message(),
        "`Import` did not finish before the caller's deadline"
    );
    assert_eq!(w.fate.counts(), (1, 0, 1));
    assert_eq!(
        w.bus.send(Import { secs: 30 }).await.unwrap(),
        30,
        "no deadline, no limit"
    );
    assert_eq!(w.fate.counts(), (2, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_command_sent_from_a_handler_inherits_the_deadline() {
    let w = world();
    let deadline = Instant::now() + Duration::from_secs(30);
    w.bus
        .send(Envelope::new(ImportAll).deadline(deadline))
        .await
        .unwrap();
    w.bus.send(ImportAll).await.unwrap();
    assert_eq!(*w.deadlines.lock().unwrap(), [Some(deadline), None]);
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = usize)]
struct SyncAccount {
    account: u32,
}

/// Slow the first time only.
#[command_handler(SyncAccount, timeout = "1s")]
struct SyncAccountHandler {
    calls: Arc<AtomicUsize>,
}

impl CommandHandler<SyncAccount> for SyncAccountHandler {
    async fn handle(&self, _cmd: SyncAccount, _cx: &mut CommandContext) -> Result<usize, Error> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call == 1 {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        Ok(call)
    }
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_command_does_not_hold_on_to_its_idempotency_key() {
    let calls = Arc::new(AtomicUsize::new(0));
    let bus = Bus::builder()
        .discover(false)
        .register::<SyncAccountHandler>()
        .provide(calls.clone())
        .build()
        .unwrap();
    let err = bus
        .send(Envelope::new(SyncAccount { account: 1 }).idempotency_key("sync-1"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Timeout);

    let report = bus
        .send_with_report(Envelope::new(SyncAccount { account: 1 }).idempotency_key("sync-1"))
        .await
        .unwrap();
    assert_eq!(report.output, 2, "the key was free again: the handler ran");
    assert!(!report.replayed);

    let report = bus
        .send_with_report(Envelope::new(SyncAccount { account: 1 }).idempotency_key("sync-1"))
        .await
        .unwrap();
    assert_eq!(report.output, 2);
    assert!(report.replayed);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Published {
    secs: u64,
}

#[event_handler(Published, timeout = "1s")]
struct SlowSubscriber {
    fate: Arc<Fate>,
}

impl EventHandler<Published> for SlowSubscriber {
    async fn handle(&self, e: &Published, _cx: &mut EventContext) -> Result<(), Error> {
        work(&self.fate, e.secs).await;
        Ok(())
    }
}

#[event_handler(Published)]
struct QuickSubscriber {
    exports: Arc<AtomicUsize>,
}

impl EventHandler<Published> for QuickSubscriber {
    async fn handle(&self, _e: &Published, _cx: &mut EventContext) -> Result<(), Error> {
        self.exports.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_handler_past_its_timeout_is_a_reported_failure_and_the_others_run() {
    let fate = Arc::new(Fate::default());
    let quick = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let sink = failures.clone();
    let bus = Bus::builder()
        .discover(false)
        .register::<SlowSubscriber>()
        .register::<QuickSubscriber>()
        .provide(fate.clone())
        .provide(quick.clone())
        .on_handler_failure(move |f| sink.lock().unwrap().push((f.handler, f.error.status())))
        .build()
        .unwrap();
    let err = bus.publish(Published { secs: 5 }).await.unwrap_err();
    assert_eq!(err.status(), Status::Timeout);
    assert_eq!(fate.counts(), (1, 0, 1));
    assert_eq!(quick.load(Ordering::SeqCst), 1);
    assert_eq!(
        *failures.lock().unwrap(),
        [("SlowSubscriber", Status::Timeout)]
    );
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Announced {
    secs: u64,
}

/// Emits `Announced` and answers at once.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Announce {
    secs: u64,
}

#[command_handler(Announce)]
struct AnnounceHandler;

impl CommandHandler<Announce> for AnnounceHandler {
    async fn handle(&self, cmd: Announce, cx: &mut CommandContext) -> Result<(), Error> {
        cx.emit(Announced { secs: cmd.secs });
        Ok(())
    }
}

/// Takes `secs` over each event, with no timeout of its own; records the deadline it saw.
#[event_handler(Announced)]
struct PatientSubscriber {
    fate: Arc<Fate>,
    deadlines: Arc<Mutex<Vec<Option<Instant>>>>,
}

impl EventHandler<Announced> for PatientSubscriber {
    async fn handle(&self, e: &Announced, cx: &mut EventContext) -> Result<(), Error> {
        self.deadlines
            .lock()
            .unwrap()
            .push(cx.metadata().deadline());
        work(&self.fate, e.secs).await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn emitted_events_are_not_cut_short_by_the_commands_deadline() {
    let fate = Arc::new(Fate::default());
    let deadlines: Arc<Mutex<Vec<Option<Instant>>>> = Arc::default();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let sink = failures.clone();
    let bus = Bus::builder()
        .discover(false)
        .register::<AnnounceHandler>()
        .register::<PatientSubscriber>()
        .provide(fate.clone())
        .provide(deadlines.clone())
        .on_handler_failure(move |f| sink.lock().unwrap().push(f.handler))
        .build()
        .unwrap();

    // The command is done well within its second; its event takes three.
    let announce = Envelope::new(Announce { secs: 3 }).timeout(Duration::from_secs(1));
    bus.send(announce).await.unwrap();
    assert_eq!(fate.counts(), (1, 1, 0), "started, finished, dropped");
    assert_eq!(*deadlines.lock().unwrap(), [None]);
    assert!(failures.lock().unwrap().is_empty());

    // An event published with a deadline of its own keeps it.
    let published = Envelope::new(Announced { secs: 3 }).timeout(Duration::from_secs(1));
    let err = bus.publish(published).await.unwrap_err();
    assert_eq!(err.status(), Status::Timeout);
    assert_eq!(fate.counts(), (2, 1, 1));
}
