//! [`RedisCache`]: answers in process first, then in Redis, shared by every process.
//!
//! Per query, Redis holds an epoch (`<prefix>cache:<query>:epoch`, counted up by every
//! invalidation of the whole query) and, for a `public` query, a generation per answer
//! (`..:gen:<key>`, counted up by a targeted invalidation). An answer is stored under
//! `..:<epoch>:<generation>:<key>`, so that an invalidation is one `INCR`: the answers stored
//! before it are no longer found, and expire with their TTL. A lookup reads the epoch, the
//! generation and the answer in one script; a store is a script that writes only if neither
//! moved since the lookup that missed. That is the epoch rule across processes: an answer
//! computed before an invalidation is never stored after it. (A targeted invalidation of a
//! query kept per caller counts up the whole query's epoch in Redis: the second level cannot
//! list every caller's answer for one target; the first level drops exactly the target.)
//!
//! On a miss in both levels, the process about to run the handler takes a short lock
//! (`..:lock:<key>`, `SET NX`); a process that finds it taken polls for the answer instead, for
//! at most [`RedisCache::wait_for_others`] (2 s by default), then runs the handler anyway.
//!
//! **Serialization**: JSON (`serde_json`), the representation the cache layer already has a
//! codec for (every query output is `Serialize + DeserializeOwned`): readable with
//! `redis-cli`, stable across versions of this crate, and an answer that no longer decodes (the
//! type changed in a deploy) is a miss, logged, not an error. A second-level hit is decoded
//! once and then kept in the first level, so the decoding cost is paid once per process.
//!
//! Scripts name keys they build (not only `KEYS`): a single Redis or a replicated one, not
//! Redis Cluster.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::{Script, Value};

use super::{DEFAULT_PREFIX, Redis, redis_error};
use crate::Error;
use crate::pipeline::cache::{
    CacheFuture, CacheKey, CacheRegion, CacheSpec, CachedValue, MemoryCache, QueryCache,
    Representation,
};

/// A [`QueryCache`] in two levels: the in-process one ([`MemoryCache`], a hit costs what it
/// costs without Redis), then Redis, shared by every process of the service. See the module
/// source for how keys, invalidations and the epoch rule are kept in Redis.
///
/// ```no_run
/// # use cqrs_core::prelude::*;
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = cqrs_core::redis::Client::open("redis://127.0.0.1:6379")?;
/// let bus = Bus::builder()
///     .redis(redis.clone())
///     .query_cache(cqrs_core::RedisCache::new(redis).prefix("shop:"))
///     .build()?;
/// # Ok(()) }
/// ```
///
/// When Redis does not answer, lookups miss the second level (logged as a warning) and the
/// first level goes on serving: the cache degrades to the in-process one.
#[derive(Clone)]
pub struct RedisCache {
    redis: Redis,
    wait: Duration,
}

impl RedisCache {
    /// A cache on this Redis, with keys under `cqrs:` (see [`prefix`](Self::prefix)).
    pub fn new(client: redis::Client) -> Self {
        RedisCache {
            redis: Redis::new(client, DEFAULT_PREFIX),
            wait: Duration::from_secs(2),
        }
    }

    /// The prefix of its keys (give the bus's, e.g. `"shop:"`).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.redis = Redis::new(self.redis.client().clone(), prefix);
        self
    }

    /// How long a miss waits for another process computing the same answer before running the
    /// handler itself (2 s by default).
    pub fn wait_for_others(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.redis.prefix)
            .field("wait", &self.wait)
            .finish()
    }
}

impl QueryCache for RedisCache {
    fn region(&self, query: &'static str, spec: &CacheSpec) -> Arc<dyn CacheRegion> {
        Arc::new(LayeredRegion {
            first: MemoryCache.region(query, spec),
            redis: self.redis.clone(),
            base: self.redis.key(&format!("cache:{query}:")),
            ttl: spec.ttl(),
            public: spec.is_public(),
            wait: self.wait,
            observed: Mutex::new(quick_cache::unsync::Cache::new(
                usize::try_from(spec.max_entries_limit())
                    .unwrap_or(usize::MAX)
                    .max(1),
            )),
        })
    }
}

/// One query's two levels.
struct LayeredRegion {
    first: Arc<dyn CacheRegion>,
    redis: Redis,
    /// `<prefix>cache:<query>:`.
    base: String,
    ttl: Duration,
    public: bool,
    wait: Duration,
    /// Per key, the (epoch, generation) its last second-level miss saw: a store writes only if
    /// they have not moved since.
    observed: Mutex<quick_cache::unsync::Cache<u128, (String, String)>>,
}

static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('GET', ARGV[1] .. 'epoch') or '0'
local g = redis.call('GET', ARGV[1] .. 'gen:' .. ARGV[2]) or '0'
local v = redis.call('GET', ARGV[1] .. e .. ':' .. g .. ':' .. ARGV[2])
return {e, g, v or ''}
",
    )
});

static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('GET', ARGV[1] .. 'epoch') or '0'
local g = redis.call('GET', ARGV[1] .. 'gen:' .. ARGV[2]) or '0'
if e ~= ARGV[3] or g ~= ARGV[4] then return 0 end
redis.call('SET', ARGV[1] .. e .. ':' .. g .. ':' .. ARGV[2], ARGV[5], 'PX', ARGV[6])
redis.call('DEL', ARGV[1] .. 'lock:' .. ARGV[2])
return 1
",
    )
});

