//! Events: what a command emits reaches every handler of the event once the command has
//! succeeded, and never when it fails. One event handler failing or panicking neither stops the
//! others nor changes the command's result; the failure is reported to the failure sink (and
//! logged as a `tracing` error: see `trace.rs`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use cqrs_core::prelude::*;
use uuid::Uuid;

/// What the handlers did, in order.
#[derive(Default)]
struct Log(Mutex<Vec<Entry>>);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    who: &'static str,
    order: u32,
    event_id: Option<Uuid>,
}

impl Log {
    fn push(&self, who: &'static str, order: u32, event_id: Option<Uuid>) {
        self.0.lock().unwrap().push(Entry {
            who,
            order,
            event_id,
        });
    }
    fn entries(&self) -> Vec<Entry> {
        self.0.lock().unwrap().clone()
    }
    fn who(&self) -> Vec<&'static str> {
        self.entries().into_iter().map(|e| e.who).collect()
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u32)]
struct PlaceOrder {
    order: u32,
    outcome: Outcome,
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Outcome {
    Succeed,
    Fail,
    Panic,
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order: u32,
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OrderPriced {
    order: u32,
    cents: u64,
}

/// An event nobody handles.
#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OrderNoted {
    order: u32,
}

#[command_handler(PlaceOrder)]
struct PlaceOrderHandler {
    log: Arc<Log>,
}

impl CommandHandler<PlaceOrder> for PlaceOrderHandler {
    async fn handle(&self, cmd: PlaceOrder, cx: &mut CommandContext) -> Result<u32, Error> {
        cx.emit(OrderPlaced { order: cmd.order });
        cx.emit(OrderNoted { order: cmd.order });
        cx.emit(OrderPriced {
            order: cmd.order,
            cents: 1250,
        });
        assert_eq!(
            cx.emitted().collect::<Vec<_>>(),
            ["OrderPlaced", "OrderNoted", "OrderPriced"]
        );
        // The handler's last act: every event handler entry must come after this one.
        self.log.push("PlaceOrderHandler", cmd.order, None);
        match cmd.outcome {
            Outcome::Succeed => Ok(cmd.order),
            Outcome::Fail => Err(Error::conflict("the order was already placed")),
            Outcome::Panic => panic!("the order book is corrupt"),
        }
    }
}

#[event_handler(OrderPlaced)]
struct ReserveStock {
    log: Arc<Log>,
}

impl EventHandler<OrderPlaced> for ReserveStock {
    async fn handle(&self, e: &OrderPlaced, cx: &mut EventContext) -> Result<(), Error> {
        self.log.push("ReserveStock", e.order, Some(cx.event_id()));
        Ok(())
    }
}

#[event_handler(OrderPlaced)]
struct MailCustomer {
    log: Arc<Log>,
}

impl EventHandler<OrderPlaced> for MailCustomer {
    async fn handle(&self, e: &OrderPlaced, cx: &mut EventContext) -> Result<(), Error> {
        self.log.push("MailCustomer", e.order, Some(cx.event_id()));
        Ok(())
    }
}

#[event_handler(OrderPriced)]
struct Invoice {
    log: Arc<Log>,
}

impl EventHandler<OrderPriced> for Invoice {
    async fn handle(&self, e: &OrderPriced, cx: &mut EventContext) -> Result<(), Error> {
        assert_eq!(e.cents, 1250);
        self.log.push("Invoice", e.order, Some(cx.event_id()));
        Ok(())
    }
}

/// Panics on every event (its name sorts before the healthy handlers').
#[event_handler(OrderPlaced)]
struct ExplodingProjection {
    log: Arc<Log>,
}

impl EventHandler<OrderPlaced> for ExplodingProjection {
    async fn handle(&self, e: &OrderPlaced, cx: &mut EventContext) -> Result<(), Error> {
        self.log
            .push("ExplodingProjection", e.order, Some(cx.event_id()));
        panic!("projection table is gone");
    }
}

/// Fails on every event (its name sorts between the healthy handlers').
#[event_handler(OrderPlaced)]
struct RefusingWebhook {
    log: Arc<Log>,
}

impl EventHandler<OrderPlaced> for RefusingWebhook {
    async fn handle(&self, e: &OrderPlaced, cx: &mut EventContext) -> Result<(), Error> {
        self.log
            .push("RefusingWebhook", e.order, Some(cx.event_id()));
        Err(Error::unavailable("the webhook endpoint is down"))
    }
}

/// A failure as the sink saw it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Failure {
    event: &'static str,
    handler: &'static str,
    event_id: Uuid,
    status: Status,
    message: String,
}

