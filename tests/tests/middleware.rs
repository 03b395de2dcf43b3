//! Global middleware (DESIGN §5, layer 2): around the rest of the pipeline, in registration
//! order, for the kinds it applies to; it sees the message and its metadata, may refuse to go on
//! or replace an error. `AuditLog` records every command as Attempted, then Succeeded or Failed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::{AuditRecord, AuditState, Dispatch, MessageKind, Next};
use uuid::Uuid;

#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn push(&self, line: impl Into<String>) {
        self.0.lock().unwrap().push(line.into());
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u32)]
struct Rename {
    id: u32,
    name: String,
}

#[command_handler(Rename)]
struct RenameHandler {
    log: Arc<Log>,
    ids: Arc<Mutex<Vec<(Uuid, Uuid)>>>,
}

impl CommandHandler<Rename> for RenameHandler {
    async fn handle(&self, cmd: Rename, cx: &mut CommandContext) -> Result<u32, Error> {
        self.log.push(format!("handler Rename {}", cmd.name));
        self.ids
            .lock()
            .unwrap()
            .push((cx.metadata().message_id(), cx.metadata().correlation_id()));
        cx.emit(Renamed { id: cmd.id });
        match cmd.name.as_str() {
            "" => Err(Error::not_found(format!("item {}", cmd.id))),
            "boom" => Err(Error::internal("the disk is full")),
            _ => Ok(cmd.id),
        }
    }
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Renamed {
    id: u32,
}

#[event_handler(Renamed)]
struct OnRenamed {
    log: Arc<Log>,
}

impl EventHandler<Renamed> for OnRenamed {
    async fn handle(&self, e: &Renamed, _cx: &mut EventContext) -> Result<(), Error> {
        self.log.push(format!("event Renamed {}", e.id));
        Ok(())
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = String)]
struct NameOf {
    id: u32,
}

#[query_handler(NameOf)]
struct NameOfHandler {
    log: Arc<Log>,
    ids: Arc<Mutex<Vec<(Uuid, Uuid)>>>,
}

impl QueryHandler<NameOf> for NameOfHandler {
    async fn handle(&self, q: NameOf, cx: &QueryContext) -> Result<String, Error> {
        self.log.push(format!("handler NameOf {}", q.id));
        self.ids
            .lock()
            .unwrap()
            .push((cx.metadata().message_id(), cx.metadata().correlation_id()));
        Ok(format!("item-{}", q.id))
    }
}

/// Logs around the rest of the pipeline.
struct Around {
    name: &'static str,
    log: Arc<Log>,
    only: Option<MessageKind>,
}

impl Around {
    fn new(name: &'static str, log: &Arc<Log>) -> Self {
        Around {
            name,
            log: log.clone(),
            only: None,
        }
    }
    fn only(mut self, kind: MessageKind) -> Self {
        self.only = Some(kind);
        self
    }
}

impl Middleware for Around {
    fn applies_to(&self, kind: MessageKind) -> bool {
        match self.only {
            Some(only) => kind == only,
            None => kind != MessageKind::Event,
        }
    }

