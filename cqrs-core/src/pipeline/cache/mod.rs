//! Layer 7: cached query answers, with single flight.
//!
//! `#[cached_query(ttl = "5m", vary_by = [user_id], cache_none = false, max_entries = 10000)]`
//! on a query handler. The key is the query's name and a 128-bit SipHash of the `vary_by` fields
//! (of the whole query when `vary_by` is not given) and of the caller's principal id.
//!
//! **Answers are kept per caller by default.** The macro cannot see the handler's body, and a
//! handler that reads `cx.principal()` (a customer's own orders, a view filtered by role) would
//! otherwise hand one caller's answer to the next. So the key includes the principal's id
//! (anonymous callers share one scope), unless the handler declares its answer the same for
//! everyone with `#[cached_query(.., public)]` (a product catalogue): then every caller shares
//! one cached answer. A principal's roles and permissions are not part of the key: callers with
//! the same id are the same caller. On a miss, concurrent callers with the same
//! key wait for the one that runs the handler (single flight), then share its answer. Errors are
//! never stored; `None` only with `cache_none = true`.
//!
//! Storage is behind [`QueryCache`]: the bus asks it for one [`CacheRegion`] per cached query at
//! startup. The default, [`MemoryCache`] ([`memory`]), keeps answers in process; its lookups
//! finish without awaiting anything, so that a hit is answered before the dispatch builds any
//! future (see `pipeline/query/precheck.rs`). A shared backend (Redis) implements the same
//! traits with serialized values.
//!
//! A command drops answers with `invalidates = [GetProduct]` (every answer of the query) or
//! `invalidates = [GetProduct(id = product_id)]` (the answers for that product, see
//! [`target`]); an application with [`Bus::invalidate`](crate::Bus::invalidate) and
//! [`Bus::invalidate_answer`](crate::Bus::invalidate_answer). When the bus has an
//! [`InvalidationChannel`] (PostgreSQL, Redis, NATS: see [`backplane`]), every invalidation
//! reaches every process that shares it.

pub(crate) mod backplane;
mod layer;
#[cfg(all(test, loom))]
mod loom_model;
mod memory;
mod regions;
pub(crate) mod target;

pub use self::backplane::{Invalidation, InvalidationChannel, InvalidationSink};
pub(crate) use self::layer::{Answer, AnswerCodec, Answers, CacheLayer};
pub use self::memory::MemoryCache;
pub(crate) use self::regions::CacheRegions;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::Error;
use crate::sync::{AtomicU64, Mutex};

/// The configuration of `#[cached_query(..)]`.
#[derive(Clone, Copy)]
pub struct CacheSpec {
    ttl: Duration,
    max_entries: u64,
    cache_none: bool,
    public: bool,
    vary_by: &'static [&'static str],
    key: fn(&(dyn Any + Send + Sync), &mut dyn Hasher),
    is_none: fn(&(dyn Any + Send + Sync)) -> bool,
}

impl CacheSpec {
    /// The default number of entries kept per query.
    pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;

    /// How long an answer is kept when `ttl` is not given: one minute.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

    /// A cache of answers kept [`CacheSpec::DEFAULT_TTL`], keyed by what `key` hashes;
    /// `is_none` tells whether an answer is `None` (the macro generates both functions).
    pub const fn keyed(
        key: fn(&(dyn Any + Send + Sync), &mut dyn Hasher),
        is_none: fn(&(dyn Any + Send + Sync)) -> bool,
    ) -> Self {
        Self::new(Self::DEFAULT_TTL, key, is_none)
    }

    /// Keep each answer `ttl`.
    pub const fn expire_after(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// A cache of answers kept `ttl`, keyed by what `key` hashes; `is_none` tells whether an
    /// answer is `None` (the macro generates both functions).
    pub const fn new(
        ttl: Duration,
        key: fn(&(dyn Any + Send + Sync), &mut dyn Hasher),
        is_none: fn(&(dyn Any + Send + Sync)) -> bool,
    ) -> Self {
        CacheSpec {
            ttl,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            cache_none: false,
            public: false,
            vary_by: &[],
            key,
            is_none,
        }
    }

    /// Keep at most this many answers; which go first is the backend's policy (S3-FIFO in
    /// memory: answers read once go before those read again).
    pub const fn max_entries(mut self, max: u64) -> Self {
        self.max_entries = max;
        self
    }

    /// Whether `None` answers are cached too.
    pub const fn cache_none(mut self, cache_none: bool) -> Self {
        self.cache_none = cache_none;
        self
    }

    /// Whether the answer is the same for every caller (`public`): then the key leaves the
    /// principal out and every caller shares one cached answer. By default answers are kept per
    /// principal.
    pub const fn public(mut self, public: bool) -> Self {
        self.public = public;
        self
    }

    /// Whether answers are shared by every caller (see [`CacheSpec::public`]).
    pub fn is_public(&self) -> bool {
        self.public
    }

    /// The fields the key is made of (for `describe()`; `key` does the hashing).
    pub const fn vary_by(mut self, fields: &'static [&'static str]) -> Self {
        self.vary_by = fields;
        self
    }

