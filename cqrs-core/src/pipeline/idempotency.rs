//! Layer 6: commands sent with an idempotency key run at most once per key.
//!
//! A key belongs to its caller and its command: the store is asked for (command, principal id,
//! key), anonymous callers sharing one scope. So bob reusing the key alice sent, with the same
//! body, runs his own command instead of receiving her reply, and a key reused for another
//! command is another key.
//!
//! The first send with a key claims it in the [`IdempotencyStore`], runs the inner layers, and
//! stores the reply if they succeed (a failure releases the claim, so the key can be tried
//! again). A repeat with the same key and the same payload gets the stored reply without running
//! the handler (and without emitting events again); the same key with another payload is a
//! `Conflict`. A send that finds the key claimed by one still running waits for its reply.
//! The payload's fingerprint is a 128-bit SipHash of its JSON form. Keys expire after the bus's
//! idempotency TTL (24 hours unless configured).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::Error;
use crate::sync::Mutex;

/// The default time a stored reply is kept.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The default time a claim protects a running execution before another sender may take over
/// (when the first one crashed).
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// One idempotency key, as the store sees it: a store keeps one entry per
/// ([`scope`](Self::scope), [`caller`](Self::caller), [`key`](Self::key)).
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The command's name: keys are scoped by command.
    pub scope: &'static str,
    /// The id of the principal that sent the command (`None`: an anonymous caller). Keys are
    /// scoped by caller: one caller's key never answers another.
    pub principal: Option<String>,
    /// The key the caller gave.
    pub key: String,
    /// The fingerprint of the payload (32 hex digits).
    pub fingerprint: String,
    /// How long a stored reply is kept.
    pub ttl: Duration,
    /// How long a claim lasts without a reply.
    pub lease: Duration,
}

impl IdempotencyKey {
    /// The caller as one string a store can key on: `anonymous`, or `principal:` followed by
    /// the principal's id (so no principal's id can be mistaken for the anonymous scope).
    pub fn caller(&self) -> String {
        match &self.principal {
            None => "anonymous".to_owned(),
            Some(id) => format!("principal:{id}"),
        }
    }
}

/// What a store found when asked to claim a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free; the caller now holds it and must complete or release it.
    Acquired,
    /// A reply is stored.
    Completed {
        /// The fingerprint of the payload that produced it.
        fingerprint: String,
        /// The reply, as JSON.
        reply: Vec<u8>,
    },
    /// Another execution holds the key.
    InProgress {
        /// The fingerprint of its payload.
        fingerprint: String,
    },
}

/// Where idempotency keys and replies are kept: [`MemoryIdempotencyStore`] by default, the
/// database with the `sqlite` and `postgres` features.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims the key for one execution, or reports what holds it.
    fn claim(&self, key: &IdempotencyKey) -> impl Future<Output = Result<Claim, Error>> + Send;
    /// Stores the reply of the execution that holds the claim.
    fn complete(
        &self,
        key: &IdempotencyKey,
        reply: &[u8],
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Gives up a claim whose execution failed, so the key can be used again.
    fn release(&self, key: &IdempotencyKey) -> impl Future<Output = Result<(), Error>> + Send;
}

pub(crate) trait DynIdempotencyStore: Send + Sync {
    fn claim_dyn<'a>(&'a self, key: &'a IdempotencyKey) -> BoxFuture<'a, Result<Claim, Error>>;
    fn complete_dyn<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        reply: &'a [u8],
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn release_dyn<'a>(&'a self, key: &'a IdempotencyKey) -> BoxFuture<'a, Result<(), Error>>;
}

impl<S: IdempotencyStore> DynIdempotencyStore for S {
    fn claim_dyn<'a>(&'a self, key: &'a IdempotencyKey) -> BoxFuture<'a, Result<Claim, Error>> {
        Box::pin(self.claim(key))
    }
    fn complete_dyn<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        reply: &'a [u8],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.complete(key, reply))
    }
    fn release_dyn<'a>(&'a self, key: &'a IdempotencyKey) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.release(key))
    }
}

/// The in-process [`IdempotencyStore`]: keys live as long as the process (and their TTL).
#[derive(Default)]
pub struct MemoryIdempotencyStore {
    entries: Mutex<MemoryEntries>,
}

#[derive(Default)]
struct MemoryEntries {
    map: HashMap<MemoryId, MemoryEntry>,
    claims_since_sweep: usize,
}

/// (command, principal id, key).
type MemoryId = (&'static str, Option<String>, String);

fn memory_id(key: &IdempotencyKey) -> MemoryId {
    (key.scope, key.principal.clone(), key.key.clone())
}

struct MemoryEntry {
    fingerprint: String,
    reply: Option<Vec<u8>>,
    expires: Instant,
}

impl MemoryIdempotencyStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryIdempotencyStore::default()
    }
}

