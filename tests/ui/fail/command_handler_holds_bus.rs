use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Login {
    email: String,
}

#[command_handler(Login)]
struct LoginHandler {
    bus: Bus,
}

impl CommandHandler<Login> for LoginHandler {
    async fn handle(&self, _cmd: Login, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
