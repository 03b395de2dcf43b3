use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser;

#[command_handler]
#[retry(max_attempts = 3)]
struct RegisterUserHandler;

impl CommandHandler<RegisterUser> for RegisterUserHandler {
    async fn handle(&self, _cmd: RegisterUser, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {
    let _ = Bus::builder().register::<RegisterUserHandler>();
}
