//! What the macros register through `inventory`, and the dense message slots.
//!
//! Every derive submits a [`MessageRegistration`], every handler attribute a
//! [`HandlerRegistration`], every decorator attribute a [`DecoratorRegistration`]. All are built
//! by `const fn`s over function pointers, so registering costs nothing at run time; the bus
//! builder reads them once, in `build()`.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use crate::di::Resolver;
use crate::handler::{CommandHandler, EventHandler, QueryHandler};
pub use crate::location::Location;
use crate::message::{Command, Event, Message, MessageInfo, MessageKind, Query};
use crate::pipeline::Decorator;
use crate::pipeline::assemble::{self, Installation, Installed};
use crate::pipeline::cache::target::AnswerTarget;

/// A message type, as its derive registers it.
#[derive(Debug)]
pub struct MessageRegistration {
    pub(crate) info: fn() -> MessageInfo,
    pub(crate) location: Location,
}

impl MessageRegistration {
    /// The registration of a command.
    pub const fn command<C: Command>(location: Location) -> Self {
        MessageRegistration {
            info: MessageInfo::of::<C>,
            location,
        }
    }

    /// The registration of a query.
    pub const fn query<Q: Query>(location: Location) -> Self {
        MessageRegistration {
            info: MessageInfo::of::<Q>,
            location,
        }
    }

    /// The registration of an event (which also knows how to decode a stored one).
    pub const fn event<E: Event>(location: Location) -> Self {
        MessageRegistration {
            info: MessageInfo::of::<E>,
            location,
        }
    }
}

inventory::collect!(MessageRegistration);

/// The options of a handler attribute (`#[command_handler(C, timeout = "15s", ..)]`).
#[derive(Debug, Clone, Copy)]
pub struct HandlerOptions {
    pub(crate) reads_queries: Option<&'static str>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) invalidates: &'static [fn() -> MessageInfo],
    pub(crate) invalidates_answers: &'static [AnswerTarget],
    pub(crate) emits: &'static [fn() -> MessageInfo],
    pub(crate) sends: &'static [fn() -> MessageInfo],
    pub(crate) group: Option<&'static str>,
}

impl HandlerOptions {
    /// No options.
    pub const fn new() -> Self {
        HandlerOptions {
            reads_queries: None,
            timeout: None,
            invalidates: &[],
            invalidates_answers: &[],
            emits: &[],
            sends: &[],
            group: None,
        }
    }

    /// The consumer group an event handler reads a broker's events in (`group = ".."`).
    pub const fn group(mut self, group: &'static str) -> Self {
        self.group = Some(group);
        self
    }

    /// The documented reason a command handler reads the query side.
    pub const fn reads_queries(mut self, reason: &'static str) -> Self {
        self.reads_queries = Some(reason);
        self
    }

    /// The handler's timeout (`timeout = "15s"`).
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The events the handler says it emits (drawn by `describe()`).
    pub const fn emits(mut self, events: &'static [fn() -> MessageInfo]) -> Self {
        self.emits = events;
        self
    }

    /// The commands the handler says it sends (drawn by `describe()`).
    pub const fn sends(mut self, commands: &'static [fn() -> MessageInfo]) -> Self {
        self.sends = commands;
        self
    }

    /// Queries whose cached answers the command invalidates when it succeeds.
    pub const fn invalidates(mut self, queries: &'static [fn() -> MessageInfo]) -> Self {
        self.invalidates = queries;
        self
    }

    /// Cached answers the command invalidates when it succeeds, by field:
    /// `invalidates = [GetProduct(id = product_id)]`.
    pub const fn invalidates_answers(mut self, targets: &'static [AnswerTarget]) -> Self {
        self.invalidates_answers = targets;
        self
    }
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions::new()
    }
}

