//! Ids across a flow (DESIGN §4): a message sent from inside a handler (`cx.send`, from command
//! and event handlers) keeps the correlation id of the message that started the flow and gets
//! its parent's message id as causation id; an event's causation id is the command that emitted
//! it. Asserted with the ids the handlers themselves saw.

use std::sync::{Arc, Mutex};

use cqrs_core::prelude::*;
use uuid::Uuid;

/// The metadata one handler saw.
#[derive(Debug, Clone)]
struct Seen {
    message_id: Uuid,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    principal: Option<String>,
    idempotency_key: Option<String>,
    saga_id: Option<String>,
}

impl Seen {
    fn of(m: &Metadata) -> Self {
        Seen {
            message_id: m.message_id(),
            correlation_id: m.correlation_id(),
            causation_id: m.causation_id(),
            principal: m.principal().map(|p| p.id().to_owned()),
            idempotency_key: m.idempotency_key().map(str::to_owned),
            saga_id: m.saga_id().map(str::to_owned),
        }
    }
}

#[derive(Default)]
struct Trail(Mutex<Vec<(&'static str, Seen)>>);

impl Trail {
    fn record(&self, who: &'static str, m: &Metadata) {
        self.0.lock().unwrap().push((who, Seen::of(m)));
    }
    fn get(&self, who: &str) -> Seen {
        let all = self.0.lock().unwrap();
        let mut found = all.iter().filter(|(w, _)| *w == who);
        let first = found
            .next()
            .unwrap_or_else(|| panic!("{who} did not run"))
            .1
            .clone();
        assert!(found.next().is_none(), "{who} ran more than once");
        first
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u32)]
struct Checkout {
    cart: u32,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u32)]
struct ChargeCard {
    cart: u32,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ShipParcel {
    cart: u32,
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CheckedOut {
    cart: u32,
}

#[command_handler(Checkout)]
struct CheckoutHandler {
    trail: Arc<Trail>,
}

impl CommandHandler<Checkout> for CheckoutHandler {
    async fn handle(&self, cmd: Checkout, cx: &mut CommandContext) -> Result<u32, Error> {
        self.trail.record("Checkout", cx.metadata());
        let receipt = cx.send(ChargeCard { cart: cmd.cart }).await?;
        cx.emit(CheckedOut { cart: cmd.cart });
        Ok(receipt)
    }
}

#[command_handler(ChargeCard)]
struct ChargeCardHandler {
    trail: Arc<Trail>,
}

impl CommandHandler<ChargeCard> for ChargeCardHandler {
    async fn handle(&self, cmd: ChargeCard, cx: &mut CommandContext) -> Result<u32, Error> {
        self.trail.record("ChargeCard", cx.metadata());
        Ok(cmd.cart + 1000)
    }
}

/// A process manager: reacts to the event by sending a command.
#[event_handler(CheckedOut)]
struct ShippingSaga {
    trail: Arc<Trail>,
    event_ids: Arc<Mutex<Vec<Uuid>>>,
}

impl EventHandler<CheckedOut> for ShippingSaga {
    async fn handle(&self, e: &CheckedOut, cx: &mut EventContext) -> Result<(), Error> {
        self.trail.record("CheckedOut", cx.metadata());
        self.event_ids.lock().unwrap().push(cx.event_id());
        cx.send(ShipParcel { cart: e.cart }).await
    }
}

#[command_handler(ShipParcel)]
struct ShipParcelHandler {
    trail: Arc<Trail>,
}

impl CommandHandler<ShipParcel> for ShipParcelHandler {
    async fn handle(&self, _cmd: ShipParcel, cx: &mut CommandContext) -> Result<(), Error> {
        self.trail.record("ShipParcel", cx.metadata());
        Ok(())
    }
}

fn shop() -> (Bus, Arc<Trail>, Arc<Mutex<Vec<Uuid>>>) {
    let trail = Arc::new(Trail::default());
    let event_ids = Arc::new(Mutex::new(Vec::new()));
    let bus = Bus::builder()
        .discover(false)
        .register::<CheckoutHandler>()
        .register::<ChargeCardHandler>()
        .register::<ShippingSaga>()
        .register::<ShipParcelHandler>()
        .provide(trail.clone())
        .provide(event_ids.clone())
        .build()
        .unwrap();
    (bus, trail, event_ids)
}

#[tokio::test]
async fn a_top_level_message_is_its_own_correlation_and_has_no_cause() {
    let (bus, trail, _) = shop();
    bus.send(ChargeCard { cart: 1 }).await.unwrap();
    let seen = trail.get("ChargeCard");
    assert_eq!(seen.correlation_id, seen.message_id);
    assert_eq!(seen.causation_id, None);
    assert_eq!(
        seen.message_id.get_version_num(),
        7,
        "message ids are UUID v7"
    );
}

#[tokio::test]
async fn a_command_sent_from_a_command_handler_is_its_child() {
    let (bus, trail, _) = shop();
    assert_eq!(bus.send(Checkout { cart: 5 }).await.unwrap(), 1005);
    let parent = trail.get("Checkout");
    let child = trail.get("ChargeCard");
    assert_eq!(child.correlation_id, parent.correlation_id);
    assert_eq!(child.causation_id, Some(parent.message_id));
    assert_ne!(child.message_id, parent.message_id);
}

#[tokio::test]
async fn an_event_is_the_child_of_the_command_that_emitted_it() {
    let (bus, trail, event_ids) = shop();
    bus.send(Checkout { cart: 6 }).await.unwrap();
    let command = trail.get("Checkout");
    let event = trail.get("CheckedOut");
    assert_eq!(
        event.message_id,
        event_ids.lock().unwrap()[0],
        "cx.event_id()"
    );
    assert_eq!(event.correlation_id, command.correlation_id);
    assert_eq!(event.causation_id, Some(command.message_id));
}

#[tokio::test]
async fn a_command_sent_from_an_event_handler_is_the_child_of_the_event() {
    let (bus, trail, _) = shop();
    bus.send(Checkout { cart: 7 }).await.unwrap();
    let command = trail.get("Checkout");
    let event = trail.get("CheckedOut");
    let shipped = trail.get("ShipParcel");
    assert_eq!(shipped.correlation_id, command.correlation_id);
    assert_eq!(shipped.causation_id, Some(event.message_id));
    let ids = [
        command.message_id,
        trail.get("ChargeCard").message_id,
        event.message_id,
        shipped.message_id,
    ];
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 4, "every message has its own id: {ids:?}");
}

#[tokio::test]
async fn a_given_correlation_id_runs_through_the_whole_flow() {
    let (bus, trail, _) = shop();
    let correlation = Uuid::now_v7();
    let cause = Uuid::now_v7();
    let id = Uuid::now_v7();
    bus.send(
        Envelope::new(Checkout { cart: 8 })
            .message_id(id)
            .correlation_id(correlation)
            .causation_id(cause),
    )
    .await
    .unwrap();
    let command = trail.get("Checkout");
    assert_eq!(command.message_id, id);
    assert_eq!(command.correlation_id, correlation);
    assert_eq!(command.causation_id, Some(cause));
    for who in ["ChargeCard", "CheckedOut", "ShipParcel"] {
        assert_eq!(trail.get(who).correlation_id, correlation, "{who}");
    }
    assert_eq!(trail.get("ChargeCard").causation_id, Some(id));
}

#[tokio::test]
async fn children_inherit_the_principal_and_saga_but_not_the_idempotency_key() {
    let (bus, trail, _) = shop();
    bus.send(
        Envelope::new(Checkout { cart: 9 })
            .principal(Principal::new("alice"))
            .saga_id("checkout-9")
            .idempotency_key("checkout-9-once"),
    )
    .await
    .unwrap();
    let parent = trail.get("Checkout");
    assert_eq!(parent.principal.as_deref(), Some("alice"));
    assert_eq!(parent.idempotency_key.as_deref(), Some("checkout-9-once"));
    for who in ["ChargeCard", "CheckedOut", "ShipParcel"] {
        let seen = trail.get(who);
        assert_eq!(seen.principal.as_deref(), Some("alice"), "{who}");
        assert_eq!(seen.saga_id.as_deref(), Some("checkout-9"), "{who}");
        assert_eq!(seen.idempotency_key, None, "{who}");
    }
}

#[tokio::test]
async fn two_top_level_sends_are_two_flows() {
    let (bus, trail, _) = shop();
    bus.send(ChargeCard { cart: 1 }).await.unwrap();
    bus.send(ChargeCard { cart: 2 }).await.unwrap();
    let all = trail.0.lock().unwrap();
    assert_eq!(all.len(), 2);
    assert_ne!(all[0].1.correlation_id, all[1].1.correlation_id);
    assert_ne!(all[0].1.message_id, all[1].1.message_id);
}
