use cqrs_core::prelude::*;

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Option<String>)]
struct GetUser {
    id: u64,
}

#[query_handler(GetUser)]
struct GetUserHandler;

fn main() {}
