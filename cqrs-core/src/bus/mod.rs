//! The bus: built once, then dispatching without locks. It wraps the pipeline's [`Runtime`];
//! its builder assembles that runtime and checks everything before anything runs.

pub(crate) mod backends;
mod build;
pub(crate) mod builder;
mod checks;
pub(crate) mod describe;
pub(crate) mod lifecycle;
mod shutdown;

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::time::Instant;

use crate::Error;
use crate::envelope::IntoEnvelope;
use crate::message::{Command, Event, Message, MessageKind, Query};
use crate::pipeline::cache::target::Invalidation as DropAnswers;
use crate::pipeline::publish;
use crate::pipeline::runtime::Runtime;

pub use self::builder::BusBuilder;
pub use self::describe::{Description, HandlerDescription, MessageDescription};
pub use crate::build_error::{BuildError, BuildProblem};
use crate::pipeline::report::DispatchStats;
pub use crate::pipeline::report::Report;

/// What a built bus holds: the runtime its pipelines run on, and what `describe()` answers.
pub(crate) struct Shared {
    pub(crate) runtime: Runtime,
    pub(crate) description: Description,
    /// What `bus.start()` and `bus.shutdown(..)` run (`bus/lifecycle.rs`).
    pub(crate) lifecycle: Box<[std::sync::Arc<dyn lifecycle::Lifecycle>]>,
}

impl Deref for Shared {
    type Target = Runtime;
    #[inline]
    fn deref(&self) -> &Runtime {
        &self.runtime
    }
}

/// A strong handle, or a weak one held by a handler (which must not keep the bus alive).
#[derive(Clone)]
pub(crate) enum BusRef {
    Strong(Arc<Shared>),
    Weak(Weak<Shared>),
}

pub(crate) enum InnerRef<'a> {
    Borrowed(&'a Shared),
    Owned(Arc<Shared>),
}

impl Deref for InnerRef<'_> {
    type Target = Shared;
    #[inline]
    fn deref(&self) -> &Shared {
        match self {
            InnerRef::Borrowed(inner) => inner,
            InnerRef::Owned(inner) => inner,
        }
    }
}

impl BusRef {
    #[inline]
    pub(crate) fn get(&self) -> Result<InnerRef<'_>, Error> {
        match self {
            BusRef::Strong(inner) => Ok(InnerRef::Borrowed(inner)),
            BusRef::Weak(weak) => weak
                .upgrade()
                .map(InnerRef::Owned)
                .ok_or_else(|| Error::unavailable("the bus has been dropped")),
        }
    }
}

/// The command, query and event bus.
///
/// Built once with [`Bus::builder`], then cloned freely (a clone is an `Arc` clone) and shared
/// across tasks. It never changes after `build()`, and finding a message's pipeline takes no
/// lock (an array index for a non-generic message; a generic one, whose slot is assigned at
/// run time, reads it under a read lock). Layers that share state take their own: a cache
/// miss registers itself so that concurrent misses run the handler once, and the in-memory
/// idempotency store locks its map.
///
/// ```
/// use cqrs_core::prelude::*;
///
/// #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
/// #[command(output = String)]
/// struct Greet { name: String }
///
/// #[command_handler(Greet)]
/// struct GreetHandler;
///
/// impl CommandHandler<Greet> for GreetHandler {
///     async fn handle(&self, cmd: Greet, _cx: &mut CommandContext) -> Result<String, Error> {
///         Ok(format!("hello, {}", cmd.name))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().discover(false).register::<GreetHandler>().build()?;
/// assert_eq!(bus.send(Greet { name: "ada".into() }).await?, "hello, ada");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: BusRef,
}

impl Bus {
    /// A builder that discovers every handler declared with the attribute macros.
    pub fn builder() -> BusBuilder {
        BusBuilder::new()
    }

