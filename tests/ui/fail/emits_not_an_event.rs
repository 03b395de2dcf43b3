use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SendWelcomeMail;

#[command_handler(RegisterUser, emits = [SendWelcomeMail])]
struct RegisterUserHandler;

impl CommandHandler<RegisterUser> for RegisterUserHandler {
    async fn handle(&self, _cmd: RegisterUser, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
