//! A query's pipeline: layers 1 to 10 around one query handler.
//!
//! As for commands, a lean path (trace, authorization by the principal alone, validation,
//! handler) runs inline in the [`DispatchFuture`] with no allocation when the handler has no
//! other decorator, the bus no middleware and the envelope no deadline; every other dispatch
//! takes the full path, boxed, composed once for every kind in
//! [`full_path`](super::full_path). Before it, a cached query is authorized, validated and
//! looked up without awaiting when nothing there needs to await ([`precheck`]): a refusal or
//! a cache hit then builds no future.

mod precheck;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::Span;

use self::precheck::Precheck;
use super::cache::{Answer, AnswerCodec, Answers, CacheLayer};
use super::erased::{self, Erased, HandleFuture, Message};
use super::full_path::{self, Checked, FullPipe, Prechecked};
use super::lean::Lean;
use super::plan::Plan;
use super::{DispatchFuture, Layers, trace};
use crate::context::QueryContext;
use crate::envelope::{Envelope, Metadata, Owned};
use crate::handler::QueryHandler;
use crate::message::{MessageKind, Query};
use crate::pipeline::report::DispatchStats;
use crate::pipeline::runtime::Runtime;
use crate::{Error, Status};

/// The type-erased entry point of a query's pipeline.
pub(crate) trait QueryPipe<Q: Query>: Send + Sync {
    /// `stats` is where a report is collected, `None` when nobody asked for one.
    fn call<'a>(
        &'a self,
        bus: &'a Runtime,
        env: Owned<'_, Envelope<Q>>,
        stats: Option<&'a mut DispatchStats>,
    ) -> DispatchFuture<'a, Result<Q::Output, Error>>;
}

/// The pipeline of one query handler.
pub(crate) struct QueryPipeline<Q: Query, H> {
    pub(crate) _message: PhantomData<fn(Q)>,
    pub(crate) handler: H,
    pub(crate) name: &'static str,
    /// Which layers are on, and whether they all run inline: decided at `build()`.
    pub(crate) plan: Plan,
    pub(crate) layers: Layers,
    pub(crate) cache: Option<CacheLayer>,
}

impl<Q: Query, H: QueryHandler<Q>> QueryPipe<Q> for QueryPipeline<Q, H> {
    fn call<'a>(
        &'a self,
        bus: &'a Runtime,
        env: Owned<'_, Envelope<Q>>,
        stats: Option<&'a mut DispatchStats>,
    ) -> DispatchFuture<'a, Result<Q::Output, Error>> {
        if !self.plan.lean_for(&env.get().metadata) {
            return self.not_lean(bus, env, stats);
        }
        DispatchFuture::from_or_box(self.lean(bus, env.take(), stats))
    }
}

impl<Q: Query, H: QueryHandler<Q>> QueryPipeline<Q, H> {
    /// A dispatch that is not lean: a cached query's [`precheck`] (a hit or a refusal ends
    /// there), then the full path. Out of line, so that its code does not slow the lean path's
    /// entry.
    #[inline(never)]
    fn not_lean<'a>(
        &'a self,
        bus: &'a Runtime,
        env: Owned<'_, Envelope<Q>>,
        mut stats: Option<&'a mut DispatchStats>,
    ) -> DispatchFuture<'a, Result<Q::Output, Error>> {
        // Read where it lies: a hit or a refusal never moves the envelope; its owner drops it.
        let Envelope { message, metadata } = env.get();
        let span = trace::lean_span(MessageKind::Query, Q::NAME, self.name, metadata);
        let mut own = DispatchStats::default();
        let precheck_stats = stats.as_deref_mut().unwrap_or(&mut own);
        let prechecked = {
            let _entered = span.as_ref().map(Span::enter);
            precheck::precheck(self, bus, message, metadata, precheck_stats)
        };
        let checked = match prechecked {
            Precheck::Done(result) => {
                // Refused, or a cache hit: no future to build, nothing to box.
                let result = result.and_then(unshare::<Q>);
                let stats = stats.as_deref().unwrap_or(&own);
                trace::finish_in(span.as_ref(), MessageKind::Query, Q::NAME, &result, stats);
                return DispatchFuture::from_or_box(std::future::ready(result));
            }
            Precheck::Checked(checked) => Some(checked),
            Precheck::Later => None,
        };
        let Envelope { message, metadata } = env.take();
        let full = self.full(bus, message, metadata, span, checked, stats);
        DispatchFuture::from_or_box(full)
    }

    /// The lean path: the inline layers of the plan (trace, authorize by the principal alone,
    /// validate, handler). As for commands (see `CommandPipeline::lean`), the envelope is moved
    /// once, into this future, and the context points at its metadata there.
    #[allow(clippy::manual_async_fn)] // deliberate: see `CommandPipeline::lean`
    #[inline]
    fn lean<'a>(
        &'a self,
        bus: &'a Runtime,
        env: Envelope<Q>,
        stats: Option<&'a mut DispatchStats>,
    ) -> impl Future<Output = Result<Q::Output, Error>> + Send + 'a {
        // Taken apart outside the future: see `CommandPipeline::lean`.
        let Envelope { message, metadata } = env;
        async move {
            let mut own = DispatchStats::default();
            let stats = stats.unwrap_or(&mut own);
            let cx = QueryContext::new(bus.ptr(), &metadata, self.name);
            let lean = Lean::start(MessageKind::Query, Q::NAME, self.name, &metadata);
            let result = match lean.check(self.layers.authorize.as_ref(), &message, &metadata) {
                Err(error) => Err(error),
                Ok(()) => {
                    let fut = pin!(self.handler.handle(message, &cx));
                    lean.handler(self.name, fut, stats).await
                }
            };
            lean.finish::<Q, _>(&result, stats);
            result
        }
    }

    /// The full path: the typed ends of [`full_path::query`], which holds the layers.
    #[allow(clippy::manual_async_fn)] // `async move`, not `async fn`: see `lean`
    fn full<'a>(
        &'a self,
        bus: &'a Runtime,
        message: Q,
        metadata: Metadata,
        span: Option<Span>,
        checked: Option<Checked>,
        stats: Option<&'a mut DispatchStats>,
    ) -> impl Future<Output = Result<Q::Output, Error>> + Send + 'a {
        let mut message = Some(message);
        async move {
            let mut own = DispatchStats::default();
            let stats = stats.unwrap_or(&mut own);
            let mut output: Option<Q::Output> = None;
            {
                let run = pin!(full_path::query(
                    self,
                    bus,
                    Message::Slot(&mut message),
                    &mut output,
                    &metadata,
                    Prechecked { span, checked },
                    stats
                ));
                run.await?;
            }
            output.ok_or_else(|| erased::missing(Q::NAME))
        }
    }
}

