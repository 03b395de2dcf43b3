//! The in-process cache backend, the bus's default.

use std::any::Any;
use std::hash::Hasher;
use std::sync::Arc;

use coarsetime::Instant;

use super::{
    CacheFuture, CacheKey, CacheRegion, CacheSpec, CachedValue, QueryCache, Representation,
};
use crate::Error;

/// The in-process [`QueryCache`], on `quick_cache` (S3-FIFO: scan resistant, frequently read
/// answers stay), bounded by `max_entries` per region. It is the bus's default.
///
/// Why `quick_cache` rather than `moka`: both are maintained and widely used, but a `moka` hit
/// logs the read for its LRU policy and runs pending housekeeping, about 800 instructions; a
/// `quick_cache` hit is a read lock on one shard and one atomic, and no background work. What
/// `quick_cache` lacks is per-entry expiry: each answer is stored with the instant it expires,
/// and a lookup past it drops the entry and misses. An expired answer nobody asks for again
/// stays until evicted (`max_entries` bounds the memory either way).
///
/// Expiry is read on a coarse clock (`coarsetime`: `CLOCK_MONOTONIC_COARSE` on Linux, ticking
/// every few milliseconds), so an answer may outlive its `ttl` by that much. Reading
/// `std::time::Instant` took 38 ns on the benchmark machine, a third of what the rest of a hit
/// costs; the coarse clock takes 11.
#[derive(Debug, Clone, Default)]
pub struct MemoryCache;

impl MemoryCache {
    /// The in-process cache.
    pub fn new() -> Self {
        MemoryCache
    }
}

/// An answer and when it expires.
#[derive(Clone)]
struct Entry {
    expires: Instant,
    /// See [`CacheKey::target`].
    target: u128,
    value: Arc<dyn Any + Send + Sync>,
}

struct MemoryRegion {
    ttl: coarsetime::Duration,
    /// Whether keys are targets (a `public` query): a targeted invalidation is then one removal
    /// rather than a pass over the region.
    public: bool,
    entries: quick_cache::sync::Cache<
        u128,
        Entry,
        quick_cache::UnitWeighter,
        KeyIsAHash,
        quick_cache::sync::DefaultLifecycle<u128, Entry>,
    >,
}

/// The keys are already SipHash outputs: hash them again with nothing more than a fold.
#[derive(Clone, Default)]
struct KeyIsAHash;

impl std::hash::BuildHasher for KeyIsAHash {
    type Hasher = FoldHasher;
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher(0)
    }
}

struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 ^= (value as u64) ^ ((value >> 64) as u64);
    }
}

impl QueryCache for MemoryCache {
    fn region(&self, _query: &'static str, spec: &CacheSpec) -> Arc<dyn CacheRegion> {
        let capacity = spec.max_entries.max(1);
        Arc::new(MemoryRegion {
            ttl: coarsetime::Duration::from(spec.ttl),
            public: spec.public,
            entries: quick_cache::sync::Cache::with(
                usize::try_from(capacity).unwrap_or(usize::MAX),
                capacity,
                quick_cache::UnitWeighter,
                KeyIsAHash,
                quick_cache::sync::DefaultLifecycle::default(),
            ),
        })
    }
}

impl CacheRegion for MemoryRegion {
    fn representation(&self) -> Representation {
        Representation::Shared
    }
    fn get(&self, key: u128) -> CacheFuture<'_, Option<CachedValue>> {
        let found = match self.entries.get(&key) {
            Some(entry) if entry.expires > Instant::now() => Some(CachedValue::Shared(entry.value)),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        };
        CacheFuture::ready(Ok(found))
    }
    fn insert(&self, key: CacheKey, value: CachedValue) -> CacheFuture<'_, ()> {
        match value {
            CachedValue::Shared(value) => {
                let expires = Instant::now() + self.ttl;
                let target = key.target;
                let entry = Entry {
                    expires,
                    target,
                    value,
                };
                self.entries.insert(key.answer, entry);
                CacheFuture::ready(Ok(()))
            }
            CachedValue::Json(_) | CachedValue::Layered(..) => CacheFuture::ready(Err(
                Error::internal("the in-process cache stores values, not JSON"),
            )),
        }
    }
    fn invalidate(&self, target: u128) -> CacheFuture<'_, ()> {
        if self.public {
            self.entries.remove(&target);
        } else {
            // Every caller's answer for this target: a pass over at most `max_entries`, on an
            // invalidation (rare next to hits, which stay one lookup).
            self.entries.retain(|_, entry| entry.target != target);
        }
        CacheFuture::ready(Ok(()))
    }
    fn invalidate_all(&self) -> CacheFuture<'_, ()> {
        self.entries.clear();
        CacheFuture::ready(Ok(()))
    }
    fn drop_local(&self, target: Option<u128>) {
        match target {
            Some(target) => drop(self.invalidate(target)),
            None => self.entries.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::hash_whole;
    use super::*;

    #[derive(Clone, Hash)]
    struct Q(u32);

    #[tokio::test]
    async fn the_memory_cache_keeps_at_most_max_entries() {
        let spec =
            CacheSpec::new(Duration::from_secs(60), hash_whole::<Q>, |_| false).max_entries(50);
        let region = MemoryCache.region("Q", &spec);
        for key in 0..1_000u128 {
            let key_of = CacheKey {
                answer: key,
                target: key,
            };
            region
                .insert(key_of, CachedValue::Shared(Arc::new(key)))
                .await
                .unwrap();
        }
        let mut kept = 0;
        for key in 0..1_000u128 {
            if let Some(CachedValue::Shared(value)) = region.get(key).await.unwrap() {
                assert_eq!(value.downcast_ref::<u128>(), Some(&key));
                kept += 1;
            }
        }
        // The bound is approximate (per shard), but nowhere near the 1,000 inserted.
        assert!(
            (1..=60).contains(&kept),
            "kept {kept} answers with max_entries = 50"
        );
    }
}
