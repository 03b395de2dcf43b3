//! What the bus tells `tracing` (DESIGN §5, layer 1, and §3/§4): one `cqrs.dispatch` span per
//! dispatch with the message, handler, ids, principal and outcome; a failed event delivery or a
//! panicking handler is an ERROR event; an unhandled message found by a non-strict `build()` is a
//! WARN event; `AuditLog::new()` writes to target `cqrs::audit`.
//!
//! tracing caches, per call site, whether anyone listens, and a subscriber set with
//! `set_default` on one test's thread is not always asked (another test's thread may register the
//! call site first). So this binary installs one global recording subscriber, and each test
//! picks out the records of its own messages.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use cqrs_core::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event as TracingEvent, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use uuid::Uuid;

/// One closed span or one event, with its fields as strings.
#[derive(Debug, Clone)]
struct Recorded {
    name: String,
    target: String,
    level: tracing::Level,
    fields: BTreeMap<String, String>,
}

impl Recorded {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

#[derive(Default)]
struct Recorder {
    spans: Mutex<Vec<Recorded>>,
    events: Mutex<Vec<Recorded>>,
}

struct RecordingLayer(Arc<Recorder>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for RecordingLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &TracingEvent<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        self.0.events.lock().unwrap().push(Recorded {
            name: meta.name().to_owned(),
            target: meta.target().to_owned(),
            level: *meta.level(),
            fields: fields.0,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let fields = span.extensions_mut().remove::<Fields>().unwrap_or_default();
        let meta = span.metadata();
        self.0.spans.lock().unwrap().push(Recorded {
            name: meta.name().to_owned(),
            target: meta.target().to_owned(),
            level: *meta.level(),
            fields: fields.0,
        });
    }
}

fn recorder() -> &'static Arc<Recorder> {
    static RECORDER: OnceLock<Arc<Recorder>> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = Arc::new(Recorder::default());
        let subscriber = tracing_subscriber::registry().with(RecordingLayer(recorder.clone()));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        recorder
    })
}

/// The dispatch spans of message `name`, in the order they closed.
fn dispatches(name: &str) -> Vec<Recorded> {
    recorder()
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.name == "cqrs.dispatch" && s.field("message") == Some(name))
        .cloned()
        .collect()
}

/// The one record among `records` with message id `id`.
fn only(records: Vec<Recorded>, id: &str) -> Recorded {
    let mut found: Vec<Recorded> = records
        .into_iter()
        .filter(|r| r.field("message_id") == Some(id))
        .collect();
    assert_eq!(found.len(), 1, "one span per dispatch: {found:?}");
    found.remove(0)
}

fn events_where(pred: impl Fn(&Recorded) -> bool) -> Vec<Recorded> {
    recorder()
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| pred(e))
        .cloned()
        .collect()
}

