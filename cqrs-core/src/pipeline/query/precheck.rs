//! A cached query's layers 4, 5 and cache lookup (7), before any future is built, when none
//! of them awaits: what makes a cache hit cost a few hundred instructions and no allocation.

use super::super::authorize::AuthorizeLayer;
use super::super::cache::Answer;
use super::super::erased::Erased;
use super::super::full_path::{Checked, FullPipe};
use super::super::report::DispatchStats;
use super::super::runtime::Runtime;
use crate::Error;
use crate::context::QueryContext;
use crate::envelope::{Metadata, Principal};
use crate::message::MessageKind;

/// What a dispatch of a cached query settled before building any future (see [`precheck`]).
pub(crate) enum Precheck {
    /// The dispatch is over: refused by layer 4 or 5, or answered by a cache hit.
    Done(Result<Answer, Error>),
    /// Authorized and valid; the full path goes on at the cache (layer 7).
    Checked(Checked),
    /// Something before the cache has to be awaited (middleware, a resource policy), or the
    /// query is not cached: the full path runs from the start.
    Later,
}

/// Layers 4, 5 and a cache hit of layer 7, before any future is built, when none of them
/// awaits: for a cached query, with no middleware and no resource policy.
///
/// What a hit costs is then a few hundred instructions and no allocation, where the full path
/// would box a future of 3 KB to find the answer. The other layers have nothing to do on a hit:
/// no attempt runs (layer 8), and a deadline (layer 3) is not reached by a dispatch that never
/// awaits, as inside `tokio::time::timeout_at`, which polls its future before the clock.
/// Refusals and hits are the same, and reported the same, as on the full path.
pub(crate) fn precheck(
    pipe: &dyn FullPipe<Context = QueryContext>,
    bus: &Runtime,
    query: &Erased,
    metadata: &Metadata,
    stats: &mut DispatchStats,
) -> Precheck {
    let Some((cache, answers)) = pipe.answers() else {
        return Precheck::Later;
    };
    if !bus.middleware(MessageKind::Query).is_empty() {
        return Precheck::Later;
    }
    // Layer 4 as the lean paths run it: only a check that needs no resource policy.
    let authorize = pipe.layers().authorize.as_ref();
    if !AuthorizeLayer::is_lean(authorize) {
        return Precheck::Later;
    }
    if let Err(error) = AuthorizeLayer::check_lean(authorize, pipe.message_name(), metadata) {
        return Precheck::Done(Err(error));
    }
    if let Err(error) = pipe.validate(query) {
        return Precheck::Done(Err(error));
    }
    let key = cache.key(query, metadata.principal().map(Principal::id));
    stats.cached = true;
    match cache.peek(answers.codec(), key) {
        Some(Some(hit)) => {
            stats.cache_hit = true;
            Precheck::Done(Ok(hit))
        }
        Some(None) => Precheck::Checked(Checked { key, looked: true }),
        None => Precheck::Checked(Checked { key, looked: false }),
    }
}
