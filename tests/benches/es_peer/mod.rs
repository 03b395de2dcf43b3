//! The account domain of `account/` on cqrs-es, the Rust event-sourcing framework users would
//! otherwise pick, and [`QuietStore`]: an in-memory `EventStore` for it written for the bench.
//!
//! cqrs-es ships `MemStore`, which prints two lines to stdout per command (`loading: ..`,
//! `storing: ..`), clones the aggregate's whole history on every commit, and calls itself not
//! for production use; comparing against it measured its `println!`s. `QuietStore` is what a
//! user would write instead: one map from aggregate id to its events under a lock, a load that
//! clones the aggregate's events (as every cqrs-es store hands them out by value), a commit that
//! checks the sequence it was loaded at and appends.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use cqrs_es::event_sink::EventSink;
use cqrs_es::{
    Aggregate, AggregateContext, AggregateError, DomainEvent, EventEnvelope, EventStore,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Account {
    pub balance: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Deposited { amount: u64 },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        "bench.deposited".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug)]
pub struct AccountError(&'static str);

impl fmt::Display for AccountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for AccountError {}

pub struct Deposit {
    pub amount: u64,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = Deposit;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Deposit,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), AccountError> {
        if command.amount == 0 {
            return Err(AccountError("a deposit is more than zero"));
        }
        sink.write(
            AccountEvent::Deposited {
                amount: command.amount,
            },
            self,
        )
        .await;
        Ok(())
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Deposited { amount } => self.balance += amount,
        }
    }
}

type Streams<A> = HashMap<String, Vec<EventEnvelope<A>>>;

/// An in-memory event store for cqrs-es that prints nothing (see the module's docs).
pub struct QuietStore<A: Aggregate> {
    streams: Arc<RwLock<Streams<A>>>,
}

impl<A: Aggregate> Default for QuietStore<A> {
    fn default() -> Self {
        QuietStore {
            streams: Arc::default(),
        }
    }
}

/// The aggregate a command runs on, and the sequence it was loaded at.
pub struct Loaded<A> {
    id: String,
    aggregate: A,
    sequence: usize,
}

impl<A: Aggregate> AggregateContext<A> for Loaded<A> {
    fn aggregate(&mut self) -> &mut A {
        &mut self.aggregate
    }
}

impl<A: Aggregate> EventStore<A> for QuietStore<A> {
    type AC = Loaded<A>;

    async fn load_events(
        &self,
        id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let streams = self.streams.read().unwrap_or_else(|e| e.into_inner());
        Ok(streams.get(id).cloned().unwrap_or_default())
    }

    async fn load_aggregate(&self, id: &str) -> Result<Loaded<A>, AggregateError<A::Error>> {
        let mut aggregate = A::default();
        let mut sequence = 0;
        for envelope in self.load_events(id).await? {
            sequence = envelope.sequence;
            aggregate.apply(envelope.payload);
        }
        Ok(Loaded {
            id: id.to_owned(),
            aggregate,
            sequence,
        })
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        loaded: Loaded<A>,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let mut sequence = loaded.sequence;
        let wrapped: Vec<EventEnvelope<A>> = events
            .into_iter()
            .map(|payload| {
                sequence += 1;
                EventEnvelope {
                    aggregate_id: loaded.id.clone(),
                    sequence,
                    payload,
                    metadata: metadata.clone(),
                }
            })
            .collect();
        let mut streams = self.streams.write().unwrap_or_else(|e| e.into_inner());
        let stream = streams.entry(loaded.id).or_default();
        if stream.len() != loaded.sequence {
            return Err(AggregateError::AggregateConflict);
        }
        stream.extend(wrapped.iter().cloned());
        Ok(wrapped)
    }
}
