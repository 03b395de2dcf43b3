//! Dependency injection: handler fields resolved by type at `build()`.
//!
//! The bus keeps one value per type, given with [`BusBuilder::provide`](crate::BusBuilder::provide).
//! Each field of a handler struct gets a clone of the value of its type (so share expensive
//! things behind an `Arc`, or provide types that are cheap to clone, such as a `sqlx` pool).
//! `Bus` and `QueryBus` fields are resolved by the bus itself, with a handle that does not
//! keep the bus alive.

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::fmt;

use crate::build_error::BuildProblem;
use crate::location::Location;

/// A value the bus can hand to handler fields: anything `Clone + Send + Sync + 'static`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be injected into a handler",
    label = "handler fields are cloned out of the bus's dependencies",
    note = "a handler serves many requests at once, so each field is `Clone + Send + Sync + 'static`: share the value behind an `Arc` (with a `Mutex` for mutable state) and provide the `Arc`"
)]
pub trait Injectable: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> Injectable for T {}

struct Provided {
    value: Box<dyn Any + Send + Sync>,
    type_name: &'static str,
}

/// The values handlers are built from, one per type.
#[derive(Default)]
pub struct Dependencies {
    values: HashMap<TypeId, Provided>,
}

impl Dependencies {
    /// Stores `value`, replacing any earlier value of the same type.
    pub fn insert<T: Injectable>(&mut self, value: T) {
        self.values.insert(
            TypeId::of::<T>(),
            Provided {
                value: Box::new(value),
                type_name: type_name::<T>(),
            },
        );
    }

    /// A clone of the value of type `T`, if there is one.
    pub fn get<T: Injectable>(&self) -> Option<T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|p| p.value.downcast_ref::<T>())
            .cloned()
    }

    /// Whether a value of type `T` was provided.
    pub fn contains<T: 'static>(&self) -> bool {
        self.values.contains_key(&TypeId::of::<T>())
    }
}

impl fmt::Debug for Dependencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.values.values().map(|p| p.type_name).collect();
        names.sort_unstable();
        f.debug_set().entries(names).finish()
    }
}

/// Resolves the fields of one handler; the code the handler attributes generate calls it.
pub struct Resolver<'a> {
    deps: &'a Dependencies,
    handler: &'static str,
    location: Location,
    problems: &'a mut Vec<BuildProblem>,
}

impl<'a> Resolver<'a> {
    pub(crate) fn new(
        deps: &'a Dependencies,
        handler: &'static str,
        location: Location,
        problems: &'a mut Vec<BuildProblem>,
    ) -> Self {
        Resolver {
            deps,
            handler,
            location,
            problems,
        }
    }

    /// The value of field `field` (of type `T`, written `written_type`), or `None` after
    /// recording that it is missing.
    pub fn resolve<T: Injectable>(
        &mut self,
        field: &'static str,
        written_type: &'static str,
    ) -> Option<T> {
        if let Some(value) = self.deps.get::<T>() {
            return Some(value);
        }
        self.problems.push(BuildProblem::MissingDependency {
            handler: self.handler,
            location: self.location,
            field,
            type_name: written_type,
        });
        None
    }

    /// The value of field `field`, or `T::default()` when none was provided
    /// (`#[inject(default)]`).
    pub fn resolve_or_default<T: Injectable + Default>(
        &mut self,
        _field: &'static str,
    ) -> Option<T> {
        Some(self.deps.get::<T>().unwrap_or_default())
    }
}

impl fmt::Debug for Resolver<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("handler", &self.handler)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}