impl fmt::Debug for MemoryIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.entries.lock().map(|e| e.map.len()).unwrap_or(0);
        f.debug_struct("MemoryIdempotencyStore")
            .field("keys", &n)
            .finish()
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(&self, key: &IdempotencyKey) -> Result<Claim, Error> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.claims_since_sweep += 1;
        if entries.claims_since_sweep >= 1024 {
            entries.claims_since_sweep = 0;
            entries.map.retain(|_, e| e.expires > now);
        }
        let id = memory_id(key);
        if let Some(entry) = entries.map.get(&id).filter(|e| e.expires > now) {
            return Ok(match &entry.reply {
                Some(reply) => Claim::Completed {
                    fingerprint: entry.fingerprint.clone(),
                    reply: reply.clone(),
                },
                None => Claim::InProgress {
                    fingerprint: entry.fingerprint.clone(),
                },
            });
        }
        entries.map.insert(
            id,
            MemoryEntry {
                fingerprint: key.fingerprint.clone(),
                reply: None,
                expires: now + key.lease,
            },
        );
        Ok(Claim::Acquired)
    }

    async fn complete(&self, key: &IdempotencyKey, reply: &[u8]) -> Result<(), Error> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.map.insert(
            memory_id(key),
            MemoryEntry {
                fingerprint: key.fingerprint.clone(),
                reply: Some(reply.to_vec()),
                expires: Instant::now() + key.ttl,
            },
        );
        Ok(())
    }

    async fn release(&self, key: &IdempotencyKey) -> Result<(), Error> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let id = memory_id(key);
        if entries.map.get(&id).is_some_and(|e| e.reply.is_none()) {
            entries.map.remove(&id);
        }
        Ok(())
    }
}

/// The fingerprint of a payload: SipHash-1-3 (128 bits) of its JSON form, in hex.
///
/// Only the serialization is generic: the rest is [`fingerprint_json`], compiled once rather
/// than once per command.
#[inline]
pub(crate) fn fingerprint<T: Serialize>(payload: &T) -> Result<String, Error> {
    fingerprint_json(serde_json::to_vec(payload))
}

/// The fingerprint of a payload's JSON form.
#[inline(never)]
fn fingerprint_json(json: Result<Vec<u8>, serde_json::Error>) -> Result<String, Error> {
    let json = json.map_err(|e| {
        Error::from_std(crate::Status::Internal, e).context("fingerprinting the payload")
    })?;
    Ok(format!(
        "{:032x}",
        super::cache::cache_key(|h| h.write(&json))
    ))
}

/// The settings of the idempotency layer.
#[derive(Clone)]
pub(crate) struct IdempotencyLayer {
    pub(crate) store: Arc<dyn DynIdempotencyStore>,
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
}

/// What the layer needs from a command's types, behind `dyn`: its fingerprint, and its output
/// as the reply a store keeps and gives back.
pub(crate) trait Replies: Send + Sync {
    /// The fingerprint of the command (`&C`), which a repeat of its key must match.
    fn fingerprint(&self, message: &(dyn Any + Send + Sync)) -> Result<String, Error>;
    /// The output in its slot (`Option<C::Output>`), serialized: the reply a store keeps.
    fn encode_output(&self, output: &(dyn Any + Send + Sync)) -> Result<Vec<u8>, Error>;
    /// Writes a stored reply into the output slot.
    fn decode_output(
        &self,
        reply: &[u8],
        output: &mut (dyn Any + Send + Sync),
    ) -> Result<(), Error>;
}

/// How an idempotent execution ended.
pub(crate) enum Outcome<R> {
    /// The inner layers ran now.
    Executed(R),
    /// A stored reply was found: the output, serialized.
    Replayed(Vec<u8>),
}

impl IdempotencyLayer {
    pub(crate) fn key(
        &self,
        scope: &'static str,
        principal: Option<&str>,
        key: &str,
        fingerprint: String,
        lease: Option<Duration>,
    ) -> IdempotencyKey {
        IdempotencyKey {
            scope,
            principal: principal.map(str::to_owned),
            key: key.to_owned(),
            fingerprint,
            ttl: self.ttl,
            lease: lease.map_or(self.lease, |l| l.max(self.lease)),
        }
    }

