use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser;

#[retry(max_attempts = 3)]
#[command_handler(RegisterUser)]
#[transactional]
struct RegisterUserHandler<R> {
    #[inject(default)]
    repository: R,
}

impl<R: Clone + Send + Sync + 'static> CommandHandler<RegisterUser> for RegisterUserHandler<R> {
    async fn handle(&self, _cmd: RegisterUser, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
