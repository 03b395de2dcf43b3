use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DeleteUser;

#[command_handler(RegisterUser, DeleteUser)]
struct UserHandler;

impl CommandHandler<RegisterUser> for UserHandler {
    async fn handle(&self, _cmd: RegisterUser, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
