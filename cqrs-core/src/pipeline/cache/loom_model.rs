//! Loom models of the single-flight cache (`layer.rs`), run by
//! `RUSTFLAGS="--cfg loom" cargo test -p cqrs-core --release --lib loom` (see DEVELOPERS.md).
//!
//! Each model runs the real [`CacheLayer::run`] on loom threads (`loom::future::block_on`), over
//! a region whose entries sit behind a loom `Mutex`, so that every lookup, insert and clear is
//! a point where loom may switch threads; the in-flight table, the epoch and the leader's
//! channel are loom's through `crate::sync`. The region stands for any backend whose get,
//! insert and clear are each atomic (the in-process one is: one `quick_cache` call each).
//!
//! What the models prove, for every interleaving of two threads (of three, up to five
//! preemptions, for the dropped leader with two waiters):
//! - **one computation per key**: concurrent misses on one key run the handler once, and every
//!   caller gets its answer;
//! - **no lost wake-up**: a caller waiting for a leader always returns, whether the leader
//!   answers or is dropped halfway (cancelled, timed out), in which case one waiter takes over
//!   and the others wait for it;
//! - **no answer stored across an invalidation**: an answer computed from data read before an
//!   invalidation is not in the cache once the invalidation and the computation are done, and a
//!   caller who asks after an invalidation gets an answer computed after it.
//!
//! The last holds in process only: with a backend whose insert completes after the call (a
//! remote one, modelled by a region that inserts when its future is polled), a stale answer can
//! be read between its insert and the leader's re-check of the epoch, which then clears it.
//!
//! What they do not cover: more callers than these, expiry and eviction (the region keeps
//! everything), backends whose operations are not atomic, invalidations from other processes (a
//! shared backend's epoch is per process), and a waiter cancelled while it waits (see
//! `crate::sync`).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::thread;

use super::{
    Answer, AnswerCodec, CacheFuture, CacheKey, CacheLayer, CacheRegion, CacheSpec, CachedValue,
    Invalidated, Representation,
};
use crate::Error;
use crate::sync::Mutex;

const KEY: CacheKey = CacheKey {
    answer: 42,
    target: 42,
};

/// A region whose every operation is one step of the model. `deferred`: inserts happen when
/// their future is polled, as a remote backend's do (after the layer's epoch check, and outside
/// the lock that orders stores and invalidations); otherwise when called, as in process.
struct Region {
    entries: Arc<Mutex<HashMap<u128, Answer>>>,
    deferred: bool,
}

impl CacheRegion for Region {
    fn representation(&self) -> Representation {
        Representation::Shared
    }
    fn get(&self, key: u128) -> CacheFuture<'_, Option<CachedValue>> {
        let entries = self.entries.lock().unwrap();
        CacheFuture::ready(Ok(entries.get(&key).cloned().map(CachedValue::Shared)))
    }
    fn insert(&self, key: CacheKey, value: CachedValue) -> CacheFuture<'_, ()> {
        let key = key.answer;
        let CachedValue::Shared(value) = value else {
            unreachable!("the layer stores in the region's representation")
        };
        if self.deferred {
            let entries = self.entries.clone();
            return CacheFuture::Pending(Box::pin(async move {
                entries.lock().unwrap().insert(key, value);
                Ok(())
            }));
        }
        self.entries.lock().unwrap().insert(key, value);
        CacheFuture::ready(Ok(()))
    }
    fn invalidate(&self, _target: u128) -> CacheFuture<'_, ()> {
        // One key in the model: its target is every answer.
        self.invalidate_all()
    }
    fn invalidate_all(&self) -> CacheFuture<'_, ()> {
        self.entries.lock().unwrap().clear();
        CacheFuture::ready(Ok(()))
    }
    fn drop_local(&self, _target: Option<u128>) {
        self.entries.lock().unwrap().clear();
    }
}

/// Never used: the region stores answers, not JSON.
struct Codec;

impl AnswerCodec for Codec {
    fn encode(&self, _: &(dyn Any + Send + Sync)) -> Result<Vec<u8>, Error> {
        unreachable!("the model's region stores answers")
    }
    fn decode(&self, _: &[u8]) -> Result<Answer, Error> {
        unreachable!("the model's region stores answers")
    }
}

fn layer_over(deferred: bool) -> Arc<CacheLayer> {
    let spec = CacheSpec::new(Duration::from_secs(60), |_, _| {}, |_| false);
    let region = Arc::new(Region {
        entries: Arc::new(Mutex::new(HashMap::new())),
        deferred,
    });
    Arc::new(CacheLayer::new("Q", spec, Invalidated::new(region, spec)))
}

/// A layer over an in-process region.
fn layer() -> Arc<CacheLayer> {
    layer_over(false)
}

fn value(answer: &Answer) -> usize {
    *answer.downcast_ref::<usize>().expect("answers are usize")
}

/// Asks for `KEY`, with `compute` as the handler: the answer, and whether it was a cache hit
/// (or another caller's computation).
fn ask(layer: &CacheLayer, compute: impl FnOnce() -> usize) -> (usize, bool) {
    let mut hit = false;
    let answer = loom::future::block_on(layer.run(&Codec, KEY, false, &mut hit, || async {
        Ok(Arc::new(compute()) as Answer)
    }))
    .expect("the handler does not fail");
    (value(&answer), hit)
}

