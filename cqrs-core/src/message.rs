//! Commands, queries and events: the message traits the derives implement.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// Which of the three kinds a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// A request to change state, handled by exactly one `#[command_handler]`.
    Command,
    /// A request to read state, handled by exactly one `#[query_handler]`.
    Query,
    /// A fact that happened, handled by any number of `#[event_handler]`s.
    Event,
}

impl MessageKind {
    /// `"command"`, `"query"` or `"event"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageKind::Command => "command",
            MessageKind::Query => "query",
            MessageKind::Event => "event",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every message has: a stable name, a kind, and field rules.
///
/// Implemented by `#[derive(Command)]`, `#[derive(Query)]` and `#[derive(Event)]`; there is no
/// reason to implement it by hand.
pub trait Message: Send + Sync + 'static {
    /// The stable name: the type's name without its path, or the derive's `name = ".."`.
    /// Logs, metrics, caches and stores use it, so renaming it is a data migration.
    const NAME: &'static str;
    /// Command, query or event.
    const KIND: MessageKind;
    /// Whether the message carries field rules (`#[validate(..)]`), shown by `describe()`.
    const VALIDATED: bool = false;

    /// The stable name (see [`Message::NAME`]).
    fn name() -> &'static str
    where
        Self: Sized,
    {
        Self::NAME
    }

    /// Checks the message's field rules, listing every failing field.
    ///
    /// The derives implement it with the `validator` crate when a field carries
    /// `#[validate(..)]`; messages without rules keep this default, which costs nothing.
    fn validate_message(&self) -> Result<(), Error> {
        Ok(())
    }

    /// The dense index of this type among messages of its kind, assigned on first use.
    #[doc(hidden)]
    fn __slot() -> usize
    where
        Self: Sized;
}

/// A request to change state. Derive it:
///
/// ```
/// use cqrs_core::prelude::*;
///
/// #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
/// #[command(output = u64, name = "users.register")]
/// pub struct RegisterUser { pub email: String }
///
/// assert_eq!(RegisterUser::NAME, "users.register");
/// ```
///
/// Commands are `Clone` (a retried command runs again) and `Serialize` (an idempotency key is
/// checked against the payload); their output is `Serialize + DeserializeOwned` so that a repeat
/// with the same idempotency key can return the stored reply.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    label = "not a command",
    note = "derive it with `#[derive(Command)]`; a query goes to `#[query_handler]`, an event to `#[event_handler]`"
)]
pub trait Command: Message + Clone + Serialize {
    /// What a successful handler returns (`()` unless the derive says `output = ..`).
    type Output: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// A request to read state. Derive it:
///
/// ```
/// use cqrs_core::prelude::*;
///
/// #[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
/// #[query(output = Option<String>)]
/// pub struct GetEmail { pub user_id: u64 }
/// ```
///
/// Query outputs are `Clone` so that a cached answer can be handed to many callers, and
/// `Serialize + DeserializeOwned` so that a shared cache can store them.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a query",
    label = "not a query",
    note = "derive it with `#[derive(Query)]`; a command goes to `#[command_handler]`, an event to `#[event_handler]`"
)]
pub trait Query: Message + Clone {
    /// What a successful handler returns.
    type Output: Clone + Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// A fact that happened. Derive it:
///
/// ```
/// use cqrs_core::prelude::*;
///
/// #[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
/// pub struct UserRegistered { pub user_id: u64 }
/// ```
///
/// Events are `Serialize + DeserializeOwned` because the outbox and the event store keep them.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "not an event",
    note = "derive it with `#[derive(Event)]`; a command goes to `#[command_handler]`, a query to `#[query_handler]`"
)]
pub trait Event: Message + Serialize + DeserializeOwned {
    /// The key whose events keep their order through a broker (`.nats(..)`): events with one
    /// key reach each handler in the order they were committed, one at a time. An event saved
    /// with an aggregate (`cx.save`) is keyed by its aggregate whatever this says; for other
    /// events, `#[event(partition_key = field)]` names the field (any `Display` type), and
    /// without it the event has no order with any other.
    fn partition_key(&self) -> Option<String> {
        None
    }
}

/// Static information about one message type, as the derive registers it.
#[derive(Debug, Clone, Copy)]
pub struct MessageInfo {
    /// The stable name.
    pub name: &'static str,
    /// Command, query or event.
    pub kind: MessageKind,
    /// The Rust type, with its path.
    pub type_name: &'static str,
    /// Whether the message carries field rules.
    pub validated: bool,
    pub(crate) type_id: fn() -> std::any::TypeId,
    pub(crate) slot: fn() -> usize,
}

impl MessageInfo {
    /// The information of `M`.
    pub fn of<M: Message>() -> MessageInfo {
        MessageInfo {
            name: M::NAME,
            kind: M::KIND,
            type_name: std::any::type_name::<M>(),
            validated: M::VALIDATED,
            type_id: std::any::TypeId::of::<M>,
            slot: M::__slot,
        }
    }
}
