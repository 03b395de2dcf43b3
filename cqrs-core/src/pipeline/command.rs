//! A command's pipeline: layers 1 to 10 around one command handler, then publishing.
//!
//! Two paths, chosen per dispatch in [`CommandPipe::call`] from the handler's
//! [`Plan`](super::plan::Plan):
//!
//! - **lean**: nothing but trace, authorization by the principal alone, validation and the
//!   handler (no middleware, no timeout or deadline, no resource policy, no idempotency key,
//!   no retry, no transaction), through [`Lean`](super::lean::Lean). Generic over
//!   the command and the handler, and small: its future lives inline in the
//!   [`DispatchFuture`], so the dispatch allocates nothing.
//! - **full**: every layer the handler and the envelope ask for, composed once for every kind
//!   in [`full_path`](super::full_path) (the handler's types reach it through
//!   [`FullPipe`]; see [`erased`](super::erased)), so that a crate with many handlers does not
//!   compile it again for each. Its future is boxed (one allocation); layers that do I/O box
//!   their own part only when they run.
//!
//! Both end in [`publish::after`], so what happens after the handler is the same.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::pin;

use futures_util::FutureExt;

use super::erased::{self, Erased, HandleFuture, Message};
use super::full_path::{self, FullPipe};
use super::idempotency::{self, Replies};
use super::lean::Lean;
use super::plan::Plan;
use super::{DispatchFuture, Layers, publish};
use crate::context::CommandContext;
use crate::envelope::{Envelope, Owned};
use crate::handler::CommandHandler;
use crate::message::{Command, MessageKind};
use crate::pipeline::report::DispatchStats;
use crate::pipeline::runtime::Runtime;
use crate::{Error, Status};

/// The type-erased entry point of a command's pipeline.
pub(crate) trait CommandPipe<C: Command>: Send + Sync {
    /// `stats` is where a report is collected, `None` when nobody asked for one.
    fn call<'a>(
        &'a self,
        bus: &'a Runtime,
        env: Owned<'_, Envelope<C>>,
        stats: Option<&'a mut DispatchStats>,
    ) -> DispatchFuture<'a, Result<C::Output, Error>>;
}

/// The pipeline of one command handler.
pub(crate) struct CommandPipeline<C, H> {
    pub(crate) handler: H,
    pub(crate) name: &'static str,
    /// Which layers are on, and whether they all run inline: decided at `build()`.
    pub(crate) plan: Plan,
    pub(crate) layers: Layers,
    pub(crate) _message: PhantomData<fn(C)>,
}

impl<C: Command, H: CommandHandler<C>> CommandPipe<C> for CommandPipeline<C, H> {
    #[inline]
    fn call<'a>(
        &'a self,
        bus: &'a Runtime,
        env: Owned<'_, Envelope<C>>,
        stats: Option<&'a mut DispatchStats>,
    ) -> DispatchFuture<'a, Result<C::Output, Error>> {
        if !self.plan.lean_for(&env.get().metadata) {
            return self.full(bus, env, stats);
        }
        DispatchFuture::from_or_box(self.lean(bus, env.take(), stats))
    }
}

