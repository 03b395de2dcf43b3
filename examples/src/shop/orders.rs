//! Orders: an event-sourced aggregate. Its events are the truth; `order_summaries` is a
//! projection of them (the read side), fed through the outbox; a cancelled order's units go
//! back in stock through a command the projection-side handler sends.
//!
//! ```text
//! PlaceOrder --> PlaceOrderHandler --emits--> OrderEvent --> OrderSummaries (projection)
//! CancelOrder -> CancelOrderHandler -emits-/            \-> RestockOnCancel --sends--> ReleaseStock
//! ```

use cqrs_core::prelude::*;
use cqrs_core::{Aggregate, FieldError, sqlx};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use validator::Validate;

use super::db::{self, Db, on_db};
use super::products::{self, GetProduct, ProductId, ReleaseStock};

/// An order's id (a UUID v7, as text).
pub type OrderId = String;

// ---- the aggregate --------------------------------------------------------------------------

/// What happens to an order. One event type per aggregate; its variants are the facts.
#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[event(name = "orders.event")]
pub enum OrderEvent {
    Placed {
        order_id: OrderId,
        customer: String,
        product_id: ProductId,
        quantity: i64,
        unit_price_cents: i64,
    },
    Cancelled {
        order_id: OrderId,
        product_id: ProductId,
        quantity: i64,
        by: String,
    },
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// No event yet: the order does not exist.
    #[default]
    New,
    Placed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::New => "new",
            OrderStatus::Placed => "placed",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

/// The order, rebuilt from its events by `cx.load::<Order>(id)`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub status: OrderStatus,
    pub customer: String,
    pub product_id: ProductId,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

impl Aggregate for Order {
    const NAME: &'static str = "order";
    type Event = OrderEvent;

    /// Applies a fact; never fails, never decides (it also runs when the order is loaded).
    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed {
                order_id,
                customer,
                product_id,
                quantity,
                unit_price_cents,
            } => {
                *self = Order {
                    id: order_id.clone(),
                    status: OrderStatus::Placed,
                    customer: customer.clone(),
                    product_id: *product_id,
                    quantity: *quantity,
                    unit_price_cents: *unit_price_cents,
                };
            }
            OrderEvent::Cancelled { .. } => self.status = OrderStatus::Cancelled,
        }
    }
}

impl Order {
    /// Decides a cancellation by `by`: the customer who placed the order or staff may cancel it;
    /// cancelling a cancelled order changes nothing (`None`), so a retried request is harmless.
    pub fn cancel(&self, by: &Principal) -> Result<Option<OrderEvent>, Error> {
        match self.status {
            OrderStatus::New => Err(Error::not_found(format!("order {}", self.id))),
            OrderStatus::Cancelled => Ok(None),
            OrderStatus::Placed if by.id() != self.customer && !by.has_role("staff") => Err(
                Error::forbidden(format!("order {} belongs to another customer", self.id)),
            ),
            OrderStatus::Placed => Ok(Some(OrderEvent::Cancelled {
                order_id: self.id.clone(),
                product_id: self.product_id,
                quantity: self.quantity,
                by: by.id().to_owned(),
            })),
        }
    }
}

// ---- commands -------------------------------------------------------------------------------

/// Orders units of a product for the caller (`POST /orders`, permission `order:place`).
#[derive(Command, Validate, Debug, Clone, Serialize, Deserialize)]
#[command(output = OrderReceipt, name = "orders.place")]
pub struct PlaceOrder {
    pub product_id: ProductId,
    #[validate(range(min = 1, max = 100, message = "must be 1 to 100"))]
    pub quantity: i64,
}

/// What placing an order answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReceipt {
    pub order_id: OrderId,
    pub total_cents: i64,
}

/// Cancels an order (`POST /orders/{order_id}/cancel`, its customer or staff).
#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(name = "orders.cancel")]
pub struct CancelOrder {
    pub order_id: OrderId,
}

