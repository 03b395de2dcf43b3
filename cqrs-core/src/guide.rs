//! # The guide: from a first command to a transactional, cached, authorized service
//!
//! Every example below compiles and runs as a test (`cargo test --doc -p cqrs-core --all-features`;
//! section 5 needs the `sqlite` feature).
//!
//! ## 1. A command and its handler
//!
//! A command is a request to change state. Derive [`Command`](crate::Command) on a struct (or
//! an enum); `output` is what the handler answers (`()` by default). The handler is a struct
//! with `#[command_handler(..)]` and an `impl CommandHandler<..>`:
//!
//! ```
//! use cqrs_core::prelude::*;
//!
//! #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! #[command(output = u64)]
//! pub struct OpenAccount { pub owner: String }
//!
//! #[command_handler(OpenAccount)]
//! pub struct OpenAccountHandler;
//!
//! impl CommandHandler<OpenAccount> for OpenAccountHandler {
//!     async fn handle(&self, cmd: OpenAccount, _cx: &mut CommandContext) -> Result<u64, Error> {
//!         if cmd.owner.is_empty() {
//!             return Err(Error::conflict("an account needs an owner"));
//!         }
//!         Ok(42)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // `Bus::builder()` finds every handler in the program by itself; `discover(false)` +
//! // `register` builds a bus with exactly the handlers you name (handy in tests).
//! let bus = Bus::builder().discover(false).register::<OpenAccountHandler>().build()?;
//! assert_eq!(bus.send(OpenAccount { owner: "ada".into() }).await?, 42);
//! assert_eq!(
//!     bus.send(OpenAccount { owner: "".into() }).await.unwrap_err().status(),
//!     Status::Conflict
//! );
//! # Ok(()) }
//! ```
//!
//! ## 2. Queries, events, and dependencies
//!
//! A query reads; its handler gets a [`QueryContext`](crate::QueryContext), which cannot send
//! commands or emit events. An event is a fact; a command handler emits it with `cx.emit`, and
//! every `#[event_handler]` of its type receives it once the command has succeeded. Handler
//! fields are dependencies, resolved by type from `.provide(..)` when the bus is built;
//! `#[inject(default)]` falls back to `Default`.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//! use cqrs_core::prelude::*;
//!
//! #[derive(Default)]
//! pub struct Accounts(Mutex<HashMap<u64, String>>);
//!
//! #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! #[command(output = u64)]
//! pub struct OpenAccount { pub owner: String }
//!
//! #[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! pub struct AccountOpened { pub id: u64, pub owner: String }
//!
//! #[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
//! #[query(output = Option<String>)]
//! pub struct AccountOwner { pub id: u64 }
//!
//! #[command_handler(OpenAccount, emits = [AccountOpened])]
//! pub struct OpenAccountHandler { accounts: Arc<Accounts> }
//!
//! impl CommandHandler<OpenAccount> for OpenAccountHandler {
//!     async fn handle(&self, cmd: OpenAccount, cx: &mut CommandContext) -> Result<u64, Error> {
//!         let mut accounts = self.accounts.0.lock().unwrap();
//!         let id = accounts.len() as u64 + 1;
//!         accounts.insert(id, cmd.owner.clone());
//!         cx.emit(AccountOpened { id, owner: cmd.owner });
//!         Ok(id)
//!     }
//! }
//!
//! #[query_handler(AccountOwner)]
//! pub struct AccountOwnerHandler { accounts: Arc<Accounts> }
//!
//! impl QueryHandler<AccountOwner> for AccountOwnerHandler {
//!     async fn handle(&self, q: AccountOwner, _cx: &QueryContext) -> Result<Option<String>, Error> {
//!         Ok(self.accounts.0.lock().unwrap().get(&q.id).cloned())
//!     }
//! }
//!
//! #[event_handler(AccountOpened)]
//! pub struct CountOpenings {
//!     #[inject(default)]
//!     opened: Arc<std::sync::atomic::AtomicU64>,
//! }
//!
//! impl EventHandler<AccountOpened> for CountOpenings {
//!     async fn handle(&self, _e: &AccountOpened, _cx: &mut EventContext) -> Result<(), Error> {
//!         self.opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
//! let bus = Bus::builder()
//!     .discover(false)
//!     .register::<OpenAccountHandler>()
//!     .register::<AccountOwnerHandler>()
//!     .register::<CountOpenings>()
//!     .provide(Arc::new(Accounts::default()))
//!     .provide(opened.clone())
//!     .build()?;
//! let id = bus.send(OpenAccount { owner: "ada".into() }).await?;
//! assert_eq!(bus.query(AccountOwner { id }).await?, Some("ada".to_owned()));
//! assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 1);
//! println!("{}", bus.describe()); // message -> handler -> layers -> file:line
//! # Ok(()) }
//! ```
//!
//! A dependency nobody provided, or two handlers for one command, stop `build()` with every
//! problem listed at once ([`BuildError`](crate::BuildError)), each with the `file:line` of the
//! handler and how to fix it.
//!
//! ## 3. Decorators: authorize, validate, cache, retry, time out
//!
//! Cross-cutting concerns are attributes on the handler struct, in any order; the pipeline runs
//! them in a fixed order ([`pipeline_order`](crate::pipeline_order)). Field rules come from the
//! [`validator`](https://docs.rs/validator) crate. The caller's identity travels in the
//! [`Envelope`](crate::Envelope).
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use cqrs_core::prelude::*;
//! use validator::Validate;
//!
//! #[derive(Command, Validate, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! pub struct RenameProduct {
//!     pub id: u64,
//!     #[validate(length(min = 3, max = 60))]
//!     pub name: String,
//! }
//!
//! #[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
//! #[query(output = String)]
//! pub struct ProductName { pub id: u64 }
//!
//! #[command_handler(RenameProduct, timeout = "2s", invalidates = [ProductName])]
//! #[authorize(permissions = ["product:write"], admin_override)]
//! #[retry(max_attempts = 3, delay = "10ms", backoff = 2.0, on = [Unavailable])]
//! pub struct RenameProductHandler { names: Arc<std::sync::Mutex<String>> }
//!
//! impl CommandHandler<RenameProduct> for RenameProductHandler {
//!     async fn handle(&self, cmd: RenameProduct, _cx: &mut CommandContext) -> Result<(), Error> {
//!         *self.names.lock().unwrap() = cmd.name;
//!         Ok(())
//!     }
//! }
//!
//! #[query_handler(ProductName)]
//! #[cached_query(ttl = "5m", vary_by = [id])]
//! pub struct ProductNameHandler { names: Arc<std::sync::Mutex<String>>, reads: Arc<AtomicU32> }
//!
//! impl QueryHandler<ProductName> for ProductNameHandler {
//!     async fn handle(&self, _q: ProductName, _cx: &QueryContext) -> Result<String, Error> {
//!         self.reads.fetch_add(1, Ordering::SeqCst);
//!         Ok(self.names.lock().unwrap().clone())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let reads = Arc::new(AtomicU32::new(0));
//! let bus = Bus::builder()
//!     .discover(false)
//!     .register::<RenameProductHandler>()
//!     .register::<ProductNameHandler>()
//!     .provide(Arc::new(std::sync::Mutex::new("tea".to_owned())))
//!     .provide(reads.clone())
//!     .build()?;
//!
//! let editor = Principal::new("eve").with_permissions(["product:write"]);
//! let rename = |name: &str| RenameProduct { id: 1, name: name.to_owned() };
//!
//! // No principal: 401-style `Unauthenticated`; a principal without the permission: `Forbidden`.
//! assert_eq!(bus.send(rename("green tea")).await.unwrap_err().status(), Status::Unauthenticated);
//! let nobody = Principal::new("mallory");
//! let err = bus.send(Envelope::new(rename("green tea")).principal(nobody)).await.unwrap_err();
//! assert_eq!(err.status(), Status::Forbidden); // "... requires permission `product:write` ..."
//!
//! // A name that breaks the rules never reaches the handler.
//! let err = bus.send(Envelope::new(rename("x")).principal(editor.clone())).await.unwrap_err();
//! assert_eq!(err.fields()[0].field, "name");
//!
//! // The second query is answered from the cache; the rename drops the cached answer.
//! assert!(!bus.query_with_report(ProductName { id: 1 }).await?.cache_hit);
//! assert!(bus.query_with_report(ProductName { id: 1 }).await?.cache_hit);
//! bus.send(Envelope::new(rename("green tea")).principal(editor)).await?;
//! assert_eq!(bus.query(ProductName { id: 1 }).await?, "green tea");
//! assert_eq!(reads.load(Ordering::SeqCst), 2);
//! # Ok(()) }
//! ```
//!
//! Cached answers are kept **per caller**: the key includes the principal's id (anonymous
//! callers share one scope), because the handler may read `cx.principal()` and the macro cannot
//! see its body. A query whose answer is the same for everyone says so with
//! `#[cached_query(.., public)]`, and then every caller shares one cached answer.
//!
//! `invalidates = [ProductName]` drops every answer of the query. To drop only the answers a
//! command changed, map the command's fields to the query's `vary_by` fields:
//! `invalidates = [ProductName(id = id)]` drops the answers for that product, for every caller,
//! and keeps the others (`bus.invalidate_answer(&query)` does the same by hand). That the query
//! has the field and the types agree is checked at compile time; that the mapping names exactly
//! the query's `vary_by` fields, when the bus is built. With several instances of a service,
//! invalidations reach every process: over PostgreSQL `LISTEN`/`NOTIFY` when the bus has
//! PostgreSQL, over Redis pub/sub with `.redis(client)` (see
//! [`InvalidationChannel`](crate::InvalidationChannel)); `RedisCache` adds a second level shared
//! by the processes under each one's in-process cache.
//!
//! Mistakes in these attributes are compile errors on the offending token: an unknown option
//! (with the list of known ones), `vary_by` naming a field the query lacks, `#[cached_query]` on
//! a command handler, `max_attempts = 0`, `ttl = "5 minutes"`.
//!
//! ## 4. Idempotency
//!
//! A command sent with an idempotency key runs once per key: a repeat with the same payload gets
//! the first reply (and emits nothing), a repeat with another payload is a `Conflict`, and
//! concurrent repeats wait for the first. Keys are kept in memory, or in the database when the
//! bus has one.
//!
//! A key belongs to its caller and its command: it is stored under (command, principal id, key),
//! anonymous callers sharing one scope. Another caller sending the same key and body runs their
//! own command; they never receive the first caller's reply.
//!
//! ```
//! # use cqrs_core::prelude::*;
//! # #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! # #[command(output = u64)]
//! # pub struct Pay { pub cents: u64 }
//! # #[command_handler(Pay)] pub struct PayHandler;
//! # impl CommandHandler<Pay> for PayHandler {
//! #     async fn handle(&self, cmd: Pay, _cx: &mut CommandContext) -> Result<u64, Error> { Ok(cmd.cents) }
//! # }
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let bus = Bus::builder().discover(false).register::<PayHandler>().build()?;
//! let first = bus.send_with_report(Envelope::new(Pay { cents: 500 }).idempotency_key("pay-1")).await?;
//! let again = bus.send_with_report(Envelope::new(Pay { cents: 500 }).idempotency_key("pay-1")).await?;
//! assert_eq!((first.output, again.output), (500, 500));
//! assert!(again.replayed);
//! let other = bus.send(Envelope::new(Pay { cents: 9 }).idempotency_key("pay-1")).await;
//! assert_eq!(other.unwrap_err().status(), Status::Conflict);
//! # Ok(()) }
//! ```
//!
//! ## 5. Transactions and the outbox (features `sqlite`, `postgres`)
//!
//! Give the bus a database, create its tables with `Bus::migrate`, and a
//! `#[transactional]` handler runs in a transaction it reaches with `cx.tx::<DB>()`: its SQL,
//! the events it emits (written to the outbox) and its idempotent reply commit together, or not
//! at all. Events are delivered after commit, at least once, even across a crash. (On
//! PostgreSQL the outbox marks a delivered event with `synchronous_commit = off` for that one
//! statement, which saves a wait for the disk per command: a crash just after a delivery can
//! lose the mark, and the event is then delivered again, as at-least-once allows. The
//! handler's own transaction waits for the disk as usual.)
//!
#![cfg_attr(feature = "sqlite", doc = "```")]
#![cfg_attr(not(feature = "sqlite"), doc = "```ignore")]
//! use cqrs_core::prelude::*;
//! use cqrs_core::sqlx;
//!
//! #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! pub struct AddNote { pub text: String, pub fail: bool }
//!
//! #[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! pub struct NoteAdded { pub text: String }
//!
//! #[command_handler(AddNote, emits = [NoteAdded])]
//! #[transactional(isolation = "serializable")]
//! pub struct AddNoteHandler;
//!
//! impl CommandHandler<AddNote> for AddNoteHandler {
//!     async fn handle(&self, cmd: AddNote, cx: &mut CommandContext) -> Result<(), Error> {
//!         sqlx::query("INSERT INTO notes (text) VALUES (?)")
//!             .bind(&cmd.text)
//!             .execute(&mut **cx.tx::<sqlx::Sqlite>()?)
//!             .await?;
//!         cx.emit(NoteAdded { text: cmd.text });
//!         if cmd.fail {
//!             return Err(Error::unavailable("changed my mind")); // rolls back the insert and the event
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = cqrs_core::sqlite_pool("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE notes (text TEXT)").execute(&pool).await?;
//! let bus = Bus::builder().discover(false).register::<AddNoteHandler>().sqlite(pool.clone()).build()?;
//! bus.migrate().await?;
//!
//! bus.send(AddNote { text: "kept".into(), fail: false }).await?;
//! bus.send(AddNote { text: "dropped".into(), fail: true }).await.unwrap_err();
//! let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM notes").fetch_one(&pool).await?;
//! assert_eq!(n, 1);
//! assert_eq!(bus.pending_events().await?, 0); // the kept note's event was delivered
//! # Ok(()) }
//! ```
//!
//! ## 6. Event sourcing
//!
//! An [`Aggregate`](crate::Aggregate) is state rebuilt from its events. `cx.load` replays it
//! (from its latest snapshot), `record` applies and keeps new events, `cx.save` appends them at
//! the version it loaded, failing with `Conflict` when someone else appended first, which
//! `#[retry(on = [Conflict])]` turns into reload-and-retry. See the example on
//! [`Aggregate`](crate::Aggregate), and [`testing::AggregateTest`](crate::testing::AggregateTest)
//! for given/when/then tests.
//!
//! ## 7. Testing your handlers
//!
//! [`testing`](crate::testing) builds a bus per test, replaces handlers with stubs
//! (`override_handler`), records every event published and delivered, and tests aggregates
//! given/when/then.
//!
//! ## 8. HTTP (feature `axum`)
//!
//! [`Error`](crate::Error) is an axum response in the `application/problem+json` form, and the
//! helpers of the `http` module take a route from request to `bus.send` in one line, with the
//! caller from a bearer token and the `Idempotency-Key` header in the envelope.
//!
//! ## 9. Events across processes: NATS JetStream (feature `nats`)
//!
//! One process delivers an event to its own handlers. A service that runs several instances,
//! or services that react to each other's events, add a broker:
//!
#![cfg_attr(all(feature = "sqlite", feature = "nats"), doc = "```no_run")]
#![cfg_attr(not(all(feature = "sqlite", feature = "nats")), doc = "```ignore")]
//! # use cqrs_core::prelude::*;
//! # use cqrs_core::Nats;
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let pool = cqrs_core::sqlite_pool("shop.db").await?;
//! let nats = Nats::connect("nats://127.0.0.1:4222").await?.service("shop");
//! let bus = Bus::builder().sqlite(pool).nats(nats).build()?; // `.nats` needs the database
//! bus.migrate().await?;
//! bus.start().await?;   // streams and consumers created or checked; relay and consumers run
//! // .. serve ..
//! bus.shutdown(std::time::Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```
//!
//! **What changes.** Every event goes through the outbox: a `#[transactional]` command's in its
//! transaction, any other command's (and `bus.publish`'s) in a transaction of its own right
//! after the handler. The outbox relay publishes committed rows to the stream (`CQRS_EVENTS` by
//! default) and marks a row sent once JetStream acknowledged it; nothing is published for
//! rolled-back work, and a process that dies between commit and publish leaves the row for the
//! next relay (its own after a restart, or another instance's once the claim runs out). The
//! event id is the message id, so JetStream drops a second publish of the same event (within
//! its duplicate window, 2 minutes). No event is delivered in the emitting process any more:
//! each event handler receives events from its own durable consumers.
//!
//! **Who gets what.** Every handler (or `group = ".."`) gets every event of its type; instances
//! of a service running the same handler share its work (competing consumers named
//! `<service>_<group>_<partition>`); another service (another `service(..)` name) gets every
//! event too. A handler in another binary reads an event by its stable name (`#[event(name =
//! "orders.event")]`), declaring only the fields it needs: see `examples/src/bin/
//! order_notifier.rs`. A new consumer starts with new events; [`Bus::replay`](crate::Bus::replay)
//! reaches the past.
//!
//! **Order.** The events of one partition key (the aggregate they were saved for, or
//! `#[event(partition_key = field)]`) reach each handler in the order they were committed, one
//! at a time; other keys proceed in parallel, over `partitions` (8). The order holds at
//! publish too: the outbox never hands on a row while an older row of its key is unsent. While
//! an event is retried it holds back the later events of its partition; once parked (below) it
//! no longer does.
//!
//! **Failures.** A handler's error (or panic) is retried through redelivery, after a delay that
//! doubles from 1 s up to 60 s ([`Nats::retry_backoff`](crate::Nats::retry_backoff)); on the
//! last delivery (`max_deliver`, 5, per handler with
//! [`Nats::handler_max_deliver`](crate::Nats::handler_max_deliver)) the event is parked in the
//! dead-letter stream `<stream>_DLQ` with the error and the handler's name. An event that
//! cannot be read (not a CloudEvent, or data that no longer decodes: a schema that drifted) is
//! parked at once. [`Bus::dead_letters`](crate::Bus::dead_letters) lists them;
//! [`Bus::redeliver`](crate::Bus::redeliver) puts one, or all of a handler's, back to that
//! handler only. Delivery is at least once: a handler without `#[transactional]` may see an
//! event twice (a lost acknowledgement, a nats-server killed with `-9` before it saved its
//! consumers' state), and reads `cx.event_id()` to tell.
//!
//! **Effects once.** `#[transactional]` on an event handler runs it in a database transaction
//! that also records (handler, event id) in `cqrs_inbox`: a redelivered event it already
//! handled is acknowledged without running it. `cx.tx::<DB>()` is that transaction. A replay
//! clears the handler's inbox first.
//!
//! **On the wire** each event is a CloudEvent in the binary mode of the NATS protocol binding
//! (the 1.0.3 draft): the JSON data as the body, the attributes as `ce-*` headers (`ce-id`,
//! `ce-type`, `ce-source`, `ce-time`, and the extensions `correlationid`, `causationid`,
//! `sagaid`, `principalid`, `aggregatetype`, `aggregateid`, `aggregateversion`,
//! `partitionkey`) and a W3C `traceparent` whose trace id is the correlation id. Subjects are
//! `<prefix>.ev.<event>.<partition>`, the event's name escaped (letters, digits and `_` kept,
//! any other byte written `-XX`), the partition `FNV-1a-32(key) mod partitions`. In a handler
//! of another process, `cx.principal()` has the sender's id and no roles: a message on the
//! broker is not a credential, so commands it sends are authorized as that bare principal.
//!
//! **Start and stop.** `build()` stays synchronous and touches no network; `start()` reports
//! every clash between what exists on the server and what the bus needs at once (a stream's
//! `max_age`, its number of partitions, a consumer's `max_deliver`, ..), and `shutdown(grace)`
//! stops pulling, lets the events being handled finish (or gives them back), then stops the
//! relay. Tested with nats-server 2.9.10.
//!
//! ## 10. One command per key across processes: `#[exclusive]` (features `postgres`, `redis`)
//!
//! Some work must not run twice at once for one key, in any process: two withdrawals reading
//! one balance, two jobs importing one file. `#[exclusive(key = field)]` takes a lock named by
//! the field's value before each attempt, and `name = ".."` puts commands in one lock space, so
//! that a `Withdraw` and a `Deposit` on one account wait for each other:
//!
#![cfg_attr(feature = "postgres", doc = "```no_run")]
#![cfg_attr(not(feature = "postgres"), doc = "```ignore")]
//! use cqrs_core::prelude::*;
//! use cqrs_core::sqlx;
//!
//! #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! #[command(output = i64)]
//! pub struct Withdraw { pub account: i64, pub cents: i64 }
//!
//! #[command_handler(Withdraw)]
//! #[transactional(isolation = "repeatable_read")]
//! #[exclusive(key = account, name = "account")]
//! pub struct WithdrawHandler;
//!
//! impl CommandHandler<Withdraw> for WithdrawHandler {
//!     async fn handle(&self, cmd: Withdraw, cx: &mut CommandContext) -> Result<i64, Error> {
//!         let tx = cx.tx::<sqlx::Postgres>()?;
//!         let (balance,): (i64,) = sqlx::query_as("SELECT balance FROM accounts WHERE id = $1")
//!             .bind(cmd.account).fetch_one(&mut **tx).await?;
//!         if balance < cmd.cents {
//!             return Err(Error::conflict("not enough money"));
//!         }
//!         sqlx::query("UPDATE accounts SET balance = $1 WHERE id = $2")
//!             .bind(balance - cmd.cents).bind(cmd.account).execute(&mut **tx).await?;
//!         Ok(balance - cmd.cents)
//!     }
//! }
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/bank").await?;
//! let bus = Bus::builder().postgres(pool).build()?; // or `.redis(client)`
//! # Ok(()) }
//! ```
//!
//! **What it guarantees.** While a command holds the lock of `account:7`, no other command of
//! that space and key runs its handler, in this process or another sharing the database (or
//! Redis). Each attempt takes the lock, then begins its transaction, runs, commits, and only
//! then frees it: the next holder begins after the commit and reads what it wrote. A retried
//! attempt waits its turn again. The key is the field's value: a string as is, anything else
//! (any `Serialize` type) as its JSON text.
//!
//! **On PostgreSQL** (`.postgres(pool)`; used whenever the bus has it) the lock is a session
//! advisory lock taken before `BEGIN`, on the connection the transaction then runs on: not one
//! taken inside the transaction, which would be waited for after a `REPEATABLE READ` snapshot
//! was taken and read data older than the previous holder's commit. It ends with its session,
//! so a process that dies frees its keys at once, and it costs no extra connection. Its
//! number is `(hashtext(schema || ':' || name), hashtext(key))`: two keys whose hashes meet
//! share a lock (they wait for each other; they never run together).
//!
//! **On Redis** (`.redis(client)`, without PostgreSQL; SQLite needs it beside) the lock is a
//! lease (`SET NX PX`) that the holder renews every third of it while the handler runs, and
//! deletes with a compare-and-delete script when done. A holder that dies stops renewing: its
//! key is free within one lease ([`redis_lock_lease`](crate::BusBuilder::redis_lock_lease),
//! 10 s by default). A holder that stalls longer than its lease (a long GC-like pause, a
//! partition) can still be running when the next one starts; its writes elsewhere are told
//! apart by [`cx.fencing_token()`](crate::CommandContext::fencing_token), a number that grows
//! with each holder: store it with what you write and refuse a smaller one. A
//! `#[transactional]` command confirms its lease just before `COMMIT` (renewing it once
//! more, one round trip): if it ran out while the handler ran, the transaction is rolled back
//! and the command fails with `Conflict`, saying so; if Redis does not answer then, it fails
//! with `Unavailable`, rolled back too. Without a transaction there is nothing to roll back:
//! a lease found lost when the lock is freed is logged as an error. On PostgreSQL the token
//! comes from the sequence `cqrs_exclusive_fence`, and the lock cannot run out while its
//! session lives.
//!
//! **Waiting and failures.** A command whose key is held tries again after a jittered pause
//! (2 ms doubling up to 50 ms) for up to 10 s
//! ([`ExclusiveLayer::DEFAULT_WAIT`](crate::ExclusiveLayer::DEFAULT_WAIT)) or its own
//! timeout, whichever is first, then fails with `Conflict` (the key is busy: a 409;
//! `#[retry]` retries it by default). A lock backend that does not answer fails it with
//! `Unavailable` (fail closed: the handler does not run). A handler that errors, panics or
//! times out frees its lock like one that succeeds. The lock is not re-entrant: a handler that
//! sends a command of its own space and key waits for itself. `build()` refuses an `#[exclusive]`
//! handler on a bus with neither PostgreSQL nor Redis, naming it and the fix.
//!
//! **Where it does not hold.** A session advisory lock needs a session: behind a pooler in
//! transaction mode (PgBouncer's `pool_mode = transaction`) the lock and the transaction can
//! land on different server connections, and nothing is excluded; point the bus at PostgreSQL
//! directly, or at a pooler in session mode. On Redis, the take is one script over two keys
//! (the lease and the prefix's fence counter), which a Redis Cluster refuses when they hash to
//! different slots: use a single Redis (or a primary with replicas) for locks.
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `validator` (default) | field rules on messages |
//! | `sqlite` | transactions, outbox, idempotency keys, event store on SQLite |
//! | `postgres` | the same on PostgreSQL; cache invalidations between processes (`LISTEN`/`NOTIFY`); `#[exclusive]` locks (session advisory locks) |
//! | `redis` | cache invalidations between processes (pub/sub), `RedisCache` (a shared second level), `RedisIdempotencyStore`, `#[exclusive]` leases |
//! | `axum` | problem+json responses, extractors, route helpers |
//! | `metrics` | dispatch counters and latency histograms through the `metrics` facade |
//! | `nats` | events across processes on NATS JetStream (needs `sqlite` or `postgres`) |
