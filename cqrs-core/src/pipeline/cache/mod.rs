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
//! future (see `pipeline/query/full.rs`, `early`). A shared backend (Redis) implements the same
//! traits with serialized values.

mod memory;

pub use self::memory::MemoryCache;

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::Error;

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

/// A cached answer, as a backend stores it.
#[derive(Clone)]
pub enum CachedValue {
    /// The answer itself, shared (in-process backends).
    Shared(Arc<dyn Any + Send + Sync>),
    /// The answer as JSON (backends shared between processes).
    Json(Vec<u8>),
}

impl fmt::Debug for CachedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CachedValue::Shared(_) => f.write_str("CachedValue::Shared(..)"),
            CachedValue::Json(bytes) => write!(f, "CachedValue::Json({} bytes)", bytes.len()),
        }
    }
}

/// Which form a [`CacheRegion`] stores answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// [`CachedValue::Shared`].
    Shared,
    /// [`CachedValue::Json`].
    Json,
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
    fn insert(&self, key: u128, value: CachedValue) -> CacheFuture<'_, ()>;
    /// Drops every answer of this query.
    fn invalidate_all(&self) -> CacheFuture<'_, ()>;
}

/// A query's region that counts its invalidations (`invalidates = [..]`, `bus.invalidate`), so
/// that an answer computed before one is not stored after it, and a caller who asks after one
/// does not wait for a computation that started before it.
pub(crate) struct Invalidated {
    region: Arc<dyn CacheRegion>,
    epoch: AtomicU64,
}

impl Invalidated {
    pub(crate) fn new(region: Arc<dyn CacheRegion>) -> Arc<Self> {
        Arc::new(Invalidated {
            region,
            epoch: AtomicU64::new(0),
        })
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

impl CacheRegion for Invalidated {
    fn representation(&self) -> Representation {
        self.region.representation()
    }
    fn get(&self, key: u128) -> CacheFuture<'_, Option<CachedValue>> {
        self.region.get(key)
    }
    fn insert(&self, key: u128, value: CachedValue) -> CacheFuture<'_, ()> {
        self.region.insert(key, value)
    }
    fn invalidate_all(&self) -> CacheFuture<'_, ()> {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.region.invalidate_all()
    }
}

/// An answer as the cache layer handles it: the query's output, shared. Sharing it is what a
/// hit, a follower of a single flight and the in-process backend need; the layer never looks
/// inside (the query's pipeline puts the output in and takes it out, see `pipeline/query`).
pub(crate) type Answer = Arc<dyn Any + Send + Sync>;

/// What the cache layer needs to know of a query's output type, for backends that store JSON.
pub(crate) trait AnswerCodec: Send + Sync {
    /// The answer (the output behind [`Answer`]) as JSON.
    fn encode(&self, answer: &(dyn Any + Send + Sync)) -> Result<Vec<u8>, Error>;
    /// An answer from its JSON.
    fn decode(&self, json: &[u8]) -> Result<Answer, Error>;
}

/// A computation in progress, and the invalidation epoch it started in.
struct Flight {
    epoch: u64,
    answer: watch::Receiver<Option<Result<Answer, Error>>>,
}

/// The cache layer of one query handler.
///
/// Not generic over the query: answers go through it as [`Answer`]s and the key is hashed by
/// the spec's function, so this code is in a binary once, however many queries are cached.
pub(crate) struct CacheLayer {
    query: &'static str,
    spec: CacheSpec,
    region: Arc<Invalidated>,
    in_flight: Mutex<HashMap<u128, Flight>>,
}

