//! A query's pipeline: layers 1 to 10 around one query handler.
//!
//! As for commands, a lean path (trace, validation, handler) runs inline in the
//! [`DispatchFuture`] with no allocation when the handler has no decorator, the bus no
//! middleware and the envelope no deadline; every other dispatch takes the full path, boxed.

use std::future::Future;

use futures_util::future::BoxFuture;
use tracing::Span;

use super::cache::CacheLayer;
use super::{DispatchFuture, Layers, guard_panic, retry, timeout, trace, with_middleware};
use crate::Error;
use crate::bus::BusInner;
use crate::bus::report::DispatchStats;
use crate::context::QueryContext;
use crate::envelope::{Envelope, Metadata};
use crate::handler::QueryHandler;
use crate::message::{MessageKind, Query};

/// The type-erased entry point of a query's pipeline.
pub(crate) trait QueryPipe<Q: Query>: Send + Sync {
    fn call<'a>(
        &'a self,
        bus: &'a BusInner,
        env: Envelope<Q>,
        stats: &'a mut DispatchStats,
    ) -> DispatchFuture<'a, Result<Q::Output, Error>>;

    fn invalidate(&self) -> BoxFuture<'_, Result<(), Error>>;
}

/// The pipeline of one query handler.
pub(crate) struct QueryPipeline<Q: Query, H> {
    pub(crate) handler: H,
    pub(crate) name: &'static str,
    pub(crate) layers: Layers,
    pub(crate) cache: Option<CacheLayer<Q>>,
}

impl<Q: Query, H: QueryHandler<Q>> QueryPipe<Q> for QueryPipeline<Q, H> {
    fn call<'a>(
        &'a self,
        bus: &'a BusInner,
        env: Envelope<Q>,
        stats: &'a mut DispatchStats,
    ) -> DispatchFuture<'a, Result<Q::Output, Error>> {
        if !self.is_lean(bus, &env.metadata) {
            return DispatchFuture::from_or_box(self.run(bus, env, stats));
        }
        // Built outside the future, as for commands (see `CommandPipe::call`).
        let Envelope { message, metadata } = env;
        let span = trace::span(MessageKind::Query, Q::NAME, self.name, &metadata);
        let cx = QueryContext::new(bus, metadata, self.name);
        DispatchFuture::from_or_box(self.lean(message, cx, span, stats))
    }

    fn invalidate(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            match &self.cache {
                Some(cache) => cache.invalidate().await,
                None => Ok(()),
            }
        })
    }
}

impl<Q: Query, H: QueryHandler<Q>> QueryPipeline<Q, H> {
    /// Whether this dispatch needs no layer beyond trace and validation.
    #[inline]
    fn is_lean(&self, bus: &BusInner, metadata: &Metadata) -> bool {
        self.cache.is_none()
            && self.layers.timeout.is_none()
            && self.layers.authorize.is_none()
            && self.layers.retry.is_none()
            && metadata.deadline().is_none()
            && bus.middleware(MessageKind::Query).is_empty()
    }

    /// The lean path: trace, validate, handler.
    #[allow(clippy::manual_async_fn)] // deliberate: see the comment in the body
    fn lean<'a>(
        &'a self,
        message: Q,
        cx: QueryContext,
        span: Span,
        stats: &'a mut DispatchStats,
    ) -> impl Future<Output = Result<Q::Output, Error>> + Send + 'a {
        // `async move`, not `async fn`: see `CommandPipeline::lean`.
        async move {
            stats.attempts = 1;
            let result = match message.validate_message() {
                Err(error) => Err(error),
                Ok(()) => {
                    let handle = trace::within(
                        &span,
                        guard_panic(self.name, self.handler.handle(message, &cx)),
                    );
                    handle.await
                }
            };
            trace::finish(&span, MessageKind::Query, Q::NAME, &result, stats);
            result
        }
    }

    /// The full path. Layers 1 and 2.
    async fn run(
        &self,
        bus: &BusInner,
        env: Envelope<Q>,
        stats: &mut DispatchStats,
    ) -> Result<Q::Output, Error> {
        let Envelope { message, metadata } = env;
        let span = trace::span(MessageKind::Query, Q::NAME, self.name, &metadata);
        let body = async {
            if bus.middleware(MessageKind::Query).is_empty() {
                let cx = QueryContext::new(bus, metadata, self.name);
                self.guarded(bus, message, &cx, stats).await
            } else {
                // Boxed, as for commands: opt-in, and larger.
                Box::pin(async {
                    let cx = QueryContext::new(bus, metadata.clone(), self.name);
                    let inner = self.guarded(bus, message.clone(), &cx, stats);
                    with_middleware(
                        bus,
                        (MessageKind::Query, Q::NAME),
                        self.name,
                        &message,
                        &metadata,
                        None,
                        inner,
                    )
                    .await
                })
                .await
            }
        };
        let body = trace::within(&span, body);
        let result = body.await;
        trace::finish(&span, MessageKind::Query, Q::NAME, &result, stats);
        result
    }

    /// Layers 3 to 7.
    async fn guarded(
        &self,
        bus: &BusInner,
        message: Q,
        cx: &QueryContext,
        stats: &mut DispatchStats,
    ) -> Result<Q::Output, Error> {
        let deadline = timeout::deadline(self.layers.timeout, &cx.metadata);
        timeout::run(deadline, Q::NAME, async {
            if let Some(authorize) = &self.layers.authorize {
                authorize
                    .check(bus.resource_policy(), Q::NAME, &message, &cx.metadata)
                    .await?;
            }
            message.validate_message()?;
            match &self.cache {
                None => self.attempts(message, cx, &mut stats.attempts).await,
                Some(cache) => {
                    stats.cached = true;
                    let DispatchStats {
                        attempts,
                        cache_hit,
                        ..
                    } = stats;
                    cache
                        .run(&message, cache_hit, || {
                            self.attempts(message.clone(), cx, attempts)
                        })
                        .await
                }
            }
        })
        .await
    }

    /// Layers 8 and 10.
    async fn attempts(
        &self,
        message: Q,
        cx: &QueryContext,
        attempts: &mut u32,
    ) -> Result<Q::Output, Error> {
        let Some(retry) = &self.layers.retry else {
            *attempts = 1;
            return guard_panic(self.name, self.handler.handle(message, cx)).await;
        };
        let mut message = Some(message);
        loop {
            *attempts += 1;
            let last = *attempts >= retry.max_attempts();
            let this = if last {
                message.take()
            } else {
                message.clone()
            };
            let Some(this) = this else {
                return Err(Error::internal("retry ran past its last attempt"));
            };
            match guard_panic(self.name, self.handler.handle(this, cx)).await {
                Ok(output) => return Ok(output),
                Err(error) => match retry.next_delay(*attempts, &error) {
                    Some(delay) => retry::pause(delay).await,
                    None => return Err(error),
                },
            }
        }
    }
}
