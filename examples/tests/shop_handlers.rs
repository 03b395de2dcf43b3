//! The shop's handlers tested with `cqrs_core::testing`, the way a newcomer tests their own:
//!
//! - `AggregateTest`: given the order's past events, when a command, then these new events (or
//!   this error), on an in-memory event store, no database;
//! - `override_handler` + `stub`: the real bus with one handler replaced, to test a flow without
//!   what lies beyond it;
//! - `EventRecorder`: every event published and every delivery to a handler.

use std::sync::{Arc, Mutex};

use cqrs_core::prelude::*;
use cqrs_core::testing::{AggregateTest, EventRecorder, stub};
use cqrs_examples::shop::orders::{
    CancelOrder, CancelOrderHandler, GetOrder, Order, OrderEvent, PlaceOrder,
};
use cqrs_examples::shop::products::{CreateProduct, ReleaseStock};
use cqrs_examples::shop::users::{RegisterUser, UserRegistered};
use cqrs_examples::shop::{self, Db, auth};

async fn principal(token: &str) -> Principal {
    auth::verify(token.to_owned())
        .await
        .unwrap()
        .expect("a demo token")
}

// ---- the order aggregate: given / when / then ------------------------------------------------

fn cancel_test() -> AggregateTest<Order> {
    AggregateTest::new(
        Bus::builder()
            .discover(false)
            .register::<CancelOrderHandler>(),
        "order-1",
    )
}

fn placed_by_alice() -> OrderEvent {
    OrderEvent::Placed {
        order_id: "order-1".into(),
        customer: "alice".into(),
        product_id: 7,
        quantity: 2,
        unit_price_cents: 500,
    }
}

async fn cancel_by(token: &str) -> Envelope<CancelOrder> {
    Envelope::new(CancelOrder {
        order_id: "order-1".into(),
    })
    .principal(principal(token).await)
}

#[tokio::test]
async fn the_customer_cancels_their_order() {
    cancel_test()
        .given([placed_by_alice()])
        .when(cancel_by("alice-token").await)
        .await
        .then_events([OrderEvent::Cancelled {
            order_id: "order-1".into(),
            product_id: 7,
            quantity: 2,
            by: "alice".into(),
        }]);
}

#[tokio::test]
async fn staff_may_cancel_any_order() {
    cancel_test()
        .given([placed_by_alice()])
        .when(cancel_by("staff-token").await)
        .await
        .then_events([OrderEvent::Cancelled {
            order_id: "order-1".into(),
            product_id: 7,
            quantity: 2,
            by: "sam".into(),
        }]);
}

#[tokio::test]
async fn another_customer_may_not() {
    let error = cancel_test()
        .given([placed_by_alice()])
        .when(cancel_by("bob-token").await)
        .await
        .then_error(Status::Forbidden);
    assert!(error.to_string().contains("another customer"), "{error}");
}

#[tokio::test]
async fn cancelling_twice_changes_nothing() {
    let cancelled = OrderEvent::Cancelled {
        order_id: "order-1".into(),
        product_id: 7,
        quantity: 2,
        by: "alice".into(),
    };
    cancel_test()
        .given([placed_by_alice(), cancelled])
        .when(cancel_by("alice-token").await)
        .await
        .then_no_events();
}

#[tokio::test]
async fn an_unknown_order_is_not_found() {
    cancel_test()
        .when(cancel_by("alice-token").await)
        .await
        .then_error(Status::NotFound);
}

#[tokio::test]
async fn cancelling_needs_a_caller() {
    cancel_test()
        .given([placed_by_alice()])
        .when(CancelOrder {
            order_id: "order-1".into(),
        })
        .await
        .then_error(Status::Unauthenticated);
}

// ---- the whole shop on an in-memory database, one handler stubbed ------------------------------

/// The shop's bus on a private in-memory SQLite database, with the tables created.
async fn shop_bus(customize: impl FnOnce(BusBuilder) -> BusBuilder) -> (Bus, Db) {
    let db = Db::connect("sqlite::memory:").await.unwrap();
    shop::migrate(&db).await.unwrap();
    let bus = customize(shop::bus_builder(&db)).build().unwrap();
    (bus, db)
}