/// A handler, as its attribute registers it.
pub struct HandlerRegistration {
    pub(crate) kind: MessageKind,
    pub(crate) handler_name: &'static str,
    pub(crate) handler_type: fn() -> TypeId,
    pub(crate) message: fn() -> MessageInfo,
    pub(crate) location: Location,
    pub(crate) options: HandlerOptions,
    pub(crate) install: fn(&mut Installation<'_>) -> Option<Installed>,
}

impl HandlerRegistration {
    /// The registration of a command handler.
    pub const fn command<C, H>(
        handler_name: &'static str,
        location: Location,
        options: HandlerOptions,
    ) -> Self
    where
        C: Command,
        H: CommandHandler<C> + Handler,
    {
        HandlerRegistration {
            kind: MessageKind::Command,
            handler_name,
            handler_type: TypeId::of::<H>,
            message: MessageInfo::of::<C>,
            location,
            options,
            install: built_command::<C, H>,
        }
    }

    /// The registration of a query handler.
    pub const fn query<Q, H>(
        handler_name: &'static str,
        location: Location,
        options: HandlerOptions,
    ) -> Self
    where
        Q: Query,
        H: QueryHandler<Q> + Handler,
    {
        HandlerRegistration {
            kind: MessageKind::Query,
            handler_name,
            handler_type: TypeId::of::<H>,
            message: MessageInfo::of::<Q>,
            location,
            options,
            install: built_query::<Q, H>,
        }
    }

    /// The registration of an event handler.
    pub const fn event<E, H>(
        handler_name: &'static str,
        location: Location,
        options: HandlerOptions,
    ) -> Self
    where
        E: Event,
        H: EventHandler<E> + Handler,
    {
        HandlerRegistration {
            kind: MessageKind::Event,
            handler_name,
            handler_type: TypeId::of::<H>,
            message: MessageInfo::of::<E>,
            location,
            options,
            install: built_event::<E, H>,
        }
    }
}

impl fmt::Debug for HandlerRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerRegistration")
            .field("kind", &self.kind)
            .field("handler", &self.handler_name)
            .field("message", &(self.message)().name)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

inventory::collect!(HandlerRegistration);

/// A decorator attribute (`#[retry(..)]`, `#[authorize(..)]`, ..) on a handler.
pub struct DecoratorRegistration {
    pub(crate) handler_type: fn() -> TypeId,
    pub(crate) handler_name: &'static str,
    pub(crate) location: Location,
    pub(crate) make: fn() -> Decorator,
}

impl DecoratorRegistration {
    /// The registration of one decorator of handler `H`.
    pub const fn new<H: 'static>(
        handler_name: &'static str,
        location: Location,
        make: fn() -> Decorator,
    ) -> Self {
        DecoratorRegistration {
            handler_type: TypeId::of::<H>,
            handler_name,
            location,
            make,
        }
    }
}

impl fmt::Debug for DecoratorRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecoratorRegistration")
            .field("handler", &self.handler_name)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

inventory::collect!(DecoratorRegistration);

/// The decorators registered for each handler type, read from `inventory` once per process.
pub(crate) fn decorators_of(handler: TypeId) -> &'static [&'static DecoratorRegistration] {
    static BY_HANDLER: OnceLock<HashMap<TypeId, Vec<&'static DecoratorRegistration>>> =
        OnceLock::new();
    BY_HANDLER
        .get_or_init(|| {
            let mut map: HashMap<TypeId, Vec<&'static DecoratorRegistration>> = HashMap::new();
            for d in inventory::iter::<DecoratorRegistration> {
                map.entry((d.handler_type)()).or_default().push(d);
            }
            map
        })
        .get(&handler)
        .map_or(&[], Vec::as_slice)
}

/// The dense index of a message type among the messages of its kind.
///
/// The derive puts one in a `static` per (non-generic) message type; the bus keeps its
/// pipelines in arrays indexed by it, so dispatch is an array access, not a hash lookup.
#[derive(Debug)]
pub struct MessageIndex {
    index: AtomicUsize,
    kind: MessageKind,
}

