//! The bare command the dispatch, scaling and profile benches send: one handler with no
//! decorator, whose body is an inherent `apply` so that a bench can call it directly (the
//! baseline) and through the bus.
//!
//! `CommandContext` has no public constructor, so a bench cannot call
//! `CommandHandler::handle` itself; `handle` is `apply` and nothing else, and awaiting `apply`
//! is what calling the handler without a bus costs.

use cqrs_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = u64)]
pub struct Add {
    pub a: u64,
    pub b: u64,
}

#[command_handler(Add)]
pub struct AddHandler;

impl AddHandler {
    /// The handler's body; `handle` is this and nothing else.
    #[inline]
    pub async fn apply(&self, cmd: Add) -> Result<u64, Error> {
        Ok(cmd.a.wrapping_mul(31).wrapping_add(cmd.b))
    }
}

impl CommandHandler<Add> for AddHandler {
    async fn handle(&self, cmd: Add, _cx: &mut CommandContext) -> Result<u64, Error> {
        self.apply(cmd).await
    }
}