fn healthy(log: &Arc<Log>) -> Bus {
    Bus::builder()
        .discover(false)
        .register::<PlaceOrderHandler>()
        .register::<ReserveStock>()
        .register::<MailCustomer>()
        .register::<Invoice>()
        .provide(log.clone())
        .build()
        .unwrap()
}

fn with_broken_handlers(log: &Arc<Log>, failures: &Arc<Mutex<Vec<Failure>>>) -> Bus {
    let sink = failures.clone();
    Bus::builder()
        .discover(false)
        .register::<PlaceOrderHandler>()
        .register::<ReserveStock>()
        .register::<MailCustomer>()
        .register::<ExplodingProjection>()
        .register::<RefusingWebhook>()
        .provide(log.clone())
        .on_handler_failure(move |f| {
            sink.lock().unwrap().push(Failure {
                event: f.event,
                handler: f.handler,
                event_id: f.event_id,
                status: f.error.status(),
                message: f.error.message().into_owned(),
            })
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn emitted_events_reach_every_handler_of_their_type_after_the_command_succeeded() {
    let log = Arc::new(Log::default());
    let bus = healthy(&log);
    let report = bus
        .send_with_report(PlaceOrder {
            order: 7,
            outcome: Outcome::Succeed,
        })
        .await
        .unwrap();
    assert_eq!(report.output, 7);
    assert_eq!(report.events, ["OrderPlaced", "OrderNoted", "OrderPriced"]);

    let who = log.who();
    assert_eq!(
        who[0], "PlaceOrderHandler",
        "handlers run after the command: {who:?}"
    );
    let delivered: BTreeSet<_> = who[1..].iter().copied().collect();
    assert_eq!(
        delivered,
        BTreeSet::from(["Invoice", "MailCustomer", "ReserveStock"])
    );
    assert_eq!(who.len(), 4, "each handler got each event once: {who:?}");
    assert!(log.entries().iter().all(|e| e.order == 7));
}

#[tokio::test]
async fn handlers_of_one_event_see_one_event_id_and_each_event_has_its_own() {
    let log = Arc::new(Log::default());
    let bus = healthy(&log);
    bus.send(PlaceOrder {
        order: 1,
        outcome: Outcome::Succeed,
    })
    .await
    .unwrap();
    let entries = log.entries();
    let id_of = |who: &str| {
        entries
            .iter()
            .find(|e| e.who == who)
            .unwrap()
            .event_id
            .unwrap()
    };
    assert_eq!(id_of("ReserveStock"), id_of("MailCustomer"));
    assert_ne!(id_of("ReserveStock"), id_of("Invoice"));
}

#[tokio::test]
async fn no_event_is_delivered_when_the_command_fails() {
    let log = Arc::new(Log::default());
    let bus = healthy(&log);
    let err = bus
        .send(PlaceOrder {
            order: 2,
            outcome: Outcome::Fail,
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Conflict);
    assert_eq!(log.who(), ["PlaceOrderHandler"]);
}

#[tokio::test]
async fn no_event_is_delivered_when_the_command_handler_panics() {
    let log = Arc::new(Log::default());
    let bus = healthy(&log);
    let err = bus
        .send(PlaceOrder {
            order: 3,
            outcome: Outcome::Panic,
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Internal);
    assert_eq!(log.who(), ["PlaceOrderHandler"]);

    // The bus keeps serving, and events flow again.
    assert_eq!(
        bus.send(PlaceOrder {
            order: 4,
            outcome: Outcome::Succeed
        })
        .await
        .unwrap(),
        4
    );
    assert_eq!(log.who().len(), 5);
}

#[tokio::test]
async fn a_failing_or_panicking_event_handler_stops_no_other_and_leaves_the_result_alone() {
    let log = Arc::new(Log::default());
    let failures = Arc::new(Mutex::new(Vec::new()));
    let bus = with_broken_handlers(&log, &failures);

    let report = bus
        .send_with_report(PlaceOrder {
            order: 11,
            outcome: Outcome::Succeed,
        })
        .await
        .unwrap();
    assert_eq!(report.output, 11, "the command's result is untouched");

    let ran: BTreeSet<_> = log.who().into_iter().collect();
    assert_eq!(
        ran,
        BTreeSet::from([
            "ExplodingProjection",
            "MailCustomer",
            "PlaceOrderHandler",
            "RefusingWebhook",
            "ReserveStock",
        ]),
        "every handler ran, the healthy ones included"
    );

    let event_id = log
        .entries()
        .iter()
        .find(|e| e.who == "ReserveStock")
        .unwrap()
        .event_id
        .unwrap();
    let mut got = failures.lock().unwrap().clone();
    got.sort();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].event, "OrderPlaced");
    assert_eq!(got[0].handler, "ExplodingProjection");
    assert_eq!(got[0].event_id, event_id);
    assert_eq!(got[0].status, Status::Internal);
    assert!(got[0].message.contains("panicked"), "{}", got[0].message);
    assert!(
        got[0].message.contains("projection table is gone"),
        "{}",
        got[0].message
    );
    assert_eq!(got[1].event, "OrderPlaced");
    assert_eq!(got[1].handler, "RefusingWebhook");
    assert_eq!(got[1].event_id, event_id);
    assert_eq!(got[1].status, Status::Unavailable);
    assert_eq!(got[1].message, "the webhook endpoint is down");

    // And the bus keeps serving.
    assert_eq!(
        bus.send(PlaceOrder {
            order: 12,
            outcome: Outcome::Succeed
        })
        .await
        .unwrap(),
        12
    );
    assert_eq!(failures.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn publishing_an_event_reaches_every_handler_and_reports_the_ones_that_failed() {
    let log = Arc::new(Log::default());
    let failures = Arc::new(Mutex::new(Vec::new()));
    let bus = with_broken_handlers(&log, &failures);

    let err = bus.publish(OrderPlaced { order: 31 }).await.unwrap_err();
    assert_eq!(err.status(), Status::Internal, "the first failure's status");
    let message = err.message();
    assert!(
        message.contains("2 of 4 handlers of `OrderPlaced` failed"),
        "{message}"
    );
    assert!(message.contains("`ExplodingProjection`"), "{message}");
    assert!(message.contains("`RefusingWebhook`"), "{message}");
    // The first failure is kept whole as the source, not only as text.
    let first = err
        .find_source::<cqrs_core::StdErrorAdapter>()
        .expect("the first failure as the source");
    assert_eq!(first.0.status(), Status::Internal, "{}", first.0);
    assert!(first.0.message().contains("panicked"), "{}", first.0);

    let ran: BTreeSet<_> = log.who().into_iter().collect();
    assert_eq!(
        ran,
        BTreeSet::from([
            "ExplodingProjection",
            "MailCustomer",
            "RefusingWebhook",
            "ReserveStock",
        ])
    );
    assert_eq!(failures.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn publishing_to_healthy_handlers_is_ok_and_they_share_the_event_id() {
    let log = Arc::new(Log::default());
    let bus = healthy(&log);
    bus.publish(OrderPlaced { order: 41 }).await.unwrap();
    let ids: BTreeSet<Uuid> = log.entries().iter().filter_map(|e| e.event_id).collect();
    assert_eq!(log.who().len(), 2);
    assert_eq!(ids.len(), 1, "both handlers see the same event id: {ids:?}");

    let id = Uuid::now_v7();
    bus.publish(Envelope::new(OrderPlaced { order: 42 }).message_id(id))
        .await
        .unwrap();
    let given: Vec<Uuid> = log
        .entries()
        .iter()
        .filter(|e| e.order == 42)
        .filter_map(|e| e.event_id)
        .collect();
    assert_eq!(given, [id, id]);
}

#[tokio::test]
async fn publishing_an_event_nobody_handles_is_ok() {
    let log = Arc::new(Log::default());
    let bus = healthy(&log);
    assert!(!bus.handles::<OrderNoted>());
    assert!(bus.handles::<OrderPlaced>());
    bus.publish(OrderNoted { order: 1 }).await.unwrap();
    assert!(log.who().is_empty());
}