    /// Runs `execute` once per key. `execute` returns what it produced and the reply to store
    /// (the output, serialized, or why it could not be); a repeat gets the stored reply.
    ///
    /// Not generic over the output type: the full path calls it with the output in a slot of
    /// its own (see `pipeline/full_path.rs`), so there is one copy of this in a binary.
    pub(crate) async fn run<R, F, Fut>(
        &self,
        key: &IdempotencyKey,
        execute: F,
    ) -> Result<Outcome<R>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(R, Result<Vec<u8>, Error>), Error>>,
    {
        let mut wait = Duration::from_millis(2);
        let mut execute = Some(execute);
        loop {
            match self.store.claim_dyn(key).await? {
                Claim::Acquired => {
                    let release = ReleaseOnDrop {
                        store: Some(self.store.clone()),
                        key,
                    };
                    let Some(execute) = execute.take() else {
                        return Err(Error::internal("idempotent execution ran twice"));
                    };
                    let result = execute().await;
                    return match result {
                        Ok((result, reply)) => {
                            release.disarm();
                            match reply {
                                Ok(bytes) => {
                                    if let Err(error) = self.store.complete_dyn(key, &bytes).await {
                                        tracing::error!(target: "cqrs", command = key.scope, key = ?key.key, %error,
                                            "the command succeeded but its reply could not be stored; a repeat may run it again");
                                    }
                                }
                                Err(error) => {
                                    tracing::error!(target: "cqrs", command = key.scope, %error,
                                    "the command's reply does not serialize; it is not stored");
                                    // Nothing will complete the claim: free the key rather than
                                    // make every repeat wait for the lease to run out.
                                    if let Err(error) = self.store.release_dyn(key).await {
                                        tracing::warn!(target: "cqrs", command = key.scope, %error, "could not release the idempotency key");
                                    }
                                }
                            }
                            Ok(Outcome::Executed(result))
                        }
                        Err(error) => {
                            let store = release.disarm();
                            if let Err(release_error) = store.release_dyn(key).await {
                                tracing::warn!(target: "cqrs", command = key.scope, error = %release_error, "could not release the idempotency key");
                            }
                            Err(error)
                        }
                    };
                }
                Claim::Completed { fingerprint, reply } => {
                    check_fingerprint(key, &fingerprint)?;
                    return Ok(Outcome::Replayed(reply));
                }
                Claim::InProgress { fingerprint } => {
                    check_fingerprint(key, &fingerprint)?;
                    crate::sync::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(100));
                }
            }
        }
    }
}

fn check_fingerprint(key: &IdempotencyKey, stored: &str) -> Result<(), Error> {
    if stored == key.fingerprint {
        Ok(())
    } else {
        Err(Error::conflict(format!(
            "idempotency key `{}` was already used for `{}` with a different payload",
            key.key, key.scope
        )))
    }
}

/// Releases the claim if the execution is dropped halfway (a timeout, a cancelled caller).
struct ReleaseOnDrop<'a> {
    store: Option<Arc<dyn DynIdempotencyStore>>,
    key: &'a IdempotencyKey,
}

impl ReleaseOnDrop<'_> {
    fn disarm(mut self) -> Arc<dyn DynIdempotencyStore> {
        match self.store.take() {
            Some(store) => store,
            None => unreachable!("disarmed twice"),
        }
    }
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        let key = self.key.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = store.release_dyn(&key).await;
            });
        }
    }
}

#[cfg(all(test, loom))]
mod loom_model;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    fn layer() -> IdempotencyLayer {
        IdempotencyLayer {
            store: Arc::new(MemoryIdempotencyStore::new()),
            ttl: DEFAULT_TTL,
            lease: DEFAULT_LEASE,
        }
    }

    async fn send(
        l: &IdempotencyLayer,
        payload: u32,
        runs: &mut u32,
    ) -> Result<(u32, bool), Error> {
        let key = l.key("Cmd", None, "k1", fingerprint(&payload).unwrap(), None);
        let out = l
            .run(&key, || async {
                *runs += 1;
                let out = payload * 10;
                Ok((out, Ok(serde_json::to_vec(&out).unwrap())))
            })
            .await?;
        Ok(match out {
            Outcome::Executed(v) => (v, false),
            Outcome::Replayed(reply) => (serde_json::from_slice(&reply).unwrap(), true),
        })
    }

    #[tokio::test]
    async fn replays_and_conflicts() {
        let l = layer();
        let mut runs = 0;
        assert_eq!(send(&l, 4, &mut runs).await.unwrap(), (40, false));
        assert_eq!(send(&l, 4, &mut runs).await.unwrap(), (40, true));
        assert_eq!(runs, 1);
        let err = send(&l, 5, &mut runs).await.unwrap_err();
        assert_eq!(err.status(), Status::Conflict);
    }

    #[tokio::test]
    async fn failures_release_the_key() {
        let l = layer();
        let key = l.key("Cmd", None, "k2", fingerprint(&1).unwrap(), None);
        let err = l
            .run(&key, || async {
                Err::<(u32, _), _>(Error::unavailable("db down"))
            })
            .await
            .err()
            .unwrap();
        assert_eq!(err.status(), Status::Unavailable);
        let out = l
            .run(&key, || async { Ok((7, Ok(b"7".to_vec()))) })
            .await
            .unwrap();
        assert!(matches!(out, Outcome::Executed(7)));
    }
}