impl CacheLayer {
    pub(crate) fn new(query: &'static str, spec: CacheSpec, region: Arc<Invalidated>) -> Self {
        CacheLayer {
            query,
            spec,
            region,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The key of `query` (the message, `&Q`) asked by `principal`: the principal's id is part
    /// of it unless the spec is `public`.
    pub(crate) fn key(&self, query: &(dyn Any + Send + Sync), principal: Option<&str>) -> u128 {
        cache_key(|h| {
            (self.spec.key)(query, h);
            if !self.spec.public {
                // Tagged, and the id's length first, so that no principal's id and the query's
                // own bytes can combine into another caller's key.
                match principal {
                    None => h.write_u8(0),
                    Some(id) => {
                        h.write_u8(1);
                        h.write_u64(id.len() as u64);
                        h.write(id.as_bytes());
                    }
                }
            }
        })
    }

    /// The answer under `key`, if the backend can tell without awaiting (the in-process one
    /// always can): `Some(None)` is a miss, `None` means it would have to be awaited.
    pub(crate) fn peek(&self, codec: &dyn AnswerCodec, key: u128) -> Option<Option<Answer>> {
        match self.region.get(key) {
            CacheFuture::Ready(Some(found)) => Some(self.found(codec, found)),
            // A remote lookup, not started: futures do nothing until polled.
            CacheFuture::Ready(None) | CacheFuture::Pending(_) => None,
        }
    }

    async fn lookup(&self, codec: &dyn AnswerCodec, key: u128) -> Option<Answer> {
        self.found(codec, self.region.get(key).await)
    }

    /// What a lookup found, as an answer; a failed lookup or an answer that does not decode is
    /// a miss (logged), not an error: the handler can still answer.
    fn found(
        &self,
        codec: &dyn AnswerCodec,
        found: Result<Option<CachedValue>, Error>,
    ) -> Option<Answer> {
        let found = match found {
            Ok(found) => found?,
            Err(error) => {
                tracing::warn!(target: "cqrs", query = self.query, %error, "cache lookup failed; running the handler");
                return None;
            }
        };
        match found {
            CachedValue::Shared(value) => Some(value),
            CachedValue::Json(bytes) => match codec.decode(&bytes) {
                Ok(value) => Some(value),
                Err(error) => {
                    tracing::warn!(target: "cqrs", query = self.query, %error, "cached answer does not decode; running the handler");
                    None
                }
            },
        }
    }

    /// Stores an answer computed in invalidation epoch `epoch`, unless the query's answers were
    /// invalidated since (the answer may predate the change that invalidated them).
    async fn store(&self, codec: &dyn AnswerCodec, key: u128, answer: &Answer, epoch: u64) {
        if !self.spec.cache_none && (self.spec.is_none)(&**answer) {
            return;
        }
        if self.region.epoch() != epoch {
            return;
        }
        let value = match self.region.representation() {
            Representation::Shared => CachedValue::Shared(answer.clone()),
            Representation::Json => match codec.encode(&**answer) {
                Ok(bytes) => CachedValue::Json(bytes),
                Err(error) => {
                    tracing::warn!(target: "cqrs", query = self.query, %error, "answer does not serialize; not cached");
                    return;
                }
            },
        };
        if let Err(error) = self.region.insert(key, value).await {
            tracing::warn!(target: "cqrs", query = self.query, %error, "cache insert failed");
        }
        // Invalidated between the check and the insert: drop what may be a stale answer.
        if self.region.epoch() != epoch
            && let Err(error) = self.region.invalidate_all().await
        {
            tracing::warn!(target: "cqrs", query = self.query, %error, "cache invalidation failed");
        }
    }

    /// Answers from the cache under `key` (see [`key`](Self::key)), or runs `compute` once for
    /// all concurrent callers with this key. `looked`: the caller has just looked `key` up
    /// (with [`peek`](Self::peek)) and missed, so the first lookup is skipped.
    pub(crate) async fn run<F, Fut>(
        &self,
        codec: &dyn AnswerCodec,
        key: u128,
        looked: bool,
        cache_hit: &mut bool,
        compute: F,
    ) -> Result<Answer, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Answer, Error>>,
    {
        if !looked && let Some(hit) = self.lookup(codec, key).await {
            *cache_hit = true;
            return Ok(hit);
        }
        let mut compute = Some(compute);
        loop {
            let epoch = self.region.epoch();
            let role = {
                let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                match in_flight.get(&key) {
                    Some(flight) if flight.epoch == epoch => Err(flight.answer.clone()),
                    // None, or one that started before an invalidation: its answer may be stale.
                    _ => {
                        let (sender, answer) = watch::channel(None);
                        in_flight.insert(key, Flight { epoch, answer });
                        Ok(sender)
                    }
                }
            };
            match role {
                Ok(sender) => {
                    let _landing = Landing {
                        layer: self,
                        key,
                        epoch,
                    };
                    // Another leader may have stored the answer between our miss and our claim.
                    if let Some(hit) = self.lookup(codec, key).await {
                        *cache_hit = true;
                        sender.send_replace(Some(Ok(hit.clone())));
                        return Ok(hit);
                    }
                    let Some(compute) = compute.take() else {
                        return Err(Error::internal("single-flight leader ran twice"));
                    };
                    let result = compute().await;
                    if let Ok(answer) = &result {
                        self.store(codec, key, answer, epoch).await;
                    }
                    sender.send_replace(Some(result.clone()));
                    return result;
                }
                Err(mut flight) => {
                    // Wait for the leader; if it is dropped (cancelled, timed out) without an
                    // answer, take over.
                    loop {
                        if let Some(result) = flight.borrow_and_update().clone() {
                            *cache_hit = result.is_ok();
                            return result;
                        }
                        if flight.changed().await.is_err() {
                            break;
                        }
                    }
                    if let Some(result) = flight.borrow().clone() {
                        *cache_hit = result.is_ok();
                        return result;
                    }
                }
            }
        }
    }

    /// Drops every cached answer of this query.
    pub(crate) async fn invalidate(&self) -> Result<(), Error> {
        self.region.invalidate_all().await
    }
}

/// Removes the in-flight entry when the leader finishes or is dropped (unless a leader of a
/// later epoch has replaced it).
struct Landing<'a> {
    layer: &'a CacheLayer,
    key: u128,
    epoch: u64,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .layer
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if in_flight
            .get(&self.key)
            .is_some_and(|f| f.epoch == self.epoch)
        {
            in_flight.remove(&self.key);
        }
    }
}