/// The handler's types, for the full path: all of it that a query handler compiles for itself.
impl<Q: Query, H: QueryHandler<Q>> FullPipe for QueryPipeline<Q, H> {
    type Context = QueryContext;

    fn message_name(&self) -> &'static str {
        Q::NAME
    }

    fn handler_name(&self) -> &'static str {
        self.name
    }

    fn layers(&self) -> &Layers {
        &self.layers
    }

    fn answers(&self) -> Option<(&CacheLayer, &dyn Answers)> {
        Some((self.cache.as_ref()?, self))
    }

    fn handle<'a>(
        &'a self,
        message: Message<'a>,
        last: bool,
        output: &'a mut Erased,
        cx: &'a mut QueryContext,
    ) -> Result<HandleFuture<'a>, Error> {
        let message = erased::message_for::<Q>(message, last);
        let (Some(message), Some(output)) = (message, output.downcast_mut::<Option<Q::Output>>())
        else {
            return Err(erased::missing(Q::NAME));
        };
        // A combinator, not an `async` block: see `CommandPipeline::handle`.
        let handled = self.handler.handle(message, &*cx);
        let handled = handled.map(|result| result.map(|out| *output = Some(out)));
        Ok(HandleFuture::from_or_box(handled))
    }

    fn peek<'s>(&self, message: &'s Erased) -> Option<&'s Erased> {
        erased::peek::<Q>(message)
    }

    fn validate(&self, message: &Erased) -> Result<(), Error> {
        erased::message::<Q>(message)?.validate_message()
    }

    fn clone_message(&self, message: &Erased) -> Option<Box<Erased>> {
        Some(erased::clone_message::<Q>(message))
    }
}

/// How a cached query's answers go in and out of its output slot.
impl<Q: Query, H: QueryHandler<Q>> Answers for QueryPipeline<Q, H> {
    fn codec(&self) -> &dyn AnswerCodec {
        self
    }

    fn share_output(&self, output: &mut Erased) -> Result<Answer, Error> {
        match output
            .downcast_mut::<Option<Q::Output>>()
            .and_then(Option::take)
        {
            Some(output) => Ok(Arc::new(output)),
            None => Err(erased::missing(Q::NAME)),
        }
    }

    fn restore_output(&self, answer: Answer, output: &mut Erased) -> Result<(), Error> {
        let Some(slot) = output.downcast_mut::<Option<Q::Output>>() else {
            return Err(erased::missing(Q::NAME));
        };
        *slot = Some(unshare::<Q>(answer)?);
        Ok(())
    }
}

/// The output behind a shared answer: moved out when nothing else holds it, cloned if the cache
/// (or another caller) does.
fn unshare<Q: Query>(answer: Answer) -> Result<Q::Output, Error> {
    let answer = answer
        .downcast::<Q::Output>()
        .map_err(|_| erased::missing(Q::NAME))?;
    Ok(Arc::try_unwrap(answer).unwrap_or_else(|shared| (*shared).clone()))
}

/// Serializing answers, for cache backends that store JSON.
impl<Q: Query, H: QueryHandler<Q>> AnswerCodec for QueryPipeline<Q, H> {
    fn encode(&self, answer: &Erased) -> Result<Vec<u8>, Error> {
        let answer = answer
            .downcast_ref::<Q::Output>()
            .ok_or_else(|| erased::missing(Q::NAME))?;
        serde_json::to_vec(answer).map_err(|e| Error::from_std(Status::Internal, e))
    }

    fn decode(&self, json: &[u8]) -> Result<Answer, Error> {
        let answer: Q::Output =
            serde_json::from_slice(json).map_err(|e| Error::from_std(Status::Internal, e))?;
        Ok(Arc::new(answer))
    }
}
