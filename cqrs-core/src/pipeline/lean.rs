//! The lean path: the layers of [`PIPELINE`](super::plan::PIPELINE) that run inline, in its
//! order, for a dispatch whose [`Plan`](super::plan::Plan) has nothing that awaits.
//!
//! | # | layer | here |
//! |---|---|---|
//! | 1 | trace | [`Lean::start`], [`Lean::finish`], [`Lean::within`] |
//! | 4 | authorize (by the principal alone) | [`Lean::check`] |
//! | 5 | validate | [`Lean::check`] |
//! | 10 | handler, its panics caught | [`Lean::handler`] |
//!
//! The command, query and event pipelines call these in this order around their handler's
//! future; everything here is generic and inlined, so a lean dispatch is one future, stored in
//! the [`DispatchFuture`](super::DispatchFuture) with no allocation.

use std::future::Future;
use std::pin::Pin;

use tracing::Span;

use super::CatchPanic;
use super::authorize::AuthorizeLayer;
use super::report::DispatchStats;
use super::trace::{self, InSpan};
use crate::Error;
use crate::envelope::Metadata;
use crate::message::{Message, MessageKind};

/// One lean dispatch: its span when something is interested in it.
///
/// Nothing else: this is part of every lean dispatch's future, which must fit inline in
/// [`INLINE_FUTURE`](super::INLINE_FUTURE) bytes, so names are passed where they are used
/// (they are constants at every call site) rather than kept.
pub(crate) struct Lean {
    span: Option<Span>,
}

impl Lean {
    /// Layer 1: the dispatch's span, if anything could see it.
    #[inline(always)]
    pub(crate) fn start(
        kind: MessageKind,
        message: &'static str,
        handler: &'static str,
        metadata: &Metadata,
    ) -> Lean {
        Lean {
            span: trace::lean_span(kind, message, handler, metadata),
        }
    }

    /// Layers 4 and 5: authorization by the principal alone, then the message's field rules.
    #[inline]
    pub(crate) fn check<M: Message>(
        &self,
        authorize: Option<&AuthorizeLayer>,
        message: &M,
        metadata: &Metadata,
    ) -> Result<(), Error> {
        AuthorizeLayer::check_lean(authorize, M::NAME, metadata)?;
        message.validate_message()
    }

    /// Layer 10: the handler's future, pinned where the caller built it, polled inside the
    /// span with its panics caught.
    #[inline]
    pub(crate) fn handler<'a, F>(
        &'a self,
        handler: &'static str,
        fut: Pin<&'a mut F>,
        stats: &mut DispatchStats,
    ) -> CatchPanic<'a, F> {
        stats.attempts = 1;
        CatchPanic {
            handler,
            span: self.span.as_ref(),
            fut,
        }
    }

    /// What runs after the handler (publishing its events), inside the span.
    #[inline]
    pub(crate) fn within<'a, F: Future>(&'a self, fut: Pin<&'a mut F>) -> InSpan<'a, F> {
        InSpan {
            span: self.span.as_ref(),
            fut,
        }
    }

    /// Layer 1, at the end: the outcome on the span, and in the metrics.
    #[inline]
    pub(crate) fn finish<M: Message, T>(&self, result: &Result<T, Error>, stats: &DispatchStats) {
        trace::finish_in(self.span.as_ref(), M::KIND, M::NAME, result, stats);
    }
}
