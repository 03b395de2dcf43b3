//! `Bus::builder()`: dependencies, backends, middleware, and the checks of `build()`.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::bus::backends::Backends;
use crate::bus::checks::Candidate;
use crate::di::{Dependencies, Injectable};
use crate::event_store::EventStore;
use crate::events::{EventObserver, HandlerFailure};
use crate::handler::{CommandHandler, EventHandler, QueryHandler};
use crate::message::{Command, Event, MessageInfo, MessageKind, Query};
use crate::pipeline::Decorator;
use crate::pipeline::assemble::{self};
use crate::pipeline::authorize::{DynResourcePolicy, ResourcePolicy};
use crate::pipeline::cache::{MemoryCache, QueryCache};
use crate::pipeline::idempotency::{self, DynIdempotencyStore, IdempotencyStore};
use crate::pipeline::middleware::{DynMiddleware, Middleware};
use crate::pipeline::runtime::FailureSink;
use crate::registry::Handler;
use crate::registry::Location;

/// Configures and builds a [`Bus`](crate::Bus).
///
/// ```
/// use std::sync::Arc;
/// use cqrs_core::prelude::*;
///
/// # #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)] struct Ping;
/// # #[command_handler(Ping)] struct PingHandler { greeting: Arc<String> }
/// # impl CommandHandler<Ping> for PingHandler {
/// #     async fn handle(&self, _: Ping, _: &mut CommandContext) -> Result<(), Error> { Ok(()) }
/// # }
/// let bus = Bus::builder()
///     .discover(false)                          // only what is registered here
///     .register::<PingHandler>()
///     .provide(Arc::new("hello".to_owned()))    // injected into fields of type Arc<String>
///     .middleware(AuditLog::new())
///     .build()
///     .expect("every handler has its dependencies");
/// ```
pub struct BusBuilder {
    pub(super) discover: bool,
    pub(super) strict: bool,
    pub(super) dependencies: Dependencies,
    pub(super) manual: Vec<Candidate>,
    pub(super) middleware: Vec<Arc<dyn DynMiddleware>>,
    pub(super) failure_sink: Option<FailureSink>,
    /// Decorators given by hand, per handler type.
    pub(super) decorators: HashMap<TypeId, Vec<Decorator>>,
    pub(crate) observers: Vec<Arc<dyn EventObserver>>,
    pub(super) resource_policy: Option<Arc<dyn DynResourcePolicy>>,
    pub(super) idempotency_store: Option<Arc<dyn DynIdempotencyStore>>,
    pub(super) idempotency_ttl: Duration,
    pub(super) query_cache: Arc<dyn QueryCache>,
    pub(crate) backends: Backends,
}

impl BusBuilder {
    pub(crate) fn new() -> Self {
        BusBuilder {
            discover: true,
            strict: false,
            dependencies: Dependencies::default(),
            manual: Vec::new(),
            middleware: Vec::new(),
            failure_sink: None,
            decorators: HashMap::new(),
            observers: Vec::new(),
            resource_policy: None,
            idempotency_store: None,
            idempotency_ttl: idempotency::DEFAULT_TTL,
            query_cache: Arc::new(MemoryCache::new()),
            backends: Backends::default(),
        }
    }

    /// Whether to install every handler declared with the attribute macros in the program
    /// (on by default). Turn it off to build a bus with only the handlers registered by hand,
    /// e.g. in a test that wants one handler alone.
    pub fn discover(mut self, discover: bool) -> Self {
        self.discover = discover;
        self
    }

    /// Makes a derived command or query without a handler an error instead of a warning.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Provides a value for every handler field of type `T`.
    pub fn provide<T: Injectable>(mut self, value: T) -> Self {
        self.dependencies.insert(value);
        self
    }

    /// Registers a handler declared with an attribute macro. With discovery on this is not
    /// needed (registering one twice is harmless); with it off, only registered handlers exist.
    /// Its decorators come with it, and it goes through the same checks.
    pub fn register<H: Handler>(mut self) -> Self {
        self.manual
            .push(Candidate::from_registration(&H::REGISTRATION));
        self
    }

    /// Registers an instance as the handler of command `C` (for generic handlers, or handlers
    /// built by hand). Decorator attributes on its type apply.
    #[track_caller]
    pub fn command_handler<C: Command, H: CommandHandler<C>>(self, handler: H) -> Self {
        self.command_instance::<C, H>(handler, false, Location::caller())
    }

