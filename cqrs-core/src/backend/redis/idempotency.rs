//! Idempotency keys in Redis: one hash per (command, caller, key), claimed, completed and
//! released by scripts, so that each step is atomic across processes.
//!
//! A claim is a hash with the payload's fingerprint and no reply, which expires after the
//! claim's lease: a process that dies while running the command frees the key within it (the
//! next send then runs the command). A completed key holds the reply and expires after the TTL.

use std::fmt;
use std::future::Future;
use std::sync::LazyLock;

use redis::{Script, Value};

use super::{Redis, redis_error};
use crate::Error;
use crate::pipeline::idempotency::{Claim, IdempotencyKey, IdempotencyStore};

/// The `IdempotencyStore` on Redis, for commands that are not transactional, across every
/// process sharing the Redis: a key runs its command once, whichever process gets it first,
/// and every repeat (in any process) gets the one reply. Keys are scoped to their command and
/// their caller, as in every store.
///
/// The bus uses it by default when it has Redis ([`redis`](crate::BusBuilder::redis)) and no
/// database. With a database, the database's store stays the default: it writes a
/// transactional command's reply in the command's own transaction, so that the work and the
/// key commit together, which Redis cannot do.
///
/// When Redis does not answer, a send with a key fails with `Unavailable` (fail closed):
/// running it without its key could run it twice.
#[derive(Clone)]
pub struct RedisIdempotencyStore {
    redis: Redis,
}

impl RedisIdempotencyStore {
    /// A store on this Redis, with keys under `prefix` (`"cqrs:"`, or the bus's prefix).
    pub fn new(client: redis::Client, prefix: &str) -> Self {
        RedisIdempotencyStore {
            redis: Redis::new(client, prefix),
        }
    }

    pub(crate) fn from_redis(redis: Redis) -> Self {
        RedisIdempotencyStore { redis }
    }

    /// `<prefix>idem:<command>:<caller's length>:<caller>:<key>`: the caller's length first, so
    /// that no caller and key can combine into another's.
    fn redis_key(&self, key: &IdempotencyKey) -> String {
        let caller = key.caller();
        self.redis.key(&format!(
            "idem:{}:{}:{caller}:{}",
            key.scope,
            caller.len(),
            key.key
        ))
    }
}

impl fmt::Debug for RedisIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisIdempotencyStore")
            .field("prefix", &self.redis.prefix)
            .finish()
    }
}

static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local found = redis.call('HMGET', KEYS[1], 'fp', 'reply')
if found[1] then
  if found[2] then return {'completed', found[1], found[2]} end
  return {'in_progress', found[1]}
end
redis.call('HSET', KEYS[1], 'fp', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'acquired'}
",
    )
});

static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'reply', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], 'reply') == 0 then redis.call('DEL', KEYS[1]) end
return 1
",
    )
});

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn text(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

impl IdempotencyStore for RedisIdempotencyStore {
    fn claim(&self, key: &IdempotencyKey) -> impl Future<Output = Result<Claim, Error>> + Send {
        let redis_key = self.redis_key(key);
        async move {
            let mut connection = self.redis.connection().await?;
            let found: Vec<Value> = CLAIM
                .key(&redis_key)
                .arg(&key.fingerprint)
                .arg(millis(key.lease))
                .invoke_async(&mut connection)
                .await
                .map_err(redis_error)?;
            let parts: Vec<Vec<u8>> = found.iter().filter_map(text).collect();
            let fingerprint = |i: usize| {
                parts
                    .get(i)
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .unwrap_or_default()
            };
            match parts.first().map(Vec::as_slice) {
                Some(b"acquired") => Ok(Claim::Acquired),
                Some(b"in_progress") => Ok(Claim::InProgress {
                    fingerprint: fingerprint(1),
                }),
                Some(b"completed") => Ok(Claim::Completed {
                    fingerprint: fingerprint(1),
                    reply: parts.get(2).cloned().unwrap_or_default(),
                }),
                _ => Err(Error::internal(
                    "unexpected answer from the Redis idempotency script",
                )),
            }
        }
    }

    fn complete(
        &self,
        key: &IdempotencyKey,
        reply: &[u8],
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let redis_key = self.redis_key(key);
        async move {
            let mut connection = self.redis.connection().await?;
            COMPLETE
                .key(&redis_key)
                .arg(&key.fingerprint)
                .arg(reply)
                .arg(millis(key.ttl))
                .invoke_async::<()>(&mut connection)
                .await
                .map_err(redis_error)
        }
    }

    fn release(&self, key: &IdempotencyKey) -> impl Future<Output = Result<(), Error>> + Send {
        let redis_key = self.redis_key(key);
        async move {
            let mut connection = self.redis.connection().await?;
            RELEASE
                .key(&redis_key)
                .invoke_async::<()>(&mut connection)
                .await
                .map_err(redis_error)
        }
    }
}
