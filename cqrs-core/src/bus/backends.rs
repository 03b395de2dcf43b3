//! What backends add to the builder: the seam through which `.sqlite(..)`, `.postgres(..)` (and
//! next `.nats(..)`, `.redis(..)`) plug in without the bus knowing them.
//!
//! A backend's builder method (an `impl BusBuilder` in `backend/<name>`) keeps its settings here
//! by type ([`Backends::settings`]), in any order with the methods that tune them; when the bus
//! is built, each backend's `finish` function turns its settings into the stores the layers use
//! (their traits are defined by the layers: `pipeline/transaction.rs`, `pipeline/idempotency.rs`,
//! `event_store`) and may ask for a task to start once the bus exists (the outbox relay).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use super::Bus;
use crate::event_store::{DynEventStore, EventStore, MemoryEventStore};
use crate::pipeline::cache::InvalidationChannel;
use crate::pipeline::cache::backplane::BackplanePriority;
use crate::pipeline::exclusive::{LockBackend, LockPriority};
use crate::pipeline::idempotency::DynIdempotencyStore;
use crate::pipeline::transaction::TransactionalStore;
use crate::pipeline::transport::EventTransport;

/// A task started once the bus is built.
pub(crate) type OnBuild = Box<dyn FnOnce(&Bus) + Send>;

/// The stores and start-up tasks the backends gave, and the application's own event store.
pub(crate) struct Backends {
    /// The database transactions and the outbox run on.
    pub(crate) database: Option<Arc<dyn TransactionalStore>>,
    /// The database's idempotency store: used unless the application gives its own.
    pub(crate) database_idempotency: Option<Arc<dyn DynIdempotencyStore>>,
    /// Redis's idempotency store: used when neither the application nor a database gives one.
    pub(crate) redis_idempotency: Option<Arc<dyn DynIdempotencyStore>>,
    /// The database's event store: used unless the application gives its own.
    pub(crate) database_events: Option<Arc<dyn DynEventStore>>,
    /// Whether outbox events are delivered in the dispatch, right after commit.
    pub(crate) outbox_inline: bool,
    /// The broker events leave through, set by the broker's builder method itself (not by a
    /// `finish` function), so the database's `finish` sees it whatever the order of the calls.
    pub(crate) transport: Option<Arc<dyn EventTransport>>,
    /// Work to do in `bus.start()` and `bus.shutdown(..)` (a broker's streams and consumers).
    pub(crate) lifecycle: Vec<Arc<dyn crate::bus::lifecycle::Lifecycle>>,
    /// The application's event store ([`BusBuilder::event_store`](super::BusBuilder::event_store)).
    pub(crate) event_store: Option<Arc<dyn DynEventStore>>,
    /// The same store, when it is a [`MemoryEventStore`].
    pub(crate) memory_events: Option<Arc<MemoryEventStore>>,
    pub(crate) on_build: Vec<OnBuild>,
    /// What the backends' `finish` functions found wrong.
    pub(crate) problems: Vec<crate::BuildProblem>,
    /// The channel cache invalidations reach other processes on: the highest priority offered
    /// (see `pipeline/cache/backplane.rs`).
    pub(crate) backplane: Option<Arc<dyn InvalidationChannel>>,
    backplane_priority: Option<BackplanePriority>,
    /// The locks of `#[exclusive]` handlers: the highest priority offered (PostgreSQL's over
    /// Redis's, see `pipeline/exclusive.rs`).
    pub(crate) locks: Option<Arc<dyn LockBackend>>,
    locks_priority: Option<LockPriority>,
    settings: HashMap<TypeId, Box<dyn Any + Send>>,
    finishers: Vec<fn(&mut Backends)>,
    /// Checks that need every backend finished (a broker needs the database, whichever of the
    /// two builder methods came first).
    pub(crate) checks: Vec<fn(&Backends) -> Option<crate::BuildProblem>>,
}

