//! `#[exclusive]` on Redis (when the bus has no PostgreSQL): a lease with a fencing token.
//!
//! - **Take**: `SET <prefix>lock:<space>:<key> <token> NX PX <lease>`, and when it was set,
//!   `INCR <prefix>lock-fence` for the fencing token, in one script. The token is random per
//!   holder, so only the holder can renew or delete the key.
//! - **Keep**: while the handler runs, a task renews the lease every third of it (`PEXPIRE`
//!   only if the key still holds the token). A holder that dies stops renewing, and the key
//!   expires within one lease: the next command on the key runs then.
//! - **Confirm**: a `#[transactional]` command renews it once more just before `COMMIT`;
//!   a lease that ran out (the key no longer holds the token) rolls the transaction back with
//!   `Conflict` instead of committing work done outside the lock.
//! - **Free**: delete the key only if it still holds the token (a script), so that a holder
//!   whose lease ran out never frees the next holder's lock. A holder that finds its lease gone
//!   says so in the log: another command on the key may have run meanwhile, which is what the
//!   fencing token (`cx.fencing_token()`) lets a store detect.
//!
//! The fence counter is one per prefix, not one per lock: it grows with each holder of any lock,
//! which is all a fencing token needs, and leaves one key behind rather than one per lock ever
//! taken. A Redis that loses its data (restarted without persistence) restarts the counter.
//!
//! Redis down: taking a lock fails closed with `Unavailable` (the command does not run), and a
//! lock held when Redis went away ends with its lease. A lease dropped unreleased (its
//! command's future dropped: a timeout) is deleted by a task of its own; one whose taking was
//! interrupted before Redis answered expires with its lease.

use std::any::Any;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::Script;
use tokio::task::AbortHandle;

use super::{Redis, redis_error};
use crate::Error;
use crate::pipeline::exclusive::{HeldLock, LockBackend, LockName};

/// How long a Redis lease lasts unless renewed, unless the builder says otherwise
/// ([`redis_lock_lease`](crate::BusBuilder::redis_lock_lease)).
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(10);

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
",
    )
});

static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// The locks of `#[exclusive]` handlers on the bus's Redis.
#[derive(Clone)]
pub(crate) struct RedisLocks {
    redis: Redis,
    lease: Duration,
}

impl RedisLocks {
    pub(crate) fn new(redis: Redis, lease: Duration) -> Self {
        RedisLocks { redis, lease }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl LockBackend for RedisLocks {
    fn kind(&self) -> &'static str {
        "a Redis lease"
    }

    fn try_acquire<'a>(
        &'a self,
        lock: &'a LockName,
    ) -> BoxFuture<'a, Result<Option<Box<dyn HeldLock>>, Error>> {
        Box::pin(async move {
            let key = self.redis.key(&format!("lock:{lock}"));
            let token = format!("{:032x}", fastrand::u128(..));
            let mut conn = self.redis.connection().await?;
            let fence: u64 = ACQUIRE
                .key(&key)
                .key(self.redis.key("lock-fence"))
                .arg(&token)
                .arg(millis(self.lease))
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            if fence == 0 {
                return Ok(None);
            }
            let lost = Arc::new(AtomicBool::new(false));
            let renewal = tokio::spawn(renew(
                self.redis.clone(),
                key.clone(),
                token.clone(),
                self.lease,
                lost.clone(),
            ))
            .abort_handle();
            Ok(Some(Box::new(RedisLease {
                redis: self.redis.clone(),
                key,
                token,
                fence,
                lease: self.lease,
                renewal,
                lost,
                released: false,
            }) as Box<dyn HeldLock>))
        })
    }
}