/// Takes the stock and records the order in one transaction: the stock row, the order's event in
/// `cqrs_events`, and that event in the outbox commit together or not at all. After the commit
/// the event reaches `OrderSummaries` and `RestockOnCancel`, and cached products are dropped
/// (the stock changed).
///
/// Read committed (the default) is enough: `take_stock`'s conditional `UPDATE` is the guard, and
/// a new order's event stream cannot clash with anyone.
#[command_handler(PlaceOrder, timeout = "5s", emits = [OrderEvent], invalidates = [GetProduct])]
#[authorize(permissions = ["order:place"])]
#[transactional]
#[retry(max_attempts = 3, delay = "20ms", on = [Unavailable])]
pub struct PlaceOrderHandler;

impl CommandHandler<PlaceOrder> for PlaceOrderHandler {
    async fn handle(
        &self,
        cmd: PlaceOrder,
        cx: &mut CommandContext,
    ) -> Result<OrderReceipt, Error> {
        let customer = cx
            .principal()
            .map(|p| p.id().to_owned())
            .ok_or_else(|| Error::unauthenticated("an order needs a customer"))?;
        let unit_price_cents = products::take_stock(cx, cmd.product_id, cmd.quantity).await?;
        // Prices and quantities come from callers: a total past `i64::MAX` is refused (422, and
        // the stock taken above is rolled back with the transaction), never wrapped or a panic.
        let total_cents = total_cents(cmd.quantity, unit_price_cents).ok_or_else(|| {
            Error::validation([FieldError::new(
                "quantity",
                "total_too_large",
                format!(
                    "{} unit(s) at {unit_price_cents} cents make a total larger than {} cents",
                    cmd.quantity,
                    i64::MAX
                ),
            )])
        })?;

        let mut order = cx.load::<Order>(Uuid::now_v7().to_string()).await?;
        order.record(OrderEvent::Placed {
            order_id: order.id().to_owned(),
            customer,
            product_id: cmd.product_id,
            quantity: cmd.quantity,
            unit_price_cents,
        });
        cx.save(&mut order).await?;
        Ok(OrderReceipt {
            order_id: order.id().to_owned(),
            total_cents,
        })
    }
}

/// An order's total, or `None` when it does not fit in an `i64`.
pub fn total_cents(quantity: i64, unit_price_cents: i64) -> Option<i64> {
    quantity.checked_mul(unit_price_cents)
}

/// Loads the order, lets it decide, saves what it decided. Customers and staff get past
/// `#[authorize]`; whose order it is, only the order knows ([`Order::cancel`]). Two cancellations
/// at once clash on the order's version (`Conflict`); `#[retry]` reloads it and the second finds
/// it cancelled.
#[command_handler(CancelOrder, timeout = "5s", emits = [OrderEvent])]
#[authorize(roles = ["customer", "staff"])]
#[retry(max_attempts = 3, delay = "20ms", on = [Conflict, Unavailable])]
pub struct CancelOrderHandler;

impl CommandHandler<CancelOrder> for CancelOrderHandler {
    async fn handle(&self, cmd: CancelOrder, cx: &mut CommandContext) -> Result<(), Error> {
        let by = cx
            .principal()
            .cloned()
            .ok_or_else(|| Error::unauthenticated("cancelling needs a principal"))?;
        let mut order = cx.load::<Order>(&cmd.order_id).await?;
        if order.is_new() {
            return Err(Error::not_found(format!("order {}", cmd.order_id)));
        }
        if let Some(event) = order.cancel(&by)? {
            order.record(event);
            cx.save(&mut order).await?;
        }
        Ok(())
    }
}

// ---- the read side --------------------------------------------------------------------------

/// Reads an order's summary (`GET /orders/{order_id}`): staff, the admin, or the customer who
/// placed it ([`OrderAccess`](super::auth::OrderAccess) decides).
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq, Serialize, Deserialize)]
#[query(output = OrderSummary, name = "orders.get")]
pub struct GetOrder {
    pub order_id: OrderId,
}

