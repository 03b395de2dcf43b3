//! Layer 1: one `tracing` span per dispatch, and metrics when the `metrics` feature is on.
//!
//! The span is `cqrs.dispatch` (target `cqrs`) at INFO, with the fields `kind`, `message`,
//! `handler`, `message_id`, `correlation_id`, `causation_id`, `principal`, and, once the
//! dispatch is over, `attempts`, `cache_hit` and `status`. The ids are only computed when a
//! subscriber is interested in the span, so a service without tracing does not pay for them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tracing::Span;
use tracing::field::{Empty, display};

use crate::Error;
use crate::envelope::Metadata;
use crate::message::MessageKind;
use crate::pipeline::report::DispatchStats;

/// The span of one dispatch. Out of line: it runs only when something could see the span,
/// and inlined it would make every dispatch's code large enough for the compiler to stop
/// inlining the lean path's first stage.
#[inline(never)]
pub(crate) fn span(
    kind: MessageKind,
    message: &'static str,
    handler: &'static str,
    metadata: &Metadata,
) -> Span {
    if !observed() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: "cqrs",
        "cqrs.dispatch",
        kind = kind.as_str(),
        message,
        handler,
        message_id = Empty,
        correlation_id = Empty,
        causation_id = Empty,
        principal = Empty,
        attempts = Empty,
        cache_hit = Empty,
        status = Empty,
    );
    if !span.is_disabled() {
        span.record("message_id", display(metadata.message_id()));
        span.record("correlation_id", display(metadata.correlation_id()));
        if let Some(causation) = metadata.causation_id() {
            span.record("causation_id", display(causation));
        }
        if let Some(principal) = metadata.principal() {
            span.record("principal", principal.id());
        }
    }
    span
}

/// Whether anything could see a dispatch span.
///
/// Nothing could when no `tracing` subscriber was ever set and `log` (which `tracing` forwards
/// to when its `log` feature is on) would drop it. Creating the span anyway costs a tenth of a
/// bare dispatch.
#[inline]
fn observed() -> bool {
    tracing::dispatcher::has_been_set() || log::max_level() >= log::LevelFilter::Info
}

/// The span of one dispatch on a lean path: `None` when nothing is interested in it.
///
/// An `Option` rather than a disabled [`Span`]: a disabled span is still checked on every
/// poll, and dropping one asks `log` whether it is enabled (about 30 instructions of a bare
/// send); `None` costs a compare.
#[inline(always)]
pub(crate) fn lean_span(
    kind: MessageKind,
    message: &'static str,
    handler: &'static str,
    metadata: &Metadata,
) -> Option<Span> {
    if !observed() {
        return None;
    }
    let span = span(kind, message, handler, metadata);
    (!span.is_disabled()).then_some(span)
}

/// A future pinned where it lies, polled inside `span` if there is one.
///
/// It borrows the future instead of owning it (as [`Instrumented`] does) so that the future
/// is never moved: awaiting a future by value moves it into the awaiting future's state, a
/// `memcpy` of its whole size.
pub(crate) struct InSpan<'a, F> {
    pub(crate) span: Option<&'a Span>,
    pub(crate) fut: Pin<&'a mut F>,
}

impl<F: Future> Future for InSpan<'_, F> {
    type Output = F::Output;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _entered = this.span.map(Span::enter);
        this.fut.as_mut().poll(cx)
    }
}

/// Records the outcome of a dispatch on its span, if it has one (see [`lean_span`]), and in
/// the metrics.
#[inline]
pub(crate) fn finish_in<T>(
    span: Option<&Span>,
    kind: MessageKind,
    message: &'static str,
    result: &Result<T, Error>,
    stats: &DispatchStats,
) {
    let status = match result {
        Ok(_) => "ok",
        Err(e) => e.status().as_str(),
    };
    if let Some(span) = span {
        span.record("attempts", stats.attempts);
        span.record("cache_hit", stats.cache_hit);
        span.record("status", status);
        if let Err(e) = result {
            span.in_scope(|| tracing::debug!(target: "cqrs", error = %format_args!("{e:#}"), "dispatch failed"));
        }
    }
    crate::pipeline::metrics::record_dispatch(kind, message, status, stats);
}
