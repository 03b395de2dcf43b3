//! Attribute arguments: `Type, key = value, flag, list = [a, b]`.
//!
//! Every attribute lists its options with their kinds ([`Spec`]); [`parse()`] reads the
//! arguments into [`Args`], reporting unknown options, duplicates and values of the wrong kind
//! on the offending token, all of them in one pass. The typed models in `crate::ast` are built
//! from [`Args`].

mod parse;
pub(crate) mod status;
pub(crate) mod suggest;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use proc_macro2::Span;
use syn::{Ident, LitStr, Type};

pub(crate) use self::parse::parse;

/// What an option's value is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `output = Option<User>`.
    Type,
    /// `name = "users.register"`.
    Str,
    /// `ttl = "5m"`.
    Duration,
    /// `cache_none = true`.
    Bool,
    /// `admin_override` (or `admin_override = true`).
    Flag,
    /// `max_entries = 10000`.
    Int,
    /// `backoff = 2.0`.
    Float,
    /// `jitter = true` or `jitter = 0.2`.
    BoolOrFloat,
    /// `resource = owner_id`.
    Ident,
    /// `vary_by = [user_id, page]`, `on = [Conflict]`.
    Idents,
    /// `emits = [UserRegistered]`.
    Types,
    /// `invalidates = [ListUsers, GetUser(id = user_id)]`: queries, each with an optional
    /// mapping of its fields to the command's.
    Targets,
    /// `permissions = ["user:create"]`.
    Strs,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Type => "a type, such as `u64` or `Option<UserView>`",
            Kind::Str => "a string literal",
            Kind::Duration => "a duration string such as \"250ms\", \"15s\" or \"5m\"",
            Kind::Bool => "`true` or `false`",
            Kind::Flag => "nothing (it is a flag) or `true`/`false`",
            Kind::Int => "an integer",
            Kind::Float => "a number such as `2.0`",
            Kind::BoolOrFloat => "`true`, `false` or a fraction such as `0.2`",
            Kind::Ident => "a field name",
            Kind::Idents => "a list of names in brackets, e.g. `[a, b]`",
            Kind::Types => "a list of types in brackets, e.g. `[GetUser, ListUsers]`",
            Kind::Targets => {
                "a list of queries in brackets, each with an optional field mapping, e.g. `[ListUsers, GetUser(id = user_id)]`"
            }
            Kind::Strs => "a list of strings in brackets, e.g. `[\"user:create\"]`",
        }
    }
}

/// One option an attribute accepts.
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
}

pub(crate) const fn opt(name: &'static str, kind: Kind) -> Spec {
    Spec { name, kind }
}

/// A parsed value, with the span of what the user wrote.
pub(crate) enum Value {
    Type(Box<Type>),
    Str(LitStr),
    Duration(Duration, Span),
    Bool(bool, Span),
    Int(u64, Span),
    Float(f64, Span),
    Ident(Ident),
    Idents(Vec<Ident>, Span),
    Types(Vec<Type>),
    Targets(Vec<QueryTarget>),
    Strs(Vec<LitStr>),
}

/// One query in `invalidates = [..]`: `GetUser`, or `GetUser(id = user_id, ..)` to drop only
/// the answers whose `id` is the command's `user_id`.
pub(crate) struct QueryTarget {
    pub(crate) query: Type,
    /// (the query's field, the command's field), as written.
    pub(crate) fields: Vec<(Ident, Ident)>,
}

/// Everything an attribute's arguments held.
#[derive(Default)]
pub(crate) struct Args {
    /// Leading types (`#[command_handler(RegisterUser)]`) or strings (`#[timeout("2s")]`).
    pub(crate) positional: Vec<Positional>,
    /// Options by name, with the span of the name.
    pub(crate) options: BTreeMap<&'static str, (Span, Value)>,
}

pub(crate) enum Positional {
    Type(Box<Type>),
    Str(LitStr),
}

impl Args {
    pub(crate) fn take(&mut self, name: &str) -> Option<(Span, Value)> {
        self.options.remove(name)
    }
    pub(crate) fn ty(&mut self, name: &str) -> Option<Type> {
        match self.take(name)? {
            (_, Value::Type(t)) => Some(*t),
            _ => None,
        }
    }
    pub(crate) fn str(&mut self, name: &str) -> Option<LitStr> {
        match self.take(name)? {
            (_, Value::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub(crate) fn duration(&mut self, name: &str) -> Option<(Duration, Span)> {
        match self.take(name)? {
            (_, Value::Duration(d, s)) => Some((d, s)),
            _ => None,
        }
    }
    pub(crate) fn bool(&mut self, name: &str) -> Option<(bool, Span)> {
        match self.take(name)? {
            (_, Value::Bool(b, s)) => Some((b, s)),
            _ => None,
        }
    }
    pub(crate) fn int(&mut self, name: &str) -> Option<(u64, Span)> {
        match self.take(name)? {
            (_, Value::Int(i, s)) => Some((i, s)),
            _ => None,
        }
    }
    pub(crate) fn ident(&mut self, name: &str) -> Option<Ident> {
        match self.take(name)? {
            (_, Value::Ident(i)) => Some(i),
            _ => None,
        }
    }
    pub(crate) fn idents(&mut self, name: &str) -> Option<Vec<Ident>> {
        self.take_spanned_idents(name).map(|(_, i)| i)
    }
    /// A list of names with the span of its brackets.
    pub(crate) fn take_spanned_idents(&mut self, name: &str) -> Option<(Span, Vec<Ident>)> {
        match self.take(name)? {
            (_, Value::Idents(i, span)) => Some((span, i)),
            _ => None,
        }
    }
    pub(crate) fn types(&mut self, name: &str) -> Option<Vec<Type>> {
        match self.take(name)? {
            (_, Value::Types(t)) => Some(t),
            _ => None,
        }
    }
    pub(crate) fn targets(&mut self, name: &str) -> Option<Vec<QueryTarget>> {
        match self.take(name)? {
            (_, Value::Targets(t)) => Some(t),
            _ => None,
        }
    }
    pub(crate) fn strs(&mut self, name: &str) -> Option<Vec<LitStr>> {
        match self.take(name)? {
            (_, Value::Strs(s)) => Some(s),
            _ => None,
        }
    }
}

/// What positional arguments an attribute takes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leading {
    Nothing,
    /// Types, such as the example.
    Types(&'static str),
    /// A string, such as the example.
    Str(&'static str),
}
