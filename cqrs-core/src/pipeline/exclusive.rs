//! Between retry and the transaction: `#[exclusive(key = field, name = "..")]` on a command
//! handler. At most one command per key value runs at a time, across every process that shares
//! the lock backend: each attempt takes the lock, then (for a `#[transactional]` handler)
//! begins, runs the handler, commits, and only then releases the lock.
//!
//! The lock is named by its **space** (`name = "account"`, or the command's name) and the
//! **key** (the command field's value: a JSON string as is, any other value as its JSON text),
//! so that commands sharing a space (a `Withdraw` and a `Deposit` on one account) exclude each
//! other.
//!
//! This file holds the layer's configuration ([`ExclusiveLayer`]), its behaviour ([`acquire`],
//! [`release`]: the wait for a held lock, bounded, with a jittered back-off) and the seam a
//! backend implements ([`LockBackend`], [`HeldLock`]). PostgreSQL's session advisory lock is
//! in `backend/sql/lock.rs`, the Redis lease in `backend/redis/lock.rs`; when a bus has both,
//! PostgreSQL's is used ([`LockPriority`]).
//!
//! **Waiting.** A lock held by another command is tried again after a pause that doubles from
//! 2 ms up to 50 ms, each jittered, for at most [`ExclusiveLayer::DEFAULT_WAIT`] (or the
//! command's own deadline, whichever comes first: the timeout layer then answers `Timeout`).
//! Past that bound the command fails with `Conflict`: the key is busy, which is a fact about
//! the data, not a failure of the backend (`Unavailable` is kept for a lock backend that does
//! not answer). Both are retried by `#[retry]`'s default. Polling rather than a blocking wait:
//! an abandoned wait (a dropped future, a timeout) then leaves nothing queued on the server that
//! could take the lock later for no one, and waiters do not hold pooled connections.
//!
//! **Not re-entrant.** A handler that sends (`cx.send`) another command of its own lock space
//! and key waits for itself, and that command fails with `Conflict` once the wait is over.

use std::any::Any;
use std::fmt;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::erased::Erased;
use crate::Error;
use crate::context::TxSlot;

/// Reads the key of an `#[exclusive]` command from the command (`None` when it is not of the
/// handler's type). The macro generates it from the field named in `key = ..`.
pub type ExclusiveKey = fn(&(dyn Any + Send + Sync)) -> Option<String>;

/// The configuration of `#[exclusive(key = field, name = "..")]`.
#[derive(Clone, Copy)]
pub struct ExclusiveLayer {
    /// The lock space: `name = ".."`, or the command's name (set at `build()`).
    space: Option<&'static str>,
    field: &'static str,
    key: ExclusiveKey,
    wait: Duration,
}

impl ExclusiveLayer {
    /// How long a command waits for a lock another command holds before it fails with
    /// `Conflict` (unless its own deadline comes first).
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

    /// Locks on the value of `field`, read by `key`, in the command's own lock space.
    pub const fn new(field: &'static str, key: ExclusiveKey) -> Self {
        ExclusiveLayer {
            space: None,
            field,
            key,
            wait: Self::DEFAULT_WAIT,
        }
    }

    /// Shares the lock space `name` with every command that names it.
    pub const fn name(mut self, name: &'static str) -> Self {
        self.space = Some(name);
        self
    }

    /// How long to wait for a held lock ([`DEFAULT_WAIT`](Self::DEFAULT_WAIT) otherwise).
    pub const fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The lock space, once `build()` has given the command's name as the default.
    pub fn space(&self) -> Option<&'static str> {
        self.space
    }

    /// The field the key is read from.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The layer with `command` as its space unless `name = ..` gave one.
    pub(crate) fn in_space_of(mut self, command: &'static str) -> Self {
        self.space.get_or_insert(command);
        self
    }

    /// The lock `command` needs.
    pub(crate) fn lock_of(&self, command: &(dyn Any + Send + Sync)) -> Option<LockName> {
        Some(LockName {
            space: self.space.unwrap_or(""),
            key: (self.key)(command)?,
        })
    }
}

impl fmt::Display for ExclusiveLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exclusive(key={}", self.field)?;
        if let Some(space) = self.space {
            write!(f, ", name=\"{space}\"")?;
        }
        f.write_str(")")
    }
}

impl fmt::Debug for ExclusiveLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One lock: its space and the key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LockName {
    pub(crate) space: &'static str,
    pub(crate) key: String,
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.space, self.key)
    }
}

