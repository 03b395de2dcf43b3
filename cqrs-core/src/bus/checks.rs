//! The checks of `build()`, each reporting every problem it finds: which handlers take part,
//! one handler per command and query, each handler's layers from its decorators, the backends
//! those layers need, and (strict) messages nobody handles.

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::build_error::BuildProblem;
use crate::location::Location;
use crate::message::{MessageInfo, MessageKind};
use crate::pipeline::assemble::{Installation, Installed};
use crate::pipeline::cache::CacheSpec;
use crate::pipeline::cache::target::{Invalidates, Targeted};
use crate::pipeline::{Decorator, Layers};
use crate::registry::{self, HandlerOptions, HandlerRegistration, MessageRegistration};

pub(crate) type Install = Box<dyn FnOnce(&mut Installation<'_>) -> Option<Installed> + Send>;

/// A handler waiting to be installed.
pub(crate) struct Candidate {
    pub(crate) kind: MessageKind,
    pub(crate) handler_name: &'static str,
    pub(crate) handler_type: TypeId,
    pub(crate) message: MessageInfo,
    pub(crate) location: Location,
    pub(crate) options: HandlerOptions,
    /// Replaces every other handler of its command or query (test overrides).
    pub(crate) replaces: bool,
    pub(crate) install: Install,
}

impl Candidate {
    pub(crate) fn from_registration(reg: &HandlerRegistration) -> Self {
        let install = reg.install;
        Candidate {
            kind: reg.kind,
            handler_name: reg.handler_name,
            handler_type: (reg.handler_type)(),
            message: (reg.message)(),
            location: reg.location,
            options: reg.options,
            replaces: false,
            install: Box::new(install),
        }
    }

    pub(crate) fn instance<H: Send + Sync + 'static>(
        kind: MessageKind,
        message: MessageInfo,
        location: Location,
        install: Install,
    ) -> Self {
        Candidate {
            kind,
            handler_name: short_type_name::<H>(),
            handler_type: TypeId::of::<H>(),
            message,
            location,
            options: HandlerOptions::new(),
            replaces: false,
            install,
        }
    }
}

/// Manual registrations first, then (with discovery) every declared handler; a handler type
/// registered twice for the same message counts once.
pub(crate) fn collect_candidates(manual: Vec<Candidate>, discover: bool) -> Vec<Candidate> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for c in manual {
        if seen.insert((c.handler_type, (c.message.type_id)())) {
            out.push(c);
        }
    }
    if discover {
        for reg in inventory::iter::<HandlerRegistration> {
            let key = ((reg.handler_type)(), ((reg.message)().type_id)());
            if seen.insert(key) {
                out.push(Candidate::from_registration(reg));
            }
        }
    }
    // An override replaces every other handler of its command or query.
    let replaced: HashSet<TypeId> = out
        .iter()
        .filter(|c| c.replaces)
        .map(|c| (c.message.type_id)())
        .collect();
    out.retain(|c| c.replaces || !replaced.contains(&(c.message.type_id)()));
    out
}

/// A message type the bus knows of.
pub(crate) struct KnownMessage {
    pub(crate) info: MessageInfo,
    pub(crate) location: Option<Location>,
}