/// Hashes the whole query (the default key, when `vary_by` is not given).
pub fn hash_whole<Q: Hash + 'static>(query: &(dyn Any + Send + Sync), mut hasher: &mut dyn Hasher) {
    if let Some(q) = query.downcast_ref::<Q>() {
        q.hash(&mut hasher);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone, Hash)]
    struct Q(u32);

    /// Answers are `Option<u32>`.
    struct Codec;
    impl AnswerCodec for Codec {
        fn encode(&self, answer: &(dyn Any + Send + Sync)) -> Result<Vec<u8>, Error> {
            Ok(serde_json::to_vec(answer.downcast_ref::<Option<u32>>().unwrap()).unwrap())
        }
        fn decode(&self, json: &[u8]) -> Result<Answer, Error> {
            Ok(Arc::new(
                serde_json::from_slice::<Option<u32>>(json).unwrap(),
            ))
        }
    }

    fn layer(cache_none: bool) -> Arc<CacheLayer> {
        let spec = CacheSpec::new(Duration::from_secs(60), hash_whole::<Q>, |v| {
            v.downcast_ref::<Option<u32>>().is_some_and(Option::is_none)
        })
        .cache_none(cache_none);
        Arc::new(CacheLayer::new(
            "Q",
            spec,
            Invalidated::new(MemoryCache.region("Q", &spec)),
        ))
    }

    async fn run(
        l: &CacheLayer,
        q: u32,
        hit: &mut bool,
        answer: Result<Option<u32>, Error>,
    ) -> Result<Option<u32>, Error> {
        let answer = l
            .run(&Codec, l.key(&Q(q), None), false, hit, || async move {
                answer.map(|a| Arc::new(a) as Answer)
            })
            .await?;
        Ok(*answer.downcast_ref::<Option<u32>>().unwrap())
    }

    #[tokio::test]
    async fn hits_misses_and_none() {
        let l = layer(false);
        let mut hit = false;
        let v = run(&l, 1, &mut hit, Ok(Some(10))).await.unwrap();
        assert_eq!((v, hit), (Some(10), false));
        let v = run(&l, 1, &mut hit, Ok(Some(99))).await.unwrap();
        assert_eq!((v, hit), (Some(10), true));
        let mut hit = false;
        run(&l, 2, &mut hit, Ok(None)).await.unwrap();
        let v = run(&l, 2, &mut hit, Ok(Some(5))).await.unwrap();
        assert_eq!((v, hit), (Some(5), false), "None is not cached by default");
        let mut hit = false;
        run(&l, 3, &mut hit, Err(Error::unavailable("x")))
            .await
            .unwrap_err();
        let v = run(&l, 3, &mut hit, Ok(Some(3))).await.unwrap();
        assert_eq!((v, hit), (Some(3), false), "errors are not cached");
        l.invalidate().await.unwrap();
        let v = run(&l, 1, &mut hit, Ok(Some(11))).await.unwrap();
        assert_eq!(v, Some(11));
    }

    #[tokio::test]
    async fn peek_answers_in_process_lookups_without_awaiting() {
        let l = layer(false);
        let key = l.key(&Q(4), None);
        assert!(matches!(l.peek(&Codec, key), Some(None)), "a miss");
        let mut hit = false;
        run(&l, 4, &mut hit, Ok(Some(40))).await.unwrap();
        let found = l.peek(&Codec, key).expect("in process: no await needed");
        let found = found.expect("a hit after the answer was stored");
        assert_eq!(found.downcast_ref::<Option<u32>>(), Some(&Some(40)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_run_once() {
        let l = layer(true);
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (l, runs) = (l.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                let mut hit = false;
                let answer = l
                    .run(&Codec, l.key(&Q(7), None), false, &mut hit, || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(Arc::new(Some(7u32)) as Answer)
                    })
                    .await?;
                Ok::<_, Error>(*answer.downcast_ref::<Option<u32>>().unwrap())
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Some(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