type Seen = Arc<Mutex<Vec<(&'static str, Uuid)>>>;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u32)]
struct TraceOrder {
    fail: bool,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TraceReserve;

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TraceOrdered;

#[command_handler(TraceOrder)]
struct TraceOrderHandler {
    seen: Seen,
}

impl CommandHandler<TraceOrder> for TraceOrderHandler {
    async fn handle(&self, cmd: TraceOrder, cx: &mut CommandContext) -> Result<u32, Error> {
        self.seen
            .lock()
            .unwrap()
            .push(("TraceOrder", cx.metadata().message_id()));
        if cmd.fail {
            return Err(Error::not_found("no such product"));
        }
        cx.send(TraceReserve).await?;
        cx.emit(TraceOrdered);
        Ok(9)
    }
}

#[command_handler(TraceReserve)]
struct TraceReserveHandler {
    seen: Seen,
}

impl CommandHandler<TraceReserve> for TraceReserveHandler {
    async fn handle(&self, _cmd: TraceReserve, cx: &mut CommandContext) -> Result<(), Error> {
        self.seen
            .lock()
            .unwrap()
            .push(("TraceReserve", cx.metadata().message_id()));
        Ok(())
    }
}

#[event_handler(TraceOrdered)]
struct TraceOrderedHandler {
    seen: Seen,
}

impl EventHandler<TraceOrdered> for TraceOrderedHandler {
    async fn handle(&self, _e: &TraceOrdered, cx: &mut EventContext) -> Result<(), Error> {
        self.seen
            .lock()
            .unwrap()
            .push(("TraceOrdered", cx.event_id()));
        Ok(())
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = String)]
struct TraceStock;

#[query_handler(TraceStock)]
#[cached_query(ttl = "1h")]
struct TraceStockHandler;

impl QueryHandler<TraceStock> for TraceStockHandler {
    async fn handle(&self, _q: TraceStock, _cx: &QueryContext) -> Result<String, Error> {
        Ok("plenty".into())
    }
}

fn shop(seen: &Seen) -> Bus {
    Bus::builder()
        .discover(false)
        .register::<TraceOrderHandler>()
        .register::<TraceReserveHandler>()
        .register::<TraceOrderedHandler>()
        .register::<TraceStockHandler>()
        .provide(seen.clone())
        .build()
        .unwrap()
}

fn id_seen_by(seen: &Seen, who: &str) -> String {
    seen.lock()
        .unwrap()
        .iter()
        .find(|(w, _)| *w == who)
        .unwrap()
        .1
        .to_string()
}

#[tokio::test]
async fn every_dispatch_is_one_span_with_message_handler_ids_principal_and_outcome() {
    recorder();
    let seen = Seen::default();
    let bus = shop(&seen);
    bus.send(Envelope::new(TraceOrder { fail: false }).principal(Principal::new("tracy")))
        .await
        .unwrap();

    let order_id = id_seen_by(&seen, "TraceOrder");
    let order = only(dispatches("TraceOrder"), &order_id);
    assert_eq!(order.target, "cqrs");
    assert_eq!(order.level, tracing::Level::INFO);
    assert_eq!(order.field("kind"), Some("command"));
    assert_eq!(order.field("handler"), Some("TraceOrderHandler"));
    assert_eq!(order.field("correlation_id"), Some(order_id.as_str()));
    assert_eq!(order.field("causation_id"), None);
    assert_eq!(order.field("principal"), Some("tracy"));
    assert_eq!(order.field("attempts"), Some("1"));
    assert_eq!(order.field("cache_hit"), Some("false"));
    assert_eq!(order.field("status"), Some("ok"));

    let reserve = only(
        dispatches("TraceReserve"),
        &id_seen_by(&seen, "TraceReserve"),
    );
    assert_eq!(reserve.field("kind"), Some("command"));
    assert_eq!(reserve.field("correlation_id"), Some(order_id.as_str()));
    assert_eq!(reserve.field("causation_id"), Some(order_id.as_str()));
    assert_eq!(reserve.field("principal"), Some("tracy"));

    let ordered = only(
        dispatches("TraceOrdered"),
        &id_seen_by(&seen, "TraceOrdered"),
    );
    assert_eq!(ordered.field("kind"), Some("event"));
    assert_eq!(ordered.field("handler"), Some("TraceOrderedHandler"));
    assert_eq!(ordered.field("causation_id"), Some(order_id.as_str()));
    assert_eq!(ordered.field("status"), Some("ok"));
}

#[tokio::test]
async fn a_failed_dispatch_records_its_status() {
    recorder();
    let seen = Seen::default();
    let bus = shop(&seen);
    bus.send(TraceOrder { fail: true }).await.unwrap_err();
    let failed = only(dispatches("TraceOrder"), &id_seen_by(&seen, "TraceOrder"));
    assert_eq!(failed.field("status"), Some("not_found"));
    assert_eq!(failed.field("principal"), None);
}

#[tokio::test]
async fn a_cache_hit_is_recorded_on_the_span() {
    recorder();
    let bus = shop(&Seen::default());
    let id = Uuid::now_v7();
    bus.query(TraceStock).await.unwrap();
    bus.query(Envelope::new(TraceStock).message_id(id))
        .await
        .unwrap();
    let hit = only(dispatches("TraceStock"), &id.to_string());
    assert_eq!(hit.field("kind"), Some("query"));
    assert_eq!(hit.field("cache_hit"), Some("true"));
    assert_eq!(hit.field("attempts"), Some("0"));
    assert_eq!(hit.field("status"), Some("ok"));
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TraceAlarm;

#[event_handler(TraceAlarm)]
struct BrokenSiren;

impl EventHandler<TraceAlarm> for BrokenSiren {
    async fn handle(&self, _e: &TraceAlarm, _cx: &mut EventContext) -> Result<(), Error> {
        panic!("the siren is broken");
    }
}

#[event_handler(TraceAlarm)]
struct MutedPager;

impl EventHandler<TraceAlarm> for MutedPager {
    async fn handle(&self, _e: &TraceAlarm, _cx: &mut EventContext) -> Result<(), Error> {
        Err(Error::unavailable("the pager is muted"))
    }
}

#[tokio::test]
async fn a_failed_event_delivery_is_an_error_event_naming_event_handler_and_id() {
    recorder();
    let ids = Arc::new(Mutex::new(Vec::new()));
    let sink = ids.clone();
    let bus = Bus::builder()
        .discover(false)
        .register::<BrokenSiren>()
        .register::<MutedPager>()
        .on_handler_failure(move |f| sink.lock().unwrap().push(f.event_id))
        .build()
        .unwrap();
    bus.publish(TraceAlarm).await.unwrap_err();
    let event_id = ids.lock().unwrap()[0].to_string();

    let failures = events_where(|e| e.field("event_id") == Some(event_id.as_str()));
    assert_eq!(failures.len(), 2, "{failures:?}");
    for f in &failures {
        assert_eq!(f.level, tracing::Level::ERROR);
        assert_eq!(f.target, "cqrs");
        assert_eq!(f.field("event"), Some("TraceAlarm"));
        assert!(
            f.field("message")
                .is_some_and(|m| m.starts_with("event handler failed: ")),
            "{f:?}"
        );
    }
    let by_handler = |h: &str| {
        failures
            .iter()
            .find(|f| f.field("handler") == Some(h))
            .unwrap()
    };
    let siren = by_handler("BrokenSiren");
    assert_eq!(siren.field("status"), Some("internal"));
    assert!(
        siren
            .field("message")
            .unwrap()
            .contains("the siren is broken")
    );
    let pager = by_handler("MutedPager");
    assert_eq!(pager.field("status"), Some("unavailable"));
    assert!(
        pager
            .field("message")
            .unwrap()
            .contains("the pager is muted")
    );

    // The panic itself is logged too, where it was caught.
    let panics = events_where(|e| {
        e.level == tracing::Level::ERROR
            && e.field("handler") == Some("BrokenSiren")
            && e.field("message")
                .is_some_and(|m| m.contains("panicked: the siren is broken"))
    });
    assert!(!panics.is_empty());
}

/// Declared without a handler anywhere in this program.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TraceNeverHandled;

#[test]
fn a_discovering_build_warns_about_a_command_without_a_handler() {
    recorder();
    let bus = Bus::builder()
        .provide(Seen::default())
        .build()
        .expect("not strict: an unhandled command is only a warning");
    assert!(!bus.handles::<TraceNeverHandled>());
    let warnings = events_where(|e| {
        e.level == tracing::Level::WARN && e.field("name") == Some("TraceNeverHandled")
    });
    assert!(
        !warnings.is_empty(),
        "{:?}",
        events_where(|e| e.level == tracing::Level::WARN)
    );
    let w = &warnings[0];
    assert_eq!(w.target, "cqrs");
    assert_eq!(w.field("kind"), Some("command"));
    assert_eq!(
        w.field("message"),
        Some("command `TraceNeverHandled` has no handler; sending it will fail with NoHandler"),
        "the event's text is not replaced by a field: {w:?}"
    );
    assert!(
        w.field("location")
            .is_some_and(|l| l.starts_with("tests/tests/trace.rs:")),
        "{w:?}"
    );

    let err = Bus::builder()
        .provide(Seen::default())
        .strict()
        .build()
        .unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
}

#[tokio::test]
async fn the_default_audit_log_writes_to_the_cqrs_audit_target() {
    recorder();
    let bus = Bus::builder()
        .discover(false)
        .register::<TraceReserveHandler>()
        .provide(Seen::default())
        .middleware(AuditLog::new())
        .build()
        .unwrap();
    let id = Uuid::now_v7();
    bus.send(
        Envelope::new(TraceReserve)
            .message_id(id)
            .principal(Principal::new("auditor")),
    )
    .await
    .unwrap();
    let records = events_where(|e| e.field("message_id") == Some(id.to_string().as_str()));
    let states: Vec<&str> = records
        .iter()
        .map(|r| r.field("state").unwrap_or(""))
        .collect();
    assert_eq!(states, ["Attempted", "Succeeded"]);
    for r in &records {
        assert_eq!(r.target, "cqrs::audit");
        assert_eq!(r.level, tracing::Level::INFO);
        assert_eq!(r.field("command"), Some("TraceReserve"));
        assert_eq!(r.field("principal"), Some("auditor"));
    }
}
