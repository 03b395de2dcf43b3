//! The composition of every pipeline, declared once: the layers in their order, which of them a
//! handler turns on, and which of those can run without awaiting.
//!
//! [`PIPELINE`] is the order (the table in [`pipeline`](super)). `build()` turns it, with one
//! handler's [`Layers`] and the bus's middleware, into that handler's [`Plan`]: the layers that
//! are on, and whether all of them are [`Runs::Inline`]. That one decision, made once, is what
//! each dispatch reads to take the **lean** path (the inline layers, generic and inline in the
//! dispatch's future, no allocation) or the **full** one (every layer, written once for all
//! handlers). The lean paths of commands, queries and events are the inline layers of this
//! table run in its order ([`lean`](super::lean)); `describe()` prints the layers that are on,
//! from the same table.

use super::Layers;
use super::authorize::AuthorizeLayer;
use crate::envelope::Metadata;
use crate::message::MessageKind;

/// One layer of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layer {
    /// The dispatch span, metrics (`trace.rs`, `metrics.rs`).
    Trace,
    /// `BusBuilder::middleware` (`middleware.rs`).
    Middleware,
    /// `timeout = ".."` and the envelope's deadline (`timeout.rs`).
    Timeout,
    /// `#[authorize(..)]` (`authorize.rs`).
    Authorize,
    /// Field rules on the message (`validate.rs`).
    Validate,
    /// `Envelope::idempotency_key`, commands (`idempotency.rs`).
    Idempotency,
    /// `#[cached_query(..)]`, queries (`cache/`).
    Cache,
    /// `#[retry(..)]` (`retry.rs`).
    Retry,
    /// `#[exclusive(..)]`, commands (`exclusive.rs`): each attempt's lock, around its
    /// transaction.
    Exclusive,
    /// `#[transactional(..)]`, commands and event handlers (`transaction.rs`; an event
    /// handler's records the event in its inbox).
    Transaction,
    /// The handler, its panics caught.
    Handler,
}

/// How a layer runs when it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runs {
    /// Never awaits: it runs on the lean path.
    Inline,
    /// Awaits something (a timer, a store, a back-off, a middleware, a transaction): only the
    /// full path runs it.
    Awaits,
}

/// The layers, outermost first.
pub(crate) const PIPELINE: [Layer; 11] = [
    Layer::Trace,
    Layer::Middleware,
    Layer::Timeout,
    Layer::Authorize,
    Layer::Validate,
    Layer::Idempotency,
    Layer::Cache,
    Layer::Retry,
    Layer::Exclusive,
    Layer::Transaction,
    Layer::Handler,
];

/// What decides which layers a handler has: its message's kind and field rules, its
/// decorators, and the bus's middleware for that kind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inputs<'a> {
    pub(crate) kind: MessageKind,
    pub(crate) validated: bool,
    pub(crate) layers: &'a Layers,
    pub(crate) middleware: usize,
}

impl Layer {
    /// Whether this layer is on for a handler with `inputs`, and how it runs.
    ///
    /// Idempotency is on for every command (it runs when an envelope carries a key, which only
    /// the dispatch knows: [`Plan::lean_for`] reads it there).
    pub(crate) fn runs(self, inputs: &Inputs<'_>) -> Option<Runs> {
        let Inputs {
            kind,
            validated,
            layers,
            middleware,
        } = *inputs;
        let awaits = |on: bool| on.then_some(Runs::Awaits);
        match self {
            Layer::Trace | Layer::Handler => Some(Runs::Inline),
            Layer::Middleware => awaits(middleware > 0),
            Layer::Timeout => awaits(layers.timeout.is_some()),
            Layer::Authorize => layers.authorize.as_ref().map(|a| {
                if AuthorizeLayer::is_lean(Some(a)) {
                    Runs::Inline
                } else {
                    Runs::Awaits
                }
            }),
            Layer::Validate => validated.then_some(Runs::Inline),
            Layer::Idempotency => awaits(kind == MessageKind::Command),
            Layer::Cache => awaits(layers.cache.is_some()),
            Layer::Retry => awaits(layers.retry.is_some()),
            Layer::Exclusive => awaits(layers.exclusive.is_some()),
            Layer::Transaction => awaits(layers.transaction.is_some()),
        }
    }

    /// The layer as `describe()` prints it.
    fn label(self, inputs: &Inputs<'_>) -> String {
        let layers = inputs.layers;
        match self {
            Layer::Trace => "trace".to_owned(),
            Layer::Middleware => format!("middleware({})", inputs.middleware),
            Layer::Timeout => match layers.timeout {
                Some(t) => format!("timeout({})", super::describe::duration(t)),
                None => "timeout".to_owned(),
            },
            Layer::Authorize => layers
                .authorize
                .as_ref()
                .map_or_else(|| "authorize".to_owned(), ToString::to_string),
            Layer::Validate => "validate".to_owned(),
            Layer::Idempotency => "idempotency".to_owned(),
            Layer::Cache => layers
                .cache
                .as_ref()
                .map_or_else(|| "cached_query".to_owned(), ToString::to_string),
            Layer::Retry => layers
                .retry
                .as_ref()
                .map_or_else(|| "retry".to_owned(), ToString::to_string),
            Layer::Exclusive => layers
                .exclusive
                .as_ref()
                .map_or_else(|| "exclusive".to_owned(), ToString::to_string),
            Layer::Transaction => layers
                .transaction
                .as_ref()
                .map_or_else(|| "transactional".to_owned(), ToString::to_string),
            Layer::Handler => "handler".to_owned(),
        }
    }
}

