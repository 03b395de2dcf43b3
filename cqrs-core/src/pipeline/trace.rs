//! Layer 1: one `tracing` span per dispatch, and metrics when the `metrics` feature is on.
//!
//! The span is `cqrs.dispatch` (target `cqrs`) at INFO, with the fields `kind`, `message`,
//! `handler`, `message_id`, `correlation_id`, `causation_id`, `principal`, and, once the
//! dispatch is over, `attempts`, `cache_hit` and `status`. The ids are only computed when a
//! subscriber is interested in the span, so a service without tracing does not pay for them.

use std::future::Future;

use futures_util::future::Either;
use tracing::Span;
use tracing::field::{Empty, display};
use tracing::instrument::{Instrument, Instrumented};

use crate::Error;
use crate::bus::report::DispatchStats;
use crate::envelope::Metadata;
use crate::message::MessageKind;

/// The span of one dispatch.
#[inline]
pub(crate) fn span(
    kind: MessageKind,
    message: &'static str,
    handler: &'static str,
    metadata: &Metadata,
) -> Span {
    // Nothing could see the span: no `tracing` subscriber was ever set, and `log` (which
    // `tracing` forwards to when its `log` feature is on) would drop it. Creating it anyway
    // costs a tenth of a bare dispatch.
    if !tracing::dispatcher::has_been_set() && log::max_level() < log::LevelFilter::Info {
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

/// `fut`, inside `span` when a subscriber is interested in it, bare otherwise (entering and
/// leaving a disabled span on every poll costs more than the rest of a bare dispatch).
///
/// Call it on the future expression itself and bind the result (`let f = within(&span,
/// make()); f.await`): a future moved into a combinator in the statement that awaits it keeps
/// its own space in the caller's state until the statement ends.
#[inline]
pub(crate) fn within<F: Future>(span: &Span, fut: F) -> Either<F, Instrumented<F>> {
    if span.is_disabled() {
        Either::Left(fut)
    } else {
        Either::Right(fut.instrument(span.clone()))
    }
}

/// Records the outcome of a dispatch on its span (and in the metrics).
#[inline]
pub(crate) fn finish<T>(
    span: &Span,
    kind: MessageKind,
    message: &'static str,
    result: &Result<T, Error>,
    stats: &DispatchStats,
) {
    let status = match result {
        Ok(_) => "ok",
        Err(e) => e.status().as_str(),
    };
    if !span.is_disabled() {
        span.record("attempts", stats.attempts);
        span.record("cache_hit", stats.cache_hit);
        span.record("status", status);
        if let Err(e) = result {
            span.in_scope(|| tracing::debug!(target: "cqrs", error = %e, "dispatch failed"));
        }
    }
    crate::metrics::record_dispatch(kind, message, status, stats);
}
