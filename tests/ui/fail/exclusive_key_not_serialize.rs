use cqrs_core::prelude::*;

#[derive(Debug, Clone, Default)]
struct Connection;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Withdraw {
    account: u64,
    #[serde(skip)]
    via: Connection,
}

#[command_handler(Withdraw)]
#[exclusive(key = via)]
struct WithdrawHandler;

impl CommandHandler<Withdraw> for WithdrawHandler {
    async fn handle(&self, _cmd: Withdraw, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
