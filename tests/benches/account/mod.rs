//! The event-sourced domain the event-sourcing bench runs on cqrs (beside the same domain on
//! cqrs-es in `benches/event_sourced.rs`), and whose deposit `benches/profile.rs` counts under
//! callgrind: a deposit into an account, loaded, decided, saved.

use cqrs_core::Aggregate;
use cqrs_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Debug, Clone, Serialize, Deserialize)]
#[event(name = "bench.deposited")]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Account {
    pub balance: u64,
}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type Event = Deposited;
    fn apply(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = u64)]
pub struct Deposit {
    pub id: String,
    pub amount: u64,
}

#[command_handler(Deposit)]
pub struct DepositHandler;

impl CommandHandler<Deposit> for DepositHandler {
    async fn handle(&self, cmd: Deposit, cx: &mut CommandContext) -> Result<u64, Error> {
        let mut account = cx.load::<Account>(&cmd.id).await?;
        if cmd.amount == 0 {
            return Err(Error::new(
                cqrs_core::Status::Validation,
                "a deposit is more than zero",
            ));
        }
        account.record(Deposited { amount: cmd.amount });
        cx.save(&mut account).await?;
        Ok(account.balance)
    }
}
