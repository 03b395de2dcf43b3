//! # cqrs-core
//!
//! Commands, queries and events declared with derive and attribute macros; handlers found by
//! themselves, their dependencies injected, and a decorated pipeline per handler
//! (authorization, validation, idempotency, caching, retries, timeouts, transactions, events
//! after commit) assembled once at startup and checked before anything runs.
//!
//! ```standalone_crate
//! use cqrs_core::prelude::*;
//!
//! #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! #[command(output = u64)]
//! pub struct OpenAccount { pub owner: String }
//!
//! #[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! pub struct AccountOpened { pub id: u64, pub owner: String }
//!
//! #[command_handler(OpenAccount)]
//! pub struct OpenAccountHandler;
//!
//! impl CommandHandler<OpenAccount> for OpenAccountHandler {
//!     async fn handle(&self, cmd: OpenAccount, cx: &mut CommandContext) -> Result<u64, Error> {
//!         cx.emit(AccountOpened { id: 7, owner: cmd.owner });
//!         Ok(7)
//!     }
//! }
//!
//! #[event_handler(AccountOpened)]
//! pub struct Welcome;
//!
//! impl EventHandler<AccountOpened> for Welcome {
//!     async fn handle(&self, e: &AccountOpened, _cx: &mut EventContext) -> Result<(), Error> {
//!         println!("welcome, {}", e.owner);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Bus::builder().build()?;          // finds every handler in the program
//! let id = bus.send(OpenAccount { owner: "ada".into() }).await?;
//! assert_eq!(id, 7);
//! # Ok(()) }
//! ```
//!
//! Start with [the guide](crate::guide): it walks from a first command to a transactional,
//! cached, authorized handler. The pipeline's layers and their order are in
//! [`pipeline_order`].
//!
//! Inside, the crate is a stack of layers, each using only those below it: the message model
//! (messages, envelope, error), what handlers implement and receive (handler traits, contexts,
//! dependency injection, the event store model), the pipeline (one module per layer, and the
//! runtime a built bus holds), the registry of declared handlers, the bus (builder, checks,
//! dispatch), and on top the backends (SQLite, PostgreSQL), which implement traits the layers
//! define and add themselves through the builder. `ARCHITECTURE.md` in the repository draws it.

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(unsafe_code)]

mod backend;
mod build_error;
mod bus;
mod context;
mod di;
mod envelope;
mod error;
mod event_store;
mod events;
pub mod guide;
mod handler;
#[cfg(feature = "axum")]
pub mod http;
mod location;
mod message;
mod pipeline;
mod registry;
mod sync;
pub mod testing;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use cqrs_macros::{
    Command, Event, Query, authorize, cached_query, command_handler, event_handler, exclusive,
    query_handler, retry, timeout, transactional,
};