/// The value of a key field as a lock's key: a string as is, anything else as its JSON text
/// (`42`, `{"region":"eu","id":7}`). What the macro's key function calls.
pub(crate) fn key_text<T: serde::Serialize + ?Sized>(value: &T) -> Option<String> {
    match serde_json::to_value(value).ok()? {
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// Which lock backend a bus uses when several are configured: the highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LockPriority {
    /// A Redis lease (`backend/redis/lock.rs`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Redis,
    /// A PostgreSQL session advisory lock (`backend/sql/lock.rs`): held by the very session
    /// that runs the transaction, so it needs no lease and cannot outlive its holder.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres,
}

/// Locks shared by every process of a service: what a backend implements.
pub(crate) trait LockBackend: Send + Sync + 'static {
    /// What `describe()` and the messages call it.
    fn kind(&self) -> &'static str;
    /// One try, without waiting: the lock when it was free, `None` when another holder has it.
    /// An error means the backend did not answer (fail closed: the command does not run).
    fn try_acquire<'a>(
        &'a self,
        lock: &'a LockName,
    ) -> BoxFuture<'a, Result<Option<Box<dyn HeldLock>>, Error>>;
}

/// A lock held. Dropping it without [`release`](HeldLock::release) (a future dropped mid-way)
/// must still free it: each backend's `Drop` does, in a task of its own.
pub(crate) trait HeldLock: Send + 'static {
    /// The fencing token: grows with each holder of the lock.
    fn fencing_token(&self) -> Option<u64>;
    /// Frees the lock.
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;
    /// Just before the attempt's transaction commits: an error when the lock may no longer be
    /// this attempt's (a Redis lease that ran out while the handler ran), and the transaction
    /// then rolls back instead. `None` for a lock that cannot be lost while it is held
    /// (PostgreSQL's is the transaction's own session).
    fn confirm(&mut self) -> Option<BoxFuture<'_, Result<(), Error>>> {
        None
    }
    /// The backend's own type (PostgreSQL hands the lock's connection to the transaction).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The first pause before trying a held lock again, and the longest one.