    async fn handle(&self, d: &Dispatch<'_>, next: Next<'_>) -> Result<(), Error> {
        self.log.push(format!("{} before {}", self.name, d.name()));
        let result = next.run().await;
        let outcome = match &result {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.status().to_string(),
        };
        self.log
            .push(format!("{} after {} {outcome}", self.name, d.name()));
        result
    }
}

/// Refuses every command, as a read-only mode would.
struct ReadOnly;

impl Middleware for ReadOnly {
    fn applies_to(&self, kind: MessageKind) -> bool {
        kind == MessageKind::Command
    }
    async fn handle(&self, d: &Dispatch<'_>, _next: Next<'_>) -> Result<(), Error> {
        Err(Error::unavailable(format!(
            "read-only mode: `{}` refused",
            d.name()
        )))
    }
}

/// Turns internal errors into something the caller may show.
struct HideInternals;

impl Middleware for HideInternals {
    async fn handle(&self, _d: &Dispatch<'_>, next: Next<'_>) -> Result<(), Error> {
        next.run().await.map_err(|e| match e.status() {
            Status::Internal => Error::unavailable("something went wrong, try again"),
            _ => e,
        })
    }
}

/// Forgets to call `next`.
struct Forgetful;

impl Middleware for Forgetful {
    async fn handle(&self, _d: &Dispatch<'_>, _next: Next<'_>) -> Result<(), Error> {
        Ok(())
    }
}

/// Claims to apply to events too.
struct Everything(Arc<Log>);

impl Middleware for Everything {
    fn applies_to(&self, _kind: MessageKind) -> bool {
        true
    }
    async fn handle(&self, d: &Dispatch<'_>, next: Next<'_>) -> Result<(), Error> {
        self.0
            .push(format!("everything saw {} {}", d.kind(), d.name()));
        next.run().await
    }
}

/// Records what a middleware sees of a dispatch.
#[derive(Debug, Clone, PartialEq)]
struct Sight {
    kind: MessageKind,
    name: &'static str,
    handler: &'static str,
    principal: Option<String>,
    message_id: Uuid,
    correlation_id: Uuid,
    json: Option<serde_json::Value>,
    rename_id: Option<u32>,
    name_of_id: Option<u32>,
}

struct Watch(Arc<Mutex<Vec<Sight>>>);

impl Middleware for Watch {
    async fn handle(&self, d: &Dispatch<'_>, next: Next<'_>) -> Result<(), Error> {
        self.0.lock().unwrap().push(Sight {
            kind: d.kind(),
            name: d.name(),
            handler: d.handler(),
            principal: d.principal().map(|p| p.id().to_owned()),
            message_id: d.metadata().message_id(),
            correlation_id: d.metadata().correlation_id(),
            json: d.message_json(),
            rename_id: d.message::<Rename>().map(|r| r.id),
            name_of_id: d.message::<NameOf>().map(|q| q.id),
        });
        next.run().await
    }
}

type Ids = Arc<Mutex<Vec<(Uuid, Uuid)>>>;

fn builder(log: &Arc<Log>, ids: &Ids) -> BusBuilder {
    Bus::builder()
        .discover(false)
        .register::<RenameHandler>()
        .register::<OnRenamed>()
        .register::<NameOfHandler>()
        .provide(log.clone())
        .provide(ids.clone())
}

fn rename(id: u32, name: &str) -> Rename {
    Rename {
        id,
        name: name.to_owned(),
    }
}

#[tokio::test]
async fn middleware_runs_around_the_pipeline_in_registration_order() {
    let log = Arc::new(Log::default());
    let bus = builder(&log, &Ids::default())
        .middleware(Around::new("outer", &log))
        .middleware(Around::new("inner", &log))
        .build()
        .unwrap();

    assert_eq!(bus.send(rename(1, "a")).await.unwrap(), 1);
    assert_eq!(
        log.take(),
        [
            "outer before Rename",
            "inner before Rename",
            "handler Rename a",
            "event Renamed 1",
            "inner after Rename ok",
            "outer after Rename ok",
        ],
        "events are published inside the middleware's span of the dispatch"
    );

    assert_eq!(bus.query(NameOf { id: 2 }).await.unwrap(), "item-2");
    assert_eq!(
        log.take(),
        [
            "outer before NameOf",
            "inner before NameOf",
            "handler NameOf 2",
            "inner after NameOf ok",
            "outer after NameOf ok",
        ]
    );

    let err = bus.send(rename(3, "")).await.unwrap_err();
    assert_eq!(err.status(), Status::NotFound);
    assert_eq!(
        log.take(),
        [
            "outer before Rename",
            "inner before Rename",
            "handler Rename ",
            "inner after Rename not_found",
            "outer after Rename not_found",
        ]
    );
}

#[tokio::test]
async fn middleware_sees_only_the_kinds_it_applies_to() {
    let log = Arc::new(Log::default());
    let bus = builder(&log, &Ids::default())
        .middleware(Around::new("commands", &log).only(MessageKind::Command))
        .middleware(Around::new("queries", &log).only(MessageKind::Query))
        .build()
        .unwrap();

    bus.send(rename(1, "a")).await.unwrap();
    let lines = log.take();
    assert!(
        lines.iter().any(|l| l == "commands before Rename"),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("queries")), "{lines:?}");

