//! The least a type-erased dispatcher can do without allocating, for the dispatch and profile
//! benches: what any `bus.send::<C>` pays that cannot name its handler's type at the call.
//!
//! One typed function per command type, found by one `TypeId` compare (a `downcast_ref`), whose
//! future is returned in a [`StackFuture`]: the handler's future inline, polled and dropped
//! through function pointers, as the bus's own pipelines return theirs. No metadata, no context,
//! no tracing, no statistics, no layer check: nothing of what the bus does on top of erasing the
//! handler's type.

use std::any::Any;
use std::future::Future;

use cqrs_core::prelude::*;
use stackfuture::StackFuture;

/// Bytes for the handler's future inline (the bench's handlers need a few dozen).
const INLINE: usize = 256;

type StackHandler<C> = Box<
    dyn Fn(C) -> StackFuture<'static, Result<<C as Command>::Output, Error>, INLINE> + Send + Sync,
>;

/// One command type's handler behind `dyn Any`: see the module's docs.
pub struct StackFloor {
    handler: Box<dyn Any + Send + Sync>,
}

impl StackFloor {
    pub fn new<C, F, Fut>(handle: F) -> Self
    where
        C: Command,
        F: Fn(C) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Output, Error>> + Send + 'static,
    {
        let handler: StackHandler<C> = Box::new(move |message| StackFuture::from(handle(message)));
        StackFloor {
            handler: Box::new(handler),
        }
    }

    /// An `async move` block, as `Bus::send` returns one (an `async fn` would copy its argument
    /// once more).
    #[allow(clippy::manual_async_fn)]
    #[inline]
    pub fn send<C: Command>(
        &self,
        message: C,
    ) -> impl Future<Output = Result<C::Output, Error>> + '_ {
        async move {
            let Some(handler) = self.handler.downcast_ref::<StackHandler<C>>() else {
                return Err(Error::internal("no handler"));
            };
            // Pinned where it is returned, as the bus pins its own: `.await` on the value would
            // move it into this future's state first.
            let dispatch = std::pin::pin!(handler(message));
            dispatch.await
        }
    }
}