/// What `build()` decided for one handler, from [`PIPELINE`]: whether every layer it has runs
/// inline, so that its dispatches take the lean path unless the envelope asks for more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    kind: MessageKind,
    lean: bool,
}

impl Plan {
    pub(crate) fn new(inputs: &Inputs<'_>) -> Plan {
        let lean = PIPELINE.iter().all(|layer| match layer {
            // On for every command, run only for an envelope with a key: decided per dispatch.
            Layer::Idempotency => true,
            layer => layer.runs(inputs) != Some(Runs::Awaits),
        })
            // `invalidates = [Query(field = ..)]` reads the command before its handler takes
            // it: the full path does (see `full_path.rs`, `guarded`).
            && !(inputs.kind == MessageKind::Command
                && super::cache::target::by_field(&inputs.layers.invalidates));
        Plan {
            kind: inputs.kind,
            lean,
        }
    }

    /// Whether one dispatch takes the lean path: the handler's layers all run inline, and the
    /// envelope asks for nothing that awaits (a deadline; for a command, an idempotency key).
    #[inline]
    pub(crate) fn lean_for(&self, metadata: &Metadata) -> bool {
        self.lean
            && metadata.deadline().is_none()
            && (self.kind != MessageKind::Command || metadata.idempotency_key().is_none())
    }

    /// The layers that are on, as `describe()` prints them, in pipeline order.
    pub(crate) fn describe(inputs: &Inputs<'_>) -> Vec<String> {
        let mut out: Vec<String> = PIPELINE
            .iter()
            .filter(|layer| layer.runs(inputs).is_some())
            .map(|layer| layer.label(inputs))
            .collect();
        let invalidates = &inputs.layers.invalidates;
        if !invalidates.is_empty() {
            let named: Vec<String> = invalidates.iter().map(|i| i.to_string()).collect();
            out.push(format!("invalidates{}", super::describe::list(&named)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pipeline::retry::RetryLayer;

    fn plan(kind: MessageKind, layers: &Layers, middleware: usize) -> Plan {
        Plan::new(&Inputs {
            kind,
            validated: true,
            layers,
            middleware,
        })
    }

    #[test]
    fn a_handler_with_inline_layers_only_is_lean_until_the_envelope_asks_for_more() {
        let bare = Layers::default();
        let plan = plan(MessageKind::Command, &bare, 0);
        assert!(plan.lean_for(&Metadata::new()));
        let mut keyed = Metadata::new();
        keyed.set_idempotency_key("k");
        assert!(!plan.lean_for(&keyed));
        let mut late = Metadata::new();
        late.set_deadline(std::time::Instant::now());
        assert!(!plan.lean_for(&late));
        // A query ignores idempotency keys.
        assert!(self::plan(MessageKind::Query, &bare, 0).lean_for(&keyed));
    }

    #[test]
    fn any_layer_that_awaits_makes_the_plan_full() {
        let timed = Layers {
            timeout: Some(Duration::from_secs(1)),
            ..Layers::default()
        };
        let retried = Layers {
            retry: Some(RetryLayer::default()),
            ..Layers::default()
        };
        let exclusive = Layers {
            exclusive: Some(crate::pipeline::exclusive::ExclusiveLayer::new(
                "id",
                |_| None,
            )),
            ..Layers::default()
        };
        for (layers, middleware) in [
            (&timed, 0),
            (&retried, 0),
            (&exclusive, 0),
            (&Layers::default(), 1),
        ] {
            assert!(!plan(MessageKind::Event, layers, middleware).lean_for(&Metadata::new()));
        }
    }

    #[test]
    fn describe_lists_the_layers_that_are_on_in_pipeline_order() {
        let layers = Layers {
            timeout: Some(Duration::from_secs(2)),
            retry: Some(RetryLayer::default()),
            exclusive: Some(
                crate::pipeline::exclusive::ExclusiveLayer::new("id", |_| None).in_space_of("C"),
            ),
            invalidates: vec![crate::pipeline::cache::target::Invalidates {
                query: "Q",
                target: None,
            }],
            ..Layers::default()
        };
        let described = Plan::describe(&Inputs {
            kind: MessageKind::Command,
            validated: true,
            layers: &layers,
            middleware: 2,
        });
        let first: Vec<&str> = described
            .iter()
            .map(|s| &s[..s.find('(').unwrap_or(s.len())])
            .collect();
        assert_eq!(
            first,
            [
                "trace",
                "middleware",
                "timeout",
                "validate",
                "idempotency",
                "retry",
                "exclusive",
                "handler",
                "invalidates[Q]"
            ]
        );
    }
}
