use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser;

struct Mailer;

#[command_handler(RegisterUser)]
struct RegisterUserHandler {
    mailer: Mailer,
}

impl CommandHandler<RegisterUser> for RegisterUserHandler {
    async fn handle(&self, _cmd: RegisterUser, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
