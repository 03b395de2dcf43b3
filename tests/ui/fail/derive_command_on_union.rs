use cqrs_core::prelude::*;

#[derive(Command)]
union RegisterUser {
    id: u64,
    code: u32,
}

fn main() {}
