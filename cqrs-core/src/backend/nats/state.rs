//! What the running backend holds: its configuration, its JetStream context, the consumer
//! groups found at start and the consumers' tasks; and what every other file of the backend
//! asks of it (an error naming the server, a group by name). `backend.rs` starts and stops
//! it.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use async_nats::jetstream;

use super::Nats;
use crate::Error;
use crate::bus::Shared;
use crate::events::EventDecoder;

/// The handlers that share one set of consumers: by default one handler, named after it.
#[derive(Clone)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) event: &'static str,
    pub(crate) decoder: EventDecoder,
    /// Where the handlers are in the runtime: (event slot, index among its handlers).
    pub(crate) handlers: Vec<(usize, usize)>,
    pub(crate) handler_names: Vec<&'static str>,
    pub(crate) max_deliver: i64,
}

/// The consumers' tasks, and how to stop them.
pub(super) struct Running {
    pub(super) stop: tokio::sync::watch::Sender<u8>,
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub(crate) struct NatsBackend {
    pub(crate) config: Nats,
    pub(crate) js: jetstream::Context,
    pub(super) ready: AtomicBool,
    pub(super) running: tokio::sync::Mutex<Option<Running>>,
    /// The groups found at start (for `dead_letters`, `redeliver`, `replay`).
    pub(crate) groups: std::sync::Mutex<Vec<Group>>,
    me: std::sync::Weak<NatsBackend>,
}

impl NatsBackend {
    pub(crate) fn new(config: Nats, me: std::sync::Weak<NatsBackend>) -> Self {
        let js = jetstream::new(config.client.clone());
        NatsBackend {
            me,
            config,
            js,
            ready: AtomicBool::new(false),
            running: tokio::sync::Mutex::new(None),
            groups: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// An error about the server, naming it.
    pub(crate) fn unavailable(&self, doing: &str, error: impl std::fmt::Display) -> Error {
        Error::unavailable(format!("NATS at {}: {doing}: {error}", self.config.url))
    }

    pub(crate) fn group(&self, name: &str) -> Option<Group> {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|g| g.name == name || g.handler_names.contains(&name))
            .cloned()
    }

    /// The group of a handler (by its name or its group's), whether or not the bus was
    /// started (an admin command replays without running the handlers).
    pub(crate) fn group_in(&self, shared: &Shared, name: &str) -> Option<Group> {
        self.group(name).or_else(|| {
            self.find_groups(shared)
                .ok()?
                .into_iter()
                .find(|g| g.name == name || g.handler_names.contains(&name))
        })
    }

    /// The handlers of this bus, by group.
    pub(super) fn find_groups(&self, shared: &Shared) -> Result<Vec<Group>, Error> {
        let mut groups: Vec<Group> = Vec::new();
        for (slot, pipes) in shared.runtime.events.iter().enumerate() {
            for (index, pipe) in pipes.iter().enumerate() {
                let (event, decoder) = pipe.event();
                let name = pipe.group().to_owned();
                let max_deliver = self.config.max_deliver_of(pipe.handler_name());
                match groups.iter_mut().find(|g| g.name == name) {
                    Some(group) if group.event != event => {
                        return Err(Error::internal(format!(
                            "consumer group `{name}` has handlers of two events, `{}` and `{event}`: on nats-server 2.9 a consumer reads one event type; give one of the handlers another `group = \"..\"`",
                            group.event
                        )));
                    }
                    Some(group) => {
                        group.handlers.push((slot, index));
                        group.handler_names.push(pipe.handler_name());
                        group.max_deliver = group.max_deliver.max(max_deliver);
                    }
                    None => groups.push(Group {
                        name,
                        event,
                        decoder,
                        handlers: vec![(slot, index)],
                        handler_names: vec![pipe.handler_name()],
                        max_deliver,
                    }),
                }
            }
        }
        Ok(groups)
    }

    /// This backend, shared.
    pub(crate) fn arc(&self) -> Option<Arc<NatsBackend>> {
        self.me.upgrade()
    }
}
