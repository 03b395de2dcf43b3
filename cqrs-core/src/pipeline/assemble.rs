//! Assembling one registered handler's pipeline: the handler built from its dependencies,
//! wrapped with its layers' configuration, and its cache region created.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use super::cache::{CacheLayer, Invalidated, QueryCache};
use super::plan::{Inputs, Plan};
use super::{
    CommandPipe, CommandPipeline, EventPipe, EventPipeline, Layers, QueryPipe, QueryPipeline,
};
use crate::di::Resolver;
use crate::handler::{CommandHandler, EventHandler, QueryHandler};
use crate::message::{Command, Event, Message, MessageKind, Query};

impl Installation<'_> {
    /// The handler's plan (see [`Plan`]).
    fn plan<M: Message>(&self) -> Plan {
        Plan::new(&Inputs {
            kind: M::KIND,
            validated: M::VALIDATED,
            layers: &self.layers,
            middleware: match M::KIND {
                MessageKind::Event => 0,
                _ => self.middleware,
            },
        })
    }
}

/// What installing one handler needs.
pub(crate) struct Installation<'a> {
    pub(crate) resolver: Resolver<'a>,
    pub(crate) handler_name: &'static str,
    /// The consumer group of an event handler (`group = ".."`), if not its name.
    pub(crate) group: Option<&'static str>,
    pub(crate) layers: Layers,
    /// How many middleware the bus runs around this handler's kind of message.
    pub(crate) middleware: usize,
    pub(crate) query_cache: &'a dyn QueryCache,
    pub(crate) cache_regions: &'a mut HashMap<&'static str, Arc<Invalidated>>,
}

/// An installed pipeline, erased.
pub(crate) enum Installed {
    /// A `Box<dyn CommandPipe<C>>`.
    Command(Box<dyn Any + Send + Sync>),
    /// A `Box<dyn QueryPipe<Q>>`.
    Query(Box<dyn Any + Send + Sync>),
    /// An event handler.
    Event(Box<dyn EventPipe>),
}

pub(crate) fn command_instance<C, H>(handler: H, inst: &mut Installation<'_>) -> Installed
where
    C: Command,
    H: CommandHandler<C>,
{
    let pipe: Box<dyn CommandPipe<C>> = Box::new(CommandPipeline {
        handler,
        name: inst.handler_name,
        plan: inst.plan::<C>(),
        layers: inst.layers.clone(),
        _message: PhantomData,
    });
    Installed::Command(Box::new(pipe))
}

pub(crate) fn query_instance<Q, H>(handler: H, inst: &mut Installation<'_>) -> Installed
where
    Q: Query,
    H: QueryHandler<Q>,
{
    let cache = inst.layers.cache.map(|spec| {
        let region = QueryCache::region(inst.query_cache, Q::NAME, &spec);
        let region = Invalidated::new(region, spec);
        inst.cache_regions.insert(Q::NAME, region.clone());
        CacheLayer::new(Q::NAME, spec, region)
    });
    let pipe: Box<dyn QueryPipe<Q>> = Box::new(QueryPipeline {
        _message: PhantomData,
        handler,
        name: inst.handler_name,
        plan: inst.plan::<Q>(),
        layers: inst.layers.clone(),
        cache,
    });
    Installed::Query(Box::new(pipe))
}

pub(crate) fn event_instance<E, H>(handler: H, inst: &mut Installation<'_>) -> Installed
where
    E: Event,
    H: EventHandler<E>,
{
    Installed::Event(Box::new(EventPipeline::<E, H> {
        handler,
        name: inst.handler_name,
        group: inst.group,
        plan: inst.plan::<E>(),
        layers: inst.layers.clone(),
        _event: PhantomData,
    }))
}
