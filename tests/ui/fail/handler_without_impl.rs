use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct RegisterUser {
    email: String,
}

#[command_handler(RegisterUser)]
struct RegisterUserHandler;

fn main() {}
