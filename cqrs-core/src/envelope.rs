//! The envelope a message travels in, and its metadata.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use uuid::Uuid;

/// Who sends a message: an id, roles, permissions, and an admin flag.
///
/// ```
/// use cqrs_core::Principal;
///
/// let alice = Principal::new("user-1").with_roles(["editor"]).with_permissions(["user:create"]);
/// assert!(alice.has_permission("user:create"));
/// assert!(alice.has_role("editor"));
/// assert!(Principal::admin("ops").is_admin());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    id: String,
    roles: BTreeSet<String>,
    permissions: BTreeSet<String>,
    admin: bool,
}

impl Principal {
    /// A principal with no roles and no permissions.
    pub fn new(id: impl Into<String>) -> Self {
        Principal {
            id: id.into(),
            roles: BTreeSet::new(),
            permissions: BTreeSet::new(),
            admin: false,
        }
    }

    /// A principal with the admin flag (which `#[authorize(admin_override)]` lets through).
    pub fn admin(id: impl Into<String>) -> Self {
        Principal {
            admin: true,
            ..Principal::new(id)
        }
    }

    /// Adds roles.
    pub fn with_roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles.extend(roles.into_iter().map(Into::into));
        self
    }

    /// Adds permissions.
    pub fn with_permissions<I, S>(mut self, permissions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.permissions
            .extend(permissions.into_iter().map(Into::into));
        self
    }

    /// The principal's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The roles.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().map(String::as_str)
    }

    /// The permissions.
    pub fn permissions(&self) -> impl Iterator<Item = &str> {
        self.permissions.iter().map(String::as_str)
    }

    /// Whether the principal has this role.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains(role)
    }

    /// Whether the principal has this permission.
    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.contains(permission)
    }

    /// Whether the principal has the admin flag.
    pub fn is_admin(&self) -> bool {
        self.admin
    }
}

/// The aggregate an event was saved for, and the version it was saved at (events saved with
/// `cx.save`; see [`EventContext::aggregate`](crate::EventContext::aggregate)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AggregateVersion {
    /// The aggregate type's name.
    pub aggregate: String,
    /// The aggregate's id.
    pub id: String,
    /// The event's version in the aggregate's stream (from 1).
    pub version: u64,
}

/// What travels with a message besides the message itself.
///
/// The message id is a UUID v7, assigned the first time anything reads it (the trace span when
/// tracing is on, the outbox, a handler calling `metadata().message_id()`), so a dispatch that
/// nobody observes does not pay for reading the clock. The timestamp is the one in that id.
/// The correlation id is the message id unless the message was sent from inside a handler, in
/// which case it is the parent's correlation id, and the causation id is the parent's message
/// id. Cloning assigns the id first, so every clone carries the same one.
#[derive(Default)]
pub struct Metadata {
    message_id: OnceLock<Uuid>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    principal: Option<Arc<Principal>>,
    idempotency_key: Option<Arc<str>>,
    saga_id: Option<Arc<str>>,
    deadline: Option<Instant>,
    aggregate: Option<Arc<AggregateVersion>>,
}

impl Metadata {
    /// Empty metadata: fresh ids, no principal, no deadline.
    pub fn new() -> Self {
        Metadata::default()
    }

    /// The message id (UUID v7).
    pub fn message_id(&self) -> Uuid {
        *self.message_id.get_or_init(Uuid::now_v7)
    }

    /// The id shared by every message caused, directly or not, by the same first message.
    pub fn correlation_id(&self) -> Uuid {
        self.correlation_id.unwrap_or_else(|| self.message_id())
    }

