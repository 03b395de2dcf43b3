use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser;

#[command_handler(RegisterUser, timeout = "15s", timeout = "30s")]
struct RegisterUserHandler;

impl CommandHandler<RegisterUser> for RegisterUserHandler {
    async fn handle(&self, _cmd: RegisterUser, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
