use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Withdraw {
    account: u64,
    amount: u64,
}

#[command_handler(Withdraw)]
#[exclusive(key = acount, name = "account")]
struct WithdrawHandler;

impl CommandHandler<Withdraw> for WithdrawHandler {
    async fn handle(&self, _cmd: Withdraw, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