    /// The id of the message whose handler sent this one, if any.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.causation_id
    }

    /// When the message was created (the time in its UUID v7, millisecond precision).
    pub fn timestamp(&self) -> SystemTime {
        let id = self.message_id();
        match id.get_timestamp() {
            Some(ts) => {
                let (secs, nanos) = ts.to_unix();
                SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
            }
            None => SystemTime::now(),
        }
    }

    /// Who sends the message.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_deref()
    }

    /// The idempotency key of a command.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    /// The saga (process) this message belongs to.
    pub fn saga_id(&self) -> Option<&str> {
        self.saga_id.as_deref()
    }

    /// The instant by which the handler must have finished.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// For an event saved by an aggregate: which aggregate, and at which version.
    pub fn aggregate(&self) -> Option<&AggregateVersion> {
        self.aggregate.as_deref()
    }

    pub(crate) fn set_aggregate(&mut self, aggregate: Option<Arc<AggregateVersion>>) {
        self.aggregate = aggregate;
    }

    /// Sets the message id (for messages that arrive with one, e.g. from another process).
    pub fn set_message_id(&mut self, id: Uuid) {
        self.message_id = OnceLock::from(id);
    }

    /// Sets the correlation id.
    pub fn set_correlation_id(&mut self, id: Uuid) {
        self.correlation_id = Some(id);
    }

    /// Sets the causation id.
    pub fn set_causation_id(&mut self, id: Uuid) {
        self.causation_id = Some(id);
    }

    /// Sets the principal.
    pub fn set_principal(&mut self, principal: impl Into<Arc<Principal>>) {
        self.principal = Some(principal.into());
    }

    /// Sets the idempotency key.
    pub fn set_idempotency_key(&mut self, key: impl Into<Arc<str>>) {
        self.idempotency_key = Some(key.into());
    }

    /// Sets the saga id.
    pub fn set_saga_id(&mut self, id: impl Into<Arc<str>>) {
        self.saga_id = Some(id.into());
    }

    /// Sets the deadline.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    pub(crate) fn clear_deadline(&mut self) {
        self.deadline = None;
    }

    /// The metadata of a message sent by the handler of the message this metadata belongs to:
    /// same correlation id, this message's id as causation id, same principal, saga and
    /// deadline, and no idempotency key (that belongs to the parent only).
    pub fn child(&self) -> Metadata {
        let mut child = Metadata::new();
        child.inherit(self);
        child
    }

    /// Makes this the metadata of a child of `parent`, keeping what the caller set explicitly:
    /// correlation and causation ids, principal and saga come from the parent when unset, and
    /// the deadline is the sooner of the two.
    pub(crate) fn inherit(&mut self, parent: &Metadata) {
        if self.correlation_id.is_none() {
            self.correlation_id = Some(parent.correlation_id());
        }
        if self.causation_id.is_none() {
            self.causation_id = Some(parent.message_id());
        }
        if self.principal.is_none() {
            self.principal = parent.principal.clone();
        }
        if self.saga_id.is_none() {
            self.saga_id = parent.saga_id.clone();
        }
        self.deadline = match (self.deadline, parent.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

impl Clone for Metadata {
    fn clone(&self) -> Self {
        Metadata {
            message_id: OnceLock::from(self.message_id()),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            principal: self.principal.clone(),
            idempotency_key: self.idempotency_key.clone(),
            saga_id: self.saga_id.clone(),
            deadline: self.deadline,
            aggregate: self.aggregate.clone(),
        }
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metadata")
            .field("message_id", &self.message_id.get())
            .field("correlation_id", &self.correlation_id)
            .field("causation_id", &self.causation_id)
            .field("principal", &self.principal.as_ref().map(|p| p.id()))
            .field("idempotency_key", &self.idempotency_key)
            .field("saga_id", &self.saga_id)
            .field("deadline", &self.deadline)
            .field("aggregate", &self.aggregate)
            .finish()
    }
}

/// A message and its [`Metadata`].
///
/// `bus.send`, `bus.query` and `bus.publish` take either a bare message or an envelope:
///
/// ```
/// # use cqrs_core::prelude::*;
/// # #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
/// # struct Ping;
/// let env = Envelope::new(Ping)
///     .principal(Principal::new("user-1").with_permissions(["ping"]))
///     .idempotency_key("k-42")
///     .timeout(std::time::Duration::from_secs(2));
/// assert_eq!(env.metadata.idempotency_key(), Some("k-42"));
/// ```
#[derive(Debug, Clone)]
pub struct Envelope<M> {
    /// The message.
    pub message: M,
    /// Its metadata.
    pub metadata: Metadata,
}

impl<M> Envelope<M> {
    /// An envelope with fresh metadata.
    pub fn new(message: M) -> Self {
        Envelope {
            message,
            metadata: Metadata::new(),
        }
    }

    /// An envelope with the given metadata.
    pub fn with_metadata(message: M, metadata: Metadata) -> Self {
        Envelope { message, metadata }
    }

    /// Sets who sends the message.
    pub fn principal(mut self, principal: impl Into<Arc<Principal>>) -> Self {
        self.metadata.set_principal(principal);
        self
    }

    /// Sets the idempotency key (commands): a repeat with the same key and payload returns the
    /// first reply without running the handler again.
    pub fn idempotency_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.metadata.set_idempotency_key(key);
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.metadata.set_correlation_id(id);
        self
    }

    /// Sets the causation id.
    pub fn causation_id(mut self, id: Uuid) -> Self {
        self.metadata.set_causation_id(id);
        self
    }

    /// Sets the message id.
    pub fn message_id(mut self, id: Uuid) -> Self {
        self.metadata.set_message_id(id);
        self
    }

    /// Sets the saga the message belongs to.
    pub fn saga_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.metadata.set_saga_id(id);
        self
    }

    /// Sets an absolute deadline; the handler's own timeout applies too, whichever is sooner.
    ///
    /// Commands and queries a handler sends inherit it. The events a command emits do not:
    /// they are delivered once the command has succeeded, and cutting them short would lose
    /// those that are not in the outbox; their handlers' own `timeout = ..` bounds them.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.metadata.set_deadline(deadline);
        self
    }

    /// Sets a deadline `timeout` from now.
    pub fn timeout(self, timeout: Duration) -> Self {
        // tokio's clock: the same as the wall clock, except under a paused test clock, which the
        // pipeline's deadlines follow too.
        self.deadline(tokio::time::Instant::now().into_std() + timeout)
    }
}