impl Default for Backends {
    fn default() -> Self {
        Backends {
            database: None,
            database_idempotency: None,
            redis_idempotency: None,
            database_events: None,
            outbox_inline: true,
            transport: None,
            lifecycle: Vec::new(),
            event_store: None,
            memory_events: None,
            on_build: Vec::new(),
            problems: Vec::new(),
            backplane: None,
            backplane_priority: None,
            locks: None,
            locks_priority: None,
            settings: HashMap::new(),
            finishers: Vec::new(),
            checks: Vec::new(),
        }
    }
}

impl Backends {
    /// A backend's settings (created the first time), and the function that turns them into
    /// stores when the bus is built (called once, whatever the number of calls here).
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "postgres", feature = "redis")),
        allow(dead_code)
    )]
    pub(crate) fn settings<T: Default + Send + 'static>(
        &mut self,
        finish: fn(&mut Backends),
    ) -> &mut T {
        let entry = self.settings.entry(TypeId::of::<T>()).or_insert_with(|| {
            self.finishers.push(finish);
            Box::new(T::default())
        });
        match entry.downcast_mut::<T>() {
            Some(settings) => settings,
            None => unreachable!("settings are stored under their own type"),
        }
    }

    /// Takes a backend's settings out (in its `finish` function).
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "postgres", feature = "redis")),
        allow(dead_code)
    )]
    pub(crate) fn take_settings<T: 'static>(&mut self) -> Option<T> {
        let settings = self.settings.remove(&TypeId::of::<T>())?;
        settings.downcast::<T>().ok().map(|s| *s)
    }

    /// Offers a channel for cache invalidations between processes (from a backend's `finish`
    /// function): the bus keeps the one of highest priority, NATS over Redis over PostgreSQL,
    /// whatever the order of the builder's calls.
    #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
    pub(crate) fn offer_backplane(
        &mut self,
        priority: BackplanePriority,
        channel: Arc<dyn InvalidationChannel>,
    ) {
        if self.backplane_priority.is_none_or(|p| p < priority) {
            self.backplane = Some(channel);
            self.backplane_priority = Some(priority);
        }
    }

    /// Offers the locks of `#[exclusive]` handlers (from a backend's `finish` function): the
    /// bus keeps the one of highest priority, PostgreSQL over Redis, whatever the order of the
    /// builder's calls.
    #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
    pub(crate) fn offer_locks(&mut self, priority: LockPriority, locks: Arc<dyn LockBackend>) {
        if self.locks_priority.is_none_or(|p| p < priority) {
            self.locks = Some(locks);
            self.locks_priority = Some(priority);
        }
    }

    /// Runs every backend's `finish` function.
    pub(crate) fn finish(&mut self) {
        for finish in std::mem::take(&mut self.finishers) {
            finish(self);
        }
        for check in std::mem::take(&mut self.checks) {
            if let Some(problem) = check(self) {
                self.problems.push(problem);
            }
        }
    }

    pub(crate) fn set_event_store<S: EventStore>(&mut self, store: S) {
        // `cx.load` and `cx.save` reach the in-memory store directly (typed events, no JSON):
        // recognise it, whether given as is or in an `Arc` (as `AggregateTest` does).
        let any: Box<dyn Any> = Box::new(store);
        let any = match any.downcast::<MemoryEventStore>() {
            Ok(memory) => Ok(Arc::new(*memory)),
            Err(any) => any.downcast::<Arc<MemoryEventStore>>().map(|m| *m),
        };
        match any {
            Ok(memory) => {
                self.event_store = Some(memory.clone());
                self.memory_events = Some(memory);
            }
            Err(any) => {
                let Ok(store) = any.downcast::<S>() else {
                    unreachable!("a `Box<dyn Any>` of an `S` downcasts to `S`")
                };
                self.event_store = Some(Arc::new(*store));
                self.memory_events = None;
            }
        }
    }
}
