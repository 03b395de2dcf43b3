//! Loom models of the idempotency layer over the in-memory store, run by
//! `RUSTFLAGS="--cfg loom" cargo test -p cqrs-core --release --lib loom` (see DEVELOPERS.md).
//!
//! Each model sends one command with one key from several loom threads through the real
//! [`IdempotencyLayer::run`] and [`MemoryIdempotencyStore`] (its lock is loom's through
//! `crate::sync`; a send that finds the key held pauses with `crate::sync::sleep`, a loom
//! yield, and asks again).
//!
//! What the models prove, for every interleaving of two sends:
//! - **one execution per key**: concurrent sends run the command once; the others get its
//!   stored reply;
//! - **a failed execution frees the key, and never overlaps another**: when the first execution
//!   fails, a concurrent send runs the command itself (or the failing sender gets the reply of
//!   the one that succeeded), and no two executions of the key are ever under way at once.
//!
//! What they do not cover: more senders, lease expiry (a claim outlives the model), the release that a
//! dropped execution spawns on the tokio runtime (there is none under loom), and the SQL and
//! Redis stores, whose claim is one statement in the database.

use std::sync::Arc;

use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::thread;

use super::{
    DEFAULT_LEASE, DEFAULT_TTL, IdempotencyKey, IdempotencyLayer, MemoryIdempotencyStore, Outcome,
    fingerprint,
};
use crate::Error;

/// Counts executions, and how many are under way at once.
#[derive(Default)]
struct Executions {
    running: AtomicUsize,
    started: AtomicUsize,
}

fn layer() -> Arc<IdempotencyLayer> {
    Arc::new(IdempotencyLayer {
        store: Arc::new(MemoryIdempotencyStore::new()),
        ttl: DEFAULT_TTL,
        lease: DEFAULT_LEASE,
    })
}

fn key(layer: &IdempotencyLayer) -> IdempotencyKey {
    layer.key("PlaceOrder", None, "k", fingerprint(&1u32).unwrap(), None)
}

/// Sends the command; its execution answers 7, or fails when `fails`.
fn send(
    layer: &IdempotencyLayer,
    executions: &Executions,
    fails: bool,
) -> Result<Outcome<u32>, Error> {
    let key = key(layer);
    loom::future::block_on(layer.run(&key, || async {
        let others = executions.running.fetch_add(1, SeqCst);
        executions.started.fetch_add(1, SeqCst);
        executions.running.fetch_sub(1, SeqCst);
        assert_eq!(others, 0, "two executions of one key at once");
        if fails {
            Err(Error::unavailable("the database went away"))
        } else {
            Ok((7, Ok(b"7".to_vec())))
        }
    }))
}

#[test]
fn loom_concurrent_sends_run_the_command_once() {
    loom::model(|| {
        let layer = layer();
        let executions = Arc::new(Executions::default());
        let other = {
            let (layer, executions) = (layer.clone(), executions.clone());
            thread::spawn(move || send(&layer, &executions, false))
        };
        let outcomes = [
            send(&layer, &executions, false).unwrap(),
            other.join().unwrap().unwrap(),
        ];
        assert_eq!(executions.started.load(SeqCst), 1, "the command ran twice");
        let executed = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Executed(7)))
            .count();
        let replayed = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Replayed(reply) if reply == b"7"))
            .count();
        assert_eq!((executed, replayed), (1, 1));
    });
}

#[test]
fn loom_a_failed_execution_frees_the_key() {
    loom::model(|| {
        let layer = layer();
        let executions = Arc::new(Executions::default());
        let failing = {
            let (layer, executions) = (layer.clone(), executions.clone());
            thread::spawn(move || send(&layer, &executions, true))
        };
        // The only execution that can succeed is this one, so this send must run it: a
        // failed execution before it released the key, or it ran first.
        let mine = send(&layer, &executions, false).unwrap();
        assert!(matches!(mine, Outcome::Executed(7)));
        match failing.join().unwrap() {
            // It ran, and failed.
            Err(error) => assert_eq!(error.status(), crate::Status::Unavailable),
            // It came after the successful execution.
            Ok(outcome) => assert!(matches!(outcome, Outcome::Replayed(reply) if reply == b"7")),
        }
        let started = executions.started.load(SeqCst);
        assert!((1..=2).contains(&started));
    });
}