    /// The fields the key is made of (empty: the whole query).
    pub fn vary_by_fields(&self) -> &'static [&'static str] {
        self.vary_by
    }

    /// How long an answer is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The most answers kept.
    pub fn max_entries_limit(&self) -> u64 {
        self.max_entries
    }
}

impl fmt::Display for CacheSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cache(ttl={}", super::describe::duration(self.ttl))?;
        if !self.vary_by.is_empty() {
            write!(f, ", vary_by={}", super::describe::list(self.vary_by))?;
        }
        if self.cache_none {
            write!(f, ", cache_none")?;
        }
        if self.public {
            write!(f, ", public")?;
        }
        write!(f, ", max_entries={})", self.max_entries)
    }
}

impl fmt::Debug for CacheSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Hashes a cache key with a fixed-key SipHash-1-3 (stable across processes, so a shared cache
/// sees the same key from every instance of the service).
pub(crate) fn cache_key(hash: impl FnOnce(&mut dyn Hasher)) -> u128 {
    let mut hasher = siphasher::sip128::SipHasher13::new_with_keys(0x6371_7273, 0x0063_6163_6865);
    hash(&mut hasher);
    siphasher::sip128::Hasher128::finish128(&hasher).as_u128()
}

/// Where an answer is stored: its key, and its target (the hash of the query's `vary_by`
/// fields alone, what a targeted invalidation names). For a `public` query they are equal; for
/// one kept per caller, the key adds the caller, and one target covers every caller's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The answer's key: the query's `vary_by` fields and, unless `public`, the caller.
    pub answer: u128,
    /// The query's `vary_by` fields alone.
    pub target: u128,
}

/// A cached answer, as a backend stores it.
#[derive(Clone)]
#[non_exhaustive]
pub enum CachedValue {
    /// The answer itself, shared (in-process backends).
    Shared(Arc<dyn Any + Send + Sync>),
    /// The answer as JSON (backends shared between processes).
    Json(Vec<u8>),
    /// Both: the value for a first level in process, the JSON for a second level shared
    /// between processes ([`Representation::Layered`]).
    Layered(Arc<dyn Any + Send + Sync>, Vec<u8>),
}

impl fmt::Debug for CachedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CachedValue::Shared(_) => f.write_str("CachedValue::Shared(..)"),
            CachedValue::Json(bytes) => write!(f, "CachedValue::Json({} bytes)", bytes.len()),
            CachedValue::Layered(_, bytes) => {
                write!(f, "CachedValue::Layered(.., {} bytes)", bytes.len())
            }
        }
    }
}

/// Which form a [`CacheRegion`] stores answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Representation {
    /// [`CachedValue::Shared`].
    Shared,
    /// [`CachedValue::Json`].
    Json,
    /// Two levels: lookups answer [`CachedValue::Shared`] from the first (in process) or
    /// [`CachedValue::Json`] from the second (shared); stores are given
    /// [`CachedValue::Layered`] for both, or [`CachedValue::Shared`] alone to fill the first
    /// level with an answer the second one had.
    Layered,
}

/// A cache operation that may already be finished: in-process backends answer synchronously
/// (`CacheFuture::ready`) and cost no allocation; remote backends return a boxed future.
pub enum CacheFuture<'a, T> {
    /// Already done.
    Ready(Option<Result<T, Error>>),
    /// Still to be awaited.
    Pending(BoxFuture<'a, Result<T, Error>>),
}

impl<T> CacheFuture<'_, T> {
    /// A finished operation.
    pub fn ready(result: Result<T, Error>) -> Self {
        CacheFuture::Ready(Some(result))
    }
}

impl<T: Unpin> Future for CacheFuture<'_, T> {
    type Output = Result<T, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            CacheFuture::Ready(result) => {
                Poll::Ready(result.take().unwrap_or_else(|| {
                    Err(Error::internal("cache future polled after completion"))
                }))
            }
            CacheFuture::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for CacheFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheFuture::Ready(_) => "CacheFuture::Ready",
            CacheFuture::Pending(_) => "CacheFuture::Pending",
        })
    }
}

/// Where cached answers live: a factory of one [`CacheRegion`] per cached query.
pub trait QueryCache: Send + Sync + 'static {
    /// The region for `query` (called once per cached query handler, in `build()`).
    fn region(&self, query: &'static str, spec: &CacheSpec) -> Arc<dyn CacheRegion>;
}