    #[doc(hidden)]
    pub(crate) fn command_instance<C: Command, H: CommandHandler<C>>(
        mut self,
        handler: H,
        replaces: bool,
        location: Location,
    ) -> Self {
        let mut candidate = Candidate::instance::<H>(
            MessageKind::Command,
            MessageInfo::of::<C>(),
            location,
            Box::new(move |inst| Some(assemble::command_instance::<C, H>(handler, inst))),
        );
        candidate.replaces = replaces;
        self.manual.push(candidate);
        self
    }

    /// Registers an instance as the handler of query `Q`.
    #[track_caller]
    pub fn query_handler<Q: Query, H: QueryHandler<Q>>(self, handler: H) -> Self {
        self.query_instance::<Q, H>(handler, false, Location::caller())
    }

    pub(crate) fn query_instance<Q: Query, H: QueryHandler<Q>>(
        mut self,
        handler: H,
        replaces: bool,
        location: Location,
    ) -> Self {
        let mut candidate = Candidate::instance::<H>(
            MessageKind::Query,
            MessageInfo::of::<Q>(),
            location,
            Box::new(move |inst| Some(assemble::query_instance::<Q, H>(handler, inst))),
        );
        candidate.replaces = replaces;
        self.manual.push(candidate);
        self
    }

    /// Registers an instance as a handler of event `E`.
    #[track_caller]
    pub fn event_handler<E: Event, H: EventHandler<E>>(mut self, handler: H) -> Self {
        self.manual.push(Candidate::instance::<H>(
            MessageKind::Event,
            MessageInfo::of::<E>(),
            Location::caller(),
            Box::new(move |inst| Some(assemble::event_instance::<E, H>(handler, inst))),
        ));
        self
    }

    /// Decorates handler `H` by hand, as its attributes would (`#[retry]`, `#[authorize]`, ..):
    /// for handlers registered as instances, for targets where `inventory` collects nothing, and
    /// for tests. The layers go through the same checks as the attributes'.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cqrs_core::prelude::*;
    /// use cqrs_core::{Decorator, RetryLayer};
    ///
    /// # #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)] struct Ping;
    /// struct PingHandler;
    /// impl CommandHandler<Ping> for PingHandler {
    ///     async fn handle(&self, _: Ping, _: &mut CommandContext) -> Result<(), Error> { Ok(()) }
    /// }
    ///
    /// let bus = Bus::builder()
    ///     .discover(false)
    ///     .command_handler(PingHandler)
    ///     .decorate::<PingHandler>([
    ///         Decorator::Retry(RetryLayer::new(3).on(&[Status::Unavailable])),
    ///         Decorator::Timeout(Duration::from_secs(2)),
    ///     ])
    ///     .build()
    ///     .unwrap();
    /// assert!(bus.describe().to_string().contains("timeout(2s)"));
    /// ```
    pub fn decorate<H: 'static>(mut self, decorators: impl IntoIterator<Item = Decorator>) -> Self {
        self.decorators
            .entry(TypeId::of::<H>())
            .or_default()
            .extend(decorators);
        self
    }

    /// Adds a global middleware (layer 2), after those added before it.
    pub fn middleware<M: Middleware>(mut self, middleware: M) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// Called for every failed delivery of an event to a handler (after it is logged).
    pub fn on_handler_failure(
        mut self,
        sink: impl Fn(&HandlerFailure<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.failure_sink = Some(Arc::new(sink));
        self
    }

    /// The policy `#[authorize(resource = field)]` asks.
    pub fn resource_policy<P: ResourcePolicy>(mut self, policy: P) -> Self {
        self.resource_policy = Some(Arc::new(policy));
        self
    }

    /// Where idempotency keys are kept (in memory unless a database is configured).
    pub fn idempotency_store<S: IdempotencyStore>(mut self, store: S) -> Self {
        self.idempotency_store = Some(Arc::new(store));
        self
    }

    /// How long a stored idempotent reply is kept (24 hours by default).
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl;
        self
    }

    /// Where `#[cached_query]` answers are kept ([`MemoryCache`] by default).
    pub fn query_cache<C: QueryCache>(mut self, cache: C) -> Self {
        self.query_cache = Arc::new(cache);
        self
    }

    /// Keeps aggregates' events in this store (the database's when there is one, otherwise in
    /// memory).
    pub fn event_store<S: EventStore>(mut self, store: S) -> Self {
        self.backends.set_event_store(store);
        self
    }
}

impl fmt::Debug for BusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusBuilder")
            .field("discover", &self.discover)
            .field("strict", &self.strict)
            .field("dependencies", &self.dependencies)
            .field(
                "registered",
                &self
                    .manual
                    .iter()
                    .map(|c| c.handler_name)
                    .collect::<Vec<_>>(),
            )
            .field(
                "middleware",
                &self
                    .middleware
                    .iter()
                    .map(|m| m.type_name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}
