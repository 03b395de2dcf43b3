use cqrs_core::prelude::*;

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct UserRegistered {
    id: u64,
}

#[query_handler(UserRegistered)]
struct UserRegisteredHandler;

fn main() {}
