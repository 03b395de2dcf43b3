//! `build()`: every check, then the runtime assembled from the handlers that passed them.

use std::collections::HashMap;
use std::sync::Arc;

use super::builder::BusBuilder;
use super::checks::{self, Candidate};
use super::describe::describe;
use super::{Bus, BusRef, QueryBus, Shared};
use crate::build_error::BuildError;
use crate::di::Resolver;
use crate::event_store::MemoryEventStore;
use crate::message::MessageKind;
use crate::pipeline::assemble::{Installation, Installed};
use crate::pipeline::cache::CacheRegions;
use crate::pipeline::idempotency::{self, IdempotencyLayer, MemoryIdempotencyStore};
use crate::pipeline::runtime::{PipeEntry, Runtime};
use crate::pipeline::stores::Stores;
use crate::pipeline::{EventPipe, Layers};
use crate::registry;

impl BusBuilder {
    /// Checks everything and builds the bus, or lists every problem found.
    pub fn build(self) -> Result<Bus, BuildError> {
        let BusBuilder {
            discover,
            strict,
            dependencies,
            manual,
            middleware,
            failure_sink,
            decorators,
            observers,
            resource_policy,
            idempotency_store,
            idempotency_ttl,
            query_cache,
            mut backends,
        } = self;
        backends.finish();
        let mut problems = std::mem::take(&mut backends.problems);
        let lifecycle = std::mem::take(&mut backends.lifecycle).into_boxed_slice();

        let candidates = checks::collect_candidates(manual, discover);
        let messages = checks::collect_messages(&candidates, discover, &mut problems);
        let candidates = checks::one_handler_per_message(candidates, &mut problems);
        let mut layered: Vec<(Candidate, Layers)> = candidates
            .into_iter()
            .map(|c| {
                let layers = checks::assemble_layers(&c, &decorators, &mut problems);
                (c, layers)
            })
            .collect();
        checks::resolve_answer_targets(&mut layered, &mut problems);
        checks::check_backends(
            &layered,
            checks::Configured {
                resource_policy: resource_policy.is_some(),
                database: backends.database.is_some(),
                locks: backends.locks.is_some(),
            },
            &mut problems,
        );
        checks::unhandled_messages(&messages, &layered, strict, &mut problems);

        let custom_idempotency = idempotency_store.is_some();
        let idempotency_store = idempotency_store
            .or_else(|| backends.database_idempotency.clone())
            .or_else(|| backends.redis_idempotency.clone())
            .unwrap_or_else(|| Arc::new(MemoryIdempotencyStore::new()));
        let command_middleware: Box<[_]> = middleware
            .iter()
            .filter(|m| m.applies_to_dyn(MessageKind::Command))
            .cloned()
            .collect();
        let query_middleware: Box<[_]> = middleware
            .iter()
            .filter(|m| m.applies_to_dyn(MessageKind::Query))
            .cloned()
            .collect();
        let description = describe(
            &messages,
            &layered,
            command_middleware.len(),
            query_middleware.len(),
        );

        let event_store_in_db =
            backends.event_store.is_none() && backends.database_events.is_some();
        let (event_store, memory_events) = match (backends.event_store, backends.database_events) {
            (Some(store), _) => (store, backends.memory_events),
            (None, Some(store)) => (store, None),
            (None, None) => {
                let memory = Arc::new(MemoryEventStore::new());
                (
                    memory.clone() as Arc<dyn crate::event_store::DynEventStore>,
                    Some(memory),
                )
            }
        };
        let stores = Stores {
            idempotency_in_tx: !custom_idempotency && backends.database.is_some(),
            database: backends.database,
            outbox_inline: backends.outbox_inline,
            transport: backends.transport.clone(),
            event_store,
            memory_events,
            event_store_in_db,
            locks: backends.locks.take(),
        };
        let mut dependencies = dependencies;
        let inner = Arc::new_cyclic(|weak| {
            // Handlers get handles that do not keep the bus alive.
            dependencies.insert(Bus {
                inner: BusRef::Weak(weak.clone()),
            });
            dependencies.insert(QueryBus {
                inner: BusRef::Weak(weak.clone()),
            });
            let mut commands = table(registry::slots_in_use(MessageKind::Command));
            let mut queries = table(registry::slots_in_use(MessageKind::Query));
            let mut events: Vec<Vec<(&'static str, Box<dyn EventPipe>)>> = Vec::new();
            let mut event_decoders = HashMap::new();
            let mut cache_regions = HashMap::new();
            let backplane = backends.backplane.take();
            for (candidate, layers) in layered {
                let slot = (candidate.message.slot)();
                let mut inst = Installation {
                    resolver: Resolver::new(
                        &dependencies,
                        candidate.handler_name,
                        candidate.location,
                        &mut problems,
                    ),
                    handler_name: candidate.handler_name,
                    group: candidate.options.group,
                    layers,
                    middleware: match candidate.kind {
                        MessageKind::Command => command_middleware.len(),
                        MessageKind::Query => query_middleware.len(),
                        MessageKind::Event => 0,
                    },
                    query_cache: &*query_cache,
                    cache_regions: &mut cache_regions,
                };
                match (candidate.install)(&mut inst) {
                    Some(Installed::Command(pipe)) => put(&mut commands, slot, pipe),
                    Some(Installed::Query(pipe)) => put(&mut queries, slot, pipe),
                    Some(Installed::Event(pipe)) => {
                        let (name, decoder) = pipe.event();
                        event_decoders.insert(name, decoder);
                        if events.len() <= slot {
                            events.resize_with(slot + 1, Vec::new);
                        }
                        events[slot].push((candidate.handler_name, pipe));
                    }
                    None => {}
                }
            }
            let events = events
                .into_iter()
                .map(|mut handlers| {
                    handlers.sort_by_key(|(name, _)| *name);
                    handlers.into_iter().map(|(_, pipe)| pipe).collect()
                })
                .collect();
            let runtime = Runtime {
                commands: commands.into_boxed_slice(),
                queries: queries.into_boxed_slice(),
                events,
                command_middleware,
                query_middleware,
                failure_sink,
                observers: observers.into_boxed_slice(),
                resource_policy,
                idempotency: Some(IdempotencyLayer {
                    store: idempotency_store,
                    ttl: idempotency_ttl,
                    lease: idempotency::DEFAULT_LEASE,
                }),
                cache_regions: CacheRegions::new(cache_regions, backplane),
                event_decoders,
                stores,
            };
            Shared {
                runtime,
                description,
                lifecycle,
            }
        });
        if !problems.is_empty() {
            return Err(BuildError::new(problems));
        }
        let bus = Bus {
            inner: BusRef::Strong(inner),
        };
        for start in backends.on_build {
            start(&bus);
        }
        Ok(bus)
    }
}

fn table(len: usize) -> Vec<Option<PipeEntry>> {
    let mut t = Vec::new();
    t.resize_with(len, || None);
    t
}

fn put(
    table: &mut Vec<Option<PipeEntry>>,
    slot: usize,
    pipe: Box<dyn std::any::Any + Send + Sync>,
) {
    if table.len() <= slot {
        table.resize_with(slot + 1, || None);
    }
    table[slot] = Some(PipeEntry::new(pipe));
}