#[tokio::test]
async fn a_cancelled_order_releases_its_units() {
    // The stock itself is another handler's business: stand in for it and see what it is asked.
    let released = Arc::new(Mutex::new(Vec::<(i64, i64)>::new()));
    let asked = released.clone();
    let events = EventRecorder::new();
    let (bus, db) = shop_bus(|builder| {
        builder
            .override_handler::<ReleaseStock, _, _>(stub(move |cmd: ReleaseStock| {
                let asked = asked.clone();
                async move {
                    asked.lock().unwrap().push((cmd.product_id, cmd.quantity));
                    Ok(())
                }
            }))
            .record_events(&events)
    })
    .await;

    let staff = principal("staff-token").await;
    let alice = principal("alice-token").await;
    let product = bus
        .send(
            Envelope::new(CreateProduct {
                name: "Teapot".into(),
                price_cents: 1500,
                stock: 4,
            })
            .principal(staff),
        )
        .await
        .unwrap();
    let receipt = bus
        .send(
            Envelope::new(PlaceOrder {
                product_id: product.id,
                quantity: 3,
            })
            .principal(alice.clone()),
        )
        .await
        .unwrap();
    assert_eq!(receipt.total_cents, 4500);
    bus.send(
        Envelope::new(CancelOrder {
            order_id: receipt.order_id.clone(),
        })
        .principal(alice),
    )
    .await
    .unwrap();

    assert_eq!(*released.lock().unwrap(), [(product.id, 3)]);
    events.assert_published(&[
        OrderEvent::Placed {
            order_id: receipt.order_id.clone(),
            customer: "alice".into(),
            product_id: product.id,
            quantity: 3,
            unit_price_cents: 1500,
        },
        OrderEvent::Cancelled {
            order_id: receipt.order_id.clone(),
            product_id: product.id,
            quantity: 3,
            by: "alice".into(),
        },
    ]);
    assert_eq!(events.delivered_to("OrderSummaries"), 2);
    assert_eq!(events.delivered_to("RestockOnCancel"), 2);
    db.close().await;
}

#[tokio::test]
async fn registering_a_user_sends_the_welcome_mail() {
    let events = EventRecorder::new();
    let (bus, db) = shop_bus(|builder| builder.record_events(&events)).await;

    let user = bus
        .send(
            Envelope::new(RegisterUser {
                email: "Ada@Example.com".into(),
                name: "Ada".into(),
            })
            .principal(principal("staff-token").await),
        )
        .await
        .unwrap();

    events.assert_published(&[UserRegistered {
        user_id: user.id,
        email: "ada@example.com".into(),
        name: "Ada".into(),
    }]);
    assert_eq!(events.delivered_to("SendWelcomeMail"), 1);
    db.close().await;
}

#[tokio::test]
async fn the_projection_applies_a_redelivered_event_once() {
    let events = EventRecorder::new();
    let (bus, db) = shop_bus(|builder| builder.record_events(&events)).await;
    let placed = OrderEvent::Placed {
        order_id: "order-9".into(),
        customer: "bob".into(),
        product_id: 1,
        quantity: 1,
        unit_price_cents: 250,
    };
    // The outbox delivers at least once: the same event (same id) may come twice.
    let id = uuid::Uuid::now_v7();
    bus.publish(Envelope::new(placed.clone()).message_id(id))
        .await
        .unwrap();
    bus.publish(Envelope::new(placed).message_id(id))
        .await
        .unwrap();

    assert!(events.deliveries().iter().all(|d| d.outcome.is_ok()));
    assert_eq!(events.delivered_to("OrderSummaries"), 2);
    let summary = bus
        .query(
            Envelope::new(GetOrder {
                order_id: "order-9".into(),
            })
            .principal(principal("bob-token").await),
        )
        .await
        .unwrap();
    assert_eq!(summary.total_cents, 250);
    assert_eq!(summary.status, "placed");
    db.close().await;
}
