use cqrs_core::prelude::*;

#[retry(max_attempts = 3)]
struct RegisterUserHandler;

fn main() {}