#[cfg(feature = "nats")]
pub use crate::backend::nats::{DeadLetter, Nats, Redeliver, ReplayFrom};
#[cfg(feature = "redis")]
pub use crate::backend::redis::{RedisCache, RedisIdempotencyStore};
#[cfg(feature = "postgres")]
pub use crate::backend::sql::setup::migrate_postgres;
#[cfg(feature = "sqlite")]
pub use crate::backend::sql::setup::{migrate_sqlite, sqlite_pool};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use crate::backend::sql::tx::AnyTx;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use crate::backend::sql::{events::SqlEventStore, idempotency::SqlIdempotencyStore};
pub use crate::bus::{
    BuildError, BuildProblem, Bus, BusBuilder, Description, HandlerDescription, MessageDescription,
    QueryBus, Report,
};
pub use crate::context::{CommandContext, EventContext, QueryContext};
pub use crate::di::{Dependencies, Injectable, Resolver};
pub use crate::envelope::{AggregateVersion, Envelope, IntoEnvelope, Metadata, Principal};
pub use crate::error::{Error, FieldError, Source, Status, StdErrorAdapter};
pub use crate::event_store::{
    Aggregate, AggregateRoot, EventStore, MemoryEventStore, RecordedEvent, Session, Snapshot,
    Stream,
};
pub use crate::events::HandlerFailure;
pub use crate::handler::{CommandHandler, EventHandler, QueryHandler};
pub use crate::location::Location;
pub use crate::message::{Command, Event, Message, MessageInfo, MessageKind, Query};
pub use crate::pipeline::Decorator;
pub use crate::pipeline::authorize::{AuthorizeLayer, ResourcePolicy, ResourceRequest};
pub use crate::pipeline::cache::{
    CacheFuture, CacheKey, CacheRegion, CacheSpec, CachedValue, Invalidation, InvalidationChannel,
    InvalidationSink, MemoryCache, QueryCache, Representation,
};
pub use crate::pipeline::exclusive::{ExclusiveKey, ExclusiveLayer};
pub use crate::pipeline::idempotency::{
    Claim, IdempotencyKey, IdempotencyStore, MemoryIdempotencyStore,
};
pub use crate::pipeline::middleware::{
    AuditLog, AuditRecord, AuditState, Dispatch, Middleware, Next,
};
pub use crate::pipeline::retry::RetryLayer;
pub use crate::pipeline::transaction::{Isolation, TransactionLayer};
pub use crate::registry::{Handler, HandlerRegistration};
/// The NATS client this crate is built with (feature `nats`).
#[cfg(feature = "nats")]
pub use async_nats;
/// The `redis` crate this crate is built with (feature `redis`): `redis::Client::open(url)` for
/// [`BusBuilder::redis`].
#[cfg(feature = "redis")]
pub use redis;
/// The `sqlx` this crate is built with (features `sqlite`, `postgres`): use it for the SQL your
/// handlers write in `cx.tx()`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sqlx;

/// The pipeline's layers, in order (outermost first). See also the `pipeline` module's source.
///
/// | # | layer | from | does |
/// |---|---|---|---|
/// | 1 | trace | always | one `tracing` span per dispatch; metrics with the `metrics` feature |
/// | 2 | middleware | [`BusBuilder::middleware`] | global around-style hooks, in registration order |
/// | 3 | timeout | `timeout = ".."` / `#[timeout("..")]` / [`Envelope::deadline`] | overall deadline including retries → `Timeout` |
/// | 4 | authorize | `#[authorize(..)]` | no principal → `Unauthenticated`; missing permission, role or resource policy → `Forbidden` |
/// | 5 | validate | `#[validate(..)]` on message fields | → `Error::Validation { fields }` |
/// | 6 | idempotency | [`Envelope::idempotency_key`] (commands) | same key + payload → stored reply; other payload → `Conflict` |
/// | 7 | cache | `#[cached_query(..)]` (queries) | hit returns the stored answer; concurrent misses run the handler once |
/// | 8 | retry | `#[retry(..)]` | re-runs the inner layers on the listed statuses |
/// | 8½ | exclusive | `#[exclusive(key = field, name = "..")]` (commands) | one command per key value at a time across processes: each attempt takes the lock, then begins, runs, commits, and frees it (a PostgreSQL session advisory lock taken before `BEGIN` on the transaction's connection, or a Redis lease with a fencing token); a key held past the wait → `Conflict`, the backend down → `Unavailable` |
/// | 9 | transaction | `#[transactional(..)]` (commands) | begin; handler; commit on `Ok`, roll back on `Err` |
/// | 9 | transaction | `#[transactional]` (event handlers) | begin; the event recorded in the handler's inbox (already there: not run again); handler; commit or roll back |
/// | 10 | handler | | a panic becomes `Internal` |
/// | after | publish | | emitted events to event handlers after commit; `invalidates = [..]` caches dropped. With `.nats(..)`: every event through the outbox (its own transaction when the command has none), published to JetStream by the relay in order per partition key, and delivered by each handler's durable consumers in whichever process runs them |
pub mod pipeline_order {}

/// Everything a handler module needs: `use cqrs_core::prelude::*;`.
pub mod prelude {
    pub use crate::{
        AuditLog, Bus, BusBuilder, Command, CommandContext, CommandHandler, Envelope, Error, Event,
        EventContext, EventHandler, Message, Metadata, Middleware, Principal, Query, QueryBus,
        QueryContext, QueryHandler, Report, Status, authorize, cached_query, command_handler,
        event_handler, exclusive, query_handler, retry, timeout, transactional,
    };
}
