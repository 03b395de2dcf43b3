//! The cache layer of one query handler: lookups, single flight (concurrent misses for one key
//! run the handler once, the others wait for its answer), and the epoch rule (an answer computed
//! before an invalidation is never stored after it).

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use super::{
    CacheFuture, CacheKey, CacheRegion, CacheSpec, CachedValue, Invalidated, Representation,
    cache_key,
};
use crate::Error;
use crate::sync::{Mutex, Subscriber, once_channel};

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

/// What the full path needs from a cached query's types, behind `dyn`: how answers go in and
/// out of its output slot (`Option<Q::Output>`), and how a shared backend stores them.
pub(crate) trait Answers: Send + Sync {
    /// This, as what the cache needs to (de)serialize answers.
    fn codec(&self) -> &dyn AnswerCodec;
    /// Takes the output out of its slot, shared: what the cache hands around.
    fn share_output(&self, output: &mut (dyn Any + Send + Sync)) -> Result<Answer, Error>;
    /// Puts an answer in the output slot: moved out when nothing else holds it, cloned if the
    /// cache (or another caller) does.
    fn restore_output(
        &self,
        answer: Answer,
        output: &mut (dyn Any + Send + Sync),
    ) -> Result<(), Error>;
}

/// A computation in progress, and the invalidation epoch it started in.
struct InFlight {
    epoch: u64,
    answer: Subscriber<Result<Answer, Error>>,
}

/// The cache layer of one query handler.
///
/// Not generic over the query: answers go through it as [`Answer`]s and the key is hashed by
/// the spec's function, so this code is in a binary once, however many queries are cached.
pub(crate) struct CacheLayer {
    query: &'static str,
    spec: CacheSpec,
    region: Arc<Invalidated>,
    in_flight: Mutex<HashMap<u128, InFlight>>,
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