/// Every message: derived ones (with discovery) and those of registered handlers, by kind and
/// name. Two types of one kind with the same name are a problem.
pub(crate) fn collect_messages(
    candidates: &[Candidate],
    discover: bool,
    problems: &mut Vec<BuildProblem>,
) -> BTreeMap<(MessageKind, &'static str), KnownMessage> {
    let mut by_name: BTreeMap<(MessageKind, &'static str), KnownMessage> = BTreeMap::new();
    let mut types = HashSet::new();
    let mut add =
        |info: MessageInfo, location: Option<Location>, problems: &mut Vec<BuildProblem>| {
            let first_sighting = types.insert((info.type_id)());
            match by_name.get_mut(&(info.kind, info.name)) {
                Some(_) if !first_sighting => {}
                Some(known) if (known.info.type_id)() != (info.type_id)() => {
                    problems.push(BuildProblem::DuplicateMessageName {
                        kind: info.kind,
                        name: info.name,
                        types: (known.info.type_name, info.type_name),
                    });
                }
                Some(known) => {
                    known.location = known.location.or(location);
                }
                None => {
                    by_name.insert((info.kind, info.name), KnownMessage { info, location });
                }
            }
        };
    if discover {
        for reg in inventory::iter::<MessageRegistration> {
            add((reg.info)(), Some(reg.location), problems);
        }
    }
    for c in candidates {
        add(c.message, None, problems);
    }
    by_name
}

/// Keeps the first handler of each command and query; each further one is a problem.
pub(crate) fn one_handler_per_message(
    candidates: Vec<Candidate>,
    problems: &mut Vec<BuildProblem>,
) -> Vec<Candidate> {
    let mut owners: HashMap<TypeId, (&'static str, Location)> = HashMap::new();
    let mut out = Vec::with_capacity(candidates.len());
    for c in candidates {
        if c.kind != MessageKind::Event {
            let id = (c.message.type_id)();
            if let Some(first) = owners.get(&id) {
                problems.push(BuildProblem::DuplicateHandler {
                    kind: c.kind,
                    message: c.message.name,
                    first: *first,
                    second: (c.handler_name, c.location),
                });
                continue;
            }
            owners.insert(id, (c.handler_name, c.location));
        }
        out.push(c);
    }
    out
}

/// The layers of one handler: its attribute's options and its decorators.
pub(crate) fn assemble_layers(
    c: &Candidate,
    by_hand: &HashMap<TypeId, Vec<Decorator>>,
    problems: &mut Vec<BuildProblem>,
) -> Layers {
    let mut layers = Layers {
        timeout: c.options.timeout,
        invalidates: c
            .options
            .invalidates
            .iter()
            .map(|q| Invalidates::all(q().name))
            .collect(),
        ..Layers::default()
    };
    let conflict = |what, problems: &mut Vec<BuildProblem>| {
        problems.push(BuildProblem::ConflictingDecorators {
            handler: c.handler_name,
            location: c.location,
            what,
        })
    };
    let misplaced = |decorator, applies_to, problems: &mut Vec<BuildProblem>| {
        problems.push(BuildProblem::MisplacedDecorator {
            handler: c.handler_name,
            location: c.location,
            decorator,
            applies_to,
        })
    };
    let declared = registry::decorators_of(c.handler_type)
        .iter()
        .map(|d| (d.make)());
    let given = by_hand.get(&c.handler_type).into_iter().flatten().copied();
    for d in declared.chain(given) {
        match d {
            Decorator::Timeout(t) => {
                if layers.timeout.replace(t).is_some() {
                    conflict("a timeout", problems);
                }
            }
            Decorator::Retry(r) => {
                if layers.retry.replace(r).is_some() {
                    conflict("`#[retry]`", problems);
                }
            }
            Decorator::Authorize(a) => {
                if c.kind == MessageKind::Event {
                    misplaced("#[authorize]", "command and query handlers", problems);
                } else if layers.authorize.replace(a).is_some() {
                    conflict("`#[authorize]`", problems);
                }
            }
            Decorator::Cache(spec) => {
                if c.kind != MessageKind::Query {
                    misplaced("#[cached_query]", "query handlers", problems);
                } else if layers.cache.replace(spec).is_some() {
                    conflict("`#[cached_query]`", problems);
                }
            }
            Decorator::Transactional(t) => {
                if c.kind == MessageKind::Query {
                    misplaced("#[transactional]", "command and event handlers", problems);
                } else if layers.transaction.replace(t).is_some() {
                    conflict("`#[transactional]`", problems);
                }
            }
            Decorator::Exclusive(e) => {
                if c.kind != MessageKind::Command {
                    misplaced("#[exclusive]", "command handlers", problems);
                } else if layers
                    .exclusive
                    .replace(e.in_space_of(c.message.name))
                    .is_some()
                {
                    conflict("`#[exclusive]`", problems);
                }
            }
        }
    }
    layers
}

/// What the builder was given that decorators need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Configured {
    pub(crate) resource_policy: bool,
    pub(crate) database: bool,
    /// A lock backend (PostgreSQL or Redis), for `#[exclusive]`.
    pub(crate) locks: bool,
}

pub(crate) fn check_backends(
    layered: &[(Candidate, Layers)],
    configured: Configured,
    problems: &mut Vec<BuildProblem>,
) {
    let Configured {
        resource_policy: has_resource_policy,
        database: has_database,
        locks: has_locks,
    } = configured;
    for (c, layers) in layered {
        if layers.exclusive.is_some() && !has_locks {
            problems.push(BuildProblem::MissingBackend {
                handler: c.handler_name,
                location: c.location,
                decorator: "#[exclusive]",
                needs: "the bus has nothing to lock with across processes: add `.postgres(pool)` (a session advisory lock; feature `postgres`) or `.redis(client)` (a lease; feature `redis`) to the builder. SQLite alone cannot: add `.redis(client)` beside `.sqlite(pool)`",
            });
        }
        if layers.transaction.is_some() && !has_database {
            problems.push(BuildProblem::MissingBackend {
                handler: c.handler_name,
                location: c.location,
                decorator: "#[transactional]",
                needs: "the bus has no database: add `.sqlite(pool)` or `.postgres(pool)` to the builder (features `sqlite`, `postgres` of cqrs-core)",
            });
        }
        if layers.authorize.is_some_and(|a| a.needs_policy()) && !has_resource_policy {
            problems.push(BuildProblem::MissingBackend {
                handler: c.handler_name,
                location: c.location,
                decorator: "#[authorize(resource = ..)]",
                needs: "the bus has no resource policy: add `.resource_policy(policy)` to the builder",
            });
        }
    }
}

pub(crate) fn unhandled_messages(
    messages: &BTreeMap<(MessageKind, &'static str), KnownMessage>,
    layered: &[(Candidate, Layers)],
    strict: bool,
    problems: &mut Vec<BuildProblem>,
) {
    let handled: HashSet<TypeId> = layered.iter().map(|(c, _)| (c.message.type_id)()).collect();
    for ((kind, name), known) in messages {
        if *kind == MessageKind::Event || handled.contains(&(known.info.type_id)()) {
            continue;
        }
        if strict {
            problems.push(BuildProblem::NoHandler {
                kind: *kind,
                message: name,
                location: known.location,
            });
        } else {
            // Not `message = ..`: that field is the event's text, which it would replace.
            tracing::warn!(
                target: "cqrs",
                kind = kind.as_str(),
                name = *name,
                location = %known.location.map(|l| l.to_string()).unwrap_or_default(),
                "{kind} `{name}` has no handler; sending it will fail with NoHandler"
            );
        }
    }
}

/// Resolves `invalidates = [Query(field = command_field)]` against each query's cache: the
/// fields must be exactly its `vary_by` fields (the key hashes all of them), in its order.
pub(crate) fn resolve_answer_targets(
    layered: &mut [(Candidate, Layers)],
    problems: &mut Vec<BuildProblem>,
) {
    let caches: HashMap<&'static str, CacheSpec> = layered
        .iter()
        .filter(|(c, _)| c.kind == MessageKind::Query)
        .filter_map(|(c, layers)| Some((c.message.name, layers.cache?)))
        .collect();
    for (c, layers) in layered.iter_mut() {
        for target in c.options.invalidates_answers {
            let query = target.query().name;
            let mut problem = |problem: String| {
                problems.push(BuildProblem::InvalidationTarget {
                    handler: c.handler_name,
                    location: c.location,
                    query,
                    problem,
                })
            };
            let Some(spec) = caches.get(query) else {
                problem(format!(
                    "`{query}` has no `#[cached_query]` handler on this bus: cache it, or drop `{query}` from `invalidates`"
                ));
                continue;
            };
            let vary_by = spec.vary_by_fields();
            let mut named: Vec<&str> = target.fields().to_vec();
            let mut expected: Vec<&str> = vary_by.to_vec();
            named.sort_unstable();
            expected.sort_unstable();
            if vary_by.is_empty() {
                problem(format!(
                    "`{query}` is cached without `vary_by` (its key hashes the whole query): give it `#[cached_query(vary_by = [..])]`, or write `invalidates = [{query}]` to drop all its answers"
                ));
                continue;
            }
            if named != expected {
                let written = target.fields().join(", ");
                let wanted: Vec<String> = vary_by.iter().map(|f| format!("{f} = ..")).collect();
                problem(format!(
                    "the fields named ({written}) are not its `vary_by` fields ({}), all of which its key hashes: write `{query}({})`",
                    vary_by.join(", "),
                    wanted.join(", ")
                ));
                continue;
            }
            layers.invalidates.push(Invalidates {
                query,
                target: Some(Targeted {
                    vary_by,
                    hash: target.hash,
                }),
            });
        }
    }
}

/// The type's name without its module path (generic arguments keep theirs).
pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    match base.rfind("::") {
        Some(i) => &full[i + 2..],
        None => full,
    }
}