    bus.query(NameOf { id: 1 }).await.unwrap();
    let lines = log.take();
    assert!(
        lines.iter().any(|l| l == "queries before NameOf"),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("commands")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn events_never_pass_through_middleware() {
    let log = Arc::new(Log::default());
    let bus = builder(&log, &Ids::default())
        .middleware(Everything(log.clone()))
        .build()
        .unwrap();
    bus.send(rename(1, "a")).await.unwrap();
    bus.publish(Renamed { id: 2 }).await.unwrap();
    assert_eq!(
        log.take(),
        [
            "everything saw command Rename",
            "handler Rename a",
            "event Renamed 1",
            "event Renamed 2",
        ]
    );
}

#[tokio::test]
async fn a_middleware_can_refuse_without_running_the_rest() {
    let log = Arc::new(Log::default());
    let bus = builder(&log, &Ids::default())
        .middleware(Around::new("first", &log))
        .middleware(ReadOnly)
        .middleware(Around::new("never", &log))
        .build()
        .unwrap();

    let err = bus.send(rename(1, "a")).await.unwrap_err();
    assert_eq!(err.status(), Status::Unavailable);
    assert_eq!(err.message(), "read-only mode: `Rename` refused");
    assert_eq!(
        log.take(),
        ["first before Rename", "first after Rename unavailable"],
        "neither the later middleware, nor the handler, nor event handlers ran"
    );

    // Queries are not refused.
    assert_eq!(bus.query(NameOf { id: 1 }).await.unwrap(), "item-1");
}

#[tokio::test]
async fn a_middleware_can_replace_an_error() {
    let log = Arc::new(Log::default());
    let bus = builder(&log, &Ids::default())
        .middleware(HideInternals)
        .build()
        .unwrap();
    let err = bus.send(rename(1, "boom")).await.unwrap_err();
    assert_eq!(err.status(), Status::Unavailable);
    assert_eq!(err.message(), "something went wrong, try again");
    let err = bus.send(rename(1, "")).await.unwrap_err();
    assert_eq!(
        err.status(),
        Status::NotFound,
        "other errors pass untouched"
    );
    assert_eq!(bus.send(rename(1, "ok")).await.unwrap(), 1);
}

#[tokio::test]
async fn a_middleware_that_returns_ok_without_running_the_rest_is_an_internal_error() {
    let log = Arc::new(Log::default());
    let bus = builder(&log, &Ids::default())
        .middleware(Forgetful)
        .build()
        .unwrap();
    let err = bus.send(rename(1, "a")).await.unwrap_err();
    assert_eq!(err.status(), Status::Internal);
    assert!(err.message().contains("`Rename`"), "{err}");
    let err = bus.query(NameOf { id: 1 }).await.unwrap_err();
    assert_eq!(err.status(), Status::Internal);
    assert!(log.take().is_empty(), "no handler ran");
}

#[tokio::test]
async fn a_middleware_sees_the_message_its_metadata_and_the_handler() {
    let sights = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::new(Log::default());
    let bus = builder(&log, &Ids::default())
        .middleware(Watch(sights.clone()))
        .build()
        .unwrap();
    bus.send(Envelope::new(rename(7, "seven")).principal(Principal::new("u-7")))
        .await
        .unwrap();
    bus.query(NameOf { id: 8 }).await.unwrap();

    let sights = sights.lock().unwrap();
    assert_eq!(sights.len(), 2);
    let command = &sights[0];
    assert_eq!(command.kind, MessageKind::Command);
    assert_eq!(command.name, "Rename");
    assert_eq!(command.handler, "RenameHandler");
    assert_eq!(command.principal.as_deref(), Some("u-7"));
    assert_eq!(
        command.json,
        Some(serde_json::json!({ "id": 7, "name": "seven" }))
    );
    assert_eq!(command.rename_id, Some(7));
    assert_eq!(command.name_of_id, None);

    let query = &sights[1];
    assert_eq!(query.kind, MessageKind::Query);
    assert_eq!(query.name, "NameOf");
    assert_eq!(query.handler, "NameOfHandler");
    assert_eq!(query.principal, None);
    assert_eq!(query.json, None, "queries are not Serialize");
    assert_eq!(query.name_of_id, Some(8));
}

#[tokio::test]
async fn a_middleware_and_the_handler_see_the_same_message_id() {
    let sights = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::new(Log::default());
    let ids = Ids::default();
    let bus = builder(&log, &ids)
        .middleware(Watch(sights.clone()))
        .build()
        .unwrap();
    bus.send(rename(1, "a")).await.unwrap();
    bus.query(NameOf { id: 1 }).await.unwrap();

    let sights = sights.lock().unwrap();
    let ids = ids.lock().unwrap();
    assert_eq!(
        (sights[0].message_id, sights[0].correlation_id),
        ids[0],
        "command"
    );
    assert_eq!(
        (sights[1].message_id, sights[1].correlation_id),
        ids[1],
        "query"
    );
}

#[tokio::test(start_paused = true)]
async fn the_handlers_timeout_does_not_cover_middleware_that_runs_before_it() {
    struct Slow;
    impl Middleware for Slow {
        async fn handle(&self, _d: &Dispatch<'_>, next: Next<'_>) -> Result<(), Error> {
            tokio::time::sleep(Duration::from_secs(10)).await;
            next.run().await
        }
    }
    #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
    #[command(output = u8)]
    struct Quick;
    #[command_handler(Quick, timeout = "1s")]
    struct QuickHandler;
    impl CommandHandler<Quick> for QuickHandler {
        async fn handle(&self, _cmd: Quick, _cx: &mut CommandContext) -> Result<u8, Error> {
            Ok(1)
        }
    }
    let bus = Bus::builder()
        .discover(false)
        .register::<QuickHandler>()
        .middleware(Slow)
        .build()
        .unwrap();
    assert_eq!(bus.send(Quick).await.unwrap(), 1);
}

fn audited(log: &Arc<Log>, ids: &Ids) -> (Bus, Arc<Mutex<Vec<AuditRecord>>>) {
    let records: Arc<Mutex<Vec<AuditRecord>>> = Arc::default();
    let sink = records.clone();
    let bus = builder(log, ids)
        .middleware(AuditLog::with_sink(move |r| {
            sink.lock().unwrap().push(r.clone())
        }))
        .build()
        .unwrap();
    (bus, records)
}

#[tokio::test]
async fn the_audit_log_records_attempted_then_succeeded() {
    let log = Arc::new(Log::default());
    let ids = Ids::default();
    let (bus, records) = audited(&log, &ids);
    bus.send(Envelope::new(rename(1, "a")).principal(Principal::new("auditor")))
        .await
        .unwrap();
    let records = records.lock().unwrap();
    let (message_id, correlation_id) = ids.lock().unwrap()[0];
    let states: Vec<AuditState> = records.iter().map(|r| r.state).collect();
    assert_eq!(states, [AuditState::Attempted, AuditState::Succeeded]);
    for r in records.iter() {
        assert_eq!(r.command, "Rename");
        assert_eq!(r.principal.as_deref(), Some("auditor"));
        assert_eq!(r.error, None);
        assert_eq!(r.message_id, message_id, "the id the handler saw");
        assert_eq!(r.correlation_id, correlation_id);
    }
}

#[tokio::test]
async fn the_audit_log_records_attempted_then_failed_with_the_status_and_error() {
    let log = Arc::new(Log::default());
    let ids = Ids::default();
    let (bus, records) = audited(&log, &ids);
    bus.send(rename(5, "")).await.unwrap_err();
    let records = records.lock().unwrap();
    let states: Vec<AuditState> = records.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [AuditState::Attempted, AuditState::Failed(Status::NotFound)]
    );
    assert_eq!(records[0].error, None);
    assert_eq!(records[1].error.as_deref(), Some("not found: item 5"));
    assert_eq!(records[1].principal, None);
}

#[tokio::test]
async fn the_audit_log_does_not_record_queries() {
    let log = Arc::new(Log::default());
    let (bus, records) = audited(&log, &Ids::default());
    bus.query(NameOf { id: 1 }).await.unwrap();
    assert!(records.lock().unwrap().is_empty());
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u32)]
struct RenameTwice {
    id: u32,
}