    /// Drops every answer (the loom models invalidate through the layer they run).
    #[cfg(all(loom, test))]
    pub(crate) fn invalidate(&self) -> CacheFuture<'_, ()> {
        self.region.invalidate_all()
    }

    /// The key of `query` (the message, `&Q`) asked by `principal`: the principal's id is part
    /// of it unless the spec is `public`.
    pub(crate) fn key(&self, query: &(dyn Any + Send + Sync), principal: Option<&str>) -> u128 {
        cache_key(|h| {
            (self.spec.key)(query, h);
            if !self.spec.public {
                // The id's length first (plus one; zero is the anonymous scope), so that no
                // principal's id and the query's own bytes can combine into another caller's
                // key. Two writes: each costs a SipHash round trip on the hit path.
                match principal {
                    None => h.write_u64(0),
                    Some(id) => {
                        h.write_u64(id.len() as u64 + 1);
                        h.write(id.as_bytes());
                    }
                }
            }
        })
    }

    /// Where the answer under `key` (see [`key`](Self::key)) to `query` is stored: the key and
    /// its target. Computed on a miss only: for a query kept per caller, the target is one more
    /// hash (of the `vary_by` fields alone).
    pub(crate) fn stored_under(&self, query: &(dyn Any + Send + Sync), key: u128) -> CacheKey {
        let target = if self.spec.public {
            key
        } else {
            self.region.target_of(query)
        };
        CacheKey {
            answer: key,
            target,
        }
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

    /// What a lookup found, undecoded (a failed lookup is a miss, logged).
    async fn lookup_found(&self, key: u128) -> Option<CachedValue> {
        match self.region.get(key).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(target: "cqrs", query = self.query, %error, "cache lookup failed; running the handler");
                None
            }
        }
    }

    /// Another process's answer, when a shared level waited for one (see
    /// [`CacheRegion::before_compute`]).
    async fn elsewhere(&self, key: CacheKey) -> Option<CachedValue> {
        match self.region.before_compute(key).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(target: "cqrs", query = self.query, %error, "cache unavailable; running the handler");
                None
            }
        }
    }

    /// What was found, decoded; an answer from the shared level is kept in the first level.
    async fn answer(
        &self,
        codec: &dyn AnswerCodec,
        stored: CacheKey,
        found: Option<CachedValue>,
        epoch: u64,
    ) -> Option<Answer> {
        let found = found?;
        let from_shared = matches!(found, CachedValue::Json(_));
        let hit = self.found(codec, Ok(Some(found)))?;
        if from_shared {
            self.promote(stored, &hit, epoch).await;
        }
        Some(hit)
    }

    /// Keeps in the first level an answer the shared level had (decoded once here, not on
    /// every hit), unless invalidated since the lookup began.
    async fn promote(&self, key: CacheKey, answer: &Answer, epoch: u64) {
        if self.region.representation() != Representation::Layered || self.region.epoch() != epoch {
            return;
        }
        if let Err(error) = self
            .region
            .insert(key, CachedValue::Shared(answer.clone()))
            .await
        {
            tracing::warn!(target: "cqrs", query = self.query, %error, "cache insert failed");
        }
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
            CachedValue::Shared(value) | CachedValue::Layered(value, _) => Some(value),
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
    async fn store(&self, codec: &dyn AnswerCodec, key: CacheKey, answer: &Answer, epoch: u64) {
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
            Representation::Layered => match codec.encode(&**answer) {
                Ok(bytes) => CachedValue::Layered(answer.clone(), bytes),
                Err(error) => {
                    tracing::warn!(target: "cqrs", query = self.query, %error, "answer does not serialize; cached in this process only");
                    CachedValue::Shared(answer.clone())
                }
            },
        };
        let Some(insert) = self.region.insert_in(epoch, key, value) else {
            return;
        };
        if let Err(error) = insert.await {
            tracing::warn!(target: "cqrs", query = self.query, %error, "cache insert failed");
        }
        // A remote insert that finished after an invalidation: drop what may be a stale answer.
        if self.region.epoch() != epoch
            && let Err(error) = self.region.invalidate(key.target).await
        {
            tracing::warn!(target: "cqrs", query = self.query, %error, "cache invalidation failed");
        }
    }

    /// Answers from the cache under `stored` (see [`stored_under`](Self::stored_under)), or
    /// runs `compute` once for all concurrent callers with this key. `looked`: the caller has
    /// just looked the key up (with [`peek`](Self::peek)) and missed, so the first lookup is
    /// skipped.
    pub(crate) async fn run<F, Fut>(
        &self,
        codec: &dyn AnswerCodec,
        stored: CacheKey,
        looked: bool,
        cache_hit: &mut bool,
        compute: F,
    ) -> Result<Answer, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Answer, Error>>,
    {
        let key = stored.answer;
        if !looked {
            let epoch = self.region.epoch();
            let found = self.lookup_found(key).await;
            if let Some(hit) = self.answer(codec, stored, found, epoch).await {
                *cache_hit = true;
                return Ok(hit);
            }
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
                        let (sender, answer) = once_channel();
                        in_flight.insert(key, InFlight { epoch, answer });
                        Ok(sender)
                    }
                }
            };
            match role {
                Ok(sender) => {
                    let _landing = InFlightGuard {
                        layer: self,
                        key,
                        epoch,
                    };
                    // Another leader may have stored the answer between our miss and our claim;
                    // another process may be computing it (a shared level waits for it).
                    let found = match self.lookup_found(key).await {
                        Some(found) => Some(found),
                        None => self.elsewhere(stored).await,
                    };
                    if let Some(hit) = self.answer(codec, stored, found, epoch).await {
                        *cache_hit = true;
                        sender.publish(Ok(hit.clone()));
                        return Ok(hit);
                    }
                    let Some(compute) = compute.take() else {
                        return Err(Error::internal("single-flight leader ran twice"));
                    };
                    let result = compute().await;
                    if let Ok(answer) = &result {
                        self.store(codec, stored, answer, epoch).await;
                    }
                    sender.publish(result.clone());
                    return result;
                }
                Err(mut flight) => {
                    // Wait for the leader; if it is dropped (cancelled, timed out) without an
                    // answer, take over.
                    if let Some(result) = flight.wait().await {
                        *cache_hit = result.is_ok();
                        return result;
                    }
                }
            }
        }
    }
}

/// Removes the in-flight entry when the leader finishes or is dropped (unless a leader of a
/// later epoch has replaced it).
struct InFlightGuard<'a> {
    layer: &'a CacheLayer,
    key: u128,
    epoch: u64,
}

impl Drop for InFlightGuard<'_> {
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

#[cfg(test)]
mod tests {
    use super::super::{MemoryCache, QueryCache, hash_whole};
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

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
            Invalidated::new(MemoryCache.region("Q", &spec), spec),
        ))
    }

    fn stored(l: &CacheLayer, q: u32) -> CacheKey {
        l.stored_under(&Q(q), l.key(&Q(q), None))
    }

    async fn run(
        l: &CacheLayer,
        q: u32,
        hit: &mut bool,
        answer: Result<Option<u32>, Error>,
    ) -> Result<Option<u32>, Error> {
        let answer = l
            .run(&Codec, stored(l, q), false, hit, || async move {
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
        l.region.invalidate_all().await.unwrap();
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
                    .run(&Codec, stored(&l, 7), false, &mut hit, || async {
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