/// A bare message or an [`Envelope`] of one: what `send`, `query` and `publish` accept.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be dispatched",
    label = "expected a command, a query, an event, or an `Envelope` of one",
    note = "derive `Command`, `Query` or `Event` on the message type"
)]
pub trait IntoEnvelope {
    /// The message type.
    type Message;
    /// Wraps the message (a bare message gets fresh metadata).
    fn into_envelope(self) -> Envelope<Self::Message>;

    /// Calls `f` with the envelope of the message in `slot`, taken only by whoever takes it
    /// out of the slot (see [`Owned`]): how `bus.send` hands an envelope to its pipeline by
    /// reference instead of by value. An envelope given by the caller is handed on where it
    /// lies, in `slot`, instead of being copied into a temporary and again into the
    /// pipeline's argument (two copies of at least 136 bytes per dispatch).
    #[doc(hidden)]
    #[inline]
    fn __with_envelope<R>(
        slot: &mut Option<Self>,
        f: impl FnOnce(&mut Option<Envelope<Self::Message>>) -> R,
    ) -> R
    where
        Self: Sized,
    {
        let mut env = slot.take().map(Self::into_envelope);
        f(&mut env)
    }
}

// Bare messages get their impl from the derives (a blanket impl over `Command` and one over
// `Query` would overlap).
impl<M> IntoEnvelope for Envelope<M> {
    type Message = M;
    #[inline]
    fn into_envelope(self) -> Envelope<M> {
        self
    }

    #[inline]
    fn __with_envelope<R>(
        slot: &mut Option<Self>,
        f: impl FnOnce(&mut Option<Envelope<M>>) -> R,
    ) -> R {
        f(slot)
    }
}

/// A value handed on by reference, to be moved out by the callee: the envelope on its way from
/// `bus.send` to the pipeline, so that it is copied once, into the dispatch's future, instead
/// of once per function on the way (a value passed by value is copied into each callee's
/// argument).
///
/// It points at a slot that holds the value. [`take`](Self::take) moves it out and leaves the
/// slot empty; if nobody takes it, the slot's owner drops it as usual.
pub(crate) struct Owned<'a, T>(&'a mut Option<T>);

impl<'a, T> Owned<'a, T> {
    /// The value in `slot`, or `None` if the slot is empty.
    #[inline]
    pub(crate) fn new(slot: &'a mut Option<T>) -> Option<Self> {
        slot.is_some().then_some(Owned(slot))
    }

    /// The value, by reference, before it is taken.
    #[inline]
    #[allow(unsafe_code)]
    pub(crate) fn get(&self) -> &T {
        // SAFETY: `new` returns an `Owned` only for a slot that holds a value, and `take`, the
        // only thing that empties it, consumes the `Owned`.
        unsafe { self.0.as_ref().unwrap_unchecked() }
    }

    /// Moves the value out, leaving the slot empty.
    #[inline]
    #[allow(unsafe_code)]
    pub(crate) fn take(self) -> T {
        // SAFETY: the slot holds a value (see `get`). (`unwrap_unchecked` rather than `expect`:
        // the check and its panic message would be compiled into every pipeline's `call`.)
        unsafe { self.0.take().unwrap_unchecked() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owned_value_is_moved_out_once_or_left_to_its_slots_owner() {
        let value = Arc::new(7);
        let mut slot = Some(value.clone());
        let owned = Owned::new(&mut slot).expect("a full slot");
        assert_eq!(**owned.get(), 7);
        let taken = owned.take();
        assert!(slot.is_none(), "taking empties the slot");
        assert_eq!(Arc::strong_count(&value), 2);
        drop(taken);
        assert_eq!(
            Arc::strong_count(&value),
            1,
            "the taken value has one owner"
        );

        let mut slot = Some(value.clone());
        let untaken = Owned::new(&mut slot).expect("a full slot");
        assert_eq!(**untaken.get(), 7);
        assert!(
            slot.is_some(),
            "an `Owned` dropped untaken leaves the value in its slot"
        );
        drop(slot);
        assert_eq!(Arc::strong_count(&value), 1);

        assert!(Owned::<u8>::new(&mut None).is_none());
    }

    #[test]
    fn clones_share_the_lazily_assigned_id() {
        let original = Metadata::new();
        let copy = original.clone();
        assert_eq!(original.message_id(), copy.message_id());
        let child = original.child();
        assert_eq!(child.causation_id(), Some(original.message_id()));
        assert_eq!(child.correlation_id(), original.correlation_id());
        assert_ne!(child.message_id(), original.message_id());
    }
}
