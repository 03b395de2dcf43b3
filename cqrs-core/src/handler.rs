//! The handler traits: what a command, query or event handler implements. How a handler is
//! declared and built (`Handler`) is in `registry`.

use std::future::Future;

use crate::Error;
use crate::context::{CommandContext, EventContext, QueryContext};
use crate::message::{Command, Event, Query};

/// Handles one command type. The struct carries `#[command_handler(C)]`, which registers it.
///
/// ```
/// use cqrs_core::prelude::*;
///
/// #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
/// #[command(output = u32)]
/// struct Add { a: u32, b: u32 }
///
/// #[command_handler(Add)]
/// struct AddHandler;
///
/// impl CommandHandler<Add> for AddHandler {
///     async fn handle(&self, cmd: Add, _cx: &mut CommandContext) -> Result<u32, Error> {
///         Ok(cmd.a + cmd.b)
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = Bus::builder().discover(false).register::<AddHandler>().build().unwrap();
/// assert_eq!(bus.send(Add { a: 2, b: 3 }).await.unwrap(), 5);
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not handle `{C}`",
    label = "`{Self}` needs `impl CommandHandler<{C}>`",
    note = "add `impl CommandHandler<{C}> for {Self} {{ async fn handle(&self, cmd: {C}, cx: &mut CommandContext) -> Result<<{C} as Command>::Output, Error> {{ .. }} }}`"
)]
pub trait CommandHandler<C: Command>: Send + Sync + 'static {
    /// Handles the command. Events emitted with [`CommandContext::emit`] are delivered after
    /// this returns `Ok` (and after the transaction commits, for transactional handlers).
    fn handle(
        &self,
        command: C,
        cx: &mut CommandContext,
    ) -> impl Future<Output = Result<C::Output, Error>> + Send;
}

/// Handles one query type. The struct carries `#[query_handler(Q)]`, which registers it.
///
/// A query handler reads; its context has no way to send commands or emit events.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not handle `{Q}`",
    label = "`{Self}` needs `impl QueryHandler<{Q}>`",
    note = "add `impl QueryHandler<{Q}> for {Self} {{ async fn handle(&self, query: {Q}, cx: &QueryContext) -> Result<<{Q} as Query>::Output, Error> {{ .. }} }}`"
)]
pub trait QueryHandler<Q: Query>: Send + Sync + 'static {
    /// Answers the query.
    fn handle(
        &self,
        query: Q,
        cx: &QueryContext,
    ) -> impl Future<Output = Result<Q::Output, Error>> + Send;
}

/// Reacts to one event type. The struct carries `#[event_handler(E)]`; an event may have any
/// number of handlers.
///
/// A failing or panicking event handler does not stop the others and does not change the result
/// of the command that emitted the event; the failure is logged and reported to the bus's
/// failure sink ([`BusBuilder::on_handler_failure`](crate::BusBuilder::on_handler_failure)).
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not handle `{E}`",
    label = "`{Self}` needs `impl EventHandler<{E}>`",
    note = "add `impl EventHandler<{E}> for {Self} {{ async fn handle(&self, event: &{E}, cx: &mut EventContext) -> Result<(), Error> {{ .. }} }}`"
)]
pub trait EventHandler<E: Event>: Send + Sync + 'static {
    /// Reacts to the event. [`EventContext::event_id`] identifies the event across redeliveries.
    fn handle(
        &self,
        event: &E,
        cx: &mut EventContext,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}
