use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser {
    email: String,
}

#[query_handler(RegisterUser)]
struct RegisterUserHandler;

fn main() {}
