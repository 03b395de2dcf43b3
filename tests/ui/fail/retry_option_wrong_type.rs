use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct RegisterUser {
    email: String,
}

#[command_handler(RegisterUser)]
#[retry(max_attempts = "3")]
struct RegisterUserHandler;

impl CommandHandler<RegisterUser> for RegisterUserHandler {
    async fn handle(&self, _cmd: RegisterUser, _cx: &mut CommandContext) -> Result<u64, Error> {
        Ok(1)
    }
}

fn main() {}