    /// Sends a command (or an [`Envelope`](crate::Envelope) of one) to its handler.
    ///
    /// (An `async` block rather than an `async fn`, here and in [`query`](Self::query) and
    /// [`publish`](Self::publish): an `async fn` moves its argument into a local of its body,
    /// a second copy of the message and its metadata on every dispatch.)
    #[allow(clippy::manual_async_fn)] // deliberate: see above
    #[inline]
    pub fn send<M>(
        &self,
        message: M,
    ) -> impl Future<Output = Result<<M::Message as Command>::Output, Error>>
    where
        M: IntoEnvelope,
        M::Message: Command,
    {
        let mut message = Some(message);
        async move {
            let inner = self.inner.get()?;
            // The envelope is handed to the pipeline where it lies: see `IntoEnvelope`.
            let dispatch = pin!(M::__with_envelope(&mut message, |env| {
                inner.send_envelope(env, None)
            }));
            dispatch.await
        }
    }

    /// Sends a command and reports what happened: attempts, events emitted, replay, elapsed time.
    pub async fn send_with_report<M>(
        &self,
        message: M,
    ) -> Result<Report<<M::Message as Command>::Output>, Error>
    where
        M: IntoEnvelope,
        M::Message: Command,
    {
        let started = Instant::now();
        let inner = self.inner.get()?;
        let mut stats = DispatchStats::reporting();
        let output = {
            let dispatch =
                pin!(inner.send_envelope(&mut Some(message.into_envelope()), Some(&mut stats)));
            dispatch.await?
        };
        Ok(stats.into_report(output, started.elapsed()))
    }

    /// Asks a query (or an [`Envelope`](crate::Envelope) of one).
    #[allow(clippy::manual_async_fn)] // deliberate: see `send`
    #[inline]
    pub fn query<M>(
        &self,
        message: M,
    ) -> impl Future<Output = Result<<M::Message as Query>::Output, Error>>
    where
        M: IntoEnvelope,
        M::Message: Query,
    {
        let mut message = Some(message);
        async move {
            let inner = self.inner.get()?;
            // The envelope is handed to the pipeline where it lies: see `IntoEnvelope`.
            let dispatch = pin!(M::__with_envelope(&mut message, |env| {
                inner.query_envelope(env, None)
            }));
            dispatch.await
        }
    }

    /// Asks a query and reports what happened: cache hit or miss, attempts, elapsed time.
    pub async fn query_with_report<M>(
        &self,
        message: M,
    ) -> Result<Report<<M::Message as Query>::Output>, Error>
    where
        M: IntoEnvelope,
        M::Message: Query,
    {
        let started = Instant::now();
        let inner = self.inner.get()?;
        let mut stats = DispatchStats::reporting();
        let output = {
            let dispatch =
                pin!(inner.query_envelope(&mut Some(message.into_envelope()), Some(&mut stats)));
            dispatch.await?
        };
        Ok(stats.into_report(output, started.elapsed()))
    }

    /// Delivers an event (or an [`Envelope`](crate::Envelope) of one) to every handler of its type.
    ///
    /// Every handler runs even if one fails; the result is an error (with the first failure's
    /// status) listing the handlers that failed.
    #[allow(clippy::manual_async_fn)] // deliberate: see `send`
    #[inline]
    pub fn publish<M>(&self, event: M) -> impl Future<Output = Result<(), Error>>
    where
        M: IntoEnvelope,
        M::Message: Event,
    {
        async move {
            let inner = self.inner.get()?;
            // Pinned in place, not moved into this future's state: see `Runtime::send_envelope`.
            pin!(publish::envelope(&inner, event.into_envelope())).await
        }
    }

    /// Drops every cached answer of query `Q`, for every caller, in this process and in
    /// every process on the bus's invalidation channel (see
    /// [`InvalidationChannel`](crate::InvalidationChannel)). To drop only the answers for one
    /// set of `vary_by` values, use [`invalidate_answer`](Self::invalidate_answer).
    pub async fn invalidate<Q: Query>(&self) -> Result<(), Error> {
        let inner = self.inner.get()?;
        inner
            .invalidate(DropAnswers {
                query: Q::NAME,
                target: None,
            })
            .await;
        Ok(())
    }