#[command_handler(RenameTwice)]
#[authorize]
struct RenameTwiceHandler;

impl CommandHandler<RenameTwice> for RenameTwiceHandler {
    async fn handle(&self, cmd: RenameTwice, cx: &mut CommandContext) -> Result<u32, Error> {
        cx.send(rename(cmd.id, "first")).await?;
        cx.send(rename(cmd.id, "second")).await
    }
}

#[tokio::test]
async fn the_audit_log_sees_commands_sent_from_handlers_and_refusals_of_inner_layers() {
    let log = Arc::new(Log::default());
    let ids = Ids::default();
    let records: Arc<Mutex<Vec<AuditRecord>>> = Arc::default();
    let sink = records.clone();
    let bus = builder(&log, &ids)
        .register::<RenameTwiceHandler>()
        .middleware(AuditLog::with_sink(move |r| {
            sink.lock().unwrap().push(r.clone())
        }))
        .build()
        .unwrap();

    // Refused by the authorize layer, which runs inside the middleware.
    let err = bus.send(RenameTwice { id: 1 }).await.unwrap_err();
    assert_eq!(err.status(), Status::Unauthenticated);
    let got: Vec<(&str, AuditState)> = records
        .lock()
        .unwrap()
        .drain(..)
        .map(|r| (r.command, r.state))
        .collect();
    assert_eq!(
        got,
        [
            ("RenameTwice", AuditState::Attempted),
            ("RenameTwice", AuditState::Failed(Status::Unauthenticated)),
        ]
    );

    bus.send(Envelope::new(RenameTwice { id: 2 }).principal(Principal::new("ops")))
        .await
        .unwrap();
    let records = records.lock().unwrap();
    let got: Vec<(&str, AuditState)> = records.iter().map(|r| (r.command, r.state)).collect();
    assert_eq!(
        got,
        [
            ("RenameTwice", AuditState::Attempted),
            ("Rename", AuditState::Attempted),
            ("Rename", AuditState::Succeeded),
            ("Rename", AuditState::Attempted),
            ("Rename", AuditState::Succeeded),
            ("RenameTwice", AuditState::Succeeded),
        ]
    );
    let parent = records[0].message_id;
    assert!(
        records
            .iter()
            .all(|r| r.correlation_id == records[0].correlation_id)
    );
    assert!(
        records
            .iter()
            .all(|r| r.principal.as_deref() == Some("ops"))
    );
    assert_ne!(records[1].message_id, parent);
    assert_ne!(records[1].message_id, records[3].message_id);
}

#[tokio::test]
async fn middleware_is_counted_once_per_dispatch() {
    struct Count(Arc<AtomicUsize>);
    impl Middleware for Count {
        async fn handle(&self, _d: &Dispatch<'_>, next: Next<'_>) -> Result<(), Error> {
            self.0.fetch_add(1, Ordering::SeqCst);
            next.run().await
        }
    }
    let count = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Log::default());
    let bus = builder(&log, &Ids::default())
        .middleware(Count(count.clone()))
        .build()
        .unwrap();
    for i in 0..5 {
        bus.send(rename(i, "x")).await.unwrap();
        bus.query(NameOf { id: i }).await.unwrap();
    }
    assert_eq!(count.load(Ordering::SeqCst), 10);
}
