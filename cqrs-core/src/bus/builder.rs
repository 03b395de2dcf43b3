//! `Bus::builder()`: dependencies, backends, middleware, and the checks of `build()`.

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::build_error::{BuildError, BuildProblem};
use crate::bus::backends::Backends;
use crate::bus::describe::{Description, HandlerDescription, MessageDescription};
use crate::bus::{Bus, BusRef, QueryBus, Shared};
use crate::di::{Dependencies, Injectable, Resolver};
use crate::event_store::{EventStore, MemoryEventStore};
use crate::events::{EventObserver, HandlerFailure};
use crate::handler::{CommandHandler, EventHandler, QueryHandler};
use crate::message::{Command, Event, MessageInfo, MessageKind, Query};
use crate::pipeline::assemble::{self, Installation, Installed};
use crate::pipeline::authorize::{DynResourcePolicy, ResourcePolicy};
use crate::pipeline::cache::{MemoryCache, QueryCache};
use crate::pipeline::idempotency::{
    self, DynIdempotencyStore, IdempotencyLayer, IdempotencyStore, MemoryIdempotencyStore,
};
use crate::pipeline::middleware::{DynMiddleware, Middleware};
use crate::pipeline::runtime::{FailureSink, Runtime};
use crate::pipeline::stores::Stores;
use crate::pipeline::{Decorator, EventPipe, Layers};
use crate::registry::Handler;
use crate::registry::{self, HandlerOptions, HandlerRegistration, Location, MessageRegistration};

type Install = Box<dyn FnOnce(&mut Installation<'_>) -> Option<Installed> + Send>;

/// A handler waiting to be installed.
pub(crate) struct Candidate {
    pub(crate) kind: MessageKind,
    pub(crate) handler_name: &'static str,
    pub(crate) handler_type: TypeId,
    pub(crate) message: MessageInfo,
    pub(crate) location: Location,
    pub(crate) options: HandlerOptions,
    /// Replaces every other handler of its command or query (test overrides).
    pub(crate) replaces: bool,
    pub(crate) install: Install,
}

impl Candidate {
    fn from_registration(reg: &HandlerRegistration) -> Self {
        let install = reg.install;
        Candidate {
            kind: reg.kind,
            handler_name: reg.handler_name,
            handler_type: (reg.handler_type)(),
            message: (reg.message)(),
            location: reg.location,
            options: reg.options,
            replaces: false,
            install: Box::new(install),
        }
    }

    fn instance<H: Send + Sync + 'static>(
        kind: MessageKind,
        message: MessageInfo,
        location: Location,
        install: Install,
    ) -> Self {
        Candidate {
            kind,
            handler_name: short_type_name::<H>(),
            handler_type: TypeId::of::<H>(),
            message,
            location,
            options: HandlerOptions::new(),
            replaces: false,
            install,
        }
    }
}

/// The type's name without its module path (generic arguments keep theirs).
pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    match base.rfind("::") {
        Some(i) => &full[i + 2..],
        None => full,
    }
}

