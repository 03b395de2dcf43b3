//! `#[exclusive]` above or below the handler attribute, on keys of any `Serialize` type, in
//! a shared lock space or the command's own.
use cqrs_core::prelude::*;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct AccountId {
    region: String,
    number: u64,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Withdraw {
    account: AccountId,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Deposit {
    account: AccountId,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct Rename {
    user: String,
}

#[exclusive(key = account, name = "account")]
#[command_handler(Withdraw)]
struct WithdrawHandler;

impl CommandHandler<Withdraw> for WithdrawHandler {
    async fn handle(&self, _cmd: Withdraw, cx: &mut CommandContext) -> Result<(), Error> {
        let _token: Option<u64> = cx.fencing_token();
        Ok(())
    }
}

#[command_handler(Deposit)]
#[retry(max_attempts = 3)]
#[exclusive(key = account, name = "account")]
struct DepositHandler;

impl CommandHandler<Deposit> for DepositHandler {
    async fn handle(&self, _cmd: Deposit, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

#[command_handler(Rename)]
#[exclusive(key = user)]
struct RenameHandler;

impl CommandHandler<Rename> for RenameHandler {
    async fn handle(&self, _cmd: Rename, _cx: &mut CommandContext) -> Result<u64, Error> {
        Ok(1)
    }
}

fn main() {
    // Building connects to nothing: Redis is reached on the first command.
    let redis = cqrs_core::redis::Client::open("redis://127.0.0.1:6379").expect("a Redis URL");
    Bus::builder()
        .discover(false)
        .register::<WithdrawHandler>()
        .register::<DepositHandler>()
        .register::<RenameHandler>()
        .redis(redis)
        .build()
        .expect("Redis leases for #[exclusive]");
}
