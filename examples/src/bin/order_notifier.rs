//! A second service that reacts to the shop's orders without sharing a line of its code: it
//! declares the event it reads by the shop's stable name (`orders.event`), with only the
//! fields it needs, and receives it from NATS JetStream in a consumer group of its own. Run
//! next to `shop --nats ..`:
//!
//! ```sh
//! cargo run -p cqrs-examples --bin order_notifier -- --nats nats://127.0.0.1:4222
//! ```
//!
//! It prints one line per order placed or cancelled (a real one would send a mail). Its
//! handler is `#[transactional]` on its own SQLite file (`--database`, default
//! `./notifier.db`): the inbox there makes each event's effect happen once, even when the
//! broker delivers it again.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::{Nats, sqlite_pool};
use serde::{Deserialize, Serialize};

/// The shop's order event, as this service reads it: unknown fields are ignored.
#[derive(Event, Debug, Clone, Serialize, Deserialize)]
#[event(name = "orders.event")]
enum OrderEvent {
    Placed {
        order_id: String,
        customer: String,
        quantity: i64,
    },
    Cancelled {
        order_id: String,
    },
}

#[event_handler(OrderEvent, group = "order_mails")]
#[transactional]
struct Notify;

impl EventHandler<OrderEvent> for Notify {
    async fn handle(&self, event: &OrderEvent, _cx: &mut EventContext) -> Result<(), Error> {
        let line = match event {
            OrderEvent::Placed {
                order_id,
                customer,
                quantity,
            } => format!("notify: order {order_id} placed by {customer} ({quantity} units)"),
            OrderEvent::Cancelled { order_id } => format!("notify: order {order_id} cancelled"),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").and_then(|()| out.flush())?;
        Ok(())
    }
}

const USAGE: &str =
    "usage: order_notifier [--nats <url>] [--nats-stream <name>] [--database <sqlite file>]";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("order_notifier: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut nats_url = "nats://127.0.0.1:4222".to_owned();
    let mut stream = None;
    let mut database = "notifier.db".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--nats" => nats_url = value()?,
            "--nats-stream" => stream = Some(value()?),
            "--database" => database = value()?,
            _ => return Err(format!("unexpected argument `{arg}`\n{USAGE}").into()),
        }
    }
    let mut nats = Nats::connect(&nats_url).await?.service("notifier");
    if let Some(stream) = stream {
        nats = nats.subject_prefix(stream.to_lowercase()).stream(stream);
    }
    let pool = sqlite_pool(&database).await?;
    let bus = Bus::builder()
        .discover(false)
        .register::<Notify>()
        .sqlite(pool.clone())
        .nats(nats)
        .build()?;
    bus.migrate().await?;
    bus.start().await?;
    println!("order_notifier ready");
    tokio::signal::ctrl_c().await?;
    bus.shutdown(Duration::from_secs(5)).await;
    pool.close().await;
    Ok(())
}
