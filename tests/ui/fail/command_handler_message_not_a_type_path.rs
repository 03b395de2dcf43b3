use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser;

// Found by the macros' fuzz campaign: a bare `A + B` used to be written into the generated
// code, where it does not parse, and rustc's error buried this one.
#[command_handler(RegisterUser + Send)]
#[retry]
struct RegisterUserHandler;

fn main() {}
