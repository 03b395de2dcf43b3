//! Metrics through the `metrics` facade (feature `metrics`), for any recorder the application
//! installs (the shop example serves them in the Prometheus format):
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `cqrs_dispatch_total` | counter | `kind`, `message`, `status` (`ok` or the error's status) |
//! | `cqrs_dispatch_duration_seconds` | histogram | `kind`, `message`, `status` |
//! | `cqrs_cache_total` | counter | `message`, `result` (`hit` or `miss`), queries with `#[cached_query]` |
//! | `cqrs_attempts_total` | counter | `kind`, `message`: handler runs, retries included |
//!
//! Without the feature, recording compiles to nothing.

use crate::message::MessageKind;
use crate::pipeline::report::DispatchStats;

#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn record_dispatch(
    _kind: MessageKind,
    _message: &'static str,
    _status: &'static str,
    _stats: &DispatchStats,
) {
}

#[cfg(feature = "metrics")]
pub(crate) fn record_dispatch(
    kind: MessageKind,
    message: &'static str,
    status: &'static str,
    stats: &DispatchStats,
) {
    let labels = [
        ("kind", kind.as_str()),
        ("message", message),
        ("status", status),
    ];
    metrics::counter!("cqrs_dispatch_total", &labels).increment(1);
    metrics::histogram!("cqrs_dispatch_duration_seconds", &labels)
        .record(stats.started.elapsed().as_secs_f64());
    if stats.attempts > 0 {
        metrics::counter!("cqrs_attempts_total", "kind" => kind.as_str(), "message" => message)
            .increment(u64::from(stats.attempts));
    }
    if kind == MessageKind::Query && stats.cached {
        let result = if stats.cache_hit { "hit" } else { "miss" };
        metrics::counter!("cqrs_cache_total", "message" => message, "result" => result)
            .increment(1);
    }
}