impl<C: Command, H: CommandHandler<C>> CommandPipeline<C, H> {
    /// The lean path: the inline layers of the plan (trace, authorize by the principal alone,
    /// validate, handler), then [`publish::after`] when there is anything to do after.
    ///
    /// The envelope is moved once, into this future; the context points at its metadata
    /// there rather than holding a copy. Every future is pinned where it is built (`pin!`)
    /// and awaited through a wrapper that borrows it: `fut.await` would move it into a second
    /// place in this future's state (a `memcpy` of its size, and its size again in the state).
    #[allow(clippy::manual_async_fn)] // deliberate: see the comment in the body
    #[inline]
    fn lean<'a>(
        &'a self,
        bus: &'a Runtime,
        env: Envelope<C>,
        stats: Option<&'a mut DispatchStats>,
    ) -> impl Future<Output = Result<C::Output, Error>> + Send + 'a {
        // An `async move` block rather than an `async fn`: an `async fn` moves each argument
        // into a local of its body, and both copies take space in its future.
        // Taken apart here: inside, `metadata` would be moved out of the envelope into a local
        // of its own (a copy); as a capture of its own it stays where the envelope put it.
        let Envelope { message, metadata } = env;
        async move {
            let mut own = DispatchStats::default();
            let stats = stats.unwrap_or(&mut own);
            let mut cx = CommandContext::new(bus.ptr(), &metadata, self.name);
            let lean = Lean::start(MessageKind::Command, C::NAME, self.name, &metadata);
            let handled = match lean.check(self.layers.authorize.as_ref(), &message, &metadata) {
                Err(error) => Err(error),
                Ok(()) => {
                    let fut = pin!(self.handler.handle(message, &mut cx));
                    lean.handler(self.name, fut, stats).await
                }
            };
            let result = match handled {
                Err(error) => Err(error),
                // Nothing to record, publish or invalidate: `after` would only return `output`.
                Ok(output) if cx.events.is_empty() && self.layers.invalidates.is_empty() => {
                    Ok(output)
                }
                Ok(output) => {
                    let events = cx.events.take();
                    let after = pin!(publish::after(
                        &self.layers,
                        bus,
                        events,
                        &[],
                        &metadata,
                        stats
                    ));
                    lean.within(after).await;
                    Ok(output)
                }
            };
            lean.finish::<C, _>(&result, stats);
            result
        }
    }

    /// The full path: the typed ends of [`full_path::command`], which holds the layers. Out of
    /// line: it is the rarer path, and its code in `call` would make the lean path's entry
    /// slower.
    #[inline(never)]
    fn full<'a>(
        &'a self,
        bus: &'a Runtime,
        env: Owned<'_, Envelope<C>>,
        stats: Option<&'a mut DispatchStats>,
    ) -> DispatchFuture<'a, Result<C::Output, Error>> {
        let Envelope { message, metadata } = env.take();
        let mut message = Some(message);
        DispatchFuture::from_or_box(async move {
            let mut own = DispatchStats::default();
            let mut output: Option<C::Output> = None;
            let stats = stats.unwrap_or(&mut own);
            {
                let run = pin!(full_path::command(
                    self,
                    bus,
                    Message::Slot(&mut message),
                    &mut output,
                    &metadata,
                    stats
                ));
                run.await?;
            }
            output.ok_or_else(|| erased::missing(C::NAME))
        })
    }
}

/// The handler's types, for the full path. Each method is a few lines: this is all the code
/// of the full path that a handler compiles for itself.
impl<C: Command, H: CommandHandler<C>> FullPipe for CommandPipeline<C, H> {
    type Context = CommandContext;

    fn message_name(&self) -> &'static str {
        C::NAME
    }

    fn handler_name(&self) -> &'static str {
        self.name
    }

    fn layers(&self) -> &Layers {
        &self.layers
    }

    fn handle<'a>(
        &'a self,
        message: Message<'a>,
        last: bool,
        output: &'a mut Erased,
        cx: &'a mut CommandContext,
    ) -> Result<HandleFuture<'a>, Error> {
        let message = erased::message_for::<C>(message, last);
        let (Some(message), Some(output)) = (message, output.downcast_mut::<Option<C::Output>>())
        else {
            return Err(erased::missing(C::NAME));
        };
        // A combinator rather than an `async` block, which would keep the message twice (its
        // own capture and inside the handler's future).
        let handled = self.handler.handle(message, cx);
        let handled = handled.map(|result| result.map(|out| *output = Some(out)));
        Ok(HandleFuture::from_or_box(handled))
    }

    fn peek<'s>(&self, message: &'s Erased) -> Option<&'s Erased> {
        erased::peek::<C>(message)
    }

    fn validate(&self, message: &Erased) -> Result<(), Error> {
        erased::message::<C>(message)?.validate_message()
    }

    fn clone_message(&self, message: &Erased) -> Option<Box<Erased>> {
        Some(erased::clone_message::<C>(message))
    }

    fn to_json(&self) -> Option<fn(&Erased) -> Option<serde_json::Value>> {
        Some(super::command_json::<C>)
    }

    fn replies(&self) -> Option<&dyn Replies> {
        Some(self)
    }
}

/// A command's output as the idempotency layer keeps it: JSON.
impl<C: Command, H: CommandHandler<C>> Replies for CommandPipeline<C, H> {
    fn fingerprint(&self, message: &Erased) -> Result<String, Error> {
        idempotency::fingerprint(erased::message::<C>(message)?)
    }

    fn encode_output(&self, output: &Erased) -> Result<Vec<u8>, Error> {
        let Some(Some(output)) = output.downcast_ref::<Option<C::Output>>() else {
            return Err(erased::missing(C::NAME));
        };
        serde_json::to_vec(output)
            .map_err(|e| Error::from_std(Status::Internal, e).context("serializing the reply"))
    }

    fn decode_output(&self, reply: &[u8], output: &mut Erased) -> Result<(), Error> {
        let Some(slot) = output.downcast_mut::<Option<C::Output>>() else {
            return Err(erased::missing(C::NAME));
        };
        *slot =
            Some(serde_json::from_slice(reply).map_err(|e| Error::from_std(Status::Internal, e))?);
        Ok(())
    }
}
