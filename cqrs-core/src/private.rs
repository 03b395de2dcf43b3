//! What the macros' generated code names. Not part of the public API.

pub use ::core::any::{Any, TypeId};
pub use ::core::clone::Clone;
pub use ::core::default::Default;
pub use ::core::hash::{Hash, Hasher};
pub use ::core::marker::{Send, Sync};
pub use ::core::option::Option::{self, None, Some};
pub use ::core::result::Result::{self, Err, Ok};
pub use ::core::time::Duration;
pub use ::std::boxed::Box;
pub use ::std::string::{String, ToString};

pub use inventory;

pub use crate::di::{Injectable, Resolver};
pub use crate::envelope::{Envelope, IntoEnvelope};
pub use crate::message::MessageInfo;
pub use crate::message::{
    Command as CommandTrait, Event as EventTrait, Message, Query as QueryTrait,
};
pub use crate::pipeline::Decorator;
pub use crate::pipeline::authorize::{AuthorizeLayer, ResourceField};
pub use crate::pipeline::cache::target::{AnswerTarget, TargetFieldHash};
pub use crate::pipeline::cache::{CacheSpec, hash_whole};
pub use crate::pipeline::exclusive::ExclusiveLayer;
pub use crate::pipeline::retry::RetryLayer;
pub use crate::pipeline::transaction::{Isolation, TransactionLayer};
pub use crate::registry::Handler;
pub use crate::registry::{
    DecoratorRegistration, HandlerOptions, HandlerRegistration, Location, MessageIndex,
    MessageRegistration, generic_slot,
};
pub use crate::{Error, MessageKind, Status};

/// A query named in `invalidates = [..]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a query",
    label = "`invalidates` lists queries",
    note = "`invalidates = [..]` names the queries whose cached answers go stale when this command succeeds"
)]
pub trait InvalidatedQuery: crate::Query {}
impl<Q: crate::Query> InvalidatedQuery for Q {}

/// An event named in `emits = [..]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "`emits` lists events",
    note = "`emits = [..]` names the events this handler emits with `cx.emit(..)`; a command it sends goes in `sends = [..]`"
)]
pub trait EmittedEvent: crate::Event {}
impl<E: crate::Event> EmittedEvent for E {}

/// A command named in `sends = [..]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    label = "`sends` lists commands",
    note = "`sends = [..]` names the commands this handler sends with `cx.send(..)`; an event it emits goes in `emits = [..]`"
)]
pub trait SentCommand: crate::Command {}
impl<C: crate::Command> SentCommand for C {}

/// The information of query `Q` (`invalidates = [..]` names only queries).
pub fn query_info<Q: InvalidatedQuery>() -> MessageInfo {
    MessageInfo::of::<Q>()
}

/// The information of event `E` (`emits = [..]` names only events).
pub fn event_info<E: EmittedEvent>() -> MessageInfo {
    MessageInfo::of::<E>()
}

/// The information of command `C` (`sends = [..]` names only commands).
pub fn command_info<C: SentCommand>() -> MessageInfo {
    MessageInfo::of::<C>()
}

/// `#[inject(default)]`: the field's value, or its `Default` when the bus has none.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be injected with `#[inject(default)]`",
    label = "needs `Default + Clone + Send + Sync + 'static`",
    note = "`#[inject(default)]` falls back to `Default` when the bus has no value of this type: implement `Default` for it, or remove `#[inject(default)]` and give the bus a value with `Bus::builder().provide(..)`"
)]
pub trait InjectDefault: Injectable + Default {}
impl<T: Injectable + Default> InjectDefault for T {}

/// Resolves a field marked `#[inject(default)]`.
pub fn resolve_or_default<T: InjectDefault>(
    resolver: &mut Resolver<'_>,
    field: &'static str,
) -> Option<T> {
    resolver.resolve_or_default::<T>(field)
}

// How the handler attributes report a mistake once, on the token that is wrong.
//
// The attribute names the message as `<M as IsCommand>::Command`, spanned on `M`. When `M` is
// not a command, that projection fails and rustc says so once (every use is spanned alike, so
// the copies are identical and merged); the handler check, `H: HandlesCommand<that projection>`,
// is then undecided rather than failed, so it adds nothing. When `M` is a command and the struct
// lacks `impl CommandHandler<M>`, `HandlesCommand` says so, spanned on the struct's name.

/// Implemented by `#[derive(Command)]`: names the command, only for commands.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    label = "not a command",
    note = "derive it with `#[derive(Command)]`; a query goes to `#[query_handler]`, an event to `#[event_handler]`"
)]
pub trait IsCommand {
    /// `Self`.
    type Command: crate::Command;
}