/// One row of the `order_summaries` projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    pub order_id: OrderId,
    pub customer: String,
    pub product_id: ProductId,
    pub quantity: i64,
    pub total_cents: i64,
    pub status: String,
}

#[query_handler(GetOrder)]
#[authorize(permissions = ["order:read"], resource = order_id, admin_override)]
#[timeout("2s")]
pub struct GetOrderHandler {
    db: Db,
}

impl QueryHandler<GetOrder> for GetOrderHandler {
    async fn handle(&self, q: GetOrder, _cx: &QueryContext) -> Result<OrderSummary, Error> {
        let row = on_db!(&self.db, |c| {
            sqlx::query_as::<_, (String, ProductId, i64, i64, String)>(
                "SELECT customer, product_id, quantity, total_cents, status
                 FROM order_summaries WHERE order_id = $1",
            )
            .bind(&q.order_id)
            .fetch_optional(c)
            .await
        })?;
        let (customer, product_id, quantity, total_cents, status) =
            row.ok_or_else(|| Error::not_found(format!("order {}", q.order_id)))?;
        Ok(OrderSummary {
            order_id: q.order_id,
            customer,
            product_id,
            quantity,
            total_cents,
            status,
        })
    }
}

/// Keeps `order_summaries` up to date. Events come from the outbox at least once, so each is
/// applied once: its id goes into `processed_events` in the same transaction as the change, and
/// an id already there means "seen it, skip".
#[event_handler(OrderEvent)]
pub struct OrderSummaries {
    db: Db,
}

impl EventHandler<OrderEvent> for OrderSummaries {
    async fn handle(&self, event: &OrderEvent, cx: &mut EventContext) -> Result<(), Error> {
        let event_id = cx.event_id().to_string();
        on_db!(&self.db, |pool| {
            let mut tx = pool.begin().await?;
            let first_time = sqlx::query(
                "INSERT INTO processed_events (handler, event_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
            )
            .bind("order_summaries")
            .bind(&event_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if first_time {
                match event {
                    OrderEvent::Placed {
                        order_id,
                        customer,
                        product_id,
                        quantity,
                        unit_price_cents,
                    } => {
                        // `PlaceOrder` refuses an order whose total overflows, so this is only
                        // for events written by something else: an error, not a panic.
                        let total = total_cents(*quantity, *unit_price_cents).ok_or_else(|| {
                            Error::internal(format!("order {order_id}: its total overflows"))
                        })?;
                        sqlx::query(
                            "INSERT INTO order_summaries
                               (order_id, customer, product_id, quantity, total_cents, status, placed_at_ms)
                             VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        )
                        .bind(order_id)
                        .bind(customer)
                        .bind(product_id)
                        .bind(quantity)
                        .bind(total)
                        .bind(OrderStatus::Placed.as_str())
                        .bind(db::now_ms())
                        .execute(&mut *tx)
                        .await?;
                    }
                    OrderEvent::Cancelled { order_id, .. } => {
                        sqlx::query("UPDATE order_summaries SET status = $2 WHERE order_id = $1")
                            .bind(order_id)
                            .bind(OrderStatus::Cancelled.as_str())
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }
}

/// A cancelled order's units go back in stock. The command carries an idempotency key derived
/// from the event's id, so a redelivered event does not release the units twice.
#[event_handler(OrderEvent, sends = [ReleaseStock])]
pub struct RestockOnCancel;

impl EventHandler<OrderEvent> for RestockOnCancel {
    async fn handle(&self, event: &OrderEvent, cx: &mut EventContext) -> Result<(), Error> {
        let OrderEvent::Cancelled {
            product_id,
            quantity,
            ..
        } = event
        else {
            return Ok(());
        };
        let release = ReleaseStock {
            product_id: *product_id,
            quantity: *quantity,
        };
        let key = format!("release-stock:{}", cx.event_id());
        cx.send(Envelope::new(release).idempotency_key(key)).await
    }
}