/// Configures and builds a [`Bus`].
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
    discover: bool,
    strict: bool,
    dependencies: Dependencies,
    manual: Vec<Candidate>,
    middleware: Vec<Arc<dyn DynMiddleware>>,
    failure_sink: Option<FailureSink>,
    /// Decorators given by hand, per handler type.
    decorators: HashMap<TypeId, Vec<Decorator>>,
    pub(crate) observers: Vec<Arc<dyn EventObserver>>,
    resource_policy: Option<Arc<dyn DynResourcePolicy>>,
    idempotency_store: Option<Arc<dyn DynIdempotencyStore>>,
    idempotency_ttl: Duration,
    query_cache: Arc<dyn QueryCache>,
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

    /// Checks everything and builds the bus, or lists every problem found.
    pub fn build(self) -> Result<Bus, BuildError> {
        let BusBuilder {
            discover,
            strict,
            dependencies,
            manual,
            middleware,
            failure_sink,
            decorators,
            observers,
            resource_policy,
            idempotency_store,
            idempotency_ttl,
            query_cache,
            mut backends,
        } = self;
        backends.finish();
        let mut problems = Vec::new();

        let candidates = collect_candidates(manual, discover);
        let messages = collect_messages(&candidates, discover, &mut problems);
        let candidates = one_handler_per_message(candidates, &mut problems);
        let layered: Vec<(Candidate, Layers)> = candidates
            .into_iter()
            .map(|c| {
                let layers = assemble_layers(&c, &decorators, &mut problems);
                (c, layers)
            })
            .collect();
        check_backends(
            &layered,
            resource_policy.is_some(),
            backends.database.is_some(),
            &mut problems,
        );
        unhandled_messages(&messages, &layered, strict, &mut problems);

        let custom_idempotency = idempotency_store.is_some();
        let idempotency_store = idempotency_store
            .or_else(|| backends.database_idempotency.clone())
            .unwrap_or_else(|| Arc::new(MemoryIdempotencyStore::new()));
        let command_middleware: Box<[_]> = middleware
            .iter()
            .filter(|m| m.applies_to_dyn(MessageKind::Command))
            .cloned()
            .collect();
        let query_middleware: Box<[_]> = middleware
            .iter()
            .filter(|m| m.applies_to_dyn(MessageKind::Query))
            .cloned()
            .collect();
        let description = describe(
            &messages,
            &layered,
            command_middleware.len(),
            query_middleware.len(),
        );

        let event_store_in_db =
            backends.event_store.is_none() && backends.database_events.is_some();
        let (event_store, memory_events) = match (backends.event_store, backends.database_events) {
            (Some(store), _) => (store, backends.memory_events),
            (None, Some(store)) => (store, None),
            (None, None) => {
                let memory = Arc::new(MemoryEventStore::new());
                (
                    memory.clone() as Arc<dyn crate::event_store::DynEventStore>,
                    Some(memory),
                )
            }
        };
        let stores = Stores {
            idempotency_in_tx: !custom_idempotency && backends.database.is_some(),
            database: backends.database,
            outbox_inline: backends.outbox_inline,
            event_store,
            memory_events,
            event_store_in_db,
        };
        let mut dependencies = dependencies;
        let inner = Arc::new_cyclic(|weak| {
            // Handlers get handles that do not keep the bus alive.
            dependencies.insert(Bus {
                inner: BusRef::Weak(weak.clone()),
            });
            dependencies.insert(QueryBus {
                inner: BusRef::Weak(weak.clone()),
            });
            let mut commands = table(registry::slots_in_use(MessageKind::Command));
            let mut queries = table(registry::slots_in_use(MessageKind::Query));
            let mut events: Vec<Vec<(&'static str, Box<dyn EventPipe>)>> = Vec::new();
            let mut event_decoders = HashMap::new();
            let mut cache_regions = HashMap::new();
            for (candidate, layers) in layered {
                let slot = (candidate.message.slot)();
                let mut inst = Installation {
                    resolver: Resolver::new(
                        &dependencies,
                        candidate.handler_name,
                        candidate.location,
                        &mut problems,
                    ),
                    handler_name: candidate.handler_name,
                    layers,
                    query_cache: &*query_cache,
                    cache_regions: &mut cache_regions,
                };
                match (candidate.install)(&mut inst) {
                    Some(Installed::Command(pipe)) => put(&mut commands, slot, pipe),
                    Some(Installed::Query(pipe)) => put(&mut queries, slot, pipe),
                    Some(Installed::Event(pipe)) => {
                        let (name, decoder) = pipe.event();
                        event_decoders.insert(name, decoder);
                        if events.len() <= slot {
                            events.resize_with(slot + 1, Vec::new);
                        }
                        events[slot].push((candidate.handler_name, pipe));
                    }
                    None => {}
                }
            }
            let events = events
                .into_iter()
                .map(|mut handlers| {
                    handlers.sort_by_key(|(name, _)| *name);
                    handlers.into_iter().map(|(_, pipe)| pipe).collect()
                })
                .collect();
            let runtime = Runtime {
                commands: commands.into_boxed_slice(),
                queries: queries.into_boxed_slice(),
                events,
                command_middleware,
                query_middleware,
                failure_sink,
                observers: observers.into_boxed_slice(),
                resource_policy,
                idempotency: Some(IdempotencyLayer {
                    store: idempotency_store,
                    ttl: idempotency_ttl,
                    lease: idempotency::DEFAULT_LEASE,
                }),
                cache_regions,
                event_decoders,
                stores,
            };
            Shared {
                runtime,
                description,
            }
        });
        if !problems.is_empty() {
            return Err(BuildError::new(problems));
        }
        let bus = Bus {
            inner: BusRef::Strong(inner),
        };
        for start in backends.on_build {
            start(&bus);
        }
        Ok(bus)
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

fn table(len: usize) -> Vec<Option<Box<dyn std::any::Any + Send + Sync>>> {
    let mut t = Vec::new();
    t.resize_with(len, || None);
    t
}

fn put(
    table: &mut Vec<Option<Box<dyn std::any::Any + Send + Sync>>>,
    slot: usize,
    pipe: Box<dyn std::any::Any + Send + Sync>,
) {
    if table.len() <= slot {
        table.resize_with(slot + 1, || None);
    }
    table[slot] = Some(pipe);
}

/// Manual registrations first, then (with discovery) every declared handler; a handler type
/// registered twice for the same message counts once.
fn collect_candidates(manual: Vec<Candidate>, discover: bool) -> Vec<Candidate> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for c in manual {
        if seen.insert((c.handler_type, (c.message.type_id)())) {
            out.push(c);
        }
    }
    if discover {
        for reg in inventory::iter::<HandlerRegistration> {
            let key = ((reg.handler_type)(), ((reg.message)().type_id)());
            if seen.insert(key) {
                out.push(Candidate::from_registration(reg));
            }
        }
    }
    // An override replaces every other handler of its command or query.
    let replaced: HashSet<TypeId> = out
        .iter()
        .filter(|c| c.replaces)
        .map(|c| (c.message.type_id)())
        .collect();
    out.retain(|c| c.replaces || !replaced.contains(&(c.message.type_id)()));
    out
}

/// A message type the bus knows of.
struct KnownMessage {
    info: MessageInfo,
    location: Option<Location>,
}

/// Every message: derived ones (with discovery) and those of registered handlers, by kind and
/// name. Two types of one kind with the same name are a problem.
fn collect_messages(
    candidates: &[Candidate],
    discover: bool,
    problems: &mut Vec<BuildProblem>,
) -> BTreeMap<(MessageKind, &'static str), KnownMessage> {
    let mut by_name: BTreeMap<(MessageKind, &'static str), KnownMessage> = BTreeMap::new();
    let mut types = HashSet::new();
    let mut add =
        |info: MessageInfo, location: Option<Location>, problems: &mut Vec<BuildProblem>| {
            let first_sighting = types.insert((info.type_id)());
            match by_name.get_mut(&(info.kind, info.name)) {
                Some(_) if !first_sighting => {}
                Some(known) if (known.info.type_id)() != (info.type_id)() => {
                    problems.push(BuildProblem::DuplicateMessageName {
                        kind: info.kind,
                        name: info.name,
                        types: (known.info.type_name, info.type_name),
                    });
                }
                Some(known) => {
                    known.location = known.location.or(location);
                }
                None => {
                    by_name.insert((info.kind, info.name), KnownMessage { info, location });
                }
            }
        };
    if discover {
        for reg in inventory::iter::<MessageRegistration> {
            add((reg.info)(), Some(reg.location), problems);
        }
    }
    for c in candidates {
        add(c.message, None, problems);
    }
    by_name
}

/// Keeps the first handler of each command and query; each further one is a problem.
fn one_handler_per_message(
    candidates: Vec<Candidate>,
    problems: &mut Vec<BuildProblem>,
) -> Vec<Candidate> {
    let mut owners: HashMap<TypeId, (&'static str, Location)> = HashMap::new();
    let mut out = Vec::with_capacity(candidates.len());
    for c in candidates {
        if c.kind != MessageKind::Event {
            let id = (c.message.type_id)();
            if let Some(first) = owners.get(&id) {
                problems.push(BuildProblem::DuplicateHandler {
                    kind: c.kind,
                    message: c.message.name,
                    first: *first,
                    second: (c.handler_name, c.location),
                });
                continue;
            }
            owners.insert(id, (c.handler_name, c.location));
        }
        out.push(c);
    }
    out
}

/// The layers of one handler: its attribute's options and its decorators.
fn assemble_layers(
    c: &Candidate,
    by_hand: &HashMap<TypeId, Vec<Decorator>>,
    problems: &mut Vec<BuildProblem>,
) -> Layers {
    let mut layers = Layers {
        timeout: c.options.timeout,
        invalidates: c.options.invalidates.iter().map(|q| q().name).collect(),
        ..Layers::default()
    };
    let conflict = |what, problems: &mut Vec<BuildProblem>| {
        problems.push(BuildProblem::ConflictingDecorators {
            handler: c.handler_name,
            location: c.location,
            what,
        })
    };
    let misplaced = |decorator, applies_to, problems: &mut Vec<BuildProblem>| {
        problems.push(BuildProblem::MisplacedDecorator {
            handler: c.handler_name,
            location: c.location,
            decorator,
            applies_to,
        })
    };
    let declared = registry::decorators_of(c.handler_type)
        .iter()
        .map(|d| (d.make)());
    let given = by_hand.get(&c.handler_type).into_iter().flatten().copied();
    for d in declared.chain(given) {
        match d {
            Decorator::Timeout(t) => {
                if layers.timeout.replace(t).is_some() {
                    conflict("a timeout", problems);
                }
            }
            Decorator::Retry(r) => {
                if layers.retry.replace(r).is_some() {
                    conflict("`#[retry]`", problems);
                }
            }
            Decorator::Authorize(a) => {
                if c.kind == MessageKind::Event {
                    misplaced("#[authorize]", "command and query handlers", problems);
                } else if layers.authorize.replace(a).is_some() {
                    conflict("`#[authorize]`", problems);
                }
            }
            Decorator::Cache(spec) => {
                if c.kind != MessageKind::Query {
                    misplaced("#[cached_query]", "query handlers", problems);
                } else if layers.cache.replace(spec).is_some() {
                    conflict("`#[cached_query]`", problems);
                }
            }
            Decorator::Transactional(t) => {
                if c.kind != MessageKind::Command {
                    misplaced("#[transactional]", "command handlers", problems);
                } else if layers.transaction.replace(t).is_some() {
                    conflict("`#[transactional]`", problems);
                }
            }
        }
    }
    layers
}

fn check_backends(
    layered: &[(Candidate, Layers)],
    has_resource_policy: bool,
    has_database: bool,
    problems: &mut Vec<BuildProblem>,
) {
    for (c, layers) in layered {
        if layers.transaction.is_some() && !has_database {
            problems.push(BuildProblem::MissingBackend {
                handler: c.handler_name,
                location: c.location,
                decorator: "#[transactional]",
                needs: "the bus has no database: add `.sqlite(pool)` or `.postgres(pool)` to the builder (features `sqlite`, `postgres` of cqrs-core)",
            });
        }
        if layers.authorize.is_some_and(|a| a.needs_policy()) && !has_resource_policy {
            problems.push(BuildProblem::MissingBackend {
                handler: c.handler_name,
                location: c.location,
                decorator: "#[authorize(resource = ..)]",
                needs: "the bus has no resource policy: add `.resource_policy(policy)` to the builder",
            });
        }
    }
}

fn unhandled_messages(
    messages: &BTreeMap<(MessageKind, &'static str), KnownMessage>,
    layered: &[(Candidate, Layers)],
    strict: bool,
    problems: &mut Vec<BuildProblem>,
) {
    let handled: HashSet<TypeId> = layered.iter().map(|(c, _)| (c.message.type_id)()).collect();
    for ((kind, name), known) in messages {
        if *kind == MessageKind::Event || handled.contains(&(known.info.type_id)()) {
            continue;
        }
        if strict {
            problems.push(BuildProblem::NoHandler {
                kind: *kind,
                message: name,
                location: known.location,
            });
        } else {
            // Not `message = ..`: that field is the event's text, which it would replace.
            tracing::warn!(
                target: "cqrs",
                kind = kind.as_str(),
                name = *name,
                location = %known.location.map(|l| l.to_string()).unwrap_or_default(),
                "{kind} `{name}` has no handler; sending it will fail with NoHandler"
            );
        }
    }
}

fn describe(
    messages: &BTreeMap<(MessageKind, &'static str), KnownMessage>,
    layered: &[(Candidate, Layers)],
    command_middleware: usize,
    query_middleware: usize,
) -> Description {
    // Handlers grouped by message type first: filtering every handler for every message is
    // quadratic, and was most of `build()` with 1,000 handlers.
    let mut by_message: HashMap<TypeId, Vec<&(Candidate, Layers)>> = HashMap::new();
    for handler in layered {
        by_message
            .entry((handler.0.message.type_id)())
            .or_default()
            .push(handler);
    }
    let mut out = Vec::with_capacity(messages.len());
    for ((kind, name), known) in messages {
        let mut handlers: Vec<HandlerDescription> = by_message
            .remove(&(known.info.type_id)())
            .unwrap_or_default()
            .into_iter()
            .map(|(c, layers)| HandlerDescription {
                name: c.handler_name,
                location: c.location,
                layers: layers.describe(
                    *kind,
                    known.info.validated,
                    match kind {
                        MessageKind::Command => command_middleware,
                        MessageKind::Query => query_middleware,
                        MessageKind::Event => 0,
                    },
                ),
                reads_queries: c.options.reads_queries,
                emits: c.options.emits.iter().map(|e| e().name).collect(),
                sends: c.options.sends.iter().map(|c| c().name).collect(),
                invalidates: layers.invalidates.clone(),
            })
            .collect();
        handlers.sort_by_key(|h| h.name);
        out.push(MessageDescription {
            kind: *kind,
            name,
            type_name: known.info.type_name,
            location: known.location,
            handlers,
        });
    }
    Description { messages: out }
}
