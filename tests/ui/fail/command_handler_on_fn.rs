use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser;

#[command_handler(RegisterUser)]
async fn register_user(_cmd: RegisterUser) -> Result<(), Error> {
    Ok(())
}

fn main() {}
