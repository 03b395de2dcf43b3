//! Given these events, when this command, then these events (or this error).

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::bus::BusBuilder;
use crate::context::TxSlot;
use crate::envelope::IntoEnvelope;
use crate::event_store::{Aggregate, EventStore, MemoryEventStore, RecordedEvent, Session, Stream};
use crate::message::{Command, Message};
use crate::{Error, Status};

/// A given/when/then test of the command handlers of aggregate `A`, on an in-memory event store.
///
/// ```
/// use cqrs_core::prelude::*;
/// use cqrs_core::Aggregate;
/// use cqrs_core::testing::AggregateTest;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Debug, Clone, Serialize, Deserialize)]
/// enum AccountEvent { Opened, Deposited { cents: u64 }, Withdrawn { cents: u64 } }
///
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// struct Account { open: bool, balance: u64 }
///
/// impl Aggregate for Account {
///     const NAME: &'static str = "account";
///     type Event = AccountEvent;
///     fn apply(&mut self, e: &AccountEvent) {
///         match e {
///             AccountEvent::Opened => self.open = true,
///             AccountEvent::Deposited { cents } => self.balance += cents,
///             AccountEvent::Withdrawn { cents } => self.balance -= cents,
///         }
///     }
/// }
///
/// #[derive(Command, Debug, Clone, Serialize, Deserialize)]
/// struct Withdraw { account: String, cents: u64 }
///
/// #[command_handler(Withdraw)]
/// struct WithdrawHandler;
///
/// impl CommandHandler<Withdraw> for WithdrawHandler {
///     async fn handle(&self, cmd: Withdraw, cx: &mut CommandContext) -> Result<(), Error> {
///         let mut account = cx.load::<Account>(&cmd.account).await?;
///         if account.balance < cmd.cents {
///             return Err(Error::conflict("insufficient funds"));
///         }
///         account.record(AccountEvent::Withdrawn { cents: cmd.cents });
///         cx.save(&mut account).await
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let test = || AggregateTest::<Account>::new(
///     Bus::builder().discover(false).register::<WithdrawHandler>(),
///     "acc-1",
/// );
/// test()
///     .given([AccountEvent::Opened, AccountEvent::Deposited { cents: 500 }])
///     .when(Withdraw { account: "acc-1".into(), cents: 200 })
///     .await
///     .then_events([AccountEvent::Withdrawn { cents: 200 }]);
/// test()
///     .given([AccountEvent::Opened])
///     .when(Withdraw { account: "acc-1".into(), cents: 200 })
///     .await
///     .then_error(Status::Conflict);
/// # }
/// ```
pub struct AggregateTest<A: Aggregate> {
    builder: BusBuilder,
    store: Arc<MemoryEventStore>,
    id: String,
    given: Vec<(String, A::Event)>,
}

impl<A: Aggregate> AggregateTest<A> {
    /// A test of the handlers `builder` registers, about aggregate `id`.
    pub fn new(builder: BusBuilder, id: impl Into<String>) -> Self {
        let store = Arc::new(MemoryEventStore::new());
        AggregateTest {
            builder: builder.event_store(store.clone()),
            store,
            id: id.into(),
            given: Vec::new(),
        }
    }

    /// The aggregate's history before the command.
    pub fn given(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        let id = self.id.clone();
        self.given
            .extend(events.into_iter().map(|e| (id.clone(), e)));
        self
    }

    /// The history of another aggregate of the same type.
    pub fn given_for(
        mut self,
        id: impl Into<String>,
        events: impl IntoIterator<Item = A::Event>,
    ) -> Self {
        let id = id.into();
        self.given
            .extend(events.into_iter().map(|e| (id.clone(), e)));
        self
    }

    /// Builds the bus, stores the history, and sends the command.
    pub async fn when<M>(self, command: M) -> Outcome<A>
    where
        M: IntoEnvelope,
        M::Message: Command,
    {
        let bus = match self.builder.build() {
            Ok(bus) => bus,
            Err(e) => panic!("the bus under test cannot be built: {e}"),
        };
        // A bus with a database (for transactional handlers) needs its tables.
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        if bus.has_database()
            && let Err(e) = bus.migrate().await
        {
            panic!("migrating the database under test failed: {e}");
        }
        let mut versions = std::collections::HashMap::<String, u64>::new();
        let mut tx = TxSlot::default();
        for (id, event) in &self.given {
            let version = versions.entry(id.clone()).or_default();
            let recorded = RecordedEvent {
                event_id: uuid::Uuid::now_v7(),
                version: *version + 1,
                name: <A::Event as Message>::NAME.to_owned(),
                payload: serde_json::to_value(event).unwrap_or_default(),
                metadata: serde_json::json!({}),
                recorded_at_ms: 0,
            };
            let stream = Stream {
                aggregate: A::NAME,
                id,
            };
            let mut session = Session { tx: Some(&mut tx) };
            if let Err(e) = self
                .store
                .append(&mut session, stream, *version, &[recorded], None)
                .await
            {
                panic!("storing the given events failed: {e}");
            }
            *version += 1;
        }
        let before = versions.get(&self.id).copied().unwrap_or(0);
        let result = bus
            .send(command)
            .await
            .map(|out| serde_json::to_value(&out).unwrap_or_default());
        let mut session = Session { tx: Some(&mut tx) };
        let stream = Stream {
            aggregate: A::NAME,
            id: &self.id,
        };
        let events = match self.store.load(&mut session, stream, before).await {
            Ok(events) => events,
            Err(e) => panic!("reading the events back failed: {e}"),
        };
        Outcome {
            result,
            events: events.into_iter().map(|e| e.payload).collect(),
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for AggregateTest<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateTest")
            .field("aggregate", &A::NAME)
            .field("id", &self.id)
            .field("given", &self.given.len())
            .finish()
    }
}

/// What a command did to the aggregate under test.
pub struct Outcome<A: Aggregate> {
    result: Result<serde_json::Value, Error>,
    events: Vec<serde_json::Value>,
    _aggregate: PhantomData<A>,
}

impl<A: Aggregate> Outcome<A> {
    /// Panics unless the command succeeded and saved exactly these events (compared as JSON).
    #[track_caller]
    pub fn then_events(self, expected: impl IntoIterator<Item = A::Event>) -> Self {
        if let Err(e) = &self.result {
            panic!("expected events, but the command failed: {e}");
        }
        let expected: Vec<serde_json::Value> = expected
            .into_iter()
            .map(|e| serde_json::to_value(&e).unwrap_or_default())
            .collect();
        assert!(
            self.events == expected,
            "the command saved other events\n  expected: {}\n  actual:   {}",
            serde_json::Value::Array(expected),
            serde_json::Value::Array(self.events.clone())
        );
        self
    }

    /// The events the command saved, decoded (for assertions on events with generated values).
    #[track_caller]
    pub fn events(&self) -> Vec<A::Event> {
        self.events
            .iter()
            .map(|e| {
                serde_json::from_value(e.clone())
                    .unwrap_or_else(|err| panic!("a saved event does not decode: {err}"))
            })
            .collect()
    }

    /// Panics unless the command succeeded; then hands the saved events to `check`.
    #[track_caller]
    pub fn then_events_with(self, check: impl FnOnce(&[A::Event])) -> Self {
        if let Err(e) = &self.result {
            panic!("expected events, but the command failed: {e}");
        }
        check(&self.events());
        self
    }

    /// Panics unless the command succeeded without saving any event.
    #[track_caller]
    pub fn then_no_events(self) -> Self {
        self.then_events([])
    }

    /// Panics unless the command failed with `status`; returns the error.
    #[track_caller]
    pub fn then_error(self, status: Status) -> Error {
        match self.result {
            Ok(out) => panic!("expected a `{status}` error, but the command succeeded with {out}"),
            Err(e) => {
                assert_eq!(
                    e.status(),
                    status,
                    "the command failed with another status: {e}"
                );
                assert!(
                    self.events.is_empty(),
                    "a failed command saved events: {:?}",
                    self.events
                );
                e
            }
        }
    }

    /// The command's output (panics if it failed or the output does not decode as `T`).
    #[track_caller]
    pub fn output<T: DeserializeOwned>(&self) -> T {
        match &self.result {
            Ok(out) => serde_json::from_value(out.clone())
                .unwrap_or_else(|e| panic!("the output does not decode: {e}")),
            Err(e) => panic!("the command failed: {e}"),
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for Outcome<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("result", &self.result)
            .field("events", &self.events)
            .finish()
    }
}
