//! Layer 2: global, around-style middleware, in registration order.
//!
//! A middleware sees every dispatch of the kinds it applies to (commands and queries by default)
//! and decides when to call the rest of the pipeline through [`Next::run`]. It can observe the
//! outcome, refuse to go on (return an error without calling `next`), or replace an error.
//! When the bus has no middleware for a kind, this layer costs nothing.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::envelope::{Metadata, Principal};
use crate::message::MessageKind;
use crate::{Error, Status};

/// A global hook around every dispatch, registered with
/// [`BusBuilder::middleware`](crate::BusBuilder::middleware).
///
/// ```
/// use cqrs_core::{Dispatch, Error, Middleware, Next};
///
/// /// Refuses every command while the service is read-only.
/// struct ReadOnlyMode;
///
/// impl Middleware for ReadOnlyMode {
///     fn applies_to(&self, kind: cqrs_core::MessageKind) -> bool {
///         kind == cqrs_core::MessageKind::Command
///     }
///     async fn handle(&self, dispatch: &Dispatch<'_>, next: Next<'_>) -> Result<(), Error> {
///         Err(Error::unavailable(format!("read-only mode: `{}` refused", dispatch.name())))
///     }
/// }
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// Whether this middleware sees messages of `kind` (commands and queries by default;
    /// events never pass through middleware).
    fn applies_to(&self, kind: MessageKind) -> bool {
        kind != MessageKind::Event
    }

    /// Runs around the rest of the pipeline; call `next.run().await` to go on.
    fn handle(
        &self,
        dispatch: &Dispatch<'_>,
        next: Next<'_>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

pub(crate) trait DynMiddleware: Send + Sync {
    fn applies_to_dyn(&self, kind: MessageKind) -> bool;
    fn handle_dyn<'a>(
        &'a self,
        dispatch: &'a Dispatch<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn type_name(&self) -> &'static str;
}

impl<M: Middleware> DynMiddleware for M {
    fn applies_to_dyn(&self, kind: MessageKind) -> bool {
        self.applies_to(kind)
    }
    fn handle_dyn<'a>(
        &'a self,
        dispatch: &'a Dispatch<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.handle(dispatch, next))
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<M>()
    }
}

pub(crate) type MiddlewareChain = [Arc<dyn DynMiddleware>];

/// What a middleware sees of a dispatch.
pub struct Dispatch<'a> {
    pub(crate) kind: MessageKind,
    pub(crate) name: &'static str,
    pub(crate) handler: &'static str,
    pub(crate) metadata: &'a Metadata,
    pub(crate) message: &'a (dyn Any + Send + Sync),
    pub(crate) to_json: Option<fn(&(dyn Any + Send + Sync)) -> Option<serde_json::Value>>,
}

impl<'a> Dispatch<'a> {
    /// Command or query.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }
    /// The message's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// The handler's name.
    pub fn handler(&self) -> &'static str {
        self.handler
    }
    /// The message's metadata.
    pub fn metadata(&self) -> &'a Metadata {
        self.metadata
    }
    /// The sender.
    pub fn principal(&self) -> Option<&'a Principal> {
        self.metadata.principal()
    }
    /// The message, if it is an `M`.
    pub fn message<M: 'static>(&self) -> Option<&'a M> {
        self.message.downcast_ref::<M>()
    }
    /// The message as JSON (commands are `Serialize`; `None` for queries).
    pub fn message_json(&self) -> Option<serde_json::Value> {
        self.to_json.and_then(|f| f(self.message))
    }
}

impl fmt::Debug for Dispatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatch")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("handler", &self.handler)
            .field("metadata", self.metadata)
            .finish_non_exhaustive()
    }
}

type Inner<'a> = Box<dyn FnOnce() -> BoxFuture<'a, Result<(), Error>> + Send + 'a>;

/// The rest of the pipeline, after this middleware.
pub struct Next<'a> {
    rest: &'a MiddlewareChain,
    dispatch: &'a Dispatch<'a>,
    inner: Inner<'a>,
}

