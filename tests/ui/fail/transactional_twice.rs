use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser {
    email: String,
}

#[transactional]
#[command_handler(RegisterUser)]
#[transactional(isolation = "serializable")]
struct RegisterUserHandler;

impl CommandHandler<RegisterUser> for RegisterUserHandler {
    async fn handle(&self, _cmd: RegisterUser, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