const UNASSIGNED: usize = usize::MAX;
static NEXT_SLOT: [AtomicUsize; 3] = [
    AtomicUsize::new(0),
    AtomicUsize::new(0),
    AtomicUsize::new(0),
];

fn next_slot(kind: MessageKind) -> usize {
    NEXT_SLOT[kind as usize].fetch_add(1, Ordering::Relaxed)
}

impl MessageIndex {
    /// An unassigned index for a message of `kind`.
    pub const fn new(kind: MessageKind) -> Self {
        MessageIndex {
            index: AtomicUsize::new(UNASSIGNED),
            kind,
        }
    }

    /// The index, assigned on first call.
    #[inline]
    pub fn get(&self) -> usize {
        let index = self.index.load(Ordering::Relaxed);
        if index != UNASSIGNED {
            index
        } else {
            self.assign()
        }
    }

    #[cold]
    fn assign(&self) -> usize {
        let fresh = next_slot(self.kind);
        match self
            .index
            .compare_exchange(UNASSIGNED, fresh, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => fresh,
            Err(winner) => winner,
        }
    }
}

/// The slot of a generic message type (a `static` in a generic impl would be shared by every
/// instantiation), kept in a map: slower, but generic messages are rare.
pub fn generic_slot<T: 'static>(kind: MessageKind) -> usize {
    static SLOTS: OnceLock<RwLock<HashMap<TypeId, usize>>> = OnceLock::new();
    let slots = SLOTS.get_or_init(Default::default);
    let id = TypeId::of::<T>();
    if let Some(&index) = slots.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return index;
    }
    *slots
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(id)
        .or_insert_with(|| next_slot(kind))
}

/// The number of slots handed out so far for `kind` (the size the bus's tables need).
pub(crate) fn slots_in_use(kind: MessageKind) -> usize {
    NEXT_SLOT[kind as usize].load(Ordering::Relaxed)
}

/// A handler declared with `#[command_handler]`, `#[query_handler]` or `#[event_handler]`:
/// its registration and how to build it from the bus's dependencies.
///
/// The attribute macros implement it; [`BusBuilder::register`](crate::BusBuilder::register)
/// takes any type that implements it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a declared handler",
    label = "not declared with a handler attribute",
    note = "add `#[command_handler(..)]`, `#[query_handler(..)]` or `#[event_handler(..)]` to `{Self}`, or register an instance with `Bus::builder().command_handler(..)` (and the query and event forms)"
)]
pub trait Handler: Sized + Send + Sync + 'static {
    /// The message it handles.
    type Message: Message;
    /// What the attribute declared: message, options, source location.
    const REGISTRATION: HandlerRegistration;
    /// Builds the handler, resolving each field from the bus's dependencies. Returns `None`
    /// when a field could not be resolved (the resolver has recorded which).
    fn build(resolver: &mut Resolver<'_>) -> Option<Self>;
}

/// Builds a declared handler from the bus's dependencies, then assembles its pipeline.
fn built_command<C, H>(inst: &mut Installation<'_>) -> Option<Installed>
where
    C: Command,
    H: CommandHandler<C> + Handler,
{
    let handler = H::build(&mut inst.resolver)?;
    Some(assemble::command_instance::<C, H>(handler, inst))
}

fn built_query<Q, H>(inst: &mut Installation<'_>) -> Option<Installed>
where
    Q: Query,
    H: QueryHandler<Q> + Handler,
{
    let handler = H::build(&mut inst.resolver)?;
    Some(assemble::query_instance::<Q, H>(handler, inst))
}

fn built_event<E, H>(inst: &mut Installation<'_>) -> Option<Installed>
where
    E: Event,
    H: EventHandler<E> + Handler,
{
    let handler = H::build(&mut inst.resolver)?;
    Some(assemble::event_instance::<E, H>(handler, inst))
}