fn hex(key: u128) -> String {
    format!("{key:032x}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

impl LayeredRegion {
    /// The second level's answer under `key`, noting the (epoch, generation) seen on a miss.
    async fn get_shared(&self, key: u128) -> Result<Option<CachedValue>, Error> {
        let mut connection = self.redis.connection().await?;
        let found: Vec<Value> = GET
            .arg(&self.base)
            .arg(hex(key))
            .invoke_async(&mut connection)
            .await
            .map_err(redis_error)?;
        let [epoch, generation, value] =
            [0, 1, 2].map(|i| found.get(i).map(bytes).unwrap_or_default());
        if !value.is_empty() {
            return Ok(Some(CachedValue::Json(value)));
        }
        let seen = (
            String::from_utf8_lossy(&epoch).into_owned(),
            String::from_utf8_lossy(&generation).into_owned(),
        );
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, seen);
        Ok(None)
    }

    async fn store_shared(&self, key: CacheKey, json: Vec<u8>) -> Result<(), Error> {
        // Never looked up in the second level (or its lookup failed): the invalidations it
        // may have missed are unknown, so it is not stored there.
        let Some((epoch, generation)) = self
            .observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key.answer)
            .map(|(_, seen)| seen)
        else {
            return Ok(());
        };
        let mut connection = self.redis.connection().await?;
        STORE
            .arg(&self.base)
            .arg(hex(key.answer))
            .arg(epoch)
            .arg(generation)
            .arg(json)
            .arg(millis(self.ttl))
            .invoke_async::<i64>(&mut connection)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn count_up(&self, counter: String, expire: Option<Duration>) -> Result<(), Error> {
        let mut connection = self.redis.connection().await?;
        let mut pipe = redis::pipe();
        pipe.atomic().incr(&counter, 1).ignore();
        if let Some(expire) = expire {
            pipe.pexpire(&counter, millis(expire) as i64).ignore();
        }
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(redis_error)
    }

    async fn wait_for_others(&self, key: CacheKey) -> Result<Option<CachedValue>, Error> {
        let mut connection = self.redis.connection().await?;
        let lock = format!("{}lock:{}", self.base, hex(key.answer));
        let taken: Option<String> = redis::cmd("SET")
            .arg(&lock)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(millis(self.wait))
            .query_async(&mut connection)
            .await
            .map_err(redis_error)?;
        if taken.is_some() {
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut pause = Duration::from_millis(5);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
            if let Some(found) = self.get_shared(key.answer).await? {
                return Ok(Some(found));
            }
        }
        tracing::debug!(target: "cqrs::cache", key = %hex(key.answer), "another process did not answer in time; running the handler");
        Ok(None)
    }
}

impl CacheRegion for LayeredRegion {
    fn representation(&self) -> Representation {
        Representation::Layered
    }

    fn get(&self, key: u128) -> CacheFuture<'_, Option<CachedValue>> {
        // The first level answers without awaiting; only its misses go to Redis.
        if let CacheFuture::Ready(Some(Ok(Some(found)))) = self.first.get(key) {
            return CacheFuture::ready(Ok(Some(found)));
        }
        CacheFuture::Pending(Box::pin(self.get_shared(key)))
    }

    fn insert(&self, key: CacheKey, value: CachedValue) -> CacheFuture<'_, ()> {
        match value {
            CachedValue::Shared(value) => self.first.insert(key, CachedValue::Shared(value)),
            CachedValue::Layered(value, json) => {
                if let CacheFuture::Ready(Some(Err(error))) =
                    self.first.insert(key, CachedValue::Shared(value))
                {
                    return CacheFuture::ready(Err(error));
                }
                CacheFuture::Pending(Box::pin(self.store_shared(key, json)))
            }
            CachedValue::Json(_) => CacheFuture::ready(Err(Error::internal(
                "a two-level cache is given the answer and its JSON together",
            ))),
        }
    }

    fn before_compute(&self, key: CacheKey) -> CacheFuture<'_, Option<CachedValue>> {
        CacheFuture::Pending(Box::pin(self.wait_for_others(key)))
    }

    fn invalidate(&self, target: u128) -> CacheFuture<'_, ()> {
        self.first.drop_local(Some(target));
        let shared: BoxFuture<'_, Result<(), Error>> = if self.public {
            // Kept longer than any answer stored under the generation it replaces.
            let expire = self.ttl + Duration::from_secs(1);
            Box::pin(self.count_up(format!("{}gen:{}", self.base, hex(target)), Some(expire)))
        } else {
            Box::pin(self.count_up(format!("{}epoch", self.base), None))
        };
        CacheFuture::Pending(shared)
    }

    fn invalidate_all(&self) -> CacheFuture<'_, ()> {
        self.first.drop_local(None);
        CacheFuture::Pending(Box::pin(self.count_up(format!("{}epoch", self.base), None)))
    }

    fn drop_local(&self, target: Option<u128>) {
        self.first.drop_local(target);
    }
}

impl std::fmt::Debug for LayeredRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayeredRegion")
            .field("base", &self.base)
            .finish()
    }
}