/// Implemented by `#[derive(Query)]`: names the query, only for queries.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a query",
    label = "not a query",
    note = "derive it with `#[derive(Query)]`; a command goes to `#[command_handler]`, an event to `#[event_handler]`"
)]
pub trait IsQuery {
    /// `Self`.
    type Query: crate::Query;
}

/// Implemented by `#[derive(Event)]`: names the event, only for events.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "not an event",
    note = "derive it with `#[derive(Event)]`; a command goes to `#[command_handler]`, a query to `#[query_handler]`"
)]
pub trait IsEvent {
    /// `Self`.
    type Event: crate::Event;
}

/// What a handler attribute declared: its struct's name, where it is, the options.
pub trait Declared {
    /// The struct's name.
    const NAME: &'static str;
    /// Where the struct is.
    const LOCATION: Location;
    /// The attribute's options.
    const OPTIONS: HandlerOptions;
}

/// `H` handles command `C`: the registration of `#[command_handler(C)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not handle `{C}`",
    label = "`{Self}` needs `impl CommandHandler<{C}>`",
    note = "add `impl CommandHandler<{C}> for {Self} {{ async fn handle(&self, cmd: {C}, cx: &mut CommandContext) -> Result<<{C} as Command>::Output, Error> {{ .. }} }}`"
)]
pub trait HandlesCommand<C> {
    /// The registration.
    const REGISTRATION: HandlerRegistration;
}
impl<C: CommandHandledBy<H>, H> HandlesCommand<C> for H {
    const REGISTRATION: HandlerRegistration = C::REGISTRATION;
}
/// The other side of [`HandlesCommand`], so that an unknown `C` leaves it undecided.
pub trait CommandHandledBy<H> {
    /// The registration.
    const REGISTRATION: HandlerRegistration;
}
impl<C, H> CommandHandledBy<H> for C
where
    C: crate::Command,
    H: crate::CommandHandler<C> + Handler + Declared,
{
    const REGISTRATION: HandlerRegistration =
        HandlerRegistration::command::<C, H>(H::NAME, H::LOCATION, H::OPTIONS);
}

/// `H` answers query `Q`: the registration of `#[query_handler(Q)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not handle `{Q}`",
    label = "`{Self}` needs `impl QueryHandler<{Q}>`",
    note = "add `impl QueryHandler<{Q}> for {Self} {{ async fn handle(&self, query: {Q}, cx: &QueryContext) -> Result<<{Q} as Query>::Output, Error> {{ .. }} }}`"
)]
pub trait HandlesQuery<Q> {
    /// The registration.
    const REGISTRATION: HandlerRegistration;
}
impl<Q: QueryHandledBy<H>, H> HandlesQuery<Q> for H {
    const REGISTRATION: HandlerRegistration = Q::REGISTRATION;
}
/// The other side of [`HandlesQuery`].
pub trait QueryHandledBy<H> {
    /// The registration.
    const REGISTRATION: HandlerRegistration;
}
impl<Q, H> QueryHandledBy<H> for Q
where
    Q: crate::Query,
    H: crate::QueryHandler<Q> + Handler + Declared,
{
    const REGISTRATION: HandlerRegistration =
        HandlerRegistration::query::<Q, H>(H::NAME, H::LOCATION, H::OPTIONS);
}

/// `H` reacts to event `E`: the registration of `#[event_handler(E)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not handle `{E}`",
    label = "`{Self}` needs `impl EventHandler<{E}>`",
    note = "add `impl EventHandler<{E}> for {Self} {{ async fn handle(&self, event: &{E}, cx: &mut EventContext) -> Result<(), Error> {{ .. }} }}`"
)]
pub trait HandlesEvent<E> {
    /// The registration.
    const REGISTRATION: HandlerRegistration;
}
impl<E: EventHandledBy<H>, H> HandlesEvent<E> for H {
    const REGISTRATION: HandlerRegistration = E::REGISTRATION;
}
/// The other side of [`HandlesEvent`].
pub trait EventHandledBy<H> {
    /// The registration.
    const REGISTRATION: HandlerRegistration;
}
impl<E, H> EventHandledBy<H> for E
where
    E: crate::Event,
    H: crate::EventHandler<E> + Handler + Declared,
{
    const REGISTRATION: HandlerRegistration =
        HandlerRegistration::event::<E, H>(H::NAME, H::LOCATION, H::OPTIONS);
}