impl<'a> Next<'a> {
    /// Runs the remaining middleware and the inner layers. Its `Ok(())` means the handler
    /// succeeded (its output goes to the caller untouched).
    pub async fn run(self) -> Result<(), Error> {
        match self.rest.split_first() {
            None => (self.inner)().await,
            Some((first, rest)) => {
                let next = Next {
                    rest,
                    dispatch: self.dispatch,
                    inner: self.inner,
                };
                first.handle_dyn(self.dispatch, next).await
            }
        }
    }
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("remaining", &self.rest.len())
            .finish_non_exhaustive()
    }
}

/// Runs `chain` around `inner`; `inner` stores the output where the caller can take it.
pub(crate) async fn around<'a>(
    chain: &'a MiddlewareChain,
    dispatch: &'a Dispatch<'a>,
    inner: Inner<'a>,
) -> Result<(), Error> {
    Next {
        rest: chain,
        dispatch,
        inner,
    }
    .run()
    .await
}

/// The three states of a command in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditState {
    /// The command entered the pipeline.
    Attempted,
    /// The handler succeeded.
    Succeeded,
    /// Something failed, with this status.
    Failed(Status),
}

/// One line of the audit log.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// The command's name.
    pub command: &'static str,
    /// Its message id.
    pub message_id: uuid::Uuid,
    /// Its correlation id.
    pub correlation_id: uuid::Uuid,
    /// Who sent it.
    pub principal: Option<String>,
    /// Attempted, succeeded or failed.
    pub state: AuditState,
    /// The error message, when it failed.
    pub error: Option<String>,
}

type AuditSink = Arc<dyn Fn(&AuditRecord) + Send + Sync>;

/// A middleware that records every command as Attempted, then Succeeded or Failed.
///
/// By default each record is a `tracing` event at INFO (target `cqrs::audit`); give a sink to
/// store them elsewhere:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use cqrs_core::{AuditLog, AuditRecord};
///
/// let records: Arc<Mutex<Vec<AuditRecord>>> = Default::default();
/// let sink = records.clone();
/// let audit = AuditLog::with_sink(move |r| sink.lock().unwrap().push(r.clone()));
/// ```
#[derive(Clone)]
pub struct AuditLog {
    sink: Option<AuditSink>,
}

impl AuditLog {
    /// Records to `tracing`.
    pub fn new() -> Self {
        AuditLog { sink: None }
    }

    /// Records to `sink`.
    pub fn with_sink(sink: impl Fn(&AuditRecord) + Send + Sync + 'static) -> Self {
        AuditLog {
            sink: Some(Arc::new(sink)),
        }
    }

    fn record(&self, dispatch: &Dispatch<'_>, state: AuditState, error: Option<&Error>) {
        let record = AuditRecord {
            command: dispatch.name(),
            message_id: dispatch.metadata().message_id(),
            correlation_id: dispatch.metadata().correlation_id(),
            principal: dispatch.principal().map(|p| p.id().to_owned()),
            state,
            error: error.map(ToString::to_string),
        };
        match &self.sink {
            Some(sink) => sink(&record),
            None => tracing::info!(
                target: "cqrs::audit",
                command = record.command,
                message_id = %record.message_id,
                correlation_id = %record.correlation_id,
                principal = record.principal.as_deref().unwrap_or("-"),
                state = ?record.state,
                error = record.error.as_deref().unwrap_or(""),
                "audit"
            ),
        }
    }
}

impl Default for AuditLog {
    fn default() -> Self {
        AuditLog::new()
    }
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("custom_sink", &self.sink.is_some())
            .finish()
    }
}

impl Middleware for AuditLog {
    fn applies_to(&self, kind: MessageKind) -> bool {
        kind == MessageKind::Command
    }

    async fn handle(&self, dispatch: &Dispatch<'_>, next: Next<'_>) -> Result<(), Error> {
        self.record(dispatch, AuditState::Attempted, None);
        let result = next.run().await;
        match &result {
            Ok(()) => self.record(dispatch, AuditState::Succeeded, None),
            Err(e) => self.record(dispatch, AuditState::Failed(e.status()), Some(e)),
        }
        result
    }
}