/// Renews the lease every third of it until aborted, or until the key no longer holds the
/// token (then `lost` is set). A renewal that fails (Redis away) is tried again at the next
/// turn: the lease may still be running.
async fn renew(redis: Redis, key: String, token: String, lease: Duration, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(lease / 3).await;
        match renew_once(&redis, &key, &token, lease).await {
            Ok(false) => {
                lost.store(true, Ordering::SeqCst);
                tracing::error!(target: "cqrs", key, "an `#[exclusive]` lease expired while its handler ran: another command on the key may run meanwhile (compare fencing tokens)");
                return;
            }
            Ok(true) => {}
            Err(error) => {
                tracing::warn!(target: "cqrs", key, error = %format_args!("{error:#}"), "renewing an `#[exclusive]` lease failed; trying again");
            }
        }
    }
}

/// Extends the lease on `key` to a whole `lease` from now if it still holds `token`; whether
/// it did.
async fn renew_once(redis: &Redis, key: &str, token: &str, lease: Duration) -> Result<bool, Error> {
    let mut conn = redis.connection().await?;
    let renewed: u64 = RENEW
        .key(key)
        .arg(token)
        .arg(millis(lease))
        .invoke_async(&mut conn)
        .await
        .map_err(redis_error)?;
    Ok(renewed != 0)
}

/// A lease held.
struct RedisLease {
    redis: Redis,
    key: String,
    token: String,
    fence: u64,
    lease: Duration,
    renewal: AbortHandle,
    lost: Arc<AtomicBool>,
    released: bool,
}

/// Deletes `key` if it still holds `token`; whether it did.
async fn delete_if_held(redis: &Redis, key: &str, token: &str) -> Result<bool, Error> {
    let mut conn = redis.connection().await?;
    let deleted: u64 = RELEASE
        .key(key)
        .arg(token)
        .invoke_async(&mut conn)
        .await
        .map_err(redis_error)?;
    Ok(deleted == 1)
}

impl HeldLock for RedisLease {
    fn fencing_token(&self) -> Option<u64> {
        Some(self.fence)
    }

    fn release(mut self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        self.renewal.abort();
        self.released = true;
        let (redis, key, token) = (self.redis.clone(), self.key.clone(), self.token.clone());
        let (fence, lost) = (self.fence, self.lost.load(Ordering::SeqCst));
        Box::pin(async move {
            if delete_if_held(&redis, &key, &token).await? && !lost {
                return Ok(());
            }
            Err(Error::internal(format!(
                "the lease of `#[exclusive]` lock `{key}` (fencing token {fence}) had expired before the handler finished: another command on the key may have run meanwhile"
            )))
        })
    }

    /// Renews the lease once more (a whole lease for the `COMMIT` to happen in), or says that
    /// it ran out: the key then no longer holds this holder's token, and another command on
    /// it may have run meanwhile. A Redis that does not answer cannot confirm it either.
    fn confirm(&mut self) -> Option<BoxFuture<'_, Result<(), Error>>> {
        Some(Box::pin(async move {
            let still_held = !self.lost.load(Ordering::SeqCst)
                && renew_once(&self.redis, &self.key, &self.token, self.lease)
                    .await
                    .map_err(|e| {
                        e.context(format_args!(
                            "confirming the lease of `#[exclusive]` lock `{}` before commit; the work was rolled back",
                            self.key
                        ))
                    })?;
            if still_held {
                return Ok(());
            }
            self.lost.store(true, Ordering::SeqCst);
            Err(Error::conflict(format!(
                "the lease of `#[exclusive]` lock `{}` (fencing token {}) ran out while the handler ran, and another command on the key may have run meanwhile: the work was rolled back; send the command again",
                self.key, self.fence
            )))
        }))
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        self.renewal.abort();
        if self.released {
            return;
        }
        // Dropped unreleased (a future dropped mid-way): free it now if a runtime is there;
        // otherwise it expires with its lease.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (redis, key, token) = (self.redis.clone(), self.key.clone(), self.token.clone());
            runtime.spawn(async move {
                let _ = delete_if_held(&redis, &key, &token).await;
            });
        }
    }
}
