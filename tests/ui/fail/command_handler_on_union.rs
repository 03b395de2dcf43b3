use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser;

#[command_handler(RegisterUser)]
union RegisterUserHandler {
    a: u32,
    b: f32,
}

fn main() {}