/// The cached answers of one query.
pub trait CacheRegion: Send + Sync + 'static {
    /// The form answers are stored in.
    fn representation(&self) -> Representation;
    /// The answer stored under `key`, if any and not expired.
    fn get(&self, key: u128) -> CacheFuture<'_, Option<CachedValue>>;
    /// Stores an answer.
    fn insert(&self, key: CacheKey, value: CachedValue) -> CacheFuture<'_, ()>;
    /// Drops the answers stored with this target (every caller's, see [`CacheKey`]).
    fn invalidate(&self, target: u128) -> CacheFuture<'_, ()>;
    /// Drops every answer of this query.
    fn invalidate_all(&self) -> CacheFuture<'_, ()>;
    /// Called by the one caller in this process about to run the handler for `key` (after a
    /// miss): a backend shared between processes may wait, bounded, for another process
    /// computing the same answer and return it, or note that this process computes it. `None`:
    /// compute. The default computes at once.
    fn before_compute(&self, key: CacheKey) -> CacheFuture<'_, Option<CachedValue>> {
        let _ = key;
        CacheFuture::ready(Ok(None))
    }
    /// Drops the answers this process keeps in memory, for `target` or all of them (`None`):
    /// another process invalidated them (and dropped them from any level shared between
    /// processes), or the invalidation channel reconnected. A backend shared between processes
    /// and nothing else has nothing to do here.
    fn drop_local(&self, target: Option<u128>);
}

/// A query's region that counts its invalidations (`invalidates = [..]`, `bus.invalidate`), so
/// that an answer computed before one is not stored after it, and a caller who asks after one
/// does not wait for a computation that started before it.
///
/// The epoch is per query, whatever the target: an invalidation of one product also keeps an
/// answer for another, computed across it, from being stored (a lost store, never a stale one).
pub(crate) struct Invalidated {
    region: Arc<dyn CacheRegion>,
    spec: CacheSpec,
    epoch: AtomicU64,
    /// Held across an epoch check and the insert it allows ([`insert_in`](Self::insert_in)), and
    /// across an invalidation's bump and clear, so that with a backend that does its work when
    /// called (the in-process one) an answer from before an invalidation cannot land after the
    /// clear, not even until the storing leader notices: a caller who asks after an invalidation
    /// would read it. Never held across an await; not taken on a lookup.
    stores: Mutex<()>,
}

impl Invalidated {
    pub(crate) fn new(region: Arc<dyn CacheRegion>, spec: CacheSpec) -> Arc<Self> {
        Arc::new(Invalidated {
            region,
            spec,
            epoch: AtomicU64::new(0),
            stores: Mutex::new(()),
        })
    }

    /// The target of `query` (the message, `&Q`): the hash of its `vary_by` fields.
    pub(crate) fn target_of(&self, query: &(dyn Any + Send + Sync)) -> u128 {
        cache_key(|h| (self.spec.key)(query, h))
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Starts storing `value` under `key` if no invalidation happened since `epoch`; `None` if
    /// one did. A backend whose insert completes later (a remote one) may still finish after an
    /// invalidation: the caller checks the epoch again once the insert is done.
    fn insert_in(
        &self,
        epoch: u64,
        key: CacheKey,
        value: CachedValue,
    ) -> Option<CacheFuture<'_, ()>> {
        let _stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        (self.epoch() == epoch).then(|| self.region.insert(key, value))
    }

    /// Counts an invalidation and starts it, under the lock `insert_in` takes: no answer from
    /// before the invalidation is inserted once it has started.
    fn bump_then<'a>(&'a self, clear: impl FnOnce() -> CacheFuture<'a, ()>) -> CacheFuture<'a, ()> {
        let _stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        clear()
    }
}

impl CacheRegion for Invalidated {
    fn representation(&self) -> Representation {
        self.region.representation()
    }
    fn get(&self, key: u128) -> CacheFuture<'_, Option<CachedValue>> {
        self.region.get(key)
    }
    fn insert(&self, key: CacheKey, value: CachedValue) -> CacheFuture<'_, ()> {
        self.region.insert(key, value)
    }
    fn before_compute(&self, key: CacheKey) -> CacheFuture<'_, Option<CachedValue>> {
        self.region.before_compute(key)
    }
    fn invalidate(&self, target: u128) -> CacheFuture<'_, ()> {
        self.bump_then(|| self.region.invalidate(target))
    }
    fn invalidate_all(&self) -> CacheFuture<'_, ()> {
        self.bump_then(|| self.region.invalidate_all())
    }
    fn drop_local(&self, target: Option<u128>) {
        let _stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.region.drop_local(target);
    }
}

/// Hashes the whole query (the default key, when `vary_by` is not given).
pub fn hash_whole<Q: Hash + 'static>(query: &(dyn Any + Send + Sync), mut hasher: &mut dyn Hasher) {
    if let Some(q) = query.downcast_ref::<Q>() {
        q.hash(&mut hasher);
    }
}