/// What the cache holds under `KEY`.
fn cached(layer: &CacheLayer) -> Option<usize> {
    let found = layer
        .peek(&Codec, KEY.answer)
        .expect("the model's region answers without awaiting");
    found.map(|answer| value(&answer))
}

#[test]
fn loom_concurrent_misses_run_the_handler_once() {
    loom::model(|| {
        let layer = layer();
        let runs = Arc::new(AtomicUsize::new(0));
        let other = {
            let (layer, runs) = (layer.clone(), runs.clone());
            thread::spawn(move || {
                ask(&layer, || {
                    runs.fetch_add(1, SeqCst);
                    7
                })
            })
        };
        let (mine, _) = ask(&layer, || {
            runs.fetch_add(1, SeqCst);
            7
        });
        let (theirs, _) = other.join().unwrap();
        assert_eq!((mine, theirs), (7, 7));
        assert_eq!(runs.load(SeqCst), 1, "the handler ran more than once");
        assert_eq!(cached(&layer), Some(7));
    });
}

#[test]
fn loom_a_waiter_takes_over_from_a_dropped_leader() {
    loom::model(|| {
        let layer = layer();
        let cancelled = {
            let layer = layer.clone();
            thread::spawn(move || {
                let mut hit = false;
                // A handler that never finishes: polled once, then dropped, as a timeout or a
                // caller that went away drops it.
                let mut run = pin!(layer.run(&Codec, KEY, false, &mut hit, || {
                    std::future::pending::<Result<Answer, Error>>()
                }));
                match run.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                    // It led; its handler is still running.
                    Poll::Pending => {}
                    // It waited for the other caller, or found its stored answer.
                    Poll::Ready(answer) => assert_eq!(value(&answer.unwrap()), 7),
                }
            })
        };
        let (answer, _) = ask(&layer, || 7);
        assert_eq!(answer, 7);
        cancelled.join().unwrap();
    });
}

#[test]
fn loom_no_answer_is_stored_across_an_invalidation() {
    no_answer_is_stored_across_an_invalidation(false);
}

#[test]
fn loom_no_answer_is_stored_across_an_invalidation_by_a_remote_backend() {
    no_answer_is_stored_across_an_invalidation(true);
}

fn no_answer_is_stored_across_an_invalidation(deferred: bool) {
    loom::model(move || {
        let layer = layer_over(deferred);
        let data = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (layer, data) = (layer.clone(), data.clone());
            thread::spawn(move || ask(&layer, || data.load(SeqCst)))
        };
        // A command changes the data, then invalidates the query's answers.
        data.store(1, SeqCst);
        loom::future::block_on(layer.invalidate()).unwrap();
        reader.join().unwrap();
        if let Some(answer) = cached(&layer) {
            assert_eq!(
                answer, 1,
                "an answer computed before the invalidation stayed cached"
            );
        }
    });
}

/// In process only: with a remote backend, an insert that lands after an invalidation is
/// readable until the leader that made it checks the epoch again and clears the region.
#[test]
fn loom_a_caller_after_an_invalidation_gets_a_fresh_answer() {
    loom::model(|| {
        let layer = layer();
        let data = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (layer, data) = (layer.clone(), data.clone());
            thread::spawn(move || ask(&layer, || data.load(SeqCst)))
        };
        data.store(1, SeqCst);
        loom::future::block_on(layer.invalidate()).unwrap();
        // Asked after the invalidation: neither a stored answer nor a computation from before
        // it may answer.
        let (answer, _) = ask(&layer, || data.load(SeqCst));
        assert_eq!(
            answer, 1,
            "a caller after the invalidation got an answer from before it"
        );
        reader.join().unwrap();
    });
}

/// Three threads: explored up to five preemptions (a few seconds; every interleaving takes a
/// quarter of an hour), unless `LOOM_MAX_PREEMPTIONS` says otherwise.
#[test]
fn loom_two_waiters_of_a_dropped_leader_run_the_handler_once() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = model.preemption_bound.or(Some(5));
    model.check(|| {
        let layer = layer();
        let runs = Arc::new(AtomicUsize::new(0));
        let cancelled = {
            let layer = layer.clone();
            thread::spawn(move || {
                let mut hit = false;
                let mut run = pin!(layer.run(&Codec, KEY, false, &mut hit, || {
                    std::future::pending::<Result<Answer, Error>>()
                }));
                let _ = run.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            })
        };
        let other = {
            let (layer, runs) = (layer.clone(), runs.clone());
            thread::spawn(move || {
                ask(&layer, || {
                    runs.fetch_add(1, SeqCst);
                    7
                })
            })
        };
        let (mine, _) = ask(&layer, || {
            runs.fetch_add(1, SeqCst);
            7
        });
        assert_eq!((mine, other.join().unwrap().0), (7, 7));
        cancelled.join().unwrap();
        assert_eq!(runs.load(SeqCst), 1, "the handler ran more than once");
    });
}
