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

fn main() {
    let _ = Bus::builder()
        .discover(false)
        .register::<ChargeHandler>()
        .register::<BalanceHandler>();
}
