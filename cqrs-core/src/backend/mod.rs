//! Backends: where the stores the layers define are implemented on real infrastructure. Each
//! adds itself to the bus through the builder (`impl BusBuilder` in its own folder, through
//! `bus/backends.rs`); neither the bus nor the pipeline names one.
//!
//! | backend | feature | gives |
//! |---|---|---|
//! | [`sql`] | `sqlite`, `postgres` | transactions, the outbox and its relay, idempotency keys, the event store, the inbox |
//! | [`nats`] | `nats` | events across processes on NATS JetStream: publishing from the outbox, durable consumers per handler, dead letters, replay |
//! | [`sql`] | `sqlite`, `postgres` | transactions, the outbox and its relay, idempotency keys, the event store; on PostgreSQL, cache invalidations between processes (`LISTEN`/`NOTIFY`) |
//! | [`redis`] | `redis` | cache invalidations between processes (pub/sub), `RedisIdempotencyStore` |
//!
//! The in-memory implementations, the defaults, live beside their traits: `MemoryCache` in
//! `pipeline/cache/memory.rs`, `MemoryIdempotencyStore` in `pipeline/idempotency.rs`,
//! `MemoryEventStore` in `event_store/memory.rs`.

#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql;
