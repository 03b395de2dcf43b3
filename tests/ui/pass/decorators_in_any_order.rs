//! Decorators may sit above or below the handler attribute, in any order.
use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct Charge {
    amount: u64,
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = u64)]
struct Balance {
    account: u64,
}

#[retry(max_attempts = 3, on = [Conflict])]
#[transactional]
#[command_handler(Charge)]
#[authorize(permissions = ["billing:charge"])]
#[timeout("5s")]
struct ChargeHandler;

impl CommandHandler<Charge> for ChargeHandler {
    async fn handle(&self, cmd: Charge, _cx: &mut CommandContext) -> Result<u64, Error> {
        Ok(cmd.amount)
    }
}

#[cached_query(ttl = "30s", vary_by = [account])]
#[authorize(roles = ["teller"])]
#[query_handler(Balance, timeout = "1s")]
#[retry(max_attempts = 2)]
struct BalanceHandler;

impl QueryHandler<Balance> for BalanceHandler {
    async fn handle(&self, q: Balance, _cx: &QueryContext) -> Result<u64, Error> {
        Ok(q.account)
    }
}

#[tokio::main]
async fn main() {
    let pool = cqrs_core::sqlite_pool(":memory:").await.expect("in-memory SQLite");
    let bus = Bus::builder()
        .discover(false)
        .register::<ChargeHandler>()
        .register::<BalanceHandler>()
        .sqlite(pool)
        .build()
        .expect("every decorator registered, a database for #[transactional]");
    // Whatever order the attributes were written in, the layers run in DESIGN §5's.
    let description = bus.describe();
    for (message, expected) in [
        ("Charge", &["trace", "timeout(5s)", "authorize", "idempotency", "retry", "transaction", "handler"][..]),
        ("Balance", &["trace", "timeout(1s)", "authorize", "cache", "retry", "handler"][..]),
    ] {
        let layers = &description.message(message).expect("described").handlers[0].layers;
        let mut at = 0;
        for want in expected {
            let found = layers[at..]
                .iter()
                .position(|l| l.starts_with(want))
                .unwrap_or_else(|| panic!("{message}: no `{want}` after position {at} in {layers:?}"));
            at += found + 1;
        }
    }
}
