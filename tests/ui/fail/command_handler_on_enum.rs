use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser;

#[command_handler(RegisterUser)]
enum RegisterUserHandler {
    Fast,
    Slow,
}

fn main() {}
