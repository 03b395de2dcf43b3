//! The in-process cache backend, the bus's default.

use std::any::Any;
use std::hash::Hasher;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use coarsetime::Instant;

use super::{CacheFuture, CacheRegion, CacheSpec, CachedValue, QueryCache, Representation};
use crate::Error;

/// The in-process [`QueryCache`], on `quick_cache` (S3-FIFO: scan resistant, frequently read
/// answers stay), bounded by `max_entries` per region. It is the bus's default.
///
/// Why `quick_cache` rather than `moka`: both are maintained and widely used, but a `moka` hit
/// logs the read for its LRU policy and runs pending housekeeping, about 800 instructions; a
/// `quick_cache` hit is a lookup and one atomic, and no background work. What `quick_cache`
/// lacks is per-entry expiry: each answer is stored with the instant it expires, and a lookup
/// past it drops the entry and misses. An expired answer nobody asks for again stays until
/// evicted (`max_entries` bounds the memory either way).
///
/// The shards are `quick_cache`'s single-threaded caches behind read-write locks (its
/// concurrent cache is the same, but hands out clones only): a hit reads under the read lock
/// and clones the answer itself, not a shared handle to it, which saves two atomic operations
/// (an `Arc` increment and decrement), about 20 ns on the benchmark machine.
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
struct Entry {
    expires: Instant,
    value: Arc<dyn Any + Send + Sync>,
}

/// One shard: `quick_cache`'s single-threaded cache (its S3-FIFO policy and bound) behind a
/// read-write lock. A hit takes the read lock: `quick_cache`'s lookup needs only `&self` (it
/// marks the entry with an atomic), so readers do not wait for one another, and the answer is
/// lent to the caller under the lock instead of shared out of it (see [`CacheRegion::read`]).
type Shard = quick_cache::unsync::Cache<
    u128,
    Entry,
    quick_cache::UnitWeighter,
    KeyIsAHash,
    quick_cache::sync::DefaultLifecycle<u128, Entry>,
>;

struct MemoryRegion {
    ttl: coarsetime::Duration,
    shards: Box<[RwLock<Shard>]>,
    /// `64 - log2(shards.len())`: the shard is the top bits of a multiplicative hash of the key.
    shift: u32,
}

impl MemoryRegion {
    fn new(spec: &CacheSpec) -> Self {
        let capacity = spec.max_entries.max(1);
        // Four shards per core, as `quick_cache::sync` has, but no fewer than 32 answers each,
        // so that a small cache keeps its eviction policy.
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let mut shards = (cores * 4).next_power_of_two() as u64;
        while shards > 1 && capacity / shards < 32 {
            shards /= 2;
        }
        let per_shard = capacity.div_ceil(shards);
        let shards: Box<[RwLock<Shard>]> = (0..shards)
            .map(|_| {
                RwLock::new(Shard::with(
                    usize::try_from(per_shard).unwrap_or(usize::MAX),
                    per_shard,
                    quick_cache::UnitWeighter,
                    KeyIsAHash,
                    quick_cache::sync::DefaultLifecycle::default(),
                ))
            })
            .collect();
        MemoryRegion {
            ttl: coarsetime::Duration::from(spec.ttl),
            shift: 64 - shards.len().trailing_zeros(),
            shards,
        }
    }

    fn shard(&self, key: u128) -> &RwLock<Shard> {
        // Fibonacci hashing of the folded key: its top bits pick the shard, independent of the
        // low bits `hashbrown` indexes by inside it (and spread even for small test keys).
        let folded = (key as u64) ^ ((key >> 64) as u64);
        let index = folded
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .checked_shr(self.shift);
        &self.shards[index.unwrap_or(0) as usize]
    }

    /// Drops the answer under `key` if it has expired (another caller may have replaced it
    /// between the read lock and this one).
    fn drop_expired(&self, key: u128) {
        let mut shard = write(self.shard(key));
        if shard
            .peek(&key)
            .is_some_and(|e| e.expires <= Instant::now())
        {
            shard.remove(&key);
        }
    }
}

/// The locks are never held across user code that could leave a shard half-changed (a panic in
/// a lent answer's `clone` happens under the read lock): a poisoned lock is used as it is.
fn read(lock: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(lock: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
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
        Arc::new(MemoryRegion::new(spec))
    }
}

impl CacheRegion for MemoryRegion {
    fn representation(&self) -> Representation {
        Representation::Shared
    }
    fn get(&self, key: u128) -> CacheFuture<'_, Option<CachedValue>> {
        let found = {
            let shard = read(self.shard(key));
            match shard.get(&key) {
                Some(entry) if entry.expires > Instant::now() => {
                    Some(Some(CachedValue::Shared(entry.value.clone())))
                }
                Some(_) => None,
                None => Some(None),
            }
        };
        let found = found.unwrap_or_else(|| {
            self.drop_expired(key);
            None
        });
        CacheFuture::ready(Ok(found))
    }
    fn read(
        &self,
        key: u128,
        read_answer: &mut dyn FnMut(&(dyn Any + Send + Sync)),
    ) -> Option<bool> {
        {
            let shard = read(self.shard(key));
            match shard.get(&key) {
                Some(entry) if entry.expires > Instant::now() => {
                    read_answer(&*entry.value);
                    return Some(true);
                }
                Some(_) => {}
                None => return Some(false),
            }
        }
        self.drop_expired(key);
        Some(false)
    }
    fn insert(&self, key: u128, value: CachedValue) -> CacheFuture<'_, ()> {
        match value {
            CachedValue::Shared(value) => {
                let expires = Instant::now() + self.ttl;
                write(self.shard(key)).insert(key, Entry { expires, value });
                CacheFuture::ready(Ok(()))
            }
            CachedValue::Json(_) => CacheFuture::ready(Err(Error::internal(
                "the in-process cache stores values, not JSON",
            ))),
        }
    }
    fn invalidate_all(&self) -> CacheFuture<'_, ()> {
        for shard in &self.shards {
            write(shard).clear();
        }
        CacheFuture::ready(Ok(()))
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
    async fn answers_are_lent_until_they_expire() {
        let spec = CacheSpec::new(Duration::from_millis(30), hash_whole::<Q>, |_| false);
        let region = MemoryCache.region("Q", &spec);
        let key = 7u128 << 64 | 3;
        let mut seen = None;
        assert_eq!(region.read(key, &mut |_| unreachable!()), Some(false));
        region
            .insert(key, CachedValue::Shared(Arc::new(String::from("answer"))))
            .await
            .unwrap();
        let lent = region.read(key, &mut |v| seen = v.downcast_ref::<String>().cloned());
        assert_eq!((lent, seen.as_deref()), (Some(true), Some("answer")));

        // Past the ttl (and the coarse clock's few milliseconds): neither lent nor shared.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(region.read(key, &mut |_| unreachable!()), Some(false));
        assert!(region.get(key).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_memory_cache_keeps_at_most_max_entries() {
        let spec =
            CacheSpec::new(Duration::from_secs(60), hash_whole::<Q>, |_| false).max_entries(50);
        let region = MemoryCache.region("Q", &spec);
        for key in 0..1_000u128 {
            region
                .insert(key, CachedValue::Shared(Arc::new(key)))
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