const FIRST_PAUSE: Duration = Duration::from_millis(2);
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Takes the lock of `command` for one attempt, waiting while another command holds it (see
/// the module's header), and keeps it in the context until [`release`].
pub(crate) async fn acquire(
    layer: &ExclusiveLayer,
    locks: Option<&dyn LockBackend>,
    command: Option<&Erased>,
    slot: &mut TxSlot,
    handler: &'static str,
) -> Result<(), Error> {
    let Some(locks) = locks else {
        return Err(Error::internal(format!(
            "`#[exclusive]` on `{handler}` needs a lock backend: add `.postgres(pool)` or `.redis(client)` to the builder",
        )));
    };
    let Some(lock) = command.and_then(|c| layer.lock_of(c)) else {
        return Err(Error::internal(format!(
            "`#[exclusive]` on `{handler}` could not read its key `{}`",
            layer.field
        )));
    };
    let held = wait_for(locks, &lock, layer.wait, handler).await?;
    slot.hold(held.fencing_token(), Box::new(held));
    Ok(())
}

/// Tries `lock` until it is free or `wait` has passed.
pub(crate) async fn wait_for(
    locks: &dyn LockBackend,
    lock: &LockName,
    wait: Duration,
    handler: &str,
) -> Result<Box<dyn HeldLock>, Error> {
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let taken = locks.try_acquire(lock).await.map_err(|e| {
            e.context(format!(
                "`#[exclusive]` on `{handler}` could not take its lock `{lock}` ({}): the command did not run",
                locks.kind()
            ))
        })?;
        if let Some(held) = taken {
            if tries > 1 {
                tracing::debug!(target: "cqrs", handler, %lock, tries, waited_ms = started.elapsed().as_millis() as u64, "exclusive lock taken after waiting");
            }
            return Ok(held);
        }
        let waited = started.elapsed();
        if waited + pause > wait {
            return Err(Error::conflict(format!(
                "`{handler}` waited {} ms for its `#[exclusive]` lock `{lock}`, which another command holds; try again later",
                waited.as_millis()
            )));
        }
        tokio::time::sleep(jittered(pause)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// `pause`, give or take half of it, so that waiters do not try in step.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(0.5 + fastrand::f64())
}

/// Frees the lock of the attempt (after its transaction ended) and gives back its result. A
/// release that fails is logged: the lock then ends with its holder's session (PostgreSQL) or
/// its lease (Redis), and the work of the attempt is not undone by it.
pub(crate) async fn release<T>(
    slot: &mut TxSlot,
    handler: &'static str,
    result: Result<T, Error>,
) -> Result<T, Error> {
    if let Some(held) = held_of(slot)
        && let Err(error) = held.release().await
    {
        tracing::warn!(target: "cqrs", handler, error = %format_args!("{error:#}"), "releasing an `#[exclusive]` lock failed (it ends with its session or lease)");
    }
    result
}

/// The lock in a context's slot, taken out.
fn held_of(slot: &mut TxSlot) -> Option<Box<dyn HeldLock>> {
    slot.take_lock()?
        .downcast::<Box<dyn HeldLock>>()
        .ok()
        .map(|held| *held)
}

/// The lock in a context's slot, for the transaction to begin on (PostgreSQL).
pub(crate) fn held_mut(slot: &mut TxSlot) -> Option<&mut dyn HeldLock> {
    let held = slot.lock_mut()?.downcast_mut::<Box<dyn HeldLock>>()?;
    Some(&mut **held)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Locks in a set, for the layer's logic alone (the backends are tested on real servers).
    #[derive(Default)]
    struct SetLocks {
        held: Arc<Mutex<HashSet<String>>>,
        fence: Arc<Mutex<u64>>,
    }

    struct SetHeld {
        name: String,
        held: Arc<Mutex<HashSet<String>>>,
        token: u64,
    }

    impl LockBackend for SetLocks {
        fn kind(&self) -> &'static str {
            "a set"
        }
        fn try_acquire<'a>(
            &'a self,
            lock: &'a LockName,
        ) -> BoxFuture<'a, Result<Option<Box<dyn HeldLock>>, Error>> {
            Box::pin(async move {
                if !self.held.lock().unwrap().insert(lock.to_string()) {
                    return Ok(None);
                }
                let mut fence = self.fence.lock().unwrap();
                *fence += 1;
                Ok(Some(Box::new(SetHeld {
                    name: lock.to_string(),
                    held: self.held.clone(),
                    token: *fence,
                }) as Box<dyn HeldLock>))
            })
        }
    }

    impl HeldLock for SetHeld {
        fn fencing_token(&self) -> Option<u64> {
            Some(self.token)
        }
        fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
            self.held.lock().unwrap().remove(&self.name);
            Box::pin(async { Ok(()) })
        }
        fn as_any_mut(&mut self) -> &mut dyn Any {
            self
        }
    }

    #[derive(serde::Serialize)]
    struct Withdraw {
        account: u64,
        owner: String,
    }

    fn account(c: &(dyn Any + Send + Sync)) -> Option<String> {
        key_text(&c.downcast_ref::<Withdraw>()?.account)
    }

    #[test]
    fn keys_are_strings_as_is_and_other_values_as_json() {
        assert_eq!(key_text("acc-1").as_deref(), Some("acc-1"));
        assert_eq!(key_text(&42u64).as_deref(), Some("42"));
        assert_eq!(key_text(&(1, "a")).as_deref(), Some("[1,\"a\"]"));
    }

    #[test]
    fn the_space_is_the_name_given_or_the_command_s() {
        let cmd = Withdraw {
            account: 7,
            owner: "ann".into(),
        };
        let own = ExclusiveLayer::new("account", account).in_space_of("Withdraw");
        assert_eq!(own.lock_of(&cmd).unwrap().to_string(), "Withdraw:7");
        let shared = ExclusiveLayer::new("account", account)
            .name("account")
            .in_space_of("Withdraw");
        assert_eq!(shared.lock_of(&cmd).unwrap().to_string(), "account:7");
        assert_eq!(
            shared.to_string(),
            "exclusive(key=account, name=\"account\")"
        );
        // Another type: no key (the pipeline reports it).
        assert!(shared.lock_of(&"not a command").is_none());
        let _ = cmd.owner;
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_lock_is_waited_for_then_fails_with_conflict() {
        let locks = SetLocks::default();
        let lock = LockName {
            space: "account",
            key: "7".into(),
        };
        let first = wait_for(&locks, &lock, Duration::from_millis(200), "H")
            .await
            .unwrap();
        assert_eq!(first.fencing_token(), Some(1));
        let busy = wait_for(&locks, &lock, Duration::from_millis(200), "H")
            .await
            .err()
            .unwrap();
        assert_eq!(busy.status(), crate::Status::Conflict);
        assert!(busy.to_string().contains("account:7"), "{busy}");
        // Freed while a second holder waits: it gets it, with a greater token.
        let waiter = tokio::spawn({
            let held = locks.held.clone();
            let fence = locks.fence.clone();
            async move {
                let locks = SetLocks { held, fence };
                let lock = LockName {
                    space: "account",
                    key: "7".into(),
                };
                wait_for(&locks, &lock, Duration::from_secs(5), "H")
                    .await
                    .map(|h| h.fencing_token())
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        first.release().await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), Some(2));
    }
}