// Which handlers each decorator goes on. The handler attributes implement these for their
// struct; a decorator names `<Struct as Accepts..>::Message`, every time spanned on the struct's
// name, so a decorator on the wrong struct is one error, and it names the decorator.

/// Implemented by `#[query_handler]`.
#[diagnostic::on_unimplemented(
    message = "`#[cached_query]` is for query handlers, and `{Self}` is not one",
    label = "not a query handler",
    note = "put `#[cached_query]` on a `#[query_handler(..)]` struct; a command handler drops cached answers with `#[command_handler(C, invalidates = [MyQuery])]`"
)]
pub trait AcceptsCachedQuery {
    /// The query.
    type Message: crate::Query;
}

/// Implemented by `#[command_handler]` and `#[event_handler]`.
#[diagnostic::on_unimplemented(
    message = "`#[transactional]` is for command and event handlers, and `{Self}` is neither",
    label = "not a command or event handler",
    note = "put `#[transactional]` on a `#[command_handler(..)]` or `#[event_handler(..)]` struct: queries only read"
)]
pub trait AcceptsTransactional {
    /// The command or event.
    type Message: crate::Message;
}

/// Implemented by `#[command_handler]` and `#[query_handler]`.
#[diagnostic::on_unimplemented(
    message = "`#[authorize]` is for command and query handlers, and `{Self}` is neither",
    label = "not a command or query handler",
    note = "put `#[authorize(..)]` on a `#[command_handler(..)]` or `#[query_handler(..)]` struct; events have no caller to check"
)]
pub trait AcceptsAuthorize {
    /// The command or query.
    type Message: crate::Message;
}

/// Implemented by `#[command_handler]`.
#[diagnostic::on_unimplemented(
    message = "`#[exclusive]` is for command handlers, and `{Self}` is not one",
    label = "not a command handler",
    note = "put `#[exclusive(key = ..)]` on a `#[command_handler(..)]` struct: it keeps two commands on one key from running at once; queries and events do not change state through the bus"
)]
pub trait AcceptsExclusive {
    /// The command.
    type Message: crate::Command;
}

/// Implemented by every handler attribute.
#[diagnostic::on_unimplemented(
    message = "`#[retry]` is for handlers, and `{Self}` is not one",
    label = "not a handler",
    note = "declare the handler with `#[command_handler(..)]`, `#[query_handler(..)]` or `#[event_handler(..)]` beside `#[retry(..)]`"
)]
pub trait AcceptsRetry {
    /// The message handled.
    type Message: crate::Message;
}

/// Implemented by every handler attribute.
#[diagnostic::on_unimplemented(
    message = "`#[timeout]` is for handlers, and `{Self}` is not one",
    label = "not a handler",
    note = "declare the handler with `#[command_handler(..)]`, `#[query_handler(..)]` or `#[event_handler(..)]` beside `#[timeout(..)]`"
)]
pub trait AcceptsTimeout {
    /// The message handled.
    type Message: crate::Message;
}

/// The type check of a decorator: `check::<<Struct as Accepts..>::Message>()`.
pub const fn check<T: ?Sized>() {}

/// A query cached without `vary_by` is keyed on the whole query.
#[diagnostic::on_unimplemented(
    message = "`#[cached_query]` keys answers on the whole query, and `{Self}` is not `Hash`",
    label = "`{Self}` needs `Hash`",
    note = "derive `Hash, PartialEq, Eq` on the query, or name the fields that make the key: `#[cached_query(vary_by = [field, ..])]`"
)]
pub trait WholeQueryKey: Hash + 'static {}
impl<Q: Hash + 'static> WholeQueryKey for Q {}

/// `hash_whole::<Q>`, for a query that is `Hash`.
pub const fn whole_query_key<Q: WholeQueryKey>() -> fn(&(dyn Any + Send + Sync), &mut dyn Hasher) {
    hash_whole::<Q>
}

/// A message with `#[validate(..)]` rules, which `validator::Validate` checks.
#[cfg(feature = "validator")]
#[diagnostic::on_unimplemented(
    message = "`{Self}` has `#[validate(..)]` rules but does not derive `validator::Validate`",
    label = "its rules cannot be checked",
    note = "add `validator::Validate` to the message's derives, e.g. `#[derive(Command, validator::Validate, ..)]`"
)]
pub trait HasValidationRules: validator::Validate {}
#[cfg(feature = "validator")]
impl<T: validator::Validate> HasValidationRules for T {}

