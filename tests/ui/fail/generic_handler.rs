use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser;

#[command_handler(RegisterUser)]
struct RegisterUserHandler<R> {
    repository: R,
}

impl<R: Clone + Send + Sync + 'static> CommandHandler<RegisterUser> for RegisterUserHandler<R> {
    async fn handle(&self, _cmd: RegisterUser, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