    /// Drops the cached answers to `query` (those with its `vary_by` values), for every caller,
    /// here and in every process on the bus's invalidation channel; the query's other answers
    /// stay. What `invalidates = [GetProduct(id = product_id)]` does for a command, for code
    /// that changed the data some other way (an import, an admin tool).
    ///
    /// ```
    /// # use cqrs_core::prelude::*;
    /// #[derive(Query, Clone, Debug)]
    /// #[query(output = u64)]
    /// struct GetPrice { id: u64 }
    ///
    /// #[query_handler(GetPrice)]
    /// #[cached_query(ttl = "5m", vary_by = [id], public)]
    /// struct GetPriceHandler;
    /// impl QueryHandler<GetPrice> for GetPriceHandler {
    ///     async fn handle(&self, q: GetPrice, _: &QueryContext) -> Result<u64, Error> { Ok(q.id * 100) }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
    /// let bus = Bus::builder().discover(false).register::<GetPriceHandler>().build()?;
    /// bus.query(GetPrice { id: 7 }).await?;
    /// bus.invalidate_answer(&GetPrice { id: 7 }).await?; // the price of 7 only
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_answer<Q: Query>(&self, query: &Q) -> Result<(), Error> {
        let inner = self.inner.get()?;
        let Some(region) = inner.cache_regions.get(Q::NAME) else {
            return Ok(());
        };
        let target = region.target_of(query);
        inner
            .invalidate(DropAnswers {
                query: Q::NAME,
                target: Some(target),
            })
            .await;
        Ok(())
    }

    /// Every message, its handlers, their pipelines and where they are declared.
    pub fn describe(&self) -> Description {
        match self.inner.get() {
            Ok(inner) => inner.description.clone(),
            Err(_) => Description::default(),
        }
    }

    /// Whether the bus was given a database (`.sqlite(pool)`, `.postgres(pool)`).
    pub fn has_database(&self) -> bool {
        self.inner
            .get()
            .is_ok_and(|inner| inner.stores.database.is_some())
    }

    /// A handle that can only ask queries.
    pub fn query_bus(&self) -> QueryBus {
        QueryBus {
            inner: self.inner.clone(),
        }
    }

    /// Whether a handler is registered for command or query `M`, or any for event `M`.
    pub fn handles<M: Message>(&self) -> bool {
        let Ok(inner) = self.inner.get() else {
            return false;
        };
        let slot = M::__slot();
        match M::KIND {
            MessageKind::Command => inner.commands.get(slot).is_some_and(Option::is_some),
            MessageKind::Query => inner.queries.get(slot).is_some_and(Option::is_some),
            MessageKind::Event => !inner.event_handlers(slot).is_empty(),
        }
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Bus");
        if let Ok(inner) = self.inner.get() {
            d.field("commands", &inner.commands.iter().flatten().count())
                .field("queries", &inner.queries.iter().flatten().count())
                .field(
                    "event_handlers",
                    &inner.events.iter().map(|h| h.len()).sum::<usize>(),
                );
        }
        d.finish_non_exhaustive()
    }
}

/// A handle on the bus that can only ask queries: what a query handler (or, with a documented
/// `reads_queries` exception, a command handler) holds to read other read models.
///
/// Injected by type like any dependency. It does not keep the bus alive: once every `Bus`
/// handle is dropped, its queries fail with `Unavailable`.
#[derive(Clone)]
pub struct QueryBus {
    pub(crate) inner: BusRef,
}

impl QueryBus {
    /// Asks a query.
    pub async fn query<M>(&self, message: M) -> Result<<M::Message as Query>::Output, Error>
    where
        M: IntoEnvelope,
        M::Message: Query,
    {
        let inner = self.inner.get()?;
        let dispatch = pin!(inner.query_envelope(&mut Some(message.into_envelope()), None));
        dispatch.await
    }
}

impl fmt::Debug for QueryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryBus").finish_non_exhaustive()
    }
}