/// `Command::validate_message` through the `validator` crate.
#[cfg(feature = "validator")]
pub fn validate_with_validator<T: HasValidationRules>(message: &T) -> Result<(), Error> {
    validator::Validate::validate(message)
        .map_err(|e| crate::pipeline::validate::from_validator(&e))
}

/// Whether a query answer is `None`, for `cache_none = false` (autoref specialization: the
/// macro calls `(&&IsNone(value)).is_none()` on the concrete output type).
#[allow(missing_debug_implementations)]
pub struct IsNone<'a, T>(pub &'a T);

/// The `Option` case.
pub trait IsNoneOption {
    /// Whether it is `None`.
    fn is_none_answer(&self) -> bool;
}
impl<T> IsNoneOption for &IsNone<'_, Option<T>> {
    fn is_none_answer(&self) -> bool {
        self.0.is_none()
    }
}

/// Every other type: never `None`.
pub trait IsNoneOther {
    /// Always `false`.
    fn is_none_answer(&self) -> bool;
}
impl<T> IsNoneOther for IsNone<'_, T> {
    fn is_none_answer(&self) -> bool {
        false
    }
}

/// A field named in `#[authorize(resource = ..)]`.
#[diagnostic::on_unimplemented(
    message = "`#[authorize(resource = ..)]` hands the field to the resource policy as text, and `{Self}` is not `Display`",
    label = "`{Self}` is not `Display`",
    note = "name a field whose type implements `Display`, such as an id or a string"
)]
pub trait ResourceId: ::core::fmt::Display {}
impl<T: ::core::fmt::Display + ?Sized> ResourceId for T {}

/// The `Display` of a resource field, for `#[authorize(resource = ..)]`.
pub fn resource_id<T: ResourceId + ?Sized>(value: &T) -> String {
    value.to_string()
}

/// A field named in `#[cached_query(vary_by = [..])]`.
#[diagnostic::on_unimplemented(
    message = "`#[cached_query(vary_by = [..])]` hashes each field into the key, and `{Self}` is not `Hash`",
    label = "`{Self}` is not `Hash`",
    note = "leave the field out of `vary_by`, or give the query a field that is `Hash` (for a float, its `to_bits()` or a rounded integer)"
)]
pub trait KeyField: Hash {}
impl<T: Hash + ?Sized> KeyField for T {}

/// A command field mapped to a query field in `invalidates = [GetProduct(id = product_id)]`:
/// both must have one type, so that the command's value hashes as the query's does.
#[diagnostic::on_unimplemented(
    message = "`invalidates = [..]` maps a command field of type `{Self}` to a query field of type `{Q}`",
    label = "this field is `{Self}`, the query's is `{Q}`",
    note = "`invalidates = [GetProduct(id = product_id)]` hashes the command's `product_id` as if it were the query's `id`, so both fields must have the same type"
)]
pub trait SameFieldType<Q: ?Sized> {}
impl<T: ?Sized> SameFieldType<T> for T {}
/// A second implementation, never used: with the blanket one alone, rustc would infer the
/// query field's type from the command's and report a bare "mismatched types" rather than the
/// message above; two candidates keep it from inferring.
#[doc(hidden)]
#[derive(Debug)]
pub struct NotAField<T: ?Sized>(core::marker::PhantomData<T>);
impl<T: ?Sized> SameFieldType<NotAField<T>> for T {}

/// Checks, at compile time, that a command field and the query field it is mapped to have one
/// type (never called).
pub fn same_field_type<C: SameFieldType<Q> + ?Sized, Q: ?Sized>(_command: &C, _query: &Q) {}

/// Hashes one `vary_by` field into the cache key.
pub fn hash_key_field<T: KeyField + ?Sized>(value: &T, mut hasher: &mut dyn Hasher) {
    value.hash(&mut hasher);
}

/// A field named in `#[exclusive(key = ..)]`.
#[diagnostic::on_unimplemented(
    message = "`#[exclusive(key = ..)]` makes the lock's key from the field's value, and `{Self}` is not `Serialize`",
    label = "`{Self}` is not `Serialize`",
    note = "name a field whose type implements `serde::Serialize`, such as an id or a string"
)]
pub trait ExclusiveKeyField: serde::Serialize {}
impl<T: serde::Serialize + ?Sized> ExclusiveKeyField for T {}

/// The lock key of an `#[exclusive(key = ..)]` field's value.
pub fn exclusive_key<T: ExclusiveKeyField + ?Sized>(value: &T) -> Option<String> {
    crate::pipeline::exclusive::key_text(value)
}
