//! Turning one registered handler into its pipeline.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::di::Resolver;
use crate::handler::{CommandHandler, EventHandler, Handler, QueryHandler};
use crate::message::{Command, Event, Query};
use crate::pipeline::cache::{CacheLayer, CacheRegion, Invalidated, QueryCache};
use crate::pipeline::{
    CommandPipe, CommandPipeline, EventPipe, EventPipeline, Layers, QueryPipe, QueryPipeline,
};

/// What installing one handler needs.
pub(crate) struct Installation<'a> {
    pub(crate) resolver: Resolver<'a>,
    pub(crate) handler_name: &'static str,
    pub(crate) layers: Layers,
    pub(crate) query_cache: &'a dyn QueryCache,
    pub(crate) cache_regions: &'a mut HashMap<&'static str, Arc<dyn CacheRegion>>,
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

pub(crate) fn built_command<C, H>(inst: &mut Installation<'_>) -> Option<Installed>
where
    C: Command,
    H: CommandHandler<C> + Handler,
{
    let handler = H::build(&mut inst.resolver)?;
    Some(command_instance::<C, H>(handler, inst))
}

pub(crate) fn command_instance<C, H>(handler: H, inst: &mut Installation<'_>) -> Installed
where
    C: Command,
    H: CommandHandler<C>,
{
    let pipe: Box<dyn CommandPipe<C>> = Box::new(CommandPipeline {
        handler,
        name: inst.handler_name,
        layers: inst.layers.clone(),
        _message: PhantomData,
    });
    Installed::Command(Box::new(pipe))
}

pub(crate) fn built_query<Q, H>(inst: &mut Installation<'_>) -> Option<Installed>
where
    Q: Query,
    H: QueryHandler<Q> + Handler,
{
    let handler = H::build(&mut inst.resolver)?;
    Some(query_instance::<Q, H>(handler, inst))
}

pub(crate) fn query_instance<Q, H>(handler: H, inst: &mut Installation<'_>) -> Installed
where
    Q: Query,
    H: QueryHandler<Q>,
{
    let cache = inst.layers.cache.map(|spec| {
        let region = Invalidated::new(QueryCache::region(inst.query_cache, Q::NAME, &spec));
        inst.cache_regions.insert(Q::NAME, region.clone());
        CacheLayer::new(Q::NAME, spec, region)
    });
    let pipe: Box<dyn QueryPipe<Q>> = Box::new(QueryPipeline {
        _message: PhantomData,
        handler,
        name: inst.handler_name,
        layers: inst.layers.clone(),
        cache,
    });
    Installed::Query(Box::new(pipe))
}

pub(crate) fn built_event<E, H>(inst: &mut Installation<'_>) -> Option<Installed>
where
    E: Event,
    H: EventHandler<E> + Handler,
{
    let handler = H::build(&mut inst.resolver)?;
    Some(event_instance::<E, H>(handler, inst))
}

pub(crate) fn event_instance<E, H>(handler: H, inst: &mut Installation<'_>) -> Installed
where
    E: Event,
    H: EventHandler<E>,
{
    Installed::Event(Box::new(EventPipeline::<E, H> {
        handler,
        name: inst.handler_name,
        layers: inst.layers.clone(),
        _event: PhantomData,
    }))
}
